r"""The shared inference engine: fitting, exact GPs, state-space GPs, Gauss-Newton on chains, BoTorch glue.

- :func:`fit` (:mod:`gpgeom.engine.fitting`): one training loop for every GPyTorch objective.
- :class:`ExactGPModel` (:mod:`gpgeom.engine.exact`): an exact GP that is also a BoTorch model.
- :func:`exact_mll_loss` (:mod:`gpgeom.engine.exact_mll`): its marginal likelihood with closed-form gradients.
- :mod:`gpgeom.engine.statespace`: exact SDE discretisation, Kalman filter, RTS smoother, O(n) likelihood.
- :func:`gauss_newton` (:mod:`gpgeom.engine.gauss_newton`): GN/LM MAP on block-banded chains of states.
- :func:`check_botorch_model` (:mod:`gpgeom.engine.botorch`): the BoTorch contract of every gpgeom surrogate.
"""

from gpgeom.engine.botorch import check_botorch_model
from gpgeom.engine.exact import ExactGPModel
from gpgeom.engine.exact_mll import exact_mll_loss, stationary_nll
from gpgeom.engine.fitting import FitResult, fit
from gpgeom.engine.gauss_newton import Factor, GaussNewtonResult, gauss_newton
from gpgeom.engine.statespace import (
    discretize,
    kalman_filter,
    log_marginal_likelihood,
    posterior,
    rts_smoother,
)

__all__ = [
    "ExactGPModel",
    "Factor",
    "FitResult",
    "GaussNewtonResult",
    "check_botorch_model",
    "discretize",
    "exact_mll_loss",
    "fit",
    "gauss_newton",
    "kalman_filter",
    "log_marginal_likelihood",
    "posterior",
    "rts_smoother",
    "stationary_nll",
]
