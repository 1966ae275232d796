"""A stand-in for the 2-rank training job that the chaos harness drives, with
no TensorFlow and no Horovod, so that the harness's scheduling and injection
can be tested for many seeds in seconds (tests/test_chaos.py).

    python tests/fake_job.py launch MODEL_DIR STEPS   # what horovodrun would be
    python tests/fake_job.py rank MODEL_DIR STEPS     # one rank (HOROVOD_RANK=r)

Like the trainer, rank 0 logs each step to MODEL_DIR/dllogger.json, saves
MODEL_DIR/checkpoints/ckpt-N (written as ckpt-N_temp, then renamed) every 10
steps, resumes from the newest complete one, removes torn saves, stops at a
step boundary with a save and exit 75 on SIGTERM, and ends with a summary whose
"weights" are a hash of every step applied since step 0: a step lost or
applied twice changes it. The launcher ends the job when a rank fails.
"""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hvd_alexnet.metrics_log import LOG_FILE, MetricsLog  # noqa: E402

STEP_SECONDS, SAVE_SECONDS, SAVE_EVERY = 0.005, 0.05, 10


def launch(model_dir, steps):
    for r in range(2):  # the ranks say when they are up (see rank())
        if os.path.exists(up(model_dir, r)):
            os.remove(up(model_dir, r))
    ranks = [subprocess.Popen([sys.executable, __file__, "rank", model_dir, steps],
                              env={**os.environ, "HOROVOD_RANK": str(r)}) for r in range(2)]
    signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in ranks])
    while True:
        codes = [p.poll() for p in ranks]
        failed = [c for c in codes if c not in (None, 0)]
        if failed or all(c == 0 for c in codes):
            for p in ranks:  # as horovodrun does: a failed rank ends the others
                if p.poll() is None:
                    if failed[0] != 75:
                        p.kill()
                    p.wait(timeout=5)  # gone before the job ends, as horovodrun's are
            return failed[0] if failed else 0
        time.sleep(0.01)


def up(model_dir, rank):
    return os.path.join(model_dir, f".rank-{rank}-up")


def rank(model_dir, steps):
    me = int(os.environ["HOROVOD_RANK"])
    ckpts = os.path.join(model_dir, "checkpoints")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    # As the trainer's ranks join before their first step (a collective), rank 0
    # logs no step before every rank is up with its handler: a signal sent after a
    # logged step finds every rank ready for it.
    open(up(model_dir, me), "w").close()
    deadline = time.time() + 60
    while me == 0 and not all(os.path.exists(up(model_dir, r)) for r in range(2)):
        if time.time() > deadline:
            return 1
        time.sleep(0.005)
    done = sorted(int(n[5:]) for n in os.listdir(ckpts) if not n.endswith("_temp")) \
        if os.path.isdir(ckpts) else []
    step, digest = (done[-1], open(os.path.join(ckpts, f"ckpt-{done[-1]}", "w")).read()) \
        if done else (0, "")
    if me == 0 and os.path.isdir(ckpts):
        for torn in [n for n in os.listdir(ckpts) if n.endswith("_temp")]:
            shutil.rmtree(os.path.join(ckpts, torn))
    log = MetricsLog(os.path.join(model_dir, LOG_FILE), enabled=me == 0)

    def save():
        time.sleep(SAVE_SECONDS)
        if me == 0:
            temp = os.path.join(ckpts, f"ckpt-{step}_temp")
            os.makedirs(temp)
            with open(os.path.join(temp, "w"), "w") as f:
                f.write(digest)
            time.sleep(SAVE_SECONDS)
            os.rename(temp, os.path.join(ckpts, f"ckpt-{step}"))

    while step < steps:
        time.sleep(STEP_SECONDS)
        step += 1
        digest = hashlib.sha256(f"{digest}:{step}".encode()).hexdigest()[:16]
        log.log([0, step], {"loss": 1.0}, echo=False)
        if stop:
            save()
            settle()
            return 75
        if step % SAVE_EVERY == 0:
            save()
    settle()
    log.log([], {"steps": step, "weights_digest": digest}, echo=False)
    return 0


def settle():
    """As the trainer's ranks do once their last checkpoint is written
    (signals.StopRequest.settle): a signal from here on changes nothing. Python
    puts back the default action of its handled signals while it exits, so a
    SIGTERM then would end the rank with -15 instead of its status."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    role, model_dir, steps = sys.argv[1:4]
    sys.exit(launch(model_dir, steps) if role == "launch" else rank(model_dir, int(steps)))
