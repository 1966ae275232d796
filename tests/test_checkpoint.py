"""Checkpoints alone: the restore arithmetic across rank counts, and the clean-up
of a torn save (the multi-rank resume itself is in test_resume.py)."""

import os

import tensorflow as tf

from hvd_alexnet import optim
from hvd_alexnet.checkpoint import Checkpoints, resume_step
from hvd_alexnet.model import build_alexnet


def test_resume_step_keeps_the_examples_seen():
    assert resume_step(160, 16) == 10  # as saved
    assert resume_step(160, 8) == 20  # half the ranks: twice the steps
    assert resume_step(160, 32) == 5
    assert resume_step(160, 48) == 3  # a part-step: resumes at its start (repeats 16 examples)
    assert resume_step(0, 8) == 0


def _checkpoints(model_dir, said):
    opt = optim.make_optimizer(0.01, 0.9)
    model = build_alexnet(67, 4, 0.0)
    opt.build(model.trainable_variables)
    return Checkpoints(str(model_dir), model, opt, keep=2, say=said.append), opt, model


def test_restore_on_another_number_of_ranks(tmp_path):
    said = []
    ckpts, opt, model = _checkpoints(tmp_path, said)
    assert ckpts.restore(global_batch=16, steps_per_epoch=5, ranks=2) == 0  # a new run
    opt.iterations.assign(10)
    model.trainable_variables[0].assign(tf.ones_like(model.trainable_variables[0]))
    ckpts.save(step=10, examples_seen=160)  # 10 steps of 16 examples

    ckpts, opt, model = _checkpoints(tmp_path, said)
    assert ckpts.restore(global_batch=8, steps_per_epoch=10, ranks=1) == 20
    assert int(opt.iterations) == 20  # the learning-rate schedule follows
    assert float(tf.reduce_min(model.trainable_variables[0])) == 1.0
    assert said[-2] == ("checkpoint taken at step 10 with a global batch of 16; on 1 ranks "
                        "(global batch 8) that is step 20, epoch 2")
    assert said[-1].startswith("resumed from ") and said[-1].endswith("ckpt-10 at step 20")

    ckpts, opt, _ = _checkpoints(tmp_path, said)
    assert ckpts.restore(global_batch=16, steps_per_epoch=5, ranks=2) == 10
    assert int(opt.iterations) == 10 and "checkpoint taken" not in said[-2]


def test_a_read_error_that_passes_is_tried_again_and_set_aside_is_bounded(tmp_path):
    """The newest checkpoint's data file is gone at the first try and back at the
    second (an NFS hiccup, as the file system shows it): restored, nothing set
    aside (before: set aside at once, and the previous checkpoint resumed). Then
    set_aside/ over its bound: the oldest deleted, its size said."""
    import shutil

    from hvd_alexnet import checkpoint
    said = []
    ckpts, opt, _ = _checkpoints(tmp_path, said)
    for step in (4, 8):
        opt.iterations.assign(step)
        ckpts.save(step=step, examples_seen=8 * step)
    data = [os.path.join(ckpts.directory, n) for n in checkpoint.on_disk(ckpts.directory)[8]
            if ".data-" in n][0]
    os.rename(data, data + ".away")

    def back(line):
        said.append(line)
        if "trying again" in line and os.path.exists(data + ".away"):
            os.rename(data + ".away", data)

    ckpts, opt, _ = _checkpoints(tmp_path, said)
    ckpts.say = back
    assert ckpts.restore(global_batch=8, steps_per_epoch=4, ranks=1) == 8
    assert any("ckpt-8 did not restore (" in s and "trying again in 1 s (try 2 of 3)" in s
               for s in said), said
    assert not os.path.exists(os.path.join(ckpts.directory, checkpoint.SET_ASIDE))

    aside = os.path.join(ckpts.directory, checkpoint.SET_ASIDE)
    for n in range(checkpoint.SET_ASIDE_KEEP + 2):
        os.makedirs(os.path.join(aside, f"ckpt-{n}-x"))
        with open(os.path.join(aside, f"ckpt-{n}-x", "f"), "wb") as f:
            f.write(b"x" * (1 << 20))
        os.utime(os.path.join(aside, f"ckpt-{n}-x"), (n, n))  # oldest first
    ckpts, _, _ = _checkpoints(tmp_path, said)
    ckpts.restore(global_batch=8, steps_per_epoch=4, ranks=1)
    assert sorted(os.listdir(aside)) == [f"ckpt-{n}-x" for n in range(2, 7)]
    assert f"{aside} holds 5 set-aside checkpoint(s), 5 MiB (the newest 5 are kept)" in said
    shutil.rmtree(aside)


def test_a_torn_save_is_removed_and_the_previous_checkpoint_restored(tmp_path):
    said = []
    ckpts, opt, _ = _checkpoints(tmp_path, said)
    opt.iterations.assign(4)
    ckpts.save(step=4, examples_seen=32)
    torn = os.path.join(ckpts.directory, "ckpt-8_temp")
    os.makedirs(os.path.join(torn, "part-0"))
    ckpts, opt, _ = _checkpoints(tmp_path, said)
    assert ckpts.restore(global_batch=8, steps_per_epoch=4, ranks=1) == 4
    assert not os.path.exists(torn)
    assert said[0] == f"removing {torn}: an incomplete save (the job died while writing it)"


def test_the_index_is_read_strictly_and_written_as_tensorflow_reads_it(tmp_path):
    """A garbled index is a problem to say, not 'no checkpoint' (TensorFlow's
    reading); the index written back is one TensorFlow's manager reads."""
    from hvd_alexnet import checkpoint
    folder = str(tmp_path)
    assert checkpoint.read_index(folder) == ([], None)  # a new run
    for step in (3, 7):
        open(os.path.join(folder, f"ckpt-{step}.index"), "w").close()
    assert checkpoint.read_index(folder)[1] == f"{folder}/checkpoint is missing"
    for text, problem in [("", "is empty"), ('model_checkpoint_path: "ckpt-7', "is garbled"),
                          ('all_model_checkpoint_paths: "ckpt-3"\n', "is garbled"),
                          ('model_checkpoint_path: "model.ckpt"\n', "is garbled")]:
        with open(os.path.join(folder, "checkpoint"), "w") as f:
            f.write(text)
        assert problem in checkpoint.read_index(folder)[1], text
    checkpoint.write_index(folder, [3, 7])
    assert checkpoint.read_index(folder) == ([3, 7], None)
    state = tf.train.get_checkpoint_state(folder)
    assert state.model_checkpoint_path.endswith("ckpt-7") and len(
        state.all_model_checkpoint_timestamps) == 2
    assert checkpoint.newest(str(tmp_path.parent / tmp_path.name)) is None  # no checkpoints/


def test_a_lock_is_taken_over_only_from_a_job_that_is_gone(tmp_path, monkeypatch):
    """A holder is gone when its process is (this host), or when the file system
    shows no refresh while the lock is watched (another host): never judged by
    the file's time (a holder's clock an hour behind still refreshes), nor by
    Slurm's job id alone (every process of an allocation has it)."""
    import json
    import socket
    import subprocess
    import sys
    import time

    import pytest

    from hvd_alexnet import rundir
    from hvd_alexnet.errors import UsageError
    monkeypatch.setattr(rundir, "LOCK_WATCH", 1.0)
    path, said = tmp_path / rundir.LOCK_FILE, []

    def held_by(**holder):
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": 1, "job": None,
                                    "started": "then", **holder}))

    real_sleep, refreshes = time.sleep, []

    def watched(seconds):  # each pause of the watch: a refresh by construction, if any
        real_sleep(min(seconds, 0.01))
        if refreshes:  # another host's holder whose clock is an hour behind
            t = time.time() - 3600 + len(refreshes)
            refreshes.append(t)
            os.utime(path, (t, t))

    monkeypatch.setattr(rundir.time, "sleep", watched)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    here, other, slurm = socket.gethostname(), "elsewhere", {"SLURM_JOB_ID": "7"}
    horovodrun = {"HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1", "HOROVOD_GLOO_RENDEZVOUS_PORT": "9"}
    cases = [  # (holder, refreshed, this job's environment, taken over?)
        (dict(pid=os.getppid()), False, {}, False),  # a live process here
        (dict(pid=dead.pid), False, {}, True),  # gone
        (dict(pid=os.getppid(), pid_start=1), False, {}, True),  # its pid reused
        (dict(host=other, pid=12), True, {}, False),  # another host, refreshing
        (dict(host=other, pid=12), False, {}, True),  # another host, not refreshed
        (dict(pid=os.getppid(), job="slurm job 7"), False, slurm, False),  # one allocation
        (dict(host=other, pid=12, job="slurm job 7"), True, slurm, False),  # the same
        (dict(host=other, pid=12, job="slurm job 7"), False, slurm, True),  # requeued
        (dict(host=here, pid=os.getppid(), job="horovodrun 10.0.0.1:9"), False, horovodrun,
         True),  # the same launcher's job: an elastic job's new rank 0
    ]
    for holder, refreshed, env, taken in cases:
        held_by(**holder)
        old = time.time() - 3600
        os.utime(path, (old, old))  # as an NFS server an hour off would show it
        refreshes[:] = [old] if refreshed else []
        lock = rundir.Lock(str(tmp_path), said.append, env=env)
        if taken:
            lock.acquire()
            assert json.loads(path.read_text())["pid"] == os.getpid(), holder
            lock.release()
            assert not path.exists()
        else:
            with pytest.raises(UsageError, match="is in use by another job"):
                lock.acquire()
            assert json.loads(path.read_text())["pid"] == holder["pid"], holder
    assert any("left by host elsewhere, pid 12" in s and "it was not refreshed in 1 s" in s
               for s in said), said


def test_a_job_that_lost_its_lock_stops_before_it_writes(tmp_path):
    from hvd_alexnet import rundir
    from hvd_alexnet.errors import UsageError
    lock = rundir.Lock(str(tmp_path), print).acquire()
    lock.check()
    (tmp_path / rundir.LOCK_FILE).write_text('{"host": "elsewhere", "pid": 3, "started": "now"}')
    import pytest
    with pytest.raises(UsageError, match="this job no longer holds the model folder's lock "
                                         r"\(now host elsewhere, pid 3"):
        lock.check()
    lock.release()
    assert (tmp_path / rundir.LOCK_FILE).exists()  # the other job's lock is left alone


def test_the_elastic_launchers_host_file_is_private(tmp_path):
    from hvd_alexnet.tools.launch import job_command
    paths = [next(a.split("=", 1)[1] for a in job_command(["-c", "pass"], 2, "elastic")
                  if a.startswith("HVD_ALEXNET_HOSTS_FILE=")) for _ in range(2)]
    assert paths[0] != paths[1]  # a new name each time, not one anyone can guess
    for p in paths:
        assert os.stat(p).st_mode & 0o777 == 0o600 and open(p).read() == "localhost:2\n"
        os.remove(p)
