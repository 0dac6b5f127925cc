r"""RVGP's ambient part: a stationary kernel on the cloud's coordinates projected onto the tangent frames,
used by exact fits on at most ``AMBIENT_MAX_POINTS`` distinct points.

**The ambient part** (``ambient="rbf"``, the default; ``"matern"``; ``None``: the spectral kernel alone). On 1200
i.i.d. points of an ellipsoid, 30 % observed, the spectral kernel alone (k = 50) had relative L2 0.90 on a rough field
and 0.099 on a smooth one, a plain Euclidean GP (one RBF on xyz shared by the three components) 0.23 and 0.0068 (seed
0 of ``benchmarks/results/rvgp.md``). The basis is what loses: a graph's eigenfields carry the sampling noise of the
cloud, so 4.0-14.1 % of a smooth tangent field (relative L2) lies outside the span of the first 100 whatever the
normalisation, weights and graph size (:func:`~gpgeom.geometry.connection.connection_laplacian`; 5.9-6.8 % at its
defaults), and 44-58 % of a rough one outside the first 200 (1200 i.i.d. points of the ellipsoid, seeds 0-2,
``benchmarks/results/rvgp_span.md``); no filter, prior or noise split recovers what the span lacks. The model
therefore adds a stationary kernel on the ambient coordinates projected onto the frames,

.. math:: K(x, x') \mathrel{+}= P_x\, \sigma_a^2 k(|x - x'|)\, P_{x'}, \qquad P_x = T_x T_x^\top,

(the construction of Hutchinson et al., "Vector-valued Gaussian processes on Riemannian manifolds via gauge
independent projected kernels", NeurIPS 2021, with the estimated frames), :math:`\sigma_a^2` and the lengthscale
learnt with the rest by the marginal likelihood, which weighs the two parts. The field stays tangent by
construction; the sum contains the Euclidean GP made tangent, so it does not lose to it except through the frames:
:math:`P_x` with estimated frames drops the part of the field across them (frames of a local cubic fit: 2.4e-4 of a
smooth field on a sphere of 1200 random points, 10x the Euclidean GP's error; the frames of the default degree-2-6
fit, :func:`~gpgeom.geometry.tangent.local_pca`, leak ~1e-6). The algebra is dense on the tangent components of the
observations (:mod:`~gpgeom.botorch.low_rank_ambient`), so the part is used by exact fits on at most
``AMBIENT_MAX_POINTS`` distinct points; variational fits and larger ones use the spectral kernel alone. Against the
best of three Euclidean GPs with learnt hyperparameters (``benchmarks/rvgp.py``; 1200 points, 30 % observed, seeds
0-2), RVGP's relative L2 over theirs, median (max): sphere rough 1.00 (1.01), ellipsoid rough 0.98 (0.99), ellipsoid
smooth 0.045 (0.065), Swiss roll 0.42 (0.54), sphere smooth 0.064 (0.13): 1.6e-6 against 2.5e-5 (cubic frames: 14).

**Graph components.** The spectral part has no covariance between the connected components of the graph (the
connection Laplacian is block diagonal over them), and neither has the ambient part: :math:`k` is multiplied by
:math:`[c(x) = c(x')]`, :math:`c` the component label (of the nearest cloud point for a new point; a product of
kernels, so positive semi-definite), which the kernel reads from a last column of its inputs. Without it two unit
spheres 10 apart, one observed, gave means up to 111 on the other (the data's largest is 3) instead of the prior's 0:
the lengthscale ran to its upper bound, which the union's spread had raised; that bound is now taken from the widest
component, :math:`4 \max_c s_c`.
"""

from __future__ import annotations

import numpy as np
import torch
from gpytorch.constraints import GreaterThan, Interval
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from scipy.spatial import cKDTree

__all__ = ["AMBIENT_MAX_POINTS"]

_AMBIENT = ("rbf", "matern", None)
AMBIENT_MAX_POINTS = 2000  #: the most distinct training points of a fit with the ambient part (module docstring)


class _ByComponent:
    r"""A stationary kernel on inputs ``(..., q, D_in + 1)`` whose last column is a component label: the base
    kernel on the first ``D_in`` columns times :math:`[c(x) = c(x')]` (module docstring, *Graph components*)."""

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: object) -> torch.Tensor:
        K = super().forward(x1[..., :-1], x2[..., :-1], diag=diag, **params)
        if diag:
            return K * (x1[..., -1] == x2[..., -1]).to(K.dtype)
        return K * (x1[..., :, -1:] == x2[..., :, -1].unsqueeze(-2)).to(K.dtype)


class _ComponentRBFKernel(_ByComponent, RBFKernel):
    r"""RBF on the coordinates, zero between graph components (:class:`_ByComponent`)."""


class _ComponentMaternKernel(_ByComponent, MaternKernel):
    r"""Matern on the coordinates, zero between graph components (:class:`_ByComponent`)."""


def _ambient_kernel(points: np.ndarray, kind: str, labels: np.ndarray) -> tuple[ScaleKernel, tuple[float, float]]:
    r"""The ambient kernel :math:`\sigma_a^2 k(x, x') [c(x) = c(x')]` on the cloud's coordinates ``(n, D)`` and
    component ``labels`` ``(n,)``: RBF or Matern-5/2 with one lengthscale in :math:`[\delta, 4 s]` (:math:`\delta`
    the median nearest-neighbour distance of the cloud, below which the part is a nugget; :math:`s` the largest over
    the components of the root mean square distance to their centroid: longer lengthscales only make the kernel a
    low-degree polynomial with a huge variance, an ill-conditioned fit that took twice the iterations for the same
    error), started at :math:`s/2`, and :math:`\sigma_a^2 \ge 10^{-6}` (scaled units). Its inputs are the
    coordinates with the label as a last column (:func:`_ambient_inputs`)."""
    rms = max(
        float(np.sqrt(np.mean(np.sum(np.square(pts - pts.mean(0)), axis=1))))
        for pts in (points[labels == c] for c in np.unique(labels))
    )
    nn = cKDTree(points).query(points, k=2)[0][:, 1]
    lo, hi = float(np.median(nn)), 4.0 * max(rms, float(np.median(nn)))
    lo = min(lo, hi / 40)
    con = Interval(lo, hi)
    base = (
        _ComponentRBFKernel(lengthscale_constraint=con)
        if kind == "rbf"
        else _ComponentMaternKernel(2.5, lengthscale_constraint=con)
    )
    base.lengthscale = torch.as_tensor(min(max(rms / 2, 1.01 * lo), hi / 1.01), dtype=torch.float64)
    return ScaleKernel(base, outputscale_constraint=GreaterThan(1e-6)), (lo, hi)


def _ambient_origin(cloud: np.ndarray) -> np.ndarray:
    r"""The origin ``(D,)`` of the ambient kernel's inputs (:func:`_ambient_inputs`): the centroid of the ``(n, D)``
    cloud, in float64. The training inputs and those of ``predict_at`` both take it from the cloud."""
    return np.asarray(cloud, dtype=np.float64).mean(0)


def _ambient_inputs(points: np.ndarray, labels: np.ndarray, origin: np.ndarray) -> np.ndarray:
    r"""The ambient kernel's inputs ``(m, D + 1)``: the coordinates ``(m, D)`` relative to ``origin`` ``(D,)`` (the
    cloud's centroid, :func:`_ambient_origin`), taken in float64, and the component labels ``(m,)``. The kernel is
    stationary, so the shift changes nothing but the rounding: a cloud placed far from the origin (georeferenced,
    ``(5e5, 5e6, 100)``) kept its absolute coordinates, and ``predict_at`` of a float32 model rounded them to float32
    (0.5 m at 5e6) before the kernel took their differences; on a sphere of radius 50 its standard deviations were
    3.6x off (relative to their largest) from the same cloud at the origin, now 2e-7."""
    rel = np.asarray(points, dtype=np.float64) - np.asarray(origin, dtype=np.float64)
    return np.concatenate([rel, np.asarray(labels, dtype=np.float64)[:, None]], axis=1)
