#!/usr/bin/env bash
# Run as root by both Dockerfiles: the user that trains (hvd, uid 1000) and ssh
# ready for multi-host mpirun, the way Kubeflow's MPI Operator expects it:
# - workers run sshd as hvd (bin/k8s_worker.sh starts `/usr/sbin/sshd -D -e -f
#   /home/hvd/.sshd_config`) on port 2222, as the operator's own images do: a user
#   cannot bind port 22, and under a restricted pod security policy the file
#   capability that would allow it (setcap) is not honoured; the host key and the
#   authorized key come from the .ssh directory the operator (or you) mount;
# - the launcher's ssh client uses port 2222, accepts new hosts and keeps no
#   known_hosts file (the mounted .ssh directory is read-only).
set -euo pipefail
useradd --create-home --uid 1000 --user-group --shell /bin/bash hvd
install -d -o hvd -g hvd /app /home/hvd/.ssh
install -d /run/sshd
cat > /etc/ssh/ssh_config.d/hvd-alexnet.conf <<'CONF'
Host *
    Port 2222
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    LogLevel ERROR
CONF
cat > /home/hvd/.sshd_config <<'CONF'
Port 2222
PidFile /home/hvd/sshd.pid
HostKey /home/hvd/.ssh/id_rsa
AuthorizedKeysFile /home/hvd/.ssh/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
CONF
chown hvd:hvd /home/hvd/.sshd_config
