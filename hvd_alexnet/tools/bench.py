"""`python -m hvd_alexnet bench` (`make bench`): every throughput figure in one run.

Each row is a fresh process (or a 2-rank job) timed over repeated windows after
a warm-up; the table gives the median and the spread (min-max) of the windows.
Results go to docs/results/benchmarks.json and .md with the machine's
description and the command. Tests never assert on these figures.
"""

import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile

from absl import flags

from hvd_alexnet import command, files, metrics_log
from hvd_alexnet.tools import plan
from hvd_alexnet.tools.launch import ROOT, job_command, job_env

FRESH_PROCESSES = 5  # rows of kind "fresh": the same run this many times
FRESH_LENGTH = 3  # ... each this many times a row's timed windows: a summary over a
# longer stretch is less moved by the machine's drift (one busy second)


class Row:
    """One measurement: `kind` is "train" (the trainer's own DLLogger windows),
    "fresh" (the summaries of FRESH_PROCESSES runs), "long" (one run as long as
    those together, its windows cut into blocks as long as one of them), "demo"
    (the demo's top-1) or "probe" (tools/probes.py); `ranks` processes; `args`
    extra flags."""

    def __init__(self, key, label, kind, ranks=1, args=(), launcher="gloo", batch=32):
        self.key, self.label, self.kind, self.ranks = key, label, kind, ranks
        self.args, self.launcher, self.batch = list(args), launcher, batch


def rows(data_dir, startup_dir=None):
    real = [f"--data_dir={data_dir}"]
    startup = [f"--data_dir={startup_dir or data_dir}"]  # records of ImageNet's size
    return [
        Row("bare", "bare step (no Horovod, no input pipeline)", "probe", args=["bare"]),
        Row("synthetic_1", "trainer, synthetic, 1 rank", "train", args=["--synthetic"]),
        Row("synthetic_1_fresh", f"trainer, synthetic, 1 rank: the summary's images/s of "
            f"{FRESH_PROCESSES} fresh processes", "fresh", args=["--synthetic"]),
        Row("synthetic_1_long", f"trainer, synthetic, 1 rank: one process as long as the "
            f"{FRESH_PROCESSES} fresh ones, cut into {FRESH_PROCESSES} blocks of their length "
            f"(the machine's own drift)", "long", args=["--synthetic"]),
        Row("real_1", "trainer, real data, 1 rank", "train", args=real),
        Row("pipeline", "input pipeline alone (decode, augment, batch)", "probe",
            args=["pipeline", *real]),
        Row("epoch_gap", "trainer, real data, 1 rank: an epoch boundary (last step of one "
            "epoch to the first of the next, less the checkpoint) / the median step",
            "epoch_gap", args=real),
        *(Row(f"startup{suffix}_{report}", f"start-up's data reads, 1 rank, {when}: "
              f"{what}", "probe", args=["startup", *startup, f"--start={start}",
                                         f"--report={report}"])
          for report, what in (("read", "bytes from the disk / the shards' bytes"),
                               ("seconds", "seconds"))
          for start, suffix, when in (
              ("later", "", "the shards surveyed before (every start after the first)"),
              ("first", "_first", "the first (the shards' headers and record 0 of each)"),
              ("before", "_before", "as before issue 42 (the headers through a buffered "
                                    "reader, at every start)"))),
        Row("validation_root", "validation pass, 2 ranks: rank 0 alone, the others waiting "
            "(as before issue 25)", "probe", 2, ["validation", *real, "--validators=root"]),
        Row("validation_all", "validation pass, 2 ranks: every rank its share", "probe", 2,
            ["validation", *real, "--validators=all"]),
        Row("real_2", "trainer, real data, 2 ranks (aggregate)", "train", 2, real),
        Row("bare_2x1", "2 bare steps side by side, 1 core each, no Horovod (aggregate)",
            "probe", 2, ["bare", "--threads=1"]),
        Row("real_2_acc2", "trainer, real data, 2 ranks, one all-reduce per 2 micro-batches "
            "(--accumulate_steps=2)", "train", 2, [*real, "--accumulate_steps=2"], batch=64),
        Row("allreduce_hvd_mpi", "all-reduce of the gradients, Horovod, mpirun", "probe", 2,
            ["allreduce"], launcher="mpi"),
        Row("allreduce_mpi4py", "all-reduce of one buffer, plain mpi4py, mpirun", "probe", 2,
            ["mpi_allreduce"], launcher="mpi"),
        Row("allreduce_hvd_gloo", "all-reduce of the gradients, Horovod, horovodrun --gloo",
            "probe", 2, ["allreduce"]),
        Row("fusion_off", "2 ranks synthetic, fusion off", "train", 2,
            ["--synthetic", "--fusion_threshold_mb=0"]),
        Row("fusion_default", "2 ranks synthetic, fusion 128 MB (Horovod's default)", "train",
            2, ["--synthetic", "--fusion_threshold_mb=128"]),
        Row("fusion_large", "2 ranks synthetic, fusion 512 MB (one buffer)", "train", 2,
            ["--synthetic", "--fusion_threshold_mb=512"]),
        Row("elastic", "2 ranks synthetic, fusion 128 MB, --elastic (horovodrun's elastic "
            "driver, no commit while timed)", "train", 2,
            ["--synthetic", "--fusion_threshold_mb=128", "--elastic",
             "--elastic_commit_every=100000"], launcher="elastic"),
        Row("elastic_commit", "2 ranks synthetic, fusion 128 MB, --elastic, a commit after "
            "every step", "train", 2, ["--synthetic", "--fusion_threshold_mb=128", "--elastic",
                                       "--elastic_commit_every=1"], launcher="elastic"),
        Row("fp16_allreduce", "2 ranks synthetic, fusion 128 MB, fp16 gradients", "train", 2,
            ["--synthetic", "--fusion_threshold_mb=128", "--fp16_allreduce"]),
        Row("cycle_1ms", "2 ranks synthetic, Horovod cycle 1 ms (Horovod's default; the "
            "trainer's on CPU is 10)", "train", 2, ["--synthetic", "--cycle_time_ms=1"]),
        Row("xla_1", "trainer, synthetic, 1 rank, --xla (XLA's CPU backend)", "train",
            args=["--synthetic", "--xla"]),
        Row("fp32_b64", "1 rank synthetic, fp32, batch 64", "train", args=["--synthetic"],
            batch=64),
        Row("bf16_b64", "1 rank synthetic, bf16, batch 64", "train",
            args=["--synthetic", "--precision=mixed"], batch=64),
        Row("fp32_b128", "1 rank synthetic, fp32, batch 128", "train", args=["--synthetic"],
            batch=128),
        Row("demo_bf16", "demo (make train) with bf16: top-1", "demo", 2,
            ["--precision=mixed"]),
    ]


def run_job(cmd, ranks, launcher, timeout):
    """`python CMD` as `ranks` processes: its output (RuntimeError if it failed)."""
    if ranks == 1 and launcher != "gloo":
        launcher = None  # one plain process
    cmd = job_command(cmd, ranks, launcher or ("gloo" if ranks > 1 else None),
                      forward=["TF_CPP_MIN_LOG_LEVEL"])
    # Its own process group, so that a timeout ends the launcher and every rank.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=job_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C): take the job down with us
            os.killpg(proc.pid, signal.SIGKILL)
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, "")
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}):\n{out[-3000:]}")
    return res.stdout


def per_window(row, a):
    """Steps per timed window: about `a.window_images` images."""
    return max(1, a.window_images // (row.batch * row.ranks))


def probe_command(row, a):
    return ["-m", "hvd_alexnet.tools.probes", *row.args, f"--image={a.image_size}",
            f"--batch={row.batch}", f"--warmup={a.warmup}", f"--windows={a.windows}",
            f"--per_window={per_window(row, a)}"]


def probe_results(out):
    """The JSON objects the probe's processes printed (each after "PROBE "; a
    launcher may put another rank's output on the same line)."""
    decoder = json.JSONDecoder()
    return [decoder.raw_decode(part)[0] for part in out.split("PROBE ")[1:]
            if part.startswith("{")]


def measure(row, a):
    """{"windows": [...], "unit": ..., and extras} for one row."""
    py = ["-m"]
    if row.kind == "probe":
        out = run_job(probe_command(row, a), row.ranks,
                      row.launcher if row.ranks > 1 else None, a.timeout)
        found = probe_results(out)
        if row.args[0] == "bare" and len(found) > 1:  # independent processes: add them up
            return {**found[0], "windows": [sum(w) for w in zip(*(f["windows"] for f in found))]}
        return next(f for f in found if f["rank"] == 0)
    if row.kind == "demo":  # the demo's accuracy under a changed setting
        with tempfile.TemporaryDirectory() as model_dir:
            run_job([*py, "hvd_alexnet", "train", "--flagfile=configs/demo.flags",
                     f"--data_dir={a.demo_dir}", f"--model_dir={model_dir}", *row.args],
                    row.ranks, row.launcher, a.timeout)
            summary = metrics_log.read(os.path.join(model_dir, metrics_log.LOG_FILE))[-1]["data"]
        return {"unit": "top-1", "windows": [summary["top1"]], "top5": summary["top5"],
                "images_per_sec": summary["train_images_per_sec"]}
    if row.kind == "epoch_gap":
        return epoch_gaps(row, a)
    if row.kind == "fresh":  # the summary's images/s of several fresh processes
        runs = [_train(row, a, a.windows * FRESH_LENGTH) for _ in range(FRESH_PROCESSES)]
        return {"unit": "images/s", "windows": [r[-1]["data"]["train_images_per_sec"]
                                                for r in runs]}
    if row.kind == "long":  # the same stretches, one after another in one process
        length = a.windows * FRESH_LENGTH
        records = _train(row, a, length * FRESH_PROCESSES)
        return {**train_result(records, a), "windows": blocks(window_rates(records), length)}
    return train_result(_train(row, a), a)


def epoch_gaps(row, a, boundaries=2):
    """Each epoch boundary's time (from the last step of an epoch to the first of
    the next, less rank 0's checkpoint in between) in median steps, from a run
    of `boundaries` epochs and 2 steps, every step logged."""
    from hvd_alexnet.data import reader, schema
    data_dir = next(x.split("=", 1)[1] for x in row.args if x.startswith("--data_dir="))
    count = sum(reader.check_framing(f) for f in schema.list_shards(data_dir, schema.TRAIN))
    spe = reader.steps_per_epoch([count], row.batch)
    with tempfile.TemporaryDirectory() as model_dir:
        run_job(["-m", "hvd_alexnet", "train", f"--model_dir={model_dir}", *row.args,
                 f"--image_size={a.image_size}", f"--batch_size={row.batch}", "--log_every=1",
                 f"--max_steps={boundaries * spe + 2}", "--noeval", "--keep_checkpoints=1",
                 "--num_classes=1000"], row.ranks, row.launcher, a.timeout)
        records = metrics_log.read(os.path.join(model_dir, metrics_log.LOG_FILE))
    logged = {r["step"][1]: r for r in metrics_log.step_records(records) if "loss" in r["data"]}
    at = {s: float(r["timestamp"]) for s, r in logged.items()}
    ends = [k * spe for k in range(1, boundaries + 1)]
    steps = [at[s + 1] - at[s] for s in range(3, max(at)) if s + 1 in at and s not in ends]
    median = statistics.median(steps)
    return {"unit": "median steps", "steps_per_epoch": spe, "median_step_s": median,
            "windows": [(at[e + 1] - at[e] - logged[e + 1]["data"]["checkpoint_seconds"]) / median
                        for e in ends]}


def window_rates(records):
    """The images/s of a trainer run's progress windows, in order."""
    return [r["data"]["images_per_sec"] for r in metrics_log.step_records(records)
            if "images_per_sec" in r["data"]]  # not an elastic job's commit records


def blocks(rates, length):
    """The images/s of each run of `length` consecutive windows of equal images,
    as a summary over them would read it (images over seconds: the harmonic mean);
    only whole blocks, counted back from the last window."""
    whole = len(rates) // length * length
    rates = rates[len(rates) - whole:]
    return [statistics.harmonic_mean(rates[i:i + length]) for i in range(0, whole, length)]


def train_result(records, a):
    """The row's result from a trainer run's DLLogger records: its last windows."""
    summary = records[-1]["data"]
    return {"unit": "images/s", "windows": window_rates(records)[-a.windows:],
            "peak_rss_mb_per_rank": summary["peak_rss_mb_per_rank"]}


def train_command(row, a, model_dir, windows=None):
    """The trainer's flags for a row: `a.warmup` windows untimed (also in the
    summary's images/s), then `windows` (default a.windows) windows."""
    micro = next((int(x.split("=")[1]) for x in row.args if x.startswith("--accumulate_steps")), 1)
    steps = per_window(row, a)
    # The traced first step is untimed inside the first warm-up window; whole
    # windows after it, so that every timed window holds the same images.
    warmup = max(1, a.warmup * steps)
    return ["-m", "hvd_alexnet", "train", f"--model_dir={model_dir}", *row.args,
            f"--image_size={a.image_size}", f"--batch_size={row.batch // micro}",
            f"--max_steps={warmup + (windows or a.windows) * steps}", f"--log_every={steps}",
            f"--num_warmup_batches={warmup}", "--noeval", "--keep_checkpoints=1",
            "--num_classes=1000"]  # the same model for every row


def _train(row, a, windows=None):
    """The DLLogger records of one trainer run on this host."""
    with tempfile.TemporaryDirectory() as model_dir:
        run_job(train_command(row, a, model_dir, windows), row.ranks, row.launcher, a.timeout)
        return metrics_log.read(os.path.join(model_dir, metrics_log.LOG_FILE))


def targets(r):
    """(target, measured ratio, threshold) of issues 3 and 13, from the rows measured."""
    m = lambda k: r[k]["median"] if k in r else None
    spread = lambda k: (min(r[k]["windows"]), max(r[k]["windows"])) if k in r else (None, None)
    checks = [
        ("trainer overhead: synthetic 1 rank / bare step", m("synthetic_1"), m("bare"), 0.97),
        ("input: real data 1 rank / synthetic 1 rank", m("real_1"), m("synthetic_1"), 0.93),
        ("input: pipeline alone / real data 1 rank", m("pipeline"), m("real_1"), 5.0),
        ("2 ranks on this host: aggregate / 1 rank", m("real_2"), m("real_1"), 0.90),
        ("(not a target) 2 ranks / 2 bare steps side by side", m("real_2"), m("bare_2x1"),
         0.90),
        ("(not a target) 2 ranks with --accumulate_steps=2 / 1 rank", m("real_2_acc2"),
         m("real_1"), 0.90),
        ("all-reduce: Horovod / mpi4py (same bytes, mpirun)", m("allreduce_hvd_mpi"),
         m("allreduce_mpi4py"), 0.8),
        ("mixed precision: bf16 / fp32 at batch 64", m("bf16_b64"), m("fp32_b64"), 1.7),
        ("(not a target) XLA / without, synthetic 1 rank", m("xla_1"), m("synthetic_1"), 1.0),
        ("mixed precision: demo top-1 with bf16", m("demo_bf16"), 1.0, 0.95),
        ("summary images/s of 5 fresh processes: slowest / fastest", *spread("synthetic_1_fresh"),
         0.95),
        ("(not a target) the machine's drift: blocks of one process as long as a fresh "
         "one, slowest / fastest", *spread("synthetic_1_long"), 0.95),
        ("(not a target) --elastic / plain horovodrun --gloo, 2 ranks synthetic", m("elastic"),
         m("fusion_default"), 0.95),
        ("(not a target) --elastic, a commit every step / no commit", m("elastic_commit"),
         m("elastic"), 0.95),
        ("validation, 2 ranks: every rank its share / rank 0 alone", m("validation_all"),
         m("validation_root"), -0.6),
        ("an epoch boundary in median steps (data on disk)", m("epoch_gap"), 1.0, -2.0),
        ("start-up: bytes from the disk / the shards' bytes", m("startup_read"), 1.0, -0.01),
        ("the first start-up (no survey yet): bytes from the disk / the shards' bytes",
         m("startup_first_read"), 1.0, -0.01),
        ("start-up seconds: a start / a start as before issue 42 (shards not in the page "
         "cache)", m("startup_seconds"), m("startup_before_seconds"), -0.5),
    ]
    # A negative `want` is a ceiling: the ratio must be at most -want.
    return [(name, a / b if a is not None and b else None, want) for name, a, b, want in checks]


def met(ratio, want):
    return ratio <= -want if want < 0 else ratio >= want


def wanted(want):
    return f"<= {-want}" if want < 0 else f">= {want}"


def machine():
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    with open("/proc/meminfo") as f:
        mem_gib = int(f.readline().split()[1]) / (1 << 20)
    import horovod
    import tensorflow as tf
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "horovod": horovod.__version__, "os": platform.platform()}


def fmt(value):
    """2 decimals; 2 significant digits below 0.1 (a ratio of bytes: 0.0035)."""
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.1 else f"{value:.2g}"


def write(results, a, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files.write_json(os.path.join(out_dir, "benchmarks.json"), results)
    lines = ["# Benchmarks\n", f"Measured {results['date']} with `{results['command']}`.\n",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()) + ".\n",
             f"Image {a.image_size}x{a.image_size}, batch 32 per rank unless stated; each "
             f"figure is the median of {a.windows} timed windows of about {a.window_images} "
             f"images after {a.warmup} untimed warm-up window(s), with the spread (min-max).\n",
             "| row | median | spread | unit | peak RSS per rank (MB) |", "|---|---|---|---|---|"]
    for r in results["rows"].values():
        if "error" in r:
            lines.append(f"| {r['label']} | failed | | | |")
            continue
        rss = ", ".join(f"{m:.0f}" for m in r.get("peak_rss_mb_per_rank", []))
        lines.append(f"| {r['label']} | {fmt(r['median'])} | {fmt(min(r['windows']))}-"
                     f"{fmt(max(r['windows']))} | {r['unit']} | {rss} |")
    lines += ["", "## Targets (issues 3 and 13), ratios of medians from this run", "",
              "| target | ratio | wanted | met |", "|---|---|---|---|"]
    for name, ratio, want in results["targets"]:
        shown = f"{ratio:.3f}" if ratio is not None else "not measured"
        yes = "" if ratio is None else "yes" if met(ratio, want) else "**no**"
        lines.append(f"| {name} | {shown} | {wanted(want)} | {yes} |")
    lines += ["", "## Beyond this machine: a model, not a measurement", "",
              "`python -m hvd_alexnet plan` (ring all-reduce; see `--help` for the hardware "
              "figures):", "", plan.report(plan.defaults())]
    files.write_atomic(os.path.join(out_dir, "benchmarks.md"), "\n".join(lines) + "\n")


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.string("data_dir", "data/bench", "Benchmark TFRecords (data photos).")
d.string("out_dir", "docs/results", "Where benchmarks.json/.md go.")
d.string("demo_dir", "data/demo", "The demo dataset (make demo-data).")
d.string("startup_dir", None, "The start-up rows' TFRecords (default: --data_dir; make "
         "bench: data photos at ImageNet's 110 KB a record).")
d.integer("image_size", 227, "Image side.")
d.integer("warmup", 1, "Untimed windows first.")
d.integer("windows", 5, "Timed windows per row.")
d.integer("window_images", 160, "Images per window.")
d.string("only", "", "Comma-separated row keys (default: all).")
d.integer("timeout", 900, "Seconds per row.")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command.parse(FLAGS, argv, "bench", __doc__)
    a = FLAGS
    chosen = [r for r in rows(os.path.abspath(a.data_dir),
                              a.startup_dir and os.path.abspath(a.startup_dir))
              if not a.only or r.key in a.only.split(",")]
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "python -m hvd_alexnet bench " + " ".join(argv),
               "machine": machine(), "rows": {}}
    for row in chosen:
        print(f"bench: {row.label} ...", end=" ", flush=True)
        try:
            r = measure(row, a)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            print(f"FAILED\n{e}", flush=True)
            results["rows"][row.key] = {"label": row.label, "error": str(e)[-2000:]}
            continue
        r.update(label=row.label, median=statistics.median(r["windows"]))
        results["rows"][row.key] = r
        print(f"{fmt(r['median'])} {r['unit']} ({fmt(min(r['windows']))}-"
              f"{fmt(max(r['windows']))})", flush=True)
    results["targets"] = targets(results["rows"])
    write(results, a, a.out_dir)
    for name, ratio, want in results["targets"]:
        print(f"target {name}: {'n/a' if ratio is None else f'{ratio:.3f}'} "
              f"(want {wanted(want)})")
    failed = [k for k, r in results["rows"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
