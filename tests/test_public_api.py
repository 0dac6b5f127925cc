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
