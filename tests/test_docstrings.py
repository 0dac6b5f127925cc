"""Docstrings are part of the API: every public name documented, every example runnable.

1. Every public class, function, method and property reachable from ``gpgeom.__all__`` (and the ``__all__`` of the
   subpackages it lists) has a docstring (its own or one it inherits).
2. Every ``>>>`` example in a docstring of any ``gpgeom`` module runs and prints what it says (doctest, with
   ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``). An example that cannot run here marks itself ``# doctest: +SKIP``.
3. The ``Args:`` section of every public callable (and of the public methods of public classes) names exactly the
   parameters of its signature (an entry may name several, ``a, b: ...``; ``*args``/``**kwargs`` may be left out),
   and a default it quotes as a literal (``(default 5)``, ``Default ``"auto"``.``, ````"lm"`` (default)``) is the
   signature's default.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import gpgeom

# Modules behind optional extras: collected only when their dependency is installed.
OPTIONAL_DEPENDENCIES = {"plaid", "distributed", "dask"}


def _public_objects():
    seen: set[int] = set()
    for name in gpgeom.__all__:
        obj = getattr(gpgeom, name)
        members = (
            [(f"{name}.{m}", getattr(obj, m)) for m in getattr(obj, "__all__", [])]
            if inspect.ismodule(obj)
            else [(name, obj)]
        )
        for qual, member in members:
            if id(member) in seen:
                continue
            seen.add(id(member))
            yield qual, member


def _undocumented() -> list[str]:
    missing = []
    for qual, obj in _public_objects():
        if inspect.isclass(obj):
            if not obj.__doc__:
                missing.append(qual)
            for key, value in vars(obj).items():
                if key.startswith("_"):
                    continue
                if isinstance(value, property):
                    if not value.__doc__:
                        missing.append(f"{qual}.{key} (property)")
                    continue
                func = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
                if inspect.isfunction(func) and not func.__doc__:
                    inherited = any(getattr(getattr(base, key, None), "__doc__", None) for base in obj.__mro__[1:])
                    if not inherited:
                        missing.append(f"{qual}.{key}")
        elif inspect.isfunction(obj) and not obj.__doc__:
            missing.append(qual)
    return missing


def test_every_public_name_has_a_docstring():
    missing = _undocumented()
    assert not missing, f"public names without a docstring: {missing}"


def _modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(gpgeom.__path__, "gpgeom."))


def _doctests():
    cases = []
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in _modules():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and err.name.split(".")[0] in OPTIONAL_DEPENDENCIES:
                continue
            raise
        for test in finder.find(module, name):
            if test.examples and test.name.startswith(name):
                cases.append(pytest.param(test, id=test.name))
    return cases


def test_doctests_were_found():
    # The collection below must not silently become empty (e.g. if the finder stopped seeing the examples).
    assert len(_doctests()) >= 10


@pytest.mark.parametrize("test", _doctests())
def test_docstring_example_runs(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


# ---------------------------------------------------------------------------------------------------------------
# 3. Args sections against signatures

_ENTRY = re.compile(r"(\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)\s*(?:\([^)]*\))?\s*:(.*)")
# a quoted default: "(default 5)", "default ``1e-3``", "Defaults to ``x``", "Default 24" / "``"lm"`` (default"
_DEFAULT_AFTER = re.compile(r"\b[Dd]efault(?:s to|:)?\s+(``[^`]+``|[-+]?[0-9][0-9.e+-]*\b)")
_DEFAULT_BEFORE = re.compile(r"``([^`]+)``\s*\(default\b")


def _args_entries(doc: str) -> dict[str, str]:
    r"""``{name: description}`` of a Google-style ``Args:`` section (one key per name of an ``a, b:`` entry)."""
    lines = doc.expandtabs().split("\n")
    for i, line in enumerate(lines):
        if line.strip() not in ("Args:", "Arguments:"):
            continue
        base, indent, entries, current = len(line) - len(line.lstrip()), None, {}, []
        for text in lines[i + 1 :]:
            if not text.strip():
                continue
            depth = len(text) - len(text.lstrip())
            if depth <= base:
                break
            indent = depth if indent is None else indent
            match = _ENTRY.fullmatch(text.strip()) if depth == indent else None
            if match:
                current = [name.strip() for name in match.group(1).split(",")]
                for name in current:
                    entries[name] = match.group(2)
            else:
                for name in current:
                    entries[name] += " " + text.strip()
        return entries
    return {}


def _callables():
    seen: set[int] = set()
    for qual, obj in _public_objects():
        if inspect.isfunction(obj):
            yield qual, obj, obj.__doc__
        elif inspect.isclass(obj):
            yield qual, obj, obj.__doc__  # the constructor's arguments are in the class docstring
            for key in dir(obj):
                owner = next((c for c in obj.__mro__ if key in vars(c)), None)
                if key.startswith("_") or owner is None or not owner.__module__.startswith("gpgeom"):
                    continue  # methods of gpgeom's classes, also inherited ones (not BoTorch's or torch's)
                value = vars(owner)[key]
                func = value.__func__ if isinstance(value, classmethod | staticmethod) else value
                if inspect.isfunction(func) and id(func) not in seen:
                    seen.add(id(func))
                    # a classmethod bound to its class: its signature leaves out ``cls``
                    yield f"{qual}.{key}", getattr(obj, key) if isinstance(value, classmethod) else func, func.__doc__


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip().strip("`"))
    except (ValueError, SyntaxError):
        return inspect.Parameter.empty


def _same(quoted, default) -> bool:
    if isinstance(quoted, int | float) and isinstance(default, int | float) and not isinstance(default, bool):
        return float(quoted) == float(default)
    return quoted == default


def _args_mismatches() -> tuple[list[str], int]:
    problems, checked = [], 0
    for qual, func, doc in _callables():
        entries = _args_entries(inspect.cleandoc(doc or ""))
        if not entries:
            continue
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            continue
        params = [p for p in params if p.name != "self"]
        names = {p.name: p for p in params}
        names.update({"*" + p.name: p for p in params if p.kind is p.VAR_POSITIONAL})
        names.update({"**" + p.name: p for p in params if p.kind is p.VAR_KEYWORD})
        for name, text in entries.items():
            param = names.get(name)
            if param is None:
                problems.append(f"{qual}: documents `{name}`, which is not a parameter of {list(names)}")
                continue
            if param.default is param.empty or param.default is None:
                continue  # a computed default (None) is described, not quoted
            for match in (*_DEFAULT_AFTER.finditer(text), *_DEFAULT_BEFORE.finditer(text)):
                quoted = _literal(match.group(1))
                if quoted is inspect.Parameter.empty:
                    continue
                checked += 1
                if not _same(quoted, param.default):
                    problems.append(
                        f"{qual}({name}): the docstring quotes default {quoted!r}, the signature has {param.default!r}"
                    )
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in entries:
                problems.append(f"{qual}: parameter `{p.name}` is not in its Args section")
    return problems, checked


def test_args_sections_match_the_signatures():
    problems, checked = _args_mismatches()
    assert not problems, "Args sections that disagree with their signatures:\n" + "\n".join(problems)
    # the default check must keep seeing the quoted defaults (e.g. MMGP's n_modes_geometry, "Default 24")
    assert checked >= 10, f"only {checked} quoted defaults were compared"


def test_args_check_sees_a_wrong_name_and_a_wrong_default():
    # the parser itself, on a docstring with a renamed parameter, a missing one and a stale default
    def func(a, b=3, *, mode="auto"):
        r"""Summary.

        Args:
            a, c: Two names, ``c`` is not a parameter.
            mode: ``"fast"`` (default) or ``"auto"``.
        """

    entries = _args_entries(inspect.cleandoc(func.__doc__))
    assert set(entries) == {"a", "c", "mode"}
    assert [m.group(1) for m in _DEFAULT_BEFORE.finditer(entries["mode"])] == ['"fast"']
    assert _literal('``"fast"``') == "fast" and not _same("fast", "auto") and _same(24, 24.0)
