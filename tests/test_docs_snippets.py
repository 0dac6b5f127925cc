r"""Python examples of the documentation that the site's build does not execute (plain ``python`` blocks, not
``code-cell``): the cheap ones run here as written, on small data standing in for the reader's (``model``,
``X_test``, ... defined before the block, as the page's prose assumes)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippet(page: str, marker: str) -> str:
    r"""The one ``python`` block of ``page`` that contains ``marker``."""
    blocks = [b for b in _BLOCK.findall((ROOT / page).read_text()) if marker in b]
    assert len(blocks) == 1, f"{page}: {len(blocks)} python blocks contain {marker!r}"
    return blocks[0]


def _small_gp():
    from gpgeom import ExactGPModel

    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 2, dtype=torch.float64, generator=g)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:] ** 2
    X_test = torch.rand(7, 2, dtype=torch.float64, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ExactGPModel(X, Y).fit(restarts=0, seed=0, progress=False)
    return model, X, Y, X_test


def test_the_memory_budget_example_of_scaling_runs_as_written():
    # it called model.fit(X, Y) on the ExactGPModel of its first line: TypeError (fit takes no data)
    model, X, Y, X_test = _small_gp()
    ns = {"model": model, "X": X, "Y": Y, "X_test": X_test}
    torch.manual_seed(1)  # the example's fit() draws its seed from torch's global stream, as does the reference's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(_snippet("docs/scaling.md", "memory_budget"), ns)
    # inside the budget: the refit model's mean, equal to a refit outside it (the budget only sizes the chunks)
    from gpgeom import ExactGPModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(1)
        reference = ExactGPModel(X, Y).fit().predict(X_test)
    assert ns["mean"].shape == (7, 1) and ns["std"].shape == (7, 1)
    torch.testing.assert_close(ns["mean"], reference, rtol=1e-10, atol=1e-12)


def test_the_calibration_example_runs_as_written():
    model, X, Y, X_test = _small_gp()
    y_test = torch.sin(4 * X_test[:, :1]) + X_test[:, 1:] ** 2
    ns = {"model": model, "X_test": X_test, "y_test": y_test}
    exec(_snippet("docs/calibration.md", "calibration_summary"), ns)
