r"""NaN and infinite values from the user's modules of :class:`~gpgeom.botorch.exact_gp.ExactGPModel` (its
``covar_module``, ``mean_module`` and ``likelihood``), named where they appear.

A kernel that returns NaN (a log of a negative distance, a parameter set to NaN) otherwise ends a fit in
:class:`gpgeom.errors.NotPSDError` ("the covariance matrix could not be factorised") and a prediction in
linear_operator's ``NanError``, neither of which names the module; a mean that returns NaN at test inputs gave NaN
predictions silently. Nothing here runs while the values are finite, beyond one ``torch.isfinite(...).all()`` on
values already computed (:func:`check_prediction`, :func:`check_conditioned`; of a lazy covariance from GPyTorch's
prediction strategy, its diagonal, :func:`computed_covariance`, and what a sample or a Cholesky factorisation
evaluates of it later, :mod:`gpgeom.botorch._checked_covariance`): the modules are evaluated again only
after a failure (a Cholesky factorisation that failed, a non-finite loss or prediction), once, by
:func:`diagnose`, which raises a ``ValueError`` naming the module, its class, what it returned (NaN or inf), where
(:func:`gpgeom._validation.first_bad`: the first bad entry's index, whose last dimension(s) count the input rows)
and its non-finite parameters, if any. When every module is finite there, :func:`diagnose` returns and the original
error goes on.

:func:`diagnose_fit` is the hook that :mod:`gpgeom.engine.attempts` calls (as the model's ``_diagnose_nonfinite``)
when an attempt of :func:`gpgeom.engine.fitting.fit` fails on a NaN covariance, a non-finite loss or a failed
Cholesky factorisation, at the parameters where it failed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from gpytorch.utils.errors import CachingError
from gpytorch.utils.memoize import get_from_cache
from linear_operator import to_dense
from linear_operator.operators import DenseLinearOperator
from linear_operator.utils.errors import NanError
from linear_operator.utils.errors import NotPSDError as _LONotPSDError
from torch import Tensor

from gpgeom._validation import first_bad
from gpgeom.botorch._local import bound, current

__all__ = [
    "check_conditioned",
    "check_inputs",
    "check_prediction",
    "check_transformed",
    "computed_covariance",
    "diagnose",
    "diagnose_fit",
    "factor_guard",
    "named_step",
    "raw_inputs",
]

#: What a Cholesky factorisation of a covariance with NaN or inf entries raises.
_FACTOR_ERRORS = (NanError, _LONotPSDError, torch.linalg.LinAlgError)


def _bad_params(module: torch.nn.Module) -> str:
    names = [n for n, p in module.named_parameters() if not bool(torch.isfinite(p).all())]
    return f"; its non-finite parameter(s): {', '.join(f'`{n}`' for n in names)}" if names else ""


def _class_name(module: torch.nn.Module) -> str:
    r"""``ScaleKernel(MyKernel)`` for a wrapping kernel, else the class name."""
    base = getattr(module, "base_kernel", None)
    return type(module).__name__ + (f"({type(base).__name__})" if isinstance(base, torch.nn.Module) else "")


def _report(arg: str, module: torch.nn.Module, what: str, layout: str, value: Tensor, where: str) -> str | None:
    r"""The message for ``value`` (what ``module`` returned) if it holds NaN or inf, else ``None``."""
    bad = ~torch.isfinite(value)
    if not bool(bad.any()):
        return None
    first = first_bad(value, bad)
    kind = "NaN" if bool(value.isnan().any()) else "inf"
    return (
        f"`{arg}` ({_class_name(module)}) returned {kind} {where}: {int(bad.sum())} of {value.numel()} entries of "
        f"its {what} (shape {tuple(value.shape)}, {layout}) are NaN or infinite{first}{_bad_params(module)}. Look "
        "for a log or square root of a negative number, 0/0, inf - inf or an overflow in its forward, or a "
        "parameter set to NaN."
    )


def check_inputs(X: Tensor, where: str, cause: BaseException | None = None) -> None:
    r"""Raise a ``ValueError`` naming ``X`` (the test inputs, any shape ``... x q x d``) when it holds NaN or inf,
    with the count and the first bad entry (:func:`gpgeom._validation.first_bad`): a non-finite prediction at
    non-finite inputs is the inputs' doing, not a module's."""
    bad = ~torch.isfinite(X)
    if bool(bad.any()):
        raise ValueError(
            f"`X` contains {int(bad.sum())} NaN or infinite value(s) {where} (shape {tuple(X.shape)}, the last "
            f"dimension the input coordinates){first_bad(X, bad)}: the test inputs must be finite; remove or impute "
            "them first."
        ) from cause


def raw_inputs(model: Any, X: Tensor) -> contextlib.AbstractContextManager[None]:
    r"""Within it, :func:`check_prediction` for ``model`` knows the test inputs ``X`` as the user gave them (any
    shape ``... x q x d``, before the model's ``input_transform``), so that a non-finite transformed input is blamed on
    the transform when ``X`` is finite. Nested uses (a prediction in chunks through ``posterior``) keep the inner
    ``X`` until they end; other threads never see it."""
    return bound(model, "raw", X)


def check_transformed(model: Any, X: Tensor, where: str) -> None:
    r"""Raise a ``ValueError`` naming the model's ``input_transform`` (its class) when the transformed test inputs
    ``X`` (any shape ``... x q x d``) hold NaN or inf: called when the inputs as given were finite, so the transform
    made them (e.g. a square root or log of a coordinate outside its domain). Nothing when ``X`` is finite or the
    model has no input transform."""
    transform = getattr(model, "input_transform", None)
    bad = ~torch.isfinite(X)
    if transform is None or not bool(bad.any()):
        return
    raise ValueError(
        f"`input_transform` ({type(transform).__name__}) returned NaN or inf {where}: {int(bad.sum())} of "
        f"{X.numel()} transformed test input value(s) (shape {tuple(X.shape)}, the last dimension the input "
        f"coordinates) are NaN or infinite{first_bad(X, bad)}, though `X` is finite. Look for a log or square "
        "root of a negative coordinate, 0/0 or an overflow in its transform, or give inputs in its domain."
    )


def diagnose(
    model: Any, where: str, X: Tensor | None = None, cause: BaseException | None = None, pairs: bool = True
) -> None:
    r"""Evaluate the model's modules once, without gradients, and raise a ``ValueError`` naming the first that
    returns NaN or inf; return when all are finite.

    Args:
        model: An :class:`~gpgeom.botorch.exact_gp.ExactGPModel`.
        where: When it happened, for the message (e.g. ``"in fit (attempt 0, Adam epoch 3)"``).
        X: Transformed test inputs (``test_batch x q x d``, broadcast with the training batch): the mean at them,
            the cross-covariance ``batch x q x n`` with the training inputs, the prior variances and, last, the
            ``batch x q x q`` prior covariance between them (a NaN only off its diagonal; with ``pairs``); ``None``: the
            training inputs' mean (``batch x n``), kernel matrix (``batch x n x n``) and likelihood noise
            (``batch x n``).
        cause: The error being explained (chained as the ``ValueError``'s cause).
        pairs: With ``X``, also the ``batch x q x q`` prior covariance between the test inputs (``O(q^2)`` memory
            and time): only a non-finite posterior covariance between test points can come from it; posterior
            means and variances use no pair of test inputs.

    Raises:
        ValueError: Naming ``X`` when the test inputs hold NaN or inf (:func:`check_inputs`, checked first), else
            the module (``covar_module``, ``mean_module`` or ``likelihood``), its class, NaN or inf, the first bad
            entry and the module's non-finite parameters.
    """
    if X is not None:
        check_inputs(X, where, cause)
    train_X = model.train_inputs[0]
    if model.training:  # in training mode the model keeps the original inputs (BoTorch)
        train_X = model.transform_inputs(train_X)
    mean, covar, lik = model.mean_module, model.covar_module, model.likelihood
    with torch.no_grad():
        if X is None:
            rows = "the last dimension the training input row"
            found = _report("mean_module", mean, "mean at the training inputs", rows, mean(train_X), where)
            K = to_dense(covar(train_X)) if found is None else None
            two = "the last two dimensions the training input rows"
            found = found or _report("covar_module", covar, "kernel matrix at the training inputs", two, K, where)
            if found is None:
                shape = torch.broadcast_shapes(K.shape[:-1], train_X.shape[:-1])
                noise = lik._shaped_noise_covar(shape, train_X).diagonal(dim1=-2, dim2=-1)
                found = _report("likelihood", lik, "noise variances at the training inputs", rows, noise, where)
        else:
            batch = torch.broadcast_shapes(X.shape[:-2], train_X.shape[:-2])
            X, train_X = X.expand(batch + X.shape[-2:]), train_X.expand(batch + train_X.shape[-2:])
            rows = "the last dimension the test input row"
            found = _report("mean_module", mean, "mean at the test inputs", rows, mean(X), where)
            if found is None:
                cross = "the second-to-last dimension the test input row, the last the training input row"
                K = to_dense(covar(X, train_X))
                found = _report("covar_module", covar, "covariance between test and training inputs", cross, K, where)
            if found is None:
                var = to_dense(covar(X, diag=True))
                found = _report("covar_module", covar, "prior variances at the test inputs", rows, var, where)
            if found is None and pairs:  # last: NaN only between two test inputs (e.g. pairs at some distance)
                layout = "the last two dimensions the test input rows"
                K = to_dense(covar(X))
                found = _report("covar_module", covar, "covariance between the test inputs", layout, K, where)
    if found is not None:
        raise ValueError(found) from cause


def diagnose_fit(model: Any, step: str) -> None:
    r"""The ``_diagnose_nonfinite`` hook of :mod:`gpgeom.engine.attempts`: :func:`diagnose` at the training inputs
    and the current parameters (those of the failed ``step``, e.g. ``"attempt 0, Adam epoch 3"``)."""
    diagnose(model, f"in fit ({step})")


@contextlib.contextmanager
def factor_guard(model: Any, where: str) -> Iterator[None]:
    r"""Around the factorisation of the training covariance outside fit (predictions, conditioning): a Cholesky
    failure (NaN covariance, or one not positive definite after jitter) is explained by :func:`diagnose` at the
    training inputs when a module returns NaN or inf there, and raised unchanged otherwise."""
    try:
        yield
    except _FACTOR_ERRORS as err:
        diagnose(model, current(model, "where", where), cause=err)
        raise


def named_step(model: Any, where: str) -> contextlib.AbstractContextManager[None]:
    r"""Within it, the messages of :func:`factor_guard` and :func:`check_prediction` for ``model`` say ``where``
    (e.g. ``"in condition_on_observations"`` for the predictions that build GPyTorch's caches there), in this
    thread."""
    return bound(model, "where", where)


def check_prediction(model: Any, X: Tensor, where: str, *values: Tensor | None, pairs: bool | None = None) -> None:
    r"""One ``isfinite`` check of the computed posterior ``values`` (mean, variances or covariance) at the
    transformed test inputs ``X``; when one is NaN or inf, a ``ValueError`` names ``X`` if the inputs as given hold
    NaN or inf (:func:`check_inputs`; those of :func:`raw_inputs` when the prediction is inside it, else ``X``), the
    ``input_transform`` if they are finite but ``X`` is not (:func:`check_transformed`), else :func:`diagnose` at the
    training inputs, then at ``X``, names the module. A non-finite value that no module explains is left as it
    was. ``pairs`` (:func:`diagnose`): ``None``, when a non-finite value is a ``... x q x q`` covariance."""
    values = tuple(v for v in values if v is not None)
    if bool(torch.stack([torch.isfinite(v).all() for v in values]).all()):
        return
    # the q x q prior covariance only for a non-finite covariance between test points: means and variances do not
    # depend on it, and at many test points it is large (q = 4000: 3.3 s and 616 MB, for nothing found)
    if pairs is None:
        q = X.shape[-2] if X.dim() >= 2 else None
        square = [v for v in values if q is None or (v.dim() >= 2 and v.shape[-2:] == (q, q))]
        pairs = any(not bool(torch.isfinite(v).all()) for v in square)
    where = current(model, "where", where)
    raw = current(model, "raw")
    if raw is not None:  # the inputs as given: NaN there is the user's; finite there, the transform's
        check_inputs(raw, where)
        check_transformed(model, X, where)
    check_inputs(X, where)  # first: NaN inputs make NaN predictions from any module
    diagnose(model, where)  # first: a NaN mean at the training inputs makes every mean NaN (no Cholesky fails)
    diagnose(model, where, X=X, pairs=pairs)


def computed_covariance(mvn: Any) -> Tensor:
    r"""What :func:`check_prediction` checks of the covariance of a GPyTorch posterior ``mvn`` (a
    ``MultivariateNormal`` over ``... x q`` test points, from GPyTorch's prediction strategy): the dense
    ``... x q x q`` tensor when GPyTorch made it dense (its eager path, for joint train/test sizes up to
    ``max_eager_kernel_size``: no new work), else the ``... x q`` diagonal of the lazy covariance (the prior
    variances less the quadratic form, ``O(q)`` kernel values and the diagonal of a low-rank product; the
    ``q x q`` covariance is not formed). A NaN or inf only off the diagonal of a lazy covariance is not seen here:
    :class:`~gpgeom.botorch._checked_covariance.CheckedCovariance` checks it where a sample, a Cholesky
    factorisation or the joint covariance evaluates it (:meth:`~gpgeom.botorch.exact_gp.ExactGPModel.__call__` wraps
    the lazy covariance in it)."""
    cov = mvn.lazy_covariance_matrix
    if isinstance(cov, DenseLinearOperator):
        return cov.tensor
    with torch.no_grad():
        return cov.diagonal(dim1=-2, dim2=-1)


def check_conditioned(new: Any, n_old: int) -> None:
    r"""After ``condition_on_observations``: one ``isfinite`` check of the conditioned model's mean cache
    (``(K + noise)^{-1} (y - mu)`` on the ``n + n'`` inputs, computed by GPyTorch's fantasy update); when it is not
    finite, :func:`diagnose` of the conditioned model at its training inputs (rows from ``n_old`` on are the new
    observations) names the module."""
    try:  # set by the fantasy update (never computed here)
        cache = get_from_cache(new.prediction_strategy, "mean_cache")
    except (AttributeError, CachingError):
        return
    if bool(torch.isfinite(cache).all()):
        return
    diagnose(new, f"in condition_on_observations (training rows {n_old} on are the new observations)")
