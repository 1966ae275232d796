"""Two hosts on one machine, for the multi-host tests and the scaling benchmark:
two network namespaces joined by a veth pair (10.77.0.1 = host1, 10.77.0.2 =
host2, interface `hvd0` on both), each with its own host name and an sshd on
port 2222 that takes a key made for the purpose. Needs root, iproute2,
util-linux's unshare and openssh-server. `shape(mbit)` limits the link to a
rate with a token bucket (tc's tbf, on both ends), `stream_mbit()` measures what
a TCP stream gets through it.

`ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc: that is how each host
gets its own /etc/hosts and /etc/ssh (sshd's config and keys, and an ssh client
config naming the key and port), without touching the machine's own /etc files.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

HOSTS = ("host1", "host2")
ADDRESSES = ("10.77.0.1", "10.77.0.2")
IFACE = "hvd0"
SSH_PORT = 2222
STREAM_PORT = 5201

# One TCP stream host1 -> host2 for a given time; host2 prints the Mbit/s it received.
_RECEIVE = """
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n, t0 = 0, None
while True:
    b = c.recv(1 << 20)
    if not b:
        break
    t0 = t0 or time.perf_counter()
    n += len(b)
print(n * 8 / (time.perf_counter() - t0) / 1e6, flush=True)
"""
_SEND = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
buf, end = b"x" * (1 << 20), time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    s.sendall(buf)
s.close()
"""


def unavailable():
    """Why two hosts cannot be made here, or '' if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists("/usr/sbin/sshd"):
        return "needs openssh-server (/usr/sbin/sshd): `make install` adds it when run as root"
    return ""


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


class TwoHosts:
    def __init__(self, workdir):
        self.dir = workdir
        tag = f"{os.getpid() % 100000}"
        self.ns = [f"hvdt{tag}{i}" for i in (1, 2)]
        self.made = []

    def __enter__(self):
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc):
        self.close()

    def _make(self):
        key = os.path.join(self.dir, "id_ed25519")
        _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key)
        shutil.copy(key + ".pub", os.path.join(self.dir, "authorized_keys"))
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{a} {h}\n" for a, h in zip(ADDRESSES, HOSTS))
        for i, ns in enumerate(self.ns):
            _sh("ip", "netns", "add", ns)
            self.made.append(ns)
            etc = f"/etc/netns/{ns}"
            os.makedirs(f"{etc}/ssh")
            _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                f"{etc}/ssh/ssh_host_ed25519_key")
            with open(f"{etc}/ssh/sshd_config", "w") as f:
                f.write(f"Port {SSH_PORT}\nListenAddress {ADDRESSES[i]}\n"
                        f"HostKey /etc/ssh/ssh_host_ed25519_key\n"
                        f"AuthorizedKeysFile {self.dir}/authorized_keys\n"
                        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
                        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                        f"PidFile {self.dir}/sshd-{HOSTS[i]}.pid\n")
            with open(f"{etc}/ssh/ssh_config", "w") as f:
                f.write(f"Host *\n  IdentityFile {key}\n  StrictHostKeyChecking no\n"
                        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n")
            with open(f"{etc}/hosts", "w") as f:
                f.write(hosts_file)
        a, b = (f"{ns[:-1]}v{ns[-1]}" for ns in self.ns)
        _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for i, (ns, dev) in enumerate(zip(self.ns, (a, b))):
            _sh("ip", "link", "set", dev, "netns", ns)
            _sh("ip", "-n", ns, "link", "set", dev, "name", IFACE)
            _sh("ip", "-n", ns, "addr", "add", f"{ADDRESSES[i]}/24", "dev", IFACE)
            _sh("ip", "-n", ns, "link", "set", IFACE, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        for i in range(2):
            self.run_on(i, ["/usr/sbin/sshd", "-f", "/etc/ssh/sshd_config"], timeout=30, check=True)
        # Each host reaches the other by name, over the veth pair, with the test's key.
        out = self.run_on(0, ["ssh", "-p", str(SSH_PORT), HOSTS[1], "hostname"], timeout=30)
        if out.returncode != 0 or out.stdout.strip() != HOSTS[1]:
            raise RuntimeError(f"ssh host1 -> host2 failed: {out.stdout}{out.stderr}")

    def command(self, i, cmd):
        """`cmd` as run on host i: inside its namespace, with its own host name."""
        return ["ip", "netns", "exec", self.ns[i], "unshare", "--uts", "sh", "-c",
                f'hostname {HOSTS[i]} && exec "$@"', "sh", *cmd]

    def run_on(self, i, cmd, timeout, env=None, check=False, cwd=None):
        """Runs `cmd` on host i; kills it (and fails) after `timeout` seconds."""
        proc = subprocess.Popen(self.command(i, cmd), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            self.kill_all()
            raise AssertionError(f"{' '.join(cmd)} on {HOSTS[i]} still running after "
                                 f"{timeout}s (hang?)\n{out[-3000:]}\n{err[-3000:]}") from None
        result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} on {HOSTS[i]} failed: {out}{err}")
        return result

    def rx_bytes(self):
        """Bytes each host has received on hvd0 so far."""
        counts = []
        for ns in self.ns:
            out = subprocess.run(["ip", "-n", ns, "-j", "-s", "link", "show", IFACE],
                                 check=True, capture_output=True, text=True).stdout
            counts.append(json.loads(out)[0]["stats64"]["rx"]["bytes"])
        return counts

    def shape(self, mbit):
        """Limits the link to `mbit` Mbit/s each way: a token bucket on both ends
        (burst a quarter of a millisecond's worth, at least 256 kB; 50 ms queue)."""
        for ns in self.made:
            _sh("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", IFACE, "root",
                "tbf", "rate", f"{mbit}mbit", "burst", f"{max(256, int(mbit) // 4)}kb",
                "latency", "50ms")

    def unshape(self):
        for ns in self.made:
            subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", IFACE,
                            "root"], capture_output=True)

    def qdiscs(self):
        """`tc qdisc show` of hvd0 on each host."""
        return [subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", IFACE],
                               check=True, capture_output=True, text=True).stdout.strip()
                for ns in self.made]

    def stream_mbit(self, seconds=2.0):
        """Mbit/s that one TCP stream from host1 gets to host2 in `seconds`."""
        server = ADDRESSES[1], str(STREAM_PORT)
        receiver = subprocess.Popen(self.command(1, [sys.executable, "-c", _RECEIVE, *server]),
                                    stdout=subprocess.PIPE, text=True)
        try:
            if receiver.stdout.readline().strip() != "ready":
                raise RuntimeError("the stream's receiver on host2 did not start")
            self.run_on(0, [sys.executable, "-c", _SEND, *server, str(seconds)],
                        timeout=seconds + 60, check=True)
            out, _ = receiver.communicate(timeout=60)
            return float(out)
        finally:
            if receiver.poll() is None:
                receiver.kill()
                receiver.wait()

    def kill_all(self):
        """Every process left in the namespaces (sshd, ranks of a failed run)."""
        for ns in self.made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def close(self):
        self.kill_all()
        for ns in self.made:  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for ns in self.ns:
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
        self.made = []
