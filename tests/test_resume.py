"""A run stopped after epoch 1 and restarted ends where an uninterrupted run ends."""

import numpy as np
import pytest

from helpers import SMALL, checkpoints, final_weights, launch, step_records

# Augmentation, shuffling and dropout stay on: the data is seeded by (seed, epoch,
# position) and dropout by (seed, rank, step), so the restarted run must rebuild
# exactly the batches and masks the first run would have seen.
ARGS = SMALL + ["--batch_size=8", "--epochs=2", "--deterministic", "--noeval"]  # dropout 0.5


def test_resume_matches_an_uninterrupted_run(tiny_data, tmp_path):
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={straight}", *ARGS])
    assert res.returncode == 0, res.stdout[-3000:]
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={stopped}", *ARGS,
                  "--max_steps=10"])  # 80 images / batch 8: stops at the end of epoch 0
    assert res.returncode == 0, res.stdout[-3000:]
    first = final_weights(stopped)
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={stopped}", *ARGS])
    assert res.returncode == 0, res.stdout[-3000:]
    assert "resumed from" in res.stdout and "at step 10" in res.stdout
    logs = step_records(stopped)
    assert [r["step"] for r in logs] == ([[0, s] for s in range(1, 11)]
                                         + [[1, s] for s in range(11, 21)])
    rate = {tuple(r["step"]): r["data"]["learning_rate"] for r in logs}
    straight_logs = step_records(straight)
    assert rate == {tuple(r["step"]): r["data"]["learning_rate"] for r in straight_logs}
    resumed, uninterrupted = final_weights(stopped), final_weights(straight)
    assert any(not np.array_equal(a, b) for a, b in zip(first, resumed))  # it did train on
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("first,then", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_ranks(tiny_data, tmp_path, first, then):
    """One epoch on `first` ranks, the next on `then`: it continues at epoch 1's
    first step for the new global batch, with the rate scaled for the new size."""
    args = ["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL, "--epochs=2",
            "--noeval", "--lr_schedule=constant", "--warmup_epochs=0", "--base_lr=0.001"]
    run = lambda np, extra=(): launch([*args, *extra], np=np, launcher="gloo" if np > 1 else None)
    spe_first, spe_then = 80 // (4 * first), 80 // (4 * then)
    res = run(first, [f"--max_steps={spe_first}"])
    assert res.returncode == 0, res.stdout[-3000:]
    res = run(then)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"that is step {spe_then}, epoch 1" in res.stdout
    steps = step_records(tmp_path)
    before, after = steps[:spe_first], steps[spe_first:]
    assert [r["step"] for r in before] == [[0, s] for s in range(1, spe_first + 1)]
    assert [r["step"] for r in after] == [[1, s] for s in range(spe_then + 1, 2 * spe_then + 1)]
    assert {round(r["data"]["learning_rate"], 9) for r in before} == {0.001 * first}
    assert {round(r["data"]["learning_rate"], 9) for r in after} == {0.001 * then}


def test_periodic_checkpoints_within_an_epoch(tiny_data, tmp_path):
    res = launch(["train", f"--data_dir={tiny_data}", f"--model_dir={tmp_path}", *SMALL,
                  "--epochs=1", "--noeval", "--checkpoint_every_steps=7", "--keep_checkpoints=9"])
    assert res.returncode == 0, res.stdout[-3000:]
    assert checkpoints(tmp_path) == [7, 14, 20]  # 80 images / batch 4: 20 steps
    assert [r["step"] for r in step_records(tmp_path)] == [[0, s] for s in range(1, 21)]


def test_a_resume_takes_the_checkpoint_with_the_most_training_at_any_global_batch(
        tiny_data, tmp_path):
    """1 rank (global batch 4) to step 16, then 2 ranks (global batch 8): the
    second run resumes ckpt-16 (64 examples) at step 8 and saves ckpt-10 (80
    examples, the epoch's end), which sets aside the first run's ckpt-12 and
    ckpt-16, numbered above it and holding less, then ckpt-12 (96). With
    ckpt-16 put back (a folder of an older version, or a copy), a third run and
    `newest` (evaluate, export, predict, report) still take ckpt-12: the
    training a checkpoint holds decides, not its number. Under horovodrun
    --gloo: the choice is rank 0's alone, the same under any launcher; the
    scripts' default (MPI) is the launcher matrix's (test_signal_matrix.py)."""
    import shutil

    from hvd_alexnet import checkpoint
    model_dir = tmp_path / "run"
    args = ["train", f"--data_dir={tiny_data}", f"--model_dir={model_dir}", *SMALL, "--noeval",
            "--epochs=3", "--log_every=4", "--checkpoint_every_steps=4"]
    res = launch([*args, "--max_steps=16"])
    assert res.returncode == 0, res.stdout[-3000:]
    res = launch([*args, "--max_steps=12"], np=2, launcher="gloo")
    assert res.returncode == 0, res.stdout[-3000:]
    ckpts = model_dir / "checkpoints"
    assert f"resumed from {ckpts}/ckpt-16 at step 8" in res.stdout, res.stdout[-3000:]
    assert "checkpoint ckpt-16 is superseded (64 examples, against 80 in ckpt-10" in res.stdout
    assert checkpoints(str(model_dir))[-1] == 12
    assert checkpoint.examples_seen(str(ckpts / "ckpt-12")) == 96
    (aside,) = [p for p in (ckpts / "set_aside").iterdir() if p.name.startswith("ckpt-16-")]
    for f in aside.iterdir():
        shutil.copy(f, ckpts / f.name)
    assert checkpoint.newest(str(model_dir)) == str(ckpts / "ckpt-12")
    res = launch([*args, "--max_steps=16"], np=2, launcher="gloo")
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"resumed from {ckpts}/ckpt-12 at step 12" in res.stdout, res.stdout[-3000:]
    assert checkpoints(str(model_dir))[-1] == 16
    assert checkpoint.examples_seen(str(ckpts / "ckpt-16")) == 128


def test_a_resume_goes_on_with_the_records_not_yet_read_in_its_epoch(tmp_path):
    """The default data order (no --deterministic), 4 shards a rank, 2 threads
    reading them: stopped at the read step 4 of a 10-step epoch (a SIGTERM,
    held there), then resumed. Each rank's trace of the images it trained on
    (--noaugment --noflip: an image is its record's key) holds every record of
    its shards once: none repeated, none missed. Before, the parallel read fed
    the shuffle another sequence each run, and the resume's skip of 4 steps
    skipped other records than the 4 steps had read. Under horovodrun --gloo:
    the order is the reader's, the same under any launcher; the scripts'
    default (MPI) stops and resumes in the launcher matrix."""
    import os
    import signal
    import time

    from helpers import build_dataset, finish_after, output, start
    data = build_dataset(str(tmp_path / "data"), 8, 1, per_class=8)
    model_dir, trace = str(tmp_path / "run"), str(tmp_path / "trace")
    args = ["train", f"--data_dir={data}", f"--model_dir={model_dir}", *SMALL, "--threads=2",
            "--noaugment", "--noflip", "--epochs=1", "--noeval", "--log_every=4"]
    proc = start(args, np=2, launcher="gloo", faults=["hold=3", f"trace={trace}"])

    def stop():  # once the ranks are up: held (blocked) until step 3, then taken
        deadline = time.time() + 180
        while "ranks joined" not in output(proc):
            assert proc.poll() is None and time.time() < deadline, output(proc)[-3000:]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGTERM)

    res = finish_after(proc, stop, timeout=240)
    assert res.returncode == 75 and checkpoints(model_dir)[-1] == 4, res.stdout[-3000:]
    res = launch(args, np=2, launcher="gloo", faults=[f"trace={trace}"])
    assert res.returncode == 0 and "at step 4" in res.stdout, res.stdout[-3000:]
    for rank in (0, 1):
        seen = [line.split() for line in open(f"{trace}.{rank}")]
        positions = sorted(int(p) for p, _ in seen)
        assert positions == list(range(40)), positions  # 10 steps x 4, each position once
        keys = [k for _, k in seen]
        assert len(set(keys)) == 40, f"rank {rank}: {40 - len(set(keys))} records repeated"
