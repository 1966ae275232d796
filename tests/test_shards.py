import pytest
import tensorflow as tf

from hvd_alexnet.data import reader, schema


@pytest.mark.parametrize("size", range(1, 9))
@pytest.mark.parametrize("num_files", [8, 9, 13, 16, 1024])
def test_rank_subsets_are_disjoint_covering_and_balanced(size, num_files):
    files = [schema.shard_name("train", i, num_files) for i in range(num_files)]
    subsets = [reader.rank_shards(files, r, size) for r in range(size)]
    flat = [f for s in subsets for f in s]
    assert sorted(flat) == files and len(flat) == len(set(flat))
    assert max(map(len, subsets)) - min(map(len, subsets)) <= 1
    assert subsets[0][0] == files[0] and all(s == files[r::size] for r, s in enumerate(subsets))


def test_fewer_shards_than_ranks_is_an_error():
    with pytest.raises(reader.DataError, match="3 training shards for 4 ranks"):
        reader.rank_shards(["a", "b", "c"], 0, 4)


@pytest.mark.parametrize("examples,batch,steps", [(1000, 256, 3), (1281167, 256, 5004),
                                                  (64, 64, 1)])
def test_steps_from_the_global_count(examples, batch, steps):
    assert reader.steps_per_epoch(examples, batch) == steps


def test_too_few_examples_for_one_global_batch():
    with pytest.raises(reader.DataError, match="fewer than one global batch"):
        reader.steps_per_epoch(10, 16)


def test_every_rank_yields_the_same_steps_from_uneven_shards(tmp_path):
    """Shards of 1, 2, 9, 30 and 3 records over 2 and 3 ranks: each rank's reader
    yields exactly `steps` batches (it repeats its shards rather than running dry)."""
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    files = []
    for i, n in enumerate([1, 2, 9, 30, 3]):
        files.append(str(tmp_path / schema.shard_name("train", i, 5)))
        with tf.io.TFRecordWriter(files[-1]) as w:
            for _ in range(n):
                w.write(schema.make_example(jpeg, 1, "s", "t", 8, 8, "f").SerializeToString())
    for size in (2, 3):
        steps = reader.steps_per_epoch(45, 4 * size)
        for rank in range(size):
            mine = reader.rank_shards(sorted(files), rank, size)
            ds = reader.train_dataset(mine, 4, 67, 2, steps=steps, rank=rank)
            assert sum(1 for _ in ds) == steps, (size, rank)
