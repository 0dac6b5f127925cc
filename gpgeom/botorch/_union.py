r"""The training data, in original units, of an :class:`~gpgeom.botorch.exact_gp.ExactGPModel` returned by
``condition_on_observations`` (and so by ``fantasize``): the union of its parent's data and the new observations.

A conditioned model holds ``n + n'`` points; its ``train_data``, ``rebuild_with``, files, ``repr``, ``subset_output``
and moves between devices read this union. ``fantasize`` runs inside the acquisition optimisation loops of
look-ahead acquisitions (qKG), where the fantasy model's data in original units are never read, so conditioning
stores the parts (references to the parent's tensors and detached copies of the ``n'`` new rows, which the caller
may change in place afterwards) and
:class:`UnionData` concatenates them when first read, broadcast to a common batch shape (``X`` may carry extra
leading batch dimensions, and ``fantasize`` adds the fantasy batch dimension to ``Y``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["UnionData", "cat_points", "noise_in_original_units"]


def cat_points(a: Tensor, b: Tensor, batch: torch.Size) -> Tensor:
    r"""``a`` (``batch_a x n x k``) and ``b`` (``batch_b x n' x k``) expanded to ``batch`` and concatenated along the
    points: ``batch x (n + n') x k``."""
    return torch.cat([a.expand(*batch, *a.shape[-2:]), b.expand(*batch, *b.shape[-2:])], -2)


class UnionData:
    r"""``(train_X, train_Y, train_Yvar)`` of a conditioned model in original units, as a 3-sequence.

    The parent's data (a tuple of tensors or a :class:`UnionData`: ``batch x n x d``, ``batch x n x m``, and
    ``batch x n x m`` or ``None``) followed by the new observations (``batch' x n' x d``, ``batch'' x n' x m``, and
    ``batch''' x n' x m`` or ``None``), each broadcast to the common batch shape of all of them: the tensors are
    ``broadcast(batch, batch', batch'', batch''') x (n + n') x {d, m, m}``. They are concatenated on the first read
    and kept; until then only the parts are held.
    """

    __slots__ = ("_parts", "_value")

    def __init__(self, base: Any, X: Tensor, Y: Tensor, Yvar: Tensor | None) -> None:
        self._parts: tuple[Any, Tensor, Tensor, Tensor | None] | None = (base, X, Y, Yvar)
        self._value: tuple[Tensor, Tensor, Tensor | None] | None = None

    def _tensors(self) -> tuple[Tensor, Tensor, Tensor | None]:
        if self._value is None:
            assert self._parts is not None
            base, X, Y, V = self._parts
            X0, Y0, V0 = tuple(base)
            shapes = [t.shape[:-2] for t in (X0, Y0, V0, X, Y, V) if t is not None]
            batch = torch.broadcast_shapes(*shapes)
            Vu = None if V0 is None or V is None else cat_points(V0, V, batch)
            self._value = (cat_points(X0, X, batch), cat_points(Y0, Y, batch), Vu)
            self._parts = None  # the parent's data stay with the parent
        return self._value

    def __iter__(self) -> Iterator[Tensor | None]:
        return iter(self._tensors())

    def __getitem__(self, index: int) -> Tensor | None:
        return self._tensors()[index]

    def __len__(self) -> int:
        return 3

    def __getstate__(self) -> tuple[Any, Any]:
        return self._parts, self._value

    def __setstate__(self, state: tuple[Any, Any]) -> None:
        self._parts, self._value = state


def noise_in_original_units(outcome_transform: Any, Y: Tensor, noise: Tensor) -> Tensor:
    r"""Noise variances of new observations given in the outcome-transformed units (BoTorch's convention for
    ``condition_on_observations(noise=...)`` and ``fantasize``), in the original units of the training data.

    Args:
        outcome_transform: The model's outcome transform (in eval mode), or ``None``.
        Y: ``batch'' x n' x m`` new outputs in original units (used only by a non-linear transform).
        noise: ``batch''' x n' x m`` noise variances in the transformed units.

    Returns:
        The variances in original units: ``noise``'s shape for an affine transform (``Standardize``: ``noise`` times
        the squared scales), ``broadcast(batch'', batch''') x n' x m`` otherwise.
    """
    if outcome_transform is None:
        return noise
    if getattr(outcome_transform, "_is_linear", False):
        # an affine map's variance does not depend on the value: no need to transform the (fantasy-sized) Y
        Yt = torch.zeros_like(noise)
    else:
        Yt, _ = outcome_transform(Y)
        noise = noise.expand(torch.broadcast_shapes(Yt.shape, noise.shape))
        Yt = Yt.expand(noise.shape)
    _, variance = outcome_transform.untransform(Yt, noise)
    return variance


def data_to_build(data: tuple[Tensor, Tensor, Tensor | None], batch: list[int] | None) -> tuple[Any, ...]:
    r"""Training data of the batch shape ``batch`` from a saved union ``data`` (``train_X``, ``train_Y``,
    ``train_Yvar``: ``batch' x N x {d, m, m}``, ``batch'`` broadcast from ``batch``), to build the model's modules
    with the shapes they had (those of the data the conditioned model's root was built with) before its state is
    loaded: the first member along the dimensions that conditioning added or widened. ``data`` itself when it has
    that shape or ``batch`` is ``None`` (a file written before the shape was recorded: its data were the root's)."""
    X = data[0]
    if batch is None or list(X.shape[:-2]) == list(batch):
        return data
    extra = X.dim() - 2 - len(batch)
    index = (0,) * extra + tuple(slice(0, 1) if b == 1 else slice(None) for b in batch)
    return tuple(None if t is None else t[index] for t in data)
