r"""User-defined measurements of a GP trajectory: a residual function of the state (and of global parameters and
per-measurement data), differentiated by forward-mode automatic differentiation (``torch.func.jacfwd``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from torch.func import jacfwd

from gpgeom._validation import as_tensor, check_option, check_positive
from gpgeom.geometry.lie import so3_exp
from gpgeom.models.trajectory.factors.base import Measurement, inverse_sigma, measurement_tensor

__all__ = ["CustomMeasurement"]


def _data_tensor(name: str, v: object, M: int) -> Tensor:
    r"""A per-measurement array as a tensor with ``M`` rows: integer arrays stay integer (indices), the rest as
    :func:`~gpgeom._validation.as_tensor` (floating dtype kept, finite values)."""
    x = v if isinstance(v, Tensor) else None
    if x is None and hasattr(v, "dtype") and hasattr(v, "shape"):  # numpy
        try:
            x = torch.as_tensor(v)
        except (TypeError, RuntimeError):
            x = None
    if x is not None and x.dtype == torch.bool:
        raise TypeError(f"`{name}` must hold numbers, got booleans.")
    if x is None or x.is_floating_point() or x.is_complex():
        x = as_tensor(name, v, dtype=None)
    if x.dim() == 0 or x.shape[0] != M:
        raise ValueError(
            f"`{name}` must have a leading dimension of M = {M} (one row per measurement time), got shape "
            f"{tuple(x.shape)}."
        )
    return x


def _working_dtype(state: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> torch.dtype | None:
    r"""The floating dtype of the state (or of the global parameters when there is no state); ``None`` if neither."""
    for v in (*state.values(), *params.values()):
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.dtype
    return None


class CustomMeasurement(Measurement):
    r"""A measurement given by its residual function only; Jacobians by ``torch.func.jacfwd``.

    ``residual_fn(state, params) -> M x r`` (or ``residual_fn(state, params, data)`` when ``data`` is given)
    receives the state at the ``M`` times as a dict (components of ``components(level)``: ``"R"`` ``M x 3 x 3``,
    the others ``M x 3``), a dict of global parameter blocks (``params[name]``: ``g_i``) and the per-measurement
    ``data`` (name -> tensor with ``M`` rows), and returns the *unwhitened* residuals, in the trajectory's dtype
    or a narrower floating one (float32 residuals in a float64 fit are promoted, exactly; a wider dtype, float64
    residuals in a float32 fit, is a ``TypeError``: build constants from the state's tensors, e.g.
    ``st["p"].new_tensor(...)``, so that the same function serves float32 and float64 fits); they are divided by
    ``sigma``. It must be written with batched torch operations, row ``m`` depending only on row ``m`` of the state
    and of ``data`` (the Jacobian is obtained by perturbing every row along the same tangent direction), and without
    ``.item()`` or data-dependent Python control flow.

    Per-measurement values (the readings, anchor positions, ...) belong in ``data``, not in the function's
    closure: a fit splits a measurement with more than ``chunk_size`` blocks into pieces, and each piece receives
    its own rows of ``state`` *and* of ``data``, while a captured ``M``-row tensor would no longer match.

    Args:
        t: ``M`` times; between two knots the residual is evaluated on the interpolated mean only (exact at knot
            times; :class:`~gpgeom.models.trajectory.factors.base.Measurement`).
        residual_fn: The residual function.
        residual_dim: ``r``.
        level: 0 (pose), 1 (+ velocities), 2 (+ accelerations; needs ``prior="wnoj"``).
        sigma: Noise std: float, ``r``-vector, ``M`` or ``M x r``.
        params: Global parameter blocks: name -> initial value (``g_i``) estimated with the trajectory.
        data: Per-measurement data: name -> array with a leading dimension ``M`` (numpy or torch; floating
            arrays are converted to the trajectory's dtype, integer ones keep theirs), passed to ``residual_fn``
            as its third argument.
        robust, robust_threshold, name: See :class:`~gpgeom.models.trajectory.factors.base.Measurement`.

    Example:
        >>> def height(st, prm, d):  # st: state rows, prm: global parameters, d: this chunk's rows of `data`
        ...     return (st["p"][:, 2] + prm["h0"][0] - d["z"]).unsqueeze(-1)
        >>> baro = CustomMeasurement(t, height, residual_dim=1, sigma=0.02, params={"h0": np.zeros(1)},
        ...                          data={"z": z})  # doctest: +SKIP
    """

    per_block_dicts = ("data",)

    def __init__(
        self,
        t,
        residual_fn: Callable[..., Tensor],
        *,
        residual_dim: int,
        level: int = 0,
        sigma: float | Tensor = 1.0,
        params: dict[str, Tensor] | None = None,
        data: Mapping[str, object] | None = None,
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
        M = self.num_blocks
        self.w = inverse_sigma("sigma", sigma, M, residual_dim)
        self.params0 = {}
        for k, v in (params or {}).items():
            v = measurement_tensor(f"params[{k!r}]", v, shape=(None,))
            if v.dim() != 1:
                raise ValueError(f"`params[{k!r}]` must be a vector, got shape {tuple(v.shape)}.")
            self.params0[k] = v
        self.data = None
        if data is not None:
            if not isinstance(data, Mapping):
                raise TypeError(f"`data` must be a dict of per-measurement arrays, got {type(data).__name__}.")
            self.data = {}
            for k, v in data.items():
                if not isinstance(k, str):
                    raise TypeError(f"`data` keys must be str, got {k!r}.")
                self.data[k] = _data_tensor(f"data[{k!r}]", v, M)

    def global_params(self):
        return dict(self.params0)

    def _call(self, state, params) -> Tensor:
        M = self.num_blocks
        try:
            r = self.fn(state, params) if self.data is None else self.fn(state, params, self.data)
        except RuntimeError as err:
            hint = (
                ""
                if self.data is not None
                else " If `residual_fn` captures per-measurement tensors, pass them as `data={...}` instead: a fit "
                "splits large measurements into chunks and slices `data` with them, not the tensors of a closure."
            )
            if "scalar type" in str(err) or "dtype" in str(err):
                hint += (
                    f" The state is {_working_dtype(state, params)}: build constants from it (e.g. "
                    "`st['p'].new_tensor(...)`) or pass arrays as `data` (converted to the trajectory's dtype)."
                )
            raise RuntimeError(f"{self.name}: `residual_fn` failed on {M} measurement rows ({err}).{hint}") from err
        if not isinstance(r, Tensor) or r.dim() != 2 or r.shape != (M, self.residual_dim):
            got = tuple(r.shape) if isinstance(r, Tensor) else type(r).__name__
            raise ValueError(
                f"{self.name}: `residual_fn` must return an (M, r) = ({M}, {self.residual_dim}) tensor, got {got}."
            )
        if not r.is_floating_point():  # an integer residual has a zero derivative: its rows would be ignored
            raise TypeError(
                f"{self.name}: `residual_fn` must return a floating-point tensor, got dtype {r.dtype}; compute it "
                "from the state with floating-point torch operations (no .long(), .round() to int or comparisons)."
            )
        want = _working_dtype(state, params)
        if want is not None and r.dtype != want:
            if torch.promote_types(r.dtype, want) != want:  # float64 constants in a float32 fit: would be rounded
                raise TypeError(
                    f"{self.name}: `residual_fn` must return the trajectory's dtype {want} (or a narrower floating "
                    f"dtype), got {r.dtype}; compute it from the state's tensors, build constants with e.g. "
                    "`st['p'].new_tensor(...)` and pass per-measurement arrays as `data` (converted to the "
                    "trajectory's dtype)."
                )
            # a narrower dtype (a float32 network in a float64 fit) is exactly representable: promoted, as the
            # product with the float64 weights promoted it before the dtype check (values and Jacobians bitwise)
            r = r.to(want)
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
                dc = d[off : off + 3]  # so3_exp lifts a single float32 vector itself (pytorch#90065, lie.py)
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
