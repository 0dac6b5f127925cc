r"""FunBaT with hyperparameters learned in some modes only (``learn_hyperparameters`` one bool per mode).

A held mode keeps its initial lengthscale and variance exactly, under every hyperparameter method, while the other
modes learn theirs; all-True and all-False sequences are the same fit as the bools ``True`` and ``False``; a saved
model keeps the flags; bad flags are refused with errors that name the argument. A ``fit`` callback that sets
``learn_hyperparameters = False`` holds every hyperparameter from the next sweep on (the fit is unchanged before it);
a bad ``mask`` is refused with its expected form and what was given.
"""

from __future__ import annotations

import pytest
import torch
from funbat_factories import fit_quietly

from gpgeom.datasets.tensors import make_synthetic_tensor
from gpgeom.models.funbat import FunBaT


@pytest.fixture(scope="module")
def data():
    return make_synthetic_tensor(500, 100, rank=2, n_coords=25, noise_sd=0.05, seed=3)


def _hypers(model: FunBaT) -> list[torch.Tensor]:
    return [torch.stack([k.lengthscale.detach().reshape(()), k.variance.detach().reshape(())]) for k in model.kernels]


@pytest.fixture(scope="module")
def initial(data):
    r"""Every mode's lengthscale and variance as initialised (a fit that learns none)."""
    return _hypers(_fit(data, learn_hyperparameters=False))


def _fit(data, **kw) -> FunBaT:
    opts = dict(max_sweeps=7, min_sweeps=7, n_restarts=0, hyper_warmup=1, lengthscale=0.2, variance=1.0, seed=0)
    return fit_quietly(data, **{**opts, **kw})


@pytest.mark.parametrize("method", ["marginal", "em", "sweep"])
def test_held_mode_keeps_its_hyperparameters(data, method, initial):
    model = _fit(data, learn_hyperparameters=(True, False, True), hyper_method=method)
    hypers = _hypers(model)
    torch.testing.assert_close(hypers[1], initial[1], rtol=0, atol=0)  # held: bit for bit its initial values
    for k in (0, 2):  # the learned modes moved
        assert float((hypers[k].log() - initial[k].log()).abs().max()) > 1e-3, (method, k)
    # the held mode's parameters are trainable again after the step (nothing left frozen behind)
    assert all(p.requires_grad for p in model.kernels.parameters())


def test_all_true_and_all_false_equal_the_bools(data):
    X = data.X_test
    for flags, flag in (((True,) * 3, True), ((False,) * 3, False)):
        a = _fit(data, learn_hyperparameters=flags).predict(X)
        b = _fit(data, learn_hyperparameters=flag).predict(X)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_all_false_holds_every_mode(data):
    model = _fit(data, learn_hyperparameters=(False, False, False))
    assert all(h["hyper_step"] is False for h in model.history)
    assert model.lengthscales_.div(model.coord_span).tolist() == pytest.approx([0.2] * 3, rel=1e-6)


def test_flags_survive_save_and_load(data, tmp_path):
    model = _fit(data, learn_hyperparameters=[True, False, True])
    assert model.learn_hyperparameters == (True, False, True)
    path = tmp_path / "funbat.pt"
    model.save(path)
    loaded = FunBaT.load(path)
    assert loaded.learn_hyperparameters == (True, False, True)
    torch.testing.assert_close(loaded.predict(data.X_test), model.predict(data.X_test))


def test_bad_flags_are_refused(data):
    with pytest.raises(TypeError, match="learn_hyperparameters"):
        FunBaT(2, learn_hyperparameters="yes")
    with pytest.raises(TypeError, match="learn_hyperparameters"):
        FunBaT(2, learn_hyperparameters=(True, 1, True))
    with pytest.raises(TypeError, match="learn_hyperparameters"):
        FunBaT(2, learn_hyperparameters=())
    with pytest.raises(ValueError, match="learn_hyperparameters.*K=3"):
        _fit(data, learn_hyperparameters=(True, False))


@pytest.mark.parametrize("method", ["marginal", "em", "sweep"])
def test_callback_holds_the_hyperparameters_from_the_next_sweep(data, method):
    hold_at = 3  # sweeps with hyperparameter steps (from sweep hyper_warmup=1), then held

    def hold(model: FunBaT, entry: dict) -> None:
        if len(model.history) == hold_at:
            model.learn_hyperparameters = False

    held = _fit(data, hyper_method=method, callback=hold)
    free = _fit(data, hyper_method=method)
    # the same fit until the hold: the callback changes nothing before it
    for a, b in zip(held.history[:hold_at], free.history[:hold_at]):
        assert a["lengthscale"] == b["lengthscale"] and a["train_rmse"] == b["train_rmse"]
    assert held.history[1]["hyper_step"] and not any(h["hyper_step"] for h in held.history[hold_at:])
    after = [h["lengthscale"] for h in held.history[hold_at - 1 :]]
    assert all(ls == after[0] for ls in after)  # bit for bit from the last step on
    assert free.history[-1]["lengthscale"] != after[0]  # while the free fit kept learning
    assert held.lengthscales_.tolist() == after[0]


def test_bad_mask_and_infinite_y_say_what_was_given(data):
    n = len(data.y_train)
    y = data.y_train.clone()
    y[:3] = float("inf")
    with pytest.raises(ValueError, match=r"`y` holds 3 infinite value\(s\) \(NaN marks a missing entry\)"):
        FunBaT(2).fit(data.X_train, y)
    with pytest.raises(ValueError, match=rf"`mask` must be booleans of shape \({n},\), got torch.int64 \({n},\)"):
        FunBaT(2).fit(data.X_train, data.y_train, mask=torch.ones(n, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"`mask` must be booleans of shape \({n},\), got torch.bool \(3,\)"):
        FunBaT(2).fit(data.X_train, data.y_train, mask=torch.ones(3, dtype=torch.bool))


@pytest.mark.parametrize("noise", ["gaussian", "student_t"])
def test_learn_noise_false_from_a_callback_holds_the_noise_from_the_next_sweep(data, noise):
    r"""The hold equals a noise-precision message damped by 1 (the former diagnostic of ``funbat_drift.py``) bit for
    bit, leaves the fit unchanged before it, and keeps ``noise_sd`` exactly while the free fit's moves."""
    hold_at = 3

    def hold(model: FunBaT, entry: dict) -> None:
        if len(model.history) == hold_at:
            model.learn_noise = False

    def damp(model: FunBaT, entry: dict) -> None:
        if len(model.history) == hold_at:
            model.damping_tau = 1.0  # outside the constructor's range on purpose: the old way to hold q(tau)

    held = _fit(data, noise=noise, callback=hold)
    damped = _fit(data, noise=noise, callback=damp)
    free = _fit(data, noise=noise)
    assert [h["noise_sd"] for h in held.history] == [h["noise_sd"] for h in damped.history]
    assert [h["elbo"] for h in held.history] == [h["elbo"] for h in damped.history]
    torch.testing.assert_close(held.predict(data.X_test), damped.predict(data.X_test), rtol=0, atol=0)
    for a, b in zip(held.history[:hold_at], free.history[:hold_at]):
        assert a["noise_sd"] == b["noise_sd"] and a["train_rmse"] == b["train_rmse"]
    after = [h["noise_sd"] for h in held.history[hold_at - 1 :]]
    assert all(sd == after[0] for sd in after)
    assert free.history[-1]["noise_sd"] != after[0]


def test_learn_noise_false_keeps_the_first_estimate_and_survives_save_and_load(data, tmp_path):
    model = _fit(data, learn_noise=False)
    sds = [h["noise_sd"] for h in model.history]
    assert len(set(sds)) == 1 and sds[0] != _fit(data).history[-1]["noise_sd"]
    path = tmp_path / "funbat.pt"
    model.save(path)
    loaded = FunBaT.load(path)
    assert loaded.learn_noise is False
    torch.testing.assert_close(loaded.predict(data.X_test), model.predict(data.X_test))
    assert FunBaT(2).learn_noise is True
    with pytest.raises(TypeError, match=r"`learn_noise` must be a bool, got 0"):
        FunBaT(2, learn_noise=0)
