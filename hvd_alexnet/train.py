r"""The training run, top to bottom: join the job, build the model, agree on
the data, restore the newest checkpoint, then train stretch by stretch,
pausing at each epoch's end (and every --checkpoint_every_steps) to checkpoint
and validate. With --elastic (elastic.py) everything from the data on runs
again after each change of hosts, from the last commit instead of the disk.

    horovodrun -np 2 -H localhost:2 python -m hvd_alexnet train \
        --data_dir data/demo --model_dir runs/demo --image_size 128 --epochs 6

Lines that talk to other ranks go through `dist` (distributed.py) and are
marked `# HVD`. Rank 0 alone logs and checkpoints; the other ranks wait for it
in a heartbeat loop that Horovod's stall check never sees as stuck. Every rank
validates its share of the validation set. A watchdog bounds every wait, from
the first collective on; a signal at any moment after the start stops the run
with status 75 (signals.py); nothing non-finite is ever saved.
"""

import dataclasses
import os
import resource
import time
from typing import Callable

import tensorflow as tf

from hvd_alexnet import (
    checkpoint,
    command,
    config,
    distributed,
    optim,
    resume,
    rundir,
    signals,
    step,
)
from hvd_alexnet.data import prepare
from hvd_alexnet.errors import Preempted
from hvd_alexnet.loop import Hooks, Loop, RunState, diverged
from hvd_alexnet.model import build_alexnet
from hvd_alexnet.progress import Reporter, Throughput
from hvd_alexnet.validation import Validation

TIMELINE_FILE = "horovod_timeline.json"


@dataclasses.dataclass(frozen=True)
class Learner:
    """The model and what trains it; built once per process, before any
    collective. bind() fits the schedule and seeds to the job's ranks."""

    model: tf.keras.Model  # AlexNet (model.py)
    opt: tf.keras.optimizers.Optimizer  # SGD with momentum; in float16 a LossScaleOptimizer
    schedule: optim.Schedule  # the learning rate by step, its peak x the job's ranks
    policy: str  # Keras' dtype policy: float32, mixed_float16 or mixed_bfloat16
    seeds: step.DropoutSeeds  # dropout masks by (seed, rank, step, micro-batch)

    @property
    def variables(self):
        """Everything a rank must hold alike: weights and the optimizer's state."""
        return self.model.variables + optim.state_variables(self.opt)


@dataclasses.dataclass(frozen=True)
class Job:
    """This process's run, the same across an elastic job's changes of hosts."""

    cfg: config.Config  # the run's flags, validated
    dist: distributed.Dist  # this rank's place and the collectives (# HVD)
    threads: int  # CPU threads of this rank
    hooks: Hooks  # fault injection (tests); does nothing in a real run
    log: Callable  # where rank 0's console lines go
    started: float  # time.time() at the start: the summary's time to train
    timeline: str  # where --horovod_timeline writes
    learner: Learner
    stop: signals.StopRequest  # SIGTERM / SIGINT, from the process's start
    lock: rundir.Lock  # the model folder's, taken by rank 0
    speed: Throughput = dataclasses.field(default_factory=Throughput)  # every attempt's steps
    committed: object = None  # --elastic: the elastic.Committed state (else None)

    def say(self, text):
        """A console line, from rank 0 only (which rank is 0 can change)."""
        if self.dist.is_root:
            self.log(text)


def run(cfg, log=print, hooks=None):
    """Trains per `cfg` (a config.Config); returns rank 0's final metrics (or {})."""
    hooks, started, stop = hooks or Hooks(), time.time(), signals.install()
    # 1. Join the job: Horovod, one device per rank, the host's cores divided.
    if cfg.elastic:
        from hvd_alexnet import elastic  # HVD: imports Horovod's elastic runner
        elastic.check_launch()
    timeline = os.path.abspath(os.path.join(cfg.model_dir, TIMELINE_FILE))
    dist, threads = distributed.init(  # HVD
        cfg.fusion_threshold_mb, cfg.cycle_time_ms, cfg.fp16_allreduce, cfg.threads,
        timeline if cfg.horovod_timeline else None, cfg.stall_timeout_sec, hooks.heartbeat_seconds,
        elastic=cfg.elastic, join=False, cpu=cfg.cpu, bind_cpus=cfg.bind_cpus)  # train() joins
    dist.watchdog.start_once()  # a deadline on every wait from here on, start-up's too
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.seed)
    # 2. The model and its optimizer; no collective yet (an elastic job's first is
    # the committed state's sync, which a rank that joins later runs first).
    learner = build(cfg, prepare.class_count(cfg)[0])
    job = Job(cfg, dist, threads, hooks, log, started, timeline, learner, stop,
              rundir.Lock(cfg.model_dir, log),
              committed=elastic.Committed(learner.variables) if cfg.elastic else None)
    try:
        if not cfg.elastic:
            return train(job)
        return elastic.run(lambda committed: train(job), job.committed,
                           lambda: dist.watchdog.beat("re-forming the job after a change of "
                                                      "hosts"))
    finally:
        job.lock.release()  # on the rank that holds it


def train(job):
    """The run on the ranks there are; an elastic job calls it again after each
    change of membership, with the variables as last committed."""
    cfg, dist, learner = job.cfg, job.dist, job.learner
    dist.watchdog.beat("joining the job")
    dist.join()  # HVD: every rank's place and host
    # 3. Rank 0 takes the model folder; all agree on the data, and so on the
    # steps: every rank takes as many.
    known = dist.alone(lambda: resume.claim_folder(job), "taking the model folder")  # HVD
    dist.watchdog.beat("checking the data (every rank its shards)")
    data = prepare.prepare_data(cfg, dist.rank, dist.size, lambda mine: dist.allgather_object(
        mine, "hvd_alexnet.preflight"), known or [])  # HVD
    state = RunState(*prepare.plan_steps(cfg, data, dist.size), speed=job.speed)
    train_step = bind(learner, cfg, state, dist)
    ckpts = checkpoint.Checkpoints(cfg.model_dir, learner.model, learner.opt,
                                   cfg.keep_checkpoints, job.say)
    resume.start_at(job, ckpts, state, data)  # 4. from a checkpoint, a commit, or step 0
    with Reporter(cfg.model_dir, dist.is_root, job.say, state.total, state.steps_per_epoch,
                  state.global_batch, state.start_step + 1,
                  on_error=lambda what: job.stop.ask(what)) as report:
        report.opening(cfg, data, state, dist, job.threads, learner.policy,
                       job.timeline if cfg.horovod_timeline else None)
        if job.committed is not None and not job.committed.fresh:  # a re-forming
            job.committed.check_and_announce(state, dist, report, learner.model.variables)
        loop = Loop(cfg, dist, train_step, learner.opt, learner.schedule, data, report,
                    ckpts, job.hooks, learner.model.trainable_variables, job.committed,
                    job.stop)
        loop.commit(state)
        validation = Validation(learner.model, cfg, data, job.threads, dist, report, job.hooks)
        # 5. Train to each pause, from one input pipeline; there rank 0 checkpoints,
        # then every rank validates its share (when due).
        feed = prepare.feed(cfg, data, state, dist.rank, job.threads, dist.device)
        try:
            final = train_to_end(job, loop, ckpts, state, validation, feed)
        finally:
            feed.close()
        dist.watchdog.stop()
        # 6. Finish: the ranks agree on the weights; rank 0 writes the summary.
        return finish(job, state, report, final)


def train_to_end(job, loop, ckpts, state, validation, feed):
    """Trains stretch by stretch from `feed`; at each pause rank 0 checkpoints
    while the others wait, then all validate if it is due. Returns the last
    validation's result."""
    cfg, dist, final = loop.cfg, loop.dist, {}
    while state.step < state.total:
        epoch, steps = state.epoch, state.stretch(cfg.checkpoint_every_steps)
        stopping = loop.train_stretch(feed, steps, state)
        if cfg.skip_corrupt:
            state.skipped_all = dist.sum(state.skipped, "hvd_alexnet.skipped")  # HVD
            loop.report.log([epoch, state.step], {"skipped_corrupt_records": state.skipped_all})
        state.checkpoint_seconds = pause(job, ckpts, state)
        if not stopping and validation.due(state, epoch):  # on every rank
            final = validation.run(epoch, state.step)
        if stopping:
            loop.stop.settle()
            loop.report.log([epoch, state.step], {"preempted": True})
            why = f" ({loop.stop.reason})" if loop.stop.reason else ""
            raise Preempted(f"stopped at step {state.step} on request{why}; the checkpoint of "
                            f"this step is in {ckpts.directory}: {rundir.how_to_resume()}")
        loop.commit(state)
    return final


def build(cfg, num_classes):
    """The model, its optimizer and schedule and the precision policy; bind()
    fits them to the job's ranks."""
    policy = step.policy(cfg.precision, distributed.has_gpu())
    tf.keras.mixed_precision.set_global_policy(policy)
    schedule = optim.Schedule(steps_per_epoch=1, peak=cfg.base_lr, warmup_epochs=0,
                              schedule="constant", epochs=1)  # until bind() fits it to the job
    # A dynamic loss scale in float16, and for float16 gradient sums of float32
    # training too: unscaled, gradients below 6e-8 would flush to 0 in the sum.
    scaled = policy == "mixed_float16" or cfg.fp16_allreduce
    opt = optim.make_optimizer(schedule, cfg.momentum, loss_scale=(
        cfg.initial_loss_scale if scaled else None), xla=cfg.xla)
    # Dropout masks seeded by (seed, rank, step, micro-batch): the same after a resume.
    seeds = step.DropoutSeeds(cfg.seed, 0, opt.iterations, cfg.accumulate_steps)
    model = build_alexnet(cfg.image_size, num_classes, cfg.dropout, dropout_seed=seeds)
    opt.build(model.trainable_variables)  # momentum slots exist before the broadcast
    return Learner(model, opt, schedule, policy, seeds)


def bind(learner, cfg, state, dist):
    """Fits the schedule (peak rate x ranks, steps per epoch) and the dropout
    seeds (by rank) to the job's ranks; returns the step function for them (a
    new tf.function: the next step traces with these values)."""
    learner.schedule.kwargs = dict(  # HVD: the rate x ranks
        steps_per_epoch=state.steps_per_epoch, peak=cfg.base_lr * dist.size * cfg.accumulate_steps,
        warmup_epochs=cfg.warmup_epochs, schedule=cfg.lr_schedule, epochs=cfg.epochs,
        decay_epochs=tuple(cfg.lr_decay_epochs), decay_factor=cfg.lr_decay_factor)
    learner.seeds.set_rank(cfg.seed, dist.rank)
    return step.make_train_step(learner.model, learner.opt, dist, cfg.weight_decay,
                                cfg.accumulate_steps, learner.seeds, cfg.xla)


def pause(job, ckpts, state):
    """Every rank checks that the weights are finite (a divergence since the last
    read step is never saved), then rank 0 checkpoints while the other ranks
    wait in the heartbeat loop; returns its seconds on rank 0 (None on the
    others). A failed save (a full disk) stops every rank with its line."""
    dist, t0 = job.dist, time.perf_counter()
    bad = dist.sum(0 if checkpoint.all_finite(job.learner.variables) else 1,  # HVD
                   "hvd_alexnet.finite")
    if bad:
        raise diverged(dist, ckpts, f"the weights are NaN or infinite at step {state.step}")

    def save():
        job.hooks.before_save()
        job.lock.check()  # a job that lost the folder (paused past the watch) writes no more
        ckpts.save(state.step, state.examples_seen)

    dist.alone(save, "checkpointing")  # HVD: a thread of rank 0 answers the others meanwhile
    return time.perf_counter() - t0 if dist.is_root else None


def finish(job, state, report, final):
    """Checks that every rank holds the same weights; rank 0 logs the summary."""
    dist = job.dist
    digest = distributed.weights_digest(job.learner.model.variables)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    gathered = dist.allgather_object((digest, peak_mb), "hvd_alexnet.digest")  # HVD
    digests = [d for d, _ in gathered]
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks ended with different weights: {digests}")
    # The last checkpoint is written and every rank is past its last step: a
    # signal from here on changes nothing (while Python exits it would otherwise
    # end the rank with 143, a failure, after a finished run).
    job.stop.settle()
    rate = state.speed.rate
    summary = {"train_images_per_sec": rate, "train_images_per_sec_per_rank": rate / dist.size,
               "time_to_train_sec": time.time() - job.started, "steps": state.step,
               "examples_seen": state.examples_seen,
               "epochs_completed": state.step / state.steps_per_epoch, "weights_digest": digest,
               "peak_rss_mb_per_rank": [round(mb, 1) for _, mb in gathered]}
    summary.update({k: v for k, v in final.items() if k in ("top1", "top5")})
    if job.cfg.skip_corrupt:
        summary["skipped_corrupt_records"] = state.skipped_all
    if job.committed is not None:
        summary["elastic_commits"] = job.committed.commits
    report.summary(summary, dist.size)
    return summary if dist.is_root else {}


def main(argv, hooks=None):
    """Entry point of `python -m hvd_alexnet train`."""
    command.parse(config.FLAGS, argv, "train", config.__doc__)
    run(config.from_flags(), hooks=hooks)
