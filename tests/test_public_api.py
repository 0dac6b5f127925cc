import importlib

import gpgeom


def test_every_export_resolves_to_the_object_of_its_module():
    for name, module in gpgeom._EXPORTS.items():
        assert getattr(gpgeom, name) is getattr(importlib.import_module(module), name), name


def test_subpackages_export_what_they_list():
    for pkg in (
        "gpgeom.engine",
        "gpgeom.kernels",
        "gpgeom.geometry",
        "gpgeom.botorch",
        "gpgeom.pde",
        "gpgeom.models",
        "gpgeom.metrics",
    ):
        mod = importlib.import_module(pkg)
        for name in mod.__all__:
            assert hasattr(mod, name), f"{pkg}.{name}"


def test_models_export_resolves():
    import gpgeom.models as models

    for name, module in models._EXPORTS.items():
        assert getattr(models, name) is getattr(importlib.import_module(module), name), name


def test_unknown_attribute_raises():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gpgeom.nope  # noqa: B018


def test_no_exported_name_is_shadowed_by_a_submodule_of_the_same_name():
    r"""Importing a submodule binds it on its package, over a lazily exported name: a function ``f`` exported by a
    package that also has a submodule ``f`` would be the module once anything imported that submodule. Run in a
    fresh interpreter that imports every module first, so the order of the tests does not matter."""
    import subprocess
    import sys

    code = """
import importlib, pkgutil, gpgeom
packages = ["gpgeom"] + [m.name for m in pkgutil.walk_packages(gpgeom.__path__, "gpgeom.") if m.ispkg]
for info in pkgutil.walk_packages(gpgeom.__path__, "gpgeom."):
    if not info.name.split(".")[-1].startswith("_") and "demo" not in info.name:
        importlib.import_module(info.name)
for name in packages:
    pkg = importlib.import_module(name)
    for attr, home in getattr(pkg, "_EXPORTS", {}).items():
        want = getattr(importlib.import_module(home), attr)
        assert getattr(pkg, attr) is want, f"{name}.{attr} is {getattr(pkg, attr)!r}, not the export from {home}"
print("checked", len(packages))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("checked")


def test_api_pages_document_public_methods_of_private_mixins():
    r"""FunBaT's ``predict_quantile`` and ``elbo`` live on private mixins, which have no page: the docs extension
    documents them on FunBaT's page (``:inherited-members:`` minus the public bases, whose own pages document theirs);
    classes without such members keep their own members only."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs" / "_ext"))
    try:
        import gpgeom_docs
    finally:
        sys.path.pop(0)
    funbat = importlib.import_module("gpgeom.models.funbat.model")
    excluded = gpgeom_docs.inherited_exclusions([funbat.FunBaT, funbat.FunBaTFitResult])
    assert excluded == ["FunBaT", "FunBaTFitResult", "ModelContract", "object"]
    owners = {b.__name__ for b in funbat.FunBaT.__mro__ if "predict_quantile" in vars(b) or "elbo" in vars(b)}
    assert owners and not owners & set(excluded)  # so autodoc keeps them
    low_rank = importlib.import_module("gpgeom.botorch.low_rank")
    assert gpgeom_docs.inherited_exclusions([low_rank.LowRankSpectralGP, low_rank.Minibatches]) == []
