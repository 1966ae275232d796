"""A per-rank deadline on progress: a rank that is stuck (in its input, in a
collective whose peer hangs) ends the job with a message instead of hanging.

Horovod's own stall check only warns, and under `horovodrun --gloo` it reports
nothing at all; a hung rank holds every other rank in its next all-reduce.
"""

import os
import sys
import threading
import time

from hvd_alexnet.errors import EXIT_STALLED


class Watchdog(threading.Thread):
    """beat(activity) at every step of progress; `timeout` seconds without one
    print what this rank was doing and exit the process (the launcher then ends
    the other ranks, as for a dead rank)."""

    def __init__(self, rank, timeout):
        super().__init__(name="hvd_alexnet-watchdog", daemon=True)
        self.rank, self.timeout = rank, timeout
        self.activity, self.last, self.allow = "starting", time.monotonic(), 0
        self.running = True

    def beat(self, activity, allow=0):
        """Progress, now `activity`; `allow`: seconds this activity may take if
        more than the timeout (a first step that compiles every kernel)."""
        self.activity, self.last, self.allow = activity, time.monotonic(), allow

    def start_once(self):
        """Starts the deadline (an elastic job's later attempts find it running;
        after stop() it stays stopped)."""
        if self.ident is None:
            self.start()

    def stop(self):
        self.running = False

    def run(self):
        if not self.timeout:  # --stall_timeout_sec=0: no deadline
            return
        period = min(1.0, max(self.timeout / 10, 0.1))
        while self.running:
            idle = time.monotonic() - self.last
            if idle > max(self.timeout, self.allow):
                print(f"hvd_alexnet: rank {self.rank}: no progress for {idle:.0f} s while "
                      f"{self.activity} (--stall_timeout_sec={self.timeout:g}); stopping the "
                      f"job", file=sys.stderr, flush=True)
                os._exit(EXIT_STALLED)
            time.sleep(period)
