"""Shards as other converters write them: TensorFlow's inception converter
(build_imagenet_data.py: labels are the synsets' lines in ImageNet's 1,000-synset
list, no metadata.json) and the TPU repository's imagenet_to_gcs.py (train/ and
validation/ subfolders, a fixed shard count so a small set leaves 0-byte shards,
classes numbered 1..N as present, no class text, no boxes). The keys, numbering
and folder layouts are written here from their descriptions."""

import json
import math
import os
import random
import zlib

import numpy as np
import pytest
import tensorflow as tf

from helpers import SMALL, launch
from hvd_alexnet.data import builder, labels, reader, schema
from hvd_alexnet.errors import DataError

# Four ImageNet synsets and their lines in the 1,000-synset list (the inception labels).
SYNSETS = {"n02119022": 278, "n02123045": 282, "n04596742": 910, "n07584110": 925}
TEXTS = {"n02119022": "red fox", "n02123045": "tabby cat", "n04596742": "wok",
         "n07584110": "consomme"}
TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2


def _jpeg(seed):
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).numpy()


def _images(split):
    """[(synset, file name, JPEG bytes)] of a split, shuffled as the converters do."""
    per = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
    items = [(s, f"{s}_{i}.JPEG", _jpeg(zlib.crc32(f"{split}/{s}/{i}".encode())))
             for s in sorted(SYNSETS) for i in range(per)]
    random.Random(0).shuffle(items)
    return items


def _tpu_example(jpeg, label, synset, name):
    """The TPU converter's keys: no class text, no bounding boxes."""
    feats = {"image/encoded": schema._bytes([jpeg]), "image/class/label": schema._ints([label]),
             "image/class/synset": schema._bytes([synset.encode()]),
             "image/format": schema._bytes([b"JPEG"]), "image/colorspace": schema._bytes([b"RGB"]),
             "image/channels": schema._ints([3]), "image/height": schema._ints([40]),
             "image/width": schema._ints([56]), "image/filename": schema._bytes([name.encode()])}
    return tf.train.Example(features=tf.train.Features(feature=feats))


def tpu_layout(root, train_shards=32, validation_shards=8):
    """root/train/train-NNNNN-of-00032 and root/validation/...: consecutive chunks of
    ceil(images / shards) images, so the last shards of a small set are 0 bytes."""
    label_of = {s: i + 1 for i, s in enumerate(sorted(SYNSETS))}
    for split, shards in (("train", train_shards), ("validation", validation_shards)):
        os.makedirs(os.path.join(root, split))
        items = _images(split)
        chunk = math.ceil(len(items) / shards)
        for s in range(shards):
            with tf.io.TFRecordWriter(os.path.join(root, split,
                                                   schema.shard_name(split, s, shards))) as w:
                for synset, name, jpeg in items[s * chunk:(s + 1) * chunk]:
                    w.write(_tpu_example(jpeg, label_of[synset], synset, name).SerializeToString())
    return str(root)


def inception_layout(root):
    """root/train-0000N-of-00002, root/validation-00000-of-00001, labels 278..925."""
    os.makedirs(root)
    for split, shards in (("train", 2), ("validation", 1)):
        items = _images(split)
        for s in range(shards):
            with tf.io.TFRecordWriter(os.path.join(root, schema.shard_name(split, s, shards))) as w:
                for synset, name, jpeg in items[s::shards]:
                    w.write(schema.make_example(jpeg, SYNSETS[synset], synset, TEXTS[synset], 40,
                                                56, name).SerializeToString())
    return str(root)


def build_layout(root):
    """The same images through `data build` (classes present numbered 1..4)."""
    raw = os.path.join(root, "raw")
    for split in ("train", "validation"):
        for synset, name, jpeg in _images(split):
            os.makedirs(os.path.join(raw, split, synset), exist_ok=True)
            with open(os.path.join(raw, split, synset, name), "wb") as f:
                f.write(jpeg)
    out = os.path.join(root, "tfrecord")
    builder.build(os.path.join(raw, "train"), out, 2, 1, os.path.join(raw, "validation"),
                  workers=1, log=lambda *a: None)
    return out


def _rewrite_label(path, record, label):
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    examples[record].features.feature["image/class/label"].int64_list.value[0] = label
    with tf.io.TFRecordWriter(path) as w:
        for e in examples:
            w.write(e.SerializeToString())


def _last_line(text):
    return [line for line in text.splitlines() if line.strip()][-1]


# --- Horovod-free: the pieces -------------------------------------------------

def test_empty_shards_count_as_zero_and_an_empty_share_is_named(tmp_path):
    root = tpu_layout(tmp_path / "tpu")
    files = schema.list_shards(root, "train")  # found in the train/ subfolder
    assert len(files) == 32 and all(f.startswith(f"{root}/train/train-") for f in files)
    counts = [reader.check_framing(f) for f in files]
    assert counts == [1] * 24 + [0] * 8  # 24 images, chunks of 1: 8 valid 0-byte shards
    shares = [sum(counts[r::2]) for r in range(2)]
    assert reader.steps_per_epoch(shares, 4) == 3
    with pytest.raises(DataError, match="rank 1's training shards are all empty"):
        reader.steps_per_epoch([12, 0], 4)


def test_shards_in_another_folder_are_pointed_to(tmp_path):
    os.makedirs(tmp_path / "imagenet" / "tf_records")
    (tmp_path / "imagenet" / "tf_records" / "train-00000-of-00001").write_bytes(b"")
    assert schema.list_shards(str(tmp_path / "imagenet"), "train") == []
    message = schema.no_shards(str(tmp_path / "imagenet"), "train")
    assert "no training shards" in message and f"{tmp_path}/imagenet/train" in message
    assert f"found some in {tmp_path}/imagenet/tf_records: pass that folder" in message


def test_label_problems_say_how_far_the_labels_run_and_which_synset_disagrees(tmp_path):
    root = inception_layout(tmp_path / "inception")
    seen = [e for f in schema.list_shards(root, "train") for e in labels.read(f)]
    assert sorted({e[2] for e in seen}) == sorted(SYNSETS.values())
    problem = labels.range_problem(seen, 1, 4)
    assert "label 925 is outside 1..4: the labels run to 925" in problem
    assert "--num_classes=1000" in problem
    assert labels.range_problem(seen, 1, 1000) is None
    known = [{"label": i + 1, "synset": s} for i, s in enumerate(sorted(SYNSETS))]
    problem = labels.disagreement(known, seen, "the model")
    assert problem.startswith("synset n")
    synset = problem.split()[1]
    assert (f"is label {sorted(SYNSETS).index(synset) + 1} in the model but label "
            f"{SYNSETS[synset]} in {root}/train-") in problem
    assert labels.disagreement([], seen, "") is None


# --- Real runs ----------------------------------------------------------------

def test_tpu_converter_layout_trains_evaluates_predicts_and_passes_doctor(tmp_path):
    root = tpu_layout(tmp_path / "tpu")
    model_dir = tmp_path / "m"
    res = launch(["doctor", f"--data_dir={root}", f"--model_dir={model_dir}", "--batch_size=4"],
                 np=2, launcher="gloo", timeout=180)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "smallest rank's share: 12 examples" in res.stdout
    assert "labels of 32 records" in res.stdout and "4 classes, in 1..1000" in res.stdout
    res = launch(["train", f"--data_dir={root}", f"--model_dir={model_dir}", *SMALL,
                  "--epochs=1"], np=2, launcher="gloo", timeout=240)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "1000 classes is the default (ImageNet's): neither --num_classes nor" in res.stdout
    assert "Accuracy @ 5 = " in res.stdout and "[8 examples]" in res.stdout
    desc = json.loads((model_dir / "model.json").read_text())
    named = {c["label"]: c["synset"] for c in desc["synsets"]}
    assert named and all(desc["classes"][label - 1] == synset for label, synset in named.items())
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_jpeg(7))
    res = launch(["predict", str(model_dir), str(photo), "--top=1000"], timeout=120)
    assert res.returncode == 0, res.stdout[-3000:]
    for synset in named.values():  # the records' synsets name the classes they saw
        assert synset in res.stdout
    res = launch(["evaluate", f"--data_dir={root}", f"--model_dir={model_dir}"], timeout=120)
    assert res.returncode == 0 and "[8 examples]" in res.stdout, res.stdout[-3000:]


def test_numberings_that_disagree_are_refused_before_any_work(tmp_path):
    built, other = build_layout(tmp_path / "built"), inception_layout(tmp_path / "inception")
    model_dir = tmp_path / "m"
    res = launch(["train", f"--data_dir={built}", f"--model_dir={model_dir}", *SMALL,
                  "--max_steps=1", "--noeval"], timeout=180)
    assert res.returncode == 0, res.stdout[-3000:]
    res = launch(["evaluate", f"--data_dir={other}", f"--model_dir={model_dir}"], timeout=120)
    assert res.returncode == 3, res.stdout[-3000:]
    assert f"in the model in {model_dir} but label " in res.stdout and "Accuracy" not in res.stdout
    line = _last_line(res.stdout)
    synset = line.split("synset ")[1].split()[0]
    assert (f"synset {synset} is label {sorted(SYNSETS).index(synset) + 1} in the model in "
            f"{model_dir} but label {SYNSETS[synset]} in {other}/") in line
    res = launch(["train", f"--data_dir={other}", f"--model_dir={model_dir}", *SMALL,
                  "--max_steps=2", "--noeval"], timeout=180)  # a resume on the other numbering
    assert res.returncode == 3 and f"in the model in {model_dir} but label" in res.stdout, \
        res.stdout[-3000:]
    res = launch(["train", f"--data_dir={other}", f"--model_dir={tmp_path}/fresh", *SMALL,
                  "--num_classes=4", "--max_steps=1"], timeout=180)
    assert res.returncode == 3, res.stdout[-3000:]
    assert "the labels run to " in res.stdout and "--num_classes=1000" in res.stdout
    assert "step 1/" not in res.stdout


@pytest.mark.parametrize("split", ["train", "validation"])
def test_doctor_reads_the_labels(tmp_path, split):
    data = build_layout(tmp_path / "built")
    shard = schema.list_shards(data, split)[0]
    _rewrite_label(shard, 3, 0)
    res = launch(["doctor", f"--data_dir={data}", f"--model_dir={tmp_path}/m"], timeout=120)
    assert res.returncode == 2, res.stdout[-3000:]
    assert f"{shard}: record 3: label 0 is outside 1..4" in res.stdout
    assert "ready to train" not in res.stdout
