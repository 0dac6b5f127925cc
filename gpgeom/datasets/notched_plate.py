r"""NotchedPlate2d: a seeded family of 2D plates with two random free-form notches, solved by P1 FEM.

This is the offline substitute for the Tensile2d benchmark of MMGP (Casenave et al., NeurIPS 2023, Sec. 4). Each
sample is a plate :math:`\Omega \subset [0, 1] \times [0, 2]` whose left and right edges carry one smooth random
notch each on :math:`y \in [0.4, 1.6]`. The notches indent the outer boundary, so every mesh is one connected
triangulated region with exactly **one boundary loop** (disk-like), which is what a Floater morphing onto the unit
disk needs. Node counts and connectivity differ from sample to sample.

Geometry (per sample, all drawn from one ``numpy.random.Generator`` seeded by ``(seed, index)``):

* boundary spacing :math:`h \sim U(h_{lo}, h_{hi})` (``mesh_size``; default ``(0.028, 0.036)``);
* for each side independently, with :math:`t = (y - 0.4)/1.2 \in [0, 1]`, the inward depth

  .. math::

      \delta(t) = \max\Bigl(0,\; d \sin(\pi t)\,\bigl(1 + a \textstyle\sum_{k=2}^{5} b_k \sin(k\pi t)/k\bigr)\Bigr),
      \quad d \sim U(0.05, 0.30),\; b_k \sim N(0, 1),\; a = 0.35;

  a draw whose maximal depth exceeds ``max_depth`` (0.45, so the ligament is at least 0.1 wide) is redrawn;
* other notch families (``notch_family``; test sets of geometry the smooth family never produces, e.g. to measure
  how a model's uncertainty behaves out of distribution): ``"half_ellipse"``,
  :math:`\delta(t) = d \sqrt{1 - (2t - 1)^2}` (vertical tangents at the notch ends, where every smooth notch
  starts with slope :math:`\pi d`), and ``"wedge"``, :math:`\delta(t) = d \min(t / c, (1 - t) / (1 - c))` (a
  V with a kink at the apex :math:`c \sim U(0.35, 0.65)`), both with :math:`d \sim U` (``depth_range``);
* mesh: the boundary polygon is discretised with spacing :math:`\approx h` (arc length on the notches), then
  meshed by ``triangle`` with switches ``pq30a{h^2/2}`` (min angle 30 degrees). The default sizes give about
  2.0k-3.7k nodes.

Physics: plane-strain linear elasticity, P1 triangles (scikit-fem, ``ElementVector(ElementTriP1())``), Young's
modulus ``young`` (1), Poisson ratio :math:`\nu \sim U(0.2, 0.45)`, a uniform traction :math:`P \sim U(0.5, 1.5)`
in :math:`+y` on the top edge, :math:`u_2 = 0` on the bottom edge (roller) and :math:`u_1 = 0` at the bottom-left
corner (removes the rigid translation).

Outputs per sample:

* input scalars ``P`` (traction) and ``nu`` (Poisson ratio), in that order (:data:`IN_SCALAR_NAMES`);
* nodal fields ``U1``, ``U2`` (displacements), ``von_mises`` and ``sigma22`` (:data:`FIELD_NAMES`). The stresses are
  constant per element for P1; they are recovered to the nodes by the **L2 projection** onto P1 (consistent mass
  matrix; ``recovery="l2"``, the default and the spec's choice) or by area-weighted averaging of the adjacent
  elements (``recovery="average"``). The von Mises stress uses the plane-strain out-of-plane stress
  :math:`\sigma_{33} = \nu(\sigma_{11} + \sigma_{22})`;
* output scalars ``max_vm`` (maximum of the nodal von Mises field), ``mean_U2_top`` (:math:`\int_{top} u_2\,ds` divided
  by the top edge length) and ``compliance`` (:math:`f \cdot u`, the work of the traction) (:data:`OUT_SCALAR_NAMES`).

Boundary start node: **node 0 is the bottom-left corner** :math:`(0, 0)` in every mesh. It is also the node that
the MMGP reference renumbering picks (smallest :math:`x`, ties broken by smallest :math:`y`), and the reference's
first step (to the neighbour with the smaller :math:`y`) walks along the bottom edge, i.e. counter-clockwise, which
is the orientation of :attr:`NotchedPlateSample.boundary_loop`. Eight geometric landmarks (the four corners and the
four notch ends, all genuine kinks of the boundary) are exposed as :attr:`NotchedPlateSample.landmarks`.

``triangle`` and ``scikit-fem`` are optional dependencies (``pip install gpgeom[fem]``), imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gpgeom._cache import cache_dir as gpgeom_cache_dir
from gpgeom._cache import read_npz, write_npz
from gpgeom._progress import progress_bar, resolve_progress
from gpgeom.datasets._samples import SampleArrays
from gpgeom.engine.parallel import jobs_executor, map_items
from gpgeom.geometry.boundary import boundary_loops
from gpgeom.geometry.mesh import Mesh

__all__ = [
    "DATASET_VERSION",
    "DEFAULT_OPTIONS",
    "FIELD_NAMES",
    "IN_SCALAR_NAMES",
    "LANDMARK_NAMES",
    "NOTCH_FAMILIES",
    "OUT_SCALAR_NAMES",
    "NotchShape",
    "NotchedPlateSample",
    "PlaneStrainSolution",
    "PlateShape",
    "boundary_loop",
    "generate_notched_plates",
    "load_notched_plates",
    "make_notched_plate",
    "mesh_plate",
    "plate_boundary",
    "sample_plate_shape",
    "save_notched_plates",
    "solve_plane_strain",
    "stack_scalars",
]

#: Bumped whenever the generated data would change; part of the cache key.
DATASET_VERSION = "notched-plate-v1"

IN_SCALAR_NAMES: tuple[str, ...] = ("P", "nu")
FIELD_NAMES: tuple[str, ...] = ("U1", "U2", "von_mises", "sigma22")
OUT_SCALAR_NAMES: tuple[str, ...] = ("max_vm", "mean_U2_top", "compliance")
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

#: Options of :func:`generate_notched_plates` (passed as keyword arguments) and their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "depth_range": (0.05, 0.30),  # range of the notch depth scale d
    "max_depth": 0.45,  # notches deeper than this are redrawn
    "harmonic_amplitude": 0.35,  # a in the depth profile
    "n_harmonics": 4,  # harmonics k = 2 .. n_harmonics + 1
    "nu_range": (0.2, 0.45),  # Poisson ratio
    "load_range": (0.5, 1.5),  # top traction P
    "young": 1.0,  # Young's modulus
    "min_angle": 30.0,  # triangle's quality switch q
    "recovery": "l2",  # nodal stress recovery: "l2" or "average"
    "notch_family": "smooth",  # notch profiles: "smooth" (the family above), "half_ellipse" or "wedge"
}

#: The notch families of :func:`generate_notched_plates` (``notch_family``) and of :class:`NotchShape` (``kind``).
NOTCH_FAMILIES: tuple[str, ...] = ("smooth", "half_ellipse", "wedge")
#: Range of the apex position :math:`c` of a wedge notch.
WEDGE_APEX_RANGE = (0.35, 0.65)

WIDTH = 1.0
HEIGHT = 2.0
NOTCH_SPAN = (0.4, 1.6)

_FEM_HINT = "The NotchedPlate2d generator needs the optional FE dependencies: run `pip install gpgeom[fem]`."


def _import_triangle():
    try:
        import triangle
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Could not import `triangle` (the mesher). {_FEM_HINT}") from err
    return triangle


def _import_skfem():
    try:
        import skfem
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Could not import `skfem` (scikit-fem, the FE solver). {_FEM_HINT}") from err
    return skfem


# ----------------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------------


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


def sample_plate_shape(rng: np.random.Generator, **options: Any) -> PlateShape:
    r"""Draw a random :class:`PlateShape` (left and right notches independent).

    Args:
        rng: The random generator.
        **options: Any of ``depth_range``, ``max_depth``, ``harmonic_amplitude``, ``n_harmonics``, ``notch_family``
            (see :data:`DEFAULT_OPTIONS`).
    """
    opts = _check_options(options)
    return _draw_shape(rng, opts)


def _draw_notch(rng: np.random.Generator, opts: Mapping[str, Any]) -> NotchShape:
    lo, hi = opts["depth_range"]
    family = opts.get("notch_family", "smooth")
    if family == "half_ellipse":  # maximal depth d <= depth_range[1] <= max_depth: never redrawn
        return NotchShape(float(rng.uniform(lo, hi)), kind="half_ellipse")
    if family == "wedge":
        depth = float(rng.uniform(lo, hi))
        return NotchShape(depth, kind="wedge", apex=float(rng.uniform(*WEDGE_APEX_RANGE)))
    for _ in range(1000):
        depth = float(rng.uniform(lo, hi))
        coefs = tuple(float(b) for b in rng.standard_normal(int(opts["n_harmonics"])))
        notch = NotchShape(depth, coefs, float(opts["harmonic_amplitude"]))
        if notch.max_depth() <= opts["max_depth"]:
            return notch
    raise RuntimeError("Could not draw a notch within `max_depth` in 1000 tries; increase `max_depth`.")


def _draw_shape(rng: np.random.Generator, opts: Mapping[str, Any]) -> PlateShape:
    left = _draw_notch(rng, opts)
    right = _draw_notch(rng, opts)
    return PlateShape(left, right)


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
    triangle = _import_triangle()
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


# ----------------------------------------------------------------------------------------------------------------
# FE solver
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PlaneStrainSolution:
    r"""The result of :func:`solve_plane_strain`.

    Attributes:
        fields: Nodal fields ``U1``, ``U2``, ``von_mises``, ``sigma22``, each ``(n,)``.
        out_scalars: ``max_vm``, ``mean_U2_top``, ``compliance``.
        element_stress: Element stresses ``(m, 4)``: columns sigma11, sigma22, sigma12, sigma33.
        stiffness: The assembled stiffness matrix ``(2n, 2n)`` before boundary conditions (``return_system``).
        load_vector: The assembled load vector ``(2n,)`` (``return_system``).
        displacement: The solution as a DOF vector ``(2n,)`` in the numbering of ``stiffness`` (``return_system``).
        dirichlet_dofs: The constrained DOFs (``return_system``).
    """

    fields: dict[str, np.ndarray]
    out_scalars: dict[str, float]
    element_stress: np.ndarray
    stiffness: Any = None
    load_vector: np.ndarray | None = None
    displacement: np.ndarray | None = None
    dirichlet_dofs: np.ndarray | None = None


def solve_plane_strain(
    points: np.ndarray,
    triangles: np.ndarray,
    *,
    load: float,
    nu: float,
    young: float = 1.0,
    recovery: str = "l2",
    return_system: bool = False,
) -> PlaneStrainSolution:
    r"""Solve plane-strain linear elasticity on a P1 triangle mesh with scikit-fem.

    Boundary conditions: traction ``(0, load)`` on the top edge (nodes at the largest ``y``), ``u2 = 0`` on the
    bottom edge (nodes at the smallest ``y``), ``u1 = 0`` at the bottom node with the smallest ``x``. The other edges
    are traction free.

    Args:
        points: Node coordinates, shape ``(n, 2)``.
        triangles: Node indices, shape ``(m, 3)``.
        load: The traction magnitude :math:`P`.
        nu: Poisson's ratio, in ``(-1, 0.5)``.
        young: Young's modulus (> 0).
        recovery: Nodal stress recovery, ``"l2"`` (L2 projection onto P1, consistent mass) or ``"average"``
            (area-weighted average of the adjacent elements).
        return_system: Also return the stiffness matrix, load vector and DOF vector.

    Returns:
        A :class:`PlaneStrainSolution`.
    """
    if recovery not in ("l2", "average"):
        raise ValueError(f"Unknown `recovery`={recovery!r}; expected 'l2' or 'average'.")
    if not -1.0 < nu < 0.5:
        raise ValueError(f"`nu` must lie in (-1, 0.5), got {nu!r}.")
    if not young > 0:
        raise ValueError(f"`young` must be > 0, got {young!r}.")
    skfem = _import_skfem()
    from skfem.helpers import ddot, sym_grad, trace

    pts = np.asarray(points, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.int64)
    lam = young * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    mu = young / (2.0 * (1.0 + nu))

    mesh = skfem.MeshTri(np.ascontiguousarray(pts.T), np.ascontiguousarray(tri.T))
    basis = skfem.Basis(mesh, skfem.ElementVector(skfem.ElementTriP1()))

    @skfem.BilinearForm
    def elasticity(u, v, _):
        eu, ev = sym_grad(u), sym_grad(v)
        return 2.0 * mu * ddot(eu, ev) + lam * trace(eu) * trace(ev)

    @skfem.LinearForm
    def traction(v, _):
        return load * v[1]

    span = pts[:, 1].max() - pts[:, 1].min()
    tol = 1e-9 * max(span, 1.0)
    ymin, ymax = pts[:, 1].min(), pts[:, 1].max()
    top_facets = mesh.facets_satisfying(lambda x: x[1] > ymax - tol, boundaries_only=True)
    stiffness = elasticity.assemble(basis)
    f = traction.assemble(skfem.FacetBasis(mesh, basis.elem, facets=top_facets))

    bottom = np.flatnonzero(pts[:, 1] < ymin + tol)
    pin = bottom[np.argmin(pts[bottom, 0])]
    dofs = basis.nodal_dofs  # (2, n): row 0 the u1 DOFs, row 1 the u2 DOFs
    dirichlet = np.unique(np.concatenate([dofs[1, bottom], dofs[0, [pin]]]))
    u = skfem.solve(*skfem.condense(stiffness, f, D=dirichlet))

    # Element strains and stresses (P1: constant per element).
    gu = sym_grad(basis.interpolate(u))  # (2, 2, m, nqp)
    e11, e22, e12 = gu[0, 0][:, 0], gu[1, 1][:, 0], gu[0, 1][:, 0]
    tr = e11 + e22
    s11 = 2.0 * mu * e11 + lam * tr
    s22 = 2.0 * mu * e22 + lam * tr
    s12 = 2.0 * mu * e12
    s33 = lam * tr  # = nu (s11 + s22)
    vm = np.sqrt(0.5 * ((s11 - s22) ** 2 + (s22 - s33) ** 2 + (s33 - s11) ** 2) + 3.0 * s12**2)
    # skfem keeps the node numbering but may permute the vertices inside each element: use its t.
    nodal = _recover(pts, mesh.t.T, np.column_stack([vm, s22]), recovery)

    u1, u2 = u[dofs[0]], u[dofs[1]]
    compliance = float(f @ u)
    # Mean of u2 over the top edge (trapezoidal rule, exact for P1 on straight edges).
    fac = mesh.facets[:, top_facets]
    lengths = np.hypot(*(pts[fac[1]] - pts[fac[0]]).T)
    mean_top = float(np.sum(lengths * 0.5 * (u2[fac[0]] + u2[fac[1]])) / np.sum(lengths))

    fields = {"U1": u1, "U2": u2, "von_mises": nodal[:, 0], "sigma22": nodal[:, 1]}
    scalars = {"max_vm": float(nodal[:, 0].max()), "mean_U2_top": mean_top, "compliance": compliance}
    sol = PlaneStrainSolution(fields, scalars, np.column_stack([s11, s22, s12, s33]))
    if return_system:
        sol.stiffness, sol.load_vector, sol.displacement, sol.dirichlet_dofs = stiffness, f, u, dirichlet
    return sol


def _recover(points: np.ndarray, tri: np.ndarray, values: np.ndarray, recovery: str) -> np.ndarray:
    r"""Element-constant ``values`` ``(m, c)`` to nodal values ``(n, c)`` by L2 projection or area averaging."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    n = len(points)
    p0, p1, p2 = points[tri[:, 0]], points[tri[:, 1]], points[tri[:, 2]]
    area = 0.5 * np.abs((p1[:, 0] - p0[:, 0]) * (p2[:, 1] - p0[:, 1]) - (p1[:, 1] - p0[:, 1]) * (p2[:, 0] - p0[:, 0]))
    # Right-hand side int(g phi_i) = sum over elements of g_e area_e / 3 (same sums serve the averaging).
    rhs = np.zeros((n, values.shape[1]))
    for j in range(3):
        np.add.at(rhs, tri[:, j], values * (area / 3.0)[:, None])
    if recovery == "average":
        weight = np.bincount(tri.ravel(), weights=np.repeat(area / 3.0, 3), minlength=n)
        return rhs / weight[:, None]
    # P1 consistent mass matrix: area/12 * [[2,1,1],[1,2,1],[1,1,2]].
    rows = np.repeat(tri, 3, axis=1).ravel()
    cols = np.tile(tri, (1, 3)).ravel()
    local = np.where(np.eye(3, dtype=bool).ravel(), 2.0, 1.0)
    data = (area[:, None] / 12.0 * local[None, :]).ravel()
    mass = sp.csc_matrix((data, (rows, cols)), shape=(n, n))
    return splu(mass).solve(rhs)


# ----------------------------------------------------------------------------------------------------------------
# Samples and datasets
# ----------------------------------------------------------------------------------------------------------------


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


def _generate_item(config: tuple[int, tuple[float, float], Mapping[str, Any]], index: int) -> NotchedPlateSample:
    seed, mesh_size, opts = config
    return _generate_one(seed, index, mesh_size, opts)


def _generate_one(seed: int, index: int, mesh_size: tuple[float, float], opts: Mapping[str, Any]):
    rng = np.random.default_rng([seed, index])
    h = float(rng.uniform(*mesh_size)) if mesh_size[0] < mesh_size[1] else float(mesh_size[0])
    shape = _draw_shape(rng, opts)
    nu = float(rng.uniform(*opts["nu_range"]))
    load = float(rng.uniform(*opts["load_range"]))
    return make_notched_plate(
        shape,
        h,
        load=load,
        nu=nu,
        young=float(opts["young"]),
        min_angle=float(opts["min_angle"]),
        recovery=opts["recovery"],
    )


def _check_range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (low, high) of numbers, got {value!r}.") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"`{name}` must satisfy {lo} <= low <= high <= {hi}, got {value!r}.")
    return a, b


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(map(repr, DEFAULT_OPTIONS))}."
        )
    opts = {**DEFAULT_OPTIONS, **options}
    opts["depth_range"] = _check_range("depth_range", opts["depth_range"], 0.0, 0.49)
    opts["nu_range"] = _check_range("nu_range", opts["nu_range"], -0.99, 0.499)
    opts["load_range"] = _check_range("load_range", opts["load_range"], -1e12, 1e12)
    for name, lo, hi in (("max_depth", 0.0, 0.49), ("harmonic_amplitude", 0.0, 1e3), ("min_angle", 0.0, 34.0)):
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ValueError(f"`{name}` must be a number in [{lo}, {hi}], got {value!r}.")
        opts[name] = float(value)
    if opts["max_depth"] < opts["depth_range"][0]:
        raise ValueError("`max_depth` must be at least the lower end of `depth_range`.")
    n_h = opts["n_harmonics"]
    if isinstance(n_h, bool) or not isinstance(n_h, int) or n_h < 0:
        raise ValueError(f"`n_harmonics` must be an int >= 0, got {n_h!r}.")
    young = opts["young"]
    if isinstance(young, bool) or not isinstance(young, int | float) or not young > 0:
        raise ValueError(f"`young` must be a number > 0, got {young!r}.")
    opts["young"] = float(young)
    if opts["recovery"] not in ("l2", "average"):
        raise ValueError(f"Unknown `recovery`={opts['recovery']!r}; expected 'l2' or 'average'.")
    if opts["notch_family"] not in NOTCH_FAMILIES:
        raise ValueError(f"Unknown `notch_family`={opts['notch_family']!r}; expected one of {NOTCH_FAMILIES}.")
    if opts["notch_family"] != "smooth" and opts["max_depth"] < opts["depth_range"][1]:
        raise ValueError("`max_depth` must be at least the upper end of `depth_range` for these notch families.")
    return opts


def _check_mesh_size(mesh_size: Any) -> tuple[float, float]:
    if isinstance(mesh_size, int | float) and not isinstance(mesh_size, bool):
        mesh_size = (mesh_size, mesh_size)
    lo, hi = _check_range("mesh_size", mesh_size, 0.0, 1.0)
    if lo < 0.004:
        raise ValueError(f"`mesh_size` must be >= 0.004 (about 10^6 nodes), got {mesh_size!r}.")
    return lo, hi


def generate_notched_plates(
    n_samples: int,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    mesh_size: float | tuple[float, float] = (0.028, 0.036),
    progress: bool | None = None,
    *,
    use_cache: bool = True,
    n_jobs: int = 1,
    executor: Executor | None = None,
    **options: Any,
) -> list[NotchedPlateSample]:
    r"""Generate (or load from the disk cache) ``n_samples`` NotchedPlate2d samples.

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the first ``k`` samples do not depend on
    ``n_samples`` and different seeds give independent streams (use e.g. ``seed=0`` for training and ``seed=1`` for
    testing).

    Args:
        n_samples: Number of samples (>= 1).
        seed: Non-negative integer seed.
        cache_dir: Cache directory; ``None`` means gpgeom's cache (:func:`gpgeom._cache.cache_dir`:
            ``$GPGEOM_CACHE`` or ``~/.cache/gpgeom``). One ``.npz`` file per dataset, keyed by every parameter and
            :data:`DATASET_VERSION`.
        mesh_size: The boundary spacing ``h``: a range ``(low, high)`` drawn per sample, or one number. The default
            gives about 2.0k-3.7k nodes; ``0.1`` gives about 300 nodes.
        progress: A progress bar (tqdm) and a timing line while generating: ``True``, ``False`` or ``None``
            (gpgeom's rule: shown in a terminal or notebook, not in logs or tests; :mod:`gpgeom._progress`).
        use_cache: Read and write the cache.
        n_jobs: Shorthand for ``executor=ProcessPoolExecutor(n_jobs)`` (opened and closed by the call; 1: serial).
        executor: A ``concurrent.futures.Executor`` that runs the samples' finite-element solves (e.g.
            ``dask.distributed.Client(...).get_executor()``; :mod:`gpgeom.engine.parallel`), several samples per
            task. The samples are identical whatever runs them: sample ``i`` depends on ``(seed, i)`` only.
        **options: Overrides of :data:`DEFAULT_OPTIONS`; an unknown name raises :class:`ValueError`.
            ``notch_family="half_ellipse"`` or ``"wedge"`` draws notches of another shape family (out-of-distribution
            test sets for models trained on the default ``"smooth"`` family); the depth, mesh size and scalars are
            drawn from the same ranges.

    Returns:
        A list of :class:`NotchedPlateSample`.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an int >= 1, got {n_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"`n_jobs` must be an int >= 1, got {n_jobs!r}.")
    if executor is not None and n_jobs != 1:
        raise ValueError("Pass either `executor` or `n_jobs`, not both.")
    n_samples, seed = int(n_samples), int(seed)
    h_range = _check_mesh_size(mesh_size)
    opts = _check_options(options)

    path = None
    if use_cache:
        config = {"version": DATASET_VERSION, "n_samples": n_samples, "seed": seed, "mesh_size": h_range}
        # the notch family enters the key only when it is not the default, so the keys of the smooth datasets stay
        config.update({k: opts[k] for k in sorted(opts) if k != "notch_family" or opts[k] != "smooth"})
        text = json.dumps(config, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        root = gpgeom_cache_dir(root=cache_dir)
        path = root / f"notched_plate_{key}.npz"
        if path.exists():
            try:
                return load_notched_plates(path, _expect_config=text)
            except (OSError, ValueError, KeyError) as err:
                print(f"gpgeom: ignoring unreadable cache {path} ({err}); regenerating.", file=sys.stderr)

    t0 = time.perf_counter()
    progress = resolve_progress(progress)
    with jobs_executor(executor, n_jobs) as ex:
        samples = _run_generation(n_samples, seed, h_range, opts, progress, ex)
    elapsed = time.perf_counter() - t0
    if progress:
        print(
            f"gpgeom: generated {n_samples} notched plates in {elapsed:.1f} s ({elapsed / n_samples:.3f} s/sample, "
            f"{np.mean([s.n_nodes for s in samples]):.0f} nodes on average).",
            file=sys.stderr,
        )
    if path is not None:
        save_notched_plates(samples, path, _config=text)
    return samples


def _run_generation(n, seed, h_range, opts, progress, executor) -> list[NotchedPlateSample]:
    bar = progress_bar(total=n, desc="notched plates", unit="sample", progress=progress) if progress else None
    try:
        return map_items(
            executor, _generate_item, range(n), (seed, h_range, opts), on_chunk=bar.update if bar is not None else None
        )
    finally:
        if bar is not None:
            bar.close()


# ----------------------------------------------------------------------------------------------------------------
# Storage (one npz per dataset; ragged arrays concatenated with per-sample counts)
# ----------------------------------------------------------------------------------------------------------------


def save_notched_plates(samples: Sequence[NotchedPlateSample], path: str | os.PathLike, *, _config: str = "") -> Path:
    r"""Save samples to one ``.npz`` file (written atomically). Returns the path."""
    arrays: dict[str, np.ndarray] = {
        "version": np.array(DATASET_VERSION),
        "config": np.array(_config),
        "n_points": np.array([len(s.points) for s in samples], dtype=np.int64),
        "n_triangles": np.array([len(s.triangles) for s in samples], dtype=np.int64),
        "n_boundary": np.array([len(s.boundary_loop) for s in samples], dtype=np.int64),
        "points": np.concatenate([s.points for s in samples]),
        "triangles": np.concatenate([s.triangles for s in samples]),
        "boundary_loop": np.concatenate([s.boundary_loop for s in samples]),
        "boundary_start": np.array([s.boundary_start for s in samples], dtype=np.int64),
        "landmarks": np.stack([s.landmarks for s in samples]),
        "mesh_size": np.array([s.mesh_size for s in samples]),
        "in_scalars": stack_scalars(samples, "in"),
        "out_scalars": stack_scalars(samples, "out"),
        "notch_depth": np.array([[s.shape.left.depth, s.shape.right.depth] for s in samples]),
        "notch_amplitude": np.array([[s.shape.left.amplitude, s.shape.right.amplitude] for s in samples]),
        "notch_coefs": np.array([[s.shape.left.coefs, s.shape.right.coefs] for s in samples], dtype=np.float64),
        "notch_kind": np.array([[s.shape.left.kind, s.shape.right.kind] for s in samples], dtype=np.str_),
        "notch_apex": np.array([[s.shape.left.apex, s.shape.right.apex] for s in samples]),
    }
    for name in FIELD_NAMES:
        arrays[f"field_{name}"] = np.concatenate([s.fields[name] for s in samples])
    return write_npz(path, arrays)


def load_notched_plates(path: str | os.PathLike, *, _expect_config: str | None = None) -> list[NotchedPlateSample]:
    r"""Load samples saved by :func:`save_notched_plates` (or by the cache of :func:`generate_notched_plates`)."""
    data = read_npz(path, DATASET_VERSION, _expect_config)
    cuts = {k: np.concatenate([[0], np.cumsum(data[f"n_{k}"])]) for k in ("points", "triangles", "boundary")}
    samples = []
    coefs = data["notch_coefs"]
    n = len(data["n_points"])
    kinds = data["notch_kind"] if "notch_kind" in data else np.full((n, 2), "smooth")  # files before the families
    apex = data["notch_apex"] if "notch_apex" in data else np.full((n, 2), 0.5)
    for i in range(n):
        p0, p1 = cuts["points"][i : i + 2]
        t0, t1 = cuts["triangles"][i : i + 2]
        b0, b1 = cuts["boundary"][i : i + 2]
        shape = PlateShape(
            *(
                NotchShape(
                    float(data["notch_depth"][i, j]),
                    tuple(float(c) for c in coefs[i, j]),
                    float(data["notch_amplitude"][i, j]),
                    str(kinds[i, j]),
                    float(apex[i, j]),
                )
                for j in range(2)
            )
        )
        samples.append(
            NotchedPlateSample(
                points=data["points"][p0:p1],
                triangles=data["triangles"][t0:t1],
                in_scalars=dict(zip(IN_SCALAR_NAMES, map(float, data["in_scalars"][i]))),
                fields={k: data[f"field_{k}"][p0:p1] for k in FIELD_NAMES},
                out_scalars=dict(zip(OUT_SCALAR_NAMES, map(float, data["out_scalars"][i]))),
                boundary_start=int(data["boundary_start"][i]),
                boundary_loop=data["boundary_loop"][b0:b1],
                landmarks=data["landmarks"][i],
                mesh_size=float(data["mesh_size"][i]),
                shape=shape,
            )
        )
    return samples
