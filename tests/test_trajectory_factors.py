#!/usr/bin/env python3
r"""Tests of gpgeom.models.trajectory.factors: every hand-written factor Jacobian (through the interpolation) against
torch.func.jacfwd, user-defined factors, IMU biases, TDOA, Huber, chunking, numpy inputs and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gpgeom.datasets.trajectories import (
    FastTrajectory,
    perturbed_knots,
    simulate_imu,
    simulate_tdoa,
    simulate_uwb,
)
from gpgeom.geometry.lie import rotmat_to_quat, so3_exp, so3_log
from gpgeom.models.trajectory import (
    CustomMeasurement,
    GlobalPrior,
    IMUMeasurement,
    KnotPrior,
    PoseMeasurement,
    PositionMeasurement,
    RangeMeasurement,
    SE3Trajectory,
    SO3xR3Trajectory,
    TDOAMeasurement,
    components,
)

DT = torch.float64
TRUTH = FastTrajectory(kind="split", speed=40.0)


def _measurements(kt: torch.Tensor, gen: torch.Generator, prior: str) -> list:
    r"""One of each kind at random times, knot times included; rotations far from the state (near pi) included."""
    t = torch.cat([kt[[0, 2, -1]], kt[0] + (kt[-1] - kt[0]) * torch.rand(9, dtype=DT, generator=gen)])
    M = t.shape[0]

    def r(*shape, scale=1.0):
        return scale * torch.randn(*shape, dtype=DT, generator=gen)

    Rm = so3_exp(r(M, 3, scale=1.5))
    Rm[0] = so3_exp(torch.tensor([0.0, 0.0, math.pi - 1e-3], dtype=DT))
    anchors = r(M, 3, scale=5.0)
    out = [
        PoseMeasurement(t, R=Rm, p=r(M, 3), sigma_rot=[0.1, 0.2, 0.3], sigma_pos=0.5),
        PoseMeasurement(t, q=rotmat_to_quat(Rm), p=r(M, 3), sigma_rot=0.1, sigma_pos=r(M, 3).abs() + 0.1),
        PositionMeasurement(t, r(M, 3), sigma=[0.1, 0.2, 0.3]),
        RangeMeasurement(t, anchors, anchors.norm(dim=-1), tag_offset=r(M, 3, scale=0.3), sigma=0.05),
        TDOAMeasurement(t, anchors, r(3, scale=5.0), r(M), tag_offset=r(3, scale=0.3), sigma=r(M).abs() + 0.1),
        KnotPrior(
            [0, -1, 2],
            R=so3_exp(r(3, 3)),
            omega=r(3),
            p=r(3),
            v=r(3, 3),
            sigma={"R": 0.1, "omega": 1.0, "p": 2.0, "v": [1.0, 2.0, 3.0]},
        ),
        KnotPrior(1, q=rotmat_to_quat(Rm[0]), sigma=0.3),
        GlobalPrior("calib", r(4), sigma=[1.0, 2.0, 3.0, 4.0]),
        CustomMeasurement(
            t,
            lambda st, pr: torch.cat(
                [
                    (st["R"] @ pr["calib"][:3].unsqueeze(-1)).squeeze(-1) + st["p"] * pr["calib"][3],
                    st["omega"] * st["v"],
                ],
                -1,
            ),
            residual_dim=6,
            level=1,
            sigma=0.5,
            params={"calib": r(4)},
        ),
    ]
    if prior == "wnoj":
        out += [
            IMUMeasurement(t, r(M, 3), r(M, 3), sigma_gyro=0.01, sigma_accel=[0.1, 0.2, 0.3]),
            IMUMeasurement(t, r(M, 3), r(M, 3), bias_name=None),
            GlobalPrior("imu_bias", torch.zeros(6, dtype=DT), sigma=0.1),
            CustomMeasurement(
                t, lambda st, pr: st["a"] - (st["R"] @ st["alpha"].unsqueeze(-1)).squeeze(-1), residual_dim=3, level=2
            ),
        ]
    return out


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
@pytest.mark.parametrize("prior", ["wnoj", "wnoa"])
def test_every_factor_jacobian_matches_jacfwd(cls, prior):
    gen = torch.Generator().manual_seed(11)
    kt = torch.cumsum(0.1 + 0.3 * torch.rand(6, dtype=DT, generator=gen), 0)
    traj = cls(kt, prior=prior, qc_rot=[1.0, 2.0, 3.0], qc_pos=[3.0, 2.0, 1.0])
    K = kt.shape[0]
    R = [so3_exp(torch.randn(3, dtype=DT, generator=gen))]
    for ang in (1e-9, 0.5, math.pi - 1e-3, 2.0, 1e-4):  # relative angles near 0 and near pi
        ax = torch.randn(3, dtype=DT, generator=gen)
        R.append(R[-1] @ so3_exp(ang * ax / ax.norm()))
    kw = {c: torch.randn(K, 3, dtype=DT, generator=gen) for c in components(traj.order - 1) if c != "R"}
    traj.set_knots(R=torch.stack(R), **kw)
    meas = _measurements(kt, gen, prior)
    if cls is SE3Trajectory:  # the measurement side is shared; keep one factor per interpolation level (autodiff)
        meas = [m for m in meas if isinstance(m, RangeMeasurement | IMUMeasurement | CustomMeasurement)][:3]
    factors, g0, layout = traj.build_factors(meas)
    if cls is SO3xR3Trajectory:
        assert set(layout) == ({"calib", "imu_bias"} if prior == "wnoj" else {"calib"})
    G = g0 + torch.randn(g0.shape, dtype=DT, generator=gen)
    X, s, g = traj.knots, traj.tangent_dim, g0.shape[0]
    for f in factors:
        Xb = X[f.indices]
        M, a = f.indices.shape
        e = f.residual(Xb, G)
        Jx, Jg = f.jacobian(Xb, G)
        Jg = torch.zeros(M, e.shape[1], g, dtype=DT) if Jg is None else Jg

        def res(d, f=f, Xb=Xb, M=M, a=a):
            dx = d[: a * s].reshape(1, a, s).expand(M, a, s).reshape(M * a, s)
            return f.residual(traj.retract(Xb.reshape(M * a, -1), dx).reshape(M, a, -1), G + d[a * s :])

        J = torch.func.jacfwd(res)(torch.zeros(a * s + g, dtype=DT))
        scale = max(1.0, float(J.abs().max()))
        assert torch.isfinite(e).all(), f.name
        assert float((J[..., : a * s] - Jx.reshape(M, -1, a * s)).abs().max()) < 1e-9 * scale, f.name
        assert float((J[..., a * s :] - Jg).abs().max()) < 1e-9 * scale, f.name


def test_custom_measurement_equals_builtin_position_measurement():
    kt = torch.arange(0.0, 2.0 + 1e-9, 0.2, dtype=DT)
    t = torch.linspace(0.0, 2.0, 31, dtype=DT)
    y = TRUTH.state(t).p + 0.01 * torch.randn(31, 3, dtype=DT)
    fits = []
    for m in (
        PositionMeasurement(t, y, sigma=0.01),
        CustomMeasurement(t, lambda st, pr: st["p"] - y, residual_dim=3, sigma=0.01),
    ):
        traj = SO3xR3Trajectory(kt, qc_pos=10.0)
        zero = torch.zeros(3, dtype=DT)
        traj.fit(
            [m, KnotPrior(0, R=torch.eye(3, dtype=DT), omega=zero, alpha=zero, sigma=1.0)], compute_covariances=True
        )
        fits.append(traj)
    assert torch.allclose(fits[0].p, fits[1].p, atol=1e-9)
    assert torch.allclose(fits[0].covariances_, fits[1].covariances_, atol=1e-12)


def test_imu_and_uwb_fit_recovers_biases():
    T = 4.0
    truth = FastTrajectory(kind="split", speed=20.0)
    uwb = simulate_uwb(truth, 0.0, T, rate=10.0, sigma=0.05, seed=3)
    imu = simulate_imu(truth, torch.arange(0.0, T, 0.01, dtype=DT), sigma_gyro=0.01, sigma_accel=0.05, seed=4)
    traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
    traj.set_knots(**perturbed_knots(truth, traj.knot_times, sigma_rot=0.05, sigma_pos=0.1, seed=5))
    traj.fit(
        [
            RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05),
            IMUMeasurement(imu.t, imu.gyro, imu.accel, sigma_gyro=0.01, sigma_accel=0.05),
        ],
        max_iter=50,
        compute_covariances=True,
    )
    b = traj.fit_result_.globals["imu_bias"]
    sd = traj.fit_result_.global_covariance.diagonal().sqrt()
    true_b = torch.cat([imu.bias_gyro, imu.bias_accel])
    assert traj.fit_result_.converged
    assert float(((b - true_b).abs() / sd).max()) < 3.0  # within 3 posterior standard deviations
    tq = torch.linspace(0.2, T - 0.2, 200, dtype=DT)
    assert float((traj.interpolate(tq).omega - truth.state(tq).omega).norm(dim=-1).mean()) < 0.02


def test_tdoa_fit():
    T = 3.0
    truth = FastTrajectory(kind="split", speed=20.0)
    td = simulate_tdoa(truth, torch.arange(0.0, T, 0.005, dtype=DT), sigma=0.05, seed=6)
    traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
    traj.set_knots(**perturbed_knots(truth, traj.knot_times, sigma_rot=0.05, sigma_pos=0.3, seed=7))
    traj.fit(
        [
            TDOAMeasurement(td.t, td.anchor_i, td.anchor_j, td.tdoa, tag_offset=td.tag_offsets, sigma=0.05),
            KnotPrior(0, p=truth.state(torch.zeros(1, dtype=DT)).p, sigma=0.05),
        ],
        max_iter=50,
    )
    tq = torch.linspace(0.2, T - 0.2, 200, dtype=DT)
    err = (traj.interpolate(tq).p - truth.state(tq).p).norm(dim=-1)
    assert traj.fit_result_.converged and float(err.square().mean().sqrt()) < 0.1


def test_huber_resists_outliers():
    T = 3.0
    uwb = simulate_uwb(TRUTH, 0.0, T, rate=10.0, sigma=0.05, seed=8)
    ranges = uwb.ranges.clone()
    bad = torch.arange(0, ranges.shape[0], 17)
    ranges[bad] += 3.0  # 6 % of the ranges are off by 3 m (multipath)
    tq = torch.linspace(0.2, T - 0.2, 200, dtype=DT)
    err = {}
    for robust in (None, "huber"):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
        traj.set_knots(**perturbed_knots(TRUTH, traj.knot_times, sigma_rot=0.1, sigma_pos=0.2, seed=9))
        m = RangeMeasurement(
            uwb.t, uwb.anchors, ranges, tag_offset=uwb.tag_offsets, sigma=0.05, robust=robust, robust_threshold=2.0
        )
        traj.fit([m], max_iter=50, warn=False)
        err[robust] = float((traj.interpolate(tq).p - TRUTH.state(tq).p).norm(dim=-1).square().mean().sqrt())
    assert err["huber"] < 0.05 < err[None], err


def test_chunked_factors_give_the_same_fit():
    T = 2.0
    uwb = simulate_uwb(TRUTH, 0.0, T, rate=10.0, sigma=0.05, seed=10)
    m = RangeMeasurement(uwb.t, uwb.anchors, uwb.ranges, tag_offset=uwb.tag_offsets, sigma=0.05)
    out = []
    for chunk in (16384, 100):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
        traj.set_knots(**perturbed_knots(TRUTH, traj.knot_times, sigma_rot=0.1, sigma_pos=0.2, seed=9))
        assert len(traj.build_factors([m], chunk_size=chunk)[0]) == 1 + math.ceil(m.num_blocks / chunk)
        out.append(traj.fit([m], chunk_size=chunk).knots)
    assert torch.allclose(out[0], out[1], atol=1e-8)


def _baro(M=50, seed=12):
    r"""``M`` barometer-like height readings :math:`z(t) + h_0` (offset ``h0 = 0.7``) and poses at the same times."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(0.0, 2.0, M, dtype=DT)
    gt = TRUTH.state(t)
    z = gt.p[:, 2] + 0.7 + 0.02 * torch.randn(M, dtype=DT, generator=gen)
    pose = PoseMeasurement(t[::5], R=gt.R[::5], p=gt.p[::5], sigma_rot=0.05, sigma_pos=0.05)
    return t, z, pose


def test_custom_measurement_data_is_sliced_with_the_chunks():
    t, z, pose = _baro()
    M = t.shape[0]

    def height(st, prm, d):
        return (st["p"][:, 2] + prm["h0"][0] - d["z"]).unsqueeze(-1) * d["scale"][:, None]

    def baro(**kw):
        return CustomMeasurement(
            t, height, residual_dim=1, sigma=0.02, params={"h0": np.zeros(1)}, data={"z": z.numpy(), **kw}
        )

    fits = {}
    for chunk in (None, 20):
        traj = SO3xR3Trajectory.uniform(0.0, 2.0, 0.2, qc_rot=10.0, qc_pos=10.0)
        m = baro(scale=torch.ones(M, dtype=DT))
        assert len(traj.build_factors([m], chunk_size=chunk)[0]) == 1 + (1 if chunk is None else math.ceil(M / chunk))
        fits[chunk] = traj.fit([pose, m], chunk_size=chunk, compute_covariances=True)
    a, b = fits[None], fits[20]
    assert float((a.knots - b.knots).abs().max()) < 1e-10
    assert abs(a.fit_result_.cost - b.fit_result_.cost) < 1e-10 * a.fit_result_.cost
    assert float((a.fit_result_.globals["h0"] - b.fit_result_.globals["h0"]).abs()) < 1e-10
    assert abs(float(a.fit_result_.globals["h0"][0]) - 0.7) < 0.02
    # integer data keep their dtype (indices), floating data take the trajectory's
    idx = baro(scale=torch.ones(M, dtype=DT), k=np.arange(M)).to(dtype=torch.float32).data
    assert idx["k"].dtype == torch.int64 and idx["z"].dtype == torch.float32
    # per-measurement tensors captured by the function cannot follow the chunks: the error says what to do
    closure = CustomMeasurement(t, lambda st, prm: (st["p"][:, 2] - z).unsqueeze(-1), residual_dim=1, sigma=0.02)
    with pytest.raises(RuntimeError, match=r"failed on 20 measurement rows.*pass them as `data=\{...\}`"):
        SO3xR3Trajectory.uniform(0.0, 2.0, 0.2).fit([pose, closure], chunk_size=20)
    # wrong shapes and types
    with pytest.raises(ValueError, match=r"`data\['z'\]` must have a leading dimension of M = 50 .* got shape \(49,\)"):
        CustomMeasurement(t, height, residual_dim=1, data={"z": z[1:]})
    with pytest.raises(ValueError, match=r"`data\['c'\]` must have a leading dimension of M = 50 .* got shape \(\)"):
        CustomMeasurement(t, height, residual_dim=1, data={"z": z, "c": 1.0})
    with pytest.raises(TypeError, match="`data` must be a dict"):
        CustomMeasurement(t, height, residual_dim=1, data=[z])
    with pytest.raises(TypeError, match=r"`data\['ok'\]` must hold numbers, got booleans"):
        CustomMeasurement(t, height, residual_dim=1, data={"ok": np.ones(M, dtype=bool)})
    with pytest.raises(ValueError, match=r"`data\['z'\]` contains \d+ NaN"):
        CustomMeasurement(t, height, residual_dim=1, data={"z": torch.where(t > 1.9, float("nan"), z)[:, None]})


def test_chunks_keep_shared_vectors_whole():
    # an IMU with M = 3 readings, split in chunks of 2: its gravity (a 3-vector) and its initial biases are shared,
    # not per reading (gravity used to be cut like the readings because its length equalled M)
    T = 1.0
    imu = simulate_imu(TRUTH, torch.linspace(0.05, 0.95, 3, dtype=DT), seed=4)
    m = IMUMeasurement(imu.t, imu.gyro, imu.accel, gravity=imu.gravity, bias_init=0.01 * torch.ones(6, dtype=DT))
    assert len(SO3xR3Trajectory.uniform(0.0, T, 0.1).build_factors([m], chunk_size=2)[0]) == 3
    pieces = m.blocks(slice(0, 2)), m.blocks(slice(2, 3))
    assert [p.num_blocks for p in pieces] == [2, 1] and pieces[1].name.endswith("[2:3]")
    for p in pieces:
        assert p.g.shape == (3,) and p.bias_init.shape == (6,) and torch.equal(p.g, m.g)
    fits = []
    for chunk in (None, 2):
        traj = SO3xR3Trajectory.uniform(0.0, T, 0.1, qc_rot=10.0, qc_pos=10.0)
        traj.set_knots(**TRUTH.state(traj.knot_times).knots())
        gt = TRUTH.state(imu.t)
        pose = PoseMeasurement(imu.t, R=gt.R, p=gt.p, sigma_rot=0.01, sigma_pos=0.01)
        fits.append(traj.fit([pose, m, GlobalPrior("imu_bias", torch.zeros(6, dtype=DT), sigma=0.1)], chunk_size=chunk))
    assert float((fits[0].knots - fits[1].knots).abs().max()) < 1e-10


def test_measurement_bad_input():
    t = torch.tensor([0.1, 0.2], dtype=DT)
    with pytest.raises(ValueError, match="`p` must have shape \\(2, 3\\)"):
        PositionMeasurement(t, torch.zeros(3, 3, dtype=DT))
    with pytest.raises(ValueError, match="`sigma` must be finite and > 0"):
        PositionMeasurement(t, torch.zeros(2, 3, dtype=DT), sigma=-1.0)
    with pytest.raises(ValueError, match="`sigma` must be a positive float, a vector of 3"):
        PositionMeasurement(t, torch.zeros(2, 3, dtype=DT), sigma=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match="Unknown `robust`='cauchy'"):
        PositionMeasurement(t, torch.zeros(2, 3, dtype=DT), robust="cauchy")
    with pytest.raises(ValueError, match="`t` must be a non-empty 1-D tensor"):
        PositionMeasurement(torch.zeros(2, 2, dtype=DT), torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="`t` contains 1 NaN"):
        PositionMeasurement(torch.tensor([0.1, float("nan")], dtype=DT), torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="exactly one of `R`"):
        PoseMeasurement(t, p=torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="`ranges` must have shape \\(2,\\)"):
        RangeMeasurement(t, torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="`tdoa` must have shape \\(2,\\)"):
        TDOAMeasurement(t, torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT), torch.ones(1, dtype=DT))
    # the two scalar UWB factors share their validation of the tag offset and of sigma
    a3, one2 = torch.zeros(3, dtype=DT), torch.ones(2, dtype=DT)
    for make in (lambda **kw: RangeMeasurement(t, a3, one2, **kw), lambda **kw: TDOAMeasurement(t, a3, a3, one2, **kw)):
        with pytest.raises(ValueError, match="`tag_offset` must have shape \\(2, 3\\) \\(one per measurement"):
            make(tag_offset=torch.zeros(4, 3, dtype=DT))
        with pytest.raises(ValueError, match="`sigma` must be finite and > 0"):
            make(sigma=0.0)
        with pytest.raises(ValueError, match="`sigma` must be a positive float, a vector of 1"):
            make(sigma=[1.0, 2.0, 3.0])
        m = make(sigma=torch.tensor([0.5, 0.25], dtype=DT))
        assert m.offset.shape == (2, 3) and bool((m.offset == 0).all())
        torch.testing.assert_close(m.w, torch.tensor([[2.0], [4.0]], dtype=DT))
    with pytest.raises(ValueError, match="`gravity` must be a 3-vector"):
        IMUMeasurement(t, torch.zeros(2, 3, dtype=DT), torch.zeros(2, 3, dtype=DT), gravity=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="`residual_fn` must be callable"):
        CustomMeasurement(t, None, residual_dim=1)
    with pytest.raises(ValueError, match="Unknown `level`=3"):
        CustomMeasurement(t, lambda st, pr: st["p"], residual_dim=3, level=3)
    with pytest.raises(ValueError, match="`sigma` has unknown keys \\['w'\\]"):
        KnotPrior(0, p=torch.zeros(3, dtype=DT), sigma={"w": 1.0, "p": 1.0})
    with pytest.raises(ValueError, match="missing \\['p'\\]"):
        KnotPrior(0, p=torch.zeros(3, dtype=DT), sigma={"v": 1.0})
    with pytest.raises(ValueError, match="KnotPrior needs at least one of"):
        KnotPrior(0)
    with pytest.raises(TypeError, match="`index` must be an int"):
        KnotPrior(0.5, p=torch.zeros(3, dtype=DT))
    traj = SO3xR3Trajectory(torch.tensor([0.0, 0.5], dtype=DT), prior="wnoa")
    with pytest.raises(ValueError, match="needs the state components \\['a', 'alpha'\\].*use prior='wnoj'"):
        traj.fit([IMUMeasurement(t, torch.zeros(2, 3, dtype=DT), torch.zeros(2, 3, dtype=DT))])
    bad = CustomMeasurement(t, lambda st, pr: st["p"][:, :2], residual_dim=3)
    with pytest.raises(ValueError, match="`residual_fn` must return an \\(M, r\\) = \\(2, 3\\) tensor, got \\(2, 2\\)"):
        traj.fit([bad])
    with pytest.raises(ValueError, match="Global parameter 'b' has size 2 in one measurement and 3"):
        traj.fit([GlobalPrior("b", torch.zeros(2, dtype=DT)), GlobalPrior("b", torch.zeros(3, dtype=DT))])


def test_measurements_accept_numpy_and_convert_with_keyword_only_to():
    t = np.array([0.1, 0.2])
    a = RangeMeasurement(t, np.zeros(3), np.ones(2), tag_offset=np.full(3, 0.1), sigma=np.array([0.5, 0.25]))
    b = RangeMeasurement(
        torch.from_numpy(t),
        torch.zeros(3, dtype=DT),
        torch.ones(2, dtype=DT),
        tag_offset=torch.full((3,), 0.1, dtype=DT),
        sigma=torch.tensor([0.5, 0.25], dtype=DT),
    )
    for k in ("t", "anchors", "d", "offset", "w"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert IMUMeasurement(t, np.zeros((2, 3)), np.zeros((2, 3))).g[2].item() == -9.81  # float64, not rounded
    small = a.to(dtype=torch.float32)
    assert small is not a and small.t.dtype == torch.float32 and a.t.dtype == DT
    with pytest.raises(TypeError):
        a.to(torch.float32)  # keyword-only, as the models' to()
    prior = KnotPrior([0, 1], R=np.eye(3), p=np.zeros(3), sigma=0.1).to(dtype=torch.float32)
    assert prior.means["R"].dtype == prior.means["p"].dtype == torch.float32 and prior.index.dtype == torch.long
    custom = CustomMeasurement(t, lambda st, pr: st["p"], residual_dim=3, params={"c": np.zeros(2)})
    assert custom.to(dtype=torch.float32).params0["c"].dtype == torch.float32


def test_a_sigma_vector_that_could_be_per_axis_or_per_measurement_is_refused():
    r"""The noise stds take a float, ``r`` values (one per component) or ``M`` values (one per measurement). With three
    pose measurements, ``sigma_rot=[0.01, 0.02, 0.03]`` meant per measurement was silently read per axis: the
    whitened residual of measurement 2 was ``e / (0.01, 0.02, 0.03)`` instead of ``e / 0.03``. Such a vector is now
    a ValueError asking for ``(1, 3)`` or ``(3, 1)``; both forms give the weights they name, and equal values (the
    same either way) stay accepted, as does a KnotPrior's vector (per axis, its only documented form)."""
    t = torch.tensor([0.1, 0.4, 0.7], dtype=DT)
    R = so3_exp(torch.tensor([[0.1, 0.2, 0.3]] * 3, dtype=DT))
    p = torch.zeros(3, 3, dtype=DT)
    sig = [0.01, 0.02, 0.03]
    with pytest.raises(ValueError, match=r"`sigma_rot` of 3 different values is ambiguous .* \(1, 3\) .* \(3, 1\)"):
        PoseMeasurement(t, R=R, p=p, sigma_rot=sig)
    with pytest.raises(ValueError, match=r"`sigma` of 3 different values is ambiguous"):
        PositionMeasurement(t, p, sigma=np.array(sig))
    # a KnotPrior's vector sigma is per axis (its documented form), also on three knots
    kp = KnotPrior([0, 1, 2], p=p, sigma={"p": sig})
    torch.testing.assert_close(kp.w, 1.0 / torch.tensor(sig, dtype=DT).expand(3, 3), rtol=1e-15, atol=0)
    state = {"R": torch.eye(3, dtype=DT).expand(3, 3, 3), "p": torch.ones(3, 3, dtype=DT)}
    e = so3_log(R.mT, validate=False)  # the rotation error Log(R_m^T I) of every row
    per_axis = PoseMeasurement(t, R=R, p=p, sigma_rot=[sig], sigma_pos=1.0).residual(state, {})
    per_meas = PoseMeasurement(t, R=R, p=p, sigma_rot=[[x] for x in sig], sigma_pos=1.0).residual(state, {})
    s = torch.tensor(sig, dtype=DT)
    torch.testing.assert_close(per_axis[:, :3], e / s[None, :], rtol=1e-14, atol=0)
    torch.testing.assert_close(per_meas[:, :3], e / s[:, None], rtol=1e-14, atol=0)
    same = PoseMeasurement(t, R=R, p=p, sigma_rot=[0.02] * 3, sigma_pos=1.0).residual(state, {})
    torch.testing.assert_close(same[:, :3], e / 0.02, rtol=1e-14, atol=0)
    # M != r: a vector of M values is per measurement, of r values per component, as before
    four = torch.tensor([0.1, 0.3, 0.5, 0.7], dtype=DT)
    m = PositionMeasurement(four, torch.zeros(4, 3, dtype=DT), sigma=[1.0, 2.0, 4.0, 8.0])
    torch.testing.assert_close(m.w, 1.0 / torch.tensor([[1.0], [2.0], [4.0], [8.0]], dtype=DT).expand(4, 3))


def test_a_global_prior_mean_starts_a_block_only_when_no_measurement_does():
    r"""GlobalPrior says its mean is "also the initial value when no other measurement gives one", but the first
    measurement in the list won: ``[GlobalPrior("imu_bias", 0), IMUMeasurement(..., bias_init=b0)]`` started the
    biases at 0, the reverse order at ``b0``. Both orders now start at ``b0`` (the layout keeps the list's order), and
    a prior alone still gives its mean."""
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    traj = SO3xR3Trajectory(torch.tensor([0.0, 0.5, 1.0], dtype=DT))
    b0 = torch.tensor([0.1, -0.2, 0.3, 0.4, -0.5, 0.6], dtype=DT)
    imu = IMUMeasurement(t, torch.zeros(5, 3, dtype=DT), torch.zeros(5, 3, dtype=DT), bias_init=b0)
    prior = GlobalPrior("imu_bias", torch.zeros(6, dtype=DT), sigma=0.1)
    calib = GlobalPrior("calib", torch.tensor([1.0, 2.0], dtype=DT))
    for ms in ([prior, imu], [imu, prior], [calib, prior, imu]):
        _, g0, layout = traj.build_factors(ms)
        assert torch.equal(g0[layout["imu_bias"]], b0)
    _, g0, layout = traj.build_factors([calib, prior, imu])
    assert list(layout) == ["calib", "imu_bias"] and torch.equal(g0[layout["calib"]], calib.mean)
    _, g0, _ = traj.build_factors([prior])
    assert torch.equal(g0, torch.zeros(6, dtype=DT))
