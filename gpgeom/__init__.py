r"""gpgeom: Gaussian-process models of geometric and physical data on one shared GPyTorch/BoTorch engine.

The public API is re-exported here (loaded on first access, so ``import gpgeom`` stays fast):

- the model contract: :class:`ModelContract` (every model's base) and :func:`load` (any model file);
- engine: :func:`fit`, :class:`FitResult`, :func:`gauss_newton`, :class:`Factor`, and the state-space functions in
  :mod:`gpgeom.engine.statespace`;
- BoTorch adapters: :class:`ExactGPModel`, :class:`GaussianSurrogate`, :class:`LowRankSpectralGP`,
  :class:`SurrogateList`, :func:`check_botorch_model`;
- kernels: :class:`MaternMarkovKernel`, :class:`CategoricalMarkovKernel`, :class:`WNOAKernel`, :class:`WNOJKernel`,
  :class:`SpectralKernel`;
- geometry: :class:`Mesh`, :func:`floater_disk`, :func:`p1_transfer`, :func:`mass_matrix`, :class:`SnapshotPOD`,
  :func:`connection_laplacian`, :func:`graph_laplacian`, and :mod:`gpgeom.geometry.lie`;
- nn: :class:`GICNet`;
- PDE families: :class:`PDEFamily`, :class:`NonlinearPoisson1D`, :class:`ViscousBurgers`, :func:`register_family`,
  :func:`get_family`;
- models: :class:`MMGP` (:class:`MMGPPrediction`), :class:`RVGP`, :class:`FunBaT`, :class:`FunBaTCP`, :class:`RGNP`,
  :class:`SO3xR3Trajectory`, :class:`SE3Trajectory`; :func:`group_offsets` (tensor coordinates as offsets from a
  group's mean);
- errors: :class:`NotPSDError`, :class:`NotFittedError`, :class:`ModelFileError`, :class:`UncalibratedWarning`.
"""

from __future__ import annotations

from gpgeom._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # engine
    "fit": "gpgeom.engine.fitting",
    "FitResult": "gpgeom.engine.fitting",
    # BoTorch adapters
    "ExactGPModel": "gpgeom.botorch.exact_gp",
    "GaussianSurrogate": "gpgeom.botorch.gaussian",
    "LowRankSpectralGP": "gpgeom.botorch.low_rank",
    "SurrogateList": "gpgeom.botorch.model_list",
    "check_botorch_model": "gpgeom.botorch.check",
    "gauss_newton": "gpgeom.engine.least_squares",
    "Factor": "gpgeom.engine.factors",
    "GaussNewtonResult": "gpgeom.engine.least_squares",
    # kernels
    "MarkovKernel": "gpgeom.kernels.markov",
    "MaternMarkovKernel": "gpgeom.kernels.markov",
    "WNOAKernel": "gpgeom.kernels.markov",
    "WNOJKernel": "gpgeom.kernels.markov",
    "CategoricalMarkovKernel": "gpgeom.kernels.categorical",
    "SpectralKernel": "gpgeom.kernels.spectral",
    # geometry
    "Mesh": "gpgeom.geometry.mesh",
    "mass_matrix": "gpgeom.geometry.fem",
    "p1_transfer": "gpgeom.geometry.transfer",
    "floater_disk": "gpgeom.geometry.morphing",
    "RBFMorphing": "gpgeom.geometry.morphing",
    "SnapshotPOD": "gpgeom.geometry.pod",
    "ConnectionLaplacian": "gpgeom.geometry.connection",
    "connection_laplacian": "gpgeom.geometry.connection",
    "graph_laplacian": "gpgeom.geometry.connection",
    # nn
    "GICNet": "gpgeom.nn.gicnet",
    # PDE families
    "PDEFamily": "gpgeom.pde",
    "NonlinearPoisson1D": "gpgeom.pde",
    "ViscousBurgers": "gpgeom.pde",
    "register_family": "gpgeom.pde",
    "get_family": "gpgeom.pde",
    # models
    "MMGP": "gpgeom.models.mmgp",
    "MMGPPrediction": "gpgeom.models.mmgp",
    "RVGP": "gpgeom.models.rvgp.model",
    "FunBaT": "gpgeom.models.funbat",
    "FunBaTCP": "gpgeom.models.funbat",
    "FunBaTBoTorchModel": "gpgeom.models.funbat.surrogate",
    "group_offsets": "gpgeom.models.funbat.coordinates",
    "RGNP": "gpgeom.models.rgnp",
    "SO3xR3Trajectory": "gpgeom.models.trajectory",
    "SE3Trajectory": "gpgeom.models.trajectory",
    # the model contract
    "ModelContract": "gpgeom.base",
    "load": "gpgeom.base",
    # errors
    "NotPSDError": "gpgeom.errors",
    "NotFittedError": "gpgeom.errors",
    "ModelFileError": "gpgeom.errors",
    "UncalibratedWarning": "gpgeom.errors",
}

__all__ = ["__version__", *_EXPORTS]
__getattr__, _dir = lazy_exports(__name__, _EXPORTS)


def __dir__() -> list[str]:
    return sorted(__all__)
