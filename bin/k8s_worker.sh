#!/usr/bin/env bash
# A worker pod's first process under the MPI Operator (docker/mpijob.yaml):
#   command: [bash, /app/bin/k8s_worker.sh]
# It runs sshd, through which mpirun on the launcher starts Open MPI's orted here,
# and orted the ranks. Kubernetes evicts or preempts a pod by sending SIGTERM to
# its first process only; sshd alone would just exit and the ranks would die with
# the pod, without a checkpoint. This script forwards that SIGTERM to the ranks it
# hosts (the children of orted below its sshd), so that every rank of the job stops
# at the next step, rank 0 checkpoints it and they exit 75; it then waits for them
# (at most STOP_TIMEOUT seconds, 240 by default: keep it below the pod's
# terminationGracePeriodSeconds), stops sshd and exits.
#   SSHD_CONFIG  sshd's config (default /home/hvd/.sshd_config, written by the images)
set -uo pipefail
SSHD=${SSHD:-/usr/sbin/sshd}
SSHD_CONFIG=${SSHD_CONFIG:-/home/hvd/.sshd_config}
source "$(dirname "$0")/checks.sh"
want_count STOP_TIMEOUT
STOP_TIMEOUT=${STOP_TIMEOUT:-240}
say() { echo "k8s_worker: $*" >&2; }

ranks_below() {  # the pids of the processes orted started, below pid $1
  local -A children=()
  local stat line pid ppid
  for stat in /proc/[0-9]*/stat; do
    { line=$(<"$stat"); } 2>/dev/null || continue
    pid=${line%% *}
    read -r _ ppid _ <<<"${line##*) }"  # after the command name, which may hold spaces
    children[$ppid]+=" $pid"
  done
  local queue=("$1") p c
  while ((${#queue[@]})); do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    for c in ${children[$p]:-}; do
      if [[ $(cat "/proc/$p/comm" 2>/dev/null) == orted ]]; then
        echo "$c"
      else
        queue+=("$c")
      fi
    done
  done
}

# The mounted keys are root's and read-only (a secret volume): sshd's StrictModes
# wants them in a folder of the user's own, which only the user can write.
RUN_KEYS=${RUN_KEYS:-$HOME/.ssh-run}
if [[ -r $HOME/.ssh/id_rsa ]]; then  # the operator's mount (sshAuthMountPath)
  install -d -m 700 "$RUN_KEYS"
  install -m 600 "$HOME/.ssh/id_rsa" "$RUN_KEYS/host_key"
  install -m 600 "$HOME/.ssh/authorized_keys" "$RUN_KEYS/authorized_keys"
fi
"$SSHD" -D -e -f "$SSHD_CONFIG" &
sshd=$!
stopping=
trap 'stopping=TERM' TERM
trap 'stopping=INT' INT
until [[ -n $stopping ]]; do
  wait "$sshd"
  status=$?
  if [[ -z $stopping ]] && ! kill -0 "$sshd" 2>/dev/null; then
    say "sshd exited with status $status"
    exit "$status"
  fi
done

mapfile -t ranks < <(ranks_below "$sshd")
if ((${#ranks[@]})); then
  say "SIG$stopping: forwarding it to ${#ranks[@]} rank(s) here (pids ${ranks[*]}), waiting" \
      "up to ${STOP_TIMEOUT} s for them to checkpoint and exit"
  kill -TERM "${ranks[@]}" 2>/dev/null
  deadline=$((SECONDS + STOP_TIMEOUT))
  while ((SECONDS < deadline)); do
    alive=0
    for pid in "${ranks[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.2
  done
  if ((alive)); then
    say "ranks still running after ${STOP_TIMEOUT} s: leaving them to Kubernetes' SIGKILL"
    status=1
  else
    say "the ranks here have exited"
    status=0
  fi
else
  say "SIG$stopping: no rank runs here"
  status=0
fi
kill -TERM "$sshd" 2>/dev/null
wait "$sshd" 2>/dev/null
exit "$status"
