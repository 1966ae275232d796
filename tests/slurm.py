"""A one-node Slurm cluster for the tests: munged, slurmctld and slurmd from
Debian's packages, all state, sockets and logs in a temp dir, on free ports,
found by clients through $SLURM_CONF. Needs root (slurmd runs the jobs' tasks
as their users) and the packages slurmd, slurmctld, slurm-client and munge."""

import os
import shutil
import signal
import subprocess
import time

from helpers import free_ports

DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def unavailable():
    """Why the cluster cannot be made here, or '' if it can."""
    if os.geteuid() != 0:
        return "needs root (slurmd)"
    for path in DAEMONS + ("/usr/sbin/mungekey",):
        if not os.path.exists(path):
            return f"needs {path}: `make install` adds Slurm when run as root"
    for tool in ("sbatch", "srun", "sinfo"):
        if not shutil.which(tool):
            return f"needs {tool} (slurm-client)"
    return ""


class Cluster:
    def __init__(self, workdir, daemon_prefix=(), out_dir=None):
        """`daemon_prefix`: a command that slurmd runs under (and so every job's
        tasks: helpers.reachable_by_all's view); `out_dir`: where the jobs'
        output files go (a folder the jobs' user can write)."""
        self.dir = workdir
        self.prefix = list(daemon_prefix)
        self.out_dir = out_dir or workdir
        self.conf = os.path.join(workdir, "slurm.conf")
        self.env = {**os.environ, "SLURM_CONF": self.conf}
        self.pid_files = [os.path.join(workdir, f"{name}.pid")
                          for name in ("munged", "slurmctld", "slurmd")]

    def __enter__(self):
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _run(self, *cmd):
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, env=self.env)

    def _start(self):
        d = self.dir
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(d, sub))
        key, sock = os.path.join(d, "munge.key"), os.path.join(d, "munge.socket")
        self._run("/usr/sbin/mungekey", "--create", "--keyfile", key, "--force")
        os.chmod(key, 0o600)
        self._run("/usr/sbin/munged", "--force", f"--socket={sock}", f"--key-file={key}",
                  f"--log-file={d}/log/munged.log", f"--pid-file={self.pid_files[0]}",
                  f"--seed-file={d}/munged.seed")
        ctld_port, slurmd_port = free_ports(2)
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=hvdtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=10
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={self.pid_files[1]}
SlurmdPidFile={self.pid_files[2]}
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# A requeued job starts again within 5 s (the defaults: 60 s and 30 s)
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=localhost CPUs={os.cpu_count() or 1} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        self._run("/usr/sbin/slurmctld", "-f", self.conf)
        self._run(*self.prefix, "/usr/sbin/slurmd", "-f", self.conf, "-N", "localhost")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                 env=self.env).stdout.strip()
            if out == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test's Slurm node is not idle after 60 s ({out!r}); "
                           f"logs in {d}/log")

    def submit(self, args, env, cwd=None, prefix=()):
        """Starts `sbatch --wait ARGS` from `cwd` (the job's $SLURM_SUBMIT_DIR),
        under `prefix` (another user's, say)."""
        name = f"job-{time.monotonic_ns()}"
        out = os.path.join(self.out_dir, name + ".out")
        cmd = [*prefix, "sbatch", "--wait", f"--job-name={name}", f"--output={out}", *args]
        proc = subprocess.Popen(cmd, env={**env, "SLURM_CONF": self.conf}, cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        proc.cmd, proc.name, proc.out = cmd, name, out
        return proc

    def output(self, job):
        return self._read(job.out)

    def signal(self, job, name, batch=False):
        """Sends signal `name` to the job's running steps (srun's tasks), as Slurm
        does before a time limit with --signal and at a preemption with GraceTime;
        `batch`: to the batch shell alone, as --signal=B:... does."""
        self._run("scancel", f"--signal={name}", *(["--batch"] if batch else []),
                  f"--name={job.name}")

    def wait(self, job, timeout):
        """Returns (exit code, sbatch's and the job's output); cancels the job and
        fails after `timeout` seconds."""
        try:
            submitted, _ = job.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            subprocess.run(["scancel", "--full", f"--name={job.name}"], env=self.env,
                           capture_output=True)
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate()
            raise AssertionError(f"{' '.join(job.cmd)} still running after {timeout}s "
                                 f"(hang?)\n{self.output(job)[-4000:]}") from None
        return job.returncode, submitted + self.output(job)

    def sbatch(self, args, env, timeout, cwd=None, prefix=()):
        """`sbatch --wait ARGS` to the end: (exit code, output)."""
        return self.wait(self.submit(args, env, cwd, prefix), timeout)

    @staticmethod
    def _read(path):
        try:
            with open(path) as f:
                return f.read()
        except OSError:
            return ""

    def close(self):
        jobs = subprocess.run(["squeue", "-h", "-o", "%A"], env=self.env, capture_output=True,
                              text=True).stdout.split()  # every user's
        if jobs:
            subprocess.run(["scancel", "--full", *jobs], env=self.env, capture_output=True)
        for pid_file in reversed(self.pid_files):
            try:
                with open(pid_file) as f:
                    os.kill(int(f.read().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass
