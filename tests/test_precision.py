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
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # finite, logged each step


FP16_SUM = """
import tensorflow as tf
from hvd_alexnet import distributed
dist, _ = distributed.init(fp16_allreduce=True)
g = tf.constant([40000.0, 1e-3])  # fits float16 (max 65504); 2 ranks' sum would not
v = tf.Variable([1.0, 1.0])
with tf.GradientTape() as tape:
    loss = tf.reduce_sum(v * g)
taped = dist.gradient_tape(tape).gradient(loss, [v])[0]
print("AVERAGED", dist.rank, dist.average([g])[0].numpy().tolist(), taped.numpy().tolist())
"""


def test_float16_sums_are_of_each_ranks_share_so_they_cannot_overflow(tmp_path):
    """2 ranks, each with a gradient of 40,000 in float16: summed first, 80,000
    is past float16's largest (65,504) and the mean would be inf; each rank's
    half summed is 40,000. Both the gradient tape and the micro-batch path."""
    import re
    import subprocess

    from hvd_alexnet.tools.launch import ROOT, job_command, job_env
    res = subprocess.run(job_command(["-c", FP16_SUM], 2, "gloo"), cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = re.findall(r"AVERAGED (\d) \[(\S+), (\S+)\] \[(\S+), (\S+)\]", res.stdout)
    assert sorted(r for r, *_ in found) == ["0", "1"], res.stdout[-3000:]
    for _, big, small, taped_big, taped_small in found:
        assert float(big) == float(taped_big) == 40000.0
        assert abs(float(small) - 1e-3) < 1e-6 and abs(float(taped_small) - 1e-3) < 1e-6


def test_float16_gradient_sums_of_float32_training_track_float32_sums(tiny_data, tmp_path):
    """fp32 training, 2 ranks, 6 deterministic steps: with --fp16_allreduce (under
    a loss scale) the weights stay within float16's precision of those summed in
    float32, and the loss does not diverge (the trainer stops if it does)."""
    import numpy as np

    from helpers import final_weights
    args = ["train", f"--data_dir={tiny_data}", *SMALL, "--max_steps=6", "--noeval",
            "--deterministic", "--dropout=0", "--initial_loss_scale=1024"]
    runs = {}
    for name, extra in (("fp32", []), ("fp16", ["--fp16_allreduce"])):
        model_dir = str(tmp_path / name)
        res = launch([*args, f"--model_dir={model_dir}", *extra], np=2, launcher="gloo",
                     timeout=300)
        assert res.returncode == 0, res.stdout[-3000:]
        runs[name] = final_weights(model_dir)
        losses = [r["data"]["loss"] for r in step_records(model_dir)]
        assert all(np.isfinite(losses)) and len(losses) == 6
    scales = [r["data"].get("loss_scale") for r in step_records(str(tmp_path / "fp16"))]
    assert scales == [1024] * 6  # the float16 sums' loss scale; no step overflowed
    for a, b in zip(runs["fp32"], runs["fp16"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-3 * max(1e-3, np.abs(a).max()))
