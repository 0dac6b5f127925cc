r"""MMGP's GP stage (Casenave et al., NeurIPS 2023, arXiv:2305.12871, Sec. 3.3, Eq. (4)): independent exact GPs
from the latent inputs :math:`z = (\xi, \mu) \in \mathbb{R}^{n_g + p}` to every field POD coefficient and every
output scalar, as BoTorch models.

How the hyperparameters (kernel and noise) are tied across the ``sum(n_f) + q`` outputs:

* ``"per_output"``: every output its own (one batched :class:`~gpgeom.botorch.ExactGPModel`); with
  ``n_modes_own`` (:func:`own_modes`), only the leading modes of each field, and the scalars, get their own, while
  the trailing modes of each field share one set (one ``ExactGPModel`` with ``shared_hyperparameters=True`` per
  field tail; groups of :func:`gp_groups`);
* ``"per_field"``: shared among the modes of each field (one ``ExactGPModel`` with
  ``shared_hyperparameters=True`` per field), and one GP per output scalar, gathered in a
  :class:`~gpgeom.botorch.SurrogateList`;
* ``"shared"``: one set for all outputs (one ``ExactGPModel``).

Each output keeps its own constant mean, and the outputs are independent GPs in every case.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from botorch.models.transforms.input import Normalize
from gpytorch.kernels import Kernel, RBFKernel
from linear_operator import to_dense
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom._warnings import quiet
from gpgeom.botorch.defaults import default_covar_module
from gpgeom.botorch.exact_gp import ExactGPModel

__all__ = [
    "HYPERPARAMETERS",
    "KERNELS",
    "loo_residuals",
    "make_gp",
    "gp_groups",
    "make_kernel",
    "noise_variances",
    "output_groups",
    "own_modes",
    "single_output_gp",
]

KERNELS = ("matern52", "matern32", "matern12", "rbf")
HYPERPARAMETERS = ("per_field", "per_output", "shared")

KernelSpec = str | Callable[[int, torch.Size], Kernel]


def make_kernel(kernel: KernelSpec, d: int, m: int, shared: bool = False) -> Kernel:
    r"""A scaled ARD kernel on ``d`` inputs for ``m`` outputs (batch shape ``m``, or ``1`` when ``shared``)."""
    batch = torch.Size([1 if shared else m]) if m > 1 else torch.Size()
    if callable(kernel):
        k = kernel(d, batch)
        # checked here, not as an AttributeError (None), a matmul error (another module) or a broadcast error of
        # the kernel's batch shape in the first evaluation of the GP
        if not isinstance(k, Kernel):
            raise TypeError(
                f"The `kernel` callable must return a gpytorch Kernel for kernel(d={d}, batch_shape={tuple(batch)}), "
                f"got {type(k).__name__}."
            )
        ok = True
        try:
            ok = torch.broadcast_shapes(k.batch_shape, batch) == batch
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"The `kernel` callable returned a kernel of batch_shape {tuple(k.batch_shape)} for "
                f"kernel(d={d}, batch_shape={tuple(batch)}); build it with the batch_shape it is given."
            )
        return k
    k = default_covar_module(d, batch_shape=batch)
    if kernel in ("matern32", "matern12"):
        k.base_kernel.nu = 1.5 if kernel == "matern32" else 0.5
    elif kernel == "rbf":
        old = k.base_kernel
        k.base_kernel = RBFKernel(
            ard_num_dims=d,
            batch_shape=batch,
            lengthscale_prior=old.lengthscale_prior,
            lengthscale_constraint=old.raw_lengthscale_constraint,
        )
    return k


def make_gp(X: Tensor, Y: Tensor, bounds: Tensor, kernel: KernelSpec, shared: bool = False) -> ExactGPModel:
    r"""An :class:`~gpgeom.botorch.ExactGPModel` on ``X`` ``n x d`` -> ``Y`` ``n x m`` with the inputs normalised
    by the fixed box ``bounds`` ``2 x d`` (the training latent box; it does not move under conditioning)."""
    d, m = X.shape[-1], Y.shape[-1]
    shared = shared and m > 1
    # the zero mode of a field equal on every mesh (the POD has said so): its GP predicts zero
    with quiet(r"Output\(s\) .* are all zero", UserWarning):  # in this thread only (gpgeom._warnings)
        return ExactGPModel(
            X,
            Y,
            covar_module=make_kernel(kernel, d, m, shared).to(X),
            shared_hyperparameters=shared,
            input_transform=Normalize(d=d, bounds=bounds.to(X)),
        )


def output_groups(
    n_modes_fields: list[int], n_scalars: int, hyperparameters: str, n_modes_own: list[int] | None = None
) -> list[tuple[int, int]]:
    r"""``(start, stop)`` output columns of each GP (:func:`gp_groups`)."""
    return gp_groups(n_modes_fields, n_scalars, hyperparameters, n_modes_own)[0]


def gp_groups(
    n_modes_fields: list[int], n_scalars: int, hyperparameters: str, n_modes_own: list[int] | None = None
) -> tuple[list[tuple[int, int]], list[bool]]:
    r"""The GPs of the ``sum(n_f) + q`` outputs (field coefficients field by field, then the scalars): their
    ``(start, stop)`` output columns and whether each shares one set of hyperparameters over its outputs.

    ``"shared"``: one group, shared. ``"per_field"``: one shared group per field, one group per scalar.
    ``"per_output"``: one group of separate hyperparameters, unless ``n_modes_own`` (one count per field,
    :func:`own_modes`) leaves a tail to some field: then per field a group of its first ``n_modes_own[f]`` modes
    (separate hyperparameters) and a shared group of the others, then one group of the scalars (separate).
    """
    total = sum(n_modes_fields) + n_scalars
    if hyperparameters == "shared":
        return [(0, total)], [True]
    if hyperparameters == "per_field":
        groups, start = [], 0
        for nf in n_modes_fields:
            groups.append((start, start + nf))
            start += nf
        groups += [(start + j, start + j + 1) for j in range(n_scalars)]
        return groups, [True] * len(groups)
    own = n_modes_fields if n_modes_own is None else n_modes_own
    if len(own) != len(n_modes_fields):
        raise ValueError(f"`n_modes_own` needs one count per field ({len(n_modes_fields)}), got {len(own)}.")
    if all(o >= nf for o, nf in zip(own, n_modes_fields, strict=True)):
        return [(0, total)], [False]
    groups, shared, start = [], [], 0
    for o, nf in zip(own, n_modes_fields, strict=True):
        o = min(max(int(o), 0), nf)
        if o > 0:
            groups.append((start, start + o))
            shared.append(False)
        if o < nf:
            groups.append((start + o, start + nf))
            shared.append(True)
        start += nf
    if n_scalars:
        groups.append((start, total))
        shared.append(False)
    return groups, shared


def own_modes(energy_ratio: np.ndarray, n_modes: int, tail_energy: float) -> int:
    r"""How many leading POD modes of a field get their own GP hyperparameters: those whose share of the field's
    snapshot energy :math:`\lambda_k / \sum_j \lambda_j` (``energy_ratio``, decreasing, ``(>= n_modes,)``) is at
    least ``tail_energy``, and at least one; the further modes up to ``n_modes`` form the field's tail, whose
    coefficients are noise-like functions of the inputs that one shared kernel fits as well as separate ones
    (measured in ``benchmarks/results/mmgp.md``). ``tail_energy = 0`` keeps every mode separate."""
    if not 0.0 <= tail_energy < 1.0:
        raise ValueError(f"`tail_energy` must be in [0, 1), got {tail_energy!r}.")
    ratio = np.asarray(energy_ratio, dtype=np.float64)[:n_modes]
    return int(max(1, (ratio >= tail_energy).sum())) if tail_energy > 0 else int(n_modes)


def single_output_gp(
    gp: ExactGPModel, j: int, X: Tensor, Y: Tensor, bounds: Tensor, kernel: KernelSpec
) -> ExactGPModel:
    r"""A single-output GP of output ``j`` of ``gp`` (a member GP), on ``X`` -> ``Y`` ``n x 1``, with that output's
    hyperparameters.

    Built afresh rather than by ``gp.subset_output``: the new model carries BoTorch's stored original training
    inputs of an input-transformed model, so ``condition_on_observations`` and ``fantasize`` work on it.
    """
    new = make_gp(X, Y, bounds, kernel)
    old = gp.state_dict()
    state = {}
    for name, t in new.state_dict().items():
        src = old[name]
        if src.shape == t.shape:
            state[name] = src.clone()
        elif name.startswith("outcome_transform."):
            state[name] = src[..., j : j + 1].clone()
        else:  # per-output parameter (leading dim m) or shared one (leading dim 1)
            state[name] = src[j if src.shape[0] > 1 else 0].reshape(t.shape).clone()
    new.load_state_dict(state)
    new._fit_jitter = gp._fit_jitter
    return new.eval()


def noise_variances(gp: ExactGPModel) -> Tensor:
    r"""The learned noise variance :math:`\sigma_k^2` of every output of ``gp`` in the outputs' original units,
    ``(m,)`` (the likelihood's noise times the squared scale of the outcome standardisation)."""
    m = gp.num_outputs
    noise = gp.likelihood.noise.detach().reshape(-1)
    noise = noise.expand(m) if noise.numel() == 1 else noise
    octf = getattr(gp, "outcome_transform", None)
    return noise if octf is None else noise * octf.stdvs.detach().reshape(-1).square()


def loo_residuals(gp: ExactGPModel) -> Tensor:
    r"""Leave-one-out residuals :math:`y_i - \mu_{-i}(x_i)` of every training point and output of ``gp`` with its
    fitted hyperparameters, ``n x m`` in the original units.

    Closed form (Rasmussen & Williams 2006, Eq. (5.12)): with :math:`K_y = K + \sigma^2 I` and
    :math:`\alpha = K_y^{-1}(y - m)`, the residual is :math:`\alpha_i / [K_y^{-1}]_{ii}`; one Cholesky factor per
    output, no refit.
    """
    gp.eval()
    with torch.no_grad(), gp.numerics():
        X = gp.train_inputs[0]  # eval mode: transformed inputs, ``(m) x n x d``
        prior = gp.forward(X)
        K = to_dense(gp.likelihood(prior, X).lazy_covariance_matrix)
        L = psd_safe_cholesky(K)
        Kinv = torch.cholesky_inverse(L)
        alpha = (Kinv @ (gp.train_targets - prior.mean).unsqueeze(-1)).squeeze(-1)
        loo = alpha / torch.diagonal(Kinv, dim1=-2, dim2=-1)  # ``(m) x n``, standardised units
    loo = loo.mT if loo.dim() > 1 else loo.unsqueeze(-1)
    octf = getattr(gp, "outcome_transform", None)
    return loo if octf is None else loo * octf.stdvs.detach().reshape(1, -1)
