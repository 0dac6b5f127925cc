r"""Connection Laplacians of point clouds: the geometry behind RVGP.

From a point cloud :math:`X \in \mathbb{R}^{n \times D}` sampled from a (latent) manifold :math:`M` of dimension
:math:`d`, this module builds the discrete objects of vector diffusion maps (Singer & Wu, *Comm. Pure Appl. Math.*
2012) as used by RVGP (Peach et al., ICLR 2024, arXiv 2309.16746):

1. **Proximity graph** (:func:`~gpgeom.geometry.point_cloud.proximity_graph`): the k-nearest-neighbour graph,
   symmetrised by union (or mutual kNN), or the continuous kNN graph of Berry & Sauer (2019), which joins
   :math:`i \sim j` iff :math:`\|x_i - x_j\| < \delta \sqrt{\rho_i \rho_j}` with :math:`\rho_i` the distance from
   :math:`x_i` to its k-th neighbour.
2. **Tangent frames** (:func:`~gpgeom.geometry.tangent.tangent_frames`): local PCA of the ``k_pca`` nearest
   points around each :math:`x_i`, centred at their mean; the frame :math:`T_i \in \mathbb{R}^{D \times d}` holds
   the top-:math:`d` right singular vectors (orthonormal columns), by default tilt-corrected by a local polynomial
   fit of degree 2 to 6 chosen by its leave-one-out error (:func:`~gpgeom.geometry.tangent.local_pca`). The
   dimension :math:`d` is given or estimated (:func:`~gpgeom.geometry.tangent.estimate_dimension`).
3. **Connection** (:func:`~gpgeom.geometry.tangent.procrustes`): for every edge the orthogonal matrix closest to
   :math:`T_i^\top T_j`,

   .. math:: O_{ij} = \arg\min_{O \in O(d)} \|O - T_i^\top T_j\|_F = U V^\top, \qquad T_i^\top T_j = U \Sigma V^\top,

   which maps coordinates in frame :math:`j` to coordinates in frame :math:`i` (a discrete parallel transport).
   :math:`O_{ji} = O_{ij}^\top` exactly.
4. **Connection Laplacian** (:func:`connection_laplacian`): with edge weights :math:`w_{ij}` (1, or a Gaussian
   :math:`e^{-\|x_i - x_j\|^2/\varepsilon}`), optionally density-normalised
   :math:`w_{ij} \leftarrow w_{ij} / (q_i q_j)^\alpha`, :math:`q_i = \sum_j w_{ij}`, and degrees
   :math:`D_i = \sum_j w_{ij}` (self loops :math:`w_{ii}` included in both sums), the block matrix
   :math:`S \in \mathbb{R}^{nd \times nd}` with blocks :math:`S_{ij} = w_{ij} O_{ij}` gives

   * ``"none"`` (the reference's default): :math:`L = (D \otimes I_d) - S`, i.e. :math:`(Lc)_i = \sum_j w_{ij}(c_i -
     O_{ij} c_j)` and :math:`c^\top L c = \tfrac12 \sum_{ij} w_{ij} \|c_i - O_{ij} c_j\|^2 \ge 0`;
   * ``"sym"``: :math:`L = I - (D^{-1/2} \otimes I_d) S (D^{-1/2} \otimes I_d)` (spectrum in :math:`[0, 2]`);
   * ``"rw"``: :math:`L = I - (D^{-1} \otimes I_d) S` (non-symmetric, same spectrum as ``"sym"``).

   With Gaussian weights, ``alpha=1`` and ``"sym"``/``"rw"``, :math:`\tfrac{4}{\varepsilon} L` converges (as
   :math:`n \to \infty`, :math:`\varepsilon \to 0`) to the rough (Bochner) Laplacian :math:`\nabla^*\nabla` on
   tangent fields whatever the sampling density (Singer & Wu 2012); for the unit sphere its eigenvalues
   are :math:`l(l+1) - 1`, multiplicity :math:`2(2l+1)`. :attr:`ConnectionLaplacian.scale` holds
   :math:`4/\varepsilon` (1 for other settings). The kNN graph truncates the Gaussian, which biases this
   absolute scale low (measured on the unit sphere: -2 % with :math:`\varepsilon = \bar\rho_k^2/8` on a
   Fibonacci lattice, -4 % with the default :math:`\bar\rho_k^2/4`, -15 % on i.i.d. uniform points with
   ``k=40``); eigenvalue *ratios* are accurate to about 1 % (lattice 0.3 %).

Vectors on the bundle are stored node-major: entry :math:`i d + a` is the :math:`a`-th frame coordinate at node
:math:`i`. :meth:`ConnectionLaplacian.lift` maps them to ambient vector fields :math:`v_i = T_i c_i`.
The plain graph Laplacian is the same construction with :math:`d = 1` and :math:`O_{ij} = 1`
(:func:`graph_laplacian`).

Bad input, documented behaviour:

* **duplicate points** (closer than ``duplicate_tol``): ``duplicates="raise"`` (default) raises a
  :class:`ValueError` naming the first pairs; ``duplicates="drop"`` keeps the first of each group and records the
  kept rows in :attr:`ConnectionLaplacian.index`.
* **disconnected graph**: ``on_disconnected="warn"`` (default) warns with the number and sizes of the components
  (the result is still valid: the spectrum is the union of the components' spectra, and eigenvectors may mix
  components of equal eigenvalue); ``"raise"`` raises; ``"ignore"`` is silent. Component labels are in
  :attr:`ProximityGraph.labels`.
* **manifold dimension** larger than the ambient dimension, or than ``k_pca - 1``: :class:`ValueError`.
* **rank-deficient neighbourhoods** (fewer than :math:`d` independent directions): a :class:`UserWarning`; the
  frame there contains arbitrary orthonormal completion vectors.
* **vectors not of the cloud's shape** in :meth:`ConnectionLaplacian.project` / :meth:`lift`: :class:`ValueError`.

All arrays are numpy ``float64``; inputs may be numpy arrays, torch tensors or nested sequences.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from gpgeom._progress import StageBar, stage_bar
from gpgeom._seeds import check_seed, resolve_seed
from gpgeom._validation import check_option, check_positive
from gpgeom._warnings import quiet
from gpgeom.geometry.point_cloud import (
    ProximityGraph,
    _handle_duplicates,
    as_points,
    find_duplicates,
    proximity_graph,
)
from gpgeom.geometry.tangent import _check_dim, estimate_dimension, local_pca, procrustes, tangent_frames

__all__ = [
    "ConnectionLaplacian",
    "ProximityGraph",
    "as_points",
    "connection_laplacian",
    "estimate_dimension",
    "find_duplicates",
    "graph_laplacian",
    "local_pca",
    "procrustes",
    "proximity_graph",
    "tangent_frames",
]

_NORMALIZATIONS = ("none", "sym", "rw")
_WEIGHTS = ("connectivity", "gaussian")
_EIG_METHODS = ("auto", "shift-invert", "lobpcg", "dense")
#: The stages of :func:`connection_laplacian` and :func:`graph_laplacian` (their progress bars), in order.
CONNECTION_STAGES = ("neighbour graph", "frames", "connection Laplacian")
GRAPH_STAGES = ("neighbour graph", "graph Laplacian")
_ARRAY_FIELDS = (
    "points", "index", "frames", "singular_values", "transports", "alignment", "weights", "self_weights", "degree"
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# connection Laplacian
# ----------------------------------------------------------------------------------------------------------------


def _assemble(
    n: int,
    d: int,
    rows: np.ndarray,
    cols: np.ndarray,
    O: np.ndarray,
    w: np.ndarray,
    w_self: np.ndarray,
    normalization: str,
) -> tuple[sp.csr_matrix, np.ndarray]:
    """COO assembly of the block Laplacian; returns (L, degree)."""
    deg = w_self + np.bincount(rows, weights=w, minlength=n) + np.bincount(cols, weights=w, minlength=n)
    if normalization != "none" and np.any(deg <= 0):
        raise ValueError("A node has zero degree; the normalised Laplacian is undefined.")
    ar = np.arange(d)
    if normalization == "none":
        diag = deg - w_self
        c_ij = c_ji = w
    elif normalization == "sym":
        diag = 1.0 - w_self / deg
        c_ij = c_ji = w / np.sqrt(deg[rows] * deg[cols])
    else:  # rw
        diag = 1.0 - w_self / deg
        c_ij, c_ji = w / deg[rows], w / deg[cols]
    E = len(rows)
    r_ij = np.broadcast_to((rows[:, None, None] * d + ar[None, :, None]), (E, d, d))
    c_ijx = np.broadcast_to((cols[:, None, None] * d + ar[None, None, :]), (E, d, d))
    v_ij = -c_ij[:, None, None] * O
    # block (j, i) = -c_ji O_ij^T: entry (j*d + a, i*d + b) = -c_ji O[b, a]
    r_ji = np.broadcast_to((cols[:, None, None] * d + ar[None, :, None]), (E, d, d))
    c_jix = np.broadcast_to((rows[:, None, None] * d + ar[None, None, :]), (E, d, d))
    v_ji = -c_ji[:, None, None] * np.swapaxes(O, 1, 2)
    di = np.arange(n * d)
    r = np.concatenate([r_ij.ravel(), r_ji.ravel(), di])
    c = np.concatenate([c_ijx.ravel(), c_jix.ravel(), di])
    v = np.concatenate([v_ij.ravel(), v_ji.ravel(), np.repeat(diag, d)])
    L = sp.csr_matrix((v, (r, c)), shape=(n * d, n * d))
    L.sort_indices()
    return L, deg


def _edge_weights(
    graph: ProximityGraph, weights: str, eps: float | None, alpha: float
) -> tuple[np.ndarray, np.ndarray, float | None]:
    check_option("weights", weights, _WEIGHTS)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"`alpha` must be a finite number >= 0, got {alpha!r}.")
    if weights == "connectivity":
        w = np.ones(graph.n_edges)
        eps_used = None
    else:
        if eps is None:
            # bandwidth such that exp(-d^2/eps) falls to exp(-4) at the median k-th-neighbour distance
            eps = float(np.median(graph.rho) ** 2 / 4.0)
        check_positive("eps", eps)
        w = np.exp(-(graph.dists**2) / eps)
        eps_used = float(eps)
    w_self = np.ones(graph.n)
    if alpha > 0:
        q = w_self + np.bincount(graph.rows, weights=w, minlength=graph.n)
        q += np.bincount(graph.cols, weights=w, minlength=graph.n)
        w = w / (q[graph.rows] * q[graph.cols]) ** alpha
        w_self = w_self / q ** (2 * alpha)
    return w, w_self, eps_used


@dataclass(eq=False)
class ConnectionLaplacian:
    r"""A point cloud's tangent bundle, discrete connection and connection Laplacian (see the module docstring).

    Attributes:
        points: ``(n, D)`` the points used (duplicates removed if asked).
        index: ``(n,)`` row of each point in the input cloud.
        graph: The :class:`ProximityGraph`.
        frames: ``(n, D, d)`` orthonormal tangent frames :math:`T_i`.
        singular_values: ``(n, min(k_pca, D))`` local-PCA singular values.
        transports: ``(E, d, d)`` :math:`O_{ij}` for the edges ``(graph.rows[e], graph.cols[e])``, mapping
            coordinates in frame ``cols[e]`` to frame ``rows[e]``; :math:`O_{ji} = O_{ij}^\top`.
        alignment: ``(E,)`` smallest cosine of the principal angles between the two tangent planes of each edge.
        weights: ``(E,)`` edge weights after the ``alpha`` normalisation; ``self_weights`` ``(n,)`` likewise.
        degree: ``(n,)`` :math:`D_i` (self loop included).
        L: ``(nd, nd)`` sparse CSR connection Laplacian (node-major ordering).
        normalization: ``"none"``, ``"sym"`` or ``"rw"``.
        eps: Gaussian bandwidth :math:`\varepsilon`, or ``None`` for connectivity weights.
        scale: :math:`4/\varepsilon` when the eigenvalues of ``scale * L`` approximate those of :math:`\nabla^*\nabla`
            (Gaussian weights, ``alpha=1``, ``"sym"``/``"rw"``), else 1.
        timings: Seconds spent on ``"graph"``, ``"frames"``, ``"laplacian"`` and each eigensolve.
        cache_dir: Directory for on-disk eigenpair caching (``None``: memory only).
        frame_fit: The local fit of the frames (``"sextic"`` ... ``"quadratic"``, ``"pca"``; ``"given"`` for frames
            passed in, and for the scalar graph Laplacian), and ``k_pca`` its neighbourhood size: what
            :func:`~gpgeom.geometry.tangent.frames_at` needs to give new points frames of the same kind.
    """

    points: np.ndarray
    index: np.ndarray
    graph: ProximityGraph
    frames: np.ndarray
    singular_values: np.ndarray
    transports: np.ndarray
    alignment: np.ndarray
    weights: np.ndarray
    self_weights: np.ndarray
    degree: np.ndarray
    L: sp.csr_matrix
    normalization: str
    eps: float | None
    scale: float
    timings: dict = field(default_factory=dict)
    cache_dir: str | None = None
    frame_fit: str = "given"
    k_pca: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        r"""Number of points of the cloud (after ``duplicates="drop"``), the rows of :attr:`points`."""
        return int(self.points.shape[0])

    @property
    def ambient_dim(self) -> int:
        r"""``D``, the dimension of the space the points live in (the columns of :attr:`points`)."""
        return int(self.points.shape[1])

    @property
    def dim(self) -> int:
        r"""``d``, the manifold dimension: the columns of each frame (``1`` for the scalar graph Laplacian), so the
        Laplacian is ``(n d, n d)``."""
        return int(self.frames.shape[2])

    # -------------------------------------------------------------------------------------------------------- #
    def symmetric_operator(self) -> sp.csr_matrix:
        r"""The symmetric matrix whose eigenpairs are computed: ``L`` itself, or for ``"rw"`` the similar
        :math:`(D^{1/2} \otimes I) L (D^{-1/2} \otimes I)` (the ``"sym"`` Laplacian)."""
        if self.normalization != "rw":
            return self.L
        s = np.repeat(np.sqrt(self.degree), self.dim)
        return sp.csr_matrix(sp.diags(s) @ self.L @ sp.diags(1.0 / s))

    def _hash(self, A: sp.csr_matrix, key: tuple) -> str:
        h = hashlib.sha256()
        for arr in (A.data, A.indices, A.indptr):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(repr(key).encode())
        return h.hexdigest()[:24]

    def eigenpairs(
        self,
        k: int,
        *,
        method: str = "auto",
        sigma: float | None = None,
        tol: float = 0.0,
        seed: int | None = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""The ``k`` smallest eigenvalues and eigenvectors of ``L``, cached (per ``k``, ``method`` and its options).

        Methods: ``"dense"`` (LAPACK eigh, :math:`O((nd)^3)`), ``"shift-invert"`` (ARPACK Lanczos on
        :math:`(L - \sigma I)^{-1}`, sparse LU with a symmetric fill-reducing ordering; default
        :math:`\sigma = -10^{-6}\,\overline{L_{ii}}`), ``"lobpcg"`` (block CG preconditioned by an incomplete LU of
        :math:`L - \sigma I`; an alternative when the full LU does not fit in memory, ~10x slower at n = 1e4).
        ``"auto"`` picks dense for ``nd <= 500`` or ``k >= nd/2``, else shift-invert. A cached result for a larger
        ``k`` is sliced. Timings (one thread, unit sphere, k = 10 graph, 50 pairs): n = 1e4 ~5 s, n = 1e5 ~40 s CPU
        (~1.3 GB peak), dominated by the sparse LU and the Lanczos solves.

        ``seed`` seeds the random start of the iterative methods (``numpy.random.default_rng(seed)``: the Lanczos
        start vector, the LOBPCG start block; ``"dense"`` draws nothing): an int >= 0 gives the same result whatever
        the global random states, which it leaves untouched; ``None`` takes one draw of torch's global random stream
        (:mod:`gpgeom._seeds`). Results are cached per ``method`` and, for the iterative methods, ``sigma``, ``tol``
        and ``seed`` (``None`` reuses a result computed with ``seed=None``, in memory or, with ``cache_dir``, on disk
        whatever torch's random state); a cached result for a larger ``k`` is sliced.

        Returns:
            ``eigenvalues`` ``(k,)`` ascending and ``eigenvectors`` ``(nd, k)``, orthonormal (for ``"rw"``:
            :math:`D`-orthonormal, :math:`V^\top (D \otimes I_d) V = I`).
        """
        nd = self.L.shape[0]
        check_positive("k", k, integer=True)
        check_seed("seed", seed)
        check_option("method", method, _EIG_METHODS)
        if k > nd:
            raise ValueError(f"`k`={k} exceeds the size n*d={nd} of the Laplacian.")
        if method == "auto":
            method = "dense" if (nd <= 500 or 2 * k >= nd) else "shift-invert"
        if method != "dense" and k >= nd - 1:
            method = "dense"
        # what the result depends on (the dense solver: nothing else; seed=None: any start of the iterative ones)
        options = (method,) if method == "dense" else (method, sigma, float(tol), seed)
        for (kk, opts), val in self._cache.items():
            if opts == options and kk >= k:
                return val[0][:k].copy(), val[1][:, :k].copy()
        A = self.symmetric_operator()
        path = None
        if self.cache_dir is not None:
            path = os.path.join(
                self.cache_dir, f"eig_{self._hash(A, (k, method, sigma, tol, seed, self.normalization))}.npz"
            )
            if os.path.exists(path):
                with np.load(path) as f:
                    vals, vecs = f["vals"], f["vecs"]
                self._cache[(k, options)] = (vals, vecs)
                return vals.copy(), vecs.copy()
        t0 = time.perf_counter()
        diag_mean = float(np.mean(A.diagonal())) or 1.0
        shift = -1e-6 * diag_mean if sigma is None else float(sigma)
        # the dense solver draws nothing: seed=None takes no draw of torch's global stream for it
        rng = None if method == "dense" else np.random.default_rng(resolve_seed("seed", seed))
        if method == "dense":
            vals, vecs = np.linalg.eigh(A.toarray())
            vals, vecs = vals[:k], vecs[:, :k]
        elif method == "shift-invert":
            M = sp.csc_matrix(A - shift * sp.identity(nd, format="csr"))
            lu = spla.splu(M, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
            opinv = spla.LinearOperator((nd, nd), matvec=lu.solve, dtype=np.float64)
            v0 = rng.standard_normal(nd)
            vals, vecs = spla.eigsh(A, k=k, sigma=shift, which="LM", OPinv=opinv, v0=v0, tol=tol)
        else:
            M = sp.csc_matrix(A - shift * sp.identity(nd, format="csr"))
            ilu = spla.spilu(M, drop_tol=1e-5, fill_factor=20)
            prec = spla.LinearOperator((nd, nd), matvec=ilu.solve, dtype=np.float64)
            X0 = rng.standard_normal((nd, k))
            with quiet("", UserWarning):  # lobpcg's tolerance notes, in this thread only (gpgeom._warnings)
                vals, vecs = spla.lobpcg(
                    A, X0, M=prec, largest=False, tol=tol or 1e-9, maxiter=2000, retLambdaHistory=False
                )
        order = np.argsort(vals)
        vals = np.asarray(vals[order], dtype=np.float64)
        vecs = np.asarray(vecs[:, order], dtype=np.float64)
        if self.normalization == "rw":
            vecs = vecs / np.repeat(np.sqrt(self.degree), self.dim)[:, None]
        self.timings[f"eigs(k={k}, {method})"] = time.perf_counter() - t0
        self._cache[(k, options)] = (vals, vecs)
        if path is not None:
            os.makedirs(self.cache_dir, exist_ok=True)
            np.savez(path, vals=vals, vecs=vecs)
        return vals.copy(), vecs.copy()

    # -------------------------------------------------------------------------------------------------------- #
    def lift(self, vectors: object) -> np.ndarray:
        r"""Bundle vectors to ambient vector fields, :math:`v_i = T_i c_i`.

        Args:
            vectors: ``(n d,)`` or ``(n d, k)`` node-major frame coordinates (e.g. eigenvectors).

        Returns:
            ``(n, D)`` or ``(n, D, k)``.
        """
        c = np.asarray(vectors.detach().cpu() if isinstance(vectors, torch.Tensor) else vectors, dtype=np.float64)
        nd = self.n * self.dim
        if c.ndim not in (1, 2) or c.shape[0] != nd:
            raise ValueError(
                f"`vectors` must have shape (n*d,) or (n*d, k) with n*d={self.n}*{self.dim}={nd}, got {c.shape}."
            )
        if c.ndim == 1:
            return np.einsum("nDd,nd->nD", self.frames, c.reshape(self.n, self.dim))
        return np.einsum("nDd,ndk->nDk", self.frames, c.reshape(self.n, self.dim, c.shape[1]))

    def project(self, vectors: object) -> np.ndarray:
        r"""Ambient vectors ``(n, D)`` to node-major frame coordinates ``(n d,)``: :math:`c_i = T_i^\top v_i`
        (the tangential part; the normal part is discarded)."""
        if isinstance(vectors, torch.Tensor):
            vectors = vectors.detach().cpu().numpy()
        v = np.asarray(vectors, dtype=np.float64)
        if v.shape != self.points.shape:
            raise ValueError(f"`vectors` must have the point cloud's shape (n, D)={self.points.shape}, got {v.shape}.")
        return np.einsum("nDd,nD->nd", self.frames, v).ravel()

    def state(self) -> dict:
        r"""Every field (and the graph's) as tensors and plain values, for a file read with ``weights_only=True``
        (:meth:`from_state` rebuilds the object without recomputation)."""

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(a))

        G = self.graph
        L = sp.csr_matrix(self.L)
        graph = {"n": int(G.n), "k": int(G.k), "method": str(G.method), "n_components": int(G.n_components)}
        graph.update({name: t(getattr(G, name)) for name in ("rows", "cols", "dists", "rho", "labels")})
        out = {name: t(getattr(self, name)) for name in _ARRAY_FIELDS}
        out.update(
            graph=graph,
            L={"data": t(L.data), "indices": t(L.indices), "indptr": t(L.indptr), "shape": list(L.shape)},
            normalization=str(self.normalization),
            eps=None if self.eps is None else float(self.eps),
            scale=float(self.scale),
            timings={str(k): float(v) for k, v in self.timings.items()},
            cache_dir=self.cache_dir,
            frame_fit=self.frame_fit,
            k_pca=int(self.k_pca),
        )
        return out

    @classmethod
    def from_state(cls, s: dict) -> ConnectionLaplacian:
        r"""The object :meth:`state` describes (files written before ``frame_fit`` existed get ``"pca"`` frames
        at new points, as then)."""
        g = s["graph"]
        arrays = {name: g[name].numpy() for name in ("rows", "cols", "dists", "rho", "labels")}
        graph = ProximityGraph(n=g["n"], k=g["k"], method=g["method"], n_components=g["n_components"], **arrays)
        m = s["L"]
        L = sp.csr_matrix((m["data"].numpy(), m["indices"].numpy(), m["indptr"].numpy()), shape=tuple(m["shape"]))
        return cls(
            graph=graph,
            L=L,
            normalization=s["normalization"],
            eps=s["eps"],
            scale=s["scale"],
            timings=dict(s["timings"]),
            cache_dir=s["cache_dir"],
            frame_fit=s.get("frame_fit", "pca"),
            k_pca=s.get("k_pca", 0),
            **{name: s[name].numpy() for name in _ARRAY_FIELDS},
        )

    def transport(self, i: int, j: int) -> np.ndarray:
        r"""The ``(d, d)`` transport :math:`O_{ij}` (frame ``j`` to frame ``i``) along the edge ``i ~ j``."""
        a, b = min(i, j), max(i, j)
        pos = np.searchsorted(self.graph.rows * self.n + self.graph.cols, a * self.n + b)
        if pos >= self.graph.n_edges or self.graph.rows[pos] != a or self.graph.cols[pos] != b:
            raise KeyError(f"Nodes {i} and {j} are not joined by an edge.")
        O = self.transports[pos]
        return O.copy() if i < j else O.T.copy()


def connection_laplacian(
    X: object,
    k: int = 10,
    *,
    dim: int | None = None,
    k_pca: int | None = None,
    graph: str = "knn",
    delta: float = 1.0,
    weights: str = "connectivity",
    eps: float | None = None,
    alpha: float = 0.0,
    normalization: str = "none",
    threshold: float = 0.9,
    frame_fit: str = "auto",
    duplicates: str = "raise",
    duplicate_tol: float | None = None,
    on_disconnected: str = "warn",
    frames: object | None = None,
    cache_dir: str | None = None,
    workers: int = 1,
    progress: bool | None = None,
    _stages: StageBar | None = None,
) -> ConnectionLaplacian:
    r"""Build the tangent frames, Procrustes connection and connection Laplacian of a point cloud.

    The defaults follow the reference (RVGP): union kNN graph with ``k=10``, unit weights, unnormalised
    :math:`L = D - S`, dimension estimated; but PCA neighbourhoods are ambient kNN (not graph hops) and frames are
    tilt-corrected (``frame_fit="pca"`` gives plain local PCA). For convergence to the rough Laplacian use
    ``weights="gaussian", alpha=1.0, normalization="sym"`` (and a larger ``k``, e.g. 30) on quasi-uniform clouds. On
    i.i.d. random clouds the ``"sym"`` eigenvectors carry the fluctuations of :math:`\sqrt{D_i}`: the part of a
    smooth tangent field outside the span of the first 100 eigenfields (1200 random points on an ellipsoid, relative
    L2, seed 0 of ``benchmarks/results/rvgp_span.md``) is 14.1 % with those weights at ``k=10`` (7.0 % at
    ``k=30``), 5.9 % with the defaults (``"rw"`` with the same weights: 7.0 %, at ``k=30`` 4.3 %).

    Args:
        X: Points ``(n, D)`` (numpy, torch or sequence).
        k: Neighbours of the proximity graph (:func:`proximity_graph`).
        dim: Manifold dimension ``d`` (``None``: estimated, :func:`estimate_dimension`).
        k_pca: Points per local-PCA neighbourhood (default ``max(k + 1, ceil(1.5 k))``, the reference's size).
        graph: ``"knn"``, ``"mutual"`` or ``"cknn"``.
        delta: The CkNN scale :math:`\delta` (``graph="cknn"``).
        weights: ``"connectivity"`` (1 per edge) or ``"gaussian"`` (:math:`e^{-\|x_i-x_j\|^2/\varepsilon}`).
        eps: :math:`\varepsilon` of the ``"gaussian"`` weights (``None``: the median k-th-neighbour distance
            squared over 4).
        alpha: Density normalisation exponent (0: none, 1: Laplace-Beltrami limit whatever the density).
        normalization: ``"none"``, ``"sym"`` or ``"rw"``.
        threshold: Explained-variance threshold of the dimension estimate (:func:`estimate_dimension`).
        frame_fit: ``"auto"`` (default: the polynomial tilt correction of degree 2 to 6 that predicts the
            neighbourhoods best, :func:`~gpgeom.geometry.tangent.local_pca`), ``"sextic"``, ``"quintic"``,
            ``"quartic"``, ``"cubic"``, ``"quadratic"`` or ``"pca"`` (the reference's plain local PCA).
        duplicates: ``"raise"`` or ``"drop"`` (see the module docstring).
        duplicate_tol: The distance below which two points are duplicates (``None``: :math:`10^{-10}` times the
            bounding-box diagonal, :func:`~gpgeom.geometry.point_cloud.find_duplicates`).
        on_disconnected: ``"warn"``, ``"raise"`` or ``"ignore"``.
        frames: Optional given frames ``(n, D, d)`` with orthonormal columns (e.g. the exact tangent planes),
            used instead of local PCA.
        cache_dir: Directory for caching eigenpairs on disk (keyed by a hash of the operator).
        workers: Threads of the KD-tree neighbour queries of the graph and the frames (-1: all).
        progress: A bar of the stages (``CONNECTION_STAGES``: neighbour graph, frames, connection Laplacian):
            ``True``, ``False`` or ``None`` (shown in a terminal or notebook only; :mod:`gpgeom._progress`).
        _stages: The :class:`~gpgeom._progress.StageBar` of a caller (RVGP) that shows the stages instead of a bar
            of their own (``progress`` is then not read).

    Returns:
        A :class:`ConnectionLaplacian`.
    """
    X0 = as_points("X", X)
    check_option("normalization", normalization, _NORMALIZATIONS)
    check_option("weights", weights, _WEIGHTS)
    check_positive("k", k, integer=True)
    if k_pca is None:
        k_pca = max(k + 1, int(np.ceil(1.5 * k)))
    check_positive("k_pca", k_pca, integer=True)
    if dim is not None:
        _check_dim(dim, X0.shape[1], k_pca)
    with stage_bar(CONNECTION_STAGES, desc="connection Laplacian", progress=progress, within=_stages) as bar:
        bar.start("neighbour graph")
        pts, index = _handle_duplicates(X0, duplicates, duplicate_tol)
        timings: dict = {}
        t0 = time.perf_counter()
        G = proximity_graph(pts, k, method=graph, delta=delta, on_disconnected=on_disconnected, workers=workers)
        timings["graph"] = time.perf_counter() - t0
        bar.start("frames")
        t0 = time.perf_counter()
        if frames is None:
            kp = min(k_pca, len(pts))
            T, s, fit_used = tangent_frames(
                pts, dim, k_pca=kp, threshold=threshold, fit=frame_fit, workers=workers, return_fit=True
            )
        else:
            T = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float64)
            if T.ndim != 3 or T.shape[:2] != (len(X0), X0.shape[1]):
                raise ValueError(f"`frames` must have shape (n, D, d) = ({len(X0)}, {X0.shape[1]}, d), got {T.shape}.")
            T, fit_used, kp = T[index], "given", 0
            _check_dim(T.shape[2], X0.shape[1], T.shape[2] + 1)
            if dim is not None and T.shape[2] != dim:
                raise ValueError(f"`frames` have d={T.shape[2]} columns but dim={dim} was given.")
            gram = np.swapaxes(T, 1, 2) @ T
            if not np.allclose(gram, np.eye(T.shape[2]), atol=1e-8):
                raise ValueError("`frames` must have orthonormal columns (T_i^T T_i = I).")
            s = np.ones((len(pts), T.shape[2]))
        timings["frames"] = time.perf_counter() - t0
        bar.start("connection Laplacian")
        t0 = time.perf_counter()
        O, cos = procrustes(T[G.rows], T[G.cols])
        w, w_self, eps_used = _edge_weights(G, weights, eps, alpha)
        L, deg = _assemble(G.n, T.shape[2], G.rows, G.cols, O, w, w_self, normalization)
        timings["laplacian"] = time.perf_counter() - t0
        scale = 4.0 / eps_used if (eps_used is not None and normalization != "none" and alpha == 1.0) else 1.0
    return ConnectionLaplacian(
        points=pts,
        index=index,
        graph=G,
        frames=T,
        singular_values=s,
        transports=O,
        alignment=cos[:, -1] if cos.ndim == 2 and cos.shape[1] else np.ones(G.n_edges),
        weights=w,
        self_weights=w_self,
        degree=deg,
        L=L,
        normalization=normalization,
        eps=eps_used,
        scale=scale,
        timings=timings,
        cache_dir=cache_dir,
        frame_fit=fit_used,
        k_pca=kp,
    )


def graph_laplacian(
    X: object,
    k: int = 10,
    *,
    graph: str = "knn",
    delta: float = 1.0,
    weights: str = "connectivity",
    eps: float | None = None,
    alpha: float = 0.0,
    normalization: str = "none",
    duplicates: str = "raise",
    duplicate_tol: float | None = None,
    on_disconnected: str = "warn",
    cache_dir: str | None = None,
    workers: int = 1,
    progress: bool | None = None,
    _stages: StageBar | None = None,
) -> ConnectionLaplacian:
    r"""The scalar graph Laplacian (``n x n``): the same construction with :math:`d = 1` and :math:`O_{ij} = 1`.

    ``"none"``: :math:`L = D - W`; ``"sym"``: :math:`I - D^{-1/2} W D^{-1/2}`; ``"rw"``: :math:`I - D^{-1} W`
    (self loops included in :math:`W` and :math:`D`; they cancel in ``"none"``). The returned object's ``frames`` are
    ``(n, D, 1)`` zeros (there is no tangent direction); use :meth:`ConnectionLaplacian.eigenpairs` as usual.
    ``progress`` and ``_stages``: as in :func:`connection_laplacian`, with the stages ``GRAPH_STAGES`` (neighbour
    graph, graph Laplacian).
    """
    X0 = as_points("X", X)
    check_option("normalization", normalization, _NORMALIZATIONS)
    with stage_bar(GRAPH_STAGES, desc="graph Laplacian", progress=progress, within=_stages) as bar:
        bar.start("neighbour graph")
        pts, index = _handle_duplicates(X0, duplicates, duplicate_tol)
        t0 = time.perf_counter()
        G = proximity_graph(pts, k, method=graph, delta=delta, on_disconnected=on_disconnected, workers=workers)
        timings = {"graph": time.perf_counter() - t0, "frames": 0.0}
        bar.start("graph Laplacian")
        t0 = time.perf_counter()
        O = np.ones((G.n_edges, 1, 1))
        w, w_self, eps_used = _edge_weights(G, weights, eps, alpha)
        L, deg = _assemble(G.n, 1, G.rows, G.cols, O, w, w_self, normalization)
        timings["laplacian"] = time.perf_counter() - t0
        scale = 4.0 / eps_used if (eps_used is not None and normalization != "none" and alpha == 1.0) else 1.0
    return ConnectionLaplacian(
        points=pts,
        index=index,
        graph=G,
        frames=np.zeros((G.n, pts.shape[1], 1)),
        singular_values=np.ones((G.n, 1)),
        transports=O,
        alignment=np.ones(G.n_edges),
        weights=w,
        self_weights=w_self,
        degree=deg,
        L=L,
        normalization=normalization,
        eps=eps_used,
        scale=scale,
        timings=timings,
        cache_dir=cache_dir,
    )
