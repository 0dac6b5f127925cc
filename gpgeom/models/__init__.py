r"""The five published models of gpgeom, each a thin composition of the engine.

- :class:`MMGP` (:mod:`gpgeom.models.mmgp`): mesh-morphing GP regression of fields under geometric variability.
- :class:`RVGP` (:mod:`gpgeom.models.rvgp`): vector-field GPs on point clouds (connection Laplacian).
- :class:`FunBaT`, :class:`FunBaTCP` (:mod:`gpgeom.models.funbat`): functional Bayesian Tucker decomposition.
- :class:`RGNP` (:mod:`gpgeom.models.rgnp`): random-grid neural processes for parametric PDEs.
- :class:`SO3xR3Trajectory`, :class:`SE3Trajectory` (:mod:`gpgeom.models.trajectory`): third-order GP
  trajectories with closed-form kinematics; measurement factors in :mod:`gpgeom.models.trajectory.factors`.

The models are loaded on first access (``gpgeom.models.MMGP``), so importing one does not import the others.
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "MMGP": "gpgeom.models.mmgp",
    "RVGP": "gpgeom.models.rvgp.model",
    "LowRankSpectralGP": "gpgeom.botorch.low_rank",
    "FunBaT": "gpgeom.models.funbat",
    "FunBaTCP": "gpgeom.models.funbat",
    "RGNP": "gpgeom.models.rgnp",
    "SO3xR3Trajectory": "gpgeom.models.trajectory",
    "SE3Trajectory": "gpgeom.models.trajectory",
}

__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
