r"""FunBaT's fitted state as plain values and tensors (for :meth:`gpgeom.base.ModelContract.save` / ``load``) and
its moves between devices and dtypes.

The file (:mod:`gpgeom._io`) holds the configuration, the scalings of coordinates and targets, every mode's
kernel, coordinates, messages and smoothed posterior (means, covariances, lag-one cross-covariances, gains,
likelihoods), the core, noise and bias factors, the Student-t scales and degrees of freedom
(:mod:`~gpgeom.models.funbat.noise`; format version 2; with scales shared along a mode, ``scale_mode`` in the
configuration and one factor per group, the groups being the saved coordinates of that mode, so a file written
before the option loads with ``scale_mode=None``), the training entries (normalised) and the sweep history:
everything ``predict``, ``latent``, ``elbo``, ``as_botorch`` and ``rebuild_with`` need. The coordinate map's ``lo``
and ``span`` are float64 and the file names the dtype of the fit (format version 3,
:mod:`~gpgeom.models.funbat.inputs`), and the training labels of the ``categorical`` modes and ``scale_mode`` in
their original units (float64) with the dtype they came in, which query coordinates are matched to (format version
4). A ``FunBaTCP`` file names its class and loads as a ``FunBaTCP`` through
``FunBaT.load``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from gpgeom.models.funbat.inference import _Mode
from gpgeom.models.funbat.latent import LatentPosterior
from gpgeom.models.funbat.priors import mode_kernel

__all__ = ["get_state", "from_state", "move"]

_POST_FIELDS = ("mean", "cov", "cross", "gain", "log_likelihood", "log_normalizer")
_TENSORS = (
    "y_mean y_std coord_lo coord_span _core_mean _core_cov _core_lam _core_eta _tau_a _tau_b _tau_data _bias_mean "
    "_bias_var _last_sq _X _ys _f_old _scale_alpha _scale_beta _resid_sq"
).split()

#: the tensors kept in float64 whatever the model's dtype (float32 on MPS): the coordinate map and the targets' mean
#: and scale (:mod:`~gpgeom.models.funbat.inputs`)
_FLOAT64 = ("y_mean", "y_std", "coord_lo", "coord_span")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def get_state(model: Any) -> dict[str, Any]:
    r"""Everything :func:`from_state` needs (module docstring)."""
    modes = []
    for md in model._modes:
        entry = {"t": md.t, "idx": md.idx, "lam": md.lam, "eta": md.eta}
        entry.update({f"post_{name}": getattr(md.post, name) for name in _POST_FIELDS})
        modes.append(entry)
    state = {
        "config": {k: _plain(v) for k, v in model._config().items()},
        "ranks": list(model.ranks),
        "dtype": str(model.dtype).replace("torch.", ""),
        "fit_dtype": str(model._fit_dtype).replace("torch.", ""),  # the coordinate map's rounding (inputs.py)
        "labels": list(model._labels),  # per mode: the training labels (float64) or None (inputs.py)
        "label_dtype": str(model._label_dtype).replace("torch.", ""),
        "nus": [float(getattr(k, "nu", 0.5)) for k in model.kernels],  # a categorical mode's is not used
        "kernels": [dict(k.state_dict()) for k in model.kernels],
        "modes": modes,
        "tensors": {name: getattr(model, name, None) for name in _TENSORS},
        "n_train": int(model._N),
        "history": list(model.history),
        "converged": bool(model.converged),
        "restart_elbos": list(model.restart_elbos),
        "schedule": [int(model._next_hyper), int(model._interval), int(model._hyper_steps)],
        "dof": None if getattr(model, "_dof", None) is None else float(model._dof),
        "per_mode": [list(model._nus), list(model._ls0), list(model._vs0)],
        "fit_result": asdict(model.fit_result_) if getattr(model, "fit_result_", None) is not None else None,
    }
    return state


def from_state(cls: type, state: dict[str, Any]) -> Any:
    r"""A fitted model of class ``cls`` from :func:`get_state`'s dict (on the CPU, in the saved dtype)."""
    from gpgeom.models.funbat.model import FunBaTFitResult

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items()}
    dtype = getattr(torch, state["dtype"])
    cpu = torch.device("cpu")
    model = cls._from_config(cfg, dtype=dtype)
    model.ranks = tuple(state["ranks"])
    model.kernels = torch.nn.ModuleList()
    for k, (nu, sd) in enumerate(zip(state["nus"], state["kernels"], strict=True)):
        kern = mode_kernel(nu, k in model.categorical, dtype, cpu)
        kern.load_state_dict(sd)
        kern.eval()
        model.kernels.append(kern)
    model._modes = []
    for md, kern in zip(state["modes"], model.kernels, strict=True):
        post = LatentPosterior(*(md[f"post_{name}"] for name in _POST_FIELDS))
        s = kern.state_dim
        model._modes.append(_Mode(md["t"], md["idx"], post.mean[:, ::s], post.cov[:, ::s, ::s], md["lam"], md["eta"],
                                  post))  # fmt: skip
    for name, value in state["tensors"].items():
        setattr(model, name, value)
    model._fit_dtype = getattr(torch, state["fit_dtype"])  # the coordinate map's rounding (inputs.py)
    model._labels, model._label_dtype = list(state["labels"]), getattr(torch, state["label_dtype"])
    model._N = int(state["n_train"])
    model._dof = state["dof"]
    model._coords = [(md.t, md.idx) for md in model._modes]
    model._set_scale_groups()  # shared scales (scale_mode): the groups from the coordinates; files without it: None
    model.history = list(state["history"])
    model.converged = bool(state["converged"])
    model.restart_elbos = list(state["restart_elbos"])
    model._next_hyper, model._interval, model._hyper_steps = state["schedule"]
    model._nus, model._ls0, model._vs0 = (list(v) for v in state["per_mode"])
    model.fit_result_ = FunBaTFitResult(**state["fit_result"]) if state["fit_result"] is not None else None
    model._fitted = True
    model._key_kernels()
    return model


def move(model: Any, device: torch.device, dtype: torch.dtype) -> None:
    r"""Move every fitted tensor of ``model`` to ``device`` and cast the floating ones to ``dtype``, in place (the
    coordinate map's ``lo`` and ``span``, the targets' ``y_mean`` and ``y_std`` and the training labels stay
    float64, :mod:`~gpgeom.models.funbat.inputs`)."""

    def mv(x: Any) -> Any:
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)
        if isinstance(x, LatentPosterior):
            return LatentPosterior(*(mv(v) for v in x))
        return x

    coord = torch.float32 if torch.device(device).type == "mps" else torch.float64
    for name in _TENSORS:
        if hasattr(model, name):
            value = getattr(model, name)
            if name in _FLOAT64 and isinstance(value, Tensor):  # stays float64 (float32 on MPS): inputs.py
                setattr(model, name, value.to(device=device, dtype=coord))
            else:
                setattr(model, name, mv(value))
    if hasattr(model, "coord_lo"):
        model._labels = [None if L is None else L.to(device=device, dtype=coord) for L in model._labels]
    for md in getattr(model, "_modes", []):
        for name in ("t", "idx", "u_mean", "u_cov", "lam", "eta", "post"):
            setattr(md, name, mv(getattr(md, name)))
    if hasattr(model, "_coords"):
        model._coords = [(mv(t), mv(i)) for t, i in model._coords]
    for name in ("_scale_groups", "_scale_counts"):  # shared scales: derived from the coordinates, not saved
        setattr(model, name, mv(getattr(model, name)))
    if hasattr(model, "kernels"):
        model.kernels.to(device=device, dtype=dtype)
        if getattr(model, "_kernel_keys", None) is not None:  # the posteriors moved with the kernels
            model._key_kernels()
