"""The steps between two pauses of a run (a checkpoint, an epoch's end, the
run's end): each step, the progress line every --log_every steps, the check
for divergence, a stop requested by a signal, and what a bad record costs.

`Hooks` is where the tests inject faults (tests/inject.py); a real run uses
the do-nothing default.
"""

import dataclasses
import math
import os
import signal
import sys
import time

import tensorflow as tf

from hvd_alexnet.data import reader
from hvd_alexnet.errors import DataError, Diverged
from hvd_alexnet.progress import Throughput


class Hooks:
    """Fault injection for the tests: nothing happens in a real run."""

    heartbeat_seconds = None  # rank 0's answer period while it works alone (None: the default)

    def after_step(self, rank, step, stop_requested):
        """Called by every rank after each training step (and its progress line);
        `stop_requested()` tells whether a signal asked this rank to stop."""

    def after_validation_batch(self):
        """Called by rank 0 after each batch of a validation pass."""

    def before_save(self):
        """Called by rank 0 before it writes a checkpoint."""


class StopRequest:
    """SIGTERM / SIGINT (what Slurm, Kubernetes and Ctrl-C send) ask for a clean
    stop at the next step; a second one stops at once."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.requested:  # the second signal: no more waiting
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        self.requested = True
        print(f"hvd_alexnet: {signal.Signals(signum).name}: stopping after this step "
              f"(checkpoint first); send it again to stop at once", file=sys.stderr, flush=True)

    def settle(self):
        """The stop's checkpoint is written and the rank is exiting: from here a
        signal changes nothing. (The first rank to exit 75 makes `srun
        --kill-on-bad-exit`, mpirun and horovodrun signal the others; as a
        second signal it would kill them with 143 instead of 75.)"""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)


@dataclasses.dataclass
class RunState:
    """Where the run is. Steps are global optimizer steps; every rank holds the same."""

    step_batch: int  # examples per rank and step (x micro-batches)
    global_batch: int
    steps_per_epoch: int
    total: int  # steps of the whole run
    step: int = 0  # steps done
    start_step: int = 0  # where this process started (0, or a checkpoint's step)
    start_seen: int = 0  # examples seen at start_step
    skipped: int = 0  # corrupt records this rank skipped (--skip_corrupt)
    skipped_all: int = 0  # ... and all ranks, as of the last pause
    speed: Throughput = dataclasses.field(default_factory=Throughput)

    def resume_at(self, step, seen=None):
        """Starts at `step`, having seen `seen` examples (default: step x global
        batch; an elastic job that changed size carries its exact count)."""
        self.step = self.start_step = step
        self.start_seen = step * self.global_batch if seen is None else seen

    @property
    def epoch(self):
        """The epoch the next step belongs to."""
        return self.step // self.steps_per_epoch

    @property
    def examples_seen(self):
        return self.start_seen + (self.step - self.start_step) * self.global_batch

    def stretch(self, checkpoint_every):
        """Steps to the next pause: the end of the epoch or of the run, or the
        next periodic checkpoint."""
        n = min(self.steps_per_epoch - self.step % self.steps_per_epoch, self.total - self.step)
        if checkpoint_every:
            n = min(n, checkpoint_every - self.step % checkpoint_every)
        return n


def train_stretch(train_step, batches, n, state, ctx):
    """Runs `n` steps of `batches` (images, labels, positions); returns True when
    a stop was requested of any rank. `ctx`: cfg, dist, stop, report,
    learning_rate(step), hooks, loss_scale() (or None), commit() (or None: an
    elastic job's, due every ctx.commit_every steps inside the stretch; the
    caller commits at its end). Raises Diverged, or
    DataError on every rank when one rank's data fails (naming that rank)."""
    cfg, dist, speed, watchdog = ctx.cfg, ctx.dist, state.speed, ctx.dist.watchdog
    epoch, first, offset = state.epoch, state.step, state.step % state.steps_per_epoch
    window_t, window_steps, timed = time.perf_counter(), 0, 0  # the progress line's window
    loss = positions = None
    stopping = False
    warmup = cfg.num_warmup_batches  # untimed steps of this process (the first traces)
    if state.step - state.start_step >= warmup:
        speed.start()  # later stretches: the pipeline's start-up counts too
    steps, failure = iter(batches.take(n)), None
    try:
        watchdog.beat("reading the first batch of the epoch")
        for images, labels, positions in steps:
            watchdog.beat("in a training step (computing, or in the gradient all-reduce)")
            loss, stopping = train_step(images, labels, tf.constant(ctx.stop.requested))
            state.step += 1
            watchdog.beat("reading the next batch")
            window_steps += 1
            if state.step - state.start_step <= warmup:  # not timed
                float(loss)
                window_t, window_steps = time.perf_counter(), 0
                if state.step - state.start_step == warmup:
                    speed.start()
            else:
                timed += 1
            if bool(stopping):  # before any other collective: a failing rank joins no more
                break
            if state.step % cfg.log_every == 0 or state.step == state.total:
                now = time.perf_counter()  # windows tile the timed region: their sum is its time
                _report(loss, window_steps * state.global_batch / max(now - window_t, 1e-9),
                        epoch, state, ctx)
                window_t, window_steps = now, 0
            if ctx.commit and state.step % ctx.commit_every == 0 and state.step - first < n:
                ctx.commit()
            ctx.hooks.after_step(dist.rank, state.step, lambda: ctx.stop.requested)
        if loss is not None:
            float(loss)  # wait for the last step before stopping the clock
        speed.stop(timed * state.global_batch)
    except tf.errors.InvalidArgumentError as e:
        failure = _diagnose(e, dist.rank, ctx.train_files, ctx.num_classes, cfg.first_label)
    del steps  # the input pipeline's teardown, after the clock has stopped
    if not failure and state.step - first < n and not bool(stopping):
        failure = f"rank {dist.rank}: the reader ended after {state.step - first} of {n} steps"
    if failure:  # the other ranks wait in this step: it stops them, its update is never saved
        images = tf.zeros([state.step_batch, cfg.image_size, cfg.image_size, 3])
        _, stopping = train_step(images, tf.zeros([state.step_batch], tf.int32), tf.constant(True))
    stopping = bool(stopping)
    if stopping:  # a signal or a rank's failure: every rank learns which, and why
        failures = [f for f in dist.allgather_object(failure, "hvd_alexnet.failure") if f]  # HVD
        if failures:
            raise DataError("; ".join(failures))
    if cfg.skip_corrupt and state.step > first:  # positions are in order: gaps are skips
        read = int(tf.reduce_max(positions)) + 1 - offset * state.step_batch
        state.skipped += read - (state.step - first) * state.step_batch
    return stopping


def _report(loss, rate, epoch, state, ctx):
    """The mean loss over ranks (every rank sees the same: all stop on NaN) and
    the progress line."""
    loss_value = ctx.dist.mean(float(loss), "hvd_alexnet.loss")  # HVD
    if not math.isfinite(loss_value):
        raise Diverged(f"the loss is {loss_value} at step {state.step}: training diverged; "
                       f"lower --base_lr or lengthen --warmup_epochs (the last checkpoint is in "
                       f"{ctx.checkpoint_dir})")
    values = {"loss": loss_value, "learning_rate": float(ctx.learning_rate(state.step - 1)),
              "images_per_sec": rate}
    if ctx.loss_scale:  # float16: the same on every rank (the step skips alike)
        values["loss_scale"] = ctx.loss_scale()
    ctx.report.train(epoch, state.step, values)


def _diagnose(error, rank, files, num_classes, first_label):
    """What a reader's error means, in one line. A bad label: the assertion names
    the file and record. tf.data names no file when a JPEG does not decode: find
    the record."""
    label = reader.bad_label(error.message)
    if label:
        return f"rank {rank}: {label}"
    print(f"hvd_alexnet: rank {rank}: a training record did not decode; scanning this rank's "
          f"shards for it ...", file=sys.stderr, flush=True)
    found = reader.find_undecodable(files, num_classes, first_label)
    where = f"{found[0]}: record {found[1]}: {found[2]}" if found else error.message
    return f"rank {rank}: {where}; fix or remove it, or pass --skip_corrupt to skip such records"
