"""The data a run trains on, agreed by all ranks before any heavy work.

Horovod-free: the caller passes `gather(obj)`, which returns every rank's
`obj` by rank (the trainer passes Horovod's all-gather).
"""

import dataclasses
import os

from hvd_alexnet.data import labels, reader, schema, survey
from hvd_alexnet.errors import DataError

SYNTHETIC_EPOCH = 1281167  # examples per synthetic "epoch": ImageNet's training set
DEFAULT_NUM_CLASSES = 1000  # ImageNet's, when neither --num_classes nor metadata.json says


@dataclasses.dataclass(frozen=True)
class Data:
    """What the ranks agreed on about the data; the same on every rank but
    `train_files`. Synthetic data has no files and ImageNet's epoch."""

    num_classes: int  # logits of the model
    classes_from: str = None  # where num_classes comes from (None: ImageNet's default)
    train_files: tuple = ()  # this rank's training shards (files[rank::size])
    val_files: tuple = ()  # every validation shard (rank 0 validates)
    rank_examples: tuple = ()  # training records of each rank's shards, by rank
    num_train: int = SYNTHETIC_EPOCH  # training records of all ranks (an epoch's size)
    num_val: int = 0  # validation records (counted on rank 0 only, with --eval)
    classes: tuple = ()  # class names (synsets), by label, as far as the data says


def prepare_data(cfg, rank, size, gather, known_classes=()):
    """Shard lists, counts and classes, the same on every rank.

    Each rank surveys its own training shards and rank 0 the validation shards
    (survey.py: the record count and record 0's label and synset of each, from
    the survey file where it holds, else from the records' headers, which finds
    a truncated shard, and record 0), and rank 0 compares the classes with
    `known_classes` (those of the model it resumes) and remembers what was
    counted. Any rank's problem is gathered and raised on every rank, so all of
    them exit together with the same message.
    """
    num_classes, classes_from = class_count(cfg)
    if cfg.synthetic:
        return Data(num_classes, classes_from)
    problem, mine, seen, train_files, val_files, num_val = "", 0, [], [], [], 0
    counted = {}
    try:
        files = schema.list_shards(cfg.data_dir, schema.TRAIN)
        if not files:
            raise DataError(schema.no_shards(cfg.data_dir, schema.TRAIN))
        train_files = reader.rank_shards(files, rank, size)
        val_files = schema.list_shards(cfg.data_dir, schema.VALIDATION)
        if cfg.eval and not val_files:
            raise DataError(schema.no_shards(cfg.data_dir, schema.VALIDATION,
                                             "; add them or pass --noeval"))
        checked = [*train_files, *(val_files if rank == 0 and cfg.eval else [])]
        found, counted = survey.survey(cfg.data_dir, checked)
        mine = sum(found[path][0] for path in train_files)
        if rank == 0 and cfg.eval:
            num_val = sum(found[path][0] for path in val_files)
            if not num_val:
                raise DataError(f"{cfg.data_dir}: the validation shards hold no records; add "
                                f"some or pass --noeval")
        seen = [(path, 0, *found[path][1]) for path in checked if found[path][1]]  # record 0s
        problem = labels.disagreement(known_classes, seen, f"the model in {cfg.model_dir}")
    except DataError as e:
        problem = str(e)
    gathered = gather((problem or "", mine, seen, counted))
    problems = sorted(set(p for p, _, _, _ in gathered if p))
    if problems:
        raise DataError("; ".join(problems))
    if rank == 0:
        survey.remember(cfg.data_dir, {k: v for _, _, _, c in gathered for k, v in c.items()})
    seen = [e for _, _, entries, _ in gathered for e in entries]
    rank_examples = tuple(n for _, n, _, _ in gathered)
    meta = schema.read_metadata(cfg.data_dir) or {}
    named = labels.from_files(cfg.synsets_file, cfg.names_file, cfg.first_label)
    problem = (labels.disagreement(named or [], seen, cfg.synsets_file or "") or
               labels.range_problem(seen, cfg.first_label, num_classes))
    if named and len(named) != num_classes:
        problem = (f"{cfg.synsets_file}: {len(named)} synsets, but the model has {num_classes} "
                   f"classes ({classes_from or 'the default'}): give the list of this data set")
    if problem:  # the same data on every rank: the same verdict
        raise DataError(problem)
    classes = named or meta.get("classes") or labels.classes(seen)
    if cfg.names_file and not named:
        classes = labels.renamed(classes, labels.read_names(cfg.names_file))
    return Data(num_classes, classes_from, tuple(train_files), tuple(val_files), rank_examples,
                sum(rank_examples), num_val, tuple(classes))


def class_count(cfg):
    """(classes, where the count comes from: "--num_classes", the data's
    metadata.json, or None for ImageNet's default). No collective: the model is
    built from it before the ranks agree on the data."""
    if cfg.num_classes:
        return cfg.num_classes, "--num_classes"
    meta = {} if cfg.synthetic else schema.read_metadata(cfg.data_dir) or {}
    if "num_classes" in meta:
        return int(meta["num_classes"]), os.path.join(cfg.data_dir, schema.METADATA_FILE)
    return DEFAULT_NUM_CLASSES, None


def plan_steps(cfg, data, size):
    """(per-rank batch of a step, global batch, steps per epoch, total steps)."""
    step_batch = cfg.batch_size * cfg.accumulate_steps  # per rank, per optimizer step
    global_batch = step_batch * size
    if cfg.synthetic:
        spe = reader.steps_per_epoch([data.num_train], global_batch)
    else:
        spe = reader.steps_per_epoch(data.rank_examples, step_batch)
    total = cfg.epochs * spe if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * spe)
    return step_batch, global_batch, spe, total


def feed(cfg, data, state, rank, threads, device=None):
    """This rank's batches from `state.step` (a RunState) to the run's end: one
    pipeline, reshuffled each epoch, built again only on a resume (or an
    elastic job's change of hosts). `device`: the GPU to stage batches on."""
    if cfg.synthetic:
        return reader.Feed(batch=reader.synthetic_batch(
            state.step_batch, cfg.image_size, data.num_classes, cfg.seed + rank, device))
    spe = state.steps_per_epoch
    ds = reader.train_dataset(
        data.train_files, state.step_batch, cfg.image_size, data.num_classes, spe,
        seed=cfg.seed, epoch=state.epoch, rank=rank, skip_steps=state.step % spe,
        shuffle=cfg.shuffle, augment=cfg.augment, flip=cfg.flip,
        area_range=(cfg.crop_area_min, 1.0), threads=threads, deterministic=cfg.deterministic,
        skip_corrupt=cfg.skip_corrupt, first_label=cfg.first_label,
        epochs=-(-state.total // spe) - state.epoch)
    return reader.Feed(reader.to_device(ds, device))
