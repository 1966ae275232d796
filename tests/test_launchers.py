"""The launch paths other than horovodrun/mpirun over ssh: the trainer's check of
the launcher's ranks against Horovod's, the Slurm script on a real one-node
Slurm (root only; CI sets HVD_ALEXNET_REQUIRE_MULTIHOST=1 so it cannot skip
there), the Kubernetes MPIJob manifest (parsed; no cluster here) and the
Dockerfiles (linted and read here; built and run by `make docker-test`, outside
the suite: tests/test_docker.py)."""

import copy
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

import slurm
from helpers import ROOT, SMALL, checkpoints, injected_python, require
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


def test_check_pmi_only_refuses_several_srun_tasks_without_pmi():
    distributed.check_pmi(("srun", 0, 0, 2), {"PMIX_RANK": "0"})
    distributed.check_pmi(("srun", 0, 0, 1), {})  # one task: a singleton is right
    distributed.check_pmi(("mpirun", 0, 0, 2), {})
    with pytest.raises(config.UsageError, match="srun started 2 tasks without a PMI plugin"):
        distributed.check_pmi(("srun", 1, 1, 2), {})


def test_check_launch_names_the_missing_srun_plugin():
    distributed.check_launch(3, 8, ("srun", 3, 1, 8))  # agreeing: no error
    distributed.check_launch(0, 1, None)  # started by hand
    with pytest.raises(config.UsageError, match=r"srun started this process as rank 3 of 8, "
                       r"but Horovod sees rank 0 of 1: srun needs --mpi=pmix"):
        distributed.check_launch(0, 1, ("srun", 3, 1, 8))


def test_a_host_with_more_gpus_than_ranks_is_warned_about():
    """A hostfile from `scontrol show hostnames` has no slots=: mpirun starts one
    rank on each host of 8 GPUs. The start says so (each GPU host's first rank)."""
    said = distributed.idle_gpus(8, 1)
    assert said.startswith("8 GPUs but 1 rank(s) on this host: 7 GPU(s) idle") and \
        "slots=8" in said
    assert distributed.idle_gpus(8, 8) is None and distributed.idle_gpus(1, 1) is None


@pytest.mark.parametrize("script", ["run_train_alexnet_multigpu_imagenet.sh",
                                    "run_train_alexnet_multinode.sh"])
def test_a_host_without_the_venvs_python_is_told_which(tmp_path, script):
    """A shared checkout's .venv/bin/python links to the interpreter it was made
    with; on a host without it the scripts silently fell back to the system's
    python3 (which has no TensorFlow). Now the script's first lines say which
    Python is missing and how to get it, exit 2."""
    checkout = tmp_path / "checkout"
    shutil.copytree(os.path.join(ROOT, "bin"), checkout / "bin")
    (checkout / ".venv" / "bin").mkdir(parents=True)
    os.symlink("/opt/missing/bin/python3.11", checkout / ".venv" / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "HOSTFILE")}
    res = subprocess.run(["bash", str(checkout / "bin" / script)], cwd=tmp_path,
                         env={**env, "HOSTFILE": os.path.join(ROOT, "hostfiles", "mpirun.hosts")},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"{checkout}/.venv/bin/python cannot run on {socket.gethostname()} (it is " \
        "/opt/missing/bin/python3.11): install that Python here" in res.stderr, res.stderr


def test_describe_hosts():
    assert distributed.describe_hosts(["a", "a", "b", "b"]) == "a: ranks 0-1; b: ranks 2-3"
    assert distributed.describe_hosts(["a", "b", "a"]) == "a: ranks 0,2; b: rank 1"
    assert distributed.describe_hosts(["solo"]) == "solo: rank 0"
    assert distributed.describe_hosts(["g1", "g1", "c"], ["0000:07:00.0", "0000:0f:00.0", None]) \
        == "g1: ranks 0-1 on GPUs 0000:07:00.0, 0000:0f:00.0; c: rank 2 on the CPU"


# --- Slurm: bin/slurm_train_alexnet.sbatch on a real one-node Slurm -----------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require(slurm.unavailable(), "Slurm test")
    with slurm.Cluster(str(tmp_path_factory.mktemp("slurm"))) as c:
        yield c


def sbatch_args(model_dir, data, steps, env=None):
    """The project's sbatch script as 2 tasks on the test's node (no GPUs, 1 CPU each)."""
    full_env = {k: v for k, v in os.environ.items()  # this test may run under a launcher
                if not k.startswith(("OMPI_", "PMI_", "PMIX_", "HOROVOD_", "SLURM_"))}
    full_env.update({"PYTHON": sys.executable, "DATA_DIR": data, "MODEL_DIR": model_dir,
                     "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    args = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0",
            "--cpus-per-task=1", os.path.join(ROOT, "bin", "slurm_train_alexnet.sbatch"),
            *SMALL, f"--max_steps={steps}", "--noeval", "--num_classes=10"]
    return args, full_env


def sbatch_script(cluster, data, model_dir, env=None):
    return cluster.sbatch(*sbatch_args(model_dir, data, 2, env), timeout=300, cwd=ROOT)


def env_telling_python(tmp_path, wraps=False):
    """A $PYTHON for the launch scripts that first prints the Open MPI transports
    the rank was given; `wraps`: a command that runs its arguments instead."""
    path = tmp_path / "python-env"
    path.write_text(f'#!/bin/bash\necho "rank transports: pml=${{OMPI_MCA_pml-unset}} '
                    f'btl=${{OMPI_MCA_btl-unset}}"\n'
                    f'exec {"" if wraps else sys.executable} "$@"\n')
    path.chmod(0o755)
    return str(path)


@pytest.mark.timeout(600)
def test_sbatch_script_trains_through_srun_pmix(cluster, tiny_data, tmp_path):
    """...with the transports the mpirun scripts give Open MPI, and in a
    "container": CONTAINER (as `apptainer exec ... image.sif` is given) is a
    stand-in that prints the transports and runs the rank's command, and
    SRUN_ARGS (as pyxis's --container-image is given) is srun's --label,
    which puts each task's number before its lines. No Apptainer or pyxis here."""
    container = env_telling_python(tmp_path, wraps=True)
    code, out = sbatch_script(cluster, tiny_data, str(tmp_path / "run"),
                              {"CONTAINER": container, "SRUN_ARGS": "--label",
                               "PYTHON": sys.executable})
    assert code == 0, out[-4000:]
    assert out.count("rank transports: pml=ob1 btl=^openib") == 2, out[-4000:]
    assert "0: hvd_alexnet: all 2 ranks joined, on 1 host(s)" in out, out[-4000:]
    assert "identical on all 2 ranks" in out and "steps : 2 " in out


def test_sbatch_script_asks_for_the_nodes_gpus_and_passes_the_cpus_on():
    """srun gets sbatch's --cpus-per-task as an option: SRUN_CPUS_PER_TASK is read
    by Slurm 22.05 to 23.02 only."""
    text = open(os.path.join(ROOT, "bin", "slurm_train_alexnet.sbatch")).read()
    options = re.findall(r"^#SBATCH (--[a-z-]+)", text, re.M)
    assert "--gpus-per-node" in options and "--gpus-per-task" not in options
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    assert '--cpus-per-task="$cpus"' in srun and "--cpus-per-task" not in options, srun


@pytest.mark.timeout(600)
def test_srun_without_pmi_is_refused_with_the_fix(cluster, tiny_data, tmp_path):
    code, out = sbatch_script(cluster, tiny_data, str(tmp_path / "run"), {"SRUN_MPI": "none"})
    assert code != 0, out[-4000:]
    # The first task to refuse ends the step (--kill-on-bad-exit), so the other may
    # be killed before it says so too.
    assert ("srun started 2 tasks without a PMI plugin, so they cannot join one "
            "Horovod job: run srun --mpi=pmix") in out, out[-4000:]
    assert "joined" not in out
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


@pytest.mark.parametrize("lines, slots", [
    (["gpu1 slots=8", "gpu2 slots=8"], 16),
    (["gpu1 slots=8 max_slots=16"], 8),  # max_slots is a ceiling, not the slots
    (["gpu1", "gpu2 slots=2"], 3),  # a host without slots= is 1, as Open MPI counts it
    (["# gpu0 slots=8", "", "gpu1 slots=4  # four GPUs"], 4),
])
def test_hostfile_slots_are_counted_as_open_mpi_counts_them(tmp_path, lines, slots):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["bash", os.path.join(ROOT, "bin", "hostfile_slots.sh"), str(hostfile)],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert int(out) == slots


def test_waiting_for_hosts_names_those_not_ready_and_ends(tmp_path):
    """bin/wait_for_hosts.sh (the launcher's wait before mpirun): a host that does
    not resolve and one where nothing answers on the port are named, after the
    deadline, with exit status 2."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("localhost slots=1\nno-such-host.invalid slots=1  # gone\n")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    res = subprocess.run(["bash", os.path.join(ROOT, "bin", "wait_for_hosts.sh"), str(hostfile),
                          str(port)], env={**os.environ, "HOSTS_WAIT": "2"},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert (f"after 2 s, hosts not ready: localhost (nothing answers on port {port}), "
            "no-such-host.invalid (does not resolve)") in res.stderr, res.stderr
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        hostfile.write_text("localhost slots=1\n")
        res = subprocess.run(["bash", os.path.join(ROOT, "bin", "wait_for_hosts.sh"),
                              str(hostfile), str(server.getsockname()[1])],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def digest(out):
    return re.findall(r"weights digest (\w+), identical on all", out)


def signal_shell_at(cluster, job, step, total):
    """Waits until the job's ranks hold after `step` (injected), then sends SIGTERM
    to the batch shell alone, as --signal=B:TERM@N does."""
    deadline = time.monotonic() + 240
    while f"step {step}/{total}" not in cluster.output(job) and job.poll() is None:
        assert time.monotonic() < deadline, cluster.output(job)[-3000:]
        time.sleep(0.5)
    assert job.poll() is None, cluster.output(job)[-3000:]  # still training
    cluster.signal(job, "TERM", batch=True)


@pytest.mark.timeout(900)
def test_slurm_stops_by_batch_shell_signal_and_time_limit_then_requeues_to_the_same_weights(
        cluster, tiny_data, tmp_path):
    """The two ways Slurm stops a job, in one folder. First SIGTERM to the batch
    shell alone (--signal=B:TERM@N) with REQUEUE=0: the shell's trap passes it to
    the ranks and waits for their checkpoint, and the job ends with their 75; the
    resume command it prints works from another folder, with the job's options.
    The same sbatch command then resumes it under a real time limit (2 minutes,
    SIGTERM to the job's steps 60 s before it: Slurm checks every 30 s, so 30 to
    60 s after the start) and the default REQUEUE=1: the ranks checkpoint and
    exit 75, the script requeues the job, Slurm starts it again, and it finishes
    with the weights of an uninterrupted run (--deterministic: dropout seeded by
    step). The ranks hold after a known step (injected, SIGTERM blocked until
    then), so each signal lands there on any machine, even an early one; a run
    that starts past the hold (the requeued one) keeps SIGTERM blocked."""
    steps, model_dir = 8, str(tmp_path / "run")
    args, env = sbatch_args(model_dir, tiny_data, steps)
    job = cluster.submit(["--time=10", *args, "--deterministic"],
                         {**env, "REQUEUE": "0", "PYTHON": injected_python(tmp_path, "hold=3")},
                         cwd=ROOT)
    signal_shell_at(cluster, job, 3, steps)
    code, out = cluster.wait(job, timeout=240)
    assert code == 75, out[-4000:]  # EXIT_PREEMPTED, from srun through the batch script
    assert "stopped at step 4 on request" in out and checkpoints(model_dir)[-1] == 4, out[-4000:]
    assert "requeued" not in out and "SIGTERM: passed to the ranks" in out, out[-4000:]
    # The resume command it printed works from any folder and asks for this job's
    # options (partition, time limit, tasks): sbatch --test-only accepts it from elsewhere.
    (resume,) = set(re.findall(r"run `(cd .*?)` to resume", out))
    assert resume.startswith(f"cd {ROOT} && ") and "--partition=test" in resume, resume
    assert "--time=10:00" in resume and "--ntasks-per-node=2" in resume, resume
    res = subprocess.run(["bash", "-c", resume.replace(" sbatch ", " sbatch --test-only ", 1)],
                         cwd=tmp_path, env={**env, "SLURM_CONF": cluster.conf},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "to start at" in res.stdout + res.stderr, res

    limit = ["--time=2", "--signal=TERM@60"]
    code, out = cluster.sbatch([*limit, *args, "--deterministic"],
                               {**env, "PYTHON": injected_python(tmp_path, "hold=5")},
                               timeout=600, cwd=ROOT)
    assert code == 0, out[-5000:]  # sbatch --wait follows the job through its requeue
    assert "ckpt-4 at step 4" in out and "stopped at step 6 on request" in out, out[-5000:]
    assert "(status 75): job" in out and "requeued" in out and "start 2," in out, out[-5000:]
    assert "ckpt-6 at step 6" in out and f"steps : {steps} " in out, out[-5000:]

    straight = str(tmp_path / "straight")
    args, env = sbatch_args(straight, tiny_data, steps)
    code, plain = cluster.sbatch([*args, "--deterministic"], env, timeout=300, cwd=ROOT)
    assert code == 0, plain[-4000:]
    assert digest(out)[-1:] == digest(plain), (digest(out), digest(plain))


# --- Kubernetes: docker/mpijob.yaml -------------------------------------------------


def train_flags_parse(args):
    """Raises if the trainer would refuse these flags (unknown name, bad value)."""
    flag_values = copy.deepcopy(config.FLAGS)
    flag_values(["train", *args])
    return flag_values


def test_mpijob_manifest_has_what_the_operator_requires():
    with open(os.path.join(ROOT, "docker", "mpijob.yaml")) as f:
        job, policy = yaml.safe_load_all(f)
    # The job's pods admit only the job's pods (Horovod's object collectives
    # unpickle what a peer sends; its ports take no authentication).
    label = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": label}}]}]
    for role in ("Launcher", "Worker"):
        assert job["spec"]["mpiReplicaSpecs"][role]["template"]["metadata"]["labels"] == label
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
    # Workers serve ssh through the script that passes SIGTERM on to their ranks; the
    # sshd config it starts is the one the images write, and the operator's key
    # mount is where that config looks for its keys.
    assert container["command"] == ["bash", "/app/bin/k8s_worker.sh"]
    entry = open(os.path.join(ROOT, "bin", "k8s_worker.sh")).read()
    assert "SSHD_CONFIG=${SSHD_CONFIG:-/home/hvd/.sshd_config}" in entry
    setup = open(os.path.join(ROOT, "docker", "setup-user-ssh.sh")).read()
    assert 'HOME_DIR=${HOME_DIR:-/home/hvd}' in setup and 'cat > "$HOME_DIR/.sshd_config"' in setup
    # The operator's mounted key becomes the host key in a folder of hvd's own
    # (StrictModes stays on), and the public key the one known host key.
    assert "HostKey $HOME_DIR/.ssh-run/host_key" in setup
    assert not re.search(r"^StrictModes", setup, re.M)  # sshd's default: yes
    assert 'install -m 600 "$HOME/.ssh/id_rsa" "$RUN_KEYS/host_key"' in entry
    assert spec["sshAuthMountPath"] == "/home/hvd/.ssh" and "StrictHostKeyChecking yes" in setup
    # The operator's conventions: sshd on 2222 (a user cannot bind a port below
    # 1024; no file capability to count on), a readiness probe on that port, and the
    # launcher created only once every worker is ready.
    (port,) = (int(p) for p in re.findall(r"^Port (\d+)$", setup, re.M))
    assert port == 2222 and not re.search(r"^setcap", setup, re.M)
    assert container["readinessProbe"]["tcpSocket"]["port"] == port
    assert spec["launcherCreationPolicy"] == "WaitForWorkersReady"
    # Time to checkpoint before Kubernetes' SIGKILL: the worker waits STOP_TIMEOUT for
    # its ranks; mpirun gives them SIGKILL_TIMEOUT twice over (see the script).
    worker_env = {e["name"]: e["value"] for e in container["env"]}
    assert worker["terminationGracePeriodSeconds"] > int(worker_env["STOP_TIMEOUT"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in worker["volumes"]}
    assert set(mounts) <= volumes

    launcher_pod = replicas["Launcher"]["template"]["spec"]
    (launcher,) = launcher_pod["containers"]
    env = {e["name"]: e["value"] for e in launcher["env"]}
    # The ranks run on the workers (mpirun reaches them by ssh): the launcher's
    # DATA_DIR and MODEL_DIR must be where the workers mount the data (read-only is
    # enough) and the runs (written). Before, DATA_DIR=/data/imagenet_tfrecord beside
    # the claim mounted at /data, whose root holds the shards: every rank exited 2.
    worker_mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    data_mount = worker_mounts.get(env["DATA_DIR"])
    assert data_mount and data_mount["name"] == "imagenet", (env["DATA_DIR"], worker_mounts)
    runs = [m for path, m in worker_mounts.items()
            if env["MODEL_DIR"].startswith(path.rstrip("/") + "/") and not m.get("readOnly")]
    assert runs and runs[0]["name"] == "runs", (env["MODEL_DIR"], worker_mounts)
    assert int(env["NP"]) == workers * slots
    assert env["HOSTFILE"] == "/etc/mpi/hostfile"  # written by the operator
    assert int(env["SSH_PORT"]) == port
    assert launcher_pod["terminationGracePeriodSeconds"] > 2 * int(env["SIGKILL_TIMEOUT"])
    # The example of the operator's hostfile names this job's workers and slots.
    hosts = [line.split() for line in open(os.path.join(ROOT, "hostfiles", "mpijob.hosts"))
             if line.strip() and not line.startswith("#")]
    name = job["metadata"]["name"]
    assert [h for h, _ in hosts] == [f"{name}-worker-{i}.{name}.default.svc"
                                     for i in range(workers)]
    assert sum(int(s.split("=")[1]) for _, s in hosts) == int(env["NP"])
    script = launcher["command"][1]
    assert launcher["command"][0] == "bash" and script.startswith("/app/")
    assert os.path.exists(os.path.join(ROOT, script[len("/app/"):]))
    parsed = train_flags_parse(launcher["command"][2:])
    assert parsed.batch_size == 32


# --- Docker: both Dockerfiles --------------------------------------------------------

DOCKERFILES = {"docker/Dockerfile": "requirements-gpu.txt",
               "docker/Dockerfile.cpu": "requirements-cpu.txt"}


def test_the_images_ssh_checks_every_host_key_against_the_jobs(tmp_path):
    """docker/setup-user-ssh.sh's files, for real: bin/k8s_worker.sh copies the
    mounted keys to a folder of the user's own and starts sshd with StrictModes
    on; the client, with StrictHostKeyChecking on, reaches it by the mounted
    public key alone (KnownHostsCommand) and refuses an sshd with another host
    key. (Before: no host key was checked, StrictModes was off.)"""
    import shutil
    import signal
    import tempfile

    from helpers import free_ports
    if os.geteuid() != 0 or not shutil.which("sshd"):
        require("sshd as root (make test-deps installs openssh-server)", "the ssh test")
    top = tempfile.mkdtemp(dir=os.path.expanduser("~"))  # StrictModes: no world-writable /tmp
    home, etc, bin_dir = (os.path.join(top, d) for d in ("home", "etc", "bin"))
    try:
        subprocess.run(["bash", os.path.join(ROOT, "docker", "setup-user-ssh.sh")], check=True,
                       env={**os.environ, "HOME_DIR": home, "ETC": etc, "BIN_DIR": bin_dir,
                            "NO_USER": "1"}, timeout=60)
        keys = os.path.join(home, ".ssh")
        for name in ("id_rsa", "other"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                            os.path.join(keys if name == "id_rsa" else top, name)], check=True)
        shutil.copy(os.path.join(keys, "id_rsa.pub"), os.path.join(keys, "authorized_keys"))
        config = os.path.join(home, ".sshd_config")
        ports = free_ports(2)
        text = open(config).read()
        assert "StrictModes" not in text and "HostKey " + home + "/.ssh-run/host_key" in text
        with open(config, "w") as f:  # this machine's free port, on loopback only
            f.write(text.replace("Port 2222", f"Port {ports[0]}\nListenAddress 127.0.0.1"))
        worker = subprocess.Popen(["bash", os.path.join(ROOT, "bin", "k8s_worker.sh")],
                                  env={**os.environ, "HOME": home, "SSHD_CONFIG": config},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        other = os.path.join(top, "impostor_config")  # the same sshd with another host key
        with open(other, "w") as f:
            f.write(text.replace("Port 2222", f"Port {ports[1]}\nListenAddress 127.0.0.1")
                    .replace(f"{home}/.ssh-run/host_key", f"{top}/other")
                    .replace(f"{home}/sshd.pid", f"{top}/impostor.pid"))
        impostor = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", other],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        client = os.path.join(etc, "ssh", "ssh_config.d", "hvd-alexnet.conf")
        assert "StrictHostKeyChecking yes" in open(client).read()

        def ssh(port):
            return subprocess.run(["ssh", "-F", client, "-p", str(port), "-i",
                                   os.path.join(keys, "id_rsa"), "-o", "BatchMode=yes",
                                   "root@127.0.0.1", "echo reached"],
                                  capture_output=True, text=True, timeout=30)

        deadline = time.time() + 30
        while (res := ssh(ports[0])).returncode != 0 and time.time() < deadline:
            time.sleep(0.5)
        assert res.returncode == 0 and "reached" in res.stdout, res.stderr
        assert oct(os.stat(os.path.join(home, ".ssh-run")).st_mode & 0o777) == "0o700"
        res = ssh(ports[1])
        assert res.returncode != 0 and "Host key verification failed" in res.stderr, res.stderr
    finally:
        for proc in ("worker", "impostor"):
            p = locals().get(proc)
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=30)
        shutil.rmtree(top, ignore_errors=True)


def test_dockerfiles_pass_hadolint():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    result = subprocess.run([hadolint, "--config", os.path.join(ROOT, ".hadolint.yaml"),
                             *DOCKERFILES], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def documented_docker_runs():
    """Every `docker run` command line in README.md, docs/ and the Dockerfiles'
    comments, its continuation lines joined: (file, command)."""
    files = ["README.md", *DOCKERFILES,
             *(os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
               if n.endswith(".md"))]
    found = []
    for path in files:
        lines = [re.sub(r"^#\s?", "", line) for line in open(os.path.join(ROOT, path))]
        text = re.sub(r"\\\n\s*", " ", "".join(lines))
        found += [(path, m) for m in re.findall(r"docker run [^\n`]*", text)]
    return found


def test_documented_docker_runs_can_start_nccl_ranks_and_keep_their_checkpoints():
    """A training container needs more than Docker's 64 MB /dev/shm for NCCL's
    ranks (--ipc=host or --shm-size), pinned memory on GPUs (memlock), and
    runs/ on a volume, or its checkpoints go with the container."""
    trains = [(p, c) for p, c in documented_docker_runs() if "bin/run_train" in c]
    assert {p for p, _ in trains} >= {"docs/install.md", *DOCKERFILES}, trains
    for path, command in trains:
        assert "--ipc=host" in command or "--shm-size" in command, (path, command)
        assert ":/app/runs" in command, (path, command)
        if "--gpus" in command:
            assert "--ulimit memlock=-1" in command, (path, command)


def test_dockerignore_keeps_the_data_and_runs_out_of_the_build_context():
    """Every folder the launch scripts and the Makefile read data from or write
    runs to (their defaults): else `docker build` sends the data set as context
    and `COPY . /app` bakes it into the image."""
    ignored = set(open(os.path.join(ROOT, ".dockerignore")).read().split())
    named = set()
    for name in os.listdir(os.path.join(ROOT, "bin")):
        text = open(os.path.join(ROOT, "bin", name), errors="replace").read()
        named |= set(re.findall(r"(?:DATA|MODEL)_DIR:-(?:\./|\$ROOT/)([\w-]+)", text))
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    named |= set(re.findall(r"^(?:DEMO|BENCH|RUN)_DIR\s*\?=\s*([\w-]+)/", makefile, re.M))
    assert named >= {"imagenet_tfrecord", "runs", "data"}, named
    assert named <= ignored, named - ignored


@pytest.mark.parametrize("path", sorted(DOCKERFILES))
def test_dockerfile_installs_like_make_install_as_a_user(path):
    text = open(os.path.join(ROOT, path)).read()
    instructions = [line for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line and not line.startswith("#")]
    # The Python stack comes only from the pinned requirements files, through the
    # same script as `make install`, with this image's TensorFlow file.
    assert "COPY --chown=1000:1000 requirements*.txt requirements*.lock /app/" in instructions
    at = [i for i, line in enumerate(instructions)
          if line.startswith("RUN ") and "bash scripts/install.sh" in line]
    install = [instructions[i] for i in at]
    # the stack from the requirements and locks alone (a cached layer), then the
    # checkout (hvd-alexnet), after `COPY . /app`, when the stack is up to date
    assert len(install) == 2
    assert at[0] < instructions.index("COPY --chown=1000:1000 . /app") < at[1]
    if path == "docker/Dockerfile":  # its stack is a build argument, for a CPU base too
        assert f"ARG TF_REQUIREMENTS={DOCKERFILES[path]}" in instructions
        assert instructions.count("ARG TF_REQUIREMENTS") == 2  # in each stage
        assert instructions.count("ENV TF_REQUIREMENTS=${TF_REQUIREMENTS} "
                                  "HOROVOD_GPU_OPERATIONS=${HOROVOD_GPU_OPERATIONS}") == 2
    else:
        assert f"ENV TF_REQUIREMENTS={DOCKERFILES[path]}" in instructions
    assert os.path.exists(os.path.join(ROOT, DOCKERFILES[path]))
    assert not any("pip install" in line for line in instructions)
    # Everything from the install on runs as the unprivileged user.
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] == "1000:1000"
    assert instructions.index(f"USER {users[-1]}") < instructions.index(install[0])
    # ssh ready for multi-host mpirun, set up by the shared script.
    assert "openssh-server" in text and "RUN bash /tmp/setup-user-ssh.sh" in text
    assert "libopenmpi-dev openmpi-bin" in text



def _stages(path):
    """[(FROM line, [instructions])] of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", open(os.path.join(ROOT, path)).read())
    stages = []
    for line in (ln.strip() for ln in text.splitlines()):
        if line.startswith("FROM "):
            stages.append((line, []))
        elif line and not line.startswith("#") and stages:
            stages[-1][1].append(line)
    return stages


def test_gpu_dockerfile_builds_as_horovods_own_image():
    """NCCL is the CUDA image's (installed and held there), the build sees the
    driver's stub for its own RUN only, pip keeps no cache, and the final stage
    is NVIDIA's runtime image without the compiler or -dev packages."""
    (build_from, build), (final_from, final) = _stages("docker/Dockerfile")
    assert build_from == "FROM ${BUILD_IMAGE} AS build" and final_from == "FROM ${BASE_IMAGE}"
    text = open(os.path.join(ROOT, "docker/Dockerfile")).read()
    assert "\nARG BUILD_IMAGE=nvidia/cuda:${CUDA_IMAGE}-devel-ubuntu22.04\n" in text
    assert "\nARG BASE_IMAGE=nvidia/cuda:${CUDA_IMAGE}-runtime-ubuntu22.04\n" in text
    assert "\nARG HOROVOD_GPU_OPERATIONS=NCCL\n" in text
    apt = [line for line in build + final if "apt-get install" in line]
    assert apt and not any("nccl" in line and "--allow-change-held-packages" not in line
                           for line in apt)
    install = next(line for line in build if "bash scripts/install.sh" in line)
    assert "/usr/local/cuda/lib64/stubs/libcuda.so" in install and "libcuda.so.1" in install
    assert "LD_LIBRARY_PATH=" in install and "rm -r" in install  # this RUN only
    assert not any("stubs" in line for line in build + final if line.startswith(("ENV", "ARG")))
    for stage in (build, final):
        assert any(line.startswith("ENV ") and "PIP_NO_CACHE_DIR=1" in line for line in stage)
    final_apt = next(line for line in final if "apt-get install" in line).split()
    assert not [p for p in final_apt
                if p.endswith("-dev") or p in ("g++", "gcc", "build-essential")]
    assert "COPY --from=build --chown=1000:1000 /app /app" in final
    assert any("setup-user-ssh.sh" in line for line in final) and "USER 1000:1000" in final


def test_the_scripts_resume_command_is_the_one_that_runs_them_again(tmp_path):
    """What a script puts in HVD_ALEXNET_RESUME (printed by the trainer when it
    stops): the variables that are set, quoted, then the script and its flags.
    The default model folder is the same for every script and GPU count, so
    the command resumes on another count too."""
    code = ('ROOT=/repo SCRIPT=/repo/bin/run_train_alexnet_multigpu_imagenet.sh; '
            f'source {ROOT}/bin/checks.sh; NUM_GPUS=8 MODEL_DIR="/runs/a b"; '
            'resume_command NUM_GPUS HOSTS MODEL_DIR -- --epochs=3 "--x=y z"')
    out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == ("NUM_GPUS=8 MODEL_DIR=/runs/a\\ b bash "
                                  "/repo/bin/run_train_alexnet_multigpu_imagenet.sh --epochs=3 "
                                  "--x=y\\ z"), out
    for script in ("run_train_alexnet_imagenet.sh", "run_train_alexnet_multigpu_imagenet.sh",
                   "run_train_alexnet_multinode.sh", "run_train_alexnet_elastic.sh",
                   "slurm_train_alexnet.sbatch"):
        text = open(os.path.join(ROOT, "bin", script)).read()
        assert "MODEL_DIR=${MODEL_DIR:-$ROOT/runs/alexnet}" in text, script
        assert "export HVD_ALEXNET_RESUME=${HVD_ALEXNET_RESUME:-" in text, script
