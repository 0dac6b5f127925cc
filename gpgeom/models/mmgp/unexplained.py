r"""What MMGP's GP inputs do not explain, and how it grows on unseen geometry.

The GP inputs keep :math:`n_g` geometry modes: :math:`\xi = \Phi_g M_2 (X - \bar X)` (Casenave et al., NeurIPS
2023, arXiv:2305.12871, Eq. (3)). The rest of the transported geometry, the **geometry residual**

.. math:: r = X - \bar X - \Phi_g^\top \xi \in \mathbb{R}^{N_c \times d},

is invisible to the GPs. Its effect on the outputs shows up in two places of a fitted model: the learned noise
:math:`\sigma^2_k` of every coefficient and scalar GP (variation that :math:`z = (\xi, \mu)` does not explain), and
the POD truncation residual of every field (:func:`~gpgeom.models.mmgp.reduction.truncation_variance`). Both
are measured on training shapes, so both are the size they have for a *typical* training shape; a shape whose
residual is larger than any training shape's (a notch profile the training family never produced) gets the same
constant terms, and its predictive standard deviation barely moves although its error does.

**The boundary residual energy.** The shape of a mesh is its boundary; the interior coordinates are an artefact of
the morphing (Floater weights depend on each mesh's triangulation). The residual is therefore measured on the
boundary :math:`\partial\Omega_c` of the common mesh, with the lumped P1 quadrature of the boundary edges
(weights :math:`w_b`, half the adjacent edge lengths; in 3D a third of the adjacent boundary triangle areas,
:func:`boundary_quadrature`):

.. math:: \rho = \int_{\partial \Omega_c} |r|^2 \, ds \approx \sum_b w_b |r_b|^2, \qquad
          g = \rho / \bar\rho,

where :math:`\bar\rho` is the mean of :math:`\rho` over the training shapes, each computed **out of sample** (its
residual with respect to the geometry POD of the 10 interleaved folds without it, like the truncation variance),
so that a new shape of the training family has :math:`g \approx 1` on average. :math:`g` is the per-mesh
**out-of-distribution score** (:attr:`MMGPPrediction.ood_score <gpgeom.models.mmgp.MMGPPrediction>`,
:meth:`MMGP.ood_score <gpgeom.models.mmgp.MMGP.ood_score>`): how many times the unresolved boundary energy of the
mesh exceeds that of a typical training shape.

**Model assumption (linear response).** A small boundary perturbation :math:`r` changes the fields and scalars
linearly, with no preferred direction among the unresolved perturbations, so the energy of the variation it causes
is proportional to :math:`\rho`; other sources (mesh noise, the input scalars) add a constant. For each variance
term, the squared residual :math:`e_i` of training shape :math:`i` is modelled as
:math:`E[e \mid \rho] = \nu + \kappa \rho`, with the least-squares slope
:math:`\kappa = \max(0, \operatorname{cov}(e, \rho) / \operatorname{var}(\rho))`, and the **geometric share** of
the term at a typical shape is

.. math:: s = \min\bigl(1, \kappa \bar\rho / \ell\bigr) \in [0, 1],

with :math:`\ell` the level of the term. The term is multiplied, for a mesh of residual energy :math:`\rho`, by

.. math:: \lambda = 1 - s + s\, \rho / \bar\rho \ \ (\ge 0),

which is 1 at the reference level and grows linearly with the unresolved boundary energy. Each term is matched to
the residuals it was estimated from:

* **truncation variance** of field :math:`f`: :math:`e_i` its out-of-sample truncation energy
  (:func:`~gpgeom.models.mmgp.reduction.truncation_residuals`, the same folds), :math:`\rho_i` out of sample,
  :math:`\ell` the mean of :math:`e`, reference :math:`\bar\rho`, so :math:`\lambda = 1 - s + s g`;
* **learned noise** of the GPs (a field's coefficients pooled, or one scalar): :math:`e_i` the closed-form
  leave-one-out squared residuals of the GP outputs (:func:`~gpgeom.models.mmgp.latent_gp.loo_residuals`),
  :math:`\ell` the summed noise variances, and :math:`\rho` **in sample** (each training shape against the model's
  own geometry POD), reference its mean :math:`\bar\rho_{\mathrm{in}}`: the noise was learned from the training
  shapes' in-sample coordinates, whose unresolved residual is smaller than a new shape's (out-of-sample), so a new
  shape of the training family gets :math:`\lambda \approx \bar\rho / \bar\rho_{\mathrm{in}} > 1`.

Measured on NotchedPlate2d (300 shapes): the fitted shares of the truncation terms are 0.76-1 and those of the
learned noise 1 with 8 geometry modes (``benchmarks/results/mmgp_before8.md``), 0.82-1 and 0.80-1 with 24
(``benchmarks/results/mmgp.md``). Shares above 0 mean that every term's residuals grow with its :math:`\rho` (the
out-of-sample truncation energy with :math:`\rho`, the leave-one-out residuals with :math:`\rho_{\mathrm{in}}`): a
positive covariance, :math:`\kappa > 0`; their correlations are in no committed table.

Not seen by the score: shape features that the kept modes do represent (a wedge-shaped notch of the training
depths lies inside the shape space, :math:`g < 1`) and features smaller than the common mesh resolves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gpgeom.geometry.boundary import boundary_loops
from gpgeom.geometry.mesh import Mesh

__all__ = ["GeometryResidual", "boundary_quadrature", "cv_folds", "geometry_share", "variance_factor"]

#: Relative size below which a difference between training meshes is rounding (of the coordinates, or of a field
#: after transfer), not content: in units of the values' magnitude.
ROUNDING = 64 * np.finfo(np.float64).eps


def cv_folds(n: int, folds: int = 10) -> list[tuple[np.ndarray, np.ndarray]]:
    r"""``min(folds, n)`` interleaved folds of ``range(n)``: ``(train, test)`` index pairs (fold ``f`` tests
    ``f, f + folds, ...``), the split of :func:`~gpgeom.models.mmgp.reduction.truncation_variance`."""
    folds = min(folds, n)
    out = []
    for f in range(folds):
        test = np.arange(f, n, folds)
        out.append((np.setdiff1d(np.arange(n), test), test))
    return out


def boundary_quadrature(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes and lumped P1 weights of :math:`\int_{\partial\Omega} f\,ds` on every boundary loop of ``mesh``.

    For triangle meshes (in 2D, or surfaces in 3D with boundary loops) the boundary is the set of loops of
    boundary edges; for tetrahedral meshes it is the boundary triangle surface, and for a closed triangle surface in
    3D (no boundary edge) the surface itself, which is all of its shape.

    Returns:
        ``(nodes (k,) int64, weights (k,))``: on loops, :math:`w_b` is half the length of the two boundary edges at
        node :math:`b`; on a triangle surface, a third of the area of the triangles around :math:`b` (lumped P1
        mass). Exact for piecewise-constant, second order for smooth integrands.
    """
    if mesh.cell_dim == 3 or not len(mesh.boundary_facets()[0]):
        F = mesh.boundary_facets()[0] if mesh.cell_dim == 3 else mesh.cells
        P = mesh.points
        area = 0.5 * np.linalg.norm(np.cross(P[F[:, 1]] - P[F[:, 0]], P[F[:, 2]] - P[F[:, 0]]), axis=1)
        w = np.bincount(F.ravel(), weights=np.repeat(area / 3.0, 3), minlength=mesh.n_points)
        nodes = np.unique(F)
        return nodes.astype(np.int64), w[nodes]
    nodes, weights = [], []
    for loop in boundary_loops(mesh):
        p = mesh.points[loop]
        edge = np.linalg.norm(np.roll(p, -1, axis=0) - p, axis=1)  # edge b -> b+1
        nodes.append(loop)
        weights.append(0.5 * (edge + np.roll(edge, 1)))
    return np.concatenate(nodes).astype(np.int64), np.concatenate(weights)


def geometry_share(e: np.ndarray, rho: np.ndarray, rho_mean: float, level: float) -> float:
    r"""The geometric share :math:`s = \min(1, \kappa \bar\rho / \ell)` of a variance term of level ``level``,
    from out-of-sample squared residuals ``e`` ``(n,)`` and boundary residual energies ``rho`` ``(n,)`` of the
    training shapes (:math:`\kappa` the least-squares slope of ``e`` on ``rho``, clipped at 0)."""
    e, rho = np.asarray(e, dtype=np.float64), np.asarray(rho, dtype=np.float64)
    var = float(np.mean((rho - rho.mean()) ** 2))
    if len(e) < 3 or not var > 0 or not level > 0:
        return 0.0
    kappa = max(0.0, float(np.mean((rho - rho.mean()) * (e - e.mean()))) / var)
    return float(min(1.0, kappa * rho_mean / level))


def variance_factor(share: Tensor, score: Tensor) -> Tensor:
    r""":math:`\lambda = 1 - s + s g`, ``n x k`` for shares ``(k,)`` and scores ``(n,)``."""
    return (1.0 - share) + share * score[:, None]


@dataclass
class GeometryResidual:
    r"""The boundary energy of the geometry POD residual, and its training reference (float64 numpy).

    Attributes:
        nodes: Boundary nodes of the common mesh, ``(k,)`` int64.
        weights: Their lumped quadrature weights :math:`w_b`, ``(k,)``.
        mean_energy: :math:`\bar\rho`, the mean out-of-sample :math:`\rho` of the training shapes, ``(1,)``.
        noise_reference: :math:`\bar\rho_{\mathrm{in}}`, the mean in-sample :math:`\rho` of the training shapes
            (their residuals under the model's own geometry POD, the ones the GPs' noise was learned with), ``(1,)``.
        train_scores: :math:`g_i = \rho_i / \bar\rho` of the training shapes (out of sample), ``(n,)``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    mean_energy: np.ndarray
    noise_reference: np.ndarray
    train_scores: np.ndarray

    @staticmethod
    def energies(nodes: np.ndarray, weights: np.ndarray, residual: np.ndarray) -> np.ndarray:
        r""":math:`\rho = \sum_b w_b |r_b|^2` of residuals ``(k, N_c, d)``; returns ``(k,)``."""
        rb = residual[:, nodes, :]
        return np.einsum("b,kb->k", weights, (rb * rb).sum(-1))

    @classmethod
    def fit(
        cls, X: np.ndarray, common: Mesh, geometry, pod_fit, folds: int = 10
    ) -> tuple[GeometryResidual, np.ndarray, np.ndarray]:
        r"""Boundary residual energies of the training shapes, out of sample and in sample, and their means.

        Args:
            X: The transported coordinates of the training shapes, ``(n, N_c, d)``.
            common: The common mesh (its boundary carries the quadrature).
            geometry: The model's :class:`~gpgeom.models.mmgp.reduction.GeometryPOD` (``n_g`` modes).
            pod_fit: ``pod_fit(X_subset, k) -> GeometryPOD`` (the model's geometry POD on a subset, ``k`` modes).
            folds: Interleaved folds (:func:`cv_folds`).

        Returns:
            ``(residual, rho, rho_in)``: ``rho`` ``(n,)`` the out-of-sample energies (each shape against the POD of
            the folds without it), ``rho_in`` ``(n,)`` the in-sample ones (against ``geometry``).
        """
        nodes, weights = boundary_quadrature(common)
        n = X.shape[0]
        rho = np.zeros(n)
        for train, test in cv_folds(n, folds):
            k = min(geometry.n_modes, len(train) - 1)
            if k >= 1:
                pod = pod_fit(X[train], k)
                R = pod.residual(X[test].reshape(len(test), -1)).reshape(X[test].shape)
            else:  # one training shape: its own mean is all the fold can represent
                R = X[test] - X[train].mean(0)
            rho[test] = cls.energies(nodes, weights, R)
        rho_in = cls.energies(nodes, weights, geometry.residual(X.reshape(n, -1)).reshape(X.shape))
        # all shapes in the span: the references stay positive and the scores finite
        # (one fixed shape: residuals at the rounding of the coordinates count as zero, not as a scale)
        W = float(weights.sum())
        floor = max(
            1e-12 * float(np.mean((X - X.mean(0)) ** 2)) * W,
            ROUNDING**2 * float(np.mean(X**2)) * W,
            np.finfo(np.float64).tiny,
        )
        mean, mean_in = max(float(rho.mean()), floor), max(float(rho_in.mean()), floor)
        if float(rho_in.mean()) <= floor:
            # every training shape in the POD's span (n - 1 centred modes): the in-sample residuals are rounding,
            # not a scale the GPs' noise could have been learned against, so they count as zero (no geometric
            # share of the noise; as a reference they made the noise scale mean / floor ~ 1e12 at prediction)
            rho_in = np.zeros_like(rho_in)
        return cls(nodes, weights, np.array([mean]), np.array([mean_in]), rho / mean), rho, rho_in

    def energy(self, residual: np.ndarray) -> np.ndarray:
        r""":math:`\rho` of residuals ``(k, N_c, d)`` (any space dimension ``d``) or ``(k, 2 N_c)`` (interleaved,
        2D); returns ``(k,)``."""
        if residual.ndim == 3:
            return self.energies(self.nodes, self.weights, residual)
        return self.energies(self.nodes, self.weights, residual.reshape(len(residual), -1, 2))

    def score(self, residual: np.ndarray) -> np.ndarray:
        r"""The out-of-distribution scores :math:`g = \rho / \bar\rho` of residuals, ``(k,)``."""
        return self.energy(residual) / float(self.mean_energy[0])

    def state(self) -> dict[str, Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> GeometryResidual:
        out = {k: state[k].numpy() for k in cls.__dataclass_fields__}
        out["nodes"] = out["nodes"].astype(np.int64)
        for k in ("weights", "mean_energy", "noise_reference", "train_scores"):
            out[k] = out[k].astype(np.float64)
        return cls(**out)
