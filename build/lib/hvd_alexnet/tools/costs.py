"""AlexNet's cost model, shared by the planner (plan.py, plan_cluster.py), the
GPU check and the scaling benchmark: FLOPs and parameters layer by layer, and
the time of a ring all-reduce. Counted from the model itself, never measured.
"""

import math


def layer_costs(image_size=227, num_classes=1000):
    """[(forward FLOPs per image, parameters)] of AlexNet's layers with weights,
    in forward order, counted layer by layer."""
    import tensorflow as tf

    from hvd_alexnet.model import build_alexnet
    model = build_alexnet(image_size, num_classes)
    layers = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            macs = math.prod(layer.output.shape[1:3]) * layer.kernel.shape.num_elements()
        elif isinstance(layer, tf.keras.layers.Dense):
            macs = layer.kernel.shape.num_elements()
        else:
            continue
        layers.append((2 * macs, layer.count_params()))
    return layers


def model_costs(image_size=227, num_classes=1000):
    """(forward FLOPs per image, parameters) of AlexNet."""
    layers = layer_costs(image_size, num_classes)
    return sum(f for f, _ in layers), sum(p for _, p in layers)


def ring_seconds(n, nbytes, bandwidth, latency):
    """Ring all-reduce: 2(n-1) steps, each moving nbytes/n over every link."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency
