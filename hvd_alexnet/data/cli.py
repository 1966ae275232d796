r"""Flags and entry points of `python -m hvd_alexnet data build|demo|photos`.

    python -m hvd_alexnet data build --train_dir raw/train --validation_dir raw/val \
        --output_dir imagenet_tfrecord --train_shards 1024 --validation_shards 128
    python -m hvd_alexnet data demo --output_dir data/demo
    python -m hvd_alexnet data photos --output_dir data/bench
"""

from absl import flags

from hvd_alexnet import command
from hvd_alexnet.data import builder, demo, photos
from hvd_alexnet.errors import UsageError


def _common():
    """The flags every data command has; returns (FlagValues, its definers)."""
    fv = flags.FlagValues()
    d = command.definers(fv)
    d.string("output_dir", None, "Where the train-*/validation-* shards are written.")
    d.integer("train_shards", 8,
              "Training shards to write (at least the number of ranks).")
    d.integer("validation_shards", 2, "Validation shards to write.")
    d.integer("build_seed", 0, "Seed of the split and the shard order.")
    return fv, d


BUILD, d = _common()
d.string("train_dir", None, "JPEGs in class subfolders (raw/train/n01440764/x.JPEG).")
d.string("validation_dir", None, "Validation JPEGs in the same class subfolders.")
d.float("validation_fraction", 0.0,
        "Without --validation_dir, move this fraction of each class to validation.")
d.string("labels_file", None, "Lines of `synset human-readable text` (ImageNet's "
         "synset_words.txt, LOC_synset_mapping.txt or imagenet_metadata.txt).")
d.alias("imagenet_metadata_file", "labels_file")  # build_imagenet_data.py's name
d.string("validation_labels_file", None,
         "ILSVRC2012's validation ground truth: one synset a line for the images of "
         "--validation_dir (one flat folder) in sorted name order.")
d.string("bounding_box_file", None,
         "Boxes as TensorFlow's process_bounding_boxes.py writes them "
         "(name,xmin,ymin,xmax,ymax, relative); the distorted crop uses them.")
d.integer("workers", 0, "Parallel shard writers (0: one per core).")

DEMO, d = _common()
d.integer("demo_image_size", 128, "Side of the stored (upscaled) digit JPEGs.")

PHOTOS, d = _common()
d.integer("photos_count", 3000, "Images to cut from the bundled photographs.")
d.integer("photos_quality", None, "JPEG quality of every image (default: 80 to 95 at "
          "random, about 40 KB an image; 99: about 110 KB, ImageNet's average).",
          lower_bound=1, upper_bound=100)


def build_main(argv):
    """JPEGs in class subfolders -> ImageNet-schema TFRecord shards and metadata.json."""
    command.parse(BUILD, argv, "data build", build_main.__doc__,
                  required=("train_dir", "output_dir"))
    f = BUILD
    if f.validation_labels_file and not f.validation_dir:
        raise UsageError("--validation_labels_file needs --validation_dir (the flat folder)")
    meta = builder.build(f.train_dir, f.output_dir, f.train_shards, f.validation_shards,
                         f.validation_dir, f.validation_fraction, f.labels_file,
                         f.workers or None, f.build_seed,
                         validation_labels_file=f.validation_labels_file,
                         bounding_box_file=f.bounding_box_file)
    print(_summary(meta))


def demo_main(argv):
    """The embedded demo dataset (scikit-learn's digits), built with `data build`."""
    command.parse(DEMO, argv, "data demo", demo_main.__doc__, required=("output_dir",))
    f = DEMO
    meta = demo.build_demo(f.output_dir, f.demo_image_size, f.train_shards,
                           f.validation_shards, f.build_seed)
    print(_summary(meta))


def photos_main(argv):
    """The benchmark dataset: ~500x375 JPEGs cut from photographs bundled in
    scikit-learn and scikit-image, built with `data build`."""
    command.parse(PHOTOS, argv, "data photos", photos_main.__doc__, required=("output_dir",))
    f = PHOTOS
    meta = photos.build_photos(f.output_dir, f.photos_count, f.train_shards,
                               f.validation_shards, f.build_seed, quality=f.photos_quality)
    print(_summary(meta))


def _summary(meta):
    s = meta["splits"]
    return (f"data: {meta['num_classes']} classes, {s['train']['num_examples']} training images "
            f"in {s['train']['num_shards']} shards, {s['validation']['num_examples']} validation "
            f"images in {s['validation']['num_shards']} shards")
