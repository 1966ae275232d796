"""What a user sees and uses around a run: progress lines, TensorBoard (served
by the real `tensorboard`), Horovod's timeline, `report`, `evaluate` on 1 and
2 ranks, `predict`, `export` (a SavedModel reloaded and compared with
predict) and the `doctor` preflight under mpirun and horovodrun."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from helpers import ROOT, SMALL, build_dataset, free_port, launch, step_records
from hvd_alexnet import metrics_log
from hvd_alexnet.tools.launch import BIN

EPOCHS, STEPS_PER_EPOCH = 3, 10  # 2 ranks x batch 4 over 80 training images


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 training shards, 3 validation shards (so that evaluation can be split)."""
    return build_dataset(str(tmp_path_factory.mktemp("after")), 2, 3, per_class=8)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("run") / "m")
    result = launch(["train", "--data_dir", data, "--model_dir", model_dir, *SMALL,
                     f"--epochs={EPOCHS}", "--num_classes=10", "--horovod_timeline"],
                    np=2, launcher="gloo", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    return model_dir, result.stdout, metrics_log.run_summary(model_dir)


def test_rank_zero_prints_one_progress_line_per_log_step(run):
    _, out, _ = run
    total = EPOCHS * STEPS_PER_EPOCH
    pattern = re.compile(r"^\[0\]<stdout>:epoch (\d)/3  step (\d+)/30 \((\d+)/10 of the epoch\)"
                         r"  loss \d+\.\d{4}  lr \S+  [\d,.]+ img/s  epoch left \d+:\d\d:\d\d"
                         r"  run left \d+:\d\d:\d\d$", re.M)
    lines = pattern.findall(out)
    assert [int(step) for _, step, _ in lines] == list(range(2, total + 1)), out[-3000:]
    assert ("[0]<stdout>:epoch 1/3  step 1/30 (1/10 of the epoch)  loss " in out and
            "  (building the graph: not timed)" in out)  # the first step has no rate yet
    assert all(int(e) == (int(s) - 1) // 10 + 1 for e, s, _ in lines)
    assert "[1]<stdout>:epoch" not in out  # the other ranks stay quiet
    assert out.count("run left 0:00:00") >= 1  # the last step


def test_tensorboard_serves_the_runs_scalars(run):
    model_dir, _, summary = run
    port = free_port()
    board = subprocess.Popen([os.path.join(BIN, "tensorboard"), "--logdir", model_dir,
                              "--host", "127.0.0.1", "--port", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/data/plugin/scalars"
        deadline, tags = time.monotonic() + 90, None
        while time.monotonic() < deadline and not tags:
            try:
                tags = json.load(urllib.request.urlopen(f"{url}/tags", timeout=5))
            except OSError:
                time.sleep(0.5)
        assert tags, "tensorboard did not answer within 90 s"
        assert set(tags["tensorboard"]) == {"train/loss", "train/learning_rate",
                                            "train/images_per_sec", "validation/top1",
                                            "validation/top5"}
        losses = json.load(urllib.request.urlopen(
            f"{url}/scalars?run=tensorboard&tag=train/loss", timeout=10))
        logged = {r["step"][1]: r["data"]["loss"] for r in step_records(model_dir)}
        assert [s for _, s, _ in losses] == sorted(logged)
        assert np.allclose([v for _, _, v in losses], [logged[s] for s in sorted(logged)],
                           rtol=1e-6)
        top1 = json.load(urllib.request.urlopen(
            f"{url}/scalars?run=tensorboard&tag=validation/top1", timeout=10))
        assert len(top1) == EPOCHS and abs(top1[-1][2] - summary["top1"]) < 1e-6
    finally:
        board.kill()
        board.wait()


def test_timeline_records_the_allreduces(run):
    model_dir, out, _ = run
    path = os.path.join(model_dir, "horovod_timeline.json")
    assert f"Horovod timeline: {os.path.abspath(path)}" in out
    text = open(path).read().rstrip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")  # Horovod leaves it open
    names = {e.get("name", "") for e in events}
    assert any("ALLREDUCE" in n for n in names), sorted(names)[:20]


def _curves(png_path):
    """How many of the report's curve colours a plot shows (a curve spans far more
    pixels of exactly its colour than its sample in the legend does)."""
    from PIL import Image

    from hvd_alexnet.report import COLORS
    pixels = np.asarray(Image.open(png_path).convert("RGB")).reshape(-1, 3)
    found = 0
    for color in COLORS:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        found += int((pixels == rgb).all(axis=1).sum() > 150)
    return found


def test_report_writes_plots_with_their_curves_and_a_summary(run, tmp_path):
    model_dir, _, summary = run
    out = launch(["report", model_dir, "--out_dir", str(tmp_path)], timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    assert _curves(tmp_path / "loss_lr.png") == 2  # loss, learning rate
    assert _curves(tmp_path / "accuracy.png") == 2  # top-1, top-5
    assert _curves(tmp_path / "throughput.png") == 1  # images/s
    md = (tmp_path / "report.md").read_text()
    assert f"| top1 | {summary['top1']:.4g} |" in md and "| ranks | 2 |" in md
    assert md.count("\n| 1 | ") == 1 and "\n| 3 | " in md  # one row per validated epoch


def _hits(out):
    m = re.search(r"top-1 hits (\d+), top-5 hits (\d+), of (\d+)", out)
    assert m, out[-3000:]
    return tuple(int(x) for x in m.groups())


def test_evaluate_is_exact_on_one_and_two_ranks(run, data):
    model_dir, _, summary = run
    from hvd_alexnet.data import reader, schema
    records = sum(reader.check_framing(f) for f in schema.list_shards(data, "validation"))
    args = ["evaluate", "--data_dir", data, "--model_dir", model_dir, "--batch_size=7",
            "--threads=1"]
    one = launch(args, timeout=180)
    two = launch(args, np=2, launcher="gloo", timeout=180)
    assert one.returncode == 0 and two.returncode == 0, one.stdout[-2000:] + two.stdout[-2000:]
    assert _hits(one.stdout) == _hits(two.stdout)
    c1, c5, n = _hits(one.stdout)
    assert n == records  # 3 shards over 2 ranks (2 + 1): none missed, none twice
    # The same checkpoint as the trainer's last validation, the same preprocessing:
    # the trainer's 2 ranks (every other record of each shard each: 3 shards do
    # not divide among 2) counted exactly what 1 rank counts.
    assert (c1 / n, c5 / n) == (summary["top1"], summary["top5"])


def test_predict_and_the_exported_model_agree(run, data, tmp_path):
    model_dir, _, _ = run
    folder = os.path.join(data, "raw", "validation", "digit_3")
    images = [os.path.join(folder, f) for f in sorted(os.listdir(folder))[:2]]
    out = launch(["predict", model_dir, *images], timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    shown = re.findall(r"^  (\d)\. (\S+)\s+(\d\.\d{4})$", out.stdout, re.M)
    assert len(shown) == 10  # 5 per image
    names = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"}
    assert {name for _, name, _ in shown} <= names

    exported = str(tmp_path / "saved")
    assert launch(["export", model_dir, exported], timeout=120).returncode == 0
    import tensorflow as tf
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    result = serve(jpeg_bytes=tf.constant([open(p, "rb").read() for p in images]))
    for i in range(2):
        mine = shown[5 * i:5 * i + 5]
        assert [n.decode() for n in result["top5_classes"][i].numpy()] == [n for _, n, _ in mine]
        assert np.allclose(result["top5_probabilities"][i].numpy(),
                           [float(p) for _, _, p in mine], atol=6e-5)
    assert np.allclose(result["probabilities"].numpy().sum(axis=1), 1.0, atol=1e-5)


def test_a_run_without_model_json_is_described_by_its_parameters(run, data, tmp_path):
    """Runs from before model.json: the last PARAMETER record of dllogger.json."""
    from hvd_alexnet import inference
    model_dir, _, _ = run
    old = tmp_path / "old_run"
    old.mkdir()
    (old / "dllogger.json").write_text(open(os.path.join(model_dir, "dllogger.json")).read())
    assert inference.read_description(str(old)) == inference.read_description(model_dir)
    with pytest.raises(inference.UsageError, match="neither model.json nor dllogger.json"):
        inference.read_description(str(tmp_path))


def test_predict_refuses_a_file_that_is_not_a_jpeg(run):
    model_dir, _, _ = run
    out = launch(["predict", model_dir, os.path.join(ROOT, "README.md")], timeout=120)
    assert out.returncode == 3 and "README.md: not a JPEG file" in out.stdout


def test_predict_and_export_name_the_classes_from_imagenets_files(run, data, tmp_path):
    """A model trained without ImageNet's synset list and names file (most of
    ImageNet's classes would be "class N") is named at predict and export time
    from them (before, only train took them). A list that numbers the classes
    otherwise than the model was trained is refused, naming the synset."""
    model_dir, _, _ = run
    synsets = [f"digit_{d}" for d in range(10)]  # the demo's, in label order
    (tmp_path / "synsets.txt").write_text("\n".join(synsets) + "\n")
    (tmp_path / "names.txt").write_text("".join(f"{s}\tdigit-{s[-1]}\n" for s in synsets))
    image = os.path.join(data, "raw", "validation", "digit_3")
    image = os.path.join(image, sorted(os.listdir(image))[0])
    files = [f"--synsets_file={tmp_path / 'synsets.txt'}", f"--names_file={tmp_path / 'names.txt'}"]
    out = launch(["predict", *files, model_dir, image], timeout=120)
    assert out.returncode == 0, out.stdout[-2000:]
    shown = re.findall(r"^  \d\. (\S+)\s+\d\.\d{4}$", out.stdout, re.M)
    assert len(shown) == 5 and all(re.fullmatch(r"digit-\d", n) for n in shown), shown
    exported = str(tmp_path / "saved")
    out = launch(["export", files[1], model_dir, exported], timeout=120)  # names alone
    assert out.returncode == 0, out.stdout[-2000:]
    import tensorflow as tf
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    top = serve(jpeg_bytes=tf.constant([open(image, "rb").read()]))["top5_classes"][0]
    assert [n.decode() for n in top.numpy()] == shown
    (tmp_path / "other.txt").write_text("\n".join(reversed(synsets)) + "\n")
    out = launch(["predict", f"--synsets_file={tmp_path / 'other.txt'}", model_dir, image],
                 timeout=120)
    assert out.returncode == 2, out.stdout[-2000:]
    assert "synset digit_9 is label 10 in the model but label 1 in " in out.stdout, out.stdout


@pytest.mark.parametrize("launcher", ["mpi", "gloo"])
def test_doctor_reports_every_rank_and_passes(data, tmp_path, launcher):
    out = launch(["doctor", "--data_dir", data, "--model_dir", str(tmp_path / "m"),
                  "--batch_size=4", "--image_size=67", "--num_classes=10", "--threads=1"],
                 np=2, launcher=launcher, timeout=180)
    assert out.returncode == 0, out.stdout[-3000:]
    gathered = "mpi4py" if launcher == "mpi" else "Horovod (Gloo)"
    assert f"2 ranks on 1 host(s), gathered with {gathered}" in out.stdout
    rows = re.findall(r"^(?:\[0\]<stdout>:)?([01])\s+(\S+)\s+([01])\s+CPU\s+1\s+1\s+(\d+)\s+ok$",
                      out.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1"], out.stdout[-3000:]
    assert sum(int(r[3]) for r in rows) == 80  # the training images, split over the ranks
    assert "ready to train" in out.stdout and "PROBLEM" not in out.stdout


def test_doctor_names_each_problem_and_fails(tmp_path):
    data = build_dataset(str(tmp_path / "one_shard"), 1, 1, per_class=2)
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    cores = os.cpu_count()
    out = launch(["doctor", "--data_dir", data, "--model_dir", str(blocked / "m"),
                  "--batch_size=64", "--image_size=67", "--num_classes=10", f"--threads={cores}"],
                 np=2, launcher="mpi", timeout=180)
    assert out.returncode == 2, out.stdout[-3000:]
    assert ("PROBLEM  1 training shards for 2 ranks: every rank needs at least one shard"
            in out.stdout)
    assert "cannot be written" in out.stdout
    assert f"{2 * cores} threads on {cores} cores: more threads than cores" in out.stdout


@pytest.mark.parametrize("command", ["doctor", "report", "evaluate", "predict", "export"])
def test_every_command_explains_itself(command):
    out = subprocess.run([sys.executable, "-m", "hvd_alexnet", command, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "usage: hvd-alexnet " + command in out.stdout
