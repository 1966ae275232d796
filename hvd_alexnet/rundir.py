"""The model folder (--model_dir) as one run's own: a lock held by the job that
trains into it, and the record of the settings the run was started with.

- MODEL_DIR/job.lock: taken by rank 0 before anything in the folder is read or
  written, refreshed every LOCK_REFRESH seconds, removed at the end. A second
  job gets one line naming the holder (host, pid, start time) and exits 2. A
  lock is stale, and taken over with a line, when its holder is gone: on this
  host, its process is no longer running; on another host, the file system
  shows no refresh of it while this job watches for LOCK_WATCH seconds (its
  own clock against the file's changes, never against the file's time: NFS
  servers' and hosts' clocks differ, and a paused job's lock is old). A lock of
  this same job is taken over at once where the launcher names the job
  (horovodrun's rendezvous, mpirun's, the PMIx namespace: an elastic job's new
  rank 0, a requeued srun step); Slurm's job id alone is shared by every
  process of an allocation, so there the holder must be gone too. Before each
  save the holder checks that the lock is still its own: one that lost it
  stops with exit 2 and writes nothing more. Made by hard-linking a complete
  file into place, which is atomic on NFS too.
- MODEL_DIR/run.json: what shapes the weights and the optimizer (a change
  cannot resume: exit 2 naming the flag) and what shapes the schedule (a change
  can resume: one line says what changed and what it does to the schedule).

Knows nothing of Horovod: the trainer runs it on rank 0 and shares the outcome.
"""

import dataclasses
import datetime
import json
import os
import socket
import threading
import time
import uuid

from hvd_alexnet import files
from hvd_alexnet.errors import UsageError

RESUME_VARIABLE = "HVD_ALEXNET_RESUME"  # the exact command that resumes (make, bin/ set it)
LOCK_FILE = "job.lock"
# Seconds between the holder's touches of the lock (HVD_ALEXNET_LOCK_REFRESH: tests
# shorten it); a job watches another host's lock 2.5 times that for a touch.
LOCK_REFRESH = float(os.environ.get("HVD_ALEXNET_LOCK_REFRESH", 30.0))
LOCK_WATCH = 2.5 * LOCK_REFRESH
SLURM_JOB = "slurm job "  # job_id's prefix when Slurm's job id is all that names the job
RECORD_FILE = "run.json"


def how_to_resume(env=None):
    """'run `COMMAND` to resume' with the exact command where the launch script or
    make told it (HVD_ALEXNET_RESUME), else 'run the same command again to resume'."""
    command = (os.environ if env is None else env).get(RESUME_VARIABLE)
    return f"run `{command}` to resume" if command else "run the same command again to resume"


def job_id(env=None):
    """What names this job across its ranks and restarts, from its launcher:
    horovodrun's rendezvous, mpirun's, srun's PMIx namespace (the same after a
    requeue), else Slurm's job id; None for a process started by hand."""
    env = os.environ if env is None else env
    if env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR"):
        return (f"horovodrun {env['HOROVOD_GLOO_RENDEZVOUS_ADDR']}:"
                f"{env.get('HOROVOD_GLOO_RENDEZVOUS_PORT', '')}")
    for name in ("OMPI_MCA_orte_hnp_uri", "PMIX_NAMESPACE"):
        if env.get(name):
            return f"{name} {env[name]}"
    return f"{SLURM_JOB}{env['SLURM_JOB_ID']}" if env.get("SLURM_JOB_ID") else None


def _process_start(pid):
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, started):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return started is None or _process_start(pid) in (None, started)


class Lock:
    """This process's hold on a model folder (rank 0's)."""

    def __init__(self, model_dir, say=print, env=None):
        self.path, self.say = os.path.join(model_dir, LOCK_FILE), say
        self.mine = {"host": socket.gethostname(), "pid": os.getpid(),
                     "pid_start": _process_start(os.getpid()), "job": job_id(env),
                     "started": datetime.datetime.now().isoformat(timespec="seconds"),
                     "token": uuid.uuid4().hex}  # this Lock's own: host and pid can repeat
                                                 # (containers with the host's name)
        self._stop, self._thread = threading.Event(), None

    def acquire(self):
        """Takes the folder, or raises UsageError naming the job that holds it."""
        if self.held():
            return self
        for _ in range(3):  # a stale lock taken over, then another try
            if self._link():
                break
            holder, age = self._read()
            why = self._stale(holder, age)
            if not why:
                raise UsageError(self._busy(holder, age))
            self._take_over(holder, why)
        else:
            raise UsageError(f"{self.path}: could not take the lock (another job keeps taking "
                             f"it over)")
        self._thread = threading.Thread(target=self._refresh, name="hvd_alexnet.lock",
                                        daemon=True)
        self._thread.start()
        return self

    def held(self):
        holder, _ = self._read()
        return bool(holder) and holder.get("token") == self.mine["token"]

    def check(self):
        """Before a save: raises UsageError if the lock is no longer this job's
        (another job took the folder over while this one was paused or cut off)."""
        holder, _ = self._read()
        if not holder or holder.get("token") != self.mine["token"]:
            self._stop.set()
            now = f"now {_describe(holder)}'s" if holder else "now gone"
            raise UsageError(
                f"{self.path}: this job no longer holds the model folder's lock ({now}): "
                f"another job took the folder over, as it does when a lock is not refreshed "
                f"for {LOCK_WATCH:.0f} s (was this job paused, or cut off from the file "
                f"system?); stopping without writing anything more")

    def release(self):
        """Removes the lock if it is still this process's."""
        self._stop.set()
        if self.held():
            try:
                os.remove(self.path)
            except OSError:
                pass

    def _link(self):
        """Puts a complete lock file in place unless one is there (atomic)."""
        folder = os.path.dirname(self.path)
        tmp = os.path.join(folder, f".{LOCK_FILE}.{self.mine['host']}.{os.getpid()}")
        files.write_json(tmp, self.mine)
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: create-exclusive instead
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.mine))
            return True
        finally:
            os.remove(tmp)

    def _read(self):
        """(the holder's record or None, seconds since it was refreshed)."""
        age = 0.0
        try:
            age = time.time() - os.stat(self.path).st_mtime
            holder = files.read_json(self.path, ValueError, "")
            return (holder if isinstance(holder, dict) else {}), age
        except FileNotFoundError:
            return None, age
        except (OSError, ValueError):
            return {}, age  # garbled: judged by its age alone

    def _stale(self, holder, age):
        """Why the lock's holder is gone (None: it may be running)."""
        if holder is None:
            return "it was just removed"
        job = self.mine["job"]
        if job and holder.get("job") == job and not job.startswith(SLURM_JOB):
            return "it is this same job's (restarted or re-formed)"
        if holder.get("host") == self.mine["host"] and isinstance(holder.get("pid"), int):
            if not _alive(holder["pid"], holder.get("pid_start")):
                return "its process is no longer running"
            return None
        return self._unrefreshed(holder)

    def _stamp(self):
        """What a refresh changes, as the file system shows it now (open, then
        fstat: NFS revalidates a file's attributes at its open); None if gone."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            return st.st_ino, st.st_mtime_ns
        finally:
            os.close(fd)

    def _unrefreshed(self, holder):
        """Watches another host's lock for LOCK_WATCH seconds of this host's clock:
        why its holder is gone, or None if the lock was refreshed meanwhile."""
        self.say(f"{self.path} is held by {_describe(holder)}, on another host: watching "
                 f"up to {LOCK_WATCH:.0f} s for its refreshes")
        first, deadline = self._stamp(), time.monotonic() + LOCK_WATCH
        while time.monotonic() < deadline:
            time.sleep(min(1.0, LOCK_WATCH / 10))
            now = self._stamp()
            if now is None:
                return "it was just removed"
            if now != first:
                return None
        return f"it was not refreshed in {LOCK_WATCH:.0f} s"

    def _take_over(self, holder, why):
        stale = f"{self.path}.stale.{self.mine['host']}.{os.getpid()}"
        try:
            os.rename(self.path, stale)
        except FileNotFoundError:
            return  # another job took it over first: the next try says who holds it
        try:
            seen = files.read_json(stale, ValueError, "")
        except (OSError, ValueError):
            seen = None
        if seen is not None and holder and seen != holder:  # not the one judged: put it back
            try:
                os.link(stale, self.path)
            except FileExistsError:
                pass
        else:
            self.say(f"taking over {self.path}: left by {_describe(holder)}; {why}")
        os.remove(stale)

    def _busy(self, holder, age):
        folder = os.path.dirname(self.path)
        return (f"--model_dir {folder} is in use by another job: {_describe(holder)}, its lock "
                f"refreshed {age:.0f} s ago ({self.path}). Wait for it to end, or train into "
                f"another --model_dir; if that job is gone, remove the lock")

    def _refresh(self):
        while not self._stop.wait(LOCK_REFRESH):
            try:
                if self.held():
                    os.utime(self.path)
            except OSError:
                pass


def _describe(holder):
    if not holder:
        return "an unreadable lock"
    job = f", {holder['job']}" if holder.get("job") else ""
    return (f"host {holder.get('host')}, pid {holder.get('pid')}, started "
            f"{holder.get('started')}{job}")


# --- the run's record ---------------------------------------------------------
# Flags that shape the weights and the optimizer's state: a checkpoint does not
# restore under another value. (name in the record, how a user changes it)
FIXED = (("image_size", "--image_size"), ("num_classes", "--num_classes (or the data's "
                                                          "metadata.json)"),
         ("loss_scale", "--precision=fp16 or --fp16_allreduce (a float16 loss scale in the "
                        "optimizer)"))
# What shapes the schedule: a change resumes, and is said.
CHANGES = (("ranks", "ranks"), ("global_batch", "global batch"),
           ("data_dir", "--data_dir"), ("train_examples", "training examples"),
           ("steps_per_epoch", "steps per epoch"), ("total_steps", "total steps"),
           ("epochs", "--epochs"), ("max_steps", "--max_steps"), ("base_lr", "--base_lr"),
           ("lr_schedule", "--lr_schedule"), ("warmup_epochs", "--warmup_epochs"),
           ("lr_decay_epochs", "--lr_decay_epochs"), ("lr_decay_factor", "--lr_decay_factor"),
           ("precision", "precision"))


# What a resume computes with: each must be there, of this type.
SHAPE = (("total_steps", int), ("global_batch", int), ("schedule", dict))


def _shape_problem(values):
    """What is wrong with the shape of a parsed run.json, or None."""
    if not isinstance(values, dict):
        return f"a JSON {type(values).__name__}, not an object"
    for key, kind in SHAPE:
        if not isinstance(values.get(key), kind) or isinstance(values.get(key), bool):
            return f"{key!r} is {values.get(key)!r}, not a {kind.__name__}"
    return None


@dataclasses.dataclass(frozen=True)
class Record:
    """A run's settings at one start (MODEL_DIR/run.json)."""

    values: dict

    @classmethod
    def of(cls, **values):
        """A record of these values, as JSON keeps them (tuples become lists)."""
        return cls(json.loads(json.dumps(values)))

    @classmethod
    def read(cls, model_dir):
        """The record of the run's last start, or None (a new run, or a run from
        before records were kept)."""
        path = os.path.join(model_dir, RECORD_FILE)
        if not os.path.exists(path):
            return None
        way_out = "remove it (the next start writes it again), then run the same command again"
        values = files.read_json(path, UsageError, way_out)
        problem = _shape_problem(values)
        if problem:
            raise UsageError(f"{path} is not a run's record ({problem}): {way_out}")
        return cls(values)

    def write(self, model_dir):
        files.write_json(os.path.join(model_dir, RECORD_FILE), self.values)

    def refusal(self, new, model_dir):
        """The line that refuses to resume under `new` (a Record), or None."""
        for key, flag in FIXED:
            old, now = self.values.get(key), new.values.get(key)
            if old is not None and old != now:
                return (f"{flag}: the run in {model_dir} was started with {old}, now {now}: "
                        f"its checkpoints do not fit the model or optimizer this makes; "
                        f"resume with the run's setting, or train afresh in another "
                        f"--model_dir")
        return None

    def finished(self, seen):
        """Whether `seen` examples are the end of the run this record started."""
        return seen >= self.values["total_steps"] * self.values["global_batch"]

    def changes(self, new):
        """'ranks 2 -> 1, global batch 8 -> 4' for what differs, or ''."""
        shown = lambda v: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
        return ", ".join(f"{label} {shown(self.values[key])} -> {shown(new.values.get(key))}"
                         for key, label in CHANGES
                         if key in self.values and self.values[key] != new.values.get(key))
