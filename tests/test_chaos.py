"""The chaos harness (`make chaos`) against a fake job (tests/fake_job.py): it
reaches its verdict for every seed, whatever faults it draws and whenever."""

import os
import random
import subprocess
import sys

import pytest

from hvd_alexnet.tools import chaos
from helpers import ROOT

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
    schedule = [f for _ in range(faults // len(chaos.FAULTS) + 1)
                for f in rng.sample(chaos.FAULTS, len(chaos.FAULTS))]
    return schedule[0], rng.randint(3, 40)


def test_seed_7_kills_rank_0_while_saving_before_the_first_save():
    """The case that crashed the harness: no checkpoints/ yet when the fault is due."""
    assert first_fault(7) == ("kill rank 0 while it saves", 5)


@pytest.mark.parametrize("seed", [7, *range(12)])
def test_the_harness_reaches_its_verdict_for_every_seed(tmp_path, seed, capsys):
    ok = chaos.run(None, str(tmp_path), 6, seed, [], start=fake_start, settle=0.05)
    out = capsys.readouterr().out
    assert ok, out
    assert "final weights:" in out and "MATCH" in out
    assert f"steps:             {STEPS} of {STEPS} (lost: 0)" in out


def test_faults_whose_moment_never_comes_are_reported_not_injected(tmp_path, capsys):
    """More faults than an 80-step job has room for: the run still ends with its verdict."""
    ok = chaos.run(None, str(tmp_path), 40, 3, [], start=fake_start, settle=0.05)
    out = capsys.readouterr().out
    assert ok, out
    assert "not: the run ended before their moment" in out
