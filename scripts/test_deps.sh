#!/usr/bin/env bash
# What only the tests need from the system: sshd and iproute2 for the two-host
# test (tests/test_multihost.py), a one-node Slurm with munge for the Slurm tests
# (tests/test_launchers.py), debootstrap for docker-base's unreachable-mirror test
# (tests/test_docker.py). They need root, so this installs only as root; as a
# user it says which tests will skip. Run by `make test` (`make test-deps`), never
# by `make install` or `make train`: on a cluster node that runs the site's Slurm,
# an install must not add a second slurmd.
# Debian's post-install scripts start and enable the daemons they install; a
# policy-rc.d that answers 101 ("action forbidden") keeps them stopped while they
# install. The tests start the daemons they need, in temp dirs, and stop them.
set -euo pipefail
packages=(openssh-server iproute2 slurmd slurmctld slurm-client munge debootstrap)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "test-deps: ${missing[*]} not installed: the two-host, Slurm and debootstrap tests will skip" \
       "(they need root; to run them: sudo make test-deps, then make test as root)"
  exit 0
fi
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then  # a site's own policy (Docker images have one) is kept
  trap 'rm -f "$policy"' EXIT
  printf '#!/bin/sh\n# hvd-alexnet scripts/test_deps.sh: no daemon starts while it installs\nexit 101\n' \
    > "$policy"
  chmod 755 "$policy"
fi
echo "test-deps: apt-get install ${missing[*]} (for the two-host, Slurm and debootstrap tests; about a minute;" \
     "their daemons are not started)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
echo "test-deps: done"
