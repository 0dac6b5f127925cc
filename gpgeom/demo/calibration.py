r"""Demo section: calibration of three models' predictive uncertainty on data they have not seen."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gpgeom.demo import Section, save_figure
from gpgeom.metrics import (
    calibration_summary,
    format_calibration_table,
    ood_std_ratio,
    plot_reliability,
    reliability_curve,
)


def _surface(X: torch.Tensor) -> torch.Tensor:
    """A smooth test function on [0, 1]^2 with about unit range."""
    return torch.sin(2 * math.pi * X[..., 0]) * torch.cos(math.pi * X[..., 1]) + 0.5 * X[..., 1] ** 2


def _exact_gp(quick: bool, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, str]:
    """ExactGPModel on noisy draws of a 2-D function; held-out noisy draws in the same square; OOD: [1.5, 2.5]^2."""
    from gpgeom.botorch.exact_gp import ExactGPModel

    g = torch.Generator().manual_seed(seed)
    n, n_test, noise = (40, 500, 0.1) if quick else (150, 2_000, 0.1)
    X = torch.rand(n, 2, generator=g, dtype=torch.float64)
    Y = (_surface(X) + noise * torch.randn(n, generator=g, dtype=torch.float64))[:, None]
    Xt = torch.rand(n_test, 2, generator=g, dtype=torch.float64)
    Yt = _surface(Xt) + noise * torch.randn(n_test, generator=g, dtype=torch.float64)
    model = ExactGPModel(X, Y).fit(restarts=1, seed=seed, progress=False)
    mean, std = model.predict(Xt, return_std=True, observation_noise=True)
    latent_in = model.predict(Xt, return_std=True)[1]
    latent_ood = model.predict(1.5 + torch.rand(n_test, 2, generator=g, dtype=torch.float64), return_std=True)[1]
    ratio = ood_std_ratio(latent_ood, latent_in)
    return Yt, mean[:, 0].detach(), std[:, 0].detach(), ratio, f"{n} train / {n_test} test"


def _rvgp(quick: bool, seed: int, progress: bool | None) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, float, str]:
    """RVGP on 40 % of a noisy sphere field outside a polar patch; held out: the other noisy vectors. OOD: the patch."""
    from gpgeom.datasets.vector_fields import sphere_vector_field
    from gpgeom.models.rvgp import RVGP

    n, k = (500, 32) if quick else (2_000, 80)
    s = sphere_vector_field(n, "mixed", vector_noise=0.05, seed=seed)
    rng = np.random.default_rng(seed)
    patch = s.points[:, 2] > math.cos(0.5)
    observed = np.flatnonzero(~patch & (rng.random(n) < 0.4))
    hidden = np.setdiff1d(np.arange(n), observed)
    gp = RVGP(s.points, n_eigenpairs=k, dim=2, progress=progress)
    gp.fit(observed, s.vectors[observed], progress=progress, seed=seed)
    mean, std = gp.predict(hidden, return_std=True, observation_noise=True)
    latent = gp.predict(hidden, return_std=True)[1].norm(dim=-1)
    in_patch = torch.as_tensor(patch[hidden])
    ratio = ood_std_ratio(latent[in_patch], latent[~in_patch])
    return s.vectors[hidden], mean, std, ratio, f"{len(observed)} observed / {len(hidden)} held-out points (x3)"


def _funbat(
    quick: bool, seed: int, progress: bool | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, str]:
    """FunBaT on a synthetic Tucker tensor; held out: other entries, half at unseen coordinates. OOD: extrapolated."""
    from gpgeom.datasets.tensors import make_synthetic_tensor
    from gpgeom.errors import ConvergenceWarning
    from gpgeom.models.funbat import FunBaT

    n_train, n_test = (600, 400) if quick else (2_000, 1_000)
    data = make_synthetic_tensor(n_train, n_test, rank=2, n_coords=20, noise_sd=0.1, unseen_range="unit", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FunBaT(2, max_sweeps=15 if quick else 60, n_restarts=0, seed=seed)
        model.fit(data.X_train, data.y_train, progress=progress)
    mean, std = (v[:, 0] for v in model.predict(data.X_test, return_std=True, observation_noise=True))
    latent = model.predict(data.X_test, return_std=True)[1][:, 0]
    out, seen = data.test_outside, ~data.test_unseen
    ratio = ood_std_ratio(latent[out], latent[seen]) if bool(out.any()) and bool(seen.any()) else float("nan")
    return data.y_test, mean, std, ratio, f"{n_train} train / {n_test} test entries ({int(out.sum())} extrapolated)"


def calibration_section(out_dir: Path, *, quick: bool, seed: int, progress: bool | None) -> Section:
    r"""Fit ExactGPModel, RVGP and FunBaT on cheap problems, score their predictive distributions of new noisy
    observations at held-out inputs (:func:`gpgeom.metrics.calibration_summary`) and draw one reliability diagram.

    Args:
        out_dir: Folder for the figure.
        quick: Small problems (a few seconds in all).
        seed: Seed of the data and of the fits.
        progress: Progress bars (``None``: gpgeom's rule, :mod:`gpgeom._progress`).

    Returns:
        The demo :class:`~gpgeom.demo.Section`.
    """
    import matplotlib.pyplot as plt

    runs = {
        "ExactGP (2-D function)": lambda: _exact_gp(quick, seed),
        "RVGP (sphere field)": lambda: _rvgp(quick, seed, progress),
        "FunBaT (Tucker tensor)": lambda: _funbat(quick, seed, progress),
    }
    rows, curves, table = {}, {}, []
    for name, run in runs.items():
        t0 = time.perf_counter()
        y, mean, std, ratio, size = run()
        seconds = time.perf_counter() - t0
        y = torch.as_tensor(y, dtype=torch.float64)
        mean, std = mean.detach().double().cpu(), std.detach().double().cpu()
        rows[name] = {"rmse": float((mean - y).square().mean().sqrt()), **calibration_summary(y, mean, std)}
        curves[name] = reliability_curve(y, mean, std)
        table += [
            (f"{name}: data", size),
            (f"{name}: OOD / in-distribution latent std", f"{ratio:.2f}"),
            (f"{name}: fit + predict time", f"{seconds:.1f} s"),
        ]
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    plot_reliability(curves, ax=ax)
    ax.set_title("held-out reliability (central intervals)")
    path = save_figure(fig, out_dir, "calibration_reliability.png")
    text = (
        "Each model predicts new noisy observations at inputs it has not seen (predictive std with the noise). "
        "Calibrated predictions cover their targets with the nominal frequency (coverage columns, and the diagonal "
        "of the diagram), have z RMS near 1, and the lowest NLPD and CRPS (proper scores, Gneiting & Raftery 2007) "
        "for their sharpness (width of the 95% interval, in the units of the targets). The last table rows compare "
        "latent std far from the data (ExactGP: the square [1.5, 2.5]^2; RVGP: an unobserved polar patch; FunBaT: "
        "coordinates beyond the training range) with that at held-out inputs near it.\n\n"
        + format_calibration_table(rows)
    )
    return Section(
        title="Calibration of predictive uncertainty on held-out data", text=text, table=table, figures=[path]
    )
