"""Image preprocessing: ImageNet-style training augmentation and evaluation crop.

All randomness is stateless and keyed by a per-example seed, so a pipeline
rebuilt with the same seeds (a resumed run) sees exactly the same images.
Outputs are float32 in [-1, 1], shape [size, size, 3].
"""

import tensorflow as tf

EVAL_CROP_FRACTION = 0.875


def _finish(image, size):
    image = tf.image.resize(image, [size, size], method="bilinear")
    image = tf.clip_by_value(image, 0.0, 255.0)
    image = image / 127.5 - 1.0
    image.set_shape([size, size, 3])
    return image


def train_image(jpeg, boxes, size, seed, area_range=(0.05, 1.0), augment=True, flip=True):
    """Distorted crop (decoding only the crop), resize, random left-right flip.

    `seed` is a shape-[2] int tensor; `boxes` is [K, 4] (ymin, xmin, ymax, xmax),
    possibly empty, in which case the whole image is the object.
    """
    if not augment:
        return eval_image(jpeg, size)
    shape = tf.io.extract_jpeg_shape(jpeg)
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    boxes = tf.cond(tf.shape(boxes)[0] > 0, lambda: boxes[tf.newaxis], lambda: whole)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, boxes, seed=seeds[0], min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=area_range,
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.cast(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), tf.float32)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return _finish(image, size)


def eval_image(jpeg, size):
    """Central crop of 87.5 % of each side (decoding only the crop), resize."""
    shape = tf.io.extract_jpeg_shape(jpeg)
    h, w = shape[0], shape[1]
    ch = tf.cast(tf.cast(h, tf.float32) * EVAL_CROP_FRACTION, tf.int32)
    cw = tf.cast(tf.cast(w, tf.float32) * EVAL_CROP_FRACTION, tf.int32)
    window = tf.stack([(h - ch) // 2, (w - cw) // 2, tf.maximum(ch, 1), tf.maximum(cw, 1)])
    image = tf.cast(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), tf.float32)
    return _finish(image, size)
