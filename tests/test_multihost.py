"""A real two-host job on one machine: two network namespaces with their own
addresses, an sshd in each, and the project's launch scripts run from host1
with mpirun (hostfile) and with horovodrun (-H host1:1,host2:1; MPI and Gloo), the traffic
pinned to the namespaces' interface. Skipped where namespaces cannot be made
(not root, no sshd), unless HVD_ALEXNET_REQUIRE_MULTIHOST=1 (CI sets it)."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from helpers import (
    ROOT,
    SMALL,
    check_elastic_run,
    checkpoints,
    finish,
    injected_python,
    lose_host,
    output,
    release,
    require,
    slowed_until_released,
    values,
    wait_for_step,
    wait_until,
)
from hvd_alexnet.tools import netns
from hvd_alexnet.tools.launch import elastic_job, write_hosts

SCRIPT = "bin/run_train_alexnet_multinode.sh"

STEPS = 3


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    require(netns.unavailable(), "two-host test")
    with netns.TwoHosts(str(tmp_path_factory.mktemp("hosts"))) as hosts:
        yield hosts


def model_bytes():
    from hvd_alexnet.model import build_alexnet
    return build_alexnet(67, 10).count_params() * 4


@pytest.mark.timeout(600)
@pytest.mark.parametrize("launcher", ["mpirun", "horovodrun", "horovodrun-gloo"])
def test_training_across_two_hosts(two_hosts, launcher, tiny_data, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "TF_CPP_MIN_LOG_LEVEL": "2",
           "DATA_DIR": tiny_data, "MODEL_DIR": str(tmp_path / "run"),
           "IFACE": netns.IFACE, "SSH_PORT": str(netns.SSH_PORT)}
    if launcher == "mpirun":
        hostfile = tmp_path / "hosts"
        hostfile.write_text("".join(f"{h} slots=1\n" for h in netns.HOSTS))
        env.update(NP="2", HOSTFILE=str(hostfile), HOSTS_WAIT="60")  # both answer at once
        script = "bin/run_train_alexnet_multinode.sh"
    else:
        env.update(HOSTS=",".join(f"{h}:1" for h in netns.HOSTS),
                   GLOO="1" if launcher.endswith("gloo") else "0")
        script = "bin/run_train_alexnet_multigpu_imagenet.sh"
    before = two_hosts.rx_bytes()
    result = two_hosts.run_on(0, ["bash", os.path.join(ROOT, script), *SMALL,
                                  f"--max_steps={STEPS}", "--noeval", "--num_classes=10"],
                              timeout=300, env=env, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    # One rank on each host, and rank 0 knows it.
    assert ("all 2 ranks joined, on 2 host(s): host1: rank 0 on the CPU; host2: rank 1 on the "
            "CPU") in out, out[-4000:]
    # After the steps the replicas on both hosts are bit-identical (the trainer
    # all-gathers a digest of every rank's weights and fails if they differ).
    assert "identical on all 2 ranks" in out
    assert f"steps : {STEPS} " in out
    # The gradients crossed between the namespaces: each step's ring all-reduce of
    # 2 ranks sends each host about one model's worth of bytes over hvd0.
    received = [after - b for after, b in zip(two_hosts.rx_bytes(), before)]
    assert min(received) >= 0.9 * STEPS * model_bytes(), received


@pytest.mark.timeout(600)
def test_multinode_script_counts_ranks_from_the_hostfile_and_runs_doctor(
        two_hosts, tiny_data, tmp_path):
    """No NP: the hostfile's slots give the ranks; `doctor` as the first argument runs
    the preflight through the same mpirun, hosts and interface as training. SSH_PORT
    is added to the ssh options already in OMPI_MCA_plm_rsh_args (the MPI Operator
    sets its own there): here they make ssh run a command that leaves a mark."""
    mark, marker = tmp_path / "ssh-options-kept", tmp_path / "mark.sh"
    marker.write_text(f"#!/bin/sh\ntouch {mark}\n")
    marker.chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# a comment with slots=8 is not a host\n"
                        + "".join(f"{h} slots=1\n" for h in netns.HOSTS))
    env = {k: v for k, v in os.environ.items() if k != "NP"}
    env.update(PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2", DATA_DIR=tiny_data,
               MODEL_DIR=str(tmp_path / "run"), IFACE=netns.IFACE,
               SSH_PORT=str(netns.SSH_PORT), HOSTFILE=str(hostfile),
               OMPI_MCA_plm_rsh_args=f"-o PermitLocalCommand=yes -o LocalCommand={marker}")
    result = two_hosts.run_on(0, ["bash", os.path.join(ROOT, SCRIPT), "doctor", "--batch_size=4"],
                              timeout=300, env=env, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert mark.exists()
    assert "hvd_alexnet doctor: 2 ranks on 2 host(s), gathered with mpi4py" in out, out[-4000:]
    assert "ready to train" in out


# --- Eviction: SIGTERM to a worker pod's first process, or to the launcher's mpirun ---


def start_on(hosts, i, cmd, env):
    """Starts `cmd` on host i in its own process group, its output in a file."""
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(hosts.command(i, cmd), env=env, cwd="/", text=True, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.cmd, proc.log = cmd, log
    return proc


def ssh_reaches(hosts, i):
    return hosts.run_on(0, ["ssh", "-p", str(netns.SSH_PORT), netns.HOSTS[i], "true"],
                        timeout=30).returncode == 0


@pytest.mark.timeout(600)
@pytest.mark.parametrize("evicted", ["worker", "launcher"])
def test_evicted_pod_checkpoints_and_every_rank_exits_75(two_hosts, evicted, tiny_data, tmp_path):
    """host2 plays a worker pod of the MPI Operator: its sshd runs under
    bin/k8s_worker.sh, as docker/mpijob.yaml starts it. host1 is the launcher, with
    mpirun through bin/run_train_alexnet_multinode.sh. Kubernetes evicts a pod by a
    SIGTERM to its first process: the worker script must pass it to the rank it
    hosts; the launcher's first process (the script's mpirun supervisor) passes it
    to every rank on both hosts (SIGUSR1 through mpirun and orted) and waits for
    their checkpoint. The rank the signal reaches first holds after step 3
    (injected) until it comes, so every rank stops at step 4, on any machine, and
    rank 0 takes 3 s to save (injected), as a real checkpoint to a network disk
    would: longer than Open MPI's default 1 s before its SIGKILL."""
    pid_file = os.path.join(two_hosts.dir, "sshd-host2.pid")
    with open(pid_file) as f:  # host2's plain sshd makes way for the worker script's
        os.kill(int(f.read()), signal.SIGTERM)
    worker = start_on(two_hosts, 1, ["bash", os.path.join(ROOT, "bin/k8s_worker.sh")],
                      {**os.environ, "SSHD_CONFIG": "/etc/ssh/sshd_config"})
    job = None
    try:
        deadline = time.monotonic() + 60
        while not ssh_reaches(two_hosts, 1):
            assert worker.poll() is None and time.monotonic() < deadline, output(worker)
            time.sleep(0.5)
        hostfile = tmp_path / "hosts"
        hostfile.write_text("".join(f"{h} slots=1\n" for h in netns.HOSTS))
        model_dir = str(tmp_path / "run")
        # The rank the signal reaches first holds: host2's from the worker script;
        # from the launcher, its own host's (rank 0).
        held = f"hold=3:{1 if evicted == 'worker' else 0}"
        env = {**os.environ, "PYTHON": injected_python(tmp_path, held, "save_delay=3"),
               "TF_CPP_MIN_LOG_LEVEL": "2",
               "DATA_DIR": tiny_data, "MODEL_DIR": model_dir, "IFACE": netns.IFACE,
               "SSH_PORT": str(netns.SSH_PORT), "HOSTFILE": str(hostfile),
               "SIGKILL_TIMEOUT": "60"}
        job = start_on(two_hosts, 0, ["bash", os.path.join(ROOT, SCRIPT), *SMALL,
                                      "--max_steps=400", "--noeval", "--num_classes=10"], env)
        wait_for_step(model_dir, 3, job, timeout=240)
        if evicted == "worker":
            os.kill(worker.pid, signal.SIGTERM)
        else:  # the launcher pod's first process: the script, exec'd into the supervisor
            os.kill(job.pid, signal.SIGTERM)
        res = finish(job, timeout=240)
        out = res.stdout
        # Both ranks stop at the same step, rank 0 checkpoints it, both exit 75.
        stops = re.findall(r"hvd_alexnet train: stopped at step (\d+) on request", out)
        assert stops == ["4", "4"], out[-4000:]
        assert checkpoints(model_dir)[-1] == 4
        assert res.returncode == 75, out[-4000:]
        assert "exited on signal" not in out, out[-4000:]
        if evicted == "worker":
            assert finish(worker, timeout=60).returncode == 0, output(worker)
            assert "forwarding it to 1 rank(s) here" in output(worker), output(worker)
            assert "the ranks here have exited" in output(worker)
    finally:
        for proc in (job, worker):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        two_hosts.run_on(1, ["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config"], timeout=30,
                         check=True)


# --- Elastic training across the two hosts ----------------------------------------


@pytest.mark.timeout(600)
def test_elastic_job_loses_host2_and_grows_back(two_hosts, tiny_data, tmp_path):
    """bin/run_train_alexnet_elastic.sh on host1 with host2 reached by ssh:
    host2's rank killed and host2 taken out of the discovery file mid-epoch, then
    put back (test_elastic.py runs the same on one host, and the other cases)."""
    hosts_file, model_dir = tmp_path / "hosts", str(tmp_path / "run")
    write_hosts(hosts_file, netns.HOSTS)
    cmd, env = elastic_job(hosts_file, model_dir, [
        *SMALL, "--elastic_commit_every=5", "--eval_every_epochs=1", f"--data_dir={tiny_data}",
        "--epochs=3"], injected_python(tmp_path, *slowed_until_released(tmp_path, 0.5)), {
        "IFACE": netns.IFACE, "SSH_PORT": str(netns.SSH_PORT), "ELASTIC_TIMEOUT": "60"})
    job = start_on(two_hosts, 0, cmd, env)
    job.model_dir, job.hosts_file, job.hosts = model_dir, hosts_file, netns.HOSTS
    try:
        wait_until(job, "step 12", lambda: any(s >= 12 for s, _ in values(job, "loss")))
        lose_host(job, "host2")
        wait_until(job, "a shrink to 1 rank", lambda: values(job, "elastic_ranks"))
        write_hosts(hosts_file, netns.HOSTS)
        wait_until(job, "a growth to 2 ranks", lambda: len(values(job, "elastic_ranks")) > 1)
        release(tmp_path)
        res = finish(job, timeout=300)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert res.returncode == 0, res.stdout[-4000:]
    assert ("all 2 ranks joined, on 2 host(s): host1: rank 0 on the CPU; host2: rank 1 on the "
            "CPU") in res.stdout
    assert "the job shrank from 2 to 1 ranks" in res.stdout
    assert "the job grew from 1 to 2 ranks" in res.stdout
    check_elastic_run(job, [1, 2])


# --- The link shaped to a rate (the scaling benchmark's) -----------------------------


def test_shaped_link_carries_the_shaped_rate_and_unshapes(two_hosts):
    """The shaping helper's promise is a rate, so a rate is compared: 100 Mbit/s,
    far below what any machine pushes through a veth pair (13 Gbit/s here), so
    that only the shaping, not the machine's speed, can decide the outcome."""
    try:
        two_hosts.shape(100)
        assert all("tbf" in q and "rate 100Mbit" in q for q in two_hosts.qdiscs())
        shaped = two_hosts.stream_mbit(3.0)
    finally:
        two_hosts.unshape()
    assert 0.8 * 100 <= shaped <= 1.05 * 100, shaped
    assert not any("tbf" in q for q in two_hosts.qdiscs())
    assert two_hosts.stream_mbit(1.0) > 2 * 100  # unshaped again


@pytest.mark.timeout(300)
def test_bench_scaling_removes_its_hosts_when_interrupted(tmp_path):
    """SIGTERM while it measures: the namespaces (and their qdiscs) and their
    /etc/netns files are gone afterwards, and it exits non-zero."""
    require(netns.unavailable(), "two-host test")
    proc = subprocess.Popen([sys.executable, "-m", "hvd_alexnet.tools.scaling", "--rates=500",
                             "--image_size=67", "--windows=1", f"--out_dir={tmp_path}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    tag = f"hvdt{proc.pid % 100000}"
    mine = lambda: [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True).stdout.split() if n.startswith(tag)]
    pids = lambda ns: subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                     text=True).stdout.split()
    try:
        deadline = time.monotonic() + 120
        # Into the measuring: host1 runs more than its sshd (the first measurement's job).
        while len(mine()) < 2 or len(pids(f"{tag}1")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "SIGTERM: removing the hosts" in err, err[-3000:]
    assert mine() == []
    assert not [n for n in os.listdir("/etc/netns") if n.startswith(tag)] \
        if os.path.isdir("/etc/netns") else True
    assert not os.path.exists(tmp_path / "scaling.md")
