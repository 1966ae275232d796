r"""`data build`: a folder of JPEGs in class subfolders -> ImageNet-schema TFRecord shards.

    python -m hvd_alexnet data build --train_dir raw/train --validation_dir raw/val \
        --output_dir imagenet_tfrecord --train_shards 1024 --validation_shards 128

ImageNet as downloaded (ILSVRC2012: validation images in one folder), with the
inputs TensorFlow's build_imagenet_data.py takes:

    python -m hvd_alexnet data build --train_dir ILSVRC2012/train \
        --validation_dir ILSVRC2012/val \
        --validation_labels_file imagenet_2012_validation_synset_labels.txt \
        --bounding_box_file imagenet_2012_bounding_boxes.csv \
        --imagenet_metadata_file imagenet_metadata.txt --output_dir imagenet_tfrecord

Labels are 1..N in the sorted order of the class folder names (0 stays the unused
"background", as in ImageNet). Shards are written in parallel worker processes,
each to a temporary name renamed into place when complete.
"""

import concurrent.futures as cf
import glob
import multiprocessing
import os
import random

from hvd_alexnet.data import labels
from hvd_alexnet.errors import DataError, UsageError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def _class_images(root):
    """{class folder name: sorted image paths}."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a directory")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise DataError(f"{root}: no class subfolders (want e.g. {root}/n01440764/x.JPEG)")
    return {c: sorted(os.path.join(root, c, f) for f in os.listdir(os.path.join(root, c))
                      if f.lower().endswith(IMAGE_EXTENSIONS)) for c in classes}


def _flat_validation(folder, labels_file):
    """ILSVRC2012's validation set as downloaded: every image in one folder and a
    file with one synset a line, for the images in sorted name order (the
    ground truth that TensorFlow's build_imagenet_data.py reads)."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: not a directory")
    images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    with open(labels_file) as f:
        synsets = [line.strip() for line in f if line.strip()]
    if len(synsets) != len(images):
        raise DataError(f"{labels_file}: {len(synsets)} labels for {len(images)} images in "
                        f"{folder} (want one synset a line, in the images' sorted order)")
    by_class = {}
    for image, synset in zip(images, synsets):
        by_class.setdefault(synset, []).append(os.path.join(folder, image))
    return by_class


def _read_boxes(path):
    """{image file name: [(xmin, ymin, xmax, ymax)]} from a bounding-box file as
    TensorFlow's process_bounding_boxes.py writes it: `name,xmin,ymin,xmax,ymax`
    a line, coordinates relative to the image (0..1)."""
    boxes = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(",")
            try:
                box = tuple(float(x) for x in parts[1:5])
            except ValueError:
                box = ()
            if len(parts) != 5 or len(box) != 4 or not all(0 <= x <= 1 for x in box):
                raise DataError(f"{path}: line {number}: want name,xmin,ymin,xmax,ymax with "
                                f"coordinates in 0..1, got {line.strip()!r}")
            boxes.setdefault(os.path.basename(parts[0]), []).append(box)
    return boxes


def _split(train, validation_fraction, rng):
    """Moves a fraction of each class into a validation set."""
    val = {}
    for c, paths in train.items():
        paths = list(paths)
        rng.shuffle(paths)
        k = int(round(len(paths) * validation_fraction))
        val[c], train[c] = sorted(paths[:k]), sorted(paths[k:])
    return train, val


def _jpeg_and_shape(path, tf):
    """JPEG bytes with 3 channels and their height, width; re-encodes anything else."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        h, w, c = (int(x) for x in tf.io.extract_jpeg_shape(data))
        if c == 3:
            return data, h, w
    except tf.errors.InvalidArgumentError:
        pass  # PNG, CMYK or otherwise unusual: decode and re-encode below
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError as e:
        raise DataError(f"{path}: not a decodable image ({e.message.splitlines()[0]})") from None
    return tf.io.encode_jpeg(image, quality=95).numpy(), int(image.shape[0]), int(image.shape[1])


def write_shard(items, path):
    """Writes [(image path, label, synset, text, boxes)] to one TFRecord shard;
    returns its count."""
    import tensorflow as tf  # in the worker: each spawned worker loads its own

    from hvd_alexnet.data import schema
    tmp = path + ".tmp"
    with tf.io.TFRecordWriter(tmp) as writer:
        for image_path, label, synset, text, boxes in items:
            jpeg, h, w = _jpeg_and_shape(image_path, tf)
            example = schema.make_example(jpeg, label, synset, text, h, w,
                                          os.path.basename(image_path), boxes)
            writer.write(example.SerializeToString())
    os.replace(tmp, path)
    return len(items)


def _items(by_class, label_of, texts, boxes, rng):
    items = [(p, label_of[c], c, texts.get(c, c), boxes.get(os.path.basename(p), ()))
             for c, paths in by_class.items() for p in paths]
    rng.shuffle(items)  # shards mix classes, so each rank's subset is representative
    return items


def build(train_dir, output_dir, train_shards=8, validation_shards=2, validation_dir=None,
          validation_fraction=0.0, labels_file=None, workers=None, seed=0, log=print,
          validation_labels_file=None, bounding_box_file=None):
    """Writes train-*/validation-* shards and metadata.json; returns the metadata.
    With `validation_labels_file`, `validation_dir` is ILSVRC2012's flat folder;
    `bounding_box_file` adds boxes (image/object/bbox/*) to the images it names."""
    from hvd_alexnet.data import schema
    rng = random.Random(seed)
    train = _class_images(train_dir)
    if validation_dir:
        val = (_flat_validation(validation_dir, validation_labels_file)
               if validation_labels_file else _class_images(validation_dir))
        unknown = sorted(set(val) - set(train))
        if unknown:
            raise DataError(f"{validation_dir}: classes not in {train_dir}: {unknown[:5]}")
    else:
        train, val = _split(train, validation_fraction, rng)
    classes = sorted(train)
    label_of = {c: i + 1 for i, c in enumerate(classes)}
    texts = labels.read_names(labels_file) if labels_file else {}
    boxes = _read_boxes(bounding_box_file) if bounding_box_file else {}
    splits = {schema.TRAIN: (_items(train, label_of, texts, boxes, rng), train_shards),
              schema.VALIDATION: (_items(val, label_of, texts, boxes, rng), validation_shards)}
    os.makedirs(output_dir, exist_ok=True)
    jobs = []
    for split, (items, shards) in splits.items():
        if not items:
            continue
        if shards < 1 or shards > len(items):
            raise DataError(f"{split}: cannot write {len(items)} images into {shards} shards")
        for i in range(shards):
            jobs.append((split, items[i::shards], os.path.join(
                output_dir, schema.shard_name(split, i, shards))))
    _refuse_other_shards(output_dir, {path for _, _, path in jobs})
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    log(f"data build: {sum(len(j[1]) for j in jobs)} images into {len(jobs)} shards "
        f"with {workers} workers -> {output_dir}")
    counts = {}
    ctx = multiprocessing.get_context("spawn")  # TensorFlow does not survive fork
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(write_shard, items, path): (split, path)
                   for split, items, path in jobs}
        for done, future in enumerate(cf.as_completed(futures), 1):
            split, path = futures[future]
            counts[os.path.basename(path)] = future.result()
            log(f"data build: [{done}/{len(jobs)}] {os.path.basename(path)}")
    metadata = {
        "num_classes": len(classes),
        "classes": [{"label": label_of[c], "synset": c, "text": texts.get(c, c)} for c in classes],
        "splits": {split: {"num_examples": len(items), "num_shards": shards if items else 0,
                           "shard_examples": {k: v for k, v in sorted(counts.items())
                                              if k.startswith(split + "-")}}
                   for split, (items, shards) in splits.items()},
    }
    schema.write_metadata(output_dir, metadata)
    return metadata


def _refuse_other_shards(output_dir, paths):
    """Shards of an earlier build that this one would not overwrite (another
    shard count) would still match train-* / validation-*, and every reader
    would read their examples beside the new ones'."""
    from hvd_alexnet.data import schema
    others = sorted(os.path.basename(p) for split in (schema.TRAIN, schema.VALIDATION)
                    for p in glob.glob(os.path.join(output_dir, f"{split}-*"))
                    if p.removesuffix(".tmp") not in paths)  # a .tmp: a crashed build's
    if others:
        raise UsageError(f"{output_dir} holds {len(others)} shard(s) of another build that this "
                         f"one would not replace ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}): every train-* and "
                         f"validation-* is read, so their examples would count twice; remove "
                         f"them, or build into an empty folder")


def build_raw(raw_dir, output_dir, train_shards=8, validation_shards=2, workers=None, seed=0,
              log=print):
    """`build` of a raw layout written by a generator (demo, photos, the tests):
    raw_dir/train/<class>/, raw_dir/validation/<class>/ and raw_dir/labels.txt."""
    return build(os.path.join(raw_dir, "train"), output_dir, train_shards, validation_shards,
                 validation_dir=os.path.join(raw_dir, "validation"),
                 labels_file=os.path.join(raw_dir, "labels.txt"), workers=workers, seed=seed,
                 log=log)
