"""Fixtures only; the helpers the tests share are in helpers.py."""

import pytest

from helpers import build_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """2 train shards (balanced), 1 validation shard, 10 classes, 72x72 JPEGs."""
    return build_dataset(str(tmp_path_factory.mktemp("tiny")), 2, 1, per_class=8)
