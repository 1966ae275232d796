"""The step function on one process (distributed.Local: no ranks launched)."""

import numpy as np
import tensorflow as tf

from hvd_alexnet import distributed, optim, step
from hvd_alexnet.model import build_alexnet
from hvd_alexnet.step import DropoutSeeds, make_train_step

CLASSES = 10


def _trained(micro_batches, dropout=0.0, steps=1, xla=False):
    """Weights after `steps` steps on one fixed batch of 8, in `micro_batches` parts."""
    tf.keras.utils.set_random_seed(0)
    opt = optim.make_optimizer(0.01, 0.9)
    seeds = DropoutSeeds(0, 0, opt.iterations, micro_batches)
    model = build_alexnet(67, CLASSES, dropout, dropout_seed=seeds)
    opt.build(model.trainable_variables)
    step = make_train_step(model, opt, distributed.Local(), 1e-4, micro_batches, seeds, xla)
    g = tf.random.Generator.from_seed(1)
    images = tf.cast(g.uniform([8, 67, 67, 3], 0, 256, tf.int32), tf.uint8)  # as the reader
    labels = g.uniform([8], 0, CLASSES, dtype=tf.int32)
    losses = [float(step(images, labels, tf.constant(False))[0]) for _ in range(steps)]
    return [v.numpy() for v in model.trainable_variables], losses, int(opt.iterations)


def test_micro_batches_give_the_gradient_of_the_whole_batch():
    """Without dropout, 2 or 4 micro-batches of a batch of 8 make the same update
    as the batch at once: each micro-batch's mean loss, averaged."""
    whole, loss1, it1 = _trained(1, steps=2)
    for k in (2, 4):
        parts, loss_k, it_k = _trained(k, steps=2)
        assert it_k == it1 == 2  # one optimizer step per call, whatever K
        assert np.allclose(loss_k, loss1, rtol=1e-4)
        for a, b in zip(whole, parts):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_each_micro_batch_draws_its_own_dropout_masks():
    """With dropout, the two halves of a batch are not the batch at once (each
    micro-batch is seeded by its own index), yet the masks are reproducible
    (the same up to the CPU kernels' summation order, as ops are not forced
    to be deterministic here)."""
    first, _, _ = _trained(2, dropout=0.5)
    again, _, _ = _trained(2, dropout=0.5)
    whole, _, _ = _trained(1, dropout=0.5)
    close = lambda x, y: all(np.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(x, y))
    assert close(first, again)
    assert not close(first, whole)


def test_dropout_seed_follows_the_optimizer_step_and_micro_batch():
    step = tf.Variable(3, dtype=tf.int64)
    seeds = DropoutSeeds(seed=2, rank=1, iterations=step, micro_batches=4)
    seeds.micro = 1
    assert seeds().numpy().tolist() == [2 * 1_000_003 + 1, 3 * 4 + 1]
    step.assign(4)
    seeds.micro = 0
    assert seeds().numpy().tolist() == [2 * 1_000_003 + 1, 16]


def test_a_stop_request_comes_back_from_the_step():
    tf.keras.utils.set_random_seed(0)
    opt = optim.make_optimizer(0.01, 0.9)
    model = build_alexnet(67, CLASSES, 0.0)
    opt.build(model.trainable_variables)
    step = make_train_step(model, opt, distributed.Local(), 1e-4)
    images, labels = tf.zeros([2, 67, 67, 3], tf.uint8), tf.constant([1, 2])
    assert bool(step(images, labels, tf.constant(True))[1])
    assert not bool(step(images, labels, tf.constant(False))[1])


def test_xla_makes_the_same_update():
    """--xla: the forward and backward pass as one XLA computation, the update outside."""
    plain, loss_plain, _ = _trained(1, steps=2)
    for k in (1, 2):
        compiled, loss_xla, it = _trained(k, steps=2, xla=True)
        assert it == 2 and np.allclose(loss_xla, loss_plain, rtol=1e-3)
        for a, b in zip(plain, compiled):
            np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-5)


def test_precision_policies_and_the_loss_scale_travels_with_the_optimizer():
    assert step.policy("fp16", gpu=False) == "mixed_float16"
    assert step.policy("bf16", gpu=True) == "mixed_bfloat16"
    assert step.policy("mixed", gpu=True) == "mixed_float16"
    assert step.policy("mixed", gpu=False) == "mixed_bfloat16"
    opt = optim.make_optimizer(0.01, 0.9, loss_scale=1024.0)
    model = build_alexnet(67, CLASSES)
    opt.build(model.trainable_variables)
    names = [v.name for v in optim.state_variables(opt)]
    assert float(opt.loss_scale) == 1024.0
    assert any("current_loss_scale" in n for n in names) and any("good_steps" in n for n in names)
    assert len(names) == len(opt.variables) + 2
