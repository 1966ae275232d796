"""A real two-host job on one machine: two network namespaces with their own
addresses, an sshd in each, and the project's launch scripts run from host1
with mpirun (hostfile) and with horovodrun (-H host1:1,host2:1; MPI and Gloo), the traffic
pinned to the namespaces' interface. Skipped where namespaces cannot be made
(not root, no sshd), unless HVD_ALEXNET_REQUIRE_MULTIHOST=1 (CI sets it)."""

import os
import sys

import pytest

from helpers import ROOT, SMALL, require
import netns

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
        env.update(NP="2", HOSTFILE=str(hostfile))
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
    assert "all 2 ranks joined, on 2 host(s): host1: rank 0; host2: rank 1" in out, out[-4000:]
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
    the preflight through the same mpirun, hosts and interface as training."""
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# a comment with slots=8 is not a host\n"
                        + "".join(f"{h} slots=1\n" for h in netns.HOSTS))
    env = {k: v for k, v in os.environ.items() if k != "NP"}
    env.update(PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2", DATA_DIR=tiny_data,
               MODEL_DIR=str(tmp_path / "run"), IFACE=netns.IFACE,
               SSH_PORT=str(netns.SSH_PORT), HOSTFILE=str(hostfile))
    result = two_hosts.run_on(0, ["bash", os.path.join(ROOT, "bin/run_train_alexnet_multinode.sh"),
                                  "doctor", "--batch_size=4"], timeout=300, env=env, cwd="/")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert "hvd_alexnet doctor: 2 ranks on 2 host(s), gathered with mpi4py" in out, out[-4000:]
    assert "ready to train" in out
