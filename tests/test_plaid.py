r"""PLAID I/O: meshes with nodal fields and scalars written by gpgeom and read back (through ``pyplaid``, a dataset
written by the test; nothing is fetched)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("plaid", reason="pyplaid is not installed (optional extra `gpgeom[plaid]`)")

from gpgeom.datasets.bracket3d import structured_tetra  # noqa: E402
from gpgeom.datasets.plaid import read_plaid, write_plaid  # noqa: E402
from gpgeom.geometry.mesh import Mesh  # noqa: E402


def _meshes() -> tuple[list[Mesh], list[dict[str, float]]]:
    rng = np.random.default_rng(0)
    X, C = structured_tetra((3, 2, 2), (1.0, 0.5, 0.5))
    X = X + 0.01 * rng.normal(size=X.shape)
    vol = Mesh(X, C, point_data={"U1": rng.normal(size=len(X)), "U": rng.normal(size=(len(X), 3))})
    P = rng.normal(size=(6, 3))
    surf = Mesh(P, [[0, 1, 2], [1, 3, 2], [2, 3, 4], [3, 5, 4]], point_data={"p": np.arange(6.0)})
    return [vol, surf], [{"P": 1.25, "nu": 0.3}, {"P": -2.0}]


def test_write_then_read_round_trip(tmp_path):
    meshes, scalars = _meshes()
    folder = write_plaid(tmp_path / "ds", meshes, scalars, split="train")
    assert folder == tmp_path / "ds" / "data" / "train"
    assert sorted(p.name for p in folder.iterdir()) == ["sample_000000000", "sample_000000001"]
    for got in (read_plaid(tmp_path / "ds"), read_plaid(folder), read_plaid(tmp_path / "ds", split="train")):
        assert len(got) == 2
        for (m, s), ref, sref in zip(got, meshes, scalars):
            np.testing.assert_array_equal(m.points, ref.points)
            np.testing.assert_array_equal(m.cells, ref.cells)
            assert s == sref
        vol = got[0][0]
        np.testing.assert_array_equal(vol.point_data["U1"], meshes[0].point_data["U1"])
        for j in range(3):
            np.testing.assert_array_equal(vol.point_data[f"U_{j}"], meshes[0].point_data["U"][:, j])
        assert got[1][0].cell_type == "triangle" and got[1][0].dim == 3


def test_read_the_plaid_data_model_directly(tmp_path):
    # a sample written with plaid's own API (boundary triangles next to the tetrahedra, a quad-only zone)
    import CGNS.PAT.cgnskeywords as CGK
    import CGNS.PAT.cgnslib as CGL
    from plaid import Sample

    X, C = structured_tetra((1, 1, 1), (1.0, 1.0, 1.0))
    s = Sample()
    s.init_base(3, 3, "Base_3_3")
    s.init_zone(np.array([[len(X), len(C), 0]]), zone="Zone", base="Base_3_3")
    s.set_nodes(X, zone="Zone", base="Base_3_3")
    zone = s.get_zone(zone="Zone", base="Base_3_3")
    CGL.newElements(zone, "TETRA_4", CGK.ElementType_l.index("TETRA_4"), np.array([1, len(C)]), (C + 1).ravel())
    tri = np.array([[0, 1, 2]])
    CGL.newElements(zone, "TRI_3", CGK.ElementType_l.index("TRI_3"), np.array([len(C) + 1, len(C) + 1]), tri + 1)
    s.add_field("T", X[:, 0] + 2 * X[:, 2], zone="Zone", base="Base_3_3")
    s.add_global("load", np.array([3.5]))
    (tmp_path / "split").mkdir()
    s.save_to_dir(tmp_path / "split" / "sample_000000000")
    [(mesh, scal)] = read_plaid(tmp_path / "split")
    np.testing.assert_array_equal(mesh.cells, C)  # the tetrahedra, not the boundary triangle
    np.testing.assert_array_equal(mesh.point_data["T"], X[:, 0] + 2 * X[:, 2])
    assert scal == {"load": 3.5}

    q = Sample()
    q.init_base(2, 2, "Base_2_2")
    q.init_zone(np.array([[4, 1, 0]]), zone="Zone", base="Base_2_2")
    q.set_nodes(np.array([[0.0, 0], [1, 0], [1, 1], [0, 1]]), zone="Zone", base="Base_2_2")
    zq = q.get_zone(zone="Zone", base="Base_2_2")
    CGL.newElements(zq, "QUAD_4", CGK.ElementType_l.index("QUAD_4"), np.array([1, 1]), np.array([1, 2, 3, 4]))
    (tmp_path / "quads").mkdir()
    q.save_to_dir(tmp_path / "quads" / "sample_000000000")
    with pytest.raises(ValueError, match="no simplicial elements.*QUAD_4"):
        read_plaid(tmp_path / "quads")


def test_every_section_of_the_top_element_type_is_read(tmp_path):
    # a zone may split its triangles into several TRI_3 sections (one per region); plaid's get_elements keys them by
    # type and keeps the last, so the 2 x 1 rectangle below was read as its right half (area 1, nodal fields intact)
    import CGNS.PAT.cgnskeywords as CGK
    import CGNS.PAT.cgnslib as CGL
    from plaid import Sample

    pts = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
    left, right = np.array([[0, 1, 2], [0, 2, 3]]), np.array([[1, 4, 5], [1, 5, 2]])
    s = Sample()
    s.init_base(2, 2, "Base_2_2")
    s.init_zone(np.array([[len(pts), 4, 0]]), zone="Zone", base="Base_2_2")
    s.set_nodes(pts, zone="Zone", base="Base_2_2")
    zone = s.get_zone(zone="Zone", base="Base_2_2")
    tri = CGK.ElementType_l.index("TRI_3")
    # written in reverse range order: the cells come back in the order of their element numbers
    CGL.newElements(zone, "Right", tri, np.array([3, 4]), (right + 1).ravel())
    CGL.newElements(zone, "Left", tri, np.array([1, 2]), (left + 1).ravel())
    CGL.newElements(zone, "Bottom", CGK.ElementType_l.index("BAR_2"), np.array([5, 5]), np.array([1, 2]))
    s.add_field("T", pts[:, 0] - pts[:, 1], zone="Zone", base="Base_2_2")
    (tmp_path / "split").mkdir()
    s.save_to_dir(tmp_path / "split" / "sample_000000000")
    [(mesh, _)] = read_plaid(tmp_path / "split")
    np.testing.assert_array_equal(mesh.cells, np.concatenate([left, right]))
    assert mesh.cell_volumes().sum() == pytest.approx(2.0)  # the whole rectangle
    np.testing.assert_array_equal(mesh.point_data["T"], pts[:, 0] - pts[:, 1])


def test_bad_arguments(tmp_path):
    meshes, scalars = _meshes()
    with pytest.raises(TypeError, match="sequence of meshes"):
        write_plaid(tmp_path, meshes[0])
    with pytest.raises(ValueError, match="one dict per mesh"):
        write_plaid(tmp_path, meshes, scalars[:1])
    write_plaid(tmp_path, meshes)
    with pytest.raises(ValueError, match="overwrite=True"):
        write_plaid(tmp_path, meshes)
    write_plaid(tmp_path, meshes[:1], overwrite=True)
    assert len(read_plaid(tmp_path)) == 1  # the old second sample is gone
    with pytest.raises(ValueError, match="No split 'test'"):
        read_plaid(tmp_path, split="test")
    with pytest.raises(ValueError, match="existing folder"):
        read_plaid(tmp_path / "missing")
    # "." / ".." wrote the samples into <path>/data or <path> itself (where read_plaid(path) then found them)
    for bad in ("..", ".", "a/b", "a\\b", ""):
        with pytest.raises(ValueError, match=r"`split` must be a non-empty folder name"):
            write_plaid(tmp_path / "other", meshes, split=bad, overwrite=True)
    assert not (tmp_path / "other").exists()
