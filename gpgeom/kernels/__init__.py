r"""GPyTorch kernels of gpgeom: Markov (state-space) kernels and spectral kernels on an eigenbasis."""
