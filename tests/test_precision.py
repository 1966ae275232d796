"""The float16 and XLA paths, forced on the CPU with 2 real ranks: what a GPU
cluster runs (mixed float16 with a dynamic loss scale, XLA) executed here."""

import os

import tensorflow as tf

from helpers import SMALL, launch, step_records
from hvd_alexnet.checkpoint import SUBDIR as CHECKPOINT_SUBDIR

SCALE_KEY = "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE"


def test_float16_two_ranks_skip_overflows_alike_and_resume_keeps_the_loss_scale(
        tiny_data, tmp_path):
    """A loss scale of 2^16 overflows float16's gradients at the first step: the step is
    skipped and the scale halved (on every rank: the check is on the averaged
    gradients), until steps go through. The run ends with identical weights on both
    ranks (checked by the trainer). Resumed with another --initial_loss_scale, the
    checkpoint's scale wins and every rank holds it: the weights stay identical."""
    args = ["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL,
            "--precision=fp16", "--noeval"]
    res = launch([*args, "--initial_loss_scale=65536", "--max_steps=6"], np=2,
                 launcher="gloo", timeout=400)
    assert res.returncode == 0 and "mixed_float16" in res.stdout, res.stdout[-3000:]
    scales = [r["data"]["loss_scale"] for r in step_records(tmp_path)]
    assert scales[0] == 32768  # the first step overflowed: skipped, the scale halved
    assert scales[-1] > 65536 / 2 ** 6, scales  # not every step overflowed: some updated
    latest = tf.train.latest_checkpoint(os.path.join(tmp_path, CHECKPOINT_SUBDIR))
    saved = tf.train.load_checkpoint(latest).get_tensor(SCALE_KEY)
    assert saved == scales[-1]
    res = launch([*args, "--initial_loss_scale=1024", "--max_steps=9"], np=2,
                 launcher="gloo", timeout=400)
    assert res.returncode == 0, res.stdout[-3000:]  # identical weights on both ranks
    assert f"at step 6, loss scale {saved:g}" in res.stdout
    later = [r["data"]["loss_scale"] for r in step_records(tmp_path) if r["step"][1] > 6]
    assert later[0] in (saved, saved / 2), (saved, later)  # went on from the checkpoint's


def test_xla_on_two_ranks(tiny_data, tmp_path):
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL,
                  "--xla", "--max_steps=4", "--noeval"], np=2, launcher="gloo", timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "identical on all 2 ranks" in res.stdout
    losses = [r["data"]["loss"] for r in step_records(tmp_path)]
    assert len(losses) == 4 and all(l == l for l in losses)  # finite, logged each step
