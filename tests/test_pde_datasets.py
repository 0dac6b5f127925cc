r"""Tests of the PDE families, their registry and reference solvers (:mod:`gpgeom.pde`) and of the cached test
sets (:mod:`gpgeom.datasets.pde`)."""

import math

import numpy as np
import pytest
import torch

import gpgeom.datasets.pde
from gpgeom.datasets.pde import make_test_set
from gpgeom.pde import (
    NonlinearPoisson1D,
    PDEFamily,
    ViscousBurgers,
    burgers_cole_hopf,
    burgers_initial_condition,
    family_names,
    get_family,
    is_registered,
    poisson,
    register_family,
    solve_burgers,
    solve_burgers_mol,
    solve_nonlinear_poisson,
    solve_nonlinear_poisson_fd,
)

DT = torch.float64


def _poisson_params(seed):
    z, w = NonlinearPoisson1D().sample_params(1, seed)
    return z[0], float(w[0, 0])


def _cheb(x, c):
    """Torch Chebyshev series sum_k c_k T_k(x) by the three-term recurrence (differentiable in x)."""
    t0, t1 = torch.ones_like(x), x
    s = c[0] * t0 + c[1] * t1
    for k in range(2, len(c)):
        t0, t1 = t1, 2 * x * t1 - t0
        s = s + c[k] * t1
    return s


# ---------------------------------------------------------------------------------------------------------------------
# nonlinear Poisson
def test_poisson_shooting_agrees_with_second_order_finite_differences():
    """FD error falls as h^2 (measured rates 1.99-2.00) and the Richardson extrapolation of FD agrees with the
    shooting solution to ~1e-9 (measured 8e-10 to 3e-9 at n = 399), which bounds the shooting error."""
    z, w = _poisson_params(1)
    ns = [49, 99, 199, 399]  # nested grids: h = 2/50, 2/100, 2/200, 2/400
    x_fine, _ = solve_nonlinear_poisson_fd(z, w, ns[-1])
    u_ref = solve_nonlinear_poisson(z, w, x_fine)
    assert u_ref[0] == 0.0 and u_ref[-1] == 0.0
    errs, fd = [], {}
    for n in ns:
        x, u = solve_nonlinear_poisson_fd(z, w, n)
        stride = (ns[-1] + 1) // (n + 1)
        np.testing.assert_allclose(x, x_fine[::stride], atol=1e-14)
        fd[n] = u
        errs.append(np.abs(u - u_ref[::stride]).max())
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((rates > 1.9) & (rates < 2.1)), rates
    assert errs[-1] < 5e-5 * np.abs(u_ref).max()
    richardson = (4 * fd[399][::2] - fd[199]) / 3
    assert np.abs(richardson - u_ref[::2]).max() < 2e-8


def test_poisson_residual_of_exact_solutions_is_zero_through_autograd():
    fam = NonlinearPoisson1D()
    x = fam.sample_points(2, 50)
    w = torch.tensor([[1.3], [1.9]], dtype=DT)
    # (a) z = 0: k = log 2 + 0.1 is constant and u = w (1 - x^2) / (2k) is exact
    k0 = math.log(2.0) + 0.1
    r = fam.residual(lambda xx: w * (1 - xx[..., 0] ** 2) / (2 * k0), x, torch.zeros(2, 5, dtype=DT), w)
    assert float(r.detach().abs().max()) < 1e-12
    # (b) a degree-60 Chebyshev interpolant of the shooting solution for a prior draw of z: |r| < 1e-6 on
    #     [-0.95, 0.95] (measured 5e-8 to 9e-8 over 7 of 8 draws; the error of the shooting solution's dense output,
    #     ~1e-11, is amplified by the second derivative of the interpolant, most near the end points)
    z, wv = _poisson_params(2)
    coef = np.polynomial.chebyshev.chebinterpolate(lambda s: solve_nonlinear_poisson(z, wv, s), 60)
    assert np.abs(coef[-5:]).max() < 1e-10  # the interpolant has converged
    ct = torch.tensor(coef)
    xs = torch.linspace(-0.95, 0.95, 301, dtype=DT)[None, :, None]
    r = fam.residual(lambda xx: _cheb(xx[..., 0], ct), xs, torch.tensor(z)[None], torch.tensor([[wv]]))
    assert float(r.detach().abs().max()) < 1e-6


def test_poisson_residual_equals_flux_form():
    """r = -(k u')' - w computed algebraically from (u, u_x, u_xx) equals autograd through the flux k(u, x) u_x."""
    fam = NonlinearPoisson1D()
    x = fam.sample_points(3, 40).requires_grad_(True)
    z = torch.rand(3, 5, dtype=DT) * 2 - 1
    w = torch.rand(3, 1, dtype=DT) + 1
    amp = torch.rand(3, 1, dtype=DT) + 0.5

    def u_fn(xx):
        s = xx[..., 0]
        return amp * (1 - s * s) * (1 + 0.3 * torch.sin(3 * s))

    r = fam.residual(u_fn, x, z, w)
    u = u_fn(x)
    (u_x,) = torch.autograd.grad(u.sum(), x, create_graph=True)
    flux = fam.conductivity(u, x[..., 0], z) * u_x[..., 0]
    (q_x,) = torch.autograd.grad(flux.sum(), x, create_graph=True)
    torch.testing.assert_close(r, -q_x[..., 0] - w, rtol=1e-12, atol=1e-12)
    r.square().sum().backward()  # the residual is differentiable (it is a training loss)
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


# ---------------------------------------------------------------------------------------------------------------------
# viscous Burgers
@pytest.mark.parametrize("z, w, rich_tol", [((0.1, 1.0), 1.0, 1e-7), ((0.01, 1.0), 2.0, 3e-6)])
def test_burgers_cole_hopf_agrees_with_method_of_lines(z, w, rich_tol):
    """MOL vs Cole-Hopf: max error / max|u| falls as h^2 (measured rates 1.96-2.00) and the Richardson extrapolation
    of MOL agrees with Cole-Hopf to 1.6e-9 (nu = 0.1) and 8.8e-7 (nu = 0.01, the prior's sharpest) at n = 511."""
    t_eval = np.array([0.05, 0.25, 0.5, 1.0])
    errs, mol = [], {}
    for n in (127, 255, 511):
        x, u = solve_burgers_mol(z, w, n, t_eval)
        xt = np.stack(np.broadcast_arrays(x[None, :], t_eval[:, None]), axis=-1)
        u_ch = solve_burgers(z, w, xt)
        errs.append(np.abs(u - u_ch).max() / np.abs(u_ch).max())
        mol[n] = u
    rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((rates > 1.9) & (rates < 2.1)), rates
    richardson = (4 * mol[511][:, ::2] - mol[255]) / 3
    assert np.abs(richardson - u_ch[:, ::2]).max() / np.abs(u_ch).max() < rich_tol


def test_burgers_quadrature_is_resolved():
    """Finer panels, more nodes and a wider window change u by < 1e-11 for t >= 1e-6 (measured max 5e-13 over 2e4
    points; below, round-off of order 1e-16 sqrt(nu / t) dominates, e.g. 1e-9 at t = 1e-14)."""
    xt = torch.rand(200, 2, dtype=DT)
    xt[:, 1] = 1e-6 + xt[:, 1] ** 3  # many small times
    for nu, a, w in [(0.01, 1.0, 2.0), (0.05, 0.6, 0.5)]:
        u1 = burgers_cole_hopf(xt[:, 0], xt[:, 1], nu, a, w)
        u2 = burgers_cole_hopf(xt[:, 0], xt[:, 1], nu, a, w, quad_nodes=24, panel_sigmas=1.0, margin=60.0)
        assert float((u1 - u2).abs().max()) < 1e-11


def test_burgers_initial_and_boundary_conditions():
    nu, a, w = 0.01, 0.8, 1.7
    x = torch.rand(50, dtype=DT)
    torch.testing.assert_close(
        burgers_cole_hopf(x, torch.zeros_like(x), nu, a, w), burgers_initial_condition(x, w), rtol=0, atol=0
    )
    t = torch.rand(50, dtype=DT)
    for edge in (0.0, 1.0):
        assert float(burgers_cole_hopf(torch.full_like(t, edge), t, nu, a, w).abs().max()) < 1e-12
    # continuity at t -> 0: |u(x, t) - u0(x)| <= t max|u_t| (|u_t| < 10 here)
    for tiny in (1e-12, 1e-8):
        u = burgers_cole_hopf(x, torch.full_like(x, tiny), nu, a, w)
        assert float((u - burgers_initial_condition(x, w)).abs().max()) < 10 * tiny + 1e-9


def test_burgers_residual_of_cole_hopf_is_zero_through_autograd():
    """The torch Cole-Hopf evaluator is differentiable; its autograd residual is ~1e-14 (tolerance 1e-11).

    With its nodes held fixed, the quadrature sum is itself a finite sum of heat-equation solutions, so this checks the
    residual code, the Cole-Hopf transformation (signs, the factor a) and the autograd derivatives; the accuracy of
    the quadrature is checked against the method of lines above.
    """
    fam = ViscousBurgers()
    for (nu, a), w in [((0.1, 1.0), 1.0), ((0.01, 0.7), 2.0)]:
        x = fam.sample_points(1, 150)
        x[..., 1] = 0.02 + 0.98 * x[..., 1]
        r = fam.residual(
            lambda xx, nu=nu, a=a, w=w: burgers_cole_hopf(xx[..., 0], xx[..., 1], nu, a, w),
            x,
            torch.tensor([[nu, a]], dtype=DT),
            torch.tensor([[w]], dtype=DT),
        )
        assert float(r.detach().abs().max()) < 1e-11
        # a wrong field has a large residual (the check can fail)
        r_bad = fam.residual(
            lambda xx, nu=nu, a=a, w=w: burgers_cole_hopf(xx[..., 0], xx[..., 1], 2 * nu, a, w),
            x,
            torch.tensor([[nu, a]], dtype=DT),
            torch.tensor([[w]], dtype=DT),
        )
        assert float(r_bad.detach().abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------------------------------
# family helpers, test sets
@pytest.mark.parametrize("fam", [NonlinearPoisson1D(), ViscousBurgers()], ids=lambda f: f.name)
def test_priors_points_and_boundary_ansatz(fam):
    z, w = fam.sample_params(200, 5)
    assert z.shape == (200, fam.dim_z) and w.shape == (200, fam.dim_w)
    assert np.all((z >= fam.z_low) & (z <= fam.z_high)) and np.all((w >= fam.w_low) & (w <= fam.w_high))
    x = fam.sample_points(4, 30)
    assert x.shape == (4, 30, fam.dim)
    assert bool(((x >= torch.tensor(fam.lower, dtype=DT)) & (x <= torch.tensor(fam.upper, dtype=DT))).all())
    # on the boundary (and at t = 0 for Burgers) b + d N does not depend on N
    edge = x.clone()
    edge[:, :15, 0] = fam.lower[0]
    edge[:, 15:, 0] = fam.upper[0]
    wt = torch.tensor(w[:4], dtype=DT)
    b, d = fam.boundary_ansatz(edge, wt)
    assert float(d.abs().max()) < 1e-15 and float(b.abs().max()) < 1e-12
    if fam.dim == 2:
        x0 = x.clone()
        x0[..., 1] = 0.0
        b, d = fam.boundary_ansatz(x0, wt)
        assert float(d.abs().max()) == 0.0
        torch.testing.assert_close(b, burgers_initial_condition(x0[..., 0], wt), rtol=1e-14, atol=1e-14)


def test_make_test_set_stores_on_first_use_and_reloads(tmp_path, monkeypatch):
    monkeypatch.setenv("GPGEOM_CACHE", str(tmp_path))
    fam = NonlinearPoisson1D()
    ts = make_test_set(fam, 2, 21, seed=3)
    files = list((tmp_path / "pde").glob("*.npz"))
    assert len(files) == 1 and "nonlinear_poisson_1d" in files[0].name
    assert ts.x.shape == (21, 1) and ts.z.shape == (2, 5) and ts.w.shape == (2, 1) and ts.u.shape == (2, 21)
    np.testing.assert_array_equal(ts.u[:, [0, -1]], 0.0)

    def no_solve(*args, **kwargs):
        raise AssertionError("the cached test set should have been reloaded")

    monkeypatch.setattr(poisson, "solve_nonlinear_poisson", no_solve)
    again = make_test_set(fam, 2, 21, seed=3)
    for k in ("x", "z", "w", "u"):
        np.testing.assert_array_equal(getattr(again, k), getattr(ts, k))
    assert again.seed == 3 and again.to_torch()["u"].dtype == DT

    bts = make_test_set(ViscousBurgers(), 2, (9, 5), seed=0, cache_dir=tmp_path / "other")
    assert bts.x.shape == (45, 2) and bts.u.shape == (2, 45)
    assert len(list((tmp_path / "other" / "pde").glob("viscous_burgers_S2_P9x5_seed0_*.npz"))) == 1
    t0 = bts.x[:, 1] == 0
    np.testing.assert_allclose(bts.u[:, t0], burgers_initial_condition(bts.x[t0, 0][None], bts.w), atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------------
# bad inputs
@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: solve_nonlinear_poisson(np.zeros(5), 1.5, [0.0, 1.5]), ValueError, r"`x` must lie in \[-1, 1\]"),
        (lambda: solve_nonlinear_poisson(np.zeros(5), [1.0, 2.0], [0.0]), ValueError, r"`w` must hold 1 number"),
        (lambda: solve_nonlinear_poisson([np.nan] * 5, 1.0, [0.0]), ValueError, r"`z` must be a non-empty finite"),
        (lambda: solve_nonlinear_poisson_fd(np.zeros(5), 1.0, 0), ValueError, r"`n_interior` must be > 0"),
        (lambda: solve_burgers((0.0, 1.0), 1.0, [[0.5, 0.5]]), ValueError, r"`nu` must be > 0"),
        (lambda: solve_burgers((0.1, 1.0), 1.0, [[0.5, -0.5]]), ValueError, r"`xt\[\.\.\., 1\] \(time\)` must lie"),
        (lambda: solve_burgers((0.1, 1.0), 1.0, [[1.5, 0.5]]), ValueError, r"`x` must lie in \[0, 1\]"),
        (lambda: solve_burgers((0.1,), 1.0, [[0.5, 0.5]]), ValueError, r"`z` must hold 2 number"),
        (
            lambda: burgers_cole_hopf(torch.zeros(3, dtype=DT), torch.zeros(2, dtype=DT), 0.1, 1.0, 1.0),
            ValueError,
            r"same shape",
        ),
        (
            lambda: burgers_cole_hopf(torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT), 0.1, 0.0, 1.0),
            ValueError,
            r"`a` must be finite and nonzero",
        ),
        (
            lambda: solve_burgers_mol((0.1, 1.0), 1.0, 31, [0.5, 0.2]),
            ValueError,
            r"`t_eval` must be .*increasing.*got \[0.5, 0.2\]",
        ),
        (lambda: solve_burgers_mol((0.1, 1.0), 1.0, 31, [0.2, np.nan]), ValueError, r"finite and >= 0, got \[0.2, nan"),
        (lambda: make_test_set(NonlinearPoisson1D(), 2, 1), ValueError, r"`n_points` must be >= 2"),
        (
            lambda: ViscousBurgers().test_points((9, 5, 3)),
            ValueError,
            r"`n_points` must be an int or a pair \(nx, nt\)",
        ),
        (lambda: ViscousBurgers().test_points("9"), ValueError, r"`n_points` must be an int or a pair .*got '9'"),
        (lambda: make_test_set(ViscousBurgers(), 2, 9, seed=-1), ValueError, r"`seed` must be a non-negative int"),
        (lambda: make_test_set("viscous_burgers", 2, 9), TypeError, r"`family` must be a gpgeom.pde.PDEFamily"),
        (lambda: NonlinearPoisson1D().solve(np.zeros(4), 1.0, np.zeros((3, 1))), ValueError, r"`z` must hold 5"),
    ],
)
def test_bad_solver_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_residual_of_constant_field():
    """A field that does not depend on x has zero derivatives (no autograd error): r = -w and r = 0."""
    x = NonlinearPoisson1D().sample_points(2, 7)
    w = torch.tensor([[1.5], [1.2]], dtype=DT)
    r = NonlinearPoisson1D().residual(lambda xx: torch.zeros(xx.shape[:2], dtype=DT), x, torch.ones(2, 5, dtype=DT), w)
    torch.testing.assert_close(r, -w.expand(2, 7))
    xb = ViscousBurgers().sample_points(2, 7)
    r = ViscousBurgers().residual(lambda xx: 0 * xx[..., 0] + 0.3, xb, torch.ones(2, 2, dtype=DT), w)
    assert float(r.detach().abs().max()) == 0.0


def test_bad_residual_inputs():
    fam = ViscousBurgers()
    x = fam.sample_points(2, 5)
    z, w = torch.ones(2, 2, dtype=DT), torch.ones(2, 1, dtype=DT)
    with pytest.raises(ValueError, match=r"`z` must have trailing shape \(2, 2\), got shape \(2, 3\)"):
        fam.residual(lambda xx: xx[..., 0], x, torch.ones(2, 3, dtype=DT), w)
    with pytest.raises(ValueError, match=r"`x` must have trailing shape \(\*, \*, 2\)"):
        fam.residual(lambda xx: xx[..., 0], x[..., :1], z, w)
    with pytest.raises(ValueError, match=r"`u_fn\(x\)` must return shape \(2, 5\) \(B, n\), got \(2, 5, 2\)"):
        fam.residual(lambda xx: xx, x, z, w)


# ---------------------------------------------------------------------------------------------------------------------
# the registry
def test_builtin_families_are_registered_by_name():
    assert {"nonlinear_poisson_1d", "viscous_burgers"} <= set(family_names())
    assert get_family("nonlinear_poisson_1d") is NonlinearPoisson1D and get_family("viscous_burgers") is ViscousBurgers
    assert is_registered(NonlinearPoisson1D()) and is_registered(ViscousBurgers())
    # the datasets module builds on the families, it does not define its own
    assert gpgeom.datasets.pde.NonlinearPoisson1D is NonlinearPoisson1D
    with pytest.raises(ValueError, match=r"No PDE family is registered as 'heat'; registered: .*viscous_burgers"):
        get_family("heat")


def test_register_family_rules():
    class Sub(NonlinearPoisson1D):  # inherits the name, is not the registered class
        pass

    assert not is_registered(Sub())
    with pytest.raises(ValueError, match="already registered"):
        register_family(Sub)
    with pytest.raises(TypeError, match="subclass of gpgeom.pde.PDEFamily"):
        register_family(dict)

    class Nameless(PDEFamily):
        pass

    with pytest.raises(ValueError, match="non-empty string class attribute `name`"):
        register_family(Nameless)

    def define():
        @register_family
        class Heat(PDEFamily):
            name = "test_registry_heat"

        return Heat

    first = define()
    second = define()  # the same class defined again (a notebook cell run twice) replaces the first
    assert first is not second and get_family("test_registry_heat") is second and is_registered(second())
    renamed = register_family(replace=True)(type("Other", (PDEFamily,), {"name": "test_registry_heat"}))
    assert get_family("test_registry_heat") is renamed


def test_residual_fn_equals_the_residual_of_the_field():
    fam = NonlinearPoisson1D()
    x = fam.sample_points(2, 9).requires_grad_(True)
    z = torch.rand(2, 5, dtype=DT) * 2 - 1
    w = torch.rand(2, 1, dtype=DT) + 1

    def u_fn(xx):
        return (1 - xx[..., 0] ** 2) * torch.sin(2 * xx[..., 0] + 0.3)

    r_fn = fam.residual_fn()
    assert r_fn.__name__ == "nonlinear_poisson_1d_residual"
    torch.testing.assert_close(r_fn(u_fn(x), x, z, w), fam.residual(u_fn, x, z, w), rtol=0, atol=0)
    assert repr(fam) == "NonlinearPoisson1D()" and fam.config() == {}


def _linear_family(low, high):
    class Linear(PDEFamily):
        name = "cache_probe_linear"
        dim = 1
        lower, upper = (0.0,), (1.0,)
        z_names, z_low, z_high = ("slope",), (low,), (high,)

        def solve(self, z, w, x):
            return float(np.asarray(z)[0]) * np.asarray(x)[..., 0]

        def test_points(self, n_points):
            return np.linspace(0.0, 1.0, n_points)[:, None]

    return Linear()


def test_burgers_test_points_take_numpy_ints():
    r"""``ViscousBurgers().test_points(np.int64(5))`` raised "'numpy.int64' object is not iterable" (and a triple
    "too many values to unpack"); a numpy int now gives the grid of the Python int."""
    np.testing.assert_array_equal(ViscousBurgers().test_points(np.int64(5)), ViscousBurgers().test_points(5))
    assert ViscousBurgers().test_points((3, 4)).shape == (12, 2)


def test_make_test_set_does_not_reuse_fields_of_other_priors(tmp_path):
    r"""The cache is keyed by the family's name, config, sizes and seed: a family whose prior changed under the same
    name (a user family edited between runs) got the old file back, parameters outside its prior (slopes in [1, 2]
    for a prior [3, 4]) and their fields. A file is now reused only if it holds the draws the family makes now;
    the stale one is solved again and replaced, and a matching one is still reused."""
    old = make_test_set(_linear_family(1.0, 2.0), 3, 5, seed=0, cache_dir=tmp_path)
    assert np.all((old.z >= 1.0) & (old.z <= 2.0))
    new_family = _linear_family(3.0, 4.0)
    new = make_test_set(new_family, 3, 5, seed=0, cache_dir=tmp_path)
    z_truth, _ = new_family.sample_params(3, np.random.default_rng(0))
    np.testing.assert_array_equal(new.z, z_truth)
    np.testing.assert_allclose(new.u, z_truth * new.x[:, 0][None], rtol=0, atol=1e-15)  # u = slope * x
    new_family.solve = None  # a reuse must not solve
    again = make_test_set(new_family, 3, 5, seed=np.int64(0), cache_dir=tmp_path)  # a numpy int is the same seed
    np.testing.assert_array_equal(again.u, new.u)
    assert again.seed == 0 and type(again.seed) is int
