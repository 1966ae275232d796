"""Image preprocessing: ImageNet-style training augmentation and evaluation crop.

All randomness is stateless and keyed by a per-example seed, so a pipeline
rebuilt with the same seeds (a resumed run) sees exactly the same images.
The pipeline's images are uint8, shape [size, size, 3]: a quarter of float32's
bytes to copy to the device. `normalize` makes them float32 in [-1, 1] there,
inside the step (and the scorer), as tf_cnn_benchmarks' normalized_image does.

The recipe is tf_cnn_benchmarks' (preprocessing.py): for training a distorted
crop (area 5-100 %, aspect 3/4-4/3, covering 10 % of the object box, 100
attempts), squashed to the square, a random flip; for evaluation the image
scaled keeping its aspect ratio so that its shorter side is 1.145 x the size,
then the central size x size. Here both decode only their crop (the same
pixels, fewer decoded), and the evaluation crops before it resizes: the
central square of side shorter side / 1.145, resized to the size.
"""

import tensorflow as tf

EVAL_SCALE = 1.145  # tf_cnn_benchmarks: 256 / 224 rounded; the crop is 1 / 1.145 of the short side
CROP_ATTEMPTS = 100  # sample_distorted_bounding_box's tries before it takes the whole image


def normalize(images):
    """uint8 images (0-255) to float32 in [-1, 1]: on the device, in the step."""
    return tf.cast(images, tf.float32) * (1 / 127.5) - 1.0


def _finish(image, size):
    image = tf.image.resize(image, [size, size], method="bilinear")
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
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
        max_attempts=CROP_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.cast(tf.image.decode_and_crop_jpeg(jpeg, window, channels=3), tf.float32)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return _finish(image, size)


def eval_window(height, width):
    """The central square that evaluation keeps, [top, left, side, side]: that of
    the image scaled so its shorter side is EVAL_SCALE x the output size."""
    side = tf.maximum(tf.cast(tf.cast(tf.minimum(height, width), tf.float32) / EVAL_SCALE,
                              tf.int32), 1)
    return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def eval_image(jpeg, size):
    """The central square of the image keeping its aspect ratio (decoding only
    it), resized to size x size."""
    shape = tf.io.extract_jpeg_shape(jpeg)
    image = tf.image.decode_and_crop_jpeg(jpeg, eval_window(shape[0], shape[1]), channels=3)
    return _finish(tf.cast(image, tf.float32), size)
