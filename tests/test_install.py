"""scripts/install.sh and scripts/test_deps.sh on a machine that has none of what
they install: a PATH that holds only the few tools the scripts use, a Python
without its headers and venv (as Debian's python3.11 is without python3.11-dev
and python3.11-venv), or an apt-get that only writes down what it was asked."""

import hashlib
import os
import shutil
import subprocess

import pytest

from helpers import ROOT, fake_commands


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
    inputs = ["requirements.txt", "requirements-cpu.txt", "requirements-mpi.txt",
              "scripts/install.sh"]
    stamp = hashlib.sha256(b"".join(open(os.path.join(ROOT, p), "rb").read() for p in inputs))
    (venv / ".installed").write_text(stamp.hexdigest() + "\n")
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
