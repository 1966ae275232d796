"""`python -m hvd_alexnet COMMAND [--flags]`: train, data, doctor, report, evaluate, predict, export, plan, bench.

Exit status: 0 done, 2 bad flags or configuration, 3 bad or missing data,
4 training diverged (NaN loss), 75 stopped by SIGTERM/SIGINT after a checkpoint
(run the same command again to resume), 1 anything else. Errors are one line on stderr that names the problem.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TensorFlow's start-up chatter out of the logs

USAGE = """usage: python -m hvd_alexnet COMMAND [--flag=value ...]

commands:
  train        train AlexNet; several ranks: horovodrun -np N python -m hvd_alexnet train ...
  data build   JPEGs in class subfolders -> ImageNet-schema TFRecord shards
  data demo    the embedded demo dataset (scikit-learn's digits), built with `data build`
  doctor       before a long job on a new cluster, launched like train: every rank's host,
               device, threads and shards, and whether data, model_dir and Horovod are ready
  report       PNG plots and a Markdown summary of a run (MODEL_DIR/report/)
  evaluate     top-1 / top-5 of a checkpoint on the validation set, on 1 or N ranks
  predict      top-5 classes, by name, of JPEG files
  export       a SavedModel that takes JPEG bytes and returns class probabilities
  plan         predicted images/s and scaling on 1-512 accelerators (ring all-reduce model)
  bench        every throughput figure of the benchmark, into docs/benchmarks.{md,json}
  data photos  the benchmark dataset: ~500x375 JPEGs cut from photographs bundled in
               scikit-learn and scikit-image, built with `data build`

`python -m hvd_alexnet COMMAND --help` lists a command's flags.
"""

EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED = 2, 3, 4
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped cleanly on a signal, run again to resume


def _commands():
    from hvd_alexnet import config, train
    from hvd_alexnet.data import cli
    return {"train": (train.main, config), "data build": (cli.build_main, cli),
            "data demo": (cli.demo_main, cli), "data photos": (cli.photos_main, cli)}


ARGPARSE_COMMANDS = {"bench": ("bench", "main"), "plan": ("plan", "main"),
                     "doctor": ("doctor", "main"), "report": ("report", "main"),
                     "evaluate": ("evaluate", "main"), "predict": ("inference", "predict_main"),
                     "export": ("inference", "export_main")}


def _guarded(entry, name):
    def run(argv):
        import tensorflow as tf

        from hvd_alexnet.config import UsageError
        from hvd_alexnet.data.reader import DataError
        from hvd_alexnet.train import Diverged, Preempted
        outcomes = [(UsageError, "error: ", EXIT_USAGE), (DataError, "data error: ", EXIT_DATA),
                    (Preempted, "", EXIT_PREEMPTED), (Diverged, "error: ", EXIT_DIVERGED)]
        try:
            return entry(argv)
        except (UsageError, DataError, Preempted, Diverged) as e:
            prefix, code = next((p, c) for kind, p, c in outcomes if isinstance(e, kind))
            print(f"hvd_alexnet {name}: {prefix}{e}", file=sys.stderr, flush=True)
            return code
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            first = e.message.strip().splitlines()[0] if e.message else type(e).__name__
            print(f"hvd_alexnet {name}: data error while reading: {first}", file=sys.stderr,
                  flush=True)
            return EXIT_DATA
        except tf.errors.OpError as e:  # most often a collective whose peer is gone
            lines = [l.strip() for l in (e.message or "").splitlines()
                     if l.strip() and not l.strip().startswith(("[[", "Detected at", "File "))]
            first = lines[-1] if lines else type(e).__name__  # the cause is last
            print(f"hvd_alexnet {name}: {type(e).__name__}: {first} (if another rank died, "
                  f"the launcher's message names it)", file=sys.stderr, flush=True)
            return 1
    return run


def main(argv=None):
    argv = list(sys.argv if argv is None else argv)
    args = argv[1:]
    name = " ".join(args[:2]) if args[:1] == ["data"] else " ".join(args[:1])
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else EXIT_USAGE
    if args[0] in ARGPARSE_COMMANDS:  # argparse, not absl
        import importlib
        module, function = ARGPARSE_COMMANDS[args[0]]
        entry = getattr(importlib.import_module(f"hvd_alexnet.{module}"), function)
        if args[0] in ("bench", "plan"):  # no TensorFlow in these processes
            return entry(args[1:])
        return _guarded(entry, args[0])(args[1:])
    commands = _commands()
    if name not in commands:
        print(f"hvd_alexnet: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    from absl import app, flags
    entry, flag_module = commands[name]
    flags.adopt_module_key_flags(flag_module)  # --help shows this command's flags
    sys.modules["__main__"].__doc__ = flag_module.__doc__  # ... under its own usage text
    rest = args[len(name.split()):]
    app.run(_guarded(entry, name), argv=[f"python -m hvd_alexnet {name}"] + rest)


if __name__ == "__main__":
    sys.exit(main())
