"""The model folder as one run's own, with real ranks: one job at a time holds
it (a second is refused, a dead job's lock taken over), it refuses flags its
checkpoints do not fit and says what a resume changes, its JSON files are read
with one line when garbled, and a full disk stops every rank with the previous
checkpoint whole. Every wait is bounded."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from helpers import (
    FOLDER_ARGS,
    checkpoints,
    finish_after,
    launch,
    lines,
    mount_tmpfs,
    output,
    release,
    require,
    slowed_until_released,
    start,
    wait_for_step,
    wait_until,
)
from helpers import train_job as train
from hvd_alexnet.tools.chaos import rank_pids

ARGS = FOLDER_ARGS


@pytest.mark.parametrize("flag,named", [
    ("--image_size=99", "--image_size: the run in {} was started with 67, now 99"),
    ("--precision=fp16", "--precision=fp16 or --fp16_allreduce (a float16 loss scale in the "
                         "optimizer): the run in {} was started with False, now True"),
    ("--fp16_allreduce", "the run in {} was started with False, now True")])
def test_a_flag_the_checkpoints_do_not_fit_is_refused_by_name(run_copy, tiny_data, flag, named):
    """Before: a ValueError traceback (another image size), an AssertionError
    (the float16 loss scale). Rank 0 reads the record; rank 1 says the same."""
    res = train(tiny_data, run_copy, flag)
    assert res.returncode == 2, res.stdout[-3000:]
    said = lines(res.stdout, named.format(run_copy))
    assert len(said) == 2 and "hvd_alexnet train: error: " in said[0], res.stdout[-3000:]
    assert "Traceback" not in res.stdout and checkpoints(run_copy) == [4, 8]


def test_other_data_resumes_with_a_line_or_is_refused_past_its_end(run_copy, tiny_data,
                                                                   tmp_path):
    """One train shard of two (40 examples) on 1 rank: the checkpoint's 64
    examples are step 16 at a global batch of 4. With 2 epochs (20 steps) it
    resumes and says what changed; with 1 (10 steps) the run, stopped at 8 of
    its 20 steps, would have exited 0 untrained: refused instead. Once it has
    finished, a start with more steps says that it trains the finished run on
    (a smoke test's folder, then the long run), and a start with no more says
    that it has nothing to train (before: silence, and 0 steps)."""
    half = tmp_path / "half"
    shutil.copytree(tiny_data, half, ignore=shutil.ignore_patterns("raw", "train-00001*"))
    again = str(tmp_path / "again")
    shutil.copytree(run_copy, again)
    res = train(half, again, "--epochs=1", np=1)
    assert res.returncode == 2, res.stdout[-3000:]
    assert (f"error: the newest checkpoint has seen 64 examples: step 16, past the 10 steps of "
            f"this run with ranks 2 -> 1, global batch 8 -> 4, --data_dir {tiny_data} -> "
            f"{half}, training examples 80 -> 40, total steps 20 -> 10, --epochs 2 -> 1. "
            f"Resume with the settings") in res.stdout, res.stdout[-3000:]
    res = train(half, run_copy, np=1)
    assert res.returncode == 0, res.stdout[-3000:]
    (said,) = lines(res.stdout, "resuming with other settings than the run's last start:")
    assert (f"ranks 2 -> 1, global batch 8 -> 4, --data_dir {tiny_data} -> {half}, training "
            f"examples 80 -> 40; it goes on at step 16 of 20 (epoch 2 of 2), at a learning "
            f"rate of ") in said, said
    res = train(half, run_copy, "--epochs=3", "--max_steps=21", np=1)
    assert res.returncode == 0, res.stdout[-3000:]
    (said,) = lines(res.stdout, f"the run in {run_copy} finished at step 20; this start "
                                f"trains it on to step 21: to train afresh instead, use "
                                f"another --model_dir")
    kept = checkpoints(run_copy)
    assert kept[-1] == 21, kept
    res = train(half, run_copy, "--epochs=3", "--max_steps=21", np=1)
    assert res.returncode == 0, res.stdout[-3000:]
    (said,) = lines(res.stdout, f"the run in {run_copy} finished at step 21, at or past this "
                                f"start's 21 steps: nothing to train; raise --epochs or "
                                f"--max_steps")
    assert checkpoints(run_copy) == kept
    assert not lines(res.stdout, "resuming with other settings"), res.stdout[-3000:]


def test_a_second_job_on_a_model_folder_is_refused_and_a_dead_jobs_lock_taken_over(
        tiny_data, tmp_path):
    """Job A holds the folder (its steps slowed until released); job B is
    refused, naming A; A goes on and ends. Then job C is killed outright (its
    lock stays) and job D takes the lock over and resumes."""
    model_dir = str(tmp_path / "run")
    slow = slowed_until_released(tmp_path, 0.5)
    first = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *ARGS],
                  np=2, launcher="gloo", faults=slow)
    holder = {}

    def second_job():
        wait_for_step(model_dir, 4, first)
        holder.update(json.load(open(os.path.join(model_dir, "job.lock"))))
        assert holder["pid"] == rank_pids(model_dir)[0]
        res = train(tiny_data, model_dir, np=1)
        assert res.returncode == 2, res.stdout[-3000:]
        assert (f"--model_dir {model_dir} is in use by another job: host {holder['host']}, pid "
                f"{holder['pid']}, started {holder['started']}") in res.stdout, res.stdout[-3000:]
        release(tmp_path)

    res = finish_after(first, second_job, timeout=240)
    assert res.returncode == 0, res.stdout[-3000:]
    assert not os.path.exists(os.path.join(model_dir, "job.lock"))  # released at the end

    model_dir = str(tmp_path / "second")
    os.remove(tmp_path / "release")
    third = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *ARGS],
                  np=2, launcher="gloo", faults=slow)
    ranks = {}

    def kill_outright():  # as the OOM killer would: no clean-up
        wait_for_step(model_dir, 8, third)  # after the checkpoint of step 4
        ranks.update(rank_pids(model_dir))
        for pid in ranks.values():
            os.kill(pid, signal.SIGKILL)

    finish_after(third, kill_outright, timeout=60)
    dead = ranks[0]
    assert json.load(open(os.path.join(model_dir, "job.lock")))["pid"] == dead
    res = train(tiny_data, model_dir)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "job.lock: left by host" in res.stdout and f"pid {dead}," in res.stdout
    (took,) = lines(res.stdout, "taking over")
    assert "its process is no longer running" in took, took
    assert "resumed from" in res.stdout, res.stdout[-3000:]


def paused(pid):
    """Whether process `pid` is stopped (by SIGSTOP)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] == "T"


def test_one_slurm_allocation_runs_one_job_per_folder_and_a_paused_holder_loses_it(
        tiny_data, tmp_path):
    """Two plain processes in one Slurm allocation (one SLURM_JOB_ID, no
    launcher's own id): the second is refused while the first runs (before, it
    took the lock over as "this same job's"). Then the holder plays another host
    (a UTS namespace of its own, so root: required where the suite must run it)
    and is paused (SIGSTOP, which it sends itself after a step, so that the pause
    falls between two saves by construction: a pause in the middle of a save
    would finish that save on resuming, as any check-then-write does) for longer
    than a watch of its lock: the next job sees no refresh and takes the folder
    over; the holder, resumed, checks its lock before its next save, says it lost
    it and exits 2 without writing."""
    require(os.geteuid() != 0 and "a UTS namespace needs root", "the paused-holder test")
    plain = ["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path / 'plain'}", *ARGS]
    first = start(plain, env={"SLURM_JOB_ID": "4242"}, faults=slowed_until_released(tmp_path, 0.5))

    def second():
        wait_for_step(str(tmp_path / "plain"), 4, first)
        res = launch(plain, env={"SLURM_JOB_ID": "4242"})
        assert res.returncode == 2 and "is in use by another job" in res.stdout, \
            res.stdout[-3000:]
        os.kill(first.pid, signal.SIGTERM)

    assert finish_after(first, second, timeout=240).returncode == 75
    model_dir = str(tmp_path / "run")
    flags = ["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *ARGS]
    env = {"SLURM_JOB_ID": "4242", "HVD_ALEXNET_LOCK_REFRESH": "1"}  # a 2.5 s watch
    pause = tmp_path / "pause"
    slow = (*slowed_until_released(tmp_path, 0.5), f"pause={pause}")
    elsewhere = ["unshare", "--uts", "sh", "-c", 'hostname hvd-alexnet-other && exec "$@"', "sh"]
    holder = start(flags, env=env, faults=slow, prefix=elsewhere)
    hold, kept = str(tmp_path / "restoring"), []

    def act():
        wait_for_step(model_dir, 4, holder)
        # The same allocation on another host than the holder's: refused, the
        # holder's refreshes seen while its lock is watched.
        res = launch(flags, env=env)
        assert res.returncode == 2 and "is in use by another job" in res.stdout, \
            res.stdout[-3000:]
        pause.touch()
        while not paused(holder.pid):
            assert holder.poll() is None, output(holder)[-3000:]
            time.sleep(0.1)
        taker = start(flags, env=env, faults=[f"start_hold={hold}"])

        def resume_the_holder():  # once the taker holds the folder (in its restore)
            deadline = time.time() + 120
            while not os.path.exists(hold):
                assert taker.poll() is None and time.time() < deadline, output(taker)[-3000:]
                time.sleep(0.2)
            kept.extend(checkpoints(model_dir))
            os.kill(holder.pid, signal.SIGCONT)
            release(tmp_path)
            holder.wait(timeout=120)
            os.kill(taker.pid, signal.SIGTERM)

        res = finish_after(taker, resume_the_holder, timeout=240)
        assert res.returncode == 75, res.stdout[-3000:]
        (took,) = lines(res.stdout, "taking over")
        assert "hvd-alexnet-other" in took and "it was not refreshed in" in took, took

    res = finish_after(holder, act, timeout=300)
    assert res.returncode == 2, res.stdout[-3000:]
    assert "this job no longer holds the model folder's lock" in res.stdout, res.stdout[-3000:]
    assert checkpoints(model_dir) == kept and kept, (checkpoints(model_dir), kept)


def test_garbled_json_files_get_one_line(run_copy, tiny_data, tmp_path):
    """model.json garbled (as a kill mid-write left it before it was written
    whole): train on 2 ranks and evaluate say which file and what to do;
    metadata.json garbled: a data error naming it."""
    with open(os.path.join(run_copy, "model.json"), "w") as f:
        f.write('{"image_size": 67, "num_cla')
    res = train(tiny_data, run_copy)
    said = lines(res.stdout, f"error: {run_copy}/model.json is not valid JSON")
    assert res.returncode == 2 and len(said) == 2, res.stdout[-3000:]
    assert "remove it" in said[0] and "Traceback" not in res.stdout
    res = launch(["evaluate", f"--data_dir={tiny_data}", f"--model_dir={run_copy}"], timeout=120)
    assert res.returncode == 2 and f"{run_copy}/model.json is not valid JSON" in res.stdout
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    (data / "metadata.json").write_text("")
    res = train(data, str(tmp_path / "new"), np=1)
    assert res.returncode == 3 and f"data error: {data}/metadata.json is empty" in res.stdout


def test_a_record_of_the_wrong_shape_and_an_os_error_at_start_get_one_line(run_copy,
                                                                            tiny_data):
    """run.json that parses but is no record (a list; a count that is a string),
    then model.json that is a folder (an OS error in rank 0's start-up work):
    each one line naming the file and exit 2 on every rank, no traceback
    (before: a traceback and exit 1)."""
    record = os.path.join(run_copy, "run.json")
    saved = open(record).read()
    with open(record, "w") as f:
        f.write("[]")
    res = train(tiny_data, run_copy, np=1)
    assert res.returncode == 2, res.stdout[-3000:]
    assert f"error: {record} is not a run's record (a JSON list, not an object)" in res.stdout
    with open(record, "w") as f:
        f.write(saved.replace('"global_batch": 8', '"global_batch": "8"'))
    res = train(tiny_data, run_copy, np=1)
    assert res.returncode == 2 and "'global_batch' is '8', not a int" in res.stdout, \
        res.stdout[-3000:]
    with open(record, "w") as f:
        f.write(saved)
    description = os.path.join(run_copy, "model.json")
    os.remove(description)
    os.mkdir(description)
    res = train(tiny_data, run_copy)
    said = lines(res.stdout, f"error: --model_dir {run_copy}: {description}: Is a directory "
                             f"while taking the model folder")
    assert res.returncode == 2 and len(said) == 2, res.stdout[-3000:]
    assert "Traceback" not in res.stdout and checkpoints(run_copy) == [4, 8]


@pytest.fixture
def small_disk(tmp_path):
    """A 400 MiB tmpfs (as root): room for two 67x67 checkpoints of 168 MB."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_tmpfs(disk, "400m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def fill(disk, leave):
    """Takes all but `leave` bytes of the disk's free space with one file."""
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(1, shutil.disk_usage(disk).free - leave))
    return filler


def test_a_full_disk_while_saving_stops_every_rank_and_keeps_the_previous_checkpoint(
        tiny_data, tmp_path, small_disk):
    """The disk fills after checkpoint 4 (the test takes all but 10 MiB while the
    ranks wait after step 5, ckpt-4 written): the save of step 8 fails. Before:
    an OSError traceback on rank 0 alone. Now every rank exits 6 with the
    folder and the space needed, the torn save is gone, ckpt-4 is whole, and
    the run resumes from it once space is free. (The ranks once ran on, slowed
    by 0.5 s a step: in a busy CI run the save of step 8 had begun before the
    test filled the disk, and the fill itself found no room.) Under mpirun, the
    MPI path that the scripts' default (horovodrun's MPI mode) runs on."""
    model_dir = str(small_disk / "run")
    gate = tmp_path / "go"
    job = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *ARGS],
                np=2, launcher="mpi", faults=[f"gate=5:{gate}"])
    filler = []

    def fill_at_the_gate():
        wait_until(job, "the ranks at step 5's gate",
                   lambda: os.path.exists(f"{gate}.reached"), timeout=180)
        filler.append(fill(small_disk, 10 << 20))
        gate.touch()
    res = finish_after(job, fill_at_the_gate, timeout=240)
    assert res.returncode == 6, res.stdout[-3000:]
    said = lines(res.stdout, f"hvd_alexnet train: checkpoint error: {model_dir}/checkpoints: "
                             f"the disk is full (")
    assert len(said) == 2, res.stdout[-3000:]
    assert ("MiB free; a checkpoint needs about 160 MiB): the save of step 8 was removed and "
            "the previous checkpoint, ckpt-4, is whole; free some space, then run the same "
            "command again to resume") in said[0], said[0]
    assert checkpoints(model_dir) == [4] and "Traceback" not in res.stdout
    assert not [f for f in os.listdir(os.path.join(model_dir, "checkpoints")) if "_temp" in f]
    os.remove(filler[0])
    res = train(tiny_data, model_dir, "--max_steps=8")
    assert res.returncode == 0 and "ckpt-4 at step 4" in res.stdout, res.stdout[-3000:]


def test_a_full_disk_while_logging_asks_for_a_stop_once(small_disk):
    """A DLLogger line that cannot be written is said once and asks the run to
    stop (the trainer then stops at the next read step, checkpoint first)."""
    from hvd_alexnet.metrics_log import MetricsLog
    asked = []
    log = MetricsLog(str(small_disk / "dllogger.json"), stdout=None, on_error=asked.append)
    fill(small_disk, 0)
    for step in range(100000):  # until the page the file has is full
        log.log([0, step], {"loss": 1.0})
        if asked:
            break
    assert asked == [f"writing {small_disk}/dllogger.json failed (No space left on device)"]
    log.log([0, step + 1], {"loss": 1.0})  # no more writing, no second call
    log.close()
    assert len(asked) == 1


def test_a_full_disk_under_tensorboards_writer_asks_for_a_stop_once(small_disk):
    """As the DLLogger file's: TensorBoard's events that cannot be written are said
    once and ask the run to stop; nothing raises (before, the writer's error
    ended rank 0 with a traceback and exit 1, without a checkpoint)."""
    from hvd_alexnet.progress import TensorBoard
    asked = []
    board = TensorBoard(str(small_disk / "tensorboard"), on_error=asked.append)
    board.scalars("train", 0, {"loss": 1.0})
    fill(small_disk, 0)
    for step in range(1, 100000):  # until the page the events file has is full
        board.scalars("train", step, {"loss": 1.0, "padding": float(step)})
        if asked:
            break
    assert len(asked) == 1 and asked[0].startswith(
        f"writing TensorBoard's events in {small_disk}/tensorboard failed"), asked
    board.scalars("train", step + 1, {"loss": 1.0})  # no more writing, no second call
    board.close()
    assert len(asked) == 1


def test_a_file_written_on_a_full_disk_keeps_its_old_content(small_disk):
    from hvd_alexnet import files
    path = small_disk / "model.json"
    files.write_json(path, {"image_size": 67})
    fill(small_disk, 0)
    with pytest.raises(OSError):
        files.write_json(path, {"image_size": 67, "classes": ["x" * 100] * 10000})
    assert json.load(open(path)) == {"image_size": 67}
    assert sorted(os.listdir(small_disk)) == ["filler", "model.json"]  # no temporary left
