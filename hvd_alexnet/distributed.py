"""The module that talks to Horovod (with elastic.py, its elastic mode).
Everything else gets a `Dist` object.

Launch: `horovodrun -np N python -m hvd_alexnet train ...` or
`mpirun -np N python -m hvd_alexnet train ...`; a plain `python -m ...` is one rank.
"""

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time

import tensorflow as tf

from hvd_alexnet import affinity, errors
from hvd_alexnet.errors import UsageError
from hvd_alexnet.watchdog import Watchdog

# Horovod's variables that are numbers (this module reads the first; Horovod's C++
# reads them all at init, and takes "60s" as 60 or a word as 0 without a word).
NUMERIC_VARIABLES = ("HOROVOD_STALL_CHECK_TIME_SECONDS", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS",
                     "HOROVOD_FUSION_THRESHOLD", "HOROVOD_CYCLE_TIME", "HOROVOD_CACHE_CAPACITY")


def check_variables(env=None):
    """Refuses a Horovod variable set to something other than a number."""
    env = os.environ if env is None else env
    for name in NUMERIC_VARIABLES:
        value = env.get(name)
        if value is None:
            continue
        try:
            if float(value) < 0:
                raise ValueError
        except ValueError:
            raise UsageError(f"{name}={value}: want a number (seconds, bytes or a count, with "
                             f"no unit), e.g. {name}=60") from None


def heartbeat_seconds():
    """How often rank 0 answers the waiting ranks during solo work: well inside
    Horovod's stall warning ($HOROVOD_STALL_CHECK_TIME_SECONDS, 60 by default)."""
    return min(5.0, float(os.environ.get("HOROVOD_STALL_CHECK_TIME_SECONDS", 60)) / 4)


class Dist:
    """This process's place in the job, and the collectives the trainer uses."""

    def __init__(self, hvd, compression, stall_timeout=0, heartbeat=None, device=None):
        self.hvd = hvd
        self.compression = compression
        self.device = device  # this rank's GPU ("/gpu:0" once pinned), None on the CPU
        self.gpu_id = gpu_identity() if device else None  # its PCI bus id
        self.first_step_allowed = 0  # seconds a process's first step may take (0: the timeout)
        self.hosts = []  # every rank's host name, by rank (filled by join)
        self.gpu_ids = []  # every rank's GPU (PCI bus id; None: the CPU), by rank (join)
        self.heartbeat = heartbeat or heartbeat_seconds()
        self._read_place()
        # This rank's deadline on progress (see watchdog.py); started by the trainer.
        self.watchdog = Watchdog(self.rank, stall_timeout)

    def _read_place(self):
        hvd = self.hvd
        self.rank, self.size = hvd.rank(), hvd.size()  # HVD
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()  # HVD
        self.is_root = self.rank == 0

    def join(self):
        """Learns every rank's host and GPU (a collective), and refuses two ranks on
        one GPU; in an elastic job, after each change of membership, also this
        rank's new place."""
        self._read_place()
        self.watchdog.rank = self.rank
        on = self.gpu_id or ("a GPU" if self.device else None)
        places = self.allgather_object((socket.gethostname(), self.gpu_id, on),  # HVD
                                       "hvd_alexnet.hosts")
        check_gpu_identities([(host, gpu) for host, gpu, _ in places])
        self.hosts = [host for host, _, _ in places]
        self.gpu_ids = [device for _, _, device in places]  # None: that rank's is the CPU

    # --- gradients and state -------------------------------------------------
    # One averaging path for every gradient: each rank's share, gradient x 1/N
    # (Horovod's prescale, applied before the reduction), summed (op=Sum). One
    # division, and before the sum: N ranks' float16 sum (--fp16_allreduce)
    # cannot overflow where one rank's gradient fits. Horovod's Average with a
    # prescale of 1/N and a postscale of N is not the same on GPUs: with NCCL
    # 2.10 or later Average is ncclAvg, which divides each input by N again and
    # leaves the postscale undivided, so each float16 gradient was scaled by
    # 1/N^2 before the sum (at 64 ranks, values below 2^-12 flushed to zero).
    def gradient_tape(self, tape):
        """The tape whose gradient() averages over all ranks: the tape's gradients,
        then average() (one all-reduce per gradient, each started when its
        gradient is ready, fused by Horovod). Not Horovod's own tape, whose
        Average cannot take one prescale with op=Sum, and which in an elastic
        job wraps each all-reduce in a tf.cond on the job's size read at run
        time (`make bench` measured 2 ranks at 0.94 of the rate without it)."""
        return _AveragingTape(tape, self)

    def average(self, tensors):
        """The mean over ranks of each tensor: sum of tensor x 1/N (see above),
        fused into buffers by Horovod's background thread (the benchmark times
        this alone)."""
        return [self.hvd.allreduce(t, op=self.hvd.Sum, compression=self.compression,  # HVD
                                   prescale_factor=1.0 / self.size) for t in tensors]

    def broadcast_variables(self, variables):
        """Makes every rank's copy equal to rank 0's (start, and after a restore)."""
        self.hvd.broadcast_variables(variables, root_rank=0)  # HVD

    def broadcast_int(self, value, name):
        return int(self.hvd.broadcast(tf.constant(value, tf.int64), root_rank=0, name=name))  # HVD

    def mean(self, value, name):
        return float(self.hvd.allreduce(tf.constant(value, tf.float32), name=name))  # HVD

    def sum(self, value, name):
        return int(self.hvd.allreduce(tf.constant(value, tf.int64), op=self.hvd.Sum,  # HVD
                                      name=name))

    def mean_vote(self, vote):
        """The mean of every rank's `vote` (signals.StopRequest.vote: 0 none,
        above 0 a stop; under 1 only some ranks signalled). Inside the step it
        fuses with the gradients' all-reduce: Horovod fuses only tensors of the
        same op, dtype and scale factors, so the vote is reduced as a gradient is
        (a float32 vote / N per rank, summed, compressed alike)."""
        return self.hvd.allreduce(tf.cast(vote, tf.float32), op=self.hvd.Sum,  # HVD
                                  compression=self.compression, prescale_factor=1.0 / self.size,
                                  name="hvd_alexnet.stop")

    def allgather_object(self, obj, name):
        return self.hvd.allgather_object(obj, name=name)  # HVD

    # --- rank 0 works alone (a checkpoint) while the others wait --------------
    # A rank blocked in a collective that rank 0 has not joined trips Horovod's
    # stall check (60 s by default). So the waiting ranks sit in a loop of tiny
    # broadcasts that a thread of rank 0 answers every `heartbeat` seconds while
    # its main thread works: the answers do not depend on that work's pace (a
    # first trace, a checkpoint written to a slow file system).
    def alone(self, work, activity):
        """Rank 0 runs `work()` while the other ranks wait, their watchdogs fed by
        its answers. What `work` raises on rank 0 is raised on every rank, of the
        same kind (errors.OUTCOMES) and so with the same exit status and line;
        Returns work()'s result on rank 0, None on the others."""
        if not self.is_root:
            failure = self.wait_for_root(activity)
            if failure:
                kind, message = failure
                raise errors.by_name(kind)(message)
            return None
        self.solo_begin()
        try:
            self.watchdog.beat(activity)
            result = work()
        except Exception as e:  # the waiting ranks exit with the same line
            kind = type(e).__name__ if isinstance(e, errors.OUTCOME_TYPES) else "RuntimeError"
            text = str(e) if kind != "RuntimeError" else f"rank 0: {type(e).__name__}: {e}"
            self.solo_end(failure=(kind, text))  # HVD
            raise
        except BaseException:
            self.solo_abandon()
            raise
        self.solo_end()  # HVD
        return result

    def each_alone(self, work, activity, deadline=0, late=None):
        """Every rank runs its own `work()` (None: nothing to do) in a thread while
        its main thread takes part in a round of tiny all-reduces every
        `heartbeat` seconds, until every rank's work is done: the ranks wait for
        the slowest one (a rank scanning its shards for a bad record) with their
        watchdogs fed, and Horovod's stall check sees them answer. Returns
        work()'s result, and raises what it raised; a rank whose work is not done
        `deadline` seconds in (0: no limit) leaves it and returns `late`."""
        done, outcome, end = threading.Event(), {}, time.monotonic() + deadline

        def run():
            try:
                outcome["result"] = work()
            except BaseException as e:  # noqa: BLE001 - raised in the main thread below
                outcome["error"] = e
            finally:
                done.set()

        if work is None:
            done.set()
        else:
            threading.Thread(target=run, name="hvd_alexnet.each_alone", daemon=True).start()
        while True:
            done.wait(self.heartbeat)
            self.watchdog.beat(activity)
            over = deadline and not done.is_set() and time.monotonic() > end
            if over:
                outcome = {"result": late}  # the thread goes on, a daemon: its result unused
                done.set()
            if not self.sum(0 if done.is_set() else 1, "hvd_alexnet.each_alone"):  # HVD
                break
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    def solo_begin(self):
        """Rank 0: starts answering the waiting ranks."""
        self._beats = None
        if self.is_root and self.size > 1:
            self._beats = _Heartbeat(lambda: self.broadcast_int(0, "hvd_alexnet.solo"),
                                     self.heartbeat)

    def solo_end(self, failure=None):
        """Rank 0's solo work is done, or failed (`failure`: (the errors.py class's
        name, one line saying why))."""
        if self._beats:
            self._beats, beats = None, self._beats
            beats.stop()  # raises what an answer raised (an elastic job's lost rank)
            self.broadcast_int(2 if failure else 1, "hvd_alexnet.solo")
            if failure:
                self.allgather_object(failure, "hvd_alexnet.solo.failure")

    def solo_abandon(self):
        """Rank 0 leaves its solo work on an error of its own: stops answering."""
        if self._beats:
            self._beats, beats = None, self._beats
            beats.stop(reraise=False)

    def wait_for_root(self, activity="checkpointing"):
        """Ranks other than 0: wait until rank 0 calls solo_end(); returns its
        failure (None if it succeeded)."""
        while (done := self.broadcast_int(0, "hvd_alexnet.solo")) == 0:
            self.watchdog.beat(f"waiting for rank 0: {activity}")
        return self.allgather_object(None, "hvd_alexnet.solo.failure")[0] if done == 2 else None


class _AveragingTape:
    """A GradientTape whose gradient() averages over the ranks with Dist.average."""

    def __init__(self, tape, dist):
        self._tape, self._dist = tape, dist

    def gradient(self, target, sources):
        return self._dist.average(self._tape.gradient(target, sources))


class _Heartbeat:
    """Calls `answer` every `seconds` in a thread until stop()."""

    def __init__(self, answer, seconds):
        self._answer, self._seconds, self._error = answer, seconds, None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hvd_alexnet.heartbeat",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stopped.wait(self._seconds):
                self._answer()
        except Exception as e:  # noqa: BLE001 - handed to the main thread by stop()
            self._error = e

    def stop(self, reraise=True):
        """Waits for an answer in flight to finish; re-raises what failed in the thread."""
        self._stopped.set()
        self._thread.join()
        if reraise and self._error is not None:
            raise self._error


def weights_digest(variables):
    """sha256 of the variables' bytes: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for v in variables:
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:16]


# Where each launcher puts this process's place in the job: (rank, local rank, size)
# variables, first match wins. mpirun's come before Slurm's because mpirun inside
# a Slurm allocation also inherits the allocation's SLURM_* variables.
LAUNCHER_VARIABLES = (
    ("horovodrun", "HOROVOD_RANK", "HOROVOD_LOCAL_RANK", "HOROVOD_SIZE"),
    ("mpirun", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMI", "PMI_RANK", "MPI_LOCALRANKID", "PMI_SIZE"),
    ("srun", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_STEP_NUM_TASKS"),
)


def launcher_ranks(env=None):
    """(launcher, rank, local rank, size) as the launcher set them in the
    environment, or None for a process started by hand. Horovod takes its ranks
    from MPI (or horovodrun's Gloo); this is the launcher's side, to check the two agree."""
    env = os.environ if env is None else env
    for name, rank, local, size in LAUNCHER_VARIABLES:
        if env.get(rank, "").isdigit() and env.get(size, "").isdigit():
            local_rank = int(env[local]) if env.get(local, "").isdigit() else None
            return name, int(env[rank]), local_rank, int(env[size])
    return None


def check_gloo_host(env=None):
    """Before hvd.init() under Gloo (horovodrun --gloo): this host's name must
    resolve. Horovod 0.28's Gloo looks it up for every process set's transport
    (whatever the interface), and where getaddrinfo fails it reads an unset
    result: a segmentation fault (139) on every rank, without a word."""
    env = os.environ if env is None else env
    if not env.get("HOROVOD_GLOO_RENDEZVOUS_ADDR"):
        return
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    except OSError as e:
        raise UsageError(f"{name}: this host's name does not resolve ({e.strerror or e}), and "
                         f"Horovod's Gloo (--gloo, GLOO=1) crashes on such a host: add it to "
                         f"/etc/hosts (`127.0.1.1 {name}`, or its address), or launch in MPI "
                         f"mode (without --gloo)") from None


def check_pmi(launched=None, env=None):
    """Before hvd.init(): srun started several tasks but gave them no PMI to find
    each other with (`srun --mpi=none`, or a site default of none), so MPI
    cannot make them one job. Open MPI would abort with a page about how it
    was built; this says what to change in the command."""
    env = os.environ if env is None else env
    launched = launcher_ranks(env) if launched is None else launched
    if launched and launched[0] == "srun" and launched[3] > 1 and not (
            "PMIX_RANK" in env or "PMI_RANK" in env):
        raise UsageError(f"srun started {launched[3]} tasks without a PMI plugin, so they "
                         f"cannot join one Horovod job: run srun --mpi=pmix (`srun --mpi=list` "
                         f"shows the plugins your Slurm has)")


def check_launch(hvd_rank, hvd_size, launched=None):
    """Refuses a job whose launcher started N processes that Horovod sees as N
    separate one-rank jobs (srun without --mpi=pmix, or an MPI without Slurm
    support): each would train alone and overwrite the same checkpoints."""
    launched = launcher_ranks() if launched is None else launched
    if not launched:
        return
    name, rank, _, size = launched
    if (size, rank) != (hvd_size, hvd_rank):
        hint = ("srun needs --mpi=pmix (or the PMI plugin your MPI was built for; "
                "`srun --mpi=list` shows them)" if name == "srun" else
                "the MPI that launched the job must be the one Horovod was built against")
        raise UsageError(f"{name} started this process as rank {rank} of {size}, but Horovod "
                         f"sees rank {hvd_rank} of {hvd_size}: {hint}")


def describe_hosts(hosts, gpu_ids=None):
    """'host1: ranks 0-7 on GPUs 0000:07:00.0, ...; host2: ranks 8-15 on the CPU'
    from every rank's host name and GPU (PCI bus id, None for the CPU), by rank;
    without `gpu_ids`, the hosts alone."""
    by_host = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    parts = []
    for host, ranks in by_host.items():
        contiguous = ranks == list(range(ranks[0], ranks[-1] + 1))
        which = (f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
                 if contiguous else "ranks " + ",".join(map(str, ranks)))
        if gpu_ids:
            on = [gpu_ids[r] for r in ranks]
            which += (" on the CPU" if not any(on) else
                      f" on GPU{'s' if len(on) > 1 else ''} " + ", ".join(g or "CPU" for g in on))
        parts.append(f"{host}: {which}")
    return "; ".join(parts)


def cpu_threads(local_size):
    """Cores this rank may use: its affinity mask if the launcher bound it to a
    subset, else the host's cores divided among the ranks on the host."""
    host = os.cpu_count() or 1
    mine = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else host
    return max(1, mine if mine < host else host // max(1, local_size))


CPU_CYCLE_TIME_MS = 10
# GPU hosts, unless the user set them. Each rank's GPU gets its own threads to launch
# kernels (tf_cnn_benchmarks' --gpu_thread_mode=gpu_private with 2 threads). And
# Horovod's GPU ops complete asynchronously: without it an all-reduce's op ends only
# once its NCCL kernel has run (a host sync), so the eager call of a step returns
# after its last all-reduce and the GPU idles while the host turns around to the
# next step (Horovod's finaliser thread, the executor, Python, the next batch, the
# dispatch). --horovod_timeline turns it off again: Horovod syncs to time each op.
GPU_SETTINGS = {"TF_GPU_THREAD_MODE": "gpu_private", "TF_GPU_THREAD_COUNT": "2",
                "HOROVOD_ENABLE_ASYNC_COMPLETION": "1"}
# TensorFlow's wheels (2.15, 2.18, 2.21) carry no kernels built for Hopper (sm_90) and
# later, only PTX (compute_90): the driver compiles it at the first step, for many
# minutes. Its cache (256 MB by default) cannot hold them all, so each run would
# compile again: 4 GiB (the driver's maximum) keeps them, once per host. Set before
# CUDA starts.
PTX_COMPILED_FROM = (9, 0)
CUDA_CACHE = {"CUDA_CACHE_MAXSIZE": str(4 << 30)}
FIRST_STEP_ALLOWED = 2 * 3600  # seconds the watchdog lets such a first step take


def check_gpus(gpus, local_size):
    """Refuses more ranks on a host than the GPUs they see: ranks would share one
    (local_rank % gpus) and NCCL fail later with "Duplicate GPU detected". One
    visible GPU is each rank's own when the launcher gives every rank its own
    (srun --gpus-per-task=1, CUDA_VISIBLE_DEVICES by rank), so it is allowed."""
    if 1 < gpus < local_size:
        raise UsageError(f"{local_size} ranks on this host but {gpus} GPUs: ranks would share "
                         f"a GPU (NCCL then fails with 'Duplicate GPU detected'); start at most "
                         f"{gpus} ranks per host (horovodrun -H host:{gpus}, slots={gpus} in an "
                         f"mpirun hostfile)")


def idle_gpus(gpus, local_size):
    """A warning where a host has more GPUs than ranks (None otherwise): a
    hostfile line without slots= starts one rank on a host of 8 GPUs."""
    if local_size >= gpus:
        return None
    return (f"{gpus} GPUs but {local_size} rank(s) on this host: {gpus - local_size} GPU(s) "
            f"idle (one rank per GPU: slots={gpus} in an mpirun hostfile, -H host:{gpus} "
            f"for horovodrun, --ntasks-per-node={gpus} under Slurm)")


def gpu_identity():
    """The PCI bus id of this process's GPU (the one it pinned), from TensorFlow's
    description of the device: what tells two ranks' GPUs apart, where their
    names do not (with one GPU visible per rank, every rank's is GPU:0)."""
    from tensorflow.python.client import device_lib
    for device in device_lib.list_local_devices():
        if device.device_type == "GPU":
            return pci_bus_id(device.physical_device_desc)
    return None


def pci_bus_id(description):
    """'0000:3b:00.0' from a device description ('device: 0, name: NVIDIA A100-SXM4-40GB,
    pci bus id: 0000:3b:00.0, compute capability: 8.0'); None if it names none."""
    found = re.search(r"pci bus id: ([0-9a-fA-F:.]+)", description or "")
    return found.group(1).lower() if found else None


def check_gpu_identities(places):
    """Refuses ranks on one host that use the same GPU (`places`: (host, PCI bus
    id or None) by rank): one CUDA_VISIBLE_DEVICES exported to every rank passes
    the start-up's count and fails later in NCCL ("Duplicate GPU detected")."""
    by_gpu = {}
    for rank, (host, gpu) in enumerate(places):
        if gpu:
            by_gpu.setdefault((host, gpu), []).append(rank)
    shared = [(host, gpu, ranks) for (host, gpu), ranks in by_gpu.items() if len(ranks) > 1]
    if shared:
        raise UsageError("; ".join(
            f"ranks {', '.join(map(str, ranks))} on {host} use the same GPU (PCI {gpu})"
            for host, gpu, ranks in shared) + ": each rank needs its own (is one "
            "CUDA_VISIBLE_DEVICES set for every rank? leave it unset, or give each rank its own: "
            "srun --gpus-per-task=1)")


def built_kernels():
    """The GPU architectures this TensorFlow's CUDA kernels were built for, as its
    build says ('sm_80', ..., 'compute_90' for PTX); [] when it does not say."""
    return list(tf.sysconfig.get_build_info().get("cuda_compute_capabilities") or [])


def compiles_at_first_step(capability, built=()):
    """Whether a GPU of this compute capability (major, minor) runs TensorFlow's
    kernels only after the driver compiles them: no kernel for its major version
    at or below its minor (sm_80's run on 8.6), where `built` (built_kernels())
    says; else, Hopper and later."""
    if not capability:
        return False
    major, minor = capability
    if any(arch.startswith("sm_") for arch in built):
        return not any(arch.startswith("sm_") and int(arch[3:-1]) == major and
                       int(arch[-1]) <= minor for arch in built)
    return tuple(capability) >= PTX_COMPILED_FROM


def set_unless_set(values, env=None):
    """The user's own settings win."""
    env = os.environ if env is None else env
    for name, value in values.items():
        env.setdefault(name, value)


def init(fusion_threshold_mb=None, cycle_time_ms=None, fp16_allreduce=False, threads=0,
         timeline=None, stall_timeout=0, heartbeat=None, elastic=False, join=True, cpu=None,
         bind_cpus=True):
    """hvd.init(), then pin a GPU by local rank (memory growth on) or divide the CPU.

    Must run before TensorFlow executes anything: thread counts and visible
    devices cannot change afterwards. `stall_timeout`: the rank's deadline on
    progress (0: none); `heartbeat`: seconds between rank 0's answers to the
    waiting ranks (default: heartbeat_seconds()). Returns (Dist, threads per
    rank). `elastic`: for horovodrun's elastic mode. `join=False`: no collective
    runs here (an elastic job's first one is its state's sync): the caller runs
    Dist.join(). `cpu`: True computes on the CPU (GPUs hidden), False refuses a
    host whose nvidia-smi lists GPUs that TensorFlow does not see (a silent
    CPU), None neither (the tools that report on the host). `bind_cpus`: on a GPU,
    the rank's threads on its GPU's socket's CPUs (affinity.py).
    """
    check_variables()
    # Flags win over Horovod's environment variables; both are read at init.
    if fusion_threshold_mb is not None:
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(fusion_threshold_mb * (1 << 20)))
    set_unless_set(CUDA_CACHE)
    if cpu:
        tf.config.set_visible_devices([], "GPU")
    gpus = [] if cpu else tf.config.list_physical_devices("GPU")
    if cpu is False and not gpus:
        refuse_silent_cpu()
    if gpus:
        set_unless_set(GPU_SETTINGS)
    if cycle_time_ms is None and "HOROVOD_CYCLE_TIME" not in os.environ and not gpus:
        # On CPU hosts Horovod's background thread, waking every 1 ms to negotiate,
        # takes cores the ranks compute on. 2 ranks x 1 core, 227x227, batch 32,
        # 3 alternating runs each: 29.0 images/s at 1 ms, 30.6 at 10 ms (+5%);
        # a CPU step lasts about a second, so the added latency does not matter.
        cycle_time_ms = CPU_CYCLE_TIME_MS
    if cycle_time_ms is not None:
        os.environ["HOROVOD_CYCLE_TIME"] = str(cycle_time_ms)
    if elastic:
        # Horovod 0.28's response cache goes out of step between a rank that kept
        # it across a re-forming and one that joined: the new rank aborted in its
        # first steps (gloo: "op.preamble.length <= op.nbytes"), every time it
        # joined. Without the cache each step negotiates every tensor in full.
        os.environ["HOROVOD_CACHE_CAPACITY"] = "0"
    if timeline:  # Horovod's coordinator (rank 0) writes it; read at init only
        os.environ["HOROVOD_TIMELINE"] = timeline
    check_pmi()
    check_gloo_host()
    hvd = import_horovod()  # HVD

    hvd.init()  # HVD
    check_launch(hvd.rank(), hvd.size())  # HVD
    first_step = 0
    if gpus:
        check_gpus(len(gpus), hvd.local_size())  # HVD
        idle = idle_gpus(len(gpus), hvd.local_size())  # HVD
        if idle and hvd.local_rank() == 0:  # HVD
            print(f"hvd_alexnet: {socket.gethostname()}: {idle}", file=sys.stderr, flush=True)
        gpu = gpus[hvd.local_rank() % len(gpus)]  # HVD: one GPU per process (or its own one)
        tf.config.set_visible_devices(gpu, "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if compiles_at_first_step(capability, built_kernels()):
            first_step = FIRST_STEP_ALLOWED
            if hvd.local_rank() == 0:  # HVD
                print(f"hvd_alexnet: {socket.gethostname()}: compute capability "
                      f"{'.'.join(map(str, capability))} GPUs: TensorFlow {tf.__version__} "
                      f"has no kernels built for them, so the first step compiles them (many "
                      f"minutes on this host's first run; later runs read CUDA's cache, "
                      f"CUDA_CACHE_MAXSIZE={os.environ['CUDA_CACHE_MAXSIZE']})",
                      file=sys.stderr, flush=True)
    threads = threads or cpu_threads(hvd.local_size())
    if not gpus:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
    compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none
    dist = Dist(hvd, compression, stall_timeout, heartbeat, "/gpu:0" if gpus else None)
    dist.first_step_allowed = first_step
    bound = affinity.bind_to_gpu(dist.gpu_id) if gpus and bind_cpus else None
    if bound and dist.local_rank == 0:
        print(f"hvd_alexnet: {socket.gethostname()}: each rank on its GPU's socket ({bound}, "
              f"local rank 0; --nobind_cpus leaves them where the launcher put them)",
              file=sys.stderr, flush=True)
    if join:
        dist.join()
    return dist, threads


def import_horovod():
    """horovod.tensorflow, or a UsageError naming what this host lacks to load it."""
    try:
        import horovod.tensorflow as hvd  # HVD
    except (ImportError, OSError, tf.errors.NotFoundError) as e:
        raise UsageError(horovod_load_problem(e, socket.gethostname())) from None
    return hvd


def horovod_load_problem(error, host):
    """One line for Horovod's failure to load on `host`: a node of a shared
    checkout that lacks a library the install's host had (Open MPI's, most often)."""
    text = getattr(error, "message", None) or str(error)
    missing = re.search(r"(lib[\w.+-]+?\.so[\d.]*): cannot open shared object file", text)
    if missing and missing.group(1).startswith(("libmpi", "libopen-")):
        return (f"{host}: Horovod cannot load: {missing.group(1)} (Open MPI's library) is not on "
                f"this host: install it (Debian and Ubuntu: libopenmpi3, which openmpi-bin "
                f"brings), or without root load the Open MPI the .venv was built with (module "
                f"load openmpi) on every node")
    if missing:
        return (f"{host}: Horovod cannot load: {missing.group(1)} is not on this host; install "
                f"it, or run make install on a node like this one")
    return (f"{host}: Horovod cannot load ({type(error).__name__}: {errors.first_line(error)}); "
            f"run make install on a node like this one, or doctor there")


def listed_gpus():
    """GPUs that nvidia-smi lists on this host (0 without nvidia-smi)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def installed_from():
    """The TensorFlow requirements file this environment was installed from
    (scripts/install.sh's record in the .venv), or '' where there is none."""
    try:
        with open(os.path.join(sys.prefix, ".horovod-build")) as f:
            found = re.search(r"tensorflow=(\S+)", f.read())
    except OSError:
        return ""
    return found.group(1) if found else ""


def refuse_silent_cpu():
    """Raises UsageError where nvidia-smi lists GPUs but TensorFlow sees none:
    every rank would train on the CPU, hours slower, without a word."""
    listed = listed_gpus()
    if not listed:
        return
    installed = installed_from()
    if not tf.test.is_built_with_cuda() or installed.endswith("cpu.txt"):
        # tf2.18's and tf2.21's CPU stack is the CUDA build without CUDA's libraries
        what = f" ({installed}: no CUDA libraries)" if tf.test.is_built_with_cuda() else ""
        cause = (f"this TensorFlow is the CPU build{what} (the .venv was installed on a host "
                 f"without GPUs): install the GPU stack on a GPU node, e.g. `srun -N1 "
                 f"--gpus=1 make install`")
    else:
        cause = ("TensorFlow's GPU build could not use them (a CUDA library it could not load, "
                 "or CUDA_VISIBLE_DEVICES hiding them): `python -m hvd_alexnet doctor` on "
                 "this host shows which")
    raise UsageError(f"{socket.gethostname()}: nvidia-smi lists {listed} GPU(s) but TensorFlow "
                     f"sees none, so every rank would train on the CPU: {cause}; or pass --cpu "
                     f"to train on the CPU")


def has_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


class Local:
    """One process and no Horovod: Dist's collectives for a job of one rank, so
    that the step function runs in a unit test without launching ranks."""

    rank, size, is_root, device = 0, 1, True, None

    def gradient_tape(self, tape):
        return tape

    def average(self, tensors):
        return list(tensors)

    def mean_vote(self, vote):
        return tf.cast(vote, tf.float32)
