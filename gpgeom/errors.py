r"""Exceptions raised by gpgeom."""

from __future__ import annotations

from linear_operator.utils.errors import NotPSDError as _LinearOperatorNotPSDError


class NotPSDError(_LinearOperatorNotPSDError):
    r"""A covariance or normal matrix is not positive definite even after jitter escalation.

    Subclasses linear_operator's ``NotPSDError`` so that code catching GPyTorch's error also catches ours.
    The message always says which matrix failed, the largest jitter tried and what to do about it.
    """


class ConvergenceWarning(UserWarning):
    r"""An iterative solver stopped before its convergence test was met."""
