r"""The BoTorch contract every gpgeom surrogate passes, checked by shape *and by meaning*.

:func:`check_botorch_model` exercises a model the way BoTorch's acquisition functions and optimisers do and raises
``AssertionError`` with a message that says what was expected and what came back. A model passes when:

Shapes and plumbing

1. ``num_outputs`` is a positive int and ``batch_shape`` a ``torch.Size``;
2. ``posterior(X)`` for ``X`` of shape ``test_batch x q x d`` has ``mean`` and ``variance`` of shape
   ``broadcast(test_batch, model.batch_shape) x q x m``, finite, non-negative variance, and ``rsample`` gives
   ``sample_shape x broadcast(...) x q x m``; ``output_indices`` selects outputs, in the order given; a
   ``ScalarizedPosteriorTransform`` gives the weighted sum of the output means; the posterior equals ``predict_fn``
   (the model's own ``predict``);
3. ``fantasize`` gives a model of batch shape ``num_fantasies x broadcast(...)``; ``subset_output`` (when
   implemented) keeps the selected outputs' posterior (below float64, where the subset has its own rounding: on
   the float64 copy, at ``rtol``; the model's difference and its rounding are reported in ``measured``); one
   ``qLogNoisyExpectedImprovement`` is optimised end to end.

Meaning (what acquisition functions rely on)

4. **observation noise**: ``posterior(X, observation_noise=True)`` adds a positive noise variance
   :math:`s(X) = \mathrm{Var}_{noisy} - \mathrm{Var}` (unless ``expect_observation_noise=False``) larger than one
   ulp of the variance, :math:`\varepsilon (|\mathrm{Var}| + |\mathrm{Var}_{noisy}|) / 2` (a smaller noise is not
   resolvable in the dtype; the floor is relative, so a float32 model with noise sd 1e-3 passes at any output scale);
5. **conditioning is Bayes' rule**: for new observations :math:`(X_n, Y_n)`, the posterior of
   ``condition_on_observations(X_n, Y_n)`` at test points (:math:`X_n` among them) equals the Gaussian
   conditional computed here from the model's *own* joint posterior over :math:`(X_n, X_t)` and its noise
   :math:`s(X_n)` (the Schur complement). For an exact GP this is the posterior of the GP refitted on the union of
   the data with the same hyperparameters (Rasmussen & Williams 2006, eq. 2.19); tolerance ``condition_tol``
   (relative to the prior scale). With ``refit=``, the conditioned posterior is also compared with the model that
   ``refit(X_n, Y_n)`` rebuilds on the union (tolerance ``refit_tol``; approximate adapters document theirs);
6. **fantasies are conditioning on the sampled values**: ``fantasize(X, sampler)`` equals
   ``condition_on_observations(X, sampler(posterior(X, observation_noise=True)))`` with the same base samples;
7. **the posterior depends on the data** (with ``train_X``, ``train_Y``): the posterior mean at the training inputs
   explains at least ``min_train_r2`` of the training outputs' variance (pooled over outputs, original units);
8. **held-out calibration** (with ``test_X``, ``test_Y``): the standardised errors
   :math:`z = (y - \mu) / \sqrt{\sigma^2 + s}` have a root mean square inside ``z_rms_band`` (1 for a calibrated
   model; a variance 100 times too large gives 0.1).

Checks 5 and 6 run on a model's first posterior in ``gpytorch`` form (``GPyTorchPosterior``); a posterior of
another family skips them with a reason in the report.

Tolerance of checks 5 and 6 (the default of ``condition_tol``)

The reference of check 5 is computed in float64 (it adds no rounding of its own), from the joint of the model's
float64 copy where there is one (below). Both sides of checks 5 and 6 come from the model's own floating-point
algebra, whose rounding sets what can be asked. The default tolerance is derived per check from two numbers the
checker measures:

* the condition number :math:`\kappa` of the conditioning, :math:`\kappa = (1 + g) \max(1 + g, 1 + \sqrt{v}
  \lVert S^{-1} r \rVert)`, with :math:`S = \Sigma_{nn} + N` the new points' joint covariance plus noise, the gain
  :math:`g = \lVert \Sigma_{\cdot n} S^{-1} \rVert_2`, the residual :math:`r = y_n - \mu_n` and the prior scale
  :math:`v`: to first order a relative perturbation :math:`\varepsilon` of the joint moments moves the conditioned
  moments by at most :math:`\kappa \varepsilon` (variances in units of :math:`v`, means of :math:`\sqrt{v}`);
* below float64, the rounding :math:`\rho` of the model's joint moments (mean, covariance and noise at the new and
  test points, relative to :math:`v` and :math:`\sqrt{v}`), measured against the model's float64 copy
  (``deepcopy(model).to(torch.float64)``: the same parameters and data), i.e. the model's own condition number
  :math:`\rho / \varepsilon_{\text{mach}}`.

The conditioned model's computation is the model's computation updated by that conditioning, so its error is at most
:math:`(1 + \kappa)(\rho + \varepsilon_{\text{mach}})` to first order; the default is twice that,
``condition_tol = 2 (1 + kappa) (rho + eps)`` (``eps = torch.finfo(dtype).eps``). A float64 model has no wider copy:
its default is ``max(1e-6, 2 (1 + kappa) eps)`` (1e-6 unless :math:`\kappa > 2 \cdot 10^9`). Below float64 the
float64 copy is also checked by checks 5 and 6 at the float64 default (messages ``float64 copy of the model: ...``),
so a conditioning that is wrong in any dtype fails at 1e-6 while the float32 model's own rounding is given its
measured room. Where no float64 copy can be made (no ``.to``, a copy that still computes in the model's precision)
the former fixed default (1e-3) applies and ``measured`` says why. Measured (float32 ``ExactGPModel``, 30 points,
noise sd 1e-1 / 1e-2 / 1e-3 of the outputs, a noise constraint down to 1e-10): errors 1.2e-5 / 2.0e-3 / 0.092 of
the prior scale against derived tolerances 3.1e-4 / 0.042 / 1.4 (:math:`\kappa` 7-19, :math:`\rho` 1.9e-5 /
1.2e-3 / 0.036), while conditioning on the posterior mean is off by 0.9 and fantasies on it by 1.8
(``tests/test_botorch_helper.py``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import gpytorch
import torch
from botorch.acquisition.logei import qLogNoisyExpectedImprovement
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.models.model import Model
from botorch.optim import optimize_acqf, optimize_acqf_discrete
from botorch.posteriors import GPyTorchPosterior, Posterior
from botorch.sampling.normal import SobolQMCNormalSampler
from gpytorch.distributions import MultitaskMultivariateNormal
from torch import Tensor

__all__ = ["check_botorch_model", "joint_moments"]


#: Rounding of ``s = Var_noisy - Var`` (check 4), in units of ``eps * (|Var| + |Var_noisy|)`` (about one ulp of the
#: larger): ``Var_noisy = fl(Var + s)`` differs from ``Var + s`` by at most half an ulp and the difference of the two
#: floats is then exact (Sterbenz), so a noise above one ulp of the variance shows as an increase and a model that
#: ignores the noise gives 0 (up to the one-ulp rounding of a separately computed ``Var_noisy``). A noise below one
#: ulp of the variance is not resolvable in the dtype (float32: ``s < 1.2e-7 Var``) and fails the check.
_NOISE_ULPS = 0.5


#: Safety factor of the derived default tolerances of checks 5 and 6 over their first-order rounding estimates
#: (module docstring).
_TOL_SAFETY = 2.0

#: Prefix of the messages of the float64 copy's checks.
_TWIN = "float64 copy of the model:"

#: Default tolerance of checks 5 and 6 for float64 models (also the floor of the derived one), and where the
#: rounding of a lower-precision model cannot be measured (no float64 copy, or a posterior that is not a
#: ``GPyTorchPosterior``): the former defaults.
_FIXED_TOL: dict[torch.dtype | None, float] = {torch.float64: 1e-6, None: 1e-3}


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


def _rel_close(what: str, got: Tensor, want: Tensor, scale: Tensor, tol: float) -> None:
    r"""``max |got - want| / scale <= tol`` (``scale``: a positive number per batch member, broadcastable)."""
    if got.shape != want.shape:
        _fail(f"{what} shape", tuple(want.shape), tuple(got.shape))
    err = ((got - want).abs() / scale).max()
    if not bool(err <= tol):
        _fail(what, f"relative error <= {tol:g}", f"{float(err):.3g}")


def _moments_close(
    what: str, got_mean: Tensor, got_var: Tensor, want_mean: Tensor, want_var: Tensor, scale: Tensor, tol: float
) -> None:
    r""":func:`_rel_close` of a mean (relative to ``sqrt(scale)``) and a variance (relative to ``scale``), named by
    ``what`` with ``{}`` standing for "mean" and "variance"."""
    _rel_close(what.format("mean"), got_mean, want_mean, scale.sqrt(), tol)
    _rel_close(what.format("variance"), got_var, want_var, scale, tol)


def joint_moments(post: Posterior, detach: bool = True) -> tuple[Tensor, Tensor]:
    r"""Mean ``batch x q x m`` and joint covariance ``batch x (q m) x (q m)`` (row ``i m + a`` = output ``a`` at
    point ``i``) of a ``GPyTorchPosterior``, whatever the internal ordering of its multitask distribution."""
    if not isinstance(post, GPyTorchPosterior):
        raise TypeError(f"joint moments need a GPyTorchPosterior, got {type(post).__name__}.")
    dist = post.distribution
    mean = post.mean.detach() if detach else post.mean
    q, m = mean.shape[-2], mean.shape[-1]
    cov = dist.covariance_matrix.detach() if detach else dist.covariance_matrix
    if isinstance(dist, MultitaskMultivariateNormal) and not dist._interleaved:
        # output-major (a q + i) -> point-major (i m + a)
        perm = torch.arange(m, device=cov.device)[None, :] * q + torch.arange(q, device=cov.device)[:, None]
        perm = perm.reshape(-1)
        cov = cov[..., perm[:, None], perm]
    return mean, cov.expand(*mean.shape[:-2], q * m, q * m)


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
    condition_tol: float | None = None,
    refit: Callable[[Tensor, Tensor], Model] | None = None,
    refit_tol: float | None = None,
    expect_observation_noise: bool = True,
    train_X: Tensor | None = None,
    train_Y: Tensor | None = None,
    min_train_r2: float = 0.5,
    test_X: Tensor | None = None,
    test_Y: Tensor | None = None,
    z_rms_band: tuple[float, float] = (1.0 / 3.0, 3.0),
    seed: int = 0,
) -> dict[str, Any]:
    r"""Check that ``model`` satisfies the BoTorch surrogate contract (module docstring); raise ``AssertionError``.

    Test inputs are drawn uniformly inside ``bounds`` or as random rows of ``choices`` (for graph/mesh domains
    whose inputs are vertex indices), else uniformly in the unit cube; the draws use ``seed`` and leave the global
    random state untouched. A test batch shape that does not broadcast with ``model.batch_shape`` is extended by it.

    Args:
        model: The fitted model (a ``botorch.models.model.Model``).
        bounds: A ``2 x d`` tensor of lower/upper input bounds (continuous domains).
        choices: A ``c x d`` tensor of admissible inputs (discrete domains); the optimisation then uses
            ``optimize_acqf_discrete``.
        batch_shapes: Test batch shapes to try.
        qs: Numbers of joint points ``q`` to try.
        check_fantasize: Check ``fantasize`` (shapes and check 6).
        check_condition: Check ``condition_on_observations`` (shapes and check 5).
        optimize: Run one ``qLogNoisyExpectedImprovement`` optimisation (2 restarts, 16 raw samples).
        predict_fn: Optional ``X (batch x q x d) -> (mean, std)`` (each ``batch x q x m``), e.g.
            ``lambda X: model.predict(X, return_std=True)``; compared with the posterior's mean and variance.
        num_fantasies: Number of fantasies.
        rtol, atol: Tolerances of the plumbing comparisons (predict vs posterior, output selection).
        condition_tol: Tolerance of checks 5 and 6, relative to the prior scale. Default (``None``): derived per
            check from the measured condition number ``kappa`` of the conditioning and, below float64, the measured
            rounding ``rho`` of the model's joint moments against its float64 copy, ``2 (1 + kappa) (rho + eps)``
            (float64: ``max(1e-6, 2 (1 + kappa) eps)``; module docstring); the float64 copy is checked at the
            float64 default. Given, it applies to the model and to its float64 copy.
        refit: Optional ``(X_n, Y_n) -> Model``: the model rebuilt from scratch on its training data plus
            ``(X_n, Y_n)`` with the same hyperparameters; its posterior must equal the conditioned one.
        refit_tol: Tolerance of the ``refit`` comparison (default: ``condition_tol``).
        expect_observation_noise: Require ``observation_noise=True`` to add a positive variance.
        train_X, train_Y: The training data in original units (``n x d``, ``n x m``, the model's batch shape in
            front if any) for check 7.
        min_train_r2: Smallest pooled :math:`R^2` of the posterior mean at ``train_X`` (check 7).
        test_X, test_Y: Held-out data (``n x d``, ``n x m``) for check 8.
        z_rms_band: Accepted ``(low, high)`` root mean square of the held-out standardised errors.
        seed: Seed of the random test inputs, observations and fantasy samples.

    Returns:
        A dict with ``num_outputs``, ``batch_shape``, ``checks`` (names of the checks that ran), ``skipped``
        (check -> reason), ``candidate`` (``q x d``, when optimised), ``acq_value``, ``measured`` (the errors of
        checks 5-8: ``condition_error``, ``refit_error``, ``fantasy_error``, ``train_r2``, ``z_rms``; the
        tolerances used, ``condition_tol_used``, ``fantasy_tol_used``, ``refit_tol_used``; the ingredients of the
        default ones, ``condition_schur_condition`` / ``fantasy_schur_condition`` (``kappa``),
        ``condition_rounding_joint`` / ``fantasy_rounding_joint`` (``rho``, below float64) or a
        ``..._tol_note``; and below float64 the float64 copy's ``condition_error_float64``,
        ``fantasy_error_float64``) and ``seconds``.

    Raises:
        AssertionError: When the model breaks the contract (the message says where).
        ValueError: When ``d`` cannot be inferred or an argument has the wrong shape.

    Example:
        >>> import torch
        >>> from gpgeom.botorch import ExactGPModel, check_botorch_model
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.rand(30, 2, generator=g, dtype=torch.float64)
        >>> f = lambda X: torch.sin(6 * X[:, :1]) + X[:, 1:] ** 2
        >>> Y = f(X) + 0.05 * torch.randn(30, 1, generator=g, dtype=torch.float64)
        >>> X_test = torch.rand(40, 2, generator=g, dtype=torch.float64)
        >>> Y_test = f(X_test) + 0.05 * torch.randn(40, 1, generator=g, dtype=torch.float64)
        >>> model = ExactGPModel(X, Y).fit()
        >>> report = check_botorch_model(model, train_X=X, train_Y=Y, test_X=X_test, test_Y=Y_test)
        >>> report["measured"]["condition_error"] < 1e-6
        True
    """
    start = time.perf_counter()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return _check(
            model, start, bounds=bounds, choices=choices, batch_shapes=batch_shapes, qs=qs,
            check_fantasize=check_fantasize, check_condition=check_condition, optimize=optimize,
            predict_fn=predict_fn, num_fantasies=num_fantasies, rtol=rtol, atol=atol, condition_tol=condition_tol,
            refit=refit, refit_tol=refit_tol, expect_observation_noise=expect_observation_noise, train_X=train_X,
            train_Y=train_Y, min_train_r2=min_train_r2, test_X=test_X, test_Y=test_Y, z_rms_band=z_rms_band,
            seed=seed,
        )  # fmt: skip


def _check(model: Model, start: float, **kw: Any) -> dict[str, Any]:
    bounds, choices = kw["bounds"], kw["choices"]
    rtol, atol = kw["rtol"], kw["atol"]
    checks: list[str] = []
    skipped: dict[str, str] = {}
    measured: dict[str, float] = {}
    d, dtype = _infer_d_dtype(model, bounds, choices)
    tkw = {"dtype": dtype, "device": _infer_device(model, bounds, choices)}
    ctol = kw["condition_tol"] if kw["condition_tol"] is not None else _FIXED_TOL.get(dtype, _FIXED_TOL[None])
    twins: list[tuple[Model | None, str]] = []

    def twin() -> tuple[Model | None, str]:  # the float64 copy of a lower-precision model, built once
        if not twins:
            twins.append((None, "float64 model") if dtype == torch.float64 else _float64_twin(model, X_test))
        return twins[0]

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

    # 2. posterior shapes, values, predict agreement, transforms; 4. observation noise
    weights = torch.rand(m, dtype=dtype).to(lo_hi.device) + 0.5
    for tb in kw["batch_shapes"]:
        tb, out_batch = full_batch(tb)
        for q in kw["qs"]:
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
            _close(f"{where} with observation_noise=True: mean", noisy.mean, post.mean, rtol, atol)
            added = noisy.variance - post.variance
            # rounding of the two variances' difference (an absolute floor of 1e-5 failed every float32 model whose
            # noise is below 1e-5 in the output's units, e.g. noise sd 1e-3)
            added = added.detach()
            floor = (
                _NOISE_ULPS * torch.finfo(dtype).eps * (post.variance.detach().abs() + noisy.variance.detach().abs())
            )
            if kw["expect_observation_noise"] and bool((added <= floor).any()):
                bad = int(torch.argmax((added - floor).flatten().neg()))
                clamp = gpytorch.settings.min_variance.value(post.variance.dtype)
                if float(noisy.variance.detach().flatten()[bad]) <= clamp:  # both clamped: not the noise's fault
                    _fail(
                        f"{where} with observation_noise=True: variance",
                        "the noiseless variance plus a positive noise variance",
                        f"both variances at GPyTorch's min_variance {clamp:.3g} of {post.variance.dtype}, which "
                        "clamps `.variance` from below (outputs in units too small for the dtype: give them in "
                        "larger units, or use float64)",
                    )
                _fail(
                    f"{where} with observation_noise=True: variance",
                    "the noiseless variance plus a positive noise variance",
                    f"an increase of {float(added.flatten()[bad]):.3g} <= the rounding floor "
                    f"{float(floor.flatten()[bad]):.3g} (the likelihood's noise is ignored)",
                )
            if bool((added < -floor).any()):
                _fail(f"{where} with observation_noise=True: variance", ">= the noiseless variance", "smaller")
            if m > 1:
                sub = model.posterior(X, output_indices=[m - 1])
                _check_shape(f"{where} with output_indices=[{m - 1}]: mean", sub.mean, out_batch + (q, 1))
                _close(f"{where} with output_indices: mean", sub.mean, post.mean[..., m - 1 :], rtol, atol)
                # in the order asked for (BoTorch's batched posterior untransformed a reordered selection with the
                # statistics of outputs 0, 1, ...; a list of multi-output members returned member order)
                sub = model.posterior(X, output_indices=[m - 1, 0])
                _check_shape(f"{where} with output_indices=[{m - 1}, 0]: mean", sub.mean, out_batch + (q, 2))
                _close(f"{where} with output_indices=[{m - 1}, 0]: mean", sub.mean, post.mean[..., [m - 1, 0]],
                       rtol, atol)  # fmt: skip
                _close(f"{where} with output_indices=[{m - 1}, 0]: variance", sub.variance,
                       post.variance[..., [m - 1, 0]], rtol, atol)  # fmt: skip
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
            if kw["predict_fn"] is not None:
                mean, std = kw["predict_fn"](X)
                _close(f"predict_fn mean vs {where}.mean", mean.to(post.mean), post.mean, rtol, atol)
                _close(f"predict_fn std**2 vs {where}.variance", std.to(post.mean) ** 2, post.variance, rtol, atol)
    checks += ["posterior shapes", "rsample", "observation_noise", "posterior_transform"]
    if m > 1:
        checks.append("output_indices")
    if kw["predict_fn"] is not None:
        checks.append("predict_fn agreement")

    X_test = draw(mbs + (3,))
    gaussian = isinstance(model.posterior(X_test), GPyTorchPosterior)

    # 7. the posterior depends on the training data
    if kw["train_X"] is not None and kw["train_Y"] is not None:
        Xtr, Ytr = kw["train_X"].to(**tkw), kw["train_Y"].to(**tkw)
        mean = model.posterior(Xtr).mean.detach()
        if mean.shape != Ytr.shape:
            raise ValueError(f"`train_Y` must have the posterior's shape {tuple(mean.shape)}, got {tuple(Ytr.shape)}.")
        sst = (Ytr - Ytr.mean(dim=-2, keepdim=True)).square().sum()
        r2 = float(1.0 - (Ytr - mean).square().sum() / sst.clamp_min(1e-300))
        measured["train_r2"] = r2
        if not r2 >= kw["min_train_r2"]:
            _fail("posterior mean at the training inputs", f"R^2 >= {kw['min_train_r2']:g} (it uses the data)",
                  f"R^2 = {r2:.3g}")  # fmt: skip
        checks.append("posterior depends on the training data")
    else:
        skipped["posterior depends on the training data"] = "no train_X/train_Y given"

    # 8. held-out calibration
    if kw["test_X"] is not None and kw["test_Y"] is not None:
        Xte, Yte = kw["test_X"].to(**tkw), kw["test_Y"].to(**tkw)
        post = model.posterior(Xte, observation_noise=True)
        if post.mean.shape != Yte.shape:
            raise ValueError(
                f"`test_Y` must have the posterior's shape {tuple(post.mean.shape)}, got {tuple(Yte.shape)}."
            )
        z = (Yte - post.mean.detach()) / post.variance.detach().clamp_min(1e-300).sqrt()
        z_rms = float(z.square().mean().sqrt())
        measured["z_rms"] = z_rms
        lo, hi = kw["z_rms_band"]
        if not lo <= z_rms <= hi:
            what = "too wide: variance too large" if z_rms < lo else "too narrow: variance too small"
            _fail("held-out standardised errors", f"root mean square in [{lo:.3g}, {hi:.3g}]",
                  f"{z_rms:.3g} (intervals {what})")  # fmt: skip
        checks.append("held-out calibration")
    else:
        skipped["held-out calibration"] = "no test_X/test_Y given"

    # 5. conditioning = Bayes' rule on the model's own joint (= refit on the union for exact GPs)
    if kw["check_condition"]:
        Xn = draw(mbs + (2,))
        Yn = model.posterior(Xn, observation_noise=True).rsample(torch.Size([1]))[0].detach()
        cond = model.condition_on_observations(Xn, Yn)
        if tuple(cond.batch_shape) != tuple(mbs):
            _fail("condition_on_observations(...).batch_shape", tuple(mbs), tuple(cond.batch_shape))
        Xt = torch.cat([Xn, X_test], dim=-2)
        cpost = cond.posterior(Xt)
        _check_shape("condition_on_observations(...).posterior(X).mean", cpost.mean, mbs + (5, m))
        _check_finite("condition_on_observations(...).posterior(X).mean", cpost.mean)
        checks.append("condition_on_observations")
        if gaussian:
            model64, why = twin()
            Xn64, Yn64, Xt64 = Xn.double(), Yn.double(), X_test.double()
            # each joint once: the reference's (the float64 copy's, else the model's) and, below float64, the model's
            moments64 = None if model64 is None else _moments(model64, Xn64, Xt64)
            moments = _moments(model, Xn, X_test) if moments64 is None or kw["condition_tol"] is None else None
            want_mean, want_var, scale = _schur_of(*(moments if moments64 is None else moments64), Yn64)
            measured["condition_error"] = _rel_err(cpost, want_mean, want_var, scale)
            ctol = kw["condition_tol"]
            if ctol is None:
                ctol = _default_condition_tol(model, Xn, Yn, X_test, scale, measured, why=why, model64=model64,
                                              moments=moments, moments64=moments64)  # fmt: skip
            measured["condition_tol_used"] = ctol
            _moments_close("conditioned posterior {} vs Bayes' rule on the model's joint", cpost.mean.detach().double(),
                           cpost.variance.detach().double(), want_mean, want_var, scale, ctol)  # fmt: skip
            if model64 is not None:  # the meaning without the rounding: the float64 copy, at the float64 tolerance
                cpost64 = model64.condition_on_observations(Xn64, Yn64).posterior(torch.cat([Xn64, Xt64], dim=-2))
                measured["condition_error_float64"] = _rel_err(cpost64, want_mean, want_var, scale)
                tol64 = kw["condition_tol"]
                if tol64 is None:
                    tol64 = _default_condition_tol(model64, Xn64, Yn64, Xt64, scale, {}, moments=moments64)
                _moments_close(f"{_TWIN} conditioned posterior {{}} vs Bayes' rule on the model's joint",
                               cpost64.mean.detach(), cpost64.variance.detach(), want_mean, want_var, scale,
                               tol64)  # fmt: skip
            checks.append("conditioning = Bayes' rule")
        else:
            skipped["conditioning = Bayes' rule"] = f"posterior is a {type(model.posterior(X_test)).__name__}"
        if kw["refit"] is not None:
            rpost = kw["refit"](Xn, Yn).posterior(Xt)
            rtol_refit = kw["refit_tol"] if kw["refit_tol"] is not None else ctol
            measured["refit_tol_used"] = rtol_refit
            scale = model.posterior(Xt).variance.detach().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
            measured["refit_error"] = max(
                float(((cpost.mean - rpost.mean).detach().abs() / scale.sqrt()).max()),
                float(((cpost.variance - rpost.variance).detach().abs() / scale).max()),
            )
            _moments_close("conditioned posterior {} vs the model refitted on the union", cpost.mean.detach(),
                           cpost.variance.detach(), rpost.mean.detach(), rpost.variance.detach(), scale,
                           rtol_refit)  # fmt: skip
            checks.append("conditioning = refit on the union")

    # 3./6. fantasize: shapes, and equal to conditioning on the sampled values
    if kw["check_fantasize"]:
        nf = kw["num_fantasies"]
        for tb in ((), (3,)):
            _, out_batch = full_batch(tb)
            Xf = draw(tuple(out_batch) + (2,))
            sampler = SobolQMCNormalSampler(sample_shape=torch.Size([nf]), seed=kw["seed"])
            fm = model.fantasize(Xf, sampler)
            expected_bs = torch.Size([nf]) + out_batch
            if tuple(fm.batch_shape) != tuple(expected_bs):
                _fail(f"fantasize(X of shape {tuple(Xf.shape)}).batch_shape", tuple(expected_bs), tuple(fm.batch_shape))
            Xt = torch.cat([Xf, X_test.expand(*out_batch, *X_test.shape[-2:])], dim=-2)
            fpost = fm.posterior(Xt)
            _check_shape("fantasy model posterior(X).mean", fpost.mean, expected_bs + (5, m))
            _check_finite("fantasy model posterior(X).mean", fpost.mean)
            if tb == ():
                Yf = sampler(model.posterior(Xf, observation_noise=True)).detach()
                Xf_b = Xf.expand(*Yf.shape[:-2], *Xf.shape[-2:])
                cpost = model.condition_on_observations(Xf_b, Yf).posterior(Xt)
                scale = model.posterior(Xt).variance.detach().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
                measured["fantasy_error"] = float(((fpost.mean - cpost.mean).detach().abs() / scale.sqrt()).max())
                model64, why = twin()
                tol_kw = {} if model64 is None else {"model64": model64}
                ftol = kw["condition_tol"]
                if ftol is None and not gaussian:  # no joint moments to measure
                    ftol = _FIXED_TOL.get(dtype, _FIXED_TOL[None])
                    measured["fantasy_tol_note"] = "fixed default: the posterior is not a GPyTorchPosterior"
                elif ftol is None:  # the joints per fantasy, as the fantasy model's batch computes them
                    Xt_b = X_test.expand(*Xf_b.shape[:-2], *X_test.shape[-2:])
                    fmoments = _moments(model, Xf_b, Xt_b)
                    fmoments64 = None if model64 is None else _moments(model64, Xf_b.double(), Xt_b.double())
                    ftol = _default_condition_tol(model, Xf_b, Yf, Xt_b, scale, measured, "fantasy", why,
                                                  moments=fmoments, moments64=fmoments64, **tol_kw)  # fmt: skip
                measured["fantasy_tol_used"] = ftol
                _moments_close("fantasy model {} vs conditioning on the fantasy samples", fpost.mean.detach(),
                               fpost.variance.detach(), cpost.mean.detach(), cpost.variance.detach(), scale,
                               ftol)  # fmt: skip
                if model64 is not None:  # the meaning without the rounding: the float64 copy
                    sampler64 = SobolQMCNormalSampler(sample_shape=torch.Size([nf]), seed=kw["seed"])
                    Xf64, Xt64 = Xf.double(), Xt.double()
                    fpost64 = model64.fantasize(Xf64, sampler64).posterior(Xt64)
                    Yf64 = sampler64(model64.posterior(Xf64, observation_noise=True)).detach()
                    Xf64_b = Xf64.expand(*Yf64.shape[:-2], *Xf64.shape[-2:])
                    cpost64 = model64.condition_on_observations(Xf64_b, Yf64).posterior(Xt64)
                    measured["fantasy_error_float64"] = _rel_err(
                        fpost64, cpost64.mean.detach(), cpost64.variance.detach(), scale.double()
                    )
                    tol64 = kw["condition_tol"]
                    if tol64 is None and not gaussian:
                        tol64 = _FIXED_TOL[torch.float64]
                    elif tol64 is None:
                        Xt64_b = X_test.double().expand(*Xf64_b.shape[:-2], *X_test.shape[-2:])
                        tol64 = _default_condition_tol(model64, Xf64_b, Yf64, Xt64_b, scale, {},
                                                       moments=fmoments64)  # fmt: skip
                    _moments_close(f"{_TWIN} fantasy model {{}} vs conditioning on the fantasy samples",
                                   fpost64.mean.detach(), fpost64.variance.detach(), cpost64.mean.detach(),
                                   cpost64.variance.detach(), scale.double(), tol64)  # fmt: skip
        checks += ["fantasize", "fantasize = conditioning on samples"]

    # 3. subset_output
    if m > 1:
        try:
            sub_model = model.subset_output([m - 1])
        except NotImplementedError as err:
            skipped["subset_output"] = f"not implemented ({err})"
        else:
            if sub_model.num_outputs != 1:
                _fail("subset_output([m-1]).num_outputs", 1, sub_model.num_outputs)
            sub_mean, full_mean = sub_model.posterior(X_test).mean.detach(), model.posterior(X_test).mean.detach()
            srtol, satol = max(rtol, 1e-6), max(atol, 1e-6)
            model64 = twin()[0] if dtype != torch.float64 else None
            if model64 is not None and callable(getattr(model64, "subset_output", None)):
                # below float64 the subset computes with its own rounding (a float32 ExactGPModel's subset differed
                # from the full model by 2e-6 to 2e-4 of outputs of size 1, as much as either differs from its
                # float64 copy, whose subset agrees to 1e-11): the selection is checked on the float64 copy (the
                # same code), and the model's difference and its full model's rounding are reported
                X64 = X_test.double()
                ref = model64.posterior(X64).mean.detach()[..., m - 1 :]
                _close(f"{_TWIN} subset_output([m-1]).posterior(X).mean",
                       model64.subset_output([m - 1]).posterior(X64).mean.detach(), ref, srtol, satol)  # fmt: skip
                measured["subset_difference"] = float((sub_mean - full_mean[..., m - 1 :]).abs().max())
                measured["subset_rounding"] = float((full_mean[..., m - 1 :].double() - ref).abs().max())
            else:
                _close("subset_output([m-1]).posterior(X).mean", sub_mean, full_mean[..., m - 1 :], srtol, satol)
            checks.append("subset_output")

    # 3. one acquisition optimisation
    candidate = acq_value = None
    if not kw["optimize"]:
        skipped["optimize"] = "optimize=False"
    elif len(mbs) > 0:
        skipped["optimize"] = f"batched model (batch_shape {tuple(mbs)}) gives batched acquisition values"
    else:
        acqf = qLogNoisyExpectedImprovement(
            model=model,
            X_baseline=draw((4,)),
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([16]), seed=kw["seed"]),
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
        "measured": measured,
        "seconds": time.perf_counter() - start,
    }


def _moments(model: Model, Xn: Tensor, Xt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The model's joint posterior at ``cat(Xn, Xt)``: mean ``batch x (n + t) x m``, covariance
    ``batch x ((n + t) m) x ((n + t) m)`` (point-major), and its joint noise covariance at ``Xn``
    (``batch x (n m) x (n m)``: ``observation_noise=True`` minus the latent covariance), detached."""
    mean, cov = joint_moments(model.posterior(torch.cat([Xn, Xt], dim=-2)))
    noise = joint_moments(model.posterior(Xn, observation_noise=True))[1] - joint_moments(model.posterior(Xn))[1]
    return mean, cov, noise


def _default_condition_tol(
    model: Model, Xn: Tensor, Yn: Tensor, Xt: Tensor, scale: Tensor, measured: dict[str, Any],
    check: str = "condition", why: str = "", model64: Model | None = None,
    moments: Sequence[Tensor] | None = None, moments64: Sequence[Tensor] | None = None,
) -> float:  # fmt: skip
    r"""The default tolerance of check 5 (``check="condition"``: new points ``Xn``, observed ``Yn``, test points
    ``Xt``) or 6 (``"fantasy"``: fantasy points, samples and test points) from the model's joint at ``cat(Xn, Xt)``
    and, below float64, its float64 copy ``model64`` (module docstring); records the ingredients in ``measured``
    under ``{check}_...``. ``moments`` / ``moments64``: those joints (:func:`_moments` of ``model`` / ``model64``)
    where the caller has them, not computed again (``Yn`` may carry more batch dimensions: it broadcasts)."""
    dtype = Yn.dtype
    eps = torch.finfo(dtype).eps
    moments = _moments(model, Xn, Xt) if moments is None else moments
    kappa = float(_schur_condition(*(t.double() for t in moments), Yn.double()).max())
    measured[f"{check}_schur_condition"] = kappa
    if dtype == torch.float64:
        return max(_FIXED_TOL[torch.float64], _derived_tol(0.0, kappa, eps))
    if model64 is None:
        measured[f"{check}_tol_note"] = f"fixed default: the rounding cannot be measured ({why})"
        return _FIXED_TOL.get(dtype, _FIXED_TOL[None])
    if moments64 is None:
        moments64 = _moments(model64, Xn.double(), Xt.double())
    rounding = _rounding(moments, moments64, scale)
    measured[f"{check}_rounding_joint"] = rounding
    return _derived_tol(rounding, kappa, eps)


def _float64_twin(model: Model, X: Tensor) -> tuple[Model | None, str]:
    r"""The model with the same parameters and data in float64 (``deepcopy(model).to(torch.float64)``), which
    measures the rounding of a lower-precision model, or ``None`` and why not: the copy failed, or its posterior at
    ``X`` (``batch x q x d``) is not float64 or equals the model's bitwise (it computes in the model's precision)."""
    if not callable(getattr(model, "to", None)):
        return None, f"{type(model).__name__} has no .to(dtype)"
    try:
        twin = copy.deepcopy(model).to(torch.float64)
        post, post64 = model.posterior(X), twin.posterior(X.double())
    except Exception as err:  # noqa: BLE001 - any failure only means the rounding cannot be measured
        return None, f"deepcopy(model).to(torch.float64) failed ({type(err).__name__}: {err})"
    if post64.mean.dtype != torch.float64:
        return None, f"deepcopy(model).to(torch.float64) predicts in {post64.mean.dtype}"
    same = torch.equal(post.mean.detach().double(), post64.mean.detach()) and torch.equal(
        post.variance.detach().double(), post64.variance.detach()
    )
    if same:
        return None, "deepcopy(model).to(torch.float64) computes in the model's precision"
    return twin, ""


def _rel_err(post: Posterior, want_mean: Tensor, want_var: Tensor, scale: Tensor) -> float:
    r"""Largest error of ``post``'s mean relative to ``sqrt(scale)`` and variance relative to ``scale``."""
    return max(
        float(((post.mean.detach().double() - want_mean).abs() / scale.sqrt()).max()),
        float(((post.variance.detach().double() - want_var).abs() / scale).max()),
    )


def _rounding(got: Sequence[Tensor], ref: Sequence[Tensor], scale: Tensor) -> float:
    r"""``max |got - ref|`` of the first tensor (a mean) relative to ``sqrt(scale)`` and of the others (variances,
    covariances) relative to ``scale`` (``batch x 1 x 1``, broadcastable)."""
    err = ((got[0].double() - ref[0]).abs() / scale.sqrt()).amax()
    for a, b in zip(got[1:], ref[1:]):
        err = torch.maximum(err, ((a.double() - b).abs() / scale).amax())
    return float(err)


def _schur_condition(mean: Tensor, cov: Tensor, noise: Tensor, Yn: Tensor) -> Tensor:
    r"""First-order amplification :math:`\kappa` of a relative perturbation of the joint moments by the Schur
    conditioning of :func:`_schur`, per batch member (``batch``), from the joint moments of :func:`_moments` (mean
    ``batch x (n + t) x m``, covariance ``batch x ((n + t) m) x ((n + t) m)``, noise ``batch x (n m) x (n m)``) and
    the observations ``Yn`` (``batch x n x m``), in their dtype:
    :math:`\kappa = (1 + g) \max(1 + g, 1 + \sqrt{v} \lVert S^{-1} r \rVert)` with the gain
    :math:`g = \lVert \Sigma_{\cdot n} S^{-1} \rVert_2`, :math:`S = \Sigma_{nn} + N` the new points' covariance
    plus noise, :math:`r = y_n - \mu_n` and :math:`v` the prior scale (largest variance). A perturbation
    :math:`\delta\Sigma` of relative size :math:`\varepsilon` (of :math:`v`) moves the conditioned variance
    :math:`\Sigma_{tt} - G \Sigma_{nt}` by at most :math:`(1 + g)^2 \varepsilon v` and the conditioned mean
    :math:`\mu_t + G r` by :math:`(1 + g)(1 + \sqrt{v} \lVert S^{-1} r \rVert) \varepsilon \sqrt{v}`
    (Golub & Van Loan 2013, sec. 2.6, for :math:`\delta(S^{-1}) = -S^{-1} \delta S S^{-1}`); :math:`g` is large
    when :math:`S` is ill-conditioned against the joint covariance (small noise, near-duplicate points)."""
    c = noise.shape[-1]
    S = cov[..., :c, :c] + noise
    S = 0.5 * (S + S.mT)
    G = torch.linalg.solve(S, cov[..., :c, :]).mT  # Sigma_{. n} S^{-1}, symmetric S
    g = torch.linalg.matrix_norm(G, ord=2)
    r = torch.linalg.solve(S, (Yn.reshape(*Yn.shape[:-2], -1) - mean.reshape(*mean.shape[:-2], -1)[..., :c])[..., None])
    v = torch.diagonal(cov, dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    rho = v.sqrt() * torch.linalg.vector_norm(r[..., 0], dim=-1)
    return (1 + g) * torch.maximum(1 + g, 1 + rho)


def _derived_tol(rounding: float, kappa: float, eps: float) -> float:
    r"""Default tolerance of checks 5 and 6 (module docstring): :data:`_TOL_SAFETY` times the first-order bound
    ``(1 + kappa) * (rounding + eps)`` on the rounding of a conditioning of condition number ``kappa`` of joint moments
    off by ``rounding`` (relative to the prior scale), in a dtype of unit roundoff ``eps``."""
    return _TOL_SAFETY * (1.0 + kappa) * (rounding + eps)


def _schur(model: Model, Xn: Tensor, Yn: Tensor, Xt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Mean and variance at ``cat(Xn, Xt)`` of the model's joint posterior conditioned on ``Yn`` at ``Xn`` with
    the model's own noise (its joint covariance at ``Xn``: correlated between the outputs of a point where the model's
    is, e.g. RVGP's across its tangent frames), and the prior scale (largest variance per batch member) for relative
    errors; computed in float64 from the model's moments (the reference adds no rounding of its own)."""
    return _schur_of(*_moments(model, Xn, Xt), Yn)


def _schur_of(mean: Tensor, cov: Tensor, noise: Tensor, Yn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r""":func:`_schur` from the joint moments (:func:`_moments`), in float64: the Gaussian conditional
    (Rasmussen & Williams 2006, eq. A.6) ``mean + K S^{-1} (y - mean_n)``, ``diag(cov - K S^{-1} K^T)`` with
    ``S = cov_nn + noise``, shaped as ``mean`` (``batch x (n + t) x m``), and the scale ``batch x 1 x 1``."""
    mean, cov, noise, Yn = mean.double(), cov.double(), noise.double(), Yn.double()
    c = noise.shape[-1]
    mu = mean.reshape(*mean.shape[:-2], -1)
    S = cov[..., :c, :c] + noise
    K = cov[..., :, :c]
    L = torch.linalg.cholesky(0.5 * (S + S.mT))
    A = torch.linalg.solve_triangular(L, K.mT, upper=False)
    r = torch.linalg.solve_triangular(L, (Yn.reshape(*Yn.shape[:-2], -1) - mu[..., :c]).unsqueeze(-1), upper=False)
    cmean = mu + (A.mT @ r).squeeze(-1)
    cvar = torch.diagonal(cov, dim1=-2, dim2=-1) - A.square().sum(-2)
    scale = torch.diagonal(cov, dim1=-2, dim2=-1).amax(-1)[..., None, None].clamp_min(1e-300)
    shape = mean.shape
    return cmean.reshape(shape), cvar.reshape(shape), scale
