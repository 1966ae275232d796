"""`python -m hvd_alexnet.tools.horovodrun [horovodrun's arguments]`: Horovod's
horovodrun, with the ranks' exit status and time to checkpoint on a signal.

    python -m hvd_alexnet.tools.horovodrun -np 2 -H localhost:2 --gloo \
        python -m hvd_alexnet train ...

Horovod 0.28.1's horovodrun, under Gloo (--gloo and elastic jobs), exits 1
whatever its ranks' status, so a supervisor cannot tell a run stopped with a
checkpoint (75) from a failure; and when it is signalled itself (SIGTERM,
Ctrl-C) it gives its ranks 5 s from the SIGTERM it passes on to its SIGKILL,
less than a checkpoint can take. This runs Horovod's own launcher in this
process and changes two things:
- the exit status is that of the first rank that failed (75 after a clean
  stop, 3 for bad data, ...), read from Horovod's report, which is printed
  as a line instead of its traceback;
- its ranks get SIGKILL_TIMEOUT seconds (default 60) between the SIGTERM and
  the SIGKILL;
- a rank that stopped on that SIGTERM keeps its status: Horovod runs each
  rank under `/bin/sh -c`, and once the rank has exited it stops (SIGSTOP)
  and terminates that shell at once, so a shell not yet scheduled to exit
  with the rank's 75 died of the SIGTERM instead (143). The shell is now
  given the same grace to end on its own.
With MPI (horovodrun's default where Horovod is built with it), Horovod's
horovodrun replaces itself with `/bin/sh -c "mpirun ..."`: a SIGTERM then ends
that shell and leaves mpirun and the ranks running, and one to mpirun kills the
ranks within a second. Here mpirun runs supervised instead (tools/supervise.py:
the stop passed to every rank, the same SIGKILL_TIMEOUT, no process left); its
status (the first failed rank's) is kept as it is.
"""

import os
import re
import sys
import time

import psutil
from horovod.runner.common.util import safe_shell_exec  # HVD

from hvd_alexnet.tools import supervise

# Set at import: Horovod reads it in the process that runs each rank's shell, a
# process started with multiprocessing's "spawn", which imports this module again.
safe_shell_exec.GRACEFUL_TERMINATION_TIME_S = supervise.grace()
_TERMINATE = safe_shell_exec.terminate_executor_shell_and_children


def _terminate_rank(pid):
    """Horovod's end of a rank's shell `pid` on a signal, except that when the
    rank (the shell's children) ends within the grace, the shell is left to
    exit with its status (its parent, Horovod's middleman, waits for it)."""
    try:
        shell = psutil.Process(pid)
        children = shell.children()
    except psutil.NoSuchProcess:
        return
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    grace = safe_shell_exec.GRACEFUL_TERMINATION_TIME_S
    _, alive = psutil.wait_procs(children, timeout=grace)
    deadline = time.monotonic() + grace
    while not alive and time.monotonic() < deadline:
        try:
            if shell.status() == psutil.STATUS_ZOMBIE:
                return  # exited, its status kept for the middleman's wait
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    _TERMINATE(pid)


# Also set at import, for the same spawned process.
safe_shell_exec.terminate_executor_shell_and_children = _terminate_rank
FAILED = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")


def status_of(error):
    """(exit status, the rank's name) from Horovod's report of the first rank
    that failed, or None if `error` is not such a report."""
    found = FAILED.search(str(error))
    if not found:
        return None
    code = int(found.group(2))
    return (128 - code if code < 0 else code if 0 < code < 256 else 1), found.group(1)


def _mpirun_supervised(execve):
    """os.execve as horovodrun's MPI mode calls it (`/bin/sh -c "mpirun ..."`),
    made to run mpirun supervised in this process and exit with its status."""
    def run(path, args, env):
        if path != "/bin/sh" or args[:2] != ["/bin/sh", "-c"] or \
                not args[2].startswith("mpirun "):
            return execve(path, args, env)
        sys.exit(supervise.run(["/bin/sh", "-c", "exec " + args[2]], env))
    return run


def main(argv=None):
    from horovod.runner import launch  # HVD
    sys.argv = ["horovodrun", *(sys.argv[1:] if argv is None else argv)]
    os.execve = _mpirun_supervised(os.execve)
    try:
        launch.run_commandline()
    except RuntimeError as e:
        outcome = status_of(e)
        if outcome is None:
            raise
        code, name = outcome
        print(f"horovodrun: process {name} exited first, with status {code} (Process name: "
              f"{name}, Exit code: {code}); the job's status is {code}", file=sys.stderr,
              flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
