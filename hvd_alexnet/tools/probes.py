"""Measurements the benchmark runs outside the trainer, one per process:

    python -m hvd_alexnet.tools.probes bare --batch 32 --image 227 --precision fp32
    python -m hvd_alexnet.tools.probes pipeline --data_dir data/bench --batch 32 --image 227
    mpirun -np 2 python -m hvd_alexnet.tools.probes allreduce --image 227    # Horovod, fused
    mpirun -np 2 python -m hvd_alexnet.tools.probes mpi_allreduce --image 227  # plain mpi4py
    horovodrun -np 8 python -m hvd_alexnet.tools.probes devices  # each rank's device
    horovodrun -np 2 python -m hvd_alexnet.tools.probes validation --data_dir data/bench
    horovodrun -np 8 python -m hvd_alexnet.tools.probes precisions  # fp32, then mixed
    horovodrun -np 8 python -m hvd_alexnet.tools.probes feed --data_dir data/demo  # batches' device
    python -m hvd_alexnet.tools.probes startup --data_dir data/bench --start first  # start-up reads

Each process prints one JSON line: {"probe", "rank", "unit", "windows": [rate per
timed window], ...}, windows timed after `--warmup` untimed ones. `bare` launched
as 2 processes (horovodrun -np 2 ... bare --threads 1) is 2 independent steps side
by side: what 2 ranks could do if they did not talk.
"""

import json
import os
import sys
import time

from absl import flags

from hvd_alexnet import command

NUM_CLASSES = 1000


def _windows(step, warmup, windows, per_window):
    """Runs `step()` (which must block until done) in timed windows; returns
    seconds per window."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(per_window):
            step()
        times.append(time.perf_counter() - t)
    return times


def bare(a):
    """The reference: a tf.function training step of the same model, batch and
    precision on in-memory data; no Horovod, no input pipeline."""
    import tensorflow as tf

    from hvd_alexnet import optim
    from hvd_alexnet.data.reader import synthetic_batch
    from hvd_alexnet.distributed import cpu_threads
    from hvd_alexnet.model import build_alexnet
    from hvd_alexnet.step import loss as training_loss
    threads = a.threads or cpu_threads(1)  # by default what a 1-rank trainer takes here
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    if a.precision == "mixed":
        tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = build_alexnet(a.image, NUM_CLASSES)
    opt = optim.make_optimizer(0.01, 0.9)
    images, labels, _ = synthetic_batch(a.batch, a.image, NUM_CLASSES)  # the trainer's

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = training_loss(model, images, labels, a.weight_decay)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    secs = _windows(lambda: float(step()), a.warmup, a.windows, a.per_window)
    return {"unit": "images/s", "windows": [a.per_window * a.batch / s for s in secs]}


def pipeline(a):
    """Decode + augment + batch of the training reader alone, no model."""
    from hvd_alexnet.data import reader, schema
    from hvd_alexnet.distributed import cpu_threads
    files = schema.list_shards(a.data_dir, schema.TRAIN)
    count = sum(reader.check_framing(f) for f in files)
    steps = reader.steps_per_epoch([count], a.batch)
    ds = reader.train_dataset(files, a.batch, a.image, NUM_CLASSES, steps, threads=cpu_threads(1),
                              deterministic=False).repeat()
    it = iter(ds)
    secs = _windows(lambda: next(it)[0].numpy(), a.warmup, a.windows, a.per_window)
    return {"unit": "images/s", "windows": [a.per_window * a.batch / s for s in secs]}


def precisions(a):
    """The trainer's step (train.build and bind: its model, optimizer, loss scale
    and averaging all-reduce) on the synthetic batch on this rank's device, at
    fp32 and then at mixed precision in one process, so that start-up and the
    first compile are paid once. Images/s of the job per window: "windows"
    (fp32) and "mixed"."""
    import tensorflow as tf

    from hvd_alexnet import config, distributed, train
    from hvd_alexnet.data.reader import synthetic_batch
    from hvd_alexnet.loop import RunState
    dist, _ = distributed.init()  # HVD
    images, labels, _ = synthetic_batch(a.batch, a.image, NUM_CLASSES, dist.rank, dist.device)
    rates = {}
    for precision in ("fp32", "mixed"):
        fv = config.define(flags.FlagValues())
        fv(["train", "--synthetic", "--model_dir=unused", f"--precision={precision}",
            f"--image_size={a.image}", f"--batch_size={a.batch}"])
        cfg, _ = config.resolve(fv)
        learner = train.build(cfg, NUM_CLASSES)
        state = RunState(a.batch, a.batch * dist.size, steps_per_epoch=1000, total=1 << 30)
        step = train.bind(learner, cfg, state, dist)
        dist.broadcast_variables(learner.variables)  # HVD
        stop = tf.constant(False)
        secs = _windows(lambda step=step, stop=stop: float(step(images, labels, stop)[0]),
                        a.warmup, a.windows, a.per_window)
        rates[precision] = [a.per_window * a.batch * dist.size / s for s in secs]
    tf.keras.mixed_precision.set_global_policy("float32")
    return {"unit": "images/s", "windows": rates["fp32"], "mixed": rates["mixed"],
            "policy": learner.policy}


def validation(a):
    """Passes over the validation shards as the trainer makes them (each rank its
    share, the exact counts summed; --validators=root: rank 0 reads every
    record while the others wait in the sum, as before issue 25), with the
    trainer's threads per rank. Seconds per pass."""
    from hvd_alexnet import distributed, inference
    from hvd_alexnet.data import reader, schema
    from hvd_alexnet.model import build_alexnet
    dist, threads = distributed.init()  # HVD
    files = schema.list_shards(a.data_dir, schema.VALIDATION)
    scorer = inference.Scorer(build_alexnet(a.image, NUM_CLASSES), NUM_CLASSES)
    rank, size = (dist.rank, dist.size) if a.validators == "all" else (0, 1)
    mine = files if dist.is_root or a.validators == "all" else []

    def one_pass():
        ds = reader.eval_dataset(mine, a.batch, a.image, NUM_CLASSES, threads, rank=rank,
                                 size=size)
        inference.summed(dist, scorer.count(ds))  # HVD

    return {"unit": "s", "windows": _windows(one_pass, a.warmup, a.windows, 1)}


def _gradient_shapes(image):
    from hvd_alexnet.model import build_alexnet
    return [v.shape for v in build_alexnet(image, NUM_CLASSES).trainable_variables]


def allreduce(a):
    """AlexNet's whole gradient set (random values, one tensor per variable)
    averaged the way the trainer's gradient tape does it: one Horovod all-reduce
    per tensor, fused. GB/s of gradient bytes."""
    import tensorflow as tf

    from hvd_alexnet import distributed
    dist, _ = distributed.init(a.fusion_mb)
    grads = [tf.Variable(tf.random.uniform(s)) for s in _gradient_shapes(a.image)]
    nbytes = sum(g.shape.num_elements() * 4 for g in grads)

    @tf.function
    def step():
        averaged = dist.average([g.read_value() for g in grads])  # HVD
        return tf.add_n([tf.reshape(t, [-1])[0] for t in averaged])  # all used: none pruned

    secs = _windows(lambda: step().numpy(), a.warmup, a.windows, a.per_window)
    return {"unit": "GB/s", "bytes": nbytes, "ranks": dist.size,
            "windows": [a.per_window * nbytes / s / 1e9 for s in secs]}


def mpi_allreduce(a):
    """A plain mpi4py Allreduce of one float32 buffer of the same size, in place."""
    import math

    import numpy as np
    from mpi4py import MPI
    nbytes = sum(math.prod(s) * 4 for s in _gradient_shapes(a.image))
    buf = np.ones(nbytes // 4, np.float32)
    comm = MPI.COMM_WORLD
    secs = _windows(lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM), a.warmup, a.windows,
                    a.per_window)
    return {"unit": "GB/s", "bytes": nbytes, "ranks": comm.Get_size(),
            "windows": [a.per_window * nbytes / s / 1e9 for s in secs]}


def devices(a):
    """Where this rank runs: its host, local rank and the device that the trainer's
    start-up (distributed.init) pins it to."""
    import socket

    import tensorflow as tf

    from hvd_alexnet import distributed
    dist, _ = distributed.init()
    gpus = tf.config.get_visible_devices("GPU")
    return {"unit": "", "windows": [0], "host": socket.gethostname(),
            "local_rank": dist.local_rank, "device": gpus[0].name if gpus else "CPU",
            "gpu_id": dist.gpu_id,
            "async_completion": os.environ.get("HOROVOD_ENABLE_ASYNC_COMPLETION") == "1"}


def fp16_sum(a):
    """The trainer's average of float16-compressed gradients (--fp16_allreduce) of a
    value that survives one division by the ranks in float16 and not two: each
    rank's 2^-24 x 2N becomes 2^-23 (float16's smallest step is 2^-24), summed
    back to 2^-24 x 2N; divided by N twice (NCCL's Average under a prescale) it
    flushes to 0. And 40,000, which fits float16 once but not N times."""
    import tensorflow as tf

    from hvd_alexnet import distributed
    dist, _ = distributed.init(fp16_allreduce=True)  # HVD
    small = 2.0 ** -24 * 2 * dist.size
    got = [float(x) for x in dist.average([tf.constant([40000.0, small])])[0].numpy()]
    return {"unit": "", "windows": [0], "got": got, "want": [40000.0, small],
            "one_division": got == [40000.0, small]}


def feed(a):
    """The trainer's own feed (prepare.feed: its reader, staged on the rank's GPU
    by reader.to_device) over the records of --data_dir, and the normalisation of
    the step: the device of the first batches' images and labels and of the
    normalised images, and whether all are this rank's device (its GPU; the
    CPU on a host without one); then the feed's images/s alone, every rank at
    once as in training (decode, augment, staging: what the step can be fed)."""
    from hvd_alexnet import config, distributed
    from hvd_alexnet.data import prepare, preprocess
    from hvd_alexnet.loop import RunState
    dist, threads = distributed.init()  # HVD
    fv = config.define(flags.FlagValues())
    fv(["train", f"--data_dir={a.data_dir}", "--model_dir=unused", f"--image_size={a.image}",
        f"--batch_size={a.batch}", "--noeval"])
    cfg, _ = config.resolve(fv)
    data = prepare.prepare_data(cfg, dist.rank, dist.size, lambda mine: dist.allgather_object(
        mine, "hvd_alexnet.probe.feed"))  # HVD
    batches = prepare.feed(cfg, data, RunState(*prepare.plan_steps(cfg, data, dist.size)),
                           dist.rank, threads, dist.device)
    seen = [(images.device, labels.device, preprocess.normalize(images).device)
            for images, labels, _ in batches.take(2)]
    dist.allgather_object(None, "hvd_alexnet.probe.feed_timed")  # HVD: all ranks start at once
    secs = _windows(lambda: next(iter(batches.take(1)))[0].shape, a.warmup, a.windows,
                    a.per_window)
    batches.close()
    want = "GPU:0" if dist.device else "CPU:0"
    return {"unit": "images/s", "windows": [a.per_window * a.batch / s for s in secs],
            "images": seen[0][0], "labels": seen[0][1], "normalized": seen[0][2],
            "on_device": all(want in d for s in seen for d in s)}


def startup(a):
    """What a 1-rank start reads of --data_dir before its first step
    (prepare.prepare_data: every shard's record count and record 0's class),
    once per window, the shards dropped from the page cache first (a job's
    start on data it has not read lately; on NFS each byte is a network read).
    --start=later: the shards surveyed before (survey.py's file holds);
    first: no survey yet (the headers are read, record 0 of each); before: no
    survey, the headers through TensorFlow's GFile, which reads ahead, as every
    start did before issue 42. --report=read: the bytes the disk delivered
    (/proc/self/io's read_bytes) / the shards' bytes; seconds: its seconds."""
    from hvd_alexnet import config
    from hvd_alexnet.data import prepare, reader, schema, survey
    if a.start == "before":
        reader._header_reader = reader._gfile_headers
    fv = config.define(flags.FlagValues())
    fv(["train", f"--data_dir={a.data_dir}", "--model_dir=unused"])
    cfg, _ = config.resolve(fv)
    shards = [*schema.list_shards(a.data_dir, schema.TRAIN),
              *schema.list_shards(a.data_dir, schema.VALIDATION)]
    size = sum(os.path.getsize(f) for f in shards)
    reads, secs = [], []

    def start():
        for f in (survey._places(a.data_dir) if a.start != "later" else []):
            if os.path.exists(f):
                os.remove(f)
        for f in shards:
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        before, t = _bytes_read(), time.perf_counter()
        data = prepare.prepare_data(cfg, 0, 1, lambda mine: [mine])
        secs.append(time.perf_counter() - t)
        reads.append((_bytes_read() - before) / size)
        return data

    data = start()  # the survey, for --start=later
    reads.clear()
    secs.clear()
    _windows(start, a.warmup, a.windows, 1)
    records = data.num_train + data.num_val
    return {"unit": "of the shards' bytes" if a.report == "read" else "s",
            "windows": (reads if a.report == "read" else secs)[a.warmup:],
            "shard_bytes": size, "records": records, "bytes_per_record": size // records}


def _bytes_read():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


PROBES = {"bare": bare, "pipeline": pipeline, "allreduce": allreduce,
          "mpi_allreduce": mpi_allreduce, "devices": devices, "validation": validation,
          "precisions": precisions, "feed": feed, "fp16_sum": fp16_sum,
          "startup": startup}


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.integer("batch", 32, "Images per step.")
d.integer("image", 227, "Image side.")
d.enum("precision", "fp32", ["fp32", "mixed"], "bare: mixed is bfloat16 on the CPU.")
d.float("weight_decay", 1e-4, "bare: as train's --weight_decay.")
d.string("data_dir", None, "pipeline, validation, feed: the TFRecords.")
d.enum("validators", "all", ["all", "root"], "validation: every rank its share, or rank 0 alone.")
d.float("fusion_mb", None, "allreduce: Horovod's fusion buffer in MiB.")
d.integer("threads", 0, "bare: CPU threads (0: all cores).")
d.enum("report", "read", ["read", "seconds"], "startup: bytes read / shard bytes, or seconds.")
d.enum("start", "later", ["later", "first", "before"],
       "startup: surveyed before, not yet, or as before issue 42.")
d.integer("warmup", 2, "Untimed windows first.")
d.integer("windows", 5, "Timed windows.")
d.integer("per_window", 5, "Steps per window.")


def main(argv=None):
    (probe,) = command.parse(FLAGS, sys.argv[1:] if argv is None else argv, "tools.probes",
                             __doc__, positional=("|".join(sorted(PROBES)),))
    if probe not in PROBES:
        raise SystemExit(f"probes: unknown probe {probe!r}; one of {', '.join(sorted(PROBES))}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("HOROVOD_RANK", 0)))
    print("PROBE " + json.dumps({"probe": probe, "rank": rank, **PROBES[probe](FLAGS)}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
