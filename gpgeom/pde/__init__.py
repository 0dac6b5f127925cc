r"""Parametric PDE families: the equations that physics-informed models such as
:class:`~gpgeom.models.rgnp.model.RGNP` are trained on (Random Grid Neural Processes, Vadeboncoeur et al., ICML 2023,
arXiv 2301.11040).

One concept per module:

- :mod:`gpgeom.pde.family`: :class:`PDEFamily`, the base class (box domain, uniform priors on :math:`z` and
  :math:`w`, the torch residual, the boundary lift, the reference solution);
- :mod:`gpgeom.pde.registry`: name -> family class (:func:`register_family`, :func:`get_family`), so that models
  built from a family reload from its name;
- :mod:`gpgeom.pde.autodiff`: :func:`pointwise_grad`, the autograd derivative the residuals are written with;
- :mod:`gpgeom.pde.box`: boxes (domains and prior supports): reading ``(lower, upper)`` bounds, checking points;
- :mod:`gpgeom.pde.poisson`: :class:`NonlinearPoisson1D` and its reference solvers (shooting on the exact flux, and
  an independent finite-difference check);
- :mod:`gpgeom.pde.burgers`: :class:`ViscousBurgers` and its reference solvers (Cole-Hopf quadrature, and an
  independent method-of-lines check).

Cached test sets of reference solutions are data: :mod:`gpgeom.datasets.pde`. Models import this package, never
:mod:`gpgeom.datasets`.
"""

from __future__ import annotations

from gpgeom.pde.autodiff import pointwise_grad
from gpgeom.pde.burgers import (
    ViscousBurgers,
    burgers_cole_hopf,
    burgers_initial_condition,
    solve_burgers,
    solve_burgers_mol,
)
from gpgeom.pde.family import LiftFn, PDEFamily, ResidualFn
from gpgeom.pde.poisson import NonlinearPoisson1D, solve_nonlinear_poisson, solve_nonlinear_poisson_fd
from gpgeom.pde.registry import family_names, get_family, is_registered, register_family

__all__ = [
    "LiftFn",
    "NonlinearPoisson1D",
    "PDEFamily",
    "ResidualFn",
    "ViscousBurgers",
    "burgers_cole_hopf",
    "burgers_initial_condition",
    "family_names",
    "get_family",
    "is_registered",
    "pointwise_grad",
    "register_family",
    "solve_burgers",
    "solve_burgers_mol",
    "solve_nonlinear_poisson",
    "solve_nonlinear_poisson_fd",
]
