"""Using a trained model (no Horovod): its description, its checkpoint, top-5
predictions for JPEG files, and a SavedModel that takes JPEG bytes.

    python -m hvd_alexnet predict runs/demo-... photo1.jpg photo2.jpg
    python -m hvd_alexnet export runs/demo-... exported/     # then tf.saved_model.load
"""

import os

import numpy as np
import tensorflow as tf
from absl import flags

from hvd_alexnet import checkpoint as ckpts
from hvd_alexnet import command, config, files, metrics_log
from hvd_alexnet.checkpoint import SUBDIR as CHECKPOINT_SUBDIR
from hvd_alexnet.data import labels as class_labels
from hvd_alexnet.data import preprocess, schema
from hvd_alexnet.errors import DataError, UsageError
from hvd_alexnet.model import build_alexnet

MODEL_FILE = "model.json"  # written by the trainer beside its checkpoints
PREDICT_BATCH = 64


def describe(image_size, num_classes, classes=()):
    """What inference needs to rebuild the model: input size, the classes' names
    by label (from `classes`, [{"label", "synset", "text"}] as in metadata.json
    or as read from the records; 'class N' where unknown), and those classes
    (the label -> synset pairs that evaluate and a resume compare with their data)."""
    names = {int(c["label"]): c.get("text") or c.get("synset") for c in classes}
    return {"image_size": image_size, "num_classes": num_classes,
            "classes": [names.get(label) or f"class {label}"
                        for label in range(1, num_classes + 1)],
            "synsets": [{k: c.get(k) for k in ("label", "synset", "text")} for c in classes]}


def write_description(model_dir, description):
    os.makedirs(model_dir, exist_ok=True)
    files.write_json(os.path.join(model_dir, MODEL_FILE), description)


def read_description(model_dir):
    """model.json, or for a run that predates it, its last PARAMETER record."""
    if config.pattern_problem(model_dir):
        raise UsageError(config.pattern_problem(model_dir))
    path = os.path.join(model_dir, MODEL_FILE)
    if os.path.exists(path):
        return files.read_json(path, UsageError, f"remove it (the description is then read from "
                               f"{metrics_log.LOG_FILE}), or run the training command again, "
                               f"which writes it")
    log = os.path.join(model_dir, metrics_log.LOG_FILE)
    params = [r["data"] for r in (metrics_log.read(log) if os.path.exists(log) else [])
              if r.get("step") == "PARAMETER"]
    if not params:
        raise UsageError(f"{model_dir}: neither {MODEL_FILE} nor {metrics_log.LOG_FILE}; give "
                         f"the --model_dir of a training run")
    p = params[-1]
    meta = schema.read_metadata(p["data_dir"]) if p.get("data_dir") else None
    return describe(p["image_size"], p["num_classes"], (meta or {}).get("classes", []))


def trained_classes(model_dir):
    """The label -> synset pairs of the model a run in `model_dir` would resume
    ([] if there is no checkpoint to resume)."""
    if not ckpts.has_checkpoints(model_dir):
        return []
    return read_description(model_dir).get("synsets", [])


def checkpoint_path(model_dir, checkpoint=None):
    """The checkpoint to load: `checkpoint` (a ckpt-N prefix) or the run's newest."""
    if config.pattern_problem(checkpoint or model_dir):
        raise UsageError(config.pattern_problem(checkpoint or model_dir))
    path = checkpoint or ckpts.newest(model_dir)
    if not path or not tf.io.gfile.exists(path + ".index"):
        raise UsageError(f"no checkpoint {'at ' + checkpoint if checkpoint else 'in ' + model_dir}"
                         f" (a run's checkpoints are MODEL_DIR/{CHECKPOINT_SUBDIR}/ckpt-N)")
    return path


def load(model_dir, checkpoint=None):
    """(Keras model with the checkpoint's weights, description, checkpoint path)."""
    desc = read_description(model_dir)
    path = checkpoint_path(model_dir, checkpoint)
    model = build_alexnet(desc["image_size"], desc["num_classes"], dropout=0.0)
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model, desc, path


def top5_note(num_classes):
    """Said after a top-5 figure of a model with fewer than 5 classes."""
    return f" (of {num_classes} classes: every label is in the top 5)" if num_classes < 5 else ""


class Scorer:
    """Top-1 and top-5 hits of a model over a dataset of (images, labels) batches:
    validation in the trainer and `evaluate` count alike. With fewer than 5
    classes, top-5 counts every example (in_top_k with k = the classes)."""

    def __init__(self, model, num_classes):
        self.model, self.k = model, min(5, num_classes)

    @tf.function(autograph=False)  # no Python control flow on tensors
    def _hits(self, images, labels):
        logits = self.model(preprocess.normalize(images), training=False)
        count = lambda n: tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, n), tf.int64))
        return count(1), count(self.k)

    def count(self, dataset, after_batch=lambda examples: None):
        """(top-1 hits, top-k hits, examples); after_batch(examples so far) per batch."""
        c1 = ck = n = 0
        for images, labels in dataset:
            h1, hk = self._hits(images, labels)
            c1, ck, n = c1 + int(h1), ck + int(hk), n + int(tf.shape(labels)[0])
            after_batch(n)
        return c1, ck, n


def summed(dist, hits):
    """(top-1 hits, top-k hits, examples) of this rank's share summed over the
    ranks: exact counts, so N ranks score what one would."""
    return tuple(dist.sum(value, f"hvd_alexnet.eval.{name}")  # HVD
                 for value, name in zip(hits, ("top1", "top5", "n")))


def _images(jpegs, size):
    return preprocess.normalize(tf.map_fn(lambda j: preprocess.eval_image(j, size), jpegs,
                                          fn_output_signature=tf.uint8))


def probabilities(model, jpegs, size):
    """Class probabilities (softmax over the logits) of a batch of JPEG byte strings,
    preprocessed as validation is: central crop, resize."""
    return tf.nn.softmax(tf.cast(model(_images(jpegs, size), training=False), tf.float32))


def predict_files(model, desc, paths, top=5):
    """[(path, [(class name, probability), ...])], best first."""
    jpegs = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"{path}: {e.strerror}") from None
        if data[:2] != b"\xff\xd8":
            raise DataError(f"{path}: not a JPEG file (it does not start with a JPEG marker)")
        jpegs.append(data)
    probs = np.concatenate([  # in batches: any number of files in bounded memory
        probabilities(model, tf.constant(jpegs[i:i + PREDICT_BATCH]), desc["image_size"]).numpy()
        for i in range(0, len(jpegs), PREDICT_BATCH)])
    k = min(top, desc["num_classes"])
    results = []
    for path, p in zip(paths, probs):
        best = p.argsort()[::-1][:k]
        results.append((path, [(desc["classes"][i], float(p[i])) for i in best]))
    return results


class Serving(tf.Module):
    """The exported model: JPEG bytes in, probabilities and the top-5 names out."""

    def __init__(self, model, desc):
        super().__init__()
        self.model, self.size = model, desc["image_size"]
        self.names = tf.constant(desc["classes"])
        self.k = min(5, desc["num_classes"])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="jpeg_bytes")])
    def serve(self, jpeg_bytes):
        probs = probabilities(self.model, jpeg_bytes, self.size)
        top = tf.math.top_k(probs, self.k)
        return {"probabilities": probs, "top5_classes": tf.gather(self.names, top.indices),
                "top5_probabilities": top.values}


def export(model, desc, out_dir):
    if tf.io.gfile.exists(os.path.join(out_dir, "saved_model.pb")):
        raise UsageError(f"{out_dir} already holds a SavedModel; choose another directory")
    module = Serving(model, desc)
    tf.saved_model.save(module, out_dir, signatures={"serving_default": module.serve})
    return out_dir


PREDICT = flags.FlagValues()
command.definers(PREDICT).string("checkpoint", None, "A checkpoint prefix, e.g. "
                                 "MODEL_DIR/checkpoints/ckpt-40 (default: the newest).")
command.definers(PREDICT).integer("top", 5, "Classes shown per image.")
EXPORT = flags.FlagValues()
command.definers(EXPORT).string("checkpoint", None, "A checkpoint prefix (default: the newest).")
for _values in (PREDICT, EXPORT):  # names for a model trained without them
    command.definers(_values).string(
        "synsets_file", None, "ImageNet's synset list in label order (as for train): the "
        "classes named from it and --names_file, checked against the model's synsets.")
    command.definers(_values).string("names_file", None, "Lines of `synset name` "
                                     "(imagenet_metadata.txt): the classes' readable names.")
    command.definers(_values).integer("first_label", 1, "The first class's label (as for train).")


def named_from_files(desc, values):
    """`desc` with its classes named from --synsets_file and --names_file where
    given (a model trained without them names most of ImageNet's classes "class
    N"). The synset list must number the classes as the model was trained:
    its length, and every synset the model knows at its label."""
    if not values.synsets_file and not values.names_file:
        return desc
    missing = config.missing_class_files(values)
    if missing:
        raise UsageError(missing[0])
    if values.synsets_file:
        classes = class_labels.from_files(values.synsets_file, values.names_file,
                                          values.first_label)
        if len(classes) != desc["num_classes"]:
            raise UsageError(f"--synsets_file {values.synsets_file} lists {len(classes)} "
                             f"synsets, and the model has {desc['num_classes']} classes")
        problem = class_labels.disagreement(desc.get("synsets", []), [
            (values.synsets_file, i, c["label"], c["synset"], c["text"])
            for i, c in enumerate(classes)], "the model")
        if problem:
            raise UsageError(problem)
    else:  # names for the synsets the model was trained on
        names = class_labels.read_names(values.names_file)
        classes = [{**c, "text": names.get(c.get("synset"), c.get("text"))}
                   for c in desc.get("synsets", [])]
    return describe(desc["image_size"], desc["num_classes"], classes)


def predict_main(argv):
    """Top-5 classes, by name, of JPEG files, from a training run's newest
    checkpoint (or --checkpoint). Images are cropped and resized as in
    validation. Example: python -m hvd_alexnet predict runs/demo-... a.jpg b.jpg"""
    model_dir, *images = command.parse(PREDICT, argv, "predict", predict_main.__doc__,
                                       positional=("MODEL_DIR", "IMAGE..."))
    model, desc, path = load(model_dir, PREDICT.checkpoint)
    desc = named_from_files(desc, PREDICT)
    print(f"checkpoint: {path}")
    for image, best in predict_files(model, desc, images, PREDICT.top):
        print(image)
        for rank, (name, prob) in enumerate(best, 1):
            print(f"  {rank}. {name:<30} {prob:.4f}")
    return 0


def export_main(argv):
    """Writes a SavedModel whose serving signature takes a batch of JPEG bytes
    (tf.string, shape [None]) and returns `probabilities`, `top5_classes` and
    `top5_probabilities`; the crop and resize are inside. Serve it with
    TensorFlow Serving or load it with
    tf.saved_model.load(OUT_DIR).signatures['serving_default'](jpeg_bytes=...)."""
    model_dir, out_dir = command.parse(EXPORT, argv, "export", export_main.__doc__,
                                       positional=("MODEL_DIR", "OUT_DIR"))
    model, desc, path = load(model_dir, EXPORT.checkpoint)
    export(model, named_from_files(desc, EXPORT), out_dir)
    print(f"exported {path} to {out_dir} (serving_default: jpeg_bytes -> probabilities, "
          f"top5_classes, top5_probabilities)")
    return 0
