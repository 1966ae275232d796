"""Each rank's threads on the CPUs of its GPU's socket (NUMA node): the input
pipeline decodes into memory the GPU reads over its own PCIe root, and the
ranks of two sockets do not share cores. The kernel says which CPUs are near a
PCI device (/sys/bus/pci/devices/<bus id>/local_cpulist, what `nvidia-smi topo
-m` shows as a GPU's CPU affinity). A rank the launcher bound already (mpirun's
--bind-to, srun's --cpu-bind) keeps its binding.

Knows nothing of Horovod or TensorFlow: distributed.init calls it with the PCI
bus id of the GPU the rank pinned.
"""

import os

PCI_DEVICES = "/sys/bus/pci/devices"


def parse_cpulist(text):
    """{0, 1, 2, 3, 8} from the kernel's '0-3,8'."""
    cpus = set()
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def format_cpulist(cpus):
    """'0-3,8' from {0, 1, 2, 3, 8}."""
    runs, cpus = [], sorted(cpus)
    for cpu in cpus:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def gpu_cpus(bus_id, devices=PCI_DEVICES):
    """The CPUs near the PCI device `bus_id` ('0000:3b:00.0'), or None where the
    kernel does not say (no such device, a machine of one node lists them all)."""
    try:
        with open(os.path.join(devices, bus_id.lower(), "local_cpulist")) as f:
            return parse_cpulist(f.read()) or None
    except (OSError, ValueError):
        return None


def bind(cpus, pid=None):
    """Every thread of the process (this one by default) onto `cpus` (threads
    started before, Horovod's and TensorFlow's, as well as those started after)."""
    pid = pid or os.getpid()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            continue  # a thread that ended meanwhile


def bind_to_gpu(bus_id, devices=PCI_DEVICES):
    """Binds this process to the CPUs of its GPU's socket, where that narrows what
    it may use; returns a line saying what it did, or None if it did nothing
    (the kernel names no CPUs, or the launcher bound the rank already, within
    or outside them)."""
    near = gpu_cpus(bus_id, devices) if bus_id else None
    allowed = os.sched_getaffinity(0)
    if not near or allowed <= near or not near & allowed:
        return None
    bind(near & allowed)
    return f"GPU {bus_id}: CPUs {format_cpulist(near & allowed)} (its socket's)"
