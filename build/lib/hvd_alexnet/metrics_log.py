"""Metrics in DLLogger's format, written by rank 0 only.

File: JSON stream, one `DLLL {...}` line per record. Stdout: DLLogger's
StdOutBackend style, `DLL <datetime> - <step> key : value ...`. This module
writes the format itself (NVIDIA's `dllogger` is published only as a git
repository), so tools that read DLLogger's files read these.
"""

import datetime
import json
import os
import sys
import time

LOG_FILE = "dllogger.json"  # in the run's --model_dir


def _record(kind, start, **fields):
    now = datetime.datetime.now()
    return {"timestamp": str(now.timestamp()), "datetime": str(now),
            "elapsedtime": str(time.time() - start), "type": kind, **fields}


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else str(value)


class MetricsLog:
    """log(step, data) / metadata(metric, meta); a no-op on ranks other than 0.
    A write that fails (a full disk) is said once, stops the writing, and calls
    `on_error(what)` (the trainer then stops the run at the next step where the
    ranks read their stop vote, checkpoint first)."""

    def __init__(self, path, enabled=True, stdout=sys.stdout, on_error=None):
        self.enabled, self.stdout, self.start = enabled, stdout, time.time()
        self.path, self.on_error, self.file = path, on_error, None
        if not enabled:
            return
        self.file = open(path, "a", buffering=1)
        if self.file.tell() and not _ends_with_newline(path):
            self._write_line("")  # a job killed mid-line: start this run's lines clean

    def metadata(self, metric, meta):
        if not self.enabled:
            return
        self._write(_record("METADATA", self.start, metric=metric, metadata=meta))

    def log(self, step, data, echo=True):
        """echo=False: the file only (the trainer prints its own progress line)."""
        if not self.enabled:
            return
        self._write(_record("LOG", self.start, step=step, data=data))
        if self.stdout and echo:
            shown = step if isinstance(step, str) else tuple(step)
            items = " ".join(f"{k} : {_fmt(v)}" for k, v in data.items())
            print(f"DLL {datetime.datetime.now()} - {shown} {items}", file=self.stdout, flush=True)

    def _write(self, record):
        self._write_line("DLLL " + json.dumps(record))

    def _write_line(self, line):
        if self.file is None:
            return
        try:
            self.file.write(line + "\n")
        except OSError as e:
            self.file = None  # the rest is not written; the run is stopped
            what = f"writing {self.path} failed ({e.strerror})"
            print(f"hvd_alexnet: {what}: stopping at the next step the ranks read "
                  f"(checkpoint first)", file=sys.stderr, flush=True)
            if self.on_error:
                self.on_error(what)

    def close(self):
        if self.file:
            try:
                self.file.close()
            except OSError:  # the last line's flush, on a full disk
                pass
            self.file = None


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def read(path):
    """Records of a DLLogger JSON stream file, in order; a line cut short by a
    killed job is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            if line.startswith("DLLL "):
                try:
                    records.append(json.loads(line[5:]))
                except json.JSONDecodeError:
                    continue
    return records


def run_records(model_dir):
    """The LOG records of the run in model_dir so far, in order ([] before its
    first): every rank that was rank 0 appends to the same file."""
    path = os.path.join(model_dir, LOG_FILE)
    return [r for r in read(path) if r["type"] == "LOG"] if os.path.exists(path) else []


def run_summary(model_dir):
    """The data of the last summary record of the run in model_dir."""
    return step_records(run_records(model_dir), 0)[-1]["data"]


def step_records(records, length=2):
    """The LOG records whose step is a list of `length` items: [epoch, step] for
    training steps (2), [epoch] for validations (1), [] for the summary (0)."""
    return [r for r in records
            if r["type"] == "LOG" and isinstance(r["step"], list) and len(r["step"]) == length]
