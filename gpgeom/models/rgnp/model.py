r"""The :class:`RGNP` model: sampling collocation grids and parameters, the Pyro model and guide, the ELBO,
training, calibration, the forward and inverse predictions, files (the method and its equations:
:mod:`gpgeom.models.rgnp`); and :func:`family_residual`. The work of :meth:`RGNP.calibrate` is done in
:mod:`gpgeom.models.rgnp.calibration`, that of the files in ``_persistence``, the input checks in ``_checks``.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as pdist
import torch
from pyro.distributions import constraints
from torch import Tensor, nn

from gpgeom._validation import check_positive
from gpgeom._warnings import user_stacklevel
from gpgeom.base import ModelContract, format_value
from gpgeom.engine.distributed import data_parallel, world_size
from gpgeom.engine.fitting import FitResult, fit
from gpgeom.engine.variational import (
    LowRankGaussian,
    ModelDiscrepancy,
    bounded_variance,
    elbo_loss,
    elbo_terms,
    gaussian_log_density,
)
from gpgeom.models.rgnp import calibration
from gpgeom.models.rgnp._checks import (
    call_back,
    check_inverse_points,
    check_lift_output,
    check_network_options,
    check_residual_output,
    check_user_functions,
    check_w,
    check_xzw,
    default_dtype,
    draw_grid_size,
    fixed_grid_side,
    grid_size_option,
    prepare_data,
    trained_sizes,
    uniform_draws,
    warn_observed_counts,
    warn_uncalibrated,
)
from gpgeom.models.rgnp._persistence import (
    callable_name,
    from_state,
    get_state,
    pickled_state,
    unpickled_state,
)
from gpgeom.models.rgnp._prior_box import truncated_moments, warn_outside_box
from gpgeom.models.rgnp.networks import ForwardNet
from gpgeom.nn.gicnet import GICNet
from gpgeom.pde._checks import NonFiniteOutputError, check_finite_output
from gpgeom.pde.box import as_bounds, check_in_box
from gpgeom.pde.family import LiftFn, PDEFamily, ResidualFn

__all__ = ["RGNP", "family_residual"]


# ---------------------------------------------------------------------------------------------------------------------
# helpers
def family_residual(family: PDEFamily) -> ResidualFn:
    r"""The residual function ``(u, x, z, w) -> (B, n)`` of a :class:`gpgeom.pde.PDEFamily`
    (:meth:`~gpgeom.pde.family.PDEFamily.residual_fn`)."""
    return family.residual_fn()


# ---------------------------------------------------------------------------------------------------------------------
class RGNP(ModelContract, nn.Module):
    r"""Random Grid Neural Process for a parametric PDE (see :mod:`gpgeom.models.rgnp` for the model and the ELBO).

    Build it with :meth:`from_family` (a registered :class:`gpgeom.pde.PDEFamily`) or from a residual function;
    :meth:`fit` trains it from the PDE (and optional data), :meth:`predict` solves the forward problem,
    :meth:`predict_inverse` the inverse one.

    Args:
        residual: ``residual(u, x, z, w) -> (B, n)``: the PDE residual of the field values ``u`` ``(B, n)`` at
            ``x`` ``(B, n, D)`` (``requires_grad``; derivatives by :func:`~gpgeom.pde.autodiff.pointwise_grad`),
            ``z`` ``(B, dz)``, ``w`` ``(B, dw)``.
        domain: ``(lower, upper)`` of the box :math:`\Omega` (numbers or sequences of ``D`` numbers).
        z_bounds: ``(lower, upper)`` of the uniform prior of :math:`z` (sequences of ``dz`` numbers).
        w_bounds: ``(lower, upper)`` of the uniform distribution of :math:`w`, or ``None`` (no known parameters).
        lift: ``lift(x, w) -> (b, d)``, each ``(B, n)``: hard boundary conditions :math:`u = b + d\hat u`
            (default :math:`b = 0, d = 1`: none).
        rank: Rank :math:`k` of :math:`q_\alpha`'s covariance (0: diagonal).
        inverse_rank: Rank of :math:`q_\beta`'s covariance (0: diagonal).
        hidden: Hidden widths of the forward MLP (the paper: 7 x 300 for Poisson).
        n_freqs, freq_range, trainable_freqs: Fourier features of :math:`x` (paper, Poisson: 100 in
            [1e-3, 2], fixed).
        variance_bounds: ``(a, b)`` of :math:`\sigma^2_\alpha` (and of :math:`q_\beta`'s normalised variance).
        residual_scale: :math:`\varepsilon_r` (initial value when learned).
        learn_residual_scale: Learn :math:`\varepsilon_r` by Adam with the networks (the authors' reference code
            does for Burgers). With the flat prior :math:`p(\hat u)`, the ELBO maximised over :math:`\sigma_\alpha`
            rises with :math:`\varepsilon_r` until :math:`\sigma_\alpha` meets its upper bound (to first order the
            optimal :math:`\sigma_\alpha` is proportional to :math:`\varepsilon_r` and its entropy gain cancels
            the residual penalty of the sampled noise), so a learned scale is not pinned to the residual the mean
            field attains, and the bands of :math:`q_\alpha` widen with it. Fixed is the default.
        n_points: Collocation points per field (default of :meth:`fit`): an int, or with ``grid="random"`` a
            range ``(lo, hi)``, from which every step draws its grids' size log-uniformly. With a range the inverse
            encoder is told each set's size (``gicnet`` option ``count_feature``, on by default then; it enters the
            head as :math:`\log(n / \sqrt{lo\, hi})`), so that :meth:`predict_inverse`'s spread follows the number
            of observed points; train on the range of sizes that will be observed.
        batch_size: Fields per step (default of :meth:`fit`).
        grid: ``"random"`` (fresh i.i.d. uniform points each step, RGNP) or ``"fixed"`` (a fixed regular grid
            of ``n_points`` points reused every step: the PDDLVM baseline; in 2-D and 3-D ``n_points`` must be
            :math:`k^D`, :math:`k \ge 2` points per axis).
        boundary_margin: Random points are drawn in the box shrunk by this margin (relative to its width).
        gicnet: Keyword arguments of :class:`GICNet` (the inverse encoder; files before ``aggregation`` load "points").
        dtype: The floating dtype of the model (``torch.float64`` or ``torch.float32``); inputs of any dtype are
            converted to it. ``model.to(dtype=...)`` changes it later.
        seed: Seed of the networks' initial weights (an int >= 0): two models built with the same ``seed`` start
            from the same weights whatever torch's global random state, which is left untouched. ``None``: the
            weights are drawn from torch's global random state (``torch.manual_seed`` before building repeats them).

    Attributes:
        family: The :class:`gpgeom.pde.PDEFamily` of :meth:`from_family` (``None`` for a user-defined residual).
        fit_history: The loss (negative ELBO per field) of every step of every :meth:`fit` so far.
        fit_result_: The :class:`gpgeom.engine.fitting.FitResult` of the last :meth:`fit`.
        trained_sizes_: ``(smallest, largest)`` grid size :math:`q_\beta` was trained on (every :meth:`fit` and
            the inverse steps of :meth:`calibrate`; ``None`` before): :meth:`predict_inverse` warns beyond a factor 2.
    """

    def __init__(
        self,
        residual: ResidualFn,
        *,
        domain: tuple[Any, Any],
        z_bounds: tuple[Any, Any],
        w_bounds: tuple[Any, Any] | None = None,
        lift: LiftFn | None = None,
        rank: int = 0,
        inverse_rank: int = 0,
        hidden: Sequence[int] = (64, 64, 64),
        n_freqs: int = 32,
        freq_range: tuple[float, float] = (1e-3, 2.0),
        trainable_freqs: bool = False,
        variance_bounds: tuple[float, float] = (1e-5, 1.0),
        residual_scale: float = 1e-2,
        learn_residual_scale: bool = False,
        n_points: int | tuple[int, int] = 30,
        batch_size: int = 16,
        grid: str = "random",
        boundary_margin: float = 1e-5,
        gicnet: dict | None = None,
        dtype: torch.dtype = torch.float64,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not callable(residual):
            raise TypeError(f"`residual` must be a callable (u, x, z, w) -> (B, n), got {type(residual).__name__}.")
        if lift is not None and not callable(lift):
            raise TypeError(f"`lift` must be None or a callable (x, w) -> (b, d), got {type(lift).__name__}.")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype!r}.")
        lo, hi = as_bounds("domain", domain)
        D = len(lo)
        if D not in (1, 2, 3):
            raise ValueError(f"`domain` must have 1, 2 or 3 dimensions, got {D}.")
        zlo, zhi = as_bounds("z_bounds", z_bounds)
        wlo, whi = as_bounds("w_bounds", w_bounds, allow_empty=True) if w_bounds is not None else ([], [])
        for name, v in (("rank", rank), ("inverse_rank", inverse_rank), ("n_freqs", n_freqs)):
            check_positive(name, v, integer=True, allow_zero=True)
        check_positive("residual_scale", residual_scale)
        check_positive("batch_size", batch_size, integer=True)
        if seed is not None:
            check_positive("seed", seed, integer=True, allow_zero=True)
        hidden, freq_range, (a, b) = check_network_options(hidden, freq_range, variance_bounds, boundary_margin)
        if grid not in ("random", "fixed"):
            raise ValueError(f"Unknown `grid`={grid!r}; expected 'random' or 'fixed'.")
        n_points = grid_size_option("n_points", n_points, grid, D)

        self.residual_fn = residual
        self.lift_fn = lift
        #: The PDE family of :meth:`from_family`, or ``None``.
        self.family: PDEFamily | None = None
        # where the residual and the lift come from ("family", "user" or, for the lift, "none"): decides what
        # save() can store and what load() must be given
        self._sources = {"residual": "user", "lift": "none" if lift is None else "user"}
        self.dim, self.dim_z, self.dim_w = D, len(zlo), len(wlo)
        self.rank, self.inverse_rank = rank, inverse_rank
        self.n_points, self.batch_size, self.grid = n_points, batch_size, grid
        self.boundary_margin = float(boundary_margin)
        if gicnet is not None and not isinstance(gicnet, dict):
            raise TypeError(
                f"`gicnet` must be None or a dict of GICNet keyword arguments, got {type(gicnet).__name__}."
            )
        taken = sorted({"dim", "in_channels", "out_features", "domain", "param_features"} & set(gicnet or {}))
        if taken:
            raise ValueError(
                f"`gicnet` may not set {', '.join(taken)}: RGNP sets them from the domain, z_bounds, w_bounds and "
                "inverse_rank."
            )
        gic = {"aggregation": "quadrature", **(gicnet or {})}  # stored explicitly: see file_config
        if isinstance(n_points, tuple):  # grids of many sizes: q_beta is told each set's size, or its spread can't
            gic.setdefault("count_feature", True)  # follow the number of observed points
        if gic.get("count_feature"):  # log(n / n_ref) is 0 at the geometric mean of the training sizes
            reference = math.sqrt(n_points[0] * n_points[1]) if isinstance(n_points, tuple) else n_points
            gic.setdefault("count_reference", float(reference))
        #: The constructor's arguments as plain values (stored in model files).
        self.config = {
            "domain": (lo, hi), "z_bounds": (zlo, zhi), "w_bounds": (wlo, whi) if w_bounds is not None else None,
            "rank": rank, "inverse_rank": inverse_rank, "hidden": list(hidden), "n_freqs": n_freqs,
            "freq_range": tuple(float(v) for v in freq_range), "trainable_freqs": bool(trainable_freqs),
            "variance_bounds": (a, b), "residual_scale": float(residual_scale),
            "learn_residual_scale": bool(learn_residual_scale), "n_points": n_points, "batch_size": batch_size,
            "grid": grid, "boundary_margin": float(boundary_margin), "gicnet": dict(gic),
            "seed": None if seed is None else int(seed),
        }  # fmt: skip
        # with a seed, the initial weights come from torch's CPU generator seeded inside a fork of its state, which is
        # restored afterwards (torch's layers draw their initial weights from the global generator only)
        fork = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with fork, default_dtype(dtype):  # every buffer and parameter is created in the model's dtype
            if seed is not None:
                torch.random.default_generator.manual_seed(int(seed))
            for name, v in (("lower", lo), ("upper", hi), ("z_low", zlo), ("z_high", zhi), ("w_low", wlo),
                            ("w_high", whi)):  # fmt: skip
                self.register_buffer(name, torch.tensor(v, dtype=dtype))
            self.forward_net = ForwardNet(
                D, self.dim_z, self.dim_w, hidden=hidden, rank=rank, n_freqs=n_freqs, freq_range=freq_range,
                trainable_freqs=trainable_freqs, variance_bounds=(a, b),
            )  # fmt: skip
            gic.setdefault("lift_channels", 16)
            self.inverse_net = GICNet(
                D, 1, self.dim_z * (2 + inverse_rank), (lo, hi), param_features=self.dim_w, **gic
            )  # fmt: skip
            log_eps = torch.tensor(math.log(residual_scale), dtype=dtype)
            if learn_residual_scale:
                self.log_residual_scale = nn.Parameter(log_eps)
            else:
                self.register_buffer("log_residual_scale", log_eps)
            #: The model discrepancy of the predictive distribution (zero until :meth:`calibrate`).
            self.discrepancy = ModelDiscrepancy(dtype)
        self.fit_history: list[float] = []
        self.fit_result_: FitResult | None = None
        self.trained_sizes_: tuple[int, int] | None = None
        #: What :meth:`calibrate` found (``None`` before).
        self.calibration_: dict[str, Any] | None = None

    # -- construction from a PDE family -----------------------------------------------------------------------------
    @classmethod
    def from_family(cls, family: PDEFamily, **kwargs: Any) -> RGNP:
        r"""An RGNP for a :class:`gpgeom.pde.PDEFamily`: its residual, hard boundary lift, domain and priors.

        A model of a registered family (:func:`gpgeom.pde.register_family`; the built-in ones are) reloads with
        ``RGNP.load(path)`` alone; one of an unregistered family asks for ``residual=`` and ``lift=`` at load.

        Args:
            family: The family (an instance).
            **kwargs: Constructor arguments other than ``residual``, ``lift``, ``domain``, ``z_bounds`` and
                ``w_bounds`` (which come from the family).
        """
        if not isinstance(family, PDEFamily):
            raise TypeError(f"`family` must be a gpgeom.pde.PDEFamily instance, got {type(family).__name__}.")
        taken = sorted({"residual", "lift", "domain", "z_bounds", "w_bounds"} & set(kwargs))
        if taken:
            raise TypeError(
                f"RGNP.from_family takes {', '.join(taken)} from the family; build RGNP(residual, ...) to set them."
            )
        family.check_declaration()
        w_bounds = (family.w_low, family.w_high) if family.dim_w > 0 else None
        model = cls(
            family.residual_fn(), domain=(family.lower, family.upper), z_bounds=(family.z_low, family.z_high),
            w_bounds=w_bounds, lift=family.boundary_ansatz, **kwargs,
        )  # fmt: skip
        model.family = family
        model._sources = {"residual": "family", "lift": "family"}
        return model

    # -- small pieces -----------------------------------------------------------------------------------------------
    @property
    def residual_scale(self) -> Tensor:
        r""":math:`\varepsilon_r`, a scalar tensor."""
        return self.log_residual_scale.exp()

    def _normalise(self, t: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        return 2 * (t - lo) / (hi - lo) - 1

    def sample_grid(
        self, batch: int, n: int | tuple[int, int] | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Collocation grids ``(batch, n, D)``: i.i.d. uniform in the (margin-shrunk) box, or the fixed regular grid
        (:math:`k^D = n` points, ``n`` in 1-D; ``n`` defaults to the model's ``n_points``; for a range ``(lo, hi)``
        one size for the whole batch is drawn log-uniformly first). The random numbers come from ``generator``
        (drawn on its device, then moved to the model's), or from torch's global random state."""
        n = draw_grid_size(
            grid_size_option("n_points", self.n_points if n is None else n, self.grid, self.dim), generator
        )
        check_positive("batch", batch, integer=True)
        lo, hi = self.lower, self.upper
        if self.grid == "fixed":
            m = self.boundary_margin * (hi - lo)
            per_axis = fixed_grid_side(self.dim, n, "n_points")
            axes = [
                torch.linspace(float(lo[d] + m[d]), float(hi[d] - m[d]), per_axis, dtype=lo.dtype, device=lo.device)
                for d in range(self.dim)
            ]
            mesh = torch.meshgrid(*axes, indexing="ij")
            pts = torch.stack([g.reshape(-1) for g in mesh], dim=-1)
            return pts[None].expand(batch, -1, -1).clone()
        u = uniform_draws((batch, n, self.dim), lo, generator)
        m = self.boundary_margin * (hi - lo)
        return lo + m + (hi - lo - 2 * m) * u

    def sample_params(self, batch: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""``z`` ``(batch, dz)`` and ``w`` ``(batch, dw)`` from their uniform distributions, drawn from
        ``generator`` (on its device, then moved to the model's) or from torch's global random state."""
        check_positive("batch", batch, integer=True)
        z = self.z_low + (self.z_high - self.z_low) * uniform_draws((batch, self.dim_z), self.lower, generator)
        w = self.w_low + (self.w_high - self.w_low) * uniform_draws((batch, self.dim_w), self.lower, generator)
        return z, w

    def lift(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(b(x), d(x))`, each ``(B, n)``, of the hard boundary conditions (``(0, 1)`` without a lift)."""
        if self.lift_fn is None:
            return torch.zeros_like(x[..., 0]), torch.ones_like(x[..., 0])
        return check_lift_output(self.lift_fn(x, w), x, w)

    def _call_residual(self, u: Tensor, x: Tensor, z: Tensor, w: Tensor) -> Tensor:
        return check_residual_output(self.residual_fn(u, x, z, w), u, x, z, w)

    def residual(self, u_fn: Callable[[Tensor], Tensor], x: Any, z: Any, w: Any = None) -> Tensor:
        r"""Residual of a field function ``u_fn: x (B, n, D) -> (B, n)`` at ``x``, through the model's residual
        function and autograd derivatives, ``(B, n)`` (e.g. ~0 for an exact solution). A field that is NaN or
        infinite at a point is an error naming ``u_fn`` and the point (the residual there would be NaN)."""
        x, z, w = check_xzw(self, x, z, w, check_support=False)
        x = x.detach().requires_grad_(True)
        u = u_fn(x)
        if not isinstance(u, Tensor) or u.shape != x.shape[:2]:
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise ValueError(f"`u_fn(x)` must return a tensor of shape {tuple(x.shape[:2])} (B, n), got {got}.")
        check_finite_output("u_fn(x)", u, {"x": x}, {}, "The field must be finite at every point.")
        return self._call_residual(u, x, z, w)

    def _zw_features(self, z: Tensor, w: Tensor) -> Tensor:
        return torch.cat(
            [self._normalise(z, self.z_low, self.z_high), self._normalise(w, self.w_low, self.w_high)], dim=-1
        )

    def forward_dist(self, z: Tensor, w: Tensor, x: Tensor) -> LowRankGaussian:
        r""":math:`q_\alpha(\hat u \mid z, w, X)` over the network output (before the lift), ``(B, n)``."""
        xs = self._normalise(x, self.lower, self.upper)
        return self.forward_net(xs, x, self._zw_features(z, w))

    def field_dist(self, z: Tensor, w: Tensor, x: Tensor) -> LowRankGaussian:
        r"""Distribution of the lifted field :math:`u = b + d\hat u` at ``x`` ``(B, n, D)``: ``(B, n)``."""
        b, d = self.lift(x, w)
        return self.forward_dist(z, w, x).affine(b, d)

    def residual_indicator(self, z: Tensor, w: Tensor) -> Tensor:
        r""":math:`\rho(z, w) = \|\mathcal R[\bar u]\| / \|\mathcal R'[\bar u]\, d\|`, ``(B,)`` (detached): the
        error indicator of the model discrepancy. :math:`\bar u = b + d\mu` is the mean field, :math:`\mathcal R'`
        the linearised residual (the Jacobian-vector product along the lift's :math:`d`, by double backward), norms
        root-mean-square over a cell-centred grid of the domain (64, 12 x 12 or 6 x 6 x 6 points in 1, 2, 3-D):
        the size of a Newton correction :math:`\bar u + a\,d` that removes the residual, i.e. the residual in units
        of the field (for :math:`-(k u')' = f`: :math:`\|r\| / \|k\|`, the stability constant of the
        residual-based error bound)."""
        return calibration.residual_indicator(self, z, w)

    def predictive_dist(self, z: Tensor, w: Tensor, x: Tensor) -> LowRankGaussian:
        r"""The predictive distribution of the true field at ``x`` ``(B, n, D)``: :meth:`field_dist` plus the
        calibrated model discrepancy (its ``n x n`` Cholesky factor appended to the low-rank factor), ``(B, n)``;
        :meth:`field_dist` itself before :meth:`calibrate`."""
        dist = self.field_dist(z, w, x)
        if not bool(self.discrepancy.calibrated):
            return dist
        _, d = self.lift(x, w)
        xs = self._normalise(x, self.lower, self.upper)
        return dist.add_factor(self.discrepancy.factor(xs, d, self.residual_indicator(z, w)))

    def inverse_dist(self, x: Tensor, u: Tensor, w: Tensor, mask: Tensor | None = None) -> LowRankGaussian:
        r""":math:`q_\beta(z \mid u(X), w)`: a Gaussian over ``z`` ``(B, dz)`` from field values ``u`` ``(B, n)``."""
        wn = self._normalise(w, self.w_low, self.w_high) if self.dim_w > 0 else None
        out = self.inverse_net(x, u[..., None], wn, mask)
        dz = self.dim_z
        half = (self.z_high - self.z_low) / 2
        loc = self.z_low + half * (out[:, :dz] + 1)
        var = half**2 * bounded_variance(out[:, dz : 2 * dz], *self.config["variance_bounds"])
        factor = half[:, None] * out[:, 2 * dz :].reshape(-1, dz, self.inverse_rank) if self.inverse_rank else None
        return LowRankGaussian(loc, var, factor)

    # -- Pyro model and guide ---------------------------------------------------------------------------------------
    def model(self, x: Tensor, w: Tensor, data: dict | None = None) -> None:
        r"""Pyro model: ``x`` ``(B, n, D)`` (``requires_grad``), ``w`` ``(B, dw)``, ``data`` optional (:meth:`fit`)."""
        B, n, _ = x.shape
        with pyro.plate("fields", B, device=x.device):
            z = pyro.sample("z", pdist.Uniform(self.z_low, self.z_high).to_event(1))
            u_hat = pyro.sample("u", pdist.ImproperUniform(constraints.real, (B,), (n,)))
            b, d = self.lift(x, w)
            u = b + d * u_hat
            r = self._call_residual(u, x, z, w)
            eps = self.residual_scale
            pyro.factor("pde", gaussian_log_density(r, torch.zeros_like(r), eps**2).sum(-1))
            pyro.sample("z_obs", self.inverse_dist(x, u, w).to_pyro(), obs=z)
        if data is not None:
            S = data["y"].shape[0]
            batch = min(int(data.get("batch", S)), S)
            # "weight": 1/W on each of W torchrun ranks (set by fit), so that the mean over the ranks weighs the data
            # as one process with W times the fields per step does
            with (
                pyro.poutine.scale(scale=float(data.get("weight", 1.0))),
                pyro.plate("data", S, subsample_size=batch, device=x.device) as idx,
            ):
                xd, zd, wd = data["x"][idx], data["z"][idx], data["w"][idx]
                pred = self.field_dist(zd, wd, xd).add_noise(data["noise"] ** 2)
                pyro.sample("y", pred.to_pyro(), obs=data["y"][idx])

    def guide(self, x: Tensor, w: Tensor, data: dict | None = None) -> None:
        r"""Pyro guide: :math:`z \sim p(z)`, :math:`\hat u \sim q_\alpha(\cdot \mid z, w, X)`."""
        B = x.shape[0]
        with pyro.plate("fields", B, device=x.device):
            z = pyro.sample("z", pdist.Uniform(self.z_low, self.z_high).to_event(1))
            pyro.sample("u", self.forward_dist(z, w, x).to_pyro())

    def _draw(self, batch_size: int | None, n_points: int | None) -> tuple[Tensor, Tensor]:
        B = self.batch_size if batch_size is None else batch_size
        x = self.sample_grid(B, n_points).requires_grad_(True)
        _, w = self.sample_params(B)
        return x, w

    def loss(self, batch_size: int | None = None, n_points: int | None = None, data: dict | None = None) -> Tensor:
        r"""Negative ELBO per field on a fresh draw of ``batch_size`` grids, ``z`` and ``w`` (scalar tensor)."""
        x, w = self._draw(batch_size, n_points)
        return elbo_loss(self.model, self.guide, x, w, data) / x.shape[0]

    def elbo_terms(
        self, x: Any, w: Any, data: dict | None = None, *, noise_std: float = 0.05, data_batch: int = 50
    ) -> dict[str, Tensor]:
        r"""One-draw ELBO split by site (:func:`gpgeom.engine.variational.elbo_terms`), summed over the batch.

        Args:
            x: Collocation points ``(B, n, D)`` in the domain.
            w: Known parameters ``(B, dw)`` or ``(dw,)``; ``None`` when the model has none.
            data, noise_std, data_batch: Observations as :meth:`fit` takes them (``data`` may also be the dict
                :meth:`fit` prepares from them).
        """
        x = self._as_tensor("x", x, ndim=3, shape=(None, None, self.dim))
        check_in_box("x", x, self.lower, self.upper, "the domain")
        w = check_w(self, w, x.shape[0])
        if data is not None and not (isinstance(data, dict) and "noise" in data):
            data = prepare_data(self, data, noise_std, data_batch)
        return elbo_terms(self.model, self.guide, x.detach().requires_grad_(True), w, data)

    # -- training ---------------------------------------------------------------------------------------------------
    def fit(
        self,
        steps: int = 1000,
        *,
        batch_size: int | None = None,
        n_points: int | None = None,
        lr: float = 1e-3,
        lr_schedule: str | Callable[[int], float] | None = None,
        lr_final_fraction: float = 0.0,
        data: dict | None = None,
        noise_std: float = 0.05,
        data_batch: int = 50,
        patience: int | None = None,
        progress: bool | None = None,
        seed: int | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> RGNP:
        r"""Maximise the ELBO with Adam, a fresh random grid (and fresh :math:`z, w`) every step.

        Calling ``fit`` again continues from the current networks (``fit_history`` grows).

        Args:
            steps: Number of Adam steps (each one of :func:`gpgeom.engine.fitting.fit`'s "epochs").
            batch_size, n_points: Fields per step and collocation points per field, an int or a range ``(lo, hi)``
                (see the constructor; defaults from the constructor).
            lr: Adam learning rate (paper: 1e-3), the peak rate with a schedule.
            lr_schedule, lr_final_fraction: Learning-rate schedule over the ``steps`` (see
                :func:`gpgeom.engine.fitting.fit`): ``None`` (constant), ``"cosine"`` (annealed to
                ``lr * lr_final_fraction``) or a callable ``step -> factor``.
            data: Optional noisy observations of fields with known parameters (the data-informed variant): a dict
                with ``x`` ``(S, m, D)`` (any points in the domain), ``y`` ``(S, m)``, ``z`` ``(S, dz)``, ``w``
                ``(S, dw)`` (numpy arrays or tensors).
            noise_std: Observation noise :math:`\sigma_y` of ``data``.
            data_batch: Data fields per step (the data term is scaled by ``S / data_batch``: an unbiased estimate of
                the log-likelihood of all ``S`` fields, which the loss, like the rest of the ELBO, divides by
                ``batch_size``).
            patience: Early-stopping patience of the smoothed loss (default: never stop early).
            progress: A progress bar: ``True``, ``False`` or ``None`` (shown in a terminal or notebook only; see
                :mod:`gpgeom._progress`).
            seed: Seed of the grids, parameters and network noise (the global random state is left untouched). The
                networks' initial weights are drawn when the model is built: build it with ``RGNP(..., seed=...)``
                for a fit that repeats whatever the global random state (built with ``seed=None``, from the global
                random state, two models fitted with the same ``seed`` differ).
            callback: ``callback(step, loss)`` at every step, with the loss of the current networks before that
                step's update (e.g. to track test errors during training: it may call :meth:`predict`, which sees
                them). Raising ``StopIteration`` there ends the fit and keeps it: ``step`` steps, as ``fit(steps=
                step)`` from the same start and seed (``fit_result_.stopped``). Under ``torchrun`` the ranks agree
                after every call (one more all-reduce per step): a ``StopIteration`` on any rank stops every rank at
                that step, an exception on one rank is raised there and a ``RuntimeError`` naming that rank on the
                others.

        Started under ``torchrun``, every rank trains data-parallel (:mod:`gpgeom.engine.distributed`): rank 0's
        parameters, a grid per rank (seed + rank), gradients and losses averaged; progress on rank 0 only. A step on
        :math:`W` ranks of ``batch_size`` :math:`B` is a step of one process with :math:`W B` fields (and
        :math:`W` times ``data_batch`` data fields): the loss of one process is the mean physics term of its
        :math:`B` fields plus the data term divided by :math:`B`, so every rank weights its data term by
        :math:`1/W` and the mean over the ranks divides it by :math:`W B` (``tests/test_distributed.py``; without
        the weight the data term weighed :math:`W` times more than in one process). Every rank must build the model
        with the same arguments and pass ``fit`` the same arguments, ``data`` included (the whole data set: each rank
        draws its own batches of it; shards would weight the data term ``1/W``): otherwise every rank raises a
        ``ValueError`` naming the arguments that differ, before the first step. When the loss raises on one rank (a
        NaN residual on its grid, an error in user code, ``KeyboardInterrupt``), the step's loss all-reduce tells
        every rank (:meth:`~gpgeom.engine.distributed.DataParallel.mean_of`): that rank raises its error, the others
        a ``RuntimeError`` naming it, at once and before any update, and each model is left as it was before the
        call (before, the others waited in the all-reduce until the collectives' timeout); a backward pass that
        raises on one rank is told in the gradient all-reduce, with the same outcome.

        Returns:
            The model itself. ``fit_result_`` holds the :class:`gpgeom.engine.fitting.FitResult` (``history[0]``:
            the loss, the negative ELBO per field, of every step); the parameters with the lowest one-step loss are
            kept (as ``fit`` does for Adam). A fit that raises (a callback's exception, ``KeyboardInterrupt``, a NaN
            residual) leaves the model as it was before the call: networks, calibration, ``fit_history``,
            ``fit_result_``, ``trained_sizes_``; to stop early and keep the fit, raise ``StopIteration`` from the
            callback.

        Raises:
            TypeError: For a residual or lift that cannot take its arguments (``(u, x, z, w)``, ``(x, w)``).
            ValueError: Under ``torchrun``, when the ranks were given different arguments. Before the first step,
                when the residual or the lift fails on a small trial batch (e.g. a
                residual that indexes ``w`` in a model built with ``w_bounds=None``), a lift that does not return a
                pair ``(b, d)``, a lift that couples the points, or a residual with no gradient path to the field
                ``u``; for ``n_points`` that is not :math:`k^D` with a fixed grid in 2-D or 3-D; at any step, when the
                residual or the lift returns NaN or infinite values for finite inputs (the message gives the point).
        """
        with self._kept_on_error():  # a fit that raises leaves the model as it was (base module docstring)
            check_positive("steps", steps, integer=True)
            if batch_size is not None:
                check_positive("batch_size", batch_size, integer=True)
            if n_points is not None:
                n_points = grid_size_option("n_points", n_points, self.grid, self.dim)
                if isinstance(n_points, tuple) and not self.inverse_net.count_feature:
                    warnings.warn(
                        f"fit(n_points={n_points}) trains on grids of many sizes, but this model's inverse encoder "
                        "is not told a set's size (built with one n_points and no gicnet count_feature), so "
                        "predict_inverse's spread cannot follow the number of observed points; build RGNP(..., "
                        "n_points=(lo, hi)) for that.",
                        UserWarning,
                        stacklevel=user_stacklevel(),
                    )
            prepared = prepare_data(self, data, noise_std, data_batch) if data is not None else None
            if bool(self.discrepancy.calibrated):
                warnings.warn(
                    "RGNP.fit changes the networks that calibrate() measured: the calibration is dropped; call "
                    "calibrate() again after training.",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
                self.discrepancy.reset()
                self.calibration_ = None
            check_user_functions(self)
            counter = [0]
            agreeing = None  # under torchrun with a callback: the ranks agree on its outcome each step (set below)
            step_data = [prepared]  # under torchrun: the data term weighted 1/W on every rank (set below)

            def objective() -> Tensor:
                # Pyro/torch argument validation off while training: it re-checks supports every step (a device sync
                # on GPU); the model checks its own inputs and outputs.
                with pyro.validation_enabled(False):  # torchrun: the mean over the ranks, or all raise if one did
                    value = dp.mean_of(
                        lambda: self.loss(batch_size, n_points, step_data[0]),
                        f"RGNP.fit, in the loss at training step {counter[0] + 1}",
                    )
                counter[0] += 1
                self._fitted = True  # trained from here on: a callback may call predict()
                call_back(callback, counter[0], value, agreeing)  # StopIteration: the fit ends after this step's loss
                return value

            try:  # under torchrun: rank 0's parameters, each rank its own grids (seed + rank), gradients averaged
                settings = {
                    "steps": steps, "batch_size": self.batch_size if batch_size is None else batch_size,
                    "n_points": self.n_points if n_points is None else n_points, "lr": lr, "lr_schedule": lr_schedule,
                    "lr_final_fraction": lr_final_fraction, "patience": patience, "data": prepared,
                    **{f"model.{k}": v for k, v in self.config.items()},  # the constructor's hyperparameters
                }  # fmt: skip
                with data_parallel(self, seed, settings=settings) as dp:  # refused if the ranks' settings differ
                    if callback is not None and world_size() > 1:  # a rank that stops (or raises) stops every rank
                        agreeing = dp
                    if prepared is not None and world_size() > 1:
                        # each rank's loss is its B fields' mean physics term + (data log-likelihood) / B; the mean over
                        # W ranks must carry (data log-likelihood) / (W B), as one process with W B fields per step
                        step_data[0] = {**prepared, "weight": 1.0 / world_size()}
                    result = fit(
                        objective, module=self, optimizer="adam", lr=lr, lr_schedule=lr_schedule,
                        lr_final_fraction=lr_final_fraction, epochs=steps, progress=dp.progress(progress), seed=dp.seed,
                        patience=steps + 1 if patience is None else patience, rel_tol=0.0 if patience is None else 1e-4,
                    )  # fmt: skip
            except NonFiniteOutputError as exc:  # the message says all: which function, where; not 20 Pyro frames
                raise ValueError(f"{exc.original()} (at training step {counter[0] + 1})") from None
            self.fit_history.extend(result.history[0])
            self.fit_result_ = result
            self._fitted = True
            self.trained_sizes_ = trained_sizes(self.trained_sizes_, self.n_points if n_points is None else n_points)
            self._counts_warned = False  # newly trained: predict_inverse warns again where it should
            return self

    def calibrate(
        self, data: dict | None = None, *, n_fields: int = 32, n_points: int = 50, inverse_steps: int = 0,
        inverse_batch: int = 32, inverse_noise_std: float = 0.0, lr: float = 1e-3, seed: int | None = None,
        progress: bool | None = None,
    ) -> RGNP:  # fmt: skip
        r"""Calibrate the predictive distributions on reference fields the networks were not trained on.

        1. **Forward**: the model discrepancy :math:`\delta` (:class:`~gpgeom.engine.variational.ModelDiscrepancy`,
           with the residual indicator :meth:`residual_indicator`) gets the maximum a posteriori hyperparameters
           given the reference fields :math:`y_f` and :math:`q_\alpha` at their points,
           :math:`\sum_f \log\mathcal N(y_f;\, b + d\mu,\, D(LL^\top + \operatorname{diag}\sigma^2)D + C_\delta)
           + \log p(\theta)`; :meth:`predict` then adds :math:`C_\delta` to :math:`q_\alpha`'s covariance.
        2. **Inverse** (optional): ``inverse_steps`` Adam steps of :math:`q_\beta` alone (the forward network is
           fixed) on :math:`-\log q_\beta(z \mid u(X), w)`, :math:`z, w` from the priors, a random grid :math:`X`
           and :math:`u` drawn from the calibrated predictive: the ELBO's :math:`q_\beta` term with the truth's
           model (:math:`q_\alpha` plus the discrepancy) instead of :math:`q_\alpha`'s samples. At the demo's sizes
           :math:`q_\beta` was not overconfident before (z RMS 0.90, 1.56, 1.43 on Poisson, Burgers, a Helmholtz
           user PDE; ``benchmarks/results/rgnp_calibration.md``); 500 steps gave 0.78, 1.38, 0.87 for 0.3-1 times
           the training time, and after 300 training steps they took Burgers from 0.87 to 1.12
           (``benchmarks/results/rgnp_calibration_quick.md``), hence the default 0.

        Call it after :meth:`fit`; a later :meth:`fit` drops the calibration (it no longer describes the networks).

        Args:
            data: Reference fields, a dict with ``x`` ``(S, m, D)``, ``y`` ``(S, m)`` (accurate solutions),
                ``z`` ``(S, dz)``, ``w`` ``(S, dw)`` (the format of :meth:`fit`'s data). Default: ``n_fields`` draws
                of :math:`(z, w)` from the priors solved by the family's reference solver at ``n_points`` uniform
                random points each (drawn from ``numpy.random.default_rng(seed)``).
            n_fields, n_points: Size of that default set (fields, points per field); the inverse steps draw grids
                of the model's ``n_points``.
            inverse_steps: Adam steps of the inverse network (0: leave it as it is).
            inverse_batch: Fields per inverse step.
            inverse_noise_std: Noise sd :math:`\sigma_y` of the fields :meth:`predict_inverse` will be given: the
                inverse steps add it to the predictive's fields, so that :math:`q_\beta` is the posterior from noisy
                observations (0: as the predictive says; trained by :meth:`fit` alone, :math:`q_\beta` knows only
                :math:`q_\alpha`'s noise).
            lr: Adam learning rate of the inverse steps.
            seed: Seed of the reference draws and of the inverse steps, an int >= 0; ``None``: seeds drawn from
                torch's global random stream (``torch.manual_seed`` before the call repeats them).
            progress: Progress bars of the reference solves (one per field) and of the inverse steps (see
                :meth:`fit`).

        Returns:
            The model. ``calibration_`` holds the hyperparameters (``scale`` :math:`\tau`, ``lengthscale``,
            ``nugget``, ``power``), ``log_posterior``, the sizes and ``inverse_loss`` (the best one-step loss).

            A calibrate that raises (``KeyboardInterrupt`` in the inverse steps included) leaves the model as it
            was before the call: the discrepancy, ``calibration_``, the inverse network, ``trained_sizes_``.

        Raises:
            ValueError: Without ``data`` for a model without a PDE family that has a reference solver; for data
                outside the domain or the supports of the parameters; for data whose points all lie on the hard
                boundary (:math:`|d| \le 10^{-6}` times its largest value on the domain), where the lifted field
                is exact by construction and the errors say nothing of the discrepancy (before, the model was marked
                calibrated with the prior's hyperparameters, scale 1 and nugget 0.1). Points on the boundary among
                others are left out of the fit, judged against :math:`d` on the whole domain (before, against the
                field's own points: a field of boundary points, where :math:`d` is 0 to rounding, counted).
        """
        return calibration.calibrate(
            self, data, n_fields=n_fields, n_points=n_points, inverse_steps=inverse_steps, inverse_batch=inverse_batch,
            inverse_noise_std=inverse_noise_std, lr=lr, seed=seed, progress=progress,
        )  # fmt: skip

    # -- prediction -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, z: Any, w: Any, x: Any, return_std: bool = False, *, return_mvn: bool = False, jitter: float = 0.0
    ) -> Tensor | tuple[Tensor, Tensor] | Any:
        r"""The forward problem: the predictive distribution of the solution field :math:`u = b + d\hat u`,
        :math:`\hat u \sim q_\alpha(\cdot \mid z, w, X)`, plus the model discrepancy after :meth:`calibrate`
        (:meth:`predictive_dist`; before it, :math:`q_\alpha`'s own spread, which is overconfident), for given
        parameters.

        Args:
            z: ``(B, dz)``, or ``(dz,)`` for one field, inside the prior support (numpy or torch).
            w: ``(B, dw)`` or ``(dw,)`` (one row shared by all fields); ``None`` when the model has no known
                parameters.
            x: Points ``(B, n, D)``, or ``(n, D)`` shared by all fields, inside the domain.
            return_std: Also return the standard deviation.
            return_mvn: Return a GPyTorch ``MultivariateNormal`` (batch ``B``, ``n`` points; low-rank covariance
                when ``rank > 0``) instead of tensors.
            jitter: Added to the covariance diagonal of the MVN (the lifted variance is 0 on a hard boundary).

        Returns:
            The mean ``(B, n, 1)`` (one output: the field; ``B = 1`` for a 1-D ``z``), with ``return_std`` the pair
            ``(mean, std)`` of that shape, or the MVN. Tensors of the model's dtype on its device.
        """
        self._check_fitted()
        x, z, w = check_xzw(self, x, z, w)
        if (return_std or return_mvn) and not bool(self.discrepancy.calibrated):
            warn_uncalibrated(self)
        if return_mvn:
            return self.predictive_dist(z, w, x).to_gpytorch(jitter)
        dist = self.field_dist(z, w, x)
        mean = dist.mean[..., None]
        if not return_std:
            return mean
        var = dist.variance
        if bool(self.discrepancy.calibrated):
            var = var + self.discrepancy.variance(self.lift(x, w)[1], self.residual_indicator(z, w))
        return mean, var.clamp_min(0).sqrt()[..., None]

    @torch.no_grad()
    def predict_inverse(
        self, x: Any, u: Any, w: Any = None, return_std: bool = False, *, mask: Any = None, return_dist: bool = False,
        truncate: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor] | LowRankGaussian:  # fmt: skip
        r"""The inverse problem: the posterior :math:`q_\beta(z \mid u(X), w)` from a field sampled at arbitrary
        points.

        **Its spread follows the number of observed points only for a model trained on a range of grid sizes**
        (``n_points=(lo, hi)``). GICNet's aggregation (either rule, :mod:`gpgeom.nn.gicnet`) is a normalised
        average of the observed values: it sees where the field is known and what it is there, not how many points
        there are (replicating every point leaves it exactly unchanged). Trained on one size, the standard deviation
        is the one :math:`q_\beta` learnt from grids of that size, whatever the number observed: too narrow from
        fewer points, too wide from more. On the toy :math:`u - z = 0` (:math:`\varepsilon_r = 0.1`), the sd
        against the exact posterior's from 5, 30 and 300 observed points (median ratio over 200 fields): 0.54, 1.32,
        4.18 trained on 30 points; 0.96, 1.14, 1.85 trained on ``n_points=(5, 300)``, whose encoder is also told
        :math:`\log n` (``tests/test_rgnp_semantics.py``). Outside the trained range the spread is extrapolated.

        **Its mean can leave the prior box.** :math:`q_\beta` is a Gaussian, while the prior :math:`p(z)` is uniform
        on the box ``z_bounds``, so every posterior mean lies in the box. On the toy :math:`u - z = 0`
        (:math:`z \in [0, 1]`, 30 points), a field of 1.0, 1.1 and 10 everywhere gave means 1.017, 1.12 and 13.6
        (exact 0.985, 0.997 and 1.000), and of 1e6 a mean of 1.4e6. ``truncate=True`` returns the moments of each
        marginal of :math:`q_\beta` restricted to the box (:math:`\propto q_\beta(z)\,\mathbb 1_{\text{box}}(z)`,
        the posterior under the uniform prior; :mod:`~gpgeom.models.rgnp._prior_box`): 0.984, 0.994, 0.980 and
        1.000 there; from 400 noisy fields with :math:`z \sim U(0, 1)`, of which 1.8 % had a mean outside, the
        error of the mean against the exact posterior's fell from 0.048 to 0.011 (RMS) on those fields and from
        0.017 to 0.016 on all (``tests/test_rgnp_inverse_box.py``). The default leaves the Gaussian's moments as
        they are and warns when a mean lies outside the box by more than 3 standard deviations.

        Args:
            x: Points ``(B, n, D)``, or ``(n, D)`` shared by all fields, inside the domain (any number, order and
                placement).
            u: Field values ``(B, n)``, ``(B, n, 1)`` (the shape :meth:`predict` returns) or ``(n,)`` for one field.
            w: Known parameters ``(B, dw)`` or ``(dw,)`` (one row shared by all fields).
            return_std: Also return the standard deviation.
            mask: ``(B, n)`` bool, ``False`` for padding: padded entries of ``x`` and ``u`` are ignored (they may be
                NaN or outside the domain); the real ones must be finite and inside the domain.
            return_dist: Return the :class:`~gpgeom.engine.variational.LowRankGaussian` over ``z`` instead of
                tensors.
            truncate: Return the mean and standard deviation of each marginal of :math:`q_\beta` truncated to the
                prior box (inside it); with ``inverse_rank > 0`` each marginal is truncated alone, not the joint.

        Returns:
            The posterior mean ``(B, dz)`` (``B = 1`` for a 1-D ``u``), with ``return_std`` the pair
            ``(mean, std)`` (each ``(B, dz)``), or the distribution.

        Warns:
            UncalibratedWarning: Once per model, for sets of fewer than half or more than twice the points of the
                grids it was trained on (``trained_sizes_``), where the spread does not hold.
            UserWarning: Without ``truncate``, when a mean lies outside the prior box by more than 3 of its
                standard deviations (the message names the parameters, the box and the fields).

        Raises:
            ValueError: For ``truncate=True`` with ``return_dist=True`` (the truncated posterior is not a
                :class:`~gpgeom.engine.variational.LowRankGaussian`).
        """
        self._check_fitted()
        if not isinstance(truncate, bool):
            raise TypeError(f"`truncate` must be True or False, got {truncate!r}.")
        if truncate and return_dist:
            raise ValueError(
                "`truncate=True` gives the moments of q_beta restricted to the prior box, which is not a "
                "LowRankGaussian: ask for return_dist=True (the Gaussian) or truncate=True (tensors), not both."
            )
        x, u, mask = check_inverse_points(self, x, u, mask)
        warn_observed_counts(self, u.shape[-1] if mask is None else mask.sum(-1))
        w = check_w(self, w, u.shape[0])
        if self.dim_w:
            check_in_box("w", w, self.w_low, self.w_high, "the declared support of w")
        dist = self.inverse_dist(x, u, w, mask)
        if truncate:
            mean, std = truncated_moments(dist.mean, dist.stddev, self.z_low, self.z_high)
            return (mean, std) if return_std else mean
        warn_outside_box(dist.mean, dist.stddev, self.z_low, self.z_high)
        if return_dist:
            return dist
        return (dist.mean, dist.stddev) if return_std else dist.mean

    # -- the model contract: files and repr ---------------------------------------------------------------------------
    def _get_state(self) -> dict[str, Any]:
        return get_state(self)

    @classmethod
    def _from_state(
        cls, state: dict[str, Any], residual: ResidualFn | None = None, lift: LiftFn | None = None, **unknown: Any
    ) -> RGNP:
        r"""Rebuild from :meth:`_get_state`: the family from the registry, user callables from the arguments."""
        return from_state(cls, state, residual, lift, unknown)

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: torch.device | str | None = None,
        residual: ResidualFn | None = None, lift: LiftFn | None = None,
    ) -> RGNP:  # fmt: skip
        r"""Load a model written by :meth:`save`; its predictions equal the saved model's.

        Args:
            path: The file.
            map_location: Device to put the model on (default: the CPU).
            residual, lift: The user callables of a model built with ``RGNP(residual, lift=...)``, which no file
                can hold (the error names the missing ones). Not needed for a model of a registered PDE family
                (:meth:`from_family`); given there, they replace the family's.

        Raises:
            gpgeom.errors.ModelFileError: For a file of another class, a callable that is needed but not given,
                or a family that is not registered in this process.
        """
        return super().load(path, map_location, residual=residual, lift=lift)

    def __getstate__(self) -> dict[str, Any]:
        r"""For ``pickle`` and ``copy.deepcopy``: a family's residual and lift are rebuilt from the family on the other
        side; a user's callables travel as themselves (a ``TypeError`` naming one that cannot be pickled)."""
        return pickled_state(super().__getstate__())

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(unpickled_state(state))

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.family is not None:
            fields["family"] = self.family.name
        else:
            fields["residual"] = callable_name(self.residual_fn)
            fields["lift"] = callable_name(self.lift_fn)
        fields.update(dim=self.dim, dim_z=self.dim_z, dim_w=self.dim_w, hidden=list(self.config["hidden"]),
                      n_freqs=self.config["n_freqs"], rank=self.rank, inverse_rank=self.inverse_rank)  # fmt: skip
        gic = self.inverse_net
        conv = [m.out_channels for m in gic.cnn if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
        head = [m.out_features for m in gic.head if isinstance(m, nn.Linear)][:-1]
        grid = "x".join(map(str, gic.grid_size))
        fields["gicnet"] = f"lift={gic.lift_channels} grid={grid} conv={conv} head={head}"
        fields["n_params"] = sum(p.numel() for p in self.parameters())
        fields["grid"] = self.grid
        fields["residual_scale"] = float(self.residual_scale.detach())
        if self.calibration_ is not None:
            keys = ("scale", "lengthscale", "nugget", "power")
            fields["discrepancy"] = " ".join(f"{k}={format_value(float(self.calibration_[k]))}" for k in keys)
        fields["steps"] = len(self.fit_history)
        fields["dtype"] = self.dtype
        return fields
