r"""Exceptions and warnings raised by gpgeom."""

from __future__ import annotations

from linear_operator.utils.errors import NotPSDError as _LinearOperatorNotPSDError

__all__ = [
    "ConvergenceWarning",
    "LossNotFiniteError",
    "MeshRepairWarning",
    "ModelFileError",
    "NotFittedError",
    "NotPSDError",
    "UncalibratedWarning",
]


class NotPSDError(_LinearOperatorNotPSDError):
    r"""A covariance or normal matrix is not positive definite even after jitter escalation.

    Subclasses linear_operator's ``NotPSDError`` so that code catching GPyTorch's error also catches ours.
    The message always says which matrix failed, the largest jitter tried and what to do about it.
    """


class LossNotFiniteError(ValueError, NotPSDError):
    r"""A callable loss given to :func:`gpgeom.engine.fitting.fit` returned NaN or an infinite value (or a finite
    value with a non-finite gradient) in every attempt, where no step could recover.

    The message names the callable (its name, file and line), what it returned, and the optimiser step (Adam epoch
    and minibatch, L-BFGS-B evaluation). A ``ValueError`` (the argument's value is wrong); it also subclasses
    :class:`NotPSDError`, which earlier versions raised for it, so existing ``except`` clauses still catch it.
    """


class ConvergenceWarning(UserWarning):
    r"""An iterative solver stopped before its convergence test was met."""


class MeshRepairWarning(UserWarning):
    r"""A degenerate mesh (coincident nodes, zero-area triangles) was repaired before use; the message names the mesh
    and what was wrong with it (:meth:`gpgeom.geometry.mesh.Mesh.repair`)."""


class UncalibratedWarning(UserWarning):
    r"""A predictive uncertainty was asked where it is known not to hold: of a model whose calibration step has not
    run, so that its bands are too narrow (e.g. :meth:`gpgeom.models.rgnp.model.RGNP.predict` before
    :meth:`~gpgeom.models.rgnp.model.RGNP.calibrate`), or for inputs unlike those it was trained on (e.g.
    :meth:`~gpgeom.models.rgnp.model.RGNP.predict_inverse` from far more or fewer points than its training grids);
    the message says what to do."""


class NotFittedError(RuntimeError, AttributeError):
    r"""A model was used (``predict``, ``save``, ...) before ``fit`` or ``load``.

    Subclasses ``RuntimeError`` and ``AttributeError``, as scikit-learn's ``NotFittedError`` subclasses
    ``ValueError`` and ``AttributeError``, so ``hasattr``-style probes keep working.
    """


class ModelFileError(ValueError):
    r"""A file given to ``Model.load`` is not a gpgeom model file of that class, or lacks what the model needs.

    The message names the file, the class it holds, the class asked for and, for a missing piece (a user
    callable that cannot be stored), the argument that supplies it.
    """
