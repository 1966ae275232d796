"""Flags of `python -m hvd_alexnet train`, their defaults, and their validation.

    python -m hvd_alexnet train --data_dir imagenet_tfrecord --model_dir runs/alexnet
    python -m hvd_alexnet train --flagfile my_run.flags     # one flag a line

Every check that can fail is done here, before TensorFlow builds anything.
"""

import os
import shutil
import types

from absl import flags

from hvd_alexnet.model import MIN_IMAGE_SIZE

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "mixed")

# Data
flags.DEFINE_string("data_dir", None, "Folder of train-*/validation-* TFRecord shards.")
flags.DEFINE_bool("synthetic", False, "Random in-memory data, no files: the compute-only benchmark.")
flags.DEFINE_integer("image_size", 227, f"Input height and width (at least {MIN_IMAGE_SIZE}).")
flags.DEFINE_integer("num_classes", 1000, "Classes; taken from metadata.json when not given.")
flags.DEFINE_bool("augment", True, "Distorted crop and flip for training (off: central crop).")
flags.DEFINE_bool("flip", True, "Random left-right flips in training (off for digits, text).")
flags.DEFINE_bool("shuffle", True, "Shuffle shards and records within each rank every epoch.")
flags.DEFINE_bool("skip_corrupt", False,
                  "Skip (and count) records that do not decode or have a bad label, "
                  "instead of stopping with an error naming the record.")
flags.DEFINE_float("crop_area_min", 0.05, "Smallest area fraction of the distorted crop.")
# Optimisation
flags.DEFINE_integer("batch_size", 32, "Images per rank per step (global batch = this x ranks).")
flags.DEFINE_integer("accumulate_steps", 1,
                     "Micro-batches of --batch_size per rank and step, their gradients summed "
                     "locally and all-reduced once: amortises the all-reduce (global batch and "
                     "learning rate grow K-fold, activation memory does not).")
flags.DEFINE_integer("epochs", 90, "Training epochs.")
flags.DEFINE_integer("max_steps", 0, "Stop after this many global steps (0: no limit).")
flags.DEFINE_float("base_lr", 0.0025, "Learning rate per rank; the peak rate is this x ranks.")
flags.DEFINE_float("warmup_epochs", 2.0, "Linear warm-up from ~0 to the peak rate.")
flags.DEFINE_enum("lr_schedule", "step", SCHEDULES, "Decay after the warm-up.")
flags.DEFINE_list("lr_decay_epochs", ["30", "60", "80"], "Epochs at which the step schedule decays.")
flags.DEFINE_float("lr_decay_factor", 0.1, "Factor of each step decay.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay on the kernels (not the biases).")
flags.DEFINE_float("dropout", 0.5, "Dropout rate of the two hidden FC layers.")
flags.DEFINE_enum("precision", "fp32", PRECISIONS,
                  "mixed: mixed_bfloat16 on CPU, mixed_float16 (with loss scaling) on GPU.")
# Horovod
flags.DEFINE_float("fusion_threshold_mb", None,
                   "Horovod tensor-fusion buffer in MiB (default: $HOROVOD_FUSION_THRESHOLD, else "
                   "Horovod's 128).")
flags.DEFINE_float("cycle_time_ms", None,
                   "Horovod cycle time in ms (default: $HOROVOD_CYCLE_TIME, else 10 on CPU "
                   "hosts and Horovod's 1 on GPU hosts).")
flags.DEFINE_bool("fp16_allreduce", False, "Compress gradients to float16 for the all-reduce.")
flags.DEFINE_float("stall_timeout_sec", 1800,
                   "A rank without progress for this long (stuck reading, or in a collective "
                   "whose peer hangs) ends the job; 0: never. Keep it above a validation pass.")
flags.DEFINE_bool("horovod_timeline", False,
                  "Write Horovod's timeline of the run (every tensor's negotiation, fusion and "
                  "all-reduce, per rank) to MODEL_DIR/horovod_timeline.json; open it in "
                  "chrome://tracing or https://ui.perfetto.dev. Large on long runs: use it "
                  "with --max_steps.")
flags.DEFINE_integer("threads", 0, "CPU threads per rank (0: the host's cores / ranks on the host).")
# Validation, logging, checkpoints
flags.DEFINE_string("model_dir", None, "Where checkpoints and the DLLogger log go (required).")
flags.DEFINE_integer("eval_every_epochs", 1, "Validate every N epochs (0: only at the end).")
flags.DEFINE_bool("eval", True, "Validate at all.")
flags.DEFINE_integer("eval_batch_size", 64, "Images per validation batch (rank 0).")
flags.DEFINE_integer("log_every", 10, "Log loss, learning rate and images/sec every N steps.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept in model_dir.")
flags.DEFINE_integer("checkpoint_every_steps", 0,
                     "Also checkpoint every N steps (0: at the end of each epoch only); what a "
                     "crash can cost. SIGTERM / SIGINT always checkpoint first.")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_bool("deterministic", False,
                  "Deterministic ops and data order (slower; for reproducing runs exactly).")

FLAGS = flags.FLAGS


class UsageError(ValueError):
    """A flag or the environment is wrong; found before any heavy work."""


def train_flag_names():
    return [f.name for f in FLAGS.get_flags_for_module(__name__)]


def from_flags():
    """The train flags as a namespace, after validation (raises UsageError)."""
    cfg = types.SimpleNamespace(**{name: FLAGS[name].value for name in train_flag_names()})
    cfg.num_classes_given = FLAGS["num_classes"].present
    validate(cfg)
    return cfg


def validate(cfg):
    problems = []
    if not cfg.synthetic and not cfg.data_dir:
        problems.append("--data_dir is required (or --synthetic)")
    if not cfg.synthetic and cfg.data_dir and not os.path.isdir(cfg.data_dir):
        problems.append(f"--data_dir {cfg.data_dir}: no such directory")
    if not cfg.model_dir:
        problems.append("--model_dir is required")
    if cfg.image_size < MIN_IMAGE_SIZE:
        problems.append(f"--image_size {cfg.image_size}: must be at least {MIN_IMAGE_SIZE}")
    for name in ("batch_size", "eval_batch_size", "epochs", "log_every", "keep_checkpoints",
                 "accumulate_steps"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} {getattr(cfg, name)}: must be at least 1")
    for name in ("max_steps", "eval_every_epochs", "threads", "warmup_epochs", "weight_decay",
                 "stall_timeout_sec", "checkpoint_every_steps"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name} {getattr(cfg, name)}: must not be negative")
    if cfg.num_classes < 2:
        problems.append(f"--num_classes {cfg.num_classes}: must be at least 2")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"--dropout {cfg.dropout}: must be in [0, 1)")
    if not 0 < cfg.crop_area_min <= 1:
        problems.append(f"--crop_area_min {cfg.crop_area_min}: must be in (0, 1]")
    if cfg.base_lr <= 0:
        problems.append(f"--base_lr {cfg.base_lr}: must be positive")
    try:
        cfg.lr_decay_epochs = sorted(float(e) for e in cfg.lr_decay_epochs)
    except ValueError:
        problems.append(f"--lr_decay_epochs {cfg.lr_decay_epochs}: want numbers, e.g. 30,60,80")
    for name in ("fusion_threshold_mb", "cycle_time_ms"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            problems.append(f"--{name} {getattr(cfg, name)}: must not be negative")
    if cfg.model_dir and not problems:
        problems += check_model_dir(cfg.model_dir)
    if problems:
        raise UsageError("; ".join(problems))


def check_model_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        return [f"--model_dir {path}: cannot be written ({e.strerror})"]
    return []


def check_disk(path, needed_bytes):
    """Refuses to start when model_dir cannot hold one more checkpoint."""
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise UsageError(f"--model_dir {path}: {free >> 20} MiB free, but a checkpoint "
                         f"needs about {needed_bytes >> 20} MiB")
