"""Files written whole, and read with one line when they are not.

Every file the project writes (model.json, run.json, metadata.json, reports,
benchmark results, an elastic job's host list) goes to a temporary name in the
same folder, is flushed to the disk and renamed over the old one: a kill or a
full disk at any moment leaves the old file or the new one, never a part of
one. Imports no TensorFlow: the benchmark and the launch tools use it.
"""

import json
import os
import tempfile


def write_atomic(path, data):
    """Writes `data` (str or bytes) to `path` whole, or leaves `path` as it was
    (the temporary file is removed if the write fails, a full disk included)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the job's other users
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_json(path, value):
    write_atomic(path, json.dumps(value, indent=1) + "\n")


def read_json(path, error, way_out, text=None):
    """The JSON value in `path` (or in `text`, already read from it); a file that
    is not JSON raises `error` (an errors.py class) in one line naming the file,
    what is wrong and `way_out`."""
    try:
        if text is None:
            with open(path) as f:
                text = f.read()
        return json.loads(text)
    except json.JSONDecodeError as e:
        what = "empty" if not text.strip() else f"not valid JSON ({e.msg} at line {e.lineno})"
        raise error(f"{path} is {what}: {way_out}") from None
    except UnicodeDecodeError:
        raise error(f"{path} is not text (garbled): {way_out}") from None
