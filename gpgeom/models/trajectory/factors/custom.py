r"""User-defined measurements of a GP trajectory: a residual function of the state (and of global parameters),
differentiated by forward-mode automatic differentiation (``torch.func.jacfwd``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import jacfwd

from gpgeom._validation import check_option, check_positive
from gpgeom.geometry.lie import so3_exp
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor

__all__ = ["CustomMeasurement"]


class CustomMeasurement(Measurement):
    r"""A measurement given by its residual function only; Jacobians by ``torch.func.jacfwd``.

    ``residual_fn(state, params) -> M x r`` receives the state at the ``M`` times as a dict (components of
    ``components(level)``: ``"R"`` ``M x 3 x 3``, the others ``M x 3``) and a dict of global parameter blocks
    (``params[name]``: ``g_i``), and returns the *unwhitened* residuals; they are divided by ``sigma``. It must be
    written with batched torch operations, row ``m`` depending only on the state of row ``m`` (the Jacobian is
    obtained by perturbing every row along the same tangent direction), and without ``.item()`` or
    data-dependent Python control flow.

    Args:
        t: ``M`` times.
        residual_fn: The residual function.
        residual_dim: ``r``.
        level: 0 (pose), 1 (+ velocities), 2 (+ accelerations; needs ``prior="wnoj"``).
        sigma: Noise std: float, ``r``-vector, ``M`` or ``M x r``.
        params: Global parameter blocks: name -> initial value (``g_i``) estimated with the trajectory.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.
    """

    def __init__(
        self,
        t,
        residual_fn: Callable[[dict, dict], Tensor],
        *,
        residual_dim: int,
        level: int = 0,
        sigma: float | Tensor = 1.0,
        params: dict[str, Tensor] | None = None,
        robust=None,
        robust_threshold=1.0,
        name="",
    ):
        super().__init__(t, robust=robust, robust_threshold=robust_threshold, name=name)
        if not callable(residual_fn):
            raise TypeError(f"`residual_fn` must be callable, got {type(residual_fn).__name__}.")
        check_positive("residual_dim", residual_dim, integer=True)
        check_option("level", level, (0, 1, 2))
        self.fn = residual_fn
        self.level = level
        self.residual_dim = residual_dim
        self.w = inverse_sigma("sigma", sigma, self.num_blocks, residual_dim)
        self.params0 = {}
        for k, v in (params or {}).items():
            v = measurement_tensor(f"params[{k!r}]", v, shape=(None,))
            if v.dim() != 1:
                raise ValueError(f"`params[{k!r}]` must be a vector, got shape {tuple(v.shape)}.")
            self.params0[k] = v

    def global_params(self):
        return dict(self.params0)

    def _call(self, state, params) -> Tensor:
        r = self.fn(state, params)
        M = self.num_blocks
        if not isinstance(r, Tensor) or r.dim() != 2 or r.shape != (M, self.residual_dim):
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"{self.name}: `residual_fn` must return an (M, r) = ({M}, {self.residual_dim}) tensor, got {got}."
            )
        return r * self.w

    def residual(self, state, params):
        return self._call(state, params)

    def linearize(self, state, params):
        comps = self.components
        names = list(self.params0)
        sizes = [int(params[n].shape[0]) for n in names]
        nd = 3 * len(comps) + sum(sizes)
        ref = state["p"]

        def f(d: Tensor) -> tuple[Tensor, Tensor]:
            st, off = {}, 0
            for c in comps:
                dc = d[off : off + 3]
                st[c] = state[c] @ so3_exp(dc) if c == "R" else state[c] + dc
                off += 3
            pr = {}
            for n, sz in zip(names, sizes):
                pr[n] = params[n] + d[off : off + sz]
                off += sz
            r = self._call(st, pr)
            return r, r

        try:
            J, e = jacfwd(f, has_aux=True)(ref.new_zeros(nd))
        except RuntimeError as err:
            raise RuntimeError(
                f"{self.name}: forward-mode differentiation of `residual_fn` failed ({err}); write it with batched "
                "torch operations only (no .item(), no in-place writes into the inputs)."
            ) from err
        k = 3 * len(comps)
        Jp, off = {}, k
        for n, sz in zip(names, sizes):
            Jp[n] = J[:, :, off : off + sz]
            off += sz
        return e, J[:, :, :k], Jp
