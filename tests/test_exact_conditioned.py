r"""The training data in original units of an ExactGPModel returned by ``condition_on_observations`` and
``fantasize``: the union of the model's data and the new observations (``train_data``, ``rebuild_with``, ``repr``,
``subset_output``, copies). Before, such a model kept its parent's ``n`` points there while it held ``n + n'``."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from botorch.sampling.normal import SobolQMCNormalSampler

from gpgeom.botorch._union import noise_in_original_units
from gpgeom.botorch.exact_gp import ExactGPModel

DT = torch.float64


def f(X: torch.Tensor) -> torch.Tensor:
    r"""Two outputs in different units (``... x n x 2`` for ``X`` ``... x n x 2``)."""
    return torch.stack([3.0 * torch.sin(5.0 * X).sum(-1) + 1.0, 0.5 * X[..., 0] ** 2], -1)


@pytest.fixture
def parts():
    g = torch.Generator().manual_seed(0)
    X, Xc, Xn, Xq = (torch.rand(k, 2, dtype=DT, generator=g) for k in (20, 3, 2, 6))
    return X, Xc, Xn, Xq


def _close(a, b, tol=1e-9):
    for pa, pb in ((a.mean, b.mean), (a.variance, b.variance)):
        torch.testing.assert_close(pa.detach(), pb.detach(), rtol=0, atol=tol)


@pytest.mark.parametrize("m", [1, 2])
def test_a_conditioned_model_holds_the_union_and_rebuilds_on_it(parts, m):
    r"""``train_data`` and ``repr`` give ``n + n'`` points, and ``rebuild_with`` on a conditioned model equals
    conditioning twice (before: 20 points, ``n=20``, and the rebuilt model left out the 3 conditioning points: its
    posterior mean was off by 0.030; now 2e-14)."""
    X, Xc, Xn, Xq = parts
    model = ExactGPModel(X, f(X)[..., :m]).fit(seed=0, progress=False, max_iter=30)
    cond = model.condition_on_observations(Xc, f(Xc)[..., :m])
    tX, tY = cond.train_data
    torch.testing.assert_close(tX, torch.cat([X, Xc]), rtol=0, atol=0)
    torch.testing.assert_close(tY, f(torch.cat([X, Xc]))[..., :m], rtol=0, atol=0)
    assert "n=23," in repr(cond)
    twice = cond.condition_on_observations(Xn, f(Xn)[..., :m])
    assert twice.train_data[0].shape == (25, 2) and "n=25," in repr(twice)
    _close(cond.rebuild_with(Xn, f(Xn)[..., :m]).posterior(Xq), twice.posterior(Xq))
    union = model.rebuild_with(torch.cat([Xc, Xn]), f(torch.cat([Xc, Xn]))[..., :m])  # one rebuild on the union
    _close(cond.rebuild_with(Xn, f(Xn)[..., :m]).posterior(Xq), union.posterior(Xq))
    # copies keep the union (before it is read and after)
    for c in (copy.deepcopy(cond), pickle.loads(pickle.dumps(cond))):
        torch.testing.assert_close(c.train_data[0], tX, rtol=0, atol=0)
    c = copy.deepcopy(cond).to(torch.float32)
    assert c.train_data[0].dtype == torch.float32 and c.train_data[0].shape == (23, 2)


def test_a_fixed_noise_conditioned_model_holds_the_noise_in_original_units(parts):
    r"""BoTorch's ``noise`` is in the standardised units; the union's variances are in the original ones (the
    transformed noise times the squared scales, 8.8 and 0.016 here), so that the model rebuilt on the union is the
    conditioned one (before: rebuilt without the conditioning points, means off by 0.015 and variances by 0.091;
    with the union's noise left in the transformed units, 0.012 and 0.0023; now 3e-15 and 2e-14)."""
    X, Xc, Xn, Xq = parts
    Y = f(X)
    model = ExactGPModel(X, Y, torch.full_like(Y, 0.02)).eval()
    scale2 = model.outcome_transform.stdvs.square()  # 1 x 2
    assert float((scale2 - 1).abs().min()) > 0.5  # the units differ: a conversion that is left out shows
    Vc = torch.rand(3, 2, dtype=DT, generator=torch.Generator().manual_seed(1)) * 0.05
    cond = model.condition_on_observations(Xc, f(Xc), noise=Vc / scale2)
    torch.testing.assert_close(cond._original_data[2], torch.cat([torch.full_like(Y, 0.02), Vc]), rtol=1e-14, atol=0)
    _close(model.rebuild_with(Xc, f(Xc), Vc).posterior(Xq), cond.posterior(Xq))
    Vn = torch.full((2, 2), 0.01, dtype=DT)
    twice = cond.condition_on_observations(Xn, f(Xn), noise=Vn / scale2)
    _close(cond.rebuild_with(Xn, f(Xn), Vn).posterior(Xq), twice.posterior(Xq))
    # a transform that is not affine: the variances are untransformed at the transformed outputs (fantasy-shaped)
    flagged = copy.deepcopy(model.outcome_transform)
    flagged.__class__ = type("NotAffine", (type(flagged),), {"_is_linear": property(lambda self: False)})
    Yf = f(Xc).expand(5, 3, 2)  # 5 fantasies
    got = noise_in_original_units(flagged, Yf, Vc / scale2)
    torch.testing.assert_close(got, Vc.expand(5, 3, 2), rtol=1e-14, atol=0)
    assert noise_in_original_units(None, Yf, Vc) is Vc


@pytest.mark.parametrize("fixed", [False, True])
def test_a_fantasy_model_holds_each_fantasy_union(parts, fixed, tmp_path):
    r"""``fantasize`` at ``b x q x d`` with ``s`` fantasies: ``train_data`` is ``s x b x (n + q) x {d, m}`` (the
    fantasy batch shape of its ``train_inputs``; before: ``n x d``), its new rows are the inputs and the fantasised
    outputs (the model's own standardised targets, untransformed), and each fantasy is the model rebuilt on its
    union."""
    X, _, _, Xq = parts
    Y = f(X)
    model = ExactGPModel(X, Y, torch.full_like(Y, 0.02) if fixed else None).fit(seed=0, progress=False, max_iter=30)
    Xf = torch.rand(4, 1, 2, dtype=DT, generator=torch.Generator().manual_seed(2))
    fant = model.fantasize(Xf, SobolQMCNormalSampler(torch.Size([3]), seed=0))
    tX, tY = fant.train_data
    assert tX.shape == (3, 4, 21, 2) and tY.shape == (3, 4, 21, 2) and "n=21," in repr(fant)
    torch.testing.assert_close(tX[..., 20:, :], Xf.expand(3, 4, 1, 2), rtol=0, atol=0)
    targets = fant.train_targets[..., 20:].transpose(-1, -2)  # 3 x 4 x 1 x 2, standardised
    want = model.outcome_transform.untransform(targets)[0]
    torch.testing.assert_close(tY[..., 20:, :], want, rtol=0, atol=1e-12)
    s, b = 2, 3
    noise = model.likelihood.noise.mean(-1).unsqueeze(-2) * model.outcome_transform.stdvs.square() if fixed else None
    rebuilt = model.rebuild_with(Xf[b], tY[s, b, 20:], noise)
    if fixed:  # BoTorch's fantasy noise (the mean training noise, standardised) in the original units
        torch.testing.assert_close(fant._original_data[2][..., 20:, :], noise.expand(3, 4, 1, 2), rtol=1e-14, atol=0)
    post = fant.posterior(Xq.expand(3, 4, 6, 2))  # 3 x 4 x 6 x 2
    want = rebuilt.posterior(Xq)
    torch.testing.assert_close(post.mean[s, b].detach(), want.mean.detach(), rtol=0, atol=1e-9)
    torch.testing.assert_close(post.variance[s, b].detach(), want.variance.detach(), rtol=0, atol=1e-9)
    # a file holds the union, and the model loads with the modules of the data it was built with (20 x 2)
    fant.save(tmp_path / "f.pt")
    back = ExactGPModel.load(tmp_path / "f.pt")
    for got, ref in zip(back.train_data, fant.train_data):
        torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(back.posterior(Xq).mean.detach(), fant.posterior(Xq).mean.detach(), rtol=0, atol=1e-9)


def test_subset_output_keeps_the_data_of_its_outputs(parts):
    r"""``subset_output`` of a (conditioned) model: ``train_data`` and ``repr`` have the kept outputs, and
    ``rebuild_with`` works and equals the full model's rebuild on those outputs (before: 2 columns of ``train_Y`` for
    one output, and ``rebuild_with`` raised a size mismatch)."""
    X, Xc, Xn, Xq = parts
    g = torch.Generator().manual_seed(4)
    Y = torch.cat([f(X), torch.rand(20, 1, dtype=DT, generator=g)], -1)
    Yc = torch.cat([f(Xc), torch.rand(3, 1, dtype=DT, generator=g)], -1)
    Yn = torch.cat([f(Xn), torch.rand(2, 1, dtype=DT, generator=g)], -1)
    cond = ExactGPModel(X, Y).fit(seed=0, progress=False, max_iter=30).condition_on_observations(Xc, Yc)
    for idcs in ([2, 0], [1]):
        sub = cond.subset_output(idcs)
        torch.testing.assert_close(sub.train_data[1], torch.cat([Y, Yc])[:, idcs], rtol=0, atol=0)
        assert f"m={len(idcs)}," in repr(sub)
        got = sub.rebuild_with(Xn, Yn[:, idcs]).posterior(Xq)
        full = cond.rebuild_with(Xn, Yn).posterior(Xq)
        torch.testing.assert_close(got.mean.detach(), full.mean.detach()[:, idcs], rtol=0, atol=1e-9)
        torch.testing.assert_close(got.variance.detach(), full.variance.detach()[:, idcs], rtol=0, atol=1e-9)


def test_condition_on_observations_refuses_outputs_of_the_wrong_width(parts):
    r"""``Y`` with 1 column for a 2-output model: a ``ValueError`` naming the expected shape (before, BoTorch
    broadcast the column to both outputs and conditioned on it)."""
    X, Xc, _, _ = parts
    model = ExactGPModel(X, f(X)).eval()
    with pytest.raises(ValueError, match=r"`Y` must be `batch_shape x n' x 2`, got shape \(3, 1\)"):
        model.condition_on_observations(Xc, f(Xc)[:, :1])


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_subset_output_of_a_fantasy_model_is_each_fantasy_rebuilt_on_those_outputs(parts, fixed, batch):
    r"""``subset_output`` of a fantasy model (data with the fantasy batch dimension, modules with the root's batch
    shape; a fixed-noise fantasy model's noise has no fantasy dimension) equals, for each fantasy, the root's subset
    rebuilt on that fantasy's new points. Before, it raised (the kernel kept batch shape ``m``: "x1 and x2 were not
    broadcastable"); with only that fixed, a fixed-noise fantasy's noise was subset along its points (mean off by
    0.28 on a 2-output case)."""
    X, _, Xn, Xq = parts
    g = torch.Generator().manual_seed(5)
    X = X.expand(*batch, *X.shape) + 0.01 * torch.rand(*batch, *X.shape, dtype=DT, generator=g)
    Xn = Xn.expand(*batch, *Xn.shape)
    Y = torch.cat([f(X), torch.rand(*X.shape[:-1], 1, dtype=DT, generator=g)], -1)  # m = 3
    V = 0.01 + 0.01 * torch.rand(Y.shape, dtype=DT, generator=g) if fixed else None
    root = ExactGPModel(X, Y, V).eval()
    fm = root.fantasize(Xn, SobolQMCNormalSampler(torch.Size([3]), seed=0))
    _, Yf, Vf = fm._original_data  # fantasies x batch x (n + n') x 3, in original units
    for idcs, chain in (([2, 0], [[2, 0]]), ([0], [[2, 0], [1]]), ([1], [[1]])):
        sub = fm
        for step in chain:
            sub = sub.subset_output(step)
        got = sub.posterior(Xq)
        for j in range(3):
            new = (Yf[j, ..., -2:, idcs], None if Vf is None else Vf[j, ..., -2:, idcs])
            truth = root.subset_output(idcs).rebuild_with(Xn, *new).posterior(Xq)
            torch.testing.assert_close(got.mean.detach()[j], truth.mean.detach(), rtol=0, atol=1e-9)
            torch.testing.assert_close(got.variance.detach()[j], truth.variance.detach(), rtol=0, atol=1e-9)


def test_the_new_rows_changed_in_place_after_conditioning_are_not_the_models_data(parts):
    r"""The caller's ``X``, ``Y`` and ``noise`` changed in place after ``condition_on_observations``: the conditioned
    model's ``train_data`` and ``rebuild_with`` still hold the observations it conditioned on (its posterior does).
    Before, they read the caller's changed tensors (views): ``train_X`` off by 1.0, ``train_Y`` by 41, the noise by
    0.08 here, while the posterior kept the old rows."""
    X, Xc, Xn, Xq = parts
    V = torch.full((20, 2), 0.01, dtype=DT)
    root = ExactGPModel(X, f(X), V, outcome_transform=None).eval()
    Xc, Yc, noise = Xc.clone(), f(Xc), torch.full((3, 2), 0.02, dtype=DT)
    kept = (Xc.clone(), Yc.clone(), noise.clone())
    cond = root.condition_on_observations(Xc, Yc, noise=noise)
    Xc.add_(1.0), Yc.mul_(10.0), noise.mul_(5.0)  # the caller reuses its buffers
    X_all, Y_all = cond.train_data
    torch.testing.assert_close(X_all[-3:], kept[0], rtol=0, atol=0)
    torch.testing.assert_close(Y_all[-3:], kept[1], rtol=0, atol=0)
    torch.testing.assert_close(cond._original_data[2][-3:], kept[2], rtol=0, atol=0)
    truth = root.rebuild_with(torch.cat([kept[0], Xn]), torch.cat([kept[1], f(Xn)]), torch.cat([kept[2], V[:2]]))
    _close(cond.rebuild_with(Xn, f(Xn), V[:2]).posterior(Xq), truth.posterior(Xq))
