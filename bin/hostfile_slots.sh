#!/usr/bin/env bash
# The number of slots a hostfile gives, counted as Open MPI counts them: a host's
# `slots=N` field (not max_slots=), 1 for a host line without one; comments
# (# to the end of the line) and blank lines count nothing.
#   bash bin/hostfile_slots.sh hostfiles/mpirun.hosts   # prints e.g. 16
set -euo pipefail
[[ -r ${1:-} ]] || { echo "$0: ${1:-(none)}: no such hostfile" >&2; exit 2; }
awk '{ sub(/#.*/, "") }
     NF { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) n = substr($i, 7); total += n }
     END { print total + 0 }' "$1"
