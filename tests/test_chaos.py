"""The chaos harness (`make chaos`) against a fake job (tests/fake_job.py): it
reaches its verdict for every seed, whatever faults it draws and whenever."""

import os
import random
import re
import subprocess
import sys

import pytest

from helpers import ROOT
from hvd_alexnet.tools import chaos

FAKE = os.path.join(ROOT, "tests", "fake_job.py")
STEPS = 80


def fake_start(model_dir, args):
    with open(model_dir + ".log", "a") as log:
        return subprocess.Popen([sys.executable, FAKE, "launch", model_dir, str(STEPS)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def first_fault(seed, faults=6):
    """The first fault and its step, as chaos.run draws them."""
    rng = random.Random(seed)
    kinds = [f.name for f in chaos.CLASSIC]
    schedule = [f for _ in range(faults // len(kinds) + 1) for f in rng.sample(kinds, len(kinds))]
    return schedule[0], rng.randint(3, 40)


def test_seed_7_kills_rank_0_while_saving_before_the_first_save():
    """The case that crashed the harness: no checkpoints/ yet when the fault is due."""
    assert first_fault(7) == ("kill rank 0 while it saves", 5)


@pytest.mark.parametrize("seed", [7, *range(12)])
def test_the_harness_reaches_its_verdict_for_every_seed(tmp_path, seed, capsys):
    ok = chaos.run(None, str(tmp_path), 6, seed, [], start=fake_start, settle=0.05,
                   kinds=chaos.CLASSIC)
    out = capsys.readouterr().out
    assert ok, out
    assert "final weights:" in out and "MATCH" in out
    assert f"steps:             {STEPS} of {STEPS} (lost: 0)" in out


def test_faults_whose_moment_never_comes_are_reported_not_injected(tmp_path, capsys):
    """More faults than an 80-step job has room for: the run still ends with its verdict."""
    ok = chaos.run(None, str(tmp_path), 40, 3, [], start=fake_start, settle=0.05,
                   kinds=chaos.CLASSIC)
    out = capsys.readouterr().out
    assert ok, out
    assert "not: the run ended before their moment" in out


def test_the_real_trainer_through_a_fault_of_every_kind(tiny_data, tmp_path, capsys):
    """The chaos run against the trainer itself: 2 real ranks, 80 deterministic
    steps, a fault of each kind that the model folder must survive and the
    classic ones, each attempt's exit status checked against its fault's
    (75, 4, 6, a failure), restarted from the folder until it ends; then the
    weights must be bit for bit an uninterrupted run's. (As a user, the full
    disk is left out with the reason: it needs a tmpfs.)"""
    kinds = [chaos.BY_NAME[name] for name in (
        "SIGTERM during start-up", "corrupt the newest checkpoint", "kill rank 1",
        "NaN weights between log steps", "garble the checkpoint index",
        "a second job on the folder", "SIGTERM to horovodrun", "fill the disk")]
    ok = chaos.run(tiny_data, str(tmp_path), len(kinds), 35, [
        "--image_size=67", "--batch_size=4", "--threads=1", "--epochs=8"], kinds=kinds,
        gap=(2, 6))
    out = capsys.readouterr().out
    assert ok, out
    assert "exit statuses:     each what its fault should give" in out, out
    assert "final weights:" in out and "MATCH" in out and "steps:             80 of 80" in out
    injected = re.search(r"faults injected:   (\d+) of", out).group(1)
    assert int(injected) == len(kinds) - (0 if os.geteuid() == 0 else 1), out


def test_filling_the_disk_never_crashes_the_harness(tmp_path, monkeypatch):
    """The trainer writes between the harness's measure of the free space and its
    fallocate (seed 5150 under load: ENOSPC, a traceback and exit 1, the run's
    verdict lost). Here the first measure is 10 MiB too generous, as if the
    trainer had written that much since: the filler measures again and fills."""
    import collections
    import shutil

    from helpers import mount_tmpfs
    from hvd_alexnet.tools import chaos_faults
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_tmpfs(disk, "64m")
    try:
        real, calls = shutil.disk_usage, []
        usage = collections.namedtuple("usage", "total used free")

        def measured(path):
            calls.append(path)
            u = real(path)
            return usage(u.total, u.used, u.free + (10 << 20 if len(calls) == 1 else 0))

        monkeypatch.setattr(chaos_faults.shutil, "disk_usage", measured)
        assert chaos_faults.fill_disk(str(disk)) is True
        assert len(calls) == 2 and real(disk).free <= 1 << 20, (calls, real(disk))
    finally:
        subprocess.run(["umount", "-l", str(disk)])
