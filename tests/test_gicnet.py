r"""Tests of the grid-invariant convolutional encoder :class:`gpgeom.nn.gicnet.GICNet`."""

import math

import pytest
import torch

from gpgeom.nn.gicnet import GICNet

DT = torch.float64


def _net(dim=1, **kw):
    domain = kw.pop("domain", ((-1.0,) * dim, (1.0,) * dim))
    kw.setdefault("grid_size", {1: 20, 2: 8, 3: 5}[dim])
    kw.setdefault("lift_channels", 6)
    kw.setdefault("lift_hidden", (16,))
    kw.setdefault("cnn_channels", (8, 8))
    kw.setdefault("mlp_hidden", (32,))
    return GICNet(dim, kw.pop("in_channels", 1), kw.pop("out_features", 3), domain, **kw).to(DT)


def _field(x):
    """A smooth test field on [-1, 1]^D, shape (..., n, 1)."""
    return (torch.sin(math.pi * x[..., :1]) + 0.5 * torch.cos(2 * x).sum(-1, keepdim=True)).to(x.dtype)


def _points(B, n, dim):
    return torch.rand(B, n, dim, dtype=DT) * 2 - 1


@pytest.mark.parametrize("dim, grid, feat", [(1, 20, (8, 5)), (2, (8, 6), (8, 2, 1)), (3, 5, (8, 1, 1, 1))])
def test_shapes_1d_2d_3d(dim, grid, feat):
    net = _net(dim, grid_size=grid, param_features=2, in_channels=2, out_features=4)
    B, n = 3, 40
    x, u, w = _points(B, n, dim), torch.randn(B, n, 2, dtype=DT), torch.randn(B, 2, dtype=DT)
    assert net(x, u, w).shape == (B, 4)
    sizes = (grid,) * dim if isinstance(grid, int) else grid
    assert net.grid_features(x, u).shape == (B, 6 + dim, *sizes)
    assert net.feature_shape == feat  # pooling halves every axis with at least 2 cells, per conv layer
    assert net.grid_points().shape == (math.prod(sizes), dim)
    assert net.lengthscale.shape == (6, dim)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_grid_features_match_direct_formula(dim):
    """The separable evaluation equals the Nadaraya-Watson formula written with the full kernel tensor."""
    net = _net(dim, grid_size=(7, 5, 4)[:dim], density_channel=True, domain=((0.0,) * dim, (2.0, 1.0, 3.0)[:dim]))
    B, n = 2, 25
    x = torch.rand(B, n, dim, dtype=DT) * torch.tensor((2.0, 1.0, 3.0)[:dim], dtype=DT)
    u = torch.randn(B, n, 1, dtype=DT)
    got = net.grid_features(x, u)
    h = net.lift(u)  # (B, n, P)
    ls = net.lengthscale  # (P, D)
    g = net.grid_points()  # (G, D)
    k = torch.exp(
        -0.5 * (((g[None, None, :, None, :] - x[:, None, None, :, :]) / ls[None, :, None, None, :]) ** 2).sum(-1)
    )  # (B, P, G, n)
    width = net.upper - net.lower
    c = (ls * math.sqrt(2 * math.pi) / width * torch.erf(width / (2 * math.sqrt(2) * ls))).prod(-1)
    dens = k.sum(-1) / (n * c[None, :, None])
    vals = (k * h.transpose(1, 2)[:, :, None, :]).sum(-1) / (n * c[None, :, None]) / (dens + net.eps)
    P, sizes = net.lift_channels, net.grid_size
    torch.testing.assert_close(got[:, :P], vals.reshape(B, P, *sizes), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[:, P : 2 * P], dens.reshape(B, P, *sizes), rtol=1e-12, atol=1e-12)
    lo, hi = got[:, 2 * P :].detach().amin(), got[:, 2 * P :].detach().amax()
    assert float(lo) == -1.0 and float(hi) == 1.0  # coordinate channels rescaled to [-1, 1]


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_permutation_invariance_exact(dim):
    net = _net(dim, param_features=1, density_channel=True)
    x = _points(2, 50, dim)
    u, w = _field(x), torch.rand(2, 1, dtype=DT)
    perm = torch.randperm(50)
    out, out_p = net(x, u, w), net(x[:, perm], u[:, perm], w)
    assert float((out - out_p).detach().abs().max()) < 1e-12


def test_replicating_points_leaves_output_unchanged():
    """The 1/n normalisation with a relative floor makes the encoder exactly invariant to duplicating every point."""
    net = _net(2, param_features=1, density_channel=True)
    x = _points(2, 30, 2)
    u, w = _field(x), torch.rand(2, 1, dtype=DT)
    out3 = net(x.repeat(1, 3, 1), u.repeat(1, 3, 1), w)
    assert float((net(x, u, w) - out3).detach().abs().max()) < 1e-12


def test_near_invariance_to_number_of_points_30_vs_300():
    """30 vs 300 uniform points of the same smooth fields, at initialisation, default lengthscale (1 grid spacing).

    Metrics, averaged over 8 independent draws of the points and 16 fields each, both relative to the spread over
    the fields (the signal the encoder must keep apart):
    grid: ||g_30 - g_300|| / ||g_300 - mean over fields|| of the interpolated lifted values (measured over 40
    network seeds with the default initialisation: median 21%, worst 28%; PyTorch's initialisation: 21%, 29%);
    output: ||f_30 - f_300|| / ||f_300 - mean over fields|| (median 14%, worst 22%; PyTorch's: 9%, 19%).
    Tolerances 35% and 30%.
    """
    net = _net(
        1,
        param_features=1,
        lift_channels=16,
        lift_hidden=(32, 32),
        cnn_channels=(32, 32, 32),
        mlp_hidden=(128, 128),
        out_features=4,
    )
    F = 16
    grid_err, out_err = [], []
    with torch.no_grad():
        for _ in range(8):
            th = torch.rand(F, 3, dtype=DT) * torch.tensor([1.0, 3.0, 1.0], dtype=DT)

            def fam(x, th=th):
                return th[:, None, :1] * torch.sin(math.pi * x + th[:, None, 1:2]) + th[:, None, 2:] * torch.cos(2 * x)

            w = torch.rand(1, 1, dtype=DT).expand(F, 1)
            x30, x300 = _points(1, 30, 1).expand(F, 30, 1), _points(1, 300, 1).expand(F, 300, 1)
            f30, f300 = net(x30, fam(x30), w), net(x300, fam(x300), w)
            out_err.append(float((f30 - f300).norm() / (f300 - f300.mean(0)).norm()))
            P = net.lift_channels
            g30, g300 = net.grid_features(x30, fam(x30))[:, :P], net.grid_features(x300, fam(x300))[:, :P]
            grid_err.append(float((g30 - g300).norm() / (g300 - g300.mean(0)).norm()))
    grid_err, out_err = sum(grid_err) / 8, sum(out_err) / 8
    assert grid_err < 0.35, grid_err
    assert out_err < 0.3, out_err


def test_density_channel_is_one_inside_for_uniform_points():
    net = _net(1, density_channel=True, init_lengthscale=(0.05, 0.4))
    x = _points(1, 20000, 1)
    dens = net.grid_features(x, _field(x)).detach()[0, net.lift_channels : 2 * net.lift_channels]  # (P, R)
    centre = dens[:, 8:12]  # nodes near the centre of [-1, 1]
    assert float((centre - 1).abs().max()) < 0.06


def test_mask_equals_dropping_padded_points():
    net = _net(2, param_features=2, density_channel=True)
    n1, n2 = 17, 40
    x1, x2 = _points(1, n1, 2), _points(1, n2, 2)
    w = torch.rand(2, 2, dtype=DT)
    ref = torch.cat([net(x1, _field(x1), w[:1]), net(x2, _field(x2), w[1:])])
    pad_x = torch.full((1, n2 - n1, 2), 7.0, dtype=DT)  # outside the domain: must be ignored
    x = torch.cat([torch.cat([x1, pad_x], 1), x2])
    u = _field(x)
    u[0, n1:] = float("nan")  # padded values may be anything
    mask = torch.ones(2, n2, dtype=torch.bool)
    mask[0, n1:] = False
    torch.testing.assert_close(net(x, u, w, mask=mask), ref, rtol=1e-12, atol=1e-12)


def test_gradients_reach_lengthscales_and_weights():
    net = _net(3, param_features=1)
    x = _points(2, 30, 3)
    net(x, _field(x), torch.rand(2, 1, dtype=DT)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    assert float(net.raw_lengthscale.grad.abs().min()) > 0


def test_silu_gain_is_the_second_moment_of_silu():
    from gpgeom.nn.gicnet import SILU_GAIN

    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=DT)
    mc = float(torch.nn.functional.silu(z).square().mean())  # Monte Carlo, rel. sd about 2e-3
    assert SILU_GAIN == pytest.approx(mc**-0.5, rel=5e-3)
    assert SILU_GAIN == pytest.approx(1.6765, abs=1e-4)


def test_deep_encoder_keeps_its_input_dependence_at_initialisation():
    r"""At the reference's sizes (3 lifting + 6 conv + 6 head layers) the default initialisation keeps the output
    dependent on the field and the lowest layer's gradient of the same order as the top layer's; PyTorch's default
    initialisation loses both (with it, RGNP's inverse network stayed at the prior mean)."""
    kw = dict(
        lift_channels=20,
        lift_hidden=(20, 20, 20),
        cnn_channels=(20,) * 6,
        grid_size=20,
        mlp_hidden=(500, 100, 300, 300, 300, 300),
        param_features=1,
    )
    g = torch.Generator().manual_seed(1)
    B, n = 32, 30
    x = torch.rand(B, n, 1, generator=g) * 2 - 1
    amp, freq = torch.rand(B, 1, 1, generator=g), torch.rand(B, 1, 1, generator=g)
    u = torch.cos(0.5 * math.pi * x) * (0.3 + amp) * (1 + 0.5 * torch.sin(3 * freq * x))  # O(1) smooth fields
    w = torch.zeros(B, 1)  # the same known parameter: any spread of the output comes from the field
    stats = {}
    for init in ("silu", "torch"):
        spreads, ratios = [], []
        for seed in range(3):
            torch.manual_seed(seed)
            net = GICNet(1, 1, 10, (-1.0, 1.0), weight_init=init, **kw)
            out = net(x, u, w)
            spreads.append(float((out.std(0).mean() / out.square().mean().sqrt()).detach()))
            out.square().sum().backward()
            ratios.append(float(net.lift[0].weight.grad.norm() / net.head[-1].weight.grad.norm()))
        stats[init] = (min(spreads), max(spreads), min(ratios), max(ratios))
    assert stats["silu"][0] > 0.1 and stats["silu"][2] > 1e-3, stats
    assert stats["torch"][1] < 1e-2 and stats["torch"][3] < 1e-6, stats  # measured ~1e-3 and ~1e-9


def test_dtype_and_device_follow_the_module():
    net32 = _net(1).float()
    x = _points(2, 10, 1)  # float64 inputs are converted to the module's dtype
    assert net32(x, _field(x)).dtype == torch.float32
    if torch.cuda.is_available():
        net_c = _net(1).cuda()
        xc = x.cuda()
        assert net_c(xc, _field(xc)).device.type == "cuda"


def test_lengthscale_initialisation_options():
    assert torch.allclose(_net(1, grid_size=21).lengthscale, torch.full((6, 1), 0.1, dtype=DT))
    ls = _net(2, init_lengthscale=(0.01, 1.0)).lengthscale
    torch.testing.assert_close(ls[:, 0], torch.logspace(-2, 0, 6, dtype=DT))
    ls = _net(2, init_lengthscale=torch.tensor([0.2, 0.3])).lengthscale
    torch.testing.assert_close(ls, torch.tensor([[0.2, 0.3]] * 6, dtype=DT))


def test_points_outside_domain_raise():
    net = _net(2, domain=((0.0, 0.0), (1.0, 2.0)))
    x = torch.rand(2, 10, 2, dtype=DT)
    x[1, 3, 1] = -0.5
    with pytest.raises(ValueError, match=r"outside the domain.*x\[1, 3, 1\] = -0\.5 is not in \[0, 2\]"):
        net(x, _field(x))
    x[1, 3, 1] = 2.0 + 1e-12  # round-off beyond the boundary is tolerated
    net(x, _field(x))


def test_w_must_be_none_without_param_features():
    net = _net(1)
    x = _points(2, 5, 1)
    assert net(x, _field(x), torch.zeros(2, 0, dtype=DT)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"`w` must be None: this GICNet was built with param_features=0"):
        net(x, _field(x), torch.ones(2, 1, dtype=DT))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda n, x, u: n(x[0], u[0]), ValueError, r"`x` must have 3 dimensions"),
        (lambda n, x, u: n(x, u[..., :0]), ValueError, r"`u` must have trailing shape \(2, 5, 1\)"),
        (lambda n, x, u: n(x, u, None), ValueError, r"`w` is required"),
        (lambda n, x, u: n(x, u, torch.ones(2, 3, dtype=DT)), ValueError, r"`w` must have trailing shape \(2, 1\)"),
        (
            lambda n, x, u: n(x, u, torch.ones(2, 1), torch.zeros(2, 5, dtype=torch.bool)),
            ValueError,
            r"set 0 of the batch has no real points",
        ),
        (lambda n, x, u: n(x, u, torch.ones(2, 1), torch.ones(2, 5)), TypeError, r"`mask` must be a bool tensor"),
        (lambda n, x, u: n(x, u.fill_(float("nan")), torch.ones(2, 1)), ValueError, r"`u` contains 10 real point"),
        (lambda n, x, u: n(x.long(), u, torch.ones(2, 1)), TypeError, r"`x` must be a floating-point tensor"),
    ],
)
def test_bad_forward_inputs(call, error, match):
    net = _net(1, param_features=1)
    x = _points(2, 5, 1)
    with pytest.raises(error, match=match):
        call(net, x, _field(x))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"dim": 4}, ValueError, r"Unknown `dim`=4"),
        ({"domain": ((0.0,), (0.0,))}, ValueError, r"lower < upper in every dimension; dimension 0"),
        ({"domain": (0.0, 1.0, 2.0)}, ValueError, r"`domain` must be a pair"),
        ({"domain": ((0.0, 0.0), (1.0, 1.0))}, ValueError, r"`domain lower bound` must be a number or a sequence of 1"),
        ({"kernel_size": 4}, ValueError, r"`kernel_size` must be odd"),
        ({"grid_size": 0}, ValueError, r"`grid_size\[0\]` must be > 0"),
        ({"pool": "sum"}, ValueError, r"Unknown `pool`='sum'"),
        ({"init_lengthscale": -1.0}, ValueError, r"`init_lengthscale` must be > 0"),
        ({"init_lengthscale": torch.ones(3, 2)}, ValueError, r"must broadcast to \(lift_channels, dim\) = \(16, 1\)"),
    ],
)
def test_bad_construction(kwargs, error, match):
    dim = kwargs.pop("dim", 1)
    domain = kwargs.pop("domain", ((-1.0,), (1.0,)))
    with pytest.raises(error, match=match):
        GICNet(dim, 1, 2, domain, **kwargs)
