"""Faults injected for real into running jobs; every wait is bounded."""

import os
import re
import signal
import time

import pytest

from helpers import (SMALL, checkpoints, final_weights, finish, output, start, step_records,
                     wait_for_step)
from hvd_alexnet import metrics_log
from hvd_alexnet.tools.chaos import rank_pids


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


EXACT = SMALL + ["--epochs=2", "--noeval", "--deterministic"]  # dropout 0.5 too; 10 steps an epoch


def test_preempted_job_checkpoints_and_resumes_to_the_same_weights(tiny_data, tmp_path):
    """SIGTERM to horovodrun: the ranks vote to stop in the next step, and read
    the vote (the host waits for a step's results) every --log_every=4 steps:
    every rank stops at the same step, rank 0 checkpoints it, exit status 75;
    the restarted job ends with an uninterrupted run's weights. The ranks hold
    after step 13 until the signal comes (injected), so it lands there on any
    machine: they vote in step 14 and stop after step 16."""
    import numpy as np
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    args = ["train", f"--data_dir={tiny_data}", *EXACT, "--log_every=4"]
    proc = start([*args, f"--model_dir={stopped}"], np=2, launcher="gloo", faults=["hold=13"])
    try:
        wait_for_step(stopped, 12, proc)  # logged every 4 steps; the signal waits for 13
        os.kill(proc.pid, signal.SIGTERM)  # the launcher, as a scheduler would
        res = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Both ranks stop at the same step and exit 75. horovodrun's own status, when
    # it is the one signalled, is its own: seen non-zero ("Exit code: 75") and 0.
    stops = re.findall(r"\[(\d)\]<stderr>:hvd_alexnet train: stopped at step (\d+)", res.stdout)
    assert sorted(r for r, _ in stops) == ["0", "1"], res.stdout[-3000:]
    assert len({s for _, s in stops}) == 1
    last = checkpoints(stopped)[-1]
    assert last == int(stops[0][1]) and 13 <= last < 20  # a mid-run checkpoint of that step
    assert last == 16  # the first step read after the hold's vote
    res = finish(start([*args, f"--model_dir={stopped}"], np=2, launcher="gloo"), 240)
    assert res.returncode == 0 and f"at step {last}" in res.stdout, res.stdout[-3000:]
    res = finish(start([*args, f"--model_dir={straight}"], np=2, launcher="gloo"), 240)
    assert res.returncode == 0, res.stdout[-3000:]
    for a, b in zip(final_weights(stopped), final_weights(straight)):
        np.testing.assert_array_equal(a, b)


def test_sigint_to_the_ranks_under_mpirun(tiny_data, tmp_path):
    model_dir = str(tmp_path)
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *LONG],
                 np=2, launcher="mpi")
    try:
        wait_for_step(model_dir, 3, proc)
        for pid in rank_pids(model_dir).values():
            os.kill(pid, signal.SIGINT)
        res = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert res.returncode != 0 and "Exit code:    75" in res.stdout, res.stdout[-3000:]
    records = metrics_log.read(os.path.join(model_dir, "dllogger.json"))
    stop_step = [r["step"][1] for r in records if r.get("data", {}).get("preempted")]
    assert len(stop_step) == 1 and checkpoints(model_dir)[-1] == stop_step[0]
    assert rank_pids(model_dir) == {}


def test_a_stalled_rank_ends_the_job_after_the_deadline(tiny_data, tmp_path):
    """Rank 1 hangs after step 3 (injected): rank 0 waits in the all-reduce.
    With a 10 s deadline the job ends, naming the rank and what it was doing."""
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *LONG,
                  "--stall_timeout_sec=10"], np=2, launcher="gloo",
                 faults=["stall=1:3"])
    res = finish(proc, timeout=150)
    assert res.returncode != 0
    assert "rank 1: no progress for" in res.stdout and "reading the next batch" in res.stdout, \
        res.stdout[-3000:]
    assert rank_pids(str(tmp_path)) == {}


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tiny_data, tmp_path):
    """SIGKILL to the (only) rank while TensorFlow writes checkpoint 10: checkpoint
    5 stays the one recorded, it restores, and the restart resumes from it."""
    model_dir = str(tmp_path)
    ckpt_dir = os.path.join(model_dir, "checkpoints")
    # 131x131: a 27M-parameter model, ~0.2 GB per save, a window the poll below hits.
    args = ["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *SMALL,
            "--image_size=131", "--max_steps=15", "--checkpoint_every_steps=5", "--noeval"]
    proc = start(args)
    try:
        deadline = time.time() + 180
        while not os.path.isdir(os.path.join(ckpt_dir, "ckpt-10_temp")):
            assert proc.poll() is None and time.time() < deadline, output(proc)[-3000:]
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    import tensorflow as tf
    assert os.path.isdir(os.path.join(ckpt_dir, "ckpt-10_temp"))  # killed mid-save
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-5")
    res = finish(start(args), timeout=240)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "ckpt-10_temp: an incomplete save" in res.stdout, res.stdout[-3000:]
    assert "resumed from" in res.stdout and "ckpt-5 at step 5" in res.stdout, res.stdout[-3000:]
    assert checkpoints(model_dir) == [5, 10, 15]
    assert not any(f.endswith("_temp") for f in os.listdir(ckpt_dir))
    steps = [r["step"][1] for r in step_records(model_dir)]
    assert steps[-10:] == list(range(6, 16))  # the restart logged steps 6..15 once each


@pytest.mark.parametrize("settled", [False, True])
def test_a_second_signal_stops_at_once_unless_the_stop_is_settled(settled):
    """Before the stop's checkpoint a second SIGTERM kills the rank at once; after it
    (settle(), as the trainer does before exiting 75) a launcher's SIGTERM, sent
    because another rank already exited 75, leaves the status at 75."""
    import subprocess
    import sys
    code = ("import os, signal, sys\nfrom hvd_alexnet.loop import StopRequest\n"
            "stop = StopRequest()\nos.kill(os.getpid(), signal.SIGTERM)\nassert stop.requested\n"
            + ("stop.settle()\n" if settled else "")
            + "os.kill(os.getpid(), signal.SIGTERM)\nsys.exit(75)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), capture_output=True, text=True, timeout=120)
    assert res.returncode == (75 if settled else -signal.SIGTERM), res.stderr[-2000:]
