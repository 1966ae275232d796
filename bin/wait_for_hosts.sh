#!/usr/bin/env bash
# Waits until every host of a hostfile resolves and answers on the ssh port, for at
# most HOSTS_WAIT seconds (default 300); exits 2 naming the hosts that did not. The
# MPI Operator's launcher can start before a restarted worker's DNS name exists (after
# an eviction), and mpirun would then fail at once: "Could not resolve hostname".
#   bash bin/wait_for_hosts.sh /etc/mpi/hostfile 2222
set -euo pipefail
source "$(dirname "$0")/checks.sh"
port=${2:-22}
want_count HOSTS_WAIT port
hostfile=$1 deadline=$((SECONDS + ${HOSTS_WAIT:-300}))
[[ -r $hostfile ]] || { echo "$0: $hostfile: no such hostfile" >&2; exit 2; }
mapfile -t hosts < <(sed 's/#.*//' "$hostfile" | awk 'NF { print $1 }')
for host in "${hosts[@]}"; do want_host "$hostfile" "$host"; done
while :; do
  waiting=()
  for host in "${hosts[@]}"; do
    if ! getent hosts "$host" >/dev/null; then
      waiting+=("$host (does not resolve)")
    elif ! timeout 3 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
      waiting+=("$host (nothing answers on port $port)")
    fi
  done
  ((${#waiting[@]})) || exit 0
  if ((SECONDS >= deadline)); then
    echo "$0: after ${HOSTS_WAIT:-300} s, hosts not ready: $(IFS=,; echo "${waiting[*]}" | sed 's/,/, /g')" >&2
    exit 2
  fi
  sleep 2
done
