r"""GPyTorch kernels of gpgeom: Markov (state-space) kernels, their SDE base, and spectral kernels on an eigenbasis.

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

__all__ = [
    "SDE",
    "CategoricalMarkovKernel",
    "IntegratedWienerKernel",
    "MarkovKernel",
    "MaternMarkovKernel",
    "SpectralKernel",
    "WNOAKernel",
    "WNOJKernel",
    "discretize",
]
