r"""float32 audit of the public models: a float64 model moved with ``to(dtype=torch.float32)`` and a model fitted to
float32 data predict float32 (never silently float64), finite, with positive variances also at the training points
(where the cancellation in :math:`k(x, x) - k_*^\top K^{-1} k_*` is worst), close to the float64 predictions; mixed
dtypes follow gpgeom's one rule (inputs converted to the model's dtype); a saved float32 model loads back bitwise.

The tolerances: with the same hyperparameters, a float32 prediction is the float64 one up to float32 rounding
(:math:`\epsilon_{32} \approx 1.2 \times 10^{-7}`) amplified by the conditioning of the training covariance, at most
:math:`\kappa \epsilon_{32}` relative to the signal for the means; the variances lose
:math:`\kappa \epsilon_{32} k(x, x)` absolutely, so their relative error is largest where they are smallest (at the
training points, of the order of the noise).
"""

import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from botorch.sampling import SobolQMCNormalSampler

from gpgeom import MMGP, RGNP, ExactGPModel, FunBaT, SE3Trajectory, SO3xR3Trajectory, load
from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.errors import ConvergenceWarning
from gpgeom.pde import NonlinearPoisson1D

sys.path.insert(0, str(Path(__file__).parent))
from mesh_factories import notched_plate_arrays  # noqa: E402
from trajectory_factories import fast_uwb_problem  # noqa: E402

F32, F64 = torch.float32, torch.float64


def _problem(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Two smooth outputs of two inputs with noise of std 0.01 (float64): ``X`` ``(n, 2)``, ``Y`` ``(n, 2)``."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, 2, dtype=F64, generator=g)
    Y = torch.stack([torch.sin(6 * X[:, 0]) + X[:, 1] ** 2, torch.cos(4 * X[:, 1])], -1)
    return X, Y + 0.01 * torch.randn(n, 2, dtype=F64, generator=g)


@pytest.fixture(scope="module")
def exact64():
    X, Y = _problem()
    return ExactGPModel(X, Y).fit(max_iter=60)


def test_exact_gp_moved_to_float32_predicts_the_float64_moments_with_positive_variances(exact64):
    r"""The moved model (same hyperparameters; fitted noise variance 2e-4 of the standardised outputs, so the
    training covariance's condition number is about 1e5 and :math:`\kappa \epsilon_{32} \approx 10^{-2}`): means
    within 1e-3 of the outputs' scale, standard deviations within 3 % relative (measured 2.0e-4 and 1.0 %, the
    largest at the training points), the smallest variance positive at the training points."""
    X, Y = _problem()
    Q = torch.cat([X, torch.rand(20, 2, dtype=F64, generator=torch.Generator().manual_seed(1))])
    m32 = copy.deepcopy(exact64).to(dtype=F32)
    mu, sd = m32.predict(Q.float(), return_std=True)
    mu64, sd64 = exact64.predict(Q, return_std=True)
    assert mu.dtype == sd.dtype == F32 and bool(torch.isfinite(mu).all() and torch.isfinite(sd).all())
    assert float((mu.double() - mu64).abs().max()) <= 1e-3 * float(Y.std(0).max())
    assert float(((sd.double() - sd64) / sd64).abs().max()) <= 3e-2
    assert float(sd[: X.shape[0]].min()) > 0
    assert float(m32.posterior(X.float()).variance.min()) > 0


def test_a_float64_model_moved_to_float32_refits():
    r"""``to(dtype=torch.float32)`` left BoTorch's untransformed training inputs (kept for training mode) in float64:
    a refit of the moved model raised "expected scalar type Float but found Double". Now it refits in float32, to
    the float64 fit's predictions (the same data rounded; means within 2e-3 of the outputs' scale, measured
    4.8e-4)."""
    X, Y = _problem()
    m64 = ExactGPModel(X, Y).fit(max_iter=60)
    m32 = copy.deepcopy(m64).to(dtype=F32).fit(max_iter=60)
    assert m32.train_inputs[0].dtype == F32
    mu = m32.predict(X.float())
    assert mu.dtype == F32
    assert float((mu.double() - m64.predict(X)).abs().max()) <= 2e-3 * float(Y.std(0).max())


def test_exact_gp_posterior_and_conditioning_convert_inputs_to_the_model_dtype(exact64):
    r"""A float32 model's ``posterior``, ``condition_on_observations``, ``fantasize`` and call (eval mode) given float64
    tensors raised "expected m1 and m2 to have the same dtype" from inside torch (``predict`` converted them). Now
    they are converted to the model's dtype as in ``predict``: the results are those of the float32 tensors,
    bitwise."""
    X, Y = _problem()
    m32 = copy.deepcopy(exact64).to(dtype=F32)
    Xq = torch.rand(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    a, b = m32.posterior(Xq), m32.posterior(Xq.float())
    assert a.mean.dtype == F32 and torch.equal(a.mean, b.mean) and torch.equal(a.variance, b.variance)
    c64 = m32.condition_on_observations(Xq[:2], Y[:2]).posterior(Xq.float())
    c32 = m32.condition_on_observations(Xq[:2].float(), Y[:2].float()).posterior(Xq.float())
    assert torch.equal(c64.mean, c32.mean) and torch.equal(c64.variance, c32.variance)
    sampler = SobolQMCNormalSampler(torch.Size([2]), seed=0)
    f = m32.fantasize(Xq[:2], sampler=sampler).posterior(Xq.float())
    assert f.mean.dtype == F32 and bool(torch.isfinite(f.mean).all())
    m32.eval()
    assert torch.equal(m32(Xq).mean, m32(Xq.float()).mean)  # GPyTorch's call in eval mode, likewise
    # and the other way round, a float64 model given float32 tensors: float64 results
    assert exact64.posterior(Xq.float()).mean.dtype == F64


def test_a_float32_model_converts_a_float64_observation_noise():
    r"""The ``observation_noise`` tensor of ``posterior`` (BoTorch's, in the outcome-transformed units) follows the
    same rule: a float64 one made a float32 model's variance float64 (a float32 mean beside it) and a fixed-noise
    float32 model's ``fantasize(..., observation_noise=<float64>)`` raised "expected m1 and m2 to have the same
    dtype". Now the results are those of the float32 noise, bitwise, and follow the float64 model's (variance within
    1e-5, measured 2.4e-7; fantasies from the same Sobol draws within 1e-3 of the outputs' scale)."""
    X, Y = _problem(20)
    Xq = torch.rand(4, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    for Yvar in (None, torch.full_like(Y, 1e-3)):
        m64 = ExactGPModel(X, Y, Yvar).fit(max_iter=20, seed=0, progress=False)
        m32 = copy.deepcopy(m64).to(dtype=F32)
        noise = torch.full((4, 2), 1e-2, dtype=F64)
        a, b, ref = (
            m.posterior(Xq, observation_noise=v) for m, v in ((m32, noise), (m32, noise.float()), (m64, noise))
        )
        assert a.variance.dtype == F32 and torch.equal(a.variance, b.variance) and torch.equal(a.mean, b.mean)
        torch.testing.assert_close(a.variance.double(), ref.variance, rtol=0, atol=1e-5)
        if Yvar is not None:
            fant = [
                m.fantasize(Xq[:2], SobolQMCNormalSampler(torch.Size([2]), seed=0), observation_noise=noise[:2])
                for m in (m32, m64)
            ]
            got, want = (f.posterior(Xq).mean.detach() for f in fant)
            assert got.dtype == F32
            assert float((got.double() - want).abs().max()) <= 1e-3 * float(Y.std(0).max())


def test_a_moved_exact_gp_loads_back_bitwise(exact64, tmp_path):
    r"""A float64 model moved to float32 and saved loaded back with its standardised targets and transformed inputs
    recomputed in float32 from the rounded data (its own are the float64 ones rounded): predictions 5.5e-5 apart
    (means) on this problem. The file now holds the training tensors (and a fixed noise) as the model holds them:
    bitwise equal. A model fitted in float32 loads back bitwise as before."""
    X, Y = _problem()
    Q = torch.rand(10, 2, dtype=F32, generator=torch.Generator().manual_seed(3))
    fitted32 = ExactGPModel(X.float(), Y.float())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # botorch's input-scaling warnings about float32 data
        fitted32.fit(max_iter=30)
    fixed = ExactGPModel(X, Y, torch.linspace(1e-4, 2e-4, Y.numel(), dtype=F64).reshape(Y.shape)).fit(max_iter=30)
    for model in (copy.deepcopy(exact64).to(dtype=F32), fitted32, fixed.to(dtype=F32)):
        model.save(tmp_path / "m.pt")
        back = load(tmp_path / "m.pt")
        a, b = model.predict(Q, return_std=True), back.predict(Q, return_std=True)
        assert b[0].dtype == F32 and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        a, b = (m.predict(Q, return_std=True, observation_noise=True)[1] for m in (model, back))
        assert torch.equal(a, b) and torch.equal(model.likelihood.noise, back.likelihood.noise)


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    return notched_plate_arrays(tmp_path_factory.mktemp("plates"), 30, 8, 0.1)


def test_a_moved_mmgp_loads_back_bitwise_and_follows_the_float64_model(plates, tmp_path):
    r"""MMGP's GP stage (one ExactGPModel per field) had the same defect: a float64 model moved to float32 loaded
    back with predictions up to 7.4e-6 (scalars) and 1.2e-6 (fields) apart. Now bitwise. The moved model predicts
    the float64 fields and scalars within 1e-4 of their scale (measured 1.5e-6 and 2.6e-6 relative), standard
    deviations never negative nor NaN (zero only where the float64 ones are zero: nodes the snapshots never move)."""
    (M, mu, U, w), (Mt, mut, _, _) = plates
    m64 = MMGP(n_modes_geometry=8, n_modes_fields=8, restarts=0, max_iter=50, seed=0, floater_start=(0.0, 0.0))
    m64.fit(M, mu, U, w, progress=False)
    m32 = copy.deepcopy(m64).to(dtype=F32)
    for meshes, scalars in ((Mt[:2], mut[:2]), (M[:2], mu[:2])):  # new meshes and training ones
        a, r = m32.predict(meshes, scalars, return_std=True), m64.predict(meshes, scalars, return_std=True)
        assert a.scalars.dtype == a.scalars_std.dtype == F32
        scale = r.scalars.abs().amax(0)
        assert bool(((a.scalars.double() - r.scalars).abs() <= 1e-4 * scale).all())
        assert float(a.scalars_std.min()) > 0
        for f, fs, g, gs in zip(a.fields, a.fields_std, r.fields, r.fields_std, strict=True):
            assert f.dtype == fs.dtype == F32 and not bool(torch.isnan(fs).any())
            span = g.amax(0) - g.amin(0)
            assert bool(((f.double() - g).abs() <= 1e-4 * span).all())
            assert bool(((fs.double() - gs).abs() <= 1e-4 * span).all())
            assert bool((fs[gs > 0] > 0).all())
    m32.save(tmp_path / "m.pt")
    back = load(tmp_path / "m.pt")
    a, b = m32.predict(Mt[:2], mut[:2], return_std=True), back.predict(Mt[:2], mut[:2], return_std=True)
    assert torch.equal(a.scalars, b.scalars) and torch.equal(a.scalars_std, b.scalars_std)
    assert all(torch.equal(x, y) for x, y in zip(a.fields + a.fields_std, b.fields + b.fields_std, strict=True))


SMALL_GIC = dict(lift_channels=6, lift_hidden=(12,), cnn_channels=(8, 8), mlp_hidden=(32,), grid_size=12)


def _rgnp(dtype):
    return RGNP.from_family(
        NonlinearPoisson1D(), hidden=(16, 16), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, rank=2, dtype=dtype, seed=0
    )


def test_moved_rgnp_predicts_the_float64_moments_and_loads_back_bitwise(tmp_path):
    r"""An RGNP trained in float64 and moved to float32: the forward mean within 1e-5 of its scale and the standard
    deviation within 1e-5 relative (measured 1.5e-7 and 3.4e-7) off the hard boundary, within 1e-6 absolutely on it
    (the exact value is 0: float64 gives 2.9e-15, float32 2.1e-7), inverse moments as close; a float32 file loads
    back bitwise."""
    m64 = _rgnp(F64).fit(3, progress=False, seed=0)
    m64.calibrate(n_fields=4, seed=1)
    m32 = copy.deepcopy(m64).to(dtype=F32)
    z, w = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5], dtype=F64), torch.tensor([1.5], dtype=F64)
    x = torch.linspace(-1, 1, 21, dtype=F64)[:, None]
    mu, sd = m32.predict(z, w, x, return_std=True)  # float64 inputs, converted
    mu64, sd64 = m64.predict(z, w, x, return_std=True)
    assert mu.dtype == sd.dtype == F32
    assert float((mu.double() - mu64).abs().max()) <= 1e-5 * float(mu64.abs().max())
    inner = slice(1, -1)
    assert float(((sd.double() - sd64) / sd64)[:, inner].abs().max()) <= 1e-5
    assert float((sd.double() - sd64).abs().max()) <= 1e-6 and not bool(torch.isnan(sd).any())
    xr = m64.sample_grid(2, 20, generator=torch.Generator().manual_seed(3))
    ur = 0.1 * torch.sin(xr[..., 0])
    zm, zs = m64.predict_inverse(xr, ur, w, return_std=True)
    zm32, zs32 = m32.predict_inverse(xr, ur, w, return_std=True)
    assert zm32.dtype == F32 and float(zs32.min()) > 0
    torch.testing.assert_close(zm32.double(), zm, rtol=0, atol=1e-5 * float(zs.min()))
    torch.testing.assert_close(zs32.double(), zs, rtol=1e-5, atol=0)
    m32.save(tmp_path / "r.pt")
    back = load(tmp_path / "r.pt")
    b = back.predict(z.float(), w.float(), x.float(), return_std=True)
    assert torch.equal(b[0], mu) and torch.equal(b[1], sd)


@pytest.mark.parametrize("cls", [SO3xR3Trajectory, SE3Trajectory])
def test_trajectories_in_float32_follow_float64_with_positive_stds_and_load_back_bitwise(cls, tmp_path):
    r"""A UWB fit (knots 0.25 s apart) in float32 and a float64 fit moved to float32: positions within 1e-4 m of
    the float64 fit (measured 5.5e-5, 9.4e-7 for the moved one), every standard deviation (at the knots too)
    positive and within 1e-3 relative (measured 2.8e-4); the float32 files load back bitwise; float32 query times
    to a float64 trajectory and float64 ones to a float32 trajectory are converted."""
    _, meas = fast_uwb_problem(3.0)
    kt = 0.25 * torch.arange(13, dtype=F64)

    def fit(dtype):
        return cls(kt, qc_rot=10.0, qc_pos=10.0, dtype=dtype).fit([meas], compute_covariances=True)

    r64 = fit(F64)
    t = torch.cat([torch.linspace(0.05, 2.95, 30, dtype=F64), kt])
    s64, sd64 = r64.predict(t, return_std=True)
    for model in (fit(F32), copy.deepcopy(r64).to(dtype=F32)):
        s, sd = model.predict(t, return_std=True)  # float64 times, converted
        assert s.p.dtype == s.R.dtype == F32
        assert float((s.p.double() - s64.p).abs().max()) <= 1e-4
        for name in ("R", "omega", "alpha", "p", "v", "a"):
            a, b = getattr(sd, name), getattr(sd64, name)
            assert a.dtype == F32 and float(a.min()) > 0, name
            assert float(((a.double() - b) / b).abs().max()) <= 1e-3, name
        model.save(tmp_path / "t.pt")
        back = load(tmp_path / "t.pt")
        (b, bsd), (a, asd) = back.predict(t.float(), return_std=True), model.predict(t.float(), return_std=True)
        assert torch.equal(a.p, b.p) and torch.equal(a.R, b.R) and torch.equal(asd.p, bsd.p)
    assert r64.predict(t.float()).p.dtype == F64


def test_funbat_in_float32_follows_float64_with_positive_stds_and_loads_back_bitwise(tmp_path):
    r"""FunBaT fitted to float32 data and a float64 fit moved to float32: means within 1e-3 of the targets' scale
    (measured 1.6e-5 and 6.9e-7), standard deviations within 1e-2 relative (measured 9.4e-4: the variance's
    cancellation) and positive at the training entries; mixed-dtype queries converted; float32 files bitwise."""
    d = make_synthetic_tensor(200, 50, rank=2, n_coords=15, seed=6)
    kw = dict(max_sweeps=8, learn_hyperparameters=True, hyper_every=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m64 = FunBaT(2, **kw).fit(d.X_train, d.y_train)
        m32 = FunBaT(2, dtype=F32, **kw).fit(d.X_train.float(), d.y_train.float())
    Q = torch.cat([d.X_train, d.X_test])
    p64, s64 = m64.predict(Q, return_std=True)
    scale = float(d.y_train.std())
    for model in (m32, copy.deepcopy(m64).to(dtype=F32)):
        p, s = model.predict(Q, return_std=True)  # float64 coordinates, converted
        assert p.dtype == s.dtype == F32 and float(s.min()) > 0
        assert float((p.double() - p64).abs().max()) <= 1e-3 * scale
        assert float(((s.double() - s64) / s64).abs().max()) <= 1e-2
        model.save(tmp_path / "f.pt")
        back = load(tmp_path / "f.pt")
        a, b = model.predict(Q.float(), return_std=True), back.predict(Q.float(), return_std=True)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert m64.predict(np.asarray(Q.float())).dtype == F64
