"""The run's configuration as one frozen value, the throughput clock's counts,
and a package without import cycles. In-process: no ranks, no data."""

import ast
import dataclasses
import os

import pytest
from absl import flags

from hvd_alexnet import config
from hvd_alexnet.progress import Throughput

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hvd_alexnet")


def _resolve(*argv):
    fv = config.define(flags.FlagValues())
    fv(["train", "--synthetic", "--model_dir=/nonexistent/run", *argv])
    return config.resolve(fv)


def test_the_configuration_is_resolved_once_and_frozen():
    cfg, problems = _resolve("--use_fp16", "--num_batches=6", "--lr_decay_epochs=60,30")
    assert problems == []
    # Other trainers' spellings become this trainer's, and are not kept beside them.
    assert (cfg.precision, cfg.max_steps, cfg.lr_decay_epochs) == ("mixed", 6, (30.0, 60.0))
    assert not hasattr(cfg, "use_fp16") and not hasattr(cfg, "num_batches")
    assert cfg.eval is True  # --eval's three states made a yes or no
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.base_lr = 1.0
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cfg)}
    assert helps["max_steps"] == config.FLAGS["max_steps"].help


def test_the_problems_name_their_flags_and_leave_the_flags_as_given():
    cfg, problems = _resolve("--lr_decay_epochs=30,soon", "--base_lr=-1", "--num_gpus=2")
    assert any(p.startswith("--lr_decay_epochs ['30', 'soon']: want numbers") for p in problems)
    assert any(p.startswith("--base_lr -1.0: must be positive") for p in problems)
    assert any(p.startswith("--num_gpus=2: one process per GPU") for p in problems)
    assert cfg.lr_decay_epochs == ["30", "soon"]


def test_throughput_counts_only_the_timed_steps():
    speed = Throughput()
    speed.start()
    speed.step(8, untimed_end=1.0)  # a warm-up step: waited for, not counted
    speed.step(8)
    speed.step(8)
    assert speed.window_rate() > 0
    speed.step(8)
    speed.stop()
    speed.start()  # a second stretch (after a pause), one step
    speed.step(8)
    speed.stop()
    assert speed.images == 32 and speed.seconds > 0
    assert speed.rate == speed.images / speed.seconds
    assert Throughput().rate == 0.0


def _imports(path, modules):
    """The package's modules `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found & modules


def test_no_module_of_the_package_imports_itself_through_others():
    files = {}
    for folder, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(PACKAGE)).replace(os.sep, ".")
                files[dotted.removesuffix(".__init__")] = path
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    assert "hvd_alexnet.tools.costs" in graph["hvd_alexnet.tools.plan_cluster"]

    clear = set()  # modules none of whose imports lead back

    def cycle_from(module, path):
        for dep in sorted(graph[module] - clear):
            if dep in path:
                return path[path.index(dep):] + [dep]
            found = cycle_from(dep, path + [dep])
            if found:
                return found
        clear.add(module)
        return None

    cycles = [c for m in sorted(graph) for c in [cycle_from(m, [m])] if c]
    assert cycles == []
