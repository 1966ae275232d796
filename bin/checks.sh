# Sourced by the launch scripts: their environment variables checked before any
# use. Bash arithmetic on a value runs any $(...) it holds, and a host name ends
# up in a command line, so numbers must be digits and hosts names.
# want_count NAME...: each variable, if set, a whole number (exit 2 naming it).
want_count() {
  local name
  for name in "$@"; do
    [[ -z ${!name-} || ${!name} =~ ^[0-9]+$ ]] \
      || { echo "$0: $name=${!name}: want a whole number" >&2; exit 2; }
  done
}
# want_host NAME VALUE: a host name or address (letters, digits, . - _ :).
want_host() {
  [[ $2 =~ ^[A-Za-z0-9_][A-Za-z0-9._:-]*$ && $2 != *::* ]] \
    || { echo "$0: $1: '$2' is not a host name" >&2; exit 2; }
}
# want_host_slots NAME LIST: LIST is host:slots[,host:slots...], every slot count given.
want_host_slots() {
  local entry
  for entry in ${2//,/ }; do
    [[ $entry =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*:[1-9][0-9]*$ ]] \
      || { echo "$0: $1=$2: '$entry' is not host:slots (each host with its slot count," \
                "e.g. gpu-node-01:8,gpu-node-02:8)" >&2; exit 2; }
  done
}
# resume_command VAR... -- ARG...: the command line that runs this script again as it
# runs now (the VARs that are set, then `bash SCRIPT ARG...`), shell-quoted. The trainer
# prints it (HVD_ALEXNET_RESUME) when it stops with a checkpoint to resume from.
resume_command() {
  local words=() name
  while [[ $1 != -- ]]; do
    [[ -n ${!1-} ]] && words+=("$1=$(printf %q "${!1}")")
    shift
  done
  shift
  words+=(bash "$(printf %q "$SCRIPT")")
  for name in "$@"; do words+=("$(printf %q "$name")"); done
  echo "${words[*]}"
}
# want_python: $PYTHON runs on this host. A .venv's python links to the interpreter it was
# made with (/usr/bin/python3.11): a host of a shared checkout without it cannot start a rank.
want_python() {
  if [[ $PYTHON == */* ]]; then [[ -x $PYTHON ]] && return; else command -v "$PYTHON" >/dev/null && return; fi
  echo "$0: $PYTHON cannot run on $(hostname) (it is $(readlink -m "$PYTHON")): install that" \
       "Python here (Debian and Ubuntu: python3.11), or give every node the one the .venv was" \
       "made with (make install PYTHON=... on a shared path)" >&2
  exit 2
}
