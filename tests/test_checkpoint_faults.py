"""Checkpoints that can be trusted, with real ranks: a damaged checkpoint or
index falls back (never to step 0, never deleting one), and a divergence
between two read steps is never saved. Every wait is bounded. The model
folder's own checks (lock, record, full disk) are in test_model_folder.py."""

import glob
import os
import re

import numpy as np
import pytest

from helpers import checkpoints, final_weights, lines
from helpers import train_job as train
from hvd_alexnet import metrics_log


def ckpt_files(model_dir, step):
    return sorted(glob.glob(os.path.join(model_dir, "checkpoints", f"ckpt-{step}.*")))


def flip_a_bit(model_dir, step):
    (data,) = [f for f in ckpt_files(model_dir, step) if ".data-" in f]
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))


def truncate_data(model_dir, step):
    (data,) = [f for f in ckpt_files(model_dir, step) if ".data-" in f]
    os.truncate(data, os.path.getsize(data) // 2)


INDEX = lambda d: os.path.join(d, "checkpoints", "checkpoint")
DAMAGE = {
    "a garbled index": lambda d: open(INDEX(d), "w").write('model_checkpoint_path: "ckpt-8\n{{'),
    "an empty index": lambda d: open(INDEX(d), "w").close(),
    "no index": lambda d: os.remove(INDEX(d)),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_an_index_that_cannot_be_read_is_rebuilt_from_the_files(run_copy, tiny_data, damage):
    """TensorFlow reads a garbled index as no checkpoint (the run restarted from
    step 0, wrote ckpt-4 over the old one), and an empty one as a traceback."""
    DAMAGE[damage](run_copy)
    res = train(tiny_data, run_copy, "--max_steps=12")
    assert res.returncode == 0, res.stdout[-3000:]
    assert "the checkpoints are found from their files (2 in" in res.stdout, res.stdout[-3000:]
    assert re.search(r"resumed from \S+/ckpt-8 at step 8\n", res.stdout), res.stdout[-3000:]
    # 10 is the epoch's end; --keep_checkpoints=3 removed 4: the rebuilt index lists
    # every checkpoint, so the manager's clean-up still sees the old ones.
    assert checkpoints(run_copy) == [8, 10, 12]
    import tensorflow as tf
    state = tf.train.get_checkpoint_state(os.path.join(run_copy, "checkpoints"))
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == [
        "ckpt-8", "ckpt-10", "ckpt-12"]
    steps = [r["step"][1] for r in metrics_log.step_records(metrics_log.read(
        os.path.join(run_copy, "dllogger.json"))) if "loss" in r["data"]]
    assert steps == [4, 12]  # never from step 0 again (step 8 stopped before its line)


DAMAGED_NEWEST = {
    "a flipped bit": (flip_a_bit, "DataLossError: TensorBundle at"),
    "a truncated data file": (truncate_data, "Read less bytes than requested"),
    "a missing .index file": (lambda d, s: os.remove(os.path.join(d, "checkpoints",
                                                                  f"ckpt-{s}.index")),
                              "its .index file is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_NEWEST))
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_previous_one_resumed(
        run_copy, tiny_data, damage):
    do, reason = DAMAGED_NEWEST[damage]
    do(run_copy, 8)
    before = [os.path.basename(f) for f in ckpt_files(run_copy, 8)]
    res = train(tiny_data, run_copy, "--max_steps=12")
    assert res.returncode == 0, res.stdout[-3000:]
    (moved,) = lines(res.stdout, "checkpoint ckpt-8 does not restore (")
    assert reason in moved and "moved to" in moved, moved
    aside = moved.rsplit("moved to ", 1)[1].strip()
    assert sorted(os.listdir(aside)) == before  # set aside whole, never deleted
    assert re.search(r"resumed from \S+/ckpt-4 at step 4 \(not from the newer ckpt-8: they did "
                     r"not restore", res.stdout), res.stdout[-3000:]
    assert checkpoints(run_copy) == [4, 8, 10, 12][-3:]  # 8 trained again, from 4


def test_no_checkpoint_that_restores_is_a_checkpoint_error_and_nothing_moves(run_copy,
                                                                             tiny_data):
    for step in (4, 8):
        truncate_data(run_copy, step)
    listing = sorted(os.listdir(os.path.join(run_copy, "checkpoints")))
    res = train(tiny_data, run_copy, "--max_steps=12")
    assert res.returncode == 6, res.stdout[-3000:]
    line = lines(res.stdout, "hvd_alexnet train: checkpoint error: no checkpoint in")
    assert len(line) == 2, res.stdout[-3000:]  # every rank says it, rank 1 too
    assert "ckpt-8: IndexError" in line[0] and "ckpt-4: IndexError" in line[0]
    assert sorted(os.listdir(os.path.join(run_copy, "checkpoints"))) == listing


def test_a_divergence_between_read_steps_is_never_saved(tiny_data, tmp_path):
    """The weights become NaN after step 5 (injected), between the read steps 4
    and 8: the pause at step 6 finds them non-finite, every rank exits 4 naming
    ckpt-3, nothing later is saved, and a rerun with a lower rate resumes from
    ckpt-3. Before, the pauses at 6 saved NaN weights and the rerun resumed them."""
    model_dir = str(tmp_path / "run")
    args = ["--log_every=8", "--checkpoint_every_steps=3", "--keep_checkpoints=2"]
    res = train(tiny_data, model_dir, *args, faults=["nan=5"])
    assert res.returncode == 4, res.stdout[-3000:]
    said = lines(res.stdout, "hvd_alexnet train: error: the weights are NaN or infinite at "
                             "step 6: training diverged, and nothing of it was saved; the "
                             "newest checkpoint")
    assert len(said) == 2 and "/checkpoints/ckpt-3, holds finite weights" in said[0], said
    assert checkpoints(model_dir) == [3]
    assert all(np.isfinite(w).all() for w in final_weights(model_dir))
    res = train(tiny_data, model_dir, *args, "--base_lr=0.001")
    assert res.returncode == 0, res.stdout[-3000:]
    assert re.search(r"resumed from \S+/ckpt-3 at step 3\n", res.stdout)
    assert "resuming with other settings than the run's last start: --base_lr 0.0025 -> 0.001;" \
           in res.stdout, res.stdout[-3000:]
    assert checkpoints(model_dir)[-1] == 20
    assert all(np.isfinite(w).all() for w in final_weights(model_dir))


