r"""The training loop: step, epoch, validation, checkpoint.

    horovodrun -np 2 -H localhost:2 python -m hvd_alexnet train \
        --data_dir data/demo --model_dir runs/demo --image_size 128 --epochs 6

Lines that talk to other ranks go through `dist` (distributed.py) and are
marked `# HVD`. Rank 0 alone validates, logs and checkpoints; the other ranks
wait for it in a heartbeat loop that Horovod's stall check never sees as stuck.
"""

import math
import os
import resource
import signal
import sys
import time
import types

import tensorflow as tf

from hvd_alexnet import config, distributed, inference, optim
from hvd_alexnet.data import reader, schema
from hvd_alexnet.inference import CHECKPOINT_SUBDIR
from hvd_alexnet.metrics_log import LOG_FILE, MetricsLog
from hvd_alexnet.model import build_alexnet, weight_decay_loss
from hvd_alexnet.progress import TENSORBOARD_SUBDIR, Progress, TensorBoard, Ticker
from hvd_alexnet.watchdog import Watchdog

TIMELINE_FILE = "horovod_timeline.json"
SYNTHETIC_EPOCH = 1281167  # examples per synthetic "epoch": ImageNet's training set


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


class Preempted(RuntimeError):
    """SIGTERM or SIGINT: stopped at a step boundary after rank 0's checkpoint."""


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


def prepare_data(cfg, dist):
    """Shard lists, counts and classes, agreed by all ranks before any heavy work.

    Each rank checks its own training shards (framing only: cheap, and it counts
    the records) and rank 0 the validation shards; any rank's problem is gathered
    and raised on every rank, so all of them exit together with the same message.
    """
    d = types.SimpleNamespace(train_files=[], val_files=[], rank_examples=[],
                              num_train=SYNTHETIC_EPOCH, num_val=0, num_classes=cfg.num_classes)
    if cfg.synthetic:
        return d
    problem, mine = "", 0
    try:
        files = schema.list_shards(cfg.data_dir, schema.TRAIN)
        if not files:
            raise reader.DataError(f"{cfg.data_dir}: no training shards (train-*)")
        d.train_files = reader.rank_shards(files, dist.rank, dist.size)
        d.val_files = schema.list_shards(cfg.data_dir, schema.VALIDATION)
        if cfg.eval and not d.val_files:
            raise reader.DataError(f"{cfg.data_dir}: no validation shards (validation-*); "
                                   f"add them or pass --noeval")
        mine = sum(reader.check_framing(path) for path in d.train_files)
        if dist.is_root and cfg.eval:
            d.num_val = sum(reader.check_framing(path) for path in d.val_files)
        meta = schema.read_metadata(cfg.data_dir) or {}
        if "num_classes" in meta and not cfg.num_classes_given:
            d.num_classes = int(meta["num_classes"])
    except reader.DataError as e:
        problem = str(e)
    gathered = dist.allgather_object((problem, mine), "hvd_alexnet.preflight")  # HVD
    problems = sorted(set(p for p, _ in gathered if p))
    if problems:
        raise reader.DataError("; ".join(problems))
    d.rank_examples = [n for _, n in gathered]
    d.num_train = sum(d.rank_examples)
    return d


def _policy(precision):
    if precision == "fp32":
        return "float32"
    return "mixed_float16" if distributed.has_gpu() else "mixed_bfloat16"


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


def _remove_torn_saves(directory, say):
    """A save that crashed leaves TensorFlow's `ckpt-N_temp/` behind, while the
    `checkpoint` index still names the previous, complete checkpoint: delete it."""
    for torn in sorted(tf.io.gfile.glob(os.path.join(directory, "ckpt-*_temp"))):
        say(f"removing {torn}: an incomplete save (the job died while writing it)")
        tf.io.gfile.rmtree(torn)


def _test_stall(rank):
    """$HVD_ALEXNET_TEST_STALL=RANK:STEP makes that rank hang after that step (tests only)."""
    spec = os.environ.get("HVD_ALEXNET_TEST_STALL", "")
    if spec and int(spec.split(":")[0]) == rank:
        return int(spec.split(":")[1])
    return -1


def run(cfg, log=print):
    """Trains per `cfg` (see config.py); returns rank 0's final metrics (or {})."""
    t_start = time.time()
    timeline = (os.path.abspath(os.path.join(cfg.model_dir, TIMELINE_FILE))
                if cfg.horovod_timeline else None)
    dist, threads = distributed.init(cfg.fusion_threshold_mb, cfg.cycle_time_ms,  # HVD
                                     cfg.fp16_allreduce, cfg.threads, timeline)
    say = log if dist.is_root else (lambda *a, **k: None)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.seed)
    data = prepare_data(cfg, dist)
    step_batch = cfg.batch_size * cfg.accumulate_steps  # per rank, per optimizer step
    global_batch = step_batch * dist.size
    if cfg.synthetic:
        spe = reader.steps_per_epoch([data.num_train], global_batch)
    else:
        spe = reader.steps_per_epoch(data.rank_examples, step_batch)
    total = cfg.epochs * spe if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * spe)

    policy = _policy(cfg.precision)
    tf.keras.mixed_precision.set_global_policy(policy)
    # Dropout masks seeded by (seed, rank, step, micro-batch): the same after a resume.
    micro = [0]  # which micro-batch of the step is being traced
    model = build_alexnet(cfg.image_size, data.num_classes, cfg.dropout, dropout_seed=lambda: (
        tf.stack([tf.constant(cfg.seed * 1_000_003 + dist.rank, tf.int64),
                  tf.cast(opt.iterations, tf.int64) * cfg.accumulate_steps + micro[0]])))
    state_bytes = sum(v.shape.num_elements() * 4 for v in model.trainable_variables)
    if dist.is_root:
        config.check_disk(cfg.model_dir, int(2.2 * state_bytes))  # weights + momentum
    schedule = optim.Schedule(steps_per_epoch=spe,  # HVD: the rate x ranks (x micro-batches)
                              peak=cfg.base_lr * dist.size * cfg.accumulate_steps,
                              warmup_epochs=cfg.warmup_epochs, schedule=cfg.lr_schedule,
                              epochs=cfg.epochs, decay_epochs=tuple(cfg.lr_decay_epochs),
                              decay_factor=cfg.lr_decay_factor)
    loss_scale = policy == "mixed_float16"
    opt = optim.make_optimizer(schedule, cfg.momentum, loss_scale)
    opt.build(model.trainable_variables)  # momentum slots exist before the broadcast

    # Training progress in examples, not steps, so that a run can resume on
    # another number of ranks (another global batch) at the same point.
    seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt, examples_seen=seen)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(cfg.model_dir, CHECKPOINT_SUBDIR),
                                         max_to_keep=cfg.keep_checkpoints)
    if dist.is_root:
        _remove_torn_saves(manager.directory, say)
    if dist.is_root and manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        step0 = int(seen) // global_batch
        if step0 != int(opt.iterations):  # another global batch than the checkpoint's
            say(f"checkpoint taken at step {int(opt.iterations)} with a global batch of "
                f"{int(seen) // max(int(opt.iterations), 1)}; on {dist.size} ranks "
                f"(global batch {global_batch}) that is step {step0}, epoch {step0 // spe}")
            opt.iterations.assign(step0)  # the schedule follows: rate of this epoch, x ranks
        say(f"resumed from {manager.latest_checkpoint} at step {step0}")
    dist.broadcast_variables(model.variables + opt.variables)  # HVD: all ranks start identical
    start_step = int(opt.iterations)
    seen_at_start = start_step * global_batch

    metrics = MetricsLog(os.path.join(cfg.model_dir, LOG_FILE), enabled=dist.is_root)
    metrics.log("PARAMETER", {**{k: v for k, v in vars(cfg).items() if k != "num_classes_given"},
                              "num_classes": data.num_classes, "ranks": dist.size,
                              "global_batch": global_batch, "steps_per_epoch": spe,
                              "total_steps": total, "train_examples": data.num_train,
                              "rank_examples": data.rank_examples,
                              "validation_examples": data.num_val, "policy": policy,
                              "threads_per_rank": threads, "start_step": start_step,
                              "hosts": dist.hosts})
    for name, unit in (("loss", None), ("learning_rate", None), ("images_per_sec", "images/s"),
                       ("top1", None), ("top5", None)):
        metrics.metadata(name, {"unit": unit} if unit else {})
    if dist.is_root:  # what predict, export and evaluate need to rebuild the model
        inference.write_description(cfg.model_dir, inference.describe(
            cfg.image_size, data.num_classes, None if cfg.synthetic else cfg.data_dir))
        if timeline:
            say(f"Horovod timeline: {timeline} (open in chrome://tracing or ui.perfetto.dev)")
    micro_note = f" x {cfg.accumulate_steps} micro-batches" if cfg.accumulate_steps > 1 else ""
    say(f"hvd_alexnet: {dist.size} ranks x batch {cfg.batch_size}{micro_note} = {global_batch}, "
        f"{spe} steps/epoch, {total} steps, {data.num_train} training images, "
        f"{data.num_classes} classes, {policy}, {threads} threads/rank")
    say(f"hvd_alexnet: all {dist.size} ranks joined, on {len(set(dist.hosts))} host(s): "
        f"{distributed.describe_hosts(dist.hosts)}")
    if spe * global_batch < 0.95 * data.num_train and not cfg.synthetic:
        say(f"note: the ranks' shards are uneven ({min(data.rank_examples)} to "
            f"{max(data.rank_examples)} examples), so an epoch is {spe} steps of the smallest "
            f"share: {spe * global_batch} of {data.num_train} images, a fresh subset each epoch")

    def micro_loss(images, labels):
        logits = model(images, training=True)
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
        return loss + cfg.weight_decay * weight_decay_loss(model)

    @tf.function
    def train_step(images, labels, stop):
        variables = model.trainable_variables
        if cfg.accumulate_steps == 1:
            with tf.GradientTape() as tape:
                micro[0] = 0
                loss = micro_loss(images, labels)
                scaled = opt.get_scaled_loss(loss) if loss_scale else loss
            tape = dist.gradient_tape(tape)  # HVD: gradients averaged over ranks
            grads = tape.gradient(scaled, variables)
        else:  # K micro-batches, one after the other, then one all-reduce: amortised
            sums, losses = None, []
            for i, (x, y) in enumerate(zip(tf.split(images, cfg.accumulate_steps),
                                           tf.split(labels, cfg.accumulate_steps))):
                with tf.control_dependencies(sums or []), tf.GradientTape() as tape:
                    micro[0] = i
                    losses.append(micro_loss(x, y))
                    scaled = opt.get_scaled_loss(losses[-1]) if loss_scale else losses[-1]
                g = tape.gradient(scaled, variables)
                sums = g if sums is None else [a + b for a, b in zip(sums, g)]
            loss = tf.add_n(losses) / cfg.accumulate_steps
            grads = dist.average([s / cfg.accumulate_steps for s in sums])  # HVD
        if loss_scale:
            grads = opt.get_unscaled_gradients(grads)
        opt.apply_gradients(zip(grads, variables))
        return loss, dist.any_rank(stop)  # HVD: a stop asked of any rank stops all

    scorer = inference.Scorer(model, data.num_classes)

    def train_batches(epoch, offset):
        if cfg.synthetic:
            return reader.synthetic_dataset(step_batch, cfg.image_size, data.num_classes,
                                            cfg.seed + dist.rank)
        return reader.train_dataset(
            data.train_files, step_batch, cfg.image_size, data.num_classes, spe,
            seed=cfg.seed, epoch=epoch, rank=dist.rank, skip_steps=offset,
            shuffle=cfg.shuffle, augment=cfg.augment, flip=cfg.flip,
            area_range=(cfg.crop_area_min, 1.0), threads=threads,
            deterministic=cfg.deterministic, skip_corrupt=cfg.skip_corrupt)

    def validate(epoch):
        ds = reader.eval_dataset(data.val_files, cfg.eval_batch_size, cfg.image_size,
                                 data.num_classes, threads, skip_corrupt=cfg.skip_corrupt)
        t0, ticker = time.perf_counter(), Ticker("validating", data.num_val, say)

        def after_batch(examples):
            dist.solo_tick()  # HVD: keeps the waiting ranks' collectives alive
            ticker.update(examples)

        c1, c5, n = scorer.count(ds, after_batch)
        result = {"top1": c1 / n, "top5": c5 / n, "validation_examples": n,
                  "validation_seconds": time.perf_counter() - t0}
        metrics.log([epoch], result)
        board.scalars("validation", step, {"top1": c1 / n, "top5": c5 / n})
        say(f"Accuracy @ 1 = {c1 / n:.4f} Accuracy @ {scorer.k} = {c5 / n:.4f} [{n} examples]")
        return result

    progress = Progress(total, spe, global_batch)
    board = TensorBoard(os.path.join(cfg.model_dir, TENSORBOARD_SUBDIR), enabled=dist.is_root)
    step, epoch, final = start_step, start_step // spe, {}
    speed, stop, stopping, skipped, skipped_all = Throughput(), StopRequest(), False, 0, 0
    dist.watchdog = watchdog = Watchdog(dist.rank, cfg.stall_timeout_sec)
    watchdog.start()
    test_stall = _test_stall(dist.rank)
    while step < total:
        offset = step % spe
        n = min(spe - offset, total - step)  # to the end of the epoch or of the run
        if cfg.checkpoint_every_steps:  # or to the next periodic checkpoint
            n = min(n, cfg.checkpoint_every_steps - step % cfg.checkpoint_every_steps)
        window_t, window_steps, timed, loss = time.perf_counter(), 0, 0, None
        if step > start_step:
            speed.start()  # later epochs: the pipeline's start-up counts too
        step_before = step
        try:
            watchdog.beat("reading the first batch of the epoch")
            for images, labels, positions in train_batches(epoch, offset).take(n):
                watchdog.beat("in a training step (computing, or in the gradient all-reduce)")
                loss, stopping = train_step(images, labels, tf.constant(stop.requested))
                step += 1
                watchdog.beat("reading the next batch")
                if step == test_stall:  # test-only: hang as a stuck input would
                    time.sleep(1e6)
                window_steps += 1
                if speed.started is None:  # the run's first step traced the graph: not timed
                    float(loss)
                    speed.start()
                    window_t, window_steps = time.perf_counter(), 0
                else:
                    timed += 1
                if step % cfg.log_every == 0 or step == total:
                    loss_value = dist.mean(float(loss), "hvd_alexnet.loss")  # HVD
                    if not math.isfinite(loss_value):  # every rank sees the same mean: all stop
                        raise Diverged(f"the loss is {loss_value} at step {step}: training "
                                       f"diverged; lower --base_lr or lengthen --warmup_epochs "
                                       f"(the last checkpoint is in {manager.directory})")
                    now = time.perf_counter()
                    rate = window_steps * global_batch / max(now - window_t, 1e-9)
                    shown = {"loss": loss_value, "learning_rate": float(schedule(step - 1)),
                             "images_per_sec": rate}
                    metrics.log([epoch, step], shown, echo=False)
                    board.scalars("train", step, shown)
                    say(progress.line(step, loss_value, shown["learning_rate"], rate))
                    window_t, window_steps = now, 0
                if bool(stopping):
                    break
        except tf.errors.InvalidArgumentError as e:
            if "bad label" in e.message:  # the assertion names the file and record already
                raise
            print(f"hvd_alexnet: rank {dist.rank}: a training record did not decode; scanning "
                  f"this rank's shards for it ...", file=sys.stderr, flush=True)
            found = reader.find_undecodable(data.train_files, data.num_classes)
            where = f"{found[0]}: record {found[1]}: {found[2]}" if found else e.message
            raise reader.DataError(f"rank {dist.rank}: {where}; fix or remove it, or pass "
                                   f"--skip_corrupt to skip such records") from None
        stopping = bool(stopping)
        if step - step_before < n and not stopping:  # would leave the other ranks waiting
            raise reader.DataError(f"rank {dist.rank}: the reader ended after "
                                   f"{step - step_before} of {n} steps")
        if cfg.skip_corrupt and step > step_before:  # positions are in order: gaps are skips
            read = int(tf.reduce_max(positions)) + 1 - offset * step_batch
            skipped += read - (step - step_before) * step_batch
        if loss is not None:
            float(loss)  # wait for the last step before stopping the clock
        speed.stop(timed * global_batch)
        epoch_done = step % spe == 0
        due = cfg.eval and not cfg.synthetic and not stopping and (step == total or (
            epoch_done and cfg.eval_every_epochs and (epoch + 1) % cfg.eval_every_epochs == 0))
        if cfg.skip_corrupt:
            skipped_all = dist.sum(skipped, "hvd_alexnet.skipped")  # HVD
            metrics.log([epoch, step], {"skipped_corrupt_records": skipped_all})
        if dist.is_root:  # rank 0 saves and validates while the others wait
            dist.solo_begin()
            seen.assign(seen_at_start + (step - start_step) * global_batch)
            manager.save(checkpoint_number=step)
            dist.solo_tick(force=True)
            if due:
                final = validate(epoch)
            dist.solo_end()  # HVD
        else:
            dist.wait_for_root()  # HVD
        if stopping:
            metrics.log([epoch, step], {"preempted": True})
            raise Preempted(f"stopped at step {step} on request; the checkpoint of this step is "
                            f"in {manager.directory}: run the same command again to resume")
        if epoch_done:
            epoch += 1

    watchdog.stop()
    digest = distributed.weights_digest(model.variables)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gathered = dist.allgather_object((digest, peak_mb), "hvd_alexnet.digest")  # HVD
    digests = [d for d, _ in gathered]
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    say(f"weights digest {digest}, identical on all {dist.size} ranks")
    summary = {"train_images_per_sec": speed.rate,
               "train_images_per_sec_per_rank": speed.rate / dist.size,
               "time_to_train_sec": time.time() - t_start, "steps": step,
               "epochs_completed": step / spe, "weights_digest": digest,
               "peak_rss_mb_per_rank": [round(m, 1) for _, m in gathered]}
    summary.update({k: v for k, v in final.items() if k in ("top1", "top5")})
    if cfg.skip_corrupt:
        summary["skipped_corrupt_records"] = skipped_all
    metrics.log([], summary)
    say(f"total images/sec: {speed.rate:.2f} ({speed.rate / dist.size:.2f} per rank)")
    metrics.close()
    board.close()
    return summary if dist.is_root else {}


def main(argv):
    """Entry point of `python -m hvd_alexnet train`."""
    if len(argv) > 1:
        raise config.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(config.from_flags())
