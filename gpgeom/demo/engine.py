r"""Demo sections of the engine: a state-space GP fitted in O(n), and an exact GP used as a BoTorch surrogate."""

from __future__ import annotations

import math
import time
from pathlib import Path

import gpytorch
import torch

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.demo import Section, save_figure
from gpgeom.engine.fitting import fit
from gpgeom.engine.statespace import log_marginal_likelihood, posterior
from gpgeom.kernels.markov import MaternMarkovKernel


class _StateSpaceRegression(gpytorch.Module):
    """A Matern 3/2 Markov kernel and a Gaussian noise level: the trainable parameters of the Kalman fit."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = MaternMarkovKernel(nu=1.5)
        self.raw_noise = torch.nn.Parameter(torch.tensor(0.0))
        self.register_constraint("raw_noise", gpytorch.constraints.GreaterThan(1e-6))

    @property
    def noise(self) -> torch.Tensor:
        return self.raw_noise_constraint.transform(self.raw_noise)


def _signal(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(t) + 0.5 * torch.sin(3.1 * t + 1.0) + 0.2 * torch.cos(7.3 * t)


def kalman_section(out_dir: Path, *, quick: bool, seed: int, progress: bool | None) -> Section:
    r"""Fit a Matern 3/2 GP to a long irregular time series by the Kalman filter; check it against a dense GP."""
    import matplotlib.pyplot as plt

    n = 5_000 if quick else 50_000
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(n, generator=g, dtype=torch.float64) * n / 50).values
    y = _signal(t) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    reg = _StateSpaceRegression().double()

    t0 = time.perf_counter()
    result = fit(
        lambda: -log_marginal_likelihood(reg.kernel, t, y, reg.noise) / n,
        module=reg,
        optimizer="lbfgs",
        max_iter=100,
        progress=progress,
    )
    t_fit = time.perf_counter() - t0
    t_test = torch.linspace(float(t[0]), float(t[-1]), 2_000, dtype=torch.float64)
    with torch.no_grad():
        t0 = time.perf_counter()
        post = posterior(reg.kernel, t, y, reg.noise, t_test=t_test)
        t_pred = time.perf_counter() - t0
    f_test = _signal(t_test)
    sd = post.test_variance.clamp_min(0).sqrt()
    rmse = float(((post.test_mean - f_test) ** 2).mean().sqrt())
    cover = float(((post.test_mean - f_test).abs() <= 1.96 * sd).double().mean())

    # the same hyperparameters through a dense GP on a window of 1,500 points: the two must agree
    m = 1_500
    with torch.no_grad():
        dense = gpytorch.kernels.MaternKernel(nu=1.5).double()
        dense.lengthscale = reg.kernel.lengthscale.detach()
        K = dense(t[:m, None]).to_dense() * reg.kernel.variance + reg.noise * torch.eye(m, dtype=torch.float64)
        ll_dense = float(gpytorch.distributions.MultivariateNormal(torch.zeros(m, dtype=y.dtype), K).log_prob(y[:m]))
        ll_kalman = float(log_marginal_likelihood(reg.kernel, t[:m], y[:m], reg.noise))

    fig, ax = plt.subplots(figsize=(9, 3.2))
    w = t_test <= t_test[0] + 30
    tw = t[t <= t_test[0] + 30]
    ax.plot(tw, y[: len(tw)], ".", ms=2, color="0.6", label="observations")
    ax.plot(t_test[w], f_test[w], "k-", lw=1, label="truth")
    ax.plot(t_test[w], post.test_mean[w], "C0-", lw=1.5, label="Kalman/RTS posterior mean")
    lo, hi = post.test_mean[w] - 1.96 * sd[w], post.test_mean[w] + 1.96 * sd[w]
    ax.fill_between(t_test[w], lo, hi, color="C0", alpha=0.25, label="95% band")
    ax.set_xlabel("t")
    ax.legend(loc="upper right", fontsize=7, ncol=2)
    ax.set_title(f"Matern 3/2 state-space GP, n = {n:,} (first 30 time units shown)")
    fig_path = save_figure(fig, out_dir, "kalman.png")
    return Section(
        title="Engine: state-space GP by Kalman filter and RTS smoother",
        text=(
            "Hyperparameters (lengthscale, variance, noise) fitted by L-BFGS-B on the O(n) Kalman log marginal "
            "likelihood through `gpgeom.engine.fitting.fit`; the posterior at 2,000 test times comes from the RTS "
            "smoother. The dense-GP log likelihood on a 1,500-point window checks the Kalman one."
        ),
        table=[
            ("n observations", f"{n:,}"),
            ("fit time (L-BFGS-B)", f"{t_fit:.2f} s ({result.attempts} attempt(s))"),
            ("posterior at 2,000 test times", f"{t_pred:.3f} s"),
            (
                "fitted lengthscale / variance / noise var",
                f"{reg.kernel.lengthscale.item():.3f} / "
                f"{reg.kernel.variance.item():.3f} / {reg.noise.item():.4f} (true noise var 0.09)",
            ),
            ("test RMSE of the latent mean", f"{rmse:.4f}"),
            ("95% coverage of the latent truth", f"{cover:.3f}"),
            (
                "Kalman vs dense log lik. (1,500 pts)",
                f"{ll_kalman:.6f} vs {ll_dense:.6f} (rel. diff {abs(ll_kalman - ll_dense) / abs(ll_dense):.1e})",
            ),
        ],
        figures=[fig_path],
    )


def _branin(X: torch.Tensor) -> torch.Tensor:
    """Negated Branin on [0, 1]^2 (maximum -0.397887 at three points)."""
    x1, x2 = 15 * X[..., 0] - 5, 15 * X[..., 1]
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return -((x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * torch.cos(x1) + 10)


def exact_gp_section(out_dir: Path, *, quick: bool, seed: int, progress: bool | None) -> Section:
    r"""Bayesian optimisation of the Branin function with ExactGPModel as the BoTorch surrogate (qLogNEI)."""
    import matplotlib.pyplot as plt
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.optim import optimize_acqf

    g = torch.Generator().manual_seed(seed)
    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    X = torch.rand(8, 2, generator=g, dtype=torch.float64)
    Y = _branin(X)[:, None]
    n_iter = 6 if quick else 20
    t0 = time.perf_counter()
    for _ in range(n_iter):
        model = ExactGPModel(X, Y).fit(restarts=1, seed=seed, progress=False)
        acq = qLogNoisyExpectedImprovement(model, X_baseline=X, prune_baseline=True)
        cand, _ = optimize_acqf(acq, bounds=bounds, q=1, num_restarts=4, raw_samples=128)
        X = torch.cat([X, cand])
        Y = torch.cat([Y, _branin(cand)[:, None]])
    t_bo = time.perf_counter() - t0
    best = float(Y.max())

    grid = torch.stack(torch.meshgrid(*(torch.linspace(0, 1, 60, dtype=torch.float64),) * 2, indexing="xy"), -1)
    mean, std = model.predict(grid.reshape(-1, 2), return_std=True)
    post_mean = model.posterior(grid.reshape(-1, 2)).mean.detach()
    agree = float((post_mean - mean).abs().max())
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, z, title in zip(axes, (mean, std), ("posterior mean", "posterior std")):
        cs = ax.contourf(grid[..., 0], grid[..., 1], z.reshape(60, 60), levels=20)
        ax.plot(X[:8, 0], X[:8, 1], "wo", ms=4, label="initial")
        ax.plot(X[8:, 0], X[8:, 1], "r^", ms=4, label="qLogNEI")
        ax.set_title(title)
        fig.colorbar(cs, ax=ax)
    axes[0].legend(fontsize=7)
    fig_path = save_figure(fig, out_dir, "exact_gp_bo.png")
    return Section(
        title="Engine: ExactGPModel as a BoTorch surrogate (Bayesian optimisation of Branin)",
        text=(
            "Each step refits ExactGPModel (Matern 5/2 ARD, L-BFGS-B with a restart) and maximises qLogNEI with "
            "`botorch.optim.optimize_acqf`. `predict` and `posterior` give the same mean."
        ),
        table=[
            ("BO steps", str(n_iter)),
            ("best value found", f"{best:.4f} (optimum -0.3979)"),
            ("simple regret", f"{max(-0.397887 - best, 0.0):.4f}"),
            ("wall time of the BO loop", f"{t_bo:.1f} s"),
            ("max abs. diff. of predict and posterior means", f"{agree:.1e}"),
        ],
        figures=[fig_path],
    )
