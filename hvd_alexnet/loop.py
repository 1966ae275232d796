"""The steps between two pauses of a run (a checkpoint, an epoch's end, the
run's end): each step, the progress line every --log_every steps, the check
for divergence, a stop requested by a signal, and what a bad record costs.

`Hooks` is where the tests inject faults (tests/inject.py); a real run uses
the do-nothing default.
"""

import dataclasses
import math
from typing import TYPE_CHECKING, Callable

import tensorflow as tf

from hvd_alexnet import config, distributed, progress, signals
from hvd_alexnet.data import prepare, reader
from hvd_alexnet.errors import DataError, Diverged, LeftJob, first_line

if TYPE_CHECKING:  # Horovod's elastic runner is imported by --elastic runs only
    from hvd_alexnet import checkpoint, elastic


class Hooks:
    """Fault injection for the tests: nothing happens in a real run."""

    heartbeat_seconds = None  # rank 0's answer period while it works alone (None: the default)

    def after_step(self, rank, step, stop_requested):
        """Called by every rank after each training step (and its progress line);
        `stop_requested()` tells whether a signal asked this rank to stop."""

    def after_validation_batch(self):
        """Called by every rank after each batch of its validation share."""

    def before_save(self):
        """Called by rank 0 before it writes a checkpoint."""

    def after_update(self, step, variables):
        """Called by every rank after each step with the model's trainable
        variables (a test may change them: a divergence at a known step)."""

    def batches(self, rank, step, batches):
        """This rank's batches of a stretch that starts after `step` (a test may
        end them early)."""
        return batches

    def at_start(self, stop_requested):
        """Called by rank 0 while it restores, the other ranks waiting."""

    def diagnosing(self):
        """Called by a rank that looks for the record its reader failed on."""


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
    read_mark: int = 0  # records of this epoch this rank had read before this stretch
    notices: int = 0  # --elastic: read steps in a row where some ranks, not all, were signalled
    checkpoint_seconds: float = None  # rank 0's last checkpoint: in the next progress record
    speed: progress.Throughput = dataclasses.field(default_factory=progress.Throughput)

    def warming_up(self, warmup):
        """Whether the step just done is one of this process's first `warmup`
        steps, left out of every images/s (the first traces the graph)."""
        return self.step - self.start_step <= warmup

    def resume_at(self, step, seen=None):
        """Starts at `step`, having seen `seen` examples (default: step x global
        batch; an elastic job that changed size carries its exact count)."""
        self.step = self.start_step = step
        self.start_seen = step * self.global_batch if seen is None else seen
        self.read_mark = step % self.steps_per_epoch * self.step_batch  # a new pipeline's start

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


@dataclasses.dataclass(frozen=True)
class Loop:
    """What the steps between two pauses need; one per attempt of the run (an
    elastic job makes a new one after each change of hosts)."""

    cfg: config.Config  # the run's flags
    dist: distributed.Dist  # this rank's place and the collectives (# HVD)
    train_step: Callable  # (images, labels, stop) -> (loss, stop on any rank): step.py
    opt: tf.keras.optimizers.Optimizer  # its loss scale, in float16 (a LossScaleOptimizer)
    schedule: Callable  # the learning rate at a step (optim.Schedule)
    data: prepare.Data  # this rank's shards and the classes, to name a bad record
    report: progress.Reporter  # the progress line and the DLLogger records
    checkpoints: "checkpoint.Checkpoints"  # the newest one is named when the run diverges
    hooks: Hooks  # fault injection (tests); does nothing in a real run
    weights: list = ()  # the model's trainable variables (for Hooks.after_update)
    committed: "elastic.Committed" = None  # --elastic: the state to commit (else None)
    stop: signals.StopRequest = dataclasses.field(default_factory=signals.install)  # SIGTERM

    def train_stretch(self, batches, n, state):
        """Runs `n` steps of `batches.take(n)` (images, labels, positions: a
        reader.Feed); returns True
        when a stop was requested of any rank. An elastic job commits every
        --elastic_commit_every steps inside the stretch (the caller, at its end).
        Raises Diverged, or DataError on every rank when one rank's data fails
        (naming that rank).

        Steps are dispatched back to back: the host waits for a step's results
        (the stop vote, the loss) only at the steps where every rank reads them
        (`reads_at`), so a stop or a failure takes effect at the next such step,
        on every rank alike."""
        first, offset, epoch = state.step, state.step % state.steps_per_epoch, state.epoch
        loss, positions, stopping, failure = None, None, False, None
        steps = _reads(self.hooks.batches(self.dist.rank, first, batches.take(n)))
        mark = state.read_mark if offset else 0  # the pipeline's position in the epoch
        self.dist.watchdog.beat("reading the first batch of the epoch, or in the first step",
                                self.dist.first_step_allowed if first == state.start_step else 0)
        state.speed.start()
        try:
            for images, labels, positions in steps:  # batch  # noqa: B007 - read after the loop
                loss, votes = self.train_step(images, labels, tf.constant(
                    self.stop.vote(self.dist.size)))
                state.step += 1  # step
                self.dist.watchdog.beat("reading the next batch, or in a training step "
                                        "(computing, or in the gradient all-reduce)")
                state.speed.step(state.global_batch, loss if state.warming_up(
                    self.cfg.num_warmup_batches) else None)
                if self.reads_at(state.step, first + n):
                    vote = float(votes)
                    state.notices = state.notices if vote else 0
                    if vote and not self.host_leaves(vote, state):
                        stopping = True  # a signal, or a rank's failure: every rank alike
                        break  # before any other collective: a failing rank joins no more
                    if state.step % self.cfg.log_every == 0 or state.step == state.total:  # log
                        self._report(loss, epoch, state)
                    if self.committed is not None and state.step % self.cfg.elastic_commit_every \
                            == 0 and state.step - first < n:
                        self.commit(state)  # commit
                self.hooks.after_step(self.dist.rank, state.step, lambda: self.stop.requested)
                self.hooks.after_update(state.step, self.weights)
            else:  # the reader ran dry: whatever the last vote said, this rank must vote on
                if state.step - first < n:
                    failure = (f"rank {self.dist.rank}: the reader ended after "
                               f"{state.step - first} of {n} steps")
            if loss is not None:
                float(loss)  # wait for the last step before stopping the clock
            state.speed.stop()
        except ReadError as e:
            failure = e  # diagnosed once every rank has stopped (_settle)
        stopping = self._settle(failure, stopping, state, first + n)
        if self.cfg.skip_corrupt and state.step > first:  # positions in order: gaps are skips
            state.read_mark = int(tf.reduce_max(positions)) + 1
            state.skipped += state.read_mark - mark - (state.step - first) * state.step_batch
        return stopping

    def host_leaves(self, vote, state):
        """--elastic, at a read step where the ranks' mean stop vote is `vote` (not
        0): whether this is a host's notice (a signal to some ranks, not all: a
        spot instance's) rather than a stop of the job. At the second read step
        in a row with such a vote (a signal to the whole job reaches every rank
        by then), every rank commits and the signalled ranks leave (LeftJob); the
        others go on, and re-form without them from this commit."""
        if self.committed is None or vote >= 1.5:  # no elastic job, or a stop of its own
            return False
        # Only signals voted (so every rank is here): their exact count, as the
        # fused vote may be float16, which cannot tell N - 1 of N from N.
        if self.dist.sum(int(self.stop.requested), "hvd_alexnet.notice") == self.dist.size:
            return False  # HVD: every rank was signalled: a stop of the job
        state.notices += 1
        if state.notices >= 2:
            self.commit(state)  # HVD: the same on every rank
            if self.stop.requested:
                raise LeftJob(f"rank {self.dist.rank}: {self.stop.reason} to this host's ranks "
                               f"alone: leaving the elastic job at step {state.step} (committed); "
                               f"the others go on without this host")
        return True

    def reads_at(self, step, end):
        """Whether every rank waits for `step`'s results and reads its stop vote:
        every --log_every steps (the progress line and the divergence check), at
        an elastic job's commits, and at the stretch's `end`."""
        return (step % self.cfg.log_every == 0 or step == end or (
            self.committed is not None and step % self.cfg.elastic_commit_every == 0))

    def _settle(self, failure, stopping, state, end):
        """The stretch's end on every rank alike: a rank whose data failed runs
        steps with the stop vote up to the next step where every rank reads it,
        so that the others leave the steps they have dispatched (its updates are
        never saved); then every rank learns who failed, and why. A failed read
        is diagnosed only then (it may scan the rank's shards), while the other
        ranks wait with their watchdogs fed."""
        if failure:
            images = tf.zeros([state.step_batch, self.cfg.image_size, self.cfg.image_size, 3],
                              tf.uint8)
            labels = tf.zeros([state.step_batch], tf.int32)
            while state.step < end:
                self.train_step(images, labels,  # a stop of the job's own
                                tf.constant(2.0 * self.dist.size))
                state.step += 1
                if self.reads_at(state.step, end):
                    break
        stopping = stopping or bool(failure)
        if stopping:  # a signal or a rank's failure
            if isinstance(failure, ReadError):
                error = failure.error
                limit = self.cfg.diagnose_timeout_sec
                failure = self.dist.each_alone(  # HVD
                    lambda: self._diagnose(error), "finding the record that failed", limit,
                    late=f"rank {self.dist.rank}: {first_line(error)} (the search of this "
                         f"rank's shards for the record was stopped after {limit:g} s: "
                         f"--diagnose_timeout_sec)")
            else:
                self.dist.each_alone(None, "finding the record that failed")  # HVD
            failures = [f for f in self.dist.allgather_object(  # HVD
                failure, "hvd_alexnet.failure") if f]
            if failures:
                raise DataError("; ".join(failures))
        return stopping

    def _diagnose(self, error):
        """One line for a reader's error on this rank (see reader.diagnose)."""
        self.hooks.diagnosing()
        return f"rank {self.dist.rank}: " + reader.diagnose(
            error, self.data.train_files, self.data.num_classes, self.cfg.first_label,
            self.cfg.skip_corrupt)

    def commit(self, state):
        """--elastic: commits the run's state (elastic.Committed); else nothing."""
        if self.committed is not None:
            self.committed.commit_at(state, self.dist, self.report)

    def learning_rate(self, step):
        return float(self.schedule(step))

    def loss_scale(self):
        """float16's dynamic loss scale (the same on every rank), else None."""
        if isinstance(self.opt, tf.keras.mixed_precision.LossScaleOptimizer):
            return float(self.opt.loss_scale)
        return None

    def _report(self, loss, epoch, state):
        """The mean loss over ranks (every rank sees the same: all stop on NaN) and
        the progress line."""
        loss_value = self.dist.mean(float(loss), "hvd_alexnet.loss")  # HVD
        if not math.isfinite(loss_value):
            raise diverged(self.dist, self.checkpoints, f"the loss is {loss_value} at step "
                                                         f"{state.step}")
        values = {"loss": loss_value, "learning_rate": self.learning_rate(state.step - 1),
                  "images_per_sec": state.speed.window_rate()}
        scale = self.loss_scale()
        if scale is not None:
            values["loss_scale"] = scale
        if state.checkpoint_seconds is not None:  # the pause before (make bench's epoch gap)
            values["checkpoint_seconds"], state.checkpoint_seconds = state.checkpoint_seconds, None
        self.report.train(epoch, state.step, values)


def diverged(dist, ckpts, what):
    """The Diverged error every rank raises (`what` happened on every rank): it
    names the newest checkpoint, which holds finite weights (pauses save none
    that are not)."""
    newest = dist.broadcast_int(-1 if ckpts.latest is None else ckpts.latest,  # HVD
                                "hvd_alexnet.diverged")
    where = (f"the newest checkpoint, {ckpts.directory}/ckpt-{newest}, holds finite weights: "
             f"lower --base_lr or lengthen --warmup_epochs, then run again to resume from it"
             if newest >= 0 else f"there is no checkpoint in {ckpts.directory} yet: lower "
                                 f"--base_lr or lengthen --warmup_epochs and run again")
    return Diverged(f"{what}: training diverged, and nothing of it was saved; {where}")


class ReadError(Exception):
    """The input pipeline failed on this rank (`error`: TensorFlow's error)."""

    def __init__(self, error):
        super().__init__(error.message)
        self.error = error


def _reads(batches):
    """The batches, with an error of the input pipeline raised as ReadError: a
    failed read, told apart from a failed step (a peer gone, say)."""
    batches = iter(batches)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            raise ReadError(e) from e
        yield batch
