#!/usr/bin/env bash
# AlexNet on ImageNet with horovodrun, one rank per GPU.
# One host, 8 GPUs (runs: horovodrun -np 8 -H localhost:8 .venv/bin/python -m hvd_alexnet train ...):
#   NUM_GPUS=8 bash bin/run_train_alexnet_multigpu_imagenet.sh [--extra_flag=value ...]
#   NUM_GPUS=8 bash bin/run_train_alexnet_multigpu_imagenet.sh doctor   # the preflight, alike
# Several hosts (runs: horovodrun -np 16 -H gpu-node-01:8,gpu-node-02:8 --network-interface eth0 ...):
#   HOSTS=gpu-node-01:8,gpu-node-02:8 IFACE=eth0 bash bin/run_train_alexnet_multigpu_imagenet.sh
# HOSTS is host:slots,... (NP defaults to the sum of the slots); HOSTFILE=hostfiles/horovodrun.hosts
# reads them from a file instead. IFACE pins Horovod (and NCCL) to one interface; SSH_PORT sets
# ssh's port (-p); GLOO=1 uses Horovod's Gloo controller (--gloo) instead of mpirun. The launching
# host needs passwordless ssh to every other host, and every host this checkout, its .venv and
# DATA_DIR at the same paths. DATA_DIR (default ./imagenet_tfrecord), MODEL_DIR (default
# ./runs/alexnet, whatever the number of GPUs: a run resumes on another count). The learning
# rate is --base_lr x ranks; the global batch is --batch_size x ranks. HOROVODRUN_ARGS: more of
# horovodrun's own options, split at spaces ("--start-timeout 120 --output-filename logs").
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="$ROOT/bin/$(basename "$0")"
source "$ROOT/bin/checks.sh"
PYTHON=${PYTHON:-$( [[ -L $ROOT/.venv/bin/python || -e $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
want_python
# horovodrun that keeps the ranks' exit status (75 after a stop) and gives them
# SIGKILL_TIMEOUT s to checkpoint when it is signalled (hvd_alexnet/tools/horovodrun.py)
if [[ -n ${HOROVODRUN:-} ]]; then launcher=("$HOROVODRUN"); else
  launcher=("$PYTHON" -m hvd_alexnet.tools.horovodrun); fi
want_count NUM_GPUS NP SSH_PORT SIGKILL_TIMEOUT
COMMAND=train  # a first argument `doctor` runs the preflight, launched alike, with the same flags
if [[ ${1:-} == train || ${1:-} == doctor ]]; then COMMAND=$1; shift; fi
NUM_GPUS=${NUM_GPUS:-8}
slots=0
if [[ -n ${HOSTFILE:-} ]]; then
  hosts=(-hostfile "$HOSTFILE")
  slots=$(bash "$ROOT/bin/hostfile_slots.sh" "$HOSTFILE")
else
  HOSTS=${HOSTS:-localhost:$NUM_GPUS}
  want_host_slots HOSTS "$HOSTS"
  hosts=(-H "$HOSTS")
  for entry in ${HOSTS//,/ }; do slots=$((slots + ${entry##*:})); done
fi
NP=${NP:-$slots}
extra=()
[[ -n ${IFACE:-} ]] && { extra+=(--network-interface "$IFACE"); export NCCL_SOCKET_IFNAME="$IFACE"; }
[[ -n ${SSH_PORT:-} ]] && extra+=(-p "$SSH_PORT")
[[ ${GLOO:-0} == 1 ]] && extra+=(--gloo)
if [[ -n ${HOROVODRUN_ARGS:-} ]]; then read -ra more <<<"$HOROVODRUN_ARGS"; extra+=("${more[@]}"); fi
DATA_DIR=${DATA_DIR:-$ROOT/imagenet_tfrecord} MODEL_DIR=${MODEL_DIR:-$ROOT/runs/alexnet}
export HVD_ALEXNET_RESUME=${HVD_ALEXNET_RESUME:-$(resume_command NUM_GPUS HOSTS HOSTFILE NP \
  IFACE SSH_PORT GLOO HOROVODRUN_ARGS DATA_DIR MODEL_DIR -- "$@")}
cd "$ROOT"
exec "${launcher[@]}" -np "$NP" "${hosts[@]}" "${extra[@]}" \
  "$PYTHON" -m hvd_alexnet "$COMMAND" \
  --data_dir="$DATA_DIR" \
  --model_dir="$MODEL_DIR" \
  --batch_size=32 --epochs=90 "$@"
