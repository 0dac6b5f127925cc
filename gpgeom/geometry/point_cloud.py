r"""Point clouds and their proximity graphs (step 1 of the connection Laplacian, :mod:`gpgeom.geometry.connection`).

* :func:`as_points`, :func:`find_duplicates`: input checks of a cloud :math:`X \in \mathbb{R}^{n \times D}`;
  duplicate points (closer than a tolerance) make tangent frames and transports undefined, so they are found here
  and either raised on or dropped (the kept rows are recorded).
* :func:`proximity_graph` / :class:`ProximityGraph`: the k-nearest-neighbour graph, symmetrised by union (or mutual
  kNN), or the continuous kNN graph of Berry & Sauer (2019), which joins :math:`i \sim j` iff
  :math:`\|x_i - x_j\| < \delta \sqrt{\rho_i \rho_j}` with :math:`\rho_i` the distance from :math:`x_i` to its
  k-th neighbour; connected components are labelled.

All arrays are numpy ``float64``; inputs may be numpy arrays, torch tensors or nested sequences.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom._warnings import user_stacklevel

__all__ = ["ProximityGraph", "as_points", "find_duplicates", "proximity_graph"]

_METHODS = ("knn", "mutual", "cknn")
_ON_DISCONNECTED = ("warn", "raise", "ignore")

# ----------------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------------


def as_points(name: str, x: object, *, min_points: int = 2) -> np.ndarray:
    r"""Convert a point cloud (numpy, torch or nested sequence) to a C-contiguous ``float64`` array ``(n, D)``.

    Raises:
        TypeError: non-numeric input.
        ValueError: not two-dimensional, non-finite entries, or fewer than ``min_points`` rows.
    """
    if isinstance(x, torch.Tensor):
        check_tensor(name, x, ndim=2)
        arr = x.detach().cpu().to(torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"`{name}` must be a numeric array of shape (n, D), got {type(x).__name__}.") from err
        check_tensor(name, torch.from_numpy(arr), ndim=2)
    if arr.shape[0] < min_points or arr.shape[1] < 1:
        raise ValueError(f"`{name}` must hold at least {min_points} point(s) of dimension >= 1, got shape {arr.shape}.")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _default_tol(X: np.ndarray) -> float:
    return 1e-10 * max(float(np.linalg.norm(X.max(0) - X.min(0))), np.finfo(float).tiny)


def find_duplicates(X: object, tol: float | None = None) -> np.ndarray:
    r"""Pairs of points closer than ``tol`` (default :math:`10^{-10}` times the bounding-box diagonal).

    Args:
        X: Points ``(n, D)``.
        tol: Absolute distance below which two points count as duplicates.

    Returns:
        ``(p, 2)`` int64 array of index pairs ``i < j``, sorted.
    """
    X = as_points("X", X, min_points=1)
    tol = _default_tol(X) if tol is None else float(tol)
    pairs = cKDTree(X).query_pairs(tol, output_type="ndarray").astype(np.int64)
    if len(pairs):
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return pairs.reshape(-1, 2)


def _handle_duplicates(X: np.ndarray, policy: str, tol: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the points to use and their row indices in the input."""
    check_option("duplicates", policy, ("raise", "drop"))
    pairs = find_duplicates(X, tol)
    if len(pairs) == 0:
        return X, np.arange(len(X))
    if policy == "raise":
        shown = ", ".join(f"({i}, {j})" for i, j in pairs[:5])
        raise ValueError(
            f"The point cloud holds {len(pairs)} pair(s) of duplicate points (closer than the tolerance), e.g. "
            f"{shown}. Remove them, or pass duplicates='drop' to keep the first point of each group."
        )
    n = len(X)
    adj = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(adj, directed=False)
    # keep the smallest index of every group of coinciding points
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    keep = np.sort(first)
    if len(keep) < 2:  # the callers' own shape checks would name the cloud after dropping, not the one given
        raise ValueError(
            f"duplicates='drop' leaves {len(keep)} distinct point of the {n} given: every point coincides with the "
            "first (closer than the tolerance). A point cloud needs at least 2 distinct points."
        )
    return X[keep], keep


# ----------------------------------------------------------------------------------------------------------------
# proximity graph
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ProximityGraph:
    r"""An undirected proximity graph on ``n`` points, stored as its edge list.

    Attributes:
        n: Number of nodes.
        rows, cols: ``(E,)`` int64 end points of each undirected edge, ``rows < cols``, sorted, no self loops.
        dists: ``(E,)`` Euclidean edge lengths.
        rho: ``(n,)`` distance from each point to its k-th nearest neighbour.
        k: Number of neighbours used.
        method: ``"knn"``, ``"mutual"`` or ``"cknn"``.
        n_components: Number of connected components.
        labels: ``(n,)`` component label of each node (0 = the largest component).
    """

    n: int
    rows: np.ndarray
    cols: np.ndarray
    dists: np.ndarray
    rho: np.ndarray
    k: int
    method: str
    n_components: int
    labels: np.ndarray

    @property
    def n_edges(self) -> int:
        r"""Number of undirected edges ``E``, each stored once (``rows[e] < cols[e]``)."""
        return int(len(self.rows))

    def adjacency(self, weights: np.ndarray | None = None) -> sp.csr_matrix:
        r"""Symmetric ``(n, n)`` CSR adjacency with ``weights`` (``(E,)``, default 1) and a zero diagonal."""
        w = np.ones(self.n_edges) if weights is None else np.asarray(weights, dtype=np.float64)
        r = np.concatenate([self.rows, self.cols])
        c = np.concatenate([self.cols, self.rows])
        return sp.csr_matrix((np.concatenate([w, w]), (r, c)), shape=(self.n, self.n))

    def degrees(self) -> np.ndarray:
        r"""Number of neighbours of each node, ``(n,)``."""
        return np.bincount(self.rows, minlength=self.n) + np.bincount(self.cols, minlength=self.n)


def _unique_edges(n: int, i: np.ndarray, j: np.ndarray, *, mutual: bool = False) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.minimum(i, j), np.maximum(i, j)
    keep = a != b
    key = a[keep].astype(np.int64) * n + b[keep]
    key, counts = np.unique(key, return_counts=True)
    if mutual:
        key = key[counts >= 2]
    return key // n, key % n


def proximity_graph(
    X: object,
    k: int = 10,
    *,
    method: str = "knn",
    delta: float = 1.0,
    on_disconnected: str = "warn",
    duplicate_tol: float | None = None,
    workers: int = 1,
) -> ProximityGraph:
    r"""Build the k-nearest-neighbour (or continuous kNN) graph of a point cloud.

    Args:
        X: Points ``(n, D)`` without duplicates (see :func:`find_duplicates`).
        k: Number of nearest neighbours (excluding the point itself), ``1 <= k < n``.
        method: ``"knn"``: :math:`i \sim j` if either is among the other's k nearest neighbours (union, as in the
            reference); ``"mutual"``: if each is among the other's; ``"cknn"``: continuous kNN,
            :math:`\|x_i - x_j\| < \delta\sqrt{\rho_i\rho_j}`.
        delta: CkNN scale :math:`\delta` (ignored otherwise).
        on_disconnected: ``"warn"``, ``"raise"`` or ``"ignore"`` when the graph has several components.
        duplicate_tol: Distance below which two points count as duplicates (which raises).
        workers: Threads for the KD-tree queries (-1: all).

    Returns:
        A :class:`ProximityGraph`.
    """
    X = as_points("X", X)
    n = len(X)
    check_positive("k", k, integer=True)
    check_option("method", method, _METHODS)
    check_option("on_disconnected", on_disconnected, _ON_DISCONNECTED)
    check_positive("delta", delta)
    if k >= n:
        raise ValueError(f"`k` must be smaller than the number of points n={n}, got k={k}.")
    tree = cKDTree(X)
    dist, idx = tree.query(X, k=k + 1, workers=workers)
    tol = _default_tol(X) if duplicate_tol is None else float(duplicate_tol)
    if np.any(dist[:, 1] <= tol):
        bad = int(np.flatnonzero(dist[:, 1] <= tol)[0])
        raise ValueError(
            f"Point {bad} coincides with point {int(idx[bad, 1])} (distance {dist[bad, 1]:.3g}); the graph needs "
            "distinct points. Remove duplicates first (see find_duplicates, or duplicates='drop')."
        )
    rho = dist[:, k].copy()
    if method in ("knn", "mutual"):
        i = np.repeat(np.arange(n), k)
        j = idx[:, 1:].ravel()
        rows, cols = _unique_edges(n, i, j, mutual=method == "mutual")
    else:
        # every CkNN edge satisfies |x_i - x_j| < delta * max(rho_i, rho_j): search balls of radius delta * rho_i
        balls = tree.query_ball_point(X, r=delta * rho, workers=workers, return_sorted=False)
        lengths = np.fromiter((len(b) for b in balls), dtype=np.int64, count=n)
        j = np.fromiter(itertools.chain.from_iterable(balls), dtype=np.int64, count=int(lengths.sum()))
        i = np.repeat(np.arange(n), lengths)
        d2 = np.einsum("ij,ij->i", X[i] - X[j], X[i] - X[j])
        ok = d2 < delta**2 * rho[i] * rho[j]
        rows, cols = _unique_edges(n, i[ok], j[ok])
    dists = np.linalg.norm(X[rows] - X[cols], axis=1)
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    n_comp, labels = connected_components(adj, directed=False)
    if n_comp > 1:
        sizes = np.bincount(labels)
        order = np.argsort(-sizes, kind="stable")
        relabel = np.empty_like(order)
        relabel[order] = np.arange(n_comp)
        labels = relabel[labels]
        sizes = sizes[order]
        smallest = np.flatnonzero(labels == n_comp - 1)[:5].tolist()
        msg = (
            f"The {method} graph (k={k}) of the {n} points has {n_comp} connected components of sizes "
            f"{sizes[:8].tolist()}{' ...' if n_comp > 8 else ''}; the smallest holds points {smallest}"
            f"{' ...' if sizes[-1] > 5 else ''}. Each component contributes its own zero/low eigenvalues; increase "
            "k, or restrict to one component (ProximityGraph.labels == 0 is the largest)."
        )
        if on_disconnected == "raise":
            raise ValueError(msg)
        if on_disconnected == "warn":
            warnings.warn(msg, UserWarning, stacklevel=user_stacklevel())
    return ProximityGraph(n, rows, cols, dists, rho, k, method, int(n_comp), labels.astype(np.int64))
