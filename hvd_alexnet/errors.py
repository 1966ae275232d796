"""The exceptions every command may raise and the exit status each one means.

Imports nothing heavy: the data builder's parent process, the benchmark and the
planner use them without loading TensorFlow.
"""

import re

EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED = 2, 3, 4
EXIT_STALLED = 5  # a rank made no progress for --stall_timeout_sec (watchdog.py)
EXIT_CHECKPOINT = 6  # the model folder: no checkpoint restores, a full disk, a second job
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped cleanly on a signal, run again to resume


class UsageError(ValueError):
    """A flag or the environment is wrong; found before any heavy work."""


class DataError(ValueError):
    """Missing, too few or corrupt input data; the message names what is wrong."""


class CheckpointError(RuntimeError):
    """The model folder cannot be trusted or written: no checkpoint in it
    restores, the disk filled while saving, another job holds it. The message
    names the folder and the way out; nothing in the folder was deleted."""


class Diverged(RuntimeError):
    """The loss or the weights became NaN or infinite."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT: stopped at a step boundary after rank 0's checkpoint."""


class LeftJob(RuntimeError):
    """--elastic: a signal to this host's ranks alone (a spot instance's notice):
    this rank left the job after a commit; the others go on without it."""


# (exception, prefix of its one-line message, exit status), most specific first.
OUTCOMES = ((UsageError, "error: ", EXIT_USAGE), (DataError, "data error: ", EXIT_DATA),
            (CheckpointError, "checkpoint error: ", EXIT_CHECKPOINT),
            (Preempted, "", EXIT_PREEMPTED), (LeftJob, "", EXIT_PREEMPTED),
            (Diverged, "error: ", EXIT_DIVERGED))
OUTCOME_TYPES = tuple(kind for kind, _, _ in OUTCOMES)


def by_name(name):
    """The exception class of OUTCOMES called `name` (a failure that one rank
    sends the others keeps its kind, and so its exit status, on every rank)."""
    return next((kind for kind, _, _ in OUTCOMES if kind.__name__ == name), RuntimeError)


def first_line(error):
    """An error's first line, without TensorFlow's function and op names
    ("{{function_node ...}} ... [Op:IteratorGetNext]")."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]( name:\s*\S*)?", "",
                  (getattr(error, "message", None) or str(error) or "").strip())
    return text.strip().splitlines()[0][:300] if text.strip() else type(error).__name__
