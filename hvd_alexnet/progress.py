"""What rank 0 shows while it works: one concise line every --log_every steps
(the DLLogger file keeps every field), progress during a validation pass, and
TensorBoard scalars in MODEL_DIR/tensorboard (`tensorboard --logdir MODEL_DIR`).
`Reporter` sends each event to all three; on other ranks it does nothing."""

import dataclasses
import math
import os
import sys
import time

import tensorflow as tf

from hvd_alexnet.distributed import describe_hosts
from hvd_alexnet.errors import first_line
from hvd_alexnet.metrics_log import LOG_FILE, MetricsLog

TENSORBOARD_SUBDIR = "tensorboard"
METRICS = (("loss", None), ("learning_rate", None), ("images_per_sec", "images/s"),
           ("top1", None), ("top5", None))


def clock(seconds):
    """1:02:03 for 3723 s; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The training line: epoch, step of total, loss, learning rate, global
    images/s, and the time left in the epoch and in the run at that rate."""

    def __init__(self, total_steps, steps_per_epoch, global_batch, first_step=1):
        self.total, self.spe, self.batch = total_steps, steps_per_epoch, global_batch
        self.epochs = math.ceil(total_steps / steps_per_epoch)
        self.first = first_step  # this process's first step: it builds the graph

    def line(self, step, loss, learning_rate, images_per_sec):
        epoch = (step - 1) // self.spe  # the epoch this step belongs to
        in_epoch = step - epoch * self.spe
        head = (f"epoch {epoch + 1}/{self.epochs}  step {step}/{self.total} "
                f"({in_epoch}/{self.spe} of the epoch)  loss {loss:.4f}  lr {learning_rate:.3g}")
        if images_per_sec <= 0:  # the first steps (--num_warmup_batches) are not timed
            return head + ("  (building the graph: not timed)" if step == self.first else
                           "  (warm-up: not timed)")
        per_step = self.batch / images_per_sec
        epoch_left = min(self.spe - in_epoch, self.total - step) * per_step
        return (f"{head}  {images_per_sec:,.1f} img/s  epoch left {clock(epoch_left)}  "
                f"run left {clock((self.total - step) * per_step)}")


class Ticker:
    """'validating: 640/50,000 images, 12 s, about 0:15:20 left', at most every
    `every` seconds, for long work with a known size."""

    def __init__(self, what, total, say, every=10.0):
        self.what, self.total, self.say, self.every = what, total, say, every
        self.t0 = self.last = time.monotonic()

    def update(self, done):
        now = time.monotonic()
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        left = elapsed * (self.total - done) / done if done and self.total else None
        of = f"/{self.total:,}" if self.total else ""
        self.say(f"{self.what}: {done:,}{of} images, {elapsed:.0f} s, about {clock(left)} left")


class TensorBoard:
    """Scalars for TensorBoard, written by rank 0 only (a no-op elsewhere). A
    write that fails (a full disk) is handled as the DLLogger file's: said once,
    nothing more written, and `on_error(what)` asks the run to stop."""

    def __init__(self, logdir, enabled=True, on_error=None):
        self.logdir, self.on_error = logdir, on_error
        self.writer = tf.summary.create_file_writer(logdir) if enabled else None

    def scalars(self, group, step, values):
        if self.writer is None:
            return
        try:
            with self.writer.as_default(step=step):
                for name, value in values.items():
                    tf.summary.scalar(f"{group}/{name}", value)
            self.writer.flush()
        except (OSError, tf.errors.OpError) as e:
            self._failed(e)

    def _failed(self, error):
        self.writer = None  # the rest is not written; the run is stopped
        what = (f"writing TensorBoard's events in {self.logdir} failed "
                f"({getattr(error, 'strerror', None) or first_line(error)})")
        print(f"hvd_alexnet: {what}: stopping at the next step the ranks read (checkpoint "
              f"first)", file=sys.stderr, flush=True)
        if self.on_error:
            self.on_error(what)

    def close(self):
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except (OSError, tf.errors.OpError):  # the last events' flush, on a full disk
                pass


class Throughput:
    """Images/sec of training steps only (no validation, no checkpoint): the
    summary's, over every timed step of the run, and the progress line's, over
    the steps since the last line. Untimed steps (--num_warmup_batches at the
    start of each run or resume: the first traces the graph) count in neither."""

    def __init__(self):
        self.seconds, self.images = 0.0, 0  # the summary's: every stretch's timed steps
        self._since, self._counted = None, 0  # this stretch's clock and its images
        self._window_since, self._window_images = None, 0  # the progress line's

    def start(self):
        """Starts the clock (a stretch begins: its input pipeline's start-up counts)."""
        self._since = self._window_since = time.perf_counter()
        self._counted = self._window_images = 0

    def step(self, images, untimed_end=None):
        """Counts a step of `images`. An untimed step instead: waits for
        `untimed_end` (its loss, a tensor) and starts the clock after it."""
        if untimed_end is not None:
            float(untimed_end)
            self.start()
            return
        self._counted += images
        self._window_images += images

    def window_rate(self):
        """Images/s since the last call (or the clock's start); 0 when that
        window holds no timed step. Windows tile the timed region."""
        now = time.perf_counter()
        rate = self._window_images / max(now - self._window_since, 1e-9)
        self._window_since, self._window_images = now, 0
        return rate

    def stop(self):
        """Stops the clock (the caller has waited for the last step to end)."""
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self.images += self._counted
        self._since, self._counted = None, 0

    @property
    def rate(self):
        return self.images / self.seconds if self.seconds else 0.0


def ranks(n):
    """'1 rank', '2 ranks'."""
    return f"{n} rank{'' if n == 1 else 's'}"


class Reporter:
    """The run's events, each to the DLLogger file (MODEL_DIR/dllogger.json), the
    console and TensorBoard as it suits them. Rank 0 only: elsewhere a no-op.
    A context manager: it closes its files however the attempt ends."""

    def __init__(self, model_dir, enabled, say, total_steps, steps_per_epoch, global_batch,
                 first_step=1, on_error=None):
        self.say = say
        self.metrics = MetricsLog(os.path.join(model_dir, LOG_FILE), enabled=enabled,
                                  on_error=on_error)
        self.board = TensorBoard(os.path.join(model_dir, TENSORBOARD_SUBDIR), enabled=enabled,
                                 on_error=on_error)
        self.progress = Progress(total_steps, steps_per_epoch, global_batch, first_step)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def opening(self, cfg, data, state, dist, threads, policy, timeline):
        """The PARAMETER record (every flag, and what the ranks agreed on), and
        rank 0's first lines: the job's shape, where the ranks are, and what
        about the data a user should know."""
        self.metrics.log("PARAMETER", {
            **dataclasses.asdict(cfg), "num_classes": data.num_classes,
            "num_classes_from": data.classes_from or "default", "ranks": dist.size,
            "global_batch": state.global_batch, "steps_per_epoch": state.steps_per_epoch,
            "total_steps": state.total, "train_examples": data.num_train,
            "rank_examples": data.rank_examples, "validation_examples": data.num_val,
            "policy": policy, "threads_per_rank": threads, "start_step": state.start_step,
            "cpu_affinity": len(os.sched_getaffinity(0)), "hosts": dist.hosts})
        for name, unit in METRICS:
            self.metrics.metadata(name, {"unit": unit} if unit else {})
        if timeline:
            self.say(f"Horovod timeline: {timeline} (open in chrome://tracing or ui.perfetto.dev)")
        micro = f" x {cfg.accumulate_steps} micro-batches" if cfg.accumulate_steps > 1 else ""
        spe, batch = state.steps_per_epoch, state.global_batch
        self.say(f"hvd_alexnet: {ranks(dist.size)} x batch {cfg.batch_size}{micro} = {batch}, "
                 f"{spe} steps/epoch, {state.total} steps, {data.num_train} training images, "
                 f"{data.num_classes} classes, {policy}, {threads} threads/rank")
        if not data.classes_from and not cfg.synthetic:
            self.say(f"note: {data.num_classes} classes is the default (ImageNet's): neither "
                     f"--num_classes nor {cfg.data_dir}/metadata.json gives the count")
        joined = f"all {ranks(dist.size)}" if dist.size > 1 else "the 1 rank"
        self.say(f"hvd_alexnet: {joined} joined, on {len(set(dist.hosts))} host(s): "
                 f"{describe_hosts(dist.hosts, dist.gpu_ids)}")
        if spe * batch < 0.95 * data.num_train and not cfg.synthetic:
            self.say(f"note: the ranks' shards are uneven ({min(data.rank_examples)} to "
                     f"{max(data.rank_examples)} examples), so an epoch is {spe} steps of the "
                     f"smallest share: {spe * batch} of {data.num_train} images, a fresh "
                     f"subset each epoch")

    def train(self, epoch, step, values):
        """Every --log_every steps: loss, learning_rate, images_per_sec (and
        loss_scale, and checkpoint_seconds after a pause: not a curve)."""
        self.metrics.log([epoch, step], values, echo=False)
        self.board.scalars("train", step, {k: v for k, v in values.items()
                                           if k != "checkpoint_seconds"})
        self.say(self.progress.line(step, values["loss"], values["learning_rate"],
                                    values["images_per_sec"]))

    def validation(self, epoch, step, result, note=""):
        self.metrics.log([epoch], result)
        self.board.scalars("validation", step, {"top1": result["top1"], "top5": result["top5"]})
        self.say(f"Accuracy @ 1 = {result['top1']:.4f} Accuracy @ 5 = {result['top5']:.4f} "
                 f"[{result['validation_examples']} examples]{note}")

    def log(self, step, values):
        self.metrics.log(step, values)

    def event(self, step, values):
        """A record for the DLLogger file only (not the console)."""
        self.metrics.log(step, values, echo=False)

    def summary(self, values, ranks_agreeing):
        """The run's last record (DLLogger's summary: step []), with what it
        says on the console: the weights every rank holds, and the rate."""
        how = (f"identical on all {ranks(ranks_agreeing)}" if ranks_agreeing > 1 else
               "on the 1 rank")
        self.say(f"weights digest {values['weights_digest']}, {how}")
        self.metrics.log([], values)
        rate, per_rank = values["train_images_per_sec"], values["train_images_per_sec_per_rank"]
        self.say(f"total images/sec: {rate:.2f} ({per_rank:.2f} per rank)")

    def close(self):
        """Closes the files; again is a no-op (an elastic job's attempt that
        ended in a change of hosts closes them without a summary)."""
        self.metrics.close()
        self.board.close()
