r"""MMGP's transfer stage on 3D meshes: RBF volume morphing onto a tetrahedral common mesh, Floater and RBF on
triangle surfaces in 3D, and the 3D geometry POD."""

from __future__ import annotations

import numpy as np
import pytest

from gpgeom.datasets.bracket3d import random_map, structured_tetra
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing3d import boundary_surface
from gpgeom.models.mmgp.reduction import GeometryPOD
from gpgeom.models.mmgp.transfer import CommonMeshTransfer


def _block(seed: int, shape) -> tuple[Mesh, np.ndarray]:
    X, C = structured_tetra(shape)
    return Mesh(random_map(np.random.default_rng(seed))(X), C), X


def _lin(p: np.ndarray) -> np.ndarray:
    return 0.5 + p[:, 0] - 2.0 * p[:, 1] + 3.0 * p[:, 2]


def test_rbf_volume_transfer_is_exact_for_linear_fields_of_the_morphed_positions():
    common = Mesh(*structured_tetra((9, 4, 3)))
    tr = CommonMeshTransfer("rbf", "min_x", False)
    tr.set_common(common)
    np.testing.assert_array_equal(tr.common_morphed, common.points)
    mesh, _ = _block(0, (11, 5, 3))
    ops = tr.operators(mesh, "mesh 0")
    assert ops.proj.shape == (common.n_points, mesh.n_points)
    assert ops.inv_proj.shape == (mesh.n_points, common.n_points)
    # the morphed mesh fills the common block: a linear function of the morphed positions is carried exactly
    np.testing.assert_allclose(ops.proj @ _lin(ops.morphed), _lin(common.points), atol=1e-10)
    np.testing.assert_allclose(ops.inv_proj @ _lin(common.points), _lin(ops.morphed), atol=1e-10)
    # the geometry POD in 3D: coordinates (n, N_c, 3), the decode returns them
    shapes = [_block(s, (10, 4, 3))[0] for s in (1, 2, 3)]
    X = np.stack([tr.operators(m, f"mesh {i}").proj @ m.points for i, m in enumerate(shapes)])  # (3, N_c, 3)
    geo, xi = GeometryPOD.fit(X, common, tr.mass, 2, True, False)
    assert geo.mean.shape == (3 * common.n_points,)
    np.testing.assert_allclose(geo.decode(xi, 3), X, atol=1e-8)


def test_surface_transfers_floater_and_rbf():
    vol, ref = _block(4, (8, 4, 3))
    bn, bf = boundary_surface(vol)
    top = bf[(np.abs(ref[bf, 1] - 1.0) < 1e-9).all(1)]
    nodes = np.unique(top)
    new = np.full(vol.n_points, -1)
    new[nodes] = np.arange(len(nodes))
    patch = Mesh(vol.points[nodes], new[top])
    vol2, ref2 = _block(5, (10, 3, 4))
    bn2, bf2 = boundary_surface(vol2)
    top2 = bf2[(np.abs(ref2[bf2, 1] - 1.0) < 1e-9).all(1)]
    nodes2 = np.unique(top2)
    new2 = np.full(vol2.n_points, -1)
    new2[nodes2] = np.arange(len(nodes2))
    patch2 = Mesh(vol2.points[nodes2], new2[top2])
    for morphing in ("floater", "rbf"):
        tr = CommonMeshTransfer(morphing, "min_x", False)
        tr.set_common(patch)
        ops = tr.operators(patch2, "patch 2")
        np.testing.assert_allclose(np.asarray(ops.proj.sum(1)).ravel(), 1.0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(ops.inv_proj.sum(1)).ravel(), 1.0, atol=1e-12)
        # linear fields of the morphed positions carry over exactly where the morphed meshes overlap: Floater, both
        # ways inside the disk; RBF, from the common surface to the morphed nodes (which lie on it)
        f = ops.morphed @ np.arange(1.0, ops.morphed.shape[1] + 1)
        g = tr.common_morphed @ np.arange(1.0, ops.morphed.shape[1] + 1)
        if morphing == "floater":  # nodes on the circle can lie outside the other mesh's polygon: clamped
            inside = np.linalg.norm(tr.common_morphed, axis=1) < 0.95
            np.testing.assert_allclose((ops.proj @ f)[inside], g[inside], atol=1e-9)
            inside = np.linalg.norm(ops.morphed, axis=1) < 0.95
            np.testing.assert_allclose((ops.inv_proj @ g)[inside], f[inside], atol=1e-9)
        else:
            np.testing.assert_allclose(ops.inv_proj @ g, f, atol=1e-9)


def test_mixed_kinds_and_floater_on_tetrahedra_are_refused():
    common = Mesh(*structured_tetra((4, 2, 2)))
    tr = CommonMeshTransfer("rbf", "min_x", False)
    tr.set_common(common)
    surf = Mesh(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]), [[0, 1, 2], [0, 1, 3]])
    with pytest.raises(ValueError, match="triangle surface in 3D, the common mesh a tetrahedral mesh"):
        tr.operators(surf, "mesh 3")
    fl = CommonMeshTransfer("floater", "min_x", False)
    with pytest.raises(ValueError, match="Floater morphing needs triangle meshes"):
        fl.set_common(common)
