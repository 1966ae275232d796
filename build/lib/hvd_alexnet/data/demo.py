"""`data demo`: the embedded default dataset, real images that ship with scikit-learn.

    python -m hvd_alexnet data demo --output_dir data/demo

scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes) are
upscaled, encoded as JPEG into the raw ImageNet layout (class subfolders), and
written through the same builder as real data, so the demo exercises the
whole path: builder, shards, metadata, reader, preprocessing.
"""

import os

import numpy as np

from hvd_alexnet.data import builder

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_raw(raw_dir, image_size=128, validation_fraction=0.2, seed=0):
    """Writes raw/{train,validation}/digit_K/NNNN.jpeg and raw/labels.txt."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    is_val = np.zeros(len(order), bool)
    for k in range(10):  # stratified: the same fraction of every digit
        members = [i for i in order if digits.target[i] == k]
        is_val[members[:int(round(len(members) * validation_fraction))]] = True
    images = tf.image.resize(digits.images[..., None] * (255.0 / 16.0), [image_size] * 2,
                             method="bicubic")
    images = tf.image.grayscale_to_rgb(tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8))
    for i, (image, label) in enumerate(zip(images, digits.target)):
        folder = os.path.join(raw_dir, "validation" if is_val[i] else "train", f"digit_{label}")
        os.makedirs(folder, exist_ok=True)
        tf.io.write_file(os.path.join(folder, f"{i:04d}.jpeg"), tf.io.encode_jpeg(image, quality=90))
    with open(os.path.join(raw_dir, "labels.txt"), "w") as f:
        f.writelines(f"digit_{k} {name}\n" for k, name in enumerate(NAMES))


def build_demo(output_dir, image_size=128, train_shards=8, validation_shards=2, seed=0,
               log=print):
    raw = os.path.join(output_dir, "raw")
    write_raw(raw, image_size=image_size, seed=seed)
    return builder.build_raw(raw, output_dir, train_shards, validation_shards, seed=seed,
                             log=log)
