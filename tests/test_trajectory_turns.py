#!/usr/bin/env python3
r"""Tests of the turn check of GP trajectories (``gpgeom.models.trajectory.initialisation._interval_turns``): a knot
interval holds at most pi rad of rotation (its local variable is Log(R_a^T R_b)), and the start from the pose
measurements and ``fit(..., init="none")`` refuse poses that turn the body further within one interval.

The truth is a spin :math:`R(t) = \mathrm{Exp}(\omega t\,a)` about a fixed axis ``a``: it turns by
:math:`\omega\Delta` per knot interval of length :math:`\Delta`, and a fit of its poses is checked against it.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from gpgeom.geometry.lie import so3_exp, so3_log
from gpgeom.models.trajectory import PoseMeasurement, SE3Trajectory, SO3xR3Trajectory

DT = torch.float64
AXIS = torch.tensor([0.3, -0.4, 1.0], dtype=DT) / math.sqrt(1.25)


def _spin(rate: float, T: float, hz: float, sigma: float, seed: int = 0):
    r"""Poses at ``hz`` Hz over ``[0, T]`` of a spin at ``rate`` rad/s about ``AXIS``, each rotation perturbed by
    ``Exp(sigma * n)``, ``n`` standard normal (3 components); positions zero. Returns ``(t, R_true, measurement)``."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(0.0, T + 1e-9, 1.0 / hz, dtype=DT)
    R = so3_exp(rate * t[:, None] * AXIS)
    Rm = R @ so3_exp(sigma * torch.randn(t.shape[0], 3, dtype=DT, generator=gen))
    p = torch.zeros(t.shape[0], 3, dtype=DT)
    return t, R, PoseMeasurement(t, R=Rm, p=p, sigma_rot=max(sigma, 1e-3), sigma_pos=0.01)


def _rot_err(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    return so3_log(Ra.mT @ Rb, validate=False).norm(dim=-1)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_dense_noisy_poses_of_a_moderate_spin_are_accepted(cls):
    r"""50 Hz poses with 0.05 rad of rotation noise (per component) of a 1 rad/s spin, knots 1 s apart: 1 rad per
    interval. The check added up the lengths of the steps between consecutive poses, each mostly noise, and refused
    them as turning the body by 6.1 rad in one interval, from the start and with ``init="none"``. Now the fit from
    the start reaches the fit from the true knots (same cost to 2e-15 relative, knots to 3e-7), and its rotation error
    against the true spin is 0.014 rad RMS (0.046 max), the noise averaged over an interval's 50 poses
    (:math:`0.05\sqrt{3/50} = 0.012`), against 0.085 rad RMS of the poses themselves."""
    sigma = 0.05
    t, R, meas = _spin(1.0, 10.0, 50.0, sigma)
    auto = cls.uniform(0.0, 10.0, 1.0).fit([meas])
    assert "rotations from 501 pose measurements" in auto.fit_result_.init and auto.fit_result_.converged
    kt = auto.knot_times
    good = cls(kt).set_knots(R=so3_exp(kt[:, None] * AXIS), omega=AXIS.expand(kt.shape[0], 3))
    good.fit([meas], init="none")
    assert good.fit_result_.init == "current knots" and good.fit_result_.converged
    assert auto.fit_result_.cost == pytest.approx(good.fit_result_.cost, rel=1e-9)
    assert float((auto.knots - good.knots).abs().max()) < 1e-5
    err = _rot_err(R, auto.predict(t).R)
    raw = _rot_err(R, meas.Rm)
    assert float(raw.square().mean().sqrt()) > 0.08  # the premise: poses this noisy
    assert float(err.square().mean().sqrt()) < 2 * sigma * math.sqrt(3 / 50), float(err.square().mean().sqrt())
    assert float(err.max()) < 0.1


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("turn", [1.1 * math.pi, 1.5 * math.pi])
@pytest.mark.parametrize(("hz", "sigma"), [(50.0, 0.05), (4.0, 0.0)], ids=["dense_noisy", "sparse_clean"])
def test_a_spin_faster_than_pi_per_interval_is_refused(cls, turn, hz, sigma):
    r"""Spins of 1.1 pi and 1.5 pi per knot interval cannot be held (the local variable would take the short way
    round): 50 Hz poses with 0.05 rad of noise and 4 clean poses per interval are refused, from the start and with
    ``init="none"``, and the turn the message names is the true one (3.46 and 4.71 rad; with the noise, the largest
    of an interval's 50 poses, 3.54 and 4.8 rad). The path length of the noisy steps named 6.81 and 7.4 rad."""
    _, _, meas = _spin(turn, 5.0, hz, sigma)
    for init in ("auto", "none"):
        with pytest.raises(ValueError, match=r"turn the body by .* rad between knots \d and \d.*more than pi") as exc:
            cls.uniform(0.0, 5.0, 1.0).fit([meas], init=init, warn=False)
        named = float(re.search(r"by ([0-9.]+) rad", str(exc.value)).group(1))
        assert turn - 0.01 < named < turn + (0.2 if sigma else 0.01), (named, turn)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("hz", [4.0, 50.0])
def test_a_clean_spin_just_under_pi_per_interval_is_fitted(cls, hz):
    r"""A clean spin of pi - 1e-3 rad per knot interval is held: from the start built from 4 or 50 poses per
    interval, the fit gives :math:`\mathrm{Exp}(\omega t\,a)` to 1e-12 rad, between the knots too."""
    rate = math.pi - 1e-3
    _, _, meas = _spin(rate, 4.0, hz, 0.0)
    traj = cls.uniform(0.0, 4.0, 1.0).fit([meas])
    tq = torch.linspace(0.0, 4.0, 41, dtype=DT)
    assert float(_rot_err(so3_exp(rate * tq[:, None] * AXIS), traj.predict(tq).R).max()) < 1e-12


def test_the_turn_is_that_of_the_worst_interval_of_an_accelerating_spin():
    r"""An accelerating spin about a fixed axis, angle :math:`\theta(t) = 0.3 t^2` (rad), knots 1 s apart: interval
    ``k`` turns by :math:`0.3(2k + 1)`, more than pi from ``k = 5`` (3.3 rad) on. With 50 Hz poses and 0.02 rad of
    noise, knots 0 .. 5 (intervals up to 2.7 rad) are accepted; knots 0 .. 6 are refused at interval 5, named with
    its 3.3 rad (the path length made 3.39 rad of interval 4's 2.7 rad and refused knots 0 .. 5)."""
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(0.0, 6.0 + 1e-9, 0.02, dtype=DT)
    R = so3_exp(0.3 * t.square()[:, None] * AXIS)
    Rm = R @ so3_exp(0.02 * torch.randn(t.shape[0], 3, dtype=DT, generator=gen))
    pose = PoseMeasurement(t, R=Rm, p=torch.zeros(t.shape[0], 3, dtype=DT), sigma_rot=0.02)
    upto5 = t <= 5.0
    short = PoseMeasurement(t[upto5], R=Rm[upto5], p=torch.zeros(int(upto5.sum()), 3, dtype=DT), sigma_rot=0.02)
    traj = SO3xR3Trajectory.uniform(0.0, 5.0, 1.0).fit([short])
    assert float(_rot_err(R[upto5], traj.predict(t[upto5]).R).max()) < 0.05
    with pytest.raises(ValueError, match=r"turn the body by 3\.\d+ rad between knots 5 and 6") as exc:
        SO3xR3Trajectory.uniform(0.0, 6.0, 1.0).fit([pose])
    assert abs(float(re.search(r"by ([0-9.]+) rad", str(exc.value)).group(1)) - 3.3) < 0.1


def _length(R: torch.Tensor) -> torch.Tensor:
    steps = so3_log(R[:-1].mT @ R[1:], validate=False).norm(dim=-1)
    return torch.cat([steps.new_zeros(1), torch.cumsum(steps, 0)])


@pytest.mark.parametrize("rate", [0.5, 0.9 * math.pi, 1.3 * math.pi, 1.9 * math.pi])
def test_interval_turns_of_a_spin_with_knots_beyond_the_samples(rate):
    r"""A clean spin sampled at 8 Hz over [2, 3.5] s, knots at 0.3, 1.3, .., 6.3 s: knots inside, across and beyond
    the samples (extrapolated at the spin's own rate). Every interval turns by the closed form :math:`\omega\Delta`,
    below and above pi and up to 1.9 pi (to 1e-14 rad)."""
    from gpgeom.models.trajectory.initialisation import _interval_turns

    t = torch.arange(2.0, 3.5 + 1e-9, 0.125, dtype=DT)
    R = so3_exp(rate * t[:, None] * AXIS)
    tq = torch.arange(0.0, 6.0 + 1e-9, 1.0, dtype=DT) + 0.3
    turns = _interval_turns(t, R, tq, _length(R))
    assert turns.shape == (6,) and float((turns - rate).abs().max()) < 1e-13


def test_interval_turns_of_a_turning_axis_match_a_sequential_lift():
    r""":math:`R(t) = \mathrm{Exp}(0.5t^2\,e_z)\,\mathrm{Exp}(1.5t\,e_x)` (its axis and rate change), 200 poses
    per second with 0.01 rad of noise, knots 1 s apart: the turn of each interval against a lift computed one pose at
    a time (of the rotation vectors :math:`\theta + 2\pi n\,\theta/\lVert\theta\rVert` of :math:`R_k^\top R_j`, the
    one nearest the previous pose's), the largest norm over the interval. Intervals turn by 1.57 to 4.09 rad, both
    sides of pi; they agree to 1.1e-14."""
    from gpgeom.models.trajectory.initialisation import _interp_rotations, _interval_turns

    gen = torch.Generator().manual_seed(2)
    t = torch.arange(0.0, 5.0 + 1e-9, 0.005, dtype=DT)
    ez, ex = torch.tensor([0.0, 0.0, 1.0], dtype=DT), torch.tensor([1.0, 0.0, 0.0], dtype=DT)
    R = so3_exp(0.5 * t.square()[:, None] * ez) @ so3_exp(1.5 * t[:, None] * ex)
    R = R @ so3_exp(0.01 * torch.randn(t.shape[0], 3, dtype=DT, generator=gen))
    tq = torch.arange(0.0, 5.0 + 1e-9, 1.0, dtype=DT)
    turns = _interval_turns(t, R, tq, _length(R))
    Rk = _interp_rotations(t, R, tq, "poses", limit=10.0)
    ref = []
    for k in range(tq.shape[0] - 1):
        inside = (t > tq[k]) & (t <= tq[k + 1])
        theta = so3_log(Rk[k].mT @ R[inside], validate=False)
        prev, most = torch.zeros(3, dtype=DT), 0.0
        for th in theta:
            phi = float(th.norm())
            cands = [th + 2 * math.pi * n * th / phi for n in (-2, -1, 0, 1, 2)]
            prev = min(cands, key=lambda c: float((c - prev).norm()))
            most = max(most, float(prev.norm()))
        ref.append(most)
    ref = torch.tensor(ref, dtype=DT)
    assert float(ref.min()) < 2.0 and float(ref.max()) > 4.0  # the premise: both sides of pi
    assert float((turns - ref).abs().max()) < 1e-12, (turns, ref)


@pytest.mark.parametrize("knots", [[0.0, 1.0, 2.0, 3.0, 6.0], [-3.0, 0.0, 1.0, 2.0, 3.0]], ids=["after", "before"])
def test_a_refusal_of_an_interval_beyond_the_poses_says_it_is_extrapolated(knots):
    r"""Clean poses of a 0.8 pi rad/s spin over [0, 3] s (knots 1 s apart there: 0.8 pi per interval, accepted) and
    one knot interval of 3 s past the last pose or before the first: the start extrapolates the spin at its rate,
    :math:`2.4\pi` = 7.54 rad over that interval (closed form), and refuses it. The message named it as a turn of the
    pose measurements, which end at the interval's first knot (and ``init="none"``, which checks only the measured
    part, accepts the same knots); it now says that the turn is the poses' extrapolation, and where they are."""
    rate = 0.8 * math.pi
    t = torch.arange(0.0, 3.0 + 1e-9, 0.05, dtype=DT)
    meas = PoseMeasurement(t, R=so3_exp(rate * t[:, None] * AXIS), p=torch.zeros(t.shape[0], 3, dtype=DT))
    SO3xR3Trajectory(torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=DT)).fit([meas], warn=False)  # the measured part
    kt = torch.tensor(knots, dtype=DT)
    with pytest.raises(ValueError, match=r"\(at t = 0 \.\. 3\), extrapolated at their rate beyond") as exc:
        SO3xR3Trajectory(kt).fit([meas], warn=False)
    named = float(re.search(r"by ([0-9.]+) rad", str(exc.value)).group(1))
    assert abs(named - 3 * rate) < 0.01, named
