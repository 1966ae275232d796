"""The benchmark's machinery and its dataset (never its figures: tests do not time)."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from helpers import ROOT
from hvd_alexnet.data import photos
from hvd_alexnet.tools import bench


def test_photos_are_distinct_imagenet_sized_jpegs(tmp_path):
    photos.write_raw(str(tmp_path), count=24, validation_fraction=0.0)
    files = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "train") for f in fs]
    assert len(files) == 24 and len(os.listdir(tmp_path / "train")) == 10  # one class per photo
    blobs = [open(f, "rb").read() for f in files]
    assert len(set(blobs)) == 24
    for blob in blobs:
        shape = tuple(tf.io.decode_jpeg(blob).shape)
        assert shape in ((375, 500, 3), (500, 375, 3))


def test_bench_writes_every_chosen_row_and_the_targets(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "hvd_alexnet", "bench", f"--data_dir={tiny_data}",
           f"--out_dir={tmp_path}", "--image_size=67", "--warmup=0", "--windows=2",
           "--window_images=8",
           "--only=bare,synthetic_1,synthetic_1_long,pipeline,allreduce_hvd_gloo,epoch_gap,"
           "validation_root,validation_all,startup_read"]
    res = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    results = json.load(open(tmp_path / "benchmarks.json"))
    assert sorted(results["rows"]) == ["allreduce_hvd_gloo", "bare", "epoch_gap", "pipeline",
                                       "startup_read", "synthetic_1", "synthetic_1_long",
                                       "validation_all", "validation_root"]
    # A start after the first reads the survey file alone (in the page cache: 0 bytes
    # from the disk, or a few): a share of the shards' bytes.
    assert all(0 <= w < 1 for w in results["rows"].pop("startup_read")["windows"])
    long = results["rows"].pop("synthetic_1_long")  # one block per fresh process
    assert len(long["windows"]) == bench.FRESH_PROCESSES and all(w > 0 for w in long["windows"])
    for row in results["rows"].values():
        assert len(row["windows"]) == 2 and all(w > 0 for w in row["windows"])
        assert min(row["windows"]) <= row["median"] <= max(row["windows"])
    assert results["rows"]["allreduce_hvd_gloo"]["ranks"] == 2
    assert len(results["rows"]["synthetic_1"]["peak_rss_mb_per_rank"]) == 1
    overhead = results["targets"][0]
    assert overhead[2] == 0.97 and overhead[1] == (results["rows"]["synthetic_1"]["median"] /
                                                   results["rows"]["bare"]["median"])
    # 2 epoch boundaries (80 records, batch 32: 2 steps an epoch), each in median steps
    assert results["rows"]["epoch_gap"]["steps_per_epoch"] == 2
    targets = {name: (ratio, want) for name, ratio, want in results["targets"]}
    validation = targets["validation, 2 ranks: every rank its share / rank 0 alone"]
    assert validation == (results["rows"]["validation_all"]["median"] /
                          results["rows"]["validation_root"]["median"], -0.6)
    assert targets["start-up: bytes from the disk / the shards' bytes"][1] == -0.01
    gap = targets["an epoch boundary in median steps (data on disk)"]
    assert gap == (results["rows"]["epoch_gap"]["median"], -2.0)
    text = open(tmp_path / "benchmarks.md").read()
    assert "| <= 0.6 |" in text and "| <= 2.0 |" in text
    assert "| trainer, synthetic, 1 rank |" in text and "not measured" in text
    assert "Reference: 1,833.9 images/s" in text and results["machine"]["cores"] == os.cpu_count()


def test_blocks_read_as_a_summary_over_them_would():
    # Windows of equal images: a block's rate is its images over its seconds; only
    # whole blocks, the first windows (the warm-up side) left over.
    assert bench.blocks([7.0, 100.0, 50.0, 50.0, 25.0], 2) == [
        pytest.approx(200 / 3), pytest.approx(100 / 3)]
    assert bench.blocks([10.0], 2) == []


def test_bench_scaling_refuses_clearly_where_it_cannot_run(monkeypatch):
    from hvd_alexnet.errors import UsageError
    from hvd_alexnet.tools import scaling
    monkeypatch.setattr(scaling.netns, "unavailable", lambda: "needs root (network namespaces)")
    with pytest.raises(UsageError, match="bench-scaling cannot run here: needs root"):
        scaling.main(["--rates=500"])
