"""bin/gpu_check.sh in the mode this machine allows: no GPU, so the same checks on
the CPU, said so, with every measurement made (small images, short windows)."""

import subprocess

from helpers import ROOT
from hvd_alexnet.tools.launch import job_env


def test_gpu_check_runs_in_cpu_mode_and_says_so():
    res = subprocess.run(["bash", "bin/gpu_check.sh", "--ranks=2", "--image_size=67",
                          "--batch=4", "--windows=1", "--window_images=8", "--timeout=300"],
                         cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=1200)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    assert "0 GPU(s)" in out and "Horovod built with MPI, Gloo" in out
    assert "CPU mode: no GPU found, so the same checks run on the CPU (2 ranks" in out
    ranks = [line.split() for line in out.splitlines() if line.endswith("  CPU")]
    assert [r[0] for r in ranks] == ["0", "1"] and [r[2] for r in ranks] == ["0", "1"]
    for label in ("1 rank, fp32", "1 rank, mixed bfloat16", "2 ranks, fp32 (aggregate)",
                  "2 ranks, mixed bfloat16 (aggregate)", "all-reduce of the gradients, 2 ranks",
                  "plan's prediction, 2 ranks, fp32"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {label}"))
        assert float(row.split("|")[2]) > 0, row
    assert "measured / predicted (2 ranks, fp32): " in out
    assert out.rstrip().endswith("hvd_alexnet gpu check: CPU mode: every measurement ran; "
                                 "run this on a GPU host for the GPU verdict")
