#!/usr/bin/env bash
# Installs everything hvd-alexnet needs; idempotent, quick when done already.
#   bash scripts/install.sh     # the host's stack: with GPUs (nvidia-smi lists them)
#                               # tensorflow[and-cuda] and Horovod with NCCL, else tensorflow-cpu
#   CPU=1 bash scripts/install.sh                              # the CPU stack on any host
#   GPU=1 bash scripts/install.sh                              # the GPU stack on any host
# A .venv built as one stack is switched to the other only when asked (CPU=1, GPU=1).
#   TF_REQUIREMENTS=requirements-gpu.txt bash scripts/install.sh   # this stack (NCCL with GPU)
# Called by `make install`; every other make target depends on it. What only the
# tests need (sshd, Slurm) is scripts/test_deps.sh's, for `make test` alone.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
STAMP="$VENV/.installed"
BUILT="$VENV/.horovod-build"  # what Horovod was built with (pip keeps it if its version stays)

# 0. Which stack. On a host whose GPUs nvidia-smi lists, the GPU stack, never
#    tensorflow-cpu silently: a CPU TensorFlow there runs every rank on the CPU.
gpus=0
if command -v nvidia-smi >/dev/null; then
  while read -r line; do [[ $line == "GPU "* ]] && gpus=$((gpus + 1)); done \
    < <(nvidia-smi -L 2>/dev/null || true)
fi
# The stack (STACK): its TensorFlow files are requirements-$STACK-{cpu,gpu}.txt (none:
# requirements-{cpu,gpu}.txt, TensorFlow 2.15.1).
STACK=${STACK:-}
files=requirements${STACK:+-$STACK}
if [[ -n $STACK && ! -r $files-cpu.txt ]]; then
  echo "install: STACK=$STACK: no such stack (no $files-cpu.txt); the stacks: tf2.18 (TensorFlow" \
       "2.18.1 with tf-keras), tf2.21 (TensorFlow 2.21.0 with tf-keras, Horovod patched), or" \
       "none for the default, TensorFlow 2.15.1" >&2
  exit 2
fi
# The Pythons each stack's wheels serve, and the one it takes unless PYTHON is set: 3.11,
# else (tf2.21 on Debian 13, Ubuntu 24.04) the system's python3.
case $STACK in
  tf2.21) pythons="3.11 3.12 3.13" tensorflow="TensorFlow 2.21" ;;
  tf2.18) pythons="3.11 3.12" tensorflow="TensorFlow 2.18" ;;
  *) pythons="3.11" tensorflow="TensorFlow 2.15" ;;
esac
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3.11
  [[ $pythons != 3.11 ]] && ! command -v python3.11 >/dev/null && PYTHON=python3
fi
# A patch of the project's to Horovod's source, for a stack it does not build against
# unchanged (patches/horovod-tf2.21.patch): applied to the sdist before the build.
PATCH=patches/horovod-$STACK.patch
[[ -n $STACK && -r $PATCH ]] || PATCH=
asked=${TF_REQUIREMENTS:-}
if [[ -z ${TF_REQUIREMENTS:-} ]]; then
  if [[ ${CPU:-0} == 1 ]]; then
    TF_REQUIREMENTS=$files-cpu.txt asked=CPU=1
  elif [[ ${GPU:-0} == 1 ]]; then
    TF_REQUIREMENTS=$files-gpu.txt asked=GPU=1
  elif ((gpus > 0)); then
    TF_REQUIREMENTS=$files-gpu.txt
    echo "install: $gpus GPU(s) (nvidia-smi): the GPU stack, tensorflow[and-cuda] and Horovod" \
         "with NCCL (CPU=1 installs the CPU stack instead)"
  else
    TF_REQUIREMENTS=$files-cpu.txt
  fi
elif [[ $TF_REQUIREMENTS == *cpu* ]] && ((gpus > 0)) && [[ ${CPU:-0} != 1 ]]; then
  echo "install: this host has $gpus GPU(s) (nvidia-smi), but TF_REQUIREMENTS=$TF_REQUIREMENTS" \
       "is the CPU stack, which would run every rank on the CPU: run make install without" \
       "TF_REQUIREMENTS (the GPU stack), or with CPU=1 to use the CPU anyway" >&2
  exit 2
fi
[[ -r $TF_REQUIREMENTS ]] || { echo "install: TF_REQUIREMENTS=$TF_REQUIREMENTS: no such file" >&2; exit 2; }
# 0b. A .venv built as the other stack (a checkout shared by every host: built on a GPU
#     node, then any make target on the login node) is never switched unless asked:
#     it is what srun runs on the other nodes.
if [[ -z $asked && -f $BUILT ]]; then
  had=$(sed -n 's/^tensorflow=\([^ ]*\).*/\1/p' "$BUILT")
  if [[ -n $had && $had != "$TF_REQUIREMENTS" ]]; then
    if [[ $had == *gpu* ]]; then
      echo "install: $VENV holds the GPU stack, and nvidia-smi lists no GPU on this host" \
           "($(hostname)): installing here would switch it to the CPU stack, for every host" \
           "that shares it; install on a GPU node (srun -N1 --gpus=1 make install), or" \
           "CPU=1 make install to switch it" >&2
    else
      echo "install: $VENV holds the CPU stack, and nvidia-smi lists $gpus GPU(s) on this" \
           "host ($(hostname)): installing here would switch it to the GPU stack, for every" \
           "host that shares it; GPU=1 make install to switch it, or CPU=1 to keep it (then" \
           "train --cpu)" >&2
    fi
    exit 2
  fi
fi
# Horovod's GPU operations with the GPU stack, unless set (to NCCL, or empty for none).
[[ $TF_REQUIREMENTS == *gpu* && -z ${HOROVOD_GPU_OPERATIONS+set} ]] && export HOROVOD_GPU_OPERATIONS=NCCL
# What Horovod's build depends on: the TensorFlow, its GPU operations and, for NCCL,
# the CUDA of the nvcc found (none in the GPU image's final stage: not compared then).
# nvcc: HOROVOD_CUDA_HOME's, else the PATH's, else a toolkit NVIDIA's packages put off the
# PATH (/usr/local/cuda-12.2/bin); nothing if none.
find_nvcc() {
  local found
  for found in ${HOROVOD_CUDA_HOME:+"$HOROVOD_CUDA_HOME/bin/nvcc"} "$(command -v nvcc || true)" \
               /usr/local/cuda/bin/nvcc $(ls -d /usr/local/cuda-12*/bin/nvcc 2>/dev/null | sort -rV); do
    [[ -n $found && -x $found ]] && { echo "$found"; return; }
    [[ -n ${HOROVOD_CUDA_HOME:-} ]] && return  # asked for that toolkit: no other
  done
}
build="tensorflow=$TF_REQUIREMENTS horovod_gpu_operations=${HOROVOD_GPU_OPERATIONS:-}"
[[ -z $PATCH ]] || build+=" patch=$(sha256sum "$PATCH" | cut -c1-16)"  # a new patch: rebuilt
cuda=
if [[ ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]]; then
  nvcc=$(find_nvcc)
  [[ -n $nvcc ]] && cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
fi

# A long step prints a line every 30 s (elapsed time), so a build does not look hung.
step() {  # step "what, how long it takes" command...
  local what=$1 start
  shift
  start=$(date +%s)
  echo "install: $what"
  (  # its sleep killed with it: an orphaned sleep would hold the output open
    trap 'kill "$nap" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 30 & nap=$!
      wait "$nap"
      echo "install:   ... $(($(date +%s) - start)) s"
    done
  ) &
  local ticker=$! status=0
  "$@" || status=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  echo "install:   done in $(($(date +%s) - start)) s"
  return "$status"
}

# Every package comes from the lock of this TensorFlow file (requirements-cpu.lock,
# requirements-gpu.lock: pip-tools' pip-compile of the requirements files, every
# transitive package pinned with its hashes; `make lock` writes them), with
# --require-hashes: what is installed is what was locked, byte for byte.
LOCK=${TF_REQUIREMENTS%.txt}.lock
[[ -r $LOCK ]] || { echo "install: $LOCK: no such lock (make lock writes it)" >&2; exit 2; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# This checkout, editable: the console command hvd-alexnet on $VENV/bin (the same CLI as
# python -m hvd_alexnet), the code where it is. Not in an image's first layer, which
# holds the requirements alone (the Dockerfiles run this script again after the checkout).
checkout() {
  [[ -f pyproject.toml && -d hvd_alexnet && -x $VENV/bin/python ]] || return 0
  local here python=$VENV/bin/python
  [[ $python == /* ]] || python=$PWD/$python  # run from / (not this folder's hvd_alexnet)
  here=$(cd / && "$python" -c 'import hvd_alexnet, os
print(os.path.dirname(os.path.dirname(os.path.abspath(hvd_alexnet.__file__))))' 2>/dev/null || true)
  [[ -x $VENV/bin/hvd-alexnet && $here == "$PWD" ]] && return 0
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e .
  echo "install: $VENV/bin/hvd-alexnet $("$VENV/bin/hvd-alexnet" --version | cut -d' ' -f2)"
}

# 1. The virtual environment, rebuilt only when the lock changed. When it is up to
#    date nothing is built, so no compiler or -dev package is needed (the GPU
#    image's final stage has none).
inputs=("$LOCK" scripts/install.sh ${PATCH:+"$PATCH"})
want=$( { cat "${inputs[@]}"; echo "$build"; } | sha256sum | cut -d' ' -f1)
stamp=()
[[ -f $STAMP ]] && mapfile -t stamp < "$STAMP"
if [[ ${stamp[0]:-} == "$want" ]] && [[ -z $cuda || ${stamp[1]:-} == "cuda=$cuda" ]]; then
  echo "install: $VENV is up to date"
  checkout
  exit 0
fi
# A .venv another account built (a team's shared checkout) is updated by that account.
if [[ -e $VENV && ! -w $VENV ]]; then
  echo "install: $VENV needs installing again (its lock or build changed), and it is" \
       "$(stat -c %U "$VENV")'s, not writable by $(id -un): its owner runs make install, or" \
       "VENV=<a folder of yours> make install builds your own" >&2
  exit 2
fi

# 2. What the build needs from the system, checked by what it does rather than by
#    package name (the CPU image's Python is not Debian's): a C++ compiler and make,
#    Python 3.11 with its headers and venv (Debian and Ubuntu split them off), Open
#    MPI's compiler wrapper and mpirun (Horovod's MPI controller and mpi4py build
#    against them). CMake comes from the pinned wheel below. Installed as root with
#    apt-get, else named.
py=${PYTHON##*/}
need=()
command -v g++ >/dev/null && command -v make >/dev/null || need+=(build-essential)
if command -v "$PYTHON" >/dev/null; then
  "$PYTHON" -c 'import os, sysconfig; os.stat(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
    2>/dev/null || need+=("$py-dev")
  "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || need+=("$py-venv")
else
  need+=("$py" "$py-dev" "$py-venv")
fi
command -v mpicc >/dev/null || need+=(libopenmpi-dev)
[[ -z $PATCH ]] || command -v patch >/dev/null || need+=(patch)
command -v mpirun >/dev/null || need+=(openmpi-bin)
if ((${#need[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    step "[1/4] apt-get install ${need[*]} (what the build needs)" apt-get update -qq
    step "  ... installing" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "install: the build needs system packages: ${need[*]}" >&2
    echo "install: run: sudo apt-get install -y ${need[*]}  (Debian 12; Ubuntu 22.04:" \
         "python3.11 is in universe), then make install again" >&2
    echo "install: without root: PYTHON=/path/to/python3.11 (with its headers and venv: a" \
         "conda, pyenv or module Python) and an Open MPI on the PATH (module load openmpi)," \
         "then make install PYTHON=... again (docs/install.md, \"Without root\")" >&2
    exit 1
  fi
fi
command -v "$PYTHON" >/dev/null || { echo "install: $PYTHON not found ($tensorflow's stack takes Python ${pythons// /, })" >&2; exit 1; }
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [[ " $pythons " != *" $version "* ]]; then
  other=
  [[ $STACK != tf2.21 && " 3.11 3.12 3.13 " == *" $version "* ]] && other=", or STACK=tf2.21 for Python 3.11 to 3.13"
  echo "install: $PYTHON is Python $version, and $tensorflow's stack takes Python" \
       "${pythons// /, }: PYTHON=python3.11$other" >&2
  exit 1
fi
# The GPU build's prerequisites, before any download (the GPU stack's wheels are about
# 3 GB): Horovod's GPU operations include CUDA kernels, so its build needs nvcc and the
# CUDA runtime's headers from a CUDA 12 toolkit (TensorFlow's CUDA wheels carry ptxas,
# no nvcc and no headers).
if [[ ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]]; then
  cudas="NVIDIA's cuda-nvcc-12-2 and cuda-cudart-dev-12-2 packages (from NVIDIA's CUDA"
  cudas+=" repository, developer.download.nvidia.com/compute/cuda/repos/; they install to"
  cudas+=" /usr/local/cuda-12.2), a CUDA module (module load cuda/12.2), or HOROVOD_CUDA_HOME"
  nvcc=$(find_nvcc)
  if [[ -z $nvcc ]]; then
    echo "install: the GPU stack's Horovod build needs nvcc and the CUDA runtime headers of a" \
         "CUDA 12 toolkit, and found no nvcc (HOROVOD_CUDA_HOME, the PATH, /usr/local/cuda*):" \
         "install $cudas; nothing was downloaded" >&2
    exit 1
  fi
  if [[ -z ${HOROVOD_CUDA_HOME:-} ]]; then  # nvcc may be a wrapper: its toolkit has the headers
    for home in "$(dirname "$(dirname "$(readlink -f "$nvcc")")")" "$(dirname "$(dirname "$nvcc")")" \
                /usr/local/cuda; do
      if [[ -x $home/bin/nvcc && -e $home/include/cuda_runtime.h ]]; then
        export HOROVOD_CUDA_HOME=$home
        break
      fi
    done
  fi
  if [[ ! -e ${HOROVOD_CUDA_HOME:-/nonexistent}/include/cuda_runtime.h ]]; then
    echo "install: the GPU stack's Horovod build needs the CUDA runtime headers" \
         "(include/cuda_runtime.h) beside nvcc $nvcc, and found none: install $cudas;" \
         "nothing was downloaded" >&2
    exit 1
  fi
  cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
  echo "install: nvcc $nvcc (CUDA $cuda, toolkit $HOROVOD_CUDA_HOME)"
  [[ $cuda == 12.* ]] || echo "install: WARNING: TensorFlow's GPU wheels are CUDA 12's (2.15: 12.2, 2.18: 12.5), this" \
    "nvcc is CUDA $cuda: Horovod's kernels and its static CUDA runtime will be $cuda's (a driver" \
    "for CUDA $cuda is then needed, and CUDA 13 compiles for Turing and newer only)" >&2
fi
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
# The lock's entries but Horovod's, and Horovod's alone (built from source below): an
# entry is a line at the first column and its indented --hash lines.
lock_part() {  # lock_part all|horovod FILE
  awk -v want="$1" '/^[A-Za-z]/ { keep = (($0 ~ /^horovod==/) == (want == "horovod")) }
                    /^[A-Za-z]|^ +--hash/ { if (keep) print }' "$LOCK" > "$2"
}
lock_part all "$VENV/.lock-packages.txt"
lock_part horovod "$VENV/.lock-horovod.txt"
packages() {
  "${PIP[@]}" install -q --require-hashes -r "$VENV/.lock-packages.txt"
}
step "[2/4] $VENV: pip, CMake, TensorFlow and the Python packages (1 to 3 minutes)" packages

# 3. Horovod from source, against this TensorFlow and the system MPI. (mpi4py's
#    wheel finds the system Open MPI at run time; building it takes 15 GB of RAM.)
export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
export MAKEFLAGS="-j$(nproc)"
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"   # the venv's cmake and python for the build
if [[ ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]]; then
  # 3a. NCCL: the system's (NVIDIA's CUDA images hold one), else the one TensorFlow's
  #     CUDA wheels brought (nvidia-nccl-cu12, which has no libnccl.so link: made here).
  if [[ -z ${HOROVOD_NCCL_HOME:-}${HOROVOD_NCCL_INCLUDE:-} && ! -e /usr/include/nccl.h ]]; then
    wheel=$("$VENV/bin/python" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))')
    mkdir -p "$VENV/nccl"
    ln -sfn "$wheel/include" "$VENV/nccl/include"
    mkdir -p "$VENV/nccl/lib" && ln -sf "$wheel/lib/libnccl.so.2" "$VENV/nccl/lib/libnccl.so"
    ln -sf "$wheel/lib/libnccl.so.2" "$VENV/nccl/lib/libnccl.so.2"
    export HOROVOD_NCCL_INCLUDE="$(cd "$VENV/nccl/include" && pwd)" HOROVOD_NCCL_LINK=SHARED
    export HOROVOD_NCCL_LIB="$(cd "$VENV/nccl/lib" && pwd)"
    echo "install: NCCL from TensorFlow's wheel: $wheel"
  fi
fi
# A Horovod built with other settings (the other TensorFlow, without NCCL, another CUDA)
# is kept by pip while its version is unchanged: uninstall it, so it is built again.
# The other TensorFlow goes too: tensorflow-cpu and tensorflow write the same package.
now="$build cuda=$cuda"
if [[ -f $BUILT && $(cat "$BUILT") != "$now" ]] ||
   [[ ! -f $BUILT && ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]]; then
  echo "install: Horovod was built with $(cat "$BUILT" 2>/dev/null || echo 'settings not recorded')," \
       "now $now: building it again"
  if [[ -f $BUILT && $(cut -d' ' -f1 "$BUILT") != "${build%% *}" ]]; then
    "${PIP[@]}" uninstall -q -y tensorflow-cpu tensorflow || true
    "${PIP[@]}" install -q --require-hashes -r "$VENV/.lock-packages.txt"
  fi
  "${PIP[@]}" uninstall -q -y horovod || true
fi
# A Horovod built against another TensorFlow refuses to load (HorovodVersionMismatchError),
# and pip keeps it when its own version is unchanged: uninstall it, so it is built again.
built_for=$("$VENV/bin/python" -c 'import importlib.util as u, json, os
s = u.find_spec("horovod")
print(json.load(open(os.path.join(os.path.dirname(s.origin), "metadata.json"))).get("tensorflow", "")
      if s else "")')
if [[ -n $built_for ]]; then
  tf_version=$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" -c 'import tensorflow as tf; print(tf.__version__)')
  if [[ $built_for != "$tf_version" ]]; then
    echo "install: Horovod was built for TensorFlow $built_for, this is $tf_version: building it again"
    "${PIP[@]}" uninstall -q -y horovod
  fi
fi
if [[ -z $PATCH ]]; then
  step "[3/4] building Horovod from source against this TensorFlow (3 to 6 minutes on 2 cores)" \
    "${PIP[@]}" install -q --no-cache-dir --no-build-isolation --no-binary=horovod --no-deps \
    --require-hashes -r "$VENV/.lock-horovod.txt"
elif ! "${PIP[@]}" show -q horovod >/dev/null 2>&1; then
  # the locked sdist (its hash checked), unpacked, patched, built (once: kept above
  # while what it was built with is unchanged, as pip keeps the unpatched one)
  source_dir="$VENV/.horovod-source"
  rm -rf "$source_dir" && mkdir -p "$source_dir"
  "${PIP[@]}" download -q --no-deps --no-binary=horovod --require-hashes \
    -r "$VENV/.lock-horovod.txt" -d "$source_dir"
  tar -xzf "$source_dir"/horovod-*.tar.gz -C "$source_dir"
  tree=$(echo "$source_dir"/horovod-*/)
  patch -d "$tree" -p1 --forward --quiet < "$PATCH"
  echo "install: Horovod's source patched with $PATCH"
  step "[3/4] building Horovod from source against this TensorFlow (3 to 6 minutes on 2 cores)" \
    "${PIP[@]}" install -q --no-cache-dir --no-build-isolation --no-deps "$tree"
  rm -rf "$source_dir"
fi

# 4. Check the build: Horovod must have TensorFlow, MPI and Gloo (and NCCL when asked).
echo "install: [4/4] horovodrun --check-build"
report=$(TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/horovodrun" --check-build)
echo "$report"
want_lines=("\[X\] TensorFlow" "\[X\] MPI" "\[X\] Gloo")
[[ ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]] && want_lines+=("\[X\] NCCL")
for want_line in "${want_lines[@]}"; do
  grep -q "$want_line" <<<"$report" || { echo "install: Horovod build lacks ${want_line//\\/}" >&2; exit 1; }
done
# 5. This checkout (checkout, above).
checkout
printf '%s\ncuda=%s\n' "$want" "$cuda" > "$STAMP"
echo "$now" > "$BUILT"
echo "install: done"
