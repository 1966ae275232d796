# Sourced by scripts/docker_base.sh and scripts/docker_test.sh: the Docker engine
# they use, started by them when none answers, and stopped by them when they end.
# The engine they start has no bridge network (--bridge=none, no iptables rules):
# every build and run uses --network=host, so nothing is sent to any address but
# this machine's (and whatever its package registries are).
#   need_root NAME           # exit 1 with one line unless root
#   apt_install NAME PACKAGE WHAT  # Debian's PACKAGE, or exit 1 with one line
#   engine_up NAME LOGDIR    # an engine that answers, or exit 1 with why (after need_root)
#   engine_down              # stops the engine engine_up started, by its pid; none else
# (the caller runs engine_down on EXIT)
ENGINE_PID=

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "$1: the Docker engine needs root: run  sudo make $1" >&2
    exit 1
  fi
}

apt_install() {
  echo "$1: apt-get install $2 ($3)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null \
    || { echo "$1: could not install $2 with apt-get" >&2; exit 1; }
}

engine_up() {
  local name=$1 logdir=$2
  if docker info >/dev/null 2>&1; then
    echo "$name: using the Docker engine that is running (left running afterwards)"
    return
  fi
  command -v dockerd >/dev/null || apt_install "$name" docker.io "the Docker engine; about a minute"
  mkdir -p "$logdir"
  rm -f "$logdir/dockerd.pid"
  # Debian's package enables the engine's socket unit; a daemon of our own is
  # started here instead, so that it has no bridge and is stopped when we end.
  dockerd --bridge=none --iptables=false --ip6tables=false \
    --pidfile "$logdir/dockerd.pid" >"$logdir/dockerd.log" 2>&1 &
  ENGINE_PID=$!
  local waited=0
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$ENGINE_PID" 2>/dev/null || ((waited >= 60)); then
      echo "$name: dockerd did not start (its log: $logdir/dockerd.log):" >&2
      tail -n 5 "$logdir/dockerd.log" >&2
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  echo "$name: started dockerd (pid $ENGINE_PID, no bridge network; log: $logdir/dockerd.log)"
}

engine_down() {
  [[ -n $ENGINE_PID ]] || return 0
  kill -TERM "$ENGINE_PID" 2>/dev/null || true
  local waited=0
  while kill -0 "$ENGINE_PID" 2>/dev/null; do
    if ((waited >= 60)); then
      kill -KILL "$ENGINE_PID" 2>/dev/null || true
    fi
    sleep 1
    waited=$((waited + 1))
  done
  wait "$ENGINE_PID" 2>/dev/null || true
  echo "docker: stopped the dockerd this target started (pid $ENGINE_PID)"
  ENGINE_PID=
}
