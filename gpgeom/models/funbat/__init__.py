r"""FunBaT: functional Bayesian Tucker (and CP) decomposition of continuous-indexed tensors on state-space GPs.

Fang, Yu, Wang, Li, Kirby, Zhe, "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data",
ICLR 2024 (arXiv:2311.04829). The equations in this package are the paper's model and its conditional-EP updates as
the authors' code implements them, with the differences listed in :mod:`~gpgeom.models.funbat.model`.

Data and model
--------------
Entries :math:`(x_n, y_n)`, :math:`n = 1 \dots N`, with real coordinates :math:`x_n = (x_{n1}, \dots, x_{nK})`
(``X`` is ``N x K``, ``y`` is ``N``). Each mode :math:`k` has a latent function :math:`u^k : \mathbb R \to
\mathbb R^{R_k}` whose components are independent Matérn GPs, :math:`u^k_r \sim GP(0, \kappa_k)`, and (Tucker)

.. math::
    y_n = b + \operatorname{vec}(\mathcal W)^\top \big(u^1(x_{n1}) \otimes \dots \otimes u^K(x_{nK})\big)
    + \varepsilon_n, \qquad \varepsilon_n \sim N(0, \tau^{-1}),

with core :math:`\operatorname{vec}(\mathcal W) \sim N(0, \sigma_W^2 I)` (``P = R_1 \cdots R_K`` entries) and noise
precision :math:`\tau \sim \mathrm{Gamma}(a_0, b_0)`; the bias :math:`b \sim N(0, \sigma_b^2)` is an addition
(``bias=True``): centring ``y`` adds a constant, i.e. one more rank, to the tensor. The CP special case
(:class:`~gpgeom.models.funbat.cp.FunBaTCP`) fixes :math:`\mathcal W` to the superdiagonal of ones. With
``noise="student_t"`` the noise is Student-t, :math:`\varepsilon_n \sim N(0, (\tau\lambda_n)^{-1})`,
:math:`\lambda_n \sim \mathrm{Gamma}(\nu/2, \nu/2)` (:mod:`~gpgeom.models.funbat.noise`).

The package, one concept per module
-----------------------------------
* :mod:`~gpgeom.models.funbat.priors`: the prior kernel of each mode, Matérn or categorical (independent values per
  label, ``categorical=``);
* :mod:`~gpgeom.models.funbat.latent`: the state-space prior of a mode and its exact posterior given the Gaussian
  messages of the entries (the engine's sites on a Markov chain, :mod:`gpgeom.engine.sites`), the hyperparameter
  objectives;
* :mod:`~gpgeom.models.funbat.conditional`: the latent functions at any coordinates (Gaussian bridges and
  extrapolation), marginal and joint;
* :mod:`~gpgeom.models.funbat.inference`: the conditional-EP sweep (messages, core, bias, noise) and the ELBO;
* :mod:`~gpgeom.models.funbat.fitting`: the course of a fit (the initial state, the restarts, the sweep loop with the
  hyperparameter schedule and the convergence test);
* :mod:`~gpgeom.models.funbat.hyper`: the lengthscale and variance steps (marginal likelihood or EM);
* :mod:`~gpgeom.models.funbat.noise`: the prior of the noise precision (the calibration of the intervals), Student-t
  noise as a Gaussian scale mixture (the scales' factors, the degrees of freedom, their ELBO terms);
* :mod:`~gpgeom.models.funbat.entries`: moments of the entries under the factorised posterior (prediction, BoTorch);
* :mod:`~gpgeom.models.funbat.predictive`: the predictive distribution of a new observation (quantiles, intervals,
  CDF, log density; a scale mixture by quadrature for Student-t noise);
* :mod:`~gpgeom.models.funbat.target`: ``target_transform="log"``, the model of :math:`\log y` for positive targets
  with multiplicative errors, and its log-normal predictive;
* :mod:`~gpgeom.models.funbat.model`: :class:`~gpgeom.models.funbat.model.FunBaT` (fit, predict, ``rebuild_with``, the
  model contract); :mod:`~gpgeom.models.funbat.inputs`: the coordinates and values it accepts, its units;
  :mod:`~gpgeom.models.funbat.cp`: :class:`~gpgeom.models.funbat.cp.FunBaTCP`;
  :mod:`~gpgeom.models.funbat.persistence`: files and device moves;
* :mod:`~gpgeom.models.funbat.coordinates`: :func:`~gpgeom.models.funbat.coordinates.group_offsets`, coordinates as
  offsets from the mean of a group of entries, for a mode that drifts with another;
* :mod:`~gpgeom.models.funbat.surrogate`: :class:`~gpgeom.models.funbat.surrogate.FunBaTBoTorchModel`, the
  moment-matched joint Gaussian over entries for BoTorch (conditioning and fantasies by Bayes' rule on it).

Prediction: the predictive mean and variance of an entry are its moments under :math:`q` (modes independent),
:math:`\mathbb E f_* = \mu_W^\top \bigotimes_k m^k_*`, :math:`\mathbb E f_*^2 = \operatorname{tr}\big((\Sigma_W +
\mu_W\mu_W^\top) \bigotimes_k (P^k_* + m^k_* m^{k\top}_*)\big)`, plus the bias; the noise adds
:math:`\mathbb E[\tau^{-1}]` (times :math:`\nu/(\nu-2)` for Student-t noise). ``predict`` returns ``n x 1`` tensors;
``predict_interval``, ``predict_quantile``, ``predictive_cdf`` and ``log_predictive_density`` give the predictive
distribution itself (:mod:`~gpgeom.models.funbat.predictive`).
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports
from gpgeom.models.funbat.conditional import latent_conditional, latent_cross_covariance
from gpgeom.models.funbat.coordinates import group_offsets
from gpgeom.models.funbat.cp import FunBaTCP
from gpgeom.models.funbat.latent import (
    LatentPosterior,
    expected_log_prior,
    joint_log_likelihood,
    latent_posterior,
    mode_prior,
    mode_sites,
)
from gpgeom.models.funbat.model import FunBaT, FunBaTFitResult

__all__ = [
    "FunBaT",
    "FunBaTCP",
    "FunBaTFitResult",
    "FunBaTBoTorchModel",
    "LatentPosterior",
    "latent_posterior",
    "latent_conditional",
    "latent_cross_covariance",
    "expected_log_prior",
    "joint_log_likelihood",
    "mode_prior",
    "mode_sites",
    "group_offsets",
]

# the BoTorch adapter imports BoTorch: loaded on first access
__getattr__, _dir = lazy_exports(__name__, {"FunBaTBoTorchModel": "gpgeom.models.funbat.surrogate"})


def __dir__() -> list[str]:
    return sorted(__all__)
