r"""The checks of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`'s constructor arguments: its training tensors and
the types of the modules a user may give.

Each error is a ``TypeError`` or ``ValueError`` that names the argument, the form expected and what was given, raised
before any work, so that a wrong shape or a NaN never surfaces as a Cholesky failure or a broadcast error in the first
fit.
"""

from __future__ import annotations

import torch
from gpytorch.kernels import Kernel
from gpytorch.likelihoods.gaussian_likelihood import _GaussianLikelihoodBase
from torch import Tensor, nn

from gpgeom._validation import as_tensor, check_tensor

__all__ = ["checked_training_data", "check_module_types", "standardised_outputs"]


def checked_training_data(
    train_X: object, train_Y: object, train_Yvar: object | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    r"""The training tensors of an exact GP, checked and detached.

    Args:
        train_X: A ``batch_shape x n x d`` floating tensor (or array-like) of inputs.
        train_Y: A ``batch_shape x n x m`` tensor of outputs (explicit ``m``, even for one output), converted to
            ``train_X``'s dtype and device (float64 outputs with float32 inputs stay float64).
        train_Yvar: ``None`` or a ``batch_shape x n x m`` tensor of non-negative noise variances.

    Returns:
        ``(train_X, train_Y, train_Yvar)``, detached from any autograd graph (the data are data: a graph back to the
        caller's tensors made a multi-output model's inputs non-leaves, which GPyTorch's deepcopy in
        ``condition_on_observations`` and ``fantasize`` refuses).

    Raises:
        TypeError, ValueError: For tensors of the wrong type, shape or dtype, NaN/inf values or negative noise.
    """
    if not isinstance(train_X, Tensor) or not train_X.is_floating_point():
        train_X = as_tensor("train_X", train_X, dtype=None)
    # float64 outputs of a float32 model stay float64: they are standardised in float64 (ExactGPModel)
    train_Y = as_tensor("train_Y", train_Y, dtype=None, device=train_X.device)
    if not (train_Y.dtype == torch.float64 and train_X.dtype == torch.float32):
        train_Y = train_Y.to(train_X.dtype)
    if train_Yvar is not None:
        train_Yvar = as_tensor("train_Yvar", train_Yvar, dtype=train_X.dtype, device=train_X.device)
    check_tensor("train_X", train_X, floating=True)
    check_tensor("train_Y", train_Y, floating=True)
    if train_X.dim() < 2:
        raise ValueError(f"`train_X` must be `batch_shape x n x d` (at least 2-D), got shape {tuple(train_X.shape)}.")
    if train_Y.dim() != train_X.dim():
        hint = ""
        if train_Y.shape == train_X.shape[:-1]:
            hint = " Add the output dimension with train_Y.unsqueeze(-1)."
        raise ValueError(
            f"`train_Y` must be `batch_shape x n x m` with the same number of dimensions as `train_X` "
            f"{tuple(train_X.shape)}, got shape {tuple(train_Y.shape)}.{hint}"
        )
    if train_Y.shape[:-1] != train_X.shape[:-1]:
        raise ValueError(
            f"`train_Y` {tuple(train_Y.shape)} and `train_X` {tuple(train_X.shape)} must share the batch shape "
            "and the number of points n (all but the last dimension)."
        )
    if train_X.shape[-2] < 1 or train_X.shape[-1] < 1 or train_Y.shape[-1] < 1:
        raise ValueError(
            f"Need at least one point, one input dimension and one output; got train_X {tuple(train_X.shape)}, "
            f"train_Y {tuple(train_Y.shape)}."
        )
    if train_Yvar is not None:
        check_tensor("train_Yvar", train_Yvar, floating=True)
        if train_Yvar.shape != train_Y.shape:
            raise ValueError(
                f"`train_Yvar` must have the shape of `train_Y` {tuple(train_Y.shape)}, got {tuple(train_Yvar.shape)}."
            )
        if bool((train_Yvar < 0).any()):
            raise ValueError(f"`train_Yvar` must be >= 0 (noise variances), got min {float(train_Yvar.min()):.3g}.")
        train_Yvar = train_Yvar.to(train_X.dtype).detach()
    return train_X.detach(), train_Y.detach(), train_Yvar


def check_module_types(**modules: object) -> None:
    r"""Refuse a ``covar_module``, ``mean_module`` or ``likelihood`` (keyword names) of the wrong type, with a
    ``TypeError`` naming it (else the first fit fails in a Cholesky or a broadcast far from the argument);
    ``None`` (the default module) passes."""
    kinds = {
        "covar_module": (Kernel, "a gpytorch Kernel"),
        "mean_module": (nn.Module, "a gpytorch Mean (or a module giving the mean of each input)"),
        "likelihood": (_GaussianLikelihoodBase, "a Gaussian gpytorch likelihood (exact inference)"),
    }
    for arg, value in modules.items():
        kind, what = kinds[arg]
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"`{arg}` must be None or {what}, got {type(value).__name__} ({value!r:.80}).")


def standardised_outputs(
    outcome_transform: nn.Module, train_Y: Tensor, train_Yvar: Tensor | None, X: Tensor
) -> tuple[Tensor, Tensor | None]:
    r"""``outcome_transform`` applied to the training outputs ``train_Y`` (``batch_shape x n x m``) and noise
    variances ``train_Yvar`` (same shape, or ``None``) at the transformed inputs ``X``.

    Outputs in the dtype of ``X``: the transform as BoTorch applies it (fitted to them in train mode). Float64
    outputs of a float32 model (``X`` float32): fitted to the float64 values, its parameters (the means and scales of
    ``Standardize``) rounded to float32 (``outcome_transform.to``) and then applied to the float64 values, so the
    standardised outputs are computed in float64 with the very parameters the model keeps (the model's data in
    original units, standardised again in eval mode, give the same values) and only rounded to float32 at the end
    by the caller. Standardised in float32, :math:`10^6 + 0.1 f` was first rounded to float32's steps of 0.0625
    there, and the learned noise was that of the rounding (``tests/test_exact_gp_output_offset.py``).

    Returns:
        The transformed ``(train_Y, train_Yvar)``, float64 for float64 outputs of a float32 model.
    """
    if train_Y.dtype == X.dtype:
        return outcome_transform(Y=train_Y, Yvar=train_Yvar, X=X)
    training = outcome_transform.training
    if training:
        outcome_transform(Y=train_Y, Yvar=train_Yvar, X=X)  # fitted to the float64 outputs
    outcome_transform.to(dtype=X.dtype)  # its parameters rounded to the model's dtype, as the model keeps them
    outcome_transform.eval()
    try:
        Y, Yvar = outcome_transform(Y=train_Y, Yvar=train_Yvar, X=X)
    finally:
        outcome_transform.train(training)
    return Y, None if Yvar is None else Yvar.to(X.dtype)
