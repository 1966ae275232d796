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
