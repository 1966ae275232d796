"""AlexNet as in tf_cnn_benchmarks, as a Keras model. Knows nothing of Horovod."""

import tensorflow as tf

MIN_IMAGE_SIZE = 67  # smaller inputs shrink to nothing before the last pool


def build_alexnet(image_size=227, num_classes=1000, dropout=0.5, name="alexnet"):
    """Returns an uncompiled Keras model mapping [N, S, S, 3] images to logits.

    Layers follow tf_cnn_benchmarks' AlexNet: conv 64 11x11/4 VALID, pool 3/2,
    conv 192 5x5, pool, conv 384, 384, 256 3x3, pool, FC 4096, 4096, classes.
    The logits are float32 even under a mixed-precision policy, so the loss
    and the softmax stay accurate.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    L = tf.keras.layers
    he = "he_normal"  # ReLU layers without batch norm train much sooner from He's init
    conv = lambda filters, k, **kw: L.Conv2D(filters, k, padding=kw.pop("padding", "same"),
                                             activation="relu", kernel_initializer=he, **kw)
    pool = lambda: L.MaxPool2D(pool_size=3, strides=2, padding="valid")
    layers = [
        conv(64, 11, strides=4, padding="valid", name="conv1"), pool(),
        conv(192, 5, name="conv2"), pool(),
        conv(384, 3, name="conv3"),
        conv(384, 3, name="conv4"),
        conv(256, 3, name="conv5"), pool(),
        L.Flatten(),
        L.Dense(4096, activation="relu", kernel_initializer=he, name="fc6"), L.Dropout(dropout),
        L.Dense(4096, activation="relu", kernel_initializer=he, name="fc7"), L.Dropout(dropout),
        L.Dense(num_classes, name="fc8"),
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
