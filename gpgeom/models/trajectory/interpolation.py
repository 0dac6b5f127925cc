r"""The linear Gauss-Markov algebra of a GP trajectory's local variable: transition, process noise, motion-prior
whitening and interpolation between two knots.

Each 3-D channel of the local variable carries the state :math:`\gamma = (\theta, \dot\theta, \ddot\theta)` (white
noise on jerk, WNOJ, ``N = 3``) or :math:`(\theta, \dot\theta)` (white noise on acceleration, WNOA, ``N = 2``), with
(per unit power spectral density :math:`Q_c`; the transition of :class:`gpgeom.kernels.markov.WNOJKernel` /
:class:`~gpgeom.kernels.markov.WNOAKernel`)

.. math::
    \Phi(\Delta)_{ij} = \frac{\Delta^{j-i}}{(j-i)!}, \qquad
    Q(\Delta)_{ij} = \frac{\Delta^{2N-1-i-j}}{(2N-1-i-j)\,(N-1-i)!\,(N-1-j)!}

(Barfoot, *State Estimation for Robotics*, 2017, sec. 3.4; Tang, Yoon & Barfoot, *A white-noise-on-jerk motion
prior for continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2), 2019).

* Motion prior on an interval of length :math:`\Delta`: :math:`e = W(\Delta)(\gamma_b - \Phi(\Delta)\gamma_a)` with
  :math:`W^\top W = Q(\Delta)^{-1}` (:meth:`MarkovChainAlgebra.prior_mats`).
* Interpolation, the GP posterior mean given the two knots (Barfoot 2017, sec. 3.4.3; Barfoot, Tong & Sarkka,
  *Batch continuous-time trajectory estimation as exactly sparse Gaussian process regression*, RSS 2014):
  :math:`\gamma(\tau) = \Lambda(\tau)\gamma_a + \Psi(\tau)\gamma_b`, :math:`\Psi(\tau) = Q(\tau)\Phi(\Delta -
  \tau)^\top Q(\Delta)^{-1}`, :math:`\Lambda(\tau) = \Phi(\tau) - \Psi(\tau)\Phi(\Delta)`
  (:meth:`MarkovChainAlgebra.locate`).
* Interpolation covariance given both knots: :math:`Q(\tau) - \Psi(\tau)\Phi(\Delta - \tau)Q(\tau)`
  (:meth:`MarkovChainAlgebra.conditional_cov`).

Numerics: :math:`\Lambda, \Psi` are computed in the dimensionless time :math:`s = \tau/\Delta`. With
:math:`D = \operatorname{diag}(\Delta^{N-1-i})`, :math:`Q(s\Delta) = \Delta\,D\,\hat Q(s)\,D` and
:math:`\Phi(s\Delta) = D\hat\Phi(s)D^{-1}`, so :math:`\Psi = D\hat\Psi(s)D^{-1}`: the inverse of :math:`Q` stays
well conditioned for any knot spacing, and :math:`\Psi(0) = 0` exactly, so that a measurement exactly at a knot
time needs no special case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gpgeom.kernels.markov import WNOAKernel, WNOJKernel

__all__ = ["Bracket", "MarkovChainAlgebra"]


@dataclass
class Bracket:
    r"""Bracketing knots and interpolation matrices of ``M`` query times.

    Attributes:
        index: ``M`` left knot ``a`` of each time (the right one is ``index + 1``).
        dt: ``M`` knot spacing :math:`\Delta`.
        s: ``M`` normalised time :math:`\tau/\Delta \in [0, 1]`.
        Lam, Psi: ``M x N x N`` :math:`\Lambda(\tau)`, :math:`\Psi(\tau)`.
        first: ``U`` position of the first time of each distinct interval.
        inverse: ``M`` distinct interval of each time (``0..U-1``).
    """

    index: Tensor
    dt: Tensor
    s: Tensor
    Lam: Tensor
    Psi: Tensor
    first: Tensor
    inverse: Tensor
    _layout: tuple | None = None

    def per_interval_matmul(self, B: Tensor, J: Tensor) -> Tensor:
        r""":math:`B_m J_{i(m)}` for per-time rows ``B`` (``M x r x q``) and per-interval matrices ``J`` (``U x q x
        s``, ``i(m)`` = ``inverse[m]``), ``M x r x s``.

        Without gathering ``J`` per time: the rows of the times of one interval are stacked (zero-padded to the
        busiest interval, a layout built once) into one ``c_max r x q`` matrix per interval and multiplied in one
        batched product, ``U`` products of ``c_max r`` rows instead of ``M`` of ``r`` (the measurements of a knot
        interval share its Jacobians). Falls back to gathering when the padding would more than double the rows.
        """
        if self._layout is None:
            inv = self.inverse
            M, U = inv.shape[0], self.first.shape[0]
            counts = torch.bincount(inv, minlength=U)
            cmax = int(counts.max()) if M else 0
            if U * cmax > 2 * M or M == 0:  # gather (no time: the padded layout has no row to size its blocks)
                self._layout = (None, 0)
            else:
                order = torch.argsort(inv, stable=True)
                start = torch.cumsum(counts, 0) - counts
                rank = torch.empty_like(inv)
                rank[order] = torch.arange(M, device=inv.device) - start[inv[order]]
                self._layout = (inv * cmax + rank, cmax)
        slot, cmax = self._layout
        if slot is None:
            return B @ J[self.inverse]
        M, r, q = B.shape
        U = J.shape[0]
        P = B.new_zeros(U * cmax, r, q)
        P[slot] = B
        return (P.reshape(U, cmax * r, q) @ J).reshape(U * cmax, r, -1)[slot]


class MarkovChainAlgebra:
    r"""The matrices of the order-``N`` white-noise chain (``N = 3``: WNOJ, ``N = 2``: WNOA) for any spacing,
    built from the unit-spacing transition of the engine's :class:`~gpgeom.kernels.markov.WNOJKernel` /
    :class:`~gpgeom.kernels.markov.WNOAKernel` (module docstring). Constants are kept in float64 on the CPU and
    cached per dtype and device on first use.
    """

    def __init__(self, order: int):
        if order not in (2, 3):
            raise ValueError(f"`order` must be 2 (WNOA) or 3 (WNOJ), got {order!r}.")
        self.order = N = order
        kern = (WNOJKernel() if N == 3 else WNOAKernel()).double()
        self.unit_kernel = kern
        qc = float(kern.qc.detach())
        one = torch.ones(1, dtype=torch.float64)
        Phi1, Q1 = kern.transition(one)
        Phi1, Q1 = Phi1[0].detach(), Q1[0].detach() / qc
        idx = torch.arange(N, dtype=torch.float64)
        self._c = {
            "Phi1": Phi1,
            "Q1inv": torch.linalg.inv(Q1),
            "Linv": torch.linalg.inv(torch.linalg.cholesky(Q1)),
            "E": idx[None, :] - idx[:, None],  # j - i
            "col": N - 1 - idx,  # N - 1 - j
            "fact": torch.tensor(
                [[1.0 / math.factorial(max(j - i, 0)) for j in range(N)] for i in range(N)], dtype=torch.float64
            ),
        }
        self._cache: dict = {}

    def const(self, name: str, dtype: torch.dtype, device: torch.device | str) -> Tensor:
        r"""The constant ``name`` (``"Phi1"``, ``"Q1inv"``, ``"Linv"``, ``"E"``, ``"col"``, ``"fact"``)."""
        key = (name, dtype, str(device))
        if key not in self._cache:
            self._cache[key] = self._c[name].to(dtype=dtype, device=device)
        return self._cache[key]

    def locate(
        self,
        knot_times: Tensor,
        t: Tensor,
        name: str,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Bracket:
        r"""Bracketing knots and :math:`\Lambda(\tau), \Psi(\tau)` (``M x N x N``) for times ``t`` (``M``).

        The times are compared and subtracted (:math:`\tau = t - t_k`, :math:`\Delta`) in the dtype and on the
        device of ``knot_times`` (a trajectory passes its float64 copy, so that times far from 0 keep their
        differences in float32 too); the matrices, ``dt`` and ``s`` are returned in ``dtype`` on ``device``
        (default: those of ``knot_times``).

        Raises:
            ValueError: When a time lies outside the knot span (``name`` names the argument).
        """
        tk = knot_times
        dtype = tk.dtype if dtype is None else dtype
        device = tk.device if device is None else device
        t = t.to(dtype=tk.dtype, device=tk.device).contiguous()
        lo, hi = tk[0], tk[-1]
        bad = (t < lo) | (t > hi)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"`{name}` has {int(bad.sum())} time(s) outside the knot span [{float(lo):.15g}, {float(hi):.15g}] "
                f"(first: index {i}, t = {float(t[i]):.15g}); extend the knots or drop those measurements."
            )
        K = tk.shape[0]
        k = (torch.searchsorted(tk, t, right=True) - 1).clamp(0, K - 2)
        dt = tk[k + 1] - tk[k]
        s = ((t - tk[k]) / dt).clamp(0.0, 1.0)
        Lh, Ph = self.mix_hat(s)
        scale = dt[:, None, None] ** self.const("E", tk.dtype, tk.device)
        k = k.to(device)
        uniq, inv = torch.unique(k, return_inverse=True)
        M = k.shape[0]
        first = torch.full((uniq.shape[0],), M, dtype=torch.long, device=k.device)
        first = first.scatter_reduce(0, inv, torch.arange(M, device=k.device), reduce="amin")
        kw = {"dtype": dtype, "device": device}
        return Bracket(k, dt.to(**kw), s.to(**kw), (Lh * scale).to(**kw), (Ph * scale).to(**kw), first, inv)

    def unit_interp(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""For unit spacing at fractions ``s`` (``M``), in float64 on the CPU:
        :math:`\hat\Phi(s), \hat\Phi(1-s), \hat Q(s)` (per unit :math:`Q_c`) and
        :math:`\hat\Psi(s) = \hat Q(s)\hat\Phi(1-s)^\top\hat Q(1)^{-1}`, each ``M x N x N``."""
        kern = self.unit_kernel
        qc = kern.qc.detach()
        # the unit-spacing kernel lives on the CPU in float64 (its coefficients are tiny): evaluate there
        s64 = s.detach().to(dtype=torch.float64, device=qc.device)
        Phi_s, Q_s = kern.transition(s64)
        Phi_r, _ = kern.transition(1.0 - s64)
        Phi_s, Phi_r, Q_s = Phi_s.detach(), Phi_r.detach(), Q_s.detach() / qc
        Psi = Q_s @ Phi_r.mT @ self.const("Q1inv", torch.float64, s64.device)
        return Phi_s, Phi_r, Q_s, Psi

    def mix_hat(self, s: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\hat\Lambda(s), \hat\Psi(s)` (``M x N x N``, unit spacing), in the dtype and on the device of
        ``s``."""
        Phi_s, _, _, Psi = self.unit_interp(s)
        Lam = Phi_s - Psi @ self.const("Phi1", torch.float64, Psi.device)
        return Lam.to(dtype=s.dtype, device=s.device), Psi.to(dtype=s.dtype, device=s.device)

    def conditional_cov(self, s: Tensor, dt: Tensor) -> Tensor:
        r"""Interpolation covariance given both knots (per unit :math:`Q_c`), ``M x N x N``:
        :math:`Q(\tau) - \Psi(\tau)\Phi(\Delta-\tau)Q(\tau) = \Delta D[\hat Q(s) - \hat\Psi\hat\Phi(1-s)\hat Q(s)]D`
        (in the dtype and on the device of ``s``)."""
        _, Phi_r, Q_s, Psi = self.unit_interp(s)
        C = Q_s - Psi @ Phi_r @ Q_s
        C = 0.5 * (C + C.mT)
        col = self.const("col", torch.float64, C.device)
        d64 = dt.detach().to(dtype=torch.float64, device=C.device)
        Dpow = d64[:, None] ** col  # M x N: Delta^(N-1-i)
        out = d64[:, None, None] * Dpow[:, :, None] * C * Dpow[:, None, :]
        return out.to(dtype=s.dtype, device=s.device)

    def prior_mats(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\Phi(\Delta)` and the whitening :math:`W = \Delta^{-1/2}\hat L^{-1}D^{-1}` with
        :math:`\hat L\hat L^\top = \hat Q(1)` (``M x N x N``, in the dtype and on the device of ``dt``)."""
        dtype, device = dt.dtype, dt.device
        E = self.const("E", dtype, device)
        Phi = torch.where(E >= 0, dt[:, None, None] ** E * self.const("fact", dtype, device), torch.zeros_like(E))
        col = self.const("col", dtype, device)
        W = self.const("Linv", dtype, device) * dt[:, None, None] ** (-col)[None, None, :] / dt.sqrt()[:, None, None]
        return Phi, W
