"""Where a run starts. Rank 0 takes the model folder (its lock), compares the
run's record with these flags, restores the newest checkpoint that restores,
and writes the record and the model's description, while the other ranks wait
(Dist.alone: what fails on rank 0 stops every rank with the same line); then
every rank takes rank 0's weights. An elastic job that has committed starts
from its commit instead. A stop asked during all this ends the run with 75
before its first step, the folder as it was.
"""

import math

from hvd_alexnet import checkpoint, config, inference, optim, rundir
from hvd_alexnet.errors import Preempted, UsageError


def folder_errors(activity):
    """Rank 0's start-up work in the model folder, with an OS error it raises (a
    file that cannot be read, a folder where a file should be, a permission)
    turned into one line naming the file (exit 2, on every rank: Dist.alone)."""
    def wrap(work):
        def run(job, *args):
            try:
                return work(job, *args)
            except OSError as e:
                where = f"{e.filename}: " if e.filename else ""
                raise UsageError(f"--model_dir {job.cfg.model_dir}: {where}"
                                 f"{e.strerror or e} while {activity}; fix or remove it, then "
                                 f"run the same command again") from None
        return run
    return wrap


@folder_errors("taking the model folder")
def claim_folder(job):
    """Rank 0, before anything in the folder is read or written: takes its lock
    (UsageError if another job holds it); returns the classes of the model a
    resume would continue ([] for a new run)."""
    job.lock.acquire()
    return inference.trained_classes(job.cfg.model_dir)


def record_of(job, data, state):
    """The run's settings at this start (rundir.Record)."""
    cfg, learner = job.cfg, job.learner
    return rundir.Record.of(
        image_size=cfg.image_size, num_classes=data.num_classes,
        loss_scale=learner.policy == "mixed_float16" or cfg.fp16_allreduce,
        precision=learner.policy, ranks=job.dist.size, global_batch=state.global_batch,
        data_dir=cfg.data_dir, train_examples=data.num_train,
        steps_per_epoch=state.steps_per_epoch, total_steps=state.total, epochs=cfg.epochs,
        max_steps=cfg.max_steps, base_lr=cfg.base_lr, lr_schedule=cfg.lr_schedule,
        warmup_epochs=cfg.warmup_epochs, lr_decay_epochs=cfg.lr_decay_epochs,
        lr_decay_factor=cfg.lr_decay_factor, schedule=learner.schedule.kwargs)


def start_at(job, ckpts, state, data):
    """Where to start: rank 0's newest checkpoint that restores (all ranks start
    identical), or in an elastic job that has committed, the commit (synced
    from rank 0)."""
    dist, learner, committed = job.dist, job.learner, job.committed
    if committed is None or committed.fresh:
        record = record_of(job, data, state)
        dist.alone(lambda: from_disk(job, ckpts, state, data, record),  # HVD
                   "restoring the newest checkpoint")
        dist.broadcast_variables(learner.variables)  # HVD
        state.resume_at(int(learner.opt.iterations))
    else:
        state.resume_at(checkpoint.resume_step(committed.examples_seen, state.global_batch),
                        committed.examples_seen)
        learner.opt.iterations.assign(state.step)
    if dist.sum(int(job.stop.requested), "hvd_alexnet.stop_at_start"):  # HVD
        job.stop.settle()
        raise Preempted(f"stopped on request before the first step; {job.cfg.model_dir} is as "
                        f"it was: {rundir.how_to_resume()}")


@folder_errors("restoring the run")
def from_disk(job, ckpts, state, data, record):
    """Rank 0: checks the disk and the run's record, restores, says what changed,
    and writes the record and the description of the model."""
    cfg, learner = job.cfg, job.learner
    job.hooks.at_start(lambda: job.stop.requested)
    config.check_disk(cfg.model_dir, config.checkpoint_bytes(learner.model.count_params()))
    old = rundir.Record.read(cfg.model_dir) if checkpoint.has_checkpoints(cfg.model_dir) else None
    refusal = old and old.refusal(record, cfg.model_dir)
    if refusal:
        raise UsageError(refusal)
    step = ckpts.restore(state.global_batch, state.steps_per_epoch, job.dist.size)
    if old and step:
        _after_its_end(job, old, step, int(ckpts.seen), state)
        _compare(job, old, record, step, int(ckpts.seen), state)
    record.write(cfg.model_dir)
    # what predict, export and evaluate need to rebuild the model
    inference.write_description(cfg.model_dir, inference.describe(
        cfg.image_size, data.num_classes, data.classes))


def _after_its_end(job, old, step, seen, state):
    """One line when the checkpoint is the end of the run it came from (a smoke
    test's, a finished job's, another launcher's): this start either trains
    that run on to its own end, or has nothing to train."""
    if not old.finished(seen):
        return
    done = f"the run in {job.cfg.model_dir} finished at step {step}"
    if step >= state.total:
        job.say(f"{done}, at or past this start's {state.total} steps: nothing to train; "
                f"raise --epochs or --max_steps to train it further, or train afresh in "
                f"another --model_dir")
    else:
        job.say(f"{done}; this start trains it on to step {state.total}: to train afresh "
                f"instead, use another --model_dir")


def _compare(job, old, new, step, seen, state):
    """A resume under other settings: refused if the checkpoint lies past this
    run's end while the run it came from had not finished; otherwise one line
    saying what changed, and what it does to the schedule."""
    changes = old.changes(new)
    if not changes:
        return
    if step % state.steps_per_epoch and old.values.get("ranks") != new.values.get("ranks"):
        job.say(f"the checkpoint is inside epoch {step // state.steps_per_epoch + 1}, taken on "
                f"{old.values.get('ranks')} rank(s): on {new.values.get('ranks')} each rank "
                f"reads other shards, so the rest of that epoch (from each rank's record "
                f"{step % state.steps_per_epoch * state.step_batch}) may repeat some records "
                f"and miss others; from the next epoch on, every record once per epoch")
    if step >= state.total and old.finished(seen):
        return  # _after_its_end said it: nothing to train
    if step >= state.total:
        raise UsageError(
            f"the newest checkpoint has seen {seen} examples: step {step}, past the "
            f"{state.total} steps of this run with {changes}. Resume with the settings the "
            f"run was started with (raise --epochs or --max_steps, or use its data), or "
            f"train afresh in another --model_dir")
    was = optim.learning_rate(seen // old.values["global_batch"], **old.values["schedule"])
    now = float(job.learner.schedule(step))
    epochs = math.ceil(state.total / state.steps_per_epoch)
    job.say(f"resuming with other settings than the run's last start: {changes}; it goes on "
            f"at step {step} of {state.total} (epoch {step // state.steps_per_epoch + 1} of "
            f"{epochs}), at a learning rate of {now:.3g} (the last start's settings give "
            f"{float(was):.3g} there)")
