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

__all__ = ["KernelVariance"]


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
        if not torch.is_tensor(value):
            value = torch.as_tensor(value, dtype=self.raw_variance.dtype, device=self.raw_variance.device)
        self.initialize(raw_variance=self.raw_variance_constraint.inverse_transform(value))
