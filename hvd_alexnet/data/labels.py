"""Labels and the classes they stand for, as the records themselves say.

Every ImageNet-schema record carries its label and its class's synset and text.
Converters number a subset of ImageNet differently: TensorFlow's inception
converter gives a class its line in the 1,000-synset list (278, 282, ...),
`data build` and the TPU converter number the classes present (1, 2, ...). A
model trained on one numbering scores 0 on the other, silently. So a run
records the label -> synset pairs it saw (model.json), and evaluate, a resumed
train and doctor compare the data's pairs with them.

An entry is (path, record index, label, synset, text).
"""

import uuid

import tensorflow as tf

from hvd_alexnet.data.reader import framed_record, label_problem

IMAGENET_CLASSES = 1000
_FEATURES = {
    "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    "image/class/synset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
}

SMALL_READ = 16 << 10  # bytes


def read(path, limit=None):
    """Entries of a shard's first `limit` records (every record: None). Reads
    whole records (the JPEG bytes too): the cost is the bytes of those records
    (a small read buffer when `limit` is set: the default 256 KB would read
    several 110 KB records to give one)."""
    ds = tf.data.TFRecordDataset(path, buffer_size=SMALL_READ if limit else None)
    if limit:
        ds = ds.take(limit)
    out = []
    for batch in ds.batch(256).map(lambda r: tf.io.parse_example(r, _FEATURES)):
        for label, synset, text in zip(batch["image/class/label"].numpy(),
                                       batch["image/class/synset"].numpy(),
                                       batch["image/class/text"].numpy()):
            out.append((path, len(out), int(label), synset.decode(), text.decode()))
    return out


def read_first(path):
    """The entry of a shard's record 0 ([] for a shard without records), its
    bytes read alone (reader.framed_record: a TFRecordDataset on the shard
    would have the system read ahead, 1.5 MB a shard here), then read back, its
    checksums checked, from TensorFlow's memory file system."""
    if "://" in path:
        return read(path, 1)
    framed = framed_record(path)
    if not framed:
        return []
    copy = f"ram://hvd_alexnet/{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(copy, "wb") as f:
        f.write(framed)
    try:
        return [(path, *entry[1:]) for entry in read(copy, 1)]
    finally:
        tf.io.gfile.remove(copy)


def range_problem(entries, first_label, num_classes):
    """One line about labels outside first..first+N-1 (None if all are in range):
    a label one below the range suggests --first_label, labels above it say how
    far they run and suggest the class count."""
    last = first_label + num_classes - 1
    low = [e for e in entries if e[2] < first_label]
    if low:
        path, index, label = low[0][:3]
        return label_problem(path, index, label, first_label, num_classes)
    high = [e for e in entries if e[2] > last]
    if not high:
        return None
    path, index, label = max(high, key=lambda e: e[2])[:3]
    need = label - first_label + 1
    hint = (f"--num_classes={IMAGENET_CLASSES} if they number ImageNet's {IMAGENET_CLASSES} "
            f"synsets (as TensorFlow's inception converter does), or at least "
            f"--num_classes={need}" if label <= IMAGENET_CLASSES else f"--num_classes={need}")
    return (f"{path}: record {index}: label {label} is outside {first_label}..{last}: the "
            f"labels run to {label} at least, more than --num_classes={num_classes}: pass {hint}")


def read_names(path):
    """{synset: name} from lines of `synset name` (ImageNet's imagenet_metadata.txt,
    tab-separated; LOC_synset_mapping.txt and synset_words.txt, a space)."""
    texts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(None, 1)
            if parts:
                texts[parts[0]] = parts[1] if len(parts) > 1 else parts[0]
    return texts


def from_files(synsets_file, names_file, first_label):
    """[{"label", "synset", "text"}] of every class: ImageNet's synset list, one a
    line in label order (label = first_label + its line: how TensorFlow's
    build_imagenet_data.py numbers them), named from `names_file` where it has
    the synset. None without a synset list."""
    if not synsets_file:
        return None
    names = read_names(names_file) if names_file else {}
    with open(synsets_file) as f:
        synsets = [line.split()[0] for line in f if line.strip()]
    return [{"label": first_label + i, "synset": s, "text": names.get(s, s)}
            for i, s in enumerate(synsets)]


def renamed(classes, names):
    """`classes` ([{"label", "synset", "text"}]) with each synset's name from `names`."""
    return [{**c, "text": names.get(c.get("synset"), c.get("text"))} for c in classes]


def classes(entries):
    """[{"label", "synset", "text"}] by label, one per label seen (metadata.json's form)."""
    seen = {}
    for _, _, label, synset, text in entries:
        seen.setdefault(label, {"label": label, "synset": synset, "text": text})
    return [seen[k] for k in sorted(seen)]


def disagreement(known, entries, known_as):
    """One line naming a synset that has two labels (or a label two synsets)
    between `known` ([{"label", "synset"}], what `known_as` says) and the data's
    `entries`, or among the entries themselves; None if they agree."""
    label_of = {c["synset"]: (c["label"], known_as) for c in known if c.get("synset")}
    synset_of = {c["label"]: (c["synset"], known_as) for c in known if c.get("synset")}
    for path, index, label, synset, _ in entries:
        if not synset:  # a converter that writes no synset: nothing to compare
            continue
        here = f"{path} (record {index})"
        other, where = label_of.setdefault(synset, (label, here))
        if other != label:
            return (f"synset {synset} is label {other} in {where} but label {label} in {here}: "
                    f"the two were numbered by different converters; convert both the same "
                    f"way (or train a new model on this numbering)")
        other, where = synset_of.setdefault(label, (synset, here))
        if other != synset:
            return (f"label {label} is synset {other} in {where} but {synset} in {here}: the "
                    f"two were numbered by different converters")
    return None
