"""SGD with momentum and the learning-rate schedule (warm-up, then step or cosine).

The rate is a function of the optimizer's own step counter, which is in every
checkpoint, so a resumed run continues at the same rate.
"""

import math

import tensorflow as tf


def learning_rate(step, steps_per_epoch, peak, warmup_epochs, schedule, epochs,
                  decay_epochs=(), decay_factor=0.1):
    """The rate at a global step (a Python number or a scalar tensor)."""
    epoch = tf.cast(step, tf.float32) / float(steps_per_epoch)
    warmup_steps = warmup_epochs * steps_per_epoch
    if schedule == "cosine":
        span = max(epochs - warmup_epochs, 1e-6)
        progress = tf.clip_by_value((epoch - warmup_epochs) / span, 0.0, 1.0)
        rate = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif schedule == "step":
        passed = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in decay_epochs] + [0.0])
        rate = peak * tf.pow(decay_factor, passed)
    elif schedule == "constant":
        rate = tf.constant(peak, tf.float32)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    if warmup_steps > 0:  # linear from peak / warmup_steps at step 0 to peak
        ramp = peak * (tf.cast(step, tf.float32) + 1.0) / float(warmup_steps)
        rate = tf.where(tf.cast(step, tf.float32) < warmup_steps, tf.minimum(ramp, rate), rate)
    return rate


class Schedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def __call__(self, step):
        return learning_rate(step, **self.kwargs)

    def get_config(self):
        return dict(self.kwargs)


def make_optimizer(schedule, momentum, loss_scale=None, xla=False):
    """SGD with momentum; with `loss_scale` (the initial scale), wrapped in Keras'
    dynamic LossScaleOptimizer: float16 needs it, bfloat16 has float32's range.
    Its update is compiled with XLA only with `xla` (--xla): Keras 2.15 compiles
    it on any host with a GPU by default, and XLA then needs CUDA's libdevice
    and ptxas at run time ("libdevice not found", keras-team/keras#17422)."""
    opt = tf.keras.optimizers.SGD(learning_rate=schedule, momentum=momentum, jit_compile=xla)
    if loss_scale:
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt, initial_scale=loss_scale)
    return opt


def state_variables(opt):
    """Every optimizer variable the ranks must hold alike (broadcast after a
    restore): the step and the slots, and for float16 the loss scale and its
    counter, which the LossScaleOptimizer leaves out of `variables` although its
    checkpoint holds them. A rank that resumed with another loss scale would
    unscale the averaged gradients differently from the others."""
    extra = []
    if isinstance(opt, tf.keras.mixed_precision.LossScaleOptimizer) and opt.dynamic:
        extra = [opt._loss_scale.current_loss_scale, opt.dynamic_counter]  # Keras 2.15
    return list(opt.variables) + extra
