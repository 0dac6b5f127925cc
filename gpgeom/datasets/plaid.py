r"""Read and write mesh datasets in the PLAID data model (``pyplaid``, an optional dependency).

PLAID (Physics-Learning AI Datamodel; Casenave et al., "MMGP", NeurIPS 2023, arXiv:2305.12871, whose benchmarks it
distributes) stores a dataset as a folder of samples, ``<root>/data/<split>/sample_<9 digits>/``, each sample a
CGNS tree per time step (``meshes/mesh_<9 digits>.cgns``): a base ``Base_<k>_<d>`` (topological and physical
dimension) holding one unstructured zone with ``GridCoordinates`` (``CoordinateX/Y/Z``), ``Elements_t`` nodes
(``TRI_3``, ``TETRA_4``, ..., 1-based connectivity) and nodal fields (``FlowSolution``, location ``Vertex``), and a
``Global`` base holding the sample's scalars. This module maps that onto :class:`~gpgeom.geometry.mesh.Mesh`
(nodal fields as ``point_data``) plus a dict of scalars, through ``plaid.Sample`` and ``CGNS.PAT.cgnslib``.

``pyplaid`` is an optional dependency (``pip install gpgeom[plaid]``), imported lazily.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gpgeom.geometry.mesh import Mesh, as_mesh

__all__ = ["CELL_TYPES", "read_plaid", "write_plaid"]

#: gpgeom cell dimension -> CGNS element type name.
CELL_TYPES: dict[int, str] = {1: "BAR_2", 2: "TRI_3", 3: "TETRA_4"}
_HINT = "Reading and writing PLAID datasets needs `pyplaid`: run `pip install gpgeom[plaid]`."
_BASE, _ZONE = "Base_{k}_{d}", "Zone"


def _import_plaid():
    try:
        import CGNS.PAT.cgnskeywords as CGK
        import CGNS.PAT.cgnslib as CGL
        from plaid import Sample
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"Could not import `plaid` / `CGNS` ({err}). {_HINT}") from err
    return Sample, CGL, CGK


def _zone_elements(sample: object, zone: str, base: str) -> dict[str, np.ndarray]:
    r"""Every ``Elements_t`` section of a zone, by CGNS type name: ``{"TRI_3": (m, 3) int64, ...}`` with 0-based
    node indices, the sections of one type concatenated in the order of their ``ElementRange``.

    A zone may hold several sections of one type (one per region or physical group); ``plaid.Sample.get_elements``
    keys its result by type and keeps only the last of them.
    """
    import CGNS.PAT.cgnskeywords as CGK
    import CGNS.PAT.cgnsutils as CGU

    node = sample.get_zone(zone=zone, base=base)
    sections: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path in CGU.getAllNodesByTypeSet(node, ["Elements_t"]):
        elem = CGU.getNodeByPath(node, path)
        name = CGK.ElementType_l[int(np.ravel(CGU.getValue(elem))[0])]
        first = CGU.getValueByPath(elem, "ElementRange")
        conn = CGU.getValueByPath(elem, "ElementConnectivity")
        start = int(np.ravel(first)[0]) if first is not None else 0
        sections.setdefault(name, []).append((start, np.asarray(conn, dtype=np.int64)))
    out = {}
    for name, parts in sections.items():
        parts.sort(key=lambda part: part[0])
        out[name] = np.concatenate([c for _, c in parts])
    return out


def write_plaid(
    path: str | os.PathLike,
    meshes: Sequence[object],
    scalars: Sequence[Mapping[str, float]] | None = None,
    *,
    split: str = "train",
    overwrite: bool = False,
) -> Path:
    r"""Write meshes with nodal fields and per-sample scalars as a PLAID dataset split.

    Args:
        path: Dataset root; samples go to ``<path>/data/<split>/sample_<i:09d>/``.
        meshes: ``N`` meshes (anything :func:`~gpgeom.geometry.mesh.as_mesh` accepts; a :class:`Mesh`'s
            ``point_data`` are written as nodal fields). Fields of shape ``(n,)`` keep their name; ``(n, c)`` fields
            are written as ``name_0 .. name_{c-1}``.
        scalars: ``N`` dicts of scalars (the ``Global`` base), or ``None``.
        split: Split name.
        overwrite: Replace the samples of an existing non-empty split folder.

    Returns:
        The split folder.
    """
    Sample, CGL, CGK = _import_plaid()
    if isinstance(meshes, Mesh) or not isinstance(meshes, Sequence) or not len(meshes):
        raise TypeError(f"`meshes` must be a non-empty sequence of meshes, got {type(meshes).__name__}.")
    if scalars is not None and len(scalars) != len(meshes):
        raise ValueError(f"`scalars` must hold one dict per mesh ({len(meshes)}), got {len(scalars)}.")
    if not isinstance(split, str) or not split or split in (".", "..") or any(c in split for c in "/\\"):
        # "." or ".." would put the samples into <path>/data or <path> itself (and overwrite=True clear them there)
        raise ValueError(f"`split` must be a non-empty folder name (no '/', '\\', '.' or '..'), got {split!r}.")
    out = Path(path) / "data" / split
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; pass overwrite=True to replace it.")
    if out.exists() and overwrite:
        for old in out.iterdir():
            if old.is_dir() and old.name.startswith("sample_"):
                shutil.rmtree(old)
    out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(meshes):
        mesh = as_mesh(m, f"meshes[{i}]")
        k, d = mesh.cell_dim, mesh.dim
        base = _BASE.format(k=k, d=d)
        s = Sample()
        s.init_base(k, d, base)
        s.init_zone(np.array([[mesh.n_points, mesh.n_cells, 0]]), zone=_ZONE, base=base)
        s.set_nodes(mesh.points, zone=_ZONE, base=base)
        zone = s.get_zone(zone=_ZONE, base=base)
        etype = CELL_TYPES[k]
        conn = (mesh.cells + 1).astype(np.int32).ravel()
        CGL.newElements(zone, etype, CGK.ElementType_l.index(etype), np.array([1, mesh.n_cells]), conn)
        for name, val in mesh.point_data.items():
            arr = np.asarray(val, dtype=np.float64)
            cols = (
                [(name, arr)]
                if arr.ndim == 1
                else [(f"{name}_{j}", c) for j, c in enumerate(arr.reshape(len(arr), -1).T)]
            )
            for fname, col in cols:
                s.add_field(fname, np.ascontiguousarray(col), zone=_ZONE, base=base, warning_overwrite=False)
        for name, v in (scalars[i] if scalars is not None else {}).items():
            s.add_global(str(name), np.array([float(v)]))
        s.save_to_dir(out / f"sample_{i:09d}", overwrite=True)
    return out


def _split_dir(path: Path, split: str | None) -> Path:
    if split is not None:
        cand = path / "data" / split
        if not cand.is_dir():
            raise ValueError(f"No split {split!r} under {path} (looked for {cand}).")
        return cand
    if any(p.name.startswith("sample_") for p in path.iterdir()):
        return path
    data = path / "data"
    splits = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
    if len(splits) != 1:
        raise ValueError(
            f"{path} is not a PLAID split folder (no sample_* folders) and holds splits {splits}; pass `split=`."
        )
    return data / splits[0]


def read_plaid(path: str | os.PathLike, split: str | None = None) -> list[tuple[Mesh, dict[str, float]]]:
    r"""Read a PLAID dataset split as ``[(mesh, scalars), ...]`` in sample order.

    Args:
        path: A split folder (holding ``sample_*`` folders) or a dataset root (``<path>/data/<split>``).
        split: The split to read from a dataset root (default: the only one).

    Returns:
        One ``(mesh, scalars)`` pair per sample: the mesh of the first time step's first non-``Global`` base and
        its first zone, with the simplices of highest dimension among its ``Elements_t`` nodes (every section of
        that type, in the order of their element ranges; lower-dimensional boundary elements are skipped) and the
        nodal fields as ``point_data``; the ``Global`` scalars as floats.

    Raises:
        ValueError: A missing folder or split, a sample without mesh, or a zone with no simplicial elements
            (only quadrilaterals or hexahedra: the message names the types found).
    """
    Sample, _, _ = _import_plaid()
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"`path` must be an existing folder, got {str(root)!r}.")
    folder = _split_dir(root, split)
    samples = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("sample_"))
    out = []
    for sdir in samples:
        s = Sample.load_from_dir(sdir)
        bases = [b for b in s.get_base_names() if b != "Global"]
        if not bases:
            raise ValueError(f"{sdir}: the sample holds no mesh base.")
        base = bases[0]
        zone = s.get_zone_names(base=base)[0]
        pts = np.asarray(s.get_nodes(zone=zone, base=base), dtype=np.float64)
        elems = _zone_elements(s, zone, base)
        simplices = {name: c for name, c in elems.items() if name in CELL_TYPES.values()}
        if not simplices:
            raise ValueError(
                f"{sdir}: zone {zone!r} has no simplicial elements ({sorted(elems)}); gpgeom meshes are made of "
                f"{sorted(CELL_TYPES.values())}."
            )
        top = max(simplices, key=lambda n: int(n.split("_")[1]))
        cells = simplices[top].reshape(-1, int(top.split("_")[1])) - 1  # CGNS connectivity is 1-based
        fields = {n: np.asarray(s.get_field(n, zone=zone, base=base)) for n in s.get_field_names(zone=zone, base=base)}
        fields = {n: v for n, v in fields.items() if v.shape[:1] == (len(pts),)}
        scal = {n: float(np.asarray(s.get_global(n)).ravel()[0]) for n in (s.get_global_names() or [])}
        out.append((Mesh(pts, cells, point_data=fields), scal))
    return out
