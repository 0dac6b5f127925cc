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

    Args:
        F: ``batch x s x s``.
        L: ``batch x s x w``.
        Qc: ``batch x w x w``.
        dt: ``batch x m`` steps, :math:`\Delta \ge 0` (irregular).

    Returns:
        ``(Phi, Q)``, each ``broadcast(batch...) x m x s x s`` (``Q`` symmetrised).
    """
    s = F.shape[-1]
    W = L @ Qc @ L.transpose(-1, -2)
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
    return Phi, Q


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
