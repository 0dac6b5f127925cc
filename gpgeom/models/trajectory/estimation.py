r"""The factor graph of a GP trajectory: engine factors of the motion prior and of the measurements.

MAP estimation minimises :math:`\sum_k \lVert e^{\text{prior}}_k\rVert^2/2 + \sum_m \rho(\lVert e_m\rVert)` over
the knots (and global parameters). Every residual block touches at most two consecutive knots -- the motion prior
of an interval, or a measurement at a time through the interpolation between its bracketing knots -- so the
normal matrix is block-tridiagonal and a Gauss-Newton step costs :math:`O(K)` (Barfoot, Tong & Sarkka, *Batch
continuous-time trajectory estimation as exactly sparse Gaussian process regression*, RSS 2014; Anderson &
Barfoot, *Full STEAM ahead*, IROS 2015). The factors are :class:`gpgeom.engine.factors.Factor` s with the
bandwidth-1 layout of :func:`gpgeom.engine.least_squares.gauss_newton`.

The global parameters (e.g. IMU biases) are stacked in one vector :math:`\gamma`; :func:`globals_layout` gives
each named block its slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gpgeom.engine.factors import Factor
from gpgeom.models.trajectory.factors.base import Measurement

if TYPE_CHECKING:
    from gpgeom.models.trajectory.base import Trajectory

__all__ = ["build_factors", "check_measurement", "chunks", "globals_layout", "measurement_factor", "prior_factor"]


def globals_layout(traj: Trajectory, ms: list[Measurement]) -> tuple[dict[str, slice], Tensor]:
    r"""The layout (name -> slice) of the stacked global parameters and their initial value, in ``traj``'s dtype.

    A block's initial value is that of the first measurement naming it (e.g. an IMU's ``bias_init``); a
    :class:`~gpgeom.models.trajectory.factors.priors.GlobalPrior` 's mean is the initial value only when no other
    measurement gives one, wherever it stands in the list."""
    init: dict[str, Tensor] = {}  # in the order of the list (the layout's), the values of the first giver
    given: set[str] = set()  # blocks whose value came from a measurement other than a GlobalPrior
    for m in ms:
        for name, val in m.global_params().items():
            val = val.to(dtype=traj.dtype, device=traj.device).reshape(-1)
            if name in init and init[name].shape != val.shape:
                raise ValueError(
                    f"Global parameter {name!r} has size {init[name].shape[0]} in one measurement and "
                    f"{val.shape[0]} in {m.name!r}."
                )
            if name not in init or (m.attach != "global" and name not in given):
                init[name] = val
            if m.attach != "global":
                given.add(name)
    layout, off = {}, 0
    for name, val in init.items():
        layout[name] = slice(off, off + val.shape[0])
        off += val.shape[0]
    g0 = torch.cat(list(init.values())) if init else torch.zeros(0, dtype=traj.dtype, device=traj.device)
    return layout, g0


def check_measurement(traj: Trajectory, m: object) -> None:
    r"""Check that ``m`` is a trajectory measurement whose state components ``traj`` has."""
    if not isinstance(m, Measurement):
        raise TypeError(
            f"`measurements` must hold gpgeom trajectory measurements (PoseMeasurement, RangeMeasurement, ...), "
            f"got {type(m).__name__}."
        )
    avail = set(traj.state_components)
    need = set(m.components)
    if not need <= avail:
        raise ValueError(
            f"Measurement {m.name!r} needs the state components {sorted(need - avail)}, which a "
            f"prior={traj.prior!r} trajectory does not have; use prior='wnoj'."
        )


def chunks(m: Measurement, size: int | None) -> list[Measurement]:
    r"""Split a time-attached measurement into pieces of at most ``size`` blocks (bounds the engine's memory,
    which holds ``M x 2 x 2 x s x s`` Hessian blocks per factor); ``None`` never splits. Each piece holds its rows
    of every per-block tensor (:meth:`Measurement.blocks
    <gpgeom.models.trajectory.factors.base.Measurement.blocks>`)."""
    if m.attach != "time" or size is None or m.num_blocks <= size:
        return [m]
    M = m.num_blocks
    return [m.blocks(slice(lo, min(lo + size, M))) for lo in range(0, M, size)]


def prior_factor(traj: Trajectory) -> Factor:
    r"""The motion prior of every knot interval: ``K - 1`` blocks of size ``6N`` on knots ``(k, k + 1)``."""
    K = traj.num_knots
    idx = torch.stack([torch.arange(K - 1), torch.arange(1, K)], 1).to(traj.device)
    dt = traj._spacing()  # from the float64 knot times

    def residual(X, G):
        return traj._prior(X[:, 0], X[:, 1], dt, jac=False)[0]

    def jacobian(X, G):
        return traj._prior(X[:, 0], X[:, 1], dt, jac=True)[1], None

    def linearize(X, G):
        e, J = traj._prior(X[:, 0], X[:, 1], dt, jac=True)
        return e, J, None

    return Factor(idx, residual, jacobian, name="motion prior", linearize=linearize)


def measurement_factor(
    traj: Trajectory, m: Measurement, layout: dict[str, slice], g: int, times: Tensor | None = None
) -> Factor:
    r"""The engine factor of one measurement (already in ``traj``'s dtype and on its device): on the two knots
    bracketing each time, on one knot (:class:`~gpgeom.models.trajectory.factors.priors.KnotPrior`) or on the
    globals only (:class:`~gpgeom.models.trajectory.factors.priors.GlobalPrior`). ``times`` (``M``): the
    measurement's times before the conversion to ``traj``'s dtype, which place them between the knots (default
    ``m.t``)."""
    s = traj.tangent_dim

    def params(G):
        return {name: G[sl] for name, sl in layout.items()}

    def scatter_globals(Jp: dict, M: int, r: int, ref: Tensor) -> Tensor:
        Jg = ref.new_zeros(M, r, g)
        for name, J in Jp.items():
            Jg[:, :, layout[name]] = J
        return Jg

    robust = {"robust": m.robust, "robust_threshold": m.robust_threshold, "name": m.name}
    if m.attach == "global":
        idx = torch.zeros(1, 1, dtype=torch.long, device=traj.device)

        def residual(X, G):
            return m.residual({}, params(G))

        def jacobian(X, G):
            e, _, Jp = m.linearize({}, params(G))
            return X.new_zeros(1, e.shape[1], 1, s), scatter_globals(Jp, 1, e.shape[1], X)

        return Factor(idx, residual, jacobian, **robust)

    if m.attach == "knot":
        K = traj.num_knots
        ind = m.index.to(traj.device)
        if bool(((ind < -K) | (ind >= K)).any()):
            raise ValueError(f"{m.name}: knot `index` must lie in [-{K}, {K - 1}], got {m.index.tolist()}.")
        ind = ind % K
        sl = traj._slices()
        cols = torch.cat([torch.arange(sl[c].start, sl[c].stop) for c in m.components]).to(traj.device)

        def residual(X, G):
            return m.residual(traj._unpack(X[:, 0]), params(G))

        def jacobian(X, G):
            e, Js, Jp = m.linearize(traj._unpack(X[:, 0]), params(G))
            M, r = e.shape
            Jx = X.new_zeros(M, r, 1, s)
            Jx[:, :, 0, cols] = Js
            return Jx, scatter_globals(Jp, M, r, X)

        return Factor(ind[:, None], residual, jacobian, **robust)

    mix = traj._locate(m.t if times is None else times, f"{m.name}.t")
    idx = torch.stack([mix.index, mix.index + 1], 1)
    level = m.level

    def residual(X, G):
        st = traj._interp(X[:, 0], X[:, 1], mix, level, jac=False)[0]
        return m.residual(st, params(G))

    def linearize(X, G):
        gp = params(G)
        e, Jx, Jp = traj._interp_linearize(X[:, 0], X[:, 1], mix, level, lambda st: m.linearize(st, gp))
        return e, Jx, scatter_globals(Jp, e.shape[0], e.shape[1], X)

    def jacobian(X, G):
        return linearize(X, G)[1:]

    return Factor(idx, residual, jacobian, linearize=linearize, **robust)


def build_factors(
    traj: Trajectory, measurements: Sequence[Measurement] | Measurement, *, chunk_size: int | None = 16384
) -> tuple[list[Factor], Tensor, dict[str, slice]]:
    r"""The engine factors of the motion prior (first) and of the measurements; see
    :meth:`Trajectory.build_factors <gpgeom.models.trajectory.Trajectory.build_factors>`."""
    if isinstance(measurements, Measurement):
        measurements = [measurements]
    ms = list(measurements)
    for m in ms:
        check_measurement(traj, m)
    layout, g0 = globals_layout(traj, [m.to(dtype=traj.dtype, device=traj.device) for m in ms])
    factors = [prior_factor(traj)]
    for m in ms:
        for part in chunks(m, chunk_size):  # the times keep their own precision (float32 rounds 3e4 s to 2e-3 s)
            conv = part.to(dtype=traj.dtype, device=traj.device)
            factors.append(measurement_factor(traj, conv, layout, g0.shape[0], times=part.t))
    return factors, g0, layout
