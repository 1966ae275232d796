"""Elastic training (--elastic, bin/run_train_alexnet_elastic.sh): real ranks
under horovodrun's elastic driver, hosts lost (SIGKILL to their rank, the host
taken out of the discovery file) and given back while the job runs.

The two hosts are `localhost` and `127.0.0.1`: two hosts to Horovod's driver
(its blacklist, its host assignment, one rank each), both started on this
machine without ssh. Every step sleeps (inject.py's step_delay) so that a run
lasts long enough for the membership changes on any machine.
"""

import os
import signal
import subprocess
import time

import pytest

from helpers import SMALL, checkpoints, finish, injected_python, output, step_records
from hvd_alexnet import metrics_log
from hvd_alexnet.tools.launch import ELASTIC_HOSTS as HOSTS, elastic_job, elastic_ranks, \
    write_hosts

FLAGS = [*SMALL, "--elastic_commit_every=5", "--eval_every_epochs=1", "--checkpoint_every_steps=10"]


def start(tmp_path, hosts, *flags, step_delay=0.1, env=None, log="job.log"):
    """The elastic launch script on `hosts` (written to the discovery file)."""
    hosts_file, model_dir = tmp_path / "hosts", str(tmp_path / "run")
    write_hosts(hosts_file, hosts)
    cmd, full_env = elastic_job(hosts_file, model_dir, [*FLAGS, *flags], injected_python(
        tmp_path, f"step_delay={step_delay}"), {"ELASTIC_TIMEOUT": "30", **(env or {})})
    out = open(tmp_path / log, "w+")
    proc = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.cmd, proc.log, proc.hosts_file, proc.model_dir = cmd, out, hosts_file, model_dir
    return proc


def records(proc):
    """Rank 0's LOG records, in order (from every rank that was rank 0)."""
    path = os.path.join(proc.model_dir, metrics_log.LOG_FILE)
    return [r for r in (metrics_log.read(path) if os.path.exists(path) else [])
            if r["type"] == "LOG"]


def wait_for(proc, what, predicate, timeout=240):
    """Polls `predicate()` until true; fails when the job ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"job ended before {what}\n{output(proc)[-4000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} in {timeout} s\n{output(proc)[-4000:]}")


def values(proc, key):
    """(step, value) of rank 0's records that hold `key`, in order."""
    return [(r["step"][1], r["data"][key]) for r in records(proc)
            if key in r["data"] and len(r["step"]) == 2]


def lose_host(proc, host):
    """A host is reclaimed: out of the discovery file, its rank killed."""
    live = elastic_ranks(proc.hosts_file)
    write_hosts(proc.hosts_file, [h for h in HOSTS if h in live and h != host])
    os.kill(live[host][0], signal.SIGKILL)


def summary(proc):
    return [r["data"] for r in records(proc) if r["step"] == []][-1]


def check_rolled_back_to_the_last_commit(proc, ranks_after):
    """The job went on from the last commit before each change, and each stretch
    between changes logged its steps once, in order, from the commit on (a step
    is a global batch: its size changes with the ranks)."""
    segments, commits = [[]], []  # the training steps between changes; every commit
    resumes = []  # (examples of the last commit before the change, the change's record)
    for r in records(proc):
        if "elastic_ranks" in r["data"]:
            resumes.append((commits[-1], r))
            segments.append([])
        elif "elastic_commit_examples" in r["data"]:
            commits.append(r["data"]["elastic_commit_examples"])
        elif "loss" in r["data"]:
            segments[-1].append(r["step"][1])
    assert [r["data"]["elastic_ranks"] for _, r in resumes] == ranks_after
    starts = [0] + [r["step"][1] for _, r in resumes]
    for (committed, r), start in zip(resumes, starts[1:]):
        assert r["data"]["elastic_resumed_examples"] == committed, (r, commits)
    for steps, start in zip(segments, starts):
        assert steps == list(range(start + 1, start + 1 + len(steps))), (start, steps)
    done, (_, last) = summary(proc), resumes[-1]
    assert done["steps"] == segments[-1][-1]
    assert done["examples_seen"] == last["data"]["elastic_resumed_examples"] + (
        done["steps"] - last["step"][1]) * 4 * last["data"]["elastic_ranks"]


def test_a_lost_host_shrinks_the_job_and_its_return_grows_it(tiny_data, tmp_path):
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=6")
    wait_for(proc, "step 12", lambda: any(s >= 12 for s, _ in values(proc, "loss")))
    lose_host(proc, "127.0.0.1")
    wait_for(proc, "a shrink to 1 rank", lambda: values(proc, "elastic_ranks"))
    write_hosts(proc.hosts_file, HOSTS)  # the host is back
    wait_for(proc, "a growth to 2 ranks", lambda: len(values(proc, "elastic_ranks")) > 1)
    done = finish(proc, 300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "the job shrank from 2 to 1 ranks" in done.stdout
    assert "the job grew from 1 to 2 ranks" in done.stdout
    assert "identical on all 2 ranks" in done.stdout  # the returned rank ends in step
    check_rolled_back_to_the_last_commit(proc, [1, 2])
    assert summary(proc)["epochs_completed"] == pytest.approx(6, abs=0.2)


def test_losing_rank_0s_host_moves_its_duties(tiny_data, tmp_path):
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=4")
    wait_for(proc, "step 12", lambda: any(s >= 12 for s, _ in values(proc, "loss")))
    root = next(h for h, (_, is_root) in elastic_ranks(proc.hosts_file, proc.model_dir).items()
                if is_root)
    lose_host(proc, root)
    done = finish(proc, 300)
    assert done.returncode == 0, done.stdout[-4000:]
    check_rolled_back_to_the_last_commit(proc, [1])
    change_step = values(proc, "elastic_ranks")[0][0]
    # The new rank 0 validates, checkpoints and writes the summary.
    assert step_records(proc.model_dir, 1)[-1]["data"]["top1"] > 0
    assert checkpoints(proc.model_dir)[-1] > change_step
    assert summary(proc)["top1"] == step_records(proc.model_dir, 1)[-1]["data"]["top1"]


def test_losing_every_host_ends_the_job_and_a_restart_resumes(tiny_data, tmp_path):
    proc = start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=4",
                 env={"ELASTIC_TIMEOUT": "5"})
    wait_for(proc, "a checkpoint", lambda: os.path.isdir(os.path.join(proc.model_dir, "checkpoints"))
             and checkpoints(proc.model_dir))
    live = elastic_ranks(proc.hosts_file)
    write_hosts(proc.hosts_file, [])
    for pid, _ in live.values():
        os.kill(pid, signal.SIGKILL)
    done = finish(proc, 120)
    assert done.returncode != 0
    assert "run the same command again to resume from the newest" in done.stdout
    kept = checkpoints(proc.model_dir)[-1]
    again = finish(start(tmp_path, HOSTS, f"--data_dir={tiny_data}", "--epochs=4",
                         step_delay=0, log="again.log"), 300)
    assert again.returncode == 0, again.stdout[-4000:]
    assert f"ckpt-{kept} at step {kept}" in again.stdout
