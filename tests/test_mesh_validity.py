r"""Degenerate meshes are refused (or repaired) with a message naming the nodes or cell, and meshio meshes are
accepted wherever a mesh is: the geometry functions and MMGP's fit / predict / encode.

Truths: the defects are built by hand on a structured plate (a node collapsed onto its neighbour, a duplicate
point, a node moved onto the opposite edge of a triangle, a node moved across an edge); the repaired mesh is
compared with the clean one, and the meshio results with those of the same mesh given as a gpgeom Mesh.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_mmgp import _synthetic

from gpgeom.errors import MeshRepairWarning
from gpgeom.geometry.boundary import boundary_loops, renumber_for_parametrization
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh, as_mesh
from gpgeom.geometry.morphing import floater_disk
from gpgeom.geometry.transfer import interpolate, p1_transfer
from gpgeom.models.mmgp import MMGP

meshio = pytest.importorskip("meshio")


def plate(nx: int = 6, ny: int = 5) -> Mesh:
    x, y = np.meshgrid(np.linspace(0.0, 1.0, nx), np.linspace(0.0, 0.8, ny))
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    return Mesh(np.c_[x.ravel(), y.ravel()], np.r_[np.c_[a, b, c], np.c_[a, c, d]])


INTERIOR = 8  # an interior node of plate() (row 1, column 2)


def collapsed() -> Mesh:
    """Interior node 8 moved onto its neighbour 9: two nodes at one position, two zero-area triangles."""
    m = plate()
    P = m.points.copy()
    P[INTERIOR] = P[INTERIOR + 1]
    return Mesh(P, m.cells)


def duplicated() -> Mesh:
    """Node 8 split in two coincident copies (a crack): the cells of one side use the new node 30."""
    m = plate()
    C = m.cells.copy()
    rows = np.nonzero((C == INTERIOR).any(1))[0][:3]
    C[rows] = np.where(C[rows] == INTERIOR, m.n_points, C[rows])
    return Mesh(np.r_[m.points, m.points[INTERIOR : INTERIOR + 1]], C)


def zero_area() -> tuple[Mesh, int]:
    """Node 8 moved onto the opposite edge of one of its triangles: that triangle has zero area."""
    m = plate()
    c = int(np.nonzero((m.cells == INTERIOR).any(1))[0][0])
    a, b = (int(v) for v in m.cells[c] if v != INTERIOR)
    P = m.points.copy()
    P[INTERIOR] = 0.4 * P[a] + 0.6 * P[b]
    return Mesh(P, m.cells), c


def folded() -> Mesh:
    """Node 8 moved across the edge of one of its triangles: that triangle is inverted and overlaps a neighbour."""
    m = plate()
    P = m.points.copy()
    P[INTERIOR] += [0.3, 0.25]
    return Mesh(P, m.cells)


# ----------------------------------------------------------------------------------------------------------------
# Mesh.check / defects / repair
# ----------------------------------------------------------------------------------------------------------------
def test_valid_meshes_pass_in_any_vertex_order():
    m = plate()
    assert m.check() is m and m.is_valid()
    assert all(len(v) == 0 for v in m.defects().values())
    # clockwise or mixed vertex order is not a defect (the fold test is geometric)
    mixed = m.cells.copy()
    mixed[::2] = mixed[::2, ::-1]
    assert Mesh(m.points, m.cells[:, ::-1]).is_valid() and Mesh(m.points, mixed).is_valid()
    repaired, node_map = m.repair()
    assert repaired is m and np.array_equal(node_map, np.arange(m.n_points))


def test_collapsed_node_is_named():
    with pytest.raises(ValueError, match=r"Nodes 8 and 9 coincide .*collapsed node"):
        collapsed().check()


def test_duplicate_point_is_named():
    with pytest.raises(ValueError, match=r"Nodes 8 and 30 coincide .*duplicate point"):
        duplicated().check()
    # an unused duplicate too
    m = plate()
    with pytest.raises(ValueError, match=r"Nodes 3 and 30 coincide"):
        Mesh(np.r_[m.points, m.points[3:4]], m.cells).check()


def test_zero_area_triangle_is_named():
    mesh, c = zero_area()
    with pytest.raises(ValueError, match=rf"Cell {c} \(nodes \[.*\]\) has zero area"):
        mesh.check()
    assert mesh.defects()["degenerate_cells"].tolist() == [c]


def test_inverted_triangle_is_named():
    mesh = folded()
    signed = mesh.cell_volumes(signed=True)
    inverted = int(np.nonzero(signed < 0)[0][0])  # the plate is listed counter-clockwise
    with pytest.raises(ValueError, match=rf"Cell {inverted} \(nodes .*\) is inverted: it overlaps cell \d+"):
        mesh.check()
    with pytest.raises(ValueError, match="cannot unfold"):
        mesh.repair()


@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_folds_are_found_at_any_coordinate_scale(scale):
    # the fold test multiplied the two orientation determinants, which underflowed to 0 (no fold) for a plate of
    # size 1e-100 (a tetrahedral fold already at 1e-60); the defects of a scaled mesh are those of the unscaled one
    mesh = folded()
    expected = mesh.defects()["folded_cells"]
    assert len(expected)
    scaled = Mesh(mesh.points * scale, mesh.cells)
    np.testing.assert_array_equal(scaled.defects()["folded_cells"], expected)
    assert not scaled.is_valid()
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0.2, 0.2, 1], [0.3, 0.3, 0.5]])
    tets = np.array([[0, 1, 2, 3], [0, 1, 2, 4]])  # both apexes above the shared face: they overlap
    assert Mesh(pts, tets).defects()["folded_cells"].tolist() == [[0, 1]]
    assert Mesh(pts * scale**0.6, tets).defects()["folded_cells"].tolist() == [[0, 1]]


def test_repair_merges_nodes_and_splits_slivers():
    clean = plate()
    for mesh in (collapsed(), duplicated()):
        repaired, node_map = mesh.repair()
        assert repaired.is_valid()
        assert node_map.shape == (mesh.n_points,) and (node_map >= 0).all()
        np.testing.assert_array_equal(repaired.points[node_map], mesh.points)  # every node keeps its position
        np.testing.assert_allclose(repaired.cell_volumes().sum(), clean.cell_volumes().sum(), rtol=1e-12)
    rep, node_map = duplicated().repair()
    assert rep.n_points == clean.n_points and node_map[30] == node_map[INTERIOR]
    mesh, c = zero_area()
    rep, node_map = mesh.repair()
    assert rep.is_valid() and rep.n_points == mesh.n_points
    np.testing.assert_allclose(rep.cell_volumes().sum(), clean.cell_volumes().sum(), rtol=1e-12)
    # a sliver on the boundary: the triangle across its long edge is split, no hole opens
    m = plate()
    sliver = Mesh(np.r_[m.points, [[0.1, 0.0]]], np.r_[m.cells, [[0, 30, 1]]])
    with pytest.raises(ValueError, match=rf"Cell {m.n_cells} \(nodes \[0, 30, 1\]\) has zero area"):
        sliver.check()
    rep, _ = sliver.repair()
    assert rep.is_valid() and len(rep.boundary_loops()) == 1
    np.testing.assert_allclose(rep.cell_volumes().sum(), clean.cell_volumes().sum(), rtol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# MMGP refuses degenerate meshes, or repairs them and still answers on the original nodes
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def family():
    return _synthetic(12, seed=0)


@pytest.fixture(scope="module")
def model(family):
    M, mu, U, w = family
    return MMGP(n_modes_geometry=3, n_modes_fields=3, restarts=0, max_iter=30, floater_start=(0.0, 0.0)).fit(
        M, mu, U, w
    )


def _interior_node(mesh: Mesh) -> int:
    boundary = np.unique(mesh.boundary_facets()[0])
    d = ((mesh.points - mesh.points.mean(0)) ** 2).sum(1)
    d[boundary] = np.inf
    return int(np.argmin(d))


def _degenerate_plates(base: Mesh) -> dict[str, tuple[Mesh, int, int]]:
    r"""``name -> (mesh, node, twin)``: a degenerate copy of ``base`` and two of its nodes at one position."""
    P, C, n = base.points, base.cells, base.n_points
    j = _interior_node(base)
    nb = int(next(v for v in C[(C == j).any(1)][0] if v != j))
    moved = P.copy()
    moved[j] = P[nb]
    rows = np.nonzero((C == j).any(1))[0][:2]
    cracked = C.copy()
    cracked[rows] = np.where(C[rows] == j, n, C[rows])
    return {"collapsed": (Mesh(moved, C), j, nb), "duplicate": (Mesh(np.r_[P, P[j : j + 1]], cracked), n, j)}


def _folded_plate(base: Mesh) -> Mesh:
    r"""An interior node moved across the opposite edge of one of its triangles: that triangle is inverted."""
    j = _interior_node(base)
    a, b = (int(v) for v in base.cells[(base.cells == j).any(1)][0] if v != j)
    P = base.points.copy()
    P[j] += 1.4 * (0.5 * (P[a] + P[b]) - P[j])
    return Mesh(P, base.cells)


def test_mmgp_refuses_degenerate_meshes(model, family):
    M, mu, U, w = family
    for mesh, _, _ in _degenerate_plates(M[3]).values():
        with pytest.raises(ValueError, match=r"MMGP: mesh 0: Nodes \d+ and \d+ coincide.*repair_meshes=True"):
            model.predict([mesh], mu[:1])
        with pytest.raises(ValueError, match=r"MMGP: mesh 3: Nodes \d+ and \d+ coincide"):
            MMGP(restarts=0).fit(M[:3] + [mesh], mu[:4], U[:3] + [np.zeros((mesh.n_points, 2))], w[:4])
    with pytest.raises(ValueError, match=r"MMGP: mesh 1: Cell \d+ .* is inverted: it overlaps cell \d+"):
        model.encode([M[0], _folded_plate(M[1])], mu[:2])
    # the same with the repair on: a fold cannot be repaired
    model.repair_meshes = model._transfer.repair_meshes = True
    try:
        with pytest.raises(ValueError, match=r"MMGP: mesh 0: Cell \d+ .* is inverted"):
            model.encode([_folded_plate(M[1])], mu[:1])
    finally:
        model.repair_meshes = model._transfer.repair_meshes = False


def test_mmgp_repairs_degenerate_meshes_on_request(model, family):
    M, mu, U, w = family
    base = M[3]
    clean = model.predict([base], mu[3:4], return_std=True)
    model.repair_meshes = model._transfer.repair_meshes = True
    try:
        for name, (mesh, node, twin) in _degenerate_plates(base).items():
            with pytest.warns(MeshRepairWarning, match=r"mesh 0 is degenerate and was repaired.*coincide"):
                pred = model.predict([mesh], mu[3:4], return_std=True)
            assert pred.fields[0].shape == (mesh.n_points, 2)  # every original node gets its prediction
            # two nodes at one position get one prediction
            torch.testing.assert_close(pred.fields[0][node], pred.fields[0][twin], rtol=0, atol=1e-12)
            torch.testing.assert_close(pred.fields_std[0][node], pred.fields_std[0][twin], rtol=0, atol=1e-12)
            if name == "duplicate":  # the same geometry as the clean mesh: the same predictions
                n = base.n_points
                torch.testing.assert_close(pred.fields[0][:n], clean.fields[0], rtol=0, atol=1e-10)
                torch.testing.assert_close(pred.fields_std[0][:n], clean.fields_std[0], rtol=0, atol=1e-10)
        # a point no cell uses, in a mesh repaired for another reason: dropped, and predicted by P1 interpolation
        dup, _, _ = _degenerate_plates(base)["duplicate"]
        tri = base.cells[7]
        extra = Mesh(np.r_[dup.points, base.points[tri].mean(0, keepdims=True)], dup.cells)
        n = base.n_points
        with pytest.warns(MeshRepairWarning, match=rf"\({n} of {n + 2} nodes and"):
            pred = model.predict([extra], mu[3:4])
        torch.testing.assert_close(pred.fields[0][-1], pred.fields[0][tri].mean(0), rtol=0, atol=1e-12)
    finally:
        model.repair_meshes = model._transfer.repair_meshes = False
    # fit with a repaired training mesh: its fields are read on its original nodes
    bad, node, twin = _degenerate_plates(M[2])["duplicate"]
    fields = np.r_[U[2], U[2][twin : twin + 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeshRepairWarning)
        m2 = MMGP(n_modes_geometry=3, n_modes_fields=3, restarts=0, max_iter=30, floater_start=(0.0, 0.0),
                  repair_meshes=True).fit(M[:2] + [bad] + M[3:], mu, U[:2] + [fields] + U[3:], w)  # fmt: skip
    torch.testing.assert_close(m2.train_targets_, model.train_targets_, rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# meshio meshes wherever a mesh is
# ----------------------------------------------------------------------------------------------------------------
def _meshio_plate(mesh: Mesh, tmp_path: Path | None = None, ext: str = ".vtu"):
    pts = np.c_[mesh.points, np.zeros(mesh.n_points)]  # meshio's usual 3-column points
    m = meshio.Mesh(pts, [("triangle", np.asarray(mesh.cells))])
    if tmp_path is None:
        return m
    path = tmp_path / f"plate{ext}"
    meshio.write(str(path), m)
    return meshio.read(str(path))


@pytest.mark.parametrize("ext", [".vtu", ".msh"])
def test_geometry_functions_take_meshio_meshes(tmp_path, ext):
    mesh = plate()
    mio = _meshio_plate(mesh, tmp_path, ext)
    assert isinstance(mio, meshio.Mesh)
    conv = as_mesh(mio)
    np.testing.assert_array_equal(conv.points, mesh.points)
    np.testing.assert_array_equal(conv.cells, mesh.cells)
    assert (mass_matrix(mio) != mass_matrix(mesh)).nnz == 0
    q = np.array([[0.13, 0.21], [0.77, 0.6]])
    assert (p1_transfer(mio, q) != p1_transfer(mesh, q)).nnz == 0
    u = mesh.points @ [1.0, -2.0]
    np.testing.assert_array_equal(interpolate(mio, u, q), interpolate(mesh, u, q))
    assert [lp.tolist() for lp in boundary_loops(mio)] == [lp.tolist() for lp in boundary_loops(mesh)]
    perm, nb = renumber_for_parametrization(mio)
    perm2, nb2 = renumber_for_parametrization(mesh)
    assert nb == nb2 and np.array_equal(perm, perm2)
    np.testing.assert_array_equal(floater_disk(mio), floater_disk(mesh))
    with pytest.raises(TypeError, match=r"`mesh` must be a gpgeom Mesh, a meshio.Mesh"):
        mass_matrix(np.zeros((3, 2)))


def test_mmgp_takes_meshio_meshes(model, family, tmp_path):
    M, mu, U, w = family
    mio = [_meshio_plate(m, tmp_path if i % 2 else None) for i, m in enumerate(M)]  # half through a .vtu file
    m2 = MMGP(n_modes_geometry=3, n_modes_fields=3, restarts=0, max_iter=30, floater_start=(0.0, 0.0))
    m2.fit(mio, mu, U, w)
    torch.testing.assert_close(m2.train_targets_, model.train_targets_, rtol=0, atol=1e-12)
    torch.testing.assert_close(m2.encode(mio[:3], mu[:3]), model.encode(M[:3], mu[:3]), rtol=0, atol=1e-12)
    a, b = m2.predict(mio[4:6], mu[4:6]), model.predict(M[4:6], mu[4:6])
    for fa, fb in zip(a.fields, b.fields):
        torch.testing.assert_close(fa, fb, rtol=1e-9, atol=1e-9)
    common = MMGP(common_mesh=mio[5], restarts=0)
    assert isinstance(common.common_mesh, Mesh)
    with pytest.raises(TypeError, match=r"`meshes` must be a list of meshes"):
        model.predict(mio[0], mu[:1])


def test_surface_and_curve_measures_at_small_scales():
    # a triangle's area in 3D was the norm of the cross product, whose squares (size^4) underflowed: a surface of
    # size 1e-100 had zero areas and Mesh.check refused every triangle as collinear
    rng = np.random.default_rng(0)
    P = rng.normal(size=(6, 3))
    tri = np.array([[0, 1, 2], [0, 2, 3], [3, 4, 5]])
    ref = Mesh(P, tri).cell_volumes()
    lines = Mesh(P, tri[:, :2]).cell_volumes()
    for scale in (1e-150, 1e-100, 1e100):
        np.testing.assert_allclose(Mesh(P * scale, tri).cell_volumes() / scale**2, ref, rtol=1e-12)
        np.testing.assert_allclose(Mesh(P * scale, tri[:, :2]).cell_volumes() / scale, lines, rtol=1e-12)
    assert Mesh(P * 1e-100, tri).is_valid()


def test_a_flat_tetrahedron_is_not_sent_to_repair():
    # Mesh.repair() removes zero-area triangles only; the message of a zero-volume tetrahedron sent users there
    pts = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    mesh = Mesh(pts, np.array([[0, 1, 2, 4], [0, 1, 2, 3]]))  # the second lies in the plane z = 0
    with pytest.raises(ValueError, match=r"Cell 1 .* has zero volume .*Fix the mesh \(Mesh.repair\(\) removes"):
        mesh.check()
    with pytest.raises(ValueError, match="zero-area triangles only"):
        mesh.repair()
