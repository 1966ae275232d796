"""AlexNet as in tf_cnn_benchmarks, as a Keras model. Knows nothing of Horovod."""

import tensorflow as tf

MIN_IMAGE_SIZE = 67  # smaller inputs shrink to nothing before the last pool
TRUNCATED_STD = 0.87962566103423978  # a unit normal's stddev once truncated at 2 sigma


class SeededDropout(tf.keras.layers.Layer):
    """Dropout whose masks are a function of `seed_fn()` (an int64 pair, such as
    (seed and rank, step)) and of `salt`: a run resumed from a checkpoint draws
    the masks an uninterrupted run would have drawn. Keras' Dropout continues a
    random stream that restarts with the process."""

    def __init__(self, rate, seed_fn, salt, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed_fn, self.salt = rate, seed_fn, salt

    def call(self, x, training=None):
        if not training or self.rate == 0:
            return x
        seed = self.seed_fn() + tf.constant([0, self.salt << 40], tf.int64)
        keep = tf.random.stateless_uniform(tf.shape(x), seed=seed) >= self.rate
        return x * tf.cast(keep, x.dtype) * tf.cast(1 / (1 - self.rate), x.dtype)


def build_alexnet(image_size=227, num_classes=1000, dropout=0.5, name="alexnet",
                  dropout_seed=None):
    """Returns an uncompiled Keras model mapping [N, S, S, 3] images to logits.

    Layers follow tf_cnn_benchmarks' AlexNet: conv 64 11x11/4 VALID, pool 3/2,
    conv 192 5x5, pool, conv 384, 384, 256 3x3, pool, FC 4096, 4096, classes.
    The logits are float32 even under a mixed-precision policy, so the loss
    and the softmax stay accurate. With `dropout_seed` (a function returning an
    int64 pair, read at each training call) the dropout masks are seeded by it.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    L = tf.keras.layers
    # tf_cnn_benchmarks' initialisation (convnet_builder.py) for the affine layers:
    # a normal truncated at 2 sigma of stddev sqrt(2 / fan-in) before a ReLU,
    # sqrt(1 / fan-in) for the logits; biases 0. Its convolutions draw at scale 1
    # (variance_scaling's default); here at 2 (He's), which keeps the activations'
    # variance through five ReLU layers without batch norm: the demo's 132 steps
    # reached top-1 0.961 and 0.944 at scale 1, and 0.981, 0.961 and 0.958 at
    # scale 2 (with these affine layers), where it must reach 0.95.
    fan_in = lambda scale: tf.keras.initializers.VarianceScaling(scale, "fan_in",
                                                                 "truncated_normal")
    # Keras scales its truncated normal up to the stddev asked for; TensorFlow 1's
    # truncated_normal_initializer(stddev) did not: the same draw is scale x T^2.
    affine = lambda relu: fan_in((2.0 if relu else 1.0) * TRUNCATED_STD ** 2)
    conv = lambda filters, k, **kw: L.Conv2D(filters, k, padding=kw.pop("padding", "same"),
                                             activation="relu", kernel_initializer=fan_in(2.0),
                                             **kw)
    pool = lambda: L.MaxPool2D(pool_size=3, strides=2, padding="valid")
    drop = lambda salt: (L.Dropout(dropout) if dropout_seed is None else
                         SeededDropout(dropout, dropout_seed, salt, name=f"dropout{salt}"))
    layers = [
        conv(64, 11, strides=4, padding="valid", name="conv1"), pool(),
        conv(192, 5, name="conv2"), pool(),
        conv(384, 3, name="conv3"),
        conv(384, 3, name="conv4"),
        conv(256, 3, name="conv5"), pool(),
        L.Flatten(),
        L.Dense(4096, activation="relu", kernel_initializer=affine(True), name="fc6"), drop(6),
        L.Dense(4096, activation="relu", kernel_initializer=affine(True), name="fc7"), drop(7),
        L.Dense(num_classes, kernel_initializer=affine(False), name="fc8"),
        L.Activation("linear", dtype="float32", name="logits"),
    ]
    inputs = tf.keras.Input(shape=(image_size, image_size, 3), name="images")
    x = inputs
    for layer in layers:
        x = layer(x)
    return tf.keras.Model(inputs, x, name=name)


def weight_decay_loss(model):
    """Sum of squared kernels / 2 (tf.nn.l2_loss), biases excluded."""
    kernels = [v for v in model.trainable_variables if "kernel" in v.name]
    return tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])
