r"""GPyTorch kernels of gpgeom: Markov (state-space) kernels and spectral kernels on an eigenbasis."""

from gpgeom.kernels.markov import (
    SDE,
    IntegratedWienerKernel,
    MarkovKernel,
    MaternMarkovKernel,
    WNOAKernel,
    WNOJKernel,
)
from gpgeom.kernels.spectral import SpectralKernel

__all__ = [
    "SDE",
    "IntegratedWienerKernel",
    "MarkovKernel",
    "MaternMarkovKernel",
    "SpectralKernel",
    "WNOAKernel",
    "WNOJKernel",
]
