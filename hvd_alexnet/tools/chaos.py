"""The chaos run (`make chaos`): faults injected at random into a 2-rank job.

    python -m hvd_alexnet.tools.chaos --data_dir data/demo --work_dir runs/chaos [--faults 6]

Trains the demo configuration (deterministic, checkpoints every 10 steps) twice
under `horovodrun --gloo`: once without interruption, once while ranks are
killed (SIGKILL, also in the middle of a checkpoint save) and the job is
preempted (SIGTERM to the ranks or to horovodrun) at random moments, restarting
each time from the model directory. Prints the faults, restarts, steps lost
and repeated, and whether the final weights equal the uninterrupted run's.

    python -m hvd_alexnet.tools.chaos --elastic --data_dir data/demo --work_dir runs/chaos

--elastic: the same two runs as elastic jobs (bin/run_train_alexnet_elastic.sh)
on two hosts of one rank each (localhost and 127.0.0.1 to Horovod's driver),
never restarted: hosts are lost (taken out of the discovery file, their rank
killed) and given back, or a rank is killed on a host that stays. Prints the
changes of membership, the steps rolled back, and the final steps and
accuracy beside the undisturbed run's (within 0.01 top-1 to pass).
"""

import os
import random
import signal
import subprocess
import sys
import time

from absl import flags

from hvd_alexnet import checkpoint, command, metrics_log
from hvd_alexnet.checkpoint import SUBDIR as CHECKPOINT_SUBDIR
from hvd_alexnet.tools import chaos_faults
from hvd_alexnet.tools.chaos_faults import BY_NAME, CLASSIC, MODEL_FOLDER, rank_pids
from hvd_alexnet.tools.chaos_faults import steps as _steps
from hvd_alexnet.tools.launch import (
    ELASTIC_HOSTS,
    ROOT,
    elastic_job,
    elastic_ranks,
    job_command,
    write_hosts,
)

FAULTS = tuple(f.name for f in CLASSIC + MODEL_FOLDER)
ATTEMPT_TIMEOUT = 900  # seconds; an attempt that runs longer counts as a hang
ELASTIC_FAULTS = ("lose rank 1's host", "lose rank 0's host", "kill rank 1, its host kept")
ELASTIC_TIMEOUT = 3600  # seconds for a whole elastic run
TOP1_TOLERANCE = 0.01  # an elastic run's final top-1 beside the undisturbed run's


def _start(model_dir, args):
    cmd = job_command(["-m", "hvd_alexnet", "train", *args, f"--model_dir={model_dir}"], 2,
                      "gloo")
    with open(model_dir + ".log", "a") as log:  # the job keeps its own copy of the handle
        return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _finish(proc, timeout=ATTEMPT_TIMEOUT):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SystemExit(f"chaos: an attempt ran longer than {timeout}s: a hang") from None


def schedule(rng, kinds, faults):
    """Every kind of fault once (in random order) before any kind twice."""
    return [f for _ in range(faults // len(kinds) + 1) for f in rng.sample(kinds, len(kinds))]


class Chaos:
    """The disturbed run: its faults in order, what was injected, the attempts'
    exit statuses and whether each was the one its fault should give."""

    def __init__(self, order, faults, start, args, model_dir, gap):
        self.order, self.faults, self.start, self.args = order, faults, start, args
        self.dir, self.gap, self.next = model_dir, gap, 0
        self.injected, self.codes, self.wrong = [], [], []

    def due(self):
        return BY_NAME[self.order[self.next]] if self.next < self.faults else None

    def took(self, fault):
        self.injected.append(fault)
        self.next += 1
        at = f" (step {max(chaos_faults.steps(self.dir) or [0])})"
        print(f"chaos: fault {len(self.injected)}: {fault}{at}", flush=True)

    def attempt(self, rng):
        """One start of the job, with the faults due that it can take; returns its
        exit status."""
        checks = []
        while self.due() and self.due().when == chaos_faults.BEFORE:
            step = chaos_faults.before(self.due().name, self.dir)
            if step is False:  # too few checkpoints yet: after the next fault
                later = next((i for i in range(self.next + 1, len(self.order))
                              if BY_NAME[self.order[i]].when != chaos_faults.BEFORE), None)
                if later is None:
                    break
                self.order.insert(later, self.order.pop(self.next))
                continue
            checks.append((self.due().name, step))
            self.took(self.due().name)
        ending, extra = None, []
        if self.due() and self.due().when == chaos_faults.IN_FLAGS:
            ending, extra = self.due(), list(chaos_faults.NAN_FLAGS)
            self.took(ending.name)
        proc = self.start(self.dir, [*self.args, *extra])
        if not ending and self.due() and self.due().when == chaos_faults.AT_START:
            if chaos_faults.at_start(proc, self.dir):
                ending = self.due()
                self.took(ending.name)
        while not ending and self.due() and self.due().when == chaos_faults.WHILE:
            fault = self.due()
            hit = chaos_faults.while_training(proc, self.dir, fault.name, rng.randint(*self.gap),
                                              lambda: self.start(self.dir, self.args))
            if hit is False:
                break  # its moment did not come: the next attempt tries again
            self.took(fault.name)
            if hit is not True:
                self.wrong.append(f"{fault.name}: {hit}")
            if fault.status:
                ending = fault
        code = _finish(proc)
        chaos_faults.empty_the_disk(self.dir)
        if ending and ending.name == "fill the disk" and code == 0:  # no save came after it
            self.injected.pop()
            self.next -= 1
            print("chaos: fill the disk: the run ended before its next save; not counted")
            ending = None
        for name, step in checks:
            ok, what = chaos_faults.check_before(name, self.dir, step)
            if not ok:
                self.wrong.append(f"{name}: {what}")
        # A fault that lands as the run ends (its summary written) changes nothing: the
        # status is then the run's own, or the signal's during the process's exit.
        finished = bool(metrics_log.step_records(metrics_log.run_records(self.dir), 0))
        expected = (ending.status_ok(code) or finished) if ending else code == 0
        if not expected:
            self.wrong.append(f"{ending.name if ending else 'no fault'}: exit status {code}, "
                              f"want {ending.status if ending else 0}")
        self.codes.append(code)
        return code


def run(data_dir, work_dir, faults, seed, extra, start=None, settle=1.0, kinds=None,
        gap=(3, 40), max_restarts=None):
    """Both runs and the verdict (True: the same steps and weights, every exit
    status what its fault should give, within `max_restarts`). `start(model_dir,
    args)` starts one attempt (default: the 2-rank trainer; the tests pass a fake
    job and CLASSIC's faults); `settle`: seconds for a job's ranks to go after it
    ended; `gap`: the range of steps between two faults."""
    rng, start = random.Random(seed), start or _start
    kinds = [f.name for f in (kinds or CLASSIC + MODEL_FOLDER)]
    max_restarts = 3 * faults + 5 if max_restarts is None else max_restarts
    args = ["--flagfile=configs/demo.flags", f"--data_dir={data_dir}", "--deterministic",
            "--noeval", "--log_every=1", "--checkpoint_every_steps=10", *extra]
    straight, chaotic = os.path.join(work_dir, "straight"), os.path.join(work_dir, "chaos")
    for d in (straight, chaotic):
        if os.path.exists(d):
            raise SystemExit(f"chaos: {d} exists; use a new --work_dir")
        os.makedirs(d)
    print(f"chaos: uninterrupted run in {straight} ...", flush=True)
    if _finish(start(straight, args)) != 0:
        raise SystemExit(f"chaos: the uninterrupted run failed; see {straight}.log")
    disk = None
    if "fill the disk" in kinds:  # the chaotic run's folder, a tmpfs of its own
        keep = 3  # --keep_checkpoints' default; a save writes one more before it deletes
        why = chaos_faults.mount_tmpfs(chaotic, _checkpoint_bytes(straight) * (keep + 2) +
                                       (64 << 20))
        if why:
            print(f"chaos: fill the disk left out: {why}", flush=True)
            kinds.remove("fill the disk")
        else:
            disk = chaotic
    chaos = Chaos(schedule(rng, kinds, faults), faults, start, args, chaotic, gap)
    restarts, gave_up = 0, False
    try:
        while True:
            code = chaos.attempt(rng)
            time.sleep(settle)
            left = rank_pids(chaotic)
            if left:
                raise SystemExit(f"chaos: ranks {sorted(left)} still running after the job ended")
            if code == 0:  # done (a fault due after the end of the run is not injected)
                break
            restarts += 1
            if restarts > max_restarts:
                gave_up = True
                break
        return report(straight, chaotic, chaos, restarts, faults, kinds, gave_up, max_restarts)
    finally:
        if disk:
            subprocess.run(["umount", "-l", disk])


def _checkpoint_bytes(model_dir):
    directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    found = checkpoint.on_disk(directory)
    newest = max(found)
    return sum(os.path.getsize(os.path.join(directory, n)) for n in found[newest])


def report(straight, chaotic, chaos, restarts, wanted, kinds, gave_up, max_restarts):
    summary = lambda d: metrics_log.step_records(metrics_log.read(
        os.path.join(d, metrics_log.LOG_FILE)), length=0)[-1]["data"]
    want = summary(straight)
    got = summary(chaotic) if not gave_up else {"steps": None, "weights_digest": None}
    steps, injected = _steps(chaotic), chaos.injected
    same = got["weights_digest"] == want["weights_digest"] and got["steps"] == want["steps"]
    lines = [
        f"faults injected:   {len(injected)} of {wanted} ({', '.join(injected)})"
        + (f"; {wanted - len(injected)} not: the run ended before their moment"
           if len(injected) < wanted else ""),
        "by kind:           " + ", ".join(f"{kind} x {injected.count(kind)}" for kind in kinds),
        f"restarts:          {restarts} of at most {max_restarts} (exit statuses {chaos.codes})"
        + (": GAVE UP" if gave_up else ""),
        "exit statuses:     " + ("each what its fault should give" if not chaos.wrong else
                                 "WRONG: " + "; ".join(chaos.wrong)),
        f"steps:             {got['steps']} of {want['steps']} "
        f"(lost: {want['steps'] - (got['steps'] or 0)})",
        f"steps repeated:    {len(steps) - len(set(steps))} (run again after a fault)",
        f"final weights:     {got['weights_digest']} vs uninterrupted "
        f"{want['weights_digest']}: {'MATCH' if same else 'DIFFER'}",
    ]
    print("\n".join(["chaos: result"] + lines), flush=True)
    return same and not chaos.wrong and not gave_up


def _changes(model_dir):
    """The ranks after each change of membership so far."""
    return [r["data"]["elastic_ranks"] for r in metrics_log.run_records(model_dir)
            if "elastic_ranks" in r["data"]]


def _wait(proc, predicate, timeout=600):
    deadline = time.time() + timeout
    while not predicate():
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


def _inject_elastic(proc, model_dir, hosts_file, fault, after_steps):
    """Waits `after_steps` more steps, injects `fault`, gives a lost host back once
    the job has shrunk, and waits until it runs on both hosts again. Returns False
    if the job ended first."""
    target = len(_steps(model_dir)) + after_steps
    if not _wait(proc, lambda: len(_steps(model_dir)) >= target):
        return False
    live, changes = elastic_ranks(hosts_file, model_dir), len(_changes(model_dir))
    if len(live) < 2:
        return False
    by_rank = sorted(live, key=lambda h: not live[h][1])  # rank 0's host first
    host = by_rank[0] if fault == "lose rank 0's host" else by_rank[1]
    if fault.startswith("lose"):
        write_hosts(hosts_file, [h for h in ELASTIC_HOSTS if h != host])
    os.kill(live[host][0], signal.SIGKILL)
    if not _wait(proc, lambda: len(_changes(model_dir)) > changes):
        return False
    write_hosts(hosts_file, ELASTIC_HOSTS)  # the host is back
    return _wait(proc, lambda: _changes(model_dir)[-1] == 2 and len(
        elastic_ranks(hosts_file)) == 2)


def run_elastic(data_dir, work_dir, faults, seed, extra):
    """Both elastic runs and the verdict (True: the same steps, and top-1 within
    TOP1_TOLERANCE of the undisturbed run's)."""
    rng = random.Random(seed)
    order = schedule(rng, ELASTIC_FAULTS, faults)
    args = ["--flagfile=configs/demo.flags", f"--data_dir={data_dir}", "--log_every=1",
            "--eval_every_epochs=0", "--elastic_commit_every=10", *extra]
    runs = {}
    for name in ("straight", "chaos"):
        model_dir = os.path.join(work_dir, name)
        if os.path.exists(model_dir):
            raise SystemExit(f"chaos: {model_dir} exists; use a new --work_dir")
        os.makedirs(model_dir)
        hosts_file = os.path.join(work_dir, f"{name}.hosts")
        write_hosts(hosts_file, ELASTIC_HOSTS)
        cmd, env = elastic_job(hosts_file, model_dir, args)
        print(f"chaos: {'undisturbed' if name == 'straight' else 'disturbed'} elastic run in "
              f"{model_dir} ...", flush=True)
        with open(model_dir + ".log", "a") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        injected = []
        while name == "chaos" and len(injected) < faults:
            fault = order[len(injected)]
            if not _inject_elastic(proc, model_dir, hosts_file, fault, rng.randint(3, 40)):
                break
            injected.append(fault)
            print(f"chaos: fault {len(injected)}: {fault} (step {max(_steps(model_dir))}); "
                  f"ranks since: {_changes(model_dir)[-2:]}", flush=True)
        runs[name] = (_finish(proc, ELASTIC_TIMEOUT), model_dir, injected)
    return report_elastic(runs, faults)


def _rolled_back(model_dir):
    """Steps trained after the last commit before each change (trained again)."""
    lost, since = 0, 0
    for r in metrics_log.run_records(model_dir):
        if "elastic_commit_examples" in r["data"]:
            since = 0
        elif "elastic_ranks" in r["data"]:
            lost, since = lost + since, 0
        elif "loss" in r["data"]:
            since += 1
    return lost


def report_elastic(runs, wanted):
    (code0, straight, _), (code, chaotic, injected) = runs["straight"], runs["chaos"]
    if code0 != 0:
        raise SystemExit(f"chaos: the undisturbed run failed; see {straight}.log")
    want = metrics_log.run_summary(straight)
    got = metrics_log.run_summary(chaotic) if code == 0 else {}
    top1_ok = got and abs(got["top1"] - want["top1"]) <= TOP1_TOLERANCE
    lines = [
        f"faults injected:   {len(injected)} of {wanted} ({', '.join(injected)})",
        "by kind:           " + ", ".join(f"{k} x {injected.count(k)}" for k in ELASTIC_FAULTS),
        f"restarts by hand:  0; the job's exit status {code}",
        f"ranks after each change: {_changes(chaotic)}",
        f"steps rolled back: {_rolled_back(chaotic)} (trained after the last commit before a "
        f"change, trained again)",
        f"steps:             {got.get('steps')} of {want['steps']}; examples seen "
        f"{got.get('examples_seen')} of {want['examples_seen']}",
        f"final top-1:       {got.get('top1', float('nan')):.4f} vs undisturbed "
        f"{want['top1']:.4f}: {'WITHIN' if top1_ok else 'NOT WITHIN'} {TOP1_TOLERANCE}",
    ]
    print("\n".join(["chaos: result (elastic)"] + lines), flush=True)
    return bool(top1_ok) and got["steps"] == want["steps"]


FLAGS = flags.FlagValues()
d = command.definers(FLAGS)
d.string("data_dir", "data/demo", "The demo dataset.")
d.string("work_dir", None, "Where both runs go (default: runs/chaos-DATE-TIME).")
d.integer("faults", 6, "Faults to inject.")
d.integer("seed", None, "Seed of the fault schedule (default: a random one, printed).")
d.bool("elastic", False, "Elastic jobs on two hosts, never restarted (see above).")


def main(argv=None):
    extra = command.parse(FLAGS, sys.argv[1:] if argv is None else argv, "tools.chaos",
                          __doc__, positional=("TRAIN_FLAG...",), at_least=0)
    work_dir = FLAGS.work_dir or f"runs/chaos-{time.strftime('%Y%m%d-%H%M%S')}"
    seed = FLAGS.seed if FLAGS.seed is not None else random.randrange(1 << 30)
    print(f"chaos: seed {seed}, {FLAGS.faults} faults, work dir {work_dir}", flush=True)
    go = run_elastic if FLAGS.elastic else run
    return 0 if go(FLAGS.data_dir, os.path.abspath(work_dir), FLAGS.faults, seed, extra) else 1


if __name__ == "__main__":
    sys.exit(main())
