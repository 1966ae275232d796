"""`python tests/inject.py [stall=RANK:STEP] [hold=STEP[:RANK]] [heartbeat=SECONDS]
[validation_delay=SECONDS] [save_delay=SECONDS] [step_delay=SECONDS] [release=PATH]
[nan=STEP] [end=RANK:STEP] [start_hold=PATH] [diagnose_delay=SECONDS] [trace=PATH]
[pause=PATH] [gate=STEP:PATH]
-- TRAIN_FLAGS`:
`python -m hvd_alexnet train TRAIN_FLAGS` with faults injected through the
trainer's hooks (hvd_alexnet.loop.Hooks), so that no test switch lives in the
trainer itself.

  stall=RANK:STEP    that rank hangs after that step, as a stuck input would
  hold=STEP[:RANK]   every rank (or that rank) waits after that step until a
                     signal asks it to stop (at most 300 s): a signal that lands
                     at a known step, also one sent before it (SIGTERM and
                     SIGINT are blocked until then)
  heartbeat=SECONDS  rank 0 answers the waiting ranks this seldom while it
                     works alone (a large value shows the stall warning that
                     the heartbeat prevents)
  validation_delay=SECONDS  every rank sleeps this long after each batch of
                     its validation share: a validation pass long by construction
  save_delay=SECONDS rank 0 sleeps this long before each checkpoint it writes: a
                     save slow by construction (as 0.5 GB to a network disk is)
  step_delay=SECONDS every rank sleeps this long after each step: a run of N
                     steps lasts at least N x SECONDS on any machine
  release=PATH       ... until PATH exists: the test makes the run slow while it
                     acts on it, then lets the rest run at the machine's speed
  nan=STEP           every rank's first weight becomes NaN after that step: a
                     divergence at a known step (the loss is NaN from the next)
  end=RANK:STEP      that rank's reader ends after that step, as a shard that
                     shrank would end it
  start_hold=PATH    rank 0 creates PATH while it restores (the others waiting),
                     then waits there until a signal asks it to stop (at most 300 s)
  diagnose_delay=SECONDS  a rank that looks for its bad record takes this much
                     longer: a diagnosis long by construction (a large shard set)
  trace=PATH         each rank appends to PATH.RANK a line per image it trains
                     on: its position in the epoch and a hash of its pixels
                     (with --noaugment --noflip, a key of its record)
  pause=PATH         after the first step that finds PATH, that rank stops
                     itself (SIGSTOP) as a paused job would be: between two
                     saves by construction, never in the middle of one
  gate=STEP:PATH     every rank creates PATH.reached after that step, then
                     waits until PATH exists (at most 300 s): the test acts
                     while the run stands still at a known step (the step's
                     checkpoint, if any, written), then lets it go on

(Not --options: horovodrun reads the whole command line and takes any
--word that abbreviates one of its own options, such as --stall.)
"""

import itertools
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# hold=STEP: SIGTERM and SIGINT wait (blocked) until the hold begins, so that a signal
# sent early (Slurm may send a time limit's up to a minute early) still lands at that
# step; a run that starts past the hold (a resume) keeps them blocked. Blocked before
# anything starts a thread: threads inherit the mask, so only the main thread, which
# unblocks them, ever takes them.
HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}  # signals.SIGNALS
OPTIONS = sys.argv[1:sys.argv.index("--") if "--" in sys.argv else None]
if any(a.startswith("hold=") for a in OPTIONS):
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)

from hvd_alexnet.__main__ import run_command  # noqa: E402
from hvd_alexnet.loop import Hooks  # noqa: E402


class Faults(Hooks):
    def __init__(self):
        self.stall, self.hold, self.heartbeat_seconds, self.validation_delay = None, None, None, 0.0
        self.hold_rank, self.save_delay, self.step_delay, self.release = None, 0.0, 0.0, None
        self.nan, self.end, self.start_hold, self.diagnose_delay = None, None, None, 0.0
        self.trace, self.pause, self.gate = None, None, None

    def after_step(self, rank, step, stop_requested):
        if (rank, step) == self.stall:
            time.sleep(1e6)
        if self.step_delay and not (self.release and os.path.exists(self.release)):
            time.sleep(self.step_delay)
        if self.pause and os.path.exists(self.pause):
            self.pause = None
            os.kill(os.getpid(), signal.SIGSTOP)
        if self.gate and step == self.gate[0]:
            open(self.gate[1] + ".reached", "a").close()
            deadline = time.monotonic() + 300
            while not os.path.exists(self.gate[1]) and time.monotonic() < deadline:
                time.sleep(0.05)
        if step == self.hold:  # a signal sent before now is delivered here
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        deadline = time.monotonic() + 300
        held = step == self.hold and self.hold_rank in (None, rank)
        while held and not stop_requested() and time.monotonic() < deadline:
            time.sleep(0.05)

    def after_update(self, step, variables):
        if step == self.nan:
            variables[0].assign(variables[0] * float("nan"))

    def batches(self, rank, step, batches):
        if self.end and self.end[0] == rank:
            batches = itertools.islice(batches, max(0, self.end[1] - step))
        return self._traced(rank, batches) if self.trace else batches

    def _traced(self, rank, batches):
        import hashlib
        with open(f"{self.trace}.{rank}", "a") as f:
            for images, labels, positions in batches:
                for image, position in zip(images.numpy(), positions.numpy()):
                    f.write(f"{position} {hashlib.sha1(image.tobytes()).hexdigest()}\n")
                f.flush()
                yield images, labels, positions

    def at_start(self, stop_requested):
        if self.start_hold:
            open(self.start_hold, "w").close()
            deadline = time.monotonic() + 300
            while not stop_requested() and time.monotonic() < deadline:
                time.sleep(0.05)

    def diagnosing(self):
        time.sleep(self.diagnose_delay)

    def after_validation_batch(self):
        time.sleep(self.validation_delay)

    def before_save(self):
        time.sleep(self.save_delay)


def main(argv):
    if "--" not in argv:
        raise SystemExit(__doc__)
    options, train_args = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    faults = Faults()
    for name, _, value in (option.partition("=") for option in options):
        if name == "stall":
            faults.stall = tuple(int(x) for x in value.split(":"))
        elif name == "hold":
            step, _, rank = value.partition(":")
            faults.hold, faults.hold_rank = int(step), (int(rank) if rank else None)
        elif name == "heartbeat":
            faults.heartbeat_seconds = float(value)
        elif name == "validation_delay":
            faults.validation_delay = float(value)
        elif name == "save_delay":
            faults.save_delay = float(value)
        elif name == "step_delay":
            faults.step_delay = float(value)
        elif name == "release":
            faults.release = value
        elif name == "nan":
            faults.nan = int(value)
        elif name == "end":
            faults.end = tuple(int(x) for x in value.split(":"))
        elif name == "start_hold":
            faults.start_hold = value
        elif name == "diagnose_delay":
            faults.diagnose_delay = float(value)
        elif name == "trace":
            faults.trace = value
        elif name == "pause":
            faults.pause = value
        elif name == "gate":
            step, _, path = value.partition(":")
            faults.gate = (int(step), path)
        else:
            raise SystemExit(f"inject.py: unknown option {name}\n{__doc__}")
    return run_command("train", train_args, hooks=faults)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
