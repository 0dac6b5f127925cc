r"""The base class of trajectory measurements and the input checks shared by every factor.

A measurement is a batch of ``M`` residual blocks, each evaluated on the trajectory's state at one time
:math:`t_m` (the mean interpolated between the two bracketing knots; :class:`Measurement` says what that leaves
out), on one knot (:class:`~.priors.KnotPrior`) or on global parameters only (:class:`~.priors.GlobalPrior`). Each
class knows its whitened residual :math:`e_m = W (h(X(t_m), \gamma) - z_m)` and its Jacobian with respect to a
perturbation of the state at :math:`t_m` (and of the global parameters :math:`\gamma`, e.g. IMU biases); the
trajectory chains that Jacobian with the interpolation Jacobians :math:`\partial X(t)/\partial X_a, \partial
X(t)/\partial X_b`, so that every factor touches the two bracketing knots only (Barfoot, Tong & Sarkka, *Batch
continuous-time trajectory estimation as exactly sparse Gaussian process regression*, RSS 2014; T.-M. Nguyen et al.,
*GPTR*, arXiv:2410.22931, 2024).

The state at a time is a dict of ``R`` (``M x 3 x 3``, body to world), ``omega``, ``alpha`` (``M x 3``, body
angular velocity and acceleration), ``p``, ``v``, ``a`` (``M x 3``, world position, velocity and acceleration). A
measurement of *level* ``L`` reads :func:`~gpgeom.models.trajectory.state.components` ``(L)``; its state Jacobian
is ``M x r x 3 n_c`` with columns in that order, for the perturbation :math:`R \leftarrow R\,\mathrm{Exp}
(\delta_R)` and additive elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom._validation import as_tensor, check_option, check_positive
from gpgeom.models.trajectory.state import components

__all__ = ["Measurement", "inverse_sigma", "measurement_tensor"]


def measurement_tensor(name: str, x: object, *, shape: tuple, M: int | None = None) -> Tensor:
    r"""``x`` (numpy, torch or Python numbers) as a float tensor of trailing ``shape``; a single one is broadcast
    to ``M`` rows when ``M`` is given.

    A floating input keeps its dtype (integers become float64): numpy and torch inputs of the same values give the
    same tensor, and the trajectory converts every measurement to its own dtype when it builds the factors.
    """
    x = as_tensor(name, x, dtype=None, shape=shape)
    if M is not None:
        if x.dim() == len(shape):
            x = x.expand(M, *shape)
        elif x.dim() != len(shape) + 1 or x.shape[0] != M:
            raise ValueError(
                f"`{name}` must have shape {(M, *shape)} (one per measurement time) or {tuple(shape)} (shared), "
                f"got {tuple(x.shape)}."
            )
    return x


def inverse_sigma(name: str, sigma: object, M: int, r: int, *, components_first: bool = False) -> Tensor:
    r"""Inverse standard deviations, ``M x r`` float64, from a float, an ``r`` vector, ``M`` values or an ``M x r``
    array (``1 x r``: one per component, ``M x 1``: one per measurement).

    With ``M = r`` a vector of ``r`` different values could be either (three pose measurements, three axes): that is
    a ``ValueError`` asking for ``1 x r`` or ``M x 1``, not a silent choice of one reading, unless
    ``components_first`` (a factor whose documented vector form is per component only) reads it per component."""
    s = as_tensor(name, sigma, dtype=torch.float64, finite=False)
    if components_first and s.dim() == 1 and s.shape[0] == r:
        s = s[None, :]
    if s.dim() == 1 and s.shape[0] == M and r != M:
        s = s[:, None]
    elif s.dim() == 1 and s.shape[0] == M == r and M > 1 and not bool((s == s[0]).all()):
        raise ValueError(
            f"`{name}` of {M} different values is ambiguous for {M} measurements of {r} components each: give shape "
            f"(1, {r}) for one std per component or ({M}, 1) for one per measurement, got {s.tolist()}."
        )
    try:
        s = s.expand(M, r)
    except RuntimeError:
        raise ValueError(
            f"`{name}` must be a positive float, a vector of {r} (one per residual component), {M} values (one per "
            f"measurement) or an ({M}, {r}) tensor, got shape {tuple(s.shape)}."
        ) from None
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"`{name}` must be finite and > 0, got minimum {float(s.min()):.3g}.")
    return 1.0 / s


class Measurement:
    r"""Base class: a batch of ``M`` residual blocks of size ``r`` at times ``t`` (``M``).

    Subclasses set :attr:`level`, :attr:`residual_dim` and implement :meth:`residual` and :meth:`linearize`
    (residual and Jacobians together). Inputs may be numpy arrays or torch tensors; they keep their floating dtype
    and are converted to the trajectory's dtype and device when the factors are built (:meth:`to`).

    Between knots (``attach = "time"``): a block at a time :math:`t_m` between knots :math:`t_a < t_m < t_b` is
    evaluated on the interpolated *mean* :math:`\gamma(t_m) = \Lambda\gamma_a + \Psi\gamma_b` only, the standard
    approximation of sparse GP trajectory estimation (Barfoot, Tong & Sarkka, RSS 2014; Anderson & Barfoot, IROS
    2015). The GP's own variance between known knots, :math:`Q_c \otimes Q_{\tau|ab}` with :math:`Q_{\tau|ab} =
    Q(\tau) - \Psi(\tau)\Phi(\Delta-\tau)Q(\tau)` (Barfoot, *State Estimation for Robotics*, 2017, sec. 3.4.3;
    :meth:`~gpgeom.models.trajectory.interpolation.MarkovChainAlgebra.conditional_cov`), is not added to the
    measurement's noise, so the measurement counts as more precise than it is. At knot times this is exact: the fit
    is then the exact GP posterior (to 1e-11 against a dense GP). Between them, for positions with
    :math:`\sigma = 0.05`, WNOA knots 0.05-0.25 s apart and :math:`Q_c = 2.5`, the posterior means were up to 0.032
    posterior standard deviations and the variances up to 4.9 % off the exact GP's; the error falls as
    :math:`\Delta^{2N-1}` with the knot spacing (8x WNOA, 32x WNOJ per halving;
    ``tests/test_trajectory_between_knots.py``). Where it matters, put knots at the measurement times or closer.

    Args:
        t: ``M`` measurement times (``None`` for measurements not attached to times).
        robust: ``None`` (least squares) or ``"huber"``.
        robust_threshold: Huber threshold, in whitened units, on the norm of each residual block.
        name: Used in messages (default: the class name).
    """

    level: int = 0
    residual_dim: int = 0
    attach: str = "time"  # "time": interpolated state at t; "knot": a knot's state; "global": globals only
    #: Tensor attributes shared by all blocks (never split by :meth:`blocks`, whatever their length).
    shared: tuple[str, ...] = ()
    #: Dict attributes whose tensors hold one row per block (split by :meth:`blocks` like the tensor attributes).
    per_block_dicts: tuple[str, ...] = ()

    def __init__(self, t: object | None, *, robust: str | None = None, robust_threshold: float = 1.0, name: str = ""):
        if t is not None:
            t = measurement_tensor("t", t, shape=())
            if t.dim() == 0:
                t = t.reshape(1)
            if t.dim() != 1 or t.shape[0] == 0:
                raise ValueError(
                    f"`t` must be a non-empty 1-D tensor of measurement times, got shape {tuple(t.shape)}."
                )
        self.t = t
        check_option("robust", robust, (None, "huber"))
        check_positive("robust_threshold", robust_threshold)
        self.robust = robust
        self.robust_threshold = float(robust_threshold)
        self.name = name or type(self).__name__

    @property
    def num_blocks(self) -> int:
        r"""``M``."""
        return int(self.t.shape[0])

    @property
    def components(self) -> tuple[str, ...]:
        r"""State components read, in the column order of the state Jacobian."""
        return components(self.level)

    def global_params(self) -> dict[str, Tensor]:
        r"""Global parameter blocks this measurement estimates: name -> initial value (``g_i``)."""
        return {}

    def to(self, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Measurement:
        r"""A shallow copy with every tensor attribute (and every tensor in a dict attribute) converted: floating
        tensors to ``dtype``, all tensors to ``device`` (``None`` keeps each)."""

        def conv(v: object) -> object:
            if isinstance(v, Tensor):
                return v.to(dtype=dtype, device=device) if v.is_floating_point() else v.to(device=device)
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        out = object.__new__(type(self))
        for k, v in self.__dict__.items():
            out.__dict__[k] = conv(v)
        return out

    def blocks(self, sl: slice) -> Measurement:
        r"""A shallow copy holding the blocks ``sl`` only (``name`` gets the range): every tensor attribute with a
        leading dimension ``M`` is sliced, except those in :attr:`shared`, and so is every tensor of the dict
        attributes in :attr:`per_block_dicts` (e.g. the ``data`` of a
        :class:`~gpgeom.models.trajectory.factors.custom.CustomMeasurement`)."""
        M = self.num_blocks

        def cut(v: object) -> object:
            return v[sl] if isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == M else v

        part = object.__new__(type(self))
        for k, v in self.__dict__.items():
            if k in self.per_block_dicts and isinstance(v, dict):
                part.__dict__[k] = {n: cut(x) for n, x in v.items()}
            else:
                part.__dict__[k] = v if k in self.shared else cut(v)
        start, stop, _ = sl.indices(M)
        part.name = f"{self.name}[{start}:{stop}]"
        return part

    def residual(self, state: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
        r"""Whitened residuals ``M x r``."""
        raise NotImplementedError

    def linearize(self, state: dict[str, Tensor], params: dict[str, Tensor]) -> tuple[Tensor, Tensor, dict]:
        r"""``(e, J_state, J_params)``: ``M x r``, ``M x r x 3 n_c`` and name -> ``M x r x g_i``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, M={self.num_blocks})"
