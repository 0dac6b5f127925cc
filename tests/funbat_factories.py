"""Shared helper of the FunBaT tests: a fit whose ConvergenceWarning (a short sweep budget) is silenced."""

import warnings

from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat import FunBaT


def fit_quietly(data, **kw) -> FunBaT:
    """``FunBaT(2, **kw)`` fitted on ``data``'s training entries (``X_train``, ``y_train``) without the warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FunBaT(2, **kw).fit(data.X_train, data.y_train)
