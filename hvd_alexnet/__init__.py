"""hvd-alexnet: data-parallel AlexNet on ImageNet TFRecords with Horovod."""

import importlib.util
import os

__version__ = "0.1.0"

# Keras 2 on every stack: the optimizer, its loss scaling and the model are Keras 2's
# (tf.keras). TensorFlow 2.16 and newer make tf.keras Keras 3 unless TF_USE_LEGACY_KERAS
# is set, and then take Keras 2 from the tf-keras package, which the tf2.18 stack
# installs. Set where that package is there (2.15 honours the variable too, and has no
# tf-keras: there it would break tf.keras), before TensorFlow is imported, by any module
# of the package: every rank and tool the launchers start is one.
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
