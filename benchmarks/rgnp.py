"""RGNP benchmark on the nonlinear Poisson family: forward/inverse NSE, 2-sigma coverage, training time.

Variants trained for the same wall-clock budget each (``--quick``: the same number of steps), with the same batch
of fields and collocation points per step and the same learning rate:

* ``rgnp-diag``: RGNP, diagonal q_alpha, a fresh random grid of N points every step;
* ``rgnp-lr``: RGNP with a rank-2 q_alpha (``--quick`` only: the GPU run keeps its time for the main model);
* ``pddlvm-fixed``: the same model on one fixed regular grid of N points (the PDDLVM baseline of the paper);
* ``pi-deeponet``: a physics-informed DeepONet (branch MLP on (z, w), trunk MLP on Fourier features of x, same
  hard boundary lift, mean squared residual on a fixed grid of 300 points, fresh (z, w) each step): deterministic,
  forward only;
* with ``--paper-sizes`` the RGNP run then continues for a second phase at half the learning rate
  (``rgnp-diag (long)``), the headline row (default budgets 25 s per variant + 95 s: about 3.3 minutes in all).

Metrics (spec ``rgnp.md`` 1.7): NSE = (||mean - true|| / ||true||)^2 per test field (mean over fields; its square
root is the relative L2 error), the fraction of test nodes (or z components) inside mean +- 2 sigma, the inverse
NSE with q_beta fed the true field at the test nodes (the prior mean gives NSE 1), the mean |residual| of the mean
field on the test nodes, and the training time.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/rgnp.py --quick`` (CPU, minutes) or
``python benchmarks/rgnp.py --device cuda --paper-sizes`` (GPU, < 4 minutes). Writes
``benchmarks/results/rgnp_<device>.md``.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _common import machine_info, markdown_table, write_report  # noqa: E402
from torch import nn  # noqa: E402

from gpgeom.datasets.pde import NonlinearPoisson1D  # noqa: E402
from gpgeom.engine.fitting import fit  # noqa: E402
from gpgeom.models.rgnp import RGNP, FourierFeatures, coverage, nse  # noqa: E402

FAMILY = NonlinearPoisson1D()


def _solve(args):
    z, w, x = args
    return FAMILY.solve(z, w, x)


def make_test_set(n_samples: int, n_points: int, seed: int, workers: int):
    z, w = FAMILY.sample_params(n_samples, np.random.default_rng(10_000 + seed))
    x = FAMILY.test_points(n_points)
    jobs = [(z[i], w[i], x) for i in range(n_samples)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            u = np.stack(list(ex.map(_solve, jobs)))
    else:
        u = np.stack([_solve(j) for j in jobs])
    return x, z, w, u


def rgnp_kwargs(paper: bool) -> dict:
    if paper:  # the reference notebook's sizes (spec 1.4, 1.5, 1.7)
        return dict(hidden=(300,) * 7, n_freqs=100, freq_range=(1e-3, 2.0), batch_size=50, n_points=30,
                    gicnet=dict(lift_channels=20, lift_hidden=(20, 20, 20), cnn_channels=(20,) * 6, grid_size=20,
                                mlp_hidden=(500, 100, 300, 300, 300, 300)))
    return dict(hidden=(64, 64, 64), n_freqs=16, batch_size=8, n_points=30,
                gicnet=dict(lift_channels=8, lift_hidden=(16,), cnn_channels=(16, 16), mlp_hidden=(64,), grid_size=16))


class PIDeepONet(nn.Module):
    """Physics-informed DeepONet: u(x; z, w) = b(x) + d(x) * <branch(z, w), trunk(x)> + bias."""

    def __init__(self, width: int, depth: int, p: int, n_freqs: int):
        super().__init__()

        def mlp(n_in):
            sizes = [n_in] + [width] * depth + [p]
            layers = []
            for i in range(len(sizes) - 1):
                layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.SiLU()]
            return nn.Sequential(*layers[:-1])

        self.features = FourierFeatures(1, n_freqs, (1e-3, 2.0))
        self.branch = mlp(FAMILY.dim_z + FAMILY.dim_w)
        self.trunk = mlp(1 + self.features.out_features)
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("zlo", torch.tensor(FAMILY.z_low + FAMILY.w_low))
        self.register_buffer("zhi", torch.tensor(FAMILY.z_high + FAMILY.w_high))

    def field(self, x, z, w):
        zw = 2 * (torch.cat([z, w], -1) - self.zlo) / (self.zhi - self.zlo) - 1
        t = self.trunk(torch.cat([x, self.features(x)], -1))  # (B, n, p)
        nn_out = (self.branch(zw)[:, None, :] * t).sum(-1) + self.bias
        b, d = FAMILY.boundary_ansatz(x, w)
        return b + d * nn_out

    def loss(self, batch, x_fixed):
        lo, hi = self.zlo, self.zhi
        zw = lo + (hi - lo) * torch.rand(batch, lo.numel(), device=lo.device, dtype=lo.dtype)
        z, w = zw[:, :FAMILY.dim_z], zw[:, FAMILY.dim_z:]
        x = x_fixed[None].expand(batch, -1, -1).clone().requires_grad_(True)
        u = self.field(x, z, w)
        r = FAMILY.residual_from_derivatives(FAMILY.derivatives(lambda _x: u, x), x, z, w)
        return (r**2).mean()


def train_for(step_fn, budget_s: float, steps: int | None = None, warmup: int = 3,
              probe: int = 10) -> tuple[int, float]:
    """Run ``step_fn(k)`` (k steps) for about ``budget_s`` seconds in all: a few warm-up steps (first-call costs),
    probe steps to time one step, then the rest of the budget. Every step trains the model and is counted.
    With ``steps``, run exactly that many steps instead (the fair budget on a shared, variably loaded CPU)."""
    t0 = time.perf_counter()
    if steps is not None:
        step_fn(steps)
        return steps, time.perf_counter() - t0
    step_fn(warmup)
    t1 = time.perf_counter()
    step_fn(probe)
    per_step = (time.perf_counter() - t1) / probe
    rest = max(0, int((budget_s - (time.perf_counter() - t0)) / per_step))
    if rest:
        step_fn(rest)
    return warmup + probe + rest, time.perf_counter() - t0


def evaluate_rgnp(model: RGNP, test: dict) -> dict:
    x, z, w, u = test["x"], test["z"], test["w"], test["u"]
    mu, sd = model.predict_forward(z, w, x)
    zm, zs = model.predict_inverse(x, u, w)
    xx = x[None].expand(z.shape[0], -1, -1)
    r = model.residual(lambda xg: model.field_dist(z, w, xg).mean, xx, z, w).detach()
    f_nse = nse(mu, u)
    return {"u_rel_l2": float(f_nse.sqrt().mean()), "u_nse": float(f_nse.mean()), "u_cov": float(coverage(mu, sd, u)),
            "z_nse": float(nse(zm, z).mean()), "z_cov": float(coverage(zm, zs, z)), "res": float(r.abs().mean())}


def evaluate_deeponet(net: PIDeepONet, test: dict) -> dict:
    x, z, w, u = test["x"], test["z"], test["w"], test["u"]
    xx = x[None].expand(z.shape[0], -1, -1).clone().requires_grad_(True)
    mu = net.field(xx, z, w)
    r = FAMILY.residual_from_derivatives(FAMILY.derivatives(lambda _x: mu, xx), xx, z, w).detach()
    f_nse = nse(mu.detach(), u)
    return {"u_rel_l2": float(f_nse.sqrt().mean()), "u_nse": float(f_nse.mean()), "u_cov": None, "z_nse": None,
            "z_cov": None, "res": float(r.abs().mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized networks and budgets")
    ap.add_argument("--paper-sizes", action="store_true", help="the reference's network sizes (GPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=None, help="seconds of training per variant")
    ap.add_argument("--steps", type=int, default=None, help="fixed steps per variant instead of a time budget "
                    "(default 700 with --quick)")
    ap.add_argument("--long-budget", type=float, default=None, help="seconds of the second RGNP phase")
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (second RGNP phase: half)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    paper = args.paper_sizes
    device = torch.device(args.device)
    budget = args.budget if args.budget is not None else (25.0 if paper else 40.0)
    long_budget = args.long_budget if args.long_budget is not None else (95.0 if paper else 0.0)
    lr = args.lr if args.lr is not None else (2e-3 if paper else 3e-3)
    steps_fixed = args.steps if args.steps is not None else (None if paper else 700)
    n_test = args.test_size if args.test_size is not None else (60 if paper else 20)
    variants = ["rgnp-diag", "pddlvm-fixed", "pi-deeponet"] + ([] if paper else ["rgnp-lr"])

    t0 = time.perf_counter()
    x, z, w, u = make_test_set(n_test, 201 if paper else 101, args.seed, workers=min(8, os.cpu_count() or 1))
    t_test = time.perf_counter() - t0
    print(f"test set: {n_test} reference solutions in {t_test:.1f} s", flush=True)
    opts = {"dtype": torch.float32, "device": device}
    test = {"x": torch.tensor(x, **opts), "z": torch.tensor(z, **opts), "w": torch.tensor(w, **opts),
            "u": torch.tensor(u, **opts)}
    kw = rgnp_kwargs(paper)
    rows = []

    for name in variants:
        torch.manual_seed(args.seed)
        if name == "pi-deeponet":
            net = PIDeepONet(300 if paper else 64, 6 if paper else 3, 100 if paper else 32,
                             100 if paper else 16).to(device)
            x_fixed = torch.linspace(-1, 1, 300 if paper else 100, **opts)[:, None]
            batch = kw["batch_size"]
            seed_box = [args.seed]

            def deeponet_steps(k, net=net, x_fixed=x_fixed, batch=batch, seed_box=seed_box):
                seed_box[0] += 1
                fit(lambda: net.loss(batch, x_fixed), module=net, optimizer="adam", lr=lr, epochs=k,
                    patience=k + 1, rel_tol=0.0, progress=False, seed=seed_box[0])

            steps, wall = train_for(deeponet_steps, budget, steps_fixed)
            metrics = evaluate_deeponet(net, test)
        else:
            extra = {"rank": 2} if name == "rgnp-lr" else {}
            if name == "pddlvm-fixed":
                extra["grid"] = "fixed"
            model = RGNP.from_family(FAMILY, **kw, **extra).to(device)
            seed_box = [args.seed]

            def rgnp_steps(k, model=model, seed_box=seed_box, lr=lr):
                seed_box[0] += 1
                model.fit(k, lr=lr, progress=False, seed=seed_box[0])

            steps, wall = train_for(rgnp_steps, budget, steps_fixed)
            metrics = evaluate_rgnp(model, test)
        rows.append((name, steps, wall, 1e3 * wall / steps, metrics))
        print(f"{name}: {steps} steps in {wall:.1f} s: {metrics}", flush=True)
        if name == "rgnp-diag" and long_budget > 0:
            steps2, wall2 = train_for(lambda k, model=model, seed_box=seed_box: rgnp_steps(k, model, seed_box, lr / 2),
                                      long_budget)
            metrics = evaluate_rgnp(model, test)
            rows.append(("rgnp-diag (long)", steps + steps2, wall + wall2, 1e3 * (wall + wall2) / (steps + steps2),
                         metrics))
            print(f"rgnp-diag (long): {steps + steps2} steps in {wall + wall2:.1f} s: {metrics}", flush=True)

    header = ["variant", "steps", "train s", "ms/step", "u rel-L2", "u NSE", "u 2sig cov", "z NSE", "z 2sig cov",
              "mean abs residual"]
    table = [(n, s, t, ms, m["u_rel_l2"], m["u_nse"], m["u_cov"], m["z_nse"], m["z_cov"], m["res"])
             for n, s, t, ms, m in rows]
    table.append(("prior mean of z", 0, 0.0, None, None, None, None,
                  float(nse(torch.zeros_like(test["z"]), test["z"]).mean()), None, None))
    cfg = "paper sizes (alpha 7x300, 100 Fourier freqs, GICNet P=20, 6 conv, B=50, N=30)" if paper else \
        "quick (alpha 3x64, 16 freqs, GICNet P=8, B=8, N=30)"
    text = "\n".join([
        f"# RGNP benchmark, nonlinear Poisson 1-D ({'paper sizes' if paper else 'quick'})",
        "",
        f"- machine: {machine_info(device)}",
        f"- config: {cfg}; Adam lr {lr:g}; each variant trained for "
        + (f"{steps_fixed} steps" if steps_fixed else f"{budget:.0f} s wall clock")
        + (f", then rgnp-diag {long_budget:.0f} s more at lr {lr / 2:g}" if long_budget > 0 else ""),
        f"- test set: {n_test} draws of (z, w) from the prior, reference (shooting, ~1e-9) on {len(x)} nodes "
        f"({t_test:.1f} s); float32",
        "- u metrics from the mean of q_alpha at the test nodes; z metrics from q_beta fed the true field at the "
        "test nodes; coverage = fraction inside mean +- 2 sigma (boundary nodes have sigma = 0 and an exact mean, "
        "so they count as covered)",
        "",
        markdown_table(header, table),
        "",
    ])
    write_report(f"rgnp_{device.type}", text)
    if not math.isfinite(rows[0][4]["u_rel_l2"]):
        raise SystemExit("non-finite forward error")


if __name__ == "__main__":
    main()
