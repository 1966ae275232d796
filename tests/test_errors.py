"""Bad input gives a clear error and a non-zero exit, within a bounded time."""

import os
import shutil

import pytest

from conftest import SMALL, launch


def test_missing_data_dir(tmp_path):
    res = launch(["train", f"--model_dir={tmp_path}"], timeout=60)
    assert res.returncode == 2 and "--data_dir is required" in res.stdout


def test_data_dir_that_does_not_exist(tmp_path):
    res = launch(["train", f"--data_dir={tmp_path}/nope", f"--model_dir={tmp_path}"], timeout=60)
    assert res.returncode == 2 and "nope: no such directory" in res.stdout


def test_directory_without_shards(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "README").write_text("not a shard")
    res = launch(["train", f"--data_dir={tmp_path}/data", f"--model_dir={tmp_path}/m", *SMALL],
                 timeout=90)
    assert res.returncode == 3 and "no training shards (train-*)" in res.stdout


@pytest.mark.parametrize("flag,message", [
    ("--image_size=50", "must be at least 67"), ("--batch_size=-1", "--batch_size -1"),
    ("--lr_schedule=linear", "linear"), ("--base_lr=0", "must be positive")])
def test_nonsense_flags(tiny_data, tmp_path, flag, message):
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", flag], timeout=60)
    assert res.returncode != 0 and message in res.stdout


def test_unwritable_model_dir(tiny_data, tmp_path):
    (tmp_path / "file").write_text("x")
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}/file/sub"],
                 timeout=60)
    assert res.returncode == 2 and "cannot be written" in res.stdout


def test_fewer_shards_than_ranks(tiny_data, tmp_path):
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL],
                 np=3, launcher="gloo", timeout=180)
    assert res.returncode != 0
    assert "2 training shards for 3 ranks" in res.stdout


@pytest.mark.parametrize("launcher", ["gloo", "mpi"])
def test_truncated_shard_stops_every_rank(tiny_data, tmp_path, launcher):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    shard = data / "train-00001-of-00002"
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 1000)
    res = launch(["train", f"--data_dir={data}", f"--model_dir={tmp_path}/m", *SMALL],
                 np=2, launcher=launcher, timeout=180)
    assert res.returncode != 0
    assert "train-00001-of-00002: truncated in record" in res.stdout
    assert not os.path.exists(tmp_path / "m" / "checkpoints")  # nothing trained, nothing saved


def test_divergence_stops_every_rank_with_a_clear_error(tiny_data, tmp_path):
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL,
                  "--base_lr=1e6", "--warmup_epochs=0", "--epochs=3", "--noeval"],
                 np=2, launcher="gloo", timeout=180)
    assert res.returncode != 0
    assert "training diverged" in res.stdout and "lower --base_lr" in res.stdout
