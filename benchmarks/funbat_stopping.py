#!/usr/bin/env python3
r"""FunBaT on BeijingAir-PM2.5: the default sweep budget against running to convergence, beside the exact GP.

For each of the 5 seeded 80/20 folds of ``benchmarks/funbat.py`` (``data.split(fold)``), in one run:

* FunBaT with its defaults but ``tol=1e-4`` (the default convergence test before 1e-3, when this table was made),
  stopped at the default budget (``max_sweeps=100``) and run to that convergence test (``max_sweeps=400``): the test
  RMSE, the sweeps, whether the convergence test ended the fit, and the calibration (coverage of the central 50/90/95%
  intervals of a new observation, z RMS, NLPD; :mod:`gpgeom.metrics`);
* the same with the temperature and pressure modes held at a lengthscale of 0.7 of their training range and a
  variance of 1 (``learn_hyperparameters=(False, False, True)``, ``lengthscale=(0.7, 0.7, 0.3)``: the time mode
  still learns its own): long, as an exact GP's marginal likelihood finds them (``--trace``: Matérn-1/2 ARD on 2,000
  entries of fold 4, 0.52 and 1.35 of the range);
* an exact GP, Matérn-1/2 ARD on the three coordinates (``benchmarks/funbat.py``'s baseline until ``--kernels``
  found the separable product of Matérn-1/2 kernels stronger), hyperparameters on 2,000 training entries,
  conditioned on the whole training fold.

``--kernels``: instead, which kernel the exact GP's lead comes from: on the same folds, exact GPs with separable
products of one-dimensional Matérn kernels (the prior family of FunBaT's factors) of smoothness 1/2 in every
coordinate, 3/2 in every coordinate (FunBaT's default ``nu``) and 3/2 in temperature and pressure with 1/2 in the
day, beside FunBaT (defaults; temperature and pressure held, run to the former test ``tol=1e-4`` as in
``funbat_stopping.md``), written to ``funbat_exact_kernels.md``.

``--trace FOLD``: instead, one default fit of that fold for 300 sweeps with the test RMSE, the ELBO, the training RMSE,
the noise and the lengthscales every 10 sweeps (a callback; the fit is not stopped), written to
``funbat_stopping_trace.md`` for fold ``TRACE_FOLD`` (4, the committed table), ``local/funbat_stopping_trace_quick.md``
for another fold or with ``--quick``.

``--trace-held FOLD``: instead, on the offsets tensor (``load_beijing_air(day_offsets=True)``), the default fit
followed for ``HELD_SWEEPS`` sweeps (``tol=0``, no restarts) beside the same fit whose hyperparameters are held from
sweep ``HOLD_FROM`` on (the callback sets ``learn_hyperparameters=False``): the test RMSE every 5 sweeps, written to
``funbat_stopping_trace_held.md`` for fold ``HELD_FOLD`` (0), else (or with ``--quick``) its ``_quick`` file. If
the held fit's test RMSE still rises, the hyperparameter steps are not the only reason why the converged fit predicts
a little worse than an early one.

Usage: ``python benchmarks/funbat_stopping.py [--quick] [--folds 0 1 2 3 4] [--skip-dense] [--kernels] [--trace 4]
[--trace-held 0]``. Writes ``benchmarks/results/funbat_stopping.md`` (the full CPU run); ``--quick`` (fold 0, budgets 30
/ 100, no exact GP) or other folds write ``funbat_stopping_quick.md`` (``--kernels``: ``funbat_exact_kernels.md``,
``--quick`` or other folds ``funbat_exact_kernels_quick.md``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine_info, report_name, results_path  # noqa: E402
from funbat import ard_matern, fit_dense_hypers, product_matern, run_dense_gp, run_funbat  # noqa: E402

from gpgeom.datasets.tensors import load_beijing_air  # noqa: E402

#: The default convergence tolerance before #17 changed it to 1e-3: the tables measured then pin it.
FORMER_TOL = 1e-4

#: The two FunBaT configurations (on top of the defaults).
CONFIGS = {
    "defaults (tol=1e-4)": {"tol": FORMER_TOL},
    "temperature, pressure held at lengthscale 0.7": {
        "lengthscale": (0.7, 0.7, 0.3),
        "learn_hyperparameters": (False, False, True),
        "tol": FORMER_TOL,
    },
}


#: ``--kernels``: the smoothness ``nu`` per coordinate (temperature, pressure, day) of the separable exact GPs.
PRODUCT_KERNELS = {
    "Matérn-1/2 in every coordinate": (0.5, 0.5, 0.5),
    "Matérn-3/2 in every coordinate (FunBaT's nu)": (1.5, 1.5, 1.5),
    "Matérn-3/2 in temperature and pressure, 1/2 in the day": (1.5, 1.5, 0.5),
}


def exact_gp_lengthscales(split, seed: int, n_fit: int = 2000) -> str:
    r"""The lengthscales that the exact GP of the stopping table (Matérn-1/2 ARD, inputs scaled to the unit cube)
    learns by its marginal likelihood on ``n_fit`` random training entries, in coordinate units."""
    gp, perm, _ = fit_dense_hypers(split, n_fit, 0.5, seed, "cpu", kernel=ard_matern)
    X = split.X_train[perm[:n_fit]]
    span = X.max(0).values - X.min(0).values
    ls = gp.covar_module.base_kernel.lengthscale.detach().reshape(-1) * span
    day = float(span[2] / (torch.unique(split.X_train[:, 2]).numel() - 1))  # coordinate units per day
    return (
        f"The exact GP (Matérn-1/2 ARD, hyperparameters by its marginal likelihood on {n_fit} training entries of "
        f"this fold) learns lengthscales of {ls[0]:.2f} (temperature), {ls[1]:.2f} (pressure) and {ls[2]:.4f} "
        f"(day; {float(ls[2]) / day:.2f} days) in coordinate units."
    )


#: The folds of the committed ``--trace`` and ``--trace-held`` tables; another fold writes the ``_quick`` file.
TRACE_FOLD, HELD_FOLD = 4, 0


def trace_path(name: str, fold: int, committed_fold: int, quick: bool = False) -> Path:
    r"""The file of a trace table: ``<name>.md`` for the committed fold, ``local/<name>_quick.md`` for another fold
    or a ``--quick`` run (a trace of another fold wrote over the committed table)."""
    return results_path(report_name(name, quick=quick or fold != committed_fold))


def trace(fold: int, sweeps: int = 300, every: int = 10, *, quick: bool = False) -> int:
    r"""``--trace``: the default fit of ``fold`` followed sweep by sweep (module docstring)."""
    import warnings

    from gpgeom.errors import ConvergenceWarning
    from gpgeom.models.funbat import FunBaT

    split = load_beijing_air().split(fold)
    lines = [
        f"# FunBaT defaults on BeijingAir-PM2.5 fold {fold}, followed for {sweeps} sweeps",
        "",
        f"- machine: {machine_info('cpu')}",
        "- every row: the state after that sweep of the final run (after the restarts); lengthscales in coordinate "
        "units (each mode's range is about 10)",
        "",
        "| sweep | test RMSE | train RMSE | ELBO | noise sd | lengthscale temperature | pressure | day |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def follow(model, entry) -> None:
        n = len(model.history)
        if n % every or n <= model.restart_sweeps:
            return
        mean = model.predict(split.X_test)[:, 0]
        rmse = float((mean - split.y_test).square().mean().sqrt())
        ls = entry["lengthscale"]
        lines.append(
            f"| {n} | {rmse:.4f} | {entry['train_rmse']:.4f} | {entry['elbo']:.1f} | {entry['noise_sd']:.4f} | "
            f"{ls[0]:.3f} | {ls[1]:.3f} | {ls[2]:.4f} |"
        )
        print(lines[-1], flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        FunBaT(max_sweeps=sweeps, tol=0.0, seed=0).fit(split.X_train, split.y_train, callback=follow)
    lines += ["", exact_gp_lengthscales(split, seed=fold)]
    out_path = trace_path("funbat_stopping_trace", fold, TRACE_FOLD, quick)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print(f"written {out_path}")
    return 0


#: ``--trace-held``: sweeps followed, and the sweep (1-based count) after which the hyperparameters are held.
HELD_SWEEPS, HOLD_FROM = 60, 9


def trace_held(fold: int, every: int = 5, *, quick: bool = False) -> int:
    r"""``--trace-held``: the default fit on the offsets with and without its hyperparameters held (docstring)."""
    import warnings

    from gpgeom.errors import ConvergenceWarning
    from gpgeom.models.funbat import FunBaT

    split = load_beijing_air(day_offsets=True).split(fold)
    rmse: dict[str, dict[int, float]] = {"learned": {}, "held": {}}
    for name in rmse:

        def follow(model, entry, name=name) -> None:
            n = len(model.history)
            if n % every == 0:
                mean = model.predict(split.X_test)[:, 0]
                rmse[name][n] = float((mean - split.y_test).square().mean().sqrt())
            if name == "held" and n == HOLD_FROM:
                model.learn_hyperparameters = False

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            FunBaT(max_sweeps=HELD_SWEEPS, tol=0.0, n_restarts=0, seed=0).fit(
                split.X_train, split.y_train, callback=follow
            )
    lines = [
        f"# FunBaT on the Beijing offsets tensor, fold {fold}: test RMSE per sweep, hyperparameters learned or held",
        "",
        f"- machine: {machine_info('cpu')}",
        f"- `python benchmarks/funbat_stopping.py --trace-held {fold}`: `FunBaT(max_sweeps={HELD_SWEEPS}, tol=0, "
        f"n_restarts=0, seed=0)` on `load_beijing_air(day_offsets=True).split({fold})`; 'held': the same fit with "
        f"`learn_hyperparameters=False` set by the callback after sweep {HOLD_FROM} (the noise is still learned)",
        "",
        "| sweep | test RMSE, learned | test RMSE, held |",
        "|---|---|---|",
    ]
    lines += [f"| {n} | {rmse['learned'][n]:.4f} | {rmse['held'][n]:.4f} |" for n in sorted(rmse["learned"])]
    out_path = trace_path("funbat_stopping_trace_held", fold, HELD_FOLD, quick)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written {out_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fold 0, budgets 30 / 100, no exact GP")
    ap.add_argument("--folds", type=int, nargs="+", default=None, help="Beijing folds (default 0..4)")
    ap.add_argument("--skip-dense", action="store_true", help="no exact GP")
    ap.add_argument("--kernels", action="store_true", help="exact GPs of several smoothness (docstring)")
    ap.add_argument("--trace", type=int, default=None, metavar="FOLD", help="follow one default fit (docstring)")
    ap.add_argument("--trace-held", type=int, default=None, metavar="FOLD", help="offsets, hyperparameters held")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.trace is not None:
        return trace(args.trace, quick=args.quick)
    if args.trace_held is not None:
        return trace_held(args.trace_held, quick=args.quick)
    folds = args.folds if args.folds is not None else ([0] if args.quick else [0, 1, 2, 3, 4])
    if args.kernels:
        return kernels(folds, results_path(report_name("funbat_exact_kernels", quick=folds != [0, 1, 2, 3, 4])))
    early, long_ = (30, 100) if args.quick else (100, 400)
    dense = not (args.quick or args.skip_dense)
    reduced = args.quick or folds != [0, 1, 2, 3, 4] or not dense
    out_path = results_path(report_name("funbat_stopping", quick=reduced))
    data = load_beijing_air()

    rows: dict[str, list[dict]] = {}
    for name, cfg in CONFIGS.items():
        for budget in (early, long_):
            label = f"FunBaT, {name}, max_sweeps={budget}"
            rows[label] = funbat_folds(data, folds, label, max_sweeps=budget, **cfg)
    if dense:
        label = "exact GP, Matérn-1/2 ARD (hypers on 2000, conditioned on the whole fold)"
        rows[label] = exact_gp_folds(data, folds, label, 0.5, ard_matern)

    header = [
        "# FunBaT on BeijingAir-PM2.5: default sweep budget against convergence",
        "",
        f"- machine: {machine_info('cpu')}",
        f"- folds: {folds} (seeded random 80/20, `benchmarks/funbat.py`); budgets {early} and {long_} sweeps; "
        "tolerance 1e-4 (the default before 1e-3); calibration of a new observation's predictive distribution",
    ]
    return write_tables(rows, folds, header, out_path)


def kernels(folds: list[int], out_path: Path) -> int:
    r"""``--kernels``: separable exact GPs of several smoothness beside FunBaT (module docstring)."""
    data = load_beijing_air()
    rows: dict[str, list[dict]] = {}
    rows["FunBaT, defaults"] = funbat_folds(data, folds, "FunBaT, defaults")
    held = "temperature, pressure held at lengthscale 0.7"
    label = f"FunBaT, {held} (tol=1e-4), max_sweeps=400"
    rows[label] = funbat_folds(data, folds, label, max_sweeps=400, **CONFIGS[held])
    for name, nus in PRODUCT_KERNELS.items():
        label = f"exact GP, product of {name} (hypers on 2000, conditioned on the whole fold)"
        rows[label] = exact_gp_folds(data, folds, label, nus, product_matern)
    header = [
        "# FunBaT on BeijingAir-PM2.5 beside exact GPs with separable kernels of several smoothness",
        "",
        f"- machine: {machine_info('cpu')}",
        f"- folds: {folds} (seeded random 80/20, `benchmarks/funbat.py`); exact GPs: a scaled product of "
        "one-dimensional Matérn kernels (temperature, pressure, day), hyperparameters by the exact marginal "
        "likelihood on 2,000 training entries, conditioned on the whole training fold; calibration of a new "
        "observation's predictive distribution; FunBaT: defaults (tol=1e-3), the held row with tol=1e-4 (the "
        "default before 1e-3) as in `funbat_stopping.md`",
    ]
    return write_tables(rows, folds, header, out_path)


def funbat_folds(data, folds: list[int], label: str, **cfg) -> list[dict]:
    r"""One FunBaT fit (seed 0, ``cfg`` on top of the defaults) per fold: :func:`funbat.run_funbat`'s results."""
    out = []
    for fold in folds:
        out.append(run_funbat(data.split(fold), "cpu", seed=0, **cfg))
        print(f"  [{label}] fold {fold}: RMSE {out[-1]['rmse']:.4f}, {out[-1]['sweeps']} sweeps", flush=True)
    return out


def exact_gp_folds(data, folds: list[int], label: str, nu, kernel) -> list[dict]:
    r"""The exact GP ``kernel(nu, 3)`` per fold (hyperparameters on 2,000 training entries, seeded by the fold,
    conditioned on the whole fold): :func:`funbat.run_dense_gp`'s results."""
    out = []
    for fold in folds:
        t0 = time.perf_counter()
        r = run_dense_gp(data.split(fold), 2000, None, nu, fold, "cpu", kernel=kernel)
        out.append(r)
        print(f"  [{label}] fold {fold}: RMSE {r['rmse']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def write_tables(
    rows: dict[str, list[dict]], folds: list[int], header: list[str], out_path: Path, footer: Sequence[str] = ()
) -> int:
    r"""The per-fold RMSE table and the mean calibration table of ``rows`` (label -> one result per fold), then the
    lines of ``footer``, written to ``out_path`` and printed."""
    lines = header + [
        "",
        "## Test RMSE per fold",
        "",
        "| method | " + " | ".join(f"fold {f}" for f in folds) + " | mean | sweeps | converged |",
        "|---|" + "---|" * (len(folds) + 3),
    ]
    for label, rs in rows.items():
        rmse = [r["rmse"] for r in rs]
        fitted = label.startswith("FunBaT")  # only FunBaT rows have sweeps and a convergence test
        sweeps = " / ".join(str(r["sweeps"]) for r in rs) if fitted else "-"
        conv = f"{sum(bool(r['converged']) for r in rs)} of {len(rs)}" if fitted else "-"
        lines.append(
            f"| {label} | " + " | ".join(f"{v:.4f}" for v in rmse) + f" | {np.mean(rmse):.4f} | {sweeps} | {conv} |"
        )
    lines += [
        "",
        "## Calibration (mean over the folds)",
        "",
        "| method | cov 50% | cov 90% | cov 95% | z RMS | NLPD |",
        "|---|---|---|---|---|---|",
    ]
    for label, rs in rows.items():
        mean = {k: np.mean([r[k] for r in rs]) for k in ("coverage_50", "coverage_90", "coverage_95", "z_rms", "nlpd")}
        lines.append(
            f"| {label} | {mean['coverage_50']:.3f} | {mean['coverage_90']:.3f} | {mean['coverage_95']:.3f} | "
            f"{mean['z_rms']:.3f} | {mean['nlpd']:.3f} |"
        )
    lines.append("")
    if footer:
        lines += [*footer, ""]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
