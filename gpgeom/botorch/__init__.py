r"""BoTorch adapters of gpgeom and the conformance check they all pass.

- :class:`ExactGPModel` (:mod:`gpgeom.botorch.exact_gp`): an exact GP (GPyTorch) that is a BoTorch model, with
  input normalisation and outcome standardisation by default, chunked prediction and ``save``/``load``.
- :func:`check_botorch_model` (:mod:`gpgeom.botorch.check`): what every gpgeom surrogate must satisfy, checked by
  meaning (conditioning equals a refit on the union, fantasies equal conditioning on the sampled values,
  observation noise adds the likelihood's noise, the posterior depends on the data, calibrated held-out errors).

Names are loaded on first access: ``import gpgeom.botorch`` does not import BoTorch until an adapter is used.
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "ExactGPModel": "gpgeom.botorch.exact_gp",
    "default_covar_module": "gpgeom.botorch.exact_gp",
    "default_likelihood": "gpgeom.botorch.exact_gp",
    "check_botorch_model": "gpgeom.botorch.check",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
