"""The input pipeline: shard assignment, training and evaluation datasets.

Horovod-free: `rank` and `size` come in as arguments. Every rank runs the same
number of steps per epoch (the whole batches of the smallest rank's share) and
its reader repeats its shards behind that, so uneven shards can never leave one
rank waiting for a step that another never takes.
"""

import contextlib
import itertools
import mmap
import os
import re
import struct

import tensorflow as tf

from hvd_alexnet.data import preprocess, schema
from hvd_alexnet.errors import DataError, first_line

AUTOTUNE = tf.data.AUTOTUNE
READ_BUFFER = 8 << 20  # bytes; large sequential reads suit network filesystems
PREFETCH_BATCHES = 3
DEVICE_BATCHES = 2  # batches staged on a GPU ahead of the step


def rank_shards(files, rank, size):
    """Rank r reads files[r::size] of the sorted list: disjoint, covering, balanced."""
    if len(files) < size:
        raise DataError(f"{len(files)} training shards for {size} ranks: every rank needs at "
                        f"least one shard; re-shard the data or run fewer ranks")
    return list(files)[rank::size]


def steps_per_epoch(rank_examples, batch_size):
    """Steps every rank runs per epoch: the whole batches held by the rank with the
    fewest examples (`rank_examples[r]`: examples in rank r's shards). So every
    rank takes the same steps and none reads an example twice in an epoch; a
    larger rank reads a fresh random subset of its examples each epoch."""
    fewest = min(rank_examples)
    steps = fewest // batch_size
    if fewest == 0:
        raise DataError(f"rank {rank_examples.index(fewest)}'s training shards are all empty "
                        f"(0 records; empty shards are valid, but every rank needs examples): "
                        f"run fewer ranks or re-shard the data")
    if steps < 1:
        raise DataError(f"rank {rank_examples.index(fewest)}'s shards hold {fewest} training "
                        f"examples, fewer than one batch ({batch_size}); lower --batch_size, "
                        f"run fewer ranks or re-shard the data more evenly")
    return steps


# The functions this module maps have no Python control flow on tensors (tf.cond
# where it is needed), so they are traced as written: AutoGraph's rewrite of them
# and of what they call costs seconds at every process's start.
plain = tf.autograph.experimental.do_not_convert


def _records_with_origin(filename):
    """Records of one shard, each with its file name and index (for error messages)."""
    records = tf.data.TFRecordDataset(filename, buffer_size=READ_BUFFER)
    return records.enumerate().map(plain(lambda i, r: (filename, i, r)))


def _checked_label(label, filename, index, num_classes, first_label):
    ok = tf.logical_and(label >= first_label, label < first_label + num_classes)
    check = tf.debugging.Assert(ok, ["bad label", label, "first", first_label, "num_classes",
                                     num_classes, "file", filename, "record", index])
    with tf.control_dependencies([check]):  # first..first+N-1 on disk, 0..N-1 for the logits
        return tf.cast(label - first_label, tf.int32)


BAD_LABEL = re.compile(r"\[bad label\] \[(-?\d+)\] \[first\] \[(-?\d+)\] \[num_classes\] "
                       r"\[(\d+)\] \[file\] \[(.*?)\] \[record\] \[(\d+)\]")


def bad_label(message):
    """The one line that says what is wrong, from the failed label check in a
    TensorFlow error message (None if it is not one)."""
    found = BAD_LABEL.search(message)
    if not found:
        return None
    label, first, n, path, record = found.groups()
    return label_problem(path, int(record), int(label), int(first), int(n))


def label_problem(path, record, label, first_label, num_classes):
    """What a label outside first..first+N-1 means, and the flag that fixes it."""
    where = (f"{path}: record {record}: label {label} is outside {first_label}.."
             f"{first_label + num_classes - 1}")
    if label == first_label - 1:
        return (f"{where}: the labels seem to start at {label} (as TensorFlow Datasets' "
                f"exports and several converters write them): pass --first_label={label}")
    if label >= first_label + num_classes:
        return f"{where}: more classes than --num_classes={num_classes}?"
    return f"{where} (--first_label={first_label}, --num_classes={num_classes})"


FORGIVEN_GROUP = 64  # records decoded per inner dataset of forgiving_map()


def forgiving_map(ds, load):
    """`ds.map(load)` that drops the records `load` fails on (a JPEG that does not
    decode, a bad label: --skip_corrupt), and only those: ignore_errors() runs
    over groups of records already read, so an error in the reading itself (a
    shard that vanished, cannot be read, or fails its checksum) still stops the
    run with its name. Records stay in order."""
    return ds.batch(FORGIVEN_GROUP).flat_map(plain(
        lambda *group: tf.data.Dataset.from_tensor_slices(group).map(
            plain(load), num_parallel_calls=AUTOTUNE).ignore_errors()))


def _options(threads, deterministic):
    options = tf.data.Options()
    options.deterministic = deterministic
    # Measured here: with autotuning on, deleting an epoch's iterator sometimes
    # blocked for ~7 s (the tuner's thread), a quarter of a demo epoch. Without
    # it, AUTOTUNE parallelism means "all of this pipeline's threads".
    options.autotune.enabled = False
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return options


def train_dataset(files, batch_size, image_size, num_classes, steps, seed=0, epoch=0,
                  rank=0, skip_steps=0, shuffle=True, augment=True, flip=True,
                  area_range=(0.05, 1.0), shuffle_buffer=10000, threads=None,
                  deterministic=True, skip_corrupt=False, first_label=1, epochs=1):
    """`steps` batches of (images, labels, positions) per epoch for one rank, for
    `epochs` epochs from `epoch` on, the first after skipping `skip_steps` of it
    (a resume): one pipeline for a run, each epoch reshuffled.

    File order and the record shuffle are seeded by (seed, epoch, rank), and the
    augmentation by (seed, epoch, position in the epoch), so the same arguments
    give the same batches. The records' order is deterministic whatever
    `deterministic` says (it then rules only the order of what is done in
    parallel elsewhere): a resume's skip of the steps done must skip exactly
    the records read before, none repeated and none missed (a parallel read in
    any order fed the 10,000-record shuffle buffer another sequence each run).
    Positions count from 0 in each epoch. With
    `skip_corrupt`, records that do not decode or have a bad label are dropped;
    the positions (in order) show how many.
    """
    deterministic = deterministic or skip_corrupt  # in-order positions count the skips
    files, n = list(files), len(files)

    def one_epoch(e, skip):  # int64 tensors: the epoch, and the steps of it to skip
        # The shuffles' seeds are the epoch's alone, not combined with a global
        # seed (Keras' set_random_seed): TensorFlow cannot combine a global seed
        # of 0 with a tensor seed. This sets the seed of this function's graph only.
        tf.random.set_seed(None)
        epoch_seed = seed * 1_000_003 + e * 1009 + rank
        ds = tf.data.Dataset.from_tensor_slices(files)
        if shuffle:
            ds = ds.shuffle(n, seed=epoch_seed)
        ds = ds.interleave(plain(_records_with_origin), cycle_length=min(n, 16), block_length=1,
                           num_parallel_calls=min(n, 16), deterministic=True)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=epoch_seed)
        # Repeat after the shuffle: each pass over the rank's shards is a fresh
        # permutation with no example twice. With steps from steps_per_epoch() an
        # epoch fits in one pass; the repeat is the guard that a rank never runs dry
        # (records skipped with skip_corrupt, shards that shrank since the count).
        ds = ds.repeat()
        todo = (steps - skip) * batch_size
        ds = ds.skip(skip * batch_size).enumerate(skip * batch_size)
        if not skip_corrupt:
            ds = ds.take(todo)  # exact, and before any decoding

        def load(position, origin):
            filename, index, record = origin
            jpeg, label, boxes = schema.parse(record)
            image = preprocess.train_image(jpeg, boxes, image_size, seed=tf.stack(
                [epoch_seed, position]), area_range=area_range, augment=augment, flip=flip)
            return image, _checked_label(label, filename, index, num_classes, first_label), \
                position

        ds = forgiving_map(ds, load) if skip_corrupt else ds.map(
            plain(load), num_parallel_calls=AUTOTUNE, deterministic=True)  # the batches exact
        return ds.take(todo) if skip_corrupt else ds

    # An epoch's count is whole batches, so no batch spans two epochs; the
    # prefetch runs on across the boundary (and through a pause between stretches).
    ds = tf.data.Dataset.range(epoch, epoch + epochs).map(
        lambda e: (e, tf.where(e == epoch, tf.constant(skip_steps, tf.int64), 0)))
    ds = ds.flat_map(plain(one_epoch))
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(PREFETCH_BATCHES)
    return ds.with_options(_options(threads, deterministic))


def eval_share(files, rank, size):
    """(the files rank `rank` of `size` reads, (k, j): it takes record i of each
    when i % k == j). With at least as many files as ranks, whole files,
    files[rank::size] (ImageNet's 128 over 24 ranks: 5 or 6 each); with fewer,
    one file per rank, whose records the k ranks that share it split. Either
    way a rank reads only its own files, and every record is one rank's."""
    files = list(files)
    if len(files) >= size or not files:
        return files[rank::size], (1, 0)
    sharing = [r for r in range(size) if r % len(files) == rank % len(files)]
    return [files[rank % len(files)]], (len(sharing), sharing.index(rank))


def eval_dataset(files, batch_size, image_size, num_classes, threads=None, skip_corrupt=False,
                 first_label=1, rank=0, size=1):
    """Every validation record once over `size` ranks, central crop, last batch
    possibly short: this rank's share (eval_share)."""
    files, (k, j) = eval_share(files, rank, size)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))  # maybe none
    ds = ds.interleave(plain(_records_with_origin), cycle_length=max(1, min(len(files), 16)),
                       num_parallel_calls=AUTOTUNE, deterministic=False)
    if k > 1:
        ds = ds.filter(plain(lambda filename, index, record: index % k == j))

    def load(filename, index, record):
        jpeg, label, _ = schema.parse(record)
        return preprocess.eval_image(jpeg, image_size), _checked_label(
            label, filename, index, num_classes, first_label)

    ds = (forgiving_map(ds, load) if skip_corrupt else
          ds.map(plain(load), num_parallel_calls=AUTOTUNE, deterministic=False))
    ds = ds.batch(batch_size).prefetch(PREFETCH_BATCHES)
    return ds.with_options(_options(threads, False))


def synthetic_batch(batch_size, image_size, num_classes, seed=0, device=None):
    """One fixed random batch (images, labels, positions), copied once to
    `device` (a rank's GPU; None: the CPU) and never again, as Horovod's
    synthetic benchmark does: the compute-only benchmark (no files, no decode)."""
    g = tf.random.Generator.from_seed(seed)
    images = tf.cast(g.uniform([batch_size, image_size, image_size, 3], 0, 256, tf.int32),
                     tf.uint8)
    labels = g.uniform([batch_size], 0, num_classes, dtype=tf.int32)
    batch = images, labels, tf.zeros([batch_size], tf.int64)  # the shape of train batches
    if not device:
        return batch
    with tf.device(device):
        return tuple(tf.identity(t) for t in batch)


def to_device(ds, device):
    """On a GPU (`device`, e.g. "/gpu:0"), the dataset's next batches are copied
    to it while the current step runs (tf_cnn_benchmarks' staging area); on the
    CPU (None) the dataset as it is."""
    if not device:
        return ds
    return ds.apply(tf.data.experimental.prefetch_to_device(device, DEVICE_BATCHES))


class Feed:
    """A rank's batches for a whole run, handed out stretch by stretch from one
    iterator (one pipeline: its prefetch fills during the pauses), or the
    synthetic batch again and again."""

    def __init__(self, dataset=None, batch=None):
        self._batches = iter(dataset) if dataset is not None else None
        self._batch = batch

    def take(self, n):
        """The next `n` batches (fewer if the pipeline ends)."""
        if self._batches is None:
            return itertools.repeat(self._batch, n)
        return itertools.islice(self._batches, n)

    def close(self):
        """Ends the pipeline (its threads) now rather than at garbage collection."""
        self._batches = self._batch = None


def find_undecodable(files, num_classes, first_label=1):
    """(file, record, reason) of the first record whose JPEG does not decode or whose
    label is out of range, scanning in order; None if all are fine. Slow: it is the
    diagnosis after a decode error, which tf.data reports without a file name."""
    for path in files:
        for index, record in enumerate(tf.data.TFRecordDataset(path)):
            jpeg, label, _ = schema.parse(record)
            if not first_label <= int(label) < first_label + num_classes:
                return path, index, (f"label {int(label)} not in {first_label}.."
                                     f"{first_label + num_classes - 1}")
            try:
                tf.io.decode_jpeg(jpeg, channels=3)
            except tf.errors.InvalidArgumentError as e:
                return path, index, f"JPEG does not decode ({e.message.splitlines()[0]})"
    return None


def record_offsets(path):
    """The byte offset of each record of a TFRecord file, from its headers (no
    payload read); raises DataError naming the file and record if it is
    truncated. A local file is read 12 bytes a record (pread, no buffer: a
    buffered reader would read most of a file of 110 KB records); a remote one
    (gs://, hdfs://) through TensorFlow's file system."""
    size = tf.io.gfile.stat(path).length  # 0 bytes: a valid shard without records
    offset, index = 0, 0
    with _header_reader(path) as read_at:
        while offset < size:
            header = read_at(offset)
            if len(header) < 12:
                raise DataError(f"{path}: truncated in the header of record {index} "
                                f"(byte {offset} of {size})")
            (length,) = struct.unpack("<Q", header[:8])
            yield offset
            offset += 12 + length + 4
            if offset > size:
                raise DataError(f"{path}: truncated in record {index}: it needs {length} bytes "
                                f"but the file ends {offset - size} bytes short")
            index += 1


def _header_reader(path):
    """A context giving a function that reads `n` bytes (12: a record's header)
    at an offset of `path`: pread for a local file, TensorFlow's file system
    otherwise."""
    return _gfile_headers(path) if "://" in path else _pread_headers(path)


@contextlib.contextmanager
def _pread_headers(path):
    """A local file's bytes: where its file system takes O_DIRECT (a disk, NFS,
    Lustre), read as the device blocks that hold them (DIRECT_BLOCKS: a header
    costs 512 bytes, 0.005 of a 110 KB record, where a buffered read takes its
    4 KB page, 0.04); elsewhere (tmpfs) by pread, without read-ahead, which
    would read the records between the headers."""
    with _direct_reader(path) as direct:
        if direct:
            yield direct
            return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        yield lambda offset, n=12: os.pread(fd, n, offset)
    finally:
        os.close(fd)


DIRECT_BLOCKS = (512, 4096)  # bytes: the device's logical block, tried in turn


@contextlib.contextmanager
def _direct_reader(path):
    """A function reading `n` bytes at an offset through O_DIRECT, or None where
    the file system or its device refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        yield None
        return
    buffers = {}

    def aligned(size):  # page-aligned memory, as O_DIRECT needs; kept for the next read
        if size not in buffers:
            buffers[size] = mmap.mmap(-1, size)
        return buffers[size]

    try:
        for block in DIRECT_BLOCKS:
            try:
                os.preadv(fd, [aligned(block)], 0)
            except OSError:
                continue

            def read_at(offset, n=12, block=block):
                start = offset - offset % block
                span = -(-(offset + n - start) // block) * block  # whole blocks
                buf = aligned(span)
                got = os.preadv(fd, [buf], start)
                return bytes(buf[offset - start:max(offset - start, min(got, offset + n - start))])
            yield read_at
            return
        yield None
    finally:
        for buf in buffers.values():
            buf.close()
        os.close(fd)


@contextlib.contextmanager
def _gfile_headers(path):
    """Through a GFile, which reads ahead (on local files, as before issue 42)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        def read_at(offset, n=12):
            f.seek(offset)
            return f.read(n)
        yield read_at


def framed_record(path, offset=0):
    """The bytes of the record at `offset` as the file holds them (header, data,
    checksums), read as the blocks that hold it and no further (no read-ahead
    into the next records); b"" past the end."""
    with _header_reader(path) as read_at:
        header = read_at(offset)
        if len(header) < 12:
            return header
        (length,) = struct.unpack("<Q", header[:8])
        return read_at(offset, 12 + length + 4)


def check_framing(path):
    """A TFRecord file's record count, from its headers (record_offsets). A
    0-byte file is a shard of 0 records (the TPU converter's fixed 1,024 shards
    leave many empty on a small set)."""
    return sum(1 for _ in record_offsets(path))


CORRUPT_AT = re.compile(r"corrupted record at (\d+)")


def find_corrupt(files, offset):
    """(file, record, its first byte) of the record whose checksum fails at byte
    `offset` (what TensorFlow reports as "corrupted record at OFFSET", naming no
    file: the offset of the record's header, or of its data 12 bytes on): the
    files with a record there, read up to it. None if not found."""
    for path in files:
        try:
            index, start = next(((i, at) for i, at in enumerate(record_offsets(path))
                                 if offset in (at, at + 12)), (None, None))
        except DataError:
            continue
        if index is None:
            continue
        try:
            for _ in tf.data.TFRecordDataset(path).take(index + 1):
                pass
        except tf.errors.DataLossError:
            return path, index, start
    return None


def diagnose(error, files, num_classes, first_label=1, skip_corrupt=False):
    """One line for an input pipeline's `error` (a TensorFlow OpError) on the
    rank that reads `files`: the file and record it comes from, and the way out.
    Slow when it must scan (a JPEG that does not decode: tf.data names no file)."""
    if isinstance(error, tf.errors.InvalidArgumentError):  # decoding: a bad label or JPEG
        label = bad_label(error.message)
        if label:
            return label
        found = find_undecodable(files, num_classes, first_label)
        where = f"{found[0]}: record {found[1]}: {found[2]}" if found else first_line(error)
        return f"{where}; fix or remove it, or pass --skip_corrupt to skip such records"
    if isinstance(error, tf.errors.DataLossError):
        at = CORRUPT_AT.search(error.message or "")
        found = find_corrupt(files, int(at.group(1))) if at else None
        where = (f"{found[0]}: record {found[1]} (byte {found[2]})" if found else
                 f"one of this rank's shards ({first_line(error)})")
        return (f"{where}: its checksum does not match: the file is damaged, and "
                f"{'--skip_corrupt cannot skip it' if skip_corrupt else 'cannot be read on'}; "
                f"copy it again from its source")
    return (f"{first_line(error)}: a data file vanished or cannot be read "
            f"({type(error).__name__}); check the data folder and its mount")

