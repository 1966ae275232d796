"""Flags of `python -m hvd_alexnet train` (and of `doctor`, which checks a
training run's flag file), their defaults, and their validation.

    python -m hvd_alexnet train --data_dir imagenet_tfrecord --model_dir runs/alexnet
    python -m hvd_alexnet train --flagfile my_run.flags     # one flag a line

Every check that can fail is done here, before TensorFlow builds anything.
"""

import dataclasses
import os
import shutil
import typing

from absl import flags

from hvd_alexnet import command
from hvd_alexnet.errors import UsageError
from hvd_alexnet.model import MIN_IMAGE_SIZE

SCHEDULES = ("step", "cosine", "constant")
PRECISIONS = ("fp32", "mixed", "fp16", "bf16")
# A checkpoint holds the weights and SGD's momentum (one slot per weight), plus
# TensorFlow's index and the write of the next one before the oldest is deleted.
CHECKPOINT_FACTOR = 2.2


def define(fv):
    """Defines the training flags on `fv` and returns it."""
    d = command.definers(fv)
    # Data
    d.string("data_dir", None, "Folder of train-*/validation-* TFRecord shards.")
    d.bool("synthetic", False, "Random in-memory data, no files: the compute-only benchmark.")
    d.integer("image_size", 227, f"Input height and width (at least {MIN_IMAGE_SIZE}).")
    d.integer("num_classes", None, "Classes (default: metadata.json's, else 1000).")
    d.integer("first_label", 1,
              "The first class's label in the data: 1 from ImageNet's converters (0 is the "
              "unused background), 0 from TensorFlow Datasets' exports and some converters.")
    d.string("synsets_file", None,
             "ImageNet's synset list, one a line in label order (build_imagenet_data.py's "
             "--labels_file, imagenet_lsvrc_2015_synsets.txt): every class named and numbered "
             "from it (label = --first_label + its line), checked against the data.")
    d.string("names_file", None,
             "Lines of `synset name` (build_imagenet_data.py's --imagenet_metadata_file, "
             "imagenet_metadata.txt): the classes' readable names, for export and predict.")
    d.bool("augment", True, "Distorted crop and flip for training (off: central crop).")
    d.bool("flip", True, "Random left-right flips in training (off for digits, text).")
    d.bool("shuffle", True, "Shuffle shards and records within each rank every epoch.")
    d.bool("skip_corrupt", False,
           "Skip (and count) records that do not decode or have a bad label, "
           "instead of stopping with an error naming the record.")
    d.float("crop_area_min", 0.05, "Smallest area fraction of the distorted crop.")
    # Optimisation
    d.integer("batch_size", 32, "Images per rank per step (global batch = this x ranks).")
    d.integer("accumulate_steps", 1,
              "Micro-batches of --batch_size per rank and step, their gradients summed "
              "locally and all-reduced once: amortises the all-reduce (global batch and "
              "learning rate grow K-fold, activation memory does not).")
    d.integer("epochs", 90, "Training epochs.")
    d.integer("max_steps", 0, "Stop after this many global steps (0: no limit).")
    d.float("base_lr", 0.0025, "Learning rate per rank and micro-batch: the peak rate is this "
            "x ranks x --accumulate_steps.")
    d.float("warmup_epochs", 2.0, "Linear warm-up from ~0 to the peak rate.")
    d.enum("lr_schedule", "step", SCHEDULES, "Decay after the warm-up.")
    d.list("lr_decay_epochs", ["30", "60", "80"], "Epochs at which the step schedule decays.")
    d.float("lr_decay_factor", 0.1, "Factor of each step decay.")
    d.float("momentum", 0.9, "SGD momentum.")
    d.float("weight_decay", 1e-4, "L2 weight decay on the kernels (not the biases).")
    d.float("dropout", 0.5, "Dropout rate of the two hidden FC layers.")
    d.enum("precision", "fp32", PRECISIONS,
           "fp32; fp16: mixed float16 with dynamic loss scaling (what GPUs run fast; on a CPU "
           "it runs, slowly); bf16: mixed bfloat16 (fast on CPUs with AMX/AVX512-BF16, and on "
           "A100 and newer); mixed: the device's best (fp16 on a GPU, bf16 on a CPU).")
    d.float("initial_loss_scale", 2.0 ** 15,
            "fp16 (and --fp16_allreduce): the dynamic loss scale's start (halved after each "
            "step whose gradients overflow, that step skipped on every rank; doubled after "
            "2000 good steps).")
    d.bool("xla", False, "Compile the forward and backward pass with XLA (jit_compile); the "
           "all-reduce and the update stay outside it.")
    # Horovod
    d.float("fusion_threshold_mb", None,
            "Horovod tensor-fusion buffer in MiB (default: $HOROVOD_FUSION_THRESHOLD, else "
            "Horovod's 128).")
    d.float("cycle_time_ms", None,
            "Horovod cycle time in ms (default: $HOROVOD_CYCLE_TIME, else 10 on CPU "
            "hosts and Horovod's 1 on GPU hosts).")
    d.bool("fp16_allreduce", False, "Compress gradients to float16 for the all-reduce: each "
           "rank's gradient / ranks is summed (it cannot overflow where one rank's fits), under "
           "a dynamic loss scale at any precision (small gradients do not flush to 0).")
    d.float("stall_timeout_sec", 1800,
            "A rank without progress for this long (stuck reading, or in a collective "
            "whose peer hangs) ends the job; 0: never. Keep it above a validation pass.")
    d.float("diagnose_timeout_sec", 900,
            "After a record fails to decode, a rank searches its shards for it (tf.data "
            "names no file) for at most this long; past it, the run ends naming the "
            "error without the record; 0: no limit.")
    d.bool("horovod_timeline", False,
           "Write Horovod's timeline of the run (every tensor's negotiation, fusion and "
           "all-reduce, per rank) to MODEL_DIR/horovod_timeline.json; open it in "
           "chrome://tracing or https://ui.perfetto.dev. Large on long runs: use it "
           "with --max_steps.")
    d.bool("elastic", False,
           "Elastic training: the job goes on when hosts are lost and grows when they come "
           "back (launch with bin/run_train_alexnet_elastic.sh: horovodrun --min-np/--max-np "
           "and a host-discovery script).")
    d.integer("elastic_commit_every", 50,
              "--elastic: copy the state to host memory every N steps (and at each pause); "
              "a lost host costs the steps since the last commit.")
    d.integer("threads", 0, "CPU threads per rank (0: the host's cores / ranks on the host).")
    d.bool("cpu", False, "Compute on the CPU, also on a host whose nvidia-smi lists GPUs "
           "(without it, such a host where TensorFlow sees no GPU is refused).")
    d.bool("bind_cpus", True, "On GPUs, each rank's threads on the CPUs of its GPU's socket "
           "(as the kernel lists them), unless the launcher bound the rank already; "
           "--nobind_cpus leaves the ranks where the launcher put them.")
    # Validation, logging, checkpoints
    d.string("model_dir", None, "Where checkpoints and the DLLogger log go (required).")
    d.integer("eval_every_epochs", 1, "Validate every N epochs (0: only at the end).")
    d.bool("eval", None, "Validate at all (default: yes; --noeval: no).")
    d.integer("eval_batch_size", 64, "Images per validation batch, on every rank (each "
              "validates its share).")
    d.integer("log_every", 10, "Log loss, learning rate and images/sec every N steps.")
    d.integer("keep_checkpoints", 3, "Checkpoints kept in model_dir.")
    d.integer("checkpoint_every_steps", 0,
              "Also checkpoint every N steps (0: at the end of each epoch only); what a "
              "crash can cost. SIGTERM / SIGINT always checkpoint first.")
    d.integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
    d.bool("deterministic", False,
           "Deterministic ops and data order (slower; for reproducing runs exactly).")
    d.integer("num_warmup_batches", 1,
              "Steps at the start of each run (or resume) left out of the summary's images/s; "
              "the first builds the graph.")
    # The flags of tf_cnn_benchmarks and NVIDIA's ConvNets, where they mean the same here
    # (docs/training.md: "Coming from tf_cnn_benchmarks or DeepLearningExamples").
    d.alias("num_batches", "max_steps")
    d.alias("display_every", "log_every")
    d.alias("grad_accum_steps", "accumulate_steps")
    d.bool("use_fp16", False, "tf_cnn_benchmarks' name of --precision=mixed.")
    d.bool("use_amp", False, "NVIDIA ConvNets' name of --precision=mixed.")
    for name, (accepted, _) in FOREIGN.items():
        d.string(name, None, f"tf_cnn_benchmarks' flag: "
                             f"{'only ' + str(accepted) if accepted else 'refused'} here.")
    return fv


# tf_cnn_benchmarks' flags that mean something else here, or nothing under Horovod:
# the one value that fits this trainer (None: none does), and where to go instead.
FOREIGN = {
    "data_name": ("imagenet", "this trainer reads ImageNet-schema TFRecords from --data_dir"),
    "model": ("alexnet", "this trainer trains AlexNet only"),
    "num_gpus": ("1", "one process per GPU here: launch N ranks (horovodrun -np N), each with "
                      "one GPU"),
    "variable_update": ("horovod", "gradients are always averaged by Horovod's all-reduce"),
    "train_dir": (None, "checkpoints and logs go to --model_dir"),
}

FLAGS = define(flags.FlagValues())

# Other trainers' spellings: read and checked once, by resolve(), and not kept in
# the run's configuration (absl's aliases share their flag's value).
SPELLINGS = ("use_fp16", "use_amp", *FOREIGN)


def _config_type(fv):
    """The run's configuration: one field per flag of `fv` (its help is the
    field's metadata), without aliases and other trainers' spellings. Frozen: it
    is built once, by resolve(), and no function changes it afterwards."""
    names = [n for n in command.flag_names(fv) if n not in SPELLINGS]
    fields = [(n, typing.Any, dataclasses.field(metadata={"help": fv[n].help})) for n in names]
    return dataclasses.make_dataclass("Config", fields, frozen=True, namespace={
        "__doc__": "The training run's flags, validated, aliases resolved (see config.py); "
                   "`python -m hvd_alexnet train --help` says what each one means.",
        "__module__": __name__})


Config = _config_type(FLAGS)


def values(fv=FLAGS):
    """The flags as a frozen value, not validated (doctor reports problems itself)."""
    return command.values(fv)


def from_flags(fv=FLAGS):
    """The run's configuration from the parsed train flags (raises UsageError)."""
    cfg, problems = resolve(fv)
    if cfg.model_dir and not problems:
        problems = check_model_dir(cfg.model_dir)
    if problems:
        raise UsageError("; ".join(problems))
    return cfg


def checkpoint_bytes(parameters):
    """Disk that one more checkpoint of a model of `parameters` float32 values needs."""
    return int(CHECKPOINT_FACTOR * parameters * 4)


def resolve(fv=FLAGS):
    """(Config, the problems with the flags): tf_cnn_benchmarks' and ConvNets'
    spellings translated into this trainer's, --eval made a yes or no, the decay
    epochs numbers in order. Nothing on disk is checked but --data_dir."""
    raw = {name: fv[name].value for name in command.flag_names(fv)}
    problems = [f"--{name}={raw[name]}: {why}" for name, (accepted, why) in FOREIGN.items()
                if raw[name] is not None and raw[name] != accepted]
    if raw["eval"]:  # given as --eval: tf_cnn_benchmarks' "evaluate only"
        problems.append("--eval: validation during training is on by default (--noeval turns "
                        "it off); to evaluate a checkpoint only, as tf_cnn_benchmarks' --eval "
                        "does, run hvd-alexnet evaluate")
    fields = {f.name: raw[f.name] for f in dataclasses.fields(Config)}
    fields["eval"] = raw["eval"] is not False
    if raw["use_fp16"] or raw["use_amp"]:
        fields["precision"] = "mixed"
    try:
        fields["lr_decay_epochs"] = tuple(sorted(float(e) for e in raw["lr_decay_epochs"]))
    except ValueError:
        problems.append(f"--lr_decay_epochs {raw['lr_decay_epochs']}: want numbers, e.g. 30,60,80")
    cfg = Config(**fields)
    return cfg, problems + check(cfg)


def missing_class_files(values):
    """'--synsets_file X: no such file' (and --names_file's) where given and absent:
    train's flags, and predict's and export's."""
    return [f"--{name} {getattr(values, name)}: no such file"
            for name in ("synsets_file", "names_file")
            if getattr(values, name) and not os.path.isfile(getattr(values, name))]


def check(cfg):
    """The problems with the values of `cfg` (a Config), each naming its flag."""
    problems = []
    if not cfg.synthetic and not cfg.data_dir:
        problems.append("--data_dir is required (or --synthetic)")
    if not cfg.synthetic and cfg.data_dir and not os.path.isdir(cfg.data_dir):
        problems.append(f"--data_dir {cfg.data_dir}: no such directory")
    problems += missing_class_files(cfg)
    if not cfg.model_dir:
        problems.append("--model_dir is required")
    elif pattern_problem(cfg.model_dir):
        problems.append(pattern_problem(cfg.model_dir))
    if cfg.image_size < MIN_IMAGE_SIZE:
        problems.append(f"--image_size {cfg.image_size}: must be at least {MIN_IMAGE_SIZE}")
    for name in ("batch_size", "eval_batch_size", "epochs", "log_every", "keep_checkpoints",
                 "accumulate_steps", "num_warmup_batches", "elastic_commit_every"):
        if getattr(cfg, name) < 1:
            problems.append(f"--{name} {getattr(cfg, name)}: must be at least 1")
    for name in ("max_steps", "eval_every_epochs", "threads", "warmup_epochs", "weight_decay",
                 "stall_timeout_sec", "checkpoint_every_steps", "first_label",
                 "diagnose_timeout_sec"):
        if getattr(cfg, name) < 0:
            problems.append(f"--{name} {getattr(cfg, name)}: must not be negative")
    if cfg.num_classes is not None and cfg.num_classes < 2:
        problems.append(f"--num_classes {cfg.num_classes}: must be at least 2")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"--dropout {cfg.dropout}: must be in [0, 1)")
    if not 0 < cfg.crop_area_min <= 1:
        problems.append(f"--crop_area_min {cfg.crop_area_min}: must be in (0, 1]")
    if cfg.base_lr <= 0:
        problems.append(f"--base_lr {cfg.base_lr}: must be positive")
    for name in ("fusion_threshold_mb", "cycle_time_ms"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            problems.append(f"--{name} {getattr(cfg, name)}: must not be negative")
    return problems


def pattern_problem(model_dir):
    """TensorFlow reads checkpoint paths as file patterns (glob), so a model folder
    whose name holds a pattern's characters saves checkpoints that its restore,
    clean-up and evaluate would not find: the problem, or None."""
    found = sorted(set(model_dir) & set("[]*?"))
    if not found:
        return None
    return (f"--model_dir {model_dir}: holds {' '.join(found)}, which TensorFlow reads as a "
            f"file pattern in checkpoint paths (a restore or clean-up would miss the run's "
            f"checkpoints): choose a folder name without [ ] * ?")


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
