r"""The round-trip transfer error of MMGP and its variance on the nodes of any mesh.

MMGP predicts on the common mesh and interpolates back: :math:`\hat U = Q_i \hat F` (Casenave et al., NeurIPS 2023,
arXiv:2305.12871, Eq. (2)). Even a perfect prediction on the common nodes, :math:`\hat F = P_i U_i`, leaves the
**round-trip error**

.. math:: T_i = U_i - Q_i P_i U_i \in \mathbb{R}^{N_i},

the part of mesh :math:`i`'s P1 field that the P1 space of the common mesh cannot represent: :math:`P_i U_i`
samples the field at the common nodes and :math:`Q_i` interpolates those samples at the nodes of mesh :math:`i`.
It is in the error of every prediction, on training and new meshes alike, and neither the GP variance nor the POD
truncation variance holds it (both live on the common nodes, where it is zero).

**Where it is large.** Node :math:`j` of mesh :math:`i` lies at :math:`y_j` (morphed) in a common element with
nodes :math:`x_c` and P1 weights :math:`\lambda_c = (Q_i)_{jc}`. The field of mesh :math:`i` is piecewise
linear with gradient jumps on its own edges, which cross the common element: the interpolation error at
:math:`y_j` is first order in the distances :math:`|y_j - x_c|` times the gradient jumps, and zero where
:math:`y_j` is a common node. Its variance is modelled as

.. math:: \operatorname{Var}[T_j] = w_j\, (Q_i \kappa)_j, \qquad
          w_j = \sum_c \lambda_c\, |y_j - x_c|^2 \ \ (\ge 0),

with :math:`w_j` the **interpolation spread** of the node (:func:`interpolation_spread`; the P1 interpolation error
of :math:`|y|^2` at :math:`y_j`: zero at the common nodes, largest at the centroids, of the size of the squared
common element) and :math:`\kappa \ge 0` a per-field intensity on the common nodes (squared gradient jumps: large
near the notch of a plate), interpolated like a P1 field.

**Estimate** (:func:`transfer_intensity`). On the training meshes :math:`T_i` is known exactly, and
:math:`E[T_j^2] = w_j \kappa(y_j)` gives a local moment (ratio) estimate on every common node,

.. math:: \kappa_c = \frac{\sum_{i,j} (Q_i)_{jc} T_{ij}^2 + \bar\kappa\, d_0}{\sum_{i,j} (Q_i)_{jc} w_{ij} + d_0},
          \qquad \bar\kappa = \frac{\sum_{i,j} T_{ij}^2}{\sum_{i,j} w_{ij}},
          \qquad d_0 = \frac{1}{n N_c} \sum_{c,i,j} (Q_i)_{jc} w_{ij},

i.e. the nodes of the training meshes around common node :math:`c`, weighted by their P1 weights, pooled with one
pseudo-mesh of the field's global intensity :math:`\bar\kappa` (:math:`d_0` is what one training mesh contributes to
a common node on average), so that a common node few training nodes surround keeps a finite, non-zero estimate.
The model keeps :math:`\kappa d_0` (the variance at a node of spread :math:`d_0`, in the field's squared units) and
:math:`d_0`, and evaluates :math:`(w_j / d_0)(Q \kappa d_0)_j`, so that its dtype never holds a power of the
coordinates' unit.

Measured on notched plates (``benchmarks/mmgp_transfer.py``): a variance proportional to :math:`w_j` fits the
squared round-trip errors of held-out meshes in every quartile of :math:`w` (their ratio ``T^2 / Var`` has no trend
in :math:`w`; a variance proportional to :math:`w_j^2`, the order of a smooth field, is 1.7-2.1 times too small in
RMS). The term is added to the predictive variance of the fields (``MMGP(transfer_variance=True)``) and, in the
Monte Carlo draws, as independent nodal noise (the error varies within one common element).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from torch import Tensor

__all__ = ["interpolation_spread", "roundtrip_moments", "roundtrip_variance", "transfer_intensity"]


def interpolation_spread(Q: sp.spmatrix, morphed: np.ndarray, common_morphed: np.ndarray) -> np.ndarray:
    r"""The interpolation spread :math:`w_j = \sum_c (Q)_{jc} |y_j - x_c|^2` of every node, ``(N_i,)``.

    Args:
        Q: :math:`Q_i`, sparse ``(N_i, N_c)`` (P1 weights, rows summing to 1).
        morphed: The morphed nodes :math:`y_j` of mesh :math:`i`, ``(N_i, d)``.
        common_morphed: The morphed common nodes :math:`x_c`, ``(N_c, d)``.

    Returns:
        ``(N_i,)``, ``>= 0`` (weights of rounding size below zero are clipped); zero at nodes that coincide with a
        common node, and, for nodes inside the common mesh, the P1 interpolation error of :math:`|y|^2`.
    """
    C = sp.coo_matrix(Q)
    d2 = ((np.asarray(morphed)[C.row] - np.asarray(common_morphed)[C.col]) ** 2).sum(1)
    return np.bincount(C.row, weights=C.data * d2, minlength=C.shape[0]).clip(min=0.0)


def roundtrip_moments(Q: sp.spmatrix, P: sp.spmatrix, U: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""One training mesh's contribution to the estimate of :func:`transfer_intensity`: :math:`Q_i^\top T_i^2`
    ``(N_c, m)`` (:math:`T_i = U_i - Q_i P_i U_i`, squared entrywise) and :math:`Q_i^\top w_i` ``(N_c,)``.

    Args:
        Q: :math:`Q_i` ``(N_i, N_c)``; P: :math:`P_i` ``(N_c, N_i)``; U: the fields ``(N_i, m)``; w: the
            interpolation spreads of the nodes ``(N_i,)`` (:func:`interpolation_spread`).
    """
    T = U - Q @ (P @ U)
    with np.errstate(over="ignore", invalid="ignore"):  # fields beyond the dtype's range are refused by the fit
        return np.asarray(Q.T @ (T * T)), np.asarray(Q.T @ w)


def transfer_intensity(num: np.ndarray, den: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    r"""The intensity of the module docstring from the summed moments of ``n`` training meshes: ``num``
    :math:`\sum_i Q_i^\top T_i^2` ``(N_c, m)`` and ``den`` :math:`\sum_i Q_i^\top w_i` ``(N_c,)``
    (:func:`roundtrip_moments`).

    Returns:
        ``(kappa_d0 (N_c, m), d0)``: :math:`\kappa\, d_0` (in the field's squared units: the variance at a node of
        spread :math:`d_0`, so that no power of the coordinates' unit enters the model's dtype) and the reference
        spread :math:`d_0`; the variance of a node of spread :math:`w_j` is :math:`(w_j / d_0)(Q\, \kappa d_0)_j`.
        Zero intensity (and :math:`d_0 = 1`) when no training node has a spread (no round trip loses anything,
        e.g. ``morphing="none"``).
    """
    num, den = np.clip(num, 0.0, None), np.clip(den, 0.0, None)
    total = float(den.sum())
    if not total > 0:
        return np.zeros_like(num), 1.0
    d0 = total / (n * len(den))
    kbar_d0 = num.sum(0) / (n * len(den))  # (m,): kappa_bar d0, without forming kappa_bar
    return (num + kbar_d0) * (d0 / (den + d0))[:, None], d0


def roundtrip_variance(Q: Tensor, kappa_d0: Tensor, w: Tensor) -> Tensor:
    r""":math:`\operatorname{Var}[T_j] = (w_j / d_0) (Q\, \kappa d_0)_j` on the nodes of one mesh, ``(N_i, m)``, for
    :math:`Q` sparse ``(N_i, N_c)``, :math:`\kappa d_0` ``(N_c, m)`` and the relative spreads :math:`w / d_0`
    ``(N_i,)`` (:func:`transfer_intensity`)."""
    return ((Q @ kappa_d0).clamp_min(0.0) * w[:, None]).clamp_min(0.0)
