import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pyro
import pytest
import torch
from gpytorch.distributions import MultivariateNormal

from gpgeom._io import write_model_file
from gpgeom.engine.variational import elbo_loss
from gpgeom.errors import ModelFileError, NotFittedError, UncalibratedWarning
from gpgeom.metrics import calibration_summary
from gpgeom.models.rgnp import RGNP, coverage, nse, pointwise_grad
from gpgeom.models.rgnp._checks import prepare_data
from gpgeom.pde import NonlinearPoisson1D, ViscousBurgers, burgers_cole_hopf, register_family

SMALL_GIC = dict(lift_channels=6, lift_hidden=(12,), cnn_channels=(8, 8), mlp_hidden=(32,), grid_size=12)


def _poisson_model(**kw):
    opts = dict(hidden=(48, 48, 48), n_freqs=16, gicnet=SMALL_GIC, batch_size=8, dtype=torch.float32)
    opts.update(kw)
    return RGNP.from_family(NonlinearPoisson1D(), **opts)


def _helmholtz_residual(u, x, z, w):
    u_xx = pointwise_grad(pointwise_grad(u, x)[..., 0], x)[..., 0]
    return u_xx + z[:, :1] ** 2 * u


def test_residual_of_exact_solutions_vanishes():
    # a user-defined PDE: u'' + z^2 u = 0, exact solution sin(z x) + w cos(z x)
    m = RGNP(_helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [3.0]), w_bounds=([0.0], [1.0])).double()
    z = torch.tensor([[0.7], [2.5]], dtype=torch.float64)
    w = torch.tensor([[0.2], [0.9]], dtype=torch.float64)
    x = torch.rand(2, 17, 1, dtype=torch.float64) * 2 - 1
    r = m.residual(lambda xx: torch.sin(z * xx[..., 0]) + w * torch.cos(z * xx[..., 0]), x, z, w)
    assert r.shape == (2, 17) and float(r.detach().abs().max()) < 1e-12
    # the Burgers family through its Cole-Hopf solution (a finite sum of heat solutions: residual ~ round-off)
    fam = ViscousBurgers()
    mb = RGNP.from_family(fam, gicnet=SMALL_GIC).double()
    zb = torch.tensor([[0.05, 0.8]], dtype=torch.float64)
    wb = torch.tensor([[1.3]], dtype=torch.float64)
    xb = torch.rand(1, 20, 2, dtype=torch.float64) * torch.tensor([1.0, 0.9]) + torch.tensor([0.0, 0.1])

    def u_fn(xx):
        return burgers_cole_hopf(xx[..., 0], xx[..., 1], 0.05, 0.8, 1.3)

    rb = mb.residual(u_fn, xb, zb, wb)
    scale = float(pointwise_grad(u_fn(xb.requires_grad_(True)), xb).detach().abs().max())
    assert float(rb.detach().abs().max()) < 1e-9 * max(scale, 1.0)


def test_sampled_field_derivatives_are_pointwise():
    m = _poisson_model(rank=2).double()
    z, w = m.sample_params(3)
    x = m.sample_grid(3, 11).requires_grad_(True)
    q = m.forward_dist(z, w, x)
    eps_k = torch.randn(3, 2, dtype=torch.float64)
    eps = torch.randn(3, 11, dtype=torch.float64)

    def sample(xx):
        qq = m.forward_dist(z, w, xx)
        return qq.loc + (qq.cov_factor @ eps_k[..., None])[..., 0] + qq.cov_diag.sqrt() * eps

    u = sample(x)
    du = pointwise_grad(u, x)[..., 0]
    h = 1e-6
    fd = (sample(x.detach() + h) - sample(x.detach() - h)) / (2 * h)
    torch.testing.assert_close(du, fd, rtol=1e-5, atol=1e-6)
    assert q.rank == 2


def test_elbo_equals_hand_computed_expression():
    m = RGNP(
        _helmholtz_residual,
        domain=(-1.0, 1.0),
        z_bounds=([0.5, -1.0], [3.0, 1.0]),
        w_bounds=([0.0], [1.0]),
        rank=2,
        inverse_rank=1,
        residual_scale=0.3,
        hidden=(16, 16),
        n_freqs=4,
        gicnet=SMALL_GIC,
        lift=lambda x, w: (w * x[..., 0], 1 - x[..., 0] ** 2),
    ).double()
    B, n = 2, 5
    x = m.sample_grid(B, n).requires_grad_(True)
    _, w = m.sample_params(B)
    pyro.set_rng_seed(7)
    value = elbo_loss(m.model, m.guide, x, w)
    pyro.set_rng_seed(7)
    tr = pyro.poutine.trace(m.guide).get_trace(x, w)
    z, u_hat = tr.nodes["z"]["value"], tr.nodes["u"]["value"]
    # hand-computed: sum_i log N(r_i; 0, eps^2) + log q_beta(z | u, w) - log q_alpha(u_hat | z, w, x)
    u = w * x[..., 0] + (1 - x[..., 0] ** 2) * u_hat
    u_xx = torch.autograd.grad(torch.autograd.grad(u.sum(), x, create_graph=True)[0].sum(), x, create_graph=True)[0]
    r = u_xx[..., 0] + z[:, :1] ** 2 * u
    eps = float(m.residual_scale)  # 0.3 through exp(log(0.3))
    log_r = (-0.5 * r**2 / eps**2 - 0.5 * math.log(2 * math.pi * eps**2)).sum(-1)

    def dense_log_normal(v, dist):
        cov = torch.diag_embed(dist.cov_diag) + dist.cov_factor @ dist.cov_factor.transpose(-1, -2)
        diff = v - dist.loc
        sol = torch.linalg.solve(cov, diff[..., None])[..., 0]
        k = v.shape[-1]
        return -0.5 * (diff * sol).sum(-1) - 0.5 * torch.logdet(cov) - 0.5 * k * math.log(2 * math.pi)

    log_beta = dense_log_normal(z, m.inverse_dist(x, u, w))
    log_alpha = dense_log_normal(u_hat, m.forward_dist(z, w, x))
    hand = (log_r + log_beta - log_alpha).sum()
    torch.testing.assert_close(-value, hand, rtol=1e-9, atol=1e-8)
    pyro.set_rng_seed(7)
    terms = m.elbo_terms(x, w)
    torch.testing.assert_close(terms["elbo"], hand, rtol=1e-9, atol=1e-8)


def test_short_training_raises_elbo_and_lowers_forward_error():
    fam = NonlinearPoisson1D()
    rng = np.random.default_rng(5)
    z, w = fam.sample_params(4, rng)
    xt = np.linspace(-1, 1, 41)[:, None]
    ut = torch.tensor(np.stack([fam.solve(z[i], w[i], xt) for i in range(4)]), dtype=torch.float32)
    z, w, xt = (torch.tensor(a, dtype=torch.float32) for a in (z, w, xt))
    m = _poisson_model()
    with pytest.raises(NotFittedError):
        m.predict(z, w, xt)
    with torch.no_grad():  # the untrained network, through the distribution that predict() returns the mean of
        errors = [float(nse(m.field_dist(z, w, xt[None].expand(4, -1, -1)).mean, ut).mean())]

    def err():
        mu = m.predict(z, w, xt)
        assert mu.shape == (4, 41, 1)
        return float(nse(mu[..., 0], ut).mean())

    losses = []
    for k in range(3):
        assert m.fit(100, lr=3e-3, progress=False, seed=k) is m
        losses += m.fit_result_.history[0]
        errors.append(err())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.2 * first  # the ELBO rises
    assert errors[-1] < 0.3 * errors[0] and errors[-1] < 0.2, errors  # forward error falls in trend
    assert sum(b < a for a, b in zip(errors, errors[1:])) >= 2, errors
    assert m.fit_history == losses
    mu, sd = m.predict(z, w, xt, return_std=True)
    assert mu.shape == sd.shape == (4, 41, 1)
    # the hard boundary condition u(+-1) = 0 (lift d = cos(pi x / 2)): mean and std vanish there (float32 round-off)
    assert float(mu[:, [0, -1]].abs().max()) < 1e-6 and float(sd[:, [0, -1]].max()) < 1e-6
    assert bool((sd[:, 1:-1] > 0).all())
    # the bands, measured over seeds after these 300 steps: q_alpha alone is overconfident (2-sigma coverage 0-0.13,
    # its std about 1/25 of the error, as in benchmarks/results/rgnp_*.md; calibrate() is what fixes that, see the
    # tests of calibrated bands below) but its std follows the error: 88-94 % of the nodes lie within 100 std. A
    # collapsed (or exploded) std fails one of the two bounds.
    cov2, cov100 = (float(coverage(mu, sd, ut[..., None], k=k)) for k in (2.0, 100.0))
    assert cov2 <= cov100 and cov100 >= 0.7, (cov2, cov100)
    assert float(sd.mean()) < 0.2 * float(ut.abs().max())
    zm, zs = m.predict_inverse(xt, ut, w, return_std=True)
    assert zm.shape == zs.shape == (4, 5) and bool((zs > 0).all())
    torch.testing.assert_close(m.predict_inverse(xt, ut, w), zm)
    torch.testing.assert_close(m.predict_inverse(xt, mu, w), m.predict_inverse(xt, mu[..., 0], w))


def test_data_term_learned_scale_and_fixed_grid():
    fam = NonlinearPoisson1D()
    m = _poisson_model(learn_residual_scale=True, residual_scale=1.0, grid="fixed", n_points=12)
    g1, g2 = m.sample_grid(2), m.sample_grid(2)
    assert torch.equal(g1, g2) and g1.shape == (2, 12, 1)
    S, mpts = 6, 9
    z, w = (torch.tensor(a, dtype=torch.float32) for a in fam.sample_params(S, 0))
    x = torch.rand(S, mpts, 1) * 1.6 - 0.8
    y = torch.randn(S, mpts) * 0.05
    data = prepare_data(m, {"x": x, "y": y, "z": z, "w": w}, 0.05, 3)
    xg, wg = m._draw(4, None)
    terms = m.elbo_terms(xg, wg, data)
    assert {"z", "u", "pde", "z_obs", "y", "q:z", "q:u"} <= set(terms)
    eps0 = float(m.residual_scale.detach())
    m.fit(5, data={"x": x, "y": y, "z": z, "w": w}, data_batch=3, progress=False, seed=0, lr=1e-2)
    assert float(m.residual_scale.detach()) != eps0


def test_fit_passes_the_learning_rate_schedule():
    m = _poisson_model()
    before = [p.detach().clone() for p in m.parameters()]
    m.fit(3, lr=1e-2, lr_schedule=lambda e: 0.0, progress=False, seed=0)  # zero rate: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    # (fit keeps the parameters of the lowest one-step loss, which may be the first step's: whether a short run moves
    # them depends on the draws, so the schedule is checked through the rates it is asked for)
    epochs = []
    m.fit(4, lr=1e-2, lr_schedule=lambda e: epochs.append(e) or 1.0, progress=False, seed=0)
    assert sorted(set(epochs)) == [0, 1, 2, 3]
    m.fit(3, lr=1e-2, lr_schedule="cosine", lr_final_fraction=0.1, progress=False, seed=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        m.fit(2, lr_schedule="step", progress=False)


def test_predict_mvn_and_save_load(tmp_path):
    m = _poisson_model(rank=2).double().fit(2, progress=False, seed=0)
    z = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5], dtype=torch.float64)
    w = torch.tensor([1.5], dtype=torch.float64)
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    mvn = m.predict(z, w, x, return_mvn=True)
    assert isinstance(mvn, MultivariateNormal) and mvn.mean.shape == (1, 7)
    dense = MultivariateNormal(mvn.mean, mvn.covariance_matrix)
    v = mvn.mean + 0.01
    torch.testing.assert_close(mvn.log_prob(v), dense.log_prob(v))
    mu, sd = m.predict(z, w, x, return_std=True)
    torch.testing.assert_close(sd[..., 0] ** 2, mvn.variance)
    m.save(tmp_path / "m.pt")
    m2 = RGNP.load(tmp_path / "m.pt")
    mu2, sd2 = m2.predict(z, w, x, return_std=True)
    torch.testing.assert_close(mu, mu2)
    torch.testing.assert_close(sd, sd2)
    assert m2.family.name == "nonlinear_poisson_1d" and m2.fit_history == m.fit_history
    custom = RGNP(_helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [3.0]), gicnet=SMALL_GIC)
    custom.fit(1, progress=False, seed=0).save(tmp_path / "c.pt")
    with pytest.raises(ModelFileError, match=r"_helmholtz_residual.*pass residual=\.\.\."):
        RGNP.load(tmp_path / "c.pt")
    c2 = RGNP.load(tmp_path / "c.pt", residual=_helmholtz_residual)
    zc = torch.tensor([1.0])
    xf = x.float()
    torch.testing.assert_close(custom.predict(zc, None, xf), c2.predict(zc, None, xf))
    with pytest.raises(TypeError, match="without a lift"):
        RGNP.load(tmp_path / "c.pt", residual=_helmholtz_residual, lift=_helmholtz_lift)


def test_inverse_encoder_aggregation_is_stored_and_older_files_load_with_points(tmp_path):
    """New models use GICNet's quadrature aggregation and store it; a file written before the option existed (no
    ``aggregation`` key) was trained with the average over the points and loads with it, predicting as saved."""
    m = _poisson_model().double().fit(2, progress=False, seed=0)
    assert m.config["gicnet"]["aggregation"] == "quadrature" and m.inverse_net.aggregation == "quadrature"
    x = torch.rand(3, 25, 1, dtype=torch.float64) * 2 - 1
    u = torch.sin(2 * x[..., 0]) * torch.rand(3, 1, dtype=torch.float64)
    w = torch.rand(3, 1, dtype=torch.float64) + 1.0
    zq = m.predict_inverse(x, u, w, return_std=True)
    m.save(tmp_path / "q.pt")
    back = RGNP.load(tmp_path / "q.pt")
    assert back.inverse_net.aggregation == "quadrature"
    torch.testing.assert_close(back.predict_inverse(x, u, w, return_std=True), zq, rtol=0, atol=0)
    state = m._get_state()
    gic = {k: v for k, v in state["config"]["gicnet"].items() if k != "aggregation"}
    state["config"] = {**state["config"], "gicnet": gic}  # as written before the option existed
    write_model_file(tmp_path / "old.pt", m, state)
    old = RGNP.load(tmp_path / "old.pt")
    assert old.inverse_net.aggregation == "points" and m.config["gicnet"]["aggregation"] == "quadrature"
    ref = _poisson_model(gicnet={**SMALL_GIC, "aggregation": "points"}).double()  # the same weights, points rule
    ref.load_state_dict(m.state_dict())
    ref._fitted = True
    zp = old.predict_inverse(x, u, w, return_std=True)
    torch.testing.assert_close(zp, ref.predict_inverse(x, u, w, return_std=True), rtol=0, atol=0)
    assert float((zp[0] - zq[0]).abs().max()) > 1e-6  # the rule matters: loading with the new one would move z
    torch.testing.assert_close(old.predict(zq[0], w, x[0]), m.predict(zq[0], w, x[0]), rtol=0, atol=0)


def _helmholtz_lift(x, w):
    return w * (1 + x[..., 0]) / 2, 1 - x[..., 0] ** 2


def test_user_callables_are_required_on_load(tmp_path):
    # a model built with a user residual and a user lift: loading it with the residual alone used to fall back to
    # no lift (b = 0, d = 1) and move the predictions by ~1 on a field of size ~0.35; it must refuse instead
    m = RGNP(
        _helmholtz_residual,
        domain=(-1.0, 1.0),
        z_bounds=([0.5], [1.4]),
        w_bounds=([0.0], [1.0]),
        lift=_helmholtz_lift,
        hidden=(16, 16),
        n_freqs=4,
        gicnet=SMALL_GIC,
    )
    m.fit(2, progress=False, seed=0).save(tmp_path / "u.pt")
    with pytest.raises(ModelFileError, match=r"user-defined lift function \(saved as '_helmholtz_lift'\).*pass lift="):
        RGNP.load(tmp_path / "u.pt", residual=_helmholtz_residual)
    with pytest.raises(
        ModelFileError,
        match=r"residual function .* and a user-defined lift .*pass residual=\.\.\., "
        r"lift=\.\.\.",
    ):
        RGNP.load(tmp_path / "u.pt")
    import gpgeom

    with pytest.raises(ModelFileError, match="pass lift="):
        gpgeom.load(tmp_path / "u.pt", residual=_helmholtz_residual)
    back = gpgeom.load(tmp_path / "u.pt", residual=_helmholtz_residual, lift=_helmholtz_lift)
    z, w, x = np.array([[1.2], [0.7]]), np.array([[0.5], [0.9]]), np.linspace(-1, 1, 9)[:, None]
    torch.testing.assert_close(
        back.predict(z, w, x, return_std=True), m.predict(z, w, x, return_std=True), rtol=0, atol=0
    )
    with pytest.raises(TypeError, match="unexpected arguments"):
        gpgeom.load(tmp_path / "u.pt", residual=_helmholtz_residual, lift=_helmholtz_lift, family="x")


@register_family
class _ScaledPoisson(NonlinearPoisson1D):
    # a registered family of the tests, with a constructor argument
    name = "test_scaled_poisson"

    def __init__(self, scale=1.0):
        self.scale = float(scale)

    def config(self):
        return {"scale": self.scale}

    def residual_from_derivatives(self, d, x, z, w):
        return super().residual_from_derivatives(d, x, z, w * self.scale)


class _UnregisteredPoisson(NonlinearPoisson1D):
    # inherits the name of the built-in family but is not the class registered under it
    def boundary_ansatz(self, x, w):
        b, d = super().boundary_ansatz(x, w)
        return b, 2 * d


def test_families_reload_by_name_and_unregistered_ones_ask_for_callables(tmp_path):
    z = np.array([0.1, -0.2, 0.3, 0.0, 0.5])
    x = np.linspace(-0.9, 0.9, 5)[:, None]
    m = RGNP.from_family(_ScaledPoisson(3.0), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC).fit(1, progress=False)
    m.save(tmp_path / "s.pt")
    back = RGNP.load(tmp_path / "s.pt")
    assert isinstance(back.family, _ScaledPoisson) and back.family.scale == 3.0
    assert "family='test_scaled_poisson'" in repr(back) and "steps=1" in repr(back)
    torch.testing.assert_close(back.predict(z, [1.5], x), m.predict(z, [1.5], x), rtol=0, atol=0)
    # a residual given at load replaces the family's, and a later file asks for it again
    RGNP.load(tmp_path / "s.pt", residual=_ScaledPoisson(3.0).residual_fn()).save(tmp_path / "s2.pt")
    with pytest.raises(ModelFileError, match="pass residual=\\.\\.\\. "):
        RGNP.load(tmp_path / "s2.pt")
    assert isinstance(RGNP.load(tmp_path / "s2.pt", residual=_helmholtz_residual).family, _ScaledPoisson)

    u = RGNP.from_family(_UnregisteredPoisson(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC).fit(1, progress=False)
    u.save(tmp_path / "u.pt")
    with pytest.raises(ModelFileError, match=r"'nonlinear_poisson_1d' .*_UnregisteredPoisson.*not registered"):
        RGNP.load(tmp_path / "u.pt")
    fam = _UnregisteredPoisson()
    back = RGNP.load(tmp_path / "u.pt", residual=fam.residual_fn(), lift=fam.boundary_ansatz)
    torch.testing.assert_close(back.predict(z, [1.5], x), u.predict(z, [1.5], x), rtol=0, atol=0)
    with pytest.raises(TypeError, match="takes lift"):
        RGNP.from_family(NonlinearPoisson1D(), lift=_helmholtz_lift)


def test_the_model_does_not_import_datasets():
    code = "import sys, gpgeom.models.rgnp; sys.exit(any(m.startswith('gpgeom.datasets') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0


def contract_query(model, as_numpy):
    z = np.array([[0.1, -0.2, 0.3, 0.0, 0.5], [-0.4, 0.2, 0.0, 0.1, -0.3]])
    w = np.array([[1.2], [1.7]])
    x = np.linspace(-0.9, 0.9, 7)[:, None]
    u = 0.3 * np.cos(0.5 * np.pi * x[:, 0])[None] * np.array([[1.0], [0.6]])
    if not as_numpy:
        z, w, x, u = (torch.tensor(a, dtype=torch.float64) for a in (z, w, x, u))
    return {
        "forward": model.predict(z, w, x, return_std=True),
        "inverse": model.predict_inverse(x, u, w, return_std=True),
    }


def test_rgnp_keeps_the_model_contract(tmp_path):
    from contract import check_model_contract

    def build():
        return RGNP.from_family(
            NonlinearPoisson1D(), hidden=(16, 16), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, n_points=10, seed=0
        )

    model = check_model_contract(build, lambda m: m.fit(3, lr=1e-3, progress=False, seed=0), contract_query, tmp_path)
    assert model.predict(np.zeros(5), [1.5], np.zeros((3, 1))).shape == (1, 3, 1)


def test_bad_input_gives_clear_errors():
    m = _poisson_model()
    z = torch.zeros(2, 5)
    w = torch.full((2, 1), 1.5)
    x = torch.linspace(-1, 1, 9)[:, None]
    for call in (
        lambda: m.predict(z, w, x),
        lambda: m.predict_inverse(x, torch.zeros(2, 9), w),
        lambda: m.save("never-written.pt"),
    ):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call()
    m.fit(1, progress=False, seed=0)
    with pytest.raises(ValueError, match="outside the domain"):
        m.predict(z, w, x * 1.5)
    with pytest.raises(ValueError, match="outside the domain"):
        m.predict_inverse(x * 1.5, torch.zeros(2, 9), w)
    with pytest.raises(ValueError, match="prior support of z"):
        m.predict(z + 2.0, w, x)
    with pytest.raises(ValueError, match="support of w"):
        m.predict(z, w * 3, x)
    with pytest.raises(ValueError, match="prior support of z"):
        m.fit(1, data={"x": x[None].expand(2, -1, -1), "y": torch.zeros(2, 9), "z": z - 3, "w": w}, progress=False)
    bad = RGNP(lambda u, x, z, w: u.sum(-1), domain=(-1.0, 1.0), z_bounds=([0.0], [1.0]), gicnet=SMALL_GIC)
    with pytest.raises(ValueError, match=r"residual function must return a tensor of shape \(B, n\)"):
        bad.loss(2, 5)
    with pytest.raises(ValueError, match="shape"):
        m.predict(torch.zeros(2, 4), w, x)
    with pytest.raises(ValueError, match="one shape"):
        nse(torch.zeros(2, 9, 1), torch.ones(2, 9))
    with pytest.raises(TypeError, match="numbers"):
        m.predict(z, w, [["a"]])
    with pytest.raises(ValueError, match="lower < upper"):
        RGNP(_helmholtz_residual, domain=(1.0, -1.0), z_bounds=([0.0], [1.0]))
    with pytest.raises(ValueError, match="grid"):
        RGNP(_helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.0], [1.0]), grid="sobol")
    with pytest.raises(ValueError, match="lift"):
        RGNP(_helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.0], [1.0]), lift=lambda x, w: (x, x)).loss(2, 4)


# -- calibrated predictive distributions ---------------------------------------------------------------------------
SEED = int(os.environ.get("GPGEOM_RGNP_SEED", "0"))  # the seed of the trainings below (bounds measured over 0-2)


def _helmholtz_exact(x, z, w):
    # u'' + z^2 u = 0, u(-1) = 0, u(1) = w
    return w * torch.sin(z * (x[..., 0] + 1)) / torch.sin(2 * z)


def _helmholtz_fields(n_fields, n_points, seed, grid=False):
    g = torch.Generator().manual_seed(seed)
    z = 0.5 + 0.9 * torch.rand(n_fields, 1, generator=g, dtype=torch.float64)
    w = torch.rand(n_fields, 1, generator=g, dtype=torch.float64)
    if grid:
        x = torch.linspace(-1, 1, n_points, dtype=torch.float64)[None, :, None].expand(n_fields, -1, -1)
    else:
        x = torch.rand(n_fields, n_points, 1, generator=g, dtype=torch.float64) * 2 - 1
    return {"x": x, "y": _helmholtz_exact(x, z, w), "z": z, "w": w}


def _forward_summary(model, z, w, x, u):
    # calibration of the forward bands at the test nodes off the hard boundary (where u is known exactly)
    mu, sd = (t[..., 0] for t in model.predict(z, w, x, return_std=True))
    inner = model.lift(torch.as_tensor(x, dtype=model.dtype).expand(len(z), -1, -1), torch.as_tensor(w))[1] > 1e-6
    return calibration_summary(u[inner], mu[inner], sd[inner]), float(nse(mu, u).sqrt().mean())


def test_residual_indicator_is_the_newton_step_size_in_closed_form():
    # linear PDE u'' + z^2 u = 0 with the lift u = w (1 + x) / 2 + (1 - x^2) u_hat: R'[u] d = d'' + z^2 d with
    # d = 1 - x^2, so rho = rms(R[mean]) / rms(-2 + z^2 (1 - x^2)) over the 64 cell-centred points of [-1, 1]
    m = RGNP(
        _helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [1.4]), w_bounds=([0.0], [1.0]),
        lift=_helmholtz_lift_pair, hidden=(16, 16), n_freqs=4, gicnet=SMALL_GIC, dtype=torch.float64,
    )  # fmt: skip
    z = torch.tensor([[0.6], [1.3]], dtype=torch.float64)
    w = torch.tensor([[0.2], [0.9]], dtype=torch.float64)
    xg = (torch.arange(64, dtype=torch.float64) + 0.5) / 64 * 2 - 1
    x = xg[None, :, None].expand(2, -1, -1)
    r = m.residual(lambda xx: m.field_dist(z, w, xx).mean, x, z, w).detach()
    jd = -2 + z**2 * (1 - xg[None] ** 2)
    want = r.pow(2).mean(-1).sqrt() / jd.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(m.residual_indicator(z, w), want, rtol=1e-10, atol=0)


def _helmholtz_lift_pair(x, w):
    return w * (1 + x[..., 0]) / 2, 1 - x[..., 0] ** 2


@pytest.fixture(scope="module")
def calibrated_poisson():
    # a small Poisson model (300 steps), its bands before and after calibrate() on 16 reference fields, on 8 held-out
    # test fields (neither trained nor calibrated on)
    fam = NonlinearPoisson1D()
    torch.manual_seed(SEED)  # the initial networks
    m = _poisson_model().fit(300, lr=3e-3, progress=False, seed=SEED)
    zt, wt = fam.sample_params(8, np.random.default_rng(100 + SEED))
    xt = fam.test_points(41)
    ut = torch.tensor(np.stack([fam.solve(zt[i], wt[i], xt) for i in range(8)]), dtype=torch.float32)
    zt, wt, xt = (torch.tensor(a, dtype=torch.float32) for a in (zt, wt, xt))
    before = _forward_summary(m, zt, wt, xt, ut)
    m.calibrate(n_fields=16, n_points=40, inverse_steps=0, seed=SEED)
    return m, before, _forward_summary(m, zt, wt, xt, ut), (zt, wt, xt)


def test_calibrated_forward_bands_cover_unseen_poisson_fields(calibrated_poisson):
    # measured over seeds 0-2 (8 fields x 39 interior nodes): q_alpha alone, 95 % coverage 0.00-0.26 and z RMS 9-39;
    # calibrated, 0.93-1.00 and 0.76-1.26
    m, (fwd0, err0), (fwd1, err1), _ = calibrated_poisson
    assert err1 == err0  # calibration leaves the mean alone
    assert fwd0["coverage_95"] < 0.5 and fwd0["z_rms"] > 4  # q_alpha alone: overconfident
    assert fwd1["coverage_95"] >= 0.8 and fwd1["z_rms"] < 2.5, fwd1
    assert m.calibration_["n_fields"] == 16 and m.calibration_["n_points"] == 40


def test_calibrated_user_pde_forward_and_inverse_on_unseen_fields():
    # a user PDE (no reference solver): calibrated on exact solutions given as data; the inverse network is then
    # trained on fields from the calibrated predictive. Measured over seeds 0-2 (16 test fields): forward 95 %
    # coverage 0.54-0.69 -> 0.82-0.94, z RMS 3.2-5.2 -> 1.16-1.24; inverse z RMS 0.50-1.39 -> 0.60-1.55 with the 95 %
    # width 0.65-0.70 -> 0.37-0.49 (sharper, still not overconfident)
    torch.manual_seed(SEED)
    m = RGNP(
        _helmholtz_residual, domain=(-1.0, 1.0), z_bounds=([0.5], [1.4]), w_bounds=([0.0], [1.0]), rank=2,
        lift=_helmholtz_lift_pair, hidden=(48, 48, 48), n_freqs=16, gicnet=SMALL_GIC, batch_size=8, n_points=30,
        dtype=torch.float32,
    ).fit(400, lr=3e-3, progress=False, seed=SEED)  # fmt: skip
    with pytest.raises(ValueError, match="`data` is required"):
        m.calibrate()
    test = _helmholtz_fields(16, 41, 1000 + SEED, grid=True)
    inv = _helmholtz_fields(16, 30, 2000 + SEED)
    zt, wt, xt, ut = test["z"].float(), test["w"].float(), test["x"][0].float(), test["y"].float()

    def inverse():
        zm, zs = m.predict_inverse(inv["x"], inv["y"], inv["w"], return_std=True)
        return calibration_summary(inv["z"], zm, zs)

    fwd0, inv0 = _forward_summary(m, zt, wt, xt, ut)[0], inverse()
    m.calibrate(_helmholtz_fields(16, 40, 3000 + SEED), inverse_steps=200, seed=SEED)
    fwd1, inv1 = _forward_summary(m, zt, wt, xt, ut)[0], inverse()
    assert fwd0["coverage_95"] < 0.8 and fwd1["coverage_95"] >= 0.75 and fwd1["z_rms"] < 2.5, (fwd0, fwd1)
    # the inverse is informative (95 % width well below the prior's 0.86) and not overconfident
    assert inv1["width_95"] < 0.6 and inv1["z_rms"] <= 2.0, inv1
    assert inv1["width_95"] < 0.85 * inv0["width_95"], (inv0, inv1)  # the inverse steps sharpen q_beta
    assert m.calibration_["inverse_steps"] == 200 and math.isfinite(m.calibration_["inverse_loss"])


def test_calibration_is_kept_by_files_dropped_by_fit_and_checks_its_input(tmp_path):
    m = _poisson_model(rank=2).double().fit(2, progress=False, seed=0)
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]], dtype=torch.float64)
    w = torch.tensor([[1.5]], dtype=torch.float64)
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    with pytest.warns(UncalibratedWarning, match=r"call model.calibrate\(\)"):
        _, sd0 = m.predict(z, w, x, return_std=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedWarning)  # once per model
        m.predict(z, w, x, return_mvn=True)
        m.predict(z, w, x)  # the mean alone never warns
    g = torch.Generator().manual_seed(0)
    xc = torch.rand(4, 8, 1, generator=g, dtype=torch.float64) * 1.8 - 0.9
    data = {"x": xc, "y": 0.3 * torch.cos(0.5 * math.pi * xc[..., 0]), "z": torch.zeros(4, 5), "w": torch.ones(4, 1)}
    for bad, match in (
        ({**data, "y": data["y"][:, :3]}, r"data\['y'\]"),
        ({**data, "z": data["z"] + 2}, "support of z"),
    ):
        with pytest.raises(ValueError, match=match):
            m.calibrate(bad)
    with pytest.raises(ValueError, match="n_fields"):
        m.calibrate(n_fields=0)
    assert m.calibrate(data, inverse_steps=0) is m and m.calibration_["n_fields"] == 4
    m._uncalibrated_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedWarning)  # calibrated: no warning
        mu, sd = m.predict(z, w, x, return_std=True)
    assert bool((sd > sd0).all())
    # the std of predict (variance formula) is the diagonal of the MVN's covariance (Cholesky factor of the kernel)
    mvn = m.predict(z, w, x, return_mvn=True)
    torch.testing.assert_close(mvn.variance, sd[..., 0] ** 2, rtol=1e-9, atol=1e-12)
    m.save(tmp_path / "c.pt")
    back = RGNP.load(tmp_path / "c.pt")
    assert back.calibration_ == m.calibration_ and "discrepancy=" in repr(back)
    torch.testing.assert_close(back.predict(z, w, x, return_std=True), (mu, sd), rtol=0, atol=0)
    # a file written before the discrepancy existed loads uncalibrated
    state = m._get_state()
    state["module_state"] = {k: v for k, v in state["module_state"].items() if not k.startswith("discrepancy.")}
    del state["calibration"]
    old = RGNP._from_state(state)
    assert old.calibration_ is None and not bool(old.discrepancy.calibrated)
    old._fitted = True
    torch.testing.assert_close(old.predict(z, w, x, return_std=True)[1], sd0)
    with pytest.warns(UserWarning, match="calibration is dropped"):
        m.fit(1, progress=False, seed=0)
    assert m.calibration_ is None and not bool(m.discrepancy.calibrated)


@pytest.mark.filterwarnings("ignore::gpgeom.errors.UncalibratedWarning")
def test_an_interrupted_calibrate_leaves_the_model_as_it_was(monkeypatch):
    r"""A calibrate interrupted in its inverse steps (``KeyboardInterrupt`` at the second step) kept the discrepancy
    it had just fitted: a first calibrate left the model calibrated with ``calibration_`` ``None`` (the forward std
    up by 0.22, 52 %), a second one kept ``calibration_`` describing the previous discrepancy while the std moved by
    0.014. Now the model is as before the call: the std, the record, the inverse network, bitwise."""
    from gpgeom.models.rgnp import calibration

    m = _poisson_model(rank=2).double().fit(5, progress=False, seed=0)
    z = torch.tensor([[0.1, -0.2, 0.3, 0.0, 0.5]], dtype=torch.float64)
    w = torch.tensor([[1.2]], dtype=torch.float64)
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    u = 0.3 * torch.cos(0.5 * math.pi * x[:, 0])[None]
    original, calls = calibration.inverse_loss, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    def snapshot():
        return m.calibration_, m.predict(z, w, x, return_std=True)[1], m.predict_inverse(x, u, w, return_std=True)

    for first in (True, False):  # the first calibrate, then one over an earlier calibration
        if not first:
            m.calibrate(n_fields=4, n_points=8, seed=0, progress=False)
        record, sd, inverse = snapshot()
        calls[0] = 0
        monkeypatch.setattr(calibration, "inverse_loss", interrupted)
        with pytest.raises(KeyboardInterrupt):
            m.calibrate(n_fields=6, n_points=12, seed=1, inverse_steps=5, inverse_batch=2, progress=False)
        monkeypatch.setattr(calibration, "inverse_loss", original)
        assert calls[0] == 2
        assert m.calibration_ == record and (record is None) == first
        assert bool(m.discrepancy.calibrated) is not first
        record2, sd2, inverse2 = snapshot()
        assert torch.equal(sd2, sd)  # 0.22 and 0.014 off before (the new discrepancy in force)
        assert all(torch.equal(a, b) for a, b in zip(inverse2, inverse))


@pytest.mark.filterwarnings(
    "ignore:RGNP.predict_inverse got:gpgeom.errors.UncalibratedWarning"
)  # few points on purpose
def test_inverse_from_no_observed_point_is_a_clear_error():
    r"""``predict_inverse`` with ``u`` of zero points raised torch's "cannot reshape tensor of 0 elements"; it now
    says that a field needs an observed value, like an all-False ``mask`` row does. One point still works."""
    m = _poisson_model(rank=2).double().fit(1, progress=False, seed=0)
    x = torch.linspace(-0.9, 0.9, 7, dtype=torch.float64)[:, None]
    w = torch.tensor([1.5], dtype=torch.float64)
    for u in (torch.zeros(1, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)):
        with pytest.raises(ValueError, match=r"`u` holds no point .*at least one observed value"):
            m.predict_inverse(x[:0], u, w)
    mean, std = m.predict_inverse(x[:1], torch.zeros(1, 1, dtype=torch.float64), w, return_std=True)
    assert mean.shape == std.shape == (1, 5) and bool(torch.isfinite(std).all())


def test_the_seed_of_the_constructor_decides_the_initial_weights_and_leaves_the_global_stream():
    r"""``RGNP(..., seed=s)`` starts from the same weights whatever torch's global random state (before it, the
    weights came from the global stream only: the same ``fit(seed=...)`` of two models gave different networks) and
    leaves that state where it was; another seed gives other weights; ``seed=None`` draws from the global stream."""

    def build(**kw):
        return RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, **kw)

    def weights(m):
        return torch.cat([p.detach().reshape(-1) for p in m.parameters()])

    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = build(seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global stream is untouched
    torch.manual_seed(2)
    torch.rand(7)
    b = build(seed=3)
    assert torch.equal(weights(a), weights(b))
    assert not torch.equal(weights(a), weights(build(seed=4)))
    torch.manual_seed(3)  # seed=None: the global stream, as torch.manual_seed(3) then building repeats
    c = build()
    torch.manual_seed(3)
    assert torch.equal(weights(c), weights(build()))
    for bad, error in ((-1, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match="seed"):
            build(seed=bad)


def test_sample_grid_and_params_take_a_generator_and_leave_the_global_stream():
    r"""``sample_grid`` and ``sample_params`` drew from torch's global stream only (the demo's inverse test grid
    moved with whatever had been drawn before it); with ``generator=`` they repeat, leave the global stream where it
    was, and stay inside their boxes."""
    m = RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, seed=0)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return (m.sample_grid(3, 9, generator=g), *m.sample_params(3, generator=g))

    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = draw(11)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(13)  # the global stream moves; the seeded draws do not
    for a, b in zip(first, draw(11), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], draw(12)[0])
    x, z, w = first
    assert x.shape == (3, 9, 1) and z.shape == (3, m.dim_z) and w.shape == (3, m.dim_w)
    assert bool(((x > m.lower) & (x < m.upper)).all())
    assert bool(((z >= m.z_low) & (z <= m.z_high)).all()) and bool(((w >= m.w_low) & (w <= m.w_high)).all())
    with pytest.raises(TypeError, match="`generator` must be a torch.Generator"):
        m.sample_grid(2, generator=7)
