"""scripts/docker_base.sh and scripts/docker_test.sh (`make docker-base`,
`make docker-test`) on their bad input: no root, a mirror debootstrap cannot
reach (the real debootstrap), a build that fails. The engine here is a fake
`docker` and `dockerd` that write down what they were asked: the real images
are built by `make docker-test` itself, which is not part of this suite
(docs/install.md has its result)."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from helpers import ROOT, fake_commands, free_port, require

FAKE_DOCKER = r"""
echo "docker $*" >> "$STATE/calls"
case "$1" in
  info) [ -e "$STATE/up" ] && echo "${DOCKER_ROOT:-}" ;;
  image) exit 1 ;;  # no image here: no local base
  build) echo "Step 1/3 : ARG BASE_IMAGE=x"; echo "Step 2/3 : FROM x"
         if [ -n "${SLOW_BUILD:-}" ]; then echo $$ > "$STATE/build.pid"; sleep 600; fi
         if [ -n "${NO_REGISTRY:-}" ]; then echo "Get https://registry-1.docker.io/v2/: no such host"
                                            exit 1; fi
         echo "Step 3/3 : RUN apt-get install nothing"
         echo "E: Unable to locate package nothing"
         echo "The command '/bin/bash -o pipefail -c apt-get install nothing' returned a non-zero code: 100"
         exit 1 ;;
  *) exit 0 ;;
esac
"""
# A daemon that answers once started, and leaves when it is sent SIGTERM.
FAKE_DOCKERD = r"""
echo "$*" > "$STATE/dockerd.args"
echo $$ > "$STATE/dockerd.pid"
trap 'rm -f "$STATE/up"; exit 0' TERM
touch "$STATE/up"
while :; do sleep 0.1; done
"""


def fake_engine(tmp_path, uid=0):
    """An environment whose PATH puts a fake docker, dockerd and id first."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    fake_commands(bin_dir, {"docker": FAKE_DOCKER, "dockerd": FAKE_DOCKERD, "id": f"echo {uid}"})
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STATE=str(state),
               LOGDIR=str(tmp_path / "logs"), DOCKER_ROOT=str(state), DOCKER_TEST_NEED_GB="0")
    return env, state


def run(script, env):
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", script)], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("target", ["docker-base", "docker-test"])
def test_without_root_one_line_names_the_command(tmp_path, target):
    env, state = fake_engine(tmp_path, uid=1000)
    result = run(target.replace("-", "_") + ".sh", env)
    assert result.returncode == 1
    assert result.stderr == (f"{target}: the Docker engine needs root: run  sudo make {target}\n")
    assert not (state / "calls").exists()  # the engine was not touched


def test_a_failed_build_names_its_step_and_log_and_stops_the_engine_it_started(tmp_path):
    env, state = fake_engine(tmp_path)
    result = run("docker_test.sh", env)
    assert result.returncode == 1, result.stdout + result.stderr
    log = tmp_path / "logs" / "build-cpu.log"
    assert result.stderr.splitlines() == [
        "docker-test: the build of docker/Dockerfile.cpu failed at "
        "Step 3/3 : RUN apt-get install nothing",
        "docker-test: The command '/bin/bash -o pipefail -c apt-get install nothing' "
        "returned a non-zero code: 100",
        f"docker-test: the build's log: {log}"]
    assert "E: Unable to locate package nothing" in log.read_text()
    calls = (state / "calls").read_text().splitlines()
    build = next(c for c in calls if c.startswith("docker build"))
    assert "--network=host" in build.split() and "-t hvd-alexnet:cpu" in build
    # Nothing after the failure: no second build, no tag, no container.
    assert calls[-1] == build and not any(c.split()[1] in ("run", "tag") for c in calls)
    # The engine it started had no bridge, and is gone.
    args = (state / "dockerd.args").read_text().split()
    assert "--bridge=none" in args and "--iptables=false" in args
    pid = int((state / "dockerd.pid").read_text())
    assert f"stopped the dockerd this target started (pid {pid})" in result.stdout
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_too_little_room_for_the_images_and_the_suite_is_said_before_any_build(tmp_path):
    env, state = fake_engine(tmp_path)
    # The engine's folder is the fake's state folder; no disk has a million GB free.
    env["DOCKER_TEST_NEED_GB"] = "1000000"
    result = run("docker_test.sh", env)
    assert result.returncode == 1, result.stdout + result.stderr
    # (Its free space is df's, in whole GB: other jobs may change it while this runs.)
    assert re.fullmatch(
        f"docker-test: the Docker engine's folder {re.escape(str(state))} has [0-9]+ GB free;"
        " the images and the suite need about 1000000 GB: make room there\n", result.stderr)
    calls = (state / "calls").read_text()
    assert "docker build" not in calls and "docker run" not in calls
    assert "stopped the dockerd this target started" in result.stdout
    # A variable that is not a number is refused before the engine is touched.
    (state / "calls").unlink()
    env["DOCKER_TEST_NEED_GB"] = "$(touch x)"
    result = run("docker_test.sh", env)
    assert result.returncode == 2
    script = os.path.join(ROOT, "scripts", "docker_test.sh")
    assert result.stderr == f"{script}: DOCKER_TEST_NEED_GB=$(touch x): want a whole number\n"
    assert not (state / "calls").exists()


def test_an_engine_that_was_running_is_used_and_left_alone(tmp_path):
    env, state = fake_engine(tmp_path)
    (state / "up").touch()
    env["BASE_IMAGE"] = "debian:12"
    result = run("docker_test.sh", env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "using the Docker engine that is running" in result.stdout
    assert not (state / "dockerd.args").exists() and (state / "up").exists()
    build = next(c for c in (state / "calls").read_text().splitlines()
                 if c.startswith("docker build"))
    assert "--build-arg BASE_IMAGE=debian:12" in build


@pytest.mark.parametrize("layout", ["deb822", "one-line"])
def test_docker_base_names_the_apt_source_it_could_not_reach(tmp_path, layout):
    """The real debootstrap (scripts/test_deps.sh installs it) against the
    machine's apt source, here one in a test's apt folder at a port nothing
    listens on: one line naming that source and the file it came from."""
    require("debootstrap needs root" if os.geteuid() != 0 else
            None if shutil.which("debootstrap") else "no debootstrap (make test-deps)",
            "docker-base's debootstrap")
    env, state = fake_engine(tmp_path)
    mirror = f"http://127.0.0.1:{free_port()}/debian"
    apt = tmp_path / "apt"
    (apt / "sources.list.d").mkdir(parents=True)
    if layout == "deb822":
        source = apt / "sources.list.d" / "debian.sources"
        source.write_text("Types: deb\nURIs: http://127.0.0.1:1/other\nSuites: trixie\n"
                          "Components: main\n\n"
                          f"Types: deb\nURIs: {mirror}\nSuites: bookworm bookworm-updates\n"
                          "Components: main\n")
    else:
        source = apt / "sources.list"
        source.write_text(f"deb [arch=amd64 signed-by=/k.gpg] {mirror} bookworm main\n")
    env["APT_ETC"] = str(apt)
    result = run("docker_base.sh", env)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.match(rf"docker-base: debootstrap could not make Debian 12 from {mirror}, the "
                    rf"apt source in {source}: E: .*{mirror}.* \(log: .*debootstrap.log\)$",
                    lines[0]), lines[0]
    assert not (state / "calls").exists()  # no engine, no image


def test_docker_base_without_a_debian_source_says_to_set_mirror(tmp_path):
    env, state = fake_engine(tmp_path)
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True)
    env["APT_ETC"] = str(tmp_path / "apt")
    result = run("docker_base.sh", env)
    assert result.returncode == 1
    assert result.stderr.startswith(f"docker-base: no apt source for Debian 12 (bookworm) in "
                                    f"{tmp_path / 'apt'}: set MIRROR="), result.stderr


def test_a_base_no_registry_serves_points_to_docker_base(tmp_path):
    """The Dockerfile's default base, from a registry that does not answer."""
    env, state = fake_engine(tmp_path)
    env["NO_REGISTRY"] = "1"
    result = run("docker_test.sh", env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0] == "docker-test: the build of docker/Dockerfile.cpu failed at Step 2/3 : FROM x"
    assert lines[1] == "docker-test: Get https://registry-1.docker.io/v2/: no such host"
    assert lines[3] == ("docker-test: where no registry answers, make docker-base makes a base "
                        "here"), lines


def test_sigterm_during_a_build_stops_it_and_the_engine_at_once(tmp_path):
    """A build that would take 10 minutes: SIGTERM to the target ends the build,
    and the engine the target started, without waiting for the build."""
    env, state = fake_engine(tmp_path)
    env["SLOW_BUILD"] = "1"
    proc = subprocess.Popen(["bash", os.path.join(ROOT, "scripts", "docker_test.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):  # the build has started (60 s at most: a bound, not a measure)
            if (state / "build.pid").exists() and (state / "build.pid").read_text().strip():
                break
            time.sleep(0.1)
        build = int((state / "build.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)  # far less than the build's 600 s
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    dockerd = int((state / "dockerd.pid").read_text())
    assert f"stopped the dockerd this target started (pid {dockerd})" in out
    for pid in (build, dockerd):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
