r"""Small batched linear-algebra helpers shared by the two pose groups of the GP trajectories.

* :func:`mv` -- batched matrix-vector product.
* :func:`kron_eye` -- the blocks of :math:`A \otimes I_c`: a per-channel prior (one scalar chain per axis, Barfoot,
  *State Estimation for Robotics*, 2017, sec. 3.4) applied to a ``c``-dimensional local variable.
* :func:`rowwise_jacobian` -- the Jacobian of a row-wise map by one forward-mode ``jvp`` over replicated rows.
* :func:`as_vec3` -- a positive per-axis parameter (the power spectral densities :math:`Q_c`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gpgeom._validation import as_tensor

__all__ = ["as_vec3", "kron_eye", "mv", "rowwise_jacobian"]


def mv(A: Tensor, x: Tensor) -> Tensor:
    r"""``A @ x`` for ``... x n x m`` matrices and ``... x m`` vectors."""
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def kron_eye(A: Tensor, c: int = 3) -> Tensor:
    r"""``M x n x m`` -> ``M x n x c x m x c``: the blocks of :math:`A \otimes I_c`."""
    eye = torch.eye(c, dtype=A.dtype, device=A.device)
    return A[:, :, None, :, None] * eye[None, None, :, None, :]


def rowwise_jacobian(fn: Callable[..., Tensor], args: tuple[Tensor, ...], nd: int) -> tuple[Tensor, Tensor]:
    r"""Value ``M x r`` and Jacobian ``M x r x nd`` of a row-wise function ``fn(d, *args) -> M x r`` at ``d = 0``.

    ``fn`` maps a per-row perturbation ``d`` (``M x nd``) and per-row arguments (first dimension ``M``) to per-row
    outputs, row ``m`` depending on row ``m`` only. Instead of ``jacfwd`` (a ``vmap`` over ``nd`` directions, whose
    per-operation overhead dominates for these small batched maps) each row is replicated ``nd`` times, copy ``j``
    is perturbed along :math:`e_j`, and a single forward-mode ``jvp`` gives every column at once.
    """
    M = args[0].shape[0]
    rep = [a.repeat_interleave(nd, dim=0) for a in args]
    ref = args[0]
    eye = torch.eye(nd, dtype=ref.dtype, device=ref.device).repeat(M, 1)
    out, tan = torch.func.jvp(lambda d: fn(d, *rep), (torch.zeros_like(eye),), (eye,))
    r = out.shape[-1]
    return out.reshape(M, nd, r)[:, 0], tan.reshape(M, nd, r).transpose(1, 2)


def as_vec3(name: str, x: float | Sequence[float] | Tensor) -> Tensor:
    r"""A finite, positive float or 3-vector (numpy, torch or Python) as a float64 CPU 3-vector."""
    t = as_tensor(name, x, dtype=torch.float64, device="cpu", finite=False)
    if t.dim() == 0:
        t = t.expand(3)
    if t.shape != (3,):
        raise ValueError(f"`{name}` must be a positive float or a 3-vector (one per axis), got shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"`{name}` must be finite and > 0, got {t.tolist()}.")
    return t.clone()
