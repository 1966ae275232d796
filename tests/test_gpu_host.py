"""The GPU path's branches that a CPU can run: GPU counts passed in, the
device staging aimed at the CPU device, the watchdog's allowance for a first
step that compiles every kernel. (No GPU can run TensorFlow 2.15 here.)"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from hvd_alexnet import distributed
from hvd_alexnet.data import reader
from hvd_alexnet.errors import EXIT_STALLED, UsageError


@pytest.mark.parametrize("gpus, local_size", [(8, 8), (8, 4), (1, 8), (1, 1), (4, 1)])
def test_ranks_within_the_hosts_gpus_or_each_with_its_own_are_accepted(gpus, local_size):
    distributed.check_gpus(gpus, local_size)  # (1, 8): srun --gpus-per-task=1


def test_more_ranks_than_gpus_is_refused_naming_both_counts():
    with pytest.raises(UsageError, match=r"^8 ranks on this host but 4 GPUs: .*Duplicate GPU"):
        distributed.check_gpus(4, 8)


def test_hopper_and_later_compile_at_the_first_step():
    assert distributed.compiles_at_first_step((9, 0))
    assert distributed.compiles_at_first_step((10, 0))
    assert not distributed.compiles_at_first_step((8, 0))  # A100: kernels in the wheel
    assert not distributed.compiles_at_first_step((7, 0))  # V100
    assert not distributed.compiles_at_first_step(None)
    # What TensorFlow 2.18's and 2.21's CUDA builds say they carry (get_build_info)
    built = ["sm_60", "sm_70", "sm_80", "sm_89", "compute_90"]
    assert distributed.compiles_at_first_step((9, 0), built)  # PTX only
    assert distributed.compiles_at_first_step((12, 0), built)  # Blackwell
    assert not distributed.compiles_at_first_step((8, 6), built)  # sm_80's run on 8.6
    assert not distributed.compiles_at_first_step((8, 9), built)
    assert not distributed.compiles_at_first_step((10, 0), ["sm_80", "sm_90", "sm_100"])


def test_gpu_settings_keep_what_the_user_set():
    env = {"TF_GPU_THREAD_COUNT": "4"}
    distributed.set_unless_set(distributed.GPU_SETTINGS, env)
    distributed.set_unless_set(distributed.CUDA_CACHE, env)
    assert env == {"TF_GPU_THREAD_MODE": "gpu_private", "TF_GPU_THREAD_COUNT": "4",
                   "HOROVOD_ENABLE_ASYNC_COMPLETION": "1", "CUDA_CACHE_MAXSIZE": str(4 << 30)}
    env = {"HOROVOD_ENABLE_ASYNC_COMPLETION": "0"}  # the user's choice, kept
    distributed.set_unless_set(distributed.GPU_SETTINGS, env)
    assert env["HOROVOD_ENABLE_ASYNC_COMPLETION"] == "0"


def test_the_synthetic_batch_is_made_once_on_the_device_and_handed_out_again():
    images, labels, positions = reader.synthetic_batch(4, 67, 10, seed=1, device="/cpu:0")
    assert images.dtype == tf.uint8 and images.shape == (4, 67, 67, 3)
    assert "CPU:0" in images.device and labels.dtype == tf.int32
    again = reader.synthetic_batch(4, 67, 10, seed=1)
    assert np.array_equal(images.numpy(), again[0].numpy())
    feed = reader.Feed(batch=(images, labels, positions))
    batches = list(feed.take(3))
    assert len(batches) == 3 and all(b[0] is images for b in batches)  # no copy per step


def test_staging_on_a_device_keeps_the_batches_and_the_feed_goes_on_across_stretches():
    ds = tf.data.Dataset.range(10).map(lambda i: (tf.fill([2], i), i))
    staged = reader.to_device(ds, "/cpu:0")  # the GPU branch, aimed at the CPU device
    assert reader.to_device(ds, None) is ds
    feed = reader.Feed(staged)
    first, second = list(feed.take(4)), list(feed.take(4))  # one iterator: no restart
    assert [int(x) for _, x in first + second] == list(range(8))
    assert len(list(feed.take(5))) == 2  # the pipeline's end
    feed.close()


WATCHDOG = """
import sys, time
from hvd_alexnet.watchdog import Watchdog
w = Watchdog(0, 0.5)
w.start()
w.beat("in the first step", allow=60)
time.sleep(2)  # four timeouts, well inside the allowance
print("alive", flush=True)
w.beat("in a later step")
time.sleep(60)
"""


def test_the_watchdog_allows_a_compiling_first_step_but_not_the_next():
    res = subprocess.run([sys.executable, "-c", WATCHDOG], capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.strip() == "alive", res.stderr[-2000:]
    assert res.returncode == EXIT_STALLED and "while in a later step" in res.stderr


def test_gpu_check_gives_a_first_step_that_compiles_its_time():
    from hvd_alexnet.tools import gpu_check
    assert gpu_check.measurement_timeout(600, [(9, 0), (9, 0)]) == distributed.FIRST_STEP_ALLOWED
    assert gpu_check.measurement_timeout(600, [(8, 0)]) == 600  # A100: nothing to compile
    assert gpu_check.measurement_timeout(600, []) == 600  # an old driver: unknown


def test_the_optimizers_update_is_compiled_with_xla_only_with_xla(monkeypatch):
    """Keras 2.15 compiles SGD's update with XLA on any host with a GPU unless
    told: on a CPU it does not, so a GPU is made to be there for its check."""
    import tensorflow.compat.v2 as keras_tf  # the module Keras 2.15 asks

    from hvd_alexnet import optim
    real = tf.config.list_physical_devices
    fake = lambda kind=None: ([tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")]
                              if kind == "GPU" else real(kind))
    monkeypatch.setattr(keras_tf.config, "list_physical_devices", fake)
    assert tf.keras.optimizers.SGD(0.1).jit_compile  # Keras' default where a GPU is
    assert not optim.make_optimizer(0.1, 0.9).jit_compile
    assert optim.make_optimizer(0.1, 0.9, xla=True).jit_compile


def test_two_ranks_on_one_gpu_are_refused_by_its_pci_bus_id():
    """Identities as each rank's TensorFlow describes its GPU. With one GPU visible
    per rank (srun --gpus-per-task=1) every rank's is GPU:0 but their bus ids
    differ: allowed. One CUDA_VISIBLE_DEVICES=0 for every rank gives one bus id
    twice on a host: refused, naming the ranks."""
    desc = ("device: 0, name: NVIDIA A100-SXM4-40GB, pci bus id: 0000:3B:00.0, compute "
            "capability: 8.0")
    assert distributed.pci_bus_id(desc) == "0000:3b:00.0"
    assert distributed.pci_bus_id("device: 0, name: CPU") is None
    distributed.check_gpu_identities([("a", "0000:07:00.0"), ("a", "0000:0f:00.0"),
                                      ("b", "0000:07:00.0"), ("b", None)])  # others: fine
    distributed.check_gpu_identities([("a", None), ("a", None)])  # CPU ranks
    with pytest.raises(UsageError, match=r"ranks 0, 2 on a use the same GPU \(PCI 0000:07:00.0"
                                         r"\): each rank needs its own \(is one CUDA_VISIBLE_"):
        distributed.check_gpu_identities([("a", "0000:07:00.0"), ("a", "0000:0f:00.0"),
                                          ("a", "0000:07:00.0")])
