"""`python -m hvd_alexnet.tools.supervise mpirun ARGS...`: mpirun, supervised so
that a stop keeps its promises (docs/reliability.md's launcher matrix).

Open MPI answers a SIGTERM or SIGINT of its own by killing the ranks (SIGTERM
to them odls_base_sigkill_timeout seconds later, SIGKILL as long again: 1 s by
default, no time to checkpoint), and a shell or horovodrun in front of it dies
of the signal and leaves mpirun and the ranks running. Here:

- mpirun runs in a session of its own, so that a signal to the launcher's
  process group (Ctrl-C in a terminal, `kill -- -PGID`) reaches this process
  alone and is not taken by mpirun as an order to kill;
- SIGTERM, SIGINT and SIGHUP to this process (a supervisor, `timeout`,
  `docker stop` of the container whose PID 1 this is, Ctrl-C) are passed to
  mpirun as SIGUSR1, which Open MPI forwards to every rank on every host: each
  rank stops at its next read step with a checkpoint and exits 75
  (signals.py), and so mpirun and this process exit 75. Open MPI starts each
  rank with SIGUSR1's default action (the end of the process) until the rank
  installs its handler, less than a second into its start: a stop in the job's
  first STARTUP seconds is passed on at STARTUP seconds;
- a later signal is said and changes nothing: the stop's checkpoint is
  finished first;
- the ranks get SIGKILL_TIMEOUT seconds (default 60) from the stop to their
  end; past that mpirun is sent SIGTERM (its own kill of the ranks), and past
  as long again SIGKILL;
- this process never exits before mpirun, and if it is killed itself (even by
  SIGKILL), the kernel sends mpirun SIGTERM (PR_SET_PDEATHSIG): no process of
  the job outlives its launcher;
- the exit status is mpirun's: the first failed rank's (75 after a stop), or
  128 + the signal that ended mpirun.

tools/horovodrun.py runs horovodrun's MPI mode through this as well.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

DEFAULT_SIGKILL_TIMEOUT = 60  # seconds: the ranks' time from a stop to their end
STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
FORWARDED = signal.SIGUSR1  # what mpirun passes to every rank (and takes as no order to kill)
STARTUP = 10.0  # seconds after mpirun's start before a stop is passed on (see above)
_PR_SET_PDEATHSIG = 1
# Loaded here, not in the child: between fork and exec the child may only call
# what takes no lock that another thread of this process could have held (the
# dynamic loader's, for one).
_LIBC = ctypes.CDLL(None, use_errno=True)


def grace():
    """SIGKILL_TIMEOUT: seconds from a stop to the ranks' end, one setting for every launcher."""
    return float(os.environ.get("SIGKILL_TIMEOUT", DEFAULT_SIGKILL_TIMEOUT))


def _die_with_parent():
    """In the child before it runs mpirun: SIGTERM when this process dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def status(code):
    """A Popen return code as a shell's exit status."""
    return 128 - code if code < 0 else code


class Supervisor:
    def __init__(self, argv, env=None, say=None):
        self.say = say or (lambda text: print(f"hvd_alexnet launcher: {text}",
                                              file=sys.stderr, flush=True))
        self.stopped_at, self.passed, self.grace, self.proc = None, False, grace(), None
        for sig in STOPS:
            signal.signal(sig, self._stop)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True,
                                     preexec_fn=_die_with_parent)

    def _stop(self, signum, frame):
        name = signal.Signals(signum).name
        if self.stopped_at is not None:
            self.say(f"{name}: a stop is in progress; the ranks have until "
                     f"{self.grace:g} s after it to checkpoint (SIGKILL_TIMEOUT)")
            return
        self.stopped_at = time.monotonic()
        self.say(f"{name}: asking every rank to stop at its next read step with a "
                 f"checkpoint ({self.grace:g} s: SIGKILL_TIMEOUT)")
        self._pass_on()

    def _pass_on(self):
        """The stop to every rank, once the ranks can take it (STARTUP)."""
        if not self.passed and self.proc and time.monotonic() - self.started >= STARTUP:
            self.passed = True
            self._signal(FORWARDED)

    def _signal(self, sig):
        try:
            self.proc.send_signal(sig)
        except (ProcessLookupError, AttributeError):
            pass

    def wait(self):
        """mpirun's exit status, as a shell would give it; past the grace, mpirun
        is ended (SIGTERM, then SIGKILL as long again later)."""
        ended = None
        while True:
            try:
                return status(self.proc.wait(timeout=0.5))
            except subprocess.TimeoutExpired:
                pass
            if self.stopped_at is None:
                continue
            self._pass_on()
            late = time.monotonic() - max(self.stopped_at, self.started + STARTUP) - self.grace
            if late > 0 and ended is None:
                self.say(f"the ranks did not end within {self.grace:g} s of the stop: "
                         f"ending mpirun (SIGTERM)")
                ended = signal.SIGTERM
                self._signal(signal.SIGTERM)
            elif late > self.grace + 10 and ended == signal.SIGTERM:
                self.say("mpirun did not end: SIGKILL")
                ended = signal.SIGKILL
                self._signal(signal.SIGKILL)


def run(argv, env=None):
    """Runs `argv` (mpirun ...) supervised; returns its exit status."""
    return Supervisor(argv, env).wait()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        return run(argv)
    except FileNotFoundError as e:
        print(f"hvd_alexnet launcher: {e.filename}: no such command", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
