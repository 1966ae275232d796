#!/usr/bin/env bash
# Run as root by both Dockerfiles: the user that trains (hvd, uid 1000) and ssh
# ready for multi-host mpirun, the way Kubeflow's MPI Operator expects it, with
# ssh's checks kept on:
# - workers run sshd as hvd (bin/k8s_worker.sh starts `/usr/sbin/sshd -D -e -f
#   /home/hvd/.sshd_config`) on port 2222, as the operator's own images do: a user
#   cannot bind port 22, and under a restricted pod security policy the file
#   capability that would allow it (setcap) is not honoured;
# - the operator mounts one key pair on every pod (sshAuthMountPath, read-only,
#   owned by root): it is the client key and, as in the operator's images, every
#   pod's host key. k8s_worker.sh copies the private key and authorized_keys to
#   /home/hvd/.ssh-run (hvd's own, 0700), so sshd runs with StrictModes on;
# - the launcher's ssh client uses port 2222 and checks every host's key
#   (StrictHostKeyChecking yes) against the one known-hosts entry that
#   hvd-known-hosts makes from the mounted public key: a host that does not hold
#   the job's key is refused ("Host key verification failed").
set -euo pipefail
HOME_DIR=${HOME_DIR:-/home/hvd}      # the tests write the files under a temporary root
ETC=${ETC:-/etc}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
if [[ $(id -u) -eq 0 && -z ${NO_USER:-} ]]; then
  useradd --create-home --uid 1000 --user-group --shell /bin/bash hvd
  install -d -o hvd -g hvd /app "$HOME_DIR/.ssh"
  install -d /run/sshd
else
  mkdir -p "$HOME_DIR/.ssh"
fi
mkdir -p "$ETC/ssh/ssh_config.d" "$BIN_DIR"
cat > "$BIN_DIR/hvd-known-hosts" <<SCRIPT
#!/bin/sh
# ssh's KnownHostsCommand: the job's host key, from the mounted secret, for every host.
[ -r "$HOME_DIR/.ssh/id_rsa.pub" ] && printf '* %s\n' "\$(cat "$HOME_DIR/.ssh/id_rsa.pub")"
exit 0
SCRIPT
chmod 755 "$BIN_DIR/hvd-known-hosts"
cat > "$ETC/ssh/ssh_config.d/hvd-alexnet.conf" <<CONF
Host *
    Port 2222
    StrictHostKeyChecking yes
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    KnownHostsCommand $BIN_DIR/hvd-known-hosts
    LogLevel ERROR
CONF
cat > "$HOME_DIR/.sshd_config" <<CONF
Port 2222
PidFile $HOME_DIR/sshd.pid
HostKey $HOME_DIR/.ssh-run/host_key
AuthorizedKeysFile $HOME_DIR/.ssh-run/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
CONF
[[ $(id -u) -eq 0 && -z ${NO_USER:-} ]] && chown hvd:hvd "$HOME_DIR/.sshd_config"
exit 0
