#!/usr/bin/env bash
# `make docker-test` (as root): builds docker/Dockerfile.cpu ($IMAGE:cpu) and
# docker/Dockerfile's two stages on the same CPU base ($IMAGE:gpu-stages-on-cpu),
# runs the demo in the second and `make test` in the first as the image's user
# (hvd, uid 1000), then prints how many tests passed and skipped, and why they
# skipped. Not part of `make test`: about 10 minutes of builds, then the demo and
# the suite (docs/install.md).
# The base: BASE_IMAGE if set; else `make docker-base`'s image when it exists (no
# registry needed); else the Dockerfile's own (python:3.11.7-slim-bookworm).
# PYTEST_ARGS: passed on to the suite (PYTEST_ARGS=tests/test_docker.py: one file).
# The engine: the running one, else a dockerd started here with no bridge network
# and stopped at the end. Every build and run uses --network=host.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-hvd-alexnet}
LOCAL_BASE=${LOCAL_BASE:-hvd-alexnet-base:bookworm}
LOGDIR=${LOGDIR:-runs/docker}
# shellcheck source=scripts/docker_engine.sh
source scripts/docker_engine.sh
# shellcheck source=bin/checks.sh
source bin/checks.sh
need_root docker-test
want_count DOCKER_TEST_NEED_GB
# Long commands run in the background and are waited for, so that a signal to this
# script is handled at once (bash runs a trap only after a foreground command ends):
# on the way out it stops the command, removes the container, stops its engine.
child= container= follower=
waited() {  # waited LOG COMMAND...: runs it, its output to LOG; returns its status
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  child=$!
  local status=0
  wait "$child" || status=$?
  child=
  return "$status"
}
on_exit() {
  [[ -z $child ]] || kill "$child" 2>/dev/null || true
  [[ -z $follower ]] || kill "$follower" 2>/dev/null || true
  [[ -z $container ]] || docker rm -f "$container" >/dev/null 2>&1 || true
  engine_down
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mkdir -p "$LOGDIR"
engine_up docker-test "$LOGDIR"

# Room in the engine's data root, checked before anything is built: the images and
# their build cache (about 8 GB, unless both images are there already) and the
# suite's temporary folders in the test container (about 4 GB). A disk that fills
# during the suite fails dozens of tests at random, and the engine loses their log.
# DOCKER_TEST_NEED_GB=N: another estimate, in GB.
root=$(docker info -f '{{.DockerRootDir}}' 2>/dev/null || true)
root=${root:-/var/lib/docker}
need=${DOCKER_TEST_NEED_GB:-}
if [[ -z $need ]]; then
  need=4
  docker image inspect "$IMAGE:cpu" "$IMAGE:gpu-stages-on-cpu" >/dev/null 2>&1 || need=12
fi
free=$(df -Pk "$root" 2>/dev/null | awk 'NR == 2 { print int($4 / 1048576) }')
if [[ -n $free ]] && ((free < need)); then
  echo "docker-test: the Docker engine's folder $root has $free GB free;" \
       "the images and the suite need about $need GB: make room there" >&2
  exit 1
fi

build_args=()
if [[ -z ${BASE_IMAGE:-} ]] && docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
  BASE_IMAGE=$LOCAL_BASE
fi
[[ -z ${BASE_IMAGE:-} ]] || build_args=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
base=${BASE_IMAGE:-the Dockerfile default}

# The classic builder: its "Step N/M" lines name the failing step, and it tags the
# image only when every step succeeded (a failed build leaves no tagged image).
build() {  # build DOCKERFILE TAG BUILD_ARG...
  local file=$1 tag=$2 log=$LOGDIR/build-${2##*:}.log start
  shift 2
  echo "docker-test: docker build -f $file -t $tag (base $base; 5 to 15 minutes; log: $log)"
  start=$(date +%s)
  if ! waited "$log" env DOCKER_BUILDKIT=0 docker build --network=host "$@" -f "$file" -t "$tag" .
  then
    local step
    step=$(grep -E '^Step [0-9]+/[0-9]+ : ' "$log" | tail -n 1)
    echo "docker-test: the build of $file failed at ${step:-its start}" >&2
    echo "docker-test: $(grep -v '^\s*$' "$log" | tail -n 1)" >&2
    echo "docker-test: the build's log: $log" >&2
    if [[ -z ${BASE_IMAGE:-} && $step == *" : FROM "* ]]; then
      echo "docker-test: where no registry answers, make docker-base makes a base here" >&2
    fi
    exit 1
  fi
  echo "docker-test: built $tag in $(($(date +%s) - start)) s" \
       "($(docker image inspect -f '{{.Size}}' "$tag" | awk '{ printf "%.1f GB", $1 / 1e9 }'))"
}
build docker/Dockerfile.cpu "$IMAGE:cpu" "${build_args[@]}"
# docker/Dockerfile's two stages (the build, then a final stage with no compiler
# that the built .venv is copied into) on the same CPU base, with the CPU stack:
# everything but CUDA, cuDNN and NCCL, which no CPU base has.
gpu_base=${BASE_IMAGE:-python:3.11.7-slim-bookworm}
build docker/Dockerfile "$IMAGE:gpu-stages-on-cpu" --build-arg "BUILD_IMAGE=$gpu_base" \
  --build-arg "BASE_IMAGE=$gpu_base" --build-arg TF_REQUIREMENTS=requirements-cpu.txt \
  --build-arg HOROVOD_GPU_OPERATIONS=

# The demo in the second image: its copied .venv runs 2 ranks without a compiler.
log=$LOGDIR/train-gpu-stages-on-cpu.log
container=hvd-alexnet-train-$$
echo "docker-test: make train in $IMAGE:gpu-stages-on-cpu (the demo, 2 ranks; log: $log)"
start=$(date +%s)
if ! waited "$log" docker run --rm --init --network=host --ipc=host --name "$container" \
     "$IMAGE:gpu-stages-on-cpu" make train; then
  echo "docker-test: make train failed in $IMAGE:gpu-stages-on-cpu: $(tail -n 1 "$log") (log: $log)" >&2
  exit 1
fi
container=
echo "docker-test: the demo in $IMAGE:gpu-stages-on-cpu, $(($(date +%s) - start)) s:" \
     "$(grep -o 'Accuracy @ 1.*' "$log" | tail -n 1)"

# --init: a process that reaps the ranks the tests kill (make as pid 1 would not,
# and a zombie still answers pgrep). --ipc=host: the ranks' shared memory.
log=$LOGDIR/test-cpu.log
container=hvd-alexnet-test-$$
echo "docker-test: make test in $IMAGE:cpu as its user (log: $log)"
start=$(date +%s)
status=0
: >"$log"
tail -n +1 -f "$log" &  # the suite's output as it comes
follower=$!
waited "$log" docker run --rm --init --network=host --ipc=host --name "$container" "$IMAGE:cpu" \
  make test PYTEST_ARGS="-rs ${PYTEST_ARGS:-}" || status=$?
container=
sleep 1
kill "$follower"
follower=
elapsed=$(($(date +%s) - start))
summary=$(grep -E '^=+ .*[0-9]+ (passed|failed|error).* in [0-9.]+s' "$log" | tail -n 1 | sed 's/^=* *//; s/ *=*$//')
echo
echo "docker-test: make test in $IMAGE:cpu: ${summary:-no pytest summary} (${elapsed} s in all)"
if grep -q '^SKIPPED' "$log"; then
  echo "docker-test: skipped, by reason:"
  sed -n 's/^SKIPPED \[\([0-9]*\)\] [^:]*:[0-9]*: /\1 /p' "$log" \
    | awk '{ n = $1; $1 = ""; count[substr($0, 2)] += n } END { for (r in count) printf "  %3d  %s\n", count[r], r }'
fi
exit "$status"
