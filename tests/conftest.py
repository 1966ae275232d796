"""Fixtures, and the order of the files; the helpers the tests share are in helpers.py."""

import os

import pytest

from helpers import build_dataset

# make test gives each file to one of its workers in this order (--no-loadscope-reorder):
# the longest first, so that the workers end together rather than one running a
# long file alone at the end. Files not named follow, in their usual order. The
# order is only a schedule: no test depends on another having run.
LONGEST_FIRST = ("test_launchers.py", "test_elastic.py", "test_multirank.py", "test_multihost.py",
                 "test_faults.py", "test_errors.py", "test_resume.py", "test_after_training.py",
                 "test_converters.py", "test_commands.py", "test_bench.py", "test_gpu_check.py",
                 "test_precision.py", "test_throughput.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(item.path), len(rank)))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2 train shards (balanced), 1 validation shard, 10 classes, 72x72 JPEGs."""
    return build_dataset(str(tmp_path_factory.mktemp("tiny")), 2, 1, per_class=8)
