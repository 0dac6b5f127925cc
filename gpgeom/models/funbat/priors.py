r"""The prior of each FunBaT mode: a Matérn state-space GP of its coordinate, or independent values per label.

A continuous mode (the default) has a Matérn-:math:`\nu` GP prior on its latent functions
(:class:`~gpgeom.kernels.markov.MaternMarkovKernel`, Fang et al., ICLR 2024). A mode named in ``categorical`` holds
labels without order or distance (stations, sensors, subjects): its latent components are independent
:math:`N(0, \sigma_k^2)` values per label (:class:`~gpgeom.kernels.categorical.CategoricalMarkovKernel`, state
dimension 1, no lengthscale), so relabelling its categories changes nothing and a label not seen in training gets the
prior. Both kernels share the chain interface the sweeps, the hyperparameter steps and the conditionals use, so the
rest of the model does not distinguish them; a categorical mode learns its variance only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from gpytorch.constraints import Interval

from gpgeom.kernels.categorical import CategoricalMarkovKernel
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.kernels.sde import MarkovKernel

__all__ = ["mode_kernel", "check_categorical"]

#: The bounds of the learned lengthscales (normalised coordinate units) and prior variances.
LENGTHSCALE_BOUNDS, VARIANCE_BOUNDS = (1e-4, 1e3), (1e-6, 1e4)


def mode_kernel(nu: float, categorical: bool, dtype: torch.dtype, device: torch.device) -> MarkovKernel:
    r"""A new prior kernel of one mode: Matérn-``nu``, or :class:`CategoricalMarkovKernel` when ``categorical``."""
    variance = Interval(*VARIANCE_BOUNDS)
    if categorical:
        kern = CategoricalMarkovKernel(variance_constraint=variance)
    else:
        kern = MaternMarkovKernel(
            nu=float(nu), lengthscale_constraint=Interval(*LENGTHSCALE_BOUNDS), variance_constraint=variance
        )
    return kern.to(dtype=dtype, device=device)


def check_categorical(categorical: object) -> tuple[int, ...]:
    r"""``categorical`` (``None``, a mode index or a sequence of them) as a sorted tuple of distinct indices >= 0."""
    if categorical is None:
        return ()
    items = [categorical] if isinstance(categorical, int) and not isinstance(categorical, bool) else categorical
    if isinstance(items, str) or not isinstance(items, Sequence):
        raise TypeError(f"`categorical` must be None, a mode index or a sequence of mode indices, got {categorical!r}.")
    if any(isinstance(k, bool) or not isinstance(k, int) for k in items):
        raise TypeError(f"`categorical` must hold mode indices (ints), got {list(items)!r}.")
    if any(k < 0 for k in items) or len(set(items)) != len(items):
        raise ValueError(f"`categorical` must hold distinct mode indices >= 0, got {list(items)!r}.")
    return tuple(sorted(items))
