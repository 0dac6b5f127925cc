r"""Tests of the NotchedPlate2d generator: FE solver against exact truths, geometry, seeding, caching, inputs."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest

pytest.importorskip("skfem")
pytest.importorskip("triangle")

from gpgeom.datasets.notched_plate import (  # noqa: E402
    FIELD_NAMES,
    IN_SCALAR_NAMES,
    LANDMARK_NAMES,
    OUT_SCALAR_NAMES,
    NotchShape,
    PlateShape,
    boundary_loop,
    generate_notched_plates,
    load_notched_plates,
    make_notched_plate,
    mesh_plate,
    meshing,
    sample_plate_shape,
    save_notched_plates,
    solve_plane_strain,
)

COARSE = 0.1  # about 300 nodes per mesh


def _gen(n, seed=0, **kw):
    kw.setdefault("mesh_size", (0.09, 0.12))
    kw.setdefault("progress", False)
    kw.setdefault("use_cache", False)
    return generate_notched_plates(n, seed=seed, **kw)


def _assert_same(a, b):
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.triangles, b.triangles)
    np.testing.assert_array_equal(a.boundary_loop, b.boundary_loop)
    np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert a.boundary_start == b.boundary_start
    assert a.in_scalars == b.in_scalars and a.out_scalars == b.out_scalars
    for k in FIELD_NAMES:
        np.testing.assert_array_equal(a.fields[k], b.fields[k])
    assert a.shape == b.shape and a.mesh_size == b.mesh_size


# ---------------------------------------------------------------------------------------------------------------
# FE solver against independent truths
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["l2", "average"])
def test_patch_test_uniform_tension_is_exact(recovery):
    # Unnotched rectangle, roller on the bottom, pin at (0, 0), traction P on top: the exact solution is linear,
    # u1 = eps11 x, u2 = eps22 y with plane-strain eps22 = (1 - nu^2) P / E, eps11 = -nu (1 + nu) P / E.
    load, nu, young = 1.3, 0.3, 2.5
    pts, tri, _ = mesh_plate(PlateShape.rectangle(), 0.15)
    sol = solve_plane_strain(pts, tri, load=load, nu=nu, young=young, recovery=recovery)
    e22 = (1 - nu**2) * load / young
    e11 = -nu * (1 + nu) * load / young
    np.testing.assert_allclose(sol.fields["U1"], e11 * pts[:, 0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(sol.fields["U2"], e22 * pts[:, 1], rtol=0, atol=1e-10)
    # Uniform stress: sigma11 = 0, sigma22 = P, sigma12 = 0, sigma33 = nu P, in every element and at every node.
    np.testing.assert_allclose(sol.element_stress, np.tile([0, load, 0, nu * load], (len(tri), 1)), atol=1e-10)
    np.testing.assert_allclose(sol.fields["sigma22"], load, atol=1e-10)
    vm = load * np.sqrt(1 - nu + nu**2)
    np.testing.assert_allclose(sol.fields["von_mises"], vm, atol=1e-10)
    assert sol.out_scalars["max_vm"] == pytest.approx(vm, abs=1e-10)
    # Work of the traction: P * width * u2(top) = P * 1 * eps22 * 2.
    assert sol.out_scalars["compliance"] == pytest.approx(load * e22 * 2.0, abs=1e-10)
    assert sol.out_scalars["mean_U2_top"] == pytest.approx(e22 * 2.0, abs=1e-10)


def test_compliance_converges_under_mesh_refinement():
    # Same notched geometry, h halved twice. Displacement FE is too stiff, so the compliance rises towards its
    # limit; its error is the energy-norm error squared, O(h^2) for P1 (first order in h in the energy norm).
    shape = sample_plate_shape(np.random.default_rng(3))
    hs = [0.08, 0.04, 0.02]
    c = np.array([make_notched_plate(shape, h, load=1.0, nu=0.3).out_scalars["compliance"] for h in hs])
    d = np.diff(c)
    assert np.all(d > 0), c  # monotone from below
    assert d[1] < 0.5 * d[0], c  # shrinking increments
    order = np.log2(d[0] / d[1])
    assert 1.0 < order < 2.6, order
    # Richardson with the theoretical order 2: the finest mesh is within 0.5 % of the extrapolated limit.
    limit = c[-1] + d[-1] / 3.0
    assert abs(c[-1] - limit) / limit < 5e-3


def _symmetric_mesh(notch: NotchShape, h: float):
    # Mesh the left half [0, 0.5] x [0, 2] with `notch` on its left edge, mirror it about x = 0.5, glue.
    import triangle

    pieces = [
        meshing._segment((0.0, 0.0), (0.5, 0.0), h),
        meshing._segment((0.5, 0.0), (0.5, 2.0), h),
        meshing._segment((0.5, 2.0), (0.0, 2.0), h),
        meshing._segment((0.0, 2.0), (0.0, 1.6), h),
        meshing._notch_curve(notch, "left", h)[::-1],
        meshing._segment((0.0, 0.4), (0.0, 0.0), h),
    ]
    verts = np.concatenate([p[:-1] for p in pieces])
    nb = len(verts)
    seg = np.column_stack([np.arange(nb), (np.arange(nb) + 1) % nb])
    out = triangle.triangulate({"vertices": verts, "segments": seg}, f"pq30a{0.5 * h * h:.10f}Q")
    p, t = out["vertices"], out["triangles"]
    n = len(p)
    on_axis = np.abs(p[:, 0] - 0.5) < 1e-13
    assert on_axis.sum() >= 3
    new_index = np.where(on_axis, np.arange(n), n + np.cumsum(~on_axis) - 1)
    pts = np.concatenate([p, np.column_stack([1.0 - p[~on_axis, 0], p[~on_axis, 1]])])
    tris = np.concatenate([t, new_index[t][:, [0, 2, 1]]])  # mirroring flips the orientation
    mirror = np.concatenate([new_index, np.flatnonzero(~on_axis)])  # node i <-> node mirror[i]
    return pts, tris, mirror


def test_symmetric_notches_give_symmetric_fields():
    notch = NotchShape(0.22, (0.8, -0.5, 0.3, 1.1))
    pts, tris, mirror = _symmetric_mesh(notch, COARSE)
    np.testing.assert_allclose(pts[mirror], np.column_stack([1.0 - pts[:, 0], pts[:, 1]]), atol=1e-14)
    assert len(boundary_loop(pts, tris, 0)) > 0  # the glued mesh is one disk-like region
    sol = solve_plane_strain(pts, tris, load=1.1, nu=0.35)
    f = sol.fields
    scale = np.abs(f["U2"]).max()
    np.testing.assert_allclose(f["U2"][mirror], f["U2"], atol=1e-10 * scale)
    for name in ("von_mises", "sigma22"):
        np.testing.assert_allclose(f[name][mirror], f[name], atol=1e-10 * np.abs(f[name]).max())
    # U1 is antisymmetric about x = 0.5 up to the rigid translation fixed by the pin at (0, 0).
    s = f["U1"] + f["U1"][mirror]
    np.testing.assert_allclose(s, s[0], atol=1e-10 * scale)
    assert abs(s[0]) > 1e-3  # the translation is real (the pin is not on the axis)


def test_compliance_equals_strain_energy():
    shape = sample_plate_shape(np.random.default_rng(7))
    pts, tri, _ = mesh_plate(shape, COARSE)
    sol = solve_plane_strain(pts, tri, load=0.8, nu=0.4, return_system=True)
    k, f, u = sol.stiffness, sol.load_vector, sol.displacement
    assert abs(k - k.T).max() < 1e-12
    np.testing.assert_array_equal(u[sol.dirichlet_dofs], 0.0)
    energy = float(u @ (k @ u))
    c = sol.out_scalars["compliance"]
    assert c > 0
    assert energy == pytest.approx(c, rel=1e-10)
    # The traction is uniform, so f.u = P * int_top u2 ds = P * width * mean_U2_top.
    assert c == pytest.approx(0.8 * sol.out_scalars["mean_U2_top"], rel=1e-10)
    # Equilibrium on the free DOFs.
    free = np.setdiff1d(np.arange(len(u)), sol.dirichlet_dofs)
    assert np.abs((k @ u - f)[free]).max() < 1e-10 * np.abs(f).max()


# ---------------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------------


def test_sample_structure_and_geometry():
    samples = _gen(6, seed=11)
    for s in samples:
        n, m = len(s.points), len(s.triangles)
        assert s.points.shape == (n, 2) and s.points.dtype == np.float64
        assert s.triangles.shape == (m, 3) and s.triangles.dtype == np.int64
        assert set(s.in_scalars) == set(IN_SCALAR_NAMES) and set(s.out_scalars) == set(OUT_SCALAR_NAMES)
        assert 0.5 <= s.in_scalars["P"] <= 1.5 and 0.2 <= s.in_scalars["nu"] <= 0.45
        for k in FIELD_NAMES:
            assert s.fields[k].shape == (n,) and np.isfinite(s.fields[k]).all()
        assert np.isfinite(s.out_scalar_array()).all()
        assert s.field_array().shape == (n, 4)
        # Geometry: inside [0, 1] x [0, 2], every triangle counter-clockwise and non-degenerate.
        assert s.points.min() >= 0.0 and s.points[:, 0].max() <= 1.0 and s.points[:, 1].max() <= 2.0
        a, b, c = (s.points[s.triangles[:, j]] for j in range(3))
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
        assert cross.min() > 0
        # Every node is used; the physics makes sense (tension lengthens the plate, compliance = P * mean u2).
        assert len(np.unique(s.triangles)) == n
        assert s.out_scalars["mean_U2_top"] > 0 and s.out_scalars["max_vm"] > 0
        assert s.out_scalars["compliance"] == pytest.approx(s.in_scalars["P"] * s.out_scalars["mean_U2_top"])
        # The notches indent the plate: some boundary nodes lie strictly inside the strip 0 < x < 1.
        bx = s.points[s.boundary_loop, 0]
        assert np.any((bx > 0.03) & (bx < 0.97))


def test_exactly_one_boundary_loop_and_start_node():
    for s in _gen(5, seed=3):
        tri = s.triangles
        # Euler characteristic of a disk: V - E + F = 1.
        edges = np.unique(np.sort(np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]]), axis=1), axis=0)
        assert len(s.points) - len(edges) + len(tri) == 1
        loop = boundary_loop(s.points, tri, s.boundary_start)  # raises unless the boundary is one closed loop
        np.testing.assert_array_equal(loop, s.boundary_loop)
        # Independent truth: the loop's steps are exactly the directed edges used by one (ccw) triangle.
        directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
        _, inv, cnt = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True, return_counts=True)
        bedges = {tuple(e) for e in directed[cnt[inv.ravel()] == 1].tolist()}
        assert {(int(a), int(b)) for a, b in zip(loop, np.roll(loop, -1))} == bedges
        assert len(np.unique(loop)) == len(loop)
        # Start node = bottom-left corner = the MMGP reference's choice (min x, then min y).
        assert s.boundary_start == 0 and tuple(s.points[0]) == (0.0, 0.0)
        order = np.lexsort((s.points[loop, 1], s.points[loop, 0]))
        assert loop[order[0]] == 0
        # Counter-clockwise: the walk starts along the bottom edge (the neighbour with the smaller y).
        assert s.points[loop[1], 1] == 0.0 and s.points[loop[-1], 0] == 0.0
        xy = s.points[loop]
        signed_area = 0.5 * np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1])
        assert signed_area > 0
        # Landmarks: on the loop, in walk order, at their expected positions.
        where = {int(v): i for i, v in enumerate(loop)}
        idx = [where[int(v)] for v in s.landmarks]
        assert idx == sorted(idx) and len(LANDMARK_NAMES) == len(idx)
        expected = [(0, 0), (1, 0), (1, 0.4), (1, 1.6), (1, 2), (0, 2), (0, 1.6), (0, 0.4)]
        np.testing.assert_allclose(s.points[s.landmarks], expected, atol=1e-14)


def test_boundary_loop_rejects_holes_and_interior_start():
    import triangle

    outer = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)
    inner = 0.5 + 0.2 * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float)
    seg = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4]])
    out = triangle.triangulate({"vertices": np.r_[outer, inner], "segments": seg, "holes": [[0.5, 0.5]]}, "pq30a0.02Q")
    with pytest.raises(ValueError, match="exactly one boundary loop, found 2"):
        boundary_loop(out["vertices"], out["triangles"], 0)
    pts, tris, _ = mesh_plate(PlateShape.rectangle(), 0.25)
    loop = boundary_loop(pts, tris, 3)
    assert loop[0] == 3 and len(loop) == len(boundary_loop(pts, tris, 0))
    interior = int(np.setdiff1d(np.arange(len(pts)), loop)[0])
    with pytest.raises(ValueError, match="not on the boundary"):
        boundary_loop(pts, tris, interior)


def test_seeded_reproducibility_and_prefix_stability():
    a = _gen(3, seed=5)
    b = _gen(3, seed=5)
    c = _gen(2, seed=5)
    for x, y in zip(a, b):
        _assert_same(x, y)
    for x, y in zip(a[:2], c):  # sample i depends only on (seed, i)
        _assert_same(x, y)


def test_different_seeds_and_samples_differ():
    a = _gen(4, seed=0)
    b = _gen(4, seed=1)
    counts = [s.n_nodes for s in a + b]
    assert len(set(counts)) >= 6  # node counts vary across samples and seeds
    for x, y in zip(a, b):
        assert x.n_nodes != y.n_nodes or not np.array_equal(x.triangles, y.triangles)
        assert x.in_scalars != y.in_scalars
    # Fixed h: still different connectivity, since the notches differ.
    fixed = _gen(3, seed=2, mesh_size=COARSE)
    assert all(s.mesh_size == COARSE for s in fixed)
    assert len({(s.n_nodes, len(s.triangles)) for s in fixed}) >= 2


def test_cache_roundtrip_is_fast_and_identical(tmp_path, monkeypatch):
    kw = {"mesh_size": (0.09, 0.12), "progress": False}
    t0 = time.perf_counter()
    first = generate_notched_plates(8, seed=4, cache_dir=tmp_path, **kw)
    t_gen = time.perf_counter() - t0
    files = list(tmp_path.glob("notched_plate_*.npz"))
    assert len(files) == 1
    t0 = time.perf_counter()
    second = generate_notched_plates(8, seed=4, cache_dir=tmp_path, **kw)
    t_load = time.perf_counter() - t0
    assert t_load < 0.5 * t_gen, (t_load, t_gen)
    for x, y in zip(first, second):
        _assert_same(x, y)
    # Another parameter -> another file; an option counts as a parameter too.
    generate_notched_plates(2, seed=4, cache_dir=tmp_path, **kw)
    generate_notched_plates(2, seed=4, cache_dir=tmp_path, recovery="average", **kw)
    assert len(list(tmp_path.glob("notched_plate_*.npz"))) == 3
    # GPGEOM_CACHE is the default location.
    env_dir = tmp_path / "env"
    monkeypatch.setenv("GPGEOM_CACHE", str(env_dir))
    generate_notched_plates(1, seed=0, **kw)
    assert len(list(env_dir.glob("notched_plate_*.npz"))) == 1
    # A corrupt cache file is regenerated, not trusted.
    files[0].write_bytes(b"not an npz")
    third = generate_notched_plates(8, seed=4, cache_dir=tmp_path, **kw)
    _assert_same(third[7], first[7])


def _notch_nodes(s, side):
    r"""Boundary nodes strictly inside the notch span on one side, as (t, inward depth)."""
    p = s.points[s.boundary_loop]
    inside = (p[:, 1] > 0.4 + 1e-9) & (p[:, 1] < 1.6 - 1e-9) & ((p[:, 0] < 0.5) if side == "left" else (p[:, 0] > 0.5))
    t = (p[inside, 1] - 0.4) / 1.2
    return t, (p[inside, 0] if side == "left" else 1.0 - p[inside, 0])


def test_other_notch_families_follow_their_profiles(tmp_path):
    r"""``notch_family``: every boundary node of a half-ellipse notch lies on d sqrt(1 - (2t - 1)^2) and of a wedge
    notch on d min(t / c, (1 - t) / (1 - c)) (up to the chord error of the resampling), with d in ``depth_range``
    and c in [0.35, 0.65]; the meshes are valid disks; seeding, caching and files keep the family."""
    for family in ("half_ellipse", "wedge"):
        samples = _gen(3, seed=7, notch_family=family)
        for s in samples:
            a, b, c = (s.points[s.triangles[:, j]] for j in range(3))
            cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
            assert cross.min() > 0 and len(boundary_loop(s.points, s.triangles, 0)) == len(s.boundary_loop)
            for notch, side in ((s.shape.left, "left"), (s.shape.right, "right")):
                assert notch.kind == family and 0.05 <= notch.depth <= 0.30
                t, depth = _notch_nodes(s, side)
                if family == "half_ellipse":
                    expect = notch.depth * np.sqrt(1.0 - (2.0 * t - 1.0) ** 2)
                else:
                    assert 0.35 <= notch.apex <= 0.65
                    expect = notch.depth * np.minimum(t / notch.apex, (1.0 - t) / (1.0 - notch.apex))
                np.testing.assert_allclose(depth, expect, atol=2e-3)
                assert len(t) >= 5
        for x, y in zip(samples, _gen(3, seed=7, notch_family=family)):
            _assert_same(x, y)
    # the smooth family is the default and unchanged; another family is another cache file, read back identically
    kw = {"mesh_size": 0.12, "progress": False, "cache_dir": tmp_path}
    smooth = generate_notched_plates(2, seed=3, **kw)
    again = generate_notched_plates(2, seed=3, notch_family="smooth", **kw)
    assert len(list(tmp_path.glob("notched_plate_*.npz"))) == 1
    assert all(x.shape.left.kind == "smooth" for x in smooth)
    wedges = generate_notched_plates(2, seed=3, notch_family="wedge", **kw)
    assert len(list(tmp_path.glob("notched_plate_*.npz"))) == 2
    for x, y in zip(smooth, again):
        _assert_same(x, y)
    for x, y in zip(wedges, generate_notched_plates(2, seed=3, notch_family="wedge", **kw)):
        _assert_same(x, y)
    with pytest.raises(ValueError, match="notch_family"):
        _gen(1, notch_family="circle")
    with pytest.raises(ValueError, match="kind"):
        NotchShape(0.1, kind="square")
    with pytest.raises(ValueError, match="apex"):
        NotchShape(0.1, kind="wedge", apex=1.0)


def test_save_load_explicit_file(tmp_path):
    samples = _gen(2, seed=9)
    path = save_notched_plates(samples, tmp_path / "frozen.npz")
    for x, y in zip(samples, load_notched_plates(path)):
        _assert_same(x, y)


def test_package_face_after_the_split():
    # the former module gpgeom/datasets/notched_plate.py is a package with one module per concept; every name it
    # had still imports from the package, and a sample pickles by its new path (executors ship samples)
    import pickle

    import gpgeom.datasets.notched_plate as package
    from gpgeom.datasets.notched_plate import elasticity, generate, samples, shapes, storage

    former = (
        "DATASET_VERSION DEFAULT_OPTIONS FIELD_NAMES IN_SCALAR_NAMES LANDMARK_NAMES NOTCH_FAMILIES OUT_SCALAR_NAMES "
        "NotchShape NotchedPlateSample PlaneStrainSolution PlateShape boundary_loop generate_notched_plates "
        "load_notched_plates make_notched_plate mesh_plate plate_boundary sample_plate_shape save_notched_plates "
        "solve_plane_strain stack_scalars WEDGE_APEX_RANGE WIDTH HEIGHT NOTCH_SPAN"
    ).split()
    assert [n for n in former if not hasattr(package, n)] == []
    homes = {shapes: ("NotchShape", "PlateShape"), meshing: ("boundary_loop", "mesh_plate", "plate_boundary")}
    homes |= {elasticity: ("PlaneStrainSolution", "solve_plane_strain"), storage: ("load_notched_plates",)}
    homes |= {samples: ("NotchedPlateSample", "make_notched_plate"), generate: ("generate_notched_plates",)}
    for module, names in homes.items():
        for name in names:
            assert (
                getattr(package, name) is getattr(module, name) and getattr(module, name).__module__ == module.__name__
            )
    sample = make_notched_plate(PlateShape.rectangle(), 0.5)
    _assert_same(pickle.loads(pickle.dumps(sample)), sample)


def test_recovery_options_agree_roughly():
    shape = sample_plate_shape(np.random.default_rng(1))
    a = make_notched_plate(shape, COARSE, recovery="l2")
    b = make_notched_plate(shape, COARSE, recovery="average")
    np.testing.assert_array_equal(a.fields["U1"], b.fields["U1"])
    vm_a, vm_b = a.fields["von_mises"], b.fields["von_mises"]
    assert not np.array_equal(vm_a, vm_b)
    assert np.sqrt(np.mean((vm_a - vm_b) ** 2)) < 0.1 * vm_a.max()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": -3}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"n_samples": 2, "seed": -1}, "seed"),
        ({"n_samples": 2, "depht_range": (0.1, 0.2)}, "Unknown option.*depht_range"),
        ({"n_samples": 2, "recovery": "spr"}, "recovery"),
        ({"n_samples": 2, "mesh_size": 0.0}, "mesh_size"),
        ({"n_samples": 2, "mesh_size": (0.05, 0.01)}, "mesh_size"),
        ({"n_samples": 2, "nu_range": (0.3, 0.6)}, "nu_range"),
        ({"n_samples": 2, "n_jobs": 0}, "n_jobs"),
    ],
)
def test_bad_input_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_notched_plates(progress=False, use_cache=False, **kwargs)


def test_bad_solver_input_raises():
    pts, tri, _ = mesh_plate(PlateShape.rectangle(), 0.5)
    with pytest.raises(ValueError, match="nu"):
        solve_plane_strain(pts, tri, load=1.0, nu=0.5)
    with pytest.raises(ValueError, match="recovery"):
        solve_plane_strain(pts, tri, load=1.0, nu=0.3, recovery="nodal")


@pytest.mark.parametrize("module", ["skfem", "triangle"])
def test_missing_fem_extra_gives_install_hint(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError, match=r"pip install gpgeom\[fem\]"):
        make_notched_plate(PlateShape.rectangle(), 0.5)


def test_a_missing_fe_dependency_names_the_module_the_generator_and_the_extra():
    from gpgeom.datasets._optional import import_optional

    assert import_optional("json", "a role", "Any") is __import__("json")
    with pytest.raises(
        ImportError,
        match=r"Could not import `gpgeom_no_such_mesher` \(the mesher\)\. The "
        r"NotchedPlate2d generator needs it: run `pip install gpgeom\[fem\]`\.",
    ):
        import_optional("gpgeom_no_such_mesher", "the mesher", "NotchedPlate2d")
