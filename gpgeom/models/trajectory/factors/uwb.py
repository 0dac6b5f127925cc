r"""Ultra-wideband (UWB) measurements of a GP trajectory: two-way ranging and time difference of arrival.

Both measure the tag at :math:`x = R(t)\,o + p(t)` (lever arm :math:`o` in the body frame), with
:math:`\partial x/\partial\delta_R = -R\,o^\wedge` and :math:`\partial x/\partial p = I` (the UWB factors of
T.-M. Nguyen et al., *GPTR: Gaussian Process Trajectory Representation for Continuous-Time Motion Estimation*,
arXiv:2410.22931, 2024).

* :class:`RangeMeasurement` -- :math:`e = (\lVert x - x_{\text{anc}}\rVert - d)/\sigma`.
* :class:`TDOAMeasurement` -- :math:`e = (\lVert x - x_j\rVert - \lVert x - x_i\rVert - m)/\sigma`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.geometry.lie import so3_hat
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor

__all__ = ["RangeMeasurement", "TDOAMeasurement"]


def _uwb_inputs(M: int, name: str, values: object, tag_offset: object, sigma: object) -> tuple[Tensor, Tensor, Tensor]:
    r"""Validate the inputs shared by the scalar UWB factors.

    Returns ``(values, offset, w)``: the ``M`` measured scalars (named ``name`` in the errors), the ``M x 3`` tag
    offsets (0 when ``tag_offset`` is None) and the ``M x 1`` inverse standard deviations.
    """
    v = measurement_tensor(name, values, shape=())
    if v.shape != (M,):
        raise ValueError(f"`{name}` must have shape ({M},) like `t`, got {tuple(v.shape)}.")
    offset = measurement_tensor("tag_offset", torch.zeros(3) if tag_offset is None else tag_offset, shape=(3,), M=M)
    return v, offset, inverse_sigma("sigma", sigma, M, 1)


class _TagMeasurement(Measurement):
    r"""A scalar UWB measurement of the tag at :math:`x_{\text{tag}} = R(t)\, o + p(t)`: the tag position and the
    Jacobian of a residual through it, shared by ranging and TDOA."""

    level = 0
    residual_dim = 1

    def _tag(self, state):
        return (state["R"] @ self.offset.unsqueeze(-1)).squeeze(-1) + state["p"]

    def _jacobian(self, g, state):
        r"""``[de/d delta_R, de/dp]`` (``M x 1 x 6``, weighted) from ``g = de/dx_tag`` (``M x 1 x 3``, unweighted),
        with :math:`\partial x_{\text{tag}}/\partial\delta_R = -R\, o^\wedge` and
        :math:`\partial x_{\text{tag}}/\partial p = I`."""
        dR = -(g @ state["R"] @ so3_hat(self.offset))
        return torch.cat([dR, g], dim=-1) * self.w[:, :, None]


class RangeMeasurement(_TagMeasurement):
    r"""UWB two-way ranging between a tag on the body and a fixed anchor.

    .. math:: x = R(t)\, o + p(t) - x_{\text{anc}}, \qquad e = (\lVert x\rVert - d) / \sigma,

    .. math:: \partial e/\partial p = n^\top/\sigma, \quad \partial e/\partial\delta_R = -n^\top R\, o^\wedge/\sigma,
       \quad n = x / \lVert x\rVert.

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        anchors: ``M x 3`` (or ``3``) anchor positions in the world frame.
        ranges: ``M`` measured distances.
        tag_offset: ``M x 3`` (or ``3``) tag position in the body frame (lever arm), default 0.
        sigma: Range noise std: float or ``M``.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    def __init__(
        self,
        t,
        anchors,
        ranges,
        *,
        tag_offset=None,
        sigma: float | Tensor = 0.05,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.anchors = measurement_tensor("anchors", anchors, shape=(3,), M=self.num_blocks)
        self.d, self.offset, self.w = _uwb_inputs(self.num_blocks, "ranges", ranges, tag_offset, sigma)

    def _x(self, state):
        return self._tag(state) - self.anchors

    def residual(self, state, params):
        return (torch.linalg.vector_norm(self._x(state), dim=-1, keepdim=True) - self.d[:, None]) * self.w

    def linearize(self, state, params):
        x = self._x(state)
        rho = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        e = (rho - self.d[:, None]) * self.w
        return e, self._jacobian((x / rho).unsqueeze(-2), state), {}


class TDOAMeasurement(_TagMeasurement):
    r"""UWB time difference of arrival (in metres) between anchors ``i`` and ``j``.

    .. math:: x = R(t)\, o + p(t), \qquad e = (\lVert x - x_j\rVert - \lVert x - x_i\rVert - m) / \sigma,
       \qquad \partial e/\partial x = (n_j - n_i)^\top/\sigma.

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        anchor_i, anchor_j: ``M x 3`` (or ``3``) anchor positions.
        tdoa: ``M`` measured range differences :math:`\lVert x - x_j\rVert - \lVert x - x_i\rVert`.
        tag_offset: ``M x 3`` (or ``3``) tag position in the body frame, default 0.
        sigma: Noise std: float or ``M``.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    def __init__(
        self,
        t,
        anchor_i,
        anchor_j,
        tdoa,
        *,
        tag_offset=None,
        sigma: float | Tensor = 0.05,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        self.ai = measurement_tensor("anchor_i", anchor_i, shape=(3,), M=self.num_blocks)
        self.aj = measurement_tensor("anchor_j", anchor_j, shape=(3,), M=self.num_blocks)
        self.m, self.offset, self.w = _uwb_inputs(self.num_blocks, "tdoa", tdoa, tag_offset, sigma)

    def residual(self, state, params):
        x = self._tag(state)
        dj = torch.linalg.vector_norm(x - self.aj, dim=-1)
        di = torch.linalg.vector_norm(x - self.ai, dim=-1)
        return ((dj - di - self.m) * self.w[:, 0]).unsqueeze(-1)

    def linearize(self, state, params):
        x = self._tag(state)
        xj, xi = x - self.aj, x - self.ai
        dj = torch.linalg.vector_norm(xj, dim=-1, keepdim=True)
        di = torch.linalg.vector_norm(xi, dim=-1, keepdim=True)
        e = (dj - di - self.m[:, None]) * self.w
        return e, self._jacobian((xj / dj - xi / di).unsqueeze(-2), state), {}
