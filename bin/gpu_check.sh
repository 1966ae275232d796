#!/usr/bin/env bash
# A GPU host's check, in a few minutes and with no data set but a few demo records
# (--data_dir, data/demo by default: make gpu-check makes it): what TensorFlow and
# Horovod were built with and see, each rank's device and GPU (PCI bus id), where
# the trainer's feed puts its batches, synthetic images/s at fp32
# and mixed float16 on 1 GPU and on all of them (scaling efficiency), Horovod's
# all-reduce of AlexNet's 247 MB of gradients over NCCL, and plan's prediction
# beside the measurement; then one check a line and a verdict (exit 0 ready, 2 not).
#   bash bin/gpu_check.sh                 # every GPU of this host
#   bash bin/gpu_check.sh --ranks=4 --batch=128
# Without a GPU it runs the same on the CPU and says so (`make test` runs it so).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
cd "$ROOT"
exec "$PYTHON" -m hvd_alexnet.tools.gpu_check "$@"
