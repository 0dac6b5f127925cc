"""FunBaT where an exact GP cannot run: one million observed entries, beside a sparse variational GP.

Data: a synthetic continuous-indexed tensor on a 3-mode grid (200 x 200 x 50 coordinates in [0, 1]) of exact Tucker
rank 2 with smooth mode functions, y = f + noise (sd 0.1); N training entries and 100,000 test entries drawn without
replacement from the 2,000,000 cells (every coordinate of a mode is seen in training).

Methods, each in its own child process (peak resident memory of that process; time of the fit and of the prediction
of the test entries, one torch thread):
- ``FunBaT(2)`` with its defaults (hyperparameters learned), at most ``--sweeps`` sweeps, run ``--repeats`` times
  (default 3), each in a fresh process: its peak resident memory varies from run to run of the same code (1060 to
  1655 MB at 1e6 entries on the 2-core VM, likely transparent huge pages, whose setting the machine line gives), so the
  table gives the median and the range (min-max) of the runs' peaks and the median of their times; the runs are the
  same fit (seed 0, one thread), and the accuracy columns are the first run's;
- a sparse variational GP (Hensman et al., "Gaussian processes for big data", UAI 2013) from GPyTorch: M inducing
  points (initialised at a random subset of the training inputs, then learned), Matern-3/2 ARD kernel on the three
  coordinates, Gaussian likelihood, Adam (learning rate 0.03) on all parameters over minibatches of 4,096 entries
  for ``--svgp-epochs`` epochs.
- the exact GP is not run: its N x N kernel matrix alone would take N^2 x 8 bytes (8 TB at N = 1e6).

Accuracy and calibration on the test entries against the noisy observations (gpgeom.metrics: RMSE, 95% coverage,
z RMS, NLPD with observation noise); the noise floor is 0.1.

Usage: python benchmarks/funbat_scale.py [--quick] [--n 1000000] [--sweeps 40] [--svgp-epochs 3] [--inducing 512]
[--repeats 3]
Writes ``benchmarks/results/funbat_scale.md`` (``results/local/funbat_scale_quick.md`` for a quick or reduced run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    markdown_table,
    peak_rss_mib,
    report_name,
    reset_peak_rss,
    status_mib,
    transparent_hugepages,
    write_benchmark_report,
)

SHAPE = (200, 200, 50)
NOISE = 0.1
N_TEST = 100_000
#: FunBaT runs by default: the median of three is not moved by one run's outlying peak.
REPEATS = 3


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(X_train (n, 3), y_train (n,), X_test (N_TEST, 3), y_test (N_TEST,))``: rank-2 Tucker, smooth modes."""
    rng = np.random.default_rng(seed)
    grids = [np.linspace(0.0, 1.0, s) for s in SHAPE]
    freq = [(1.0, 2.5), (1.5, 3.0), (0.5, 2.0)]
    modes = [np.stack([np.sin(2 * np.pi * f * g + k) for k, f in enumerate(fk)], 1) for g, fk in zip(grids, freq)]
    core = rng.standard_normal((2, 2, 2))
    cells = rng.choice(np.prod(SHAPE), size=n + N_TEST, replace=False)
    idx = np.stack(np.unravel_index(cells, SHAPE), 1)
    f = np.einsum("abc,na,nb,nc->n", core, modes[0][idx[:, 0]], modes[1][idx[:, 1]], modes[2][idx[:, 2]])
    y = f + NOISE * rng.standard_normal(f.shape)
    X = np.stack([grids[k][idx[:, k]] for k in range(3)], 1)
    return X[:n], y[:n], X[n:], y[n:]


def _after_data() -> dict:
    r"""The memory marks once the data are made: the process's peak so far (the data's temporaries), then the
    resident set after resetting the high-water mark, the base of "peak above data" (the peak so far as base
    left out whatever part of the method's peak stayed below the data's temporaries)."""
    import gc

    gc.collect()
    marks = {"peak_data": peak_rss_mib()}
    marks["reset"] = reset_peak_rss()
    marks["data_mb"] = status_mib("VmRSS")
    return marks


def _memory(marks: dict) -> dict:
    r"""``peak_mb`` (the process's peak, data included), ``data_mb`` (the resident set after the data) and
    ``above_mb`` (the method's own peak above ``data_mb``) of a method run after :func:`_after_data`."""
    if not marks["reset"]:
        return {"peak_mb": peak_rss_mib(), "data_mb": float("nan"), "above_mb": float("nan")}
    peak = status_mib("VmHWM")
    return {"peak_mb": max(marks["peak_data"], peak), "data_mb": marks["data_mb"], "above_mb": peak - marks["data_mb"]}


def run_funbat(n: int, sweeps: int) -> dict:
    from gpgeom.models.funbat import FunBaT

    Xtr, ytr, Xte, yte = make_data(n)
    marks = _after_data()
    t0 = time.perf_counter()
    model = FunBaT(2, max_sweeps=sweeps).fit(Xtr, ytr, progress=False)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    mean, std = model.predict(Xte, return_std=True, observation_noise=True)
    t_pred = time.perf_counter() - t0
    return {"mean": mean[:, 0].tolist(), "std": std[:, 0].tolist(), "fit_s": t_fit, "predict_s": t_pred,
            **_memory(marks), "detail": f"{len(model.history)} sweeps"}  # fmt: skip


def run_svgp(n: int, epochs: int, inducing: int) -> dict:
    import gpytorch

    Xtr, ytr, Xte, yte = make_data(n)
    marks = _after_data()
    torch.manual_seed(0)
    X = torch.as_tensor(Xtr)
    y_mean, y_std = float(ytr.mean()), float(ytr.std())
    y = torch.as_tensor((ytr - y_mean) / y_std)

    class SVGP(gpytorch.models.ApproximateGP):
        def __init__(self, Z: torch.Tensor) -> None:
            dist = gpytorch.variational.CholeskyVariationalDistribution(Z.shape[0])
            strat = gpytorch.variational.VariationalStrategy(self, Z, dist, learn_inducing_locations=True)
            super().__init__(strat)
            self.mean_module = gpytorch.means.ConstantMean()
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=1.5, ard_num_dims=3))

        def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
            return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    Z = X[torch.randperm(n)[:inducing]].clone()
    model = SVGP(Z).double()
    lik = gpytorch.likelihoods.GaussianLikelihood().double()
    mll = gpytorch.mlls.VariationalELBO(lik, model, num_data=n)
    opt = torch.optim.Adam([*model.parameters(), *lik.parameters()], lr=0.03)
    batch = 4096
    t0 = time.perf_counter()
    steps = 0
    model.train()
    lik.train()
    for _ in range(epochs):
        for b in torch.randperm(n).split(batch):
            opt.zero_grad()
            loss = -mll(model(X[b]), y[b])
            loss.backward()
            opt.step()
            steps += 1
    t_fit = time.perf_counter() - t0
    model.eval()
    lik.eval()
    t0 = time.perf_counter()
    means, stds = [], []
    with torch.no_grad(), gpytorch.settings.fast_pred_var():
        for xb in torch.as_tensor(Xte).split(8192):
            p = lik(model(xb))
            means.append(p.mean * y_std + y_mean)
            stds.append(p.variance.sqrt() * y_std)
    t_pred = time.perf_counter() - t0
    return {"mean": torch.cat(means).tolist(), "std": torch.cat(stds).tolist(), "fit_s": t_fit,
            "predict_s": t_pred, **_memory(marks),
            "detail": f"M = {inducing}, {epochs} epochs ({steps} Adam steps of {batch})"}  # fmt: skip


def child(method: str, args: argparse.Namespace) -> dict:
    """Run ``method`` in a fresh Python process and return its JSON result (its own peak memory)."""
    cmd = [sys.executable, __file__, "--child", method, "--n", str(args.n), "--sweeps", str(args.sweeps),
           "--svgp-epochs", str(args.svgp_epochs), "--inducing", str(args.inducing)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    r"""``"median (min-max)"`` of ``values`` (one value alone as it is), each to 4 significant digits."""
    med, lo, hi = (f"{v:.4g}" for v in (statistics.median(values), min(values), max(values)))
    return med if len(values) == 1 else f"{med} ({lo}-{hi})"


def summarise_runs(runs: list[dict]) -> dict:
    r"""The runs of one method (:func:`run_funbat` / :func:`run_svgp` results) as the table's cells: the first run's
    predictions and setting, the median fit and predict seconds, the median and range of the peaks (:func:`spread`),
    and the largest difference of a run's predictive mean from the first's (``mean_diff``; the runs are one fit)."""
    first = np.asarray(runs[0]["mean"])
    return {
        "mean": runs[0]["mean"],
        "std": runs[0]["std"],
        "detail": runs[0]["detail"],
        "runs": len(runs),
        "fit_s": statistics.median(r["fit_s"] for r in runs),
        "predict_s": statistics.median(r["predict_s"] for r in runs),
        "peak_mb": spread([r["peak_mb"] for r in runs]),
        "above_mb": spread([r["above_mb"] for r in runs]),
        "mean_diff": max(float(np.abs(np.asarray(r["mean"]) - first).max()) for r in runs),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N = 100,000, 10 sweeps, 1 epoch, 256 inducing points")
    ap.add_argument("--n", type=int, default=None, help="training entries (default 1,000,000; quick 100,000)")
    ap.add_argument("--sweeps", type=int, default=None, help="FunBaT's max_sweeps (default 40; quick 10)")
    ap.add_argument("--svgp-epochs", type=int, default=None, help="epochs of the sparse GP (default 3; quick 1)")
    ap.add_argument("--inducing", type=int, default=None, help="inducing points (default 512; quick 256)")
    ap.add_argument(
        "--repeats",
        type=int,
        default=REPEATS,
        help=f"FunBaT runs, each in its own process: median and range of the peaks, median times (default {REPEATS})",
    )
    ap.add_argument("--child", choices=("funbat", "svgp"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats: expected a whole number of runs >= 1, got {args.repeats}")
    torch.set_num_threads(1)
    reduced = args.quick or any(v is not None for v in (args.n, args.sweeps, args.svgp_epochs, args.inducing))
    args.n = args.n or (100_000 if args.quick else 1_000_000)
    args.sweeps = args.sweeps or (10 if args.quick else 40)
    args.svgp_epochs = args.svgp_epochs or (1 if args.quick else 3)
    args.inducing = args.inducing or (256 if args.quick else 512)
    if args.child == "funbat":
        print(json.dumps(run_funbat(args.n, args.sweeps)))
        return
    if args.child == "svgp":
        print(json.dumps(run_svgp(args.n, args.svgp_epochs, args.inducing)))
        return

    from gpgeom.metrics import calibration_summary

    _, _, _, y_test = make_data(args.n)
    load0 = os.getloadavg()[0]
    rows, per_run, mean_diff = [], [], 0.0
    for name, method in (("FunBaT tucker R=2 (defaults)", "funbat"), ("sparse variational GP (GPyTorch)", "svgp")):
        k = args.repeats if method == "funbat" else 1
        runs = []
        for i in range(k):
            print(f"running {name} ({i + 1} of {k}) ...", flush=True)
            runs.append(child(method, args))
        r = summarise_runs(runs)
        if method == "funbat":
            per_run, mean_diff = runs, r["mean_diff"]
        y = torch.as_tensor(y_test)
        mean, std = torch.tensor(r["mean"], dtype=y.dtype), torch.tensor(r["std"], dtype=y.dtype)
        cal = calibration_summary(y, mean, std)
        rmse = float((mean - y).square().mean().sqrt())
        rows.append([name, r["detail"], r["runs"], rmse, cal["coverage_95"], cal["z_rms"], cal["nlpd"], r["fit_s"],
                     r["predict_s"], r["peak_mb"], r["above_mb"]])  # fmt: skip
        print(rows[-1], flush=True)
    dense_tb = args.n**2 * 8 / 1e12
    header = ["method", "setting", "runs", "test RMSE", "95% coverage", "z RMS", "NLPD", "fit s (median)",
              "predict s (median)", "peak RSS MB: median (min-max)",
              "peak above data MB: median (min-max)"]  # fmt: skip
    thp = transparent_hugepages()
    write_benchmark_report(
        report_name("funbat_scale", quick=reduced),
        "FunBaT at scale beside a sparse variational GP",
        [
            f"load average (1 min): {load0:.2f} at the start, {os.getloadavg()[0]:.2f} at the end",
            f"data: synthetic rank-2 Tucker tensor on a {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]} grid in [0, 1]^3, "
            f"{args.n:,} training and {N_TEST:,} test entries (noise sd {NOISE}: the RMSE floor)",
            f"exact GP: not run; its kernel matrix alone needs N^2 x 8 bytes = {dense_tb:.3g} TB",
            "each method in its own process: peak RSS of that process (imports and data included; 'above data':"
            " above the resident set after generating the data, the high-water mark reset there), wall seconds of "
            "the fit and of predicting the test entries with the "
            "observation noise; calibration of those predictions (gpgeom.metrics)",
            f"FunBaT run {len(per_run)} times, each in a fresh process (`--repeats`; the peak RSS of the same code "
            "varies from run to run): the table gives the median and range (min-max) of the peaks and the median "
            "times; the accuracy columns are the first run's (the runs are one fit, seed 0: their predictive means "
            f"differ by at most {mean_diff:.1e}); per run, peak RSS "
            + ", ".join(f"{r['peak_mb']:.0f}" for r in per_run)
            + " MB, fit "
            + ", ".join(f"{r['fit_s']:.1f}" for r in per_run)
            + " s",
        ],
        [markdown_table(header, rows)],
        machine_note=f"; transparent huge pages `{thp}`" if thp else "",
    )


if __name__ == "__main__":
    main()
