r"""MMGP's independent stages through an executor (:mod:`gpgeom.engine.parallel`): the morphing, the two P1
transfers and the transport of every mesh, and the fits of separate GPs.

Mesh stage: the :class:`~gpgeom.models.mmgp.transfer.CommonMeshTransfer` (common mesh, its morphed nodes and
point locator, the mass matrix) is the shared object, shipped once per worker; the meshes (and their fields) travel
in chunks of consecutive meshes. Each worker returns what the caller needs of a mesh: its coordinates (and fields)
transported to the common nodes, :math:`P_i x_i` (:math:`P_i U_i`, and the round-trip moments of
:mod:`~gpgeom.models.mmgp.roundtrip`), and for a prediction :math:`Q_i` and the interpolation spreads of its nodes;
the POD, the encoding :math:`\xi = W (P_i x_i - \bar X)` and the decode stay with the caller, computed as in the
serial run.

GP stage (``hyperparameters="per_field"``): one task per GP, each fitted with all its restarts in one worker and
sent back whole. The serial run calls the same functions in order, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

import numpy as np
import scipy.sparse as sp

from gpgeom._progress import progress_bar
from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.engine.parallel import map_items
from gpgeom.geometry.mesh import Mesh
from gpgeom.models.mmgp.roundtrip import interpolation_spread, roundtrip_moments
from gpgeom.models.mmgp.transfer import CommonMeshTransfer

__all__ = ["fit_gps", "transport_new", "transport_training"]


def _training_item(transfer: CommonMeshTransfer, item: tuple[int, Mesh, np.ndarray, bool]) -> tuple[Any, ...]:
    i, mesh, u, moments = item
    ops = transfer.operators(mesh, f"mesh {i}")
    num = den = None
    if moments:
        w = interpolation_spread(ops.inv_proj, ops.morphed, transfer.common_morphed)
        num, den = roundtrip_moments(ops.inv_proj, ops.proj, u, w)
    return ops.proj @ mesh.points, ops.proj @ u, ops.t_morph, ops.t_transfer, num, den


def transport_training(
    transfer: CommonMeshTransfer,
    meshes: Sequence[Mesh],
    fields: Sequence[np.ndarray],
    executor: Executor | None,
    moments: bool = True,
    progress: bool | None = False,
) -> list[tuple[Any, ...]]:
    r"""``(P_i x_i (N_c, d), P_i U_i (N_c, m), t_morph, t_transfer, num (N_c, m), den (N_c,))`` of every mesh, in
    order (``d`` the space dimension of the meshes; ``num``, ``den`` the round-trip moments of
    :func:`~gpgeom.models.mmgp.roundtrip.roundtrip_moments` with ``moments``, ``None`` without); ``progress``: a
    bar over the meshes, cleared when done (the GP fits' bars follow)."""
    items = [(i, m, u, moments) for i, (m, u) in enumerate(zip(meshes, fields, strict=True))]
    return _mapped(executor, _training_item, items, transfer, progress)


def _mapped(executor: Executor | None, fn: Any, items: list, transfer: Any, progress: bool | None) -> list:
    r"""``map_items`` with a bar over the meshes (``progress``), cleared when done."""
    with progress_bar(total=len(items), desc="MMGP morph+transfer", unit="mesh", leave=False, progress=progress) as bar:
        return map_items(executor, fn, items, transfer, on_chunk=bar.update)


def _new_item(transfer: CommonMeshTransfer, item: tuple[int, Mesh, bool, bool]) -> tuple[Any, ...]:
    i, mesh, inverse, spreads = item
    ops = transfer.operators(mesh, f"mesh {i}")
    x = np.asarray(ops.proj @ mesh.points).reshape(-1)  # GeometryPOD.transport
    w = interpolation_spread(ops.inv_proj, ops.morphed, transfer.common_morphed) if spreads else None
    return x, (ops.inv_proj if inverse else None), ops.t_morph, ops.t_transfer, w


def transport_new(
    transfer: CommonMeshTransfer,
    meshes: Sequence[Mesh],
    executor: Executor | None,
    inverse: bool = False,
    spreads: bool = False,
    progress: bool | None = False,
) -> list[tuple[np.ndarray, sp.csr_matrix | None, np.ndarray, np.ndarray, np.ndarray | None]]:
    r"""``(P_i x_i flattened (d N_c,), Q_i or None, t_morph, t_transfer, w or None)`` of every new mesh, in order
    (``Q_i`` with ``inverse``, for the decode; the interpolation spreads ``w`` ``(N_i,)`` of its nodes with
    ``spreads``, for the transfer variance: :func:`~gpgeom.models.mmgp.roundtrip.interpolation_spread`); ``progress``:
    a bar over the meshes, cleared when done (``leave=False``): a prediction is often one of many, as in a loop of
    one-mesh predictions in a notebook, where kept bars filled the output (one per call)."""
    items = [(i, m, inverse, spreads) for i, m in enumerate(meshes)]
    return _mapped(executor, _new_item, items, transfer, progress)


def _fit_item(options: dict[str, Any], gp: ExactGPModel) -> ExactGPModel:
    return gp.fit(**options)


def fit_gps(gps: list[ExactGPModel], options: dict[str, Any], executor: Executor | None) -> list[ExactGPModel]:
    r"""Fit every GP with ``options`` (``restarts``, ``max_iter``, ``seed``, ``progress``): in this process in
    order, or one task per GP on ``executor`` (the fitted GPs come back)."""
    if executor is None:
        return [g.fit(**options) for g in gps]
    return map_items(
        executor, _fit_item, gps, {**options, "progress": False}, chunk_size=1, label="GP", thread_safe=False
    )
