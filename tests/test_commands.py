"""Every command is defined one way (command.py): --help exits 0, a flag of
another command is refused by its name, and doctor takes train's flag file."""

import os
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
    assert out.stdout.startswith(f"usage: hvd-alexnet {name}")
    assert "--flagfile" in out.stdout


def test_data_help_lists_the_data_commands():
    out = _run(["data", "--help"])
    assert out.returncode == 0 and "data build" in out.stdout and "data photos" in out.stdout


@pytest.mark.parametrize("name,foreign", [("train", "--output_dir=x"),
                                          ("train", "--validation_fraction=0.1"),
                                          ("data build", "--data_dir=x"),
                                          ("data demo", "--train_dir=x"),
                                          ("evaluate", "--epochs=3"), ("plan", "--seed=1")])
def test_a_flag_of_another_command_is_refused_by_name(name, foreign):
    out = _run([*name.split(), foreign])
    flag = foreign[2:].split("=")[0]
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"Unknown command line flag '{flag}'" in out.stderr
    assert f"hvd-alexnet {name} --help" in out.stderr


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


def test_a_command_line_in_the_style_of_tf_cnn_benchmarks_runs(tiny_data, tmp_path):
    """The model card's tool's flags where they mean the same here (aliases), and
    its fixed settings (--model=alexnet, --variable_update=horovod, one GPU a rank)."""
    from helpers import step_records
    from hvd_alexnet import metrics_log
    out = launch(["train", "--data_name=imagenet", "--model=alexnet", "--num_gpus=1",
                  "--variable_update=horovod", f"--data_dir={tiny_data}",
                  f"--model_dir={tmp_path}", "--batch_size=4", "--num_batches=6",
                  "--display_every=2", "--num_warmup_batches=2", "--use_fp16",
                  "--grad_accum_steps=1", "--image_size=67", "--threads=1", "--noeval"],
                 np=2, launcher="gloo", timeout=240)
    assert out.returncode == 0, out.stdout[-3000:]
    params = metrics_log.read(str(tmp_path / "dllogger.json"))[0]["data"]
    assert (params["max_steps"], params["log_every"], params["precision"]) == (6, 2, "mixed")
    assert params["policy"] == "mixed_bfloat16"  # mixed precision on a CPU
    assert [r["step"][1] for r in step_records(str(tmp_path))] == [2, 4, 6]
    assert "step 2/6 (2/10 of the epoch)" in out.stdout and "(warm-up: not timed)" in out.stdout
    summary = step_records(str(tmp_path), length=0)[-1]["data"]
    assert summary["steps"] == 6 and summary["train_images_per_sec"] > 0


@pytest.mark.parametrize("flag,pointer", [
    ("--num_gpus=8", "--num_gpus=8: one process per GPU here: launch N ranks (horovodrun -np N)"),
    ("--variable_update=parameter_server",
     "--variable_update=parameter_server: gradients are always averaged by Horovod's all-reduce"),
    ("--train_dir=/tmp/ckpt", "--train_dir=/tmp/ckpt: checkpoints and logs go to --model_dir"),
    ("--eval", "to evaluate a checkpoint only, as tf_cnn_benchmarks' --eval does, run "
               "hvd-alexnet evaluate"),
    ("--data_name=cifar10", "--data_name=cifar10: this trainer reads ImageNet-schema TFRecords"),
    ("--model=resnet50", "--model=resnet50: this trainer trains AlexNet only")])
def test_tf_cnn_benchmarks_flags_that_mean_something_else_are_refused(tmp_path, flag, pointer):
    out = _run(["train", "--synthetic", f"--model_dir={tmp_path}", flag])
    assert out.returncode == 2 and pointer in out.stderr, out.stderr[-2000:]


def test_doctor_fails_where_the_gpus_are_that_tensorflow_does_not_see(tiny_data, tmp_path):
    """nvidia-smi (a fake one here) lists 2 GPUs and the CPU TensorFlow sees none:
    every rank would train on the CPU. Before, doctor reported the device 'CPU'
    and 'ok'."""
    from helpers import fake_commands
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_commands(bin_dir, {"nvidia-smi": 'echo "GPU 0: NVIDIA A100 (UUID: GPU-0)"; '
                                          'echo "GPU 1: NVIDIA A100 (UUID: GPU-1)"'})
    out = launch(["doctor", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}/m", *SMALL],
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"}, timeout=180)
    assert out.returncode == 2, out.stdout[-3000:]
    assert "nvidia-smi lists 2 GPU(s), TensorFlow sees none: every rank would train on the " \
           "CPU: the CPU stack (tensorflow-cpu) is installed here; run make install" in out.stdout
