r"""The files of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`: what its state holds and how a model is rebuilt
from it (:meth:`gpgeom.ModelContract.save` / ``load``).

A file holds the training data in original units (for a conditioned or fantasy model, the union), the constructor's
configuration, the modules' state dict and the training tensors as the model holds them: a model moved to another
dtype loads back bitwise (not the transforms recomputed in the new dtype), and a conditioned model loads with its
``n + n'`` points and its batch shape. Custom modules are never stored: ``load`` takes them by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from botorch.models.transforms.input import Normalize
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood
from torch import Tensor

from gpgeom.botorch._union import data_to_build
from gpgeom.errors import ModelFileError

if TYPE_CHECKING:
    from gpgeom.botorch.exact_gp import ExactGPModel

__all__ = ["model_state", "restore_model", "set_train_tensors", "train_tensors"]


def model_state(model: ExactGPModel) -> dict[str, Any]:
    r"""The state of ``model`` that its file holds (:meth:`gpgeom.ModelContract.save`): the training data in original
    units (the union for a conditioned model), its configuration, its modules' state dict and the training tensors as
    held (:func:`train_tensors`)."""
    X, Y, Yvar = model._original_data
    return {
        "train_X": X,
        "train_Y": Y,
        "train_Yvar": Yvar,
        "config": dict(model._config),
        "module_state": model.state_dict(),
        "fit_jitter": model._fit_jitter,
        "fast_mll": bool(model.fast_mll),
        "train_tensors": train_tensors(model),
    }


def restore_model(cls: type[ExactGPModel], state: dict[str, Any], **modules: Any) -> ExactGPModel:
    r"""The model of ``cls`` rebuilt from :func:`model_state`'s ``state``, with the custom modules the file was written
    with (``covar_module=...``, freshly built: a file holds no code).

    Raises:
        ModelFileError: For a custom module the file needs and ``modules`` lacks.
        TypeError: For a module the file does not need.
    """
    cfg = state["config"]
    need = list(cfg["custom_modules"])
    need += [name for name in ("input_transform", "outcome_transform") if cfg[name] == "custom"]
    missing = [name for name in need if modules.get(name) is None]
    if missing:
        raise ModelFileError(
            f"This ExactGPModel file was written with a custom {', '.join(missing)}, which a file cannot hold; "
            f"pass {', '.join(f'{n}=...' for n in missing)} (built as for the saved model) to ExactGPModel.load."
        )
    unknown = set(modules) - set(need)
    if unknown:
        raise TypeError(f"ExactGPModel.load got unexpected arguments {sorted(unknown)}; this file needs {need}.")
    kwargs = {name: modules.get(name) for name in ("covar_module", "mean_module", "likelihood")}
    for name in ("input_transform", "outcome_transform"):
        kwargs[name] = modules[name] if cfg[name] == "custom" else cfg[name]
    union = (state["train_X"], state["train_Y"], state["train_Yvar"])
    model = cls(
        *data_to_build(union, cfg.get("data_batch")),  # a union with a fantasy batch: built as its root
        shared_hyperparameters=cfg["shared_hyperparameters"],
        max_cholesky_size=cfg["max_cholesky_size"],
        **kwargs,
    )
    offset = state["module_state"].get("input_transform._offset")
    if (
        cfg["input_transform"] == "default"
        and offset is not None
        and offset.shape != model.input_transform.offset.shape
    ):
        # a batched one-output model saved when the default bounds were common to all members (``2 x d``, before
        # each member had its own): keep the saved bounds, so that the model predicts as it was saved
        coefficient = state["module_state"]["input_transform._coefficient"]
        model.input_transform = Normalize(d=offset.shape[-1], bounds=torch.cat([offset, offset + coefficient], -2))
    model.load_state_dict(state["module_state"])
    model._fit_jitter = state["fit_jitter"]
    model._original_data = union
    model.fast_mll = state["fast_mll"]
    set_train_tensors(model, state.get("train_tensors"))  # None: files written before the tensors
    return model


def train_tensors(model: ExactGPModel) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]:
    r"""The training tensors of ``model`` as it holds them, for a file (:func:`set_train_tensors` puts them back).

    A model moved to another dtype holds the rounding of the old dtype's tensors: a file of them loads bitwise,
    where the input transform redone in the new dtype would not. Also the files of models that hold ExactGPModels
    (:mod:`gpgeom.models.mmgp.state`).

    Returns:
        ``(inputs, targets, noise, untransformed)``: the transformed training inputs ``batch x n x d`` (one
        output) or ``batch x m x n x d`` (``m`` outputs, BoTorch's layout; ``None`` in train mode, where the model
        holds the untransformed ones), the targets ``batch x n`` or ``batch x m x n``, the fixed noise of a
        :class:`~gpytorch.likelihoods.FixedNoiseGaussianLikelihood`, shaped as the targets (else ``None``), and the
        untransformed inputs that train mode restores, shaped as the inputs; ``n + n'`` points for a conditioned
        model, whose noise and untransformed inputs have no fantasy batch dimension (BoTorch's).
    """
    fixed = model.likelihood.noise if isinstance(model.likelihood, FixedNoiseGaussianLikelihood) else None
    raw = model._original_train_inputs if model._has_transformed_inputs else model.train_inputs[0]
    return (None if model.training else model.train_inputs[0], model.train_targets, fixed, raw)


def set_train_tensors(model: ExactGPModel, held: tuple[Tensor | None, ...] | None) -> None:
    r"""Put :func:`train_tensors`'s ``held`` back into ``model`` (in train mode, as built, with its state dict
    loaded) and leave it in eval mode, with the batch shape of the targets (a conditioned model's, as BoTorch's
    ``condition_on_observations`` sets it).

    Shorter tuples are those of files written before the later entries, and load as then: ``(inputs, targets)``
    (MMGP files), ``(inputs, targets, noise)`` (ExactGPModel files before the untransformed inputs); ``None``
    (files before the tensors): the model as built, its inputs transformed in eval mode in its dtype.
    """
    inputs, targets, fixed, untransformed = (*(held or ()), None, None, None, None)[:4]
    if untransformed is not None:  # in train mode (as built): what train mode restores, n + n' if conditioned
        model.set_train_data(untransformed, targets, strict=False)
    if fixed is not None:
        model.likelihood.noise = fixed
    model.eval()
    if inputs is not None:
        model.set_train_data(inputs, targets, strict=False)
    if targets is not None:
        model._input_batch_shape = targets.shape[: -1 if model._num_outputs == 1 else -2]
        model._aug_batch_shape = targets.shape[:-1]
