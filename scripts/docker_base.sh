#!/usr/bin/env bash
# `make docker-base` (as root): a Debian 12 base image made on this machine, for
# hosts that reach no image registry. debootstrap builds a minimal Debian 12 root
# filesystem from the machine's own apt source, and `docker import` makes it the
# image $BASE (hvd-alexnet-base:bookworm), which `make docker-test` then builds
# docker/Dockerfile.cpu on (BASE_IMAGE). About a minute and 150 MB.
#   MIRROR=http://deb.debian.org/debian make docker-base   # another Debian mirror
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-hvd-alexnet-base:bookworm}
LOGDIR=${LOGDIR:-runs/docker}
APT_ETC=${APT_ETC:-/etc/apt}  # where the machine's apt sources are
# shellcheck source=scripts/docker_engine.sh
source scripts/docker_engine.sh
need_root docker-base

# The machine's apt source for a Debian suite: "URI FILE", from one-line
# (sources.list) or deb822 (*.sources) files; nothing when there is none.
apt_source() {  # apt_source SUITE
  local file
  for file in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list; do
    [[ -r $file ]] || continue
    sed 's/\[[^]]*\]//' "$file" | awk -v suite="$1" -v file="$file" \
      '$1 == "deb" && $3 == suite { print $2, file; found = 1; exit } END { exit !found }' && return
  done
  for file in "$APT_ETC"/sources.list.d/*.sources; do
    [[ -r $file ]] || continue
    awk -v suite="$1" -v file="$file" 'BEGIN { RS = "" }
      { uri = ""; deb = 0; has = 0; n = split($0, lines, "\n")
        for (i = 1; i <= n; i++) {
          split(lines[i], w, /[ \t]+/)
          if (w[1] == "Types:") for (j = 2; j in w; j++) deb = deb || w[j] == "deb"
          if (w[1] == "URIs:") uri = w[2]
          if (w[1] == "Suites:") for (j = 2; j in w; j++) has = has || w[j] == suite
        }
        if (deb && has && uri != "") { print uri, file; found = 1; exit } }
      END { exit !found }' "$file" && return
  done
  return 0
}

if [[ -n ${MIRROR:-} ]]; then
  mirror=$MIRROR source_file="MIRROR"
else
  read -r mirror source_file < <(apt_source bookworm) || true
  if [[ -z ${mirror:-} ]]; then
    echo "docker-base: no apt source for Debian 12 (bookworm) in $APT_ETC: set" \
         "MIRROR=http://deb.debian.org/debian (or your mirror) and run it again" >&2
    exit 1
  fi
fi
read -r security _ < <(apt_source bookworm-security) || true

command -v debootstrap >/dev/null || apt_install docker-base debootstrap "a few seconds"

mkdir -p "$LOGDIR"
root=$(mktemp -d /var/tmp/hvd-alexnet-base.XXXXXX)
trap 'rm -rf "$root"; engine_down' EXIT
log=$LOGDIR/debootstrap.log
echo "docker-base: debootstrap Debian 12 (minbase) from $mirror ($source_file); log: $log"
if ! debootstrap --variant=minbase bookworm "$root" "$mirror" >"$log" 2>&1; then
  echo "docker-base: debootstrap could not make Debian 12 from $mirror, the apt source in" \
       "$source_file: $(grep -m1 '^E:' "$log" || tail -n 1 "$log") (log: $log)" >&2
  exit 1
fi

# The image's apt reads the same mirror, with its updates and security suites.
{
  echo "deb $mirror bookworm main"
  echo "deb $mirror bookworm-updates main"
  [[ -z ${security:-} ]] || echo "deb $security bookworm-security main"
} >"$root/etc/apt/sources.list"
# A snapshot mirror's Release files are past their Valid-Until date: where the
# machine's apt accepts that, the image's does too (else its apt-get update fails).
if apt-config dump | grep -q '^Acquire::Check-Valid-Until "false";'; then
  echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99hvd-alexnet-mirror"
fi
# The machine's CA certificates, which may hold a site's TLS-inspecting proxy (this
# project's machine reaches PyPI through one): ca-certificates, when the image
# installs it, adds them to the system bundle, and pip reads that bundle, as the
# machine's pip does (pip's own certifi bundle knows no site CA).
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
  install -d "$root/usr/local/share/ca-certificates"
  cp /etc/ssl/certs/ca-certificates.crt "$root/usr/local/share/ca-certificates/machine-bundle.crt"
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
fi
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

engine_up docker-base "$LOGDIR"
tar -C "$root" --numeric-owner -c . \
  | docker import --change 'CMD ["/bin/bash"]' \
      --message "debootstrap --variant=minbase bookworm $mirror" - "$BASE" >/dev/null
echo "docker-base: $BASE ($(docker image inspect -f '{{.Size}}' "$BASE" | awk '{ printf "%d MB", $1 / 1e6 }'))"
