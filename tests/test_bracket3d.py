r"""Bracket3d: the structured tetrahedral mesh, the 3D elasticity solver against closed forms (uniaxial tension,
Timoshenko's cantilever) and its mesh convergence, reproducibility, the disk cache, the surface variants and the
errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("skfem")

from gpgeom.datasets.bracket3d import (  # noqa: E402
    EXTENT,
    FIELD_NAMES,
    OUT_SCALAR_NAMES,
    generate_brackets,
    load_brackets,
    make_bracket,
    random_map,
    save_brackets,
    solve_elasticity_3d,
    structured_tetra,
    surface_variant,
)
from gpgeom.geometry.mesh import Mesh  # noqa: E402
from gpgeom.geometry.morphing import floater_disk  # noqa: E402

SMALL = ((5, 6), (2, 3), (2, 2))


def test_structured_tetra_is_a_conforming_positive_tiling():
    ext = (2.0, 1.0, 0.5)
    X, C = structured_tetra((4, 3, 2), ext)
    mesh = Mesh(X, C)
    vol = mesh.cell_volumes(signed=True)
    assert (vol > 0).all()
    assert vol.sum() == pytest.approx(np.prod(ext), rel=1e-13)
    assert len(mesh.non_manifold_facets()) == 0
    # conforming: the boundary facets cover exactly the six faces of the block
    bf = mesh.boundary_facets()[0]
    area = 0.5 * np.linalg.norm(np.cross(X[bf[:, 1]] - X[bf[:, 0]], X[bf[:, 2]] - X[bf[:, 0]]), axis=1).sum()
    assert area == pytest.approx(2 * (2 * 1 + 2 * 0.5 + 1 * 0.5), rel=1e-13)
    with pytest.raises(ValueError, match="three ints >= 1"):
        structured_tetra((4, 0, 2))


def _block_problem(shape, extent):
    X, C = structured_tetra(shape, extent)
    clamped = np.nonzero(X[:, 0] < 1e-12)[0]
    local = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    F = C[:, local].reshape(-1, 3)
    loaded = F[(np.abs(X[F, 0] - extent[0]) < 1e-12).all(1)]
    return X, C, clamped, loaded


@pytest.mark.parametrize("order", [1, 2])
def test_solver_reproduces_uniaxial_tension_exactly(order):
    # nu = 0: sigma_11 = P, all else 0, u = (P x / E, 0, 0) satisfies the clamp at x = 0 exactly; P1 and P2 hold it
    L, H, W = 2.0, 0.7, 0.4
    X, C, clamped, loaded = _block_problem((6, 3, 2), (L, H, W))
    P, E = 0.7, 5.0
    fields, scalars = solve_elasticity_3d(X, C, clamped, loaded, (P, 0.0, 0.0), nu=0.0, young=E, order=order)
    np.testing.assert_allclose(fields["U1"], P * X[:, 0] / E, atol=1e-10)
    np.testing.assert_allclose(fields["U2"], 0.0, atol=1e-10)
    np.testing.assert_allclose(fields["U3"], 0.0, atol=1e-10)
    np.testing.assert_allclose(fields["von_mises"], P, rtol=1e-9)
    assert scalars["mean_vm"] == pytest.approx(P, rel=1e-9)
    # compliance = f . u = P * area * u1(L) = P^2 L H W / E
    assert scalars["compliance"] == pytest.approx(P * P * L * H * W / E, rel=1e-9)
    assert scalars["tip_U2"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="nu"):
        solve_elasticity_3d(X, C, clamped, loaded, (P, 0, 0), nu=0.5)
    with pytest.raises(ValueError, match="order"):
        solve_elasticity_3d(X, C, clamped, loaded, (P, 0, 0), nu=0.0, order=3)
    with pytest.raises(ValueError, match="loaded_facets"):
        solve_elasticity_3d(X, C, clamped, C[:2, :3], (P, 0, 0), nu=0.0)  # interior faces


def test_p2_cantilever_matches_timoshenko_and_p1_locks():
    # nu = 0 (no Poisson restraint at the clamp): end load F = P H W on a beam L x H x W; Timoshenko's tip deflection
    # F L^3 / (3 E I) + F L / (kappa G A), I = W H^3 / 12, kappa = 10 (1 + nu) / (12 + 11 nu) (Cowper 1966)
    L, H, W, E, P = 3.0, 1.0, 0.6, 1000.0, 1.0
    X, C, clamped, loaded = _block_problem((8, 3, 2), (L, H, W))
    F, G, kappa = P * H * W, E / 2.0, 10.0 / 12.0
    timoshenko = F * L**3 / (3 * E * W * H**3 / 12) + F * L / (kappa * G * H * W)
    _, s2 = solve_elasticity_3d(X, C, clamped, loaded, (0.0, -P, 0.0), nu=0.0, young=E, order=2)
    _, s1 = solve_elasticity_3d(X, C, clamped, loaded, (0.0, -P, 0.0), nu=0.0, young=E, order=1)
    assert -s2["tip_U2"] == pytest.approx(timoshenko, rel=0.01)
    assert -s1["tip_U2"] < 0.8 * timoshenko  # linear tetrahedra lock: why the family is solved with P2
    # work = load times mean deflection: compliance = P * area * |tip_U2| for a load along -e2
    assert s2["compliance"] == pytest.approx(P * H * W * -s2["tip_U2"], rel=1e-10)


def test_p2_family_solution_is_resolution_independent():
    # one random map of the family at the two ends of the default resolution range and a finer reference: the
    # scalars agree to < 1 % (P1 differs by ~15 % between the two coarse meshes)
    phi = random_map(np.random.default_rng(5))
    out = {}
    for shape in ((8, 3, 2), (12, 4, 3)):
        X, C, clamped, loaded = _block_problem(shape, EXTENT)
        for order in (1, 2):
            out[shape, order] = solve_elasticity_3d(
                phi(X), C, clamped, loaded, (0.0, -1.0, 0.3), nu=0.3, young=1000.0, order=order
            )[1]
    for name in OUT_SCALAR_NAMES:
        a, b = out[(8, 3, 2), 2][name], out[(12, 4, 3), 2][name]
        assert a == pytest.approx(b, rel=0.01), name
    p1a, p1b = out[(8, 3, 2), 1]["tip_U2"], out[(12, 4, 3), 1]["tip_U2"]
    assert abs(p1a / p1b - 1) > 0.1


def test_samples_are_seeded_and_vary():
    a = make_bracket(3, 1, resolution=SMALL)
    b = make_bracket(3, 1, resolution=SMALL)
    c = make_bracket(3, 2, resolution=SMALL)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.fields["von_mises"], b.fields["von_mises"])
    assert a.n_nodes != c.n_nodes or not np.allclose(a.points, c.points)
    m = a.mesh()
    assert (m.cell_volumes(signed=True) > 0).all()
    assert set(a.fields) == set(FIELD_NAMES)
    # the clamped face does not move; the tip deflects downward-ish under the load
    clamped = np.abs(a.reference[:, 0]) < 1e-9
    assert np.abs(a.field_array()[clamped, :3]).max() == 0.0
    assert a.out_scalars["compliance"] > 0


def test_generate_uses_the_cache(tmp_path):
    s1 = generate_brackets(3, seed=1, resolution=SMALL, cache_dir=tmp_path)
    files = list(tmp_path.glob("bracket3d_*.npz"))
    assert len(files) == 1
    s2 = generate_brackets(3, seed=1, resolution=SMALL, cache_dir=tmp_path)
    for x, y in zip(s1, s2):
        np.testing.assert_array_equal(x.points, y.points)
        np.testing.assert_array_equal(x.cells, y.cells)
        for k in FIELD_NAMES:
            np.testing.assert_array_equal(x.fields[k], y.fields[k])
        assert x.in_scalars == y.in_scalars and x.out_scalars == y.out_scalars
    path = save_brackets(s1, tmp_path / "copy.npz")
    s3 = load_brackets(path)
    np.testing.assert_array_equal(s3[2].reference, s1[2].reference)
    # sample i depends on (seed, i) only
    one = generate_brackets(1, seed=1, resolution=SMALL, use_cache=False)
    np.testing.assert_array_equal(one[0].fields["U2"], s1[0].fields["U2"])


def test_surface_variants():
    s = make_bracket(0, 0, resolution=SMALL)
    top = surface_variant(s, "top")
    assert top.dim == 3 and top.cell_dim == 2
    assert len(top.boundary_loops()) == 1
    uv = floater_disk(top)
    area = Mesh(uv, top.cells).cell_volumes(signed=True)
    assert (area > 0).all() or (area < 0).all()
    closed = surface_variant(s, "boundary")
    assert len(closed.boundary_facets()[0]) == 0
    # fields follow their nodes
    i = 5
    j = int(np.nonzero((s.points == closed.points[i]).all(1))[0][0])
    assert closed.point_data["U3"][i] == s.fields["U3"][j]
    with pytest.raises(ValueError, match="'top' or 'boundary'"):
        surface_variant(s, "side")


def test_generate_refuses_bad_arguments():
    with pytest.raises(ValueError, match="n_samples"):
        generate_brackets(0)
    with pytest.raises(ValueError, match="seed"):
        generate_brackets(2, seed=-1)
    with pytest.raises(ValueError, match="resolution"):
        generate_brackets(2, resolution=((3, 2), (2, 2), (2, 2)))
    with pytest.raises(ValueError, match="resolution"):
        generate_brackets(2, resolution=5)
    assert EXTENT[0] > EXTENT[1] > EXTENT[2]
