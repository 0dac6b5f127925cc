r"""BoTorch adapters of gpgeom and the conformance check they all pass.

- :class:`ExactGPModel` (:mod:`gpgeom.botorch.exact_gp`): an exact GP (GPyTorch) that is a BoTorch model, with
  input normalisation and outcome standardisation by default, chunked prediction and ``save``/``load``; its default
  kernel, likelihood and transforms in :mod:`gpgeom.botorch.defaults` (:func:`default_covar_module`,
  :func:`default_likelihood`), its prediction algebra from the training factor in :mod:`gpgeom.botorch.exact_predict`.
- :class:`GaussianSurrogate` (:mod:`gpgeom.botorch.gaussian`): the one posterior/conditioning code path of the
  adapters that are not GPyTorch ``ExactGP`` s (RVGP's low-rank GP, FunBaT): Bayes' rule on a jointly Gaussian
  predictive, fantasies, output subsets, chunked prediction.
- :class:`LowRankSpectralGP` (:mod:`gpgeom.botorch.low_rank`): an exact (or variational) GP with a finite-rank
  spectral kernel over point indices, in weight space (:math:`O(N k^2)`), on the shared path; RVGP builds on it. Its
  noise model (tangent likelihood, model error) in :mod:`gpgeom.botorch.low_rank_noise`, the parsing of its inputs
  (point indices, points outside the basis) in :mod:`gpgeom.botorch.low_rank_inputs`, the dense algebra of its
  projected ambient part in :mod:`gpgeom.botorch.low_rank_ambient`.
- :class:`SurrogateList` (:mod:`gpgeom.botorch.model_list`): a BoTorch model list whose members have several
  outputs each (MMGP's ``per_field`` GPs), with conditioning and fantasies grouped by member.
- :func:`check_botorch_model` (:mod:`gpgeom.botorch.check`): what every gpgeom surrogate must satisfy, checked by
  meaning (conditioning equals a refit on the union, fantasies equal conditioning on the sampled values,
  observation noise adds the likelihood's noise, the posterior depends on the data, calibrated held-out errors).

Names are loaded on first access: ``import gpgeom.botorch`` does not import BoTorch until an adapter is used.
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ExactGPModel": "gpgeom.botorch.exact_gp",
    "default_covar_module": "gpgeom.botorch.defaults",
    "default_likelihood": "gpgeom.botorch.defaults",
    "check_botorch_model": "gpgeom.botorch.check",
    "joint_moments": "gpgeom.botorch.check",
    "GaussianSurrogate": "gpgeom.botorch.gaussian",
    "SurrogateList": "gpgeom.botorch.model_list",
    "LowRankSpectralGP": "gpgeom.botorch.low_rank",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
