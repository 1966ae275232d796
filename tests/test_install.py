"""scripts/install.sh and scripts/test_deps.sh on a machine that has none of what
they install: a PATH that holds only the few tools the scripts use, a Python
without its headers and venv (as Debian's python3.11 is without python3.11-dev
and python3.11-venv), or an apt-get that only writes down what it was asked."""

import hashlib
import os
import shutil
import subprocess

import pytest

from helpers import ROOT, as_user, fake_commands


def bare_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "cut", "dirname", "sha256sum"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    fake_commands(bin_dir, {"id": "echo 1000",  # not root: nothing is installed, all is named
                            "python3.11": "exit 1"})  # runs, but has no Python.h, no ensurepip
    return str(bin_dir)


def test_install_names_every_system_package_a_bare_machine_lacks(tmp_path):
    env = {"PATH": bare_path(tmp_path), "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    wanted = "build-essential python3.11-dev python3.11-venv libopenmpi-dev openmpi-bin"
    assert f"install: run: sudo apt-get install -y {wanted}" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "venv")  # stopped before building anything


@pytest.mark.parametrize("built,host_gpus", [("gpu", 0), ("cpu", 8)])
def test_a_shared_venv_is_never_switched_to_the_other_stack_unasked(tmp_path, built, host_gpus):
    """One checkout on a shared file system: its .venv built as the GPU stack on a
    GPU node, then `make train` (which installs first) on the login node, where
    nvidia-smi lists no GPU; or built as the CPU stack, then installed on a node
    whose nvidia-smi (a stand-in) lists 8. Before, the install switched the
    .venv in place, for every host that shares it. Now it refuses with one line
    naming the way, exit 2, and touches nothing."""
    venv = tmp_path / "venv"
    venv.mkdir()
    record = f"tensorflow=requirements-{built}.txt horovod_gpu_operations=" \
             f"{'NCCL' if built == 'gpu' else ''} cuda={'12.2' if built == 'gpu' else ''}\n"
    (venv / ".horovod-build").write_text(record)
    (venv / ".installed").write_text("a stamp of that build\n")
    path = bare_path(tmp_path)
    for tool in ("sed", "hostname"):
        os.symlink(shutil.which(tool), os.path.join(path, tool))
    if host_gpus:
        fake_commands(tmp_path / "bin", {"nvidia-smi": "for i in 0 1 2 3 4 5 6 7; do echo "
                                         "\"GPU $i: NVIDIA H100 (UUID: GPU-$i)\"; done"})
    env = {"PATH": path, "HOME": str(tmp_path), "VENV": str(venv)}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    (said,) = [line for line in result.stderr.splitlines() if line.startswith("install: ")]
    assert f"holds the {built.upper()} stack" in said, said
    assert ("srun -N1 --gpus=1 make install" if built == "gpu" else "GPU=1 make install") in said
    assert sorted(os.listdir(venv)) == [".horovod-build", ".installed"]
    assert (venv / ".horovod-build").read_text() == record


def test_a_venv_another_account_built_is_named_not_half_rewritten(tmp_path):
    """A team's shared checkout whose .venv root built, after a pull that changed
    its lock: a user's `make install` stops at once with one line naming the
    owner and VENV=, exit 2 (before: pip or the shell failed on a write into the
    .venv, "Permission denied", or the user was sent to sudo apt-get). Run as
    the user `nobody`, in a mount namespace where they reach the checkout."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv, to run as another user")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".horovod-build").write_text("tensorflow=requirements-cpu.txt "
                                         "horovod_gpu_operations= cuda=\n")
    (venv / ".installed").write_text("the stamp of an older lock\n")
    for path in (tmp_path, venv):
        path.chmod(0o755)
    result = subprocess.run(
        [*as_user([ROOT, str(tmp_path)], 65534, 65534), "bash", "scripts/install.sh"],
        cwd=ROOT, env={"PATH": os.environ["PATH"], "HOME": "/nonexistent",
                       "VENV": str(venv)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert (f"install: {venv} needs installing again (its lock or build changed), and it is "
            f"root's, not writable by nobody") in result.stderr, result.stderr
    assert "VENV=<a folder of yours> make install" in result.stderr
    assert sorted(os.listdir(venv)) == [".horovod-build", ".installed"]


# --- what only the tests need: scripts/test_deps.sh, never install.sh ------------

TEST_DAEMONS = ["openssh-server", "iproute2", "slurmd", "slurmctld", "slurm-client", "munge"]
TEST_PACKAGES = TEST_DAEMONS + ["debootstrap"]  # and docker-base's test (tests/test_docker.py)
POLICY = "/usr/sbin/policy-rc.d"  # where Debian's invoke-rc.d asks whether a daemon may start


def fake_root_path(tmp_path, log):
    """A PATH on which this process is root, no package is installed, and apt-get
    writes what it was asked, and what Debian's policy-rc.d answered, to `log`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "cut", "dirname", "sha256sum", "grep", "printf", "chmod", "rm",
                 "echo"):
        if shutil.which(tool):
            os.symlink(shutil.which(tool), bin_dir / tool)
    bodies = {"id": "echo 0", "dpkg-query": "exit 1",
              "apt-get": f'{{ echo "apt-get $*"; if [ -x {POLICY} ]; then '
                         f'{POLICY} slurmd start; echo "policy-rc.d $?"; fi; }} '
                         f'>> {log}'}
    fake_commands(bin_dir, bodies)
    return str(bin_dir)


def test_install_as_root_installs_no_test_daemon(tmp_path):
    """`make install` (and so `make train`) as root on a machine with nothing
    installed: no sshd, Slurm or munge, whose packages would start daemons (on a
    cluster node, a second slurmd beside the site's). The venv is up to date
    here (its stamp written as install.sh computes it), so only the system
    packages are at stake."""
    log, venv = tmp_path / "apt.log", tmp_path / "venv"
    venv.mkdir()
    inputs = ["requirements-cpu.lock", "scripts/install.sh"]
    build = b"tensorflow=requirements-cpu.txt horovod_gpu_operations=\n"  # no GPU here
    stamp = hashlib.sha256(b"".join(open(os.path.join(ROOT, p), "rb").read() for p in inputs)
                           + build)
    (venv / ".installed").write_text(stamp.hexdigest() + "\ncuda=\n")
    env = {"PATH": fake_root_path(tmp_path, log), "HOME": str(tmp_path), "VENV": str(venv)}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is up to date" in result.stdout, result.stdout  # it got as far as the venv
    assert not log.exists(), log.read_text()  # apt-get never ran


@pytest.mark.parametrize("site_policy", [False, True])
def test_test_deps_installs_the_daemons_without_starting_them(tmp_path, site_policy):
    """scripts/test_deps.sh (make test) as root installs them all, with a
    policy-rc.d that forbids starting any daemon in place during apt-get, and
    removes it afterwards; a policy the machine had (Docker's images have one)
    is used and left as it was. The machine's own policy is put back after."""
    if os.geteuid() != 0:
        pytest.skip(f"writes {POLICY}: needs root")
    saved = tmp_path / "machine-policy-rc.d"
    if os.path.exists(POLICY):
        shutil.move(POLICY, saved)
    site = "#!/bin/sh\n# the site's own\nexit 101\n"
    try:
        if site_policy:
            with open(POLICY, "w") as f:
                f.write(site)
            os.chmod(POLICY, 0o755)
        log = tmp_path / "apt.log"
        env = {"PATH": fake_root_path(tmp_path, log), "HOME": str(tmp_path)}
        result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "test_deps.sh")],
                                env=env, capture_output=True, text=True, timeout=60)
        after = open(POLICY).read() if os.path.exists(POLICY) else None
    finally:
        if os.path.exists(POLICY):
            os.remove(POLICY)
        if saved.exists():
            shutil.move(saved, POLICY)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = log.read_text().splitlines()
    install = next(line for line in lines if line.startswith("apt-get install"))
    assert install.split()[-len(TEST_PACKAGES):] == TEST_PACKAGES, lines
    assert lines[lines.index(install) + 1] == "policy-rc.d 101", lines  # no daemon started
    assert after == (site if site_policy else None)


def test_test_deps_as_a_user_says_which_tests_will_skip(tmp_path):
    log = tmp_path / "apt.log"
    path = fake_root_path(tmp_path, log)
    fake_commands(tmp_path / "bin", {"id": "echo 1000"})
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "test_deps.sh")],
                            env={"PATH": path, "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "the two-host, Slurm and debootstrap tests will skip" in result.stdout
    assert "sudo make test-deps" in result.stdout and not log.exists()


# --- the stack a host gets: GPU where nvidia-smi lists GPUs, never the CPU one silently ---

def fake_gpu_host(tmp_path, gpus=2, cuda="12.2"):
    """A host whose nvidia-smi lists `gpus` GPUs and whose nvcc is CUDA `cuda`, and
    a venv whose python writes each pip call (with Horovod's GPU setting) to a
    log instead of installing, and whose horovodrun reports the build asked for."""
    bin_dir, venv, log = tmp_path / "bin", tmp_path / "venv", tmp_path / "pip.log"
    for d in (bin_dir, venv / "bin", tmp_path / "nccl" / "include", tmp_path / "nccl" / "lib"):
        d.mkdir(parents=True, exist_ok=True)
    (tmp_path / "nccl" / "lib" / "libnccl.so.2").touch()
    (tmp_path / "include").mkdir(exist_ok=True)  # nvcc's toolkit: bin/nvcc, include/
    (tmp_path / "include" / "cuda_runtime.h").touch()
    listing = "".join(f"GPU {i}: NVIDIA A100-SXM4-40GB (UUID: GPU-{i})\\n" for i in range(gpus))
    fake_commands(bin_dir, {
        "nvidia-smi": f'printf "{listing}"',
        "nvcc": f'echo "Cuda compilation tools, release {cuda}, V{cuda}.140"'})
    fake_commands(venv / "bin", {
        "python": f'case "$*" in\n'
                  f'  *" -e ."*) printf "#!/bin/sh\\necho hvd-alexnet 0.1.0\\n" \\\n'
                  f'      > {venv}/bin/hvd-alexnet\n'
                  f'    chmod +x {venv}/bin/hvd-alexnet ;;&\n'
                  f'  "-m pip"*) echo "$* (HOROVOD_GPU_OPERATIONS=${{HOROVOD_GPU_OPERATIONS-}})"'
                  f' >> {log} ;;\n'
                  f'  *nvidia.nccl*) echo {tmp_path / "nccl"} ;;\n'
                  f'esac',
        "horovodrun": 'echo "[X] TensorFlow"; echo "[X] MPI"; echo "[X] Gloo"\n'
                      '[[ ${HOROVOD_GPU_OPERATIONS-} == NCCL ]] && echo "[X] NCCL"; true'})
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VENV": str(venv),
            "HOME": str(tmp_path)}, log


def install(env, **extra):
    env = {k: v for k, v in env.items() if k not in ("TF_REQUIREMENTS", "CPU", "GPU",
                                                    "HOROVOD_GPU_OPERATIONS",
                                                    "HOROVOD_CUDA_HOME",
                                                    "STACK", "PYTHON")}  # STACK=... make test
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")],
                          env={**env, **extra}, capture_output=True, text=True, timeout=120)


def pip_calls(log):
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("missing", ["nvcc", "headers"])
def test_the_gpu_builds_prerequisites_are_named_before_any_download(tmp_path, missing):
    """A GPU host without a CUDA toolkit's nvcc, or with nvcc but without the
    CUDA runtime's headers (Horovod's build needs both): before, the install
    downloaded the GPU stack's 3 GB of wheels and then stopped (for the headers,
    CMake did). Now one line names NVIDIA's packages and where they come from,
    and pip never ran. (The toolkit is named by HOROVOD_CUDA_HOME: the install
    also looks in /usr/local/cuda*, which this machine may have.)"""
    env, log = fake_gpu_host(tmp_path)
    if missing == "nvcc":
        (tmp_path / "bin" / "nvcc").unlink()
    else:
        (tmp_path / "include" / "cuda_runtime.h").unlink()
    res = install(env, HOROVOD_CUDA_HOME=str(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr
    (said,) = [line for line in res.stderr.splitlines() if "needs" in line]
    assert "cuda-nvcc-12-2 and cuda-cudart-dev-12-2" in said and "HOROVOD_CUDA_HOME" in said
    assert "developer.download.nvidia.com" in said and "nothing was downloaded" in said
    assert ("found no nvcc" if missing == "nvcc" else "cuda_runtime.h") in said, said
    assert pip_calls(log) == []


def test_a_gpu_host_gets_the_gpu_stack_and_horovod_with_nccl(tmp_path):
    env, log = fake_gpu_host(tmp_path)
    res = install(env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "install: 2 GPU(s) (nvidia-smi): the GPU stack, tensorflow[and-cuda] and Horovod " \
           "with NCCL (CPU=1 installs the CPU stack instead)" in res.stdout
    calls = pip_calls(log)
    assert any("install -q --require-hashes -r " + str(tmp_path / "venv" / ".lock-packages.txt")
               in c for c in calls), calls
    locked = (tmp_path / "venv" / ".lock-packages.txt").read_text()  # from requirements-gpu.lock
    assert "\ntensorflow==2.15.1 \\\n" in locked and "tensorflow-cpu" not in locked
    assert "horovod==" not in locked and "nvidia-nccl-cu12==" in locked
    assert (tmp_path / "venv" / ".lock-horovod.txt").read_text().startswith("horovod==0.28.1 \\\n")
    assert any("install -q --no-deps --no-build-isolation -e ." in c for c in calls), calls
    assert "install: " + str(tmp_path / "venv" / "bin" / "hvd-alexnet") + " 0.1.0" in res.stdout
    horovod = [c for c in calls if ".lock-horovod.txt" in c]
    assert horovod and horovod[0].endswith("(HOROVOD_GPU_OPERATIONS=NCCL)"), calls
    assert "install: nvcc" in res.stdout and "(CUDA 12.2" in res.stdout
    assert (tmp_path / "venv" / ".horovod-build").read_text() == \
        "tensorflow=requirements-gpu.txt horovod_gpu_operations=NCCL cuda=12.2\n"
    res = install(env)  # again: nothing to do
    assert res.returncode == 0 and "is up to date" in res.stdout, res.stdout + res.stderr


def test_cpu_1_forces_the_cpu_stack_and_a_cpu_file_is_refused_on_a_gpu_host(tmp_path):
    env, log = fake_gpu_host(tmp_path)
    res = install(env, TF_REQUIREMENTS="requirements-cpu.txt")
    assert res.returncode == 2 and not pip_calls(log), res.stdout + res.stderr
    assert ("install: this host has 2 GPU(s) (nvidia-smi), but TF_REQUIREMENTS="
            "requirements-cpu.txt is the CPU stack, which would run every rank on the CPU: run "
            "make install without TF_REQUIREMENTS (the GPU stack), or with CPU=1") in res.stderr
    res = install(env, CPU="1")
    assert res.returncode == 0, res.stdout + res.stderr
    calls = pip_calls(log)
    assert "\ntensorflow-cpu==2.15.1 \\\n" in (tmp_path / "venv" / ".lock-packages.txt").read_text()
    assert all("HOROVOD_GPU_OPERATIONS=)" in c for c in calls), calls


def test_a_change_of_stack_or_cuda_rebuilds_horovod(tmp_path):
    """After a CPU install (make train with CPU=1), the GPU install (GPU=1: a
    switch of stack must be asked for): the CPU TensorFlow and Horovod are
    uninstalled and built again (before, pip kept horovod==0.28.1 without NCCL
    and --check-build failed). A new CUDA rebuilds too."""
    env, log = fake_gpu_host(tmp_path)
    assert install(env, CPU="1").returncode == 0
    log.unlink()
    res = install(env, GPU="1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("install: Horovod was built with tensorflow=requirements-cpu.txt "
            "horovod_gpu_operations= cuda=, now tensorflow=requirements-gpu.txt "
            "horovod_gpu_operations=NCCL cuda=12.2: building it again") in res.stdout
    calls = pip_calls(log)
    assert any(c.startswith("-m pip --disable-pip-version-check uninstall -q -y tensorflow-cpu "
                            "tensorflow") for c in calls), calls
    assert any("uninstall -q -y horovod" in c for c in calls), calls
    env, log = fake_gpu_host(tmp_path, cuda="12.4")
    res = install(env)
    assert res.returncode == 0 and "cuda=12.2, now" in res.stdout and "cuda=12.4: building" \
        in res.stdout, res.stdout + res.stderr


def test_make_clean_never_removes_a_run(tmp_path):
    """`make clean` removed runs/, where every launch script and the demo keep
    their checkpoints by default, without a word."""
    run = tmp_path / "runs" / "demo-1" / "checkpoints"
    run.mkdir(parents=True)
    (run / "ckpt-10.index").write_text("a night of training")
    (tmp_path / ".pytest_cache").mkdir()
    res = subprocess.run(["make", "-C", str(tmp_path), "-f", os.path.join(ROOT, "Makefile"),
                          "clean"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (run / "ckpt-10.index").read_text() == "a night of training"
    assert not (tmp_path / ".pytest_cache").exists()


def test_pip_install_of_the_checkout_gives_the_console_command(tmp_path):
    """`pip install .` into a new virtual environment that has TensorFlow and
    Horovod already (here: the checkout's .venv's packages on its path): the
    command `hvd-alexnet` works from any folder, from the installed package."""
    import sys
    import sysconfig
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print("
                           "sysconfig.get_paths()['purelib'])"], capture_output=True, text=True,
                          check=True).stdout.strip()
    with open(os.path.join(site, "tensorflow-and-horovod.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")  # this venv's: TensorFlow, Horovod
    src = tmp_path / "src"  # a copy: a build writes build/ and *.egg-info beside the sources
    shutil.copytree(os.path.join(ROOT, "hvd_alexnet"), src / "hvd_alexnet",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    res = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--no-build-isolation", str(src)], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    run = lambda *args: subprocess.run([str(venv / "bin" / "hvd-alexnet"), *args], cwd=tmp_path,
                                       capture_output=True, text=True, timeout=300)
    from hvd_alexnet import __version__
    assert run("--version").stdout == f"hvd-alexnet {__version__}\n"
    res = run("train", "--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: hvd-alexnet train"), res.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import hvd_alexnet; "
                            "print(hvd_alexnet.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path).stdout
    assert where.startswith(str(venv)), where  # the installed package, not the checkout


def test_each_stack_takes_the_pythons_its_wheels_serve(tmp_path):
    """Debian 13 has no python3.11, only its python3 (3.13), which TensorFlow 2.15
    has no wheels for: the default stack stops there with one line naming the
    stack that serves it (before: pip's "no matching distribution" for
    tensorflow-cpu, after the system packages); STACK=tf2.21 takes that python3
    when there is no python3.11, and goes on to build. The python3 here is a
    stand-in that says it is 3.13, and has its headers and venv."""
    path = bare_path(tmp_path)
    os.remove(os.path.join(path, "python3.11"))  # Debian 13: none
    fake_commands(tmp_path / "bin", {
        "python3": 'case "$*" in *version_info*) echo 3.13 ;; "-m venv "*) exit 3 ;; esac',
        **{tool: "true" for tool in ("g++", "make", "mpicc", "mpirun", "patch", "sed")}})
    env = {"PATH": path, "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}
    res = install(env, PYTHON="python3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert ("install: python3 is Python 3.13, and TensorFlow 2.15's stack takes Python 3.11: "
            "PYTHON=python3.11, or STACK=tf2.21 for Python 3.11 to 3.13") in res.stderr, res.stderr
    res = install(env, STACK="tf2.21")
    assert "takes Python" not in res.stderr, res.stderr
    assert res.returncode == 3, res.stdout + res.stderr  # python3 -m venv: it got that far
