import pytest
import tensorflow as tf

from hvd_alexnet.model import build_alexnet, weight_decay_loss


def test_parameter_count_of_the_reference_architecture():
    # conv1 11*11*3*64+64, conv2 5*5*64*192+192, conv3 3*3*192*384+384,
    # conv4 3*3*384*384+384, conv5 3*3*384*256+256, fc6 6*6*256*4096+4096,
    # fc7 4096*4096+4096, fc8 4096*1000+1000
    expected = (23296 + 307392 + 663936 + 1327488 + 884992 + 37752832 + 16781312 + 4097000)
    model = build_alexnet(227, 1000)
    assert model.count_params() == expected == 61_838_248
    assert model.get_layer("conv5").output_shape == (None, 13, 13, 256)
    assert model.output_shape == (None, 1000)


@pytest.mark.parametrize("size,classes", [(67, 10), (128, 7), (224, 1000)])
def test_output_shape_at_other_sizes(size, classes):
    model = build_alexnet(size, classes)
    out = model(tf.zeros([2, size, size, 3]), training=False)
    assert out.shape == (2, classes) and out.dtype == tf.float32


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 67"):
        build_alexnet(66, 10)


def test_weight_decay_covers_kernels_not_biases():
    model = build_alexnet(67, 3)
    for v in model.trainable_variables:
        v.assign(tf.ones_like(v) if "kernel" in v.name else tf.fill(v.shape, 100.0))
    kernels = sum(v.shape.num_elements() for v in model.trainable_variables if "kernel" in v.name)
    assert float(weight_decay_loss(model)) == pytest.approx(kernels / 2, rel=1e-6)


def test_mixed_bfloat16_keeps_float32_logits():
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_alexnet(67, 5)
        assert model.get_layer("conv1").compute_dtype == "bfloat16"
        assert model(tf.zeros([1, 67, 67, 3])).dtype == tf.float32
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_seeded_dropout_masks_follow_the_seed_not_the_process():
    step = tf.Variable(0, dtype=tf.int64)
    model = build_alexnet(67, 4, dropout=0.5, dropout_seed=lambda: tf.stack(
        [tf.constant(7, tf.int64), step]))
    layer = model.get_layer("dropout6")
    x = tf.ones([8, 4096])
    a, b = layer(x, training=True), layer(x, training=True)
    assert tf.reduce_all(a == b)  # same (seed, step): same mask, whatever ran before
    step.assign(1)
    c = layer(x, training=True)
    assert not tf.reduce_all(a == c)
    assert not tf.reduce_all(c == model.get_layer("dropout7")(x, training=True))  # per layer
    kept = tf.reduce_mean(tf.cast(c > 0, tf.float32))
    assert 0.45 < float(kept) < 0.55 and set(tf.unique(tf.reshape(c, [-1]))[0].numpy()) == {0, 2}
    assert tf.reduce_all(layer(x, training=False) == x)
