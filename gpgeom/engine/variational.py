r"""Variational building blocks shared by gpgeom's amortised and latent-variable models.

Three pieces, all generic (no model is hard-wired here):

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

3. :class:`ModelDiscrepancy`: a Gaussian-process model of the error of an approximate field map (the model
   discrepancy of Kennedy & O'Hagan 2001), whose hyperparameters are the maximum a posteriori estimate given
   reference fields; added to a :class:`LowRankGaussian` (:meth:`LowRankGaussian.add_factor`), it turns the
   variational distribution of a physics-informed network into a predictive distribution of the true field.

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
from torch import Tensor, nn

from gpgeom._validation import check_positive, check_tensor

__all__ = [
    "DISCREPANCY_PRIOR",
    "LowRankGaussian",
    "ModelDiscrepancy",
    "bounded_variance",
    "elbo_loss",
    "elbo_terms",
    "gaussian_log_density",
    "squared_exponential",
]


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
        cov_diag: Diagonal :math:`\sigma^2 \ge 0`, ``(..., n)`` (a negative entry is a ``ValueError``).
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
        if bool((self.cov_diag < 0).any()):  # was kept: `variance` negative, `rsample` drew with variance 0 there
            raise ValueError(
                f"`cov_diag` must be >= 0 (variances), got minimum {float(self.cov_diag.min()):.6g} at "
                f"{int((self.cov_diag < 0).sum())} point(s)."
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
        r"""Distribution of :math:`u + \epsilon`, :math:`\epsilon \sim \mathcal N(0, s^2 I)` (observation noise);
        ``noise_variance`` :math:`s^2 \ge 0`, a float or a tensor broadcastable to ``loc`` ``(..., n)``."""
        s2 = torch.as_tensor(noise_variance, dtype=self.loc.dtype, device=self.loc.device)
        if bool((s2 < 0).any()):
            raise ValueError(f"`noise_variance` must be >= 0, got minimum {float(s2.min()):.6g}.")
        return LowRankGaussian(self.loc, self.cov_diag + s2, self.cov_factor)

    def add_factor(self, factor: Tensor) -> LowRankGaussian:
        r"""Distribution of :math:`u + F a`, :math:`a \sim \mathcal N(0, I_m)` independent of :math:`u`: the columns
        of ``factor`` :math:`F` ``(..., n, m)`` are appended to :math:`L` (covariance :math:`L L^\top + F F^\top +
        \operatorname{diag}\sigma^2`)."""
        check_tensor("factor", factor, floating=True, finite=False)
        if factor.dim() != self.loc.dim() + 1 or factor.shape[:-1] != self.loc.shape:
            raise ValueError(
                f"`factor` must have shape {(*self.loc.shape, 'm')} (loc's shape plus a rank dimension), got "
                f"{tuple(factor.shape)}."
            )
        joined = factor if self.cov_factor is None else torch.cat([self.cov_factor, factor], dim=-1)
        return LowRankGaussian(self.loc, self.cov_diag, joined)

    def __getitem__(self, index) -> LowRankGaussian:
        r"""Index the *batch* dimensions ``(...)`` (not the points): ``g[i]``, ``g[:, j]``, ``g[..., j]`` (the last
        batch dimension). The index is applied to ``loc`` and ``cov_diag`` with the point dimension kept (``[index,
        :]``) and to ``cov_factor`` with its last two kept: indexing a point, e.g. ``g[:, 0]`` of a ``(B, n)``
        distribution, used to slice ``loc`` and the factor's rows alike, a valid-looking Gaussian that treated the
        ``B`` independent batch members as one correlated vector; it is now an ``IndexError``."""
        idx = index if isinstance(index, tuple) else (index,)
        try:
            loc = self.loc[(*idx, slice(None))]
            diag = self.cov_diag[(*idx, slice(None))]
            factor = None if self.cov_factor is None else self.cov_factor[(*idx, slice(None), slice(None))]
        except IndexError as err:
            raise IndexError(
                f"LowRankGaussian indexes its batch dimensions {tuple(self.loc.shape[:-1])} only (not the points), "
                f"got index {index!r}: {err}"
            ) from None
        return LowRankGaussian(loc, diag, factor)

    # -- conversions ------------------------------------------------------------------------------------------------
    def to_pyro(self) -> pdist.TorchDistribution:
        r"""A Pyro distribution with event shape ``(n,)``: ``Normal(loc, sqrt(cov_diag)).to_event(1)`` when
        diagonal, else ``LowRankMultivariateNormal(loc, cov_factor, cov_diag)`` (reparameterised samples
        :math:`\mu + L\varepsilon_k + \sigma\odot\varepsilon`)."""
        if self.cov_factor is None:
            return pdist.Normal(self.loc, self.cov_diag.sqrt()).to_event(1)
        return _LowRankMultivariateNormal(self.loc, self.cov_factor, self.cov_diag)

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
        r"""Reparameterised draw :math:`\mu + L\varepsilon_k + \sigma \odot \varepsilon`, ``(*sample_shape, ..., n)``
        (no factorisation: valid for any rank and for zero variances, e.g. on a hard boundary)."""
        shape = torch.Size(sample_shape) + self.loc.shape
        opts = {"dtype": self.loc.dtype, "device": self.loc.device}
        draw = self.loc + self.cov_diag.clamp_min(0).sqrt() * torch.randn(shape, **opts)
        if self.cov_factor is not None:
            eps = torch.randn(torch.Size(sample_shape) + self.cov_factor.shape[:-2] + (self.rank, 1), **opts)
            draw = draw + (self.cov_factor @ eps)[..., 0]
        return draw

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


class _LowRankMultivariateNormal(pdist.LowRankMultivariateNormal):
    r"""Pyro's ``LowRankMultivariateNormal`` whose log-density is evaluated in float64 below float64.

    The Woodbury form :math:`r^\top D^{-1} r - w^\top C^{-1} w` (:math:`w = L^\top D^{-1} r`, capacitance
    :math:`C = I + L^\top D^{-1} L`) subtracts two terms that are :math:`\|L\|^2 / \min D` times larger than the
    result, through the factor of an equally ill-conditioned :math:`C`: in float32 with ``n = 5000`` points, rank 10
    and a diagonal of 1e-4 (the variational fields' lower bound is 1e-5) the log-density was 54 nats (3.3e-3) off
    float64's, while perturbing the covariance by float32 rounding moves it by about 3. The density of a float32
    distribution is therefore computed from its float64 copy (``O(n k^2)``, differentiable) and cast back; sampling and
    every other method are Pyro's."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self.loc.dtype == torch.float64:
            return super().log_prob(value)
        wide = pdist.LowRankMultivariateNormal(
            self.loc.double(), self.cov_factor.double(), self.cov_diag.double(), validate_args=False
        )
        if self._validate_args:
            self._validate_sample(value)
        return wide.log_prob(value.double()).to(self.loc.dtype)


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


# ---------------------------------------------------------------------------------------------------------------------
# model discrepancy
def squared_exponential(x1: Tensor, x2: Tensor, lengthscale: Tensor | float) -> Tensor:
    r""":math:`k(x, x') = \exp(-\|x - x'\|^2 / 2\ell^2)`; ``x1`` ``(..., n, D)``, ``x2`` ``(..., m, D)`` ->
    ``(..., n, m)``."""
    d2 = (x1[..., :, None, :] - x2[..., None, :, :]).pow(2).sum(-1)
    return torch.exp(-0.5 * d2 / lengthscale**2)


#: ``(name, mean, sd)`` of the normal priors of the first three discrepancy hyperparameters (log scale, log
#: lengthscale, log nugget fraction); the fourth, the boundary power :math:`p`, is uniform on (0, 1).
DISCREPANCY_PRIOR = (
    ("log_scale", 0.0, 3.0),
    ("log_lengthscale", math.log(0.5), 1.0),
    ("log_nugget", math.log(0.1), 2.0),
)


class ModelDiscrepancy(nn.Module):
    r"""A Gaussian-process model of the error of an approximate field map, calibrated on reference fields
    (the model discrepancy of Kennedy & O'Hagan, "Bayesian calibration of computer models", JRSS B 63(3), 2001,
    Eq. 5: truth = model output + discrepancy).

    For a field with parameters :math:`(z, w)` whose approximation :math:`\tilde u` has the boundary lift
    :math:`u = b + d\,\hat u` (:math:`d = 0` on the constrained boundary), the true field is

    .. math::
        u^*(x) = \tilde u(x) + \delta(x), \qquad
        \delta \mid z, w \sim \mathcal{GP}\Bigl(0,\; \rho^2\, |d(x)|^p |d(x')|^p
            \bigl(\tau^2 k_\ell(x, x') + \eta^2 \delta_{x x'}\bigr)\Bigr),

    :math:`k_\ell` the squared exponential (:func:`squared_exponential`) in coordinates normalised to
    :math:`[-1, 1]^D`, :math:`\eta = \kappa \tau` a nugget for the rough part of the error, :math:`p \in (0, 1)` how
    fast the error vanishes at the constrained boundary (:math:`p = 1`: like the lift; smaller: faster growth
    away from it) and :math:`\rho = \rho(z, w) \ge 0` an error indicator given by the caller (RGNP: the
    root-mean-square PDE residual of the mean field, the quantity that residual-based a posteriori error
    estimates bound the error by, :math:`\|u^* - \tilde u\| \le C \|\mathcal R[\tilde u]\|`; Verfürth, "A
    Posteriori Error Estimation Techniques for Finite Element Methods", OUP 2013, Sec. 1.4: :math:`\tau` plays the
    stability constant :math:`C`).

    The hyperparameters :math:`\theta = (\log\tau, \log\ell, \log\kappa, \operatorname{logit} p)` are the maximum
    a posteriori estimate (:meth:`calibrate`) under proper priors: :math:`\log\tau \sim \mathcal N(0, 3^2)`,
    :math:`\log\ell \sim \mathcal N(\log 0.5, 1)`, :math:`\log\kappa \sim \mathcal N(\log 0.1, 2^2)`,
    :math:`p \sim U(0, 1)` (:data:`DISCREPANCY_PRIOR`), given reference fields :math:`y_f` at points :math:`X_f`
    and the approximation's own Gaussian :math:`\mathcal N(m_f, B_f)` there:

    .. math::
        \log p(\theta \mid y) = \sum_f \log \mathcal N\bigl(y_f;\, m_f,\, B_f + C_\delta(X_f; \theta)\bigr)
            + \log p(\theta) + \text{const}.

    Until calibrated (``calibrated`` is ``False``) the discrepancy is zero. Hyperparameters and the flag are
    buffers (saved with the state dict, not trained by the optimiser of the host model).
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        start = [mean for _, mean, _ in DISCREPANCY_PRIOR] + [0.0]
        self.register_buffer("theta", torch.tensor(start, dtype=dtype or torch.get_default_dtype()))
        self.register_buffer("calibrated", torch.tensor(False))

    # -- hyperparameters ---------------------------------------------------------------------------------------------
    @staticmethod
    def unpack(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r""":math:`(\tau, \ell, \eta, p)` from :math:`\theta` ``(4,)`` (:math:`\log\ell` clamped to
        :math:`[\log 10^{-3}, \log 10^2]`, :math:`\log\tau, \log\kappa` to :math:`[-30, 30]`)."""
        tau = theta[0].clamp(-30.0, 30.0).exp()
        ell = theta[1].clamp(math.log(1e-3), math.log(1e2)).exp()
        eta = tau * theta[2].clamp(-30.0, 30.0).exp()
        return tau, ell, eta, torch.sigmoid(theta[3])

    def hyperparameters(self) -> dict[str, float]:
        r"""``{"scale": tau, "lengthscale": ell, "nugget": eta, "power": p}`` as floats."""
        tau, ell, eta, p = (float(v) for v in self.unpack(self.theta.detach()))
        return {"scale": tau, "lengthscale": ell, "nugget": eta, "power": p}

    @staticmethod
    def log_prior(theta: Tensor) -> Tensor:
        r""":math:`\log p(\theta)` (up to a constant): the normal priors of :data:`DISCREPANCY_PRIOR` and the
        uniform prior of :math:`p` through its logit (:math:`\log p + \log(1 - p)`)."""
        lp = sum(-0.5 * ((theta[i] - mean) / sd) ** 2 for i, (_, mean, sd) in enumerate(DISCREPANCY_PRIOR))
        return lp + torch.nn.functional.logsigmoid(theta[3]) + torch.nn.functional.logsigmoid(-theta[3])

    # -- the Gaussian process ----------------------------------------------------------------------------------------
    def _shape(self, d: Tensor, rho: Tensor, p: Tensor) -> Tensor:
        return d.abs() ** p * rho[..., None]

    def variance(self, d: Tensor, rho: Tensor) -> Tensor:
        r"""Marginal variances :math:`\rho^2 |d|^{2p} (\tau^2 + \eta^2)`, ``(B, n)`` for ``d`` ``(B, n)`` (the
        lift's :math:`d` at the points) and ``rho`` ``(B,)``; zeros until calibrated."""
        if not bool(self.calibrated):
            return torch.zeros_like(d)
        tau, _, eta, p = self.unpack(self.theta)
        return self._shape(d, rho, p) ** 2 * (tau**2 + eta**2)

    def covariance(self, x: Tensor, d: Tensor, rho: Tensor, theta: Tensor | None = None) -> Tensor:
        r""":math:`C_\delta` ``(B, n, n)`` at normalised points ``x`` ``(B, n, D)`` (with ``theta``: at those
        hyperparameters, calibrated or not)."""
        tau, ell, eta, p = self.unpack(self.theta if theta is None else theta)
        g = self._shape(d, rho, p)
        k = tau**2 * squared_exponential(x, x, ell) + eta**2 * torch.eye(x.shape[-2], dtype=x.dtype, device=x.device)
        return g[..., :, None] * k * g[..., None, :]

    def factor(self, x: Tensor, d: Tensor, rho: Tensor) -> Tensor:
        r"""A square root :math:`F` ``(B, n, n)`` of :math:`C_\delta = F F^\top` (Cholesky factor of
        :math:`\tau^2 k_\ell + \eta^2 I`, computed in float64, scaled by the shape), for
        :meth:`LowRankGaussian.add_factor`."""
        tau, ell, eta, p = (v.double() for v in self.unpack(self.theta))
        xd = x.double()
        k = tau**2 * squared_exponential(xd, xd, ell) + eta**2 * torch.eye(x.shape[-2], dtype=xd.dtype, device=x.device)
        root = torch.linalg.cholesky(k)
        return (self._shape(d.double(), rho.double(), p)[..., :, None] * root).to(x.dtype)

    # -- calibration -------------------------------------------------------------------------------------------------
    @staticmethod
    def informative(d: Tensor, d_scale: Tensor | None = None) -> Tensor:
        r"""Which points tell the discrepancy anything, ``(F, n)`` bool for ``d`` ``(F, n)``: those off the
        constrained boundary, :math:`|d| > 10^{-6} s_f`. On it the lifted field is exact and both covariances
        vanish. ``d_scale``: :math:`s_f` ``(F,)``, the size of :math:`|d|` over the domain (RGNP: its largest value
        on a grid of the domain); ``None``: the largest :math:`|d|` among the field's own points, which cannot tell
        a field whose points all lie on the boundary (where :math:`d` is 0 up to rounding, e.g. :math:`\cos(\pi/2)
        = 6 \cdot 10^{-17}`) from one inside the domain."""
        scale = d.abs().amax(-1, keepdim=True) if d_scale is None else d_scale.to(d.dtype)[..., None]
        return d.abs() > 1e-6 * scale

    def log_marginal(
        self, theta: Tensor, errors: Tensor, base_cov: Tensor, x: Tensor, d: Tensor, rho: Tensor,
        d_scale: Tensor | None = None,
    ) -> Tensor:  # fmt: skip
        r""":math:`\sum_f \log \mathcal N(e_f; 0, B_f + C_\delta)` for errors :math:`e_f = y_f - m_f` ``(F, n)``,
        ``base_cov`` :math:`B_f` ``(F, n, n)``, points ``x`` ``(F, n, D)`` (normalised), ``d`` ``(F, n)``, ``rho``
        ``(F,)`` (a scalar tensor). Points on the constrained boundary (:meth:`informative`, with ``d_scale``
        ``(F,)`` or ``None``), where the lifted field is exact and both covariances vanish, are left out; a jitter
        of :math:`10^{-10}` times the mean variance of :math:`B_f` is added to the diagonal."""
        keep = self.informative(d, d_scale)
        pair = keep[..., :, None] & keep[..., None, :]
        eye = torch.eye(errors.shape[-1], dtype=errors.dtype, device=errors.device)
        base_diag = base_cov.diagonal(dim1=-2, dim2=-1)
        jitter = 1e-10 * (base_diag * keep).sum(-1) / keep.sum(-1).clamp_min(1) + 1e-300
        cov = torch.where(pair, base_cov + self.covariance(x, d, rho, theta), eye * (~keep[..., None]))
        cov = cov + jitter[:, None, None] * eye
        errors = torch.where(keep, errors, torch.zeros_like(errors))
        chol = torch.linalg.cholesky(cov)
        sol = torch.cholesky_solve(errors[..., None], chol)[..., 0]
        logdet = 2 * (torch.log(chol.diagonal(dim1=-2, dim2=-1)) * keep).sum()
        return -0.5 * (errors * sol).sum() - 0.5 * logdet - 0.5 * int(keep.sum()) * math.log(2 * math.pi)

    def calibrate(
        self, errors: Tensor, base_cov: Tensor, x: Tensor, d: Tensor, rho: Tensor, *, max_iter: int = 200,
        d_scale: Tensor | None = None,
    ) -> dict[str, float]:  # fmt: skip
        r"""Set :math:`\theta` to its maximum a posteriori estimate (see the class docstring) by L-BFGS-B
        (:func:`gpgeom.engine.fitting.fit`) in float64 from two starts (:math:`p = 0.25` and :math:`0.9`, the scale
        from the moments of the errors), and mark the discrepancy calibrated.

        Args:
            errors: :math:`e_f = y_f - m_f`, ``(F, n)``: reference minus the approximation's mean.
            base_cov: The approximation's own covariance :math:`B_f` at the points, ``(F, n, n)``.
            x: The points normalised to :math:`[-1, 1]^D`, ``(F, n, D)``.
            d: The lift's :math:`d` at the points, ``(F, n)``.
            rho: The error indicator per field, ``(F,)``.
            max_iter: L-BFGS-B iterations per start.
            d_scale: The size of :math:`|d|` over the domain per field, ``(F,)``, against which points count as on
                the constrained boundary (:meth:`informative`; ``None``: the largest :math:`|d|` at the field's points).

        Returns:
            The hyperparameters (:meth:`hyperparameters`) with ``log_posterior`` and ``log_marginal`` (nats, at the
            estimate).

        Raises:
            ValueError: When no point lies off the constrained boundary (:meth:`informative`): the errors there are
                zero by construction and say nothing of :math:`\theta`, whose estimate would be the prior's mode
                (:math:`\tau = 1`, :math:`\eta = 0.1`), not a calibration.
        """
        from gpgeom.engine.fitting import fit  # local: fitting imports much of GPyTorch and BoTorch

        check_tensor("errors", errors, ndim=2, floating=True)
        F, n = errors.shape
        if F == 0 or n == 0:
            raise ValueError(
                f"`errors` must hold at least one field of at least one point (F, n), got shape {tuple(errors.shape)}."
            )
        check_tensor("base_cov", base_cov, shape=(F, n, n), floating=True)
        check_tensor("x", x, ndim=3, shape=(F, n, None), floating=True)
        check_tensor("d", d, shape=(F, n), floating=True)
        check_tensor("rho", rho, shape=(F,), floating=True)
        if d_scale is not None:
            check_tensor("d_scale", d_scale, shape=(F,), floating=True)
        e, bc, xx, dd, rr = (t.detach().double() for t in (errors, base_cov, x, d, rho))
        ds = None if d_scale is None else d_scale.detach().double()
        keep = self.informative(dd, ds)
        if not bool(keep.any()):
            raise ValueError(
                f"`d` is 0 (to 1e-6 of its scale) at all {F * n} points: every point lies on the constrained "
                "boundary, where the approximation is exact, so the errors say nothing of the discrepancy; give "
                "reference points inside the domain."
            )
        count = int(keep.sum())
        excess = (e**2 - bc.diagonal(dim1=-2, dim2=-1)).clamp_min(0)
        best: tuple[float, Tensor] | None = None
        for p0 in (0.25, 0.9):
            g2 = (dd.abs() ** p0 * rr[:, None]) ** 2
            ok = (g2 > 0) & keep  # the start from the points that count
            tau0 = float((excess[ok] / g2[ok]).mean().sqrt()) if bool(ok.any()) else 1.0
            holder = nn.Module()
            start = [
                math.log(max(tau0, 1e-12)),
                DISCREPANCY_PRIOR[1][1],
                DISCREPANCY_PRIOR[2][1],
                math.log(p0 / (1 - p0)),
            ]
            holder.theta = nn.Parameter(torch.tensor(start, dtype=torch.float64, device=e.device))

            def objective(holder: nn.Module = holder) -> Tensor:
                lm = self.log_marginal(holder.theta, e, bc, xx, dd, rr, ds)
                return -(lm + self.log_prior(holder.theta)) / count  # per point that counts

            result = fit(objective, module=holder, optimizer="lbfgs", max_iter=max_iter, progress=False)
            if best is None or result.loss < best[0]:
                best = (result.loss, holder.theta.detach().clone())
        assert best is not None
        theta = best[1]
        with torch.no_grad():
            self.theta.copy_(theta.to(self.theta.dtype))
            self.calibrated.fill_(True)
            log_marginal = float(self.log_marginal(theta, e, bc, xx, dd, rr, ds))
        out = self.hyperparameters()
        out.update(log_posterior=log_marginal + float(self.log_prior(theta)), log_marginal=log_marginal)
        return out

    def reset(self) -> None:
        r"""Back to uncalibrated (zero discrepancy) at the prior means."""
        with torch.no_grad():
            start = [mean for _, mean, _ in DISCREPANCY_PRIOR] + [0.0]
            self.theta.copy_(torch.tensor(start, dtype=self.theta.dtype))
            self.calibrated.fill_(False)
