"""The faults of the chaos run (tools/chaos.py): when each one acts, how it is
injected into a 2-rank job, and the exit status the attempt it hits must end
with. Every fault is real: a signal, a file changed on disk, a second job, a
filled disk; none goes through a test hook.

- before an attempt starts, on its model folder: a bit flipped in the newest
  checkpoint (it must be set aside and the one before resumed), the index
  garbled (it must be rebuilt from the files); the attempt then takes the next
  fault too;
- as it starts: SIGTERM to the ranks once their handler is installed (read from
  /proc/PID/status), before their first step: 75;
- in its flags: a learning rate of 1e6 with no progress line before the next
  checkpoint, so that the weights go NaN between two read steps: 4, and no
  checkpoint of it;
- while it trains, after some steps: a rank killed (also rank 0 while it
  saves): a failure, not 0 or 75; SIGTERM to the ranks or the launcher: 75; a
  second job on the same folder, which must exit 2 while the first goes on;
  the disk filled (the chaotic run's folder is a tmpfs of its own, as root;
  the filler is a file in it, removed after the attempt): 6.
"""

import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import time

from hvd_alexnet import checkpoint, metrics_log
from hvd_alexnet.checkpoint import SUBDIR as CHECKPOINT_SUBDIR

BEFORE, AT_START, IN_FLAGS, WHILE = "before", "at start", "in flags", "while training"
FAILED = "a failure (not 0 or 75)"


@dataclasses.dataclass(frozen=True)
class Fault:
    name: str
    when: str  # BEFORE, AT_START, IN_FLAGS or WHILE
    status: str = None  # the status of the attempt it ends: "75", FAILED...; None: it goes on

    def status_ok(self, code):
        return code not in (0, 75) if self.status == FAILED else str(code) == self.status


CLASSIC = (Fault("kill rank 0", WHILE, FAILED), Fault("kill rank 1", WHILE, FAILED),
           Fault("kill rank 0 while it saves", WHILE, FAILED),
           Fault("SIGTERM to the ranks", WHILE, "75"), Fault("SIGTERM to horovodrun", WHILE, "75"))
MODEL_FOLDER = (Fault("SIGTERM during start-up", AT_START, "75"),
                Fault("NaN weights between log steps", IN_FLAGS, "4"),
                Fault("corrupt the newest checkpoint", BEFORE),
                Fault("garble the checkpoint index", BEFORE),
                Fault("a second job on the folder", WHILE),
                Fault("fill the disk", WHILE, "6"))
BY_NAME = {f.name: f for f in CLASSIC + MODEL_FOLDER}
# What the attempt with this fault runs with: no progress line (the harness logs
# every step) before the pause, where the weights are checked, and a huge rate.
NAN_FLAGS = ("--base_lr=1e6", "--log_every=100000")
FILLER = "chaos-filler"


def steps(model_dir):
    """Training steps rank 0 has logged in model_dir so far (every attempt's)."""
    path = os.path.join(model_dir, metrics_log.LOG_FILE)
    if not os.path.exists(path):
        return []
    return [r["step"][1] for r in metrics_log.step_records(metrics_log.read(path))
            if "loss" in r["data"]]  # training steps, not an elastic job's other records


def rank_pids(model_dir):
    """{rank: pid} of the Python ranks training into model_dir (from /proc): their
    command line names it and a launcher gave them a rank (horovodrun does not
    have one)."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if b"python" in os.path.basename(argv[0]) and any(model_dir.encode() in a for a in argv):
            rank = env.get(b"HOROVOD_RANK", env.get(b"OMPI_COMM_WORLD_RANK"))
            if rank is not None:
                pids[int(rank)] = int(pid)
    return pids


def _catches_sigterm(pid):
    """Whether the process has its own SIGTERM handler (SigCgt in /proc)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(caught >> (signal.SIGTERM - 1) & 1)


def before(fault, model_dir):
    """Changes the folder before an attempt; False if its moment has not come
    (too few checkpoints to fall back on)."""
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    complete = sorted(s for s, names in checkpoint.on_disk(directory).items()
                      if f"ckpt-{s}.index" in names)
    if fault == "corrupt the newest checkpoint":
        if len(complete) < 2:
            return False
        (data,) = [n for n in checkpoint.on_disk(directory)[complete[-1]] if ".data-" in n]
        with open(os.path.join(directory, data), "r+b") as f:
            f.seek(os.path.getsize(os.path.join(directory, data)) // 2)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x10]))
        return complete[-1]
    if not complete:
        return False
    with open(os.path.join(directory, checkpoint.INDEX), "w") as f:
        f.write('model_checkpoint_path: "ckpt-\n\x00garbled{{')
    return complete[-1]


def check_before(fault, model_dir, step):
    """After the attempt: the damaged checkpoint set aside, the index rebuilt."""
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    if fault == "corrupt the newest checkpoint":
        aside = os.path.join(directory, checkpoint.SET_ASIDE)
        ok = os.path.isdir(aside) and any(n.startswith(f"ckpt-{step}-") for n in os.listdir(aside))
        return ok, f"ckpt-{step} {'set aside' if ok else 'NOT set aside'}"
    listed, problem = checkpoint.read_index(directory)
    return problem is None, f"index {'rebuilt' if problem is None else problem}"


def at_start(proc, model_dir, ranks=2, timeout=300):
    """SIGTERM to every rank once each has its handler (before its first step,
    unless start-up is faster than this look); False if the job ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pids = rank_pids(model_dir)
        if len(pids) == ranks and all(_catches_sigterm(p) for p in pids.values()):
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return True
        time.sleep(0.01)
    return False


def fill_disk(model_dir, tries=10):
    """Takes all but about 1 MiB of the disk of `model_dir` with one file. The
    trainer writes meanwhile, so a size measured a moment ago may no longer fit
    (ENOSPC: once a traceback that lost the chaos run's verdict): measured again
    and tried again. True once the disk is full (or as full as it gets)."""
    path = os.path.join(model_dir, FILLER)
    for _ in range(tries):
        free = shutil.disk_usage(model_dir).free
        try:
            with open(path, "ab") as f:
                os.posix_fallocate(f.fileno(), 0, max(1, os.fstat(f.fileno()).st_size + free
                                                      - (1 << 20)))
            return True
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return True  # every try found less room than measured: full enough


def while_training(proc, model_dir, fault, after_steps, second_job):
    """Waits until `after_steps` more steps are logged, then injects `fault`.
    Returns False if its moment did not come: the job ended first, or (for a
    kill while saving) no save started before the job ended or within 120 s.
    A second job: True if it was refused (exit 2) while this one went on, else
    a line saying what it did."""
    target = len(steps(model_dir)) + after_steps
    while len(steps(model_dir)) < target:
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    if fault == "a second job on the folder":
        code = _wait(second_job(), 300)
        return True if code == 2 and proc.poll() in (None, 0) else f"the second job exited {code}"
    if fault == "fill the disk":
        if proc.poll() is not None:
            return False
        return fill_disk(model_dir)
    if fault == "kill rank 0 while it saves":
        ckpts = os.path.join(model_dir, CHECKPOINT_SUBDIR)  # made by the run's first save
        deadline = time.time() + 120
        while not (os.path.isdir(ckpts) and any(f.endswith("_temp") for f in os.listdir(ckpts))):
            if proc.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.002)
    pids = rank_pids(model_dir)
    targets = {"kill rank 0 while it saves": [pids.get(0)], "kill rank 0": [pids.get(0)],
               "kill rank 1": [pids.get(1)], "SIGTERM to the ranks": list(pids.values()),
               "SIGTERM to horovodrun": [proc.pid]}[fault]
    sig = signal.SIGKILL if fault.startswith("kill") else signal.SIGTERM
    hit = False
    for pid in targets:
        try:
            if pid is not None and proc.poll() is None:
                os.kill(pid, sig)
                hit = True
        except ProcessLookupError:  # it ended between the look and the kill
            pass
    return hit


def empty_the_disk(model_dir):
    """Removes the filler of "fill the disk" (after the attempt it stopped)."""
    filler = os.path.join(model_dir, FILLER)
    if os.path.exists(filler):
        os.remove(filler)


def mount_tmpfs(folder, size_bytes):
    """A tmpfs at `folder` (as root), for "fill the disk"; None if it cannot be."""
    if os.geteuid() != 0:
        return "the chaotic run's folder must be a tmpfs of its own, which needs root"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", folder],
                         capture_output=True, text=True)
    return None if res.returncode == 0 else f"mount failed: {res.stderr.strip()}"


def _wait(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "a hang"
