r"""The house rules of gpgeom, checked on the source: dependencies point one way, kernels import neither the engine
nor BoTorch, models never import datasets, no module holds several concepts' worth of lines, docstrings cite papers
rather than files outside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gpgeom"

#: Layers, lowest first: a module may import gpgeom modules of its own layer or of a lower one only.
LAYERS: dict[str, int] = {
    "errors": 0, "_validation": 0, "_warnings": 0, "_lazy": 0, "_progress": 0, "_io": 0, "_cache": 0, "_seeds": 0,
    "_fingerprint": 0, "_modes": 0, "base": 0,
    "geometry": 1, "kernels": 1, "nn": 1, "pde": 1, "metrics": 1,
    "engine": 2,
    "botorch": 3,
    "models": 4,
    "datasets": 5,
    "demo": 6, "cli": 6, "__main__": 6,
}  # fmt: skip
MAX_LINES = 900


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _top(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0][:-3] if len(rel) == 1 else rel[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    r"""Every ``gpgeom.*`` module imported anywhere in the file (also inside functions), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("gpgeom.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gpgeom.") and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def test_every_module_is_in_a_layer():
    missing = sorted({_top(p) for p in _modules()} - set(LAYERS) - {"__init__"})
    assert not missing, f"add these top-level modules to LAYERS: {missing}"


def test_dependencies_point_one_way():
    bad = []
    for path in _modules():
        top = _top(path)
        if top == "__init__":  # the package face is lazy: it names modules, it imports none of them
            continue
        for line, module in _imports(path):
            target = module.split(".")[1]
            if LAYERS.get(target, 0) > LAYERS[top]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({top}, layer {LAYERS[top]}) imports {module} "
                           f"(layer {LAYERS[target]})")  # fmt: skip
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_kernels_never_import_the_engine_and_models_never_import_datasets():
    for sub, forbidden in (("kernels", "gpgeom.engine"), ("models", "gpgeom.datasets")):
        for path in (PACKAGE / sub).rglob("*.py"):
            hits = [f"{path.name}:{line} {m}" for line, m in _imports(path) if m.startswith(forbidden)]
            assert not hits, f"gpgeom/{sub} must not import {forbidden}: {hits}"


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("gpgeom.kernels", ("botorch", "gpgeom.engine")),
        ("gpgeom.kernels.markov", ("botorch", "gpgeom.engine")),
        ("gpgeom.engine.statespace", ("botorch",)),
        ("gpgeom", ("botorch", "gpytorch", "gpgeom.models")),
        ("gpgeom.botorch", ("botorch",)),
        ("gpgeom.models", ("gpgeom.models.mmgp", "gpgeom.models.rgnp")),
        ("gpgeom.metrics", ("matplotlib", "gpytorch", "botorch", "gpgeom.engine", "gpgeom.models")),
    ],
)
def test_imports_stay_light(module, absent):
    code = f"import sys, {module}; print(sorted(m for m in {list(absent)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import {module} loaded {out.stdout.strip()}"


def test_no_module_over_900_lines():
    long = {
        str(p.relative_to(PACKAGE.parent)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these modules (one concept per module): {long}"


CITATION = re.compile(r"shared/specs|specs/\w+\.md|\bspec ``|\bspec \d|\bissue #?\d+", re.IGNORECASE)


def test_docstrings_cite_papers_not_files_outside_the_repository():
    hits = []
    for path in _modules():
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if CITATION.search(line):
                hits.append(f"{path.relative_to(PACKAGE.parent)}:{i}: {line.strip()[:100]}")
    assert not hits, "cite the paper and its equation instead:\n" + "\n".join(hits)
