#!/usr/bin/env bash
# AlexNet on ImageNet across hosts with mpirun and a hostfile, one rank per GPU.
#   HOSTFILE=hostfiles/mpirun.hosts IFACE=eth0 bash bin/run_train_alexnet_multinode.sh [--flag=value ...]
#   HOSTFILE=... IFACE=eth0 bash bin/run_train_alexnet_multinode.sh doctor   # the preflight, launched alike
# NP defaults to the sum of the hostfile's slots; a first argument `doctor` (or
# `train`, the default) picks the command, which gets the same flags.
# runs: mpirun -np 16 --hostfile hostfiles/mpirun.hosts -bind-to none -map-by slot
#         -mca pml ob1 -mca btl ^openib -x PATH -x NCCL_SOCKET_IFNAME=eth0 ...
#         -mca btl_tcp_if_include eth0 -mca oob_tcp_if_include eth0 .venv/bin/python -m hvd_alexnet train ...
# The launching host needs passwordless ssh to every host in HOSTFILE (SSH_PORT sets
# ssh's port, added to any OMPI_MCA_plm_rsh_args already set, such as the MPI
# Operator's), and every host this checkout, its .venv and DATA_DIR at the same paths
# (a shared filesystem or a copy per host). Only rank 0 writes MODEL_DIR.
# mpirun runs under the project's supervisor (hvd_alexnet/tools/supervise.py): a
# SIGTERM, SIGINT or SIGHUP to this script's process (Ctrl-C, `timeout`, Kubernetes
# evicting the launcher pod) is passed to every rank, which checkpoints at its next
# read step and exits 75; the ranks get SIGKILL_TIMEOUT seconds (default 60) before
# mpirun is ended, and no process of the job outlives the launcher. Signalling the
# ranks themselves (bin/k8s_worker.sh does) works too; a signal to mpirun itself is
# Open MPI's order to kill the ranks (in 1 s: odls_base_sigkill_timeout; a longer
# one would also hold every ended job that long, after its first rank exits).
# IFACE (e.g. eth0, ib0) pins MPI's and NCCL's traffic to one interface. PATH,
# LD_LIBRARY_PATH, PYTHONPATH and every HOROVOD_*, NCCL_* and TF_* variable set here
# are passed to the ranks (-x).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCRIPT="$ROOT/bin/$(basename "$0")"
source "$ROOT/bin/checks.sh"
want_count NP SSH_PORT SIGKILL_TIMEOUT HOSTS_WAIT
PYTHON=${PYTHON:-$( [[ -L $ROOT/.venv/bin/python || -e $ROOT/.venv/bin/python ]] && echo "$ROOT/.venv/bin/python" || echo python3 )}
want_python
[[ -n ${HOSTFILE:-} ]] || { echo "$0: set HOSTFILE to your hosts' file (one line per host:" \
  "'name slots=GPUs'; hostfiles/mpirun.hosts is an example to copy)" >&2; exit 2; }
COMMAND=train  # a first argument `doctor` runs the preflight, launched alike, with the same flags
if [[ ${1:-} == train || ${1:-} == doctor ]]; then COMMAND=$1; shift; fi
NP=${NP:-$(bash "$ROOT/bin/hostfile_slots.sh" "$HOSTFILE")}
((NP > 0)) || { echo "$0: no hosts in $HOSTFILE: set NP, or list the hosts (slots=N each)" >&2; exit 2; }
# By its absolute path, mpirun tells the remote hosts where Open MPI is (as --prefix
# does), so that hosts which load Open MPI as a module still find orted.
MPIRUN=$(command -v mpirun) || { echo "$0: no mpirun on PATH (Open MPI: make install)" >&2; exit 2; }
extra=()
if [[ -n ${IFACE:-} ]]; then
  export NCCL_SOCKET_IFNAME="$IFACE"
  extra+=(-mca btl_tcp_if_include "$IFACE" -mca oob_tcp_if_include "$IFACE")
fi
if [[ -n ${SSH_PORT:-} ]]; then  # -mca plm_rsh_args would replace the environment's value
  export OMPI_MCA_plm_rsh_args="${OMPI_MCA_plm_rsh_args:+$OMPI_MCA_plm_rsh_args }-p $SSH_PORT"
fi
[[ $(id -u) -eq 0 ]] && extra+=(--allow-run-as-root)
for name in $(compgen -e); do
  case $name in
    HOROVOD_RANK|HOROVOD_SIZE|HOROVOD_LOCAL_*|HOROVOD_CROSS_*|HOROVOD_HOSTNAME) ;;  # a launcher's, not settings
    PATH|LD_LIBRARY_PATH|PYTHONPATH|HOROVOD_*|NCCL_*|TF_*|HVD_ALEXNET_*) extra+=(-x "$name") ;;
  esac
done
DATA_DIR=${DATA_DIR:-$ROOT/imagenet_tfrecord} MODEL_DIR=${MODEL_DIR:-$ROOT/runs/alexnet}
# the exact command that resumes, printed by the trainer when it stops (passed with -x)
export HVD_ALEXNET_RESUME=${HVD_ALEXNET_RESUME:-$(resume_command HOSTFILE NP IFACE SSH_PORT \
  SIGKILL_TIMEOUT DATA_DIR MODEL_DIR -- ${COMMAND/train/} "$@")}
extra+=(-x HVD_ALEXNET_RESUME)
# HOSTS_WAIT=S: first wait up to S seconds until every host resolves and answers on
# ssh's port (docker/mpijob.yaml sets it: a restarted worker's name can lag its pod).
[[ -n ${HOSTS_WAIT:-} ]] && bash "$ROOT/bin/wait_for_hosts.sh" "$HOSTFILE" "${SSH_PORT:-22}"
cd "$ROOT"
exec "$PYTHON" -m hvd_alexnet.tools.supervise "$MPIRUN" -np "$NP" --hostfile "$HOSTFILE" \
  -bind-to none -map-by slot \
  -mca pml ob1 -mca btl ^openib \
  "${extra[@]}" \
  "$PYTHON" -m hvd_alexnet "$COMMAND" \
  --data_dir="$DATA_DIR" \
  --model_dir="$MODEL_DIR" \
  --batch_size=32 --epochs=90 "$@"
