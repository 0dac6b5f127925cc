r"""Input handling of RGNP found by an adversarial audit: padding of the inverse problem's point sets, the bounds of
the domain and the priors given as arrays, the fixed grid's number of points, non-finite fields of
``RGNP.residual``. Each test compares with an independent truth (the unpadded set, the same bounds as lists, a
count of the points) or checks the error's wording."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from gpgeom.models.rgnp import RGNP
from gpgeom.pde import NonlinearPoisson1D

SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(4,), mlp_hidden=(8,), grid_size=8)


def _poisson(**kw):
    torch.manual_seed(0)
    opts = dict(hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2)
    opts.update(kw)
    return RGNP.from_family(NonlinearPoisson1D(), **opts).fit(1, progress=False, seed=0)


@pytest.mark.filterwarnings(
    "ignore:RGNP.predict_inverse got:gpgeom.errors.UncalibratedWarning"
)  # few points on purpose
def test_inverse_padding_may_hold_nan_or_points_outside_the_domain():
    r"""``predict_inverse(..., mask=...)`` refused padded entries (``mask`` False) that were NaN ("`u` contains 1
    NaN ...; remove or impute them first") or outside the domain ("1 row(s) of `x` lie outside the domain"), though
    the mask exists to mark them and GICNet ignores them. Now only real points are checked, and the posterior equals
    that of the set without its padding."""
    m = _poisson()
    x = torch.tensor([[[0.1], [0.5], [0.0]], [[0.2], [-0.3], [0.7]]], dtype=torch.float64)
    u = torch.tensor([[0.3, 0.2, 0.0], [0.1, 0.4, 0.5]], dtype=torch.float64)
    w = torch.tensor([1.5], dtype=torch.float64)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    truth = m.predict_inverse(x[:1, :2], u[:1, :2], w, return_std=True)  # the first set without its padding
    x_pad, u_pad = x.clone(), u.clone()
    x_pad[0, 2, 0], u_pad[0, 2] = 5.0, float("nan")
    mean, std = m.predict_inverse(x_pad, u_pad, w, mask=mask, return_std=True)
    torch.testing.assert_close((mean[:1], std[:1]), truth, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean[1:], m.predict_inverse(x[1:], u[1:], w), rtol=1e-12, atol=1e-12)
    # real points are still checked, with the mask in the message
    u_bad = u.clone()
    u_bad[1, 1] = float("nan")
    with pytest.raises(
        ValueError, match=r"`u` holds NaN .* at 1 real point\(s\) \(`mask` True\) \(first at index \(1, 1\): nan\)"
    ):
        m.predict_inverse(x, u_bad, w, mask=mask)
    x_bad = x.clone()
    x_bad[1, 0, 0] = 5.0
    with pytest.raises(ValueError, match=r"row\(s\) of `x` lie outside the domain; e\.g\. x\[1, 0, 0\] = 5"):
        m.predict_inverse(x_bad, u, w, mask=mask)


def _helmholtz(u, x, z, w):
    from gpgeom.models.rgnp import pointwise_grad

    u_xx = pointwise_grad(pointwise_grad(u, x)[..., 0], x)[..., 0]
    return u_xx + z[:, :1] ** 2 * u - w[:, :1]


def _user_model(domain, z_bounds, w_bounds):
    torch.manual_seed(0)
    return RGNP(
        _helmholtz, domain=domain, z_bounds=z_bounds, w_bounds=w_bounds, hidden=(8,), n_freqs=2, gicnet=SMALL_GIC,
        batch_size=2, n_points=5,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_bounds_given_as_arrays_build_the_model_of_the_same_lists(kind):
    r"""``domain``/``z_bounds``/``w_bounds`` given as pairs of numpy arrays or tensors raised "only 0-dimensional
    arrays can be converted to Python scalars" (numpy, a TypeError naming no argument) or "only one element tensors
    can be converted" (torch), and a ``(2, d)`` array "must be a pair". They now build the model of the same bounds as
    lists (same buffers, same predictions)."""
    conv = np.asarray if kind == "numpy" else torch.tensor
    ref = _user_model(([0.0, 0.0], [1.0, 2.0]), ([0.5], [3.0]), ([0.0], [1.0]))
    pairs = (
        (conv([0.0, 0.0]), conv([1.0, 2.0])),
        conv([[0.5], [3.0]]),  # a (2, 1) array
        (conv([0.0]), conv(1.0)),
    )
    got = _user_model(pairs[0], pairs[1], pairs[2])
    for name in ("lower", "upper", "z_low", "z_high", "w_low", "w_high"):
        torch.testing.assert_close(getattr(got, name), getattr(ref, name), rtol=0, atol=0)
    x = torch.rand(4, 2, dtype=torch.float64)
    torch.testing.assert_close(got.fit(1, progress=False, seed=0).predict([1.0], [0.5], x),
                               ref.fit(1, progress=False, seed=0).predict([1.0], [0.5], x))  # fmt: skip


def test_empty_or_malformed_bounds_are_named_errors():
    r"""``z_bounds=([], [])`` (no inverse parameter) passed the bounds check and failed inside GICNet's construction
    with "`out_features` must be > 0, got 0"; a bound of nested lists failed in ``float()``. Both now name the
    argument and what was given; ``w_bounds=([], [])`` still means no known parameters, like ``None``."""
    with pytest.raises(ValueError, match=r"`z_bounds` must bound at least one dimension, got empty bounds"):
        _user_model((0.0, 1.0), ([], []), ([0.0], [1.0]))
    with pytest.raises(ValueError, match=r"`domain` must bound at least one dimension"):
        _user_model(([], []), ([0.5], [3.0]), None)
    with pytest.raises(ValueError, match=r"`z_bounds`: the lower bound must be a number or a flat sequence"):
        _user_model((0.0, 1.0), ([[0.5]], [[3.0]]), None)
    with pytest.raises(ValueError, match=r"`domain`: the upper bound must be a number or a flat sequence .*'one'"):
        _user_model((0.0, "one"), ([0.5], [3.0]), None)
    m = RGNP(
        lambda u, x, z, w: _algebraic(u, x, z), domain=(0.0, 1.0), z_bounds=([0.5], [3.0]),
        w_bounds=([], []), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC,
    )  # fmt: skip
    assert m.dim_w == 0


def _algebraic(u, x, z):
    return u - z[:, :1]


def _burgers_fixed(n_points):
    from gpgeom.pde import ViscousBurgers

    torch.manual_seed(0)
    return RGNP.from_family(
        ViscousBurgers(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2, grid="fixed", n_points=n_points
    )


def test_fixed_grid_has_the_number_of_points_asked_for_or_says_why_not(tmp_path):
    r"""``grid="fixed"`` in 2-D took round(sqrt(n))**2 points: ``n_points=30`` trained on 25 points, 10 on 9, 1 on 4,
    silently (the docstring promised a grid of ``n_points`` points). A regular grid of 30 points does not exist: such
    sizes are now a ``ValueError`` naming ``n_points`` and the nearest valid sizes; ``k**2`` points give the
    ``k x k`` grid of the margin-shrunk box. Files written before keep the grid they were trained on."""
    from gpgeom._io import write_model_file

    for n, near in ((30, "25 or 36"), (10, "9 or 16"), (1, "4")):
        with pytest.raises(ValueError, match=rf"`n_points` must be k\*\*2 with k >= 2 .* got {n}; use e\.g\. {near}\."):
            _burgers_fixed(n)
    m = _burgers_fixed(36)
    grid = m.sample_grid(3)
    margin = m.boundary_margin
    axis = np.linspace(margin, 1 - margin, 6)
    truth = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    assert grid.shape == (3, 36, 2)
    np.testing.assert_allclose(grid[1].numpy(), truth, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"`n_points` must be k\*\*2 .* got 20; use e\.g\. 16 or 25\."):
        m.fit(1, n_points=20, progress=False)
    with pytest.raises(ValueError, match=r"`batch_size` must be"):
        m.fit(1, batch_size=0, progress=False)
    # a file of a fixed 2-D grid saved with n_points=30 (trained on 5 x 5 points) loads with that grid
    m25 = _burgers_fixed(25).fit(1, progress=False, seed=0)
    state = m25._get_state()
    state["config"] = {**state["config"], "n_points": 30}
    write_model_file(tmp_path / "old.pt", m25, state)
    old = RGNP.load(tmp_path / "old.pt")
    assert old.n_points == 25
    torch.testing.assert_close(old.sample_grid(1), m25.sample_grid(1), rtol=0, atol=0)
    one_d = _poisson(grid="fixed", n_points=7).sample_grid(1)  # 1-D: any number of points
    assert one_d.shape == (1, 7, 1)


def test_residual_of_a_field_with_nan_names_the_field_and_the_point():
    r"""``RGNP.residual(u_fn, x, z, w)`` returned NaN silently where ``u_fn`` was NaN (the residual check skips
    non-finite fields, whose NaN is not the residual's fault), e.g. ``log(x)`` at x = -0.5; ``PDEFamily.residual``
    names the field there. It now raises naming ``u_fn(x)`` and the point; finite fields are unchanged (the exact
    solution of the Helmholtz equation still has a residual ~0)."""
    m = _user_model((-1.0, 1.0), ([0.5], [3.0]), ([0.0], [1.0]))
    x = torch.tensor([[0.5], [-0.5], [0.25]], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"`u_fn\(x\)` returned 1 NaN .* u_fn\[0, 1\] = nan, .* x\[0, 1\] = -0\.5"):
        m.residual(lambda x: torch.log(x[..., 0]), x, [2.0], [0.0])
    with pytest.raises(ValueError, match=r"`u_fn\(x\)` must return a tensor of shape \(1, 3\) \(B, n\), got list"):
        m.residual(lambda x: [0.0], x, [2.0], [0.0])
    k, c = 2.0, 0.3  # u = cos(k x) + c / k^2 solves u'' + k^2 u = c
    r = m.residual(lambda x: torch.cos(k * x[..., 0]) + c / k**2, x, [k], [c])
    torch.testing.assert_close(r, torch.zeros(1, 3, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(hidden=(8, 0)), ValueError, r"`hidden\[1\]` must be > 0, got 0"),
        (dict(hidden=(-3,)), ValueError, r"`hidden\[0\]` must be > 0, got -3"),
        (dict(hidden=(8.7,)), TypeError, r"`hidden\[0\]` must be an int, got float \(8\.7\)"),
        (dict(hidden=64), ValueError, r"`hidden` must be a sequence of layer widths \(positive ints\), got 64"),
        (dict(freq_range=(1.0,)), ValueError, r"`freq_range` must be a pair of numbers .*got \(1\.0,\)"),
        (dict(variance_bounds=(1e-5,)), ValueError, r"`variance_bounds` must be a pair of numbers .*got \(1e-05,\)"),
        (dict(boundary_margin=0.6), ValueError, r"`boundary_margin` must be < 0\.5 .*got 0\.6"),
        (dict(boundary_margin=0.5), ValueError, r"`boundary_margin` must be < 0\.5 .*got 0\.5"),
    ],
)
def test_network_options_are_checked_with_named_errors(kwargs, error, match):
    r"""A zero width in ``hidden`` built a forward network cut in two (``Linear(11, 0)``), whose mean was its last
    bias for every x, z and w, silently; ``boundary_margin=0.6`` turned the sampling box inside out (Poisson points
    in [-0.2, 0.2] instead of near [-1, 1]); ``hidden=64``, a float or negative width and one-number
    ``freq_range``/``variance_bounds`` failed in torch or in tuple unpacking without naming the argument."""
    with pytest.raises(error, match=match):
        RGNP.from_family(NonlinearPoisson1D(), n_freqs=2, gicnet=SMALL_GIC, **kwargs)


def test_a_wide_boundary_margin_below_one_half_keeps_the_points_in_the_shrunk_box():
    torch.manual_seed(0)
    m = RGNP.from_family(NonlinearPoisson1D(), n_freqs=2, hidden=(8,), gicnet=SMALL_GIC, boundary_margin=0.4)
    x = m.sample_grid(50, 20)
    assert float(x.min()) >= -1 + 0.8 and float(x.max()) <= 1 - 0.8  # [-1 + 0.4 * 2, 1 - 0.4 * 2]
    assert float(x.max() - x.min()) > 0.35  # and fill it


def test_family_config_of_numpy_values_saves_a_file_that_loads(tmp_path):
    r"""A registered family whose ``config()`` held a numpy scalar (``np.float64(2.5)``, e.g. a drawn parameter) or a
    numpy array was saved without complaint, and the file could not be read: "is not a gpgeom model file
    (UnpicklingError: Weights only load failed ...)". Numpy scalars are now stored as Python numbers (the model
    reloads and predicts as saved; its residual of a constant field is still -amp), numpy arrays are a ``TypeError``
    at ``save`` naming the key, before any file is written."""
    from gpgeom.models.rgnp import pointwise_grad
    from gpgeom.pde import PDEFamily, register_family

    @register_family
    class ScaledHelmholtz(PDEFamily):
        name = "test_rgnp_inputs_scaled_helmholtz"
        dim, coordinates, lower, upper = 1, ("x",), (0.0,), (1.0,)
        z_names, z_low, z_high = ("k",), (1.0,), (3.0,)

        def __init__(self, amp=1.0, shape=(1.0,)):
            self.amp, self.shape = amp, shape

        def config(self):
            return {"amp": self.amp, "shape": self.shape}

        def derivatives(self, u_fn, x):
            u = self._eval(u_fn, x)
            return {"u": u, "u_xx": pointwise_grad(pointwise_grad(u, x)[..., 0], x)[..., 0]}

        def residual_from_derivatives(self, d, x, z, w):
            return d["u_xx"] + z[:, :1] ** 2 * d["u"] - float(self.amp)

        def boundary_ansatz(self, x, w):
            return torch.zeros_like(x[..., 0]), x[..., 0] * (1 - x[..., 0])

    torch.manual_seed(0)
    opts = dict(hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2)
    m = RGNP.from_family(ScaledHelmholtz(amp=np.float64(2.5), shape=[np.float32(0.5)]), **opts)
    m.fit(1, progress=False, seed=0)
    m.save(tmp_path / "m.pt")
    back = RGNP.load(tmp_path / "m.pt")
    assert back.family.config() == {"amp": 2.5, "shape": [0.5]}
    x = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)[:, None]
    torch.testing.assert_close(back.predict([2.0], None, x), m.predict([2.0], None, x), rtol=0, atol=0)
    r = back.residual(lambda x: torch.zeros_like(x[..., 0]), x, [2.0])
    torch.testing.assert_close(r, torch.full((1, 5), -2.5, dtype=torch.float64), rtol=0, atol=0)
    bad = RGNP.from_family(ScaledHelmholtz(shape=np.array([1.0, 2.0])), **opts).fit(1, progress=False, seed=0)
    with pytest.raises(TypeError, match=r"ScaledHelmholtz\.config\(\)\['shape'\] is a numpy\.ndarray, .*\.tolist\(\)"):
        bad.save(tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


@pytest.mark.filterwarnings(
    "ignore:RGNP.predict_inverse got:gpgeom.errors.UncalibratedWarning"
)  # few points on purpose
def test_known_parameters_the_model_does_not_have_are_named():
    r"""A ``w`` given to a model built without known parameters (``w_bounds=None``) raised "`w` must have trailing
    shape (0), got shape (1,)" (``predict``, ``predict_inverse``) or "`data['w']` must have trailing shape (2, 0)"
    (``calibrate``/``fit`` data), and ``data['w'] = None`` for a model with one "must have trailing shape (2, 1), got
    shape (2, 0)". The errors now say that the model has no (or how many) known parameters; ``w=None`` and an empty
    ``w`` still work and agree."""
    m = RGNP(
        lambda u, x, z, w: _algebraic(u, x, z), domain=(0.0, 1.0), z_bounds=([0.5], [3.0]), hidden=(8,), n_freqs=2,
        gicnet=SMALL_GIC, batch_size=2,
    ).fit(1, progress=False, seed=0)  # fmt: skip
    x = torch.rand(5, 1, dtype=torch.float64)
    none_given = r"`w` must be None: the model has no known parameters \(built with w_bounds=None\), got .* \(1,\)"
    with pytest.raises(ValueError, match=none_given):
        m.predict([2.0], [1.0], x)
    with pytest.raises(ValueError, match=none_given):
        m.predict_inverse(x, torch.rand(5, dtype=torch.float64), torch.tensor([1.0]))
    rng = np.random.default_rng(0)
    data = {"x": rng.random((2, 3, 1)), "y": rng.random((2, 3)), "z": np.full((2, 1), 2.0), "w": np.ones((2, 1))}
    with pytest.raises(ValueError, match=r"`data\['w'\]` must be None: the model has no known parameters"):
        m.calibrate(data)
    torch.testing.assert_close(m.predict([2.0], None, x), m.predict([2.0], torch.zeros(0), x), rtol=0, atol=0)
    p = _poisson()
    data = {"x": rng.random((2, 3, 1)), "y": rng.random((2, 3)), "z": np.zeros((2, 5)), "w": None}
    with pytest.raises(ValueError, match=r"`data\['w'\]` is required \(got None\): the model has 1 known parameter"):
        p.fit(1, data=data, progress=False)


def test_a_lift_that_couples_the_points_is_refused():
    r"""A lift computed across the points, here ``d = s(x) / max_j s(x_j)`` with ``s = x (1 - x)``, trained
    silently, though RGNP's derivatives (the gradient of the sum over the points) are then not the field's: on the
    points (0.1, 0.2, 0.3) the autograd derivative of ``u = d`` (``u_hat = 1``) at x = 0.3 is
    -(0.09 + 0.16) 0.4 / 0.21^2 = -2.27, the other points' sensitivities to the maximiser, where the field
    ``s(x) / 0.21`` has slope 0.4 / 0.21 = 1.90. The check before training now refuses such a lift, naming ``lift``
    and the coupled points; a pointwise lift still trains."""
    from gpgeom.models.rgnp import pointwise_grad

    x = torch.tensor([[[0.1], [0.2], [0.3]]], dtype=torch.float64, requires_grad=True)
    s = x[..., 0] * (1 - x[..., 0])
    coupled = pointwise_grad(s / s.amax(1, keepdim=True), x)[..., 0].detach()
    own = (1 - 2 * x[..., 0].detach()) / 0.21  # the field's slope, the maximum held at 0.21
    torch.testing.assert_close(coupled[0, 2], torch.tensor(-0.25 * 0.4 / 0.21**2, dtype=torch.float64))
    torch.testing.assert_close(own[0, 2], torch.tensor(0.4 / 0.21, dtype=torch.float64))
    torch.testing.assert_close(coupled[0, :2], own[0, :2])  # the other points are not the maximiser
    m = _user_model((0.0, 1.0), ([0.5], [3.0]), ([0.0], [1.0]))
    m.lift_fn = lambda x, w: (torch.zeros_like(x[..., 0]), (x[..., 0] * (1 - x[..., 0])).div(
        (x[..., 0] * (1 - x[..., 0])).amax(1, keepdim=True)))  # fmt: skip
    with pytest.raises(ValueError, match=r"`lift\(x, w\)` must be pointwise: d\[:, 0\] depends on x\[:, 1\]"):
        m.fit(1, progress=False, seed=0)
    m.lift_fn = lambda x, w: (torch.zeros_like(x[..., 0]), x[..., 0] * (1 - x[..., 0]))
    assert len(m.fit(1, progress=False, seed=0).fit_history) == 1


def _declared_family(**attrs):
    from gpgeom.models.rgnp import pointwise_grad
    from gpgeom.pde import PDEFamily

    class Declared(PDEFamily):
        name = "test_rgnp_inputs_declared"
        dim, coordinates, lower, upper = 1, ("x",), (0.0,), (1.0,)
        z_names, z_low, z_high = ("a", "b"), (0.0, 0.0), (1.0, 1.0)

        def derivatives(self, u_fn, x):
            u = self._eval(u_fn, x)
            return {"u": u, "u_x": pointwise_grad(u, x)[..., 0]}

        def residual_from_derivatives(self, d, x, z, w):
            return d["u_x"] - z[:, :1] - z[:, 1:2]

        def boundary_ansatz(self, x, w):
            return torch.zeros_like(x[..., 0]), x[..., 0]

    for k, v in attrs.items():
        setattr(Declared, k, v)
    return Declared()


def test_a_family_whose_sizes_disagree_is_refused(tmp_path):
    r"""``RGNP.from_family`` took the model's sizes from the bounds alone: a family declaring ``dim = 2`` with 1-D
    bounds gave a 1-D model (``model.dim`` 1, ``family.dim`` 2) silently, and two ``z_names`` with one bound failed
    in the first residual with "The size of tensor a (3) must match the size of tensor b (0)" and a hint about ``w``.
    Both are now a ``ValueError`` naming the family and the attributes that disagree (also in ``make_test_set``)."""
    from gpgeom.datasets.pde import make_test_set

    good = _declared_family()
    opts = dict(hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2)
    m = RGNP.from_family(good, **opts)
    assert (m.dim, m.dim_z, m.dim_w) == (good.dim, good.dim_z, good.dim_w) == (1, 2, 0)
    with pytest.raises(ValueError, match=r"Declared declares dim, lower, upper, coordinates of different sizes \[2, 1"):
        RGNP.from_family(_declared_family(dim=2), **opts)
    with pytest.raises(ValueError, match=r"Declared declares z_names, z_low, z_high of different sizes \[2, 1, 1\]"):
        RGNP.from_family(_declared_family(z_low=(0.0,), z_high=(1.0,)), **opts)
    with pytest.raises(ValueError, match=r"Declared declares w_names, w_low, w_high of different sizes \[1, 0, 0\]"):
        make_test_set(_declared_family(w_names=("c",)), 1, 3, cache_dir=tmp_path)


def test_elbo_terms_take_the_data_as_fit_does():
    r"""``RGNP.elbo_terms(x, w, data)`` with the data dict that :meth:`fit` takes raised ``KeyError: 'noise'`` (tensors)
    or torch's "zeros_like(): argument 'input' must be Tensor, not numpy.ndarray" (numpy arrays): it wanted the dict
    ``fit`` prepares internally. The raw dict is now prepared as ``fit`` does (with its defaults, or the given
    ``noise_std`` and ``data_batch``): the terms equal those of the prepared dict under the same random draws."""
    import pyro

    from gpgeom.models.rgnp._checks import prepare_data

    m = _poisson()
    fam = NonlinearPoisson1D()
    z, w = (torch.tensor(a) for a in fam.sample_params(3, 0))
    rng = np.random.default_rng(0)
    data = {"x": rng.uniform(-0.8, 0.8, (3, 4, 1)), "y": 0.05 * rng.standard_normal((3, 4)), "z": z, "w": w}
    x, wg = m._draw(2, 5)
    for kwargs in ({}, {"noise_std": 0.1, "data_batch": 3}):  # fit's defaults, then others
        pyro.set_rng_seed(0)
        truth = m.elbo_terms(x, wg, prepare_data(m, data, kwargs.get("noise_std", 0.05), kwargs.get("data_batch", 50)))
        pyro.set_rng_seed(0)
        got = m.elbo_terms(x, wg, data, **kwargs)
        assert set(got) == set(truth) and "y" in got
        for k in truth:
            torch.testing.assert_close(got[k], truth[k], rtol=0, atol=0)


def test_gicnet_options_that_rgnp_sets_are_named():
    r"""``gicnet={"param_features": 3}`` (or ``domain``, ``out_features``, ...) raised "gpgeom.nn.gicnet.GICNet()
    got multiple values for keyword argument 'param_features'", and a list instead of a dict "'list' object is not a
    mapping"; both now name ``gicnet`` and what RGNP sets itself."""
    with pytest.raises(ValueError, match=r"`gicnet` may not set domain, param_features: RGNP sets them"):
        _poisson(gicnet={**SMALL_GIC, "param_features": 3, "domain": (0.0, 1.0)})
    with pytest.raises(TypeError, match=r"`gicnet` must be None or a dict of GICNet keyword arguments, got list"):
        _poisson(gicnet=[("lift_channels", 4)])


def test_a_range_of_grid_sizes_is_checked_drawn_log_uniformly_repeated_by_the_seed_and_saved(tmp_path):
    r"""``n_points=(lo, hi)``: refused in any other form (naming ``n_points``, the expected form and what was given)
    and with a fixed grid (``fit`` with a range warns on a model built without the count input); each grid's size is
    log-uniform in [lo, hi] (as many draws below the geometric mean as above, both ends reached, 4000 draws in
    [5, 50]); ``sample_grid`` draws one size per call from its generator; two seeded fits repeat bit for bit; the
    model file keeps the range and the count feature."""
    from gpgeom.models.rgnp._checks import draw_grid_size

    for bad, error, match in (
        ((0, 5), ValueError, r"`n_points\[0\]` must be > 0"),
        ((10, 5), ValueError, r"`n_points` = \(lo, hi\) needs lo <= hi, got \(10, 5\)"),
        ((5, 10, 20), ValueError, r"`n_points` must be an int or a pair \(lo, hi\) of ints, got \(5, 10, 20\)"),
        ((5, 7.5), TypeError, r"`n_points\[1\]` must be an int"),
    ):
        with pytest.raises(error, match=match):
            _poisson(n_points=bad)
    with pytest.raises(ValueError, match=r"`n_points` may be a range \(4, 9\) only with grid='random'"):
        _poisson(grid="fixed", n_points=(4, 9))
    with pytest.raises(ValueError, match=r"`n_points` = \(lo, hi\) needs lo <= hi"):
        _poisson().fit(1, n_points=(9, 4), progress=False)
    with pytest.warns(UserWarning, match=r"fit\(n_points=\(4, 9\)\) .* is not told a set's size"):
        _poisson().fit(1, n_points=(4, 9), progress=False)

    g = torch.Generator().manual_seed(0)
    draws = np.array([draw_grid_size((5, 50), g) for _ in range(4000)])
    assert draws.min() == 5 and draws.max() == 50  # each end has probability 0.085 and 0.0085
    assert 0.46 < float((draws < 16).mean()) < 0.54  # P(X < 16) = log(16 / 5) / log(51 / 5) = 0.501
    assert draw_grid_size(17, g) == 17

    m = _poisson(n_points=(3, 40))
    sizes = {m.sample_grid(2, generator=torch.Generator().manual_seed(s)).shape[1] for s in range(30)}
    assert min(sizes) >= 3 and max(sizes) <= 40 and len(sizes) > 5
    assert m.sample_grid(2, 11).shape == (2, 11, 1)
    with pytest.raises(TypeError, match=r"`generator` must be a torch.Generator or None, got int"):
        m.sample_grid(2, generator=5)  # the grid size is drawn from it first

    def fitted():
        return RGNP.from_family(
            NonlinearPoisson1D(), hidden=(8,), n_freqs=2, gicnet=SMALL_GIC, batch_size=2, n_points=(3, 40), seed=1
        ).fit(4, progress=False, seed=2)

    a, b = fitted(), fitted()
    assert a.fit_history == b.fit_history
    x = torch.rand(2, 13, 1, dtype=torch.float64) * 2 - 1
    u = torch.rand(2, 13, dtype=torch.float64)
    w = torch.tensor([1.5], dtype=torch.float64)
    a.save(tmp_path / "ranged.pt")
    loaded = RGNP.load(tmp_path / "ranged.pt")
    assert tuple(loaded.n_points) == (3, 40) and loaded.inverse_net.count_feature
    torch.testing.assert_close(
        loaded.predict_inverse(x, u, w, return_std=True), a.predict_inverse(x, u, w, return_std=True), rtol=0, atol=0
    )


def test_calibrate_with_seed_none_repeats_under_torch_manual_seed_and_checks_the_seed():
    r"""``calibrate(seed=None)`` drew its reference fields from fresh OS entropy (``numpy.random.default_rng(None)``),
    so a script that seeds torch got another calibration every run; it now takes one draw of torch's global stream
    (as ``fit(seed=None)``), and a bad seed is refused naming ``seed``."""
    m = _poisson()
    records = []
    for _ in range(2):
        torch.manual_seed(7)
        records.append(dict(m.calibrate(n_fields=3, n_points=6, seed=None).calibration_))
    assert records[0] == records[1]
    torch.manual_seed(8)
    assert m.calibrate(n_fields=3, n_points=6, seed=None).calibration_ != records[0]
    for bad, error in ((1.5, TypeError), (-1, ValueError), ("3", TypeError)):
        with pytest.raises(error, match=r"`seed` must be an int >= 0 or None, got"):
            m.calibrate(n_fields=3, n_points=6, seed=bad)


def test_predict_inverse_warns_once_beyond_twice_or_half_the_trained_grid_sizes(tmp_path):
    r"""``predict_inverse`` from far more or fewer points than the training grids returned a spread that does not
    hold there (4.2 times the exact sd from 300 points, 0.54 from 5, on a toy trained on 30), silently. It now warns
    once per model when a set holds fewer than half or more than twice the points of ``trained_sizes_`` (every
    ``fit``'s sizes, a range included); within that band, or after the warning, it is silent. The sizes are kept in
    the model file; files from before load with the constructor's ``n_points``."""
    from gpgeom._io import write_model_file
    from gpgeom.errors import UncalibratedWarning

    m = _poisson(n_points=20)
    assert m.trained_sizes_ == (20, 20)
    w = torch.tensor([1.5], dtype=torch.float64)

    def sets(*sizes):
        return [
            (torch.rand(2, n, 1, dtype=torch.float64) * 2 - 1, torch.rand(2, n, dtype=torch.float64)) for n in sizes
        ]

    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedWarning)
        for x, u in sets(10, 20, 40):  # within a factor 2: silent
            m.predict_inverse(x, u, w)
        mask = torch.ones(2, 40, dtype=torch.bool)
        mask[0, 12:] = False  # 12 and 40 real points
        m.predict_inverse(*sets(40)[0], w, mask=mask)
    with pytest.warns(
        UncalibratedWarning,
        match=r"sets of 41 observed points, but q_beta was trained on grids of 20 "
        r"points: its encoder is not told a set's size, .* RGNP\(\.\.\., n_points=\(lo, hi\)\)",
    ):
        m.predict_inverse(*sets(41)[0], w)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncalibratedWarning)
        m.predict_inverse(*sets(300)[0], w)  # once per model
    mask[1, 9:] = False  # 12 and 9 real points: 9 < 20 / 2
    with pytest.warns(UncalibratedWarning, match=r"sets of 9 to 12 observed points"):
        _poisson(n_points=20).predict_inverse(*sets(40)[0], w, mask=mask)
    # a range widens the band, and a range model's warning says it extrapolates
    ranged = _poisson(n_points=(5, 50))
    assert ranged.trained_sizes_ == (5, 50)
    with pytest.warns(
        UncalibratedWarning,
        match=r"sets of 101 observed points, .* grids of 5 to 50 points: its spread "
        r"for that many points is extrapolated",
    ):
        ranged.predict_inverse(*sets(101)[0], w)
    m.fit(1, n_points=100, progress=False, seed=0)
    assert m.trained_sizes_ == (20, 100)
    with pytest.warns(UncalibratedWarning, match=r"sets of 300 observed points, .* grids of 20 to 100 points"):
        m.predict_inverse(*sets(300)[0], w)  # warned before, but trained again since: warned again
    # kept in the file; a file without them (before) takes the constructor's n_points
    m.save(tmp_path / "m.pt")
    assert RGNP.load(tmp_path / "m.pt").trained_sizes_ == (20, 100)
    state = m._get_state()
    del state["trained_sizes"]
    write_model_file(tmp_path / "old.pt", m, state)
    assert RGNP.load(tmp_path / "old.pt").trained_sizes_ == (20, 20)
