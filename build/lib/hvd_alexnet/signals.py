"""SIGTERM / SIGINT (what Slurm, Kubernetes and Ctrl-C send): a request to stop
cleanly, from the moment a training process starts.

`python -m hvd_alexnet train` installs the handler before it imports
TensorFlow, so that a signal at any moment, during start-up too, ends the run
with status 75 (errors.EXIT_PREEMPTED) and an intact model folder; an elastic
job's attempts share the one request, so a stop pending across a re-forming is
kept. Imports no TensorFlow.
"""

import os
import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """The first signal asks for a stop at the next step where the ranks read
    their stop vote (checkpoint first); a second one stops at once."""

    def __init__(self):
        self.requested = False
        self.reason = None  # what asked: the signal's name, or a failure of rank 0's (disk)
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # the second signal: no more waiting
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.ask(signal.Signals(signum).name)
        print(f"hvd_alexnet: {self.reason}: stopping after this step (checkpoint first); "
              f"send it again to stop at once", file=sys.stderr, flush=True)

    def ask(self, reason):
        """A stop asked by the process itself (as a signal would): `reason` says why."""
        self.requested, self.reason = True, reason

    def settle(self):
        """The stop's checkpoint is written and the rank is exiting: from here a
        signal changes nothing. (The first rank to exit 75 makes `srun
        --kill-on-bad-exit`, mpirun and horovodrun signal the others; as a
        second signal it would kill them with 143 instead of 75.)"""
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


_current = None


def install():
    """The process's stop request, its handler installed (once)."""
    global _current
    if _current is None:
        _current = StopRequest()
    return _current
