r"""What an :class:`~gpgeom.models.mmgp.MMGP` model file holds and how a model is rebuilt from it
(:meth:`MMGP.save <gpgeom.models.mmgp.MMGP.save>` / :meth:`MMGP.load <gpgeom.models.mmgp.MMGP.load>`,
:mod:`gpgeom._io`).

The state is a dict of tensors and plain Python values: the constructor's settings (:func:`model_config`), the
common mesh, the geometry POD and its residual reference, the field PODs, the GPs' training data and state dicts
and the fit record (:func:`model_state`). Entries added after a format version was released are optional on load
(:func:`restore_model` names the fallback of each): a file without the fields' truncation residual factors
(``trunc_factor``, :class:`~gpgeom.models.mmgp.reduction.FieldPOD`) loads with a ``UserWarning`` and draws the
truncation term independently per node, as before the factor; a file without the fields' round-trip intensities
(``transfer_kappa``, :mod:`~gpgeom.models.mmgp.roundtrip`) predicts without the transfer term, as when it was
written.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from gpytorch.kernels import Kernel

from gpgeom._warnings import user_stacklevel
from gpgeom.botorch.exact_files import set_train_tensors, train_tensors
from gpgeom.errors import ModelFileError
from gpgeom.geometry.mesh import Mesh
from gpgeom.models.mmgp.prediction import MMGPFitResult
from gpgeom.models.mmgp.reduction import FieldPOD, GeometryPOD
from gpgeom.models.mmgp.transfer import CommonMeshTransfer
from gpgeom.models.mmgp.unexplained import GeometryResidual

if TYPE_CHECKING:
    from gpgeom.models.mmgp.model import MMGP

__all__ = ["model_config", "model_state", "restore_model"]


def model_config(model: MMGP) -> dict[str, Any]:
    r"""The constructor's settings of ``model`` as plain values (a user common mesh is ``"user"``, a custom kernel
    callable ``"custom"``: the file holds the mesh elsewhere and cannot hold the callable)."""
    return {
        "morphing": model.morphing,
        "common_mesh": "user" if isinstance(model.common_mesh, Mesh) else model.common_mesh,
        "n_modes_geometry": model.n_modes_geometry,
        "n_modes_fields": model.n_modes_fields,
        "kernel": "custom" if callable(model.kernel) else model.kernel,
        "hyperparameters": model.hyperparameters,
        "tail_energy": model.tail_energy,
        "scalar_transform": model.scalar_transform,
        "truncation_variance": model.truncation_variance,
        "transfer_variance": model.transfer_variance,
        "geometry_variance": model.geometry_variance,
        "restarts": model.restarts,
        "max_iter": model.max_iter,
        "center": model.center,
        "ref_compat": model.ref_compat,
        "floater_start": model.floater_start,
        "seed": model.seed,
        "repair_meshes": model.repair_meshes,
    }


def model_state(model: MMGP) -> dict[str, Any]:
    r"""Everything :func:`restore_model` needs to rebuild the fitted ``model``, as tensors and plain values."""
    common = model.common_mesh_
    return {
        "config": model._config(),
        "dtype": str(model.dtype).replace("torch.", ""),
        "common_points": torch.tensor(common.points),  # a copy: the mesh's arrays are read-only
        "common_cells": torch.tensor(common.cells),
        "common_index": model.common_index_,
        "geometry": model._geometry.state(),
        "residual": model._residual.state(),
        "fields": [f.state() for f in model._fields],
        "noise_share": model._noise_share,
        "n_modes_own": list(model.n_modes_own_),
        "field_names": list(model.field_names_),
        "scalar_names": list(model.scalar_names_),
        "scalar_transforms": list(model.scalar_transforms_),
        "n_input_scalars": int(model.n_input_scalars_),
        "train_latent": model.train_latent_,
        "train_targets": model.train_targets_,
        "bounds": model._bounds,
        "gp_states": [g.state_dict() for g in model.gps_],
        "fit_jitters": [g._fit_jitter for g in model.gps_],
        # each GP's training tensors as held, as in an ExactGPModel file (a moved model's are the rounding of the old
        # dtype's): loads bitwise. A new key: gpgeom before it reads these files as those written before "gp_train"
        "gp_train_tensors": [train_tensors(g) for g in model.gps_],
        "fit_result": model.fit_result_.to_state(),
    }


def restore_model(
    cls: type[MMGP], state: dict[str, Any], kernel: Callable[[int, torch.Size], Kernel] | None = None
) -> MMGP:
    r"""Rebuild a fitted ``cls`` from :func:`model_state`'s dict; a model fitted with a custom kernel callable needs
    it again (``kernel``), as no file can hold code safely."""
    cfg = dict(state["config"])
    if cfg["kernel"] == "custom":
        if kernel is None:
            raise ModelFileError(
                "This MMGP file was written with a custom kernel callable, which a file cannot hold; pass "
                "kernel=... (the same callable) to MMGP.load."
            )
        cfg["kernel"] = kernel
    elif kernel is not None:
        raise TypeError(f"MMGP.load got `kernel`, but this file uses the named kernel {cfg['kernel']!r}.")
    common = Mesh(state["common_points"], state["common_cells"])
    if cfg["common_mesh"] == "user":
        cfg["common_mesh"] = common
    model = cls(**cfg, dtype=getattr(torch, state["dtype"]))
    model.common_index_ = state["common_index"]
    model._transfer = CommonMeshTransfer(model.morphing, model.floater_start, model.ref_compat, model.repair_meshes)
    model._transfer.set_common(common)
    model._geometry = GeometryPOD.from_state(state["geometry"])
    model._residual = GeometryResidual.from_state(state["residual"])
    model._fields = [FieldPOD.from_state(f) for f in state["fields"]]
    if model.truncation_variance and any(f.trunc_factor is None for f in model._fields):
        warnings.warn(
            "This MMGP file was written before the truncation residuals were saved: its Monte Carlo field draws "
            "(predict(n_samples=...)) add the POD truncation term independently per node (white noise in space), "
            "as when it was written; the means and standard deviations are unaffected. Refit and save the model "
            "for spatially correlated draws.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    model._noise_share = state["noise_share"]
    model.field_names_ = list(state["field_names"])
    model.scalar_names_ = list(state["scalar_names"])
    # files written before the transforms: every scalar regressed as is
    model.scalar_transforms_ = list(state.get("scalar_transforms", ["none"] * len(model.scalar_names_)))
    model.n_input_scalars_ = int(state["n_input_scalars"])
    model.n_modes_geometry_ = model._geometry.n_modes
    model.n_modes_fields_ = [f.n_modes for f in model._fields]
    # files written before the tails: every mode its own hyperparameters
    model.n_modes_own_ = list(state.get("n_modes_own", model.n_modes_fields_))
    Z, Y = state["train_latent"], state["train_targets"]
    model._set_training_data(Z, Y)
    model._bounds = state["bounds"]
    model.gps_ = model._build_gps(Z, Y)
    # files written before the ExactGPModel tensors hold (inputs, targets) pairs, and those before the pairs nothing
    # (the inputs transformed again in the file's dtype)
    held = state.get("gp_train_tensors", state.get("gp_train", [None] * len(model.gps_)))
    for g, st, jitter, train in zip(model.gps_, state["gp_states"], state["fit_jitters"], held, strict=True):
        g.load_state_dict(st)
        g._fit_jitter = jitter
        g._fitted = True
        set_train_tensors(g, train)
    model.fit_result_ = MMGPFitResult.from_state(state["fit_result"])
    model.timings_ = dict(model.fit_result_.timings)
    model.cpu_timings_ = dict(model.fit_result_.cpu_timings)
    model._fitted = True
    return model
