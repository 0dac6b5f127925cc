r"""The inputs of FunBaT and the units it computes in: the coordinates ``X`` and values ``y`` it accepts, the
coordinates in normalised units, the training entries as the sweeps read them.

Coordinates: numpy or torch, any dtype, on the model's device; ``N x K`` (one row of :math:`K`
coordinates per entry) for :meth:`~gpgeom.models.funbat.model.FunBaT.fit`, ``... x K`` for prediction; every
coordinate finite (a missing entry is marked in ``y``, by NaN or ``mask``). Values: ``N`` or ``N x 1``, NaN for a
missing entry, never infinite.

Units. ``fit`` maps each mode's coordinates affinely by their training range, :math:`(x - \text{lo}) /
\text{span}` onto :math:`[0, 1]` (``normalize_coordinates``; a mode with one training coordinate keeps the span 1),
and standardises the values (``standardize``: the training mean and standard deviation); the sweeps, the kernels'
lengthscales and the ELBO live in these units, and the predictions are mapped back. The training entries are kept in
them, with each mode's sorted unique coordinates and the index of every entry's among them (the nodes of the mode's
state-space GP, :mod:`~gpgeom.models.funbat.latent`).

The map is applied in float64 whatever the model's dtype (float32 on an MPS device, which has no float64):
``lo`` and ``span`` are kept in float64 and the coordinates are converted to float64, mapped, and only then rounded,
first to the dtype the model was fitted in and then to its current one. So a float32 model keeps the resolution of
coordinates with a large offset (Unix seconds: float32 spaces 1.7e9 by 128, so converting first left a span of 1000
seconds at most 8 distinct values), and a coordinate equal to a training one maps to the very same normalised value
after ``to(dtype=...)`` or a file round trip, which categorical modes (equal labels only,
:mod:`~gpgeom.models.funbat.priors`) and scales shared along a mode (``scale_mode``) require
(``tests/test_funbat_coordinate_map.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom._validation import as_tensor

__all__: list[str] = []


class _Inputs:
    r"""The input checks and units of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    @property
    def _coord_dtype(self) -> torch.dtype:
        r"""The dtype of the coordinate map (module docstring): float64, float32 on MPS."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def _check_X(self, X: object, name: str = "X", K: int | None = None) -> Tensor:
        r"""Coordinates (numpy or torch, any dtype) as a tensor of :attr:`_coord_dtype` (float64) on the model's
        device, in their original units: ``N x K`` for ``fit`` (``K=None``), ``... x K`` otherwise (map them with
        :meth:`_normalise`)."""
        X = as_tensor(name, X, dtype=self._coord_dtype, device=self.device, finite=False)
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

    def _set_coordinate_map(self, X: Tensor) -> None:
        r"""``lo`` and ``span`` (``K`` each, float64) of the coordinate map from the training coordinates ``X``
        (``N x K``, original units, :meth:`_check_X`), and the dtype the model is fitted in (module docstring)."""
        lo = X.min(0).values
        span = X.max(0).values - lo
        span = torch.where(span > 0, span, torch.ones_like(span))
        if not self.normalize_coordinates:
            lo, span = torch.zeros_like(lo), torch.ones_like(span)
        self.coord_lo, self.coord_span, self._fit_dtype = lo, span, self.dtype

    def _normalise(self, X: Tensor, k: int | None = None) -> Tensor:
        r"""Coordinates ``X`` (``... x K``, or ``...`` of mode ``k``; original units, any floating dtype) in normalised
        units, in the model's dtype: mapped in float64, rounded to the dtype of the fit, then to the model's (module
        docstring)."""
        lo, span = (self.coord_lo, self.coord_span) if k is None else (self.coord_lo[k], self.coord_span[k])
        Xn = (X.to(lo.dtype) - lo) / span
        return Xn.to(getattr(self, "_fit_dtype", self.dtype)).to(self.dtype)

    def _set_data(self, Xn: Tensor, ys: Tensor) -> None:
        r"""Normalised coordinates ``N x K`` and standardised values ``N`` of the training entries."""
        self._coords = [torch.unique(Xn[:, k], sorted=True, return_inverse=True) for k in range(Xn.shape[1])]
        self._X, self._ys, self._N = Xn, ys, Xn.shape[0]
