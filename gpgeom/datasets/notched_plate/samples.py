r"""One NotchedPlate2d sample: :class:`NotchedPlateSample` (mesh, boundary loop, landmarks, scalars, nodal fields and
the hidden shape), the names of its scalars and fields, and :func:`make_notched_plate`, which meshes and solves one
given shape."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from gpgeom.datasets._samples import SampleArrays
from gpgeom.datasets.notched_plate.elasticity import solve_plane_strain
from gpgeom.datasets.notched_plate.meshing import boundary_loop, mesh_plate
from gpgeom.datasets.notched_plate.shapes import PlateShape

__all__ = [
    "FIELD_NAMES",
    "IN_SCALAR_NAMES",
    "OUT_SCALAR_NAMES",
    "NotchedPlateSample",
    "make_notched_plate",
    "stack_scalars",
]

IN_SCALAR_NAMES: tuple[str, ...] = ("P", "nu")
FIELD_NAMES: tuple[str, ...] = ("U1", "U2", "von_mises", "sigma22")
OUT_SCALAR_NAMES: tuple[str, ...] = ("max_vm", "mean_U2_top", "compliance")


@dataclass(eq=False)
class NotchedPlateSample(SampleArrays):
    r"""One NotchedPlate2d sample.

    Attributes:
        points: Node coordinates, shape ``(n, 2)`` float64.
        triangles: Node indices, shape ``(m, 3)`` int64, counter-clockwise.
        in_scalars: ``{"P": traction, "nu": Poisson ratio}``.
        fields: Nodal fields ``U1``, ``U2``, ``von_mises``, ``sigma22``, each ``(n,)`` float64.
        out_scalars: ``{"max_vm", "mean_U2_top", "compliance"}``.
        boundary_start: The recommended boundary start node, the bottom-left corner (always 0).
        boundary_loop: The boundary nodes counter-clockwise from ``boundary_start``, shape ``(nB,)``.
        landmarks: Node indices of the landmarks named by :data:`LANDMARK_NAMES`, shape ``(8,)``.
        mesh_size: The boundary spacing ``h`` used for this sample.
        shape: The notch geometry (hidden parameters, for diagnostics only).
    """

    points: np.ndarray
    triangles: np.ndarray
    in_scalars: dict[str, float]
    fields: dict[str, np.ndarray]
    out_scalars: dict[str, float]
    boundary_start: int
    boundary_loop: np.ndarray
    landmarks: np.ndarray
    mesh_size: float
    shape: PlateShape = field(repr=False)

    IN_SCALAR_NAMES: ClassVar[tuple[str, ...]] = IN_SCALAR_NAMES
    FIELD_NAMES: ClassVar[tuple[str, ...]] = FIELD_NAMES
    OUT_SCALAR_NAMES: ClassVar[tuple[str, ...]] = OUT_SCALAR_NAMES


def stack_scalars(samples: Sequence[NotchedPlateSample], kind: str = "in") -> np.ndarray:
    r"""Input (``kind="in"``, ``(N, 2)``) or output (``kind="out"``, ``(N, 3)``) scalars of many samples."""
    if kind == "in":
        return np.stack([s.in_scalar_array() for s in samples])
    if kind == "out":
        return np.stack([s.out_scalar_array() for s in samples])
    raise ValueError(f"Unknown `kind`={kind!r}; expected 'in' or 'out'.")


def make_notched_plate(
    shape: PlateShape,
    h: float,
    *,
    load: float = 1.0,
    nu: float = 0.3,
    young: float = 1.0,
    min_angle: float = 30.0,
    recovery: str = "l2",
) -> NotchedPlateSample:
    r"""Mesh and solve one plate of a given shape (deterministic; no random draw)."""
    points, tris, landmarks = mesh_plate(shape, h, min_angle=min_angle)
    sol = solve_plane_strain(points, tris, load=load, nu=nu, young=young, recovery=recovery)
    return NotchedPlateSample(
        points=points,
        triangles=tris,
        in_scalars={"P": float(load), "nu": float(nu)},
        fields=sol.fields,
        out_scalars=sol.out_scalars,
        boundary_start=0,
        boundary_loop=boundary_loop(points, tris, 0),
        landmarks=landmarks,
        mesh_size=float(h),
        shape=shape,
    )
