#!/usr/bin/env bash
# Horovod's host-discovery script for bin/run_train_alexnet_elastic.sh: prints the hosts of
# $HVD_ALEXNET_HOSTS_FILE that may run ranks now, `host:slots` a line (comments and blank lines
# left out). Horovod's elastic driver runs it every few seconds.
set -euo pipefail
sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "${HVD_ALEXNET_HOSTS_FILE:?set by run_train_alexnet_elastic.sh}"
