"""The stop contract on every launcher a user runs from this checkout, as the
launch scripts start them (their own defaults: horovodrun's MPI mode unless
GLOO=1): launcher x signal target, 2 real ranks each (docs/reliability.md's
launcher matrix). The elastic job's ranks are started by Horovod's elastic
driver on two "hosts" that are both this one.

Each job holds rank 1 after step 5 (injected: its SIGTERM, SIGINT and SIGUSR1
wait until then), between the read steps 4 and 8 (--log_every=4), so the signal
lands there on any machine: every rank stops at step 8, rank 0 checkpoints it,
and the launcher exits 75 with no process of the job left. Rank 0's saves are
slow by construction (save_delay) and the launcher gets a second signal while
the stop is in progress: the checkpoint is finished all the same.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from helpers import SMALL, checkpoints, finish_after, injected_python, output, wait_for_step
from hvd_alexnet.tools.chaos import rank_pids
from hvd_alexnet.tools.launch import ELASTIC_HOSTS, ROOT, elastic_job, job_env, write_hosts

FLAGS = [*SMALL, "--epochs=1000", "--noeval", "--log_every=4", "--checkpoint_every_steps=1000"]
SCRIPTS = {  # launcher -> (script, its variables)
    "horovodrun (MPI, the default)": ("run_train_alexnet_multigpu_imagenet.sh", {"NUM_GPUS": "2"}),
    "horovodrun --gloo": ("run_train_alexnet_multigpu_imagenet.sh", {"NUM_GPUS": "2", "GLOO": "1"}),
    "mpirun": ("run_train_alexnet_multinode.sh", {}),
}
ELASTIC = "horovodrun elastic"  # bin/run_train_alexnet_elastic.sh


def job_pids(marker):
    """Every process whose command line holds `marker` (the job's model folder):
    the launcher, mpirun, the ranks."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read() and int(pid) != os.getpid():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def start_script(launcher, model_dir, data, tmp_path):
    python = injected_python(tmp_path, "hold=5:1", "save_delay=1")
    if launcher == ELASTIC:  # two hosts to the driver, both this one (tools/launch.py)
        write_hosts(tmp_path / "elastic.hosts", ELASTIC_HOSTS)
        cmd, env = elastic_job(tmp_path / "elastic.hosts", model_dir,
                               [*FLAGS, f"--data_dir={data}"], python)
        env["SIGKILL_TIMEOUT"] = "60"
    else:
        script, variables = SCRIPTS[launcher]
        hosts = tmp_path / "hosts"
        hosts.write_text("localhost slots=2\n")
        env = job_env({**variables, "DATA_DIR": data, "MODEL_DIR": model_dir,
                       "HOSTFILE": str(hosts), "SIGKILL_TIMEOUT": "60", "PYTHON": python})
        for name in ("GLOO", "NUM_GPUS"):
            if name not in variables:
                env.pop(name, None)
        cmd = ["bash", os.path.join(ROOT, "bin", script), *FLAGS]
    env.pop("HVD_ALEXNET_RESUME", None)
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.cmd, proc.log = cmd, log
    return proc


# The Gloo launcher's SIGTERM is test_faults.py's (test_preempted_job_checkpoints_
# the_step_every_rank_stops_at); an elastic job's rank signalled alone is a
# host's notice (test_elastic.py), not a stop of the job. Two classes: pytest-xdist
# (--dist loadscope) runs them on two workers.
MPI = [(launcher, target) for launcher in ("horovodrun (MPI, the default)", "mpirun")
       for target in ("launcher", "rank", "group")]
GLOO = [("horovodrun --gloo", "rank"), ("horovodrun --gloo", "group"), (ELASTIC, "launcher"),
        (ELASTIC, "group")]


class TestMPI:
    @pytest.mark.parametrize("launcher,target", MPI)
    def test_a_stop_from_any_target_checkpoints_every_rank_and_leaves_nothing(
            self, launcher, target, tiny_data, tmp_path):
        stop_and_check(launcher, target, tiny_data, tmp_path)


class TestGloo:
    @pytest.mark.parametrize("launcher,target", GLOO)
    def test_a_stop_from_any_target_checkpoints_every_rank_and_leaves_nothing(
            self, launcher, target, tiny_data, tmp_path):
        stop_and_check(launcher, target, tiny_data, tmp_path)


def stop_and_check(launcher, target, tiny_data, tmp_path):
    model_dir = str(tmp_path / f"run-{target}")
    proc = start_script(launcher, model_dir, tiny_data, tmp_path)

    def act():
        wait_for_step(model_dir, 4, proc, timeout=180)
        if target == "launcher":  # a supervisor, `timeout`, `docker stop`
            os.kill(proc.pid, signal.SIGTERM)
        elif target == "rank":  # one rank, as a host's own supervisor would (or Ctrl-C there)
            os.kill(rank_pids(model_dir)[1],
                    signal.SIGINT if launcher == "mpirun" else signal.SIGTERM)
        else:  # Ctrl-C in the terminal: the launcher's whole process group
            os.killpg(proc.pid, signal.SIGINT)
        deadline = time.time() + 120  # the stop under way: a second signal must not end it
        while "stopping at the next read step" not in output(proc) and time.time() < deadline:
            time.sleep(0.2)
        if target != "rank":
            os.kill(proc.pid, signal.SIGTERM)

    res = finish_after(proc, act, timeout=240)
    out = res.stdout
    assert res.returncode == 75, out[-4000:]
    stops = re.findall(r"hvd_alexnet train: stopped at step (\d+)", out)
    assert stops == ["8", "8"], out[-4000:]
    assert checkpoints(model_dir)[-1] == 8, out[-4000:]
    assert job_pids(model_dir) == [], out[-4000:]
    shutil.rmtree(model_dir)


def test_nothing_outlives_a_killed_launcher(tmp_path):
    """SIGKILL to the supervisor (nothing it can handle): the kernel sends its
    child (mpirun; here a stand-in that records the signal) SIGTERM."""
    import sys
    ready, got = tmp_path / "ready", tmp_path / "got"
    child = (f"import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: (open({str(got)!r}, "
             f"'w').write('TERM'), exit(0)))\nopen({str(ready)!r}, 'w').close()\n"
             f"time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-m", "hvd_alexnet.tools.supervise", sys.executable,
                             "-c", child], cwd=ROOT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        while not got.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert got.read_text() == "TERM"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("patched", [False, True], ids=["Horovod's own", "tools/horovodrun.py"])
def test_a_rank_that_stopped_keeps_its_status_under_gloo(tmp_path, patched):
    """Under Gloo, Horovod runs each rank under `/bin/sh -c` and, on the
    launcher's signal, SIGSTOPs and terminates that shell as soon as the rank has
    exited: a shell not yet scheduled to exit with the rank's 75 died of it (143;
    a CI run's preempted job ended so). Here the shell waits 1 s after its rank
    by construction: Horovod's own end kills it (143, or 137 as it is asleep),
    the project's launcher keeps its 75."""
    import sys
    up = tmp_path / "up"
    (tmp_path / "rank.py").write_text(
        f"import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *a: sys.exit(75))\n"
        f"pathlib.Path({str(up)!r}).touch()\ntime.sleep(120)\n")
    shell = f"{sys.executable} {tmp_path / 'rank.py'}; s=$?; sleep 1; exit $s"
    (tmp_path / "run.py").write_text(
        ("import hvd_alexnet.tools.horovodrun  # noqa: F401 (also in the spawned middleman)\n"
         if patched else "") +
        "import os, sys, threading, time\n"
        "from horovod.runner.common.util import safe_shell_exec\n"
        "if __name__ == '__main__':\n"
        "    stop = threading.Event()\n"
        "    def signal_when_up():\n"
        f"        while not os.path.exists({str(up)!r}):\n"
        "            time.sleep(0.05)\n"
        "        stop.set()\n"
        "    threading.Thread(target=signal_when_up, daemon=True).start()\n"
        f"    sys.exit(safe_shell_exec.execute({shell!r}, events=[stop]))\n")
    res = subprocess.run([sys.executable, str(tmp_path / "run.py")], cwd=ROOT, env=job_env(),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 75 if patched else res.returncode in (137, 143), \
        res.stdout + res.stderr
