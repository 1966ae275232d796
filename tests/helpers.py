"""What the tests share: small real datasets (JPEG bytes -> data build ->
TFRecords), a launcher that runs real ranks with a hard time bound, and
readers of a run's records and checkpoints. The fixtures are in conftest.py."""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from hvd_alexnet import metrics_log
from hvd_alexnet.checkpoint import SUBDIR as CHECKPOINT_SUBDIR
from hvd_alexnet.tools.launch import ROOT, elastic_ranks, job_command, job_env, write_hosts

INJECT = os.path.join(ROOT, "tests", "inject.py")  # train with faults: see inject.py
SMALL = ["--image_size=67", "--batch_size=4", "--eval_batch_size=16", "--log_every=1",
         "--threads=1"]


def fake_commands(bin_dir, bodies):
    """Writes each {name: bash body} as an executable command in `bin_dir`: the
    fakes (id, apt-get, docker, ...) that a test puts first on a script's PATH."""
    bash = shutil.which("bash")
    for name, body in bodies.items():
        (bin_dir / name).write_text(f"#!{bash}\n{body}\n")
        (bin_dir / name).chmod(0o755)


def free_ports(n):
    """n distinct TCP ports on loopback that nothing listens on (for the test's own
    servers). All n are held bound until all are chosen: ports taken one after the
    other can be the same one twice (a Slurm test once got SlurmctldPort ==
    SlurmdPort, and its slurmd could not bind)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port():
    """A TCP port on loopback that nothing listens on."""
    return free_ports(1)[0]


def require(reason, what):
    """Skips a test that cannot run here (`reason`), but fails it where it must run:
    HVD_ALEXNET_REQUIRE_MULTIHOST=1 (CI, as root) for the two-host and Slurm tests."""
    if reason:
        if os.environ.get("HVD_ALEXNET_REQUIRE_MULTIHOST") == "1":
            pytest.fail(f"{what} required but cannot run: {reason}")
        pytest.skip(reason)


def mount_tmpfs(path, size):
    """Mounts a tmpfs of `size` (e.g. 400m) at `path`: a test's small disk. Skips
    for a user who cannot; fails as root, where it must run (CI runs the suite
    as root, and a skip there would hide the test)."""
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"mounting a tmpfs at {path} failed as root: {res.stderr.strip()}")
        pytest.skip("mounting a tmpfs needs root")


def reachable_by_all(paths):
    """A command prefix, run as root, that runs its command in a mount namespace of
    its own in which every user can reach each of `paths`: a folder on the way
    that others may not enter (root's home, where this machine's Python is; pytest's
    own temp folder) is covered there by an empty tmpfs they may enter, with those
    paths bound back into it, as a site keeps its Python and checkouts on a shared
    file system every user reads. Nothing changes outside the namespace."""
    tops = {}
    for path in map(os.path.realpath, paths):
        folder = "/"
        for part in path.strip("/").split("/")[:-1]:
            folder = os.path.join(folder, part)
            if not os.stat(folder).st_mode & 0o001:
                tops.setdefault(folder, []).append(path)
                break
    binds = [path for top in tops for path in tops[top]]
    script = ["set -e", "hold=$(mktemp -d)"]
    script += [f'mkdir "$hold/{i}"; mount --bind {shlex.quote(p)} "$hold/{i}"'
               for i, p in enumerate(binds)]
    script += [f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(top)}" for top in tops]
    script += [f'mkdir -p {shlex.quote(p)}; mount --bind "$hold/{i}" {shlex.quote(p)}'
               for i, p in enumerate(binds)]
    return ["unshare", "--mount", "--propagation", "private", "bash", "-c",
            "\n".join([*script, 'exec "$@"']), "reachable_by_all"]


def as_user(paths, uid, gid):
    """reachable_by_all(paths), then the command as user `uid` (no root, no groups)."""
    return [*reachable_by_all(paths), "setpriv", f"--reuid={uid}", f"--regid={gid}",
            "--clear-groups", "--"]


def command(args, np=1, launcher=None, env=None, faults=()):
    """The command line and environment that run `python -m hvd_alexnet ARGS` as
    `np` ranks; with `faults` (inject.py's options), `train` with those faults."""
    py = [INJECT, *faults, "--", *args[1:]] if faults else ["-m", "hvd_alexnet", *args]
    return job_command(py, np, launcher, forward=list(env or {})), job_env(env)


def start(args, np=1, launcher=None, env=None, faults=(), prefix=()):
    """Starts the job in its own process group, its output going to a file
    (a pipe nobody reads while the job runs could fill up and block it);
    `prefix`: a command that execs the job's (it keeps the job's pid)."""
    cmd, full_env = command(args, np, launcher, env, faults)
    cmd = [*prefix, *cmd]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.cmd, proc.log = cmd, log
    return proc


def output(proc):
    proc.log.seek(0)
    return proc.log.read()


def finish(proc, timeout):
    """Waits for the job; kills its process group and fails the test after `timeout` s."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{' '.join(proc.cmd)} still running after {timeout}s (hang?)\n"
                    f"{output(proc)[-4000:]}")
    return subprocess.CompletedProcess(proc.cmd, proc.returncode, output(proc), None)


def finish_after(proc, act, timeout):
    """Does act() while the job runs (waits for a step, signals, changes a file),
    then waits for the job's end (finish). If anything fails on the way, the
    job's process group is killed: no test leaves a job behind."""
    try:
        act()
        return finish(proc, timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for_step(model_dir, step, proc, timeout=120):
    """Blocks until rank 0 has logged training step `step` (or fails)."""
    path, deadline = os.path.join(model_dir, "dllogger.json"), time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, output(proc)[-3000:]
        if os.path.exists(path) and any(r["step"][1] >= step for r in step_records(model_dir)):
            return
        time.sleep(0.5)
    pytest.fail(f"step {step} not reached in {timeout}s\n{output(proc)[-3000:]}")


def injected_python(tmp_path, *faults):
    """A $PYTHON for the launch scripts that trains with `faults` (inject.py's
    options, e.g. hold=3): `PY -m hvd_alexnet train FLAGS` runs
    `PY tests/inject.py FAULTS -- FLAGS` (exec: the rank keeps the wrapper's pid)."""
    path, options = tmp_path / "python-injected", " ".join(faults)
    path.write_text(f'#!/bin/bash\n[[ $1 == -m && $2 == hvd_alexnet.tools.* ]] && '
                    f'exec {sys.executable} "$@"  # the scripts\' launchers\n'
                    f'[[ "$1 $2 $3" == "-m hvd_alexnet train" ]] || exit 9\n'
                    f'shift 3\nexec {sys.executable} {INJECT} {options} -- "$@"\n')
    path.chmod(0o755)
    return str(path)


def launch(args, np=1, launcher=None, timeout=240, env=None, faults=(), prefix=()):
    """Runs the job to the end within `timeout` seconds (`prefix`: as start's)."""
    return finish(start(args, np, launcher, env, faults, prefix), timeout)


# The model folder's tests: 2 ranks x batch 4 over the tiny set's 80 images, 10
# steps an epoch, 20 in all; a progress line and a checkpoint every 4 steps.
FOLDER_ARGS = [*SMALL, "--noeval", "--epochs=2", "--log_every=4", "--checkpoint_every_steps=4"]


def train_job(data, model_dir, *extra, np=2, faults=(), timeout=240):
    """`train` of FOLDER_ARGS on `np` ranks (horovodrun --gloo), run to its end."""
    return launch(["train", f"--data_dir={data}", f"--model_dir={model_dir}", *FOLDER_ARGS,
                   *extra], np=np, launcher="gloo" if np > 1 else None, faults=faults,
                  timeout=timeout)


def lines(out, text):
    """The ranks' lines holding `text` (horovodrun prefixes each with [rank])."""
    return [line for line in out.splitlines() if text in line]


def step_records(model_dir, length=2):
    """Rank 0's DLLogger records whose step is a list of `length` items:
    [epoch, step] for training steps (2), [epoch] for validations (1)."""
    return metrics_log.step_records(metrics_log.read(os.path.join(model_dir,
                                                                  metrics_log.LOG_FILE)), length)


def checkpoints(model_dir):
    """Step numbers of the checkpoints kept in model_dir, ascending."""
    d = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    return sorted(int(f[5:-6]) for f in os.listdir(d)
                  if f.startswith("ckpt-") and f.endswith(".index"))


def final_weights(model_dir, classes=10):
    """The model variables of the newest checkpoint (a 67x67 model), as arrays."""
    import tensorflow as tf

    from hvd_alexnet.model import build_alexnet
    model = build_alexnet(67, classes)
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_SUBDIR))
    tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    return [v.numpy() for v in model.variables]


def corrupt_copy(tiny_data, data):
    """The tiny set with, in train shard 1, record 2's JPEG garbled and record 5's label 99."""
    import tensorflow as tf
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns("raw"))
    shard = str(data / "train-00001-of-00002")
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(shard)]
    feats = examples[2].features.feature
    feats["image/encoded"].bytes_list.value[0] = b"\xff\xd8\xff\xe0" + b"not a jpeg" * 50
    examples[5].features.feature["image/class/label"].int64_list.value[0] = 99
    with tf.io.TFRecordWriter(shard) as w:
        for e in examples:
            w.write(e.SerializeToString())
    return shard


def build_dataset(out_dir, train_shards, validation_shards, image_size=72, per_class=None):
    """Real digit scans as JPEG files in class folders, through `data build`."""
    from hvd_alexnet.data import builder, demo
    raw = os.path.join(out_dir, "raw")
    demo.write_raw(raw, image_size=image_size, validation_fraction=0.2)
    if per_class:  # keep the first N images of each class: a faster dataset
        for split in ("train", "validation"):
            for c in os.listdir(os.path.join(raw, split)):
                folder = os.path.join(raw, split, c)
                for f in sorted(os.listdir(folder))[per_class:]:
                    os.remove(os.path.join(folder, f))
    builder.build_raw(raw, out_dir, train_shards, validation_shards, workers=2,
                      log=lambda *a: None)
    return out_dir


# An elastic job (train --elastic): `proc` is the launch script's process, with
# the attributes model_dir, hosts_file (its discovery file) and hosts (all of them).
def records(proc):
    """Rank 0's LOG records, in order (from every rank that was rank 0)."""
    return metrics_log.run_records(proc.model_dir)


def wait_until(proc, what, predicate, timeout=240):
    """Polls `predicate()` until true; fails when the job ends or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"job ended before {what}\n{output(proc)[-4000:]}"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"no {what} in {timeout} s\n{output(proc)[-4000:]}")


def slowed_until_released(tmp_path, seconds):
    """inject.py's options: every step `seconds` longer until release(tmp_path)."""
    return f"step_delay={seconds}", f"release={tmp_path / 'release'}"


def release(tmp_path):
    """Ends the step delay of slowed_until_released(tmp_path, ...): the rest of the
    run goes at the machine's speed."""
    (tmp_path / "release").touch()


def values(proc, key):
    """(step, value) of rank 0's records that hold `key`, in order."""
    return [(r["step"][1], r["data"][key]) for r in records(proc)
            if key in r["data"] and len(r["step"]) == 2]


def lose_host(proc, host):
    """A host is reclaimed: out of the discovery file, its rank killed."""
    live = elastic_ranks(proc.hosts_file)
    write_hosts(proc.hosts_file, [h for h in proc.hosts if h in live and h != host])
    os.kill(live[host][0], signal.SIGKILL)


def run_summary(proc):
    return metrics_log.run_summary(proc.model_dir)


def check_elastic_run(proc, ranks_after, batch=4):
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
    for committed, r in resumes:
        assert r["data"]["elastic_resumed_examples"] == committed, (r, commits)
    for steps, start in zip(segments, starts):
        assert steps == list(range(start + 1, start + 1 + len(steps))), (start, steps)
    done, (_, last) = run_summary(proc), resumes[-1]
    assert done["steps"] == segments[-1][-1]
    assert done["examples_seen"] == last["data"]["elastic_resumed_examples"] + (
        done["steps"] - last["step"][1]) * batch * last["data"]["elastic_ranks"]
