r"""MMGP's morphing and finite-element transfer (Casenave et al., NeurIPS 2023, arXiv:2305.12871, Sec. 3.1).

Every mesh :math:`\mathcal{M}_i` is morphed by :math:`\varphi_i` onto one reference shape, and P1 interpolation
between the morphed mesh and the morphed common mesh :math:`\mathcal{M}_c` (paper Eq. (2)) gives two sparse
operators: :math:`P_i \in \mathbb{R}^{N_c \times N_i}` (fields of mesh :math:`i` -> common nodes) and
:math:`Q_i \in \mathbb{R}^{N_i \times N_c}` (common nodes -> nodes of mesh :math:`i`). This geometry
preprocessing runs on the CPU with numpy and scipy; :func:`sparse_to_torch` hands :math:`Q_i` to the decode on the
model's device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from gpgeom._warnings import user_stacklevel
from gpgeom.errors import MeshRepairWarning
from gpgeom.geometry.closest import surface_transfer
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.morphing import RBFMorphing, floater_disk
from gpgeom.geometry.morphing3d import morph_surface, morph_volume
from gpgeom.geometry.transfer import p1_transfer
from gpgeom.models.mmgp.inputs import clock

__all__ = ["MORPHINGS", "CommonMeshTransfer", "TransferOperators", "sparse_to_torch"]

MORPHINGS = ("floater", "rbf", "physical", "none")

#: Largest number of boundary control points of the dense RBF solve (every k-th point above it).
_MAX_RBF_POINTS = 1500


@dataclass
class TransferOperators:
    r"""The morphing and the two P1 transfers of one mesh.

    Attributes:
        morphed: Morphed node positions, ``(N_i, d)`` (``d = 2`` for Floater, the space dimension for RBF).
        proj: :math:`P_i`, ``(N_c, N_i)`` CSR: mesh ``i`` -> common nodes.
        inv_proj: :math:`Q_i`, ``(N_i, N_c)`` CSR: common mesh -> nodes of mesh ``i``.
        t_morph: ``(wall, cpu)`` seconds of the morphing.
        t_transfer: ``(wall, cpu)`` seconds of the two transfers.
    """

    morphed: np.ndarray
    proj: sp.csr_matrix
    inv_proj: sp.csr_matrix
    t_morph: np.ndarray
    t_transfer: np.ndarray


def sparse_to_torch(A: sp.spmatrix, *, dtype: torch.dtype, device: torch.device) -> Tensor:
    r"""A scipy sparse matrix as a torch sparse COO tensor of ``dtype`` on ``device`` (for ``A @ dense``)."""
    coo = A.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    val = torch.from_numpy(np.asarray(coo.data, dtype=np.float64))
    out = torch.sparse_coo_tensor(idx, val, coo.shape, dtype=dtype, device=device, check_invariants=False)
    return out.coalesce()


_KINDS = {
    "planar": "a triangle mesh in 2D",
    "surface": "a triangle surface in 3D",
    "volume": "a tetrahedral mesh in 3D",
    "other": "neither a 2D triangle mesh, a 3D surface nor a tetrahedral mesh",
}


def _kind(mesh: Mesh) -> str:
    r"""``"planar"`` (triangles in 2D), ``"surface"`` (triangles in 3D), ``"volume"`` (tetrahedra in 3D) or
    ``"other"``."""
    return {(2, 2): "planar", (3, 2): "surface", (3, 3): "volume"}.get((mesh.dim, mesh.cell_dim), "other")


class CommonMeshTransfer:
    r"""Morphing onto a reference shape and P1 transfer to and from the common mesh.

    Args:
        morphing: ``"floater"`` (Tutte map onto the unit disk, :func:`gpgeom.geometry.morphing.floater_disk`;
            triangle meshes in 2D or disk-topology surfaces in 3D), ``"rbf"`` (a Wendland-C2 RBF map of every mesh
            onto the common mesh's shape: boundary loops by arc length in 2D, tetrahedral meshes by
            :func:`gpgeom.geometry.morphing3d.morph_volume`, triangle surfaces in 3D by
            :func:`gpgeom.geometry.morphing3d.morph_surface`, whose morphed nodes are carried by closest-point P1
            transfer, :func:`gpgeom.geometry.closest.surface_transfer`), ``"physical"`` (no morphing: the P1
            transfers in physical space, nodes outside the other mesh clamped to its boundary, closest-point
            transfer on 3D surfaces; the baseline that morphing improves on) or ``"none"`` (every mesh has the
            common mesh's nodes; the transfers are identities).
        floater_start: Where the Floater boundary walk starts: ``"min_x"`` or a point ``(2,)``.
        ref_compat: Floater boundary angles and orientation of the reference implementation.
        repair_meshes: Repair degenerate meshes (with a warning) instead of raising (``MMGP(repair_meshes=...)``).
    """

    def __init__(
        self, morphing: str, floater_start: str | Sequence[float], ref_compat: bool, repair_meshes: bool = False
    ) -> None:
        self.morphing = morphing
        self.floater_start = floater_start
        self.ref_compat = bool(ref_compat)
        self.repair_meshes = bool(repair_meshes)

    # ------------------------------------------------------------------------------------------------------------
    # degenerate meshes
    def checked(self, mesh: Mesh, index: str) -> tuple[Mesh, sp.csr_matrix | None, sp.csr_matrix | None]:
        r"""``(work, restrict, expand)``: the mesh the morphing and the transfers use, and the maps between its
        nodes and those of ``mesh`` (``None`` when ``mesh`` is valid and used as it is).

        A degenerate mesh (:meth:`~gpgeom.geometry.mesh.Mesh.check`) raises ``ValueError`` naming ``index`` and the
        nodes or cell, unless ``repair_meshes``: then the repaired mesh is used (a warning names what was wrong),
        ``restrict`` ``(N_work, N)`` carries nodal fields of ``mesh`` to it (mean over merged nodes) and ``expand``
        ``(N, N_work)`` back (P1 interpolation at the original nodes: exact for merged nodes and for the vertices of
        removed slivers, which lie on an edge).
        """
        try:
            mesh.check()
            return mesh, None, None
        except ValueError as exc:
            if not self.repair_meshes:
                raise ValueError(
                    f"MMGP: {index}: {exc} MMGP(repair_meshes=True) repairs coincident nodes and zero-area triangles."
                ) from None
            problem = str(exc)
        try:
            work, node_map = mesh.repair()
        except ValueError as exc:
            raise ValueError(f"MMGP: {index}: {exc}") from None
        warnings.warn(
            f"MMGP: {index} is degenerate and was repaired ({work.n_points} of {mesh.n_points} nodes and "
            f"{work.n_cells} of {mesh.n_cells} cells kept; fields are still read and predicted on all the original "
            f"nodes). The first defect: {problem}",
            MeshRepairWarning,
            stacklevel=user_stacklevel(),
        )
        kept = np.nonzero(node_map >= 0)[0]
        counts = np.bincount(node_map[kept], minlength=work.n_points).astype(np.float64)
        restrict = sp.csr_matrix(
            (1.0 / counts[node_map[kept]], (node_map[kept], kept)), shape=(work.n_points, mesh.n_points)
        )
        expand = sp.csr_matrix((np.ones(len(kept)), (kept, node_map[kept])), shape=(mesh.n_points, work.n_points))
        removed = np.nonzero(node_map < 0)[0]
        if len(removed):  # nodes no cell uses any more (on an edge of the repaired mesh): P1 interpolation there
            T = p1_transfer(work, mesh.points[removed]).tocoo()
            expand = expand + sp.csr_matrix((T.data, (removed[T.row], T.col)), shape=expand.shape)
        return work, restrict, expand.tocsr()

    # ------------------------------------------------------------------------------------------------------------
    # the common mesh
    def set_common(self, common: Mesh) -> None:
        r"""Fix the common mesh :math:`\mathcal{M}_c`: its morphed nodes, its boundary loops (RBF) and its P1 mass
        matrix :math:`M` (the POD inner product)."""
        common, _, _ = self.checked(common, "common mesh")
        self.common_mesh = common
        self._kind = _kind(common)
        if self.morphing == "rbf" and self._kind in ("surface", "volume"):
            self.common_morphed = common.points.copy()
        elif self.morphing == "rbf":
            self._ref_loops = []
            for lp in self._loops_with_start(common):
                B = common.points[lp]
                self._ref_loops.append((B, self._arclength(B)))
            self.common_morphed = common.points.copy()
        else:
            self.common_morphed = self.morph(common, "common mesh")
        self._common_morphed_mesh = common.with_points(self.common_morphed, keep_data=False)
        self.mass = mass_matrix(common)  # (N_c, N_c)

    # ------------------------------------------------------------------------------------------------------------
    # morphing
    def _floater(self, mesh: Mesh) -> np.ndarray:
        if self.ref_compat:
            return floater_disk(mesh, start=self.floater_start, orientation="reference", angles="reference", rtol=0.0)
        return floater_disk(mesh, start=self.floater_start)

    @staticmethod
    def _loops_with_start(mesh: Mesh) -> list[np.ndarray]:
        r"""Boundary loops (mesh on the left), each rolled to start at its lowest-leftmost node."""
        out = []
        P = mesh.points
        for lp in mesh.boundary_loops():
            B = P[lp]
            i0 = int(np.lexsort((B[:, 1], B[:, 0]))[0])
            out.append(np.roll(lp, -i0))
        return out

    @staticmethod
    def _arclength(B: np.ndarray) -> np.ndarray:
        seg = np.sqrt((np.diff(np.vstack([B, B[:1]]), axis=0) ** 2).sum(1))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        return s / s[-1]  # (nB + 1,), closing node included

    def _rbf_morph(self, mesh: Mesh) -> np.ndarray:
        r"""Map ``mesh`` onto the common shape: the boundary node at arc-length fraction ``s`` of its loop goes to
        the point at fraction ``s`` of the matching common loop; the interior follows the Wendland-C2 RBF map."""
        loops = self._loops_with_start(mesh)
        ref = self._ref_loops
        if len(loops) != len(ref):
            raise ValueError(
                f"RBF morphing needs the same number of boundary loops as the common mesh ({len(ref)}); this mesh "
                f"has {len(loops)}."
            )
        P = mesh.points
        src, tgt = [], []
        free = list(range(len(ref)))
        for lp in sorted(loops, key=len, reverse=True):
            c = P[lp].mean(0)
            j = min(free, key=lambda k: float(((ref[k][0].mean(0) - c) ** 2).sum()))
            free.remove(j)
            RB, Rs = ref[j]
            s = self._arclength(P[lp])[:-1]
            closed = np.vstack([RB, RB[:1]])
            tgt.append(np.column_stack([np.interp(s, Rs, closed[:, 0]), np.interp(s, Rs, closed[:, 1])]))
            src.append(P[lp])
        S, T = np.concatenate(src), np.concatenate(tgt)
        if len(S) > _MAX_RBF_POINTS:  # keep the dense RBF solve small: every k-th control point
            step = math.ceil(len(S) / _MAX_RBF_POINTS)
            S, T = S[::step], T[::step]
        return RBFMorphing(S, T)(P)

    def morph(self, mesh: Mesh, index: str) -> np.ndarray:
        r"""The morphed node positions :math:`\varphi(x)` of ``mesh`` (``index`` names it in errors)."""
        try:
            kind = _kind(mesh)
            if self.morphing != "none" and kind != self._kind:
                raise ValueError(
                    f"the mesh is {_KINDS[kind]}, the common mesh {_KINDS[self._kind]}; all meshes of a family "
                    "must be of one kind."
                )
            if self.morphing == "floater":
                if mesh.cell_dim != 2:
                    raise ValueError(
                        f"Floater morphing needs triangle meshes (2D, or surfaces in 3D), got {mesh.cell_type} "
                        f"cells in {mesh.dim}D; use morphing='rbf' for tetrahedral meshes."
                    )
                return self._floater(mesh)
            if self.morphing == "rbf":
                if kind == "volume":
                    return morph_volume(mesh, self.common_mesh)
                if kind == "surface":
                    return morph_surface(mesh, self.common_mesh)
                return self._rbf_morph(mesh)
            if self.morphing == "physical":
                return mesh.points.copy()
            return mesh.points
        except ValueError as exc:
            raise ValueError(f"MMGP(morphing={self.morphing!r}): {index}: {exc}") from exc

    # ------------------------------------------------------------------------------------------------------------
    # P1 transfer (Eq. (2))
    def operators(self, mesh: Mesh, index: str) -> TransferOperators:
        r"""Morph ``mesh`` and build :math:`P_i` and :math:`Q_i` (``index`` names the mesh in errors); a degenerate
        mesh is refused or repaired (:meth:`checked`)."""
        t0 = clock()
        work, restrict, expand = self.checked(mesh, index)
        if self.morphing == "none":
            if work.n_points != self.common_mesh.n_points:
                raise ValueError(
                    f"MMGP(morphing='none'): {index} has {work.n_points} nodes, the common mesh "
                    f"{self.common_mesh.n_points}; without morphing every mesh must share the common mesh's nodes "
                    "(same topology). Use morphing='floater' or 'rbf' for meshes that differ."
                )
            eye = sp.identity(work.n_points, format="csr")
            if restrict is None:
                return TransferOperators(mesh.points, eye, eye, clock() - t0, np.zeros(2))
            return TransferOperators(mesh.points, restrict, expand, clock() - t0, np.zeros(2))
        morphed = self.morph(work, index)
        t1 = clock()
        if self.morphing in ("rbf", "physical") and self._kind == "surface":  # nodes on (or near) the surface
            proj = surface_transfer(work.with_points(morphed, keep_data=False), self._common_morphed_mesh.points)
            inv_proj = surface_transfer(self._common_morphed_mesh, morphed)
        else:
            proj = p1_transfer(work.with_points(morphed, keep_data=False), self._common_morphed_mesh.points)
            inv_proj = p1_transfer(self._common_morphed_mesh, morphed)
        if restrict is not None:
            proj, inv_proj, morphed = (proj @ restrict).tocsr(), (expand @ inv_proj).tocsr(), expand @ morphed
        return TransferOperators(morphed, proj, inv_proj, t1 - t0, clock() - t1)
