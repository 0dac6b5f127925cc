r"""A kernel for an unordered index (labels: stations, sensors, patients), in the state-space form of the Markov
kernels.

The values at distinct labels are independent draws of one variance, and equal labels share one value:

.. math:: k(x, x') = \sigma^2\, [x = x'].

Nothing ties two labels because they are close as numbers: relabelling the categories (any bijection of the label
values) leaves every posterior unchanged, which no stationary kernel of the label's value offers (a Matérn kernel on
label codes correlates labels that happen to be numerically close and is not invariant to their order).

State-space form. Read along the sorted unique labels :math:`t_1 < \dots < t_I` the values are a Markov chain with
a state of dimension 1 and the exact "transition"

.. math::
    \Phi(\Delta) = [\Delta = 0], \qquad Q(\Delta) = \sigma^2 [\Delta \ne 0], \qquad P_\infty = \sigma^2,

so the routines written for :class:`~gpgeom.kernels.sde.MarkovKernel` chains that FunBaT uses (the site posteriors'
Kalman filter and smoother, conditionals at new points, the marginal likelihood's score) handle it unchanged
(:func:`gpgeom.engine.statespace.posterior`, which builds the transitions from the SDE, raises instead): the
filter's gains vanish, each label's posterior is its own sites times the prior, and a label not seen in training
gets the prior :math:`N(0, \sigma^2)`. There is no continuous-time SDE (:meth:`CategoricalMarkovKernel.sde` raises);
the stationary covariance comes from :meth:`~CategoricalMarkovKernel.stationary_covariance`. It has no lengthscale.

Used by :class:`gpgeom.models.funbat.FunBaT` for the modes named in ``categorical``.
"""

from __future__ import annotations

import torch
from gpytorch.constraints import Interval
from gpytorch.priors import Prior
from torch import Tensor

from gpgeom.kernels.sde import SDE, MarkovKernel, check_batch, refuse_last_dim_is_batch
from gpgeom.kernels.variance import KernelVariance

__all__ = ["CategoricalMarkovKernel"]


class CategoricalMarkovKernel(KernelVariance, MarkovKernel):
    r"""The kernel :math:`k(x, x') = \sigma^2 [x = x']` of an unordered index, with its state-space transition
    (module docstring).

    Inputs are ``... x n x 1`` label values (any real numbers; equal values are the same category).

    Args:
        variance_prior: Prior on :attr:`variance`.
        variance_constraint: Constraint on :attr:`variance` (default ``Positive()``).
        kwargs: Passed to :class:`gpytorch.kernels.Kernel` (``batch_shape``, ``active_dims``, ``eps``).
            ``ard_num_dims`` other than 1 is refused.

    Attributes:
        variance: ``batch_shape`` (0-dim without batch).

    Example:
        >>> k = CategoricalMarkovKernel()
        >>> x = torch.tensor([[0.0], [1.0], [1.0]])
        >>> K = k(x).to_dense()  # [[1, 0, 0], [0, 1, 1], [0, 1, 1]]
        >>> Phi, Q = k.transition(torch.tensor([0.0, 2.0]))  # 2 x 1 x 1 each: (1, 0) and (0, 1)
    """

    has_lengthscale = False
    state_dim = 1

    def __init__(
        self,
        variance_prior: Prior | None = None,
        variance_constraint: Interval | None = None,
        **kwargs,
    ):
        if kwargs.get("ard_num_dims") not in (None, 1):
            raise ValueError(
                f"`ard_num_dims` must be None or 1 for CategoricalMarkovKernel (one label per input), "
                f"got {kwargs['ard_num_dims']!r}."
            )
        super().__init__(**kwargs)
        self._register_variance(variance_prior, variance_constraint)

    @property
    def is_stationary(self) -> bool:
        r"""``True``: every category has the same prior."""
        return True

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, **params) -> Tensor:
        r"""Covariance ``... x n x m`` (``... x n`` when ``diag``) between labels ``x1`` (``... x n x 1``) and
        ``x2`` (``... x m x 1``)."""
        if x1.shape[-1] != 1 or x2.shape[-1] != 1:
            raise ValueError(
                f"CategoricalMarkovKernel takes one label per input (... x n x 1), got shapes {tuple(x1.shape)} and "
                f"{tuple(x2.shape)}."
            )
        refuse_last_dim_is_batch(self, params)
        for name, x in (("x1", x1), ("x2", x2)):
            if x.is_floating_point() and bool(torch.isnan(x).any()):
                # NaN != NaN: a NaN label was no category, with prior variance 0 (k(x, x) = 0)
                raise ValueError(
                    f"`{name}` of CategoricalMarkovKernel has {int(torch.isnan(x).sum())} NaN label(s); labels must "
                    "be numbers (equal values are the same category). Drop or encode the missing labels."
                )
        var = self.variance
        if diag:
            same = (x1[..., 0] == x2[..., 0]).to(var.dtype)
            return var[..., None] * same
        same = (x1[..., :, None, 0] == x2[..., None, :, 0]).to(var.dtype)
        return var[..., None, None] * same

    def sde(self) -> SDE:
        raise NotImplementedError(
            "CategoricalMarkovKernel has no continuous-time SDE (its values at distinct labels are independent); "
            "use transition() and stationary_covariance()."
        )

    def stationary_covariance(self) -> Tensor:
        r""":math:`P_\infty = \sigma^2`, ``batch_shape x 1 x 1``."""
        return self.variance[..., None, None]

    def transition(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r"""Exact :math:`(\Phi(\Delta), Q(\Delta)) = ([\Delta = 0], \sigma^2 [\Delta \ne 0])`, each
        ``broadcast(batch, batch_shape) x m x 1 x 1``, for label differences ``dt`` of shape ``batch x m``."""
        check_batch(self, "dt", dt.shape[:-1], "shape batch x m")
        var = self.variance[..., None]  # batch_shape x 1, broadcasts against batch x m
        same, var = torch.broadcast_tensors((dt == 0).to(var.dtype), var)
        return same[..., None, None], (var * (1.0 - same))[..., None, None]
