#!/usr/bin/env bash
# Elastic AlexNet (train --elastic): the job goes on when hosts are lost and grows again when
# they come back, without a restart. Horovod's elastic driver (Gloo) starts ranks on the hosts
# that HOSTS_FILE lists, one `host:slots` a line, and reads it again every few seconds:
#   HOSTS_FILE=hostfiles/elastic.hosts MIN_NP=8 MAX_NP=32 bash bin/run_train_alexnet_elastic.sh
# runs: horovodrun -np NP --min-np 8 --max-np 32 --host-discovery-script bin/discover_hosts.sh
#           --blacklist-cooldown-range 30 120 .venv/bin/python -m hvd_alexnet train --elastic ...
# Take a host out of HOSTS_FILE before you reclaim it (its ranks are stopped, the others go on
# at the last commit) and put it back when it returns (the job grows at the next commit). A
# host whose rank died is left out for COOLDOWN seconds (a random time in the range) and then
# tried again. Below MIN_NP ranks the job waits ELASTIC_TIMEOUT seconds (default 600) for hosts,
# then ends; the checkpoints in MODEL_DIR stay, and the same command resumes from the newest.
# NP: ranks to start with (default MIN_NP); MAX_NP (default: the slots in HOSTS_FILE).
# IFACE, SSH_PORT, DATA_DIR, MODEL_DIR as in run_train_alexnet_multigpu_imagenet.sh; IFACE is
# needed when HOSTS_FILE lists one host at the start (the driver probes for it between 2 hosts).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="$ROOT/bin/$(basename "$0")"
source "$ROOT/bin/checks.sh"
PYTHON=${PYTHON:-$( [[ -L $ROOT/.venv/bin/python || -e $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
want_python
# horovodrun that keeps the ranks' exit status (hvd_alexnet/tools/horovodrun.py)
if [[ -n ${HOROVODRUN:-} ]]; then launcher=("$HOROVODRUN"); else
  launcher=("$PYTHON" -m hvd_alexnet.tools.horovodrun); fi
want_count NP MIN_NP MAX_NP SSH_PORT ELASTIC_TIMEOUT SIGKILL_TIMEOUT
HOSTS_FILE=${HOSTS_FILE:-$ROOT/hostfiles/elastic.hosts}
[[ -r $HOSTS_FILE ]] || { echo "$0: HOSTS_FILE=$HOSTS_FILE: no such file (one host:slots a line)" >&2; exit 2; }
export HVD_ALEXNET_HOSTS_FILE
HVD_ALEXNET_HOSTS_FILE=$(cd "$(dirname "$HOSTS_FILE")" && pwd)/$(basename "$HOSTS_FILE")
slots=0
for n in $(bash "$ROOT/bin/discover_hosts.sh" | sed -n 's/.*:\([0-9]*\)$/\1/p'); do slots=$((slots + n)); done
hosts=$(bash "$ROOT/bin/discover_hosts.sh" | wc -l)
if (( hosts < 2 )) && [[ -z ${IFACE:-} ]]; then
  # Without --network-interface, Horovod's elastic driver finds the hosts' common interface
  # by probing between them, and waits (ELASTIC_TIMEOUT) until it has 2 hosts to probe.
  echo "$0: HOSTS_FILE lists $hosts host(s): Horovod's elastic driver needs 2 at the start to" \
       "find their common network interface, or IFACE set to it (e.g. IFACE=eth0)" >&2
  exit 2
fi
MIN_NP=${MIN_NP:-1}
MAX_NP=${MAX_NP:-$slots}
NP=${NP:-$MIN_NP}
DATA_DIR=${DATA_DIR:-$ROOT/imagenet_tfrecord} MODEL_DIR=${MODEL_DIR:-$ROOT/runs/alexnet}
export HVD_ALEXNET_RESUME=${HVD_ALEXNET_RESUME:-$(resume_command HOSTS_FILE NP MIN_NP MAX_NP \
  IFACE SSH_PORT DATA_DIR MODEL_DIR -- "$@")}
extra=()
[[ -n ${IFACE:-} ]] && { extra+=(--network-interface "$IFACE"); export NCCL_SOCKET_IFNAME="$IFACE"; }
[[ -n ${SSH_PORT:-} ]] && extra+=(-p "$SSH_PORT")
read -r cool_min cool_max <<< "${COOLDOWN:-30 120}"
want_count cool_min cool_max
cd "$ROOT"
# The launcher runs as this shell's child (its status is said below), so the shell
# passes a stop on: SIGTERM, SIGINT or SIGHUP to it (a supervisor, `timeout`, Ctrl-C)
# reaches the launcher as SIGTERM, and the shell waits for the launcher's end (a
# shell killed by the signal left the launcher and its ranks running, unwatched).
# The launcher has a session of its own (setsid: a Ctrl-C to the terminal reaches
# this shell alone, not the elastic driver's helpers half-way) and gets SIGTERM if
# this shell dies (setpriv --pdeathsig, even of a SIGKILL).
setsid setpriv --pdeathsig TERM -- "${launcher[@]}" -np "$NP" --min-np "$MIN_NP" --max-np "$MAX_NP" \
  --host-discovery-script "$ROOT/bin/discover_hosts.sh" \
  --blacklist-cooldown-range "$cool_min" "$cool_max" \
  --elastic-timeout "${ELASTIC_TIMEOUT:-600}" "${extra[@]}" \
  "$PYTHON" -m hvd_alexnet train --elastic \
  --data_dir="$DATA_DIR" --model_dir="$MODEL_DIR" \
  --batch_size=32 --epochs=90 "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
status=0
while :; do  # a trapped signal ends `wait` early: wait again until the launcher has ended
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
if (( status != 0 )); then
  echo "$0: the elastic job ended with status $status (fewer than MIN_NP=$MIN_NP ranks for" \
       "${ELASTIC_TIMEOUT:-600} s, or an error above); its checkpoints are in" \
       "$MODEL_DIR/checkpoints: run the same command again to resume from the newest" >&2
fi
exit "$status"
