#!/usr/bin/env bash
# AlexNet on ImageNet, NUM_GPUS GPUs on this host (default 8), one rank per GPU.
#   NUM_GPUS=8 bash bin/run_train_alexnet_multigpu_imagenet.sh [--extra_flag=value ...]
# DATA_DIR (default ./imagenet_tfrecord), MODEL_DIR (default ./runs/alexnet_${NUM_GPUS}gpu).
# The learning rate is --base_lr x ranks; the global batch is --batch_size x ranks.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-$( [[ -x $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
HOROVODRUN=${HOROVODRUN:-$(dirname "$PYTHON")/horovodrun}
NUM_GPUS=${NUM_GPUS:-8}
cd "$ROOT"
exec "$HOROVODRUN" -np "$NUM_GPUS" -H "localhost:$NUM_GPUS" \
  "$PYTHON" -m hvd_alexnet train \
  --data_dir="${DATA_DIR:-./imagenet_tfrecord}" \
  --model_dir="${MODEL_DIR:-./runs/alexnet_${NUM_GPUS}gpu}" \
  --batch_size=32 --epochs=90 "$@"
