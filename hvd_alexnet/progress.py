"""What rank 0 shows while it works: one concise line every --log_every steps
(the DLLogger file keeps every field), progress during a validation pass, and
TensorBoard scalars in MODEL_DIR/tensorboard (`tensorboard --logdir MODEL_DIR`).
`Reporter` sends each event to all three; on other ranks it does nothing."""

import math
import os
import time

import tensorflow as tf

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
    """Scalars for TensorBoard, written by rank 0 only (a no-op elsewhere)."""

    def __init__(self, logdir, enabled=True):
        self.writer = tf.summary.create_file_writer(logdir) if enabled else None

    def scalars(self, group, step, values):
        if self.writer is None:
            return
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(f"{group}/{name}", value)
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


class Throughput:
    """Images/sec over training steps only (no validation, no checkpoint), from the
    end of the run's first step, which includes tracing and graph building."""

    def __init__(self):
        self.seconds, self.images, self.started = 0.0, 0, None

    def start(self):
        self.started = time.perf_counter()

    def stop(self, images):
        if self.started is not None:
            self.seconds += time.perf_counter() - self.started
            self.images += images
        self.started = None

    @property
    def rate(self):
        return self.images / self.seconds if self.seconds else 0.0


class Reporter:
    """The run's events, each to the DLLogger file (MODEL_DIR/dllogger.json), the
    console and TensorBoard as it suits them. Rank 0 only: elsewhere a no-op."""

    def __init__(self, model_dir, enabled, say, total_steps, steps_per_epoch, global_batch,
                 first_step=1):
        self.say = say
        self.metrics = MetricsLog(os.path.join(model_dir, LOG_FILE), enabled=enabled)
        self.board = TensorBoard(os.path.join(model_dir, TENSORBOARD_SUBDIR), enabled=enabled)
        self.progress = Progress(total_steps, steps_per_epoch, global_batch, first_step)

    def parameters(self, values):
        self.metrics.log("PARAMETER", values)
        for name, unit in METRICS:
            self.metrics.metadata(name, {"unit": unit} if unit else {})

    def train(self, epoch, step, values):
        """Every --log_every steps: loss, learning_rate, images_per_sec."""
        self.metrics.log([epoch, step], values, echo=False)
        self.board.scalars("train", step, values)
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

    def close(self, summary):
        self.metrics.log([], summary)
        self.shut()

    def shut(self):
        """Closes the files (also without a summary: an elastic job's attempt that
        ended in a change of hosts)."""
        self.metrics.close()
        self.board.close()
