r"""The identifiable smoothness of RVGP's spectral filter: the filters by name, and the intervals of the learnt
:math:`\nu` (``NU_BOUNDS``) and of :math:`\kappa` that the kept eigenvalues determine.

**Identifiable smoothness.** With ``k`` eigenpairs the likelihood sees the filter only on
:math:`[\lambda_1, \lambda_k]`, where :math:`(a + \lambda)^{-\nu}`, :math:`a = 2\nu/\kappa^2`, has three flat
directions: for :math:`a \gg \lambda_k` it is :math:`e^{-\kappa^2\lambda/2}(1 + O(\kappa^4\lambda_k^2/\nu))`, the
diffusion filter whatever :math:`\nu` (measured: :math:`\nu` ran to 6e4 on a sphere with 60 eigenpairs); for
:math:`a \ll \lambda_+` (the smallest positive kept eigenvalue) it is :math:`\lambda^{-\nu}` whatever
:math:`\kappa` (:math:`\kappa` ran to 9e3 on a torus); and when the filter barely decays over the kept spectrum all
filters are white there. So :math:`\nu \in [1/2, 16]` (16 exceeds any smoothness a sampled field can show: the
continuum field has :math:`\nu - d/2` mean-square derivatives; use ``spectral_filter="diffusion"`` for the limit),
and :math:`\kappa \in [\kappa_-, \kappa_+]` with :math:`\kappa_-^2 \lambda_k / 2 = 0.05` (a flatter filter decays
by less than 5 % over the kept spectrum) and, for Matern, :math:`2\nu_{min}/\kappa_+^2 = \lambda_+/100` (a smaller
knee changes no kept filter value by more than :math:`1.01^\nu`); for diffusion
:math:`\kappa_+^2 \lambda_+ / 2 = 40`. Interval constraints (L-BFGS-B on their sigmoid transforms).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["NU_BOUNDS"]

_FILTERS = {"matern": "matern", "heat": "heat", "diffusion": "heat"}
NU_BOUNDS = (0.5, 16.0)  #: the interval of a learnt Matern smoothness (module docstring)


def _lengthscale_bounds(vals: np.ndarray, spectral_filter: str) -> tuple[float, float]:
    r"""The interval of :math:`\kappa` that keeps the filter identifiable with the kept eigenvalues ``vals``."""
    lam_k = max(float(vals[-1]), 1e-6)
    pos = vals[vals > 1e-8 * lam_k]
    lam_p = float(pos[0]) if pos.size else lam_k
    lo = math.sqrt(2 * 0.05 / lam_k)
    hi = math.sqrt(2 * NU_BOUNDS[0] / (0.01 * lam_p)) if spectral_filter == "matern" else math.sqrt(80 / lam_p)
    return lo, max(hi, 4 * lo)
