r"""The NotchedPlate2d shape family: the plate :math:`[0, 1] \times [0, 2]` (``WIDTH`` x ``HEIGHT``) with one notch
on each side on :math:`y \in [0.4, 1.6]` (``NOTCH_SPAN``), each notch a profile :math:`\delta(t)` of one of
:data:`NOTCH_FAMILIES` (the formulas are in :mod:`gpgeom.datasets.notched_plate`; the random draws of a shape in
:mod:`gpgeom.datasets.notched_plate.generate`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["NOTCH_FAMILIES", "NotchShape", "PlateShape"]

#: The notch families of :func:`generate_notched_plates` (``notch_family``) and of :class:`NotchShape` (``kind``).
NOTCH_FAMILIES: tuple[str, ...] = ("smooth", "half_ellipse", "wedge")

WIDTH = 1.0
HEIGHT = 2.0
NOTCH_SPAN = (0.4, 1.6)


@dataclass(frozen=True)
class NotchShape:
    r"""One notch profile :math:`\delta(t)`, :math:`t \in [0, 1]`, of one of three kinds:

    * ``"smooth"`` (the training family): :math:`\max(0, d \sin(\pi t)(1 + a \sum_k b_k \sin(k \pi t)/k))`;
    * ``"half_ellipse"``: :math:`d \sqrt{1 - (2t - 1)^2}`;
    * ``"wedge"``: :math:`d \min(t / c, (1 - t) / (1 - c))` with the apex :math:`c` = ``apex``.

    Attributes:
        depth: The depth scale :math:`d` (>= 0; 0 gives a straight edge).
        coefs: The harmonic coefficients :math:`b_k`, shape ``(K,)``, for :math:`k = 2, \dots, K + 1` (smooth).
        amplitude: The harmonic amplitude :math:`a` (smooth).
        kind: ``"smooth"``, ``"half_ellipse"`` or ``"wedge"`` (:data:`NOTCH_FAMILIES`).
        apex: The apex position :math:`c \in (0, 1)` of a wedge.
    """

    depth: float
    coefs: tuple[float, ...] = ()
    amplitude: float = 0.35
    kind: str = "smooth"
    apex: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in NOTCH_FAMILIES:
            raise ValueError(f"Unknown notch `kind`={self.kind!r}; expected one of {NOTCH_FAMILIES}.")
        if not 0.0 < self.apex < 1.0:
            raise ValueError(f"`apex` must lie in (0, 1), got {self.apex!r}.")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        r"""Inward depth at the notch parameter ``t`` (shape ``(k,)``, values in ``[0, 1]``); returns ``(k,)``."""
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "half_ellipse":
            return self.depth * np.sqrt(np.clip(1.0 - (2.0 * t - 1.0) ** 2, 0.0, None))
        if self.kind == "wedge":
            c = self.apex
            return self.depth * np.clip(np.minimum(t / c, (1.0 - t) / (1.0 - c)), 0.0, None)
        factor = np.ones_like(t)
        for k, b in enumerate(self.coefs, start=2):
            factor = factor + self.amplitude * b * np.sin(k * np.pi * t) / k
        return np.maximum(0.0, self.depth * np.sin(np.pi * t) * factor)

    def max_depth(self) -> float:
        r"""The maximal depth over ``t`` in ``[0, 1]`` (evaluated on a fine grid)."""
        return float(self(np.linspace(0.0, 1.0, 2001)).max())


@dataclass(frozen=True)
class PlateShape:
    r"""A plate :math:`[0, 1] \times [0, 2]` with a ``left`` and a ``right`` notch on :math:`y \in [0.4, 1.6]`."""

    left: NotchShape
    right: NotchShape

    @classmethod
    def rectangle(cls) -> PlateShape:
        r"""The unnotched rectangle (both depths 0)."""
        return cls(NotchShape(0.0), NotchShape(0.0))
