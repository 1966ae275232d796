"""ImageNet as it is downloaded (ILSVRC2012's flat validation folder, its ground
truth, bounding boxes, the synset texts), shards that tf_cnn_benchmarks' reader
parses, and data whose labels start at 0."""

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

from helpers import ROOT, SMALL, launch
from hvd_alexnet.data import schema

SYNSETS = ("n01440764", "n01443537", "n01484850")  # sorted: labels 1, 2, 3
TEXTS = {"n01440764": "tench, Tinca tinca", "n01443537": "goldfish, Carassius auratus",
         "n01484850": "great white shark"}


def _jpeg(seed, size=(40, 56)):
    rng = np.random.default_rng(seed)
    return tf.io.encode_jpeg(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).numpy()


def _ilsvrc_tree(root):
    """train/<synset>/<synset>_N.JPEG, val/ILSVRC2012_val_000000NN.JPEG (flat), the
    validation ground truth (a synset a line, in file order), boxes for some
    images (process_bounding_boxes.py's CSV) and imagenet_metadata.txt."""
    for c, synset in enumerate(SYNSETS):
        os.makedirs(root / "train" / synset)
        for i in range(4):
            (root / "train" / synset / f"{synset}_{i}.JPEG").write_bytes(_jpeg(c * 10 + i))
    os.makedirs(root / "val")
    truth = [SYNSETS[i % 3] for i in range(9)]
    for i, _ in enumerate(truth):
        (root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(_jpeg(100 + i))
    (root / "val_labels.txt").write_text("\n".join(truth) + "\n")
    boxes = {"n01443537_2.JPEG": [(0.1, 0.2, 0.6, 0.9), (0.5, 0.0, 1.0, 0.5)],
             "ILSVRC2012_val_00000004.JPEG": [(0.25, 0.25, 0.75, 0.75)]}
    (root / "boxes.csv").write_text("".join(f"{name},{','.join(map(str, b))}\n"
                                            for name, bs in boxes.items() for b in bs))
    (root / "metadata.txt").write_text("".join(f"{s}\t{t}\n" for s, t in TEXTS.items())
                                       + "n99999999\tnot in this subset\n")
    return truth, boxes


def _records(out, split):
    return [tf.train.Example.FromString(r.numpy())
            for r in tf.data.TFRecordDataset(schema.list_shards(str(out), split))]


def _value(example, key):
    f = example.features.feature[key]
    return list(f.bytes_list.value or f.int64_list.value or f.float_list.value)


def test_ilsvrc2012_as_downloaded(tmp_path):
    truth, boxes = _ilsvrc_tree(tmp_path)
    out = tmp_path / "tfrecord"
    res = subprocess.run(
        [sys.executable, "-m", "hvd_alexnet", "data", "build", f"--train_dir={tmp_path}/train",
         f"--validation_dir={tmp_path}/val", f"--validation_labels_file={tmp_path}/val_labels.txt",
         f"--bounding_box_file={tmp_path}/boxes.csv",
         f"--imagenet_metadata_file={tmp_path}/metadata.txt", f"--output_dir={out}",
         "--train_shards=2", "--validation_shards=1", "--workers=1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    val = _records(out, "validation")
    assert len(val) == 9 and len(_records(out, "train")) == 12
    for ex in val:  # each validation image has its ground-truth synset and that label
        name = _value(ex, "image/filename")[0].decode()
        synset = truth[int(name[15:23]) - 1]
        assert _value(ex, "image/class/synset")[0].decode() == synset
        assert _value(ex, "image/class/label") == [SYNSETS.index(synset) + 1]
        assert _value(ex, "image/class/text")[0].decode() == TEXTS[synset]
    for ex in _records(out, "train") + val:  # boxes where the file gives them, else none
        name = _value(ex, "image/filename")[0].decode()
        want = boxes.get(name, [])
        got = list(zip(*(_value(ex, f"image/object/bbox/{k}")
                         for k in ("xmin", "ymin", "xmax", "ymax"))))
        assert len(got) == len(want)
        if want:
            np.testing.assert_allclose(got, want, rtol=1e-6)
    meta = schema.read_metadata(str(out))
    assert meta["num_classes"] == 3 and meta["classes"][1]["text"] == TEXTS["n01443537"]


def test_shards_parse_with_tf_cnn_benchmarks_feature_map(tiny_data):
    """The keys and types that tf_cnn_benchmarks' parse_example_proto asks for."""
    sparse = tf.io.VarLenFeature(tf.float32)
    feature_map = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/class/label": tf.io.FixedLenFeature([1], tf.int64, default_value=-1),
        "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
        **{f"image/object/bbox/{k}": sparse for k in ("xmin", "ymin", "xmax", "ymax")}}
    meta = schema.read_metadata(tiny_data)
    for split in ("train", "validation"):
        for record in tf.data.TFRecordDataset(schema.list_shards(tiny_data, split)):
            f = tf.io.parse_single_example(record, feature_map)
            assert 1 <= int(f["image/class/label"][0]) <= meta["num_classes"]
            assert f["image/class/text"].numpy()
            assert tf.io.decode_jpeg(f["image/encoded"], channels=3).shape[2] == 3


def _zero_based(out, first_record_label=0):
    """2 train shards + 1 validation shard, labels 0..3 as TensorFlow Datasets
    writes them, no metadata.json; record 0 of train shard 0 has
    `first_record_label`."""
    os.makedirs(out)
    rng = np.random.default_rng(0)
    for split, shards, per in (("train", 2, 24), ("validation", 1, 8)):
        for s in range(shards):
            path = os.path.join(out, schema.shard_name(split, s, shards))
            with tf.io.TFRecordWriter(path) as w:
                for i in range(per):
                    label = first_record_label if (split, s, i) == ("train", 0, 0) else \
                        int(rng.integers(0, 4))
                    w.write(schema.make_example(_jpeg(i), label, f"n{label:08d}", "t", 40, 56,
                                                f"{i}.jpg").SerializeToString())
    return str(out)


def test_labels_from_0_are_named_before_training_and_taken_with_first_label(tmp_path):
    data = _zero_based(tmp_path / "data")
    args = ["train", f"--data_dir={data}", *SMALL, "--num_classes=4", "--max_steps=2"]
    res = launch([*args, f"--model_dir={tmp_path}/a"], np=2, launcher="gloo", timeout=180)
    assert res.returncode == 3, res.stdout[-3000:]
    assert (f"{data}/train-00000-of-00002: record 0: label 0 is outside 1..4: the labels "
            f"seem to start at 0") in res.stdout and "pass --first_label=0" in res.stdout, \
        res.stdout[-3000:]
    assert "step 1/" not in res.stdout  # refused before any training
    res = launch([*args, "--first_label=0", f"--model_dir={tmp_path}/b"], np=2,
                 launcher="gloo", timeout=180)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Accuracy @ 1 = " in res.stdout and "[8 examples]" in res.stdout


def test_a_zero_label_past_the_first_record_is_one_clean_line(tmp_path):
    """Record 0 of every shard is fine; the reader's check names a later one."""
    data = _zero_based(tmp_path / "data", first_record_label=1)
    for shard in schema.list_shards(data, "train")[1:] + schema.list_shards(data, "validation"):
        os.remove(shard)  # one shard for one rank
    os.rename(os.path.join(data, "train-00000-of-00002"),
              os.path.join(data, "train-00000-of-00001"))
    res = launch(["train", f"--data_dir={data}", f"--model_dir={tmp_path}/m", *SMALL,
                  "--num_classes=4", "--noeval", "--noshuffle", "--max_steps=6"], timeout=180)
    assert res.returncode == 3, res.stdout[-3000:]
    line = [ln for ln in res.stdout.splitlines() if "hvd_alexnet train: data error" in ln]
    assert len(line) == 1 and "label 0 is outside 1..4" in line[0], res.stdout[-3000:]
    assert "pass --first_label=0" in line[0] and "__wrapped__" not in line[0]
