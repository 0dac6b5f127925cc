r"""The inputs of FunBaT and the units it computes in: the coordinates ``X`` and values ``y`` it accepts, the
coordinates in normalised units, the training entries as the sweeps read them.

Coordinates: numpy or torch, any dtype, converted to the model's dtype and device; ``N x K`` (one row of :math:`K`
coordinates per entry) for :meth:`~gpgeom.models.funbat.model.FunBaT.fit`, ``... x K`` for prediction; every
coordinate finite (a missing entry is marked in ``y``, by NaN or ``mask``). Values: ``N`` or ``N x 1``, NaN for a
missing entry, never infinite.

Units. ``fit`` maps each mode's coordinates affinely by their training range, :math:`(x - \text{lo}) /
\text{span}` onto :math:`[0, 1]` (``normalize_coordinates``; a mode with one training coordinate keeps the span 1),
and standardises the values (``standardize``: the training mean and standard deviation); the sweeps, the kernels'
lengthscales and the ELBO live in these units, and the predictions are mapped back. The training entries are kept in
them, with each mode's sorted unique coordinates and the index of every entry's among them (the nodes of the mode's
state-space GP, :mod:`~gpgeom.models.funbat.latent`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []


class _Inputs:
    r"""The input checks and units of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    def _check_X(self, X: object, name: str = "X", K: int | None = None) -> Tensor:
        r"""Coordinates (numpy or torch, any dtype) as a tensor of the model's dtype and device: ``N x K`` for
        ``fit`` (``K=None``), ``... x K`` otherwise."""
        X = self._as_tensor(name, X, finite=False)
        if X.dim() < 2 or (K is None and X.dim() != 2):
            raise ValueError(
                f"`{name}` must be {'N x K' if K is None else '... x K'} (one row of K coordinates per entry), "
                f"got shape {tuple(X.shape)}."
            )
        if K is not None and X.shape[-1] != K:
            raise ValueError(f"`{name}` must have K={K} coordinates per entry (last dimension), got {X.shape[-1]}.")
        if bool((bad := ~torch.isfinite(X)).any()):
            raise ValueError(
                f"`{name}` contains {int(bad.sum())} NaN or infinite coordinate(s); every coordinate of an entry "
                "must be finite (to mark a missing value, set y to NaN or pass `mask`)."
            )
        return X

    def _check_y(self, y: object, N: int) -> Tensor:
        y = self._as_tensor("y", y, finite=False)
        if y.dim() == 2 and y.shape[-1] == 1:
            y = y[:, 0]
        if y.shape != (N,):
            raise ValueError(f"`y` must have shape (N,) = ({N},) (or (N, 1)) matching `X`, got {tuple(y.shape)}.")
        if bool(torch.isinf(y).any()):
            raise ValueError(f"`y` holds {int(torch.isinf(y).sum())} infinite value(s) (NaN marks a missing entry).")
        return y

    def _normalise(self, X: Tensor) -> Tensor:
        return (X - self.coord_lo) / self.coord_span

    def _set_data(self, Xn: Tensor, ys: Tensor) -> None:
        r"""Normalised coordinates ``N x K`` and standardised values ``N`` of the training entries."""
        self._coords = [torch.unique(Xn[:, k], sorted=True, return_inverse=True) for k in range(Xn.shape[1])]
        self._X, self._ys, self._N = Xn, ys, Xn.shape[0]
