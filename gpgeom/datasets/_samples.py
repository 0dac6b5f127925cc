r"""What the mesh datasets' samples share: their values stacked in the order of the dataset's names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

__all__ = ["SampleArrays"]


class SampleArrays:
    r"""Array accessors of a sample with ``points`` ``(n, dim)`` and the dicts ``in_scalars``, ``fields`` (nodal,
    each ``(n,)``) and ``out_scalars``, in the order of the class's name tuples (set by each dataset)."""

    IN_SCALAR_NAMES: ClassVar[tuple[str, ...]]
    FIELD_NAMES: ClassVar[tuple[str, ...]]
    OUT_SCALAR_NAMES: ClassVar[tuple[str, ...]]

    @property
    def n_nodes(self) -> int:
        r"""``n``, the number of mesh nodes."""
        return len(self.points)

    def in_scalar_array(self) -> np.ndarray:
        r"""Input scalars ``(len(IN_SCALAR_NAMES),)`` in :attr:`IN_SCALAR_NAMES` order."""
        return np.array([self.in_scalars[k] for k in self.IN_SCALAR_NAMES])

    def out_scalar_array(self) -> np.ndarray:
        r"""Output scalars ``(len(OUT_SCALAR_NAMES),)`` in :attr:`OUT_SCALAR_NAMES` order."""
        return np.array([self.out_scalars[k] for k in self.OUT_SCALAR_NAMES])

    def field_array(self, names: Sequence[str] | None = None) -> np.ndarray:
        r"""Nodal fields stacked as ``(n, len(names))`` (default: :attr:`FIELD_NAMES`)."""
        return np.column_stack([self.fields[k] for k in (self.FIELD_NAMES if names is None else names)])
