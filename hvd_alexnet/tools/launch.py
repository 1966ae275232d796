"""The command line of an N-rank job on this host, as the benchmark, the chaos
run and the tests launch it (horovodrun with Gloo, or mpirun)."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)  # the venv's bin: horovodrun lives here


def job_command(python_args, np=1, launcher=None, forward=()):
    """`python PYTHON_ARGS` as `np` ranks: launcher "gloo" (horovodrun --gloo),
    "mpi" (mpirun, forwarding PATH, PYTHONPATH and the variables named in
    `forward`) or None (one plain process)."""
    py = [sys.executable, *python_args]
    if launcher == "gloo":
        return [os.path.join(BIN, "horovodrun"), "-np", str(np), "-H", f"localhost:{np}",
                "--gloo", *py]
    if launcher == "mpi":
        names = ["PATH", "PYTHONPATH", *forward]
        return ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(np),
                "-bind-to", "none", *[a for name in names for a in ("-x", name)], *py]
    if np != 1:
        raise ValueError(f"{np} ranks need a launcher")
    return py


def job_env(extra=None):
    """The environment of a job: this checkout on PYTHONPATH, the venv first on PATH,
    TensorFlow's start-up chatter off."""
    return {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(extra or {})}
