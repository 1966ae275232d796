"""What rank 0 shows while it works: one concise line every --log_every steps
(the DLLogger file keeps every field), progress during a validation pass, and
TensorBoard scalars in MODEL_DIR/tensorboard (`tensorboard --logdir MODEL_DIR`)."""

import math
import time

import tensorflow as tf

TENSORBOARD_SUBDIR = "tensorboard"


def clock(seconds):
    """1:02:03 for 3723 s; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """The training line: epoch, step of total, loss, learning rate, global
    images/s, and the time left in the epoch and in the run at that rate."""

    def __init__(self, total_steps, steps_per_epoch, global_batch):
        self.total, self.spe, self.batch = total_steps, steps_per_epoch, global_batch
        self.epochs = math.ceil(total_steps / steps_per_epoch)

    def line(self, step, loss, learning_rate, images_per_sec):
        epoch = (step - 1) // self.spe  # the epoch this step belongs to
        in_epoch = step - epoch * self.spe
        head = (f"epoch {epoch + 1}/{self.epochs}  step {step}/{self.total} "
                f"({in_epoch}/{self.spe} of the epoch)  loss {loss:.4f}  lr {learning_rate:.3g}")
        if images_per_sec <= 0:  # the run's first step, which builds the graph, is not timed
            return head + "  (building the graph: not timed)"
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
