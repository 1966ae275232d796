"""`bash bin/gpu_check.sh` (`make gpu-check`): on a host with 1 to 8 GPUs, in a few
minutes and with no data set but a few demo records, whether this project's GPU
path works and how fast.

It prints what TensorFlow and Horovod were built with and see (GPUs, driver,
CUDA and cuDNN, Horovod's NCCL / MPI / Gloo), one row per rank with the device
that rank is pinned to, its GPU's PCI bus id and the device where the trainer's
own feed (--data_dir's records) put its first batches and their normalisation,
the images/s of the trainer's feed alone on those records (every rank at once),
the images/s of the trainer's step on a synthetic batch at fp32 and at mixed
precision (both in one process: start-up and the first compile paid once) on 1
rank and on all of them (with the scaling efficiency), on all of them at the
launch scripts' batch of 32, Horovod's all-reduce of AlexNet's gradients, and
`plan`'s prediction for the N-rank step
from the 1-rank rate and that all-reduce beside the measurement; then one check
a line (whether the feed keeps up with the step among them: where it does not,
the input is the limit) and a verdict (exit 0: ready, 2: a problem).

On a host without a GPU it runs the same on the CPU, one rank per core (mixed
means bfloat16 there), and says so; the tests run it that way.
"""

import json
import os
import re
import statistics
import subprocess
import sys

from absl import flags

from hvd_alexnet import command
from hvd_alexnet.tools import bench, costs
from hvd_alexnet.tools.launch import BIN

MIN_EFFICIENCY = 0.8  # N GPUs / (N x 1 GPU), fp32: below it the all-reduce or the host limits
GPU_BATCH, CPU_BATCH = 512, 64  # per rank: a big GPU's AlexNet batch (tf_cnn_benchmarks'); a CPU's
SCRIPTS_BATCH = 32  # per rank: what bin/'s launch scripts train with (the reference recipe)


def host_facts():
    """What TensorFlow and Horovod were built with and see on this host."""
    code = ("import json, tensorflow as tf; b = tf.sysconfig.get_build_info(); print(json.dumps("
            "{'tensorflow': tf.__version__, 'cuda': b.get('cuda_version'), 'cudnn': "
            "b.get('cudnn_version'), 'gpus': [d.name for d in "
            "tf.config.list_physical_devices('GPU')]}))")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout
    facts = json.loads(out.strip().splitlines()[-1])
    build = subprocess.run([os.path.join(BIN, "horovodrun"), "--check-build"],
                           capture_output=True, text=True, env=env, timeout=300).stdout
    facts["horovod"] = {name: bool(re.search(rf"\[X\] {name}\b", build))
                        for name in ("NCCL", "MPI", "Gloo", "TensorFlow")}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
        facts["nvidia_smi"] = smi.stdout.strip().splitlines() if smi.returncode == 0 else []
    except OSError:
        facts["nvidia_smi"] = []
    facts["compute_capabilities"] = compute_capabilities()
    return facts


def compute_capabilities():
    """[(major, minor)] of the host's GPUs (nvidia-smi's compute_cap, drivers from
    510 on), [] if unknown."""
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return []
    found = re.findall(r"^\s*(\d+)\.(\d+)\s*$", smi.stdout, re.M) if smi.returncode == 0 else []
    return [(int(major), int(minor)) for major, minor in found]


def measurement_timeout(timeout, capabilities):
    """Seconds a measurement may take: on GPUs whose kernels the driver compiles at
    the first step (Hopper and later), enough for that compile (once per host:
    CUDA's cache keeps it for the later measurements)."""
    from hvd_alexnet import distributed  # TensorFlow: only when asked
    built = distributed.built_kernels()
    if any(distributed.compiles_at_first_step(c, built) for c in capabilities):
        return max(timeout, distributed.FIRST_STEP_ALLOWED)
    return timeout


def probe_ranks(probe, ranks, timeout, *args):
    """Each rank's PROBE line of `probe` run on `ranks` ranks started as training is."""
    out = bench.run_job(["-m", "hvd_alexnet.tools.probes", probe, *args], ranks, "gloo", timeout)
    found = [json.loads(line[line.index("{"):]) for line in out.splitlines() if "PROBE {" in line]
    return sorted(found, key=lambda r: r["rank"])


def rank_devices(ranks, timeout):
    """[{"rank", "host", "local_rank", "device", "gpu_id"}] of `ranks` ranks."""
    return probe_ranks("devices", ranks, timeout)


def rows(ranks, gpu, batch):
    """The measurements: the trainer's step at both precisions on 1 rank (one
    process) and on all (one job), the same job at the launch scripts' batch,
    and the all-reduce."""
    out = [
        bench.Row("precisions_1", "1 rank", "probe", 1, ["precisions"], batch=batch),
        bench.Row("precisions_n", f"{ranks} ranks", "probe", ranks, ["precisions"], batch=batch),
        bench.Row("allreduce", f"all-reduce of the gradients, {ranks} ranks"
                  f"{' (NCCL)' if gpu else ''}", "probe", ranks, ["allreduce"], batch=batch),
    ]
    if batch != SCRIPTS_BATCH:
        out.insert(2, bench.Row("precisions_s", f"{ranks} ranks at the scripts' batch of "
                                                f"{SCRIPTS_BATCH}", "probe", ranks,
                                ["precisions"], batch=SCRIPTS_BATCH))
    return out


def results(row, m, gpu):
    """[(key, label, measurement)]: a precisions row gives an fp32 and a mixed one."""
    if row.key == "allreduce":
        return [(row.key, row.label, m)]
    n = row.key[len("precisions_"):]
    total = " (aggregate)" if n in ("n", "s") else ""
    mixed = "mixed float16" if gpu else "mixed bfloat16"
    return [(f"fp32_{n}", f"{row.label}, fp32{total}", m),
            (f"mixed_{n}", f"{row.label}, {mixed}{total}", {**m, "windows": m["mixed"]})]


def predicted(r, ranks, gpu, a):
    """plan's step for `ranks` ranks: forward + max(backward, all-reduce), the compute
    from the 1-rank fp32 rate (on a CPU the ranks share the cores that 1 rank had
    alone) and the all-reduce as measured. Images/s."""
    fwd_flops, params = costs.model_costs(a.image_size)
    per_rank = r["fp32_1"]["median"] * (1 if gpu else 1 / ranks)  # images/s of one rank
    flops_per_sec = per_rank * 3 * fwd_flops  # forward + backward (2x) per image
    nbytes = r["allreduce"]["bytes"]
    comm = nbytes / (r["allreduce"]["median"] * 1e9)
    fwd, bwd = a.batch * fwd_flops / flops_per_sec, 2 * a.batch * fwd_flops / flops_per_sec
    return ranks * a.batch / (fwd + max(bwd, comm))


def shared_gpus(devices):
    """'ranks 0, 1 on a share PCI 0000:07:00.0' for ranks of one host with one GPU
    identity (names cannot tell: with one GPU visible per rank, all are GPU:0)."""
    by_gpu = {}
    for d in devices:
        if d.get("gpu_id"):
            by_gpu.setdefault((d["host"], d["gpu_id"]), []).append(str(d["rank"]))
    return "; ".join(f"ranks {', '.join(ranks)} on {host} share PCI {gpu}"
                     for (host, gpu), ranks in by_gpu.items() if len(ranks) > 1)


def feed_rate(feeds):
    """The slowest rank's median images/s of the trainer's feed alone, or None."""
    rates = [statistics.median(f["windows"]) for f in feeds if f.get("unit") == "images/s"]
    return min(rates) if rates else None


def checks(facts, devices, feeds, r, ranks, gpu, prediction, batch, sums=()):
    """[(what, problem or '')]; on a CPU only that everything ran (and the float16
    sum, which every backend must do with one division)."""
    out = []
    fed, step = feed_rate(feeds), r["fp32_n"]["median"] / ranks
    if fed is not None:  # what the records give each rank, against what its step takes
        out.append((f"the input keeps up: the trainer's feed gives {fed:.1f} images/s per rank, "
                    f"the step takes {step:.1f} (fp32, {ranks} ranks): x{fed / step:.2f}"
                    + ("" if gpu else " (not judged: the feed and the step share the CPU)"),
                    "" if not gpu or fed >= step else
                    "the input is the limit: more CPUs per rank (Slurm's --cpus-per-task), "
                    "the records on a faster disk, or fewer ranks per host"))
    wrong = [f"rank {s['rank']}: {s['got']}" for s in sums if not s["one_division"]]
    if sums:
        out.append((f"float16 sums with one division (--fp16_allreduce): {sums[0]['want']} "
                    f"on every rank averages to itself", "; ".join(wrong) + " (a second "
                    "division by the ranks flushed it)" if wrong else ""))
    if gpu:
        out.append(("Horovod built with NCCL", "" if facts["horovod"]["NCCL"] else
                    "rebuild: make install (on a host with GPUs it builds the GPU stack)"))
        out.append(("every rank on its own GPU (by PCI bus id)", shared_gpus(devices) or (
            "a rank runs on the CPU" if any(d["device"] == "CPU" for d in devices) else "")))
        off = [str(d["rank"]) for d in devices if not d.get("async_completion")]
        out.append(("Horovod's async completion on (no idle GPU between steps)",
                    f"off on rank(s) {', '.join(off)}: HOROVOD_ENABLE_ASYNC_COMPLETION=0 set?"
                    if off else ""))
        off = [str(f["rank"]) for f in feeds if not f["on_device"]]
        out.append(("the training batches and their normalisation on each rank's GPU",
                    f"not on the GPU on rank(s) {', '.join(off)} (see the feed rows)" if off else
                    "" if feeds else "not checked: no --data_dir records (make demo-data)"))
        speedup = r["mixed_1"]["median"] / r["fp32_1"]["median"]
        out.append((f"mixed float16 / fp32 on 1 GPU: x{speedup:.2f}",
                    "" if speedup > 1 else "float16 is not faster: Tensor Cores unused?"))
    eff = r["fp32_n"]["median"] / (ranks * r["fp32_1"]["median"])
    judged = gpu and ranks > 1
    out.append((f"scaling, fp32: {ranks} ranks / ({ranks} x 1 rank) = {eff:.2f}"
                + ("" if judged else " (not judged: the ranks share one CPU's cores)"),
                "" if not judged or eff >= MIN_EFFICIENCY else
                f"below {MIN_EFFICIENCY}: the all-reduce (see its row) or the host limits"))
    out.append((f"measured / predicted ({ranks} ranks, fp32): "
                f"{r['fp32_n']['median'] / prediction:.2f}", ""))
    if "fp32_s" in r:
        out.append((f"the scripts' batch of {SCRIPTS_BATCH} per rank: "
                    f"{r['fp32_s']['median'] / r['fp32_n']['median']:.2f} of batch {batch}'s "
                    f"images/s on {ranks} ranks (fp32)", ""))
    return out


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.integer("ranks", 0, "Ranks for the N-rank rows (0: every GPU; on a CPU, its cores).")
d.integer("image_size", 227, "Image side.")
d.integer("batch", 0, "Images per rank and step (0: tf_cnn_benchmarks' AlexNet batch of 512 "
          "on a GPU, 64 on a CPU).")
d.integer("warmup", 1, "Untimed windows first.")
d.integer("windows", 3, "Timed windows per row.")
d.integer("window_images", 0, "Images per window (0: 10 steps' worth).")
d.integer("timeout", 600, "Seconds per measurement.")
d.string("data_dir", "data/demo", "Records for the feed check: the trainer's reader, staged on "
         "each rank's GPU (make demo-data writes data/demo).")


def main(argv=None):
    command.parse(FLAGS, sys.argv[1:] if argv is None else argv, "tools.gpu_check", __doc__)
    facts = host_facts()
    gpu = bool(facts["gpus"])
    ranks = FLAGS.ranks or len(facts["gpus"]) or os.cpu_count() or 1
    batch = FLAGS.batch or (GPU_BATCH if gpu else CPU_BATCH)
    timeout = measurement_timeout(FLAGS.timeout, facts["compute_capabilities"])
    a = command.values(FLAGS, batch=batch, timeout=timeout,
                       window_images=FLAGS.window_images or 10 * batch)
    if timeout > FLAGS.timeout:
        print(f"compute capability {max(facts['compute_capabilities'])} GPUs: TensorFlow "
              f"{facts['tensorflow']} compiles its kernels for them at the first step (many "
              f"minutes, once per host); each measurement may take {timeout} s")
    hvd_built = ", ".join(k for k, v in facts["horovod"].items() if v and k != "TensorFlow")
    print(f"hvd_alexnet gpu check: {len(facts['gpus'])} GPU(s)"
          + (f" ({'; '.join(facts['nvidia_smi'])})" if facts["nvidia_smi"] else "")
          + f"; TensorFlow {facts['tensorflow']} built for CUDA {facts['cuda'] or '-'}, "
            f"cuDNN {facts['cudnn'] or '-'}; Horovod built with {hvd_built or 'nothing'}")
    if not gpu:
        print(f"CPU mode: no GPU found, so the same checks run on the CPU ({ranks} ranks share "
              f"its {os.cpu_count()} cores; mixed is bfloat16; NCCL is not needed)")
    devices = rank_devices(ranks, a.timeout)
    feed_batch = min(a.batch, SCRIPTS_BATCH)  # the rate hardly depends on it; the demo is small
    feeds = (probe_ranks("feed", ranks, a.timeout, f"--data_dir={a.data_dir}",
                         f"--image={a.image_size}", f"--batch={feed_batch}", "--warmup=1",
                         f"--windows={a.windows}",
                         f"--per_window={max(1, a.window_images // feed_batch)}")
             if os.path.isdir(a.data_dir) else [])
    width = max(len(dev["host"]) for dev in devices)
    print(f"\nrank  {'host':<{width}}  local_rank  device  gpu (PCI)  batches on")
    for dev in devices:
        on = next((f"{f['images'].rsplit('device:', 1)[-1]}"
                   f"{'' if f['on_device'] else ' (not the GPU)'}"
                   for f in feeds if f["rank"] == dev["rank"]), "-")
        print(f"{dev['rank']:<4}  {dev['host']:<{width}}  {dev['local_rank']:<10}  "
              f"{dev['device']}  {dev.get('gpu_id') or '-'}  {on}")
    r = {}
    print(f"\n| measurement ({a.image_size}x{a.image_size}, batch {a.batch} per rank, "
          f"synthetic) | median | spread | unit |\n|---|---|---|---|")
    for row in rows(ranks, gpu, a.batch):
        for key, label, m in results(row, bench.measure(row, a), gpu):
            r[key] = m = {**m, "median": statistics.median(m["windows"])}
            print(f"| {label} | {m['median']:.2f} | {min(m['windows']):.2f}-"
                  f"{max(m['windows']):.2f} | {m['unit']} |", flush=True)
    prediction = predicted(r, ranks, gpu, a)
    print(f"| plan's prediction, {ranks} ranks, fp32 (from the 1-rank rate and the "
          f"all-reduce above) | {prediction:.2f} | | images/s |")
    if feeds:
        medians = [statistics.median(f["windows"]) for f in feeds]
        print(f"| the trainer's feed alone ({a.data_dir}'s records, batch {feed_batch}), per "
              f"rank, {ranks} ranks at once (the slowest) | {min(medians):.2f} | "
              f"{min(medians):.2f}-{max(medians):.2f} | images/s |")
    print()
    sums = probe_ranks("fp16_sum", ranks, a.timeout)
    found = checks(facts, devices, feeds, r, ranks, gpu, prediction, a.batch, sums)
    for what, problem in found:
        print(f"  {'PROBLEM' if problem else 'ok':7}  {what}{': ' + problem if problem else ''}")
    problems = [p for _, p in found if p]
    verdict = (f"{len(problems)} problem(s)" if problems else
               "ready: the GPU path works on this host" if gpu else
               "CPU mode: every measurement ran; run this on a GPU host for the GPU verdict")
    print(f"\nhvd_alexnet gpu check: {verdict}")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
