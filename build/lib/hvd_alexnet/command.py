"""One way to define a command: each command owns an absl `FlagValues` and
parses its own arguments with `parse()`.

    FLAGS = flags.FlagValues()
    command.definers(FLAGS).string("out_dir", None, "...")

    def main(argv):
        (model_dir,) = command.parse(FLAGS, argv, "report", __doc__, positional=["MODEL_DIR"])

So every command takes `--flagfile=FILE` (one `--flag=value` a line, `#`
comments), `--noFLAG` for booleans, prints its help and exits 0 on `--help`,
and refuses a flag it does not own by its name (exit 2).
"""

import dataclasses
import sys
import textwrap

from absl import flags

from hvd_alexnet.errors import UsageError

HELP = ("-h", "--help", "-help", "--helpfull", "-?")


def prog(name):
    """How the command is typed: `train` -> hvd-alexnet train (the console
    command; python -m hvd_alexnet train too); a tool (`tools.chaos`) is a
    module of its own."""
    return f"python -m hvd_alexnet.{name}" if name.startswith("tools.") else \
        f"hvd-alexnet {name}"


def usage(fv, name, doc, positional=()):
    """The help text: usage line, the command's docstring, its flags."""
    names = " ".join(positional)
    lines = [f"usage: {prog(name)} [--flag=value ...] {names}".rstrip(), ""]
    if doc:
        lines += [doc.strip(), ""]
    lines.append("flags:")
    for flag in sorted(fv._flags().values(), key=lambda f: f.name):  # each flag once
        if flag.name in ("flagfile", "undefok") or fv._flags().get(flag.name) is not flag:
            continue
        value = shown = flag.default
        if isinstance(value, list):
            shown = ",".join(map(str, value))
        elif isinstance(value, bool):
            shown = str(value).lower()
        default = "" if value is None else f" (default: {shown})"
        switch = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
        lines.append(textwrap.fill(f"{switch}: {flag.help}{default}", 100,
                                   initial_indent="  ", subsequent_indent="      "))
    lines.append("  --flagfile: a file of flags, one --flag=value a line (# comments)")
    return "\n".join(lines)


def parse(fv, argv, name, doc=None, positional=(), required=(), at_least=None):
    """Parses `argv` (the arguments after the command's name) into `fv`;
    returns the positional arguments. `positional` names them for the help
    (a name ending in ... takes one or more); `required` flags must be set."""
    own = argv[:argv.index("--")] if "--" in argv else argv  # after --: someone else's
    if any(a in HELP for a in own):
        print(usage(fv, name, doc, positional))
        sys.exit(0)
    fv.unparse_flags()
    try:
        rest = fv([name, *argv])[1:]
    except flags.Error as e:
        raise UsageError(f"{e} ({prog(name)} --help lists its flags)") from None
    missing = [f"--{n} is required" for n in required if fv[n].value in (None, "", [])]
    if missing:
        raise UsageError("; ".join(missing))
    many = any(p.endswith("...") for p in positional)
    least = len(positional) if at_least is None else at_least
    if len(rest) < least or (not many and len(rest) > len(positional)):
        want = " ".join(positional) or "no arguments"
        got = " ".join(rest) or "none"
        raise UsageError(f"{name} takes {want}; got: {got}")
    return rest


def definers(fv):
    """`d.string(name, default, help)`, `d.integer`, `d.float`, `d.bool`, `d.enum`,
    `d.list`, `d.alias`: absl's DEFINE_* functions bound to the command's `fv`."""
    kinds = ("string", "integer", "float", "bool", "enum", "list", "alias")
    bound = {k: (lambda f: lambda *a, **kw: f(*a, flag_values=fv, **kw))(
        getattr(flags, f"DEFINE_{k}")) for k in kinds}
    return type("Definers", (), {k: staticmethod(v) for k, v in bound.items()})


def flag_names(fv):
    """The names of the flags `fv` defines, in order, without absl's own
    (--flagfile, --undefok) and without aliases (their flag's value is the same)."""
    return [name for name, flag in fv._flags().items()
            if name not in ("flagfile", "undefok") and not flag.help.startswith("Alias for --")]


def values(fv, defaults=False, **replaced):
    """The parsed flags of `fv` (or with `defaults`, their defaults) as a frozen
    value, a field per flag; `replaced` gives some fields another value (a
    flag's value converted, or one derived from the flags)."""
    names = flag_names(fv)
    kind = dataclasses.make_dataclass("Flags", [*names, *(n for n in replaced if n not in names)],
                                      frozen=True)
    read = {name: fv[name].default if defaults else fv[name].value for name in names}
    return kind(**{**read, **replaced})
