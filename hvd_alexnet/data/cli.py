r"""Flags and entry points of `python -m hvd_alexnet data build|demo`.

    python -m hvd_alexnet data build --train_dir raw/train --validation_dir raw/val \
        --output_dir imagenet_tfrecord --train_shards 1024 --validation_shards 128
    python -m hvd_alexnet data demo --output_dir data/demo
    python -m hvd_alexnet data photos --output_dir data/bench
"""

from absl import flags

from hvd_alexnet.data import builder, demo, photos

flags.DEFINE_string("output_dir", None, "Where the train-*/validation-* shards are written.")
flags.DEFINE_string("train_dir", None, "build: JPEGs in class subfolders (raw/train/n01440764/x.JPEG).")
flags.DEFINE_string("validation_dir", None, "build: validation JPEGs in the same class subfolders.")
flags.DEFINE_float("validation_fraction", 0.0,
                   "build: without --validation_dir, move this fraction of each class to validation.")
flags.DEFINE_string("labels_file", None, "build: lines of `synset human-readable text`.")
flags.DEFINE_integer("train_shards", 8, "Training shards to write (at least the number of ranks).")
flags.DEFINE_integer("validation_shards", 2, "Validation shards to write.")
flags.DEFINE_integer("workers", 0, "Parallel shard writers (0: one per core).")
flags.DEFINE_integer("demo_image_size", 128, "demo: side of the stored (upscaled) digit JPEGs.")
flags.DEFINE_integer("photos_count", 3000, "photos: images to cut from the bundled photographs.")
flags.DEFINE_integer("build_seed", 0, "Seed of the split and the shard order.")
FLAGS = flags.FLAGS


def _need(*names):
    from hvd_alexnet.config import UsageError
    missing = [f"--{n}" for n in names if not FLAGS[n].value]
    if missing:
        raise UsageError(f"{' and '.join(missing)} required")


def build_main(argv):
    _need("train_dir", "output_dir")
    meta = builder.build(FLAGS.train_dir, FLAGS.output_dir, FLAGS.train_shards,
                         FLAGS.validation_shards, FLAGS.validation_dir, FLAGS.validation_fraction,
                         FLAGS.labels_file, FLAGS.workers or None, FLAGS.build_seed)
    print(_summary(meta))


def demo_main(argv):
    _need("output_dir")
    meta = demo.build_demo(FLAGS.output_dir, FLAGS.demo_image_size, FLAGS.train_shards,
                           FLAGS.validation_shards, FLAGS.build_seed)
    print(_summary(meta))


def photos_main(argv):
    _need("output_dir")
    meta = photos.build_photos(FLAGS.output_dir, FLAGS.photos_count, FLAGS.train_shards,
                               FLAGS.validation_shards, FLAGS.build_seed)
    print(_summary(meta))


def _summary(meta):
    s = meta["splits"]
    return (f"data: {meta['num_classes']} classes, {s['train']['num_examples']} training images "
            f"in {s['train']['num_shards']} shards, {s['validation']['num_examples']} validation "
            f"images in {s['validation']['num_shards']} shards")
