r"""The training run, top to bottom: join the job, build the model, agree on
the data, restore the newest checkpoint, then train stretch by stretch,
pausing at each epoch's end (and every --checkpoint_every_steps) to checkpoint
and validate. With --elastic (elastic.py) everything from the data on runs
again after each change of hosts, from the last commit instead of the disk.

    horovodrun -np 2 -H localhost:2 python -m hvd_alexnet train \
        --data_dir data/demo --model_dir runs/demo --image_size 128 --epochs 6

Lines that talk to other ranks go through `dist` (distributed.py) and are
marked `# HVD`. Rank 0 alone validates, logs and checkpoints; the other ranks
wait for it in a heartbeat loop that Horovod's stall check never sees as stuck.
"""

import os
import resource
import time
import types

import tensorflow as tf

from hvd_alexnet import checkpoint, command, config, distributed, inference, optim, step
from hvd_alexnet.data import prepare
from hvd_alexnet.errors import DataError, Preempted
from hvd_alexnet.loop import Hooks, RunState, StopRequest, train_stretch
from hvd_alexnet.model import build_alexnet
from hvd_alexnet.progress import Reporter, Throughput
from hvd_alexnet.validation import Validation

TIMELINE_FILE = "horovod_timeline.json"


def run(cfg, log=print, hooks=None):
    """Trains per `cfg` (see config.py); returns rank 0's final metrics (or {})."""
    hooks, t_start = hooks or Hooks(), time.time()
    # 1. Join the job: Horovod, one device per rank, the host's cores divided.
    if cfg.elastic:
        from hvd_alexnet import elastic  # HVD: imports Horovod's elastic runner
        elastic.check_launch()
    timeline = os.path.abspath(os.path.join(cfg.model_dir, TIMELINE_FILE))
    dist, threads = distributed.init(  # HVD
        cfg.fusion_threshold_mb, cfg.cycle_time_ms, cfg.fp16_allreduce, cfg.threads,
        timeline if cfg.horovod_timeline else None, cfg.stall_timeout_sec, hooks.heartbeat_seconds,
        elastic=cfg.elastic, join=False)  # train() joins
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.seed)
    # 2. The model and its optimizer; no collective yet (an elastic job's first is
    # the committed state's sync, which a rank that joins later runs first).
    job = types.SimpleNamespace(cfg=cfg, dist=dist, threads=threads, hooks=hooks, log=log,
                                t_start=t_start, timeline=timeline, speed=Throughput(),
                                m=build(cfg, prepare.class_count(cfg)[0]), committed=None,
                                report=None)
    if not cfg.elastic:
        return train(job)
    job.committed = elastic.Committed(job.m.model.variables + optim.state_variables(job.m.opt))
    return elastic.run(lambda committed: train(job), job.committed,
                       lambda: dist.watchdog.beat("re-forming the job after a change of hosts"))


def train(job):
    """The run on the ranks there are; an elastic job calls it again after each
    change of membership, with the variables as last committed."""
    cfg, dist, m, hooks, committed = job.cfg, job.dist, job.m, job.hooks, job.committed
    dist.join()  # HVD: every rank's place and host
    say = job.log if dist.is_root else (lambda *a, **k: None)
    # 3. Agree on the data, and so on the steps: every rank takes as many.
    data = prepare.prepare_data(cfg, dist.rank, dist.size, lambda mine: dist.allgather_object(
        mine, "hvd_alexnet.preflight"),  # HVD
        inference.trained_classes(cfg.model_dir) if dist.is_root else [])
    state = RunState(*prepare.plan_steps(cfg, data, dist.size), speed=job.speed)
    bind(m, cfg, state, dist)
    # 4. Where to start: rank 0's newest checkpoint (all ranks start identical), or
    # in an elastic job that has committed, the commit (synced from rank 0).
    ckpts = checkpoint.Checkpoints(cfg.model_dir, m.model, m.opt, cfg.keep_checkpoints, say)
    if committed is None or committed.fresh:
        if dist.is_root:
            config.check_disk(cfg.model_dir, config.checkpoint_bytes(m.model.count_params()))
            ckpts.restore(state.global_batch, state.steps_per_epoch, dist.size)
        dist.broadcast_variables(m.model.variables + optim.state_variables(m.opt))  # HVD
        state.resume_at(int(m.opt.iterations))
    else:
        state.resume_at(checkpoint.resume_step(committed.examples_seen, state.global_batch),
                        committed.examples_seen)
        m.opt.iterations.assign(state.step)
    if job.report:  # an elastic job's previous attempt (rank 0 may have moved)
        job.report.shut()
    report = job.report = Reporter(cfg.model_dir, dist.is_root, say, state.total,
                                   state.steps_per_epoch, state.global_batch,
                                   state.start_step + 1)
    announce(cfg, data, state, dist, job.threads, m.policy, report, job.timeline)
    commit = None
    if committed is not None:
        commit = lambda: committed.commit_at(state, dist, report)  # noqa: E731
        if not committed.fresh:  # a re-forming: rank 0 has run before
            committed.check_and_announce(state, dist, report, m.model.variables)
        commit()
    validation = Validation(m.model, cfg, data, job.threads, dist, report, hooks)
    ctx = types.SimpleNamespace(cfg=cfg, dist=dist, stop=StopRequest(), report=report,
                                learning_rate=m.schedule, hooks=hooks, loss_scale=(
                                    (lambda: float(m.opt.loss_scale))
                                    if m.policy == "mixed_float16" else None),
                                train_files=data.train_files, num_classes=data.num_classes,
                                checkpoint_dir=ckpts.directory, commit=commit,
                                commit_every=cfg.elastic_commit_every)
    final = {}
    dist.watchdog.start_once()  # an elastic job's next attempt: already running
    # 5. Train to each pause; there rank 0 checkpoints (and validates) while the others wait.
    while state.step < state.total:
        epoch, n = state.epoch, state.stretch(cfg.checkpoint_every_steps)
        batches = prepare.epoch_batches(cfg, data, state.step_batch, state.steps_per_epoch,
                                        epoch, state.step % state.steps_per_epoch, dist.rank,
                                        job.threads)
        stopping = train_stretch(m.train_step, batches, n, state, ctx)
        if cfg.skip_corrupt:
            state.skipped_all = dist.sum(state.skipped, "hvd_alexnet.skipped")  # HVD
            report.log([epoch, state.step], {"skipped_corrupt_records": state.skipped_all})
        due = not stopping and validation.due(state, epoch)
        final = pause(dist, ckpts, state, lambda: validation.run(epoch, state.step), due,
                      hooks) or final
        if stopping:
            ctx.stop.settle()
            report.log([epoch, state.step], {"preempted": True})
            raise Preempted(f"stopped at step {state.step} on request; the checkpoint of this "
                            f"step is in {ckpts.directory}: run the same command again to resume")
        if commit:
            commit()
    dist.watchdog.stop()
    # 6. Finish: the ranks agree on the weights; rank 0 writes the summary.
    return finish(cfg, dist, m.model, state, report, final, job.t_start, committed)


def build(cfg, num_classes):
    """The model, its optimizer and schedule and the precision policy; bind()
    fits them to the job's ranks."""
    policy = step.policy(cfg.precision, distributed.has_gpu())
    tf.keras.mixed_precision.set_global_policy(policy)
    schedule = optim.Schedule(steps_per_epoch=1, peak=cfg.base_lr, warmup_epochs=0,
                              schedule="constant", epochs=1)  # until bind() fits it to the job
    opt = optim.make_optimizer(schedule, cfg.momentum, loss_scale=(
        cfg.initial_loss_scale if policy == "mixed_float16" else None))
    # Dropout masks seeded by (seed, rank, step, micro-batch): the same after a resume.
    seeds = step.DropoutSeeds(cfg.seed, 0, opt.iterations, cfg.accumulate_steps)
    model = build_alexnet(cfg.image_size, num_classes, cfg.dropout, dropout_seed=seeds)
    opt.build(model.trainable_variables)  # momentum slots exist before the broadcast
    return types.SimpleNamespace(model=model, opt=opt, schedule=schedule, policy=policy,
                                 seeds=seeds, train_step=None)


def bind(m, cfg, state, dist):
    """Fits the schedule (peak rate x ranks, steps per epoch) and the dropout
    seeds (by rank) to the job's ranks, and makes the step function for them
    (a new tf.function: the next step traces with these values)."""
    m.schedule.kwargs = dict(steps_per_epoch=state.steps_per_epoch,  # HVD: the rate x ranks
                             peak=cfg.base_lr * dist.size * cfg.accumulate_steps,
                             warmup_epochs=cfg.warmup_epochs, schedule=cfg.lr_schedule,
                             epochs=cfg.epochs, decay_epochs=tuple(cfg.lr_decay_epochs),
                             decay_factor=cfg.lr_decay_factor)
    m.seeds.set_rank(cfg.seed, dist.rank)
    m.train_step = step.make_train_step(m.model, m.opt, dist, cfg.weight_decay,
                                        cfg.accumulate_steps, m.seeds, cfg.xla)


def announce(cfg, data, state, dist, threads, policy, report, timeline):
    """The PARAMETER record, model.json for inference, and rank 0's opening lines."""
    report.parameters({**vars(cfg), "num_classes": data.num_classes,
                       "num_classes_from": data.classes_from or "default", "ranks": dist.size,
                       "global_batch": state.global_batch,
                       "steps_per_epoch": state.steps_per_epoch, "total_steps": state.total,
                       "train_examples": data.num_train, "rank_examples": data.rank_examples,
                       "validation_examples": data.num_val, "policy": policy,
                       "threads_per_rank": threads, "start_step": state.start_step,
                       "cpu_affinity": len(os.sched_getaffinity(0)),
                       "hosts": dist.hosts})
    if not dist.is_root:
        return
    inference.write_description(cfg.model_dir, inference.describe(  # what predict etc. need
        cfg.image_size, data.num_classes, data.classes))
    say, spe, batch = report.say, state.steps_per_epoch, state.global_batch
    if cfg.horovod_timeline:
        say(f"Horovod timeline: {timeline} (open in chrome://tracing or ui.perfetto.dev)")
    micro = f" x {cfg.accumulate_steps} micro-batches" if cfg.accumulate_steps > 1 else ""
    say(f"hvd_alexnet: {dist.size} ranks x batch {cfg.batch_size}{micro} = {batch}, {spe} "
        f"steps/epoch, {state.total} steps, {data.num_train} training images, "
        f"{data.num_classes} classes, {policy}, {threads} threads/rank")
    if not data.classes_from and not cfg.synthetic:
        say(f"note: {data.num_classes} classes is the default (ImageNet's): neither "
            f"--num_classes nor {cfg.data_dir}/metadata.json gives the count")
    say(f"hvd_alexnet: all {dist.size} ranks joined, on {len(set(dist.hosts))} host(s): "
        f"{distributed.describe_hosts(dist.hosts)}")
    if spe * batch < 0.95 * data.num_train and not cfg.synthetic:
        say(f"note: the ranks' shards are uneven ({min(data.rank_examples)} to "
            f"{max(data.rank_examples)} examples), so an epoch is {spe} steps of the smallest "
            f"share: {spe * batch} of {data.num_train} images, a fresh subset each epoch")


def pause(dist, ckpts, state, validate, due, hooks):
    """Rank 0 checkpoints and, if `due`, validates, while the other ranks wait
    in the heartbeat loop. Returns the validation's result (or None)."""
    if not dist.is_root:
        failure = dist.wait_for_root()  # HVD
        if failure:
            raise DataError(failure)
        return None
    dist.solo_begin()
    hooks.before_save()
    ckpts.save(state.step, state.examples_seen)
    dist.solo_tick(force=True)
    try:
        result = validate() if due else None
    except DataError as e:  # the waiting ranks exit with the same line
        dist.solo_end(failure=str(e))  # HVD
        raise
    dist.solo_end()  # HVD
    return result


def finish(cfg, dist, model, state, report, final, t_start, committed=None):
    """Checks that every rank holds the same weights; rank 0 logs the summary."""
    digest = distributed.weights_digest(model.variables)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gathered = dist.allgather_object((digest, peak_mb), "hvd_alexnet.digest")  # HVD
    digests = [d for d, _ in gathered]
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    report.say(f"weights digest {digest}, identical on all {dist.size} ranks")
    rate = state.speed.rate
    summary = {"train_images_per_sec": rate, "train_images_per_sec_per_rank": rate / dist.size,
               "time_to_train_sec": time.time() - t_start, "steps": state.step,
               "examples_seen": state.examples_seen,
               "epochs_completed": state.step / state.steps_per_epoch, "weights_digest": digest,
               "peak_rss_mb_per_rank": [round(m, 1) for _, m in gathered]}
    summary.update({k: v for k, v in final.items() if k in ("top1", "top5")})
    if cfg.skip_corrupt:
        summary["skipped_corrupt_records"] = state.skipped_all
    if committed is not None:
        summary["elastic_commits"] = committed.commits
    report.close(summary)
    report.say(f"total images/sec: {rate:.2f} ({rate / dist.size:.2f} per rank)")
    return summary if dist.is_root else {}


def main(argv, hooks=None):
    """Entry point of `python -m hvd_alexnet train`."""
    command.parse(config.FLAGS, argv, "train", config.__doc__)
    run(config.from_flags(), hooks=hooks)
