r"""Pointwise derivatives of fields evaluated on batches of point sets, by automatic differentiation.

A field evaluated at points ``x`` of shape ``(B, n, D)`` gives values ``u`` of shape ``(B, n)``. When ``u[b, i]``
depends on ``x[b, i]`` only (true for pointwise networks, for their reparameterised samples and for closed-form
solutions), the gradient of :math:`\sum_{b, i} u_{bi}` with respect to ``x`` is, row by row, the pointwise gradient
:math:`\partial u_{bi} / \partial x_{bi}`. This is how the PDE residuals of :mod:`gpgeom.pde` are written: one
``torch.autograd.grad`` call per derivative, with ``create_graph=True`` so that residuals can sit inside a training
loss and higher derivatives can be taken of lower ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pointwise_grad"]


def pointwise_grad(y: Tensor, x: Tensor) -> Tensor:
    r"""Pointwise gradient :math:`\partial y_{bi} / \partial x_{bi}`, of the shape of ``x`` ``(B, n, D)``, graph kept.

    Exact when ``y[b, i]`` (``(B, n)``) depends on ``x[b, i]`` only. Call it again on a component for second
    derivatives, e.g. ``u_xx = pointwise_grad(pointwise_grad(u, x)[..., 0], x)[..., 0]``. A ``y`` that does not
    depend on ``x`` (a constant field) has a zero gradient.

    Args:
        y: Values ``(B, n)`` computed from ``x``.
        x: Points ``(B, n, D)`` with ``requires_grad`` on.

    Returns:
        The gradient, ``(B, n, D)``, differentiable again.
    """
    if not y.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g
