"""Rank 0's validation pass during training: top-1 / top-5 over every
validation record, counted by the same `inference.Scorer` as `evaluate`.

The other ranks wait meanwhile, answered by a thread of this rank (see
distributed.py); `dist.solo_tick()` after each batch feeds this rank's watchdog.
"""

import time

import tensorflow as tf

from hvd_alexnet import inference
from hvd_alexnet.errors import DataError
from hvd_alexnet.data import reader
from hvd_alexnet.progress import Ticker


class Validation:
    def __init__(self, model, cfg, data, threads, dist, report, hooks):
        self.cfg, self.data, self.threads, self.dist, self.report = cfg, data, threads, dist, report
        self.hooks = hooks
        self.scorer = inference.Scorer(model, data.num_classes)

    def due(self, state, epoch):
        """Whether the pause after a stretch of `epoch` validates: at the end of the
        run, and at the end of every --eval_every_epochs-th epoch."""
        if not self.cfg.eval or self.cfg.synthetic:
            return False
        every, epoch_done = self.cfg.eval_every_epochs, state.step % state.steps_per_epoch == 0
        return state.step == state.total or bool(epoch_done and every and (epoch + 1) % every == 0)

    def run(self, epoch, step):
        """Validates, reports, and returns {"top1", "top5", "validation_examples",
        "validation_seconds"}."""
        ds = reader.eval_dataset(self.data.val_files, self.cfg.eval_batch_size,
                                 self.cfg.image_size, self.data.num_classes, self.threads,
                                 skip_corrupt=self.cfg.skip_corrupt,
                                 first_label=self.cfg.first_label)
        t0, ticker = time.perf_counter(), Ticker("validating", self.data.num_val, self.report.say)

        def after_batch(examples):
            self.hooks.after_validation_batch()
            self.dist.solo_tick()
            ticker.update(examples)

        try:
            c1, c5, n = self.scorer.count(ds, after_batch)
        except tf.errors.InvalidArgumentError as e:  # a bad label names its file and record
            first = (e.message or "").strip().splitlines()[:1] or [type(e).__name__]
            raise DataError(f"rank 0, validating: {reader.bad_label(e.message) or first[0]}") \
                from None
        result = {"top1": c1 / n, "top5": c5 / n, "validation_examples": n,
                  "validation_seconds": time.perf_counter() - t0}
        self.report.validation(epoch, step, result, inference.top5_note(self.data.num_classes))
        return result
