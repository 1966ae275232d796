"""`make bench-scaling` (as root): data-parallel training between two hosts over a
link shaped to several rates, measured beside the planner's prediction.

Two hosts are two network namespaces joined by a veth pair (tools/netns.py), one
rank on each, launched by mpirun over ssh with MPI pinned to that link. The two
hosts share this machine's cores, so each rank computes with one thread
(--threads=1): a host of one core. At each rate (tc's token bucket on both
ends) it measures: what one TCP stream gets through the link; the trainer's
images/s on synthetic data with fp32 gradients and with --fp16_allreduce;
Horovod's all-reduce of the gradients and a plain mpi4py Allreduce of the same
bytes (GB/s of buffer reduced). The compute rate the planner starts from
(`plan.two_hosts`) is one rank's bare step with one thread, measured as two
processes side by side, one on each host (no Horovod), as the ranks run. The
planner predicts each row twice: as for GPU hosts (the all-reduce at the
stream's rate, hidden behind the backward pass) and as measured here (at
Horovod's measured all-reduce rate, after the backward pass: a rank's one core
does both). Results: docs/results/scaling.json and .md.

The namespaces, and with them the qdiscs, are removed whatever happens
(an error, Ctrl-C, SIGTERM).
"""

import datetime
import os
import shutil
import signal
import statistics
import sys
import tempfile

from absl import flags

from hvd_alexnet import command, files, metrics_log
from hvd_alexnet.errors import UsageError
from hvd_alexnet.tools import bench, costs, netns, plan
from hvd_alexnet.tools.launch import ROOT, job_env

BATCH = 32


def unavailable():
    """Why the benchmark cannot run here, or ''."""
    return netns.unavailable() or ("" if shutil.which("tc") else "needs tc (iproute2)")


def two_host_command(python_args):
    """`python ARGS` as 2 ranks, one on each host, by mpirun from host1."""
    return ["mpirun", "--allow-run-as-root", "--tag-output", "-np", "2", "-H",
            ",".join(f"{h}:1" for h in netns.HOSTS), "-bind-to", "none",
            "-mca", "btl_tcp_if_include", netns.IFACE, "-mca", "oob_tcp_if_include", netns.IFACE,
            "-mca", "plm_rsh_args", f"-p {netns.SSH_PORT}",
            "-x", "PATH", "-x", "PYTHONPATH", "-x", "TF_CPP_MIN_LOG_LEVEL",
            sys.executable, *python_args]


def run_on_hosts(hosts, cmd, a):
    result = hosts.run_on(0, cmd, timeout=a.timeout, env=job_env(), cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return result.stdout


def train(hosts, a, extra=()):
    """Median images/s of the 2-host trainer's timed windows (synthetic data)."""
    row = bench.Row("scaling", "", "train", 2, ["--synthetic", "--threads=1", *extra],
                    batch=BATCH)
    with tempfile.TemporaryDirectory() as model_dir:
        run_on_hosts(hosts, two_host_command(bench.train_command(row, a, model_dir)), a)
        records = metrics_log.read(os.path.join(model_dir, metrics_log.LOG_FILE))
    return statistics.median(bench.train_result(records, a)["windows"])


def probe(hosts, a, args):
    """Each process's median: a probe run as one process on each host."""
    row = bench.Row("scaling", "", "probe", 2, args, batch=BATCH)
    found = bench.probe_results(run_on_hosts(hosts, two_host_command(bench.probe_command(row, a)),
                                             a))
    return [statistics.median(f["windows"]) for f in sorted(found, key=lambda f: f["rank"])]


def predicted(compute, link_bytes_per_sec, params, a, overlap):
    """The planner's images/s for fp32 and fp16 gradients over a link."""
    return {name: plan.two_hosts(compute, BATCH, params * size, link_bytes_per_sec,
                                 a.latency_us * 1e-6, overlap)[1]
            for name, size in (("fp32", 4), ("fp16", 2))}


def measure(hosts, a, params):
    compute = statistics.mean(probe(hosts, a, ["bare", "--threads=1"]))
    results = {"compute_1_rank": compute, "rates": []}
    print(f"scaling: one rank's bare step, 1 thread, beside the other's: {compute:.2f} "
          f"images/s", flush=True)
    for mbit in a.rates:
        hosts.shape(mbit)
        r = {"shaped_mbit": mbit, "link_mbit": hosts.stream_mbit(2.0)}
        r["fp32"] = train(hosts, a)
        r["fp16"] = train(hosts, a, ["--fp16_allreduce"])
        r["hvd_gbs"] = probe(hosts, a, ["allreduce"])[0]
        r["mpi4py_gbs"] = probe(hosts, a, ["mpi_allreduce"])[0]
        # As planned for GPU hosts: the all-reduce hidden behind the backward pass, at
        # the link's rate. As measured here: after it, at Horovod's all-reduce rate.
        r["predicted"] = predicted(compute, r["link_mbit"] * 1e6 / 8, params, a, True)
        r["predicted_from_allreduce"] = predicted(compute, r["hvd_gbs"] * 1e9, params, a,
                                                  False)
        results["rates"].append(r)
        p, q = r["predicted"], r["predicted_from_allreduce"]
        print(f"scaling: {mbit} Mbit/s (stream {r['link_mbit']:.0f}): fp32 {r['fp32']:.2f} "
              f"(predicted {p['fp32']:.2f}, from the all-reduce {q['fp32']:.2f}), fp16 "
              f"{r['fp16']:.2f} ({p['fp16']:.2f}, {q['fp16']:.2f}) images/s; all-reduce "
              f"Horovod {r['hvd_gbs']:.3f}, mpi4py {r['mpi4py_gbs']:.3f} GB/s", flush=True)
    hosts.unshape()
    return results


def write(results, a, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files.write_json(os.path.join(out_dir, "scaling.json"), results)
    lines = ["# Scaling between two hosts over a shaped link\n",
             f"Measured {results['date']} with `{results['command']}`.\n",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in results["machine"].items()) + ".\n",
             f"Two network namespaces, one rank each with one thread, mpirun over the veth "
             f"pair shaped with tc's tbf; AlexNet {a.image_size}x{a.image_size}, synthetic data, "
             f"batch {BATCH} per rank; each figure the median of {a.windows} timed windows. "
             f"The planner's compute figure (`plan.two_hosts`, link latency {a.latency_us} us): "
             f"one rank's bare step with one thread beside the other's, "
             f"{results['compute_1_rank']:.2f} images/s. Predicted images/s (and predicted / "
             f"measured): *overlap* at the stream's rate, the all-reduce hidden behind the "
             f"backward pass (the plan for GPU hosts); *serial* at Horovod's measured "
             f"all-reduce rate, after the backward pass (one core per rank).\n",
             "| shaped Mbit/s | stream Mbit/s | fp32 images/s | predicted: overlap | "
             "serial | fp16 images/s | predicted: overlap | serial | fp16 / fp32 | "
             "Horovod GB/s | mpi4py GB/s | Horovod / mpi4py |", "|" + "---|" * 12]
    for r in results["rates"]:
        p, q = r["predicted"], r["predicted_from_allreduce"]
        cell = lambda x, m: f"{x:.2f} ({x / m:.2f})"
        lines.append(f"| {r['shaped_mbit']} | {r['link_mbit']:.0f} | {r['fp32']:.2f} | "
                     f"{cell(p['fp32'], r['fp32'])} | {cell(q['fp32'], r['fp32'])} | "
                     f"{r['fp16']:.2f} | {cell(p['fp16'], r['fp16'])} | "
                     f"{cell(q['fp16'], r['fp16'])} | {r['fp16'] / r['fp32']:.2f} | "
                     f"{r['hvd_gbs']:.3f} | {r['mpi4py_gbs']:.3f} | "
                     f"{r['hvd_gbs'] / r['mpi4py_gbs']:.2f} |")
    files.write_atomic(os.path.join(out_dir, "scaling.md"), "\n".join(lines) + "\n")


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.list("rates", ["500", "1000", "2000", "5000"], "Link rates in Mbit/s, one row each.")
d.string("out_dir", "docs/results", "Where scaling.json/.md go.")
d.integer("image_size", 227, "Image side.")
d.integer("warmup", 1, "Untimed windows first.")
d.integer("windows", 5, "Timed windows per measurement.")
d.integer("window_images", 64, "Images per window (all ranks).")
d.float("latency_us", 50.0, "The link latency the prediction assumes, in microseconds.")
d.integer("timeout", 900, "Seconds per measurement.")


def _stop(signum, frame):
    raise SystemExit(f"scaling: {signal.Signals(signum).name}: removing the hosts")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    command.parse(FLAGS, argv, "tools.scaling", __doc__)
    a = command.values(FLAGS, rates=[int(r) for r in FLAGS.rates])
    why = unavailable()
    if why:
        raise UsageError(f"bench-scaling cannot run here: {why}")
    signal.signal(signal.SIGTERM, _stop)
    _, params = costs.model_costs(a.image_size, 1000)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": "make bench-scaling " + " ".join(argv), "machine": bench.machine()}
    with tempfile.TemporaryDirectory() as workdir, netns.TwoHosts(workdir) as hosts:
        results.update(measure(hosts, a, params))
    write(results, a, a.out_dir)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UsageError as e:
        sys.exit(f"bench-scaling: error: {e}")
