"""`hvd-alexnet COMMAND [--flags]` (or `python -m hvd_alexnet COMMAND ...`): train,
data, doctor, report, evaluate, predict, export, plan, bench.

Exit status: 0 done, 2 bad flags or configuration (another job holds the model
folder, a flag the run cannot resume with), 3 bad or missing data, 4 training
diverged (NaN loss or weights; nothing non-finite is saved), 5 a rank made no
progress for --stall_timeout_sec, 6 checkpoints (none restores, the disk filled
while saving), 75 stopped by SIGTERM/SIGINT after a checkpoint
(run the same command again to resume), 1 anything else. Errors are one line on
stderr that names the problem.
"""

import os
import sys

from hvd_alexnet import errors

# keep TensorFlow's start-up chatter out of the logs
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

USAGE = """usage: hvd-alexnet COMMAND [--flag=value ...]    (or: python -m hvd_alexnet COMMAND ...)
       hvd-alexnet --version

commands:
  train        train AlexNet; several ranks: horovodrun -np N hvd-alexnet train ...
  data build   JPEGs in class subfolders -> ImageNet-schema TFRecord shards
  data demo    the embedded demo dataset (scikit-learn's digits), built with `data build`
  doctor       before a long job on a new cluster, launched like train: every rank's host,
               device, threads and shards, and whether data, model_dir and Horovod are ready
  report       PNG plots and a Markdown summary of a run (MODEL_DIR/report/)
  evaluate     top-1 / top-5 of a checkpoint on the validation set, on 1 or N ranks
  predict      top-5 classes, by name, of JPEG files
  export       a SavedModel that takes JPEG bytes and returns class probabilities
  plan         predicted images/s and scaling on 1-512 accelerators (ring all-reduce model)
  bench        every throughput figure of the benchmark, into docs/results/benchmarks.{md,json}
  data photos  the benchmark dataset: ~500x375 JPEGs cut from photographs bundled in
               scikit-learn and scikit-image, built with `data build`

`hvd-alexnet COMMAND --help` lists a command's flags.
"""

# command -> (module, function, whether it loads TensorFlow). Each function takes
# the arguments after the command's name and parses them with command.parse().
COMMANDS = {
    "train": ("train", "main", True),
    "data build": ("data.cli", "build_main", True),
    "data demo": ("data.cli", "demo_main", True),
    "data photos": ("data.cli", "photos_main", True),
    "doctor": ("doctor", "main", True),
    "report": ("report", "main", True),
    "evaluate": ("evaluate", "main", True),
    "predict": ("inference", "predict_main", True),
    "export": ("inference", "export_main", True),
    "plan": ("tools.plan", "main", False),
    "bench": ("tools.bench", "main", False),
}


def run_command(name, argv, **kwargs):
    """Runs command `name` on `argv`; returns its exit status. The project's
    own errors become one line on stderr and their exit status (see errors.py)."""
    import importlib
    module, function, uses_tf = COMMANDS[name]
    if name == "train":  # before TensorFlow's import: a signal from now on stops cleanly (75)
        from hvd_alexnet import signals
        signals.install()
    entry = getattr(importlib.import_module(f"hvd_alexnet.{module}"), function)
    try:
        return entry(argv, **kwargs) or 0
    except errors.OUTCOME_TYPES as e:
        prefix, code = next((p, c) for kind, p, c in errors.OUTCOMES if isinstance(e, kind))
        print(f"hvd_alexnet {name}: {prefix}{e}", file=sys.stderr, flush=True)
        return code
    except Exception as e:
        if not uses_tf:
            raise
        return _tensorflow_error(name, e)


def _tensorflow_error(name, e):
    import tensorflow as tf
    if isinstance(e, (tf.errors.InvalidArgumentError, tf.errors.DataLossError)):
        first = e.message.strip().splitlines()[0] if e.message else type(e).__name__
        print(f"hvd_alexnet {name}: data error while reading: {first}", file=sys.stderr,
              flush=True)
        return errors.EXIT_DATA
    if isinstance(e, tf.errors.OpError):  # most often a collective whose peer is gone
        lines = [line.strip() for line in (e.message or "").splitlines()
                 if line.strip() and not line.strip().startswith(("[[", "Detected at", "File "))]
        first = lines[-1] if lines else type(e).__name__  # the cause is last
        print(f"hvd_alexnet {name}: {type(e).__name__}: {first} (if another rank died, "
              f"the launcher's message names it)", file=sys.stderr, flush=True)
        return 1
    raise e


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    name = " ".join(args[:2]) if args[:1] == ["data"] else " ".join(args[:1])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else errors.EXIT_USAGE
    if args[0] in ("--version", "-V", "version"):
        from hvd_alexnet import __version__
        print(f"hvd-alexnet {__version__}")
        return 0
    if args[0] == "data" and (len(args) == 1 or args[1] in ("-h", "--help")):
        print(USAGE)  # the data subcommands are listed there
        return 0 if len(args) > 1 else errors.EXIT_USAGE
    if name not in COMMANDS:
        print(f"hvd_alexnet: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return errors.EXIT_USAGE
    return run_command(name, args[len(name.split()):])


if __name__ == "__main__":
    sys.exit(main())
