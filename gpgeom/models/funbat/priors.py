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
from torch import Tensor

from gpgeom.kernels.categorical import CategoricalMarkovKernel
from gpgeom.kernels.markov import MaternMarkovKernel
from gpgeom.kernels.sde import MarkovKernel

__all__ = ["mode_kernel", "check_categorical", "initial_positions"]

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


def initial_positions(t: Tensor, idx: Tensor, ys: Tensor, categorical: bool) -> tuple[Tensor, Tensor]:
    r"""Where each unique coordinate of a mode sits in its initial factors, and its row of the seeded perturbation.

    The initial latent means are :math:`\cos(\pi r s_i) + \text{init\_scale}\, \varepsilon_{\pi(i)}`,
    :math:`r = 0 \dots R-1`. A continuous mode takes :math:`s_i = (t_i - t_1) / (t_I - t_1)` (its coordinate
    mapped onto ``[0, 1]`` by its range: the normalised coordinate itself with ``normalize_coordinates``, which
    spans ``[0, 1]``) and :math:`\pi(i) = i`; :math:`s_i = t_i` made the initial factors a cosine of period 2 units
    of the raw coordinates with ``normalize_coordinates=False``. A categorical mode's labels have no order, so both
    come from the data instead: the labels are ranked by the mean standardised value of their entries (ties in label
    order), :math:`s_i` is label :math:`i`'s rank over :math:`I - 1` and :math:`\pi(i)` its rank. A relabelling of
    the categories (any bijection of the label values) then leaves every label's initial factors, hence the whole
    fit, unchanged.

    Args:
        t: ``I`` sorted unique coordinates of the mode (in the model's units).
        idx: ``N`` index of each training entry's coordinate in ``t``.
        ys: ``N`` standardised values of the (observed) training entries.
        categorical: Whether the mode holds labels.

    Returns:
        ``(s, perm)``: ``I`` positions in ``[0, 1]`` (``t``'s dtype) and ``I`` row indices (long) of the perturbation.
    """
    I = t.shape[0]
    if not categorical:
        width = t[-1] - t[0] if I > 1 else t.new_ones(())
        return (t - t[0]) / width, torch.arange(I, device=t.device)
    sums = torch.zeros(I, dtype=ys.dtype, device=ys.device).index_add_(0, idx, ys)
    counts = torch.zeros(I, dtype=ys.dtype, device=ys.device).index_add_(0, idx, torch.ones_like(ys))
    rank = torch.empty(I, dtype=torch.long, device=t.device)
    rank[torch.argsort(sums / counts.clamp_min(1.0), stable=True)] = torch.arange(I, device=t.device)
    return rank.to(t.dtype) / max(I - 1, 1), rank


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
