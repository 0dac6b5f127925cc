r"""The calibration of an :class:`~gpgeom.models.rgnp.model.RGNP` (:meth:`~gpgeom.models.rgnp.model.RGNP.calibrate`,
which documents the method, its arguments and what it measured; the maths in :mod:`gpgeom.models.rgnp`): the model
discrepancy fitted on reference fields, its error indicator :func:`residual_indicator`, and the optional steps of the
inverse network :math:`q_\beta` on fields drawn from the calibrated predictive (:func:`inverse_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gpgeom._progress import resolve_progress
from gpgeom._validation import check_positive
from gpgeom.engine.fitting import fit
from gpgeom.models.rgnp._checks import reference_fields, trained_sizes

__all__ = ["calibrate", "domain_grid", "inverse_loss", "residual_indicator"]


def domain_grid(model: Any, batch: int) -> Tensor:
    r"""The cell-centred grid of the domain (64, 12 x 12 or 6 x 6 x 6 points in 1, 2, 3-D), ``(batch, n, D)``."""
    per_axis = {1: 64, 2: 12, 3: 6}[model.dim]
    axes = [(torch.arange(per_axis, dtype=model.dtype, device=model.device) + 0.5) / per_axis] * model.dim
    unit = torch.stack([g.reshape(-1) for g in torch.meshgrid(*axes, indexing="ij")], dim=-1)
    return (model.lower + (model.upper - model.lower) * unit)[None].expand(batch, -1, -1)


def residual_indicator(model: Any, z: Tensor, w: Tensor) -> Tensor:
    r""":math:`\rho(z, w)`, ``(B,)`` (detached), for ``z`` ``(B, dz)`` and ``w`` ``(B, dw)``: the body of
    :meth:`RGNP.residual_indicator <gpgeom.models.rgnp.model.RGNP.residual_indicator>`, which defines it."""
    x = domain_grid(model, z.shape[0]).detach().requires_grad_(True)
    with torch.enable_grad():
        shift = torch.zeros(z.shape[0], 1, dtype=model.dtype, device=model.device, requires_grad=True)
        b, d = model.lift(x, w)
        r = model._call_residual(b + d * (model.forward_dist(z, w, x).loc + shift), x, z, w)
        probe = torch.zeros_like(r, requires_grad=True)
        (vjp,) = torch.autograd.grad(r, shift, grad_outputs=probe, create_graph=True)
        (jd,) = torch.autograd.grad(vjp.sum(), probe)  # R'[u] d at every point, (B, n)
    size = jd.pow(2).mean(-1).sqrt()
    return r.detach().pow(2).mean(-1).sqrt() / size.clamp_min(torch.finfo(size.dtype).tiny)


def inverse_loss(model: Any, batch: int, n_points: int | tuple[int, int], noise_std: float = 0.0) -> Tensor:
    r""":math:`-\mathbb E \log q_\beta(z \mid u + \epsilon, w)` per field (a scalar tensor), over ``batch`` draws of
    :math:`z, w` from the priors, a random grid of ``n_points`` points, :math:`u` from the calibrated predictive
    (:meth:`~gpgeom.models.rgnp.model.RGNP.predictive_dist`) and observation noise
    :math:`\epsilon \sim \mathcal N(0, \sigma_y^2 I)`, :math:`\sigma_y` = ``noise_std``."""
    z, w = model.sample_params(batch)
    x = model.sample_grid(batch, n_points)
    with torch.no_grad():
        u = model.predictive_dist(z, w, x).rsample()
        u = u + noise_std * torch.randn_like(u) if noise_std > 0 else u
    return -model.inverse_dist(x, u, w).log_prob(z).mean()


def calibrate(
    model: Any, data: dict | None = None, *, n_fields: int = 32, n_points: int = 50, inverse_steps: int = 0,
    inverse_batch: int = 32, inverse_noise_std: float = 0.0, lr: float = 1e-3, seed: int | None = None,
    progress: bool | None = None,
) -> Any:  # fmt: skip
    r"""The body of :meth:`RGNP.calibrate <gpgeom.models.rgnp.model.RGNP.calibrate>` (which documents the
    arguments, what it does and what it raises) for the model ``model``; returns ``model``."""
    with model._kept_on_error():  # a calibrate that raises (KeyboardInterrupt included) leaves the model as it was
        return _calibrate(
            model, data, n_fields=n_fields, n_points=n_points, inverse_steps=inverse_steps, inverse_batch=inverse_batch,
            inverse_noise_std=inverse_noise_std, lr=lr, seed=seed, progress=progress,
        )  # fmt: skip


def _calibrate(
    model: Any, data: dict | None, *, n_fields: int, n_points: int, inverse_steps: int, inverse_batch: int,
    inverse_noise_std: float, lr: float, seed: int | None, progress: bool | None,
) -> Any:  # fmt: skip
    r""":func:`calibrate` without the restoring of the model on an error."""
    model._check_fitted()
    resolve_progress(progress)  # a bad value is refused before the reference solves, with or without steps
    check_positive("n_fields", n_fields, integer=True)
    check_positive("inverse_steps", inverse_steps, integer=True, allow_zero=True)
    check_positive("inverse_batch", inverse_batch, integer=True)
    check_positive("inverse_noise_std", inverse_noise_std, allow_zero=True)
    if inverse_noise_std and not inverse_steps:
        raise ValueError(
            f"`inverse_noise_std`={inverse_noise_std} is the noise of the inverse steps' fields, but "
            "`inverse_steps` is 0: ask for inverse steps (e.g. inverse_steps=500) or leave the noise at 0."
        )
    check_positive("n_points", n_points, integer=True)
    x, y, z, w = reference_fields(model, data, n_fields, n_points, seed, progress, leave=not inverse_steps)
    with torch.no_grad():
        b, d = model.lift(x, w)
        # the size of |d| over the domain for each field's w: a point counts where |d| exceeds 1e-6 of it (the
        # largest |d| among a field's own points cannot tell points all on the boundary from points inside)
        d_scale = torch.maximum(model.lift(domain_grid(model, x.shape[0]), w)[1].abs().amax(-1), d.abs().amax(-1))
        if not bool(model.discrepancy.informative(d, d_scale).any()):
            raise ValueError(
                f"`data` holds no point where the model can err: all {x.shape[0]} x {x.shape[1]} points lie on the "
                "hard (Dirichlet) boundary of the lift (|d| <= 1e-6 times its largest value on the domain), where "
                "u = b exactly by construction, so they say nothing of the model discrepancy (its fit would return "
                "the prior's hyperparameters, scale 1 and nugget 0.1); give reference fields at points inside the "
                "domain."
            )
        q = model.forward_dist(z, w, x)
        base = d[..., :, None] * q.covariance_matrix * d[..., None, :]
        errors = y - (b + d * q.mean)
        rho = model.residual_indicator(z, w)
    model.discrepancy.reset()
    xs = model._normalise(x, model.lower, model.upper)
    record: dict[str, Any] = model.discrepancy.calibrate(errors, base, xs, d, rho, d_scale=d_scale)
    record.update(n_fields=int(x.shape[0]), n_points=int(x.shape[1]), inverse_steps=int(inverse_steps))
    if inverse_steps:
        result = fit(
            lambda: inverse_loss(model, inverse_batch, model.n_points, inverse_noise_std), module=model.inverse_net,
            optimizer="adam", lr=lr, epochs=inverse_steps, patience=inverse_steps + 1, rel_tol=0.0,
            progress=progress, seed=seed,
        )  # fmt: skip
        record.update(inverse_loss=float(result.loss), inverse_noise_std=float(inverse_noise_std))
        model.trained_sizes_ = trained_sizes(model.trained_sizes_, model.n_points)
    model.calibration_ = record
    return model
