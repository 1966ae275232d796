#!/usr/bin/env bash
# AlexNet on ImageNet, 1 GPU (one process, no launcher needed).
#   bash bin/run_train_alexnet_imagenet.sh [--extra_flag=value ...]
# DATA_DIR (default ./imagenet_tfrecord) and MODEL_DIR (default ./runs/alexnet_1gpu)
# can be set; a MODEL_DIR holding a checkpoint resumes from it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
cd "$ROOT"
exec "$PYTHON" -m hvd_alexnet train \
  --data_dir="${DATA_DIR:-./imagenet_tfrecord}" \
  --model_dir="${MODEL_DIR:-./runs/alexnet_1gpu}" \
  --batch_size=32 --epochs=90 "$@"
