"""Device and dtype agnosticism: the engine's pieces give the same numbers on every available device.

On a machine without CUDA these run on the CPU only; the GPU check script (benchmarks/gpu_check.sh) runs them on a
GPU, where each CUDA result is compared with the CPU result of the same inputs.
"""

import copy
import warnings

import pytest
import torch
from trajectory_factories import fast_uwb_problem

from gpgeom.botorch.exact_gp import ExactGPModel
from gpgeom.datasets.trajectories import perturbed_knots
from gpgeom.datasets.vector_fields import sphere_vector_field
from gpgeom.engine.factors import Factor
from gpgeom.engine.least_squares import gauss_newton
from gpgeom.engine.statespace import log_marginal_likelihood, posterior
from gpgeom.kernels.markov import MaternMarkovKernel, WNOJKernel
from gpgeom.kernels.spectral import SpectralKernel
from gpgeom.models.rvgp import RVGP
from gpgeom.models.trajectory import SO3xR3Trajectory

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = {torch.float64: 1e-9, torch.float32: 2e-3}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("parallel", [False, True])
@torch.no_grad()
def test_kalman_on_device_matches_cpu_float64(device, dtype, parallel):
    n = 200
    t = torch.sort(torch.rand(n, dtype=torch.float64) * 20).values
    y = torch.sin(t) + 0.1 * torch.randn(n, dtype=torch.float64)
    ref_kernel = MaternMarkovKernel(nu=2.5).double()
    ref = log_marginal_likelihood(ref_kernel, t, y, 0.05, parallel=parallel)
    kernel = MaternMarkovKernel(nu=2.5).to(device=device, dtype=dtype)
    out = log_marginal_likelihood(kernel, t.to(device, dtype), y.to(device, dtype), 0.05, parallel=parallel)
    assert out.device.type == device and out.dtype == dtype
    assert abs(float(out) - float(ref)) <= TOL[dtype] * abs(float(ref))
    post = posterior(WNOJKernel().to(device=device, dtype=dtype), t.to(device, dtype) + 0.1, y.to(device, dtype), 0.05)
    ref_post = posterior(WNOJKernel().double(), t + 0.1, y, 0.05)
    assert torch.allclose(post.mean.cpu().double(), ref_post.mean, atol=50 * TOL[dtype], rtol=50 * TOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_exact_gp_and_spectral_kernel_on_device(device):
    X = torch.rand(30, 2, dtype=torch.float64)
    Y = torch.sin(4 * X[:, :1]) + X[:, 1:] ** 2
    Xt = torch.rand(7, 2, dtype=torch.float64)
    ref = ExactGPModel(X, Y)
    ref.eval()
    model = ExactGPModel(X.to(device), Y.to(device))
    model.load_state_dict(ref.state_dict())
    model.eval()
    m, s = model.predict(Xt.to(device), return_std=True)
    mr, sr = ref.predict(Xt, return_std=True)
    assert m.device.type == device
    assert torch.allclose(m.cpu(), mr, atol=1e-9) and torch.allclose(s.cpu(), sr, atol=1e-9)

    evals = torch.linspace(0, 3, 10, dtype=torch.float64)
    evecs = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))[0]
    k_ref = SpectralKernel(evals, evecs, nu=1.5, dimension=1)
    k_dev = SpectralKernel(evals.to(device), evecs.to(device), nu=1.5, dimension=1)
    idx = torch.arange(10, dtype=torch.float64)[:, None]
    K = k_dev(idx.to(device)).to_dense()
    assert K.device.type == device
    assert torch.allclose(K.detach().cpu(), k_ref(idx).to_dense().detach(), atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_gauss_newton_linear_chain_on_device(device):
    K, s = 40, 2
    truth = torch.cumsum(torch.randn(K, s, dtype=torch.float64), 0)
    meas = truth + 0.1 * torch.randn(K, s, dtype=torch.float64)
    idx_pair = torch.stack([torch.arange(K - 1), torch.arange(1, K)], -1)

    def solve(dev):
        m = meas.to(dev)
        factors = [
            Factor(torch.arange(K)[:, None].to(dev), lambda x, g: (x[:, 0] - m) / 0.1),
            Factor(idx_pair.to(dev), lambda x, g: x[:, 1] - x[:, 0]),
        ]
        return gauss_newton(torch.zeros(K, s, dtype=torch.float64, device=dev), factors, method="gn").states

    out = solve(device)
    assert out.device.type == device
    assert torch.allclose(out.cpu(), solve("cpu"), atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_closed_form_exact_mll_on_device_matches_cpu_float64(device, dtype):
    from gpgeom.engine.exact_mll import exact_mll_loss

    g = torch.Generator().manual_seed(0)
    X = torch.rand(60, 3, generator=g, dtype=torch.float64)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X.sum(-1)], -1) + 0.05 * torch.randn(60, 2, generator=g, dtype=X.dtype)
    ref_model = ExactGPModel(X, Y)
    ref_model.train()
    ref = exact_mll_loss(ref_model)()
    ref_grads = torch.autograd.grad(ref.sum(), [p for p in ref_model.parameters() if p.requires_grad])
    model = ExactGPModel(X.to(device, dtype), Y.to(device, dtype))
    model.train()
    out = exact_mll_loss(model)(batch_indices=[0, 1])
    assert out.device.type == device and out.dtype == dtype
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), rtol=TOL[dtype], atol=TOL[dtype])
    grads = torch.autograd.grad(out.sum(), [p for p in model.parameters() if p.requires_grad])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.cpu().double(), b, rtol=10 * TOL[dtype], atol=10 * TOL[dtype])
    fitted = ExactGPModel(X.to(device, dtype), Y.to(device, dtype)).fit(restarts=1, seed=0, progress=False)
    # the kept state is at least as good as every attempt (whether it is assembled per member or one attempt wins
    # outright depends on rounding, so it is not asserted)
    res = fitted.fit_result_
    assert res.loss <= min(res.final_losses) + 10 * TOL[dtype] * (1 + abs(res.loss))
    assert torch.isfinite(fitted.predict(X.to(device, dtype))).all()


@pytest.mark.parametrize("device", DEVICES)
def test_trajectory_fit_on_device_matches_cpu(device):
    r"""A UWB trajectory fit (third-order prior, state size 18) on the device: on a GPU the banded factorisation is
    the odd-even elimination, on the CPU LAPACK's; the knots and covariances agree."""
    truth, meas = fast_uwb_problem(3.0)

    def fit(dev):
        traj = SO3xR3Trajectory.uniform(0.0, 3.0, 0.1, qc_rot=10.0, qc_pos=10.0, device=dev)
        traj.set_knots(**perturbed_knots(truth, traj.knot_times.cpu(), sigma_rot=0.1, sigma_pos=0.2, seed=2))
        return traj.fit([meas], max_iter=50, compute_covariances=True)

    out, ref = fit(device), fit("cpu")
    assert out.knots.device.type == device
    torch.testing.assert_close(out.knots.cpu(), ref.knots, rtol=0, atol=1e-8)
    scale = float(ref.covariances_.abs().max())
    torch.testing.assert_close(out.covariances_.cpu(), ref.covariances_, rtol=0, atol=1e-8 * scale)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_trajectory_far_from_zero_on_device_matches_cpu_float64(device):
    r"""Times far from :math:`t = 0` in float32 on the device: the start from the measurements (``init="auto"``) and
    the fit keep their time arithmetic in float64 (the bracketing, :math:`t - t_k`, the knot spacings and the range
    windows), so a float32 fit at :math:`t \approx 10^6` s reaches the minimum of the CPU float64 fit from its own
    start (in float32 times, 1e6 s is held to 0.0625 s)."""
    _, ranges = fast_uwb_problem(3.0)
    ranges.t = ranges.t + 1e6
    kt = 1e6 + 0.1 * torch.arange(31, dtype=torch.float64)

    def fit(dev, dtype):
        return SO3xR3Trajectory(kt, qc_rot=10.0, qc_pos=10.0, dtype=dtype, device=dev).fit([ranges])

    out, ref = fit(device, torch.float32), fit("cpu", torch.float64)
    assert out.knots.device.type == device and out.knots.dtype == torch.float32
    assert "lever arms" in out.fit_result_.init
    assert out.fit_result_.cost == pytest.approx(ref.fit_result_.cost, rel=1e-5)
    assert float((out.p.cpu().double() - ref.p).norm(dim=-1).max()) < 1e-3
    torch.testing.assert_close(out.R.cpu().double(), ref.R, rtol=0, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_rvgp_noise_blocks_on_device_match_cpu(device):
    r"""RVGP's observation noise :math:`\sigma^2_{obs} P_x + \nu (I - P_x)` (per-input noise blocks of the shared
    BoTorch surrogate) on the device: the predictive of a new observation, the noisy posterior's covariance and
    conditioning on new observations give the CPU numbers."""
    sample = sphere_vector_field(200, "mixed", seed=3)
    X, V = sample.points, sample.vectors
    rng = torch.Generator().manual_seed(3)
    tr = torch.randperm(200, generator=rng)[:80].numpy()
    gp = RVGP(X, n_eigenpairs=30, k_neighbors=10).fit(tr, V[tr] + 0.05 * torch.randn(80, 3, generator=rng).numpy())
    q = torch.arange(0, 200, 7, dtype=torch.float64)[:, None]
    extra = torch.tensor([[1.0], [5.0]], dtype=torch.float64)
    ye = torch.as_tensor(V[[1, 5]], dtype=torch.float64)

    def numbers(model, dev):
        mean, sd = model.predict(q[:, 0].long().numpy(), return_std=True, observation_noise=True)
        cov = model.posterior(q.to(dev), observation_noise=True).distribution.covariance_matrix
        cond = model.condition_on_observations(extra.to(dev), ye.to(dev)).posterior(q.to(dev)).mean
        return [t.detach().cpu() for t in (mean, sd, cov, cond)]

    ref = numbers(gp, "cpu")
    out = numbers(gp.to(device=device), device)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_funbat_sweep_hyperparameter_steps_on_device_match_cpu(device):
    r"""FunBaT's ``hyper_method="sweep"`` (the default above ``SWEEP_THRESHOLD`` coordinates) keeps its iRprop step
    sizes and last signs on the model's device: they were made on the CPU, and the first step multiplied them with
    the gradient's signs on the GPU (a device-mismatch error on CUDA)."""
    from gpgeom.datasets.tensors import make_synthetic_tensor
    from gpgeom.errors import ConvergenceWarning
    from gpgeom.models.funbat import FunBaT

    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, noise_sd=0.05, seed=13)

    def fit(dev):
        with warnings.catch_warnings():  # four sweeps: not converged
            warnings.simplefilter("ignore", ConvergenceWarning)
            m = FunBaT(2, max_sweeps=4, n_restarts=0, hyper_method="sweep", hyper_every=1, seed=0)
            return m.fit(d.X_train.to(dev), d.y_train.to(dev))

    out, ref = fit(device), fit("cpu")
    assert out.device.type == device and out._rprop.device.type == device
    assert bool(out._rprop[1].abs().sum() > 0)  # steps were taken (their last signs are recorded)
    for ko, kr in zip(out.kernels, ref.kernels, strict=True):
        torch.testing.assert_close(ko.lengthscale.detach().cpu(), kr.lengthscale.detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(ko.variance.detach().cpu(), kr.variance.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(out.predict(d.X_test.to(device)).cpu(), ref.predict(d.X_test), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_generators_on_the_device_are_drawn_on_their_device(device):
    r"""A ``torch.Generator`` on the model's device serves ``random_reinitialize`` (restarts) and the minibatches of
    ``LowRankSpectralGP``: the draws were made with the generator on the CPU (an error for a CUDA generator)."""
    from gpgeom.botorch.low_rank import Minibatches
    from gpgeom.engine.attempts import random_reinitialize

    X = torch.rand(20, 2, dtype=torch.float64, device=device)
    model = ExactGPModel(X, X.sum(-1, keepdim=True))
    before = [p.detach().clone() for p in model.parameters()]
    random_reinitialize(model, torch.Generator(device=device).manual_seed(0))
    after = list(model.parameters())
    assert all(p.device.type == device for p in after)
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True))

    index = torch.arange(10, device=device)
    batches = list(Minibatches(index, 2.0 * index[:, None], 4, torch.Generator(device=device).manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = torch.cat([b[0] for b in batches])
    assert seen.device.type == device and sorted(seen.tolist()) == list(range(10))
    assert all(torch.equal(y[:, 0], 2.0 * i) for i, y in batches)


@pytest.mark.parametrize("device", DEVICES)
def test_trajectory_prior_kernel_lives_on_the_trajectory_device(device):
    r"""``prior_kernel`` of a trajectory on the device is on that device (it was always on the CPU, so evaluating it
    at the trajectory's own knot times failed on CUDA), float64, with the CPU trajectory's covariance."""
    kt = 0.1784 + torch.tensor([0.0, 0.2, 0.45, 0.7], dtype=torch.float64)
    traj = SO3xR3Trajectory(kt, qc_rot=0.5, qc_pos=3.0, device=device)
    ref = SO3xR3Trajectory(kt, qc_rot=0.5, qc_pos=3.0).prior_kernel("pos")
    with torch.no_grad():
        k = traj.prior_kernel("pos")
        assert k.t0.device.type == device and k.qc.device.type == device and k.qc.dtype == torch.float64
        K = k(traj.knot_times[:, None]).to_dense()
        assert K.device.type == device
        torch.testing.assert_close(K.cpu(), ref(kt[:, None]).to_dense(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_rgnp_trained_on_a_range_of_grid_sizes_runs_on_the_device(device):
    r"""RGNP with ``n_points=(lo, hi)`` on the device: the grid sizes are drawn on the host (or on a device
    generator's device), the count input ``log(n / n_ref)`` comes from the mask on the device, and the padded posterior
    equals each set alone (against the CPU model of the same weights)."""
    from gpgeom.models.rgnp import RGNP
    from gpgeom.pde import NonlinearPoisson1D

    gic = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4,), mlp_hidden=(8,), grid_size=8)
    cpu = RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=gic, batch_size=2, n_points=(4, 40),
                           seed=0).fit(3, progress=False, seed=0)  # fmt: skip
    model = copy.deepcopy(cpu).to(device=device)
    grid = model.sample_grid(2, generator=torch.Generator(device=device).manual_seed(1))
    assert grid.device.type == device and 4 <= grid.shape[1] <= 40
    x = torch.rand(2, 30, 1, dtype=torch.float64) * 2 - 1
    u = torch.rand(2, 30, dtype=torch.float64)
    w = torch.tensor([1.5], dtype=torch.float64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[0, 12:] = False
    mean, std = model.predict_inverse(x.to(device), u.to(device), w.to(device), mask=mask.to(device), return_std=True)
    assert mean.device.type == device
    ref = cpu.predict_inverse(x, u, w, mask=mask, return_std=True)
    torch.testing.assert_close((mean.cpu(), std.cpu()), ref, rtol=1e-9, atol=1e-12)
    alone = cpu.predict_inverse(x[:1, :12], u[:1, :12], w, return_std=True)
    torch.testing.assert_close((ref[0][:1], ref[1][:1]), alone, rtol=1e-12, atol=1e-12)
