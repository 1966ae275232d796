"""Elastic training (--elastic, bin/run_train_alexnet_elastic.sh): real ranks
under horovodrun's elastic driver, hosts lost (SIGKILL to their rank, the host
taken out of the discovery file) and given back while the job runs.

The two hosts are `localhost` and `127.0.0.1`: two hosts to Horovod's driver
(its blacklist, its host assignment, one rank each), both started on this
machine without ssh. Every step sleeps (inject.py's step_delay) so that a run
lasts long enough for the membership changes on any machine; once the test has
seen them it releases the delay (inject.py's release), and the rest runs at the
machine's speed.
"""

import os
import signal
import subprocess
import sys

import pytest

from helpers import (
    SMALL,
    check_elastic_run,
    checkpoints,
    finish,
    injected_python,
    lose_host,
    release,
    run_summary,
    slowed_until_released,
    step_records,
    values,
    wait_until,
)
from hvd_alexnet.tools.launch import ELASTIC_HOSTS as HOSTS
from hvd_alexnet.tools.launch import elastic_job, elastic_ranks, job_env, write_hosts

FLAGS = [*SMALL, "--elastic_commit_every=5", "--eval_every_epochs=1", "--checkpoint_every_steps=10"]


def start(tmp_path, hosts, *flags, step_delay=0.5, env=None, log="job.log"):
    """The elastic launch script on `hosts` (written to the discovery file); every
    step takes `step_delay` more until release(tmp_path)."""
    hosts_file, model_dir = tmp_path / "hosts", str(tmp_path / "run")
    write_hosts(hosts_file, hosts)
    cmd, full_env = elastic_job(hosts_file, model_dir, [*FLAGS, *flags], injected_python(
        tmp_path, *slowed_until_released(tmp_path, step_delay)),
        {"ELASTIC_TIMEOUT": "30", **(env or {})})
    out = open(tmp_path / log, "w+")
    proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.cmd, proc.log, proc.hosts_file, proc.model_dir = cmd, out, hosts_file, model_dir
    proc.hosts = HOSTS
    return proc


def test_a_lost_host_shrinks_the_job_and_its_return_grows_it(tiny_data, tmp_path):
    # After the shrink (from the commit at step 10, 1 epoch) 40 steps of at least
    # 0.5 s are left at 1 rank: room for the host's return.
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=3")
    wait_until(proc, "step 12", lambda: any(s >= 12 for s, _ in values(proc, "loss")))
    lose_host(proc, "127.0.0.1")
    wait_until(proc, "a shrink to 1 rank", lambda: values(proc, "elastic_ranks"))
    write_hosts(proc.hosts_file, HOSTS)  # the host is back
    wait_until(proc, "a growth to 2 ranks", lambda: len(values(proc, "elastic_ranks")) > 1)
    release(tmp_path)
    done = finish(proc, 300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "the job shrank from 2 to 1 ranks" in done.stdout
    assert "the job grew from 1 to 2 ranks" in done.stdout
    assert "identical on all 2 ranks" in done.stdout  # the returned rank ends in step
    check_elastic_run(proc, [1, 2])
    assert run_summary(proc)["epochs_completed"] == pytest.approx(3, abs=0.2)


def test_losing_rank_0s_host_moves_its_duties(tiny_data, tmp_path):
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=2")
    wait_until(proc, "step 12", lambda: any(s >= 12 for s, _ in values(proc, "loss")))
    root = next(h for h, (_, is_root) in elastic_ranks(proc.hosts_file, proc.model_dir).items()
                if is_root)
    lose_host(proc, root)
    wait_until(proc, "a shrink to 1 rank", lambda: values(proc, "elastic_ranks"))
    release(tmp_path)
    done = finish(proc, 300)
    assert done.returncode == 0, done.stdout[-4000:]
    check_elastic_run(proc, [1])
    change_step = values(proc, "elastic_ranks")[0][0]
    # The new rank 0 validates, checkpoints and writes the summary.
    assert step_records(proc.model_dir, 1)[-1]["data"]["top1"] > 0
    assert checkpoints(proc.model_dir)[-1] > change_step
    assert run_summary(proc)["top1"] == step_records(proc.model_dir, 1)[-1]["data"]["top1"]


def test_losing_every_host_ends_the_job_and_a_restart_resumes(tiny_data, tmp_path):
    # 10 steps of at least 1 s after the checkpoint of step 10: the job is still
    # running when its hosts are taken away.
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=2", step_delay=1.0,
                 env={"ELASTIC_TIMEOUT": "5"})
    wait_until(proc, "a checkpoint",
               lambda: os.path.isdir(os.path.join(proc.model_dir, "checkpoints"))
             and checkpoints(proc.model_dir))
    live = elastic_ranks(proc.hosts_file)
    write_hosts(proc.hosts_file, [])
    for pid, _ in live.values():
        os.kill(pid, signal.SIGKILL)
    done = finish(proc, 120)
    assert done.returncode != 0
    assert "run the same command again to resume from the newest" in done.stdout
    kept = checkpoints(proc.model_dir)[-1]
    again = finish(start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=2",
                         step_delay=0, log="again.log"), 300)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"ckpt-{kept} at step {kept}" in again.stdout


def test_elastic_outside_horovodruns_elastic_mode_is_refused(tmp_path):
    """--elastic under a plain launcher (here none): one line naming the way in, status 2."""
    res = subprocess.run([sys.executable, "-m", "hvd_alexnet", "train", "--elastic", "--synthetic",
                          f"--model_dir={tmp_path}"], capture_output=True, text=True, timeout=120,
                         env=job_env())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--elastic needs horovodrun's elastic mode" in res.stderr
    assert "bin/run_train_alexnet_elastic.sh" in res.stderr


def test_one_host_without_an_interface_is_refused_not_left_waiting(tmp_path):
    """Horovod's elastic driver probes for the hosts' common interface between 2
    hosts and, with one, waits out ELASTIC_TIMEOUT: the script refuses at once."""
    hosts_file = tmp_path / "hosts"
    write_hosts(hosts_file, ["localhost"])
    cmd, env = elastic_job(hosts_file, tmp_path / "run", ["--synthetic"])
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "needs 2 at the start" in res.stderr and "IFACE" in res.stderr


def test_a_signal_to_one_hosts_rank_shrinks_the_job_and_it_goes_on(tiny_data, tmp_path):
    """A spot instance's notice: SIGTERM to the rank of host 127.0.0.1 alone. At
    the second read step after it every rank commits, that rank leaves (75) and
    the other goes on alone from the commit, to the run's end (0); the driver
    keeps the host out (a cooldown longer than the run). Steps and examples are
    checked as in the other elastic tests. Before, the whole job stopped (75)."""
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=2",
                 env={"COOLDOWN": "600 601"})
    wait_until(proc, "step 6", lambda: any(s >= 6 for s, _ in values(proc, "loss")))
    os.kill(elastic_ranks(proc.hosts_file)["127.0.0.1"][0], signal.SIGTERM)
    wait_until(proc, "a shrink to 1 rank", lambda: values(proc, "elastic_ranks"))
    release(tmp_path)
    done = finish(proc, 300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "SIGTERM to this host's ranks alone: leaving the elastic job at step" in done.stdout
    assert "the job shrank from 2 to 1 ranks" in done.stdout, done.stdout[-4000:]
    check_elastic_run(proc, [1])
