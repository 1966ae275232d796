#!/usr/bin/env bash
# AlexNet on ImageNet, 1 GPU (one process, no launcher needed).
#   bash bin/run_train_alexnet_imagenet.sh [--extra_flag=value ...]
# DATA_DIR (default ./imagenet_tfrecord) and MODEL_DIR (default ./runs/alexnet, as every
# launch script's: a run started by one resumes under another) can be set; a MODEL_DIR
# holding a checkpoint resumes from it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="$ROOT/bin/$(basename "$0")"
source "$ROOT/bin/checks.sh"
PYTHON=${PYTHON:-$( [[ -L $ROOT/.venv/bin/python || -e $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
want_python
COMMAND=train  # a first argument `doctor` runs the preflight, launched alike, with the same flags
if [[ ${1:-} == train || ${1:-} == doctor ]]; then COMMAND=$1; shift; fi
DATA_DIR=${DATA_DIR:-$ROOT/imagenet_tfrecord} MODEL_DIR=${MODEL_DIR:-$ROOT/runs/alexnet}
export HVD_ALEXNET_RESUME=${HVD_ALEXNET_RESUME:-$(resume_command DATA_DIR MODEL_DIR -- "$@")}
cd "$ROOT"
exec "$PYTHON" -m hvd_alexnet "$COMMAND" \
  --data_dir="$DATA_DIR" \
  --model_dir="$MODEL_DIR" \
  --batch_size=32 --epochs=90 "$@"
