"""What a start learns of the shards before its first step, without reading
their payloads: each shard's record count and the class of its record 0.

A shard is counted once, from its records' 12-byte headers (reader.record_offsets,
which also finds a truncated shard), its record 0 read for its class; the
answer is remembered in a file beside the shards (SURVEY_FILE), or under
~/.cache/hvd_alexnet/ where the data folder is read-only, and holds while the
shard's size and modification time are the ones remembered. Every later start,
requeue, `evaluate` and `doctor` reads that file alone: on ImageNet's 1,152
shards on a network file system, the start no longer reads the data set
(about 250 GB) before its first step. A shard damaged since in place (the same
size, other bytes) is still found when it is read, with its name
(reader.diagnose). Remote folders (gs://, hdfs://) are counted every time.
"""

import concurrent.futures
import hashlib
import json
import os

from hvd_alexnet import files
from hvd_alexnet.data import labels, reader

SURVEY_FILE = ".hvd_alexnet-shards.json"


def survey(data_dir, paths):
    """({path: (records, (label, synset, text) of record 0, or None if it has
    none)}, {key: entry} of the shards counted now, for remember())."""
    known = {} if _remote(data_dir) else _remembered(data_dir)
    keys, stamps, todo = {}, {}, []
    for path in paths:
        keys[path] = os.path.relpath(path, data_dir) if not _remote(data_dir) else path
        stamps[path] = stamp = None if _remote(data_dir) else _stamp(path)
        entry = known.get(keys[path])
        if stamp is None or not _valid(entry) or [entry["bytes"], entry["mtime_ns"]] != stamp:
            todo.append(path)
    # Several shards at once: each header is a read of its own, so a network file
    # system's latency, not its bandwidth, sets the time. The first problem in the
    # shards' order is raised, as one after the other would.
    with concurrent.futures.ThreadPoolExecutor(COUNTING_THREADS) as pool:
        counted = {keys[path]: {"bytes": stamps[path] and stamps[path][0],
                                "mtime_ns": stamps[path] and stamps[path][1], **entry}
                   for path, entry in zip(todo, pool.map(_count, todo))}
    found = {}
    for path in paths:
        entry = counted.get(keys[path]) or known[keys[path]]
        found[path] = (entry["records"], tuple(entry["first"]) if entry["first"] else None)
    return found, counted


COUNTING_THREADS = 8


def _count(path):
    """A shard's record count, from its headers, and record 0's class."""
    records = reader.check_framing(path)  # first: a shard too short is named as such
    first = labels.read_first(path)
    return {"records": records, "first": list(first[0][2:]) if first else None}


def remember(data_dir, counted):
    """Adds `counted` (every rank's, merged) to the survey file: beside the
    shards, else in the user's cache; nothing where neither can be written (the
    next start counts again, as before)."""
    if not counted or _remote(data_dir):
        return
    for path in _places(data_dir):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            files.write_json(path, {**_read(path), **counted})
            return
        except OSError:
            continue


def _valid(entry):
    """Whether a remembered entry is one this module wrote (a cache edited by
    hand, or by another version, is counted again)."""
    first = entry.get("first") if isinstance(entry, dict) else None
    return (isinstance(entry, dict) and isinstance(entry.get("records"), int) and
            entry["records"] >= 0 and isinstance(entry.get("bytes"), int) and
            isinstance(entry.get("mtime_ns"), int) and
            (first is None or (isinstance(first, list) and len(first) == 3)))


def _remote(data_dir):
    return "://" in data_dir


def _stamp(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _places(data_dir):
    """Where the survey of `data_dir` is kept, in order of preference."""
    folder = os.path.abspath(data_dir)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    digest = hashlib.sha256(folder.encode()).hexdigest()[:16]
    return [os.path.join(folder, SURVEY_FILE),
            os.path.join(cache, "hvd_alexnet", f"shards-{digest}.json")]


def _remembered(data_dir):
    for path in _places(data_dir):
        known = _read(path)
        if known:
            return known
    return {}


def _read(path):
    """The survey in `path`; {} if there is none or it is not one (a cache: never
    an error)."""
    try:
        with open(path) as f:
            known = json.load(f)
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}
