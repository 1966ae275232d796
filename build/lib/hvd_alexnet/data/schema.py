"""The ImageNet TFRecord schema and the metadata file beside it.

The keys are those of TensorFlow's ImageNet converters (build_imagenet_data.py),
which tf_cnn_benchmarks and NVIDIA's ConvNets read: `image/encoded` (JPEG),
`image/class/label` (1..N; 0 is the unused background), `image/class/synset`,
`image/class/text`, the image's size and format, and `image/object/bbox/*`.
"""

import os

import tensorflow as tf

from hvd_alexnet import files
from hvd_alexnet.errors import DataError

TRAIN, VALIDATION = "train", "validation"
METADATA_FILE = "metadata.json"

def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


def make_example(jpeg, label, synset, text, height, width, filename, boxes=()):
    """One `tf.train.Example` in the ImageNet layout; boxes are (xmin, ymin, xmax, ymax)."""
    cols = list(zip(*boxes)) if boxes else [(), (), (), ()]
    feature = {
        "image/encoded": _bytes([jpeg]),
        "image/class/label": _ints([label]),
        "image/class/synset": _bytes([synset.encode()]),
        "image/class/text": _bytes([text.encode()]),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "image/channels": _ints([3]),
        "image/format": _bytes([b"JPEG"]),
        "image/colorspace": _bytes([b"RGB"]),
        "image/filename": _bytes([filename.encode()]),
        "image/object/bbox/xmin": _floats(cols[0]),
        "image/object/bbox/ymin": _floats(cols[1]),
        "image/object/bbox/xmax": _floats(cols[2]),
        "image/object/bbox/ymax": _floats(cols[3]),
        "image/object/bbox/label": _ints([label] * len(boxes)),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    **{f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
       for k in ("xmin", "ymin", "xmax", "ymax")},
}


def parse(serialized):
    """Returns (jpeg bytes, label in 1..N or -1 if absent, boxes [K, 4] as ymin, xmin, ymax, xmax)."""
    f = tf.io.parse_single_example(serialized, FEATURES)
    box = [tf.sparse.to_dense(f[f"image/object/bbox/{k}"]) for k in ("ymin", "xmin", "ymax", "xmax")]
    return f["image/encoded"], f["image/class/label"], tf.stack(box, axis=1)


def shard_name(split, index, count):
    return f"{split}-{index:05d}-of-{count:05d}"


def list_shards(data_dir, split):
    """Sorted shard paths of one split, the order every rank agrees on: DIR/split-*,
    or DIR/split/split-* where there are none (the TPU repository's
    imagenet_to_gcs.py writes train/ and validation/ subfolders)."""
    for folder in (data_dir, os.path.join(data_dir, split)):
        found = sorted(tf.io.gfile.glob(os.path.join(folder, f"{split}-*")))
        if found:
            return found
    return []


def no_shards(data_dir, split, hint=""):
    """What to say when list_shards() found none: where they were looked for, and
    any folder one level down that holds them."""
    what = "training" if split == TRAIN else split
    elsewhere = sorted({os.path.dirname(p) for p in tf.io.gfile.glob(
        os.path.join(data_dir, "*", f"{split}-*"))})
    found = (f"; found some in {', '.join(elsewhere[:3])}: pass that folder as --data_dir"
             if elsewhere else "")
    return (f"{data_dir}: no {what} shards ({split}-* in {data_dir} or "
            f"{os.path.join(data_dir, split)}){found}{hint}")


def read_metadata(data_dir):
    """metadata.json of `data_dir` (None if there is none); a garbled one is a
    DataError naming it."""
    path = os.path.join(data_dir, METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    return files.read_json(path, DataError, "write it again (python -m hvd_alexnet data build "
                           "writes it), or remove it and pass --num_classes", text)


def write_metadata(data_dir, metadata):
    files.write_json(os.path.join(data_dir, METADATA_FILE), metadata)
