r"""The files of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`: what its state holds and how a model is rebuilt
from it (:meth:`gpgeom.ModelContract.save` / ``load``).

A file holds the training data in original units (for a conditioned or fantasy model, the union), the constructor's
configuration, the modules' state dict and the training tensors as the model holds them: a model moved to another
dtype loads back bitwise (not the transforms recomputed in the new dtype), and a conditioned model loads with its
``n + n'`` points and its batch shape. Custom modules are never stored: ``load`` takes them by name.

A conditioned or fantasy model predicts from GPyTorch's prediction caches as ``condition_on_observations`` updated
them by each block of new rows (Pleiss et al. 2018, sec. 4), not from a factor of its ``n + n'`` rows: the two round
differently (up to 4.0e-4 of the outputs' scale apart in float32, 4.8e-13 in float64, on the problems of
``tests/test_conditioned_float32_files.py``). Its file also records how its caches were made
(:func:`record_conditioning`): the training tensors of the model whose caches were built from scratch (the root) and
each later block of rows as it was conditioned on (inputs, outputs, noise, and whether it came from ``fantasize``).
``load`` rebuilds the root and conditions it on each block in order, through the same code: the loaded model
predicts bitwise as the saved one. Files written before the record load as then (the loaded model factors its
``n + n'`` rows).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.transforms.input import Normalize
from botorch.models.utils.assorted import fantasize as fantasize_flag
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood
from torch import Tensor

from gpgeom._warnings import quiet
from gpgeom.botorch._union import data_to_build
from gpgeom.errors import ModelFileError

if TYPE_CHECKING:
    from gpgeom.botorch.exact_gp import ExactGPModel

__all__ = [
    "PARENT_HISTORY",
    "conditioning_history",
    "model_state",
    "record_conditioning",
    "restore_model",
    "set_train_tensors",
    "train_tensors",
]

#: The attribute of a GPyTorch prediction strategy that records how its caches were made (:func:`record_conditioning`)
_HISTORY = "_gpgeom_history"
#: The attribute of a conditioned model holding its parent's history until :func:`record_conditioning` takes it
PARENT_HISTORY = "_gpgeom_parent_history"


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
        "history": _history_state(model),
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
    if state.get("history") is not None:  # a conditioned model: conditioned again as it was
        replayed = _replay(cls, state, kwargs)
        if replayed is not None:
            return replayed
    union = (state["train_X"], state["train_Y"], state["train_Yvar"])
    return _rebuild(cls, state, union, state.get("train_tensors"), kwargs)


def _rebuild(
    cls: type[ExactGPModel],
    state: dict[str, Any],
    union: tuple[Tensor | None, ...],
    held: tuple[Tensor | None, ...] | None,
    kwargs: dict[str, Any],
) -> ExactGPModel:
    r"""The model of ``cls`` with the configuration and module state of ``state``, built on the data ``union`` (in
    original units, ``batch x N x {d, m, m}``) with the training tensors ``held`` (:func:`set_train_tensors`) and the
    constructor's ``kwargs`` (modules and transforms)."""
    cfg = state["config"]
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
    set_train_tensors(model, held)  # None: files written before the tensors
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


def record_conditioning(
    parent: ExactGPModel,
    child: ExactGPModel,
    block: tuple[Any, ...],
    replayable: bool,
    grads: tuple[bool, ...] = (False, False, False),
) -> None:
    r"""Record on ``child``'s prediction strategy (``parent.condition_on_observations``'s result) how its caches were
    made, for its file (:func:`model_state`): the history of ``parent``'s caches followed by ``block``.

    The history is ``(root, rows, blocks)``: the training tensors (:func:`train_tensors`, detached) of the model whose
    caches GPyTorch built from scratch, its number of rows, and the blocks conditioned on since, each
    ``(X, Y, noise, fantasize, grad_enabled)``: the new inputs ``batch' x n' x d`` and outputs ``batch'' x n' x m`` in
    the model's dtype as GPyTorch got them, the noise ``batch''' x n' x m`` in the outcome-transformed units (or
    ``None``), whether BoTorch's ``fantasize`` flag was on and whether gradients were enabled. Its tensors are leaves
    that require a gradient where the model's or the caller's tensors did (``grads``), as pickling makes them: that
    changes GPyTorch's rounding (a fantasy model's sampled outputs require one; without the flags a loaded fantasy
    model conditioned again predicted means 8.3e-5 of the outputs' scale apart in float32, 7.8e-14 in float64, from the
    one in memory, ``tests/test_conditioned_float32_files.py``). Kept with the strategy, the history goes when the
    strategy does (a changed hyperparameter, ``fit``, ``to``, train mode, new data): caches rebuilt then are built
    from scratch. References, no copies (``block`` holds the copies the child keeps anyway; the leaves are views of
    them): no cost in look-ahead acquisitions.

    Args:
        parent: The conditioned model (its strategy the one GPyTorch updated).
        child: Its conditioned model, with its prediction strategy.
        block: ``(X, Y, noise)``: the child's copies of the new rows.
        replayable: ``False`` where ``condition_on_observations`` got arguments other than ``noise`` (not
            recorded): the child's file then holds no history.
        grads: Whether the caller's ``X``, ``Y`` and ``noise`` required a gradient.
    """
    strategy = getattr(child, "prediction_strategy", None)
    history = child.__dict__.pop(PARENT_HISTORY, ())  # read with the lock of the update (`conditioning_history`)
    if strategy is None:
        return
    if history == ():
        history = conditioning_history(parent)
    if history is None or not replayable:
        setattr(strategy, _HISTORY, None)
        return
    root, rows, blocks = history
    block = _leaves(list(block), list(grads))
    modes = (bool(fantasize_flag.on()), torch.is_grad_enabled())
    setattr(strategy, _HISTORY, (root, rows, (*blocks, (*block, *modes))))


def conditioning_history(model: ExactGPModel) -> tuple[Any, ...] | None:
    r"""The history of ``model``'s prediction caches (:func:`record_conditioning`), read before GPyTorch conditions it,
    with the lock GPyTorch's update holds (``ExactGPModel.get_fantasy_model``): meanwhile the update of another
    thread conditioning the same model empties its training data and prediction strategy, and a history read then
    failed (a ``TypeError``) or took the model as a root. A model whose caches were built from scratch is the root."""
    strategy = model.prediction_strategy
    history = () if strategy is None else getattr(strategy, _HISTORY, ())
    if history == ():  # the caches were built from scratch: it is the root
        history = (_held(model), model.train_targets.shape[-1], ())
    return history


def _held(model: ExactGPModel) -> tuple[Tensor | None, ...]:
    return tuple(None if t is None else t.detach().requires_grad_(t.requires_grad) for t in train_tensors(model))


def _history_state(model: ExactGPModel) -> dict[str, Any] | None:
    r"""The history of ``model``'s prediction caches for its file (:func:`record_conditioning`), as plain values:
    ``None`` for a model that predicts from its kept training factor (not conditioned) or whose caches cannot be
    replayed. A conditioned model whose caches GPyTorch rebuilt from scratch is its own root, with no blocks."""
    if model.training or not model.__dict__.get("_conditioned", False):
        return None
    model._check_strategy()  # a strategy of an older state is not the one it predicts from
    history = conditioning_history(model)
    if history is None:
        return None
    root, rows, blocks = history
    keys = ("X", "Y", "noise", "fantasize", "grad_enabled")
    out = [
        {**dict(zip(keys, block)), "grad": [t is not None and t.requires_grad for t in block[:3]]} for block in blocks
    ]
    return {
        "root": list(root),
        "root_grad": [t is not None and t.requires_grad for t in root],
        "rows": int(rows),
        "blocks": out,
    }


def _leaves(tensors: list[Tensor | None], grads: list[bool] | None) -> tuple[Tensor | None, ...]:
    r"""``tensors`` (recorded, or read from a file) as detached leaves that require a gradient where ``grads`` says
    the recorded ones did (``None``: files written before the flags, none did), as pickling restores them:
    GPyTorch's rounding depends on it (a fantasy model's sampled outputs require one)."""
    grads = grads or [False] * len(tensors)
    return tuple(None if t is None else t.detach().requires_grad_(bool(g)) for t, g in zip(tensors, grads))


def _replay(cls: type[ExactGPModel], state: dict[str, Any], kwargs: dict[str, Any]) -> ExactGPModel | None:
    r"""The conditioned model of ``state`` rebuilt as it was made (:func:`record_conditioning`): its root rebuilt from
    the root's training tensors (its data the first ``rows`` points of the union), then conditioned on each block in
    order. ``None`` where the replayed training tensors are not bitwise those saved (the caller loads as before)."""
    history, (X, Y, Yvar) = state["history"], (state["train_X"], state["train_Y"], state["train_Yvar"])
    rows = history["rows"]
    union = tuple(None if t is None else t[..., :rows, :] for t in (X, Y, Yvar))
    model = _rebuild(cls, state, union, _leaves(history["root"], history.get("root_grad")), kwargs)
    with quiet("", InputDataWarning):  # BoTorch's input warnings (this thread's): given when it was conditioned
        for block in history["blocks"]:
            bX, bY, noise = _leaves([block["X"], block["Y"], block["noise"]], block.get("grad"))
            noise = {} if noise is None else {"noise": noise}
            fantasy = fantasize_flag() if block["fantasize"] else contextlib.nullcontext()
            with fantasy, torch.set_grad_enabled(block.get("grad_enabled", torch.is_grad_enabled())):
                model = model.condition_on_observations(bX, bY, **noise)
    model.__dict__["_conditioned"] = True  # also a root of no block: it predicted from GPyTorch's caches
    model._original_data = (X, Y, Yvar)
    saved, held = state.get("train_tensors"), train_tensors(model)
    if saved is None or not all(
        (a is None and b is None) or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
        for a, b in zip(saved, held)
    ):
        return None
    return model
