"""bin/gpu_check.sh in the mode this machine allows: no GPU, so the same checks on
the CPU, said so, with every measurement made (small images, short windows)."""

import subprocess

from helpers import ROOT
from hvd_alexnet.tools.launch import job_env


def test_gpu_check_runs_in_cpu_mode_and_says_so(tiny_data):
    res = subprocess.run(["bash", "bin/gpu_check.sh", "--ranks=2", "--image_size=67",
                          "--batch=4", "--windows=1", "--window_images=8", "--timeout=300",
                          f"--data_dir={tiny_data}"],
                         cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=1200)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "0 GPU(s)" in out and "Horovod built with MPI, Gloo" in out
    assert "CPU mode: no GPU found, so the same checks run on the CPU (2 ranks" in out
    # each rank's device, no GPU id, and the trainer's feed seen on that device (the CPU)
    ranks = [line.split() for line in out.splitlines() if line.endswith("  CPU  -  CPU:0")]
    assert [r[0] for r in ranks] == ["0", "1"] and [r[2] for r in ranks] == ["0", "1"], out
    for label in ("1 rank, fp32", "1 rank, mixed bfloat16", "2 ranks, fp32 (aggregate)",
                  "2 ranks, mixed bfloat16 (aggregate)",
                  "2 ranks at the scripts' batch of 32, fp32 (aggregate)",
                  "all-reduce of the gradients, 2 ranks", "plan's prediction, 2 ranks, fp32"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {label}"))
        assert float(row.split("|")[2]) > 0, row
    assert "measured / predicted (2 ranks, fp32): " in out
    # the trainer's real feed on --data_dir's records, beside the synthetic step
    row = next(line for line in out.splitlines() if line.startswith("| the trainer's feed alone"))
    assert float(row.split("|")[2]) > 0, row
    assert "  ok       the input keeps up: the trainer's feed gives " in out
    assert "(not judged: the feed and the step share the CPU)" in out
    assert "the scripts' batch of 32 per rank: " in out and " of batch 4's images/s" in out
    assert "  ok       float16 sums with one division (--fp16_allreduce): [40000.0, " in out
    assert out.rstrip().endswith("hvd_alexnet gpu check: CPU mode: every measurement ran; "
                                 "run this on a GPU host for the GPU verdict")


def test_the_gpu_checks_find_shared_gpus_and_batches_off_the_gpu():
    """The GPU branches of the verdict, with what the probes would report there."""
    from hvd_alexnet.tools import gpu_check
    facts = {"horovod": {"NCCL": True}}
    devices = [{"rank": r, "host": "g1", "device": "/physical_device:GPU:0",
                "gpu_id": "0000:07:00.0" if r != 1 else "0000:0f:00.0",
                "async_completion": r != 1} for r in range(3)]
    feeds = [{"rank": r, "on_device": r != 2} for r in range(3)]
    r = {k: {"median": 100.0} for k in ("fp32_1", "mixed_1", "fp32_n")}
    found = dict(gpu_check.checks(facts, devices, feeds, r, 3, True, 300.0, 512))
    assert found["every rank on its own GPU (by PCI bus id)"] == \
        "ranks 0, 2 on g1 share PCI 0000:07:00.0"
    assert found["the training batches and their normalisation on each rank's GPU"] == \
        "not on the GPU on rank(s) 2 (see the feed rows)"
    assert "make demo-data" in dict(gpu_check.checks(facts, devices, [], r, 3, True, 300.0, 512))[
        "the training batches and their normalisation on each rank's GPU"]
    assert found["Horovod's async completion on (no idle GPU between steps)"].startswith(
        "off on rank(s) 1")
    sums = [{"rank": 0, "one_division": True, "want": [40000.0, 4e-7], "got": [40000.0, 4e-7]},
            {"rank": 1, "one_division": False, "want": [40000.0, 4e-7], "got": [40000.0, 0.0]}]
    found = dict(gpu_check.checks(facts, devices, feeds, r, 3, True, 300.0, 512, sums))
    feeds = [{**f, "unit": "images/s", "windows": [80.0 if f["rank"] == 1 else 200.0]}
             for f in feeds]  # rank 1's records come slower than its step (100 / 3) takes them
    r = {**r, "fp32_n": {"median": 300.0}}
    found = dict(gpu_check.checks(facts, devices, feeds, r, 3, True, 300.0, 512))
    (what,) = [k for k in found if k.startswith("the input keeps up")]
    assert what.startswith("the input keeps up: the trainer's feed gives 80.0 images/s per "
                           "rank, the step takes 100.0 (fp32, 3 ranks): x0.80"), what
    assert found[what].startswith("the input is the limit"), found[what]
    found = dict(gpu_check.checks(facts, devices, feeds, r, 3, True, 300.0, 512, sums))
    assert found["float16 sums with one division (--fp16_allreduce): [40000.0, 4e-07] on every "
                 "rank averages to itself"] == ("rank 1: [40000.0, 0.0] (a second division by "
                                                "the ranks flushed it)")


def test_the_launch_scripts_train_at_the_batch_that_gpu_check_measures():
    import os
    import re

    from hvd_alexnet.tools.gpu_check import SCRIPTS_BATCH
    for script in ("run_train_alexnet_imagenet.sh", "run_train_alexnet_multigpu_imagenet.sh",
                   "run_train_alexnet_multinode.sh",
                   "run_train_alexnet_elastic.sh", "slurm_train_alexnet.sbatch"):
        text = open(os.path.join(ROOT, "bin", script)).read()
        assert re.findall(r"--batch_size=(\d+)", text) == [str(SCRIPTS_BATCH)], script
