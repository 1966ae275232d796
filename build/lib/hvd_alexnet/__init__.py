"""hvd-alexnet: data-parallel AlexNet on ImageNet TFRecords with Horovod."""

__version__ = "0.1.0"
