"""`python -m hvd_alexnet plan`: images/s and scaling beyond this machine, on paper.

From the model itself (FLOPs per image, gradient bytes) and stated hardware
figures, predicts the step time on N accelerators with a ring all-reduce:

    compute  = batch x 3 x forward FLOPs / (peak x utilisation)   (backward = 2 x forward)
    all-reduce = 2 (N-1)/N x gradient bytes / bandwidth + 2 (N-1) x latency
    step     = forward + max(backward, all-reduce)   (Horovod overlaps the all-reduce
                                                       with the backward pass)

The bandwidth is the slowest link of the ring: within a host up to
--per_host accelerators, between hosts beyond. Every figure is a model, not a
measurement; the hardware defaults are a V100-class GPU with NVLink-less PCIe
and 100 Gb/s Ethernet, and are printed with the table.

With --hosts H: for H hosts x --per_host GPUs, the settings that matter
(fp16 gradients, per-GPU batch, --accumulate_steps, fusion threshold,
hierarchical all-reduce) and the predicted efficiency with each, from a
layer-by-layer simulation of the step (plan_cluster.py).

With --measured_images_per_sec (one rank's trainer, measured) and --link_mbit
(a link's measured rate) it predicts instead 2 hosts x 1 rank over that link,
fp32 and fp16 gradients: the prediction the scaling benchmark (make
bench-scaling) sets beside its measurements.
"""

import math
import sys

from absl import flags

from hvd_alexnet import command
from hvd_alexnet.errors import UsageError
from hvd_alexnet.tools.costs import model_costs, ring_seconds

REFERENCE = {"accelerators": 8, "images_per_sec": 1833.9, "batch": 32}


def step(n, batch, fwd_flops, nbytes, flops_per_sec, bandwidth, latency):
    """(forward s, backward s, all-reduce s, step s) of one training step."""
    fwd = batch * fwd_flops / flops_per_sec
    bwd = 2 * fwd
    comm = ring_seconds(n, nbytes, bandwidth, latency)
    return fwd, bwd, comm, fwd + max(bwd, comm)


def hiding_batch(comm, fwd_flops, flops_per_sec):
    """The smallest per-accelerator batch whose backward pass covers the all-reduce."""
    return max(1, math.ceil(comm * flops_per_sec / (2 * fwd_flops)))


def two_hosts(images_per_sec, batch, nbytes, link_bytes_per_sec, latency, overlap=True):
    """(step s, images/s) of 2 ranks on 2 hosts, one link between them, from one
    rank's measured rate alone: its step time split 1:2 into forward and backward.
    overlap=False: the all-reduce follows the backward pass instead of hiding
    behind it, as measured where a rank has a single CPU core for both (its
    TCP stack and Horovod's copies take the core the backward pass needs)."""
    t1 = batch / images_per_sec
    fwd, bwd = t1 / 3, 2 * t1 / 3
    comm = ring_seconds(2, nbytes, link_bytes_per_sec, latency)
    t = fwd + (max(bwd, comm) if overlap else bwd + comm)
    return t, 2 * batch / t


def measured_report(a, params):
    lines = [f"2 hosts x 1 rank, batch {a.batch}: one rank alone measured at "
             f"{a.measured_images_per_sec} images/s, link {a.link_mbit} Mbit/s + "
             f"{a.link_latency_us} us, the all-reduce "
             f"{'hidden behind' if a.overlap else 'after'} the backward pass.", "",
             "| gradients | all-reduce ms | step ms | images/s | efficiency |",
             "|---|---|---|---|---|"]
    for name, size in (("fp32", 4), ("fp16", 2)):
        bw = a.link_mbit * 1e6 / 8
        t, ips = two_hosts(a.measured_images_per_sec, a.batch, params * size, bw,
                           a.link_latency_us * 1e-6, a.overlap)
        comm = ring_seconds(2, params * size, bw, a.link_latency_us * 1e-6)
        lines.append(f"| {name} | {comm * 1e3:.0f} | {t * 1e3:.0f} | {ips:.1f} | "
                     f"{ips / (2 * a.measured_images_per_sec):.2f} |")
    return "\n".join(lines)


def table(a, fwd_flops, params):
    flops_per_sec = a.peak_tflops * 1e12 * a.utilisation
    out = []
    for n in a.accelerators:
        bw, lat = ((a.intra_gbps, a.intra_latency_us) if n <= a.per_host
                   else (a.inter_gbps, a.inter_latency_us))
        for grad_bytes in (4, 2):
            nbytes = params * grad_bytes
            fwd, bwd, comm, t = step(n, a.batch, fwd_flops, nbytes, flops_per_sec, bw * 1e9,
                                     lat * 1e-6)
            out.append({"accelerators": n, "gradients": "fp32" if grad_bytes == 4 else "fp16",
                        "compute_ms": (fwd + bwd) * 1e3, "allreduce_ms": comm * 1e3,
                        "images_per_sec": n * a.batch / t, "efficiency": (fwd + bwd) / t,
                        "limit": "all-reduce" if comm > bwd else "compute",
                        "hiding_batch": hiding_batch(comm, fwd_flops, flops_per_sec)})
    return out


def implied_bandwidth(fwd_flops, params, a):
    """The link bandwidth at which this model gives the reference result, assuming
    the reference was all-reduce bound (else None: compute alone is slower)."""
    n, batch = REFERENCE["accelerators"], REFERENCE["batch"]
    t = n * batch / REFERENCE["images_per_sec"]
    fwd = batch * fwd_flops / (a.peak_tflops * 1e12 * a.utilisation)
    comm = t - fwd - 2 * (n - 1) * a.intra_latency_us * 1e-6
    if comm <= 2 * fwd:
        return None
    return 2 * (n - 1) / n * params * 4 / comm


def report(a):
    """The model's table for the figures `a` (see FLAGS), as Markdown text."""
    if a.hosts:
        from hvd_alexnet.tools import plan_cluster
        return plan_cluster.report(a)
    fwd_flops, params = model_costs(a.image_size, a.num_classes)
    if a.measured_images_per_sec:
        if not a.link_mbit:
            raise UsageError("--measured_images_per_sec needs --link_mbit")
        return measured_report(a, params)
    lines = [
        f"AlexNet {a.image_size}x{a.image_size}, {a.num_classes} classes: {fwd_flops / 1e9:.2f} "
        f"GFLOP forward, {3 * fwd_flops / 1e9:.2f} GFLOP per trained image, {params:,} "
        f"parameters = {params * 4 / 1e6:.0f} MB of fp32 gradients.",
        f"Hardware (stated, not measured): {a.peak_tflops} TFLOPS x {a.utilisation}, "
        f"{a.per_host} per host, {a.intra_gbps} GB/s + {a.intra_latency_us} us within a host, "
        f"{a.inter_gbps} GB/s + {a.inter_latency_us} us between hosts; batch {a.batch} per "
        f"accelerator.", "",
        "| accelerators | gradients | compute ms | all-reduce ms | images/s | efficiency | "
        "limited by | batch that hides the all-reduce |",
        "|---|---|---|---|---|---|---|---|"]
    for r in table(a, fwd_flops, params):
        lines.append(f"| {r['accelerators']} | {r['gradients']} | {r['compute_ms']:.1f} | "
                     f"{r['allreduce_ms']:.1f} | {r['images_per_sec']:,.0f} | "
                     f"{r['efficiency']:.2f} | {r['limit']} | {r['hiding_batch']} |")
    bw, ref = implied_bandwidth(fwd_flops, params, a), REFERENCE
    why = (f"At the compute figure above, this model gives that result with a {bw / 1e9:.1f} "
           f"GB/s ring: the all-reduce term limits it, or a term outside this model does (the "
           f"input pipeline: JPEG decoding on the host's CPUs)." if bw else
           "Compute alone is slower than that at these figures: the compute term limits it.")
    lines += ["", f"Reference: {ref['images_per_sec']:,} images/s on {ref['accelerators']} "
                  f"accelerators (batch {ref['batch']}), "
                  f"{ref['images_per_sec'] / ref['accelerators']:.0f} per accelerator. {why}"]
    return "\n".join(lines)


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.integer("image_size", 227, "Image side.")
d.integer("num_classes", 1000, "Classes.")
d.integer("batch", 32, "Images per accelerator and step.")
d.list("accelerators", ["1", "8", "64", "512"], "Accelerator counts, one row each.")
d.float("peak_tflops", 15.7, "fp32 peak (V100: 15.7).")
d.float("utilisation", 0.5, "Of the peak, sustained.")
d.integer("per_host", 8, "Accelerators per host.")
d.float("intra_gbps", 10.0, "GB/s within a host.")
d.float("intra_latency_us", 10.0, "Latency within a host, in microseconds.")
d.float("inter_gbps", 12.5, "GB/s between hosts.")
d.float("inter_latency_us", 25.0, "Latency between hosts, in microseconds.")
d.float("measured_images_per_sec", None, "One rank's measured images/s: predict 2 hosts x 1 "
        "rank over --link_mbit instead of the table.")
d.float("link_mbit", None, "The link's measured Mbit/s (with --measured_images_per_sec).")
d.float("link_latency_us", 50.0, "The link's latency in microseconds.")
d.integer("hosts", 0, "A stated cluster of this many hosts x --per_host GPUs: the settings "
          "that matter there and the predicted efficiency with each (plan_cluster.py).")
d.float("cycle_ms", 1.0, "--hosts: Horovod's cycle time (1 ms on GPU hosts).")
d.bool("overlap", True, "The all-reduce overlaps the backward pass (GPU hosts); --nooverlap "
       "where a rank's one CPU core does both (make bench-scaling measured it so).")


def _values(defaults=False):
    accelerators = FLAGS["accelerators"].default if defaults else FLAGS.accelerators
    return command.values(FLAGS, defaults, accelerators=[int(n) for n in accelerators])


def defaults():
    """The hardware figures of the table when no flag is given."""
    return _values(defaults=True)


def main(argv=None):
    command.parse(FLAGS, sys.argv[1:] if argv is None else argv, "plan", __doc__)
    print(report(_values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
