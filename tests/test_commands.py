"""Every command is defined one way (command.py): --help exits 0, a flag of
another command is refused by its name, and doctor takes train's flag file."""

import subprocess
import sys

import pytest

from helpers import ROOT, SMALL, launch

COMMANDS = ["train", "data build", "data demo", "data photos", "doctor", "report",
            "evaluate", "predict", "export", "plan", "bench"]


def _run(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hvd_alexnet", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_exits_0_and_lists_the_commands_own_flags(name):
    out = _run([*name.split(), "--help"])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: python -m hvd_alexnet {name}")
    assert "--flagfile" in out.stdout


def test_data_help_lists_the_data_commands():
    out = _run(["data", "--help"])
    assert out.returncode == 0 and "data build" in out.stdout and "data photos" in out.stdout


@pytest.mark.parametrize("name,foreign", [("train", "--output_dir=x"), ("train", "--train_dir=x"),
                                          ("data build", "--data_dir=x"),
                                          ("data demo", "--train_dir=x"),
                                          ("evaluate", "--epochs=3"), ("plan", "--seed=1")])
def test_a_flag_of_another_command_is_refused_by_name(name, foreign):
    out = _run([*name.split(), foreign])
    flag = foreign[2:].split("=")[0]
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"Unknown command line flag '{flag}'" in out.stderr
    assert f"python -m hvd_alexnet {name} --help" in out.stderr


def test_a_bad_value_and_a_stray_argument_are_refused():
    out = _run(["train", "--batch_size=many"])
    assert out.returncode == 2 and "--batch_size=many" in out.stderr
    out = _run(["train", "stray"])
    assert out.returncode == 2 and "train takes no arguments; got: stray" in out.stderr
    out = _run(["predict", "only_a_model_dir"])
    assert out.returncode == 2 and "predict takes MODEL_DIR IMAGE..." in out.stderr


def test_doctor_takes_the_flag_file_of_the_train_it_checks(tiny_data, tmp_path):
    flagfile = tmp_path / "run.flags"
    flagfile.write_text("# a training run's flags\n" + "\n".join(
        [f"--data_dir={tiny_data}", f"--model_dir={tmp_path}/m", *SMALL, "--epochs=2",
         "--noflip", "--lr_schedule=cosine", "--num_classes=10"]) + "\n")
    out = launch(["doctor", f"--flagfile={flagfile}"], np=2, launcher="gloo", timeout=180)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "smallest rank's share: 40 examples, batch 4" in out.stdout
    assert "ready to train" in out.stdout
