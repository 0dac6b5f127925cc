r"""Moments of the tensor entries under FunBaT's factorised posterior: marginals (``predict``) and joint covariances
(the BoTorch adapter).

An entry of Fang et al.'s model (ICLR 2024) is multilinear in the factors, :math:`f(x) = b + \sum_p W_p \prod_k
u^k_{p_k}(x_k)` (Tucker; CP: :math:`W` the superdiagonal of ones). Under the mean-field posterior
:math:`q(b)\, q(\mathcal W) \prod_k q(\mathcal U^k)` the factors are independent, so the first and second moments of
entries are exact:

.. math::
    \mathbb E f(x) = \mathbb E b + \mu_W^\top \bigotimes_k m^k(x_k), \qquad
    \mathbb E[f_W(x) f_W(x')] = \sum_{p, p'} \mathbb E[W_p W_{p'}] \prod_k
    \mathbb E\big[u^k_{p_k}(x_k)\, u^k_{p'_k}(x'_k)\big], \quad f_W = f - b,

i.e. :math:`\operatorname{Cov}(f(x), f(x')) = v_b + \operatorname{tr}\big((\Sigma_W + \mu_W \mu_W^\top) \bigotimes_k
S^k(x_k, x'_k)\big) - \mathbb E f_W(x)\, \mathbb E f_W(x')` with :math:`S^k(s, t) =
\operatorname{Cov}_q(u^k(s), u^k(t)) + m^k(s) m^k(t)^\top` (:mod:`~gpgeom.models.funbat.conditional`; modes
independent). For :math:`x = x'` this is the predictive variance; the noise adds :math:`\mathbb E[\tau^{-1}] =
b_\tau/(a_\tau - 1)`.

The entries are not jointly Gaussian under :math:`q` (products of Gaussians); the joint moments define the
moment-matched Gaussian that the BoTorch adapter conditions (:mod:`~gpgeom.models.funbat.surrogate`). Everything here is
in standardised units of ``y`` and normalised coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gpgeom.models.funbat.conditional import latent_conditional, latent_cross_covariance
from gpgeom.models.funbat.inference import chunks, cp_products, kron_mats, kron_vecs
from gpgeom.models.funbat.noise import noise_factor

__all__ = ["entry_marginals", "entry_joint"]


def entry_marginals(model: Any, Xn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Mean and variance of the entries at normalised coordinates ``Xn`` (``n x K``), standardised units, and the
    noise variance of a new entry (0-dim): :math:`\mathbb E[\tau^{-1}]`, times :math:`\nu/(\nu - 2)` for Student-t
    noise (:mod:`~gpgeom.models.funbat.noise`)."""
    K = len(model.ranks)
    mom = []
    for k in range(K):
        md = model._modes[k]
        m, C = latent_conditional(model.kernels[k], md.t, md.post, Xn[:, k])
        mom.append((m, C + m[:, :, None] * m[:, None, :]))
    if model.decomposition == "cp":
        z, M = cp_products(mom)
        mean = z.sum(-1)
        second = M.sum((-1, -2))
    else:
        mu = model._core_mean
        EwwT = model._core_cov + mu[:, None] * mu[None, :]
        P = mu.shape[0]
        means, seconds = [], []
        for sl in chunks(Xn.shape[0], P * P):
            z = kron_vecs([m[sl] for m, _ in mom])
            means.append(z @ mu)
            seconds.append((kron_mats([S[sl] for _, S in mom]) * EwwT).sum((-1, -2)))
        mean, second = (torch.cat(v) if v else mu.new_zeros(0) for v in (means, seconds))  # no entry: empty
    var = (second - mean.square()).clamp_min(0.0) + model._bias_var
    mean = mean + model._bias_mean
    noise = model._tau_b / (model._tau_a - 1.0) * noise_factor(getattr(model, "_dof", None))
    return mean, var, noise


def entry_joint(model: Any, tables: Sequence[Sequence[Tensor]], X1n: Tensor, X2n: Tensor) -> tuple[Tensor, Tensor]:
    r"""Means at ``X1n`` and the covariance between the entries at ``X1n`` (``B x q1 x K``) and ``X2n``
    (``B x q2 x K``), normalised coordinates, standardised units (module docstring).

    Args:
        model: A fitted :class:`~gpgeom.models.funbat.model.FunBaT`.
        tables: Per mode, :func:`gpgeom.engine.sites.gain_products` of its smoother gains.
        X1n, X2n: Coordinates of one batch shape ``B``.

    Returns:
        ``(mean1, cov)``: ``B x q1`` and ``B x q1 x q2``, differentiable in the coordinates.
    """
    K = len(model.ranks)
    B, q1, q2 = X1n.shape[0], X1n.shape[1], X2n.shape[1]
    means1, means2, seconds = [], [], []
    for k in range(K):
        md = model._modes[k]
        m1, m2, C = latent_cross_covariance(model.kernels[k], md.t, md.post, tables[k], X1n[..., k], X2n[..., k])
        means1.append(m1)
        means2.append(m2)
        seconds.append(C + m1[:, :, None, :, None] * m2[:, None, :, None, :])  # B x q1 x q2 x R x R
    if model.decomposition == "cp":
        f1 = math.prod(means1).sum(-1)
        f2 = math.prod(means2).sum(-1)
        second = math.prod(seconds).sum((-1, -2))
    else:
        mu = model._core_mean
        EwwT = model._core_cov + mu[:, None] * mu[None, :]
        P = mu.shape[0]
        f1 = kron_vecs(means1) @ mu
        f2 = kron_vecs(means2) @ mu
        flat = [S.reshape(B * q1 * q2, *S.shape[-2:]) for S in seconds]
        parts = [(kron_mats([S[sl] for S in flat]) * EwwT).sum((-1, -2)) for sl in chunks(B * q1 * q2, P * P)]
        second = torch.cat(parts).reshape(B, q1, q2) if parts else f1.new_zeros(B, q1, q2)
    cov = second - f1[:, :, None] * f2[:, None, :] + model._bias_var
    return f1 + model._bias_mean, cov
