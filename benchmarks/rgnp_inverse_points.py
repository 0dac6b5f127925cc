#!/usr/bin/env python3
r"""RGNP's inverse posterior against the number of observed points: one training grid size or a range of them.

GICNet's aggregation is a normalised average of the observed values, so an RGNP trained on grids of one size
(``n_points=30``, the default) reports the spread it learnt for 30 points whatever the number observed. Trained with
``n_points=(lo, hi)``, every step draws its grid size log-uniformly in [lo, hi] and GICNet's head is told
:math:`\log(n / \sqrt{lo\,hi})` (``count_feature``), so the spread can follow the number of points. This script
trains both at the demo's CPU sizes (``benchmarks/rgnp.py --calibration``: forward MLP 3x64, 16 Fourier
frequencies, GICNet P=8 on a 16-node grid, 8 fields per step, Adam 3e-3, float32, 2500 steps) on

* the nonlinear Poisson family and
* the Helmholtz user PDE of the tutorial, :math:`u'' + z^2 u = 0`, :math:`u(-1) = 0`, :math:`u(1) = w`,
  :math:`z \in [0.5, 1.4]` (rank 2; exact solution :math:`w \sin(z(x + 1)) / \sin 2z`; the calibration run
  trains it for 800 steps, after which the range model's inverse was still behind: z NSE 0.042-0.069 against
  0.016),

with ``n_points=30`` and ``n_points=(10, 300)`` and the same seed, then feeds ``predict_inverse`` the true field of
100 test fields (parameters from the prior, another seed) at 10, 30, 100 and 300 uniform random points. For each:
the normalised squared error of the posterior mean of z (prior mean: 1), the coverage of the central 95 % interval,
the z RMS of the truth (RMS of (z - mean) / sd; 1 when calibrated) and the mean posterior sd (in z's units). No
``calibrate()``: q_beta as trained.

Second table, **noisy observations**: the same test fields at 30 and 100 points with Gaussian noise of sd
``NOISE`` = 0.05 added, from q_beta as trained, after ``calibrate(inverse_steps=500)`` (q_beta trained on the
calibrated predictive's fields) and after ``calibrate(inverse_steps=500, inverse_noise_std=0.05)`` (the same fields
plus the observation noise); the calibration's reference fields: 32 solver fields at 50 random points (Poisson,
``calibrate``'s default) or 32 exact Helmholtz fields.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/rgnp_inverse_points.py [--quick] [--jobs 2]``. Writes
``benchmarks/results/rgnp_inverse_points.md`` (``--quick``: 300 steps, 40 test fields,
``benchmarks/results/local/rgnp_inverse_points_quick.md``).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import markdown_table, peak_rss_mib, report_name, write_benchmark_report  # noqa: E402
from rgnp import DEMO_GIC, helmholtz_fields, helmholtz_lift, helmholtz_residual  # noqa: E402

from gpgeom.errors import UncalibratedWarning  # noqa: E402
from gpgeom.metrics import calibration_summary  # noqa: E402
from gpgeom.models.rgnp import RGNP, nse  # noqa: E402
from gpgeom.pde import NonlinearPoisson1D  # noqa: E402

#: Numbers of observed points fed to predict_inverse.
OBSERVED = (10, 30, 100, 300)
#: The two training grids: one size (the default) and a range.
TRAINING = {"30 points (default)": 30, "10 to 300 points": (10, 300)}
#: Observation noise sd of the second table, and its numbers of observed points.
NOISE, NOISY_OBSERVED = 0.05, (30, 100)


def build(problem: str, n_points, seed: int) -> RGNP:
    """The demo-size model of ``problem`` trained on grids of ``n_points`` (an int or a range)."""
    kw = dict(hidden=(64, 64, 64), n_freqs=16, batch_size=8, n_points=n_points, dtype=torch.float32, gicnet=DEMO_GIC)
    if problem == "poisson":
        return RGNP.from_family(NonlinearPoisson1D(), seed=seed, **kw)
    return RGNP(
        helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [1.4]), w_bounds=([0.0], [1.0]), rank=2,
        lift=helmholtz_lift, seed=seed, **kw,
    )  # fmt: skip


def test_fields(problem: str, n_fields: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``x`` ``(F, n, 1)``, the true field ``u`` ``(F, n)``, ``z`` ``(F, dz)``, ``w`` ``(F, dw)``: the same
    parameters for every ``n`` (drawn from ``seed``), the points from ``seed + n``."""
    if problem == "helmholtz":
        g = torch.Generator().manual_seed(seed)
        pts = torch.Generator().manual_seed(seed + n)
        f = helmholtz_fields(n_fields, lambda _: torch.rand(n_fields, n, 1, generator=pts, dtype=torch.float64) * 2 - 1,
                             int(torch.randint(2**31, (), generator=g)))  # fmt: skip
        return f["x"], f["y"], f["z"], f["w"]
    fam = NonlinearPoisson1D()
    z, w = fam.sample_params(n_fields, np.random.default_rng(seed))
    x = fam.sample_points(n_fields, n, torch.Generator().manual_seed(seed + n)).numpy()
    u = np.stack([fam.solve(z[i], w[i], x[i]) for i in range(n_fields)])
    return tuple(torch.as_tensor(a, dtype=torch.float64) for a in (x, u, z, w))


def run(job: tuple[str, str, int, int, int]) -> tuple[str, str, dict]:
    """Train one model and measure its inverse posterior at every number of observed points."""
    problem, label, steps, n_test, seed = job
    torch.set_num_threads(1)
    model = build(problem, TRAINING[label], seed)
    t0 = time.perf_counter()
    model.fit(steps, lr=3e-3, progress=False, seed=seed)
    fit_s = time.perf_counter() - t0
    fields = {n: [t.to(torch.float32) for t in test_fields(problem, n_test, n, 10_000 + seed)] for n in OBSERVED}
    rows = {n: measure(model, x, u, z, w) for n, (x, u, z, w) in fields.items()}
    noisy = {}
    for n in NOISY_OBSERVED:  # the same fields, noise drawn once per n
        u = fields[n][1]
        fields[n][1] = u + NOISE * torch.randn(u.shape, generator=torch.Generator().manual_seed(20_000 + seed + n))
    data = None
    if problem == "helmholtz":  # 32 exact fields at 50 random points (Poisson: calibrate's default, the solver's)
        data = helmholtz_fields(32, lambda g: torch.rand(32, 50, 1, generator=g, dtype=torch.float64) * 2 - 1, 20_000)
    for name, kw in (("as trained", None), ("+ 500 inverse steps", {}), ("+ 500 inverse steps, noise", {"n": NOISE})):
        m = model if kw is None else copy.deepcopy(model)
        if kw is not None:
            m.calibrate(data, inverse_steps=500, inverse_noise_std=kw.get("n", 0.0), seed=seed)
        noisy[name] = {n: measure(m, *fields[n]) for n in NOISY_OBSERVED}
    print(f"{problem}, {label}: {fit_s:.0f} s", flush=True)
    return problem, label, {"fit_s": fit_s, "rows": rows, "noisy": noisy}


def measure(model: RGNP, x: torch.Tensor, u: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> dict:
    """The inverse posterior's accuracy and calibration from the fields ``u`` at ``x``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncalibratedWarning)  # other numbers of points: what the table measures
        mean, sd = model.predict_inverse(x, u, w, return_std=True)
    return {"z_nse": float(nse(mean, z).mean()), "sd": float(sd.mean()), **calibration_summary(z, mean, sd)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 steps, 40 test fields")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="models trained at once, one process each")
    args = ap.parse_args(argv)
    steps = 300 if args.quick else 2500
    n_test = 40 if args.quick else 100
    jobs = [(p, label, steps, n_test, args.seed) for p in ("poisson", "helmholtz") for label in TRAINING]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as ex:
        results = list(ex.map(run, jobs))
    header = ["problem, training grids", "observed points", "z NSE", "cov 95%", "z RMS", "mean sd", "fit s"]
    table = []
    for problem, label, r in results:
        for n, row in r["rows"].items():
            table.append((f"{problem}, {label}", n, row["z_nse"], row["coverage_95"], row["z_rms"], row["sd"],
                          r["fit_s"]))  # fmt: skip
    facts = [
        f"config: forward MLP 3x64, 16 Fourier frequencies, GICNet P=8 grid 16, 8 fields per step, Adam 3e-3, "
        f"float32, seed {args.seed}, {steps} steps (Helmholtz: rank 2); "
        f"training grids of 30 points or log-uniform sizes in [10, 300] (with GICNet's count input); "
        f"{args.jobs} models at a time, one process each; {time.perf_counter() - t0:.0f} s in all",
        f"test: {n_test} fields from the prior (seed {10_000 + args.seed}), the true field at 10, 30, 100 or 300 "
        "uniform random points (noise-free), q_beta as trained (no calibrate())",
        "z NSE: normalised squared error of the posterior mean of z (prior mean: 1); cov 95%: fraction of z "
        "components inside the central 95 % interval; z RMS: RMS of (z - mean) / sd (1 when calibrated); mean sd: "
        "the posterior sd of z, in z's units, averaged over fields and components",
        "`benchmarks/rgnp_inverse_points.py` (its docstring says what each row is)",
    ]
    noisy = [
        (f"{problem}, {label}, {name}", n, row["z_nse"], row["coverage_95"], row["z_rms"], row["sd"])
        for problem, label, r in results
        for name, per_n in r["noisy"].items()
        for n, row in per_n.items()
    ]
    facts.append(
        f"noisy: the same test fields at {' and '.join(map(str, NOISY_OBSERVED))} points plus N(0, {NOISE}^2) noise; "
        "q_beta as trained, after `calibrate(inverse_steps=500)` and after `calibrate(inverse_steps=500, "
        f"inverse_noise_std={NOISE})` (reference fields: Poisson 32 from the solver, Helmholtz 32 exact)"
    )
    body = [markdown_table(header, table), "", "## Noisy observations", ""]
    body += [markdown_table(["problem, training grids, q_beta", *header[1:6]], noisy), ""]
    write_benchmark_report(
        report_name("rgnp_inverse_points", quick=args.quick),
        "RGNP's inverse posterior against the number of observed points",
        facts,
        body,
        machine_note=f"; peak resident memory {peak_rss_mib():.0f} MB",
    )


if __name__ == "__main__":
    main()
