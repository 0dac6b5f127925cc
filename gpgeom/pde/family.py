r"""The parametric PDE family: what a physics-informed model needs to know about an equation.

A family is a PDE :math:`\mathcal R[u](x; z, w) = 0` on a box :math:`\Omega = \prod_d [a_d, b_d] \subset
\mathbb R^D`, with inverse-problem parameters :math:`z` and known parameters :math:`w`, each with a uniform prior on
a box, as in the problems of Random Grid Neural Processes (Vadeboncoeur, Akyildiz, Kazlauskaite, Girolami, Cirak,
ICML 2023, arXiv 2301.11040). :class:`PDEFamily` holds

* the **domain** and the **priors** (:meth:`~PDEFamily.sample_points`, :meth:`~PDEFamily.sample_params`);
* the **residual** in torch (:meth:`~PDEFamily.residual`; derivatives by :func:`gpgeom.pde.autodiff.pointwise_grad`,
  so that it can sit inside a training loss), split into :meth:`~PDEFamily.derivatives` (autograd) and
  :meth:`~PDEFamily.residual_from_derivatives` (tensor algebra);
* the **boundary lift** (:meth:`~PDEFamily.boundary_ansatz`): :math:`u(x) = b(x) + d(x)\,\hat u(x)` with
  :math:`d = 0` on the constrained boundary, so that any :math:`\hat u` meets the boundary (and initial)
  conditions exactly (Sukumar & Srivastava, CMAME 389, 2022);
* the **reference solution** (:meth:`~PDEFamily.solve`) on regular test grids (:meth:`~PDEFamily.test_points`),
  part of the family because it defines the map :math:`(z, w) \mapsto u` that the models approximate.

Families are registered by name (:mod:`gpgeom.pde.registry`) so that a model built from one reloads without code.
Cached test sets of reference solutions are data and live in :mod:`gpgeom.datasets.pde`.

Conventions (``B`` fields, ``n`` points each): ``x`` ``(B, n, dim)`` points (columns as in ``coordinates``),
``z`` ``(B, dim_z)``, ``w`` ``(B, dim_w)``; a field ``u_fn`` maps ``x`` to ``(B, n)`` values, and its derivatives
are pointwise only if ``u[b, i]`` depends on ``x[b, i]`` alone (true for the per-point networks of RGNP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gpgeom._seeds import numpy_rng
from gpgeom._validation import check_positive, check_tensor
from gpgeom.pde._checks import check_finite_output

__all__ = ["PDEFamily", "ResidualFn", "LiftFn"]

#: ``residual(u, x, z, w) -> (B, n)``: the PDE residual of field values ``u`` ``(B, n)`` at points ``x``. RGNP calls it
#: once on a small batch before training (a wrong signature, a ``w`` the model does not have, or a residual detached
#: from ``u`` fails there) and reports NaN or infinite residuals of finite inputs with the point that produced them.
ResidualFn = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
#: ``lift(x, w) -> (b, d)``, each ``(B, n)``: the hard boundary conditions :math:`u = b + d\,\hat u` (a pair: one
#: tensor alone, wrong shapes or NaN values are refused with the point that produced them). Pointwise: ``b[:, i]`` and
#: ``d[:, i]`` from ``x[:, i]`` (and ``w``) only; RGNP refuses a lift that couples the points (e.g. a maximum over
#: them), whose autograd derivatives would be wrong.
LiftFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class PDEFamily:
    r"""A parametric PDE family (see the module docstring): domain, priors, torch residual, boundary lift,
    reference solution.

    Subclasses set the class attributes below and implement :meth:`derivatives`,
    :meth:`residual_from_derivatives`, :meth:`boundary_ansatz`, :meth:`solve` and :meth:`test_points`; decorate
    them with :func:`gpgeom.pde.registry.register_family` so that models built from them reload by name. A family
    whose constructor takes arguments returns them from :meth:`config`.

    Attributes:
        name: Registry key (also names cached test sets).
        dim: Dimension :math:`D` of the domain.
        coordinates: Names of the ``dim`` columns of ``x`` (e.g. ``("x", "t")``).
        lower, upper: Bounds of the box :math:`\Omega`.
        z_names, z_low, z_high: Names and uniform-prior bounds of the inverse-problem parameters :math:`z`.
        w_names, w_low, w_high: Names and bounds of the known parameters :math:`w` (empty when there are none).
    """

    name: str = ""
    dim: int = 1
    coordinates: tuple[str, ...] = ()
    lower: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()
    z_names: tuple[str, ...] = ()
    z_low: tuple[float, ...] = ()
    z_high: tuple[float, ...] = ()
    w_names: tuple[str, ...] = ()
    w_low: tuple[float, ...] = ()
    w_high: tuple[float, ...] = ()

    @property
    def dim_z(self) -> int:
        r"""Number of inverse-problem parameters."""
        return len(self.z_names)

    @property
    def dim_w(self) -> int:
        r"""Number of known parameters."""
        return len(self.w_names)

    def config(self) -> dict[str, Any]:
        r"""Plain values (numbers, strings, lists) such that ``type(self)(**config)`` rebuilds this family; stored in
        model files next to :attr:`name`. Empty for families without constructor arguments."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def check_declaration(self) -> None:
        r"""Raise ``ValueError`` unless the class attributes agree: ``len(lower) == len(upper) == dim`` (and
        ``len(coordinates) == dim`` when given), ``len(z_low) == len(z_high) == len(z_names) >= 1``,
        ``len(w_low) == len(w_high) == len(w_names)``. A model built from a family takes its sizes from the bounds,
        so a disagreement (a name without a bound, a ``dim`` that the bounds do not have) otherwise gives a model of
        other sizes than the family's, or an error about a tensor shape in its first residual."""
        cls = type(self).__qualname__
        groups = [
            ("dim, lower, upper" + (", coordinates" if self.coordinates else ""),
             [self.dim, len(self.lower), len(self.upper)] + ([len(self.coordinates)] if self.coordinates else [])),
            ("z_names, z_low, z_high", [len(self.z_names), len(self.z_low), len(self.z_high)]),
            ("w_names, w_low, w_high", [len(self.w_names), len(self.w_low), len(self.w_high)]),
        ]  # fmt: skip
        for names, sizes in groups:
            if len(set(sizes)) > 1:
                raise ValueError(
                    f"{cls} declares {names} of different sizes {sizes}: give one entry per dimension or parameter."
                )
        if not self.z_names:
            raise ValueError(f"{cls} declares no inverse-problem parameter (z_names, z_low, z_high are empty).")

    # -- priors --------------------------------------------------------------------------------------------------
    def sample_params(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Draw ``n`` parameter pairs from the uniform priors; returns ``z`` ``(n, dim_z)``, ``w`` ``(n, dim_w)``.

        ``rng``: a ``numpy.random.Generator`` (drawn from in place), an int seed >= 0 (the same draw whatever the
        global random states, which it leaves untouched), or ``None``: a generator seeded with one draw of torch's
        global random stream (``torch.manual_seed`` before the call repeats it; :mod:`gpgeom._seeds`)."""
        check_positive("n", n, integer=True)
        rng = numpy_rng("rng", rng)
        z = rng.uniform(self.z_low, self.z_high, size=(n, self.dim_z))
        w = rng.uniform(self.w_low, self.w_high, size=(n, self.dim_w))
        return z, w

    def sample_points(
        self, batch: int, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        r"""I.i.d. uniform points in the domain, ``(batch, n, dim)`` (the random grids of RGNP), drawn from
        ``generator`` (a CPU ``torch.Generator``), or from torch's global random stream when it is ``None``."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"`generator` must be a torch.Generator or None (e.g. torch.Generator().manual_seed(0)), got "
                f"{type(generator).__name__} ({generator!r})."
            )
        lo = torch.tensor(self.lower, dtype=dtype)
        hi = torch.tensor(self.upper, dtype=dtype)
        return lo + (hi - lo) * torch.rand(batch, n, self.dim, generator=generator, dtype=dtype)

    # -- physics -------------------------------------------------------------------------------------------------
    def _check_xzw(self, x: Tensor, z: Tensor, w: Tensor) -> None:
        check_tensor("x", x, ndim=3, shape=(None, None, self.dim), floating=True)
        B = x.shape[0]
        check_tensor("z", z, ndim=2, shape=(B, self.dim_z), floating=True)
        check_tensor("w", w, ndim=2, shape=(B, self.dim_w), floating=True)

    def _eval(self, u_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        u = u_fn(x)
        if u.dim() == 3 and u.shape[-1] == 1:
            u = u.squeeze(-1)
        if u.shape != x.shape[:2]:
            raise ValueError(f"`u_fn(x)` must return shape {tuple(x.shape[:2])} (B, n), got {tuple(u.shape)}.")
        return u

    def derivatives(self, u_fn: Callable[[Tensor], Tensor], x: Tensor) -> dict[str, Tensor]:
        r"""``u`` and the derivatives the residual needs, each ``(B, n)``, by autograd (graph kept)."""
        raise NotImplementedError(f"{type(self).__name__} does not define derivatives().")

    def residual_from_derivatives(self, d: dict[str, Tensor], x: Tensor, z: Tensor, w: Tensor) -> Tensor:
        r"""The PDE residual ``(B, n)`` from :meth:`derivatives`' dict (pure tensor algebra)."""
        raise NotImplementedError(f"{type(self).__name__} does not define residual_from_derivatives().")

    def residual(self, u_fn: Callable[[Tensor], Tensor], x: Tensor, z: Tensor, w: Tensor) -> Tensor:
        r"""PDE residual :math:`\mathcal R[u](x_i; z, w)` of the field ``u_fn`` at the points ``x``, ``(B, n)``,
        differentiable (a training loss may use it)."""
        self._check_xzw(x, z, w)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        d = self.derivatives(u_fn, x)
        r = self.residual_from_derivatives(d, x, z, w)
        if not bool(torch.isfinite(r).all()):  # say where the NaN comes from: the field or the equation
            if "u" in d:
                check_finite_output("u_fn(x)", d["u"], {"x": x}, {}, "The field must be finite at every point.")
            if all(bool(torch.isfinite(v).all()) for v in d.values()):
                check_finite_output(
                    f"{type(self).__name__}.residual_from_derivatives(d, x, z, w)", r, {"x": x, **d}, {"z": z, "w": w},
                    "The equation is not defined there: check z and w against the priors.",
                )  # fmt: skip
        return r

    def residual_fn(self) -> ResidualFn:
        r"""The residual as a function of field *values*, ``residual(u, x, z, w) -> (B, n)``: ``u`` ``(B, n)`` must
        have been computed from ``x`` (``requires_grad``) pointwise. This is the form
        :class:`gpgeom.models.rgnp.model.RGNP` takes."""

        def residual(u: Tensor, x: Tensor, z: Tensor, w: Tensor) -> Tensor:
            return self.residual_from_derivatives(self.derivatives(lambda _x: u, x), x, z, w)

        residual.__name__ = residual.__qualname__ = f"{self.name or type(self).__name__}_residual"
        return residual

    def boundary_ansatz(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        r"""The lift ``(b, d)``, each ``(B, n)``: any :math:`u = b + d\,\hat u` meets the boundary (and initial)
        conditions."""
        raise NotImplementedError(f"{type(self).__name__} does not define boundary_ansatz().")

    # -- reference solutions -------------------------------------------------------------------------------------
    def solve(self, z: object, w: object, x: object) -> np.ndarray:
        r"""Reference solution for one parameter pair at points ``x`` (``(..., dim)``); shape ``x.shape[:-1]``."""
        raise NotImplementedError(f"{type(self).__name__} does not define a reference solver.")

    def test_points(self, n_points: int | tuple[int, ...]) -> np.ndarray:
        r"""The regular grid of a test set, ``(N, dim)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define test_points().")
