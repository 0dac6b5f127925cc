r"""gpgeom: Gaussian-process models of geometric and physical data on one shared GPyTorch/BoTorch engine."""

__version__ = "0.1.0"
