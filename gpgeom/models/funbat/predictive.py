r"""FunBaT's predictive distribution beyond mean and standard deviation: quantiles, central intervals, the CDF and the
log density of a new entry, for Gaussian and Student-t noise.

The entry :math:`f_*` at new coordinates enters as the Gaussian with its moments under the factorised posterior,
:math:`N(m_*, v_*)` (:mod:`~gpgeom.models.funbat.entries`, the Gaussian that ``predict`` reports); a new observation
adds the noise. Gaussian noise (Fang et al., ICLR 2024): :math:`y_* \sim N(m_*, v_* + s^2)`, :math:`s^2 = \mathbb
E[\tau^{-1}]`. Student-t noise (:mod:`~gpgeom.models.funbat.noise`): the new entry has its own scale
:math:`\lambda \sim \mathrm{Gamma}(\nu/2, \nu/2)`, so

.. math::
    p(y_*) = \int_0^\infty N\big(y_*; m_*, v_* + s^2/\lambda\big)\, \mathrm{Gamma}(\lambda; \nu/2, \nu/2)\,
    d\lambda = \int_{\mathbb R} N\big(y_*; m_*, v_* + s^2 e^{-u}\big)\, g(u)\, du, \qquad
    g(u) = \frac{\alpha^\alpha}{\Gamma(\alpha)} e^{\alpha (u - e^u)}, \quad \alpha = \nu/2,

a Student-t convolved with a Gaussian, which has no closed form. In :math:`u = \log\lambda` the integrand is
smooth and decays like :math:`e^{\alpha u}` to the left and doubly exponentially to the right, so the trapezoidal
rule on a truncated range converges exponentially fast in the number of nodes (Trefethen & Weideman, "The
exponentially convergent trapezoidal rule", SIAM Review 56, 2014): :func:`scale_mixture_nodes` takes ``J`` nodes on
:math:`[-(45/\alpha + 1 + \sqrt{90/\alpha}),\ \min(4, 1 + \sqrt{90/\alpha})]`, outside which :math:`g(u)/g(0) <
e^{-45}`, and normalises the weights to sum to one. The predictive is then the mixture :math:`\sum_j w_j N(m_*, v_* +
s^2/\lambda_j)`: its CDF and log density are sums over the nodes, its quantiles are found by bisection on the CDF
(64 halvings of a bracket from Cantelli's inequality, :math:`m_* \pm \sigma/\sqrt{\min(p, 1 - p)}`, with
:math:`\sigma^2 = v_* + s^2 \nu / (\nu - 2)` the predictive variance, on one side and the quantile of the
narrowest component on the other). The rule is meant for bounded integrands such as these (densities with
:math:`v_* > 0` or :math:`\lambda`-weighted ones, CDFs): the moment :math:`\mathbb E[\lambda^{-1}]`, whose integrand
decays only like :math:`e^{(\alpha - 1) u}`, is truncated for :math:`\nu` near 2, which is why the variance is
taken from its closed form. Scales shared along a mode (``scale_mode``): a new entry at a training group's coordinate
has :math:`\lambda \sim q(\lambda_g) = \mathrm{Gamma}(\alpha_g, \beta_g) = (\alpha_g/\beta_g)\, \mathrm{Gamma}(\alpha_g,
\alpha_g)`, so the rule of shape :math:`\alpha_g` is scaled by :math:`\alpha_g / \beta_g` (one rule per entry, weights
``n x J``; from shape 80 on, a large group's, the range is :math:`[-(180/\alpha)^{1/2}, (90/\alpha)^{1/2}]`, which
keeps the same :math:`e^{-45}` cut and the spacing proportional to the width :math:`\alpha^{-1/2}` of :math:`g`), its
variance is :math:`v_* + s^2 \beta_g/(\alpha_g - 1)`; elsewhere the prior's.
Without observation noise, or for Gaussian noise, it has one node
(:math:`\lambda = 1`, weight 1) and every quantity is the Gaussian's. With ``target_transform="log"`` all of this
holds for :math:`\log y_*`, and the CDF, density and quantiles of :math:`y_*` follow by the change of variables
(:mod:`~gpgeom.models.funbat.target`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gpgeom.models.funbat.inference import chunks

__all__ = ["scale_mixture_nodes"]

_N_NODES = 256
_BISECTIONS = 64


def _gamma_nodes(shape: Tensor, n_nodes: int) -> tuple[Tensor, Tensor]:
    r"""The trapezoidal rule in :math:`u = \log\lambda` for :math:`\lambda \sim \mathrm{Gamma}(a, a)`, one rule per
    shape: ``shape`` ``n`` values :math:`a` (float64, any device) -> ``(lam, weights)``, ``n x J`` each on that
    device (module docstring)."""
    a = shape[:, None]
    lo, hi = -(45.0 / a + 1.0 + (90.0 / a).sqrt()), (1.0 + (90.0 / a).sqrt()).clamp_max(4.0)
    # large shapes (a group of many entries): g is nearly Gaussian with sd a^-1/2; u - e^u + 1 <= -u^2/2 for u >= 0
    # and <= -u^2/4 for -1.5 <= u <= 0, so [-(180/a)^1/2, (90/a)^1/2] keeps g/g(0) > e^-45 at a spacing ~ a^-1/2
    big = a >= 80.0
    lo, hi = torch.where(big, -(180.0 / a).sqrt(), lo), torch.where(big, (90.0 / a).sqrt(), hi)
    u = lo + (hi - lo) * torch.linspace(0.0, 1.0, n_nodes, dtype=torch.float64, device=shape.device)
    log_g = a * (u - u.exp())  # the constant a^a / Gamma(a) cancels in the normalisation
    return u.exp(), torch.softmax(log_g, -1)  # equal spacing: trapezoid weights proportional to g (ends ~e^-45)


def scale_mixture_nodes(
    dof: float, n_nodes: int = _N_NODES, *, dtype: torch.dtype = torch.float64, device: Any = None
) -> tuple[Tensor, Tensor]:
    r"""Nodes and weights of the trapezoidal rule for the expectation over :math:`\lambda \sim \mathrm{Gamma}(\nu/2,
    \nu/2)` in :math:`u = \log\lambda` (module docstring).

    Args:
        dof: The degrees of freedom :math:`\nu > 2`.
        n_nodes: The number of nodes ``J`` (>= 2).
        dtype, device: Of the returned tensors.

    Returns:
        ``(lam, weights)``: ``J`` scales :math:`\lambda_j` and ``J`` weights summing to one, with
        :math:`\sum_j w_j h(\lambda_j) \approx \mathbb E[h(\lambda)]` for smooth bounded ``h``.

    Example:
        >>> lam, w = scale_mixture_nodes(5.0)
        >>> round(float((w / lam).sum()), 8)  # E[1/lambda] = nu / (nu - 2)
        1.66666667
    """
    if isinstance(dof, bool) or not isinstance(dof, int | float) or not 2.0 < dof < math.inf:
        raise ValueError(f"`dof` must be a finite number > 2, got {dof!r}.")
    if isinstance(n_nodes, bool) or not isinstance(n_nodes, int) or n_nodes < 2:
        raise ValueError(f"`n_nodes` must be an int >= 2, got {n_nodes!r}.")
    lam, w = _gamma_nodes(torch.tensor([0.5 * float(dof)], dtype=torch.float64), n_nodes)
    return lam[0].to(dtype=dtype, device=device), w[0].to(dtype=dtype, device=device)


def _normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


class _PredictiveDistribution:
    r"""The predictive distribution's methods of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    def _entry_scales(self, X: Tensor) -> tuple[Tensor, Tensor]:
        r"""Shared scales (``scale_mode``): the shape and rate of the scale of a new entry at each of the ``n`` rows of
        ``X`` (``n x K``, original units): :math:`(\alpha_g, \beta_g)` of :math:`q(\lambda_g)` where its coordinate
        on mode ``scale_mode`` is the training group :math:`g`'s, else the prior's :math:`(\nu/2, \nu/2)`; ``n``
        each (:mod:`~gpgeom.models.funbat.noise`)."""
        k = self.scale_mode
        t = self._modes[k].t
        x = self._normalise(X[:, k], k)  # as fit normalised the training ones
        pos = torch.searchsorted(t, x).clamp_max(t.shape[0] - 1)
        seen = t[pos] == x
        half = torch.full_like(x, 0.5 * self._dof)
        return torch.where(seen, self._scale_alpha[pos], half), torch.where(seen, self._scale_beta[pos], half)

    def _new_entry_noise(self, X: Tensor, noise: Tensor) -> Tensor:
        r"""The noise variance of new entries at ``X`` (``... x K``), standardised units: ``noise`` (0-dim, from
        :func:`~gpgeom.models.funbat.entries.entry_marginals`) unless scales are shared along a mode, then
        :math:`\mathbb E[\tau^{-1}]\, \mathbb E[\lambda^{-1}]` with :math:`\mathbb E[\lambda^{-1}] = \beta/(\alpha - 1)`
        for each entry's scale (:meth:`_entry_scales`), shape ``...``."""
        if self._scale_groups is None or self._scale_alpha is None:  # also the sweeps of a cut fit (scales.py)
            return noise
        a, b = self._entry_scales(X.reshape(-1, X.shape[-1]))
        return (self._tau_b / (self._tau_a - 1.0) * b / (a - 1.0)).reshape(X.shape[:-1])

    def _model_moments(self, X: Any, observation_noise: bool) -> tuple[Tensor, Tensor]:
        r"""Mean and standard deviation (``...`` each) of the Gaussian of the entries at ``X`` (``... x K``) in the
        units the model is fitted to (``log y`` with ``target_transform="log"``), with or without the noise (the
        moments that ``predict`` reports, before the log-normal map)."""
        self._check_fitted()
        X = self._check_X(X, K=len(self.ranks))
        with torch.no_grad():
            mean, var, noise = self._predict_std_units(X)
        if observation_noise:
            var = var + self._new_entry_noise(X, noise)  # shared scales: the group's noise variance where seen
        # the float64 mean and scale (inputs.py); the result in the model's dtype
        return (mean * self.y_std + self.y_mean).to(mean.dtype), (var * self.y_std.square()).sqrt().to(var.dtype)

    def _mixture(self, X: Any, observation_noise: bool) -> tuple[tuple[int, ...], Tensor, Tensor, Tensor]:
        r"""The predictive at ``X`` (``... x K``) in the model's units (:meth:`predictive_mixture`) as a scale
        mixture: the batch shape, means ``n``, component variances ``n x J`` and weights ``J`` (``n x J`` when scales
        are shared along a mode: one rule per entry's scale distribution; the total variance is that of
        :meth:`_model_moments`)."""
        self._check_fitted()
        X = self._check_X(X, K=len(self.ranks))
        with torch.no_grad():
            mean, var, _ = self._predict_std_units(X)
        shape = tuple(mean.shape)
        scale2 = self.y_std.square().to(var.dtype)  # the float64 scale (inputs.py), the model's dtype after
        mean, var = (mean * self.y_std + self.y_mean).to(mean.dtype).reshape(-1), (var * scale2).reshape(-1, 1)
        if not observation_noise:
            return shape, mean, var, torch.ones(1, dtype=var.dtype, device=var.device)
        s2 = (self._tau_b / (self._tau_a - 1.0)) * scale2
        if self._dof is None:
            return shape, mean, var + s2, torch.ones(1, dtype=var.dtype, device=var.device)
        if self._scale_groups is None:
            lam, w = scale_mixture_nodes(self._dof, dtype=var.dtype, device=var.device)
            return shape, mean, var + s2 / lam, w
        # shared scales: lambda ~ Gamma(a, b) = (a / b) Gamma(a, a), a rule per distinct shape
        a, b = self._entry_scales(X.reshape(-1, X.shape[-1]))
        shapes, inverse = torch.unique(a.double(), return_inverse=True)
        lam_u, w_u = _gamma_nodes(shapes, _N_NODES)
        lam = lam_u.to(var.dtype)[inverse] * (a / b)[:, None]
        return shape, mean, var + s2 / lam, w_u.to(var.dtype)[inverse]

    def predictive_mixture(self, X: Any, observation_noise: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        r"""The predictive distribution at ``X`` as a mixture of Gaussians with a common mean, in the units the model
        is fitted to (the original units; :math:`\log y` with ``target_transform="log"``, where the predictive of
        :math:`y` is its image under :math:`\exp`): :math:`\sum_j w_j N(m, \sigma_j^2)` (one component for
        Gaussian noise or without observation noise; the quadrature over the Student-t scale otherwise,
        :mod:`gpgeom.models.funbat.predictive`).

        Args:
            X: ``... x K`` coordinates.
            observation_noise: Include the noise (a new observation) or not (the latent entry, Gaussian).

        Returns:
            ``(mean, var, weights)``: ``... x 1`` means, ``... x J`` component variances, ``J`` weights (sum 1);
            with scales shared along a mode (``scale_mode``) and observation noise the weights are ``... x J`` (each
            entry's rule over its own scale distribution).
        """
        shape, mean, var, w = self._mixture(X, observation_noise)
        return mean.reshape(*shape, 1), var.reshape(*shape, -1), w if w.dim() == 1 else w.reshape(*shape, -1)

    def _values(self, y: Any, shape: tuple[int, ...], name: str = "y") -> Tensor:
        y = self._as_tensor(name, y)
        if y.shape == (*shape, 1):
            y = y[..., 0]
        if y.shape != shape:
            raise ValueError(f"`{name}` must have shape {shape} or {(*shape, 1)} (one value per entry of X), "
                             f"got {tuple(y.shape)}.")  # fmt: skip
        return y.reshape(-1)

    def predictive_cdf(self, X: Any, y: Any, observation_noise: bool = True) -> Tensor:
        r"""The predictive CDF :math:`P(Y_* \le y)` at the entries ``X`` (the probability integral transform of
        held-out values).

        Args:
            X: ``... x K`` coordinates.
            y: ``...`` (or ``... x 1``) values, original units.
            observation_noise: As in :meth:`predictive_mixture`.

        Returns:
            ``... x 1`` probabilities.
        """
        shape, mean, var, w = self._mixture(X, observation_noise)
        t = self._to_model_units(self._values(y, shape))
        return self._chunked_cdf(t, mean, var, w).reshape(*shape, 1)

    @staticmethod
    def _chunked_cdf(y: Tensor, mean: Tensor, var: Tensor, w: Tensor) -> Tensor:
        r"""The mixture CDF at ``y`` (``n``; ``mean`` ``n``, ``var`` ``n x J``, ``w`` ``J`` or ``n x J``), in chunks."""
        J = var.shape[-1]
        out = []
        for sl in chunks(mean.numel(), J):
            ws = w if w.dim() == 1 else w[sl]
            out.append((_normal_cdf((y[sl] - mean[sl])[:, None] / var[sl].sqrt()) * ws).sum(-1))
        return torch.cat(out) if out else mean.new_zeros(0)  # no entry: empty

    def log_predictive_density(self, X: Any, y: Any, observation_noise: bool = True) -> Tensor:
        r"""The log predictive density :math:`\log p(y_*)` of values ``y`` at the entries ``X`` (original units; the
        negative mean is the NLPD).

        Args:
            X: ``... x K`` coordinates.
            y: ``...`` (or ``... x 1``) values, original units.
            observation_noise: As in :meth:`predictive_mixture`.

        Returns:
            ``... x 1`` log densities.
        """
        shape, mean, var, w = self._mixture(X, observation_noise)
        y = self._values(y, shape)
        t = self._to_model_units(y)
        logn = -0.5 * ((t - mean)[:, None].square() / var + var.log() + math.log(2.0 * math.pi))
        logp = torch.logsumexp(logn + w.log(), -1)
        if self.target_transform == "log":  # the Jacobian of t = log y; no mass at y <= 0
            logp = torch.where(y <= 0, torch.full_like(logp, -math.inf), logp - t)
        return logp.reshape(*shape, 1)

    def _to_model_units(self, y: Tensor) -> Tensor:
        r"""Values ``y`` (original units) in the units the model is fitted to: :math:`\log y` with
        ``target_transform="log"`` (:math:`-\infty` for :math:`y \le 0`, which has probability 0)."""
        if self.target_transform == "none":
            return y
        return torch.where(y <= 0, torch.full_like(y, -math.inf), y.log())

    def _to_target_units(self, t: Tensor) -> Tensor:
        r"""Quantiles ``t`` of the model's units back in those of ``y`` (:math:`e^t` for ``"log"``)."""
        return t.exp() if self.target_transform == "log" else t

    def predict_quantile(self, X: Any, q: float, observation_noise: bool = True) -> Tensor:
        r"""The ``q``-quantile of the predictive distribution at the entries ``X``, original units (Gaussian: closed
        form; Student-t noise: bisection on the quadrature CDF, :mod:`gpgeom.models.funbat.predictive`).

        Args:
            X: ``... x K`` coordinates.
            q: The probability, ``0 < q < 1``.
            observation_noise: As in :meth:`predictive_mixture`.

        Returns:
            ``... x 1`` quantiles.
        """
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
            raise ValueError(f"`q` must be a probability strictly between 0 and 1, got {q!r}.")
        shape, mean, var, w = self._mixture(X, observation_noise)
        if var.shape[-1] == 1:
            z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * q - 1.0, dtype=torch.float64))
            return self._to_target_units((mean + var[:, 0].sqrt() * float(z)).reshape(*shape, 1))
        _, sd = self._model_moments(X, observation_noise)
        half = sd.reshape(-1) / math.sqrt(min(q, 1.0 - q)) * 1.01  # Cantelli: the quantile lies within
        # every component's q-quantile bounds the mixture's from the other side (the one of least variance)
        z = math.sqrt(2.0) * float(torch.erfinv(torch.tensor(2.0 * q - 1.0, dtype=torch.float64)))
        inner = mean + z * var.min(-1).values.sqrt()
        lo = inner - 1e-12 * half if q > 0.5 else mean - half
        hi = mean + half if q > 0.5 else inner + 1e-12 * half
        for _ in range(_BISECTIONS):
            mid = 0.5 * (lo + hi)
            below = self._chunked_cdf(mid, mean, var, w)
            lo, hi = torch.where(below < q, mid, lo), torch.where(below < q, hi, mid)
        return self._to_target_units((0.5 * (lo + hi)).reshape(*shape, 1))

    def predict_interval(self, X: Any, level: float = 0.95, observation_noise: bool = True) -> tuple[Tensor, Tensor]:
        r"""The central predictive interval of probability ``level`` at the entries ``X``: the
        :math:`(1 - \text{level})/2` and :math:`(1 + \text{level})/2` quantiles (:meth:`predict_quantile`).

        Args:
            X: ``... x K`` coordinates.
            level: The probability of the interval, ``0 < level < 1``.
            observation_noise: As in :meth:`predictive_mixture`.

        Returns:
            ``(lower, upper)``: ``... x 1`` each, original units.
        """
        if isinstance(level, bool) or not isinstance(level, int | float) or not 0.0 < level < 1.0:
            raise ValueError(f"`level` must be a probability strictly between 0 and 1, got {level!r}.")
        lower = self.predict_quantile(X, 0.5 * (1.0 - level), observation_noise)
        upper = self.predict_quantile(X, 0.5 * (1.0 + level), observation_noise)
        return lower, upper
