#!/usr/bin/env bash
# Run as root by both Dockerfiles: the user that trains (hvd, uid 1000) and ssh
# ready for multi-host mpirun, the way Kubeflow's MPI Operator expects it:
# - workers run `/usr/sbin/sshd -De -f /home/hvd/.sshd_config` as hvd, on port 22
#   (sshd gets CAP_NET_BIND_SERVICE for that), with the host key and the
#   authorized key from the .ssh directory the operator (or you) mount;
# - the launcher's ssh client accepts new hosts and keeps no known_hosts file
#   (the mounted .ssh directory is read-only).
set -euo pipefail
useradd --create-home --uid 1000 --user-group --shell /bin/bash hvd
install -d -o hvd -g hvd /app /home/hvd/.ssh
install -d /run/sshd
setcap CAP_NET_BIND_SERVICE=+eip /usr/sbin/sshd
cat > /etc/ssh/ssh_config.d/hvd-alexnet.conf <<'CONF'
Host *
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
CONF
cat > /home/hvd/.sshd_config <<'CONF'
Port 22
PidFile /home/hvd/sshd.pid
HostKey /home/hvd/.ssh/id_rsa
AuthorizedKeysFile /home/hvd/.ssh/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
CONF
chown hvd:hvd /home/hvd/.sshd_config
