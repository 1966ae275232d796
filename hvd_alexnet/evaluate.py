"""`python -m hvd_alexnet evaluate`: top-1 / top-5 of a checkpoint on a validation
set, on one rank or sharded across ranks (launched like training):

    python -m hvd_alexnet evaluate --data_dir D --model_dir M
    horovodrun -np 8 python -m hvd_alexnet evaluate --data_dir D --model_dir M

Each rank reads only its share (reader.eval_share: whole shards r, r+size, ...
when there are at least as many shards as ranks, else one shard, split with
the ranks that share it); each rank counts its hits and examples and the
counts are summed over ranks (integers, so the result is
exact and equal on any number of ranks). Before reading, the ranks count the
shards' records between them (survey.py: remembered after the first time), and
the job fails if the examples evaluated differ from the records on disk: none
missed, none counted twice.
"""

from absl import flags

from hvd_alexnet import command, distributed, inference
from hvd_alexnet.data import labels, reader, schema, survey
from hvd_alexnet.errors import DataError
from hvd_alexnet.progress import Ticker

FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.string("data_dir", None, "Folder of validation-* TFRecord shards.")
d.string("model_dir", None, "The --model_dir of a training run.")
d.string("checkpoint", None, "A checkpoint prefix (default: the run's newest).")
d.enum("split", schema.VALIDATION, [schema.VALIDATION, schema.TRAIN],
       "Which shards to evaluate on.")
d.integer("batch_size", 64, "Images per batch and rank.")
d.integer("threads", 0, "CPU threads per rank (0: the host's cores / ranks on the host).")
d.integer("first_label", 1, "The first class's label in the data (as for train).")
USAGE = """Top-1 / top-5 accuracy of a training run's newest checkpoint (or --checkpoint)
on the validation shards of --data_dir. Several ranks (horovodrun -np N /
mpirun -np N) split the shards and sum exact counts."""


def main(argv):
    command.parse(FLAGS, argv, "evaluate", USAGE, required=("data_dir", "model_dir"))
    args = FLAGS
    # Before Horovod starts: a bad run directory is reported once, not once per rank.
    desc = inference.read_description(args.model_dir)
    path = inference.checkpoint_path(args.model_dir, args.checkpoint)
    files = schema.list_shards(args.data_dir, args.split)
    if not files:
        raise DataError(schema.no_shards(args.data_dir, args.split))
    dist, threads = distributed.init(threads=args.threads)  # HVD
    # One checkpoint for every rank, rank 0's choice: a training run saving and
    # sweeping in the same folder could change each rank's own.
    path = dist.allgather_object(path, "hvd_alexnet.checkpoint")[0] if dist.size > 1 else path
    # The data numbers its classes as the model does (record 0 of each shard). The
    # ranks survey the shards between them (ImageNet's 128 over 16 ranks: 8 each)
    # and share what they found, a problem included, so all reach the same verdict.
    found, counted, problem = {}, {}, ""
    try:
        found, counted = survey.survey(args.data_dir, files[dist.rank::dist.size])
    except DataError as e:
        problem = str(e)
    shared = ([(problem, found, counted)] if dist.size == 1 else
              dist.allgather_object((problem, found, counted), "hvd_alexnet.survey"))  # HVD
    problems = sorted({p for p, _, _ in shared if p})
    if problems:
        raise DataError("; ".join(problems))
    found = {path: entry for _, each, _ in shared for path, entry in each.items()}
    found = {path: found[path] for path in files}  # in the shards' order, as before
    if dist.is_root:  # rank 0 remembers every rank's counts
        survey.remember(args.data_dir, {k: v for _, _, each in shared for k, v in each.items()})
    seen = [(path, 0, *first) for path, (_, first) in found.items() if first]
    problem = (labels.disagreement(desc.get("synsets", []), seen, f"the model in {args.model_dir}")
               or labels.range_problem(seen, args.first_label, desc["num_classes"]))
    if problem:
        raise DataError(problem)
    say = print if dist.is_root else (lambda *a, **k: None)
    on_disk = sum(records for records, _ in found.values())
    say(f"evaluating {path} (the checkpoint with the most training, as a resume takes it)"
        if not args.checkpoint else f"evaluating {path}")
    model, _, _ = inference.load(args.model_dir, path)
    scorer = inference.Scorer(model, desc["num_classes"])
    ticker = Ticker(f"evaluating (rank 0 of {dist.size})", on_disk // dist.size, say)
    c1, c5, n = inference.summed(dist, scorer.count(reader.eval_dataset(  # HVD
        files, args.batch_size, desc["image_size"], desc["num_classes"], threads,
        first_label=args.first_label, rank=dist.rank, size=dist.size), ticker.update))
    if not n:
        raise DataError(f"the {args.split} shards of {args.data_dir} hold no records: nothing "
                        f"to evaluate")
    if n != on_disk:
        raise DataError(f"evaluated {n} examples but the {args.split} shards hold "
                               f"{on_disk} records")
    say(f"evaluated {path} on {n} {args.split} examples in {len(files)} shards, "
        f"{dist.size} rank(s)")
    say(f"Accuracy @ 1 = {c1 / n:.4f} Accuracy @ 5 = {c5 / n:.4f} [{n} examples]"
        f"{inference.top5_note(desc['num_classes'])}")
    say(f"top-1 hits {c1}, top-5 hits {c5}, of {n}")
    return 0
