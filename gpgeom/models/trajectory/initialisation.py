r"""Initial knots of a GP trajectory from its measurements (``Trajectory.fit(..., init="auto")``).

Gauss-Newton / Levenberg-Marquardt only finds the minimum whose basin holds the initial knots. The constructor's
knots (identity rotation, zero position and rates) are a poor start for any body that turns by more than about
:math:`\pi/2` or travels further than the spacing of its measurements: a body yawing 10 rad, started there, ends in a
local minimum with half its rotations flipped. This module builds a start close to the answer from the
measurements themselves:

* **Rotations** from :class:`~gpgeom.models.trajectory.PoseMeasurement` s: measurements with the same time are
  averaged in the tangent space, the knot rotation between two measurement times :math:`t_i \le t \le t_{i+1}` is
  the geodesic :math:`R_i\,\mathrm{Exp}\big(s\,\mathrm{Log}(R_i^\top R_{i+1})\big)`, :math:`s = (t - t_i)/(t_{i+1} -
  t_i)`. Chaining the *relative* rotations of consecutive measurements unwraps the angle: a body that yaws 10 rad
  stays continuous (no jump where an absolute rotation vector would wrap at :math:`\pi`).
* **Positions** from pose and :class:`~gpgeom.models.trajectory.PositionMeasurement` s by linear interpolation.
  Before the first and after the last measurement time both are extrapolated at the mean rate of the first or
  last few measurements (what the motion prior does where nothing is measured).
* **Positions from UWB ranges** (:class:`~gpgeom.models.trajectory.RangeMeasurement`, when no pose or position is
  measured): linear multilateration per time window, :math:`\lVert x\rVert^2 - 2a^\top x + \lVert a\rVert^2 =
  d^2` solved for :math:`(x, \lVert x\rVert^2)` by weighted least squares (four or more non-coplanar anchors per
  window), then a position-only Gauss-Newton solve of the same motion prior as the trajectory's position chain
  (ranges to the body origin, the tag lever arm :math:`\lVert o\rVert` added to the range noise, Huber loss).
* **Rotations from UWB ranges** with two or more tag positions: to first order in the lever arm a range is linear
  in the world image :math:`R\,o` of the tag offset, solved per time window; the rotation is the nearest one
  (Kabsch) for tags that span a plane, and for tags on one line (whose roll about it no range sees) the previous
  window's rotation turned by the smallest angle (no roll rate); see :func:`_rotations_from_ranges`.
* **Rates** by finite differences across the knots: :math:`\omega_k` from the increments
  :math:`\mathrm{Log}(R_k^\top R_{k+1})` (the same vector in the body frames of both knots), :math:`\alpha_k` from
  :math:`\omega`, :math:`v_k, a_k` from :math:`p`, with the three-point formula for uneven spacing
  :math:`f'_k \approx (h_{k-1} g_k + h_k g_{k-1})/(h_{k-1} + h_k)`, :math:`g_k` the slope of interval ``k``.

A knot interval over which the measured rotation turns by more than :math:`\pi` cannot be represented by the
trajectory (its local variable is :math:`\mathrm{Log}(R_a^\top R_b)`): it raises a ``ValueError`` naming the
interval, instead of a fit that silently takes the short way round. The turn is that of the rotation vector of each
measurement relative to the interval's first knot, unwrapped by continuity (:func:`_interval_turns`): the noise of
one measurement moves it by that measurement's noise, where the sum of the steps between measurements added up the
noise of all of them.

Times: every time value and difference here (sorting and grouping the measurement times, the fractions
:math:`(t - t_i)/(t_{i+1} - t_i)`, the knot spacings :math:`h_k`, the time windows of the ranges and their mean times)
is computed in float64 from the times as given (the measurements' own ``t`` before any conversion, the trajectory's
float64 knot times), on the device that holds the trajectory's float64 knot times, whatever the trajectory's dtype;
only the resulting fractions, spacings and indices are cast to the trajectory's dtype and device. In float32 a time
of :math:`3\cdot10^4` s is held only to :math:`2\cdot10^{-3}` s (:math:`10^6` s: 0.0625 s), which moved the start's
knots and rates (``tests/test_trajectory.py::test_float32_start_far_from_zero_matches_float64``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gpgeom.engine.factors import Factor
from gpgeom.engine.least_squares import gauss_newton
from gpgeom.errors import NotPSDError
from gpgeom.geometry.lie import so3_exp, so3_log
from gpgeom.models.trajectory.algebra import kron_eye
from gpgeom.models.trajectory.factors.base import Measurement
from gpgeom.models.trajectory.factors.pose import PoseMeasurement, PositionMeasurement
from gpgeom.models.trajectory.factors.uwb import RangeMeasurement

if TYPE_CHECKING:
    from gpgeom.models.trajectory.base import Trajectory

__all__ = ["INIT_OPTIONS", "at_default_state", "check_measured_turns", "initial_knots", "knot_wraps"]

#: The ``init`` options of :meth:`Trajectory.fit <gpgeom.models.trajectory.Trajectory.fit>`.
INIT_OPTIONS = ("auto", "measurements", "none")


def _times64(traj: Trajectory, ms: Sequence[Measurement]) -> Tensor:
    r"""The ``M`` times of the measurements ``ms`` (concatenated) in float64, as given (before any conversion to the
    trajectory's dtype), on the device of the trajectory's float64 knot times ``traj._times64``."""
    return torch.cat([m.t.detach().to(dtype=torch.float64, device=traj._times64.device) for m in ms])


def _values(traj: Trajectory, ms: Sequence[Measurement], *names: str) -> tuple[Tensor, ...]:
    r"""The attributes ``names`` of the measurements ``ms`` (e.g. ``"Rm"``, ``"d"``), each concatenated over them
    (``M x ...``), in the trajectory's dtype and on its device; each measurement is converted once. Their times come
    from :func:`_times64` instead (the conversion rounds them)."""
    conv = [m.to(dtype=traj.dtype, device=traj.device) for m in ms]
    return tuple(torch.cat([getattr(m, name) for m in conv]) for name in names)


def at_default_state(traj: Trajectory) -> bool:
    r"""Whether every knot is the constructor's default state (identity rotation, every other number zero)."""
    X = traj.knots
    eye = torch.eye(3, dtype=X.dtype, device=X.device).reshape(9)
    return bool((X[:, :9] == eye).all()) and bool((X[:, 9:] == 0).all())


# ------------------------------------------------------------------------------------------------------------------
# Samples: sorted, one per distinct time
# ------------------------------------------------------------------------------------------------------------------
def _distinct(t: Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Sort order, distinct times (``t``'s dtype and device: float64 times stay float64), the group of each sorted
    sample and the group sizes (the three index tensors on ``device``, the device of the samples)."""
    order = torch.argsort(t, stable=True)
    tu, inv, counts = torch.unique_consecutive(t[order], return_inverse=True, return_counts=True)
    return order.to(device), tu, inv.to(device), counts.to(device)


def _mean_vectors(t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(distinct times, mean of x per time)`` for ``M`` times ``t`` (float64) and ``M x d`` samples ``x``."""
    order, tu, inv, counts = _distinct(t, x.device)
    out = x.new_zeros(tu.shape[0], x.shape[-1]).index_add_(0, inv, x[order])
    return tu, out / counts[:, None].to(x.dtype)


def _mean_rotations(t: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(distinct times, rotation per time)``: :math:`R_0\mathrm{Exp}(\overline{\mathrm{Log}(R_0^\top R_j)})` about
    the first rotation :math:`R_0` of each time (one step of the Karcher mean); ``M`` times ``t`` (float64),
    ``M x 3 x 3`` rotations ``R``."""
    order, tu, inv, counts = _distinct(t, R.device)
    Rs = R[order]
    first = torch.cumsum(counts, 0) - counts
    ref = Rs[first]
    d = so3_log(ref[inv].mT @ Rs, validate=False)
    mean = d.new_zeros(tu.shape[0], 3).index_add_(0, inv, d) / counts[:, None].to(d.dtype)
    return tu, ref @ so3_exp(mean)


def _bracket(t: Tensor, tq: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    r"""Left sample ``i`` and fraction ``s`` in ``[0, 1]`` of each query time (clamped outside the samples).

    The sample times ``t`` (``n``) and query times ``tq`` (``q``) are compared and subtracted in their own dtype and
    device (float64); ``i`` and ``s`` (``q``) come on the device of ``like``, ``s`` in its dtype."""
    i = (torch.searchsorted(t, tq, right=True) - 1).clamp(0, t.shape[0] - 2)
    s = ((tq - t[i]) / (t[i + 1] - t[i])).clamp(0.0, 1.0)
    return i.to(like.device), s.to(dtype=like.dtype, device=like.device)


def _end_pairs(t: Tensor, tq: Tensor, like: Tensor, length: Tensor | None = None):
    r"""Extrapolation outside the samples at the mean rate over (up to) the first or last four intervals (fewer when
    the rotation turns by more than pi/2 over them): masks of the query times before and after the samples, their
    sample pairs ``(a, b)`` and fractions ``(tq - t_a) / (t_b - t_a)``, computed from the times ``t``, ``tq`` in their
    own dtype (float64) and returned on the device of ``like`` (the fractions in its dtype)."""
    n = t.shape[0]
    jf, jl = min(n - 1, 4), max(0, n - 5)
    if length is not None:
        while jf > 1 and float(length[jf] - length[0]) > 0.5 * math.pi:
            jf -= 1
        while jl < n - 2 and float(length[-1] - length[jl]) > 0.5 * math.pi:
            jl += 1
    before, after = tq < t[0], tq > t[-1]
    a = torch.where(before, 0, jl)
    b = torch.where(before, jf, n - 1)
    u = (tq - t[a]) / (t[b] - t[a])
    dev = like.device
    return (before | after).to(dev), a.to(dev), b.to(dev), u.to(dtype=like.dtype, device=dev)


def _interp_vectors(t: Tensor, x: Tensor, tq: Tensor) -> Tensor:
    r"""Linear interpolation of the samples ``x`` (``n x d``) at times ``t`` (``n``, increasing) to the times ``tq``
    (``q``), linear extrapolation outside (:func:`_end_pairs`); ``q x d`` in the dtype of ``x``. The times are used in
    their own dtype (float64)."""
    if t.shape[0] == 1:
        return x.expand(tq.shape[0], x.shape[-1]).clone()
    i, s = _bracket(t, tq, x)
    out = x[i] + s[:, None] * (x[i + 1] - x[i])
    outside, a, b, u = _end_pairs(t, tq, x)
    return torch.where(outside[:, None], x[a] + u[:, None] * (x[b] - x[a]), out)


def _interp_rotations(t: Tensor, R: Tensor, tq: Tensor, name: str, limit: float = 0.9 * math.pi) -> Tensor:
    r"""Geodesic interpolation of the rotations ``R`` (``n x 3 x 3``) at times ``t`` (``n``, increasing) to the times
    ``tq`` (``q``), extrapolation at a constant body rate outside (:func:`_end_pairs`); raises when the rotation turns
    by more than ``limit`` (rad) within a knot interval (:func:`_interval_turns`: :math:`\pi` for pose measurements,
    as :func:`check_measured_turns`; the default :math:`0.9\pi` for the rotations from the ranges' lever arms); an
    interval that turns that far only through the extrapolation is named as such, with the samples' times. The
    times are used in their own dtype (float64)."""
    if t.shape[0] == 1:
        return R.expand(tq.shape[0], 3, 3).clone()
    i, s = _bracket(t, tq, R)
    steps = so3_log(R[:-1].mT @ R[1:], validate=False)
    Rq = R[i] @ so3_exp(s[:, None] * steps[i])
    # the path length of the measured rotation up to each sample: how far back the ends take their rate from
    length = torch.cat([steps.new_zeros(1), torch.cumsum(steps.norm(dim=-1), 0)])
    outside, a, b, u = _end_pairs(t, tq, R, length)
    if bool(outside.any()):
        ends = so3_log(R[a].mT @ R[b], validate=False)
        Rq = torch.where(outside[:, None, None], R[a] @ so3_exp(u[:, None] * ends), Rq)
    turn = _interval_turns(t, R, tq, length)
    if bool((turn > limit).any()):
        k = int(turn.argmax())
        margin = "" if limit >= math.pi else f", and the start from the {name} takes at most {limit:.3g} rad"
        who = f"The {name}"
        # an interval that turns that far only where the samples are extrapolated: say so (the measured part of it,
        # the only part that check_measured_turns sees, turns by less)
        if bool(tq[k] < t[0]) or bool(tq[k + 1] > t[-1]):
            if float(_interval_turns(t, R, tq.clamp(t[0], t[-1]), length)[k]) <= limit:
                span = f"{float(t[0]):.15g} .. {float(t[-1]):.15g}"
                who = f"The {name} (at t = {span}), extrapolated at their rate beyond their times,"
        raise ValueError(
            f"{who} turn the body by {float(turn[k]):.3g} rad between knots {k} and {k + 1} (t = "
            f"{float(tq[k]):.15g} .. {float(tq[k + 1]):.15g}); a knot interval of the trajectory cannot hold more than "
            f"pi (its local variable is Log(R_a^T R_b)){margin}. Use denser knots."
        )
    return Rq


def _interval_turns(t: Tensor, R: Tensor, tq: Tensor, length: Tensor) -> Tensor:
    r"""The turn that the rotation samples ``R`` (``n x 3 x 3``, ``n >= 2``) at the times ``t`` (``n``, increasing,
    float64) imply within each interval of the knot times ``tq`` (``q``, non-decreasing, float64): ``q - 1`` angles
    (rad, float64, on the device of ``R``).

    The path is the one the start from the samples follows (:func:`_interp_rotations`): the geodesic
    :math:`R_i\,\mathrm{Exp}(s\,\delta_i)`, :math:`\delta_i = \mathrm{Log}(R_i^\top R_{i+1})`, between consecutive
    samples, and outside them the extrapolation at a constant body rate (:func:`_end_pairs`, its pairs chosen by the
    path lengths ``length``, ``n``). Within interval ``k`` it is written in the frame of the knot,
    :math:`R(t) = R(t_k)\,\mathrm{Exp}(\psi(t))` with :math:`\psi(t_k) = 0` and :math:`\psi` continuous (the lift
    of :math:`\mathrm{Log}(R(t_k)^\top R(t))`; the principal :math:`\mathrm{Log}` jumps from :math:`\varphi u` to
    :math:`-(2\pi - \varphi)u` where the angle passes :math:`\pi`, the lift goes on to :math:`\varphi > \pi`). The
    interval's turn is :math:`\max_t \lVert\psi(t)\rVert`: the local variable of a knot interval is the principal
    :math:`\mathrm{Log}(R_k^\top R_{k+1})`, at most :math:`\pi`, so where :math:`\lVert\psi\rVert` passes
    :math:`\pi` the fit converges to the short way round, away from the samples between the knots.

    Noise: :math:`\psi` at a sample comes from that sample's own rotation, :math:`\psi_j = \mathrm{Log}(R(t_k)^\top
    R_j)` on the branch continuity picks, so a sample's noise moves the turn by that sample's noise only (the
    largest over an interval: a few standard deviations). The path length :math:`\sum_j \lVert\delta_j\rVert` of
    the steps between samples, which this replaces, adds up the noise of every step: 50 poses per interval of a
    1 rad/s spin with 0.05 rad of noise made 6.1 rad of a 1 rad turn. Branches: the sign of the axis
    :math:`\psi_j/\lVert\psi_j\rVert` is kept continuous (flipped where consecutive axes point apart), and the signed
    angle along it is unwrapped (each change wrapped into :math:`[-\pi, \pi)`). The steps are cut into pieces of at
    most :math:`\pi/8`, so the branch is the one the path reaches as long as each step is shorter than :math:`\pi`
    (what the start assumes); past the first crossing of :math:`\pi` the value only has to stay above it. The check
    runs in float64 whatever the dtype of ``R``."""
    R = R.to(torch.float64)
    n, q, dev = t.shape[0], tq.shape[0], R.device
    steps = so3_log(R[:-1].mT @ R[1:], validate=False)
    i, s = _bracket(t, tq, R)
    outside, a, b, u = _end_pairs(t, tq, R, length)
    ends = so3_log(R[a].mT @ R[b], validate=False)
    Rq = torch.where(outside[:, None, None], R[a] @ so3_exp(u[:, None] * ends), R[i] @ so3_exp(s[:, None] * steps[i]))
    before, after = (tq < t[0]).to(dev), (tq > t[-1]).to(dev)
    # the nodes of the path in time order (samples first on ties): each on the geodesic `piece` at fraction `c`, and
    # outside the samples at the extrapolation parameter `uf` (before) or `ub` (after)
    order = torch.argsort(torch.cat([t, tq]), stable=True).to(dev)
    idx = torch.arange(n, device=dev)
    no = torch.zeros(n, dtype=torch.bool, device=dev)
    piece = torch.cat([idx.clamp_max(n - 2), torch.where(after, n - 2, torch.where(before, 0, i))])[order]
    c = torch.cat([(idx == n - 1).to(R.dtype), torch.where(after, 1.0, torch.where(before, 0.0, s))])[order]
    uf = torch.cat([R.new_zeros(n), torch.where(before, u, 0.0)])[order]
    ub = torch.cat([R.new_ones(n), torch.where(after, u, 1.0)])[order]
    endv, rot = torch.cat([R.new_zeros(n, 3), ends])[order], torch.cat([R, Rq])[order]
    pre, post = torch.cat([no, before])[order], torch.cat([no, after])[order]
    kid = torch.cumsum((order >= n).long(), 0) - 1  # the knot interval of each node (-1 before the first knot)
    # the step from each node to the next: along the node's geodesic, or along the extrapolation outside
    on = torch.where(piece[1:] == piece[:-1], c[1:], 1.0)
    step = (on - c[:-1])[:, None] * steps[piece[:-1]]
    step = step + torch.where(pre[:-1, None], (uf[1:] - uf[:-1])[:, None] * endv[:-1], 0.0)
    step = step + torch.where(post[1:, None], (ub[1:] - ub[:-1])[:, None] * endv[1:], 0.0)
    keep = (kid[:-1] >= 0) & (kid[:-1] <= q - 2)
    step, base, seg = step[keep], rot[:-1][keep], kid[:-1][keep]
    # the points at most pi/8 apart along each step, in the frame of their interval's knot
    m = (step.norm(dim=-1) / (math.pi / 8)).ceil().clamp_min(1).long()
    at = torch.repeat_interleave(torch.arange(m.shape[0], device=dev), m)
    frac = (torch.arange(at.shape[0], device=dev) - (torch.cumsum(m, 0) - m)[at] + 1) / m[at]
    seg = seg[at]
    psi = so3_log(Rq[seg].mT @ base[at] @ so3_exp(frac.to(R.dtype)[:, None] * step[at]), validate=False)
    # the lift: the axis's sign kept continuous, the signed angle along it unwrapped, both restarting at each knot
    new = torch.ones_like(seg, dtype=torch.bool)
    new[1:] = seg[1:] != seg[:-1]
    head = torch.cummax(torch.where(new, torch.arange(seg.shape[0], device=dev), 0), 0).values
    phi = psi.norm(dim=-1)
    axis = psi / phi.clamp_min(1e-300)[:, None]
    flip = torch.zeros_like(new)
    flip[1:] = (axis[1:] * axis[:-1]).sum(-1) < 0
    flips = torch.cumsum((flip & ~new).long(), 0)
    angle = phi * (1 - 2 * ((flips - flips[head]) % 2)).to(phi.dtype)
    d = angle.clone()
    d[1:] = torch.where(new[1:], angle[1:], torch.remainder(angle[1:] - angle[:-1] + math.pi, 2 * math.pi) - math.pi)
    total = torch.cumsum(d, 0)
    lift = total - (total[head] - d[head])
    return phi.new_zeros(q - 1).scatter_reduce(0, seg, lift.abs(), "amax")


def check_measured_turns(traj: Trajectory, measurements: Sequence[Measurement]) -> None:
    r"""Raise a ``ValueError`` when the pose measurements turn the body by more than :math:`\pi` within one knot
    interval (the largest angle of the rotation, unwrapped by continuity, relative to the interval's first knot, as in
    the start from the measurements: :func:`_interval_turns`). Such an interval cannot be represented (its local
    variable is :math:`\mathrm{Log}(R_a^\top R_b)`, at most :math:`\pi`): a fit from the current knots would converge
    to the short way round, far from every measurement between the knots, and report convergence. Only the measured
    part of each interval counts (the knot times are clamped to the span of the measurements: no extrapolation)."""
    poses = [m for m in measurements if isinstance(m, PoseMeasurement)]
    if poses:
        (Rm,) = _values(traj, poses, "Rm")
        tu, Ru = _mean_rotations(_times64(traj, poses), Rm)
        tk = traj._times64.clamp(tu[0], tu[-1])
        _interp_rotations(tu, Ru, tk, "pose measurements", limit=math.pi)


def knot_wraps(traj: Trajectory) -> str:
    r"""A sentence naming the first knot interval whose angular velocities turn the body the other way round from
    its rotations (``""`` when none does).

    The local variable of interval ``k`` is :math:`\theta_b = \mathrm{Log}(R_k^\top R_{k+1})`, of angle
    :math:`\varphi = \lVert\theta_b\rVert \le \pi` about :math:`u = \theta_b/\varphi`. Along :math:`u` the GP's
    rates at the two knots are exactly :math:`u^\top\omega_k` and :math:`u^\top\omega_{k+1}` (:math:`u^\top
    J_r^{-1}(\theta_b) = u^\top`), so the turn they imply is about :math:`\beta = \Delta\,u^\top(\omega_k +
    \omega_{k+1})/2` (:math:`\Delta` from the knot times as given, float64 whatever the trajectory's dtype). The
    same rotation is also reached by the angles :math:`\varphi \pm 2\pi` that the local variable cannot hold. When
    :math:`|\beta - \varphi| > 3\pi/2`, one of them lies within :math:`\pi/2` of
    :math:`\beta` and :math:`\varphi` more than :math:`3\pi/2` from it: the interpolation between the knots turns the
    short way, against the rates (a body spinning faster than :math:`\pi/\Delta` gives :math:`|\beta - \varphi|
    \approx 2\pi`; knots whose rates merely disagree with their rotations, nearer to neither branch, are not named)."""
    X = traj.knots
    if X.shape[0] < 2:
        return ""
    R = X[:, :9].reshape(-1, 3, 3)
    w = X[:, 9:12]
    th = so3_log(R[:-1].mT @ R[1:], validate=False)
    phi = th.norm(dim=-1)
    wm = 0.5 * (w[:-1] + w[1:])
    # about a zero angle the rotation is also a whole turn about any axis: take the rates' own axis
    u = torch.where(
        (phi > 1e-9)[:, None], th / phi.clamp_min(1e-300)[:, None], wm / wm.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    )
    dt = traj._spacing()  # from the float64 times: in float32, 0.1 s at t ~ 1e6 s is 0.0625 or 0.125 s
    beta = dt * (u * wm).sum(-1)
    bad = (beta - phi).abs() > 1.5 * math.pi
    if not bool(bad.any()):
        return ""
    k = int(bad.nonzero()[0, 0])
    # the knot times as given, to 15 digits: 6 digits printed 1e6 + 0.1 and 1e6 + 0.2 both as 1e+06
    ta, tb = (float(t) for t in traj._times64[k : k + 2])
    return (
        f"between knots {k} and {k + 1} (t = {ta:.15g} .. {tb:.15g}) the angular velocities "
        f"turn the body by about {float(beta[k]):.3g} rad about the axis of Log(R_a^T R_b), whose angle is "
        f"{float(phi[k]):.3g} rad: the trajectory turns the short way there, against its rates ({int(bad.sum())} "
        "interval(s)); a knot interval holds less than pi rad of rotation, so use knots closer than pi / |omega|"
    )


# ------------------------------------------------------------------------------------------------------------------
# Finite differences across the knots
# ------------------------------------------------------------------------------------------------------------------
def _derivative(h: Tensor, increments: Tensor) -> Tensor:
    r"""``K x 3`` derivative at the knots from the ``(K - 1) x 3`` increments between them and the ``K - 1`` knot
    spacings ``h`` (:meth:`Trajectory._spacing`: from the float64 knot times): one-sided at the ends, the three-point
    formula for uneven spacing inside."""
    g = increments / h[:, None]
    out = torch.empty(h.shape[0] + 1, increments.shape[-1], dtype=g.dtype, device=g.device)
    out[0], out[-1] = g[0], g[-1]
    h1, h2 = h[:-1, None], h[1:, None]
    out[1:-1] = (h1 * g[1:] + h2 * g[:-1]) / (h1 + h2)
    return out


def _rotation_rates(h: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    r"""Body angular velocity and acceleration (``K x 3`` each) at the knots from their rotations ``R``
    (``K x 3 x 3``) and spacings ``h`` (``K - 1``). :math:`\mathrm{Log}(R_k^\top R_{k+1})` is the same vector in the
    body frames of both knots (:math:`\mathrm{Exp}(\phi)\phi = \phi`), so the increments of both sides of a knot can
    be averaged."""
    omega = _derivative(h, so3_log(R[:-1].mT @ R[1:], validate=False))
    return omega, _derivative(h, omega.diff(dim=0))


def _position_rates(h: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    r"""Velocity and acceleration (``K x 3`` each) at the knots from their positions ``p`` (``K x 3``) and spacings
    ``h`` (``K - 1``)."""
    v = _derivative(h, p.diff(dim=0))
    return v, _derivative(h, v.diff(dim=0))


# ------------------------------------------------------------------------------------------------------------------
# Positions from ranges
# ------------------------------------------------------------------------------------------------------------------
def _windows(t: Tensor, t0: float, t1: float, width: float, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    r"""About ``(t1 - t0) / width`` equal time windows over ``[t0, t1]``: the window of each of the ``M`` times ``t``
    and the number of times per window (on ``device``, the device of the samples), and the mean time of each window
    (``t0`` plus the mean of :math:`t - t_0`; in ``t``'s dtype and on its device, float64)."""
    nw = max(1, int(round((t1 - t0) / width)))
    win = ((t - t0) / max(t1 - t0, 1e-300) * nw).floor().long().clamp(0, nw - 1)
    count = torch.zeros(nw, dtype=torch.long, device=t.device).index_add_(0, win, torch.ones_like(win))
    tw = t0 + t.new_zeros(nw).index_add_(0, win, t - t0) / count.clamp_min(1).to(t.dtype)
    return win.to(device), count.to(device), tw


def _multilaterate(t: Tensor, anchors: Tensor, d: Tensor, sd: Tensor, t0: float, t1: float, width: float):
    r"""Positions per time window by linear least squares on :math:`[-2a^\top, 1][x; \lVert x\rVert^2] = d^2 -
    \lVert a\rVert^2`, weighted by the variance :math:`(2 d \sigma)^2` of :math:`d^2`; ``M`` times ``t`` (float64),
    ``M x 3`` anchors, ``M`` ranges ``d`` and standard deviations ``sd``. Returns ``(times, positions)`` (float64 and
    ``n x 3``) of the ``n`` windows whose system is well determined (possibly none)."""
    win, count, tw = _windows(t, t0, t1, width, anchors.device)
    nw = tw.shape[0]
    A = torch.cat([-2.0 * anchors, torch.ones_like(d)[:, None]], dim=1)
    b = d.square() - anchors.square().sum(-1)
    wt = 1.0 / (2.0 * d.clamp_min(1e-3) * sd).square()
    AtA = A.new_zeros(nw, 4, 4).index_add_(0, win, A[:, :, None] * A[:, None, :] * wt[:, None, None])
    Atb = A.new_zeros(nw, 4).index_add_(0, win, A * (b * wt)[:, None])
    scale = AtA.diagonal(dim1=-2, dim2=-1).clamp_min(1e-300).rsqrt()
    An = AtA * scale[:, :, None] * scale[:, None, :]
    ev = torch.linalg.eigvalsh(An)
    ok = (count >= 6) & (ev[:, 0] > 1e-8 * ev[:, -1]) & torch.isfinite(ev).all(-1)
    if not bool(ok.any()):
        return tw[:0], anchors[:0]
    sol = torch.linalg.solve(An[ok], (Atb[ok] * scale[ok]))[..., :3] * scale[ok][:, :3]
    return tw[ok.to(tw.device)], sol


def _range_factors(traj: Trajectory, t, anchors, d, sd) -> list[Factor]:
    r"""The position-only problem on the knots: the trajectory's position prior and ranges to the body origin
    (``M`` times ``t`` as given, float64: they place the ranges between the knots)."""
    N, K = traj.order, traj.num_knots
    tk = traj.knot_times
    Phi, W = traj._prior_mats(traj._spacing())
    wq = traj.qc_pos.rsqrt()
    M = K - 1
    eye = torch.eye(N, dtype=tk.dtype, device=tk.device).expand(M, N, N)
    Ja = (kron_eye(-(W @ Phi)) * wq[None, None, :, None, None]).reshape(M, 3 * N, 3 * N)
    Jb = (kron_eye(W @ eye) * wq[None, None, :, None, None]).reshape(M, 3 * N, 3 * N)
    J_prior = torch.stack([Ja, Jb], dim=2)
    J_flat = J_prior.reshape(M, 3 * N, 2 * 3 * N)

    def prior_residual(X, G):
        return (J_flat @ X.reshape(M, 2 * 3 * N, 1)).squeeze(-1)

    prior = Factor(
        torch.stack([torch.arange(M), torch.arange(1, K)], 1).to(tk.device),
        prior_residual,
        lambda X, G: (J_prior, None),
        name="position prior",
    )
    mix = traj._locate(t, "t")
    la, ps = mix.Lam[:, 0], mix.Psi[:, 0]  # M x N: p(t) = sum_i la_i gamma_a[i] + ps_i gamma_b[i]

    def position(X):
        ga, gb = X[:, 0].reshape(-1, N, 3), X[:, 1].reshape(-1, N, 3)
        return (la[:, :, None] * ga).sum(1) + (ps[:, :, None] * gb).sum(1)

    def residual(X, G):
        return ((position(X) - anchors).norm(dim=-1) - d)[:, None] / sd[:, None]

    def jacobian(X, G):
        x = position(X) - anchors
        n = x / x.norm(dim=-1, keepdim=True) / sd[:, None]
        Jx = torch.stack([(la[:, :, None] * n[:, None, :]), (ps[:, :, None] * n[:, None, :])], dim=1)
        return Jx.reshape(-1, 1, 2, 3 * N), None

    meas = Factor(torch.stack([mix.index, mix.index + 1], 1), residual, jacobian, robust="huber", robust_threshold=3.0)
    return [prior, meas]


def _positions_from_ranges(traj: Trajectory, ranges: list[RangeMeasurement]):
    r"""``(p, v, a)`` at the knots (``a`` ``None`` for WNOA) from ranges, or ``None`` when the anchors do not
    determine positions."""
    tk = traj._times64
    t = _times64(traj, ranges)
    anchors, d, w, offset = _values(traj, ranges, "anchors", "d", "w", "offset")
    noise, lever = 1.0 / w[:, 0], offset.norm(dim=-1)
    sd = (noise.square() + lever.square()).sqrt()  # the unknown orientation of the lever arm as extra noise
    t0, t1 = float(tk[0]), float(tk[-1])
    spacing = float(tk.diff().median())
    width = max(spacing, 24.0 * (t1 - t0) / t.shape[0])  # about 24 ranges per window
    tw, xw = _multilaterate(t, anchors, d, sd, t0, t1, width)
    if tw.shape[0] == 0:
        return None
    p0 = _interp_vectors(tw, xw, tk)
    v0, a0 = _position_rates(traj._spacing(), p0)
    N = traj.order
    X0 = torch.cat([p0, v0] + ([a0] if N == 3 else []), dim=1)
    try:
        factors = _range_factors(traj, t, anchors, d, sd)
        res = gauss_newton(X0, factors, bandwidth=1, max_iter=30, ftol=1e-8, stol=0.1, warn=False)
        X = res.states if bool(torch.isfinite(res.states).all()) else X0
    except NotPSDError:
        X = X0
    p, v = X[:, :3], X[:, 3:6]
    return p, v, (X[:, 6:9] if N == 3 else None)


def _minimal_rotation(a: Tensor, b: Tensor) -> Tensor:
    r"""The rotation by the smallest angle that turns the unit vector ``a`` into the unit vector ``b``."""
    axis = torch.linalg.cross(a, b, dim=-1)
    s = axis.norm()
    angle = torch.atan2(s, (a * b).sum())
    return so3_exp(axis / s.clamp_min(1e-300) * angle if float(s) > 1e-12 else torch.zeros_like(a))


def _rotations_from_ranges(traj: Trajectory, ranges: list[RangeMeasurement], p_c: Tensor):
    r"""Rotations at the knots from the tags' lever arms, and the positions corrected for the tags' centroid.

    The position-only solve ignores the lever arms, so it finds :math:`p_c \approx p + R\bar o` (:math:`\bar o` the
    mean tag offset). To first order in :math:`\lVert o\rVert / \lVert p - a\rVert` a range then reads
    :math:`d - \lVert p_c - a\rVert \approx u^\top R (o - \bar o)`, :math:`u` the unit vector from the anchor:
    linear in the world images :math:`m_k = R b_k` of an orthonormal basis :math:`b_k` of the span of the centred
    offsets. Per time window they are solved by weighted least squares, and the rotation is the nearest one with
    :math:`R b_k \approx m_k` (Kabsch; unique for two or more independent directions, i.e. three tags not on a
    line). With the tags on a line (two tags) the roll about that line is not observable: each window's rotation is
    the previous one turned by the smallest angle that aligns the line (no roll rate). Returns ``(R, p)`` at the
    knots, or ``None`` with a single tag position or too few ranges per window.
    """
    tk = traj._times64
    t = _times64(traj, ranges)
    anchors, d, w, off = _values(traj, ranges, "anchors", "d", "w", "offset")
    w2 = w[:, 0].square()
    M = t.shape[0]
    obar = off.mean(0)
    c = off - obar
    ev, V = torch.linalg.eigh(c.mT @ c / M)
    if float(ev[-1]) <= 1e-12:
        return None
    r = int((ev > 1e-6 * ev[-1]).sum())
    B = V[:, 3 - r :]  # 3 x r, orthonormal body directions
    coef = c @ B  # M x r
    x = _interp_vectors(tk, p_c, t) - anchors
    dist = x.norm(dim=-1)
    u = x / dist[:, None]
    y = d - dist
    A = (coef[:, :, None] * u[:, None, :]).reshape(M, 3 * r)  # unknowns m_1, .., m_r
    t0, t1 = float(tk[0]), float(tk[-1])
    width = max(float(tk.diff().median()), 12.0 * r * (t1 - t0) / M)
    win, count, tw = _windows(t, t0, t1, width, A.device)
    nw = tw.shape[0]
    AtA = A.new_zeros(nw, 3 * r, 3 * r).index_add_(0, win, A[:, :, None] * A[:, None, :] * w2[:, None, None])
    Aty = A.new_zeros(nw, 3 * r).index_add_(0, win, A * (y * w2)[:, None])
    ev = torch.linalg.eigvalsh(AtA)
    ok = (count >= 3 * r + 2) & (ev[:, 0] > 1e-6 * ev[:, -1].clamp_min(1e-300))
    if not bool(ok.any()):
        return None
    m = torch.linalg.solve(AtA[ok], Aty[ok]).reshape(-1, r, 3)  # nv x r x 3: m_k = R b_k
    if r >= 2:
        U, _, Vh = torch.linalg.svd(m.mT @ B.mT.expand(m.shape[0], r, 3))  # sum_k m_k b_k^T
        sign = torch.linalg.det(U @ Vh)
        U = torch.cat([U[:, :, :2], U[:, :, 2:] * sign[:, None, None]], dim=2)
        Rw = U @ Vh
    else:
        dirs = m[:, 0] / m[:, 0].norm(dim=-1, keepdim=True)
        b = B[:, 0]
        Rs = [_minimal_rotation(b, dirs[0])]
        for k in range(1, dirs.shape[0]):
            Rs.append(_minimal_rotation(Rs[-1] @ b, dirs[k]) @ Rs[-1])
        Rw = torch.stack(Rs)
    R = _interp_rotations(tw[ok.to(tw.device)], Rw, tk, "ranges")
    p = p_c - (R @ obar[:, None]).squeeze(-1)
    return R, p, (B[:, 0] if r == 1 else None)


# ------------------------------------------------------------------------------------------------------------------
# The initial knots
# ------------------------------------------------------------------------------------------------------------------
def initial_knots(traj: Trajectory, measurements: Sequence[Measurement]) -> tuple[dict[str, Tensor], str]:
    r"""Knot states (keyword arguments of :meth:`Trajectory.set_knots
    <gpgeom.models.trajectory.Trajectory.set_knots>`) from the measurements, and a sentence saying where they come
    from; an empty dict (and the reason, or ``""``) when no measurement says anything about the rotation or the
    position.

    Sources, in order of preference: pose measurements (rotations and positions), position measurements
    (positions), ranges (positions through a coarse solve, rotations from the tags' lever arms). Rates come from
    finite differences across the knots (the velocities and accelerations from ranges, from the coarse solve).
    Components without a source keep their current values.
    """
    # the values in the trajectory's dtype and on its device (``_values``); the times as given (``_times64``)
    poses = [m for m in measurements if isinstance(m, PoseMeasurement)]
    positions = [m for m in measurements if isinstance(m, PositionMeasurement)]
    ranges = [m for m in measurements if isinstance(m, RangeMeasurement)]

    tk, h = traj._times64, traj._spacing()  # float64 knot times; spacings from them, in the trajectory's dtype
    wnoj = traj.order == 3
    out: dict[str, Tensor] = {}
    said = []
    if poses:
        t = _times64(traj, poses)
        tu, Ru = _mean_rotations(t, *_values(traj, poses, "Rm"))
        R = _interp_rotations(tu, Ru, tk, "pose measurements", limit=math.pi)  # what fit accepts from its own knots
        omega, alpha = _rotation_rates(h, R)
        out.update(R=R, omega=omega, **({"alpha": alpha} if wnoj else {}))
        said.append(f"rotations from {t.shape[0]} pose measurements")
    if poses or positions:
        t = _times64(traj, poses + positions)
        tu, pu = _mean_vectors(t, *_values(traj, poses + positions, "pm"))
        p = _interp_vectors(tu, pu, tk)
        v, a = _position_rates(h, p)
        out.update(p=p, v=v, **({"a": a} if wnoj else {}))
        said.append(f"positions from {t.shape[0]} pose/position measurements")
    elif ranges:
        got = _positions_from_ranges(traj, ranges)
        if got is None:
            return {}, (
                "the ranges do not determine positions by multilateration (fewer than four anchors off a common "
                "plane, or too few ranges, per time window)"
            )
        else:
            p, v, a = got
            n = sum(m.num_blocks for m in ranges)
            said.append(f"positions from {n} ranges (multilateration and a position-only solve)")
            rot = _rotations_from_ranges(traj, ranges, p)
            if rot is not None:
                R, p, axis = rot
                omega, alpha = _rotation_rates(h, R)
                out.update(R=R, omega=omega, **({"alpha": alpha} if wnoj else {}))
                said.append("rotations from the tags' lever arms")
            out.update(p=p, v=v, **({"a": a} if wnoj else {}))
            if rot is not None and axis is not None:
                said[-1] += " (no roll rate about the tags' axis, which no range sees)"
    if not out:
        return {}, ""
    text = "; ".join(said)
    if "R" not in out:
        text += "; rotations and angular rates left at the current knots"
    return out, text
