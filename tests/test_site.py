"""A GPU site's first day (issue 42), walked as a user without root: a login
node without nvidia-smi and GPU nodes whose nvidia-smi (a stand-in) lists 8
GPUs, sharing one checkout and its .venv, ImageNet on a read-only shared
folder, Slurm. Root only, to make the user's view and the test's Slurm (CI
sets HVD_ALEXNET_REQUIRE_MULTIHOST=1, so it cannot skip there)."""

import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile

import pytest

import slurm
from helpers import ROOT, as_user, fake_commands, reachable_by_all, require
from hvd_alexnet.data import survey

USER = "nobody"


@pytest.fixture(scope="module")
def site():
    """The site's folders under /tmp (which every user may enter): the user's
    home and runs, the data set (root's, read-only to the user, as a shared
    ImageNet is), a GPU node's PATH, and a Slurm whose jobs run in the user's
    view. The shared checkout is this suite's own, with the .venv it runs on,
    built by root and read-only to the user, as a checkout a team's account
    installed: nothing in the walk may need to write there."""
    require(slurm.unavailable() or ("" if shutil.which("setpriv") else "needs setpriv"),
            "the site walk")
    user = pwd.getpwnam(USER)
    base = tempfile.mkdtemp(prefix="hvd-site-")
    os.chmod(base, 0o755)
    folders = {name: os.path.join(base, name) for name in ("home", "runs", "jobs", "gpu-bin")}
    for name, folder in folders.items():
        os.mkdir(folder)
        if name != "gpu-bin":
            os.chown(folder, user.pw_uid, user.pw_gid)
    fake_commands(pathlib.Path(folders["gpu-bin"]), {
        "nvidia-smi": "for i in 0 1 2 3 4 5 6 7; do "
                      "echo \"GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)\"; done"})
    # The user reaches the suite's Python and .venv, and the checkout, where they are.
    shared = [os.path.realpath(sys.base_prefix), sys.prefix, ROOT]
    prefix = as_user(shared, user.pw_uid, user.pw_gid)
    with slurm.Cluster(os.path.join(base, "slurm"), reachable_by_all(shared),
                       folders["jobs"]) as cluster:
        yield {"base": base, "prefix": prefix, "cluster": cluster, **folders}
    shutil.rmtree(base, ignore_errors=True)


def user_env(site, gpu_node=False, **extra):
    """The user's environment: their home; on a GPU node, nvidia-smi first on the
    PATH. The suite's stack (STACK=... make test) and its Python, else none:
    the scripts' own default, the checkout's .venv."""
    env = {"PATH": (f"{site['gpu-bin']}:" if gpu_node else "") + os.environ["PATH"],
           "HOME": site["home"], "USER": USER, "LANG": "C.UTF-8", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if os.environ.get("STACK"):
        env.update(STACK=os.environ["STACK"], PYTHON=sys.executable)
    return {**env, **extra}


def run(site, args, env, timeout=240):
    res = subprocess.run([*site["prefix"], *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return res.returncode, res.stdout + res.stderr


@pytest.mark.timeout(1200)
def test_a_user_walks_the_site_from_the_login_node_to_slurm(site, tiny_data):
    """In the order of the README's many-host steps, every command as the user:

    1. the login node: `make install` finds the shared .venv up to date (no
       root, nothing written);
    2. a GPU node: `make install` refuses to switch the shared .venv to the GPU
       stack (exit 2, one line, the .venv untouched), and the one-host script's
       `train`, in horovodrun's MPI mode, refuses to run its ranks on the CPU
       where nvidia-smi lists GPUs (exit 2, no checkpoint);
    3. `doctor` from every launcher script, with real ranks: the one-host
       horovodrun script (MPI mode, HOROVODRUN_ARGS' own output files), the
       1-GPU script (one process), the multinode script (mpirun, a hostfile's
       slots), and the sbatch script submitted by the user, whose tasks take
       the node's CPUs over its tasks (no --cpus-per-task; the test Slurm binds
       tasks to CPUs, as sites do).
    The data set is root's and read-only to the user: the start's survey of
    the shards goes to the user's cache."""
    data = os.path.join(site["base"], "data")
    # The shards alone: a survey that an earlier test left would make the start count nothing.
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(survey.SURVEY_FILE))
    for path in [data, *(os.path.join(data, f) for f in os.listdir(data))]:
        os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
    venv = sys.prefix
    stamp = open(os.path.join(venv, ".installed")).read()
    small = ["--num_classes=10", "--noeval", "--image_size=67", "--batch_size=4",
             "--threads=1"]

    # 1. The login node.
    code, out = run(site, ["make", "install"], user_env(site))
    assert code == 0 and "is up to date" in out, out[-3000:]

    # 2. A GPU node: the shared .venv is the CPU stack's, built on the login node.
    code, out = run(site, ["make", "install"], user_env(site, gpu_node=True))
    assert code == 2, out[-3000:]
    assert "holds the CPU stack, and nvidia-smi lists 8 GPU(s)" in out, out[-3000:]
    assert open(os.path.join(venv, ".installed")).read() == stamp
    one_host = os.path.join(ROOT, "bin", "run_train_alexnet_multigpu_imagenet.sh")
    gpu_run = os.path.join(site["runs"], "gpu")
    code, out = run(site, ["bash", one_host, "--max_steps=2", *small],
                    user_env(site, gpu_node=True, NUM_GPUS="2", DATA_DIR=data,
                             MODEL_DIR=gpu_run))
    assert code == 2, out[-3000:]
    assert "nvidia-smi lists 8 GPU(s) but TensorFlow sees none" in out, out[-3000:]
    assert not os.path.exists(os.path.join(gpu_run, "checkpoints"))

    # 3. doctor from each launcher, on the CPU (this machine's nodes have no GPU).
    logs = os.path.join(site["runs"], "logs")
    code, out = run(site, ["bash", one_host, "doctor", *small],
                    user_env(site, NUM_GPUS="2", DATA_DIR=data,
                             MODEL_DIR=os.path.join(site["runs"], "one-host"),
                             HOROVODRUN_ARGS=f"--start-timeout 90 --output-filename {logs}"))
    assert code == 0, out[-4000:]
    assert "hvd_alexnet doctor: 2 ranks on 1 host(s)" in out, out[-4000:]
    outputs = sorted(os.path.relpath(os.path.join(d, f), logs)
                     for d, _, names in os.walk(logs) for f in names if f == "stdout")
    assert len(outputs) == 2, outputs  # 1/rank.0/stdout, 1/rank.1/stdout under mpirun
    assert "hvd_alexnet doctor: ready to train" in out, out[-4000:]
    assert os.listdir(os.path.join(site["home"], ".cache", "hvd_alexnet")), \
        "the survey of a read-only data set goes to the user's cache"

    code, out = run(site, ["bash", os.path.join(ROOT, "bin", "run_train_alexnet_imagenet.sh"),
                           "doctor", *small],
                    user_env(site, DATA_DIR=data, MODEL_DIR=os.path.join(site["runs"], "one-gpu")))
    assert code == 0 and "hvd_alexnet doctor: ready to train" in out, out[-4000:]

    hostfile = os.path.join(site["home"], "hosts")
    with open(hostfile, "w") as f:
        f.write("localhost slots=2\n")
    multinode = os.path.join(ROOT, "bin", "run_train_alexnet_multinode.sh")
    code, out = run(site, ["bash", multinode, "doctor", *small],
                    user_env(site, HOSTFILE=hostfile, DATA_DIR=data,
                             MODEL_DIR=os.path.join(site["runs"], "multinode")))
    assert code == 0, out[-4000:]
    assert "hvd_alexnet doctor: 2 ranks on 1 host(s)" in out, out[-4000:]
    assert "hvd_alexnet doctor: ready to train" in out, out[-4000:]

    # $PYTHON: a wrapper of the venv's that first prints the transports each rank was
    # given, to show that one the user chose (OMPI_MCA_btl) is kept.
    wrapper = os.path.join(site["home"], "python-env")
    with open(wrapper, "w") as f:
        f.write(f'#!/bin/bash\necho "rank transports: pml=${{OMPI_MCA_pml-unset}} '
                f'btl=${{OMPI_MCA_btl-unset}}"\nexec {sys.executable} "$@"\n')
    os.chmod(wrapper, 0o755)
    cpus = os.cpu_count() or 1
    code, out = site["cluster"].sbatch(
        ["--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
         os.path.join(ROOT, "bin", "slurm_train_alexnet.sbatch"), "doctor", *small[:-1]],
        user_env(site, DATA_DIR=data, MODEL_DIR=os.path.join(site["runs"], "slurm"),
                 OMPI_MCA_btl="self,vader,tcp", PYTHON=wrapper),
        timeout=300, cwd=ROOT, prefix=site["prefix"])
    assert code == 0, out[-4000:]
    assert f"1 task(s) per node, {cpus} CPU(s) each (the node's {cpus} over its tasks)" in out, \
        out[-4000:]
    assert "hvd_alexnet doctor: ready to train" in out, out[-4000:]
    row = next(line.split() for line in out.splitlines() if line.startswith("0 "))
    assert row[3:5] == ["CPU", str(cpus)], row  # rank 0's device and threads
    assert "rank transports: pml=ob1 btl=self,vader,tcp" in out, out[-4000:]
