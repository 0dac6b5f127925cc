"""Docstrings are part of the API: every public name documented, every example runnable.

1. Every public class, function, method and property reachable from ``gpgeom.__all__`` (and the ``__all__`` of the
   subpackages it lists) has a docstring (its own or one it inherits).
2. Every ``>>>`` example in a docstring of any ``gpgeom`` module runs and prints what it says (doctest, with
   ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``). An example that cannot run here marks itself ``# doctest: +SKIP``.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

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
