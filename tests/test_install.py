"""scripts/install.sh on a machine that has none of what the build needs: run as
a user, with a PATH that holds only the few tools the script uses before it
builds, and a Python without its headers and venv (as Debian's python3.11 is
without python3.11-dev and python3.11-venv)."""

import os
import shutil
import subprocess

from helpers import ROOT


def bare_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "cat", "cut", "dirname", "sha256sum"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    for name, body in (("id", "echo 1000"),  # not root: nothing is installed, all is named
                       ("python3.11", "exit 1")):  # runs, but has no Python.h, no ensurepip
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def test_install_names_every_system_package_a_bare_machine_lacks(tmp_path):
    env = {"PATH": bare_path(tmp_path), "HOME": str(tmp_path), "VENV": str(tmp_path / "venv")}
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "install.sh")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    wanted = "build-essential python3.11-dev python3.11-venv libopenmpi-dev openmpi-bin"
    assert f"install: run: sudo apt-get install -y {wanted}" in result.stderr, result.stderr
    assert not os.path.exists(tmp_path / "venv")  # stopped before building anything
