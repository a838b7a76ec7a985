"""The package's modules import one another one way: no import cycle, counting every import
statement (module level, inside functions, under ``TYPE_CHECKING``), because a cycle hidden in a
function import is still two modules that cannot be understood, moved or tested apart.

The graph is read from the source with ``ast`` (nothing is imported) and ordered with the standard
library's ``graphlib``, which names a cycle when there is one."""

from __future__ import annotations

import ast
import graphlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "anomalyseg"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for the package folder ``root``.

    ``from .x import y`` points at ``x.y`` when that is a module of the package, else at ``x``
    (where ``y`` is a name defined in ``x``); imports of other packages are left out, and so is
    the implicit import of a parent package's ``__init__``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            else:
                continue
            deps.update(t for t in targets if t in files and t != name)
        graph[name] = deps
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return e.args[1]
    return None


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """Hand-made package: a cycle closed by a function-level import and one under TYPE_CHECKING are
    both found; the same package without them orders cleanly."""
    pkg = _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/models/__init__.py": "from .base import Base\n",
            "pkg/models/base.py": "import numpy\n\nfrom ..labels import N\n",
            "pkg/models/net.py": "from .checkpoints import load\n",
            "pkg/models/checkpoints.py": "def load():\n    from .net import Net\n",
            "pkg/labels.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from "
            "pkg.zoo import x\nN = 1\n",
            "pkg/zoo.py": "from . import labels\nfrom .models import net\n",
        },
    )
    graph = import_graph(pkg)
    assert graph == {
        "pkg": set(),
        "pkg.models": {"pkg.models.base"},
        "pkg.models.base": {"pkg.labels"},
        "pkg.models.net": {"pkg.models.checkpoints"},
        "pkg.models.checkpoints": {"pkg.models.net"},
        "pkg.labels": {"pkg.zoo"},
        "pkg.zoo": {"pkg.labels", "pkg.models.net"},
    }
    found = cycle(graph)
    assert found is not None and found[0] == found[-1]
    assert set(found) in ({"pkg.models.net", "pkg.models.checkpoints"}, {"pkg.labels", "pkg.zoo"})
    graph["pkg.models.checkpoints"] = set()
    assert set(cycle(graph)) == {"pkg.labels", "pkg.zoo"}
    graph["pkg.labels"] = set()
    assert cycle(graph) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert {"anomalyseg.models.erfnet", "anomalyseg.models.checkpoints", "anomalyseg.zoo"} <= set(
        graph
    )
    assert "anomalyseg.models.checkpoints" in graph["anomalyseg.models.erfnet"]
    found = cycle(graph)
    if found:
        pytest.fail("import cycle: " + " -> ".join(found))


def test_the_report_starts_without_torch():
    # notebook 06 reads the store and never runs a model: its modules (and the explorer) import
    # without torch, which takes seconds to import; a score is still computed with it
    code = (
        "import sys\n"
        "from anomalyseg.report import explorer, figures, selection, tables\n"
        "from anomalyseg import results, scores, workspace\n"
        "assert 'torch' not in sys.modules, 'imported torch'\n"
        "import torch\n"
        "x = torch.randn(19, 4, 5)\n"
        "got = scores.rba(x)\n"
        "assert torch.equal(got, -torch.tanh(x).sum(0))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
