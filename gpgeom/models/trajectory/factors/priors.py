r"""Gaussian priors of a GP trajectory problem: on global parameter blocks and on knot states.

* :class:`GlobalPrior` -- :math:`e = (\gamma_{\text{name}} - \mu)/\sigma` on a global block (e.g. IMU biases).
* :class:`KnotPrior` -- :math:`e = [\mathrm{Log}(\bar R^\top R_k)/\sigma_R; (\omega_k - \bar\omega)/\sigma_\omega;
  \dots]` on (parts of) knot states, e.g. the initial-state prior :math:`x_0 \sim N(\bar x_0, P_0)` that anchors a
  GP started at the first knot (Barfoot, *State Estimation for Robotics*, 2017, sec. 3.4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gpgeom.geometry.lie import check_rotation, check_unit_quaternion, quat_to_rotmat, so3_jr_inv, so3_log
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor
from gpgeom.models.trajectory.state import COMPONENTS

__all__ = ["GlobalPrior", "KnotPrior"]


class GlobalPrior(Measurement):
    r"""Gaussian prior :math:`e = (\gamma_{\text{name}} - \mu)/\sigma` on a global parameter block.

    Args:
        name_of_param: The block's name (e.g. ``"imu_bias"``).
        mean: ``g_i`` prior mean (also the initial value when no other measurement gives one).
        sigma: Prior std: float or ``g_i`` vector.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    attach = "global"

    def __init__(
        self, name_of_param: str, mean, *, sigma: float | Tensor = 1.0, robust=None, robust_threshold=1.0, name=""
    ):
        super().__init__(None, robust=robust, robust_threshold=robust_threshold, name=name or f"prior[{name_of_param}]")
        if not isinstance(name_of_param, str) or not name_of_param:
            raise TypeError(f"`name_of_param` must be a non-empty str, got {name_of_param!r}.")
        self.param = name_of_param
        mu = measurement_tensor("mean", mean, shape=(None,))
        if mu.dim() != 1:
            raise ValueError(f"`mean` must be a vector, got shape {tuple(mu.shape)}.")
        self.mean = mu
        self.residual_dim = int(mu.shape[0])
        self.w = inverse_sigma("sigma", sigma, 1, self.residual_dim)[0]

    @property
    def num_blocks(self) -> int:
        return 1

    @property
    def components(self) -> tuple[str, ...]:
        return ()

    def global_params(self):
        return {self.param: self.mean}

    def residual(self, state, params):
        return ((params[self.param] - self.mean) * self.w).unsqueeze(0)

    def linearize(self, state, params):
        e = self.residual(state, params)
        return e, e.new_zeros(1, self.residual_dim, 0), {self.param: torch.diag(self.w).unsqueeze(0)}


class KnotPrior(Measurement):
    r"""Gaussian prior on the states of knots ``index`` (``M`` of them), e.g. to anchor the first knot.

    .. math:: e = \big[\mathrm{Log}(\bar R^\top R_k)/\sigma_R;\ (\omega_k - \bar\omega)/\sigma_\omega;\ \dots\big]

    over the components given (``None`` leaves a component free). With all of them given it is the prior
    :math:`x_{0} \sim N(\bar x, P_0)` of a GP started at the first knot (diagonal :math:`P_0`).

    Args:
        index: Knot index or ``M`` indices (negative counts from the end).
        R / q: ``M x 3 x 3`` rotations or ``M x 4`` unit quaternions (scalar-last), or a single one.
        omega, alpha, p, v, a: ``M x 3`` (or ``3``) means.
        sigma: Std: a float for all, or a dict component -> float / 3-vector.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    attach = "knot"

    def __init__(
        self,
        index: int | Sequence[int] | Tensor,
        *,
        R=None,
        q=None,
        omega=None,
        alpha=None,
        p=None,
        v=None,
        a=None,
        sigma: float | dict = 1.0,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(None, robust=robust, robust_threshold=robust_threshold, name=name)
        idx = torch.as_tensor(index)
        if idx.is_floating_point() or idx.dtype == torch.bool:
            raise TypeError(f"`index` must be an int or integer indices, got {index!r}.")
        self.index = idx.reshape(-1).long()
        M = int(self.index.shape[0])
        if q is not None and R is not None:
            raise ValueError("KnotPrior takes `R` or `q`, not both.")
        if q is not None:
            q = measurement_tensor("q", q, shape=(4,), M=M)
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q, validate=False)
        elif R is not None:
            R = measurement_tensor("R", R, shape=(3, 3), M=M)
            check_rotation(R, name="R")
        given = {"R": R, "omega": omega, "alpha": alpha, "p": p, "v": v, "a": a}
        self.means = {}
        for k, val in given.items():
            if val is None:
                continue
            self.means[k] = val if k == "R" else measurement_tensor(k, val, shape=(3,), M=M)
        if not self.means:
            raise ValueError("KnotPrior needs at least one of R, q, omega, alpha, p, v, a.")
        if isinstance(sigma, dict):
            unknown = set(sigma) - set(COMPONENTS)
            if unknown:
                raise ValueError(f"`sigma` has unknown keys {sorted(unknown)}; expected some of {COMPONENTS}.")
            missing = set(self.means) - set(sigma)
            if missing:
                raise ValueError(f"`sigma` must give a std for every prior component; missing {sorted(missing)}.")
        self._comps = tuple(c for c in COMPONENTS if c in self.means)
        self.w = torch.cat(
            [
                inverse_sigma(
                    f"sigma[{c}]", sigma[c] if isinstance(sigma, dict) else sigma, M, 3, components_first=True
                )
                for c in self._comps
            ],
            1,
        )
        self.residual_dim = 3 * len(self._comps)

    @property
    def num_blocks(self) -> int:
        return int(self.index.shape[0])

    @property
    def components(self) -> tuple[str, ...]:
        return self._comps

    def _errors(self, state):
        parts = []
        for c in self._comps:
            if c == "R":
                parts.append(so3_log(self.means["R"].mT @ state["R"], validate=False))
            else:
                parts.append(state[c] - self.means[c])
        return parts

    def residual(self, state, params):
        return torch.cat(self._errors(state), dim=1) * self.w

    def linearize(self, state, params):
        parts = self._errors(state)
        e = torch.cat(parts, dim=1) * self.w
        M, n = e.shape
        J = torch.diag_embed(e.new_ones(M, n))
        if "R" in self._comps:
            J[:, :3, :3] = so3_jr_inv(parts[0])
        return e, J * self.w[:, :, None], {}
