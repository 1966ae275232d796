"""affinity.py on this machine's real scheduler: a process and all its threads
moved onto the CPUs the kernel lists for a GPU's PCI device (a stand-in
sysfs tree: this machine has no GPU), and left alone where the launcher bound
it already or the machine has one socket. Each case runs in a child process,
with threads started before the binding, as Horovod's and TensorFlow's are."""

import os
import subprocess
import sys

import pytest

from helpers import ROOT
from hvd_alexnet import affinity

CHILD = """
import os, sys, threading
sys.path.insert(0, {root!r})
from hvd_alexnet import affinity
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(3)]
for t in threads:
    t.start()
said = affinity.bind_to_gpu("0000:3B:00.0", {devices!r})
masks = set()
for tid in os.listdir("/proc/self/task"):
    for line in open(f"/proc/self/task/{{tid}}/status"):
        if line.startswith("Cpus_allowed_list:"):
            masks.add(line.split()[1])
stop.set()
print(said)
print(sorted(masks))
"""


def run_child(tmp_path, cpulist, prefix=()):
    device = tmp_path / "devices" / "0000:3b:00.0"
    device.mkdir(parents=True, exist_ok=True)
    (device / "local_cpulist").write_text(cpulist + "\n")
    code = CHILD.format(root=ROOT, devices=str(tmp_path / "devices"))
    out = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    said, masks = out.stdout.splitlines()
    return said, masks


def test_cpu_lists_read_and_written_as_the_kernel_writes_them():
    assert affinity.parse_cpulist("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert affinity.format_cpulist({0, 1, 2, 3, 8, 10, 11}) == "0-3,8,10-11"
    assert affinity.gpu_cpus("0000:ff:00.0", "/nonexistent") is None


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to choose from")
def test_a_rank_and_all_its_threads_move_to_its_gpus_socket(tmp_path):
    last = max(os.sched_getaffinity(0))
    said, masks = run_child(tmp_path, str(last))
    assert said == f"GPU 0000:3B:00.0: CPUs {last} (its socket's)", said
    assert masks == f"['{last}']", masks  # every thread, those started before too


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to choose from")
def test_a_rank_the_launcher_bound_or_a_single_socket_is_left_alone(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    # bound by the launcher (taskset, as mpirun --bind-to core does) off the GPU's socket
    said, masks = run_child(tmp_path, str(cpus[-1]), prefix=("taskset", "-c", str(cpus[0])))
    assert said == "None" and masks == f"['{cpus[0]}']", (said, masks)
    # one socket: the kernel lists every CPU for the GPU
    said, masks = run_child(tmp_path, affinity.format_cpulist(cpus))
    assert said == "None" and masks == f"['{affinity.format_cpulist(cpus)}']", (said, masks)
