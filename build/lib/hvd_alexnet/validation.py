"""The validation pass during training: top-1 / top-5 over every validation
record, on every rank (each its share, reader.eval_dataset), the exact counts
summed; counted by the same `inference.Scorer` as `evaluate`. Rank 0 reports."""

import time

import tensorflow as tf

from hvd_alexnet import inference
from hvd_alexnet.data import reader
from hvd_alexnet.errors import DataError
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
        """Validates on every rank, reports (rank 0), and returns {"top1", "top5",
        "validation_examples", "validation_seconds"}; a bad record on any rank
        raises DataError on every rank, naming it."""
        dist = self.dist
        ds = reader.to_device(reader.eval_dataset(
            self.data.val_files, self.cfg.eval_batch_size, self.cfg.image_size,
            self.data.num_classes, self.threads, skip_corrupt=self.cfg.skip_corrupt,
            first_label=self.cfg.first_label, rank=dist.rank, size=dist.size), dist.device)
        t0 = time.perf_counter()
        ticker = Ticker(f"validating (rank 0's share of {dist.size})",
                        self.data.num_val // dist.size, self.report.say)

        def after_batch(examples):
            self.hooks.after_validation_batch()
            dist.watchdog.beat("validating")
            ticker.update(examples)

        hits, error = (0, 0, 0), None
        try:
            hits = self.scorer.count(ds, after_batch)
        except tf.errors.OpError as e:  # the reader's: named once every rank is done
            error = e
        diagnose = lambda: f"rank {dist.rank}, validating: " + reader.diagnose(
            error, self.data.val_files, self.data.num_classes, self.cfg.first_label,
            self.cfg.skip_corrupt)
        failure = dist.each_alone(diagnose if error else None,  # HVD
                                  "finding the validation record that failed")
        failures = [f for f in dist.allgather_object(  # HVD
            failure, "hvd_alexnet.validation.failure") if f]
        if failures:
            raise DataError("; ".join(failures))
        c1, c5, n = inference.summed(dist, hits)  # HVD
        if not n:  # every record skipped as corrupt (--skip_corrupt)
            raise DataError(f"no validation record of the {self.data.num_val} in "
                            f"{len(self.data.val_files)} shard(s) decodes (all skipped as "
                            f"corrupt); fix the validation shards, or pass --noeval")
        result = {"top1": c1 / n, "top5": c5 / n, "validation_examples": n,
                  "validation_seconds": time.perf_counter() - t0}
        self.report.validation(epoch, step, result, inference.top5_note(self.data.num_classes))
        return result
