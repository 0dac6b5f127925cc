r"""Boundary discretisation and meshing of a notched plate: the boundary polygon counter-clockwise from the
bottom-left corner, at spacing :math:`\approx h` (arc length on the notches), with its eight landmarks
(:data:`LANDMARK_NAMES`); its ``triangle`` mesh (switches ``pq{min_angle}a{h^2/2}``); the boundary loop of a
disk-like triangulation. ``triangle`` is an optional dependency (``pip install gpgeom[fem]``), imported lazily."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gpgeom.datasets._optional import import_optional
from gpgeom.datasets.notched_plate.shapes import HEIGHT, NOTCH_SPAN, WIDTH, NotchShape, PlateShape
from gpgeom.geometry.boundary import boundary_loops
from gpgeom.geometry.mesh import Mesh

__all__ = ["LANDMARK_NAMES", "boundary_loop", "mesh_plate", "plate_boundary"]

#: Names of the entries of :attr:`NotchedPlateSample.landmarks`, in counter-clockwise boundary order.
LANDMARK_NAMES: tuple[str, ...] = (
    "bottom_left",
    "bottom_right",
    "right_notch_low",
    "right_notch_high",
    "top_right",
    "top_left",
    "left_notch_high",
    "left_notch_low",
)


def _resample_curve(xy: np.ndarray, h: float) -> np.ndarray:
    r"""Points at (nearly) equal arc length ``<= h`` along a dense polyline ``xy`` (k x 2); endpoints kept."""
    seg = np.hypot(*np.diff(xy, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    n = max(1, math.ceil(s[-1] / h - 1e-9))
    target = np.linspace(0.0, s[-1], n + 1)
    return np.column_stack([np.interp(target, s, xy[:, 0]), np.interp(target, s, xy[:, 1])])


def _notch_curve(notch: NotchShape, side: str, h: float) -> np.ndarray:
    r"""The notch from its low end to its high end, resampled at spacing ``h``; returns ``(k, 2)``."""
    t = np.linspace(0.0, 1.0, 4001)
    y = NOTCH_SPAN[0] + (NOTCH_SPAN[1] - NOTCH_SPAN[0]) * t
    d = notch(t)
    x = d if side == "left" else WIDTH - d
    pts = _resample_curve(np.column_stack([x, y]), h)
    pts[0] = (0.0 if side == "left" else WIDTH, NOTCH_SPAN[0])
    pts[-1] = (0.0 if side == "left" else WIDTH, NOTCH_SPAN[1])
    return pts


def _segment(a: Sequence[float], b: Sequence[float], h: float) -> np.ndarray:
    r"""Points from ``a`` to ``b`` (both included) at spacing ``<= h``; returns ``(k, 2)``."""
    n = max(1, math.ceil(math.dist(a, b) / h - 1e-9))
    s = np.linspace(0.0, 1.0, n + 1)[:, None]
    return (1.0 - s) * np.asarray(a, dtype=np.float64) + s * np.asarray(b, dtype=np.float64)


def plate_boundary(shape: PlateShape, h: float) -> tuple[np.ndarray, np.ndarray]:
    r"""The boundary polygon of a plate, counter-clockwise from the bottom-left corner.

    Args:
        shape: The plate shape.
        h: The boundary spacing.

    Returns:
        ``(vertices, landmarks)``: the polygon vertices, shape ``(nB, 2)``, with ``vertices[0] = (0, 0)``, and the
        indices of the eight landmarks (:data:`LANDMARK_NAMES`), shape ``(8,)``.
    """
    y0, y1 = NOTCH_SPAN
    pieces = [
        _segment((0.0, 0.0), (WIDTH, 0.0), h),
        _segment((WIDTH, 0.0), (WIDTH, y0), h),
        _notch_curve(shape.right, "right", h),
        _segment((WIDTH, y1), (WIDTH, HEIGHT), h),
        _segment((WIDTH, HEIGHT), (0.0, HEIGHT), h),
        _segment((0.0, HEIGHT), (0.0, y1), h),
        _notch_curve(shape.left, "left", h)[::-1],
        _segment((0.0, y0), (0.0, 0.0), h),
    ]
    # Each piece starts at a landmark; drop its last point (the next piece's first).
    landmarks, verts, count = [], [], 0
    for piece in pieces:
        landmarks.append(count)
        verts.append(piece[:-1])
        count += len(piece) - 1
    return np.concatenate(verts), np.asarray(landmarks, dtype=np.int64)


def mesh_plate(
    shape: PlateShape, h: float, *, min_angle: float = 30.0, max_area: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Mesh a plate with ``triangle`` (switches ``pq{min_angle}a{max_area}``; ``max_area`` defaults to ``h^2/2``).

    Returns:
        ``(points, triangles, landmarks)``: node coordinates ``(n, 2)`` float64, counter-clockwise triangles
        ``(m, 3)`` int64 and the landmark node indices ``(8,)``; ``points[0]`` is the bottom-left corner.
    """
    triangle = import_optional("triangle", "the mesher", "NotchedPlate2d")
    verts, landmarks = plate_boundary(shape, h)
    nb = len(verts)
    segments = np.column_stack([np.arange(nb), (np.arange(nb) + 1) % nb])
    area = 0.5 * h * h if max_area is None else float(max_area)
    out = triangle.triangulate({"vertices": verts, "segments": segments}, f"pq{min_angle:.6f}a{area:.15f}Q")
    points = np.ascontiguousarray(out["vertices"], dtype=np.float64)
    tris = np.ascontiguousarray(out["triangles"], dtype=np.int64)
    if not np.array_equal(points[:nb], verts):  # triangle keeps the input vertices first, in order
        raise RuntimeError("triangle reordered the boundary vertices; cannot locate the landmarks.")
    return points, tris, landmarks


def boundary_loop(points: np.ndarray, triangles: np.ndarray, start: int = 0) -> np.ndarray:
    r"""The boundary nodes of a disk-like 2D triangulation in walk order, starting at ``start``.

    A thin wrapper of :func:`gpgeom.geometry.boundary.boundary_loops` that also checks that the boundary is a single
    loop. The loop goes with the mesh on its left, i.e. counter-clockwise around the domain.

    Args:
        points: ``(n, 2)`` node coordinates.
        triangles: ``(m, 3)`` node indices.
        start: A boundary node to start from.

    Returns:
        ``(nB,)`` node indices (int64).

    Raises:
        ValueError: When the boundary is not exactly one closed simple loop, or ``start`` is not on it.
    """
    loops = boundary_loops(Mesh(points, triangles), start=start)
    if len(loops) != 1:
        raise ValueError(f"The triangulation must have exactly one boundary loop, found {len(loops)}.")
    return loops[0]
