"""`plan --hosts H`: which settings matter on a stated cluster, and by how much.

The step is simulated layer by layer, as Horovod runs it on GPU hosts:

- the backward pass produces each layer's gradients in reverse layer order,
  each layer taking 2 x its forward FLOPs (AlexNet's fully connected layers,
  95% of the bytes, are ready after the first 7% of the backward FLOPs);
- every --cycle_ms Horovod's thread fuses the gradients ready so far, up to
  the fusion threshold, into one buffer, and all-reduces the buffers one after
  another on the network (each pays the ring's latency terms);
- the step ends when the backward pass and the last buffer are both done.

With --accumulate_steps K the trainer sums K micro-batches' gradients
locally and all-reduces once after the last one: nothing overlaps. With
Horovod's hierarchical all-reduce a buffer is reduce-scattered within each
host, all-reduced between hosts (the host's GPUs share its network link), and
all-gathered within the host.

A model of a cluster nobody measured here; the input pipeline, the host's
PCIe and NCCL's own chunking are outside it.
"""

import math

from hvd_alexnet.tools import costs

BATCHES = (64, 128)  # per-GPU batches tried beside --batch
ACCUMULATE = (2, 4)
THRESHOLDS_MB = (0, 32, 64, 256)  # beside Horovod's 128


def backward_order(image_size, num_classes):
    """[(backward FLOPs, gradient parameters)] of AlexNet's layers in the order
    the backward pass produces them (last layer first)."""
    return [(2 * flops, params) for flops, params in
            reversed(costs.layer_costs(image_size, num_classes))]


def hierarchical_seconds(hosts, per_host, nbytes, intra, inter):
    """Reduce-scatter + all-gather within each host, all-reduce between hosts.
    `intra`, `inter`: (bytes/s, latency s)."""
    g, h = per_host, hosts
    within = 2 * (g - 1) / g * nbytes / intra[0] + 2 * (g - 1) * intra[1] if g > 1 else 0.0
    return within + costs.ring_seconds(h, nbytes, inter[0], inter[1])


def simulate(layers, fwd, comm, threshold, cycle, start_after=None):
    """Step seconds: `fwd` forward seconds, then `layers` [(backward s, bytes)]
    in backward order; comm(bytes) -> seconds of one buffer's all-reduce.
    start_after: all gradients ready at this time (accumulation), else as each
    layer's backward pass ends."""
    ready, t = [], 0.0
    for seconds, nbytes in layers:
        t += seconds
        ready.append((start_after if start_after is not None else t, nbytes))
    backward_end = t if start_after is None else start_after
    link_free, i = 0.0, 0
    while i < len(ready):
        tick = math.ceil(ready[i][0] / cycle) * cycle if cycle else ready[i][0]
        start = max(tick, link_free)
        size = 0
        while i < len(ready) and ready[i][0] <= start and (
                size == 0 or size + ready[i][1] <= threshold):
            size += ready[i][1]
            i += 1
        link_free = start + comm(size)
    return fwd + max(backward_end, link_free)


def settings(a):
    """[(setting, per-GPU images per step, step s, efficiency)] for a cluster of
    a.hosts x a.per_host GPUs (plan's hardware flags)."""
    n = a.hosts * a.per_host
    flops_per_sec = a.peak_tflops * 1e12 * a.utilisation
    per_image = backward_order(a.image_size, a.num_classes)
    fwd_per_image = sum(f for f, _ in per_image) / 2 / flops_per_sec
    intra = (a.intra_gbps * 1e9, a.intra_latency_us * 1e-6)
    inter = (a.inter_gbps * 1e9, a.inter_latency_us * 1e-6) if a.hosts > 1 else intra
    cycle = a.cycle_ms * 1e-3

    def row(name, batch=a.batch, grad=4, threshold_mb=128, hierarchical=False, k=1):
        layers = [(batch * f / flops_per_sec, p * grad) for f, p in per_image]
        fwd = batch * fwd_per_image
        if hierarchical:
            comm = lambda b: hierarchical_seconds(a.hosts, a.per_host, b, intra, inter)  # noqa
        else:
            comm = lambda b: costs.ring_seconds(n, b, *inter)  # noqa: E731
        compute = k * (fwd + sum(s for s, _ in layers))
        threshold = threshold_mb * (1 << 20)
        if k == 1:
            t = simulate(layers, fwd, comm, threshold, cycle)
        else:  # all K micro-batches first, then the buffers one after another
            t = simulate(layers, 0.0, comm, threshold, cycle, start_after=compute)
        return name, batch * k, t, compute / t

    rows = [row(f"baseline: fp32 gradients, batch {a.batch}, fusion 128 MB, one ring"),
            row("--fp16_allreduce", grad=2)]
    rows += [row(f"--batch_size {b} (if it fits in memory)", batch=b) for b in BATCHES]
    rows += [row(f"--accumulate_steps {k}", k=k) for k in ACCUMULATE]
    rows += [row(f"--fusion_threshold_mb {mb}" + (" (fusion off)" if not mb else ""),
                 threshold_mb=mb) for mb in THRESHOLDS_MB]
    if a.hosts > 1 and a.per_host > 1:
        rows.append(row("HOROVOD_HIERARCHICAL_ALLREDUCE=1", hierarchical=True))
        rows.append(row("--fp16_allreduce + hierarchical", grad=2, hierarchical=True))
    rows.append(row(f"--fp16_allreduce + --batch_size {BATCHES[-1]}", batch=BATCHES[-1], grad=2))
    return rows


def report(a):
    n = a.hosts * a.per_host
    rows = settings(a)
    base = rows[0]
    lines = [f"{a.hosts} hosts x {a.per_host} GPUs = {n}, {a.inter_gbps} GB/s + "
             f"{a.inter_latency_us} us between hosts, {a.intra_gbps} GB/s within; "
             f"{a.peak_tflops} TFLOPS x {a.utilisation}; Horovod's cycle {a.cycle_ms} ms. "
             f"Efficiency: the step's compute / the step (1.00: the all-reduce is hidden).", "",
             "| setting | images per GPU and step | step ms | images/s | efficiency | "
             "vs baseline |", "|---|---|---|---|---|---|"]
    for name, images, t, eff in rows:
        ips = n * images / t
        lines.append(f"| {name} | {images} | {t * 1e3:.1f} | {ips:,.0f} | {eff:.2f} | "
                     f"{ips / (n * base[1] / base[2]):.2f}x |")
    best = max(rows[1:], key=lambda r: r[3])
    lines += ["", f"Best efficiency: {best[0]} ({best[3]:.2f}, baseline {base[3]:.2f}). "
                  f"Larger batches (per GPU or accumulated) raise the global batch: the "
                  f"learning rate scales with it, and accuracy at a large global batch is "
                  f"not in this model."]
    return "\n".join(lines)
