"""Checkpoints of a run: MODEL_DIR/checkpoints/ckpt-STEP, written by rank 0.

A checkpoint holds the weights, the optimizer (its step counter, momentum and
loss scale) and the examples seen. Progress is kept in examples, not steps, so
a run resumes at the same point on another number of ranks (another global
batch). Knows nothing of Horovod: the trainer broadcasts what rank 0 restored.
"""

import os

import tensorflow as tf

SUBDIR = "checkpoints"


def resume_step(examples_seen, global_batch):
    """The step at which a run that has seen `examples_seen` examples goes on
    with a global batch of `global_batch`."""
    return examples_seen // global_batch


class Checkpoints:
    def __init__(self, model_dir, model, opt, keep, say=print):
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
        self.opt, self.say = opt, say
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=opt, examples_seen=self.seen)
        self.manager = tf.train.CheckpointManager(self.ckpt, os.path.join(model_dir, SUBDIR),
                                                  max_to_keep=keep)
        self.directory = self.manager.directory

    def remove_torn_saves(self):
        """A save that crashed leaves TensorFlow's `ckpt-N_temp/` behind, while the
        `checkpoint` index still names the previous, complete checkpoint: delete it."""
        for torn in sorted(tf.io.gfile.glob(os.path.join(self.directory, "ckpt-*_temp"))):
            self.say(f"removing {torn}: an incomplete save (the job died while writing it)")
            tf.io.gfile.rmtree(torn)

    def restore(self, global_batch, steps_per_epoch, ranks):
        """Restores the newest checkpoint, if any, and sets the optimizer's step
        to where this global batch goes on (the schedule follows it). Returns
        the step to start at (0 for a new run)."""
        self.remove_torn_saves()
        latest = self.manager.latest_checkpoint
        if not latest:
            return 0
        self.ckpt.restore(latest).assert_existing_objects_matched()
        saved_step, seen = int(self.opt.iterations), int(self.seen)
        step = resume_step(seen, global_batch)
        if step != saved_step:  # another global batch than the checkpoint's
            self.say(f"checkpoint taken at step {saved_step} with a global batch of "
                     f"{seen // max(saved_step, 1)}; on {ranks} ranks (global batch "
                     f"{global_batch}) that is step {step}, epoch {step // steps_per_epoch}")
            self.opt.iterations.assign(step)
        scale = (f", loss scale {float(self.opt.loss_scale):g}"
                 if isinstance(self.opt, tf.keras.mixed_precision.LossScaleOptimizer) else "")
        self.say(f"resumed from {latest} at step {step}{scale}")
        return step

    def save(self, step, examples_seen):
        self.seen.assign(examples_seen)
        self.manager.save(checkpoint_number=step)
