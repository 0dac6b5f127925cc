"""RGNP benchmark on the nonlinear Poisson family: forward/inverse NSE, 2-sigma coverage, training time.

Every variant is trained with the same recipe and the same batch of fields and collocation points per step. At
the paper's sizes: Adam at a peak learning rate of 2e-3 annealed by a cosine schedule to 5% of it over the run
(``gpgeom.engine.fitting.fit``'s ``lr_schedule="cosine"``); with ``--quick``: a constant 3e-3 (the 700-step runs
are far from converged, and annealing then slows the forward map: measured 15% instead of 7-10% relative error).

* ``rgnp-diag``: RGNP, diagonal q_alpha, a fresh random grid of N points every step;
* ``rgnp-lr``: RGNP with a rank-2 q_alpha (``--quick`` only: the GPU run keeps its time for the main model);
* ``pddlvm-fixed``: the same model on one fixed regular grid of N points (the PDDLVM baseline of the paper);
* ``pi-deeponet``: a physics-informed DeepONet (branch MLP on (z, w), trunk MLP on Fourier features of x, same
  hard boundary lift, mean squared residual on a fixed grid of 300 points, fresh (z, w) each step): deterministic,
  forward only;
* ``rgnp-diag-long`` (with ``--paper-sizes``): the headline, a fresh rgnp-diag trained for ``--long-steps`` steps
  (default 4000 on a GPU, 2000 on the CPU) with the test metrics tracked every ``--eval-every`` steps;
* ``rgnp-diag-long-torchinit`` (opt-in, ``--variants``): the same with PyTorch's default initialisation of the
  inverse network (GICNet ``weight_init="torch"``), the configuration whose inverse stayed at the prior mean
  (see ``gpgeom.nn.gicnet.silu_init_``);
* ``rgnp-lr-long`` (opt-in): the headline run with a rank-2 q_alpha.

With ``--calibration``, a separate run measures the calibration of the predictive distributions at the demo's CPU
sizes (``gpgeom/demo/rgnp.py``: forward MLP 3x64, 16 Fourier frequencies, 8 fields of 30 points per step, 2500 Adam
steps at 3e-3; Burgers with 100 points per step) on the nonlinear Poisson family, the viscous Burgers family and a user
PDE (the Helmholtz problem u'' + z^2 u = 0, u(-1) = 0, u(1) = w, z in [0.5, 1.4], of the tutorial, 800 steps, rank 2,
calibrated on its exact solution): forward and inverse metrics of ``gpgeom.metrics`` before (q_alpha and q_beta as
trained) and after ``RGNP.calibrate`` (32 reference fields at 50 random points from the family's solver; for
Helmholtz, 32 exact fields; the inverse after ``inverse_steps=500``),
on 40 test fields drawn from the prior with another seed (forward: the family's test grid without the hard-boundary
nodes; inverse: the true field at 40 (Burgers 100) uniform random points). Writes ``rgnp_calibration.md``
(``--quick``: 300 training steps, ``rgnp_calibration_quick.md``).

With ``--quick`` each variant runs 700 steps; with ``--paper-sizes`` the first three variants share one wall-clock
budget each (``--budget``, default 25 s: a few probe steps time one step, then one scheduled run fills the rest).
On the CPU, ``--paper-sizes`` runs only the headline (``--variants`` to choose) and writes
``rgnp_cpu_paper.md``.

Metrics: NSE = (||mean - true|| / ||true||)^2 per test field (mean over fields; its square
root is the relative L2 error), the fraction of test nodes (or z components) inside mean +- 2 sigma, the inverse
NSE with q_beta fed the true field at the test nodes (the prior mean gives NSE 1), the mean |residual| of the mean
field on the test nodes, and the training time (wall clock and, on the CPU, process CPU time).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/rgnp.py --quick`` (CPU, minutes),
``python benchmarks/rgnp.py --device cuda --paper-sizes`` (GPU, about 5 minutes) or
``OMP_NUM_THREADS=1 python benchmarks/rgnp.py --paper-sizes`` (CPU, one core, about 20-30 minutes). Writes
``benchmarks/results/rgnp_<device>_paper.md`` at the paper's sizes and ``rgnp_<device>_quick.md`` otherwise
(``--report NAME``: ``NAME.md`` for a paper-size CPU run, ``NAME_<device>`` / ``NAME_quick`` otherwise;
``benchmarks/_common.report_name``). A paper-size run with other variants, budgets, steps, learning rates, test size
or seed writes the ``_quick`` table unless it has a ``--report`` name (``report_quick``).
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
from _common import markdown_table, peak_rss_mib, report_name, write_benchmark_report  # noqa: E402
from torch import nn  # noqa: E402

from gpgeom.engine.fitting import fit  # noqa: E402
from gpgeom.metrics import calibration_summary, format_calibration_table  # noqa: E402
from gpgeom.models.rgnp import RGNP, FourierFeatures, coverage, nse  # noqa: E402
from gpgeom.pde import NonlinearPoisson1D, ViscousBurgers, pointwise_grad  # noqa: E402

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
    if paper:  # the sizes of the authors' reference notebook (Vadeboncoeur et al., arXiv 2301.11040)
        return dict(
            hidden=(300,) * 7,
            n_freqs=100,
            freq_range=(1e-3, 2.0),
            batch_size=50,
            n_points=30,
            gicnet=dict(
                lift_channels=20,
                lift_hidden=(20, 20, 20),
                cnn_channels=(20,) * 6,
                grid_size=20,
                mlp_hidden=(500, 100, 300, 300, 300, 300),
            ),
        )
    return dict(
        hidden=(64, 64, 64),
        n_freqs=16,
        batch_size=8,
        n_points=30,
        gicnet=dict(lift_channels=8, lift_hidden=(16,), cnn_channels=(16, 16), mlp_hidden=(64,), grid_size=16),
    )


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
        z, w = zw[:, : FAMILY.dim_z], zw[:, FAMILY.dim_z :]
        x = x_fixed[None].expand(batch, -1, -1).clone().requires_grad_(True)
        u = self.field(x, z, w)
        r = FAMILY.residual_from_derivatives(FAMILY.derivatives(lambda _x: u, x), x, z, w)
        return (r**2).mean()


def train_for(step_fn, budget_s: float, steps: int | None = None, probe: int = 10) -> tuple[int, float]:
    """Train with ``step_fn(k, scheduled)`` (k steps; ``scheduled``: one cosine-annealed run over the k steps).

    With ``steps``, one scheduled run of exactly that many steps (the fair budget on a shared, variably loaded CPU).
    Otherwise about ``budget_s`` seconds in all: ``probe`` steps at the peak rate that absorb the first-call costs
    (a GPU's library set-up and kernel choice can take seconds), ``probe`` more that time one step, then one scheduled
    run of the steps that fill the rest of the budget. Every step is counted."""
    t0 = time.perf_counter()
    if steps is not None:
        step_fn(steps, True)
        return steps, time.perf_counter() - t0
    step_fn(probe, False)
    t1 = time.perf_counter()
    step_fn(probe, False)
    per_step = (time.perf_counter() - t1) / probe
    rest = max(1, int((budget_s - (time.perf_counter() - t0)) / per_step))
    step_fn(rest, True)
    return 2 * probe + rest, time.perf_counter() - t0


def evaluate_rgnp(model: RGNP, test: dict) -> dict:
    x, z, w, u = test["x"], test["z"], test["w"], test["u"]
    mu, sd = (t[..., 0] for t in model.predict(z, w, x, return_std=True))  # (B, n, 1) -> (B, n)
    zm, zs = model.predict_inverse(x, u, w, return_std=True)
    xx = x[None].expand(z.shape[0], -1, -1)
    r = model.residual(lambda xg: model.field_dist(z, w, xg).mean, xx, z, w).detach()
    f_nse = nse(mu, u)
    return {
        "u_rel_l2": float(f_nse.sqrt().mean()),
        "u_nse": float(f_nse.mean()),
        "u_cov": float(coverage(mu, sd, u)),
        "z_nse": float(nse(zm, z).mean()),
        "z_cov": float(coverage(zm, zs, z)),
        "res": float(r.abs().mean()),
    }


def evaluate_deeponet(net: PIDeepONet, test: dict) -> dict:
    x, z, w, u = test["x"], test["z"], test["w"], test["u"]
    xx = x[None].expand(z.shape[0], -1, -1).clone().requires_grad_(True)
    mu = net.field(xx, z, w)
    r = FAMILY.residual_from_derivatives(FAMILY.derivatives(lambda _x: mu, xx), xx, z, w).detach()
    f_nse = nse(mu.detach(), u)
    return {
        "u_rel_l2": float(f_nse.sqrt().mean()),
        "u_nse": float(f_nse.mean()),
        "u_cov": None,
        "z_nse": None,
        "z_cov": None,
        "res": float(r.abs().mean()),
    }


def run_variant(name: str, cfg: dict, test_np: dict) -> tuple[tuple, list]:
    """Train and evaluate one variant; returns its table row and (for the headline runs) its trajectory."""
    if cfg["device"] == "cpu":
        torch.set_num_threads(1)
    device = torch.device(cfg["device"])
    opts = {"dtype": torch.float32, "device": device}
    test = {k: torch.tensor(v, **opts) for k, v in test_np.items()}
    paper, kw, lr, phi = cfg["paper"], cfg["kw"], cfg["lr"], cfg["phi"]
    sched = "cosine" if cfg["schedule"] == "cosine" else None
    budget, steps_fixed = cfg["budget"], cfg["steps_fixed"]
    long_steps, eval_every = cfg["long_steps"], cfg["eval_every"]
    traj: list[tuple] = []
    torch.manual_seed(cfg["seed"])
    cpu0 = time.process_time()
    long = "-long" in name
    if name == "pi-deeponet":
        net = PIDeepONet(300 if paper else 64, 6 if paper else 3, 100 if paper else 32, 100 if paper else 16).to(device)
        x_fixed = torch.linspace(-1, 1, 300 if paper else 100, **opts)[:, None]
        batch = kw["batch_size"]
        seed_box = [cfg["seed"]]

        def deeponet_steps(k, scheduled, net=net, x_fixed=x_fixed, batch=batch, seed_box=seed_box):
            seed_box[0] += 1
            fit(
                lambda: net.loss(batch, x_fixed),
                module=net,
                optimizer="adam",
                lr=lr,
                epochs=k,
                lr_schedule=sched if scheduled else None,
                lr_final_fraction=phi,
                patience=k + 1,
                rel_tol=0.0,
                progress=False,
                seed=seed_box[0],
            )

        steps, wall = train_for(deeponet_steps, budget, steps_fixed)
        cpu_s = time.process_time() - cpu0
        metrics = evaluate_deeponet(net, test)
    else:
        extra = {"rank": 2} if name.startswith("rgnp-lr") else {}
        if name == "pddlvm-fixed":
            extra["grid"] = "fixed"
        if name.endswith("torchinit"):
            extra["gicnet"] = {**kw["gicnet"], "weight_init": "torch"}
        model = RGNP.from_family(FAMILY, dtype=torch.float32, **{**kw, **extra}).to(device=device)
        seed_box = [cfg["seed"]]
        clock = {"start": 0.0, "eval": 0.0, "cpu_eval": 0.0}

        def track(step, loss, model=model, traj=traj, clock=clock, total=long_steps, name=name):
            if step % eval_every and step != total:
                return
            te, ce = time.perf_counter(), time.process_time()
            m = evaluate_rgnp(model, test)
            model.train()
            clock["eval"] += time.perf_counter() - te
            clock["cpu_eval"] += time.process_time() - ce
            traj.append((step, time.perf_counter() - clock["start"] - clock["eval"], loss, m))
            print(
                f"  {name} step {step}: loss {loss:.4g}, u rel-L2 {m['u_rel_l2']:.4g}, u cov "
                f"{m['u_cov']:.3f}, z NSE {m['z_nse']:.4g}, z cov {m['z_cov']:.3f}",
                flush=True,
            )

        def rgnp_steps(k, scheduled, model=model, seed_box=seed_box, callback=None):
            seed_box[0] += 1
            model.fit(
                k,
                lr=lr,
                lr_schedule=sched if scheduled else None,
                lr_final_fraction=phi,
                progress=False,
                seed=seed_box[0],
                callback=callback,
            )

        if long:
            clock["start"] = time.perf_counter()
            rgnp_steps(long_steps, True, callback=track)
            steps, wall = long_steps, time.perf_counter() - clock["start"] - clock["eval"]
        else:
            steps, wall = train_for(rgnp_steps, budget, steps_fixed)
        cpu_s = time.process_time() - cpu0 - clock["cpu_eval"]
        metrics = evaluate_rgnp(model, test)
    print(f"{name}: {steps} steps in {wall:.1f} s (CPU {cpu_s:.1f} s): {metrics}", flush=True)
    return (name, steps, wall, cpu_s, 1e3 * wall / steps, metrics), traj


VARIANTS = (
    "rgnp-diag",
    "rgnp-lr",
    "pddlvm-fixed",
    "pi-deeponet",
    "rgnp-diag-long",
    "rgnp-diag-long-torchinit",
    "rgnp-lr-long",
)


#: The settings of the committed paper-size tables (``rgnp_cpu_paper.md``, ``rgnp_cuda_paper.md``): without
#: ``--report``, a paper-size run with any other value is reduced (``_quick``).
PAPER_DEFAULTS = {
    "variants": None,
    "budget": None,
    "steps": None,
    "long_steps": None,
    "eval_every": None,
    "test_size": None,
    "lr": None,
    "lr_schedule": None,
    "lr_final_fraction": 0.05,
    "seed": 0,
}


def report_quick(args: argparse.Namespace) -> bool:
    r"""Whether the report name takes ``_quick``: every run without ``--paper-sizes``, and a paper-size run with other
    variants, budgets, steps, learning rates, test size or seed (``PAPER_DEFAULTS``) and no ``--report`` of its own
    (such a run, e.g. ``--variants rgnp-diag``, wrote over ``rgnp_cpu_paper.md``)."""
    variant = any(getattr(args, key) != value for key, value in PAPER_DEFAULTS.items())
    return not args.paper_sizes or (variant and args.report is None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized networks and budgets")
    ap.add_argument("--paper-sizes", action="store_true", help="the reference's network sizes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variants", default=None, help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--budget", type=float, default=None, help="seconds of training per short variant")
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="fixed steps per short variant instead of a time budget (default 700 with --quick)",
    )
    ap.add_argument(
        "--long-steps",
        type=int,
        default=None,
        help="steps of the headline run (default 4000 on a GPU, 2000 on the CPU)",
    )
    ap.add_argument("--eval-every", type=int, default=None, help="test metrics every this many headline steps")
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak Adam learning rate")
    ap.add_argument(
        "--lr-schedule",
        choices=("constant", "cosine"),
        default=None,
        help="learning-rate schedule of every run (default: cosine with --paper-sizes, else constant)",
    )
    ap.add_argument("--lr-final-fraction", type=float, default=0.05, help="cosine schedule: final rate / peak")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="CPU: train the variants in this many processes at once")
    ap.add_argument(
        "--report",
        default=None,
        help="report name of a paper-size CPU run (default rgnp_cpu_paper); other runs add _<device> / _quick",
    )
    ap.add_argument("--calibration", action="store_true", help="the calibration run (see the module docstring)")
    args = ap.parse_args()
    if args.calibration:
        calibration_main(args)
        return
    paper = args.paper_sizes
    device = torch.device(args.device)
    cpu_paper = paper and device.type == "cpu"
    budget = args.budget if args.budget is not None else (25.0 if paper else 40.0)
    lr = args.lr if args.lr is not None else (2e-3 if paper else 3e-3)
    schedule = args.lr_schedule or ("cosine" if paper else "constant")
    phi = args.lr_final_fraction if schedule == "cosine" else 1.0
    steps_fixed = args.steps if args.steps is not None else (None if paper else 700)
    long_steps = args.long_steps if args.long_steps is not None else (2000 if device.type == "cpu" else 4000)
    eval_every = args.eval_every if args.eval_every is not None else (250 if device.type == "cpu" else 500)
    n_test = args.test_size if args.test_size is not None else (60 if paper else 20)
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    elif cpu_paper:
        variants = ["rgnp-diag-long"]
    elif paper:
        variants = ["rgnp-diag", "pddlvm-fixed", "pi-deeponet", "rgnp-diag-long"]
    else:
        variants = ["rgnp-diag", "pddlvm-fixed", "pi-deeponet", "rgnp-lr"]

    t0 = time.perf_counter()
    x, z, w, u = make_test_set(n_test, 201 if paper else 101, args.seed, workers=min(8, os.cpu_count() or 1))
    t_test = time.perf_counter() - t0
    print(f"test set: {n_test} reference solutions in {t_test:.1f} s", flush=True)
    opts = {"dtype": torch.float32, "device": device}
    test = {
        "x": torch.tensor(x, **opts),
        "z": torch.tensor(z, **opts),
        "w": torch.tensor(w, **opts),
        "u": torch.tensor(u, **opts),
    }
    kw = rgnp_kwargs(paper)
    rows, trajectories = [], {}

    cfg = {
        "device": str(device),
        "paper": paper,
        "kw": kw,
        "lr": lr,
        "phi": phi,
        "schedule": schedule,
        "budget": budget,
        "steps_fixed": steps_fixed,
        "long_steps": long_steps,
        "eval_every": eval_every,
        "seed": args.seed,
    }
    test_np = {k: v.cpu().numpy() for k, v in test.items()}
    if args.jobs > 1 and device.type == "cpu":  # one process per variant, one torch thread each
        with ProcessPoolExecutor(min(args.jobs, len(variants))) as ex:
            results = list(ex.map(run_variant, variants, [cfg] * len(variants), [test_np] * len(variants)))
    else:
        results = [run_variant(name, cfg, test_np) for name in variants]
    for name, (row, traj) in zip(variants, results):
        rows.append(row)
        if traj:
            trajectories[name] = traj

    header = [
        "variant",
        "steps",
        "train s",
        "CPU s",
        "ms/step",
        "u rel-L2",
        "u NSE",
        "u 2sig cov",
        "z NSE",
        "z 2sig cov",
        "mean abs residual",
    ]
    table = [
        (
            n,
            s,
            t,
            c if device.type == "cpu" else None,
            ms,
            m["u_rel_l2"],
            m["u_nse"],
            m["u_cov"],
            m["z_nse"],
            m["z_cov"],
            m["res"],
        )
        for n, s, t, c, ms, m in rows
    ]
    table.append(
        (
            "prior mean of z",
            0,
            0.0,
            None,
            None,
            None,
            None,
            None,
            float(nse(torch.zeros_like(test["z"]), test["z"]).mean()),
            None,
            None,
        )
    )
    desc = (
        "paper sizes (alpha 7x300, 100 Fourier freqs, GICNet P=20, 3 lift + 6 conv + 6 head layers, B=50, N=30)"
        if paper
        else "quick (alpha 3x64, 16 freqs, GICNet P=8, B=8, N=30)"
    )
    short = [v for v in variants if "-long" not in v]
    budget_text = (f"{steps_fixed} steps" if steps_fixed else f"{budget:.0f} s wall clock") if short else ""
    facts = [
        f"config: {desc}; Adam, "
        + (
            f"peak lr {lr:g}, cosine schedule to {phi:g} x peak over each run"
            if schedule == "cosine"
            else f"constant lr {lr:g}"
        )
        + (f"; {', '.join(short)}: {budget_text} each" if short else "")
        + (
            f"; {', '.join(v for v in variants if v not in short)}: {long_steps} steps each"
            if len(short) < len(variants)
            else ""
        )
        + (
            f"; variants trained in {min(args.jobs, len(variants))} parallel processes (one torch thread each)"
            if args.jobs > 1 and device.type == "cpu" and len(variants) > 1
            else ""
        ),
        f"test set: {n_test} draws of (z, w) from the prior, reference (shooting, ~1e-9) on {len(x)} nodes "
        f"({t_test:.1f} s); float32",
        "u metrics from the mean of q_alpha at the test nodes; z metrics from q_beta fed the true field at the "
        "test nodes; coverage = fraction inside mean +- 2 sigma (boundary nodes have sigma = 0 and an exact mean, "
        "so they count as covered); final rows use the parameters with the lowest one-step loss (what `fit` "
        "returns); train s and CPU s exclude the test evaluations",
    ]
    lines = [markdown_table(header, table), ""]
    for name, traj in trajectories.items():
        lines += [
            f"Training trajectory of {name} (current parameters, test metrics as above):",
            "",
            markdown_table(
                [
                    "step",
                    "train s",
                    "loss (one step)",
                    "u rel-L2",
                    "u 2sig cov",
                    "z NSE",
                    "z 2sig cov",
                    "mean abs residual",
                ],
                [(st, t, lo, m["u_rel_l2"], m["u_cov"], m["z_nse"], m["z_cov"], m["res"]) for st, t, lo, m in traj],
            ),
            "",
        ]
    if args.report:  # a full (paper-size) CPU run writes <report>.md, others add _<device> / _quick
        name = report_name(args.report, device=device, quick=report_quick(args))
    else:
        tags = ("paper",) if paper else ()
        name = report_name("rgnp", device=device, quick=report_quick(args), tags=tags, always_device=True)
    title = f"RGNP benchmark, nonlinear Poisson 1-D ({'paper sizes' if paper else 'quick'})"
    write_benchmark_report(name, title, facts, lines, device=device)
    if not math.isfinite(rows[0][5]["u_rel_l2"]):
        raise SystemExit("non-finite forward error")


# ---------------------------------------------------------------------------------------------------------------------
# calibration of the predictive distributions (--calibration)
DEMO_GIC = dict(lift_channels=8, lift_hidden=(16,), cnn_channels=(16, 16), mlp_hidden=(64,), grid_size=16)


def helmholtz_residual(u, x, z, w):
    u_xx = pointwise_grad(pointwise_grad(u, x)[..., 0], x)[..., 0]
    return u_xx + z[:, :1] ** 2 * u


def helmholtz_lift(x, w):
    return w * (1 + x[..., 0]) / 2, 1 - x[..., 0] ** 2


def helmholtz_fields(n_fields: int, x_of, seed: int) -> dict:
    """Exact fields w sin(z (x + 1)) / sin(2 z) with (z, w) uniform on [0.5, 1.4] x [0, 1]; ``x_of(g)`` gives the points
    ``(n_fields, n, 1)``."""
    g = torch.Generator().manual_seed(seed)
    z = 0.5 + 0.9 * torch.rand(n_fields, 1, generator=g, dtype=torch.float64)
    w = torch.rand(n_fields, 1, generator=g, dtype=torch.float64)
    x = x_of(g)
    return {"x": x, "y": w * torch.sin(z * (x[..., 0] + 1)) / torch.sin(2 * z), "z": z, "w": w}


def calibration_problem(name: str, steps: int, seed: int) -> dict:
    """Train one demo-size model, then measure forward and inverse calibration before and after ``calibrate``."""
    torch.manual_seed(seed)
    n_test = 40
    kw = dict(hidden=(64, 64, 64), n_freqs=16, batch_size=8, n_points=30, dtype=torch.float32, gicnet=DEMO_GIC)
    data = None
    if name == "helmholtz (user PDE)":
        model = RGNP(
            helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [1.4]), w_bounds=([0.0], [1.0]), rank=2,
            lift=helmholtz_lift, **kw,
        )  # fmt: skip
        grid = torch.linspace(-1, 1, 101, dtype=torch.float64)[None, :, None]
        test = helmholtz_fields(n_test, lambda g: grid.expand(n_test, -1, -1), 10_000 + seed)
        inv = helmholtz_fields(n_test, lambda g: torch.rand(n_test, 40, 1, generator=g, dtype=torch.float64) * 2 - 1,
                               10_000 + seed)  # fmt: skip
        data = helmholtz_fields(32, lambda g: torch.rand(32, 50, 1, generator=g, dtype=torch.float64) * 2 - 1, 20_000)
        x, z, w, u = test["x"][0], test["z"], test["w"], test["y"]
        xr, ur = inv["x"], inv["y"]
    else:
        fam = NonlinearPoisson1D() if name.startswith("poisson") else ViscousBurgers()
        if isinstance(fam, ViscousBurgers):
            kw["n_points"] = 100
        model = RGNP.from_family(fam, **kw)
        rng = np.random.default_rng(10_000 + seed)
        z, w = fam.sample_params(n_test, rng)
        x = fam.test_points(101 if fam.dim == 1 else 21)
        u = np.stack([fam.solve(z[i], w[i], x) for i in range(n_test)])
        xr = fam.sample_points(n_test, 40 if fam.dim == 1 else 100, torch.Generator().manual_seed(seed)).numpy()
        ur = np.stack([fam.solve(z[i], w[i], xr[i]) for i in range(n_test)])
        # 32 reference fields of other parameters at 50 uniform random points (what calibrate() draws by default)
        rng = np.random.default_rng(20_000 + seed)
        zc, wc = fam.sample_params(32, rng)
        xc = fam.sample_points(32, 50, torch.Generator().manual_seed(20_000 + seed)).numpy()
        data = {"x": xc, "y": np.stack([fam.solve(zc[i], wc[i], xc[i]) for i in range(32)]), "z": zc, "w": wc}
    t0 = time.perf_counter()
    model.fit(steps, lr=3e-3, progress=False, seed=seed)
    t_fit = time.perf_counter() - t0
    f32 = {"dtype": torch.float32}
    z, w, x, u, xr, ur = (torch.as_tensor(a).to(**f32) for a in (z, w, x, u, xr, ur))
    xx = x[None].expand(n_test, -1, -1)
    inner = model.lift(xx, w)[1].abs() > 1e-6  # off the hard boundary, where the field is known exactly

    def measure() -> tuple[dict, dict]:
        mu, sd = (t[..., 0] for t in model.predict(z, w, x, return_std=True))
        fwd = {"rel_l2": float(nse(mu, u).sqrt().mean()), **calibration_summary(u[inner], mu[inner], sd[inner])}
        zm, zs = model.predict_inverse(xr, ur, w, return_std=True)
        inv = {"z_nse": float(nse(zm, z).mean()), **calibration_summary(z, zm, zs)}
        return fwd, inv

    before = measure()
    t0 = time.perf_counter()
    model.calibrate(data, seed=seed)
    t_cal = time.perf_counter() - t0
    after = measure()
    record = dict(model.calibration_)
    t0 = time.perf_counter()
    model.calibrate(data, seed=seed, inverse_steps=500)  # the same forward calibration, then 500 steps of q_beta
    t_inv = time.perf_counter() - t0 - t_cal
    inverse_trained = measure()
    print(f"{name}: fit {t_fit:.0f} s, calibrate {t_cal:.0f} s (+{t_inv:.0f} s); {model.calibration_}", flush=True)
    return {
        "before": before, "after": after, "after_inverse": inverse_trained, "fit_s": t_fit, "calibrate_s": t_cal,
        "inverse_s": t_inv, "record": record,
    }  # fmt: skip


def calibration_main(args) -> None:
    torch.set_num_threads(1)
    steps = 300 if args.quick else 2500
    problems = ("poisson", "burgers", "helmholtz (user PDE)")
    results = {}
    for name in problems:
        p_steps = min(steps, 800) if name.startswith("helmholtz") else steps
        results[name] = calibration_problem(name, p_steps, args.seed)
    facts = [
        f"config: forward MLP 3x64, 16 Fourier frequencies, GICNet P=8 grid 16, 8 fields per step of 30 points "
        f"(Burgers 100), Adam 3e-3, {steps} steps (Helmholtz {min(steps, 800)}, rank 2), float32, seed {args.seed}",
        "test: 40 fields from the prior (another seed); forward at the test grid off the hard boundary (Poisson 99 "
        "nodes, Burgers 19 x 20, Helmholtz 99); inverse from the true field at 40 (Burgers 100) uniform random points",
        "forward: q_alpha alone (as trained by the ELBO) and calibrated (`RGNP.calibrate`: model discrepancy by "
        "MAP on 32 reference fields of other parameters at 50 random points); inverse: q_beta as trained and after "
        "`calibrate(..., inverse_steps=500)` (500 Adam steps of q_beta alone on fields from the calibrated predictive)",
        "coverage_p: fraction of test values inside the central p interval of the Gaussian predictive; z_rms: RMS of "
        "(truth - mean) / std (1 when calibrated); nlpd: mean negative log predictive density; rel_l2: relative L2 "
        "error of the mean (forward); z_nse: normalised squared error of the mean of z (prior mean: 1)",
    ]
    lines = []
    fwd = {}
    inv = {}
    for name, r in results.items():
        fwd[f"{name}: q_alpha alone"] = r["before"][0]
        fwd[f"{name}: calibrated"] = r["after"][0]
        inv[f"{name}: q_beta as trained"] = r["before"][1]
        inv[f"{name}: + 500 steps on the calibrated predictive"] = r["after_inverse"][1]
    lines += ["## forward (the field u)", "", format_calibration_table(fwd), ""]
    lines += ["## inverse (the parameters z)", "", format_calibration_table(inv), ""]
    lines += ["## discrepancy hyperparameters and times", ""]
    lines.append(
        markdown_table(
            ["problem", "scale", "lengthscale", "nugget", "power", "fit s", "calibrate s", "500 inverse steps s"],
            [
                (
                    n,
                    r["record"]["scale"],
                    r["record"]["lengthscale"],
                    r["record"]["nugget"],
                    r["record"]["power"],
                    r["fit_s"],
                    r["calibrate_s"],
                    r["inverse_s"],
                )
                for n, r in results.items()
            ],  # fmt: skip
        )
    )
    write_benchmark_report(
        report_name("rgnp_calibration", device="cpu", quick=args.quick),
        f"RGNP calibration of the predictive distributions ({'quick' if args.quick else 'demo CPU sizes'})",
        facts,
        lines,
        machine_note=f"; peak resident memory {peak_rss_mib():.0f} MB",
    )


if __name__ == "__main__":
    main()
