"""`data photos`: the benchmark dataset, ImageNet-like JPEGs cut from real photographs.

    python -m hvd_alexnet data photos --output_dir data/bench --photos_count 3000

The colour photographs that ship inside scikit-learn (china, flower) and
scikit-image (astronaut, coffee, chelsea, rocket, ...) are cut into random
crops at random scales, flipped and re-encoded as ~500x375 JPEGs, so decoding
one costs about what an ImageNet image costs. One class per source photograph.
Written through the same builder as real data.
"""

import io
import os

import numpy as np

from hvd_alexnet.data import builder

SIZE = (500, 375)  # width, height: around ImageNet's average


def sources():
    """{name: HxWx3 uint8 array} of the bundled colour photographs."""
    from sklearn.datasets import load_sample_images
    from skimage import data as skdata
    found = dict(zip(("china", "flower"), load_sample_images().images))
    for name in ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina",
                 "immunohistochemistry"):
        found[name] = np.asarray(getattr(skdata, name)())[..., :3]
    found["motorcycle"] = np.asarray(skdata.stereo_motorcycle()[0])
    return found


def write_raw(raw_dir, count=3000, validation_fraction=0.1, seed=0, quality=None):
    """Writes raw/{train,validation}/<photo>/NNNNN.jpeg and raw/labels.txt, each
    JPEG at `quality` (None: 80 to 95 at random)."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    photos = sources()
    names = sorted(photos)
    for i in range(count):
        name = names[i % len(names)]
        photo = photos[name]
        h, w = photo.shape[:2]
        portrait = rng.random() < 0.25
        aspect = SIZE[1] / SIZE[0] if not portrait else SIZE[0] / SIZE[1]  # h / w
        scale = rng.uniform(0.35, 1.0)  # of the largest crop of that aspect
        cw = int(min(w, h / aspect) * scale)
        ch = int(cw * aspect)
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = Image.fromarray(photo[y:y + ch, x:x + cw])
        crop = crop.resize(SIZE if not portrait else SIZE[::-1], Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        split = "validation" if rng.random() < validation_fraction else "train"
        folder = os.path.join(raw_dir, split, name)
        os.makedirs(folder, exist_ok=True)
        buf = io.BytesIO()
        drawn = int(rng.integers(80, 96))  # drawn always: the same crops at any quality
        crop.save(buf, format="JPEG", quality=quality or drawn)
        with open(os.path.join(folder, f"{i:05d}.jpeg"), "wb") as f:
            f.write(buf.getvalue())
    with open(os.path.join(raw_dir, "labels.txt"), "w") as f:
        f.writelines(f"{name} {name.replace('_', ' ')}\n" for name in names)


def build_photos(output_dir, count=3000, train_shards=16, validation_shards=2, seed=0,
                 log=print, quality=None):
    raw = os.path.join(output_dir, "raw")
    write_raw(raw, count=count, seed=seed, quality=quality)
    return builder.build_raw(raw, output_dir, train_shards, validation_shards, seed=seed,
                             log=log)
