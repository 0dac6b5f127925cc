#!/usr/bin/env python3
r"""FunBaT benchmark: the evaluation protocol of Fang et al., "Functional Bayesian Tucker Decomposition for
Continuous-indexed Tensor Data" (ICLR 2024; BeijingAir-PM2.5, random 80/20 folds, test RMSE), on one machine, with
the calibration of the predictive intervals beside the accuracy.

1. BeijingAir-PM2.5 (the shipped tensor), seeded random 80/20 folds: FunBaT Tucker and CP, test RMSE / MAE
   (z-scored units) on all, seen and unseen test entries, wall time, sweeps; beside them, in the same run, the strong
   baseline: an exact GP whose kernel is a scaled product of one-dimensional Matérn-1/2 kernels, one per coordinate
   (the strongest of the kernels compared in ``funbat_stopping.py --kernels``, ahead of a Matérn-1/2 ARD kernel of
   the Euclidean distance; GPyTorch, through :class:`gpgeom.botorch.exact_gp.ExactGPModel`) on the same folds,
   hyperparameters learned on a random subsample of the training entries (exact marginal likelihood), then
   conditioned on the whole training fold (``--dense-pred`` a subsample; both sizes are printed; chunked
   prediction). The reference's logged numbers (5-fold mean: Tucker
   R=2 0.2955, CP R=2 0.2876) are quoted for comparison. A calibration table
   (:func:`gpgeom.metrics.calibration_summary` of the predictive distribution of a new observation: coverage of the
   central 50/90/95% intervals, z RMS, NLPD, CRPS, 95% width; mean over folds) follows the accuracy table; the row
   "former noise prior" is the model before the calibration fix (:mod:`gpgeom.models.funbat.noise`).
2. A synthetic exact rank-2 Tucker tensor (noise sd 0.05) with half of the test entries at unseen coordinates:
   accuracy and calibration.
3. Calibration over seeds: exact rank-2 Tucker tensors of 300 and 1000 entries (noise sd 0.05), 8 seeds, 400
   held-out entries each: the default FunBaT against the former noise prior ``noise_prior=(1, 1)`` (whose rate
   inflated the noise variance by about ``2/N`` and made the intervals too wide; :mod:`gpgeom.models.funbat.noise`),
   pooled over the seeds.
4. Time per sweep versus N: Beijing subsamples from 1k to 16k entries, and synthetic tensors whose unique
   coordinates grow with N (``n_coords = N / 2`` per mode) up to 1e5 entries; the log-log slope is fitted. The
   dense GP's Cholesky time versus N is measured beside it.

5. ``--continuous-only``: only the table of FunBaT on continuous coordinates (every coordinate unique, N = 20,000
   and 100,000; ``benchmarks/funbat_continuous.py``, which writes ``funbat_continuous.md``).

Usage: ``python benchmarks/funbat.py [--quick] [--device cuda] [--folds 5] [--out FILE]``.

Output: a full CPU run (the defaults) writes the committed table ``benchmarks/results/funbat.md``; any other run
writes ``funbat_quick.md``, ``funbat_cuda.md``, ``funbat_cuda_quick.md`` (``benchmarks/_common.report_name``; a run
with ``--quick``, other folds, rank, dense sizes or skipped sections counts as quick), so a quick or GPU run never
overwrites the full table. ``GPGEOM_BENCH_RESULTS`` moves the folder; ``--out`` names the file instead.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_info, report_name, results_path  # noqa: E402

from gpgeom.datasets.tensors import load_beijing_air, make_synthetic_tensor  # noqa: E402
from gpgeom.errors import ConvergenceWarning  # noqa: E402
from gpgeom.metrics import calibration_summary, format_calibration_table, pit_standardized_errors  # noqa: E402
from gpgeom.models.funbat import FunBaT  # noqa: E402

REFERENCE = {"tucker R=2": 0.2955, "tucker R=3": 0.2910, "cp R=2": 0.2876}


def metrics(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor, unseen: torch.Tensor) -> dict[str, float]:
    r"""Accuracy (RMSE, MAE, on all / seen / unseen entries) and the calibration summary of the predictive
    distribution ``N(mean, std^2)`` of ``y`` (:func:`gpgeom.metrics.calibration_summary`)."""
    mean, std, y = mean.detach().double().cpu(), std.detach().double().cpu(), y.double().cpu()
    unseen = unseen.cpu()
    err = mean - y
    out = {
        "rmse": float(err.square().mean().sqrt()),
        "mae": float(err.abs().mean()),
        "rmse_seen": float(err[~unseen].square().mean().sqrt()) if bool((~unseen).any()) else math.nan,
        "rmse_unseen": float(err[unseen].square().mean().sqrt()) if bool(unseen.any()) else math.nan,
        "n_unseen": int(unseen.sum()),
    }
    out.update(calibration_summary(y, mean, std))
    return out


def run_funbat(split, device: str, *, callback=None, **kw) -> dict[str, float]:
    X, y = split.X_train.to(device), split.y_train.to(device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FunBaT(**kw).fit(X, y, callback=callback)
    fit_s = time.perf_counter() - t0
    mean, std = model.predict(split.X_test.to(device), return_std=True, observation_noise=True)  # n x 1 each
    out = metrics(mean[:, 0], std[:, 0], split.y_test, split.test_unseen)
    res = model.fit_result_
    out.update(seconds=fit_s, sweeps=res.sweeps, converged=res.converged, sec_per_sweep=fit_s / res.sweeps)
    out["elbo"] = res.elbo
    out.update(noise_sd=model.noise_variance**0.5, mean=mean[:, 0].detach().cpu(), std=std[:, 0].detach().cpu())
    return out


def product_matern(nu: float | tuple[float, ...], d: int):
    r"""A scaled product of one-dimensional Matérn kernels, one per coordinate (separable; the prior family of
    FunBaT's factors); ``nu`` one smoothness for all coordinates or one per coordinate."""
    from gpytorch.kernels import MaternKernel, ScaleKernel

    nus = (nu,) * d if isinstance(nu, int | float) else tuple(nu)
    k = MaternKernel(nu=nus[0], active_dims=[0])
    for i in range(1, d):
        k = k * MaternKernel(nu=nus[i], active_dims=[i])
    return ScaleKernel(k)


def ard_matern(nu: float, d: int):
    r"""A scaled Matérn kernel of the Euclidean distance with one lengthscale per coordinate (ARD; not separable)."""
    from gpytorch.kernels import MaternKernel, ScaleKernel

    return ScaleKernel(MaternKernel(nu=nu, ard_num_dims=d))


def fit_dense_hypers(split, n_fit: int, nu: float, seed: int, device: str, kernel=product_matern):
    r"""The exact GP's hyperparameters (``kernel(nu, d)``, inputs scaled to the unit cube by the subsample's range):
    L-BFGS-B on the exact marginal likelihood of ``n_fit`` random training entries. Returns the fitted
    ``ExactGPModel``, the random permutation of the training entries whose first ``n_fit`` it was fitted on, and the
    seconds."""
    from botorch.models.transforms.input import Normalize

    from gpgeom.botorch.exact_gp import ExactGPModel

    perm = torch.randperm(split.X_train.shape[0], generator=torch.Generator().manual_seed(seed))
    Xf, yf = split.X_train[perm[:n_fit]].to(device), split.y_train[perm[:n_fit]].to(device)
    t0 = time.perf_counter()
    gp = ExactGPModel(
        Xf, yf[:, None], covar_module=kernel(nu, Xf.shape[1]), input_transform=Normalize(d=Xf.shape[1])
    ).to(device)
    gp.fit(progress=False, max_iter=200, seed=seed)
    return gp, perm, time.perf_counter() - t0


def run_dense_gp(
    split, n_fit: int, n_pred: int | None, nu: float, seed: int, device: str, kernel=product_matern
) -> dict[str, float]:
    r"""Exact GP (``kernel(nu, d)``): hyperparameters on ``n_fit`` random training entries (:func:`fit_dense_hypers`),
    prediction conditioned on ``n_pred`` random training entries (``None``: all of them; Cholesky,
    ``ExactGPModel.predict`` in chunks under its memory budget), both through ``ExactGPModel``."""
    from botorch.models.transforms.input import Normalize

    N = split.X_train.shape[0]
    n_fit, n_pred = min(n_fit, N), N if n_pred is None else min(n_pred, N)
    gp, perm, fit_s = fit_dense_hypers(split, n_fit, nu, seed, device, kernel)
    Xp, yp = split.X_train[perm[:n_pred]].to(device), split.y_train[perm[:n_pred]].to(device)
    t1 = time.perf_counter()
    pred = conditioned_gp(gp, Xp, yp, kernel(nu, Xp.shape[1]), Normalize(d=Xp.shape[1]))
    mean, std = pred.predict(split.X_test.to(device), return_std=True, observation_noise=True)
    pred_s = time.perf_counter() - t1
    out = metrics(mean[..., 0], std[..., 0], split.y_test, split.test_unseen)
    out.update(seconds=fit_s + pred_s, fit_seconds=fit_s, predict_seconds=pred_s, n_fit=n_fit, n_pred=n_pred)
    out.update(mean=mean[..., 0].detach().cpu(), std=std[..., 0].detach().cpu())
    return out


def conditioned_gp(gp, X: torch.Tensor, y: torch.Tensor, covar_module, input_transform=None):
    r"""An ``ExactGPModel`` on ``X`` (``n x d``), ``y`` (``n``) with the hyperparameters of the fitted ``gp`` (same
    kernel structure), in eval mode; its input and outcome transforms are fitted to its own training set. Cholesky
    up to ``n`` (at least 4,096)."""
    from gpgeom.botorch.exact_gp import ExactGPModel

    pred = ExactGPModel(
        X,
        y[:, None],
        covar_module=covar_module,
        input_transform=input_transform,
        max_cholesky_size=max(X.shape[0], 4096) + 1,
    ).to(X.device)
    state = copy.deepcopy(gp.state_dict())
    for key in [k for k in state if k.startswith("outcome_transform") or k.startswith("input_transform")]:
        state.pop(key)  # the transforms of the prediction model are fitted to its own training set
    pred.load_state_dict(state, strict=False)
    return pred.eval()


def sweep_times(X, y, device: str, sweeps: int = 6, **kw) -> tuple[float, float]:
    r"""Median seconds of a sweep without / with a hyperparameter step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m = FunBaT(max_sweeps=sweeps, min_sweeps=sweeps, hyper_warmup=1, hyper_every=2, n_restarts=0, **kw).fit(
            X.to(device), y.to(device)
        )
    plain = [h["seconds"] for h in m.history[1:] if not h["hyper_step"]]
    hyper = [h["seconds"] for h in m.history if h["hyper_step"]]
    return float(np.median(plain)), float(np.median(hyper)) if hyper else math.nan


def slope(ns, ts) -> float:
    ns, ts = np.log(np.asarray(ns, float)), np.log(np.asarray(ts, float))
    return float(np.polyfit(ns, ts, 1)[0])


def dense_cholesky_time(n: int, device: str) -> float:
    from gpytorch.kernels import MaternKernel

    X = torch.rand(n, 3, dtype=torch.float64, device=device) * 10
    k = MaternKernel(nu=0.5, ard_num_dims=3).to(X)
    with torch.no_grad():
        t0 = time.perf_counter()
        K = k(X).to_dense() + 0.1 * torch.eye(n, dtype=X.dtype, device=device)
        torch.linalg.cholesky(K)
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t0


def fmt(v: float, digits: int = 4) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


CALIBRATION_KEYS = ("coverage_50", "coverage_90", "coverage_95", "z_rms", "nlpd", "crps", "width_95")


def calibration_row(rs: list[dict]) -> dict[str, object]:
    r"""The calibration summary averaged over folds (with the RMSE beside it): ``mean ± sd`` over several folds."""
    row: dict[str, object] = {}
    for key in ("rmse", *CALIBRATION_KEYS):
        v = np.array([r[key] for r in rs], float)
        row[key] = float(v[0]) if len(v) == 1 else f"{v.mean():.3f} ± {v.std():.3f}"
    return row


def pooled_calibration(rs: list[dict], ys: list[torch.Tensor]) -> dict[str, float]:
    r"""The calibration summary of the held-out entries of several fits pooled, the mean RMSE, the mean fitted noise
    sd and the mean number of sweeps."""
    y = torch.cat(ys).double()
    mean = torch.cat([r["mean"] for r in rs]).double()
    std = torch.cat([r["std"] for r in rs]).double()
    out: dict[str, float] = {"rmse (mean)": float(np.mean([r["rmse"] for r in rs]))}
    out.update(calibration_summary(y, mean, std))
    out["noise sd (mean)"] = float(np.mean([r["noise_sd"] for r in rs]))
    out["sweeps (mean)"] = float(np.mean([r["sweeps"] for r in rs]))
    return out


# ---------------------------------------------------------------------- the noise models (issue #12): calibration
NOISE_MODELS = ("gaussian", "student_t", "student_t_mode2")
#: FunBaT's arguments per noise model of the table: "student_t_mode2" shares one scale per unique coordinate of mode
#: 2 (Beijing: the day; issue #12, scales shared along a mode).
NOISE_ARGS = {"gaussian": {}, "student_t": {"noise": "student_t"}, "student_t_mode2": {"noise": "student_t",
                                                                                       "scale_mode": 2}}  # fmt: skip


def mixture_calibration(model, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    r"""Accuracy and calibration of the predictive distribution of a new observation from its true quantiles, CDF and
    density (``FunBaT.predict_interval`` / ``predictive_cdf`` / ``log_predictive_density``; a scale mixture for
    Student-t noise): coverage of the central 50/90/95% intervals, z RMS of the PIT, :math:`z_n =
    \Phi^{-1}(F_n(y_n))` (the usual standardised error for a Gaussian predictive), NLPD, CRPS of the mixture
    :math:`\sum_j w_j N(m, \sigma_j^2)` (:math:`\mathbb E|Y - y| - \tfrac12 \mathbb E|Y - Y'|`, in closed form per
    pair of components) and the mean 95% width."""
    y = y.to(model.device, model.dtype)
    mean = model.predict(X)[:, 0]
    out = {"rmse": float((mean - y).square().mean().sqrt())}
    for level in (0.5, 0.9, 0.95):
        lo, hi = model.predict_interval(X, level)
        out[f"coverage_{round(100 * level)}"] = float(((y >= lo[:, 0]) & (y <= hi[:, 0])).double().mean())
        if level == 0.95:
            width = float((hi - lo).mean())
    z = pit_standardized_errors(model.predictive_cdf(X, y)[:, 0], eps=1e-15)
    out["z_rms"] = float(z.square().mean().sqrt())
    out["nlpd"] = -float(model.log_predictive_density(X, y).double().mean())
    m, var, w = (v.double() for v in model.predictive_mixture(X))
    sd = var.sqrt()
    crps = []
    for sl in [slice(i, i + 64) for i in range(0, y.numel(), 64)]:
        ws = w.expand_as(var)[sl]  # weights J, or n x J with scales shared along a mode
        d = (m[sl] - y[sl, None].double()) / sd[sl]
        phi = torch.exp(-0.5 * d.square()) / math.sqrt(2 * math.pi)
        e_abs = (ws * sd[sl] * (2 * phi + d * torch.erf(d / math.sqrt(2.0)))).sum(-1)
        pair = (var[sl, :, None] + var[sl, None, :]).sqrt() * math.sqrt(2.0 / math.pi)
        crps.append(e_abs - 0.5 * (ws[:, :, None] * ws[:, None, :] * pair).sum((-1, -2)))
    out["crps"] = float(torch.cat(crps).mean())
    out["width_95"] = width
    return out


def run_noise_model(split, device: str, noise: str, **kw) -> dict[str, float]:
    r"""FunBaT with ``noise`` fitted on ``split``: :func:`mixture_calibration` on its test entries, the fitted degrees
    of freedom, time and sweeps."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = FunBaT(**NOISE_ARGS[noise], **kw).fit(split.X_train.to(device), split.y_train.to(device))
    out = {"seconds": time.perf_counter() - t0, "sweeps": model.fit_result_.sweeps, "dof": model.dof_}
    with torch.no_grad():
        out.update(mixture_calibration(model, split.X_test.to(device), split.y_test))
    return out


def _t_noise_tensor(n_train: int, dof: float, scale: float, seed: int):
    r"""The synthetic rank-2 Tucker tensor of section 2 with Student-t noise (``dof``, ``scale``) instead of
    Gaussian: a Gaussian scale mixture drawn from ``seed``."""
    import dataclasses

    d = make_synthetic_tensor(n_train, 1000, rank=2, decomposition="tucker", n_coords=60, noise_sd=0.0, seed=1)
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> torch.Tensor:
        lam = torch._standard_gamma(torch.full((n,), dof / 2, dtype=torch.float64), generator=g) / (dof / 2)
        return torch.randn(n, generator=g, dtype=torch.float64) * scale / lam.sqrt()

    return dataclasses.replace(d, y_train=d.y_train + draw(len(d.y_train)), y_test=d.y_test + draw(len(d.y_test)))


def _hetero_noise_tensor(n_train: int, dof: float, scale: float, seed: int):
    r"""The synthetic rank-2 Tucker tensor of section 2 with heteroscedastic noise whose scale varies along mode 2:
    every coordinate of mode 2 (training or held out) draws :math:`\lambda \sim \mathrm{Gamma}(\nu/2, \nu/2)` and its
    entries get noise :math:`N(0, \text{scale}^2/\lambda)` (like a noisy day at every station)."""
    import dataclasses

    d = make_synthetic_tensor(n_train, 1000, rank=2, decomposition="tucker", n_coords=60, noise_sd=0.0, seed=1)
    g = torch.Generator().manual_seed(seed)
    coords = torch.cat([d.X_train[:, 2], d.X_test[:, 2]])
    u, inv = torch.unique(coords, return_inverse=True)
    lam = torch._standard_gamma(torch.full((len(u),), dof / 2, dtype=torch.float64), generator=g) / (dof / 2)
    eps = torch.randn(len(coords), generator=g, dtype=torch.float64) * scale / lam.sqrt()[inv]
    n = len(d.y_train)
    return dataclasses.replace(d, y_train=d.y_train + eps[:n], y_test=d.y_test + eps[n:])


def latest_records(lines: list[str]) -> list[dict]:
    r"""The records of a JSON-lines run log, the last one of each ``(data, noise)`` (a rerun of a fold or a tensor
    replaces its earlier record instead of counting twice in the means over folds), in the order of the log."""
    import json

    latest: dict[tuple[str, str], dict] = {}
    for line in lines:
        if line.strip():
            r = json.loads(line)
            latest.pop((r["data"], r["noise"]), None)
            latest[(r["data"], r["noise"])] = r
    return list(latest.values())


def fold_summary(values: list[float]) -> float | str:
    r"""One cell of a table over folds: the value of a single fold (or the common value of all of them, e.g. the
    infinite degrees of freedom of Gaussian noise), else ``mean ± sd``; non-finite values are left out and counted
    (``mean ± sd (k of n finite)``), never replaced by the first fold's value."""
    v = np.asarray(values, float)
    finite = v[np.isfinite(v)]
    if len(v) == 1 or (len(finite) < len(v) and (v == v[0]).all()):
        return float(v[0])
    if not len(finite):
        return "nan"
    text = f"{finite.mean():.4f} ± {finite.std():.4f}"
    return text if len(finite) == len(v) else f"{text} ({len(finite)} of {len(v)} finite)"


def noise_calibration(args, device: str, max_sweeps: int) -> int:
    r"""The noise-model section (``--noise-calibration``): Gaussian against Student-t noise (one scale per entry, or
    ``student_t_mode2``: one per coordinate of mode 2, Beijing's day), FunBaT only (no exact GP), on the Beijing folds
    ``--fold-ids`` and, with fold 0, on the synthetic tensor (Gaussian noise sd 0.05,
    Student-t noise with 4 degrees of freedom, scale 0.05, and noise whose scale is drawn per coordinate of mode 2;
    ``--hetero-only``: that one only; ``--synthetic-only``: the synthetic tensors without the Beijing folds).
    Every run is appended to a JSON-lines log as it finishes
    (two processes can run the noise models side by side); the table is then written from every record in the log
    (``--noise-report`` only writes it)."""
    import json

    quick = args.quick
    log = results_path(report_name("funbat_calibration_runs", device=device, quick=quick)).with_suffix(".jsonl")
    if not args.noise_report:
        data = load_beijing_air()
        fold_ids = args.fold_ids if args.fold_ids is not None else list(range(1 if quick else 5))
        cases = [(f"beijing fold {k}", lambda k=k: data.split(k)) for k in fold_ids]
        syn: list = []
        if args.synthetic_only:
            cases = []
        if (0 in fold_ids or args.hetero_only or args.synthetic_only) and not args.beijing_only:
            n_syn = 1000 if quick else 2000
            syn.append(("synthetic, Gaussian noise sd 0.05", lambda: make_synthetic_tensor(
                n_syn, 1000, rank=2, decomposition="tucker", n_coords=60, noise_sd=0.05, seed=1)))  # fmt: skip
            syn.append(("synthetic, Student-t noise (4 dof, scale 0.05)", lambda: _t_noise_tensor(n_syn, 4.0, 0.05, 7)))
            syn.append(("synthetic, noise scale per mode-2 coordinate (4 dof, scale 0.05)",
                        lambda: _hetero_noise_tensor(n_syn, 4.0, 0.05, 8)))  # fmt: skip
        if args.hetero_only:  # only the tensor whose noise scale varies along mode 2
            cases, syn = [], syn[2:]
        # every other setting at FunBaT's default (tol, sweeps); --quick caps the sweeps
        caps = {"max_sweeps": max_sweeps} if quick else {}
        for name, make in cases[:1] + syn + cases[1:]:  # fold 0, the synthetic tensors, the other folds
            split = make()
            for noise in args.noise_models:
                r = run_noise_model(split, device, noise, rank=args.rank, nu=1.5, seed=0, **caps)
                r.update(data=name, noise=noise)
                print(
                    f"  [{name}] {noise}: RMSE {r['rmse']:.4f}, dof {r['dof']:.3g}, ({r['seconds']:.0f} s)", flush=True
                )
                with log.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
    records = latest_records(log.read_text().splitlines()) if log.exists() else []
    lines = [
        "# FunBaT: Gaussian against Student-t noise, per entry or shared along a mode (issue #12)",
        "",
        f"- machine: {machine_info(device)}",
        f"- `python benchmarks/funbat.py --noise-calibration{' --quick' if quick else ''}`; FunBaT Tucker "
        f"R={args.rank}, nu=1.5, seed 0, "
        + (f"max {max_sweeps} sweeps" if quick else "tol and max_sweeps at their defaults (1e-3, 100)")
        + " (defaults otherwise); no exact GP; runs may "
        "be split over processes (`--fold-ids`, `--noise-models`, one log), so s / fit depends on the machine's load",
        "- calibration of the predictive distribution of a new observation from its true quantiles "
        "(`FunBaT.predict_interval`; Student-t: the scale mixture by quadrature), z RMS of the PIT "
        "(z = Phi^-1(F(y)), the standardised error for a Gaussian), NLPD from `log_predictive_density`, CRPS of the "
        "mixture; nominal coverage 0.5 / 0.9 / 0.95, z RMS 1",
        "",
    ]
    keys = ("rmse", "coverage_50", "coverage_90", "coverage_95", "z_rms", "nlpd", "crps", "width_95", "dof")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        data_name = "BeijingAir-PM2.5" if r["data"].startswith("beijing") else r["data"]
        groups.setdefault((data_name, r["noise"]), []).append(r)
    rows = {}
    for (data_name, noise), rs in sorted(groups.items()):
        row: dict[str, object] = {}
        for key in keys:
            row[key] = fold_summary([r[key] for r in rs])
        row["s / fit"] = float(np.mean([r["seconds"] for r in rs]))
        row["sweeps"] = float(np.mean([r["sweeps"] for r in rs]))
        folds = sorted({r["data"] for r in rs})
        label = f"{data_name}, {noise}" + (f" ({len(folds)} folds)" if data_name == "BeijingAir-PM2.5" else "")
        rows[label] = row
    if rows:
        lines += [format_calibration_table(rows), ""]
    fold_rows = [r for r in records if r["data"].startswith("beijing")]
    if fold_rows:
        lines += ["Per fold (Beijing):", "", "| fold | noise | RMSE | cov 50 | cov 90 | cov 95 | z RMS | NLPD | dof |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in sorted(fold_rows, key=lambda r: (r["data"], r["noise"])):
            lines.append(
                f"| {r['data'][len('beijing fold ') :]} | {r['noise']} | {r['rmse']:.4f} | {r['coverage_50']:.3f} | "
                f"{r['coverage_90']:.3f} | {r['coverage_95']:.3f} | {r['z_rms']:.3f} | {r['nlpd']:.3f} | "
                f"{r['dof']:.3g} |"
            )
        lines.append("")
    out_path = args.out or results_path(report_name("funbat_calibration", device=device, quick=quick))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written {out_path}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 fold, fewer sweeps and seeds, smaller scaling sizes")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--folds", type=int, default=None, help="number of Beijing folds (default 5, quick 1)")
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--dense-fit", type=int, default=None, help="dense GP hyperparameter subsample")
    ap.add_argument(
        "--dense-pred", type=int, default=None, help="dense GP conditioning subsample (default: the whole fold)"
    )
    ap.add_argument(
        "--skip", nargs="*", default=[], help="sections to skip: beijing dense synthetic calibration scaling"
    )
    ap.add_argument("--out", type=Path, default=None, help="report file (default: see Output in the docstring)")
    ap.add_argument(
        "--noise-calibration",
        action="store_true",
        help="only the noise-model section: Gaussian vs Student-t FunBaT (no exact GP) -> funbat_calibration.md",
    )
    ap.add_argument("--noise-models", nargs="+", default=list(NOISE_MODELS), choices=NOISE_MODELS)
    ap.add_argument("--fold-ids", type=int, nargs="+", default=None, help="Beijing folds of --noise-calibration")
    ap.add_argument("--beijing-only", action="store_true", help="--noise-calibration without the synthetic tensors")
    ap.add_argument("--synthetic-only", action="store_true", help="--noise-calibration on the synthetic tensors only")
    ap.add_argument(
        "--hetero-only", action="store_true", help="--noise-calibration on the heteroscedastic synthetic tensor only"
    )
    ap.add_argument("--noise-report", action="store_true", help="only write the table of the logged noise runs")
    ap.add_argument(
        "--continuous-only",
        action="store_true",
        help="only the continuous-coordinate table (every coordinate unique; benchmarks/funbat_continuous.py)",
    )
    args = ap.parse_args()
    if args.continuous_only:
        from funbat_continuous import main as continuous_main

        return continuous_main(["--quick"] if args.quick else [])
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available.", file=sys.stderr)
        return 2
    quick = args.quick
    folds = args.folds if args.folds is not None else (1 if quick else 5)
    max_sweeps = 30 if quick else 200
    dense_fit = args.dense_fit or (1000 if quick else 2000)
    dense_pred = args.dense_pred or (2000 if quick else None)  # None: conditioned on the whole training fold
    R = args.rank
    if args.noise_calibration or args.noise_report:
        return noise_calibration(args, device, max_sweeps)
    reduced = quick or folds != 5 or R != 2 or bool(args.skip) or args.dense_fit or args.dense_pred
    out_path = args.out or results_path(report_name("funbat", device=device, quick=bool(reduced)))
    lines = [
        "# FunBaT benchmark",
        "",
        f"- machine: {machine_info(device)}",
        f"- device: {device}, mode: {'quick' if quick else 'full'}, folds: {folds}, max sweeps: {max_sweeps}, "
        "convergence test: the default tol=1e-3",
        "- calibration: the predictive distribution of a new observation (noise included), "
        "`gpgeom.metrics.calibration_summary`; z RMS is the RMS of (y - mean) / sd (1 when calibrated)",
        "",
    ]

    def emit(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    configs = {
        f"FunBaT tucker R={R} nu=1.5 (defaults)": dict(rank=R, decomposition="tucker", nu=1.5),
        f"FunBaT tucker R={R} nu=0.5 (the reference's kernel)": dict(rank=R, decomposition="tucker", nu=0.5),
        f"FunBaT cp R={R} nu=1.5": dict(rank=R, decomposition="cp", nu=1.5),
        # before the calibration fix: the noise prior's rate b0 = 1 added about 2/N to the noise variance
        f"FunBaT tucker R={R} nu=1.5, former noise prior (a0, b0) = (1, 1)": dict(
            rank=R, decomposition="tucker", nu=1.5, noise_prior=(1.0, 1.0)
        ),
    }
    if quick:
        configs.pop(f"FunBaT tucker R={R} nu=0.5 (the reference's kernel)")
        configs.pop(f"FunBaT tucker R={R} nu=1.5, former noise prior (a0, b0) = (1, 1)")
    common = dict(max_sweeps=max_sweeps, seed=0)

    # ------------------------------------------------------------------ 1. Beijing
    if "beijing" not in args.skip:
        data = load_beijing_air()
        emit(f"## BeijingAir-PM2.5 (z-scored units), random 80/20 folds (seed 0, folds 0..{folds - 1})")
        emit("")
        emit(
            "| method | RMSE | MAE | RMSE seen | RMSE unseen (n) | 95% coverage | NLPD | s / fold | sweeps |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        results: dict[str, list[dict]] = {}
        labels: dict[str, str] = {}
        methods = list(configs) + ([] if "dense" in args.skip else ["dense GP"])
        for name in methods:
            results[name] = []
            for fold in range(folds):
                split = data.split(fold)
                if name == "dense GP":
                    r = run_dense_gp(split, dense_fit, dense_pred, 0.5, fold, device, kernel=product_matern)
                else:
                    r = run_funbat(split, device, **configs[name], **common)
                results[name].append(r)
                print(f"  [{name}] fold {fold}: RMSE {r['rmse']:.4f} ({r['seconds']:.0f} s)", flush=True)
            rs = results[name]

            def mean_std(key: str, rs=rs) -> str:
                v = np.array([r[key] for r in rs], float)
                return f"{np.nanmean(v):.4f} ± {np.nanstd(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

            label = name
            if name == "dense GP":
                label = (
                    f"exact GP, product of Matérn-1/2 kernels (hypers on {rs[0]['n_fit']}, "
                    f"conditioned on {rs[0]['n_pred']} training entries)"
                )
            labels[name] = label
            sweeps = "-" if name == "dense GP" else f"{np.mean([r['sweeps'] for r in rs]):.0f}"
            emit(
                f"| {label} | {mean_std('rmse')} | {mean_std('mae')} | {mean_std('rmse_seen')} | "
                f"{mean_std('rmse_unseen')} ({rs[0]['n_unseen']}) | {mean_std('coverage_95')} | {mean_std('nlpd')} | "
                f"{np.mean([r['seconds'] for r in rs]):.0f} | {sweeps} |"
            )
        emit(
            f"| reference FunBaT (authors' logs, 5 folds, their splits) | Tucker R=2 {REFERENCE['tucker R=2']}, "
            f"R=3 {REFERENCE['tucker R=3']}; CP R=2 {REFERENCE['cp R=2']} | | | | - | - | | 100-150 |"
        )
        emit("")
        emit(f"Calibration on BeijingAir-PM2.5 (mean ± sd over {folds} fold(s)):")
        emit("")
        emit(format_calibration_table({labels[n]: calibration_row(rs) for n, rs in results.items()}))
        emit("")

    # ------------------------------------------------------------------ 2. synthetic
    if "synthetic" not in args.skip:
        n_train = 2000 if not quick else 1000
        d = make_synthetic_tensor(n_train, 1000, rank=2, decomposition="tucker", n_coords=60, noise_sd=0.05, seed=1)
        emit(f"## Synthetic exact rank-2 Tucker, K=3, noise sd 0.05, {n_train} training entries, 60 coords/mode")
        emit("")
        emit("| method | RMSE | RMSE seen | RMSE unseen (n) | 95% coverage | s | sweeps |")
        emit("|---|---|---|---|---|---|---|")
        syn: dict[str, dict] = {}
        for name, kw in (
            ("FunBaT tucker R=2 nu=1.5", dict(rank=2, nu=1.5)),
            ("FunBaT cp R=2 nu=1.5 (misspecified)", dict(rank=2, decomposition="cp", nu=1.5)),
        ):
            r = run_funbat(d, device, **kw, **common)
            syn[name] = r
            emit(
                f"| {name} | {fmt(r['rmse'])} | {fmt(r['rmse_seen'])} | {fmt(r['rmse_unseen'])} ({r['n_unseen']}) | "
                f"{fmt(r['coverage_95'], 3)} | {r['seconds']:.1f} | {r['sweeps']} |"
            )
        if "dense" not in args.skip:
            r = run_dense_gp(d, 1000, n_train, 1.5, 0, device)
            name = "dense exact GP, product Matérn-3/2 (hypers on 1000)"
            syn[name] = r
            emit(
                f"| {name} | {fmt(r['rmse'])} | {fmt(r['rmse_seen'])} | "
                f"{fmt(r['rmse_unseen'])} ({r['n_unseen']}) | {fmt(r['coverage_95'], 3)} | {r['seconds']:.1f} | - |"
            )
        emit("noise floor: 0.05")
        emit("")
        emit("Calibration on the synthetic tensor:")
        emit("")
        emit(format_calibration_table({n: calibration_row([r]) for n, r in syn.items()}))
        emit("")

    # ------------------------------------------------------------------ 3. calibration over seeds
    if "calibration" not in args.skip:
        seeds = range(3 if quick else 8)
        sizes = [(1000, 40)] if quick else [(300, 20), (1000, 40)]
        emit(
            f"## Calibration over seeds: exact rank-2 Tucker tensors, noise sd 0.05, seeds 0..{len(seeds) - 1}, "
            "400 held-out entries each (half at unseen coordinates), pooled; max 40 sweeps"
        )
        emit("")
        rows: dict[str, dict] = {}
        for n, nc in sizes:
            for label, kw in (
                ("default noise prior", {}),
                ("former noise prior (a0, b0) = (1, 1)", {"noise_prior": (1.0, 1.0)}),
            ):
                rs, ys = [], []
                for seed in seeds:
                    d = make_synthetic_tensor(n, 400, rank=2, n_coords=nc, noise_sd=0.05, seed=seed)
                    rs.append(run_funbat(d, device, rank=2, nu=1.5, max_sweeps=40, seed=0, **kw))
                    ys.append(d.y_test)
                rows[f"N={n}, {nc} coords/mode: FunBaT tucker R=2, {label}"] = pooled_calibration(rs, ys)
                print(f"  calibration N={n} {label}: done", flush=True)
        emit(format_calibration_table(rows))
        emit("")
        emit(
            "Nominal: 0.5 / 0.9 / 0.95 and z RMS 1; the binomial sd of a pooled coverage over "
            f"{400 * len(seeds)} entries is {math.sqrt(0.95 * 0.05 / (400 * len(seeds))):.3f} at 95%. "
            "Noise floor of the RMSE: 0.05."
        )
        emit("")

    # ------------------------------------------------------------------ 4. scaling
    if "scaling" not in args.skip:
        emit(
            f"## Time per sweep versus N (Tucker R={R}, nu=0.5; median of the sweeps without / with a hyperparameter "
            "step, which is a marginal-likelihood step in these first sweeps)"
        )
        emit("")
        data = load_beijing_air()
        ns = [1000, 2000, 4000] if quick else [1000, 2000, 4000, 8000, 16000]
        emit("| data | N | unique coords | s / sweep | s / sweep with hyper step |\n|---|---|---|---|---|")
        rows = []
        g = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(data), generator=g)
        for n in ns:
            idx = perm[: min(n, len(data))]
            X, y = data.X[idx], data.y[idx]
            plain, hyper = sweep_times(X, y, device, rank=R, nu=0.5)
            uniq = sum(int(torch.unique(X[:, k]).numel()) for k in range(3))
            rows.append((n, plain, hyper))
            emit(f"| Beijing | {len(idx)} | {uniq} | {plain:.3f} | {hyper:.3f} |")
        b_slope = slope([r[0] for r in rows], [r[1] for r in rows])
        b_slope_h = slope([r[0] for r in rows], [r[2] for r in rows])
        ns_syn = [1000, 4000, 16000] if quick else [1000, 3000, 10000, 30000, 100000]
        syn_rows = []
        for n in ns_syn:
            d = make_synthetic_tensor(n, 10, rank=2, n_coords=max(n // 2, 10), noise_sd=0.05, seed=2)
            plain, hyper = sweep_times(d.X_train, d.y_train, device, sweeps=4, rank=R, nu=0.5)
            uniq = sum(int(torch.unique(d.X_train[:, k]).numel()) for k in range(3))
            syn_rows.append((n, plain, hyper))
            emit(f"| synthetic | {n} | {uniq} | {plain:.3f} | {hyper:.3f} |")
        s_slope = slope([r[0] for r in syn_rows], [r[1] for r in syn_rows])
        s_slope_h = slope([r[0] for r in syn_rows], [r[2] for r in syn_rows])
        emit("")
        emit(
            f"log-log slope of s/sweep vs N: Beijing {b_slope:.2f} (with hyper step {b_slope_h:.2f}; unique "
            f"coordinates saturate), synthetic {s_slope:.2f} (with hyper step {s_slope_h:.2f}); 1 = linear."
        )
        emit("")
        if "dense" not in args.skip:
            dn = [1000, 2000, 4000] if quick else [1000, 2000, 4000, 8000]
            dt = [dense_cholesky_time(n, device) for n in dn]
            emit("| dense GP: kernel + Cholesky, N | " + " | ".join(map(str, dn)) + " |")
            emit("|---|" + "---|" * len(dn))
            emit("| seconds | " + " | ".join(f"{t:.2f}" for t in dt) + " |")
            emit(f"\nlog-log slope of the dense Cholesky: {slope(dn, dt):.2f} (3 = cubic).")
            emit("")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print(f"written {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
