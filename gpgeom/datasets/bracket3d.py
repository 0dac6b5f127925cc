r"""Bracket3d: a seeded family of 3D cantilever brackets with random smooth shape changes, solved by P2 FEM.

The 3D counterpart of NotchedPlate2d (:mod:`gpgeom.datasets.notched_plate`) for MMGP (Casenave et al., NeurIPS
2023, arXiv:2305.12871) in three dimensions. Each sample starts from the reference block
:math:`[0, L] \times [0, H] \times [0, W]` (:data:`EXTENT`, ``(3, 1, 0.6)``), meshed as a *structured* tetrahedral
mesh of :math:`n_x \times n_y \times n_z` cubes (each cut into six tetrahedra around its main diagonal, Kuhn's
subdivision), with a random resolution, so node counts and connectivity differ from sample to sample. The nodes are
then moved by a random smooth map :math:`\varphi`, not described by a few parameters:

.. math::

    \varphi(X) = \bigl(X_1,\; c(X_1) + t(X_1) (X_2 - H/2) + \beta (X_1/L)^2,\; W/2 + t(X_1)(X_3 - W/2)\bigr)
    + a\, \sum_{j} \bigl(b_j \odot s_j(X)\bigr),

a taper :math:`t(X_1) = 1 - \tau X_1 / L` (:math:`\tau \sim U(0, 0.35)`), a bend :math:`\beta \sim U(-0.3, 0.3)`, and
a random Fourier field: 3 x 3 x 2 low modes :math:`s_j(X) = \prod_k \sin`/:math:`\cos` of :math:`\pi m_k X_k /
\ell_k` with i.i.d. normal 3-vectors :math:`b_j` scaled by :math:`1/(1 + |m|^2)` and amplitude :math:`a = 0.04`.
Draws whose map inverts a tetrahedron (or shrinks one by more than 5x) are redrawn.

Physics: linear elasticity with quadratic (P2) tetrahedra on the sample's mesh (scikit-fem,
``ElementVector(ElementTetP2())``; the fields are kept at the mesh vertices, the P1 mesh a model sees), Young's modulus
:data:`YOUNG` (1000), Poisson ratio :math:`\nu \sim U(0.2, 0.4)`, clamped on the face :math:`X_1 = 0` and loaded on
the face :math:`X_1 = L` by a uniform traction :math:`P\,(0, -\cos\alpha, \sin\alpha)` with :math:`P \sim U(0.5, 1.5)`,
:math:`\alpha \sim U(-0.5, 0.5)` (faces found by the reference coordinates, so they follow the map).

Outputs per sample: input scalars ``P``, ``alpha``, ``nu`` (:data:`IN_SCALAR_NAMES`); nodal fields ``U1``, ``U2``,
``U3`` and ``von_mises`` (each element's stress at its vertices, averaged over the elements around a node with volume
weights) (:data:`FIELD_NAMES`); output scalars ``mean_vm`` (volume mean of von Mises), ``tip_U2`` (mean :math:`u_2`
over the loaded face, area-weighted) and ``compliance`` (:math:`f \cdot u`) (:data:`OUT_SCALAR_NAMES`). The maximum
of von Mises is not an output: it sits at the singular edges of the clamp and grows with the resolution.

Surface variants (:func:`surface_variant`): the loaded-side ``"top"`` face :math:`X_2 = H` as a disk-topology
triangle surface in 3D (for Floater morphing onto the unit disk), or the whole closed ``"boundary"`` surface, with
the fields restricted to their nodes.

Mesh convergence: linear tetrahedra lock in bending by an amount that depends on the resolution, which varies over
the family and is not a model input (on one map of the family: tip deflection 0.068, 0.071, 0.081 at 8x3x2, 10x3x3
and 12x4x3 cubes with P1). Quadratic tetrahedra give 0.1014, 0.1018, 0.1019 there and 0.1021 at 24x8x6: the
resolution range of :data:`RESOLUTION` leaves about 0.5 % of scatter in ``tip_U2``, ``compliance`` and ``mean_vm``
(locally more in ``von_mises`` at the clamp's singular edges). A sample takes about 0.5 s on one (shared) core.

Shape dimension: the family's shapes are not low-dimensional. A POD of the maps :math:`\varphi` sampled on one fixed
grid of reference points (200 samples of seed 0) keeps 47 %, 76 %, 87 %, 95 % and 99 % of the shape variance with 1,
4, 8, 16 and 32 modes, and the tip deflection depends on modes beyond the eighth: a linear fit of
:math:`\log|u_{tip}|` on :math:`\log P`, :math:`\log\cos\alpha`, :math:`\nu` and the first :math:`k` POD
coordinates reaches a held-out :math:`R^2` of 0.72 with :math:`k = 8` and 0.95 with :math:`k = 16`. A surrogate on this
family needs 16-24 shape coordinates, not 8.

``scikit-fem`` is an optional dependency (``pip install gpgeom[fem]``), imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gpgeom._cache import cache_dir as gpgeom_cache_dir
from gpgeom._cache import read_npz, write_npz
from gpgeom._progress import progress_bar, resolve_progress
from gpgeom._seeds import check_numpy_generator, check_seed
from gpgeom.datasets._optional import import_optional
from gpgeom.datasets._samples import SampleArrays
from gpgeom.engine.parallel import jobs_executor, map_items
from gpgeom.geometry.fem import _cell_measures
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing3d import boundary_surface

__all__ = [
    "DATASET_VERSION",
    "EXTENT",
    "FIELD_NAMES",
    "IN_SCALAR_NAMES",
    "OUT_SCALAR_NAMES",
    "REFERENCE_SHAPE",
    "BracketMap",
    "BracketSample",
    "bracket_geometry",
    "generate_brackets",
    "load_brackets",
    "make_bracket",
    "random_map",
    "reference_mesh",
    "save_brackets",
    "solve_elasticity_3d",
    "structured_tetra",
    "surface_variant",
]

#: Bumped whenever the generated data would change; part of the cache key.
DATASET_VERSION = "bracket3d-v2"
#: Reference block :math:`(L, H, W)`.
EXTENT: tuple[float, float, float] = (3.0, 1.0, 0.6)
IN_SCALAR_NAMES: tuple[str, ...] = ("P", "alpha", "nu")
FIELD_NAMES: tuple[str, ...] = ("U1", "U2", "U3", "von_mises")
OUT_SCALAR_NAMES: tuple[str, ...] = ("mean_vm", "tip_U2", "compliance")
#: Young's modulus of the samples (displacements of a few percent of the height).
YOUNG = 1000.0
#: Default ranges of the resolution (cubes per axis, inclusive): 108-260 vertices, 1.8-4.7 thousand P2 unknowns.
RESOLUTION = ((8, 12), (3, 4), (2, 3))


# ----------------------------------------------------------------------------------------------------------------
# mesh and shape
# ----------------------------------------------------------------------------------------------------------------
def structured_tetra(shape: Sequence[int], extent: Sequence[float] = EXTENT) -> tuple[np.ndarray, np.ndarray]:
    r"""Structured tetrahedral mesh of the block :math:`\prod_k [0, \ell_k]` with ``shape`` cubes per axis.

    Every cube is cut into the six tetrahedra of Kuhn's subdivision (vertex paths from corner 000 to corner 111
    along the axes, in the six orders), which is conforming across cube faces. Tetrahedra are positively oriented.

    Returns:
        ``(points, cells)``: ``(prod(shape + 1), 3)`` float64 and ``(6 prod(shape), 4)`` int64; node ``(i, j, k)``
        has index ``(i (n_y + 1) + j)(n_z + 1) + k``.
    """
    n = [int(v) for v in shape]
    if len(n) != 3 or min(n) < 1:
        raise ValueError(f"`shape` must be three ints >= 1, got {tuple(shape)!r}.")
    axes = [np.linspace(0.0, float(e), m + 1) for e, m in zip(extent, n)]
    X = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.arange(X.shape[0]).reshape(n[0] + 1, n[1] + 1, n[2] + 1)
    base = idx[:-1, :-1, :-1].ravel()
    step = np.array([(n[1] + 1) * (n[2] + 1), n[2] + 1, 1])
    cells = []
    for perm in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)):
        v = [base]
        cur = base
        for ax in perm:
            cur = cur + step[ax]
            v.append(cur)
        cells.append(np.stack(v, axis=1))
    C = np.concatenate(cells).astype(np.int64)
    neg = _cell_measures(X, C, signed=True) < 0
    C[neg] = C[neg][:, [1, 0, 2, 3]]
    return X, C


@dataclass(frozen=True)
class BracketMap:
    r"""The random smooth map :math:`\varphi` of the module doc: taper ``tau``, bend ``beta``, Fourier coefficients
    ``coefs`` ``(3, 3, 2, 3)`` (modes :math:`m \in \{0,1,2\}^2 \times \{0,1\}`, one 3-vector each), ``amplitude``."""

    tau: float
    beta: float
    coefs: np.ndarray
    amplitude: float = 0.04

    def __call__(self, X: np.ndarray) -> np.ndarray:
        r"""Mapped positions ``(n, 3)`` of reference positions ``X`` ``(n, 3)``."""
        L, H, W = EXTENT
        x1 = X[:, 0] / L
        t = 1.0 - self.tau * x1
        Y = np.column_stack([X[:, 0], H / 2 + t * (X[:, 1] - H / 2) + self.beta * x1**2, W / 2 + t * (X[:, 2] - W / 2)])
        for m1 in range(3):
            for m2 in range(3):
                for m3 in range(2):
                    s = (
                        np.cos(np.pi * m1 * X[:, 0] / L)
                        * np.cos(np.pi * m2 * X[:, 1] / H)
                        * np.cos(np.pi * m3 * X[:, 2] / W)
                    )
                    w = self.amplitude / (1.0 + m1 * m1 + m2 * m2 + m3 * m3)
                    Y += w * s[:, None] * self.coefs[m1, m2, m3][None, :]
        return Y


def random_map(rng: np.random.Generator) -> BracketMap:
    r"""Draw a :class:`BracketMap` (taper, bend and Fourier coefficients) from ``rng`` (a
    ``numpy.random.Generator``, drawn from in place)."""
    check_numpy_generator("rng", rng)
    return BracketMap(
        float(rng.uniform(0.0, 0.35)), float(rng.uniform(-0.3, 0.3)), rng.standard_normal((3, 3, 2, 3)), 0.04
    )


# ----------------------------------------------------------------------------------------------------------------
# solver
# ----------------------------------------------------------------------------------------------------------------
def _facet_ids(facets: np.ndarray, triangles: np.ndarray, n: int) -> np.ndarray:
    r"""Indices into ``facets`` ``(3, n_f)`` (skfem's layout) of the ``triangles`` ``(m, 3)`` (any vertex order)."""

    def key(T: np.ndarray) -> np.ndarray:
        T = np.sort(np.asarray(T, dtype=np.int64), axis=1)
        return (T[:, 0] * n + T[:, 1]) * n + T[:, 2]

    all_keys, want = key(facets.T), key(triangles)
    ids = np.nonzero(np.isin(all_keys, want))[0]
    if len(ids) != len(np.unique(want)):
        raise ValueError(
            f"`loaded_facets` must be boundary triangles of the mesh, got {len(triangles)} of which {len(ids)} are."
        )
    return ids


def solve_elasticity_3d(
    points: np.ndarray,
    cells: np.ndarray,
    clamped: np.ndarray,
    loaded_facets: np.ndarray,
    traction: Sequence[float],
    *,
    nu: float,
    young: float = 1.0,
    order: int = 2,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    r"""Linear elasticity on a tetrahedral mesh (scikit-fem, Lagrange elements of degree ``order``): :math:`u = 0`
    on the ``clamped`` nodes (and, for ``order=2``, on the edges and faces of the triangles they span), a uniform
    ``traction`` ``(3,)`` on the triangles ``loaded_facets`` ``(m_f, 3)``.

    ``order=2`` (quadratic tetrahedra, the default) is free of the shear locking of linear tetrahedra in bending
    (Zienkiewicz, Taylor & Zhu, *The Finite Element Method: Its Basis and Fundamentals*, 7th ed.): at the family's
    resolutions the tip deflection is within 1 % of the converged value, where ``order=1`` is 20-35 % too stiff
    and by a resolution-dependent amount. The stiffness is assembled with the degree-2 quadrature, exact for the
    product of two P1 strain fields on a straight tetrahedron, and solved by a sparse LU factorisation (SuperLU,
    minimum-degree ordering of :math:`A^\top + A`).

    Returns:
        ``(fields, scalars)``: values at the ``n`` nodes of ``points`` (the vertices; a P2 solution is sampled
        there) ``U1, U2, U3`` and ``von_mises`` (the element stresses evaluated at each element's vertices and
        averaged over the elements around a node with volume weights) ``(n,)``; ``mean_vm`` (volume mean of von
        Mises), ``tip_U2`` (:math:`\int u_2\,dA / A` over the loaded facets, exact for the FE solution) and
        ``compliance`` (:math:`f \cdot u = \int t \cdot u\,dA`).
    """
    if not -1.0 < nu < 0.5:
        raise ValueError(f"`nu` must lie in (-1, 0.5), got {nu!r}.")
    if not young > 0:
        raise ValueError(f"`young` must be > 0, got {young!r}.")
    if order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
    skfem = import_optional("skfem", "scikit-fem, the FE solver", "Bracket3d")
    from scipy.sparse.linalg import spsolve
    from skfem.helpers import ddot, sym_grad, trace

    lam = young * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))
    mu = young / (2.0 * (1.0 + nu))
    n = len(points)
    mesh = skfem.MeshTet(np.ascontiguousarray(points.T, dtype=np.float64), np.ascontiguousarray(cells.T))
    elem = skfem.ElementVector(skfem.ElementTetP2() if order == 2 else skfem.ElementTetP1())
    basis = skfem.Basis(mesh, elem, intorder=2 * order - 2 if order > 1 else 1)

    @skfem.BilinearForm
    def elasticity(u, v, _):
        eu, ev = sym_grad(u), sym_grad(v)
        return 2.0 * mu * ddot(eu, ev) + lam * trace(eu) * trace(ev)

    K = elasticity.assemble(basis)
    # unit tractions e_k on the loaded facets: G[k] @ u = int u_k dA (consistent loads, exact on flat triangles)
    bnd = mesh.boundary_facets()
    loaded_ids = bnd[_facet_ids(mesh.facets[:, bnd], loaded_facets, n)]
    fbasis = skfem.FacetBasis(mesh, elem, facets=loaded_ids, intorder=2 * order)
    G = np.stack([skfem.LinearForm(lambda v, _, k=k: v[k]).assemble(fbasis) for k in range(3)])
    area = float(skfem.Functional(lambda _: 1.0).assemble(fbasis))
    f = np.asarray(traction, dtype=np.float64) @ G
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(clamped, dtype=np.int64)] = True
    fixed_facets = np.nonzero(mask[mesh.facets].all(0))[0]
    D = np.union1d(basis.nodal_dofs[:, mask].ravel(), basis.get_dofs(facets=fixed_facets).all())
    A, b, u, inner = skfem.condense(K, f, D=D)
    u = np.array(u, dtype=np.float64)
    u[inner] = spsolve(A.tocsc(), b, permc_spec="MMD_AT_PLUS_A")
    # strains at the four vertices of every element (reference vertices as quadrature points)
    ref = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    vbasis = skfem.Basis(mesh, elem, quadrature=(ref, np.full(4, 1.0 / 24.0)))
    eps = sym_grad(vbasis.interpolate(u))  # (3, 3, m, 4)
    tr = eps[0, 0] + eps[1, 1] + eps[2, 2]
    eye = np.eye(3)[:, :, None, None]
    sig = 2.0 * mu * eps + lam * tr[None, None] * eye
    dev = sig - (sig[0, 0] + sig[1, 1] + sig[2, 2])[None, None] / 3.0 * eye
    vm = np.sqrt(1.5 * (dev**2).sum((0, 1)))  # (m, 4)
    # volume mean of von Mises with the 4-point degree-2 rule (the clamp-corner singularity is integrable, the
    # maximum is not resolution-independent)
    qbasis = skfem.Basis(mesh, elem, intorder=2)
    eq = sym_grad(qbasis.interpolate(u))
    trq = eq[0, 0] + eq[1, 1] + eq[2, 2]
    sq = 2.0 * mu * eq + lam * trq[None, None] * eye
    dq = sq - (sq[0, 0] + sq[1, 1] + sq[2, 2])[None, None] / 3.0 * eye
    dx = qbasis.dx  # (m, n_qp) quadrature weights times |det J|
    mean_vm = float((np.sqrt(1.5 * (dq**2).sum((0, 1))) * dx).sum() / dx.sum())
    t = mesh.t.T  # skfem may permute vertices inside an element; vertex j of element e is t[e, j]
    vol = _cell_measures(points, t)
    wsum = np.bincount(t.ravel(), weights=np.repeat(vol, 4), minlength=n)
    vm_n = np.bincount(t.ravel(), weights=(vol[:, None] * vm).ravel(), minlength=n) / wsum
    U = np.stack([u[basis.nodal_dofs[k]] for k in range(3)], axis=1)
    fields = {"U1": U[:, 0], "U2": U[:, 1], "U3": U[:, 2], "von_mises": vm_n}
    scalars = {"mean_vm": mean_vm, "tip_U2": float(G[1] @ u / area), "compliance": float(f @ u)}
    return fields, scalars


# ----------------------------------------------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class BracketSample(SampleArrays):
    r"""One Bracket3d sample.

    Attributes:
        points: Node coordinates ``(n, 3)``.
        cells: Tetrahedra ``(m, 4)``, positively oriented.
        reference: The node positions in the reference block before the map ``(n, 3)`` (diagnostics only: a model
            must not use them, the shape change is not parameterised).
        in_scalars: ``{"P", "alpha", "nu"}``.
        fields: Nodal ``U1``, ``U2``, ``U3``, ``von_mises``, each ``(n,)``.
        out_scalars: ``{"mean_vm", "tip_U2", "compliance"}``.
        resolution: Cubes per axis ``(3,)``.
    """

    points: np.ndarray
    cells: np.ndarray
    reference: np.ndarray
    in_scalars: dict[str, float]
    fields: dict[str, np.ndarray]
    out_scalars: dict[str, float]
    resolution: np.ndarray

    IN_SCALAR_NAMES: ClassVar[tuple[str, ...]] = IN_SCALAR_NAMES
    FIELD_NAMES: ClassVar[tuple[str, ...]] = FIELD_NAMES
    OUT_SCALAR_NAMES: ClassVar[tuple[str, ...]] = OUT_SCALAR_NAMES

    def mesh(self) -> Mesh:
        r"""The tetrahedral :class:`~gpgeom.geometry.mesh.Mesh` with the fields as point data."""
        return Mesh(self.points, self.cells, point_data=self.fields)


def _faces(X: np.ndarray, cells: np.ndarray, axis: int, value: float) -> np.ndarray:
    r"""Boundary triangles ``(m, 3)`` whose three nodes have reference coordinate ``axis`` equal to ``value``."""
    on = np.abs(X[:, axis] - value) < 1e-9
    local = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    F = cells[:, local].reshape(-1, 3)
    return F[on[F].all(1)]


def _draw_geometry(rng: np.random.Generator, resolution: Sequence[Sequence[int]]) -> tuple[np.ndarray, ...]:
    shape = [int(rng.integers(lo, hi + 1)) for lo, hi in resolution]
    X, C = structured_tetra(shape)
    v0 = _cell_measures(X, C, signed=True)
    for _ in range(100):
        P = random_map(rng)(X)
        if (_cell_measures(P, C, signed=True) > 0.2 * v0).all():
            return P, C, X, shape
    raise RuntimeError("Could not draw a non-inverting map in 100 tries.")  # pragma: no cover - never at 0.04


def _sample_rng(seed: int, index: int) -> np.random.Generator:
    r"""The generator of sample ``index`` of seed ``seed`` (both checked: ints >= 0; ``int(1.5)`` truncated before)."""
    check_seed("seed", seed, none=False)
    check_seed("index", index, none=False)
    return np.random.default_rng([int(seed), int(index), 3])


def bracket_geometry(
    seed: int, index: int, *, resolution: Sequence[Sequence[int]] = RESOLUTION
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The mesh of sample ``index`` of seed ``seed`` without the solve: ``(points (n, 3), cells (m, 4), reference
    (n, 3))``, identical to those of :func:`make_bracket` (``seed`` and ``index``: ints >= 0)."""
    P, C, X, _ = _draw_geometry(_sample_rng(seed, index), resolution)
    return P, C, X


#: Cubes per axis of :func:`reference_mesh` (edge about 0.17, finer than every sample).
REFERENCE_SHAPE: tuple[int, int, int] = (17, 6, 4)


def reference_mesh(shape: Sequence[int] = REFERENCE_SHAPE) -> Mesh:
    r"""The undeformed reference block :data:`EXTENT` as a structured tetrahedral mesh (:func:`structured_tetra`),
    the template to use as MMGP's common mesh on this family (``MMGP(morphing="rbf", common_mesh=reference_mesh())``):
    every sample is morphed onto it. ``shape``: cubes per axis; 18 x 7 x 5 = 630 nodes by default."""
    return Mesh(*structured_tetra(shape))


def make_bracket(seed: int, index: int, *, resolution: Sequence[Sequence[int]] = RESOLUTION) -> BracketSample:
    r"""Sample ``index`` of the family of seed ``seed`` (depends on ``(seed, index)`` only, both ints >= 0: drawn
    from ``numpy.random.default_rng([seed, index, 3])``, whatever the global random states, which it leaves
    untouched)."""
    rng = _sample_rng(seed, index)
    P, C, X, shape = _draw_geometry(rng, resolution)
    load, alpha, nu = float(rng.uniform(0.5, 1.5)), float(rng.uniform(-0.5, 0.5)), float(rng.uniform(0.2, 0.4))
    clamped = np.nonzero(np.abs(X[:, 0]) < 1e-9)[0]
    loaded = _faces(X, C, 0, EXTENT[0])
    traction = (0.0, -load * np.cos(alpha), load * np.sin(alpha))
    fields, scalars = solve_elasticity_3d(P, C, clamped, loaded, traction, nu=nu, young=YOUNG)
    return BracketSample(P, C, X, {"P": load, "alpha": alpha, "nu": nu}, fields, scalars, np.array(shape))


def surface_variant(sample: BracketSample, part: str = "top") -> Mesh:
    r"""A triangle surface in 3D cut from a sample, with its fields as point data (nodes renumbered).

    Args:
        sample: A :class:`BracketSample` (tetrahedral mesh with nodal fields).
        part: ``"top"``: the face :math:`X_2 = H` (one boundary loop, disk topology: Floater morphing onto the unit
            disk applies); ``"boundary"``: the whole boundary surface (closed, sphere topology: RBF morphing onto a
            template, :func:`gpgeom.geometry.morphing3d.morph_surface`).

    Returns:
        The surface, triangles oriented with their normals pointing out of the solid.
    """
    if part not in ("top", "boundary"):
        raise ValueError(f"`part` must be 'top' or 'boundary', got {part!r}.")
    _, F = boundary_surface(Mesh(sample.points, sample.cells))  # oriented outward
    if part == "top":
        F = F[(np.abs(sample.reference[F, 1] - EXTENT[1]) < 1e-9).all(1)]
    nodes = np.unique(F)
    new = np.full(sample.n_nodes, -1, dtype=np.int64)
    new[nodes] = np.arange(len(nodes))
    return Mesh(sample.points[nodes], new[F], point_data={k: v[nodes] for k, v in sample.fields.items()})


# ----------------------------------------------------------------------------------------------------------------
# datasets (generation, cache, storage)
# ----------------------------------------------------------------------------------------------------------------
def _generate_item(config: tuple[int, tuple], index: int) -> BracketSample:
    seed, resolution = config
    return make_bracket(seed, index, resolution=resolution)


def generate_brackets(
    n_samples: int,
    seed: int = 0,
    *,
    resolution: Sequence[Sequence[int]] = RESOLUTION,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    use_cache: bool = True,
    n_jobs: int = 1,
    executor: Executor | None = None,
) -> list[BracketSample]:
    r"""Generate (or load from the disk cache) ``n_samples`` Bracket3d samples.

    Args:
        n_samples: Number of samples (>= 1); sample ``i`` depends on ``(seed, i)`` only, so a larger dataset
            extends a smaller one.
        seed: Seed (int >= 0).
        resolution: Inclusive ranges ``((lo, hi),) * 3`` of cubes per axis (:data:`RESOLUTION`).
        cache_dir: Cache root (default gpgeom's cache, :func:`gpgeom._cache.cache_dir`); one ``.npz`` per dataset
            keyed by every parameter and :data:`DATASET_VERSION`.
        progress: Progress bar and timing line (``None``: gpgeom's rule, :mod:`gpgeom._progress`).
        use_cache: Read and write the cache.
        n_jobs, executor: Parallel generation (:func:`gpgeom.engine.parallel.jobs_executor`).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an int >= 1, got {n_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    try:
        res = tuple((int(lo), int(hi)) for lo, hi in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"`resolution` must be three (lo, hi) int pairs, got {resolution!r}.") from None
    if len(res) != 3 or any(not 1 <= lo <= hi for lo, hi in res):
        raise ValueError(f"`resolution` must be three (lo, hi) pairs with 1 <= lo <= hi, got {resolution!r}.")
    n_samples, seed = int(n_samples), int(seed)
    path = text = None
    if use_cache:
        text = json.dumps({"version": DATASET_VERSION, "n": n_samples, "seed": seed, "res": res}, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        path = gpgeom_cache_dir(root=cache_dir) / f"bracket3d_{key}.npz"
        if path.exists():
            try:
                return load_brackets(path, _expect_config=text)
            except (OSError, ValueError, KeyError) as err:
                print(f"gpgeom: ignoring unreadable cache {path} ({err}); regenerating.", file=sys.stderr)
    t0 = time.perf_counter()
    progress = resolve_progress(progress)
    bar = progress_bar(total=n_samples, desc="brackets", unit="sample", progress=progress) if progress else None
    try:
        with jobs_executor(executor, n_jobs) as ex:
            samples = map_items(
                ex,
                _generate_item,
                range(n_samples),
                (seed, res),
                on_chunk=bar.update if bar is not None else None,
                label="sample",
            )
    finally:
        if bar is not None:
            bar.close()
    if progress:
        dt = time.perf_counter() - t0
        print(f"gpgeom: generated {n_samples} brackets in {dt:.1f} s ({dt / n_samples:.3f} s/sample).", file=sys.stderr)
    if path is not None:
        save_brackets(samples, path, _config=text)
    return samples


def save_brackets(samples: Sequence[BracketSample], path: str | os.PathLike, *, _config: str | None = "") -> Path:
    r"""Save samples (a non-empty sequence) to one ``.npz`` file (written atomically; ragged arrays concatenated).
    Returns the path."""
    if isinstance(samples, BracketSample) or not len(samples):
        raise ValueError(f"`samples` must be a non-empty sequence of BracketSample, got {samples!r:.80}.")
    arrays: dict[str, Any] = {
        "version": np.array(DATASET_VERSION),
        "config": np.array(_config or ""),
        "n_points": np.array([s.n_nodes for s in samples], dtype=np.int64),
        "n_cells": np.array([len(s.cells) for s in samples], dtype=np.int64),
        "points": np.concatenate([s.points for s in samples]),
        "reference": np.concatenate([s.reference for s in samples]),
        "cells": np.concatenate([s.cells for s in samples]),
        "resolution": np.stack([s.resolution for s in samples]),
        "in_scalars": np.stack([s.in_scalar_array() for s in samples]),
        "out_scalars": np.stack([s.out_scalar_array() for s in samples]),
    }
    for name in FIELD_NAMES:
        arrays[f"field_{name}"] = np.concatenate([s.fields[name] for s in samples])
    return write_npz(path, arrays)


def load_brackets(path: str | os.PathLike, *, _expect_config: str | None = None) -> list[BracketSample]:
    r"""Load samples saved by :func:`save_brackets` (or by the cache of :func:`generate_brackets`)."""
    d = read_npz(path, DATASET_VERSION, _expect_config)
    cp = np.concatenate([[0], np.cumsum(d["n_points"])])
    cc = np.concatenate([[0], np.cumsum(d["n_cells"])])
    out = []
    for i in range(len(d["n_points"])):
        p0, p1, c0, c1 = cp[i], cp[i + 1], cc[i], cc[i + 1]
        out.append(
            BracketSample(
                d["points"][p0:p1],
                d["cells"][c0:c1],
                d["reference"][p0:p1],
                dict(zip(IN_SCALAR_NAMES, map(float, d["in_scalars"][i]))),
                {k: d[f"field_{k}"][p0:p1] for k in FIELD_NAMES},
                dict(zip(OUT_SCALAR_NAMES, map(float, d["out_scalars"][i]))),
                d["resolution"][i],
            )
        )
    return out
