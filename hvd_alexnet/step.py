"""One training step: the loss, K micro-batches with their gradients summed
locally, loss scaling for float16, one averaging all-reduce, the update.

Horovod enters only through `dist` (gradient_tape, average, mean_vote); with
`distributed.Local()` the step runs in one process, as the unit tests run it.
"""

import tensorflow as tf

from hvd_alexnet.data.preprocess import normalize
from hvd_alexnet.model import weight_decay_loss


def loss(model, images, labels, weight_decay):
    """Mean cross-entropy of the logits plus L2 weight decay on the kernels;
    `images` are uint8, normalised here, on the step's device."""
    logits = model(normalize(images), training=True)
    xent = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True))
    return xent + weight_decay * weight_decay_loss(model)


class DropoutSeeds:
    """The dropout masks' seed: (seed and rank, optimizer step x K + micro-batch),
    so that a resumed run draws the masks an uninterrupted one would have.
    `micro` is the micro-batch being traced, set by the step function."""

    def __init__(self, seed, rank, iterations, micro_batches):
        self.set_rank(seed, rank)
        self.iterations, self.micro_batches, self.micro = iterations, micro_batches, 0

    def set_rank(self, seed, rank):
        """An elastic job's rank changes: the next trace takes the new one."""
        self.base = seed * 1_000_003 + rank

    def __call__(self):
        step = tf.cast(self.iterations, tf.int64) * self.micro_batches + self.micro
        return tf.stack([tf.constant(self.base, tf.int64), step])


POLICIES = {"fp32": "float32", "fp16": "mixed_float16", "bf16": "mixed_bfloat16"}


def policy(precision, gpu):
    """Keras' dtype policy for --precision; "mixed" is the device's best."""
    if precision == "mixed":
        precision = "fp16" if gpu else "bf16"
    return POLICIES[precision]


def make_train_step(model, opt, dist, weight_decay, micro_batches=1, seeds=None, xla=False):
    """A tf.function (images, labels, vote) -> (loss, the ranks' mean stop vote) that
    updates `model` once. The batch holds `micro_batches` micro-batches;
    `seeds`, the model's DropoutSeeds, learns which one is being traced. With
    `xla`, the forward and backward passes are one XLA computation (jit_compile)
    and the all-reduce and the update run outside it (Horovod's ops have no XLA
    kernels on the CPU)."""
    loss_scale = isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer)

    def scaled_loss(images, labels, micro):
        if seeds:
            seeds.micro = micro  # read while tracing: each micro-batch its own masks
        value = loss(model, images, labels, weight_decay)
        return value, (opt.get_scaled_loss(value) if loss_scale else value)

    def local_gradients(images, labels):
        """The mean loss and this rank's (scaled) gradients summed over the micro-batches."""
        sums, values = None, []
        for i, (x, y) in enumerate(zip(tf.split(images, micro_batches),
                                       tf.split(labels, micro_batches))):
            with tf.control_dependencies(sums or []), tf.GradientTape() as tape:
                value, scaled = scaled_loss(x, y, i)
            values.append(value)
            g = tape.gradient(scaled, model.trainable_variables)
            sums = g if sums is None else [a + b for a, b in zip(sums, g)]
        return tf.add_n(values) / micro_batches, [s / micro_batches for s in sums]

    if xla:
        local_gradients = tf.function(local_gradients, jit_compile=True)

    # autograph=False: no Python control flow on tensors here, so the trace skips
    # AutoGraph's rewrite of Keras' and Horovod's code (5 s at every process's start).
    @tf.function(autograph=False)
    def train_step(images, labels, vote):
        variables = model.trainable_variables
        if micro_batches == 1 and not xla:  # each gradient's all-reduce starts when it is ready
            with tf.GradientTape() as tape:
                value, scaled = scaled_loss(images, labels, 0)
            grads = dist.gradient_tape(tape).gradient(scaled, variables)  # HVD: averaged
        else:  # K micro-batches (or one XLA computation), then one all-reduce
            value, sums = local_gradients(images, labels)
            grads = dist.average(sums)  # HVD
        if loss_scale:  # a step whose gradients overflow is skipped (alike on every rank)
            grads = opt.get_unscaled_gradients(grads)
        opt.apply_gradients(zip(grads, variables))
        return value, dist.mean_vote(vote)  # HVD: a stop asked of any rank stops all

    return train_step
