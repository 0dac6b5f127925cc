"""Engine benchmark: Kalman vs dense GP log marginal likelihood (O(n) vs O(n^3)), the time of a Gauss-Newton
iteration on a chain of K states (O(K): the block-banded solve) and the block-banded methods' accuracy on stiff
chains, exact-GP fit time, and the calibration of the
exact GP's predictive distribution on held-out noisy targets (coverage, z RMS, NLPD, CRPS: ``gpgeom.metrics``).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/engine.py [--quick] [--device cuda] [--dtype float32]``.
Prints a table with the machine and thread count and writes it to ``benchmarks/results/engine_<device>_<dtype>.md``
(``..._quick.md`` for ``--quick`` or other ``--fit-sizes`` than the defaults: ``benchmarks/_common.report_name``).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from _common import loglog_slope, machine_info, markdown_table, report_name, timeit, write_report  # noqa: E402
from gpytorch.distributions import MultivariateNormal  # noqa: E402
from gpytorch.kernels import MaternKernel  # noqa: E402

from gpgeom.botorch.exact_gp import ExactGPModel  # noqa: E402
from gpgeom.engine.banded import block_banded_cholesky, block_banded_matvec, block_banded_solve  # noqa: E402
from gpgeom.engine.factors import Factor  # noqa: E402
from gpgeom.engine.least_squares import gauss_newton  # noqa: E402
from gpgeom.engine.statespace import log_marginal_likelihood  # noqa: E402
from gpgeom.errors import ConvergenceWarning  # noqa: E402
from gpgeom.kernels.markov import MaternMarkovKernel  # noqa: E402
from gpgeom.metrics import calibration_summary, format_calibration_table  # noqa: E402

#: Noise standard deviation of the exact-GP fit data (training and held-out targets).
FIT_NOISE_SD = 0.05


def kalman_vs_dense(ns, dense_max, seq_max, device, dtype, repeats):
    rows, kal_n, kal_t = [], [], []
    kernel = MaternMarkovKernel(nu=1.5).to(device=device, dtype=dtype)
    kernel.lengthscale = torch.tensor(0.3, device=device, dtype=dtype)
    dense_kernel = MaternKernel(nu=1.5).to(device=device, dtype=dtype)
    dense_kernel.lengthscale = torch.tensor(0.3, device=device, dtype=dtype)
    noise = 0.1
    for n in ns:
        g = torch.Generator().manual_seed(n)
        # irregular, strictly increasing even after rounding to float32 (a minimum gap of 1e-3)
        t = torch.sort(torch.rand(n, generator=g, dtype=torch.float64) * n / 100).values
        t = (t + 1e-3 * torch.arange(n, dtype=torch.float64)).to(device, dtype)
        y = torch.randn(n, generator=g, dtype=torch.float64).to(device, dtype)

        def kal(parallel, t=t, y=y):
            with torch.no_grad():
                return log_marginal_likelihood(kernel, t, y, noise, parallel=parallel)

        t_par = timeit(lambda: kal(True), repeats, device)
        ll_par = float(kal(True))
        t_seq = timeit(lambda: kal(False), 1, device) if n <= seq_max else None
        t_dense, diff = None, None
        if n <= dense_max:

            def dense(t=t, y=y, n=n):
                with torch.no_grad():
                    K = dense_kernel(t[:, None]).to_dense() * kernel.variance
                    K = K + noise * torch.eye(n, device=device, dtype=dtype)
                    return MultivariateNormal(torch.zeros_like(y), K).log_prob(y)

            t_dense = timeit(dense, 1 if n > 2000 else repeats, device)
            diff = abs(float(dense()) - ll_par) / abs(ll_par)
        rows.append((n, t_par, t_seq, t_dense, diff))
        kal_n.append(n)
        kal_t.append(t_par)
        print(f"  n={n}: kalman(scan) {t_par:.4g}s seq {t_seq} dense {t_dense} rel.diff {diff}", flush=True)
    big = [(n, tt) for n, tt in zip(kal_n, kal_t) if n >= 1e4] or list(zip(kal_n, kal_t))
    slope_kal = loglog_slope([b[0] for b in big], [b[1] for b in big]) if len(big) > 1 else float("nan")
    dn = [(r[0], r[3]) for r in rows if r[3] is not None and r[0] >= 1000]
    slope_dense = loglog_slope([d[0] for d in dn], [d[1] for d in dn]) if len(dn) > 1 else float("nan")
    return rows, slope_kal, slope_dense


def gauss_newton_times(ks, s, device, dtype):
    r"""Time of one Gauss-Newton iteration on a linear chain of ``K`` states of size ``s`` (a random walk with
    ``s x s`` transitions observed at every state): assembly plus the block-banded Cholesky solve, O(K s^3), with
    the default block-banded linear algebra (``banded="auto"``: LAPACK's banded Cholesky on the CPU, the odd-even
    reduction elsewhere), with the odd-even reduction (``banded="scan"``, O(log K) batched steps) and with
    the sequential loop (``banded="loop"``). (``tests/test_gauss_newton.py`` checks the linear operation count; the
    times are here.)"""
    rows = []
    for K in ks:
        g = torch.Generator().manual_seed(K)
        ar = torch.arange(K, device=device)
        A = (torch.eye(s, dtype=torch.float64) + 0.1 * torch.randn(K - 1, s, s, generator=g, dtype=torch.float64)).to(
            device, dtype
        )
        y = torch.randn(K, s, generator=g, dtype=torch.float64).to(device, dtype)
        factors = [
            Factor(
                torch.stack([ar[:-1], ar[1:]], 1), lambda x, _g, A=A: x[:, 1] - torch.einsum("mij,mj->mi", A, x[:, 0])
            ),
            Factor(ar[:, None], lambda x, _g, y=y: x[:, 0] - y),
        ]
        x0 = torch.zeros(K, s, device=device, dtype=dtype)

        def one(x0=x0, factors=factors, banded="auto"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gauss_newton(x0, factors, method="gn", max_iter=1, banded=banded)

        t = timeit(one, 3, device)
        t_scan = timeit(lambda one=one: one(banded="scan"), 3, device)
        t_loop = timeit(lambda one=one: one(banded="loop"), 3, device)
        rows.append((K, s, t * 1e3, t / K * 1e6, t_scan * 1e3, t_loop * 1e3))
        print(
            f"  Gauss-Newton K={K} s={s}: {t * 1e3:.1f} ms per iteration ({t_scan * 1e3:.1f} with odd-even "
            f"reduction, {t_loop * 1e3:.1f} with the loop)",
            flush=True,
        )
    slope = loglog_slope([r[0] for r in rows], [r[2] for r in rows]) if len(rows) > 1 else float("nan")
    return rows, slope


def random_walk_band(K: int, s: int, q: float) -> torch.Tensor:
    r"""Band storage (``K x 2 x s x s``, float64) of the precision of a random walk with process variance ``q``,
    observed with variance 1 at every hundredth state: a stiff chain, condition number about ``K^2 / (100 q)``."""
    eye = torch.eye(s, dtype=torch.float64)
    Ab = torch.zeros(K, 2, s, s, dtype=torch.float64)
    Ab[:, 0] = 2 * eye / q
    Ab[0, 0] = Ab[-1, 0] = eye / q
    Ab[::100, 0] += eye
    Ab[1:, 1] = -eye / q
    return Ab


def banded_accuracy(device, cases=((1000, 1e-2), (1000, 1e-3), (4000, 1e-2), (4000, 1e-3)), s=3):
    r"""Forward error and residual of the block-banded factorisation and solve of each method, in float32 and
    float64, on stiff random walks: the measurement behind ``banded="auto"`` factorising float32 in float64 off the
    CPU (``gpgeom.engine.banded``). Reference: the float64 LAPACK solution (float64 loop off the CPU)."""
    rows = []
    for K, q in cases:
        Ab = random_walk_band(K, s, q)
        rhs = torch.randn(K, s, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(K))
        ref_method = "lapack" if device.type == "cpu" else "loop"
        L, _ = block_banded_cholesky(Ab.to(device), method=ref_method)
        x_ref = block_banded_solve(L, rhs.to(device), method=ref_method).cpu()
        for dtype in (torch.float32, torch.float64):
            methods = (["lapack"] if device.type == "cpu" else []) + ["loop", "scan"]
            for method in methods + (["scan, factor in float64 (auto off the CPU)"] if dtype == torch.float32 else []):
                if method in methods:
                    L, failed = block_banded_cholesky(Ab.to(device, dtype), method=method)
                else:  # what banded="auto" does with float32 on a GPU
                    L, failed = block_banded_cholesky(Ab.to(device, dtype).double(), method="scan")
                    L = L.to(dtype)
                solve_method = method if method in methods else "scan"
                x = block_banded_solve(L, rhs.to(device, dtype), method=solve_method).cpu().double()
                err = float((x - x_ref).abs().max() / x_ref.abs().max())
                res = float((block_banded_matvec(Ab, x) - rhs).abs().max())
                rows.append((K, q, f"{K**2 / (100 * q):.0e}", str(dtype).split(".")[-1], method, err, res, failed))
    return rows


def exact_fit_times(ns, d, restarts, device, dtype):
    r"""Fit time of ExactGPModel with the closed-form-gradient MLL (default) and through GPyTorch's autograd, and the
    calibration of the closed-form fit's predictive distribution of 2,000 held-out noisy targets.

    Returns:
        ``(rows, calibration)``: the timing rows, and ``{"n = ...": {"test RMSE": ..., **calibration_summary}}``.
    """
    rows, calibration = [], {}
    for n in ns:
        g = torch.Generator().manual_seed(n)
        X = torch.rand(n, d, generator=g, dtype=torch.float64)
        f = torch.sin(6 * X[:, :1]) + X[:, 1:2] ** 2 - 0.5 * X[:, 2:3]
        Y = f + FIT_NOISE_SD * torch.randn(n, 1, generator=g, dtype=torch.float64)
        Xt = torch.rand(2000, d, generator=g, dtype=torch.float64)
        ft = torch.sin(6 * Xt[:, :1]) + Xt[:, 1:2] ** 2 - 0.5 * Xt[:, 2:3]
        yt = ft + FIT_NOISE_SD * torch.randn(2000, 1, generator=g, dtype=torch.float64)  # held-out observations
        X, Y, Xt, ft = (a.to(device, dtype) for a in (X, Y, Xt, ft))
        row = [n, d, restarts]
        for fast in (True, False):
            model = ExactGPModel(X, Y)
            model.fast_mll = fast
            initial = copy.deepcopy(model.state_dict())

            def run(model=model, initial=initial):
                # every run from the initial hyperparameters: attempt 0 starts from the current ones, so timeit's
                # timed run after its warm-up fit started at the optimum and timed little more than the restarts
                model.load_state_dict(initial)
                model.fit(restarts=restarts, seed=0, progress=False)

            t_fit = timeit(run, 1, device)
            mean = model.predict(Xt)
            rmse = float(((mean - ft) ** 2).mean().sqrt())
            row += [t_fit, model.fit_result_.loss, rmse]
            if fast:
                with torch.no_grad():
                    mean_y, std_y = model.predict(Xt, return_std=True, observation_noise=True)
                calibration[f"n = {n}"] = {"test RMSE": rmse, **calibration_summary(yt, mean_y.cpu(), std_y.cpu())}
            print(
                f"  exact GP n={n} {'closed-form' if fast else 'autograd'}: fit {t_fit:.3g}s rmse {rmse:.3g}",
                flush=True,
            )
        rows.append(tuple(row[:3] + [row[3], row[6], row[6] / row[3], row[4], row[7], row[5], row[8]]))
    return rows, calibration


def calibration_section(calibration: dict) -> list[str]:
    r"""The report lines of the exact GP's held-out calibration table."""
    return [
        "## Exact GP (closed-form MLL fit above): calibration on 2,000 held-out noisy targets "
        f"(noise sd {FIT_NOISE_SD})",
        "",
        "Predictive distribution of a new observation, N(mean, latent var + noise var). Calibrated: coverage at the "
        "nominal level (binomial s.e. about 0.005 at 95%), z RMS 1. NLPD and CRPS are proper scores (lower is better; "
        "the oracle N(f, 0.05^2) scores -1.58 and 0.028 in expectation), width 95% the mean interval width; the test "
        "RMSE is against the noise-free f, as above.",
        "",
        format_calibration_table(calibration),
        "",
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--fit-sizes", type=int, nargs="*", default=None, help="n of the exact-GP fit timings")
    p.add_argument("--fit-only", action="store_true", help="only the exact-GP fit timings (own report)")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.quick:
        ns, dense_max, seq_max, fit_ns, gn_ks = [1000, 3000, 10000, 30000], 3000, 3000, [100, 300], [100, 1000]
    else:
        ns = [1000, 2000, 5000, 10000, 20000, 50000, 100000]
        dense_max = 20000 if device.type == "cuda" else 10000
        seq_max, fit_ns, gn_ks = 10000, [100, 500, 1000], [100, 1000, 10000]
    # any other sizes than the defaults make a reduced table, which must not overwrite the committed full one
    reduced = args.quick or (args.fit_sizes is not None and list(args.fit_sizes) != fit_ns)
    if args.fit_sizes is not None:
        fit_ns = args.fit_sizes
    print(machine_info(device))
    fit_header = [
        "n",
        "d",
        "restarts",
        "fit closed-form MLL (s)",
        "fit GPyTorch autograd (s)",
        "speed-up",
        "loss closed-form",
        "loss autograd",
        "test RMSE closed-form",
        "test RMSE autograd",
    ]
    fit_title = (
        "## Exact GP (ExactGPModel, Matern 5/2 ARD, d = 3) fit: L-BFGS-B with 3 random restarts, "
        "closed-form-gradient MLL (default) vs GPyTorch autograd (`model.fast_mll = False`), same run"
    )
    if args.fit_only:
        fit_rows, calibration = exact_fit_times(fit_ns, 3, 3, device, dtype)
        text = "\n".join(
            [
                f"# Exact-GP fit times ({args.device}, {args.dtype})",
                "",
                f"Machine: {machine_info(device)}",
                "",
                fit_title,
                "",
                markdown_table(fit_header, fit_rows),
                "",
                *calibration_section(calibration),
            ]
        )
        write_report(
            report_name("engine_fit", device=device, tags=(args.dtype,), quick=reduced, always_device=True), text
        )
        return
    rows, slope_kal, slope_dense = kalman_vs_dense(ns, dense_max, seq_max, device, dtype, repeats=3)
    gn_rows, slope_gn = gauss_newton_times(gn_ks, 6, device, dtype)
    accuracy_rows = banded_accuracy(device)
    fit_rows, calibration = exact_fit_times(fit_ns, 3, 3, device, dtype)
    text = "\n".join(
        [
            f"# Engine benchmark ({args.device}, {args.dtype}{', quick' if args.quick else ''})",
            "",
            f"Machine: {machine_info(device)}",
            "",
            "## Log marginal likelihood of a Matern 3/2 GP on irregular times: Kalman filter vs dense Cholesky",
            "",
            markdown_table(
                ["n", "Kalman scan (s)", "Kalman sequential (s)", "dense (s)", "rel. diff Kalman vs dense"], rows
            ),
            "",
            f"log-log slope of Kalman (scan) time vs n (n >= 1e4): {slope_kal:.2f} (O(n) means about 1; "
            "below 1 where fixed per-call overheads still dominate)",
            f"log-log slope of dense time vs n (n >= 1e3): {slope_dense:.2f} (O(n^3) asymptotically)",
            "",
            "## One Gauss-Newton iteration on a linear chain of K states (state size s = 6): block-banded solve",
            "",
            markdown_table(
                [
                    "K",
                    "s",
                    "ms per iteration",
                    "us per state",
                    "ms per iteration, odd-even reduction",
                    "ms per iteration, sequential banded loop",
                ],
                gn_rows,
            ),
            "",
            f"log-log slope of the time vs K: {slope_gn:.2f} (O(K) means about 1)",
            "",
            "## Accuracy of the block-banded factorisation and solve on stiff random walks (s = 3)",
            "",
            "Forward error: max |x - x_ref| / max |x_ref| against the float64 "
            f"{'LAPACK' if device.type == 'cpu' else 'loop'} solution; residual: max |A x - b| in float64 (the "
            "backward error's scale). Every dtype row is computed in that dtype whatever the benchmark's --dtype.",
            "",
            markdown_table(
                ["K", "q", "cond (about)", "dtype", "method", "forward error", "residual", "failed pivot"],
                accuracy_rows,
            ),
            "",
            # `--fit-sizes` with no value times no fit: no fit table, no calibration table
            *([fit_title, "", markdown_table(fit_header, fit_rows), ""] if fit_rows else []),
            *(calibration_section(calibration) if calibration else []),
        ]
    )
    write_report(report_name("engine", device=device, tags=(args.dtype,), quick=reduced, always_device=True), text)
    if any(r[4] is not None and r[4] > (1e-6 if dtype == torch.float64 else 1e-2) for r in rows):
        raise SystemExit("Kalman and dense log likelihoods disagree")
    if math.isnan(slope_kal):
        raise SystemExit("no slope")


if __name__ == "__main__":
    main()
