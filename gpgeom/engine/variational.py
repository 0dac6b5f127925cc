r"""Variational building blocks shared by gpgeom's amortised and latent-variable models.

Two pieces, both generic (no model is hard-wired here):

1. :class:`LowRankGaussian`: a Gaussian over the values of a field at :math:`n` points with a *low-rank plus
   diagonal* covariance,

   .. math::
       u \sim \mathcal N\bigl(\mu,\; L L^\top + \operatorname{diag}(\sigma^2)\bigr), \qquad
       \mu \in \mathbb R^{n},\; L \in \mathbb R^{n \times k},\; \sigma^2 \in \mathbb R^{n}_{\ge 0},

   the output of a pointwise network that gives, at every point :math:`x_i`, a mean :math:`\mu(x_i)`, a variance
   :math:`\sigma^2(x_i)` and a row :math:`l(x_i) \in \mathbb R^k`. Because the network is evaluated pointwise, the
   Gaussians over all finite point sets are consistent: they are the finite-dimensional marginals of a Gaussian
   process with mean :math:`\mu(x)` and kernel :math:`c(x, x') = l(x)^\top l(x') + \sigma^2(x)\,\delta_{x x'}`
   (Vadeboncoeur et al., ICML 2023, arXiv 2301.11040, Sec. 3, "neural GP" of the solution field). ``k = 0`` is the
   diagonal (independent points) case. It converts to a Pyro distribution (``Normal(...).to_event(1)`` or
   ``LowRankMultivariateNormal``, log-density by the Woodbury identity and a :math:`k \times k` capacitance
   Cholesky, :math:`O(n k^2)`) and to a GPyTorch ``MultivariateNormal`` whose covariance is a
   ``LowRankRootAddedDiagLinearOperator`` (same density, usable wherever GPyTorch/BoTorch expects an MVN).
   Affine maps :math:`u \mapsto b + d \odot u` (hard boundary conditions) and added observation noise keep the form.

2. ELBO helpers around Pyro: :func:`elbo_loss` (``Trace_ELBO().differentiable_loss``, a differentiable scalar
   for :func:`gpgeom.engine.fitting.fit`), :func:`elbo_terms` (the same estimate split by site, for diagnostics and
   tests: :math:`\mathrm{ELBO} = \sum_{\text{model sites}} \log p - \sum_{\text{guide sites}} \log q` on one joint
   draw), and :func:`bounded_variance` (the variance parameterisation of the reference code).

Shapes: a leading batch shape ``(...)`` is allowed everywhere; ``loc`` ``(..., n)``, ``cov_factor``
``(..., n, k)``, ``cov_diag`` ``(..., n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.distributions as pdist
import torch
from gpytorch.distributions import MultivariateNormal
from linear_operator.operators import DiagLinearOperator, LowRankRootAddedDiagLinearOperator, LowRankRootLinearOperator
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample
from torch import Tensor

from gpgeom._validation import check_positive, check_tensor

__all__ = ["LowRankGaussian", "bounded_variance", "elbo_loss", "elbo_terms", "gaussian_log_density"]


def bounded_variance(raw: Tensor, lower: float = 1e-5, upper: float = 1.0) -> Tensor:
    r"""Map an unconstrained tensor to variances in :math:`(a, b)`: :math:`a + (b - a)\,\mathrm{sigmoid}(r)`.

    The reference RGNP code writes the same map as ``logvar = log(lo + (1 - lo) sigmoid(raw))``; the lower bound
    keeps the entropy term :math:`-\log q` finite and the upper bound stops early training from inflating the
    variance. Shape of ``raw``.
    """
    if not 0 <= lower < upper:
        raise ValueError(f"`bounded_variance` needs 0 <= lower < upper, got lower={lower}, upper={upper}.")
    return lower + (upper - lower) * torch.sigmoid(raw)


@dataclass
class LowRankGaussian:
    r"""Gaussian :math:`\mathcal N(\mu, L L^\top + \operatorname{diag}(\sigma^2))` over ``n`` field values.

    Attributes:
        loc: Mean :math:`\mu`, ``(..., n)``.
        cov_diag: Diagonal :math:`\sigma^2 \ge 0`, ``(..., n)``.
        cov_factor: Factor :math:`L`, ``(..., n, k)``, or ``None`` for a diagonal covariance (``k = 0``).
    """

    loc: Tensor
    cov_diag: Tensor
    cov_factor: Tensor | None = None

    def __post_init__(self) -> None:
        check_tensor("loc", self.loc, floating=True, finite=False)
        if self.loc.dim() < 1:
            raise ValueError(f"`loc` must have at least one dimension (the points), got shape {tuple(self.loc.shape)}.")
        check_tensor("cov_diag", self.cov_diag, floating=True, finite=False)
        if self.cov_diag.shape != self.loc.shape:
            raise ValueError(
                f"`cov_diag` must have the shape of `loc` {tuple(self.loc.shape)}, got {tuple(self.cov_diag.shape)}."
            )
        if self.cov_factor is not None:
            check_tensor("cov_factor", self.cov_factor, floating=True, finite=False)
            if self.cov_factor.dim() != self.loc.dim() + 1 or self.cov_factor.shape[:-1] != self.loc.shape:
                raise ValueError(
                    f"`cov_factor` must have shape {(*self.loc.shape, 'k')} (loc's shape plus a rank dimension), "
                    f"got {tuple(self.cov_factor.shape)}."
                )
            if self.cov_factor.shape[-1] == 0:
                self.cov_factor = None

    # -- moments ----------------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        r"""Rank :math:`k` of the low-rank part (0 when diagonal)."""
        return 0 if self.cov_factor is None else int(self.cov_factor.shape[-1])

    @property
    def mean(self) -> Tensor:
        r""":math:`\mu`, ``(..., n)``."""
        return self.loc

    @property
    def variance(self) -> Tensor:
        r"""Marginal variances :math:`\sigma_i^2 + \|l_i\|^2`, ``(..., n)``."""
        if self.cov_factor is None:
            return self.cov_diag
        return self.cov_diag + (self.cov_factor**2).sum(-1)

    @property
    def stddev(self) -> Tensor:
        r"""Marginal standard deviations, ``(..., n)``."""
        return self.variance.clamp_min(0).sqrt()

    @property
    def covariance_matrix(self) -> Tensor:
        r"""Dense covariance :math:`L L^\top + \operatorname{diag}(\sigma^2)`, ``(..., n, n)`` (for small ``n``)."""
        cov = torch.diag_embed(self.cov_diag)
        if self.cov_factor is not None:
            cov = cov + self.cov_factor @ self.cov_factor.transpose(-1, -2)
        return cov

    # -- transformations --------------------------------------------------------------------------------------------
    def affine(self, shift: Tensor | float = 0.0, scale: Tensor | float = 1.0) -> LowRankGaussian:
        r"""Distribution of :math:`b + d \odot u` (elementwise ``shift`` :math:`b` and ``scale`` :math:`d`,
        broadcastable to ``loc``): mean :math:`b + d\mu`, factor :math:`\operatorname{diag}(d) L`, diagonal
        :math:`d^2 \sigma^2`. Used for hard boundary conditions :math:`u = b(x) + d(x)\,\hat u(x)`."""
        opts = {"dtype": self.loc.dtype, "device": self.loc.device}
        scale = torch.broadcast_to(torch.as_tensor(scale, **opts), self.loc.shape)
        shift = torch.broadcast_to(torch.as_tensor(shift, **opts), self.loc.shape)
        factor = None if self.cov_factor is None else scale[..., None] * self.cov_factor
        return LowRankGaussian(shift + scale * self.loc, scale**2 * self.cov_diag, factor)

    def add_noise(self, noise_variance: Tensor | float) -> LowRankGaussian:
        r"""Distribution of :math:`u + \epsilon`, :math:`\epsilon \sim \mathcal N(0, s^2 I)` (observation noise)."""
        return LowRankGaussian(self.loc, self.cov_diag + noise_variance, self.cov_factor)

    def __getitem__(self, index) -> LowRankGaussian:
        r"""Index the *batch* dimensions (not the points)."""
        factor = None if self.cov_factor is None else self.cov_factor[index]
        return LowRankGaussian(self.loc[index], self.cov_diag[index], factor)

    # -- conversions ------------------------------------------------------------------------------------------------
    def to_pyro(self) -> pdist.TorchDistribution:
        r"""A Pyro distribution with event shape ``(n,)``: ``Normal(loc, sqrt(cov_diag)).to_event(1)`` when
        diagonal, else ``LowRankMultivariateNormal(loc, cov_factor, cov_diag)`` (reparameterised samples
        :math:`\mu + L\varepsilon_k + \sigma\odot\varepsilon`)."""
        if self.cov_factor is None:
            return pdist.Normal(self.loc, self.cov_diag.sqrt()).to_event(1)
        return pdist.LowRankMultivariateNormal(self.loc, self.cov_factor, self.cov_diag)

    def to_gpytorch(self, jitter: float = 0.0) -> MultivariateNormal:
        r"""A GPyTorch ``MultivariateNormal`` with a lazily represented covariance.

        Diagonal case: ``DiagLinearOperator``; low-rank case: ``LowRankRootAddedDiagLinearOperator`` (GPyTorch then
        solves and takes log-determinants by the Woodbury identity). ``jitter`` is added to the diagonal (needed
        when some :math:`\sigma_i^2 = 0`, e.g. on a hard boundary, before calling ``log_prob``).
        """
        check_positive("jitter", jitter, allow_zero=True)
        diag = self.cov_diag + jitter if jitter > 0 else self.cov_diag
        if self.cov_factor is None:
            return MultivariateNormal(self.loc, DiagLinearOperator(diag))
        cov = LowRankRootAddedDiagLinearOperator(LowRankRootLinearOperator(self.cov_factor), DiagLinearOperator(diag))
        return MultivariateNormal(self.loc, cov)

    def log_prob(self, value: Tensor) -> Tensor:
        r"""Log-density of ``value`` ``(..., n)``, shape ``(...)`` (Woodbury form through :meth:`to_pyro`)."""
        return self.to_pyro().log_prob(value)

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        r"""Reparameterised draw, ``(*sample_shape, ..., n)``."""
        return self.to_pyro().rsample(torch.Size(sample_shape))

    @classmethod
    def from_gpytorch(cls, mvn: MultivariateNormal) -> LowRankGaussian:
        r"""Back from :meth:`to_gpytorch` (exact for its operators; any other MVN is read as a dense rank-``n``
        factor :math:`L = \mathrm{chol}(\Sigma)` with zero diagonal)."""
        cov = mvn.lazy_covariance_matrix
        if isinstance(cov, DiagLinearOperator):
            return cls(mvn.mean, cov.diagonal(dim1=-2, dim2=-1))
        if isinstance(cov, LowRankRootAddedDiagLinearOperator):
            return cls(mvn.mean, cov._diag_tensor.diagonal(dim1=-2, dim2=-1), cov._linear_op.root.to_dense())
        return cls(mvn.mean, torch.zeros_like(mvn.mean), torch.linalg.cholesky(cov.to_dense()))


# ---------------------------------------------------------------------------------------------------------------------
# ELBO helpers
def elbo_loss(model: Callable, guide: Callable, *args, num_particles: int = 1, **kwargs) -> Tensor:
    r"""Differentiable negative ELBO of a Pyro ``model``/``guide`` pair, :math:`-\mathcal L`.

    :math:`\mathcal L = \mathbb E_{q}\bigl[\log p(\text{obs}, \text{latents}) - \log q(\text{latents})\bigr]`,
    estimated by ``pyro.infer.Trace_ELBO(num_particles).differentiable_loss`` with reparameterised guide samples
    (plates scale subsampled sites, ``pyro.factor`` adds arbitrary log-likelihood terms). The return value is a
    scalar tensor with a graph to every parameter used by the model and guide, ready for ``loss.backward()`` or as
    the callable objective of :func:`gpgeom.engine.fitting.fit` (``fit(lambda: elbo_loss(...), module=net,
    optimizer="adam")``). Nothing is registered in Pyro's global parameter store unless the model calls
    ``pyro.param``/``pyro.module`` itself.
    """
    check_positive("num_particles", num_particles, integer=True)
    return pyro.infer.Trace_ELBO(num_particles=num_particles).differentiable_loss(model, guide, *args, **kwargs)


def elbo_terms(model: Callable, guide: Callable, *args, **kwargs) -> dict[str, Tensor]:
    r"""One-draw ELBO split by site: ``{site: log p (model) or -log q (guide)}``, plus ``"elbo"`` (their sum).

    The guide is run once, the model replayed on its draws (as :func:`elbo_loss` does with one particle); each
    entry is the site's scaled log-probability summed over its batch (model sites, including observed sites and
    ``pyro.factor`` terms, positive sign; guide sites with a minus sign, keyed ``"q:<name>"``). With the same
    random state, ``terms["elbo"] == -elbo_loss(...)``.
    """
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    terms: dict[str, Tensor] = {}
    for tr, sign, prefix in ((model_trace, 1.0, ""), (guide_trace, -1.0, "q:")):
        tr.compute_log_prob()
        for name, site in tr.nodes.items():
            if site["type"] == "sample" and not isinstance(site["fn"], _Subsample):  # skip plate markers
                terms[prefix + name] = sign * site["log_prob_sum"]
    total = sum(terms.values()) if terms else torch.zeros(())
    terms["elbo"] = total
    return terms


def gaussian_log_density(value: Tensor, loc: Tensor, variance: Tensor) -> Tensor:
    r"""Elementwise :math:`\log \mathcal N(v; m, s^2) = -\tfrac12 (v - m)^2 / s^2 - \tfrac12 \log(2\pi s^2)`."""
    return -0.5 * (value - loc) ** 2 / variance - 0.5 * torch.log(2 * math.pi * variance)
