r"""RVGP's out-of-sample extension: Nystrom features of new points, tapered beyond the graph's reach, and
:class:`OutOfReachWarning` for the points beyond it.

**Out-of-sample extension** (:meth:`RVGP.extend`, gpgeom's addition: the paper's model is transductive, its test
points belong to the cloud). A new point :math:`x` near the cloud joins the graph with its ``k`` nearest cloud points
:math:`j` (weights :math:`w_j`: 1, or the Laplacian's Gaussian weights), gets a frame :math:`T_x` by PCA of those
neighbours, and transports :math:`O_{xj}` = Procrustes(:math:`T_x, T_j`). Solving the eigen-equation's row of the
new node for its value (Nystrom) gives, with :math:`c_l(j) = T_j^\top \phi_l(j)` and :math:`W = \sum_j w_j`,

.. math:: c_l(x) = \frac{\sum_j w_j O_{xj} c_l(j)}{W - \lambda_l} \ (\text{"none"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/\sqrt{d_x d_j}}{1 - \lambda_l - 1/d_x}\ (\text{"sym"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/d_x}{1 - \lambda_l - 1/d_x}\ (\text{"rw"}),

(:math:`d_x = 1 + W` the degree with the self loop), and :math:`\phi_l(x) = T_x c_l(x)`. At a cloud point this
reproduces :math:`c_l` up to the asymmetry of its kNN neighbourhood (the cloud's own basis is returned there). The
scalar case is the same with :math:`d = 1`, :math:`O = 1`. The formula is a neighbour average: it does not decay
away from the cloud (before the taper below, a point 10 units away got the posterior std of a training point).
So with :math:`\delta` the distance to the nearest cloud point and :math:`r` the graph's reach (the median distance
of a cloud point to its ``k``-th neighbour), the features are :math:`\gamma\phi_l(x)`,
:math:`\gamma = \exp(-(\delta - r)_+^2 / 2r^2)`, and the prior variance they no longer carry,
:math:`(1 - \gamma^2)\bar p\, T_x T_x^\top` with :math:`\bar p` the cloud's mean prior variance per tangent
direction, is restored: far from the cloud the mean returns to 0 and the variance to the prior. Points beyond the
reach (:math:`\delta > r`) raise an :class:`OutOfReachWarning` with their count.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from gpgeom._warnings import user_stacklevel
from gpgeom.geometry.connection import procrustes
from gpgeom.geometry.tangent import frames_at
from gpgeom.models.rvgp._inputs import _numpy

__all__ = ["OutOfReachWarning"]


class OutOfReachWarning(UserWarning):
    r"""New points beyond the graph's reach (:meth:`RVGP.extend`): the prediction returns to the prior there."""


class _NystromExtension:
    r"""The extension's steps as methods of :class:`~gpgeom.models.rvgp.model.RVGP`, which defines its public
    face (:attr:`~gpgeom.models.rvgp.model.RVGP.reach`, :meth:`~gpgeom.models.rvgp.model.RVGP.extend`,
    :meth:`~gpgeom.models.rvgp.model.RVGP.predict_at`): they read the model's Laplacian, eigenpairs, basis, dtype
    and device, and keep the KD-tree of the cloud in ``_tree``."""

    def _new_points(self, points: object) -> np.ndarray:
        r"""``points`` as a float64 ``(m, D)`` array, validated for the extension."""
        lap = self.laplacian
        P = np.asarray(_numpy(points), dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != lap.points.shape[1]:
            raise ValueError(f"`points` must have shape (m, {lap.points.shape[1]}), got {P.shape}.")
        if not np.all(np.isfinite(P)):
            raise ValueError(f"`points` must be finite, got {int((~np.isfinite(P)).sum())} NaN or infinite value(s).")
        if not np.allclose(lap.self_weights, 1.0):
            raise ValueError("The out-of-sample extension needs a Laplacian without density normalisation (alpha=0).")
        if self._tree is None:
            self._tree = cKDTree(lap.points)
        return P

    def _warn_out_of_reach(self, P: np.ndarray) -> None:
        r"""One :class:`OutOfReachWarning` with the count of the points ``(m, D)`` beyond :attr:`RVGP.reach`."""
        r = self.reach
        far = self._tree.query(P, k=1)[0].reshape(len(P)) > r
        if np.any(far):
            warnings.warn(
                f"{int(far.sum())} of {len(P)} new points lie beyond the graph's reach (farther than r={r:.3g}, the "
                "median k-th-neighbour distance, from every cloud point): their features are tapered, and the "
                "prediction returns to the prior (mean 0, or a scalar field's training mean; prior variance) with the "
                "distance.",
                OutOfReachWarning,
                stacklevel=user_stacklevel(),
            )

    def _extend(self, points: object, warn: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r""":meth:`RVGP.extend`, the taper :math:`\gamma` ``(m,)`` and the cloud point each point is (or -1)
        ``(m,)``."""
        lap = self.laplacian
        P = self._new_points(points)
        if warn:
            self._warn_out_of_reach(P)
        kk = lap.graph.k
        dist, nb = self._tree.query(P, k=kk)
        dist, nb = dist.reshape(len(P), kk), nb.reshape(len(P), kk)
        r = self.reach
        gamma = np.exp(-0.5 * np.square(np.maximum(dist[:, 0] - r, 0.0) / r))
        w = np.ones_like(dist) if lap.eps is None else np.exp(-(dist**2) / lap.eps)
        W = w.sum(1)
        lam = self.eigenvalues
        k = len(lam)
        vecs = self.eigenvectors
        if self.scalar:
            c_nb = vecs[nb]  # m x kk x k
            frames = np.zeros((len(P), P.shape[1], 0))
        else:
            d = lap.dim
            c_all = vecs.reshape(lap.n, d, k)
            if lap.k_pca:  # the Laplacian's kind of frames (frames_at), else PCA of the graph neighbours
                frames = frames_at(lap.points, P, lap.k_pca, d, lap.frame_fit)
            else:
                Y = lap.points[nb] - lap.points[nb].mean(1, keepdims=True)
                frames = np.swapaxes(np.linalg.svd(Y, full_matrices=False)[2][:, :d, :], 1, 2)  # m x D x d
            O, _ = procrustes(np.repeat(frames[:, None], kk, 1), lap.frames[nb])  # m x kk x d x d
            c_nb = np.einsum("mjab,mjbk->mjak", O, c_all[nb])  # transported into frame x
        if lap.normalization == "none":
            num = np.einsum("mj,mj...->m...", w, c_nb)
            den = W[:, None] - lam[None, :]
        else:
            dx = 1.0 + W
            ww = w / np.sqrt(dx[:, None] * lap.degree[nb]) if lap.normalization == "sym" else w / dx[:, None]
            num = np.einsum("mj,mj...->m...", ww, c_nb)
            den = 1.0 - lam[None, :] - 1.0 / dx[:, None]
        den = np.where(np.abs(den) < 1e-8, 1e-8, den)
        if self.scalar:
            phi = (num / den)[:, None, :]
        else:
            c_x = num / den[:, None, :]  # m x d x k
            phi = np.einsum("mDd,mdk->mDk", frames, c_x)
        # a point of the cloud keeps its own basis values and frame
        same = dist[:, 0] <= 1e-12 * max(1.0, float(np.abs(lap.points).max()))
        out = torch.as_tensor(phi * gamma[:, None, None], dtype=self.dtype, device=self.device)
        if np.any(same):
            own = torch.as_tensor(nb[same, 0], device=self.device)
            out[torch.as_tensor(np.flatnonzero(same), device=self.device)] = self.kernel.basis.eigenvectors[own]
            if not self.scalar:
                frames[same] = lap.frames[nb[same, 0]]
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        return out, as_t(frames), as_t(gamma), as_t(np.where(same, nb[:, 0], -1))
