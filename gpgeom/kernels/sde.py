#!/usr/bin/env python3
r"""Linear time-invariant SDEs: the base of every Markov kernel and their exact discretisation.

This is a leaf module (it imports nothing else of gpgeom but the input checks): the state-space engine
(:mod:`gpgeom.engine.statespace`) and the Markov kernels (:mod:`gpgeom.kernels.markov`) both build on it, so the
kernels never import the engine.

* :class:`SDE` -- the matrices :math:`(F, L, Q_c, H, P_\infty)` of :math:`\mathrm dx = F x\,\mathrm dt + L\,
  \mathrm d\beta`, :math:`f = H x` (Särkkä & Solin, *Applied Stochastic Differential Equations*, 2019, ch. 6);
* :func:`discretize` -- the exact discrete model :math:`(\Phi(\Delta), Q(\Delta))` by Van Loan's matrix
  exponential;
* :class:`MarkovKernel` -- the GPyTorch kernel base class of kernels with an SDE form.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from gpytorch.kernels import Kernel
from torch import Tensor

from gpgeom._validation import check_kernel_kwargs

__all__ = [
    "SDE",
    "MarkovKernel",
    "balance",
    "check_batch",
    "check_steps",
    "discretize",
    "float_times",
    "refuse_last_dim_is_batch",
    "time_column",
]


class SDE(NamedTuple):
    r"""The matrices of a linear time-invariant SDE :math:`\mathrm dx = F x\,\mathrm dt + L\,\mathrm d\beta`.

    Every field carries the kernel's ``batch_shape`` in front (expanded views where the matrix is constant).

    Attributes:
        F: ``batch_shape x s x s`` feedback (drift) matrix.
        L: ``batch_shape x s x w`` noise effect matrix.
        Qc: ``batch_shape x w x w`` spectral density of the white noise :math:`\beta`.
        H: ``batch_shape x 1 x s`` measurement matrix, :math:`f(t) = H x(t)`.
        Pinf: ``batch_shape x s x s`` stationary state covariance, the solution of
            :math:`F P_\infty + P_\infty F^\top + L Q_c L^\top = 0`; ``None`` for non-stationary kernels.
    """

    F: Tensor
    L: Tensor
    Qc: Tensor
    H: Tensor
    Pinf: Tensor | None


def discretize(F: Tensor, L: Tensor, Qc: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
    r"""Exact discretisation of :math:`\mathrm dx = F x\,\mathrm dt + L\,\mathrm d\beta` over steps ``dt``
    by Van Loan's matrix exponential (Van Loan 1978; Särkkä & Solin 2019, sec. 6.3):

    .. math::
        \exp\left(\begin{pmatrix} F & L Q_c L^\top \\ 0 & -F^\top \end{pmatrix} h\right)
        = \begin{pmatrix} \Phi(h) & G \\ 0 & \Phi(h)^{-\top} \end{pmatrix}, \qquad
        \Phi(h) = e^{Fh}, \quad Q(h) = G \Phi(h)^\top = \int_0^h e^{Fu} L Q_c L^\top e^{F^\top u} \mathrm du.

    The block :math:`\Phi^{-\top}` grows like :math:`e^{\lambda h}` for a stable :math:`F`, which ruins
    :math:`Q = G\Phi^\top` for long steps; so the exponential is taken over :math:`h = \Delta / 2^k` with
    :math:`\|F\|_\infty |h| \le 1/2`, and the result is doubled :math:`k` times with the exact semigroup rule
    :math:`\Phi(2h) = \Phi(h)^2`, :math:`Q(2h) = \Phi(h) Q(h) \Phi(h)^\top + Q(h)`.

    Two exact rescalings come first. The state is balanced (:func:`balance`): with the diagonal :math:`D` of powers
    of two that equalises the off-diagonal row and column norms of :math:`F`, the exponential is taken of
    :math:`D^{-1} F D` and :math:`D^{-1} L Q_c L^\top D^{-1}`, and :math:`\Phi = D \Phi' D^{-1}`, :math:`Q = D Q' D`
    (a similarity of the state). And :math:`L Q_c L^\top` is divided by the power of two :math:`c` nearest its size
    over :math:`F`'s (:math:`Q` is linear in it: times :math:`c` at the end), since ``matrix_exp`` chooses its
    squarings by the norm of the whole block matrix. Without them the error was relative to the largest entries:
    Matérn-5/2's companion matrix has entries up to :math:`\lambda^3` and :math:`Q_c \propto \sigma^2\lambda^5`, and
    in float64 :math:`Q(\Delta)` was off by 5.6e-3 of :math:`\sigma^2` at a lengthscale of 1e-3 (in the state's own
    units, :math:`f^{(i)} / \lambda^i`), :math:`\Phi(\Delta)` by 3.6e-5 at :math:`\sigma^2 = 10^{12}` for
    Matérn-1/2; now 1e-14 (``tests/test_markov.py``).

    Args:
        F: ``batch x s x s``.
        L: ``batch x s x w``.
        Qc: ``batch x w x w``.
        dt: ``batch x m`` steps, :math:`\Delta \ge 0` (irregular).

    Returns:
        ``(Phi, Q)``, each ``broadcast(batch...) x m x s x s`` (``Q`` symmetrised).
    """
    s = F.shape[-1]
    d = balance(F).unsqueeze(-2)  # batch x 1 x s powers of two (broadcast over the steps)
    F = F * d / d.transpose(-1, -2)  # D^-1 F D: entry (i, j) times d_j / d_i
    L = L / d.transpose(-1, -2)  # D^-1 L
    W = L @ Qc @ L.transpose(-1, -2)
    # Q is linear in W: W / c with the power of two c that brings its size to that of F (Q times c at the end).
    # matrix_exp chooses its squarings by the norm of the whole block matrix, so a W much larger than F (Q_c grows
    # like lambda^(2s-1)) made it square Phi's block dozens of times more than F needs, each squaring adding error
    with torch.no_grad():
        w_size = W.detach().abs().amax((-1, -2), keepdim=True)
        f_size = F.detach().abs().sum(-1).amax(-1, keepdim=True)[..., None]
        f_size = torch.where(f_size > 0, f_size, torch.ones_like(f_size))
        ratio = torch.where(w_size > 0, w_size / f_size, torch.ones_like(w_size))
        e = torch.round(torch.log2(torch.where(torch.isfinite(ratio), ratio, torch.ones_like(ratio))))
        e_max = math.floor(math.log2(torch.finfo(e.dtype).max)) - 1  # c, 1 / c finite and normal (a ratio near the
        c = torch.exp2(e.clamp(-e_max, e_max))  # dtype's range made c inf or 0, and Q NaN: 0 * inf or inf / inf)
    W = W / c
    top = torch.cat(torch.broadcast_tensors(F, W), dim=-1)
    bottom = torch.cat([torch.zeros_like(top[..., :s]), -F.transpose(-1, -2).expand_as(top[..., s:])], dim=-1)
    M = torch.cat([top, bottom], dim=-2)  # batch x 2s x 2s
    # Number of doublings k (one host sync; 0 for short steps).
    with torch.no_grad():
        size = F.abs().sum(-1).amax(-1)[..., None] * dt.abs()
        biggest = float(size.max()) if size.numel() else 0.0
    k = max(0, math.ceil(math.log2(biggest / 0.5))) if biggest > 0.5 else 0
    E = torch.linalg.matrix_exp(M.unsqueeze(-3) * (dt / 2.0**k)[..., None, None])
    Phi = E[..., :s, :s]
    Q = E[..., :s, s:] @ Phi.transpose(-1, -2)
    Q = 0.5 * (Q + Q.transpose(-1, -2))
    for _ in range(k):
        Q = Phi @ Q @ Phi.transpose(-1, -2) + Q
        Q = 0.5 * (Q + Q.transpose(-1, -2))
        Phi = Phi @ Phi
    # back to the original state: Phi = D Phi' D^-1, Q = D Q' D (d: batch x 1 x s -> batch x 1 x s x 1 and x 1 x s)
    dr, dc = d[..., :, None], d[..., None, :]
    return Phi * dr / dc, Q * (c.unsqueeze(-3) * dr * dc)


def balance(F: Tensor, sweeps: int = 64) -> Tensor:
    r"""Powers of two :math:`d` (``batch x s``) with which :math:`D^{-1} F D` has off-diagonal row and column
    1-norms within a factor of about 2 of each other (Osborne 1960; Parlett & Reinsch, "Balancing a matrix for
    calculation of eigenvalues and eigenvectors", Numer. Math. 13, 1969): for each state :math:`i` in turn, the
    power of two :math:`f` nearest :math:`\sqrt{r_i / c_i}` (row and column sums of :math:`|F|` off the diagonal)
    multiplies :math:`d_i` when it lowers :math:`r_i + c_i` by 5%, until a sweep changes nothing. Rows or columns
    that are zero are left alone. For the companion matrix of :math:`(D + \lambda)^s` this gives :math:`d_i \approx
    \lambda^i`, the scale of :math:`f^{(i)}`. Detached (a constant of the similarity); one host sync per sweep.

    Args:
        F: ``batch x s x s``.
        sweeps: The most sweeps over the states.

    Returns:
        ``batch x s`` powers of two, in ``F``'s dtype (its real dtype for a complex ``F``) and on its device.
    """
    s = F.shape[-1]
    with torch.no_grad():
        A = F.detach().abs()  # real, also for a complex F (whose d is real)
        A = A * (1.0 - torch.eye(s, dtype=A.dtype, device=A.device))
        A = torch.where(torch.isfinite(A), A, torch.zeros_like(A))  # a non-finite F is left as it is
        log_d = torch.zeros(A.shape[:-1], dtype=A.dtype, device=A.device)
        for _ in range(sweeps):
            changed = torch.zeros((), dtype=torch.bool, device=F.device)
            for i in range(s):
                c, r = A[..., :, i].sum(-1), A[..., i, :].sum(-1)
                ok = (c > 0) & (r > 0)
                e = torch.where(ok, torch.round(0.5 * torch.log2(torch.where(ok, r / c, torch.ones_like(c)))), 0.0)
                f = torch.exp2(e)
                apply = ok & (e != 0) & (c * f + r / f < 0.95 * (c + r))
                f = torch.where(apply, f, torch.ones_like(f))
                A[..., :, i] *= f[..., None]
                A[..., i, :] /= f[..., None]
                log_d[..., i] += torch.where(apply, e, torch.zeros_like(e))
                changed |= apply.any()
            if not bool(changed):
                break
        return torch.exp2(log_d)


def float_times(t: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Times (or steps) ``t`` as a floating tensor: unchanged when floating, integer or boolean ones converted to
    ``dtype`` (the kernel's). The kernels cast their coefficient tables to the times' dtype, so integer times
    truncated them (:math:`1/2 \to 0`) and gave wrong covariances."""
    return t if t.is_floating_point() else t.to(dtype)


def time_column(name: str, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    r"""Check that ``x`` is ``... x n x 1`` and return the ``... x n`` times (integer ones as ``dtype`` when it is
    given, :func:`float_times`)."""
    if x.shape[-1] != 1:
        raise ValueError(
            f"`{name}` must be a time column of shape (..., n, 1) for a Markov kernel, got shape {tuple(x.shape)}."
        )
    return x[..., 0] if dtype is None else float_times(x[..., 0], dtype)


def refuse_last_dim_is_batch(kernel: Kernel, params: dict) -> None:
    r"""Raise a ``ValueError`` when ``forward`` of a one-column kernel is asked for ``last_dim_is_batch=True`` (GPyTorch
    then expects an extra batch dimension, and failed with "This is likely a bug in GPyTorch")."""
    if params.get("last_dim_is_batch", False):
        raise ValueError(
            f"{type(kernel).__name__} takes one input column (... x n x 1) and does not support "
            "`last_dim_is_batch=True`; to batch over columns, pass x.mT.unsqueeze(-1) (... x d x n x 1)."
        )


def check_batch(kernel: Kernel, name: str, batch: torch.Size, where: str) -> None:
    r"""Raise a ``ValueError`` naming ``name`` when its batch shape ``batch`` does not broadcast with the kernel's
    ``batch_shape`` (a bare broadcasting ``RuntimeError`` otherwise, "size of tensor a (2) must match ...")."""
    try:
        torch.broadcast_shapes(batch, kernel.batch_shape)
    except RuntimeError:
        raise ValueError(
            f"The batch dimensions {tuple(batch)} of `{name}` ({where}) of {type(kernel).__name__} do not broadcast "
            f"with its batch_shape {tuple(kernel.batch_shape)}."
        ) from None


def check_steps(kernel: Kernel, dt: Tensor, allow_inf: bool = False) -> None:
    r"""Raise a ``ValueError`` when a time step ``dt`` (``batch x m``) given to ``kernel.transition`` is negative: a
    backward step is no transition of the process (:math:`Q(\Delta) < 0`: the filters then computed on, silently,
    with negative variances), and comes from times that are not sorted; when it is NaN (the transitions were NaN,
    silently) or infinite without ``allow_inf`` (NaN transitions, or an ``OverflowError`` of :func:`discretize`);
    or when ``batch`` does not broadcast with the kernel's ``batch_shape`` (:func:`check_batch`). One device sync."""
    check_batch(kernel, "dt", dt.shape[:-1], "shape batch x m")
    bad = (dt < 0) | torch.isnan(dt)
    if not allow_inf:
        bad = bad | torch.isinf(dt)
    if dt.numel() and bool(bad.any()):
        flat = dt.detach().reshape(-1)
        i = int(bad.reshape(-1).nonzero()[0])
        v = float(flat[i])
        where = f"{v:.6g} at flat index {i} of shape {tuple(dt.shape)}"
        if v < 0:
            raise ValueError(
                f"`dt` of {type(kernel).__name__}.transition must be >= 0 (steps forward in time), got {where}: the "
                "times it came from are not sorted. Sort them increasingly (torch.sort) before computing their "
                "differences."
            )
        raise ValueError(
            f"`dt` of {type(kernel).__name__}.transition must be {'non-NaN' if allow_inf else 'finite'}, got {where}: "
            "the times it came from are not all finite."
        )


class MarkovKernel(Kernel):
    r"""Base class of the kernels on time that have a linear SDE form.

    Subclasses set ``state_dim`` and implement :meth:`sde` and :meth:`forward`; they may override
    :meth:`transition` and :meth:`initial_state` with closed forms. The generic :meth:`transition` discretises
    :meth:`sde` exactly with Van Loan's matrix exponential (:func:`discretize`), and the
    generic :meth:`initial_state` returns the stationary covariance :math:`P_\infty`.

    The inputs of ``forward`` are times, ``... x n x 1``.
    """

    state_dim: int

    def __init__(self, **kwargs) -> None:
        name = type(self).__name__
        check_kernel_kwargs(name, kwargs)  # GPyTorch would drop unknown keywords silently
        if not self.has_lengthscale:  # GPyTorch would drop these silently too: there is no lengthscale to use them
            given = [f"`{k}`" for k in ("lengthscale_prior", "lengthscale_constraint") if kwargs.get(k) is not None]
            if given:
                raise TypeError(f"{name} has no lengthscale, so {' and '.join(given)} would be ignored; remove it.")
            if kwargs.get("ard_num_dims") not in (None, 1):
                raise ValueError(
                    f"`ard_num_dims` must be None or 1 for {name} (one time or label column and no lengthscale), "
                    f"got {kwargs['ard_num_dims']!r}."
                )
        super().__init__(**kwargs)

    def sde(self) -> SDE:
        r"""Return the SDE matrices :math:`(F, L, Q_c, H, P_\infty)`, each with ``batch_shape`` in front."""
        raise NotImplementedError

    def transition(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r"""Exact discrete transition over steps ``dt``.

        Args:
            dt: ``batch x m`` non-negative time steps; ``batch`` broadcasts with the kernel's ``batch_shape``.
                A negative or non-finite step raises a ``ValueError`` (:func:`check_steps`).

        Returns:
            ``(Phi, Q)``, both ``broadcast(batch, batch_shape) x m x s x s``:
            :math:`\Phi(\Delta) = \exp(F\Delta)` and :math:`Q(\Delta) = \int_0^\Delta \Phi(u) L Q_c L^\top
            \Phi(u)^\top \mathrm du`.
        """
        check_steps(self, dt)
        F, L, Qc, _, _ = self.sde()
        return discretize(F, L, Qc, dt)

    def stationary_covariance(self) -> Tensor:
        r"""The stationary state covariance :math:`P_\infty` (``batch_shape x s x s``), the prior covariance of the
        state at any time of a stationary kernel. The default reads it from :meth:`sde`; kernels without an SDE
        (:class:`~gpgeom.kernels.categorical.CategoricalMarkovKernel`) override it."""
        Pinf = self.sde().Pinf
        if Pinf is None:
            raise NotImplementedError(f"{type(self).__name__} is not stationary: it must implement initial_state.")
        return Pinf

    def initial_state(self, t0: Tensor) -> tuple[Tensor, Tensor]:
        r"""Prior mean and covariance of the state at the first time.

        Args:
            t0: ``batch`` first times (a 0-dim tensor for unbatched data).

        Returns:
            ``(m0, P0)``: ``broadcast(batch, batch_shape) x s`` zeros and ``... x s x s`` covariance. For a
            stationary kernel :math:`P_0 = P_\infty` (:meth:`stationary_covariance`) whatever the time.
        """
        check_batch(self, "t0", t0.shape, "shape batch")
        Pinf = self.stationary_covariance()
        shape = torch.broadcast_shapes(t0.shape, Pinf.shape[:-2])
        P0 = Pinf.expand(*shape, *Pinf.shape[-2:])
        return P0.new_zeros(*shape, self.state_dim), P0
