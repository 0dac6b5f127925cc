r"""The shared inference engine: fitting, exact marginal likelihoods, state-space GPs, Gauss-Newton on chains.

- :func:`fit` (:mod:`gpgeom.engine.fitting`): one training loop for every GPyTorch objective.
- :func:`exact_mll_loss` (:mod:`gpgeom.engine.exact_mll`): the exact marginal likelihood of Matern/RBF GPs with
  closed-form gradients.
- :mod:`gpgeom.engine.statespace`: Kalman filter, RTS smoother, O(n) likelihood (exact discretisation in
  :mod:`gpgeom.kernels.sde`).
- :mod:`gpgeom.engine.sites`: Gaussian sites (EP/variational messages) on a Markov chain: the latent posterior
  given the sites through the Kalman filter with one measurement row per step, and covariances between any two
  chain points (FunBaT's latent functions).
- :func:`gauss_newton` (:mod:`gpgeom.engine.least_squares`): GN/LM MAP on block-banded chains of states; the
  problem is a list of :class:`Factor` s (:mod:`gpgeom.engine.factors`), the linear algebra of each iteration in
  :mod:`gpgeom.engine.normal_equations`.
- :mod:`gpgeom.engine.variational`: Pyro ELBOs with minibatches and low-rank Gaussian outputs.

The BoTorch adapters (:class:`~gpgeom.botorch.ExactGPModel`, :func:`~gpgeom.botorch.check_botorch_model`, ...)
build on the engine and live in :mod:`gpgeom.botorch`. Names are loaded on first access, so ``import
gpgeom.engine`` is cheap.
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "FitResult": "gpgeom.engine.fitting",
    "fit": "gpgeom.engine.fitting",
    "exact_mll_loss": "gpgeom.engine.exact_mll",
    "stationary_nll": "gpgeom.engine.exact_mll",
    "Factor": "gpgeom.engine.factors",
    "GaussNewtonResult": "gpgeom.engine.least_squares",
    "gauss_newton": "gpgeom.engine.least_squares",
    "discretize": "gpgeom.kernels.sde",
    "kalman_filter": "gpgeom.engine.statespace",
    "log_marginal_likelihood": "gpgeom.engine.statespace",
    "posterior": "gpgeom.engine.statespace",
    "rts_smoother": "gpgeom.engine.statespace",
    "SiteChain": "gpgeom.engine.sites",
    "SitePosterior": "gpgeom.engine.sites",
    "site_chain": "gpgeom.engine.sites",
    "site_posterior": "gpgeom.engine.sites",
    "site_log_likelihoods": "gpgeom.engine.sites",
    "gain_products": "gpgeom.engine.sites",
    "chain_covariance": "gpgeom.engine.sites",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
