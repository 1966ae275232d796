#!/usr/bin/env bash
# AlexNet on ImageNet across hosts with mpirun and a hostfile (one rank per GPU).
#   NP=16 HOSTFILE=hostfiles/mpirun.hosts bash bin/run_train_alexnet_multinode.sh [--flag=value ...]
# Every host needs the same paths: this checkout, its .venv and DATA_DIR
# (a shared filesystem or a copy per host). Only rank 0 writes MODEL_DIR.
# IFACE (e.g. eth0) pins MPI and Horovod to one network interface; SSH_PORT sets ssh's port.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
NP=${NP:-16}
HOSTFILE=${HOSTFILE:-$ROOT/hostfiles/mpirun.hosts}
extra=()
[[ -n ${IFACE:-} ]] && extra+=(-mca btl_tcp_if_include "$IFACE" -mca oob_tcp_if_include "$IFACE" -x NCCL_SOCKET_IFNAME="$IFACE")
[[ -n ${SSH_PORT:-} ]] && extra+=(-mca plm_rsh_args "-p $SSH_PORT")
[[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
cd "$ROOT"
exec mpirun -np "$NP" --hostfile "$HOSTFILE" \
  -bind-to none -map-by slot \
  -mca pml ob1 -mca btl ^openib \
  -x PATH -x LD_LIBRARY_PATH -x PYTHONPATH -x NCCL_DEBUG=WARN \
  -x HOROVOD_FUSION_THRESHOLD -x HOROVOD_CYCLE_TIME \
  "${extra[@]}" \
  "$PYTHON" -m hvd_alexnet train \
  --data_dir="${DATA_DIR:-$ROOT/imagenet_tfrecord}" \
  --model_dir="${MODEL_DIR:-$ROOT/runs/alexnet_multinode}" \
  --batch_size=32 --epochs=90 "$@"
