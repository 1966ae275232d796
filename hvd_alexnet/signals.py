"""SIGTERM / SIGINT (what Slurm, Kubernetes and Ctrl-C send) and SIGUSR1 (what
the project's mpirun supervisor passes through mpirun, which forwards it to every
rank: tools/supervise.py): a request to stop cleanly, from the moment a training
process starts.

`python -m hvd_alexnet train` installs the handler before it imports
TensorFlow, so that a signal at any moment, during start-up too, ends the run
with status 75 (errors.EXIT_PREEMPTED) and an intact model folder; an elastic
job's attempts share the one request, so a stop pending across a re-forming is
kept. A stop in progress is never cut short by another signal: its checkpoint
is finished first. What does end a rank at once: SIGKILL, SIGQUIT (Ctrl-\\), or
the launcher's grace (SIGKILL_TIMEOUT) running out. Imports no TensorFlow.
"""

import signal
import sys

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class StopRequest:
    """The first signal asks for a stop at the next step where the ranks read
    their stop vote (checkpoint first); a later one is said and changes nothing
    (a second SIGTERM, as Kubernetes and Slurm send, must not kill the save)."""

    def __init__(self):
        self.requested = False
        self.reason = None  # what asked: the signal's name, or a failure of rank 0's (disk)
        self.repeated = False  # a later signal was said
        self.signalled = False  # the stop is a signal's (not the process's own: ask())
        for sig in SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            if not self.repeated:  # once: a launcher may pass on every signal it gets
                self.repeated = True
                print(f"hvd_alexnet: {name}: a stop is in progress ({self.reason}); its "
                      f"checkpoint is finished first (SIGKILL or SIGQUIT end at once)",
                      file=sys.stderr, flush=True)
            return
        self.ask(name, signalled=True)
        print(f"hvd_alexnet: {self.reason}: stopping at the next read step (checkpoint "
              f"first)", file=sys.stderr, flush=True)

    def ask(self, reason, signalled=False):
        """A stop asked by the process itself (as a signal would): `reason` says why."""
        self.requested, self.reason, self.signalled = True, reason, signalled

    def vote(self, ranks):
        """This rank's stop vote in a step: 0 (none), 1 for a signal, 2 x `ranks`
        for a stop of the job's own (a full disk, a failed read): the votes'
        mean is then at least 2 whatever the others vote, and at most 1 when
        only signals voted. An elastic job tells a host's notice (a signal to
        some ranks) from a stop of the job by it."""
        if not self.requested:
            return 0.0
        return 1.0 if self.signalled else 2.0 * ranks

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
