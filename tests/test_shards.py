import os

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


@pytest.mark.parametrize("rank_examples,batch,steps", [
    ([1000], 256, 3), ([160146] * 8, 32, 5004), ([64], 64, 1),
    ([13, 32], 4, 3),  # uneven: the smaller share decides
    ([31, 5, 9], 2, 2)])
def test_steps_from_the_smallest_rank_share(rank_examples, batch, steps):
    assert reader.steps_per_epoch(rank_examples, batch) == steps


def test_too_few_examples_for_one_batch_names_the_rank():
    with pytest.raises(reader.DataError, match="rank 1's shards hold 3 training examples, "
                                               "fewer than one batch"):
        reader.steps_per_epoch([40, 3], 4)


def test_uneven_shards_same_steps_on_every_rank_and_no_example_twice_in_an_epoch(tmp_path):
    """Shards of 1, 2, 9, 30 and 3 records over 2 and 3 ranks (file counts that do
    not divide): every rank's reader yields exactly `steps` batches, and within an
    epoch a rank never reads an example twice (each record's label is its id)."""
    jpeg = tf.io.encode_jpeg(tf.zeros([8, 8, 3], tf.uint8)).numpy()
    files, ident = [], 0
    for i, n in enumerate([1, 2, 9, 30, 3]):
        files.append(str(tmp_path / schema.shard_name("train", i, 5)))
        with tf.io.TFRecordWriter(files[-1]) as w:
            for _ in range(n):
                ident += 1
                w.write(schema.make_example(jpeg, ident, "s", "t", 8, 8, "f").SerializeToString())
    for size in (2, 3):
        shares = [reader.rank_shards(files, rank, size) for rank in range(size)]
        steps = reader.steps_per_epoch([sum(map(reader.check_framing, s)) for s in shares], 2)
        for rank, mine in enumerate(shares):
            for epoch in (0, 1):
                ds = reader.train_dataset(mine, 2, 67, ident, steps=steps, rank=rank,
                                          epoch=epoch)
                labels = [int(x) for _, batch, _ in ds for x in batch]
                assert len(labels) == 2 * steps, (size, rank, epoch)
                assert len(set(labels)) == len(labels), (size, rank, epoch, labels)


@pytest.mark.parametrize("shards,ranks", [(3, 2), (2, 3)])
def test_validation_shares_read_only_their_own_files_and_count_exactly(tmp_path, shards, ranks):
    """Each rank's share read from a folder holding only the files eval_share
    gives it (any other file it opened would be missing): 3 shards over 2
    ranks are whole files (2 and 1), 2 over 3 ranks split one file between
    ranks 0 and 2. The labels of all shares are those of 1 rank, exactly."""
    from collections import Counter

    from helpers import build_dataset
    from hvd_alexnet.data import reader, schema
    out = build_dataset(str(tmp_path / "data"), 2, shards, per_class=3)
    files = schema.list_shards(out, schema.VALIDATION)
    assert len(files) == shards
    labels = lambda fs, rank, size: Counter(int(label) for _, batch in reader.eval_dataset(
        fs, 4, 67, 10, rank=rank, size=size) for label in batch.numpy())
    everything, union = labels(files, 0, 1), Counter()
    for rank in range(ranks):
        mine, _ = reader.eval_share(files, rank, ranks)
        alone = tmp_path / f"rank{rank}"
        alone.mkdir()
        for path in mine:
            os.link(path, alone / os.path.basename(path))
        seen = [str(alone / os.path.basename(f)) if f in mine else str(alone / "absent" / f)
                for f in files]  # every file of the list, only its own on disk
        union += labels(seen, rank, ranks)
    assert union == everything and sum(everything.values()) == sum(
        reader.check_framing(f) for f in files)
    if shards < ranks:
        assert [reader.eval_share(files, r, ranks) for r in range(ranks)] == [
            ([files[0]], (2, 0)), ([files[1]], (1, 0)), ([files[0]], (2, 1))]
    else:
        assert [len(reader.eval_share(files, r, ranks)[0]) for r in range(ranks)] == [2, 1]
