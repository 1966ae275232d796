"""Faults injected for real into running jobs; every wait is bounded."""

import os
import signal
import time

import pytest

from conftest import SMALL, finish, output, start
from hvd_alexnet import metrics_log


def rank_pids(model_dir):
    """{rank: pid} of the Python ranks training into model_dir (from /proc)."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"python" in os.path.basename(argv[0]) and b"hvd_alexnet" in argv and \
                any(model_dir.encode() in a for a in argv):
            rank = env.get(b"HOROVOD_RANK", env.get(b"OMPI_COMM_WORLD_RANK"))
            if rank is not None:
                pids[int(rank)] = int(pid)
    return pids


def wait_for_step(model_dir, step, proc, timeout=120):
    """Blocks until rank 0 has logged training step `step` (or fails)."""
    path, deadline = os.path.join(model_dir, "dllogger.json"), time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)[-3000:]
        if os.path.exists(path) and any(
                isinstance(r.get("step"), list) and len(r["step"]) == 2 and r["step"][1] >= step
                for r in metrics_log.read(path)):
            return
        time.sleep(0.5)
    pytest.fail(f"step {step} not reached in {timeout}s\n{output(proc)[-3000:]}")


LONG = SMALL + ["--epochs=1000", "--noeval"]


@pytest.mark.parametrize("launcher", ["gloo", "mpi"])
def test_a_dead_rank_ends_the_whole_job(tiny_data, tmp_path, launcher):
    model_dir = str(tmp_path)
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *LONG],
                 np=2, launcher=launcher)
    try:
        wait_for_step(model_dir, 3, proc)
        pids = rank_pids(model_dir)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[1], signal.SIGKILL)
        killed = time.time()
        res = finish(proc, timeout=60)  # the whole job ends within 60 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert res.returncode != 0
    assert time.time() - killed < 60
    named = {"gloo": "Process name: 1", "mpi": "process rank 1"}[launcher]
    assert named in res.stdout, res.stdout[-3000:]
    time.sleep(1)
    assert rank_pids(model_dir) == {}  # no process of the job is left
