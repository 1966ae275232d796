"""Docs that cannot drift: every `python -m hvd_alexnet ...` (or `hvd-alexnet
...`), `make ...` and `bin/...` command line in README.md and docs/ names a
command, flags, make targets and files that exist; each command line is parsed
by that command's own flag parser, values included (nothing is run); every
variable set before a script is one the script reads, and every make variable
one the Makefile (or a script it runs) uses; every default in a flag table is
the flag's default. In-process: each command's flags are read from its own
definition, not from a copy. Each check is shown to fail on a planted mistake."""

import glob
import importlib
import os
import re
import shlex

import pytest
from absl import flags

from helpers import ROOT
from hvd_alexnet import command
from hvd_alexnet.__main__ import COMMANDS

TOOLS = ("chaos", "gpu_check", "scaling", "probes", "plan", "bench")  # -m hvd_alexnet.tools.X
# tools that take another program's command line: not parsed
LAUNCHERS = ("horovodrun", "supervise")
# The bin/ scripts that pass their arguments on: to train (or doctor: the same flags), or
# to the GPU check. The others (discover_hosts.sh, k8s_worker.sh) take none of their own.
SCRIPT_COMMAND = {"gpu_check.sh": "tools.gpu_check", "run_train_alexnet_imagenet.sh": "train",
                  "run_train_alexnet_multigpu_imagenet.sh": "train",
                  "run_train_alexnet_multinode.sh": "train",
                  "run_train_alexnet_elastic.sh": "train",
                  "slurm_train_alexnet.sbatch": "train"}
PATH_ROOTS = ("bin", "scripts", "configs", "hostfiles", "docker", "tests", "hvd_alexnet", "docs")
# a first argument `doctor` runs the preflight
DOCTOR_SCRIPTS = ("run_train_alexnet_imagenet.sh", "run_train_alexnet_multigpu_imagenet.sh",
                  "run_train_alexnet_multinode.sh", "slurm_train_alexnet.sbatch")
# Variables a launch script passes on to the ranks without naming them: theirs to read.
INHERITED = ("HOROVOD_", "NCCL_", "TF_", "CUDA_", "OMPI_", "PMIX_", "SLURM_")
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


def doc_files():
    """README.md and docs/, but not docs/results/: what the benchmarks wrote,
    with the command line each was run with at the time."""
    pages = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return [os.path.join(ROOT, "README.md"), *pages]


def code_of(text):
    """The shell lines of fenced blocks (a trailing backslash joins the next)
    and the inline code spans."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = re.findall(r"`([^`\n]+)`", prose.replace("\n", " "))
    return lines + spans


def words(line):
    """The line's words up to a comment, split at the shell's separators."""
    line = re.split(r"(?:^|\s)#", line)[0]
    parts = []
    for piece in re.split(r"&&|\|\||[;|]", line):
        try:
            parts.append(shlex.split(piece))
        except ValueError:  # an unbalanced quote in a span: plain words will do
            parts.append(piece.split())
    return parts


_VALUES = {}


class _Captured(Exception):
    pass


def flag_values(name):
    """The FlagValues of command `name` (`train`, `data build`, `tools.chaos`): its
    entry point is called until it hands them to command.parse."""
    if name not in _VALUES:
        if name.startswith("tools."):
            module, function = name, "main"
        else:
            module, function, _ = COMMANDS[name]
        entry = getattr(importlib.import_module(f"hvd_alexnet.{module}"), function)
        original = command.parse

        def capture(fv, *args, **kwargs):
            raise _Captured(fv)
        command.parse = capture
        try:
            entry([])
        except _Captured as e:
            _VALUES[name] = e.args[0]
        finally:
            command.parse = original
    return _VALUES[name]


def flags_of(name):
    """The flags command `name` defines, with --noFLAG for booleans."""
    fv = flag_values(name)
    names = set(fv._flags())
    negated = {f"no{n}" for n in names if fv[n].boolean}
    return names | negated | {"flagfile", "help", "helpfull"}


def placeholder(value):
    """A value the docs leave to the reader: D, MODEL_DIR, <registry>, N..."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*|<[^>]*>|\.\.\.|\[?[\w=.-]*\.\.\.\]?", value))


def parse_problems(where, name, args):
    """What the command's own flag parser says of `args`, values included: the
    line as absl reads it (flag files too, from the checkout), nothing run."""
    args = args[:args.index("--")] if "--" in args else args
    kept, skip = [], False
    for i, a in enumerate(args):
        if skip or placeholder(a):
            skip = False
            continue
        if a.startswith("--") and "=" in a and placeholder(a.split("=", 1)[1]):
            continue
        if (a.startswith("--") and "=" not in a and i + 1 < len(args)
                and placeholder(args[i + 1])):
            skip = True  # --flag VALUE with VALUE left to the reader
            continue
        kept.append(a)
    if any(a in command.HELP for a in kept):
        return []  # --help: printed before anything is parsed
    fv, here = flag_values(name), os.getcwd()
    try:
        os.chdir(ROOT)
        fv.unparse_flags()
        fv([name, *kept])
    except flags.Error as e:
        return [f"{where}: {name}: {str(e).splitlines()[0]}"]
    finally:
        fv.unparse_flags()
        os.chdir(here)
    return []


def make_targets():
    text = open(os.path.join(ROOT, "Makefile")).read()
    rules = re.findall(r"^([A-Za-z][\w.-]*(?: +[A-Za-z][\w.-]*)*) *:(?![:=])", text, flags=re.M)
    return {target for rule in rules for target in rule.split()}


def flag_problems(where, name, args):
    """--flags of `args` that command `name` does not define (none after `--`),
    and else what its parser says of their values."""
    args = args[:args.index("--")] if "--" in args else args
    known = flags_of(name)
    unknown = [f"{where}: {name}: --{flag} is not one of its flags"
               for flag in (a[2:].split("=")[0] for a in args if a.startswith("--"))
               if flag not in known]
    return unknown or parse_problems(where, name, args)


def uses(text, name):
    """Whether shell or make text reads variable `name`."""
    return bool(re.search(rf"\$\(?\{{?{name}\b|\b{name}\b", text))


def script_reads(script, name):
    """Whether bin/`script` (with what it sources) reads `name`, or passes it on
    to the ranks unnamed (HOROVOD_*, NCCL_*, ...)."""
    text = open(os.path.join(ROOT, "bin", script)).read()
    sourced = open(os.path.join(ROOT, "bin", "checks.sh")).read() if "checks.sh" in text else ""
    return name.startswith(INHERITED) or uses(text + sourced, name)


def make_uses(name):
    """Whether the Makefile, or a script its recipes run, reads make variable `name`
    (make passes a command line's variables to its recipes' environment)."""
    texts = [open(os.path.join(ROOT, "Makefile")).read()] + [
        open(p).read() for p in glob.glob(os.path.join(ROOT, "scripts", "*.sh"))]
    return any(uses(t, name) for t in texts)


def leading_assignments(tokens, i):
    """The NAME=value words just before tokens[i] (and a `bash` or `sudo` between)."""
    names, j = [], i - 1
    while j >= 0 and (tokens[j] in ("bash", "sudo", "env") or ASSIGNMENT.match(tokens[j])):
        if ASSIGNMENT.match(tokens[j]):
            names.append(ASSIGNMENT.match(tokens[j]).group(1))
        j -= 1
    return names, j


def check_line(where, tokens, targets):
    """The problems with one command line."""
    problems = []
    for i, tok in enumerate(tokens):
        if tok == "hvd-alexnet":  # the console command: python -m hvd_alexnet
            tokens = [*tokens[:i], "-m", "hvd_alexnet", *tokens[i + 1:]]
            return problems + check_line(where, tokens, targets)
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("hvd_alexnet"):
            module, rest = tokens[i + 1], tokens[i + 2:]
            if module.startswith("hvd_alexnet.tools."):
                tool = module.split(".")[-1]
                if tool in LAUNCHERS:
                    continue
                if tool not in TOOLS:
                    problems.append(f"{where}: python -m {module}: no such tool")
                else:
                    problems += flag_problems(where, f"tools.{tool}", rest)
            elif module == "hvd_alexnet" and rest and not rest[0].startswith("-"):
                name = " ".join(rest[:2]) if rest[0] == "data" else rest[0]
                if name.isupper() or name.endswith("..."):  # COMMAND: a placeholder
                    continue
                if name not in COMMANDS:
                    problems.append(f"{where}: python -m hvd_alexnet {name}: no such command")
                else:
                    problems += flag_problems(where, name, rest[len(name.split()):])
        elif tok == "make" and leading_assignments(tokens, i)[1] in (-1, *(
                j for j in range(i) if tokens[j] in ("then", "do", "sudo"))):
            assigned, _ = leading_assignments(tokens, i)
            for word in tokens[i + 1:]:
                if ASSIGNMENT.match(word):
                    assigned.append(ASSIGNMENT.match(word).group(1))
                    continue
                if word.startswith("-"):
                    continue
                if word not in targets:
                    problems.append(f"{where}: make {word}: no such target in the Makefile")
            problems += [f"{where}: make: {name} is not a variable the Makefile uses"
                         for name in assigned if not make_uses(name)]
        elif re.fullmatch(r"(\./)?bin/[\w.-]+", tok):
            script = os.path.basename(tok)
            if script not in SCRIPT_COMMAND:
                continue  # none of its own flags; a missing file is reported with the paths
            rest = tokens[i + 1:]
            if rest[:1] == ["doctor"]:
                if script not in DOCTOR_SCRIPTS:
                    problems.append(f"{where}: bin/{script} doctor: that script takes no "
                                    f"`doctor` (only {', '.join(DOCTOR_SCRIPTS)})")
                rest = rest[1:]
            problems += flag_problems(where, SCRIPT_COMMAND.get(script, "train"), rest)
            problems += [f"{where}: {name}=... bin/{script}: the script does not read {name}"
                         for name in leading_assignments(tokens, i)[0]
                         if not script_reads(script, name)]
    return problems


def path_problems(where, line):
    """Paths into the checkout that do not exist."""
    roots = "|".join(PATH_ROOTS)
    found = re.findall(rf"(?<![\w./<>-])((?:{roots})/[\w./*-]*)", line)
    return [f"{where}: {path}: no such file or folder" for path in found
            if not glob.glob(os.path.join(ROOT, path.rstrip(".")))]


def literal(value, default):
    """Whether a flag table's default says `default`: a number, a word, on/off for
    a boolean, a comma list; prose ("auto", "Horovod's ...") only for a flag
    decided at run time (default None or 0)."""
    value = value.strip()
    if isinstance(default, bool):
        return value in (("on", "true", "yes") if default else ("off", "false", "no"))
    if isinstance(default, (list, tuple)):
        return value == ",".join(map(str, default))
    if isinstance(default, (int, float)):
        try:
            return float(value) == float(default)
        except ValueError:
            return default == 0 and not re.search(r"\d", value)
    return value == str(default) if default is not None else True


def table_problems(text, where):
    """Rows of `| flag | default | ...` tables whose default is not the flag's."""
    problems, in_table = [], False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") \
            else None
        if not cells:
            in_table = False
            continue
        if cells[:2] == ["flag", "default"]:
            in_table = True
            continue
        if not in_table or set(cells[0]) <= {"-", " "}:
            continue
        names = re.findall(r"`--(\w+)`", cells[0])
        values = [v for v in cells[1].split(", ")] if cells[1] else []
        if not values:
            continue
        if len(values) != len(names):
            values = [cells[1]] * len(names) if len(names) == 1 else values
        fv = flag_values("train")
        for name, value in zip(names, values):
            if name not in fv:
                problems.append(f"{where}: --{name}: not a train flag")
            elif not literal(value, fv[name].default):
                problems.append(f"{where}: --{name}: the table says {value!r}, the flag's "
                                f"default is {fv[name].default!r}")
    return problems


def problems_in(text, where):
    targets, problems = make_targets(), []
    for line in code_of(text):
        for tokens in words(line):
            problems += check_line(where, tokens, targets)
        problems += path_problems(where, line)
    return problems + table_problems(text, where)


def test_every_command_line_in_the_docs_exists_as_written():
    problems, lines = [], 0
    for path in doc_files():
        text = open(path).read()
        lines += len(code_of(text))
        problems += problems_in(text, os.path.relpath(path, ROOT))
    assert lines > 300  # the docs were read
    assert problems == []


def anchors(path):
    """GitHub's anchors of a page's headings."""
    text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_every_link_between_the_pages_leads_somewhere():
    problems = []
    for path in doc_files():
        text = re.sub(r"^```.*?^```", "", open(path).read(), flags=re.S | re.M)
        text = re.sub(r"`[^`]*`", "", text)  # code, not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            file = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(file):
                problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such file")
            elif anchor and anchor not in anchors(file):
                problems.append(f"{os.path.relpath(path, ROOT)}: {target}: no such heading")
    assert problems == []


@pytest.mark.parametrize("text,problem", [
    ("```bash\npython -m hvd_alexnet train --data_dir=d --epochz=3\n```",
     "train: --epochz is not one of its flags"),
    ("run `horovodrun -np 2 python -m hvd_alexnet data build --output_dir o --shards 4`",
     "data build: --shards is not one of its flags"),
    ("```\nhorovodrun -np 2 -H a:1,b:1 python -m hvd_alexnet \\\n    evaluate --noevall\n```",
     "evaluate: --noevall is not one of its flags"),
    ("`python -m hvd_alexnet trian --epochs=1`", "python -m hvd_alexnet trian: no such command"),
    ("`python -m hvd_alexnet.tools.chaos --seedz=1`", "tools.chaos: --seedz is not one of"),
    ("`make tests`", "make tests: no such target"),
    ("`NUM_GPUS=8 bash bin/run_train_alexnet_multigpu_imagenet.sh --epoch=3`",
     "train: --epoch is not one of its flags"),
    ("`bash bin/run_train.sh`", "bin/run_train.sh: no such file"),
    ("see `configs/nothing.flags`", "configs/nothing.flags: no such file"),
    # values, as the command's own parser reads them
    ("`python -m hvd_alexnet train --data_dir=d --precision=fp8`",
     "train: flag --precision=fp8: value should be one of"),
    ("```\nhvd-alexnet train --lr_schedule=linear\n```", "train: flag --lr_schedule=linear"),
    ("`python -m hvd_alexnet train --epochs=three`", "train: flag --epochs=three"),
    ("`hvd-alexnet trian`", "python -m hvd_alexnet trian: no such command"),
    # variables a script or the Makefile does not read
    ("`NGPUS=8 bash bin/run_train_alexnet_multigpu_imagenet.sh`",
     "NGPUS=... bin/run_train_alexnet_multigpu_imagenet.sh: the script does not read NGPUS"),
    ("`make train NPROC=4`", "make: NPROC is not a variable the Makefile uses"),
    ("`X=1 make tset`", "make tset: no such target"),
    ("`bash bin/run_train_alexnet_elastic.sh doctor`", "that script takes no `doctor`"),
    # a flag table's default
    ("| flag | default | meaning |\n|---|---|---|\n| `--batch_size` | 64 | per rank |",
     "--batch_size: the table says '64', the flag's default is 32"),
    ("| flag | default | meaning |\n|---|---|---|\n| `--xla`, `--log_every` | on, 10 | |",
     "--xla: the table says 'on', the flag's default is False"),
])
def test_the_check_names_what_does_not_exist(text, problem):
    found = problems_in(text, "page.md")
    assert any(problem in p for p in found), found


def test_what_exists_passes_the_check():
    text = ("```bash\nhorovodrun -np 2 -H localhost:2 .venv/bin/python -m hvd_alexnet train "
            "\\\n    --flagfile configs/demo.flags --noeval --num_batches=6  # a comment --x\n"
            "make train NP=4 TRAIN_ARGS=\"--epochs=3\" && make test\n```\n"
            "`python -m hvd_alexnet COMMAND --help`, `sbatch bin/slurm_train_alexnet.sbatch "
            "--epochs=90`, `python -m hvd_alexnet.tools.gpu_check --ranks=2`, "
            "`NUM_GPUS=8 NCCL_DEBUG=INFO bash bin/run_train_alexnet_multigpu_imagenet.sh "
            "--precision=fp16`, `hvd-alexnet evaluate --data_dir D --model_dir M`, "
            "`HOSTFILE=h bash bin/run_train_alexnet_multinode.sh doctor`\n\n"
            "| flag | default | meaning |\n|---|---|---|\n"
            "| `--epochs`, `--max_steps` | 90, 0 | |\n| `--threads` | auto | |\n"
            "| `--xla` | off | |\n")
    assert problems_in(text, "page.md") == []
