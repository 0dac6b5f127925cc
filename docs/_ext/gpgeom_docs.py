r"""The Sphinx extension that builds gpgeom's site from the repository.

Before Sphinx reads any source it writes the generated pages (all of them under ignored paths of ``docs/``):

* ``api/``: the API reference. ``api/index.rst`` lists every name of ``gpgeom.__all__`` (read from
  ``gpgeom._EXPORTS`` at build time, so a new export appears without editing the docs) and links it to its
  documentation; one page per public module documents the members that the module itself defines.
* ``tutorials/*.ipynb``: copies of ``tutorials/*.ipynb``, stored without outputs and executed by MyST-NB.
* ``_generated/bench_<name>.md``: the measured tables of ``benchmarks/results/<name>.md`` with their headings shifted
  to fit under a page section.
* ``_generated/architecture.svg``: the layer diagram, drawn from ``LAYERS`` in ``tests/test_architecture.py`` (the
  rule that the test checks) and the modules found in ``gpgeom/``.

While Sphinx resolves references it maps a re-exported path (``gpgeom.MMGP``, ``gpgeom.botorch.ExactGPModel``) to
the documented definition (``gpgeom.models.mmgp.model.MMGP``). After reading, it checks that every public name of
``gpgeom.__all__`` is documented, and stops the build with an error naming those that are not.
"""

from __future__ import annotations

import ast
import html
import importlib
import importlib.util
import inspect
import json
import pkgutil
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging

logger = logging.getLogger(__name__)

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent

#: Modules left out of the API reference: the command line and the demo runner are programs, not library API.
EXCLUDED_MODULES = ("gpgeom.cli", "gpgeom.demo", "gpgeom.__main__")

#: Titles of the API groups, by the first component after ``gpgeom.`` of a name's defining module.
GROUPS: dict[str, str] = {
    "base": "The model contract",
    "models": "Models",
    "botorch": "BoTorch adapters",
    "engine": "Engine",
    "kernels": "Kernels",
    "geometry": "Geometry",
    "nn": "Neural networks",
    "pde": "PDE families",
    "errors": "Errors",
}


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------------
def write_if_changed(path: Path, text: str | bytes) -> None:
    r"""Write ``path`` only when its content changes, so that Sphinx does not rebuild unchanged pages."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)


def summary(obj: Any) -> str:
    r"""The first paragraph of an object's docstring, on one line, or ``""``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().split("\n\n")[0].replace("\n", " ").strip()


def public_exports() -> dict[str, str]:
    r"""``gpgeom``'s public names (``__all__`` less ``__version__``) and the modules ``_EXPORTS`` names for them."""
    import gpgeom

    names = [n for n in gpgeom.__all__ if n != "__version__"]
    missing = [n for n in names if n not in gpgeom._EXPORTS]
    if missing:
        raise ExtensionError(f"gpgeom.__all__ names {missing}, which gpgeom._EXPORTS does not map to a module.")
    return {n: gpgeom._EXPORTS[n] for n in names}


def canonical(obj: Any) -> str | None:
    r"""``module.qualname`` where an object is defined, or ``None`` for objects without one."""
    if inspect.ismodule(obj):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname:
        return None
    return f"{module}.{qualname}"


def public_modules() -> list[str]:
    r"""Every importable public module of gpgeom (no component starting with ``_``), without the programs."""
    import gpgeom

    out = ["gpgeom"]
    for info in pkgutil.walk_packages(gpgeom.__path__, "gpgeom."):
        name = info.name
        if any(part.startswith("_") for part in name.split(".")):
            continue
        if any(name == ex or name.startswith(ex + ".") for ex in EXCLUDED_MODULES):
            continue
        out.append(name)
    return sorted(out)


#: Internal helper modules that public docstrings refer to; documented on their own page.
INTERNAL_MODULES = (
    "gpgeom._io",
    "gpgeom._progress",
    "gpgeom._validation",
    "gpgeom._seeds",
    "gpgeom._cache",
    "gpgeom._lazy",
    "gpgeom.datasets._samples",
)


def module_members(module: Any) -> list[str]:
    r"""The names a module documents: those of its ``__all__`` (or its public names) that it defines itself.

    Classes and functions count when their ``__module__`` is this module (a re-export is documented where it is
    defined); other values listed in ``__all__`` are documented as module data.
    """
    names: Iterable[str]
    declared = getattr(module, "__all__", None)
    names = declared if declared is not None else [n for n in vars(module) if not n.startswith("_")]
    out = []
    for name in names:
        try:
            obj = getattr(module, name)
        except AttributeError:
            continue
        if inspect.ismodule(obj):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
        elif declared is None:
            continue  # undeclared module data (imports, constants) stays out
        out.append(name)
    return out


def _private_mixin(cls: type) -> bool:
    return cls.__name__.startswith("_") and cls.__module__.startswith("gpgeom.")


def inherited_exclusions(objects: Iterable[Any]) -> list[str]:
    r"""The ``:inherited-members:`` exclusions that document the public members a class takes from private gpgeom
    mixins (``FunBaT.predict_quantile`` from ``_PredictiveDistribution``), which no page documents otherwise.

    Empty when no class among ``objects`` has such a member; else the names of every other class in their MROs
    (``object``, public bases such as ``ModelContract``: their members are documented on their own pages).
    """
    classes = [c for c in objects if inspect.isclass(c)]

    def from_mixin(cls: type) -> bool:
        for name in dir(cls):
            if name.startswith("_"):
                continue
            owner = next((b for b in cls.__mro__ if name in vars(b)), None)
            if owner is not None and owner is not cls and _private_mixin(owner):
                return True
        return False

    if not any(from_mixin(c) for c in classes):
        return []
    return sorted({b.__name__ for c in classes for b in c.__mro__ if not _private_mixin(b)})


# ---------------------------------------------------------------------------------------------------------------------
# generated pages
# ---------------------------------------------------------------------------------------------------------------------
def rst_title(text: str, char: str = "=") -> str:
    return f"{text}\n{char * len(text)}\n"


def generate_api(outdir: Path) -> dict[str, str]:
    r"""Write the API pages; return ``{public name: documented path}`` for the completeness check."""
    exports = public_exports()
    modules = public_modules()
    documented: dict[str, str] = {}
    module_set = set(modules)
    for name in exports:
        import gpgeom

        obj = getattr(gpgeom, name)
        path = canonical(obj)
        if path is None or path.rsplit(".", 1)[0] not in module_set:
            raise ExtensionError(
                f"gpgeom.{name} is defined in {getattr(obj, '__module__', '?')}, which is not a public module: the "
                "API reference documents public modules only; move it or export it from a public module."
            )
        documented[name] = path

    internal = [m for m in INTERNAL_MODULES if importlib.util.find_spec(m) is not None]
    pages = []
    for mod_name in modules + internal:
        module = importlib.import_module(mod_name)
        members = module_members(module)
        is_package = hasattr(module, "__path__")
        lines = [rst_title(f"``{mod_name}``"), f".. automodule:: {mod_name}"]
        if members:
            lines += ["   :members: " + ", ".join(members), "   :show-inheritance:", "   :member-order: bysource"]
            excluded = inherited_exclusions([getattr(module, n) for n in members])
            if excluded:
                lines += ["   :inherited-members: " + ", ".join(excluded)]
        else:
            lines += ["   :no-members:"]
        if is_package:
            children = [m for m in modules if m.rsplit(".", 1)[0] == mod_name]
            if children:
                lines += ["", rst_title("Modules", "-")]
                for child in children:
                    text = summary(importlib.import_module(child))
                    lines.append(f"* :py:mod:`{child}`" + (f": {text}" if text else ""))
        write_if_changed(outdir / f"{mod_name}.rst", "\n".join(lines) + "\n")
        pages.append(mod_name)

    import gpgeom

    groups: dict[str, list[str]] = {}
    for name, path in documented.items():
        top = path.split(".")[1]
        groups.setdefault(top, []).append(name)
    order = [g for g in GROUPS if g in groups] + sorted(set(groups) - set(GROUPS))
    lines = [
        rst_title("API reference"),
        "Every public name of ``gpgeom`` (``gpgeom.__all__``, generated from ``gpgeom._EXPORTS`` when the site is "
        "built) is importable from the top level, ``from gpgeom import MMGP``, and documented in the module that "
        "defines it. The module pages below document every public module; package faces load their names lazily, "
        "so importing one model does not import the others.",
        "",
        f"``gpgeom.__version__`` is ``{gpgeom.__version__}``.",
        "",
    ]
    for group in order:
        lines += [
            rst_title(GROUPS.get(group, group), "-"),
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 25 75",
            "",
            "   * - name",
            "     - summary",
        ]
        for name in groups[group]:
            obj = getattr(gpgeom, name)
            text = summary(obj) or "(no docstring)"
            lines += [f"   * - :py:obj:`{name} <{documented[name]}>`", f"     - {text}"]
        lines.append("")
    lines += [rst_title("Modules", "-"), ".. toctree::", "   :maxdepth: 1", ""]
    lines += [f"   {page}" for page in pages if page in modules]
    lines += [
        "",
        rst_title("Internal modules", "-"),
        "Helpers that the public API's documentation refers to (input checks, the file format, progress bars, "
        "the cache, lazy package faces). They are not part of the public API and may change.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
    ]
    lines += [f"   {page}" for page in internal]
    write_if_changed(outdir / "index.rst", "\n".join(lines) + "\n")
    for stale in outdir.glob("*.rst"):
        if stale.stem not in pages and stale.stem != "index":
            stale.unlink()
    return documented


#: The reading order of the tutorials; a tutorial not named here follows, in alphabetical order.
TUTORIAL_ORDER = (
    "engine",
    "mmgp",
    "mmgp3d",
    "rvgp",
    "funbat",
    "rgnp",
    "trajectory",
    "user_data",
    "botorch_multiobjective",
)


def copy_tutorials(outdir: Path) -> list[str]:
    r"""Copy ``tutorials/*.ipynb`` next to the tutorials index (MyST-NB executes notebooks inside the source).

    The copies name their language (``language_info``), which notebooks stored without outputs lack, so that the
    code cells are highlighted also when the build does not execute them.
    """
    names = []
    for src in sorted((ROOT / "tutorials").glob("*.ipynb")):
        nb = json.loads(src.read_text())
        nb.setdefault("metadata", {}).setdefault("language_info", {"name": "python", "pygments_lexer": "ipython3"})
        nb["metadata"].setdefault("kernelspec", {"name": "python3", "display_name": "Python 3", "language": "python"})
        write_if_changed(outdir / src.name, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        names.append(src.stem)
    for stale in outdir.glob("*.ipynb"):
        if stale.stem not in names:
            stale.unlink()
    ordered = [n for n in TUTORIAL_ORDER if n in names] + sorted(set(names) - set(TUTORIAL_ORDER))
    toctree = ["```{toctree}", ":maxdepth: 1", "", *ordered, "```", ""]
    write_if_changed(DOCS / "_generated" / "tutorials_toctree.md", "\n".join(toctree))
    return names


_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def shift_headings(text: str, top: int) -> str:
    r"""Renumber Markdown headings so that the shallowest becomes level ``top`` and no level is skipped."""
    lines = text.splitlines()
    levels = sorted({len(m.group(1)) for line in lines if (m := _HEADING.match(line))})
    new_level = {old: top + i for i, old in enumerate(levels)}
    out = []
    for line in lines:
        m = _HEADING.match(line)
        out.append(f"{'#' * min(6, new_level[len(m.group(1))])} {m.group(2)}" if m else line)
    return "\n".join(out) + "\n"


def generate_benchmarks(outdir: Path) -> list[str]:
    r"""``_generated/bench_<name>.md`` for every ``benchmarks/results/<name>.md`` (headings from level 3)."""
    names = []
    for src in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        write_if_changed(outdir / f"bench_{src.stem}.md", shift_headings(src.read_text(), 3))
        names.append(src.stem)
    index = ["<!-- generated from benchmarks/results/*.md -->", ""]
    for name in names:
        index += [f"## `{name}.md`", "", (outdir / f"bench_{name}.md").read_text(), ""]
    write_if_changed(outdir / "benchmarks_all.md", "\n".join(index))
    return names


# ---------------------------------------------------------------------------------------------------------------------
# the architecture diagram
# ---------------------------------------------------------------------------------------------------------------------
def read_layers() -> dict[str, int]:
    r"""``LAYERS`` of ``tests/test_architecture.py``, read from its source (the test and the diagram share it)."""
    tree = ast.parse((ROOT / "tests" / "test_architecture.py").read_text())
    for node in ast.walk(tree):
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "LAYERS" and getattr(node, "value", None) is not None:
            return ast.literal_eval(node.value)
    raise ExtensionError("tests/test_architecture.py defines no LAYERS dict; the architecture page draws from it.")


_LAYER_NAMES = ["foundation", "leaves", "engine", "BoTorch adapters", "models", "data", "programs"]


def architecture_svg() -> str:
    r"""An SVG of the layers, lowest at the bottom, every top-level module in its box, arrows for allowed imports."""
    layers = read_layers()
    package = ROOT / "gpgeom"
    present = {p.stem for p in package.glob("*.py")}
    present |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    by_level: dict[int, list[str]] = {}
    for name, level in layers.items():
        if name in present and name != "__init__":
            by_level.setdefault(level, []).append(name)
    levels = sorted(by_level)
    width, row_h, gap, margin, label_w = 900, 56, 26, 16, 200
    height = margin * 2 + len(levels) * row_h + (len(levels) - 1) * gap
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="14">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
    ]
    palette = ["#e8eef7", "#e3f1e6", "#fdf1dc", "#f6e3ee", "#e6e4f6", "#e9f3f3", "#eeeeee"]
    box_x = margin + label_w
    box_w = width - box_x - margin
    for row, level in enumerate(reversed(levels)):
        y = margin + row * (row_h + gap)
        label = _LAYER_NAMES[level] if level < len(_LAYER_NAMES) else f"layer {level}"
        out.append(
            f'<text x="{margin}" y="{y + row_h / 2 + 5}" fill="#333" font-weight="bold">{level}. '
            f"{html.escape(label)}</text>"
        )
        out.append(
            f'<rect x="{box_x}" y="{y}" width="{box_w}" height="{row_h}" rx="8" fill="{palette[level % 7]}" '
            'stroke="#8a8a8a"/>'
        )
        names = sorted(by_level[level], key=lambda s: (s.startswith("_"), s))
        text = " \u00b7 ".join(n if n.startswith("_") else f"gpgeom.{n}" for n in names)
        size = 14 if len(text) < 80 else max(9, int(14 * 80 / len(text)))
        out.append(
            f'<text x="{box_x + box_w / 2}" y="{y + row_h / 2 + 5}" text-anchor="middle" font-size="{size}" '
            f'font-family="DejaVu Sans Mono, monospace">{html.escape(text)}</text>'
        )
        if row < len(levels) - 1:
            ax = box_x + box_w / 2
            out.append(
                f'<line x1="{ax}" y1="{y + row_h + 2}" x2="{ax}" y2="{y + row_h + gap - 2}" stroke="#555" '
                'stroke-width="2" marker-end="url(#arrow)"/>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Sphinx events
# ---------------------------------------------------------------------------------------------------------------------
def type_variables() -> list[str]:
    r"""``module.name`` of every ``TypeVar`` of the public modules (signatures name them; they have no page)."""
    out = []
    for mod_name in public_modules():
        for name, value in vars(importlib.import_module(mod_name)).items():
            if isinstance(value, typing.TypeVar | typing.ParamSpec):
                out.append(f"{mod_name}.{name}")
    return out


def on_config_inited(app: Sphinx, config: Any) -> None:
    generated = DOCS / "_generated"
    # a signature's type variable and a private base class (show-inheritance) are not documented, by design
    config.nitpick_ignore = list(config.nitpick_ignore) + [("py:class", t) for t in type_variables()]
    config.nitpick_ignore_regex = list(config.nitpick_ignore_regex) + [(r"py:.*", r"gpgeom(\.\w+)*\._\w+")]
    app.gpgeom_documented = generate_api(DOCS / "api")  # type: ignore[attr-defined]
    copy_tutorials(DOCS / "tutorials")
    generate_benchmarks(generated)
    write_if_changed(generated / "architecture.svg", architecture_svg())


def resolve_short_name(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    r"""A bare name (``Mesh``) that the Python domain did not find from the current module: the documented gpgeom
    object of that name, preferring the current package, when that choice is unique."""
    target = node.get("reftarget", "").lstrip("~.")
    if not target or target.startswith("gpgeom."):
        return None
    domain = env.get_domain("py")
    hits = [name for name in domain.objects if name.startswith("gpgeom.") and name.endswith("." + target)]
    if len(hits) > 1:
        here = node.get("py:module") or ""
        while here and len(hits) > 1:
            near = [h for h in hits if h.startswith(here + ".")]
            hits = near or hits
            here = here.rpartition(".")[0]
    if len(hits) != 1:
        return None
    new = node.deepcopy()
    new["reftarget"] = hits[0]
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], hits[0], new, contnode)


def on_missing_reference(app: Sphinx, env: Any, node: Any, contnode: Any) -> Any:
    r"""Resolve ``gpgeom.*`` references to re-exported paths through the object's defining module, and bare names
    through :func:`resolve_short_name`."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if not target.startswith("gpgeom."):
        return resolve_short_name(app, env, node, contnode)
    obj: Any = None
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        break
    path = canonical(obj) if obj is not None else None
    if path is None or path == target:
        return None
    domain = env.get_domain("py")
    new = node.deepcopy()
    new["reftarget"] = path
    return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], path, new, contnode)


def on_env_check_consistency(app: Sphinx, env: Any) -> None:
    r"""Fail the build when a public name of ``gpgeom.__all__`` has no documentation entry."""
    objects = env.get_domain("py").objects
    documented = getattr(app, "gpgeom_documented", {})
    missing = [f"gpgeom.{name} ({path})" for name, path in documented.items() if path not in objects]
    if missing:
        raise ExtensionError("the API reference lacks public names of gpgeom.__all__: " + ", ".join(missing))
    for name, path in documented.items():
        import gpgeom

        if not inspect.getdoc(getattr(gpgeom, name)):
            logger.warning(f"gpgeom.{name} ({path}) has no docstring", type="gpgeom", subtype="docstring")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", on_config_inited)
    app.connect("missing-reference", on_missing_reference)
    app.connect("env-check-consistency", on_env_check_consistency)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
