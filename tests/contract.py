r"""The model contract, as one script that every model's tests run (see gpgeom.base).

:func:`check_model_contract` takes a way to build, fit and query a model and checks, in this order:

1. ``repr`` works before fitting; ``save`` before fitting raises ``NotFittedError`` (models that cannot predict
   unfitted);
2. ``fit`` returns the model itself and leaves ``fit_result_``;
3. ``build`` then ``fit`` again, after the caller moved torch's, numpy's and Python's global random streams, gives
   bitwise the same predictions, and leaves those streams where they were (the seeds the model is built and
   fitted with decide everything: ``build`` and ``fit`` must pass them);
3b. ``predict`` returns torch tensors (also inside tuples, lists, dicts and dataclasses) of ``model.dtype``, and
   numpy inputs give the same result as tensor inputs;
4. ``save`` then ``load`` *in a fresh Python process* reproduces the predictions (bitwise up to 1e-12), and
   ``gpgeom.load`` reads the file as the right class;
5. loading the file into another model class raises ``ModelFileError``;
6. ``to(dtype=torch.float32)`` gives float32 predictions close to the float64 ones, ``to(device="cpu")`` returns
   the model, and ``repr`` names the class.

The query function must be a module-level function ``query(model, as_numpy: bool)`` of the test module (the fresh
process imports that module by its file to call it); ``load_kwargs`` likewise a module-level function returning
the keyword arguments ``load`` needs (user callables), or ``None``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import gpgeom
from gpgeom.base import ModelContract
from gpgeom.errors import ModelFileError, NotFittedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class OtherModel(ModelContract):
    r"""A model class of the contract that no file in these tests belongs to."""


def leaves(out: Any) -> list[Any]:
    r"""The leaves of a nested prediction (tuples, lists, dicts, dataclasses); ``None`` leaves dropped."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [x for f in dataclasses.fields(out) for x in leaves(getattr(out, f.name))]
    if isinstance(out, dict):
        return [x for v in out.values() for x in leaves(v)]
    if isinstance(out, list | tuple):
        return [x for v in out for x in leaves(v)]
    return [] if out is None else [out]


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    return [x for x in leaves(out) if isinstance(x, torch.Tensor)]


def assert_tensors(out: Any, dtype: torch.dtype, what: str) -> None:
    bad = [type(x).__name__ for x in leaves(out) if isinstance(x, np.ndarray)]
    assert not bad, f"{what}: predict returned numpy arrays ({bad}); the contract is torch tensors"
    ts = tensor_leaves(out)
    assert ts, f"{what}: predict returned no tensor"
    for t in ts:
        if t.is_floating_point():
            assert t.dtype == dtype, f"{what}: a prediction has dtype {t.dtype}, the model computes in {dtype}"


def assert_close_nested(a: Any, b: Any, rtol: float, atol: float, what: str) -> None:
    ta, tb = tensor_leaves(a), tensor_leaves(b)
    assert len(ta) == len(tb), f"{what}: {len(ta)} vs {len(tb)} tensors"
    for x, y in zip(ta, tb):
        assert x.shape == y.shape, f"{what}: shapes {tuple(x.shape)} vs {tuple(y.shape)}"
        if x.is_floating_point():
            scale = float(y.detach().abs().max()) if y.numel() else 1.0
            torch.testing.assert_close(
                x.detach().double().cpu(), y.detach().double().cpu(), rtol=rtol, atol=atol * max(scale, 1.0),
                msg=lambda m: f"{what}: {m}",
            )  # fmt: skip
        else:
            assert torch.equal(x.cpu(), y.cpu()), what


def global_streams() -> tuple[Any, ...]:
    r"""torch's CPU, numpy's and Python's global random states."""
    return torch.get_rng_state(), np.random.get_state(), random.getstate()  # noqa: NPY002 (the legacy global stream)


def assert_same_streams(before: tuple[Any, ...], after: tuple[Any, ...], what: str) -> None:
    assert torch.equal(before[0], after[0]), f"{what} moved torch's global random stream"
    assert all(np.array_equal(a, b) for a, b in zip(before[1], after[1])), f"{what} moved numpy's global random stream"
    assert before[2] == after[2], f"{what} moved Python's global random stream"


def move_global_streams(seed: int) -> None:
    r"""Reseed and draw from the three global random streams, as a caller between two seeded fits might."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the legacy global stream, as a caller might)
    random.seed(seed)
    torch.rand(5)
    np.random.rand(3)  # noqa: NPY002
    random.random()


def check_model_contract(
    build: Callable[[], Any],
    fit: Callable[[Any], Any],
    query: Callable[[Any, bool], Any],
    tmp_path: Any,
    *,
    load_kwargs: Callable[[], dict[str, Any]] | None = None,
    float32_rtol: float = 1e-3,
    float32_atol: float = 1e-3,
    check_numpy: bool = True,
    unfitted_save_raises: bool = True,
) -> Any:
    r"""Run the contract script on one model (module docstring); returns the fitted model."""
    model = build()
    name = type(model).__name__
    assert repr(model).startswith(name)
    if unfitted_save_raises:
        with pytest.raises(NotFittedError):
            model.save(tmp_path / "unfitted.pt")
    returned = fit(model)
    assert returned is model, f"{name}.fit must return the model itself, got {type(returned).__name__}"
    assert hasattr(model, "fit_result_"), f"{name}.fit must leave `fit_result_`"
    out = query(model, False)

    # seeds: the same build and fit under other global random states give bitwise the same model, and leave them
    move_global_streams(123)
    before = global_streams()
    again = fit(build())
    assert_same_streams(before, global_streams(), f"{name}: build and a seeded fit")
    assert_close_nested(query(again, False), out, 0.0, 0.0, f"{name}: a second seeded build and fit")
    assert_tensors(out, model.dtype, f"{name}.predict")
    if check_numpy:
        assert_close_nested(query(model, True), out, 1e-12, 1e-12, f"{name}.predict with numpy inputs")

    # save, then load in a fresh process
    path = tmp_path / f"{name}.pt"
    model.save(path)
    expected = tmp_path / "expected.pt"
    torch.save(out, expected)
    got = tmp_path / "fresh.pt"
    module_file = sys.modules[query.__module__].__file__
    kwargs_src = f"mod.{load_kwargs.__name__}()" if load_kwargs is not None else "{}"
    script = textwrap.dedent(
        f"""
        import importlib.util, sys, torch
        sys.path.insert(0, {ROOT!r})
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        spec = importlib.util.spec_from_file_location("contract_case", {module_file!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        import gpgeom
        model = gpgeom.{name}.load({str(path)!r}, **{kwargs_src})
        assert type(model).__name__ == {name!r}, type(model)
        torch.save(mod.{query.__name__}(model, False), {str(got)!r})
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"fresh-process load failed:\n{proc.stderr[-3000:]}"
    fresh = torch.load(got, weights_only=False)
    assert_close_nested(fresh, out, 1e-12, 1e-12, f"{name}: predictions after save/load in a fresh process")

    # the file names its class: the generic reader picks it, another class refuses it
    loaded = gpgeom.load(path, **(load_kwargs() if load_kwargs is not None else {}))
    assert type(loaded) is type(model)
    with pytest.raises(ModelFileError, match=f"holds a {name} model, not a OtherModel"):
        OtherModel.load(path)

    # float32 and devices
    assert loaded.to(device="cpu") is loaded
    small = loaded.to(dtype=torch.float32)
    assert small is loaded and small.dtype == torch.float32
    out32 = query(small, False)
    assert_tensors(out32, torch.float32, f"{name}.to(dtype=torch.float32).predict")
    assert_close_nested(out32, out, float32_rtol, float32_atol, f"{name}: float32 vs float64 predictions")
    assert repr(model).startswith(name + "(")
    return model
