"""Fixtures, and the order of the files; the helpers the tests share are in helpers.py."""

import os
import shutil
import signal

import pytest

from helpers import FOLDER_ARGS, build_dataset, checkpoints, finish, lines, start, wait_for_step

# make test gives each file to one of its workers in this order (--no-loadscope-reorder):
# the longest first, so that the workers end together rather than one running a
# long file alone at the end. Files not named follow, in their usual order. The
# order is only a schedule: no test depends on another having run.
LONGEST_FIRST = ("test_launchers.py", "test_elastic.py", "test_multirank.py", "test_multihost.py",
                 "test_faults.py", "test_checkpoint_faults.py", "test_errors.py",
                 "test_model_folder.py", "test_resume.py", "test_after_training.py",
                 "test_converters.py", "test_site.py", "test_commands.py", "test_bench.py",
                 "test_gpu_check.py", "test_precision.py", "test_throughput.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(item.path), len(rank)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2 train shards (balanced), 1 validation shard, 10 classes, 72x72 JPEGs."""
    return build_dataset(str(tmp_path_factory.mktemp("tiny")), 2, 1, per_class=8)


@pytest.fixture(scope="session")
def stopped_run(tiny_data, tmp_path_factory):
    """A 2-rank run of 20 steps (helpers.FOLDER_ARGS) stopped by SIGTERM to its
    launcher at step 8, with checkpoints at steps 4 and 8: the ranks hold after
    step 5 (injected) until the signal, vote to stop in step 6 and stop at the
    read step 8. The launcher's status is the ranks' 75 (horovodrun's own was 1,
    or 0). Copy it (run_copy) before changing it."""
    model_dir = str(tmp_path_factory.mktemp("stopped") / "run")
    proc = start(["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}",
                  *FOLDER_ARGS], np=2, launcher="gloo", faults=["hold=5"])
    try:
        wait_for_step(model_dir, 4, proc)
        os.kill(proc.pid, signal.SIGTERM)
        res = finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert res.returncode == 75, res.stdout[-3000:]
    assert len(lines(res.stdout, "hvd_alexnet train: stopped at step 8 on request")) == 2
    assert checkpoints(model_dir) == [4, 8]
    return model_dir


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    """A copy of stopped_run's model folder, this test's to change."""
    model_dir = str(tmp_path / "run")
    shutil.copytree(stopped_run, model_dir)
    return model_dir
