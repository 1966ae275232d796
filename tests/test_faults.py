"""Faults injected for real into running jobs; every wait is bounded."""

import os
import re
import shutil
import signal
import time

import pytest

from helpers import (
    FOLDER_ARGS,
    SMALL,
    checkpoints,
    corrupt_copy,
    finish,
    finish_after,
    lines,
    output,
    release,
    slowed_until_released,
    start,
    step_records,
    train_job,
    wait_for_step,
)
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
        res = finish(proc, timeout=60)  # the whole job ends within 60 s, or the test fails
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert res.returncode == 137, res.stdout[-3000:]  # the killed rank's: 128 + SIGKILL
    named = {"gloo": "Process name: 1", "mpi": "process rank 1"}[launcher]
    assert named in res.stdout, res.stdout[-3000:]
    time.sleep(1)
    assert rank_pids(model_dir) == {}  # no process of the job is left


EXACT = SMALL + ["--epochs=2", "--noeval", "--deterministic"]  # dropout 0.5 too; 10 steps an epoch


def test_preempted_job_checkpoints_the_step_every_rank_stops_at(tiny_data, tmp_path):
    """SIGTERM to horovodrun --gloo (the launcher matrix's Gloo x launcher cell):
    the ranks vote to stop in the next step, and read the vote (the host waits
    for a step's results) every --log_every=4 steps: every rank stops at the same
    step, rank 0 checkpoints it, exit status 75. The ranks hold after step 13
    until the signal comes (injected), so it lands there on any machine: they
    vote in step 14 and stop after step 16. That a resume from such a stop ends
    with an uninterrupted run's weights is the chaos run's ("SIGTERM to
    horovodrun" among its faults, the weights matched bit for bit)."""
    stopped = str(tmp_path / "stopped")
    args = ["train", f"--data_dir={tiny_data}", *EXACT, "--log_every=4"]
    proc = start([*args, f"--model_dir={stopped}"], np=2, launcher="gloo", faults=["hold=13"])
    try:
        wait_for_step(stopped, 12, proc)  # logged every 4 steps; the signal waits for 13
        os.kill(proc.pid, signal.SIGTERM)  # the launcher, as a scheduler would
        res = finish(proc, timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Both ranks stop at the same step and exit 75, and so does the launcher (the
    # project's horovodrun; Horovod's own said 1 or 0 when it was the one signalled).
    assert res.returncode == 75, res.stdout[-3000:]
    stops = re.findall(r"\[(\d)\]<stderr>:hvd_alexnet train: stopped at step (\d+)", res.stdout)
    assert sorted(r for r, _ in stops) == ["0", "1"], res.stdout[-3000:]
    assert {s for _, s in stops} == {"16"}  # the first step read after the hold's vote
    assert checkpoints(stopped)[-1] == 16
    assert rank_pids(stopped) == {}


def test_a_stalled_rank_ends_the_job_after_the_deadline(tiny_data, tmp_path):
    """Rank 1 hangs after step 3 (injected): rank 0 waits in the all-reduce.
    With a 10 s deadline the job ends, naming the rank and what it was doing."""
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *LONG,
                  "--stall_timeout_sec=10"], np=2, launcher="gloo",
                 faults=["stall=1:3"])
    res = finish(proc, timeout=150)
    assert res.returncode == 5, res.stdout[-3000:]
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
def test_a_second_signal_never_cuts_a_stop_short(settled):
    """A second SIGTERM (Kubernetes and Slurm send more than one; a launcher passes
    on each it gets) while the stop's checkpoint is being written changes nothing
    and is said once; after settle() (as the trainer does before exiting 75) it is
    ignored. Either way the status stays 75. (Before, the second signal killed
    the rank with 143 mid-save.)"""
    import subprocess
    import sys
    code = ("import os, signal, sys\nfrom hvd_alexnet.signals import StopRequest\n"
            "stop = StopRequest()\nos.kill(os.getpid(), signal.SIGTERM)\nassert stop.requested\n"
            + ("stop.settle()\n" if settled else "")
            + "os.kill(os.getpid(), signal.SIGTERM)\nos.kill(os.getpid(), signal.SIGUSR1)\n"
            "sys.exit(75)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), capture_output=True, text=True, timeout=120)
    assert res.returncode == 75, res.stderr[-2000:]
    assert res.stderr.count("a stop is in progress") == (0 if settled else 1), res.stderr


def wait_for_file(path, proc, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, output(proc)[-3000:]
        time.sleep(0.1)


def test_a_signal_during_start_up_ends_every_rank_with_75_and_the_folder_as_it_was(
        run_copy, tiny_data, tmp_path):
    """SIGTERM while rank 0 restores (it holds there, injected, until the signal)
    and rank 1 waits for it. Before, the handler was installed only with the
    training loop: the signal killed the ranks (143) and Slurm's script, which
    requeues on 75, did not requeue."""
    marker, listing = tmp_path / "restoring", sorted(os.listdir(run_copy + "/checkpoints"))
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={run_copy}", *FOLDER_ARGS],
                 np=2, launcher="gloo", faults=[f"start_hold={marker}"],
                 env={"HVD_ALEXNET_RESUME": "make train RUN_DIR=runs/demo-1 NP=2"})

    def signal_the_ranks():
        wait_for_file(marker, proc)
        for pid in rank_pids(run_copy).values():
            os.kill(pid, signal.SIGTERM)

    res = finish_after(proc, signal_the_ranks, timeout=120)
    assert res.returncode == 75, res.stdout[-3000:]
    said = lines(res.stdout, f"hvd_alexnet train: stopped on request before the first step; "
                             f"{run_copy} is as it was: run `make train RUN_DIR=runs/demo-1 "
                             f"NP=2` to resume")  # the exact command, as make and bin/ set it
    assert len(said) == 2, res.stdout[-3000:]
    assert sorted(os.listdir(run_copy + "/checkpoints")) == listing


def test_a_rank_0_stuck_in_start_up_meets_the_deadline(run_copy, tiny_data, tmp_path):
    """Rank 0 hangs while it restores (injected: it holds, and no signal comes),
    rank 1 waiting for it. The watchdog runs from the first collective on, so
    the job ends with status 5 after --stall_timeout_sec; before, it started
    with the training loop and nothing ended the job."""
    res = finish(start(["train", f"--data_dir={tiny_data}", f"--model_dir={run_copy}",
                        *FOLDER_ARGS, "--stall_timeout_sec=10"], np=2, launcher="gloo",
                       faults=[f"start_hold={tmp_path / 'restoring'}"]), timeout=150)
    assert res.returncode == 5, res.stdout[-3000:]
    assert "rank 0: no progress for" in res.stdout and "while restoring the newest checkpoint" \
        in res.stdout, res.stdout[-3000:]


def test_a_reader_that_ends_between_read_steps_while_another_rank_stops_does_not_hang(
        tiny_data, tmp_path):
    """Rank 0's reader ends after step 5 (injected), between the read steps 4
    and 8, while rank 1, signalled during its hold after step 4, votes to stop
    in step 5. Before, rank 0 took step 5's vote for a stop, ran no vote steps
    and waited in the failure gather while rank 1 waited in step 6: a hang
    until the watchdog. Now rank 0 votes on to step 8 and both exit 3."""
    model_dir = str(tmp_path / "run")
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *SMALL,
                  "--noeval", "--epochs=2", "--log_every=4", "--stall_timeout_sec=60"],
                 np=2, launcher="gloo", faults=["end=0:5", "hold=4:1"])
    res = finish_after(proc, lambda: (wait_for_step(model_dir, 4, proc), os.kill(
        rank_pids(model_dir)[1], signal.SIGTERM)), timeout=150)
    assert res.returncode == 3, res.stdout[-3000:]
    said = lines(res.stdout, "hvd_alexnet train: data error: rank 0: the reader ended after 5 "
                             "of 10 steps")
    assert len(said) == 2, res.stdout[-3000:]


def test_a_long_search_for_a_bad_record_keeps_the_other_ranks_alive(tiny_data, tmp_path):
    """Rank 1's JPEG does not decode; its search for the record takes 25 s
    (injected: a shard set large by construction) with a 10 s deadline. The
    search runs once every rank has stopped, and the others wait in rounds of
    tiny all-reduces that feed their watchdogs; before, they waited in one
    gather, starved, and their watchdog ended the job (5) without the line."""
    shard = corrupt_copy(tiny_data, tmp_path / "data")
    res = train_job(tmp_path / "data", str(tmp_path / "m"), "--noshuffle", "--log_every=1",
                    "--stall_timeout_sec=10", faults=["diagnose_delay=25"], timeout=240)
    line = f"hvd_alexnet train: data error: rank 1: {shard}: record 2: JPEG does not decode"
    assert res.returncode == 3 and len(lines(res.stdout, line)) == 2, res.stdout[-3000:]


def test_a_search_for_a_bad_record_past_its_deadline_ends_with_what_it_knows(tiny_data,
                                                                           tmp_path):
    """The same bad JPEG, a search that would take 1000 s (injected) and a 5 s
    --diagnose_timeout_sec: every rank exits 3 with TensorFlow's error and the
    search's end said, none waits for the search (before: no deadline)."""
    corrupt_copy(tiny_data, tmp_path / "data")
    res = train_job(tmp_path / "data", str(tmp_path / "m"), "--noshuffle", "--log_every=1",
                    "--diagnose_timeout_sec=5", faults=["diagnose_delay=1000"], timeout=240)
    said = lines(res.stdout, "hvd_alexnet train: data error: rank 1: ")
    assert res.returncode == 3 and len(said) == 2, res.stdout[-3000:]
    assert "the search of this rank's shards for the record was stopped after 5 s" in said[0]


@pytest.mark.parametrize("skip_corrupt", [False, True])
def test_a_shard_that_vanishes_mid_run_stops_every_rank_with_its_name(tiny_data, tmp_path,
                                                                     skip_corrupt):
    """Rank 1's only shard is deleted during epoch 1 (steps slowed until then);
    epoch 2 cannot open it. Before: a NotFoundError traceback on rank 1 alone
    (status 1), and with --skip_corrupt the error was skipped like a bad JPEG and
    the reader ran dry without a name."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    model_dir, shard = str(tmp_path / "m"), str(data / "train-00001-of-00002")
    flags = ["--skip_corrupt"] if skip_corrupt else []
    proc = start(["train", f"--data_dir={data}", f"--model_dir={model_dir}", *SMALL, "--noeval",
                  "--epochs=3", "--noshuffle", *flags], np=2, launcher="gloo",
                 faults=slowed_until_released(tmp_path, 0.5))
    res = finish_after(proc, lambda: (wait_for_step(model_dir, 2, proc), os.remove(shard),
                                      release(tmp_path)), timeout=180)
    assert res.returncode == 3, res.stdout[-3000:]
    said = lines(res.stdout, f"hvd_alexnet train: data error: rank 1: {shard}; No such file or "
                             f"directory: a data file vanished or cannot be read (NotFoundError)")
    assert len(said) == 2 and "Traceback" not in res.stdout, res.stdout[-3000:]


def test_a_record_with_a_bad_checksum_is_named_by_file_and_record(tiny_data, tmp_path):
    """A flipped bit in the JPEG of rank 1's record 3: the framing check at the
    start passes (the lengths are intact), the read fails its checksum. Before:
    'corrupted record at BYTE', naming no file."""
    from hvd_alexnet.data import reader
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    shard = str(data / "train-00001-of-00002")
    at = list(reader.record_offsets(shard))[3]
    with open(shard, "r+b") as f:
        f.seek(at + 12 + 200)  # past the header and the length's checksum: the payload
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    res = train_job(data, str(tmp_path / "m"), "--noshuffle", "--log_every=1")
    line = (f"hvd_alexnet train: data error: rank 1: {shard}: record 3 (byte {at}): its checksum "
            f"does not match: the file is damaged")
    assert res.returncode == 3 and len(lines(res.stdout, line)) == 2, res.stdout[-3000:]


def test_one_stop_request_for_the_whole_process():
    """An elastic job makes a new training loop after each change of hosts; a stop
    asked before it must still be pending in the new one (each loop used to
    install a handler of its own, and dropped it)."""
    import subprocess
    import sys
    code = ("import os, signal\nfrom hvd_alexnet import signals\nfrom hvd_alexnet.loop import "
            "Loop\nfirst = signals.install()\nos.kill(os.getpid(), signal.SIGTERM)\n"
            "import dataclasses\nstop = [f for f in dataclasses.fields(Loop) if f.name == "
            "'stop'][0].default_factory()\nassert stop is first and stop.requested\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
