"""Checkpoints of a run: MODEL_DIR/checkpoints/ckpt-STEP, written by rank 0.

A checkpoint holds the weights, the optimizer (its step counter, momentum and
loss scale) and the examples seen. Progress is kept in examples, not steps, so
a run resumes at the same point on another number of ranks (another global
batch). Knows nothing of Horovod: the trainer broadcasts what rank 0 restored.

What the disk can do to them, and what a restore does about it:
- the `checkpoint` index garbled, empty or missing: the checkpoints are found
  from their own files (ckpt-N.index, ckpt-N.data-*), and the index written again;
- a checkpoint that does not restore (a flipped bit, a truncated data file, a
  missing .index file), tried 3 times over 4 s (a read error may pass): named
  in one line, moved to checkpoints/set_aside/, and the next newest tried.
  set_aside/ keeps the newest SET_ASIDE_KEEP; its size is said at each start;
- none restores: CheckpointError, and nothing is moved. A folder that holds
  checkpoint files never starts a run from step 0;
- a checkpoint of another model (another --image_size, say): UsageError (the
  run's record, rundir.py, names the flag before it comes to that);
- a save that fails (a full disk): its partial files are removed, the previous
  checkpoint stays the newest, and CheckpointError says how much space is needed.

Which checkpoint is the newest: the one holding the most training (examples
seen, read from its files), never the number in its name. A checkpoint is
numbered by its step, and after a larger global batch (more ranks, an elastic
grow, a larger --batch_size) the same training is fewer steps: a new save would
sit below older ones that hold less. So each save sets aside (into set_aside/,
never deleted) the checkpoints numbered above it, which were saved before it and
hold less: in the folder, the numbers' order is the training's order.
"""

import errno
import os
import re
import shutil
import time

import tensorflow as tf

from hvd_alexnet import config, files, rundir
from hvd_alexnet.errors import CheckpointError, UsageError, first_line

SUBDIR = "checkpoints"
INDEX = "checkpoint"  # TensorFlow's index of a folder's checkpoints (CheckpointManager's)
SET_ASIDE = "set_aside"  # checkpoints that did not restore, kept for a look
SET_ASIDE_KEEP = 5  # set-aside checkpoints kept (the newest); older ones are deleted
RESTORE_TRIES = (0.0, 1.0, 3.0)  # seconds before each try: a transient read error (EIO, an
                                 # NFS hiccup) is tried again before a checkpoint is set aside
_FILE = re.compile(r"^ckpt-(\d+)\.(index|data-\d{5}-of-\d{5})$")
_INDEX_LINE = re.compile(
    r'^(model_checkpoint_path|all_model_checkpoint_paths): "(.*)"$|'
    r'^(all_model_checkpoint_timestamps|last_preserved_timestamp): [-+.\deE]+$')
# What `Checkpoint.restore` raises when the checkpoint is of another model or
# optimizer, not a damaged one: a variable of another shape, an object missing.
_INCOMPATIBLE = ("incompatible tensor with shape", "Unresolved object in checkpoint",
                 "Some objects had attributes which were not restored")


def resume_step(examples_seen, global_batch):
    """The step at which a run that has seen `examples_seen` examples goes on
    with a global batch of `global_batch`."""
    return examples_seen // global_batch


def on_disk(directory):
    """{step: [file names]} of the checkpoint files in `directory`."""
    found = {}
    for name in (os.listdir(directory) if os.path.isdir(directory) else ()):
        match = _FILE.match(name)
        if match:
            found.setdefault(int(match.group(1)), []).append(name)
    return found


def read_index(directory):
    """(steps the index lists, oldest first, newest last; the problem with the
    index or None). A missing index is a problem only beside checkpoint files."""
    path = os.path.join(directory, INDEX)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return [], (f"{path} is missing" if on_disk(directory) else None)
    except OSError as e:
        return [], f"{path} cannot be read ({e.strerror})"
    steps, latest = [], None
    for line in filter(None, (line.strip() for line in text.splitlines())):
        match = _INDEX_LINE.match(line)
        name = match and match.group(2)
        step = re.fullmatch(r"ckpt-(\d+)", os.path.basename(name)) if name else None
        if not match or (name is not None and not step):
            return [], f"{path} is garbled (at {line[:60]!r})"
        if match.group(1) == "model_checkpoint_path":
            latest = int(step.group(1))
        elif step:
            steps.append(int(step.group(1)))
    if latest is None:
        return [], f"{path} is {'empty' if not text.strip() else 'garbled'}"
    return [s for s in steps if s != latest] + [latest], None


def write_index(directory, steps):
    """TensorFlow's index naming `steps` (the last one the newest), written whole.
    Each gets its .index file's time: CheckpointManager deletes beyond
    --keep_checkpoints only the checkpoints whose time is after the index's
    last_preserved_timestamp (0 here), and forgets the others."""
    stamp = lambda s: os.path.getmtime(os.path.join(directory, f"ckpt-{s}.index"))
    lines = [f'model_checkpoint_path: "ckpt-{steps[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{s}"' for s in steps]
    lines += [f"all_model_checkpoint_timestamps: {stamp(s):.6f}" for s in steps]
    lines.append("last_preserved_timestamp: 0")
    files.write_atomic(os.path.join(directory, INDEX), "\n".join(lines) + "\n")


SEEN_KEY = "examples_seen/.ATTRIBUTES/VARIABLE_VALUE"  # Checkpoints.seen in the files


def examples_seen(prefix):
    """The examples seen that checkpoint `prefix` holds, read from its files
    without restoring it; None if they cannot be read."""
    try:
        return int(tf.train.load_checkpoint(prefix).get_tensor(SEEN_KEY))
    except Exception:  # noqa: BLE001 - a damaged file raises many kinds
        return None


def by_training(directory, steps):
    """[(step, examples seen or None)] of `steps` (checkpoint numbers in
    `directory`), the most training first: those whose examples seen cannot be
    read come first, newest number first, so that a restore tries them (and sets
    them aside) as it always did; then the others by examples seen, then number."""
    seen = [(s, examples_seen(os.path.join(directory, f"ckpt-{s}"))) for s in steps]
    return sorted(seen, key=lambda p: (p[1] is None, p[1] or 0, p[0]), reverse=True)


def newest(model_dir):
    """The prefix of the checkpoint of a run (MODEL_DIR/checkpoints/ckpt-N) that
    holds the most training and has its .index file, as a resume would choose
    it; None if there is none. For evaluate, predict, export and report, which
    read and never repair."""
    directory = os.path.join(model_dir, SUBDIR)
    complete = [s for s, names in on_disk(directory).items() if f"ckpt-{s}.index" in names]
    readable = [s for s, seen in by_training(directory, complete) if seen is not None]
    usable = readable or sorted(complete, reverse=True)
    return os.path.join(directory, f"ckpt-{usable[0]}") if usable else None


def has_checkpoints(model_dir):
    """Whether the run's folder holds any checkpoint file or an index."""
    directory = os.path.join(model_dir, SUBDIR)
    return bool(on_disk(directory)) or os.path.exists(os.path.join(directory, INDEX))


def all_finite(variables):
    """Whether every floating-point value of `variables` is finite (weights and
    optimizer slots: a NaN anywhere would be saved and resumed forever)."""
    checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if v.dtype.is_floating]
    return bool(tf.reduce_all(checks)) if checks else True


class Checkpoints:
    """Rank 0's checkpoints of a run; other ranks only name the folder."""

    def __init__(self, model_dir, model, opt, keep, say=print):
        self.seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="examples_seen")
        self.model, self.opt, self.say, self.keep = model, opt, say, keep
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=opt, examples_seen=self.seen)
        self.model_dir, self.directory = model_dir, os.path.join(model_dir, SUBDIR)
        self._manager = None  # made when first needed, once the index can be trusted
        self.latest = None  # step of the newest checkpoint known good (restored or saved)

    @property
    def manager(self):
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self.ckpt, self.directory,
                                                       max_to_keep=self.keep)
        return self._manager

    def remove_torn_saves(self):
        """A save that crashed leaves TensorFlow's `ckpt-N_temp/` behind, while the
        `checkpoint` index still names the previous, complete checkpoint: delete it."""
        for torn in sorted(tf.io.gfile.glob(os.path.join(self.directory, "ckpt-*_temp"))):
            self.say(f"removing {torn}: an incomplete save (the job died while writing it)")
            tf.io.gfile.rmtree(torn)

    def restore(self, global_batch, steps_per_epoch, ranks):
        """Restores the newest checkpoint that restores, if any, and sets the
        optimizer's step to where this global batch goes on (the schedule follows
        it). Returns the step to start at (0 for a new run)."""
        self.remove_torn_saves()
        self._bound_set_aside()
        found, failed = self._candidates(), []
        for step, names in found:
            problem = self._try_again(step, names)
            if problem is None:
                break
            failed.append((step, names, problem))
        else:
            if failed:
                raise CheckpointError(
                    f"no checkpoint in {self.directory} restores: " + "; ".join(
                        f"ckpt-{s}: {p}" for s, _, p in failed) + ". Nothing was moved or "
                    "deleted: put back a good copy of one, or train afresh in another "
                    "--model_dir")
            return 0
        for bad, names, problem in failed:
            self._set_aside(bad, names, problem)
        self._index_for(step)
        self.latest = step
        saved_step, seen = int(self.opt.iterations), int(self.seen)
        resume = resume_step(seen, global_batch)
        if resume != saved_step:  # another global batch than the checkpoint's
            self.say(f"checkpoint taken at step {saved_step} with a global batch of "
                     f"{seen // max(saved_step, 1)}; on {ranks} ranks (global batch "
                     f"{global_batch}) that is step {resume}, epoch {resume // steps_per_epoch}")
            self.opt.iterations.assign(resume)
        scale = (f", loss scale {float(self.opt.loss_scale):g}"
                 if isinstance(self.opt, tf.keras.mixed_precision.LossScaleOptimizer) else "")
        newer = (f" (not from the newer {', '.join(f'ckpt-{s}' for s, _, _ in failed)}: "
                 f"they did not restore, see above)" if failed else "")
        self.say(f"resumed from {os.path.join(self.directory, f'ckpt-{step}')} at step "
                 f"{resume}{scale}{newer}")
        return resume

    def _candidates(self):
        """[(step, its files)], newest first: every checkpoint the index lists or
        the folder holds a file of. An index that cannot be read is said so."""
        listed, problem = read_index(self.directory)
        present = on_disk(self.directory)
        self._index_bad, self._listed = bool(problem), listed
        if problem:
            self.say(f"{problem}: the checkpoints are found from their files "
                     f"({len(present)} in {self.directory})")
        return [(s, sorted(present.get(s, [])))
                for s, _ in by_training(self.directory, sorted(set(listed) | set(present)))]

    def _try_again(self, step, names):
        """_try, again after RESTORE_TRIES' pauses while it fails: None, or the
        last try's problem."""
        problem = None
        for n, pause in enumerate(RESTORE_TRIES):
            if n:
                self.say(f"ckpt-{step} did not restore ({problem}): trying again in "
                         f"{pause:g} s (try {n + 1} of {len(RESTORE_TRIES)})")
            time.sleep(pause)
            problem = self._try(step, names)
            if problem is None or not names:
                return problem
        return problem

    def _bound_set_aside(self):
        """Keeps the newest SET_ASIDE_KEEP set-aside checkpoints, and says what
        set_aside/ holds."""
        folder = os.path.join(self.directory, SET_ASIDE)
        kept = sorted(os.listdir(folder), key=lambda n: os.path.getmtime(
            os.path.join(folder, n))) if os.path.isdir(folder) else []
        for old in kept[:-SET_ASIDE_KEEP]:
            shutil.rmtree(os.path.join(folder, old), ignore_errors=True)
            self.say(f"deleting {os.path.join(folder, old)}: set aside longer ago than the "
                     f"newest {SET_ASIDE_KEEP}")
        kept = kept[-SET_ASIDE_KEEP:]
        if kept:
            size = sum(os.path.getsize(os.path.join(root, f)) for name in kept
                       for root, _, names in os.walk(os.path.join(folder, name)) for f in names)
            self.say(f"{folder} holds {len(kept)} set-aside checkpoint(s), {size >> 20} MiB "
                     f"(the newest {SET_ASIDE_KEEP} are kept)")

    def _try(self, step, names):
        """Restores ckpt-`step`; returns None, or what is wrong with it."""
        if not names:
            return "the index names it, but none of its files exists"
        if f"ckpt-{step}.index" not in names:
            return "its .index file is missing"
        try:
            self.ckpt.restore(os.path.join(self.directory, f"ckpt-{step}")
                              ).assert_existing_objects_matched()
        except Exception as e:  # noqa: BLE001 - TensorFlow raises many kinds for a bad file
            if any(sign in str(e) for sign in _INCOMPATIBLE):
                raise UsageError(
                    f"{self.directory}/ckpt-{step} is of another model or optimizer "
                    f"({first_line(e)}): resume with the flags the run was started with, "
                    f"or train afresh in another --model_dir") from None
            return f"{type(e).__name__}: {first_line(e)}"
        return None

    def _set_aside(self, step, names, problem, why="does not restore"):
        """Moves a checkpoint out of the way (one that did not restore, or one
        that a save supersedes), never deleting it."""
        if not names:
            self.say(f"checkpoint ckpt-{step} {why}: {problem}")
            return
        to = os.path.join(self.directory, SET_ASIDE,
                          f"ckpt-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(to, exist_ok=True)
        for name in names:
            shutil.move(os.path.join(self.directory, name), os.path.join(to, name))
        self.say(f"checkpoint ckpt-{step} {why} ({problem}): moved to {to}")

    def _set_aside_superseded(self, step, seen):
        """After the save of `step`: the checkpoints numbered above it were saved
        before it, at a smaller global batch, and hold less training; set aside,
        so that the numbers' order stays the training's order."""
        above = {s: names for s, names in on_disk(self.directory).items() if s > step}
        for s, names in sorted(above.items()):
            held = examples_seen(os.path.join(self.directory, f"ckpt-{s}"))
            self._set_aside(s, names, f"{'?' if held is None else held} examples, against "
                            f"{seen} in ckpt-{step}, saved after it at a larger "
                            f"global batch", why="is superseded")
        if above:
            self._bound_set_aside()
            write_index(self.directory, sorted(s for s, names in on_disk(self.directory).items()
                                               if f"ckpt-{s}.index" in names))
            self._manager = None

    def _index_for(self, step):
        """Writes the index again when it could not be read, or named checkpoints
        that were set aside or are gone, so that TensorFlow's tools and the
        manager's clean-up of old checkpoints see what is there."""
        kept = sorted(s for s, names in on_disk(self.directory).items()
                      if s <= step and f"ckpt-{s}.index" in names)
        if self._index_bad or self._listed != kept:
            write_index(self.directory, kept)
            self._manager = None

    def save(self, step, examples_seen):
        """Writes ckpt-`step`. A failure (a full disk) removes what it wrote and
        raises CheckpointError; the previous checkpoint stays the newest."""
        self.seen.assign(examples_seen)
        try:
            self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as e:
            self._remove_failed_save(step)
            raise CheckpointError(self._save_failed(step, e)) from None
        self.latest = step
        self._set_aside_superseded(step, examples_seen)

    def _remove_failed_save(self, step):
        listed, _ = read_index(self.directory)
        for torn in tf.io.gfile.glob(os.path.join(self.directory, f"ckpt-{step}_temp")):
            tf.io.gfile.rmtree(torn)
        if step not in listed:  # merged files of the failed save, if any
            for name in on_disk(self.directory).get(step, []):
                os.remove(os.path.join(self.directory, name))

    def _save_failed(self, step, error):
        full = (isinstance(error, tf.errors.ResourceExhaustedError) or
                getattr(error, "errno", None) == errno.ENOSPC or
                "No space left" in str(error))
        kept = (f"the previous checkpoint, ckpt-{self.latest}, is whole" if self.latest is not None
                else "there is no earlier checkpoint")
        if not full:
            return (f"{self.directory}: could not write the checkpoint of step {step} "
                    f"({type(error).__name__}: {first_line(error)}); {kept}")
        need = self.size(self.latest) or config.checkpoint_bytes(self.model.count_params())
        free = shutil.disk_usage(self.directory).free
        return (f"{self.directory}: the disk is full ({free >> 20} MiB free; a checkpoint "
                f"needs about {need >> 20} MiB): the save of step {step} was removed and "
                f"{kept}; free some space, then {rundir.how_to_resume()}")

    def size(self, step):
        """Bytes of checkpoint `step`'s files (0 if unknown)."""
        if step is None:
            return 0
        return sum(os.path.getsize(os.path.join(self.directory, name))
                   for name in on_disk(self.directory).get(step, []))
