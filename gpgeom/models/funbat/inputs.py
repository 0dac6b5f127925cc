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

With ``normalize_coordinates=False`` the map is the shift :math:`x - \text{lo}` alone (span 1): the lengthscales stay
in the coordinates' own units, and the stationary Matérn priors do not see the shift, but the model computes with
the offsets from the training minimum, not with the coordinates themselves. Without the shift a float32 model
rounded Unix times in days (1.7e9 s as about 2e4 days, float32 spacing 2e-3 days) or in seconds (spacing 128 s) to
float32 before taking any difference: fitted at 1.7e9 + 60 days of hourly-scale data in hours the ELBO was -143
instead of -416 at the origin and the predictions off by 4x their size; now both agree with the origin to float32
rounding.

Targets. The values ``y`` are standardised in float64 too (float32 on MPS) from the values the caller gave:
``y_mean`` and ``y_std`` are computed and kept in float64, and only the standardised values :math:`(y - \bar y) / s`
are rounded to the model's dtype; the predictions are mapped back in float64 and then rounded to the model's dtype
(a float32 mean of :math:`10^6 + \dots` is rounded to float32's spacing there, 0.0625; its standard deviation keeps
float32's relative precision). A float32 model used to convert ``y`` to float32 first: with
:math:`y = 10^6 + 0.1 f` the values were rounded to steps of 0.0625 before the mean was taken, and the learned noise
standard deviation came out 0.015 against a true 0.002 (``tests/test_funbat_target_offset.py``). The predictive
variances are the standardised ones times :math:`s^2` in the model's dtype, so ``fit`` refuses targets whose
standard deviation :math:`s` has a square outside that dtype's range (float32: :math:`s` in about [1.7e-18, 1.2e18];
:func:`~gpgeom.models.funbat.target.check_target_scale`): a float32 model of targets of about 1e20 predicted a
standard deviation of inf, silently.

Labels. The modes that match coordinates by equality (the ``categorical`` ones and ``scale_mode``) keep their
training coordinates in their original units (float64, sorted, unique) and the dtype they came in. **A query
coordinate of such a mode matches a training label when the two are equal at the lower precision of the query's
dtype and the training coordinates' dtype** (both rounded to it); it is then taken as that training label, so it
maps to the very same normalised value. A float64 query of float64 training labels is matched exactly, as before; a
float32 query of the label :math:`3/11` computed in float64 used to differ from it in the last bits and get the prior
of an unseen label. When two training labels are equal at that precision, the query cannot say which one it means and
is refused (``ValueError``); a coordinate that matches no training label is an unseen label (the prior of a
categorical mode, a new scale of ``scale_mode``), as documented. The labels of a categorical mode are mapped to
``[0, 1]`` like every coordinate, and a float32 model rounds the image: over a span of :math:`10^8` the labels
:math:`2 \cdot 10^8 - 1` and :math:`2 \cdot 10^8 - 2` fall on one float32 value. Two training labels that do were
merged into one category, and an unseen label that falls on a training label's image got that label's posterior
instead of the prior, silently; ``fit`` now refuses the first and prediction the second (``ValueError``: fit in
float64 or recode the labels as :math:`0, \dots, I - 1`, exact in float32 up to :math:`2^{24}` labels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom._validation import as_tensor, first_bad
from gpgeom.base import format_value

__all__: list[str] = []


def _coarser(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    r"""The floating dtype of lower precision of ``a`` and ``b``: the one labels are matched at (module docstring)."""
    return max(a, b, key=lambda d: torch.finfo(d).eps)


class _Inputs:
    r"""The input checks and units of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    @property
    def _coord_dtype(self) -> torch.dtype:
        r"""The dtype of the coordinate map (module docstring): float64, float32 on MPS."""
        return torch.float32 if self.device.type == "mps" else torch.float64

    def _check_X(
        self, X: object, name: str = "X", K: int | None = None, with_dtype: bool = False
    ) -> Tensor | tuple[Tensor, torch.dtype]:
        r"""Coordinates (numpy or torch, any dtype) as a tensor of :attr:`_coord_dtype` (float64) on the model's
        device, in their original units: ``N x K`` for ``fit`` (``K=None``), ``... x K`` otherwise (map them with
        :meth:`_normalise`), those labels matched to the training labels (:meth:`_match_labels`); with
        ``with_dtype`` also the dtype ``X`` came in."""
        X, src = self._as_coordinates(name, X)
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
        X = X if K is None else self._match_labels(X, src, name)
        return (X, src) if with_dtype else X

    def _as_coordinates(self, name: str, X: object, finite: bool = False) -> tuple[Tensor, torch.dtype]:
        r"""``X`` (numpy, torch or numbers, any shape) as a tensor of :attr:`_coord_dtype` on the model's device, and
        the floating dtype it came in (float64 for integers): the precision its labels are matched at."""
        X = as_tensor(name, X, dtype=None, finite=finite)  # a floating X keeps its dtype, integers become float64
        return X.to(device=self.device, dtype=self._coord_dtype), X.dtype

    def _set_labels(self, X: Tensor, src: torch.dtype) -> None:
        r"""The training labels (module docstring) from the training coordinates ``X`` (``N x K``, original units,
        :attr:`_coord_dtype`) that came in dtype ``src``: per mode ``I_k`` sorted unique coordinates for the
        ``categorical`` modes and ``scale_mode``, ``None`` for the others."""
        modes = set(self.categorical) | ({self.scale_mode} if self.scale_mode is not None else set())
        self._labels = [torch.unique(X[:, k], sorted=True) if k in modes else None for k in range(X.shape[1])]
        self._label_dtype = src

    def _add_labels(self, new: _Inputs, X: Tensor, src: torch.dtype) -> None:
        r"""Set on ``new`` (:meth:`~gpgeom.models.funbat.model.FunBaT.rebuild_with`) this model's training labels and
        those of the new entries ``X`` (``n x K``, matched by :meth:`_check_X`, that came in dtype ``src``), matched
        at the lower precision of the two dtypes."""
        labels = getattr(self, "_labels", None)
        new._labels = None if labels is None else [
            None if L is None else torch.unique(torch.cat([L, X[:, k].detach()]), sorted=True)
            for k, L in enumerate(labels)
        ]  # fmt: skip
        new._label_dtype = _coarser(src, self._label_dtype)

    def _match_labels(self, X: Tensor, src: torch.dtype, name: str, k: int | None = None) -> Tensor:
        r"""Query coordinates ``X`` (``... x K``, or ``...`` of mode ``k``; original units, :attr:`_coord_dtype`,
        that came in dtype ``src``) with each coordinate of a labelled mode that matches a training label replaced by
        it (module docstring; the value only: gradients pass through unchanged).

        Raises:
            ValueError: When a coordinate equals two training labels at the precision it is matched at.
        """
        labels = getattr(self, "_labels", None)
        if labels is None:
            return X
        p = _coarser(src, self._label_dtype)
        if torch.finfo(p).eps <= torch.finfo(X.dtype).eps:  # as precise as the map: equal labels only, as before
            return X
        cols = list(X.unbind(-1)) if k is None else [X]
        for j, col in enumerate(cols):
            mode = j if k is None else k
            L = labels[mode]
            if L is None:
                continue
            Lp = L.to(p).to(L.dtype)  # the training labels at that precision, sorted
            x = col.detach().to(p).to(L.dtype).contiguous()
            lo = torch.searchsorted(Lp, x)
            n = torch.searchsorted(Lp, x, right=True) - lo
            if bool((n > 1).any()):
                i, c = int(lo[n > 1][0]), int(n[n > 1][0])
                raise ValueError(
                    f"`{name}`: a coordinate of mode {mode} given in {format_value(src)} equals the training "
                    f"labels {L[i : i + c].tolist()} at {format_value(p)} precision, so it cannot say which one it "
                    f"means; pass the coordinates in {format_value(self._label_dtype)}, the dtype of the training "
                    "coordinates."
                )
            snap = L[lo.clamp_max(L.shape[0] - 1)]
            if col.requires_grad:  # the label's value (exact: within a factor 2), the query's gradient
                snap = col + (snap - col).detach()
            cols[j] = torch.where(n == 1, snap, col)
        return torch.stack(cols, -1) if k is None else cols[0]

    def _check_y(self, y: object, N: int) -> tuple[Tensor, torch.dtype]:
        r"""``y`` (numpy or torch, ``N`` or ``N x 1``) as ``N`` values of :attr:`_coord_dtype` (float64: the targets
        are standardised in it, the module docstring's targets paragraph), and the floating dtype it came in (float64
        for integers)."""
        y, src = self._as_coordinates("y", y)
        if y.dim() == 2 and y.shape[-1] == 1:
            y = y[:, 0]
        if y.shape != (N,):
            raise ValueError(f"`y` must have shape (N,) = ({N},) (or (N, 1)) matching `X`, got {tuple(y.shape)}.")
        if bool(torch.isinf(y).any()):
            raise ValueError(
                f"`y` holds {int(torch.isinf(y).sum())} infinite value(s) (NaN marks a missing entry)"
                f"{first_bad(y, torch.isinf(y))}: remove those entries or mark them NaN."
            )
        return y, src

    def _set_coordinate_map(self, X: Tensor) -> None:
        r"""``lo`` and ``span`` (``K`` each, float64) of the coordinate map from the training coordinates ``X``
        (``N x K``, original units, :meth:`_check_X`), and the dtype the model is fitted in (module docstring)."""
        lo = X.min(0).values
        span = X.max(0).values - lo
        span = torch.where(span > 0, span, torch.ones_like(span))
        if not self.normalize_coordinates:  # a shift only: the units stay, the offset goes (module docstring)
            span = torch.ones_like(span)
        self.coord_lo, self.coord_span, self._fit_dtype = lo, span, self.dtype

    def _normalise(self, X: Tensor, k: int | None = None) -> Tensor:
        r"""Coordinates ``X`` (``... x K``, or ``...`` of mode ``k``; original units, any floating dtype) in normalised
        units, in the model's dtype: mapped in float64, rounded to the dtype of the fit, then to the model's (module
        docstring)."""
        lo, span = (self.coord_lo, self.coord_span) if k is None else (self.coord_lo[k], self.coord_span[k])
        Xn = (X.to(lo.dtype) - lo) / span
        return Xn.to(getattr(self, "_fit_dtype", self.dtype)).to(self.dtype)

    def _normalise_query(self, X: Tensor, name: str, k: int | None = None) -> Tensor:
        r""":meth:`_normalise` of query coordinates ``X`` (``... x K``, or ``...`` of mode ``k``; original units,
        matched by :meth:`_match_labels`), refusing a label of a ``categorical`` mode that is no training label but
        maps onto a training label's normalised value in the model's dtype (module docstring, "Labels").

        Raises:
            ValueError: For such a label: it would silently get that training label's posterior, not the prior.
        """
        Xn = self._normalise(X, k)
        labels = getattr(self, "_labels", None)
        if labels is None:
            return Xn
        for j in self.categorical if k is None else [k] if k in self.categorical else []:
            L, t = labels[j], self._modes[j].t  # sorted unique training labels, and their images (aligned: fit)
            x = (X[..., j] if k is None else X).detach().reshape(-1)
            xn = (Xn[..., j] if k is None else Xn).detach().reshape(-1).contiguous()
            pos = torch.searchsorted(t, xn).clamp_max(t.shape[0] - 1)
            bad = (t[pos] == xn) & (L[pos] != x.to(L.dtype))
            if bool(bad.any()):
                i = int(bad.nonzero()[0, 0])
                raise ValueError(
                    f"`{name}`: the coordinate {float(x[i])!r} of categorical mode {j} equals, in normalised units at "
                    f"{format_value(self.dtype)}, the training label {float(L[pos[i]])!r} that it is not, so it would "
                    "get that label's posterior (an unseen label gets the prior); use a model in float64 "
                    "(dtype=torch.float64) or recode the labels as 0, 1, ..., I-1."
                )
        return Xn

    def _set_data(self, Xn: Tensor, ys: Tensor) -> None:
        r"""Normalised coordinates ``N x K`` and standardised values ``N`` of the training entries.

        Raises:
            ValueError: When two training labels of a ``categorical`` mode are equal in normalised units (the
                affine map to ``[0, 1]`` rounded to a float32 fit dtype: labels :math:`10^8 - 1` and :math:`10^8`
                over a span of :math:`10^8`): they would be one category.
        """
        self._coords = [torch.unique(Xn[:, k], sorted=True, return_inverse=True) for k in range(Xn.shape[1])]
        labels = getattr(self, "_labels", None)
        for k in self.categorical if labels is not None else []:
            if self._coords[k][0].shape[0] < labels[k].shape[0]:
                t = self._normalise(labels[k], k)
                i = int((t[1:] == t[:-1]).nonzero()[0, 0])
                raise ValueError(
                    f"`X`: the labels {float(labels[k][i])!r} and {float(labels[k][i + 1])!r} of categorical mode {k} "
                    f"are distinct but equal in normalised units at {format_value(self._fit_dtype)} (the map to "
                    f"[0, 1] over the span {float(self.coord_span[k]):g}), so they would be one category; fit in "
                    "float64 (dtype=torch.float64) or recode the labels as 0, 1, ..., I-1."
                )
        self._X, self._ys, self._N = Xn, ys, Xn.shape[0]
