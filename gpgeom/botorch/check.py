r"""The BoTorch contract every gpgeom surrogate passes, as one checking function.

:func:`check_botorch_model` exercises a model the way BoTorch's acquisition functions and optimisers do and raises
``AssertionError`` with a message that says what was expected and what came back. Every gpgeom model that can
serve as a Bayesian-optimisation surrogate calls it in its tests. A model passes when:

1. ``num_outputs`` is a positive int and ``batch_shape`` a ``torch.Size``;
2. ``posterior(X)`` for ``X`` of shape ``test_batch x q x d`` has ``mean`` and ``variance`` of shape
   ``broadcast(test_batch, model.batch_shape) x q x m``, finite, with non-negative variance, and ``rsample`` gives
   ``sample_shape x broadcast(...) x q x m``;
3. ``output_indices`` selects outputs (when ``m > 1``), ``observation_noise=True`` does not lower the variance;
4. the posterior equals ``predict_fn`` (the model's own ``predict``), when given;
5. a ``ScalarizedPosteriorTransform`` gives the weighted sum of the output means (``... x q x 1``);
6. ``condition_on_observations`` returns a model with the expected batch shape and posterior shapes;
7. ``fantasize`` with a ``SobolQMCNormalSampler`` gives a model of batch shape
   ``num_fantasies x broadcast(...)``;
8. (``m > 1``) ``subset_output`` keeps the selected outputs' posterior, if the model implements it;
9. one ``qLogNoisyExpectedImprovement`` is optimised end to end: ``optimize_acqf`` inside ``bounds`` or
   ``optimize_acqf_discrete`` over ``choices`` (skipped for models with a non-empty batch shape, whose
   acquisition values are batched).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.models.model import Model
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.sampling.normal import SobolQMCNormalSampler
from torch import Tensor

__all__ = ["check_botorch_model"]


def _fail(what: str, expected: object, got: object) -> None:
    raise AssertionError(f"BoTorch contract: {what}: expected {expected}, got {got}.")


def _check_shape(what: str, t: Tensor, expected: torch.Size) -> None:
    if tuple(t.shape) != tuple(expected):
        _fail(f"{what} shape", tuple(expected), tuple(t.shape))


def _check_finite(what: str, t: Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        _fail(what, "finite values", f"{int((~torch.isfinite(t)).sum())} NaN/inf entries")


def _close(what: str, a: Tensor, b: Tensor, rtol: float, atol: float) -> None:
    if a.shape != b.shape:
        _fail(f"{what} shape", tuple(b.shape), tuple(a.shape))
    if not torch.allclose(a, b, rtol=rtol, atol=atol):
        err = float((a - b).detach().abs().max())
        _fail(what, f"agreement within rtol={rtol:g}, atol={atol:g}", f"max abs difference {err:.3g}")


def _infer_d_dtype(model: Model, bounds: Tensor | None, choices: Tensor | None) -> tuple[int, torch.dtype]:
    for t in (bounds, choices):
        if t is not None:
            return t.shape[-1], t.dtype
    train_inputs = getattr(model, "train_inputs", None)
    if train_inputs and isinstance(train_inputs[0], Tensor):
        return train_inputs[0].shape[-1], train_inputs[0].dtype
    raise ValueError("Cannot infer the input dimension d: pass `bounds` (2 x d) or `choices` (c x d).")


def _infer_device(model: Model, bounds: Tensor | None, choices: Tensor | None) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    train_inputs = getattr(model, "train_inputs", None)
    if train_inputs and isinstance(train_inputs[0], Tensor):
        return train_inputs[0].device
    for t in (bounds, choices):
        if t is not None:
            return t.device
    return torch.device("cpu")


def check_botorch_model(
    model: Model,
    *,
    bounds: Tensor | None = None,
    choices: Tensor | None = None,
    batch_shapes: Sequence[Sequence[int]] = ((), (3,)),
    qs: Sequence[int] = (1, 3),
    check_fantasize: bool = True,
    check_condition: bool = True,
    optimize: bool = True,
    predict_fn: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
    num_fantasies: int = 2,
    rtol: float = 1e-6,
    atol: float = 1e-8,
) -> dict[str, Any]:
    r"""Check that ``model`` satisfies the BoTorch surrogate contract; raise ``AssertionError`` if not.

    Test inputs are drawn uniformly inside ``bounds`` or as random rows of ``choices`` (for graph/mesh domains
    whose inputs are vertex indices), else uniformly in the unit cube. A test batch shape that does not broadcast
    with ``model.batch_shape`` is extended by it (``(3,)`` becomes ``(3, *model.batch_shape)``).

    Args:
        model: The fitted model (a ``botorch.models.model.Model``).
        bounds: A ``2 x d`` tensor of lower/upper input bounds (continuous domains).
        choices: A ``c x d`` tensor of admissible inputs (discrete domains); then the optimisation uses
            ``optimize_acqf_discrete``.
        batch_shapes: Test batch shapes to try.
        qs: Numbers of joint points ``q`` to try.
        check_fantasize: Check ``fantasize``.
        check_condition: Check ``condition_on_observations``.
        optimize: Run one ``qLogNoisyExpectedImprovement`` optimisation (small: 2 restarts, 16 raw samples).
        predict_fn: Optional ``X (batch x q x d) -> (mean, std)`` (each ``batch x q x m``), e.g.
            ``lambda X: model.predict(X, return_std=True)``; compared with the posterior's mean and variance.
        num_fantasies: Number of fantasies for the ``fantasize`` check.
        rtol: Relative tolerance of the comparisons.
        atol: Absolute tolerance of the comparisons.

    Returns:
        A dict with ``num_outputs``, ``batch_shape``, ``checks`` (names of the checks that ran), ``skipped``
        (check -> reason), ``candidate`` (``q x d``, when optimised), ``acq_value`` and ``seconds``.

    Raises:
        AssertionError: When the model breaks the contract (the message says where).
        ValueError: When ``d`` cannot be inferred.

    Example:
        >>> model = ExactGPModel(X, Y).fit(progress=False)
        >>> check_botorch_model(model, bounds=torch.stack([X.min(0).values, X.max(0).values]),
        ...                     predict_fn=lambda X: model.predict(X, return_std=True))
    """
    start = time.perf_counter()
    checks: list[str] = []
    skipped: dict[str, str] = {}
    d, dtype = _infer_d_dtype(model, bounds, choices)
    tkw = {"dtype": dtype, "device": _infer_device(model, bounds, choices)}
    if bounds is not None:
        bounds = bounds.to(**tkw)
        if bounds.shape != (2, d):
            raise ValueError(f"`bounds` must be 2 x d = (2, {d}), got shape {tuple(bounds.shape)}.")
    if choices is not None:
        if choices.dim() != 2 or choices.shape[-1] != d:
            raise ValueError(f"`choices` must be c x d = (c, {d}), got shape {tuple(choices.shape)}.")
        choices = choices.to(**tkw)
    lo_hi = bounds if bounds is not None else torch.stack([torch.zeros(d, **tkw), torch.ones(d, **tkw)])

    def draw(shape: Sequence[int]) -> Tensor:
        shape = tuple(shape)
        if choices is not None:
            return choices[torch.randint(choices.shape[0], shape).to(choices.device)]
        return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(*shape, d, dtype=dtype).to(lo_hi.device)

    # 1. attributes
    m = model.num_outputs
    if not isinstance(m, int) or isinstance(m, bool) or m < 1:
        _fail("num_outputs", "a positive int", repr(m))
    mbs = model.batch_shape
    if not isinstance(mbs, torch.Size):
        _fail("batch_shape", "a torch.Size", type(mbs).__name__)
    checks.append("attributes")

    def full_batch(tb: Sequence[int]) -> tuple[torch.Size, torch.Size]:
        tb = torch.Size(tb)
        try:
            return tb, torch.broadcast_shapes(tb, mbs)
        except RuntimeError:
            tb = tb + mbs
            return tb, torch.broadcast_shapes(tb, mbs)

    # 2-5. posterior shapes, values, predict agreement, transforms
    weights = torch.rand(m, dtype=dtype).to(lo_hi.device) + 0.5
    for tb in batch_shapes:
        tb, out_batch = full_batch(tb)
        for q in qs:
            X = draw(tuple(tb) + (q,))
            where = f"posterior(X of shape {tuple(X.shape)})"
            post = model.posterior(X)
            expected = out_batch + torch.Size([q, m])
            _check_shape(f"{where}.mean", post.mean, expected)
            _check_shape(f"{where}.variance", post.variance, expected)
            _check_finite(f"{where}.mean", post.mean)
            _check_finite(f"{where}.variance", post.variance)
            if bool((post.variance < -1e-8 * (1 + post.variance.abs().max())).any()):
                _fail(f"{where}.variance", "non-negative values", f"min {float(post.variance.min()):.3g}")
            samples = post.rsample(torch.Size([2]))
            _check_shape(f"{where}.rsample([2])", samples, torch.Size([2]) + expected)
            _check_finite(f"{where}.rsample", samples)
            noisy = model.posterior(X, observation_noise=True)
            _check_shape(f"{where} with observation_noise=True: mean", noisy.mean, expected)
            if bool((noisy.variance < post.variance - 1e-8 * (1 + post.variance.abs())).any()):
                _fail(f"{where} with observation_noise=True: variance", ">= the noiseless variance", "smaller")
            if m > 1:
                sub = model.posterior(X, output_indices=[m - 1])
                _check_shape(f"{where} with output_indices=[{m - 1}]: mean", sub.mean, out_batch + (q, 1))
                _close(f"{where} with output_indices: mean", sub.mean, post.mean[..., m - 1 :], rtol, atol)
            transform = ScalarizedPosteriorTransform(weights=weights)
            scal = model.posterior(X, posterior_transform=transform)
            _check_shape(f"{where} with ScalarizedPosteriorTransform: mean", scal.mean, out_batch + (q, 1))
            _close(
                f"{where} with ScalarizedPosteriorTransform: mean",
                scal.mean,
                (post.mean * weights).sum(-1, keepdim=True),
                rtol,
                max(atol, 1e-10),
            )
            if predict_fn is not None:
                mean, std = predict_fn(X)
                _close(f"predict_fn mean vs {where}.mean", mean.to(post.mean), post.mean, rtol, atol)
                _close(f"predict_fn std**2 vs {where}.variance", std.to(post.mean) ** 2, post.variance, rtol, atol)
    checks += ["posterior shapes", "rsample", "observation_noise", "posterior_transform"]
    if m > 1:
        checks.append("output_indices")
    if predict_fn is not None:
        checks.append("predict_fn agreement")

    X_test = draw(mbs + (2,))
    # 6. condition_on_observations
    if check_condition:
        Xn = draw(mbs + (2,))
        Yn = model.posterior(Xn).mean.detach()
        cond = model.condition_on_observations(Xn, Yn)
        if tuple(cond.batch_shape) != tuple(mbs):
            _fail("condition_on_observations(...).batch_shape", tuple(mbs), tuple(cond.batch_shape))
        cpost = cond.posterior(X_test)
        _check_shape("condition_on_observations(...).posterior(X).mean", cpost.mean, mbs + (2, m))
        _check_finite("condition_on_observations(...).posterior(X).mean", cpost.mean)
        checks.append("condition_on_observations")

    # 7. fantasize
    if check_fantasize:
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([num_fantasies]))
        for tb in ((), (3,)):
            _, out_batch = full_batch(tb)
            Xf = draw(tuple(out_batch) + (2,))
            fm = model.fantasize(Xf, sampler)
            expected_bs = torch.Size([num_fantasies]) + out_batch
            if tuple(fm.batch_shape) != tuple(expected_bs):
                _fail(f"fantasize(X of shape {tuple(Xf.shape)}).batch_shape", tuple(expected_bs), tuple(fm.batch_shape))
            fpost = fm.posterior(X_test)
            _check_shape("fantasy model posterior(X).mean", fpost.mean, expected_bs + (2, m))
            _check_finite("fantasy model posterior(X).mean", fpost.mean)
        checks.append("fantasize")

    # 8. subset_output
    if m > 1:
        try:
            sub_model = model.subset_output([m - 1])
        except NotImplementedError as err:
            skipped["subset_output"] = f"not implemented ({err})"
        else:
            if sub_model.num_outputs != 1:
                _fail("subset_output([m-1]).num_outputs", 1, sub_model.num_outputs)
            _close(
                "subset_output([m-1]).posterior(X).mean",
                sub_model.posterior(X_test).mean,
                model.posterior(X_test).mean[..., m - 1 :],
                max(rtol, 1e-6),
                max(atol, 1e-6),
            )
            checks.append("subset_output")

    # 9. one acquisition optimisation
    candidate = acq_value = None
    if not optimize:
        skipped["optimize"] = "optimize=False"
    elif len(mbs) > 0:
        skipped["optimize"] = f"batched model (batch_shape {tuple(mbs)}) gives batched acquisition values"
    else:
        acqf = qLogNoisyExpectedImprovement(
            model=model,
            X_baseline=draw((4,)),
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([16])),
            posterior_transform=ScalarizedPosteriorTransform(weights=weights) if m > 1 else None,
        )
        if choices is not None:
            candidate, acq_value = optimize_acqf_discrete(acqf, q=1, choices=choices)
            if not bool((candidate.unsqueeze(-2) == choices).all(-1).any()):
                _fail("optimize_acqf_discrete candidate", "a row of `choices`", candidate)
        else:
            candidate, acq_value = optimize_acqf(
                acqf, bounds=lo_hi, q=1, num_restarts=2, raw_samples=16, options={"maxiter": 20, "batch_limit": 2}
            )
            if bool((candidate < lo_hi[0] - 1e-9).any() or (candidate > lo_hi[1] + 1e-9).any()):
                _fail("optimize_acqf candidate", "inside bounds", candidate)
        _check_shape("acquisition candidate", candidate, torch.Size([1, d]))
        _check_finite("acquisition value", torch.as_tensor(acq_value))
        checks.append("qLogNoisyExpectedImprovement optimisation")

    return {
        "num_outputs": m,
        "batch_shape": mbs,
        "checks": checks,
        "skipped": skipped,
        "candidate": candidate,
        "acq_value": acq_value,
        "seconds": time.perf_counter() - start,
    }
