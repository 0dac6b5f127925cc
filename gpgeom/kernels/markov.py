#!/usr/bin/env python3
r"""Markov kernels: GPyTorch kernels on time that also have a linear time-invariant SDE form.

A Markov kernel :math:`k(t, t')` on time :math:`t \in \mathbb R` is the covariance of :math:`f(t) = H x(t)`,
the first component of the state :math:`x(t) \in \mathbb R^s` of the linear SDE

.. math::
    \mathrm d x(t) = F x(t)\, \mathrm dt + L\, \mathrm d\beta(t), \qquad
    \mathbb E[\mathrm d\beta\, \mathrm d\beta^\top] = Q_c\, \mathrm dt,

(Särkkä & Solin, *Applied Stochastic Differential Equations*, 2019, ch. 6 and 12.2). Between two times the state
obeys the exact discrete model :math:`x(t + \Delta) = \Phi(\Delta) x(t) + q`, :math:`q \sim N(0, Q(\Delta))`, with

.. math::
    \Phi(\Delta) = \exp(F \Delta), \qquad
    Q(\Delta) = \int_0^\Delta \Phi(u) L Q_c L^\top \Phi(u)^\top \mathrm du,

which the Kalman filter in :mod:`gpgeom.engine.statespace` uses to do GP regression in :math:`O(n s^3)`.

Every kernel here is an ordinary :class:`gpytorch.kernels.Kernel` (raw parameters, constraints, priors,
``batch_shape``, ``forward(x1, x2, diag)``) that can be given to ``ExactGP``/``SingleTaskGP``, and in addition has

* ``state_dim`` -- the state dimension :math:`s`;
* :meth:`~MarkovKernel.sde` -- the matrices :math:`(F, L, Q_c, H, P_\infty)` as an :class:`SDE`;
* :meth:`~MarkovKernel.transition` -- :math:`(\Phi(\Delta), Q(\Delta))` for a batch of steps, in closed form;
* :meth:`~MarkovKernel.initial_state` -- the prior mean and covariance of the state at the first time.

Kernels:

* :class:`MaternMarkovKernel` -- stationary Matérn :math:`\nu \in \{1/2, 3/2, 5/2\}` with its own variance
  (Hartikainen & Särkkä, "Kalman filtering and smoothing solutions to temporal Gaussian process regression
  models", MLSP 2010).
* :class:`IntegratedWienerKernel`, :class:`WNOAKernel`, :class:`WNOJKernel` -- white noise on the
  :math:`(s-1)`-th derivative (acceleration for WNOA, jerk for WNOJ), the non-stationary "constant velocity" and
  "constant acceleration" motion priors (Barfoot, *State Estimation for Robotics*, 2017, sec. 3.4 and 11.3).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.priors import Prior
from torch import Tensor

from gpgeom._validation import check_option, check_tensor
from gpgeom.errors import NotPSDError
from gpgeom.kernels.sde import (
    SDE,
    MarkovKernel,
    check_batch,
    check_steps,
    float_times,
    refuse_last_dim_is_batch,
    time_column,
)
from gpgeom.kernels.stationary import _DifferenceDistance
from gpgeom.kernels.variance import KernelVariance, set_constrained

__all__ = [
    "SDE",
    "MarkovKernel",
    "MaternMarkovKernel",
    "IntegratedWienerKernel",
    "WNOAKernel",
    "WNOJKernel",
]


#: Below this lam * dt, the Matern transition's Q comes from its power series (see MaternMarkovKernel.transition).
_SERIES_STEP = 0.25
#: Highest power of F kept in that series (F has norm up to 3 lam for nu = 5/2): remainder below (3 * 0.25)^21 / 21!.
_SERIES_ORDER = 20


def _powers(x: Tensor, n: int) -> Tensor:
    r"""Return ``... x n`` with :math:`x^0, \dots, x^{n-1}` along the last dimension (products, no ``pow``,
    so that gradients at :math:`x = 0` are finite)."""
    out = [torch.ones_like(x)]
    for _ in range(1, n):
        out.append(out[-1] * x)
    return torch.stack(out, dim=-1)


def _q_series(F: Tensor, G: Tensor, dt: Tensor) -> Tensor:
    r""":math:`Q(\Delta) = \int_0^\Delta e^{Fu} G e^{F^\top u} du = \sum_{p \ge 0} C_p \Delta^{p+1} / (p+1)` with
    :math:`C_0 = G`, :math:`C_p = (F C_{p-1} + C_{p-1} F^\top)/p` (the Taylor coefficients of
    :math:`e^{Fu} G e^{F^\top u}`), truncated after ``p = _SERIES_ORDER`` (remainder below
    :math:`(\lVert F\rVert\Delta)^{p+1}/(p+1)!` relative). ``F``, ``G``: ``bs x s x s``; ``dt``: ``batch x m``;
    returns ``broadcast(batch, bs) x m x s x s``."""
    C = G
    terms = [C]
    for p in range(1, _SERIES_ORDER + 1):
        C = (F @ C + C @ F.transpose(-1, -2)) / p
        terms.append(C / (p + 1))
    B = torch.stack(terms, dim=-3)  # bs x (P+1) x s x s
    dt_pows = _powers(dt, _SERIES_ORDER + 2)[..., 1:]  # dt^1 .. dt^(P+1)
    return (dt_pows[..., None, None] * B.unsqueeze(-4)).sum(-3)


class MaternMarkovKernel(_DifferenceDistance, KernelVariance, MarkovKernel):
    r"""Matérn kernel with :math:`\nu \in \{1/2, 3/2, 5/2\}`, its variance, and its state-space form.

    .. math::
        k(t, t') = \sigma^2 \frac{2^{1-\nu}}{\Gamma(\nu)} (\lambda r)^\nu K_\nu(\lambda r),
        \qquad r = |t - t'|, \quad \lambda = \sqrt{2\nu} / \ell,

    i.e. ``variance * gpytorch.kernels.MaternKernel(nu)``. The variance :math:`\sigma^2` is a parameter of this
    kernel because the SDE needs it: **do not wrap this kernel in a** ``ScaleKernel`` (its outputscale would
    multiply the dense covariance but stay invisible to :meth:`sde` and the Kalman filter, so the two forms would
    disagree; use :attr:`variance` instead).

    SDE (Hartikainen & Särkkä 2010; Särkkä & Solin 2019, sec. 12.3), with :math:`s = \nu + 1/2` and state
    :math:`x = (f, f', \dots, f^{(s-1)})`: :math:`F` is the companion matrix of :math:`(D + \lambda)^s`,
    :math:`L = e_s`, :math:`H = e_1^\top`, and

    .. math::
        Q_c = 2 \sigma^2 \sqrt\pi\, \lambda^{2\nu}\, \Gamma(\nu + 1/2) / \Gamma(\nu)
        \quad (= 2\sigma^2\lambda,\ 4\sigma^2\lambda^3,\ \tfrac{16}{3}\sigma^2\lambda^5),

    .. math::
        P_\infty = \sigma^2, \quad \sigma^2 \operatorname{diag}(1, \lambda^2), \quad
        \sigma^2 \begin{pmatrix} 1 & 0 & -\lambda^2/3 \\ 0 & \lambda^2/3 & 0 \\ -\lambda^2/3 & 0 & \lambda^4
        \end{pmatrix}.

    Closed-form transition: :math:`F + \lambda I = N` is nilpotent (:math:`N^s = 0`), hence
    :math:`\Phi(\Delta) = e^{-\lambda\Delta} \sum_{k<s} (N\Delta)^k / k!` and
    :math:`Q(\Delta) = P_\infty - \Phi(\Delta) P_\infty \Phi(\Delta)^\top` (for :math:`s = 1`
    :math:`-\sigma^2 \operatorname{expm1}(-2\lambda\Delta)`, free of cancellation; for :math:`s > 1` its power
    series below :math:`\lambda\Delta = 1/4`).

    Inputs are ``... x n x d``; ``forward`` uses the Euclidean distance for any ``d`` (as GPyTorch's
    ``MaternKernel``, computed from the differences: :mod:`gpgeom.kernels.stationary`), but the SDE (and thus the
    Kalman filter) is only meaningful for ``d = 1`` (time).

    Args:
        nu: Smoothness, one of 0.5, 1.5, 2.5.
        variance_prior: Prior on :attr:`variance`.
        variance_constraint: Constraint on :attr:`variance` (default ``Positive()``).
        kwargs: Passed to :class:`gpytorch.kernels.Kernel` (``batch_shape``, ``active_dims``, ``lengthscale_prior``,
            ``lengthscale_constraint``, ``eps``). ``ard_num_dims`` other than 1 is refused.

    Attributes:
        lengthscale: ``batch_shape x 1 x 1``.
        variance: ``batch_shape`` (0-dim without batch).

    Example:
        >>> k = MaternMarkovKernel(nu=1.5, batch_shape=torch.Size([2]))
        >>> t = torch.rand(2, 50, 1).sort(dim=-2).values
        >>> K = k(t).to_dense()  # 2 x 50 x 50
        >>> Phi, Q = k.transition(t[..., 1:, 0] - t[..., :-1, 0])  # 2 x 49 x 2 x 2 each
    """

    has_lengthscale = True

    def __init__(
        self,
        nu: float = 1.5,
        variance_prior: Prior | None = None,
        variance_constraint: Interval | None = None,
        **kwargs,
    ):
        check_option("nu", nu, (0.5, 1.5, 2.5))
        if kwargs.get("ard_num_dims") not in (None, 1):
            raise ValueError(
                f"`ard_num_dims` must be None or 1 for MaternMarkovKernel (a kernel on time), "
                f"got {kwargs['ard_num_dims']!r}."
            )
        super().__init__(**kwargs)
        self.nu = float(nu)
        self.state_dim = int(nu + 0.5)
        self._register_variance(variance_prior, variance_constraint)

    @property
    def is_stationary(self) -> bool:
        r"""``True``: :math:`k(t, t')` depends on :math:`t - t'` only (the state starts at :math:`P_\infty`)."""
        return True

    def _set_lengthscale(self, value: Tensor | float) -> None:
        r"""GPyTorch's setter, without its detour through the default dtype: ``k.lengthscale = 0.7`` on a float64
        kernel stored 0.699999988 (0.7 rounded to float32); and strictly inside the constraint
        (:func:`~gpgeom.kernels.variance.set_constrained`)."""
        set_constrained(self, "lengthscale", value)

    def _lam(self) -> Tensor:
        r""":math:`\lambda = \sqrt{2\nu}/\ell`, shape ``batch_shape``."""
        return math.sqrt(2.0 * self.nu) / self.lengthscale[..., 0, 0]

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params) -> Tensor:
        r"""Covariance ``... x n x m`` (``... x n`` when ``diag``) between ``x1`` (``... x n x d``) and ``x2``."""
        x1, x2 = float_times(x1, self.lengthscale.dtype), float_times(x2, self.lengthscale.dtype)
        # Isotropic: dist(x1 / l, x2 / l) = dist(x1, x2) / l, from the differences of the raw times (exact for
        # close times): GPyTorch's expansion |a|^2 + |b|^2 - 2ab had an absolute error of eps (t - mean)^2 in the
        # squared distance, which in float32 made the Gram matrix of a dense series indefinite
        # (gpgeom.kernels.stationary)
        dist = self.covar_dist(x1, x2, diag=diag, **params)  # (... x d with last_dim_is_batch) x n (x m)
        ls = self.lengthscale[..., 0] if diag else self.lengthscale  # batch_shape x 1 (x 1)
        var = self.variance[..., None] if diag else self.variance[..., None, None]
        if params.get("last_dim_is_batch", False):
            # the input dimensions are a batch dimension after batch_shape: without this the lengthscale and
            # variance of batch member j were applied to input dimension j
            b = len(self.batch_shape)
            ls, var = ls.unsqueeze(b), var.unsqueeze(b)
        z = math.sqrt(2.0 * self.nu) * dist / ls
        if self.nu == 0.5:
            poly = torch.ones_like(z)
        elif self.nu == 1.5:
            poly = 1.0 + z
        else:
            poly = 1.0 + z + z.square() / 3.0
        return var * poly * torch.exp(-z)

    def sde(self) -> SDE:
        s = self.state_dim
        lam = self._lam()
        var = self.variance
        bs = lam.shape
        # Companion matrix of (D + lam)^s: superdiagonal ones, last row -binom(s, k) lam^(s - k).
        shift = torch.diag(lam.new_ones(s - 1), 1)
        lam_pows = _powers(lam, s + 1)  # bs x (s+1)
        coef = torch.stack([-math.comb(s, k) * lam_pows[..., s - k] for k in range(s)], dim=-1)  # bs x s
        e_last = lam.new_zeros(s)
        e_last[-1] = 1.0
        F = shift + e_last[:, None] * coef[..., None, :]
        L = e_last[:, None].expand(*bs, s, 1)
        H = torch.zeros_like(e_last)
        H[0] = 1.0
        H = H[None, :].expand(*bs, 1, s)
        q = 2.0 * math.sqrt(math.pi) * math.gamma(self.nu + 0.5) / math.gamma(self.nu)
        Qc = (q * var * lam.pow(2 * s - 1))[..., None, None]
        Pinf = self._pinf(lam, var)
        return SDE(F, L, Qc, H, Pinf)

    def _pinf(self, lam: Tensor, var: Tensor) -> Tensor:
        r"""Stationary covariance ``batch_shape x s x s`` of :math:`(f, f', \dots)`:
        :math:`\operatorname{Cov}(f^{(i)}, f^{(j)}) = (-1)^j k^{(i+j)}(0)`."""
        s = self.state_dim
        v = var
        if s == 1:
            return v[..., None, None]
        l2 = lam.square()
        z = torch.zeros_like(v)
        if s == 2:
            rows = [[v, z], [z, l2 * v]]
        else:
            c = -l2 * v / 3.0
            rows = [[v, z, c], [z, l2 * v / 3.0, z], [c, z, l2.square() * v]]
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    def transition(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r"""Closed-form :math:`(\Phi(\Delta), Q(\Delta))`, each ``broadcast(batch, batch_shape) x m x s x s``,
        for ``dt`` of shape ``batch x m`` (non-negative; a negative or NaN step raises a ``ValueError``, an infinite
        one gives the stationary limit :math:`\Phi = 0`, :math:`Q = P_\infty`)."""
        dt = float_times(dt, self.lengthscale.dtype)
        check_steps(self, dt, allow_inf=True)  # an infinite step is the stationary limit: Phi = 0, Q = P_inf
        out = torch.promote_types(dt.dtype, self.lengthscale.dtype)
        # In float64 whatever the kernel's dtype: Q = P_inf - Phi P_inf Phi^T cancels (relative error about
        # eps / (lam dt)^(2s-1) in its smallest entries), which in float32 left Q 1.5e-4 off (relative to its own
        # diagonal) just above the series' range, at lam dt = 0.26 for nu = 5/2; and the
        # series' coefficients grow like ||F||^p / p!, ||F|| up to lam^s, which overflowed float32 for short
        # lengthscales (inf x dt^p = NaN at dt = 0: FunBaT's day mode on Beijing)
        dt = dt.double()
        s = self.state_dim
        lam = self._lam().double()  # bs
        F, L, Qc, _, Pinf = (m.double() for m in self.sde())
        N = F + lam[..., None, None] * torch.eye(s, dtype=F.dtype, device=F.device)
        # N^k / k!, k = 0..s-1: bs x s x s x s
        terms = [torch.eye(s, dtype=F.dtype, device=F.device).expand_as(N)]
        for k in range(1, s):
            terms.append(terms[-1] @ N / k)
        Npow = torch.stack(terms, dim=-3)
        # an infinite step is evaluated at 0 and masked: e^{-lam inf} inf^k and its gradient were NaN (0 x inf)
        inf = torch.isinf(dt)
        dt_fin = torch.where(inf, 0.0, dt)
        dt_pows = _powers(dt_fin, s)  # batch x m x s
        decay = torch.where(inf, 0.0, torch.exp(-lam[..., None] * dt_fin))  # broadcast x m
        Phi = (dt_pows[..., None, None] * Npow.unsqueeze(-4)).sum(-3) * decay[..., None, None]
        Pinf_ = Pinf.unsqueeze(-3)
        if s == 1:
            # sigma^2 (1 - e^{-2 lam dt}) by expm1: the difference P_inf - Phi P_inf Phi^T has relative error
            # eps / (2 lam dt) (in float32 2% at lam dt = 3e-6, and Q = 0 below lam dt = 3e-8)
            Q = Pinf_ * torch.where(inf, 1.0, -torch.expm1(-2.0 * lam[..., None] * dt_fin))[..., None, None]
            return Phi.to(out), Q.to(out)
        Q = Pinf_ - Phi @ Pinf_ @ Phi.transpose(-1, -2)
        # below lam dt = _SERIES_STEP the integral's series is exact to rounding instead
        small = lam[..., None] * dt < _SERIES_STEP
        if bool(small.any()):
            G = L @ Qc @ L.transpose(-1, -2)
            # the series of the long steps is not used, but evaluated at 0: dt^p overflowed for dt > 1e14 and
            # the unused branch's gradient became 0 x inf = NaN
            series = _q_series(F, G, torch.where(small, dt, torch.zeros_like(dt)))
            Q = torch.where(small[..., None, None], series, Q)
        Q = 0.5 * (Q + Q.transpose(-1, -2))
        return Phi.to(out), Q.to(out)


class IntegratedWienerKernel(MarkovKernel):
    r"""Position covariance of an :math:`(s-1)`-times integrated Wiener process started at :math:`t_0`.

    State :math:`x = (p, \dot p, \dots, p^{(s-1)})`; white noise of spectral density :math:`Q_c` drives the last
    derivative: :math:`F` is the shift matrix (ones on the superdiagonal), :math:`L = e_s`, :math:`H = e_1^\top`.
    It is the "white noise on acceleration" prior for :math:`s = 2` (:class:`WNOAKernel`) and "white noise on
    jerk" for :math:`s = 3` (:class:`WNOJKernel`) (Barfoot 2017, sec. 3.4; Anderson et al. 2015).
    Transition (derived by integrating :math:`\Phi(u) L Q_c L^\top \Phi(u)^\top`; indices from 0):

    .. math::
        \Phi(\Delta)_{ij} = \frac{\Delta^{j-i}}{(j-i)!}\ (j \ge i), \qquad
        Q(\Delta)_{ij} = Q_c \frac{\Delta^{2s-1-i-j}}{(2s-1-i-j)\,(s-1-i)!\,(s-1-j)!}.

    The process starts at time :math:`t_0` with :math:`x(t_0) \sim N(0, P_0)`. The state cross-covariance is,
    with :math:`a = t - t_0`, :math:`b = t' - t_0`, :math:`\mu = \min(a, b)`, :math:`\alpha = a - \mu`,
    :math:`\beta = b - \mu` (one of them zero), :math:`p = s-1-i`, :math:`q = s-1-j`,

    .. math::
        \operatorname{Cov}(x(t), x(t'))_{ij} = [\Phi(a) P_0 \Phi(b)^\top]_{ij} + Q_c \int_0^{\mu}
        \frac{(z+\alpha)^p (z+\beta)^q}{p!\, q!} \mathrm dz
        = [\Phi(a) P_0 \Phi(b)^\top]_{ij} + Q_c \sum_{k \le p} \sum_{l \le q}
        \frac{\alpha^{p-k} \beta^{q-l} \mu^{k+l+1}}{k!\,(p-k)!\,l!\,(q-l)!\,(k+l+1)},

    and the kernel is its :math:`(0, 0)` entry; e.g. for WNOA with :math:`P_0 = 0`,
    :math:`k(t, t') = Q_c(\mu^3/3 + |a-b| \mu^2/2)`.

    Times must not precede :math:`t_0` (a ``ValueError`` is raised). The process is not stationary:
    ``sde().Pinf`` is ``None`` and :meth:`initial_state` propagates :math:`P_0` from :math:`t_0`.

    Args:
        order: State dimension :math:`s \ge 1` (``1`` is a Wiener process, ``2`` WNOA, ``3`` WNOJ).
        t0: Start time (float or ``batch_shape`` tensor), default 0.
        P0: Covariance of the state at :math:`t_0`: ``None`` (default) for zeros -- the process is pinned to 0 at
            :math:`t_0`, the textbook integrated Wiener process --, a float :math:`c` for :math:`c I`, or a tensor
            ``s x s`` / ``batch_shape x s x s`` (symmetric PSD). It is a buffer, not learned. Set it to reflect what
            is known of the initial position/velocity/acceleration; with ``P0 = 0`` an observation at exactly
            :math:`t_0` needs positive noise.
        qc_prior: Prior on :attr:`qc`.
        qc_constraint: Constraint on :attr:`qc` (default ``Positive()``).
        kwargs: Passed to :class:`gpytorch.kernels.Kernel` (``batch_shape``, ``active_dims``).

    Attributes:
        qc: ``batch_shape`` spectral density :math:`Q_c` (learnable), initialised to 1.
        t0: ``batch_shape`` buffer.
        P0: ``batch_shape x s x s`` buffer.

    ``t0`` and ``P0`` keep the precision they are given in -- float64 for Python numbers, the tensor's dtype
    otherwise -- and casting the module (``.to(dtype)``, ``.float()``, ``.double()``) never lowers it: the start
    time is rounded to the dtype of the data only when it is compared with and subtracted from the times, so
    ``WNOJKernel(t0=0.1784).double()`` accepts ``t = 0.1784`` in float64 and in float32 alike.
    """

    has_lengthscale = False

    def __init__(
        self,
        order: int,
        t0: float | Tensor = 0.0,
        P0: float | Tensor | None = None,
        qc_prior: Prior | None = None,
        qc_constraint: Interval | None = None,
        **kwargs,
    ):
        if isinstance(order, bool | np.bool_) or not isinstance(order, numbers.Integral) or order < 1:
            raise ValueError(f"`order` must be an int >= 1, got {order!r}.")
        order = int(order)  # numpy integers too (a configuration file's)
        super().__init__(**kwargs)
        s = self.state_dim = order
        bs = self.batch_shape
        # t0 and P0 keep the precision they are given in (float64 for Python numbers), whatever the module's
        # dtype: rounding t0 through float32 could move it past the first time (see _apply).
        if isinstance(t0, Tensor):
            check_tensor("t0", t0, floating=True)
            try:
                t0_ = t0.detach().expand(bs).clone()
            except RuntimeError:
                raise ValueError(
                    f"`t0` must have shape () or batch_shape={tuple(bs)}, got {tuple(t0.shape)}."
                ) from None
        elif isinstance(t0, numbers.Real) and not isinstance(t0, bool | np.bool_) and math.isfinite(t0):
            t0_ = torch.full(bs, float(t0), dtype=torch.float64)
        else:
            raise TypeError(f"`t0` must be a finite float or a tensor, got {t0!r}.")
        if P0 is None:
            P0_ = torch.zeros(*bs, s, s, dtype=torch.float64)
        elif isinstance(P0, Tensor):
            check_tensor("P0", P0, shape=(s, s), floating=True)
            try:
                P0_ = P0.detach().expand(*bs, s, s).clone()
            except RuntimeError:
                raise ValueError(
                    f"`P0` must have shape ({s}, {s}) or batch_shape + ({s}, {s}), got {tuple(P0.shape)}."
                ) from None
            if not torch.allclose(P0_, P0_.transpose(-1, -2)):
                asym = float((P0_ - P0_.transpose(-1, -2)).abs().max())
                raise ValueError(f"`P0` must be symmetric, got max |P0 - P0^T| = {asym:.3g}.")
            ev = torch.linalg.eigvalsh(P0_.double())
            if bool((ev < -1e-10 * ev.abs().amax(-1, keepdim=True).clamp_min(1.0)).any()):
                raise NotPSDError(f"`P0` is not positive semi-definite (smallest eigenvalue {float(ev.min()):.3g}).")
        elif isinstance(P0, numbers.Real) and not isinstance(P0, bool | np.bool_) and 0 <= P0 < math.inf:
            P0_ = float(P0) * torch.eye(s, dtype=torch.float64).expand(*bs, s, s).clone()
        else:
            raise TypeError(f"`P0` must be None, a finite non-negative float or a tensor, got {P0!r}.")
        self.register_buffer("t0", t0_)
        self.register_buffer("P0", P0_)
        if qc_constraint is None:
            qc_constraint = Positive()
        elif not isinstance(qc_constraint, Interval):
            raise TypeError(
                f"`qc_constraint` must be a gpytorch Interval constraint (e.g. Positive()), got "
                f"{type(qc_constraint).__name__}."
            )
        self.register_parameter("raw_qc", torch.nn.Parameter(torch.zeros(bs)))
        self.register_constraint("raw_qc", qc_constraint)
        if qc_prior is not None:
            if not isinstance(qc_prior, Prior):
                raise TypeError(f"`qc_prior` must be a gpytorch Prior, got {type(qc_prior).__name__}.")
            self.register_prior("qc_prior", qc_prior, self._qc_param, self._qc_closure)
        self._set_qc(1.0)
        # Constant coefficient tables (plain attributes: recomputed, not saved, moved on use).
        self._phi_coef = self._make_phi_coef(s)
        self._q_coef = self._make_q_coef(s)
        self._cov_coef = self._make_cov_coef(s)

    # ----- parameters -----
    @property
    def qc(self) -> Tensor:
        return self.raw_qc_constraint.transform(self.raw_qc)

    @qc.setter
    def qc(self, value: Tensor | float) -> None:
        self._set_qc(value)

    def _qc_param(self, m: IntegratedWienerKernel) -> Tensor:
        return m.qc

    def _qc_closure(self, m: IntegratedWienerKernel, value: Tensor | float) -> None:
        m._set_qc(value)

    def _set_qc(self, value: Tensor | float) -> None:
        set_constrained(self, "qc", value)

    @property
    def is_stationary(self) -> bool:
        r"""``False``: the integrated Wiener process starts at :math:`t_0`; :math:`k(t, t')` depends on both times."""
        return False

    # ----- buffers kept at their own precision -----
    _precise_buffers = ("t0", "P0")

    def _apply(self, fn, *args, **kwargs):
        r"""``Module._apply`` (behind ``.to``, ``.double()``, ``.float()``, ``.cuda()``, ...) that moves
        :attr:`t0` and :attr:`P0` to the new device but never lowers their precision: a module cast to float32
        keeps its float64 start time, which is compared with (and subtracted from) the data in the data's
        dtype. Casting to a wider dtype widens them (exactly)."""
        old = {name: self._buffers.get(name) for name in self._precise_buffers}
        out = super()._apply(fn, *args, **kwargs)
        for name, before in old.items():
            after = self._buffers.get(name)
            if before is None or after is None or after is before or not before.is_floating_point():
                continue
            if after.is_floating_point() and torch.finfo(after.dtype).bits < torch.finfo(before.dtype).bits:
                self._buffers[name] = before.to(device=after.device)
        return out

    def _t0_like(self, t: Tensor) -> Tensor:
        r"""The start time in the dtype and on the device of the times ``t``. Rounding to nearest is monotone,
        so a time :math:`t \ge t_0` representable in that dtype is never below the rounded start time."""
        return self.t0.to(dtype=t.dtype, device=t.device)

    # ----- constant tables -----
    @staticmethod
    def _make_phi_coef(s: int) -> Tensor:
        r"""``s x s x s`` table C with :math:`\Phi(\Delta) = \sum_e \Delta^e C_e`."""
        C = torch.zeros(s, s, s, dtype=torch.float64)
        for i in range(s):
            for j in range(i, s):
                C[j - i, i, j] = 1.0 / math.factorial(j - i)
        return C

    @staticmethod
    def _make_q_coef(s: int) -> Tensor:
        r"""``2s x s x s`` table C with :math:`Q(\Delta) = Q_c \sum_e \Delta^e C_e`."""
        C = torch.zeros(2 * s, s, s, dtype=torch.float64)
        for i in range(s):
            for j in range(s):
                e = 2 * s - 1 - i - j
                C[e, i, j] = 1.0 / (e * math.factorial(s - 1 - i) * math.factorial(s - 1 - j))
        return C

    @staticmethod
    def _make_cov_coef(s: int) -> Tensor:
        r"""``s x s x s x s x 2s`` table C[i, j, u, v, w] of the coefficients of
        :math:`\alpha^u \beta^v \mu^w` in the noise part of :math:`\operatorname{Cov}(x_i(t), x_j(t'))/Q_c`."""
        C = torch.zeros(s, s, s, s, 2 * s, dtype=torch.float64)
        f = math.factorial
        for i in range(s):
            for j in range(s):
                p, q = s - 1 - i, s - 1 - j
                for k in range(p + 1):
                    for l in range(q + 1):
                        C[i, j, p - k, q - l, k + l + 1] += 1.0 / (f(k) * f(p - k) * f(l) * f(q - l) * (k + l + 1))
        return C

    # ----- SDE -----
    def sde(self) -> SDE:
        s = self.state_dim
        qc = self.qc
        bs = qc.shape
        F = torch.diag(qc.new_ones(s - 1), 1).expand(*bs, s, s)
        L = qc.new_zeros(s, 1)
        L[-1, 0] = 1.0
        H = qc.new_zeros(1, s)
        H[0, 0] = 1.0
        return SDE(F, L.expand(*bs, s, 1), qc[..., None, None], H.expand(*bs, 1, s), None)

    def _phi(self, dt: Tensor) -> Tensor:
        C = self._phi_coef.to(dt)
        return (_powers(dt, self.state_dim)[..., None, None] * C).sum(-3)

    def transition(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r"""Closed-form polynomial :math:`(\Phi(\Delta), Q(\Delta))`, each ``broadcast(batch, batch_shape) x m x
        s x s``, for ``dt`` of shape ``batch x m`` (finite and non-negative, else a ``ValueError``)."""
        dt = float_times(dt, self.raw_qc.dtype)
        check_steps(self, dt)
        s = self.state_dim
        qc = self.qc
        Phi = self._phi(dt)
        Q = (_powers(dt, 2 * s)[..., None, None] * self._q_coef.to(dt)).sum(-3) * qc[..., None, None, None]
        Phi = Phi.expand(*Q.shape)
        return Phi, Q

    def _check_after_t0(self, name: str, t: Tensor, t0: Tensor) -> None:
        if bool((t < t0).any()):
            raise ValueError(
                f"`{name}` has times before the start time t0 of {type(self).__name__}; "
                f"the process is only defined for t >= t0 (min time {float(t.min()):.6g})."
            )

    def initial_state(self, t0: Tensor) -> tuple[Tensor, Tensor]:
        r"""State prior at the first times ``t0`` (``batch``, each :math:`\ge` the kernel's start time):
        :math:`m = 0`, :math:`P = \Phi(a) P_0 \Phi(a)^\top + Q(a)`, :math:`a = t_0^{\text{first}} - t_0`.

        Returns:
            ``(m0, P0)`` of shapes ``broadcast(batch, batch_shape) x s`` and ``... x s x s``.
        """
        check_batch(self, "t0", t0.shape, "shape batch")
        t0 = float_times(t0, self.raw_qc.dtype)
        start = self._t0_like(t0)
        self._check_after_t0("t", t0, start)
        a = (t0 - start).unsqueeze(-1)  # ... x 1
        Phi, Q = self.transition(a)
        Phi, Q = Phi[..., 0, :, :], Q[..., 0, :, :]
        P = Phi @ self.P0.to(Phi) @ Phi.transpose(-1, -2) + Q
        P = 0.5 * (P + P.transpose(-1, -2))
        return P.new_zeros(*P.shape[:-1]), P

    # ----- dense covariances -----
    def _cov(self, a: Tensor, b: Tensor, rows: slice, cols: slice, ntime: int) -> Tensor:
        r"""Cov blocks ``... x s_r x s_c`` for start-relative times ``a``, ``b`` (same broadcast shape ``...``,
        whose last ``ntime`` dimensions are time indices and the rest broadcast with ``batch_shape``)."""
        s = self.state_dim
        mu = torch.minimum(a, b)
        alpha, beta = a - mu, b - mu
        C = self._cov_coef[rows, cols].to(a)  # r x c x s x s x 2s
        pa, pb, pm = _powers(alpha, s), _powers(beta, s), _powers(mu, 2 * s)
        noise = torch.einsum("...u,...v,...w,ijuvw->...ij", pa, pb, pm, C)
        bsh = self.batch_shape
        qc = self.qc.reshape(*bsh, *([1] * ntime), 1, 1)
        out = qc * noise
        P0 = self.P0
        if bool((P0 != 0).any()):
            Pa = self._phi(a)[..., rows, :]
            Pb = self._phi(b)[..., cols, :]
            P0_ = P0.to(a).reshape(*bsh, *([1] * ntime), s, s)
            out = out + Pa @ P0_ @ Pb.transpose(-1, -2)
        return out

    def _start_relative(self, x1: Tensor, x2: Tensor, diag: bool) -> tuple[Tensor, Tensor]:
        t1 = time_column("x1", x1, self.raw_qc.dtype)
        t2 = time_column("x2", x2, self.raw_qc.dtype)
        t01 = self._t0_like(t1).unsqueeze(-1)
        t02 = self._t0_like(t2).unsqueeze(-1)
        self._check_after_t0("x1", t1, t01)
        self._check_after_t0("x2", t2, t02)
        if diag:
            return t1 - t01, t2 - t02
        return (t1 - t01).unsqueeze(-1), (t2 - t02).unsqueeze(-2)

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params) -> Tensor:
        r"""Position covariance ``... x n x m`` (``... x n`` when ``diag``) for times ``x1`` ``... x n x 1`` and
        ``x2`` ``... x m x 1``."""
        refuse_last_dim_is_batch(self, params)
        a, b = self._start_relative(x1, x2, diag)
        a, b = torch.broadcast_tensors(a, b)
        return self._cov(a, b, slice(0, 1), slice(0, 1), 1 if diag else 2)[..., 0, 0]

    def state_covariance(self, x1: Tensor, x2: Tensor | None = None, diag: bool = False) -> Tensor:
        r"""Cross-covariance of the full state :math:`(p, \dot p, \dots)` between two sets of times.

        Args:
            x1: ``... x n x 1`` times (:math:`\ge t_0`).
            x2: ``... x m x 1`` times; ``None`` for ``x1``.
            diag: Return only :math:`\operatorname{Cov}(x(t_i), x(t_i))` (needs ``n = m``).

        Returns:
            ``broadcast(..., batch_shape) x n x m x s x s`` with entry ``[..., i, j, :, :]`` equal to
            :math:`\operatorname{Cov}(x(t_i), x(t'_j))` (``... x n x s x s`` when ``diag``). The interleaved
            ``(n s) x (m s)`` matrix is ``out.transpose(-3, -2).reshape(..., n * s, m * s)``.
        """
        x2 = x1 if x2 is None else x2
        a, b = self._start_relative(x1, x2, diag)
        a, b = torch.broadcast_tensors(a, b)
        s = self.state_dim
        return self._cov(a, b, slice(0, s), slice(0, s), 1 if diag else 2)


class WNOAKernel(IntegratedWienerKernel):
    r"""White noise on acceleration (once-integrated Wiener process, "constant velocity" prior), state
    :math:`(p, v)`; see :class:`IntegratedWienerKernel` (``order = 2``). With :math:`P_0 = 0`,

    .. math::
        k(t, t') = Q_c \left(\frac{\mu^3}{3} + |a - b|\frac{\mu^2}{2}\right), \quad
        \Phi(\Delta) = \begin{pmatrix} 1 & \Delta \\ 0 & 1 \end{pmatrix}, \quad
        Q(\Delta) = Q_c \begin{pmatrix} \Delta^3/3 & \Delta^2/2 \\ \Delta^2/2 & \Delta \end{pmatrix}.
    """

    def __init__(self, t0: float | Tensor = 0.0, P0: float | Tensor | None = None, **kwargs):
        super().__init__(2, t0=t0, P0=P0, **kwargs)


class WNOJKernel(IntegratedWienerKernel):
    r"""White noise on jerk (twice-integrated Wiener process, "constant acceleration" prior), state
    :math:`(p, v, a)`; see :class:`IntegratedWienerKernel` (``order = 3``).

    .. math::
        \Phi(\Delta) = \begin{pmatrix} 1 & \Delta & \Delta^2/2 \\ 0 & 1 & \Delta \\ 0 & 0 & 1 \end{pmatrix},
        \quad Q(\Delta) = Q_c \begin{pmatrix} \Delta^5/20 & \Delta^4/8 & \Delta^3/6 \\ \Delta^4/8 & \Delta^3/3 &
        \Delta^2/2 \\ \Delta^3/6 & \Delta^2/2 & \Delta \end{pmatrix}.
    """

    def __init__(self, t0: float | Tensor = 0.0, P0: float | Tensor | None = None, **kwargs):
        super().__init__(3, t0=t0, P0=P0, **kwargs)
