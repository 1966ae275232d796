"""Shared fixtures: small real datasets (JPEG bytes -> data build -> TFRecords)
and a launcher that runs real ranks with a hard time bound."""

import os
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)  # the venv's bin: horovodrun lives here
SMALL = ["--image_size=67", "--batch_size=4", "--eval_batch_size=16", "--log_every=1",
         "--threads=1"]


def launch(args, np=1, launcher=None, timeout=240, env=None):
    """Runs `python -m hvd_alexnet ARGS` as `np` ranks; kills the whole process
    group and fails the test if it is still running after `timeout` seconds."""
    py = [sys.executable, "-m", "hvd_alexnet", *args]
    if launcher == "gloo":
        cmd = [os.path.join(BIN, "horovodrun"), "-np", str(np), "-H", f"localhost:{np}",
               "--gloo", *py]
    elif launcher == "mpi":
        forwarded = [a for name in ["PATH", "PYTHONPATH", *(env or {})] for a in ("-x", name)]
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np),
               "-bind-to", "none", *forwarded, *py]
    else:
        assert np == 1
        cmd = py
    full_env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} still running after {timeout}s (hang?)\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def build_dataset(out_dir, train_shards, validation_shards, image_size=72, per_class=None):
    """Real digit scans as JPEG files in class folders, through `data build`."""
    from hvd_alexnet.data import builder, demo
    raw = os.path.join(out_dir, "raw")
    demo.write_raw(raw, image_size=image_size, validation_fraction=0.2)
    if per_class:  # keep the first N images of each class: a faster dataset
        for split in ("train", "validation"):
            for c in os.listdir(os.path.join(raw, split)):
                folder = os.path.join(raw, split, c)
                for f in sorted(os.listdir(folder))[per_class:]:
                    os.remove(os.path.join(folder, f))
    builder.build(os.path.join(raw, "train"), out_dir, train_shards, validation_shards,
                  validation_dir=os.path.join(raw, "validation"),
                  labels_file=os.path.join(raw, "labels.txt"), workers=2, log=lambda *a: None)
    return out_dir


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2 train shards (balanced), 1 validation shard, 10 classes, 72x72 JPEGs."""
    return build_dataset(str(tmp_path_factory.mktemp("tiny")), 2, 1, per_class=8)
