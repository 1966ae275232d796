"""Docs that cannot drift: every `python -m hvd_alexnet ...`, `make ...` and
`bin/...` command line in README.md and docs/ names a command, flags, make
targets and files that exist. In-process: each command's flags are read from
its own definition, not from a copy."""

import glob
import importlib
import os
import re
import shlex

import pytest

from hvd_alexnet import command
from hvd_alexnet.__main__ import COMMANDS

from helpers import ROOT

TOOLS = ("chaos", "gpu_check", "scaling", "probes", "plan", "bench")  # -m hvd_alexnet.tools.X
# The bin/ scripts that pass their arguments on: to train (or doctor: the same flags), or
# to the GPU check. The others (discover_hosts.sh, k8s_worker.sh) take none of their own.
SCRIPT_COMMAND = {"gpu_check.sh": "tools.gpu_check", "run_train_alexnet_imagenet.sh": "train",
                  "run_train_alexnet_multigpu_imagenet.sh": "train",
                  "run_train_alexnet_multinode.sh": "train",
                  "run_train_alexnet_elastic.sh": "train",
                  "slurm_train_alexnet.sbatch": "train"}
PATH_ROOTS = ("bin", "scripts", "configs", "hostfiles", "docker", "tests", "hvd_alexnet", "docs")


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


_FLAGS = {}


class _Captured(Exception):
    pass


def flags_of(name):
    """The flags command `name` (`train`, `data build`, `tools.chaos`) defines:
    its entry point is called until it hands its FlagValues to command.parse."""
    if name not in _FLAGS:
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
            fv = e.args[0]
        finally:
            command.parse = original
        names = set(fv._flags())
        negated = {f"no{n}" for n in names if fv[n].boolean}
        _FLAGS[name] = names | negated | {"flagfile", "help", "helpfull"}
    return _FLAGS[name]


def make_targets():
    text = open(os.path.join(ROOT, "Makefile")).read()
    rules = re.findall(r"^([A-Za-z][\w.-]*(?: +[A-Za-z][\w.-]*)*) *:(?![:=])", text, flags=re.M)
    return {target for rule in rules for target in rule.split()}


def flag_problems(where, name, args):
    """--flags of `args` that command `name` does not define (none after `--`)."""
    args = args[:args.index("--")] if "--" in args else args
    known = flags_of(name)
    return [f"{where}: {name}: --{flag} is not one of its flags"
            for flag in (a[2:].split("=")[0] for a in args if a.startswith("--"))
            if flag not in known]


def check_line(where, tokens, targets):
    """The problems with one command line."""
    problems = []
    for i, tok in enumerate(tokens):
        if tok == "-m" and i + 1 < len(tokens) and tokens[i + 1].startswith("hvd_alexnet"):
            module, rest = tokens[i + 1], tokens[i + 2:]
            if module.startswith("hvd_alexnet.tools."):
                tool = module.split(".")[-1]
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
        elif tok == "make" and (i == 0 or tokens[i - 1] in ("sudo", "then", "do")):
            for word in tokens[i + 1:]:
                if "=" in word or word.startswith("-"):
                    continue
                if word not in targets:
                    problems.append(f"{where}: make {word}: no such target in the Makefile")
        elif re.fullmatch(r"(\./)?bin/[\w.-]+", tok):
            script = os.path.basename(tok)
            if script not in SCRIPT_COMMAND:
                continue  # none of its own flags; a missing file is reported with the paths
            rest = tokens[i + 1:]
            if rest[:1] == ["doctor"]:
                rest = rest[1:]
            problems += flag_problems(where, SCRIPT_COMMAND.get(script, "train"), rest)
    return problems


def path_problems(where, line):
    """Paths into the checkout that do not exist."""
    roots = "|".join(PATH_ROOTS)
    found = re.findall(rf"(?<![\w./<>-])((?:{roots})/[\w./*-]*)", line)
    return [f"{where}: {path}: no such file or folder" for path in found
            if not glob.glob(os.path.join(ROOT, path.rstrip(".")))]


def problems_in(text, where):
    targets, problems = make_targets(), []
    for line in code_of(text):
        for tokens in words(line):
            problems += check_line(where, tokens, targets)
        problems += path_problems(where, line)
    return problems


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
])
def test_the_check_names_what_does_not_exist(text, problem):
    found = problems_in(text, "page.md")
    assert any(problem in p for p in found), found


def test_what_exists_passes_the_check():
    text = ("```bash\nhorovodrun -np 2 -H localhost:2 .venv/bin/python -m hvd_alexnet train "
            "\\\n    --flagfile configs/demo.flags --noeval --num_batches=6  # a comment --x\n"
            "make train NP=4 TRAIN_ARGS=\"--epochs=3\" && make test\n```\n"
            "`python -m hvd_alexnet COMMAND --help`, `sbatch bin/slurm_train_alexnet.sbatch "
            "--epochs=90`, `python -m hvd_alexnet.tools.gpu_check --ranks=2`")
    assert problems_in(text, "page.md") == []
