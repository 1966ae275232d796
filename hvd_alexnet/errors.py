"""The exceptions every command may raise and the exit status each one means.

Imports nothing: the data builder's parent process, the benchmark and the
planner use them without loading TensorFlow.
"""

EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED = 2, 3, 4
EXIT_STALLED = 5  # a rank made no progress for --stall_timeout_sec (watchdog.py)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped cleanly on a signal, run again to resume


class UsageError(ValueError):
    """A flag or the environment is wrong; found before any heavy work."""


class DataError(ValueError):
    """Missing, too few or corrupt input data; the message names what is wrong."""


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT: stopped at a step boundary after rank 0's checkpoint."""


# (exception, prefix of its one-line message, exit status), most specific first.
OUTCOMES = ((UsageError, "error: ", EXIT_USAGE), (DataError, "data error: ", EXIT_DATA),
            (Preempted, "", EXIT_PREEMPTED), (Diverged, "error: ", EXIT_DIVERGED))
OUTCOME_TYPES = tuple(kind for kind, _, _ in OUTCOMES)
