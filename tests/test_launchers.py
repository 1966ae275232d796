"""The launch paths other than localhost horovodrun/mpirun: the trainer's check
of the launcher's ranks against Horovod's, the Slurm script (run for real with
a stand-in `srun`, since Slurm is not installed here), the Kubernetes MPIJob
manifest, and the Dockerfiles (linted; Docker cannot run here)."""

import copy
import os
import re
import stat
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SMALL, finish, start_command
from hvd_alexnet import config, distributed

# --- the launcher's ranks against Horovod's ----------------------------------------


def test_launcher_ranks_from_each_launcher():
    slurm = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_STEP_NUM_TASKS": "8",
             "SLURM_JOB_ID": "77"}
    assert distributed.launcher_ranks(slurm) == ("srun", 3, 1, 8)
    # mpirun inside a Slurm allocation: its own variables win over the allocation's.
    mpirun = {**slurm, "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
              "OMPI_COMM_WORLD_SIZE": "6"}
    assert distributed.launcher_ranks(mpirun) == ("mpirun", 5, 1, 6)
    gloo = {"HOROVOD_RANK": "1", "HOROVOD_LOCAL_RANK": "0", "HOROVOD_SIZE": "2"}
    assert distributed.launcher_ranks(gloo) == ("horovodrun", 1, 0, 2)
    assert distributed.launcher_ranks({"PMI_RANK": "2", "PMI_SIZE": "4"}) == ("PMI", 2, None, 4)
    assert distributed.launcher_ranks({"SLURM_JOB_ID": "77"}) is None  # sbatch's own shell
    assert distributed.launcher_ranks({}) is None


def test_check_launch_names_the_missing_srun_plugin():
    distributed.check_launch(3, 8, ("srun", 3, 1, 8))  # agreeing: no error
    distributed.check_launch(0, 1, None)  # started by hand
    with pytest.raises(config.UsageError, match=r"srun started this process as rank 3 of 8, "
                       r"but Horovod sees rank 0 of 1: srun needs --mpi=pmix"):
        distributed.check_launch(0, 1, ("srun", 3, 1, 8))


def test_describe_hosts():
    assert distributed.describe_hosts(["a", "a", "b", "b"]) == "a: ranks 0-1; b: ranks 2-3"
    assert distributed.describe_hosts(["a", "b", "a"]) == "a: ranks 0,2; b: rank 1"
    assert distributed.describe_hosts(["solo"]) == "solo: rank 0"


# --- Slurm: bin/slurm_train_alexnet.sbatch with a stand-in srun ----------------------

# Records its arguments, drops srun's own options and starts STUB_NTASKS copies of
# the command with the variables srun sets, but without PMI: what a real srun does
# when its --mpi plugin does not match the MPI the program was built against.
STUB_SRUN = """#!/usr/bin/env bash
printf '%s\\n' "$@" > "$STUB_ARGS"
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < STUB_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NUM_TASKS=$STUB_NTASKS "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def run_sbatch(tmp_path, data, ntasks, args):
    stub = tmp_path / "bin" / "srun"
    stub.parent.mkdir()
    stub.write_text(STUB_SRUN)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "PYTHON": sys.executable,
           "STUB_ARGS": str(tmp_path / "srun_args"), "STUB_NTASKS": str(ntasks),
           "DATA_DIR": data, "MODEL_DIR": str(tmp_path / "run"), "SLURM_SUBMIT_DIR": ROOT,
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    for name in list(env):  # this test may itself run under a launcher
        if name.startswith(("OMPI_", "PMI_", "PMIX_", "HOROVOD_", "SLURM_")) and name != "SLURM_SUBMIT_DIR":
            del env[name]
    proc = start_command(["bash", os.path.join(ROOT, "bin", "slurm_train_alexnet.sbatch"), *args],
                         env)
    result = finish(proc, timeout=240)
    return result, (tmp_path / "srun_args").read_text().split("\n")


def test_sbatch_script_trains_through_srun(tiny_data, tmp_path):
    result, srun_args = run_sbatch(tmp_path, tiny_data, 1,
                                   [*SMALL, "--max_steps=2", "--noeval", "--num_classes=10"])
    assert result.returncode == 0, result.stdout[-3000:]
    assert srun_args[:2] == ["--mpi=pmix", "--kill-on-bad-exit=1"]
    assert f"--data_dir={tiny_data}" in srun_args
    assert "steps : 2 " in result.stdout
    assert os.path.exists(tmp_path / "run" / "dllogger.json")


def test_srun_without_pmi_is_refused_not_run_twice(tiny_data, tmp_path):
    """Two tasks that Horovod sees as two 1-rank jobs would each train alone and
    overwrite the same checkpoints: both must stop, naming the fix."""
    result, _ = run_sbatch(tmp_path, tiny_data, 2,
                           [*SMALL, "--max_steps=2", "--noeval", "--num_classes=10"])
    assert result.returncode == 2, result.stdout[-3000:]
    for rank in (0, 1):
        assert (f"srun started this process as rank {rank} of 2, but Horovod sees rank 0 of 1: "
                f"srun needs --mpi=pmix") in result.stdout
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


# --- Kubernetes: docker/mpijob.yaml -------------------------------------------------


def train_flags_parse(args):
    """Raises if the trainer would refuse these flags (unknown name, bad value)."""
    flag_values = copy.deepcopy(config.FLAGS)
    flag_values(["train", *args])
    return flag_values


def test_mpijob_manifest_has_what_the_operator_requires():
    with open(os.path.join(ROOT, "docker", "mpijob.yaml")) as f:
        job = yaml.safe_load(f)
    assert job["apiVersion"] == "kubeflow.org/v2beta1" and job["kind"] == "MPIJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    slots = spec["slotsPerWorker"]
    assert isinstance(slots, int) and slots >= 1
    assert spec["mpiImplementation"] == "OpenMPI"
    replicas = spec["mpiReplicaSpecs"]
    assert set(replicas) == {"Launcher", "Worker"}
    assert replicas["Launcher"]["replicas"] == 1
    workers = replicas["Worker"]["replicas"]
    assert isinstance(workers, int) and workers >= 1

    for role in ("Launcher", "Worker"):
        pod = replicas[role]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 1000  # the images' user (USER 1000)
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["name"] and container["image"].startswith("hvd-alexnet")

    worker = replicas["Worker"]["template"]["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == slots  # one rank per GPU
    # Workers only serve ssh; the config they name is the one the images write, and
    # the operator's key mount is where that config looks for its keys.
    assert container["command"] == ["/usr/sbin/sshd", "-De", "-f", "/home/hvd/.sshd_config"]
    setup = open(os.path.join(ROOT, "docker", "setup-user-ssh.sh")).read()
    assert "cat > /home/hvd/.sshd_config" in setup
    assert f"HostKey {spec['sshAuthMountPath']}/id_rsa" in setup
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in worker["volumes"]}
    assert set(mounts) <= volumes

    (launcher,) = replicas["Launcher"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in launcher["env"]}
    assert int(env["NP"]) == workers * slots
    assert env["HOSTFILE"] == "/etc/mpi/hostfile"  # written by the operator
    script = launcher["command"][1]
    assert launcher["command"][0] == "bash" and script.startswith("/app/")
    assert os.path.exists(os.path.join(ROOT, script[len("/app/"):]))
    # The data and the checkpoints are on volumes the workers (where the ranks run) mount.
    for name in ("DATA_DIR", "MODEL_DIR"):
        assert any(env[name].startswith(path + "/") for path in mounts.values()), name
    parsed = train_flags_parse(launcher["command"][2:])
    assert parsed.batch_size == 32


# --- Docker: both Dockerfiles --------------------------------------------------------

DOCKERFILES = {"docker/Dockerfile": "requirements-gpu.txt",
               "docker/Dockerfile.cpu": "requirements-cpu.txt"}


def test_dockerfiles_pass_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, "--config", os.path.join(ROOT, ".hadolint.yaml"),
                             *DOCKERFILES], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_dockerfile_installs_like_make_install_as_a_user(path):
    text = open(os.path.join(ROOT, path)).read()
    instructions = [line for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line and not line.startswith("#")]
    # The Python stack comes only from the pinned requirements files, through the
    # same script as `make install`, with this image's TensorFlow file.
    assert "COPY --chown=1000:1000 requirements*.txt /app/" in instructions
    assert "RUN bash scripts/install.sh" in instructions
    assert f"ENV TF_REQUIREMENTS={DOCKERFILES[path]}" in " ".join(instructions)
    assert os.path.exists(os.path.join(ROOT, DOCKERFILES[path]))
    assert not any("pip install" in line for line in instructions)
    # Everything from the install on runs as the unprivileged user.
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] == "1000:1000"
    assert instructions.index(f"USER {users[-1]}") < instructions.index(
        "RUN bash scripts/install.sh")
    # ssh ready for multi-host mpirun, set up by the shared script.
    assert "openssh-server" in text and "RUN bash /tmp/setup-user-ssh.sh" in text
    assert "libopenmpi-dev openmpi-bin" in text

