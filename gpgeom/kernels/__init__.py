r"""GPyTorch kernels of gpgeom: Markov (state-space) kernels, their SDE base, spectral kernels on an eigenbasis, and
GPyTorch's Matérn and RBF kernels with their distances computed from the differences (accurate in float32).

Importing this package loads GPyTorch only: neither the engine nor BoTorch.
"""

from gpgeom.kernels.categorical import CategoricalMarkovKernel
from gpgeom.kernels.markov import (
    IntegratedWienerKernel,
    MaternMarkovKernel,
    WNOAKernel,
    WNOJKernel,
)
from gpgeom.kernels.sde import SDE, MarkovKernel, discretize
from gpgeom.kernels.spectral import SpectralKernel
from gpgeom.kernels.stationary import DifferenceMaternKernel, DifferenceRBFKernel, difference_distances

__all__ = [
    "SDE",
    "CategoricalMarkovKernel",
    "DifferenceMaternKernel",
    "DifferenceRBFKernel",
    "IntegratedWienerKernel",
    "MarkovKernel",
    "MaternMarkovKernel",
    "SpectralKernel",
    "WNOAKernel",
    "WNOJKernel",
    "difference_distances",
    "discretize",
]
