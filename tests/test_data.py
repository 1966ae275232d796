import contextlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from hvd_alexnet.data import builder, preprocess, reader, schema


def _write_image(path, h, w, value, fmt="jpeg"):
    rng = np.random.default_rng(value)
    image = tf.constant(rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8))
    data = tf.io.encode_jpeg(image) if fmt == "jpeg" else tf.io.encode_png(image)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, data)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    raw = root / "raw"
    sizes = {"n02": (90, 60), "n01": (50, 80)}  # sorted: n01 -> label 1, n02 -> label 2
    for c, (h, w) in sizes.items():
        for i in range(6):
            _write_image(str(raw / c / f"{c}_{i}.JPEG"), h, w, i)
    _write_image(str(raw / "n02" / "odd_one.png"), 90, 60, 99, fmt="png")  # re-encoded
    (root / "labels.txt").write_text("n01 tench, Tinca tinca\nn02 goldfish\n")
    out = root / "records"
    meta = builder.build(str(raw), str(out), train_shards=3, validation_shards=1,
                         validation_fraction=0.25, labels_file=str(root / "labels.txt"),
                         workers=2, log=lambda *a: None)
    return out, meta, sizes


def _read_all(files):
    feats = {k: tf.io.FixedLenFeature([], t) for k, t in [
        ("image/class/label", tf.int64), ("image/height", tf.int64), ("image/width", tf.int64),
        ("image/class/synset", tf.string), ("image/class/text", tf.string),
        ("image/encoded", tf.string), ("image/filename", tf.string)]}
    return [tf.io.parse_single_example(r, feats) for r in tf.data.TFRecordDataset(files)]


def test_build_writes_the_imagenet_schema(built):
    out, meta, sizes = built
    train = schema.list_shards(str(out), "train")
    val = schema.list_shards(str(out), "validation")
    assert [os.path.basename(f) for f in train] == [f"train-0000{i}-of-00003" for i in range(3)]
    assert len(val) == 1
    records = _read_all(train + val)
    assert len(records) == 13
    splits = meta["splits"]
    assert splits["train"]["num_examples"] + splits["validation"]["num_examples"] == 13
    assert meta["splits"]["validation"]["num_examples"] == 4  # round(6 * .25) + round(7 * .25)
    assert sum(meta["splits"]["train"]["shard_examples"].values()) == len(_read_all(train))
    texts = {1: b"tench, Tinca tinca", 2: b"goldfish"}
    for r in records:
        label = int(r["image/class/label"])
        synset = r["image/class/synset"].numpy().decode()
        assert label == {"n01": 1, "n02": 2}[synset]
        assert r["image/class/text"].numpy() == texts[label]
        h, w = sizes[synset]
        assert (int(r["image/height"]), int(r["image/width"])) == (h, w)
        assert list(tf.io.extract_jpeg_shape(r["image/encoded"]).numpy()) == [h, w, 3]
    assert meta["num_classes"] == 2
    assert [c["synset"] for c in meta["classes"]] == ["n01", "n02"]


def test_build_refuses_an_undecodable_file(tmp_path):
    _write_image(str(tmp_path / "raw" / "a" / "ok.jpeg"), 40, 40, 1)
    (tmp_path / "raw" / "a" / "broken.jpeg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(reader.DataError, match="broken.jpeg"):
        builder.build(str(tmp_path / "raw"), str(tmp_path / "out"), 1, 1, workers=1,
                      log=lambda *a: None)


def test_preprocessing_shapes_and_range_eager_and_in_tf_data(built):
    out, _, _ = built
    record = next(iter(tf.data.TFRecordDataset(schema.list_shards(str(out), "train"))))
    jpeg, label, boxes = schema.parse(record)
    assert boxes.shape == (0, 4)
    for image in (preprocess.train_image(jpeg, boxes, 67, seed=tf.constant([1, 2], tf.int64)),
                  preprocess.eval_image(jpeg, 99)):
        assert image.dtype == tf.uint8 and image.shape[2] == 3  # 1 byte a value to copy
        normalized = preprocess.normalize(image)  # on the device, in the step
        assert -1.0 <= float(tf.reduce_min(normalized)) and float(tf.reduce_max(normalized)) <= 1
        assert float(tf.math.reduce_std(normalized)) > 0.05  # a real picture, not a blank
    ds = reader.train_dataset(schema.list_shards(str(out), "train"), 4, 67, 2, steps=2)
    batches = list(ds)
    assert len(batches) == 2
    for images, labels, _ in batches:
        assert images.shape == (4, 67, 67, 3) and images.dtype == tf.uint8
        assert labels.dtype == tf.int32
        assert set(labels.numpy()) <= {0, 1}  # 1..N on disk become 0..N-1
    ev = list(reader.eval_dataset(schema.list_shards(str(out), "validation"), 2, 80, 2))
    assert sum(int(b[0].shape[0]) for b in ev) == 4 and ev[0][0].shape[1:] == (80, 80, 3)


def test_same_seed_same_batches_and_resume_skips_exactly(built):
    out, _, _ = built
    files = schema.list_shards(str(out), "train")
    full = [b[0].numpy() for b in reader.train_dataset(files, 2, 67, 2, steps=4, seed=3, epoch=1)]
    again = [b[0].numpy() for b in reader.train_dataset(files, 2, 67, 2, steps=4, seed=3, epoch=1)]
    tail = [b[0].numpy() for b in reader.train_dataset(files, 2, 67, 2, steps=4, seed=3, epoch=1,
                                                      skip_steps=2)]
    other = [b[0].numpy() for b in reader.train_dataset(files, 2, 67, 2, steps=4, seed=3, epoch=2)]
    assert all(np.array_equal(a, b) for a, b in zip(full, again))
    assert len(tail) == 2 and all(np.array_equal(a, b) for a, b in zip(full[2:], tail))
    assert not all(np.array_equal(a, b) for a, b in zip(full, other))


def test_one_pipeline_for_the_run_is_its_epochs_each_reshuffled(built):
    """epochs=3 from epoch 1 gives epoch 1's batches, then 2's, then 3's, as
    one-epoch pipelines give them; a resume in epoch 1 gives the same tail."""
    out, _, _ = built
    files = schema.list_shards(str(out), "train")
    epoch = lambda e, **kw: [b[0].numpy() for b in reader.train_dataset(
        files, 2, 67, 2, steps=4, seed=3, epoch=e, **kw)]
    each = epoch(1) + epoch(2) + epoch(3)
    run = epoch(1, epochs=3)
    assert len(run) == 12 and all(np.array_equal(a, b) for a, b in zip(run, each))
    resumed = epoch(1, epochs=3, skip_steps=3)
    assert len(resumed) == 9 and all(np.array_equal(a, b) for a, b in zip(resumed, each[3:]))
    assert not all(np.array_equal(a, b) for a, b in zip(each[:4], each[4:8]))  # reshuffled


def test_the_evaluation_crop_keeps_the_aspect_ratio():
    """A 96 x 160 image (a ramp: red = column, green = 2 x row) to 64 x 64: the
    central square of side 96 / 1.145 = 83 (top 6, left 38), resized. Worked
    out by hand: output column j samples column 38 + (j + 0.5) x 83/64 - 0.5, so
    the first is 38.15 and the last 119.85; rows likewise 6.15 and 88.85. (The
    squashed central 87.5 % would start at column 10.) JPEG's own rounding moves
    a decoded ramp by up to 3."""
    rows, cols = np.meshgrid(np.arange(96), np.arange(160), indexing="ij")
    ramp = np.stack([cols, 2 * rows, np.zeros_like(rows)], -1).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(tf.constant(ramp), quality=100, chroma_downsampling=False)
    assert preprocess.eval_window(96, 160).numpy().tolist() == [6, 38, 83, 83]
    image = preprocess.eval_image(jpeg, 64).numpy().astype(float)
    assert image.shape == (64, 64, 3)
    red, green = image[:, :, 0].mean(axis=0), image[:, :, 1].mean(axis=1)
    np.testing.assert_allclose([red[0], red[-1]], [38.15, 119.85], atol=3)
    np.testing.assert_allclose([green[0], green[-1]], [2 * 6.15, 2 * 88.85], atol=3)


def _write_records(path, labels):
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    with tf.io.TFRecordWriter(path) as w:
        for label in labels:
            example = schema.make_example(jpeg, label or 0, "s", "t", 8, 8, "f")
            if label is None:
                del example.features.feature["image/class/label"]
            w.write(example.SerializeToString())


@pytest.mark.parametrize("bad", [0, 11, None])  # None: the record has no label at all
def test_out_of_range_label_names_the_file_and_record(tmp_path, bad):
    path = str(tmp_path / "train-00000-of-00001")
    _write_records(path, [1, 2, bad, 3])
    ds = reader.train_dataset([path], 4, 67, 10, steps=1, shuffle=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00000-of-00001") as e:
        list(ds)
    assert "bad label" in e.value.message and "record" in e.value.message


def test_framing_check_finds_truncation(tmp_path):
    path = str(tmp_path / "train-00000-of-00001")
    _write_records(path, [1, 2, 3])
    assert reader.check_framing(path) == 3
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-40])
    with pytest.raises(reader.DataError, match=r"train-00000-of-00001: truncated in record 2"):
        reader.check_framing(path)
    open(path, "wb").write(b"")  # a valid shard without records (the TPU converter's)
    assert reader.check_framing(path) == 0


def _bytes_read():
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.parametrize("headers", ["pread", "gfile"])
def test_counting_records_reads_their_headers_only(tmp_path, monkeypatch, headers):
    """50 records of 110 KB (ImageNet's average JPEG): counting them reads their
    12-byte headers, not the file (a buffered reader, TensorFlow's GFile as
    every start used before, read 0.95 of such a file). The bytes are those
    that this process's read calls returned (/proc/self/io)."""
    path = str(tmp_path / "train-00000-of-00001")
    rng = np.random.default_rng(0)
    with tf.io.TFRecordWriter(path) as w:
        for _ in range(50):
            w.write(rng.bytes(110 << 10))
    if headers == "gfile":
        monkeypatch.setattr(reader, "_header_reader", reader._gfile_headers)
    before = _bytes_read()
    assert reader.check_framing(path) == 50
    share = (_bytes_read() - before) / os.path.getsize(path)
    assert share < 0.01 if headers == "pread" else share > 0.5, share


def test_headers_read_by_device_blocks_find_every_record(tmp_path, monkeypatch):
    """Records of every length from 0 to 1,500 bytes, so that headers straddle the
    512-byte blocks that O_DIRECT reads: the offsets match a plain pread's, and a
    truncated file is still named. The file system of the test's temp folder
    takes O_DIRECT (a disk here and in CI; a tmpfs before Linux 6.6 would not)."""
    path = str(tmp_path / "train-00000-of-00001")
    rng = np.random.default_rng(1)
    with tf.io.TFRecordWriter(path) as w:
        for n in rng.integers(0, 1500, 400):
            w.write(rng.bytes(int(n)))
    with reader._direct_reader(path) as direct:
        assert direct is not None, "O_DIRECT refused"
    offsets = list(reader.record_offsets(path))
    with monkeypatch.context() as m:
        m.setattr(reader, "_direct_reader", lambda p: contextlib.nullcontext(None))
        assert list(reader.record_offsets(path)) == offsets and len(offsets) == 400
    with open(path, "r+b") as f:
        f.truncate(offsets[-1] + 7)  # in the last record's header
    with pytest.raises(reader.DataError, match="truncated in the header of record 399"):
        reader.check_framing(path)


def _write_classes(path, labels):
    """Records of these labels, each its own synset (n<label>)."""
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    with tf.io.TFRecordWriter(path) as w:
        for label in labels:
            w.write(schema.make_example(jpeg, label, f"n{label}", f"name {label}", 8, 8,
                                        "f").SerializeToString())


def test_record_0_is_read_alone_and_checked(tmp_path):
    """A start's survey reads record 0 of each shard by itself (its blocks, no
    read-ahead) and gets the entry a reader of the shard gets; a shard without
    records has none; a damaged record 0 fails as TensorFlow's reader fails."""
    from hvd_alexnet.data import labels
    path = str(tmp_path / "train-00000-of-00001")
    _write_classes(path, [3, 5, 7])
    assert labels.read_first(path) == labels.read(path, 1) == [(path, 0, 3, "n3", "name 3")]
    open(tmp_path / "empty", "wb").close()
    assert labels.read_first(str(tmp_path / "empty")) == []
    data = bytearray(open(path, "rb").read())
    data[20] ^= 0xFF  # in record 0's data
    open(path, "wb").write(data)
    with pytest.raises(tf.errors.DataLossError, match="corrupted record at 12"):
        labels.read_first(path)


def _prepare(data_dir):
    from absl import flags

    from hvd_alexnet import config
    from hvd_alexnet.data import prepare
    fv = config.define(flags.FlagValues())
    fv(["train", f"--data_dir={data_dir}", "--model_dir=unused", "--num_classes=10"])
    return prepare.prepare_data(config.resolve(fv)[0], 0, 1, lambda mine: [mine])


def test_a_start_after_the_first_reads_no_shard_and_a_changed_one_is_counted_again(
        tmp_path, monkeypatch):
    """The first start counts each shard from its headers and reads its record 0,
    and remembers both beside the shards; the next start reads neither (the
    header and record readers would raise) and agrees. A shard truncated since
    (its size changed) is counted again: the truncation is named, as before.
    With the data folder read-only (a real read-only mount), the survey goes
    to the user's cache."""
    import subprocess

    from helpers import mount_tmpfs
    from hvd_alexnet.data import labels, survey
    data = tmp_path / "data"
    data.mkdir()
    mount_tmpfs(data, "16m")
    try:
        for name, classes in (("train-00000-of-00002", [1, 2, 3]), ("train-00001-of-00002", [4, 5]),
                              ("validation-00000-of-00001", [6, 7])):
            _write_classes(str(data / name), classes)
        first = _prepare(str(data))
        assert (data / survey.SURVEY_FILE).exists()
        with monkeypatch.context() as m:
            m.setattr(reader, "record_offsets", lambda path: pytest.fail(f"read {path}"))
            m.setattr(labels, "read", lambda path, limit=None: pytest.fail(f"read {path}"))
            again = _prepare(str(data))
        assert (again.num_train, again.num_val, again.classes) == (5, 2, first.classes)
        shard = data / "train-00001-of-00002"
        shard.write_bytes(shard.read_bytes()[:-40])
        with pytest.raises(reader.DataError, match="train-00001-of-00002: truncated in record 1"):
            _prepare(str(data))
        _write_classes(str(shard), [4, 5])  # whole again; then the folder read-only
        (data / survey.SURVEY_FILE).unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(data)], check=True)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        assert _prepare(str(data)).num_train == 5
        assert not (data / survey.SURVEY_FILE).exists()
        (cached,) = (tmp_path / "cache" / "hvd_alexnet").iterdir()
        assert sorted(json.loads(cached.read_text())) == sorted(
            os.listdir(data)), cached.read_text()
    finally:
        subprocess.run(["umount", "-l", str(data)])


def test_imagenets_synset_list_and_names_name_every_class(tmp_path):
    """Shards as TensorFlow's build_imagenet_data.py writes them (no metadata.json):
    the classes come from each shard's record 0, so most go unnamed ("class N"
    in export and predict). --synsets_file (its --labels_file: the synsets in
    label order) and --names_file (its --imagenet_metadata_file) name all of
    them; a list that numbers the data otherwise is refused, naming it."""
    from absl import flags

    from hvd_alexnet import config, inference
    from hvd_alexnet.data import prepare
    data = tmp_path / "data"
    data.mkdir()
    _write_classes(str(data / "train-00000-of-00002"), [2, 3])
    _write_classes(str(data / "train-00001-of-00002"), [5])
    synsets = [f"n{label}" for label in range(1, 7)]  # _write_classes' synset of label L
    (tmp_path / "synsets.txt").write_text("\n".join(synsets) + "\n")
    (tmp_path / "names.txt").write_text("".join(f"{s}\tthing {s}\n" for s in synsets))

    def prepare_with(*extra):
        fv = config.define(flags.FlagValues())
        fv(["train", f"--data_dir={data}", "--model_dir=unused", "--num_classes=6", "--noeval",
            *extra])
        return prepare.prepare_data(config.resolve(fv)[0], 0, 1, lambda mine: [mine])

    without = inference.describe(67, 6, prepare_with().classes)["classes"]
    assert without == ["class 1", "name 2", "class 3", "class 4", "name 5", "class 6"]
    named = prepare_with(f"--synsets_file={tmp_path / 'synsets.txt'}",
                         f"--names_file={tmp_path / 'names.txt'}")
    assert inference.describe(67, 6, named.classes)["classes"] == [
        f"thing n{label}" for label in range(1, 7)]
    (tmp_path / "other.txt").write_text("\n".join(reversed(synsets)) + "\n")
    with pytest.raises(reader.DataError, match=r"synset n2 is label 5 in .*other.txt but label 2"):
        prepare_with(f"--synsets_file={tmp_path / 'other.txt'}")
