r"""The variance parameter of the kernels that carry their own (not through a ``ScaleKernel``).

A Markov kernel's state-space form needs its variance (:math:`P_\infty`, :math:`Q(\Delta)`), so the variance is a
parameter of the kernel itself: :class:`KernelVariance` registers ``raw_variance`` (shape ``batch_shape``) with a
constraint and an optional prior, in GPyTorch's raw-parameter idiom, and exposes :attr:`~KernelVariance.variance`.
Used by :class:`~gpgeom.kernels.markov.MaternMarkovKernel` and
:class:`~gpgeom.kernels.categorical.CategoricalMarkovKernel`.
"""

from __future__ import annotations

import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.priors import Prior
from torch import Tensor

__all__ = ["KernelVariance", "set_constrained"]


class KernelVariance:
    r"""Mixin for a :class:`gpytorch.kernels.Kernel` with a variance parameter; call :meth:`_register_variance` in
    ``__init__`` after ``super().__init__``."""

    def _register_variance(self, prior: Prior | None, constraint: Interval | None) -> None:
        r"""Register ``raw_variance`` (``batch_shape`` zeros), its constraint (default ``Positive()``) and ``prior``."""
        if constraint is not None and not isinstance(constraint, Interval):
            raise TypeError(
                f"`variance_constraint` must be a gpytorch Interval constraint (e.g. Positive()), got "
                f"{type(constraint).__name__}."
            )
        self.register_parameter("raw_variance", torch.nn.Parameter(torch.zeros(self.batch_shape)))
        self.register_constraint("raw_variance", Positive() if constraint is None else constraint)
        if prior is not None:
            if not isinstance(prior, Prior):
                raise TypeError(f"`variance_prior` must be a gpytorch Prior, got {type(prior).__name__}.")
            self.register_prior("variance_prior", prior, self._variance_param, self._variance_closure)

    @property
    def variance(self) -> Tensor:
        r"""The variance :math:`\sigma^2 = k(x, x)`, shape ``batch_shape`` (0-dim without batch)."""
        return self.raw_variance_constraint.transform(self.raw_variance)

    @variance.setter
    def variance(self, value: Tensor | float) -> None:
        self._set_variance(value)

    def _variance_param(self, m: KernelVariance) -> Tensor:
        return m.variance

    def _variance_closure(self, m: KernelVariance, value: Tensor | float) -> None:
        m._set_variance(value)

    def _set_variance(self, value: Tensor | float) -> None:
        set_constrained(self, "variance", value)


def set_constrained(module: torch.nn.Module, name: str, value: Tensor | float) -> None:
    r"""Set the parameter ``name`` of ``module`` (stored as ``raw_<name>`` with the constraint
    ``raw_<name>_constraint``) to ``value``, which must lie strictly inside the constraint's bounds: GPyTorch raised
    a ``RuntimeError`` about a ``GaussianLikelihood`` for values outside (NaN included), and accepted a value on a
    bound (``variance = 0`` under ``Positive()``), whose raw value :math:`-\infty` then never moved in training."""
    raw = getattr(module, f"raw_{name}")
    constraint = getattr(module, f"raw_{name}_constraint")
    if not torch.is_tensor(value):
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
    lo, hi = constraint.lower_bound.to(value), constraint.upper_bound.to(value)
    inside = (value > lo) & (value < hi)  # False for NaN
    if not bool(inside.all()):
        bad = value.detach().reshape(-1)[(~inside).reshape(-1).nonzero()[0]]
        raise ValueError(
            f"`{name}` of {type(module).__name__} must lie strictly inside ({float(lo.min()):.6g}, "
            f"{float(hi.max()):.6g}), the bounds of its constraint {constraint}, got {float(bad):.6g}."
        )
    module.initialize(**{f"raw_{name}": constraint.inverse_transform(value)})
