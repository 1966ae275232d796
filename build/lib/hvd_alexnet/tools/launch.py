"""The command line of an N-rank job on this host, as the benchmark, the chaos
run and the tests launch it (horovodrun with Gloo, or mpirun)."""

import os
import sys
import tempfile

from hvd_alexnet import files
from hvd_alexnet.metrics_log import LOG_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)  # the venv's bin: horovodrun lives here
# horovodrun that keeps the ranks' exit status, as the launch scripts run it
HOROVODRUN = (sys.executable, "-m", "hvd_alexnet.tools.horovodrun")


def job_command(python_args, np=1, launcher=None, forward=()):
    """`python PYTHON_ARGS` as `np` ranks: launcher "gloo" (horovodrun --gloo),
    "elastic" (horovodrun's elastic driver, `np` ranks on localhost from
    the start; for train --elastic), "mpi" (mpirun, forwarding PATH, PYTHONPATH
    and the variables named in `forward`) or None (one plain process)."""
    py = [sys.executable, *python_args]
    if launcher == "elastic":
        # A private file (mkstemp: a new name, mode 0600), not a fixed name in the
        # shared temporary folder that another user could create first.
        fd, hosts = tempfile.mkstemp(prefix=f"hvd_alexnet-localhost-{np}.", suffix=".hosts")
        with os.fdopen(fd, "w") as f:
            f.write(f"localhost:{np}\n")
        # One host: the driver needs the interface named (it probes between 2 hosts).
        return ["env", f"HVD_ALEXNET_HOSTS_FILE={hosts}", *HOROVODRUN,
                "-np", str(np), "--min-np", str(np), "--max-np", str(np),
                "--network-interface", "lo",
                "--host-discovery-script", os.path.join(ROOT, "bin", "discover_hosts.sh"), *py]
    if launcher == "gloo":
        return [*HOROVODRUN, "-np", str(np), "-H", f"localhost:{np}",
                "--gloo", *py]
    if launcher == "mpi":
        names = ["PATH", "PYTHONPATH", *forward]
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np),
                "-bind-to", "none", *[a for name in names for a in ("-x", name)], *py]
    if np != 1:
        raise ValueError(f"{np} ranks need a launcher")
    return py


def job_env(extra=None):
    """The environment of a job: this checkout on PYTHONPATH, the venv first on PATH,
    TensorFlow's start-up chatter off."""
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(extra or {})}


# An elastic job on this machine, as the chaos run and the tests start it: two
# hosts to Horovod's elastic driver (its blacklist, one rank each), both run here
# without ssh.
ELASTIC_HOSTS = ("localhost", "127.0.0.1")
ELASTIC_SCRIPT = os.path.join(ROOT, "bin", "run_train_alexnet_elastic.sh")


def write_hosts(path, hosts):
    """The elastic job's discovery file: these hosts, one slot each (written
    whole: the driver's discovery script may read it at any moment)."""
    files.write_atomic(path, "".join(f"{host}:1\n" for host in hosts))


def elastic_job(hosts_file, model_dir, flags, python=None, env=None):
    """The command line and environment of bin/run_train_alexnet_elastic.sh on
    the hosts of `hosts_file`, from 1 to 2 ranks, a failed host tried again
    after 1-2 s; `python`: a $PYTHON for the ranks (the tests' fault injector)."""
    full_env = job_env({"HOSTS_FILE": str(hosts_file), "MIN_NP": "1", "MAX_NP": "2",
                        "NP": str(sum(1 for line in open(hosts_file) if line.strip())),
                        "COOLDOWN": "1 2", "MODEL_DIR": str(model_dir),
                        "PYTHON": python or sys.executable, **(env or {})})
    return ["bash", ELASTIC_SCRIPT, *flags], full_env


def elastic_ranks(hosts_file, model_dir=None):
    """{host: (pid, is rank 0)} of the live ranks of the elastic job whose
    discovery file is `hosts_file` (from /proc). Ranks are renumbered at each
    change, so rank 0 is found by what it does: it holds MODEL_DIR's DLLogger
    file open."""
    found, log = {}, model_dir and os.path.join(os.path.abspath(model_dir), LOG_FILE)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
        except OSError:
            continue
        if (env.get(b"HVD_ALEXNET_HOSTS_FILE") == str(hosts_file).encode()
                and b"HOROVOD_HOSTNAME" in env and b"HOROVOD_RANK" in env):
            found[env[b"HOROVOD_HOSTNAME"].decode()] = (int(pid), _writes(pid, log))
    return found


def _writes(pid, path):
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == path
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
