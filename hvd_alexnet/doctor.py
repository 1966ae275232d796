"""`python -m hvd_alexnet doctor`: a preflight, launched exactly like training,
before a long job on a new cluster:

    horovodrun -np 16 -H a:8,b:8 python -m hvd_alexnet doctor --data_dir D --model_dir M
    mpirun -np 16 --hostfile H ... python -m hvd_alexnet doctor --data_dir D --model_dir M

Every rank reports its host, local rank, device, threads and assigned training
shards (and checks that it can read them); rank 0 adds the checks of the whole
job (enough shards for the ranks, validation shards, a writable --model_dir
with room for checkpoints, Horovod built with what the hosts need, a Horovod
all-reduce that every rank joins), prints one table and exits 2 on any problem.
The reports are gathered with mpi4py when MPI started the ranks (mpirun, srun),
else (horovodrun --gloo) with Horovod's own all-gather.
"""

import os
import shutil
import socket
import time

import tensorflow as tf
from absl import flags

from hvd_alexnet import command, config, distributed
from hvd_alexnet.data import labels, prepare, reader, schema, survey
from hvd_alexnet.errors import DataError, UsageError

FLAGS = config.define(flags.FlagValues())  # train's own flags: the same flag file works
command.definers(FLAGS).integer(
    "label_records", 100, "Records per shard whose labels and synsets doctor reads (0: every "
    "record). It reads whole records, so the cost is their bytes: ImageNet's ~110 KB each.")
USAGE = """Preflight of a training job: launch it exactly as you will launch train
(horovodrun / mpirun / srun, same hosts, same flags or --flagfile). Prints one
row per rank and the job's checks; exits 2 if anything would stop or slow the
run. It reads --data_dir, --model_dir, --batch_size, --accumulate_steps,
--image_size, --num_classes, --first_label and --threads; the other training
flags are accepted. --label_records sets how many records per shard have their
labels checked (range, and synsets numbered alike)."""


def rank_report(args, rank, size, local_rank, local_size):
    """This rank's row: where it runs and whether it can read its shards."""
    gpus = tf.config.list_physical_devices("GPU")
    row = {"rank": rank, "host": socket.gethostname(), "local_rank": local_rank,
           "device": (gpus[local_rank % len(gpus)].name if gpus else "CPU"),
           "threads": args.threads or distributed.cpu_threads(local_size),
           "host_cores": os.cpu_count() or 1, "gpus_on_host": len(gpus),
           "gpus_listed": distributed.listed_gpus() if local_rank == 0 else None,
           "shards": 0, "examples": 0, "problem": "", "counted": {}}
    try:
        files = schema.list_shards(args.data_dir, schema.TRAIN)
        if not files:
            raise DataError(schema.no_shards(args.data_dir, schema.TRAIN, " on this host"))
        mine = reader.rank_shards(files, rank, size)
        row["shards"] = len(mine)
        found, row["counted"] = survey.survey(args.data_dir, mine)  # headers, once
        row["examples"] = sum(records for records, _ in found.values())
        for record in tf.data.TFRecordDataset(mine).take(1):  # one record decodes
            jpeg, label, _ = schema.parse(record)
            tf.io.decode_jpeg(jpeg)
        row.update(read_labels(mine + schema.list_shards(args.data_dir, schema.VALIDATION)[
            rank::size], args.label_records))
    except (DataError, tf.errors.OpError, OSError) as e:
        row["problem"] = str(getattr(e, "message", "") or e).splitlines()[0]
    return row


def read_labels(files, per_shard):
    """The labels and synsets of the first `per_shard` records of each file (all: 0):
    {"labels_read", "label_seconds", "label_entries"}, the entries kept small (the
    first of each label/synset pair)."""
    t0, read, kept = time.perf_counter(), 0, {}
    for path in files:
        for e in labels.read(path, per_shard or None):
            read += 1
            kept.setdefault(e[2:4], e)
    return {"labels_read": read, "label_seconds": time.perf_counter() - t0,
            "label_entries": list(kept.values())}


def label_check(args, rows, num_classes):
    """(what, problem): the labels the ranks read are in range and numbered alike
    (across shards, and as the model in --model_dir that a run would resume)."""
    entries = [e for r in rows for e in r.get("label_entries", [])]
    read = sum(r.get("labels_read", 0) for r in rows)
    seconds = max(r.get("label_seconds", 0) for r in rows)
    sample = (f"the first {args.label_records} of each shard" if args.label_records
              else "every record")
    what = (f"labels of {read} records ({sample}; --label_records sets it), read in "
            f"{seconds:.1f} s: {len({e[2] for e in entries})} classes, in "
            f"{args.first_label}..{args.first_label + num_classes - 1}")
    from hvd_alexnet.inference import trained_classes
    problem = (labels.range_problem(entries, args.first_label, num_classes)
               or labels.disagreement(trained_classes(args.model_dir), entries,
                                      f"the model in {args.model_dir}"))
    return what, problem or ""


def job_checks(args, rows, hvd_built):
    """Rank 0's checks of the whole job: [(what, problem or '')]."""
    checks = []
    size = len(rows)
    shards = len(schema.list_shards(args.data_dir, schema.TRAIN))
    checks.append((f"{shards} training shards for {size} ranks",
                   "" if shards >= size else "every rank needs at least one shard"))
    val = len(schema.list_shards(args.data_dir, schema.VALIDATION))
    checks.append((f"{val} validation shards", "" if val else "none: add them or train --noeval"))
    fewest, batch = min(r["examples"] for r in rows), args.batch_size * args.accumulate_steps
    checks.append((f"smallest rank's share: {fewest} examples, batch {batch}",
                   "" if fewest >= batch else "less than one batch" if fewest else
                   "that rank's training shards are all empty"))
    from hvd_alexnet.model import build_alexnet
    num_classes = args.num_classes or (schema.read_metadata(args.data_dir) or {}).get(
        "num_classes", prepare.DEFAULT_NUM_CLASSES)
    checks.append(label_check(args, rows, num_classes))
    need = config.checkpoint_bytes(build_alexnet(args.image_size, num_classes).count_params())
    problem = "".join(config.check_model_dir(args.model_dir))
    if not problem:
        free = shutil.disk_usage(args.model_dir).free
        if free < need:
            problem = f"{free >> 20} MiB free, a checkpoint needs about {need >> 20} MiB"
    checks.append((f"--model_dir {args.model_dir} writable, room for a checkpoint "
                   f"(~{need >> 20} MiB)", problem))
    gpu_hosts = {r["host"] for r in rows if r["gpus_on_host"]}
    built = ", ".join(k for k, v in hvd_built.items() if v) or "nothing"
    need_nccl = gpu_hosts and not hvd_built["NCCL"]
    checks.append((f"Horovod built with {built}",
                   "GPUs found but no NCCL: rebuild with HOROVOD_GPU_OPERATIONS=NCCL"
                   if need_nccl else ""))
    for host in sorted({r["host"] for r in rows}):
        on_host = [r for r in rows if r["host"] == host]
        gpus = on_host[0]["gpus_on_host"]
        listed = max(r.get("gpus_listed") or 0 for r in on_host)
        if listed and not gpus:
            checks.append((f"{host}: nvidia-smi lists {listed} GPU(s), TensorFlow sees none",
                           "every rank would train on the CPU: the CPU stack (tensorflow-cpu) "
                           "is installed here; run make install on this host, which builds "
                           "the GPU stack where nvidia-smi lists GPUs (check CUDA_VISIBLE_"
                           "DEVICES too)"))
        if gpus and len(on_host) > gpus:
            checks.append((f"{host}: {len(on_host)} ranks, {gpus} GPUs",
                           "more ranks than GPUs: ranks would share a GPU"))
        threads, cores = sum(r["threads"] for r in on_host), on_host[0]["host_cores"]
        if not gpus and threads > cores:
            checks.append((f"{host}: {len(on_host)} ranks x --threads = {threads} threads on "
                           f"{cores} cores", "more threads than cores: the ranks would slow "
                           "each other down"))
    return checks


def table(rows):
    head = ("rank", "host", "local_rank", "device", "threads", "shards", "examples", "status")
    body = [[str(r[k]) for k in head[:-1]] + [r["problem"] or "ok"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def main(argv):
    command.parse(FLAGS, argv, "doctor", USAGE, required=("data_dir", "model_dir"))
    args = config.values(FLAGS)
    launched = distributed.launcher_ranks()
    via_mpi = launched is not None and launched[0] != "horovodrun"
    dist, _ = distributed.init(threads=args.threads, bind_cpus=args.bind_cpus)  # HVD: as train
    row = rank_report(args, dist.rank, dist.size, dist.local_rank, dist.local_size)
    if via_mpi:  # mpirun, srun, PMI: MPI started the ranks, so mpi4py can gather
        from mpi4py import MPI
        rows = MPI.COMM_WORLD.gather(row, root=0)
        if MPI.COMM_WORLD.size != dist.size:
            raise UsageError(f"MPI sees {MPI.COMM_WORLD.size} ranks, Horovod {dist.size}")
    else:
        rows = dist.allgather_object(row, "hvd_alexnet.doctor")  # HVD
    joined = dist.sum(1, "hvd_alexnet.doctor.joined")  # HVD: an all-reduce every rank joins
    problems = []
    if dist.is_root:
        survey.remember(args.data_dir, {k: v for r in rows for k, v in r["counted"].items()})
        hvd = dist.hvd
        built = {"MPI": hvd.mpi_built(), "Gloo": hvd.gloo_built(), "NCCL": hvd.nccl_built()}
        checks = [(f"a Horovod all-reduce joined by {joined} of {dist.size} ranks",
                   "" if joined == dist.size else "some ranks missing")]
        checks += job_checks(args, rows, built)
        print(f"hvd_alexnet doctor: {dist.size} ranks on {len({r['host'] for r in rows})} "
              f"host(s), gathered with {'mpi4py' if via_mpi else 'Horovod (Gloo)'}")
        print(table(rows))
        print()
        for what, problem in checks:
            said = f"{what}: {problem}" if problem else what
            print(f"  {'PROBLEM' if problem else 'ok':7}  {said}")
        problems = [f"rank {r['rank']}: {r['problem']}" for r in rows if r["problem"]]
        problems += [f"{what}: {problem}" for what, problem in checks if problem]
    problems = dist.allgather_object(problems, "hvd_alexnet.doctor.verdict")[0]  # HVD
    if problems:  # every rank exits 2; rank 0 says why
        raise UsageError(f"{len(problems)} problem(s): " + "; ".join(problems)
                                if dist.is_root else f"{len(problems)} problem(s), see rank 0")
    if dist.is_root:
        print("\nhvd_alexnet doctor: ready to train")
    return 0
