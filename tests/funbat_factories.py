"""Shared helper of the FunBaT tests: a fit whose ConvergenceWarning (a short sweep budget) is silenced."""

import warnings

from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT


def fit_quietly(data, *, callback=None, **kw) -> FunBaT:
    """``FunBaT(2, **kw)`` fitted on ``data``'s training entries (``X_train``, ``y_train``) without the warning
    (``callback`` goes to ``fit``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, **kw).fit(data.X_train, data.y_train, callback=callback)
