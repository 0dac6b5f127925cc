r"""Copies of fitted models: ``copy.deepcopy`` and ``pickle`` (``torch.save(model)``, Dask and multiprocessing)
give independent models with bitwise the same predictions; what cannot be pickled (an RGNP's lambda residual) is a
TypeError naming it and ``save``/``load``; ``copy.copy`` is refused with the remedies (a shallow copy shared the
fitted tensors, and ``to(dtype=...)`` on it broke the original)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from contract import tensor_leaves

from gpgeom import RGNP, FunBaT, FunBaTCP
from gpgeom.botorch import ExactGPModel
from gpgeom.errors import ConvergenceWarning, NotFittedError
from gpgeom.models.mmgp import MMGP
from gpgeom.models.rvgp import RVGP
from gpgeom.models.trajectory import SE3Trajectory, SO3xR3Trajectory
from gpgeom.pde import NonlinearPoisson1D

DT = torch.float64
SMALL_GIC = dict(lift_channels=6, lift_hidden=(12,), cnn_channels=(8, 8), mlp_hidden=(32,), grid_size=12)


def _pickled(model):
    return pickle.loads(pickle.dumps(model))


def _torch_saved(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _same(a, b) -> bool:
    ta, tb = tensor_leaves(a), tensor_leaves(b)
    return len(ta) == len(tb) > 0 and all(torch.equal(x, y) for x, y in zip(ta, tb))


# ----------------------------------------------------------------------------------------------------------------
# small fitted models: (build, fit, query) of each class
def _mmgp():
    from test_mmgp import _synthetic, contract_query

    M, mu, U, w = _synthetic(6, seed=0)
    build = lambda: MMGP(n_modes_geometry=2, n_modes_fields=2, restarts=0, max_iter=5, floater_start=(0.0, 0.0))  # noqa: E731
    return build, lambda m: m.fit(M, mu, U, w, progress=False), contract_query


def _rvgp():
    from test_rvgp import contract_query

    from gpgeom.datasets.vector_fields import sphere_vector_field

    s = sphere_vector_field(300, "mixed", seed=1)
    idx = torch.as_tensor(np.random.default_rng(1).permutation(300)[:150])
    vec = torch.as_tensor(s.vectors[idx.numpy()])
    return lambda: RVGP(s.points, n_eigenpairs=16, dim=2), lambda m: m.fit(idx, vec, max_iter=10), contract_query


def _funbat(cls):
    from gpgeom.datasets.tensors import make_synthetic_tensor

    d = make_synthetic_tensor(150, 10, rank=2, n_coords=12, noise_sd=0.05, seed=13)
    g = torch.linspace(0.05, 0.95, 6, dtype=DT)
    Xt = torch.stack([g, g.flip(0), torch.full_like(g, 0.4)], -1)
    return (
        lambda: cls(2, max_sweeps=3, n_restarts=0),
        lambda m: m.fit(d.X_train, d.y_train),
        lambda m, _: m.predict(Xt, return_std=True),
    )


def _rgnp():
    from test_rgnp import contract_query

    def build():
        return RGNP.from_family(
            NonlinearPoisson1D(), hidden=(16, 16), n_freqs=4, gicnet=SMALL_GIC, batch_size=4, n_points=10, seed=0
        )

    return build, lambda m: m.fit(2, lr=1e-3, progress=False, seed=0), contract_query


def _trajectory(cls, prior):
    from test_trajectory import _KT, _contract_fit, contract_query

    return lambda: cls(_KT, prior=prior, qc_rot=[1.0, 2.0, 3.0], qc_pos=4.0), _contract_fit, contract_query


def _exact():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(25, 2, dtype=DT, generator=g)
    Y = torch.stack([torch.sin(5 * X[:, 0]), X[:, 1] ** 2], -1)
    Xt = torch.rand(6, 2, dtype=DT, generator=g)
    return (
        lambda: ExactGPModel(X, Y),
        lambda m: m.fit(max_iter=20, progress=False),
        lambda m, _: m.predict(Xt, return_std=True),
    )


CASES = {
    "MMGP": _mmgp,
    "RVGP": _rvgp,
    "FunBaT": lambda: _funbat(FunBaT),
    "FunBaTCP": lambda: _funbat(FunBaTCP),
    "RGNP": _rgnp,
    "SO3xR3Trajectory": lambda: _trajectory(SO3xR3Trajectory, "wnoj"),
    "SE3Trajectory": lambda: _trajectory(SE3Trajectory, "wnoa"),
    "ExactGPModel": _exact,
}


def _fitted(name):
    build, fit, query = CASES[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return build, fit(build()), query


@pytest.mark.parametrize("name", sorted(CASES))
def test_deepcopy_and_pickle_give_independent_models_with_the_same_predictions(name):
    r"""``copy.deepcopy``, ``pickle`` and ``torch.save(model)`` of every fitted model predict bitwise as the model
    (means and stds); a deep copy moved to float32 leaves the original's predictions bitwise as they were. An RGNP
    of a PDE family did not pickle at all (``PicklingError: Can't pickle <function nonlinear_poisson_1d_residual>:
    attribute lookup ... failed``: the family's residual is a closure)."""
    _, model, query = _fitted(name)
    ref = query(model, False)
    for how, make in (("deepcopy", copy.deepcopy), ("pickle", _pickled), ("torch.save", _torch_saved)):
        other = make(model)
        assert type(other) is type(model) and other.is_fitted
        assert _same(query(other, False), ref), f"{name}: {how} changed the predictions"
        other.to(dtype=torch.float32)
        assert other.dtype == torch.float32
        assert _same(query(model, False), ref), f"{name}: moving the {how} copy to float32 changed the original"


@pytest.mark.parametrize("name", sorted(CASES))
def test_copies_of_an_unfitted_model_stay_unfitted(name):
    r"""An unfitted model deep-copies and pickles (an RGNP of a family raised ``PicklingError``) and still raises
    NotFittedError after (an ExactGPModel predicts from its prior before fitting, as BoTorch models do: its copies
    predict the same)."""
    build, _, query = CASES[name]()
    model = build()
    for other in (copy.deepcopy(model), _pickled(model)):
        assert not other.is_fitted
        if name == "ExactGPModel":
            assert _same(query(other, False), query(model, False))
        else:
            with pytest.raises(NotFittedError, match="not fitted yet"):
                query(other, False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_shallow_copies_are_refused(name):
    r"""``copy.copy`` shared the fitted state: ``to(dtype=torch.float32)`` on a shallow copy of an RVGP or RGNP cast
    the original's parameters (its predictions changed), and on one of MMGP, FunBaT or ExactGPModel it broke the
    original (``expected scalar type Double but found Float``). It is a TypeError naming ``copy.deepcopy``."""
    build, _, _ = CASES[name]()
    with pytest.raises(TypeError, match=r"copy\.copy\(.*is not supported.*copy\.deepcopy\(model\)"):
        copy.copy(build())


def test_a_deep_copy_refits_without_changing_the_original():
    r"""Refitting a deep copy of an RVGP on other data (half of the points, the field doubled) moves the copy's
    predictions and leaves the original's bitwise as they were."""
    _, model, query = _fitted("RVGP")
    ref = query(model, False)
    idx = torch.arange(0, 300, 2)
    vec = 2.0 * model.predict(idx).detach()
    other = copy.deepcopy(model).fit(idx, vec, max_iter=10)
    assert not _same(query(other, False), ref)
    assert _same(query(model, False), ref)


def test_conditioned_views_deepcopy_pickle_and_condition_independently():
    r"""A conditioned RVGP (a view sharing the fitted basis and hyperparameters, made without ``copy.copy``, which
    the models refuse) deep-copies and pickles with the same posterior; conditioning a deep copy of the model leaves
    the original's posterior unchanged."""
    _, model, _ = _fitted("RVGP")
    X = torch.arange(0, 300, 13, dtype=DT)[:, None]
    Xn, Yn = torch.tensor([[3.0], [5.0]], dtype=DT), torch.full((2, 3), 0.01, dtype=DT)

    def post(m):
        p = m.posterior(X)
        return p.mean.detach(), p.variance.detach()

    base = post(model)
    cond = model.condition_on_observations(Xn, Yn)
    ref = post(cond)
    assert not _same(ref, base)  # conditioning moved the posterior
    assert _same(post(copy.deepcopy(cond)), ref) and _same(post(_pickled(cond)), ref)
    assert _same(post(copy.deepcopy(model).condition_on_observations(Xn, Yn)), ref)
    assert _same(post(model), base)


def test_deep_copies_of_a_conditioned_exact_gp_are_bitwise_and_independent():
    r"""A deep copy of a conditioned ExactGPModel keeps GPyTorch's updated caches, as a pickle does: its posterior
    mean and variances are bitwise the original's, whether the copy is taken before or after a first prediction.
    Before, GPyTorch dropped the prediction strategy on a deep copy, the copy refactorised the whole training
    covariance, and its variances were off by 1.3e-15. The carried caches are the copy's own: changing its mean
    cache in place, or its noise, leaves the original bitwise as it was. A copy (deep or pickled) whose noise is
    changed before its first prediction predicts as the model rebuilt on the union of the data with that noise
    (a pickle kept the caches of the old noise: means off by 0.019, variances by 7.8e-5)."""
    _, model, _ = _fitted("ExactGPModel")
    g = torch.Generator().manual_seed(4)
    Xn, Yn = torch.rand(3, 2, dtype=DT, generator=g), torch.rand(3, 2, dtype=DT, generator=g)
    X = torch.rand(7, 2, dtype=DT, generator=g)

    def post(m):
        p = m.posterior(X)
        return p.mean.detach(), p.variance.detach()

    cond = model.condition_on_observations(Xn, Yn)
    early = copy.deepcopy(cond)  # before the conditioned model's first prediction
    ref = post(cond)
    for mean, want in zip(ref, post(model.rebuild_with(Xn, Yn))):
        torch.testing.assert_close(mean, want, rtol=0, atol=1e-9)
    for other in (early, copy.deepcopy(cond), _pickled(cond)):
        got = post(other)
        assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
    other = copy.deepcopy(cond)
    assert other.prediction_strategy is not None and other.prediction_strategy is not cond.prediction_strategy
    with torch.no_grad():
        other.prediction_strategy.mean_cache.add_(1.0)  # GPyTorch's kept (K + noise)^-1 (y - mu) of the copy
    assert not torch.equal(post(other)[0], ref[0])
    rebuilt = model.rebuild_with(Xn, Yn)
    rebuilt.likelihood.noise = 4.0 * rebuilt.likelihood.noise
    want = post(rebuilt)
    for make in (copy.deepcopy, _pickled):  # a copy changed before its first prediction drops the carried caches
        other = make(cond)
        other.likelihood.noise = 4.0 * other.likelihood.noise
        for got, w in zip(post(other), want):
            torch.testing.assert_close(got, w, rtol=0, atol=1e-9)
    assert _same(post(cond), ref)


def test_deep_copies_of_a_fantasy_exact_gp_take_its_sampled_targets_as_leaves():
    r"""A fantasy model's training targets are fantasies sampled with gradients (BoTorch keeps their graph for the
    acquisition's gradient): ``copy.deepcopy`` raised "Only Tensors created explicitly by the user (graph leaves)
    support the deepcopy protocol", where a pickle takes them as leaves. The deep copy now does as the pickle: its
    posterior is bitwise the original's and the pickled copy's, before and after a first prediction, its targets
    are leaves of the same values that require a gradient, and changing them in place leaves the original intact.
    """
    from botorch.sampling.normal import SobolQMCNormalSampler

    _, model, _ = _fitted("ExactGPModel")
    g = torch.Generator().manual_seed(8)
    Xf, X = torch.rand(2, 2, dtype=DT, generator=g), torch.rand(5, 2, dtype=DT, generator=g)
    fantasy = model.fantasize(Xf, SobolQMCNormalSampler(torch.Size([3]), seed=0))
    assert not fantasy.train_targets.is_leaf  # the case: a tensor of an autograd graph in the model's state

    def post(m):
        p = m.posterior(X)
        return p.mean.detach(), p.variance.detach()

    early = copy.deepcopy(fantasy)  # before the fantasy model's first prediction
    ref = post(fantasy)
    assert _same(post(_pickled(fantasy)), ref)
    for other in (early, copy.deepcopy(fantasy)):
        assert _same(post(other), ref)
        assert other.train_targets.is_leaf and other.train_targets.requires_grad
        assert torch.equal(other.train_targets.detach(), fantasy.train_targets.detach())
    with torch.no_grad():
        other.train_targets.add_(1.0)
    assert _same(post(fantasy), ref)


def test_surrogate_list_shallow_copy_is_refused():
    r"""``copy.copy`` of MMGP's ``per_field`` SurrogateList shared its member GPs: ``to(float32)`` on the copy made
    the original's posterior raise ``expected scalar type Double but found Float``. It is refused; deep copies and
    pickles give the same posterior."""
    from test_mmgp import _synthetic

    M, mu, U, w = _synthetic(6, seed=0)
    mm = MMGP(
        n_modes_geometry=2, n_modes_fields=2, restarts=0, max_iter=5, floater_start=(0.0, 0.0),
        hyperparameters="per_field",
    ).fit(M, mu, U, w, progress=False)  # fmt: skip
    gp = mm.gp
    X = torch.rand(3, gp.models[0].train_inputs[0].shape[-1], dtype=DT)
    ref = gp.posterior(X).mean.detach()
    with pytest.raises(TypeError, match=r"copy\.copy\(SurrogateList\) is not supported"):
        copy.copy(gp)
    for other in (copy.deepcopy(gp), _pickled(gp)):
        assert torch.equal(other.posterior(X).mean.detach(), ref)


# ----------------------------------------------------------------------------------------------------------------
# RGNP: user callables
def _module_level_residual(u, x, z, w):
    return u - z[:, :1]


def _user_rgnp(residual, lift=None):
    return RGNP(residual, domain=(-1.0, 1.0), z_bounds=([0.0], [1.0]), lift=lift, gicnet=SMALL_GIC, seed=0)


def test_rgnp_with_a_lambda_refuses_pickle_by_name_and_deep_copies():
    r"""An RGNP whose residual (or lift) is a lambda raised pickle's ``attribute lookup <lambda> on ... failed``
    from deep inside ``pickle.dumps``; it is a TypeError naming the callable and ``save``/``load``. A module-level
    residual pickles, and the copy computes the same residual; deepcopy works with a lambda."""
    z, x = torch.tensor([[0.3]]), torch.linspace(-0.9, 0.9, 5)[None, :, None]
    u_fn = lambda xx: xx[..., 0] ** 2  # noqa: E731

    model = _user_rgnp(lambda u, x, z, w: u - z[:, :1])
    with pytest.raises(TypeError, match=r"`residual` callable '.*<lambda>' cannot be pickled.*RGNP\.load\(path, resi"):
        pickle.dumps(model)
    with pytest.raises(TypeError, match=r"`residual` callable .* cannot be pickled"):
        torch.save(model, io.BytesIO())
    lift = lambda x, w: (torch.zeros(x.shape[:2]), torch.ones(x.shape[:2]))  # noqa: E731
    with pytest.raises(TypeError, match=r"`lift` callable .* cannot be pickled.*RGNP\.load\(path, lift=\.\.\.\)"):
        pickle.dumps(_user_rgnp(_module_level_residual, lift))
    assert torch.equal(copy.deepcopy(model).residual(u_fn, x, z), model.residual(u_fn, x, z))

    plain = _user_rgnp(_module_level_residual)
    back = _pickled(plain)
    assert back.residual_fn is _module_level_residual
    assert torch.equal(back.residual(u_fn, x, z), plain.residual(u_fn, x, z))


def test_rgnp_of_a_family_rebuilds_its_residual_from_the_copied_family():
    r"""The deep copy's (and the unpickled model's) residual closes over the copy's family, not the original's."""
    _, model, _ = _fitted("RGNP")
    for other in (copy.deepcopy(model), _pickled(model)):
        assert other.family is not model.family and other._sources == model._sources
        assert other.residual_fn.__closure__[0].cell_contents is other.family
        assert other.lift_fn.__self__ is other.family
