"""The summary's images/s measures the steps: it agrees with the progress
windows of the same run (two measurements of one run, never a time)."""

import pytest

from helpers import SMALL, launch, step_records


def window_rate(model_dir, batch):
    """Images over seconds of all progress windows: each logged rate covers the
    steps since the previous line (the run's first step, which builds the
    graph, is in none)."""
    records = step_records(model_dir)
    steps = [r["step"][1] for r in records]
    counts = [steps[0] - 1] + [b - a for a, b in zip(steps, steps[1:])]
    images = [c * batch for c in counts]
    seconds = [i / r["data"]["images_per_sec"] for i, r in zip(images, records)]
    return sum(images) / sum(seconds)


@pytest.mark.parametrize("data", ["synthetic", "real"])
def test_summary_rate_agrees_with_the_progress_windows(tiny_data, tmp_path, data):
    """3 epochs of 20 steps (real: 80 images, batch 4) or one stretch of 60
    synthetic steps; a stall outside the steps (an iterator's teardown at an
    epoch's end) counted in the summary but in no window would show here."""
    source = ["--synthetic", "--max_steps=60"] if data == "synthetic" else [
        f"--data_dir={tiny_data}", "--epochs=3"]
    res = launch(["train", *source, f"--model_dir={tmp_path}", *SMALL, "--log_every=5",
                  "--noeval", "--num_classes=10"], timeout=240)
    assert res.returncode == 0, res.stdout[-3000:]
    summary = step_records(str(tmp_path), length=0)[-1]["data"]
    assert summary["steps"] == 60
    windows = window_rate(str(tmp_path), batch=4)
    assert summary["train_images_per_sec"] == pytest.approx(windows, rel=0.03), (summary, windows)
