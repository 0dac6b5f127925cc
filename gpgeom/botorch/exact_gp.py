r"""An exact GP regression model that is also a BoTorch model.

:class:`ExactGPModel` is the exact-GP building block of gpgeom (MMGP, RVGP and any GP surrogate). It is a
``gpytorch.models.ExactGP`` and a ``botorch.models.gpytorch.BatchedMultiOutputGPyTorchModel``, so it works with
every BoTorch acquisition function, ``fantasize`` and ``condition_on_observations``, and it adds:

* ``fit()`` through :func:`gpgeom.engine.fitting.fit` (L-BFGS-B, restarts, jitter escalation, progress bar);
* ``predict()`` in chunks of test points sized by a memory budget, in the original output units, equal to
  ``posterior()``; both use the Cholesky factor of the training covariance kept between calls (``K** - V^T V``,
  ``V = L^{-1} K*``: never GPyTorch's ``(n + q) x (n + q)`` joint kernel);
* multi-output data with either separate hyperparameters per output (the BoTorch batched way) or one set of
  hyperparameters shared by all outputs (``shared_hyperparameters=True``);
* exact Cholesky algebra up to ``max_cholesky_size`` training points (GPyTorch switches to CG/Lanczos above 800 by
  default, which makes predictions and gradients approximate).

Shapes: ``train_X`` is ``batch_shape x n x d``, ``train_Y`` is ``batch_shape x n x m`` (the output dimension ``m``
is always explicit, even for ``m = 1``). Internally outputs become a batch dimension: the data are
``batch_shape x m x n x d`` when ``m > 1``.

Its default kernel, likelihood and transforms are built by :mod:`gpgeom.botorch.defaults`; the algebra of its fast
prediction path (chunked kernel matrices, the training factor, the test moments) is in
:mod:`gpgeom.botorch.exact_predict`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.exceptions.warnings import InputDataWarning
from botorch.models.gpytorch import BatchedMultiOutputGPyTorchModel
from botorch.models.model import FantasizeMixin
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import OutcomeTransform
from botorch.models.utils import validate_input_scaling
from botorch.posteriors import GPyTorchPosterior, Posterior
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import Kernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood, Likelihood
from gpytorch.means import ConstantMean, Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.models import ExactGP
from linear_operator import to_linear_operator
from torch import Tensor

from gpgeom._modes import eval_mode
from gpgeom._validation import as_tensor, check_option, check_positive, check_tensor
from gpgeom._warnings import quiet
from gpgeom.base import ModelContract
from gpgeom.botorch._checked_covariance import checked_lazily
from gpgeom.botorch._copies import copy_state, copy_strategy
from gpgeom.botorch._fantasy import fantasy_caches, solve_covariance
from gpgeom.botorch._finite import (
    check_conditioned,
    check_prediction,
    computed_covariance,
    diagnose_fit,
    factor_guard,
    named_step,
    raw_inputs,
)
from gpgeom.botorch._local import bound, current, settings_lock
from gpgeom.botorch._union import UnionData, cat_points, noise_in_original_units
from gpgeom.botorch.check import joint_moments
from gpgeom.botorch.defaults import (
    MemberNormalize,
    default_covar_module,
    default_input_transform,
    default_likelihood,
    default_outcome_transform,
)
from gpgeom.botorch.exact_files import (
    PARENT_HISTORY,
    conditioning_history,
    model_state,
    record_conditioning,
    restore_model,
)
from gpgeom.botorch.exact_inputs import check_module_types, checked_training_data, standardised_outputs
from gpgeom.botorch.exact_predict import bytes_per_test_point, posterior_moments, training_factor
from gpgeom.botorch.outputs import gaussian_posterior, refuse_empty_batch, select_outputs
from gpgeom.engine.chunking import FactorCache, chunk_size_for, chunk_slices, memory_budget, resolve_max_memory
from gpgeom.engine.exact_mll import exact_mll_loss
from gpgeom.engine.fitting import FitResult, fit

__all__ = ["ExactGPModel"]


class ExactGPModel(ModelContract, BatchedMultiOutputGPyTorchModel, ExactGP, FantasizeMixin):
    r"""Exact GP regression with independent outputs, usable directly as a BoTorch surrogate.

    Example:
        >>> X = torch.rand(50, 3, dtype=torch.float64)
        >>> Y = torch.stack([torch.sin(6 * X[:, 0]), X.sum(-1)], -1)  # 50 x 2
        >>> model = ExactGPModel(X, Y).fit(restarts=2, seed=0, progress=False)
        >>> mean, std = model.predict(torch.rand(10000, 3, dtype=torch.float64), return_std=True)  # 10000 x 2
        >>> post = model.posterior(torch.rand(4, 3, 3, dtype=torch.float64))  # mean 4 x 3 x 2
    """

    def __init__(
        self,
        train_X: Tensor,
        train_Y: Tensor,
        train_Yvar: Tensor | None = None,
        covar_module: Kernel | None = None,
        mean_module: Mean | None = None,
        likelihood: Likelihood | None = None,
        shared_hyperparameters: bool = False,
        input_transform: InputTransform | str | None = "default",
        outcome_transform: OutcomeTransform | str | None = "default",
        max_cholesky_size: int = 4096,
    ) -> None:
        r"""Build the model (hyperparameters at their initial values; call :meth:`fit`).

        Args:
            train_X: A ``batch_shape x n x d`` tensor of training inputs. The training tensors are taken detached
                from any autograd graph (``fit`` differentiates with respect to the hyperparameters only).
            train_Y: A ``batch_shape x n x m`` tensor of training outputs (explicit ``m``, even for one output).
            train_Yvar: Optional ``batch_shape x n x m`` tensor of known non-negative noise variances (in the
                original units); the likelihood is then a ``FixedNoiseGaussianLikelihood``.
            covar_module: The kernel. Defaults to :func:`~gpgeom.botorch.defaults.default_covar_module`. A custom
                kernel for ``m > 1`` should have batch shape ``batch_shape x m`` (separate hyperparameters) or
                ``batch_shape x 1`` (shared); a kernel without batch shape is shared by all outputs.
            mean_module: The mean. Defaults to a ``ConstantMean`` per output (batch shape ``batch_shape x m``).
            likelihood: The likelihood. Defaults to :func:`~gpgeom.botorch.defaults.default_likelihood` (or fixed
                noise with ``train_Yvar``).
            shared_hyperparameters: For ``m > 1``: one kernel and one noise level for all outputs (each output
                keeps its own constant mean) instead of one set per output. The outputs stay independent GPs.
            input_transform: ``"default"``: with the default kernel,
                :func:`~gpgeom.botorch.defaults.default_input_transform` (the training inputs' bounding box onto the
                unit cube, the scale the default priors assume); with a custom ``covar_module`` none (its inputs may
                be indices or angles). ``None`` or a BoTorch ``InputTransform`` otherwise.
            outcome_transform: ``"default"`` (:func:`~gpgeom.botorch.defaults.default_outcome_transform`: every
                output standardised, also outputs of size 1e-12; an output constant to rounding is scaled by
                its rounding scale, so it is predicted as the constant with a std below that scale, and a warning),
                ``None`` or a BoTorch ``OutcomeTransform``. A transform in training mode (as built) is fitted to
                ``train_Y``; one in eval mode is applied with its stored parameters. Predictions and posteriors are
                always in the original units.
            max_cholesky_size: Use Cholesky (exact) algebra up to this many training points per batch member;
                above, GPyTorch's CG/Lanczos approximations.

        Raises:
            TypeError, ValueError: For tensors of the wrong type, shape or dtype, NaN/inf values, negative noise
                or an unknown ``outcome_transform``.
        """
        train_X, train_Y, train_Yvar = checked_training_data(train_X, train_Y, train_Yvar)
        if not isinstance(shared_hyperparameters, bool):
            raise TypeError(f"`shared_hyperparameters` must be a bool, got {type(shared_hyperparameters).__name__}.")
        check_positive("max_cholesky_size", max_cholesky_size, integer=True)
        check_module_types(covar_module=covar_module, mean_module=mean_module, likelihood=likelihood)
        outcome_kind = "custom" if isinstance(outcome_transform, OutcomeTransform) else outcome_transform
        if isinstance(outcome_transform, str):
            if outcome_transform != "default":
                raise ValueError(
                    f"Unknown `outcome_transform`={outcome_transform!r}; expected 'default', None or a BoTorch "
                    "OutcomeTransform."
                )
            outcome_transform = default_outcome_transform(train_Y.shape[-1], train_X.shape[:-2])
        elif outcome_transform is not None and not isinstance(outcome_transform, OutcomeTransform):
            raise TypeError(
                "`outcome_transform` must be 'default', None or a BoTorch OutcomeTransform, "
                f"got {type(outcome_transform).__name__}."
            )
        input_kind = "custom" if isinstance(input_transform, InputTransform) else input_transform
        if isinstance(input_transform, str):
            check_option("input_transform", input_transform, ("default",))
            input_transform = default_input_transform(train_X, train_Y.shape[-1]) if covar_module is None else None
            input_kind = "default" if input_transform is not None else None
        elif input_transform is not None and not isinstance(input_transform, InputTransform):
            raise TypeError(
                "`input_transform` must be 'default', None or a BoTorch InputTransform, "
                f"got {type(input_transform).__name__}."
            )
        original_data = (train_X, train_Y, train_Yvar)

        self._validate_tensor_args(X=train_X, Y=train_Y.to(train_X.dtype), Yvar=train_Yvar)
        with torch.no_grad():
            transformed_X = self.transform_inputs(X=train_X, input_transform=input_transform)
        # float64 outputs of a float32 model: standardised in float64 with the mean rounded to float32, so their mean
        # is off 0 by that rounding (exact_inputs.py): BoTorch's "not standardized" warning would be misleading
        rounded_mean = outcome_transform is not None and train_Y.dtype != train_X.dtype
        if outcome_transform is not None:
            train_Y, train_Yvar = standardised_outputs(outcome_transform, train_Y, train_Yvar, transformed_X)
        train_Y = train_Y.to(train_X.dtype)
        # BoTorch's own call, so that its warnings name BoTorch's module as for its models (a user's filter by module
        # applies); the output check silenced in this thread where the transform explains it (RoundingFloorStandardize)
        explained = rounded_mean or getattr(outcome_transform, "constant_outputs", False)
        output_note = r"Data \(outcome observations\) is not standardized"
        with quiet(output_note, InputDataWarning) if explained else contextlib.nullcontext():
            validate_input_scaling(
                train_X=transformed_X, train_Y=train_Y, train_Yvar=train_Yvar, check_nans_only=covar_module is not None
            )
        self._set_dimensions(train_X=train_X, train_Y=train_Y)
        m = self._num_outputs
        input_batch = self._input_batch_shape
        # batch shape of the hyperparameters shared by all outputs (size-1 output dimension when m > 1)
        shared_batch = input_batch + torch.Size([1]) if m > 1 else input_batch
        hyper_batch = shared_batch if shared_hyperparameters else self._aug_batch_shape
        train_X, train_Y, train_Yvar = self._transform_tensor_args(X=train_X, Y=train_Y, Yvar=train_Yvar)

        likelihood_given = likelihood
        if likelihood is None:
            if train_Yvar is None:
                likelihood = default_likelihood(batch_shape=hyper_batch)
            else:
                likelihood = FixedNoiseGaussianLikelihood(noise=train_Yvar, batch_shape=self._aug_batch_shape)
        else:
            self._is_custom_likelihood = True
        ExactGP.__init__(self, train_inputs=train_X, train_targets=train_Y, likelihood=likelihood)
        self.mean_module = mean_module if mean_module is not None else ConstantMean(batch_shape=self._aug_batch_shape)
        self.covar_module = (
            covar_module
            if covar_module is not None
            else default_covar_module(transformed_X.shape[-1], batch_shape=hyper_batch)
        )
        if outcome_transform is not None:
            self.outcome_transform = outcome_transform
        if input_transform is not None:
            self.input_transform = input_transform
        self.shared_hyperparameters = shared_hyperparameters
        self.max_cholesky_size = max_cholesky_size
        #: The optimisation record of :meth:`fit` (``None`` before it).
        self.fit_result_: FitResult | None = None
        #: Fit with the closed-form-gradient exact MLL when the model is in its family (see :meth:`fit`).
        self.fast_mll = True
        self._fit_jitter: float | None = None
        self._d = train_X.shape[-1]
        #: Training data in original units (inputs before the input transform, outputs before standardisation); a
        #: conditioned model's are the union with its new points (``gpgeom.botorch._union.UnionData``).
        self._original_data = original_data
        given = {"likelihood": likelihood_given, "mean_module": mean_module, "covar_module": covar_module}
        self._config = {
            "shared_hyperparameters": shared_hyperparameters,
            "max_cholesky_size": max_cholesky_size,
            "custom_modules": sorted(name for name, module in given.items() if module is not None),
            "input_transform": input_kind,
            "outcome_transform": outcome_kind,
            "data_batch": list(original_data[0].shape[:-2]),  # the modules' batch shape (conditioning keeps it)
        }
        defaults = tuple(name for name, module in given.items() if module is None)
        self._default_modules = defaults
        self._output_dims = self._find_output_dims(defaults)
        self.to(train_X)

    # ---------------------------------------------------------------------------------------------------------
    # GPyTorch forward and numerics

    #: Called by :mod:`gpgeom.engine.attempts` when an attempt of the fit fails on a NaN covariance or loss: names
    #: the module (``covar_module``, ``mean_module``, ``likelihood``) that returned NaN or inf (:mod:`._finite`).
    _diagnose_nonfinite = diagnose_fit

    def forward(self, x: Tensor) -> MultivariateNormal:
        r"""The GP prior at ``x`` (``batch_shape x (m) x n x d``); input transforms apply in training mode only."""
        if self.training:
            x = self.transform_inputs(x)
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))

    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        r"""Context with this model's linear-algebra settings.

        Cholesky (exact) algebra up to ``max_cholesky_size`` training points, and the jitter that :meth:`fit` had
        to use (if any) for later factorisations. GPyTorch's fast predictive variance (``fast_pred_var``), which
        BoTorch's posterior turns on, stays on, also under ``propagate_grads``: a conditioned or fantasy model's
        updated cache keeps the gradient with respect to its new rows (:meth:`get_fantasy_model`).

        In eval mode (predictions) the block holds ``gpgeom.botorch._local.settings_lock``: the settings are
        process-wide, and two predictions in threads that enter and leave them interleaved left one set after both
        (``tests/test_threads.py``). A fit does not hold it, also a refit of a model in eval mode (:meth:`fit` marks
        its block): its attempts may run in threads of this process that wait for other work holding it.
        """
        with contextlib.ExitStack() as stack:
            if not self.training and not current(self, "fitting"):
                stack.enter_context(settings_lock)
            stack.enter_context(gpytorch.settings.max_cholesky_size(self.max_cholesky_size))
            if self._fit_jitter is not None:
                stack.enter_context(
                    gpytorch.settings.cholesky_jitter(float_value=self._fit_jitter, double_value=self._fit_jitter)
                )
                # the jitter is known and reported in fit_result_; do not warn about it at every prediction (in this
                # thread only: gpgeom._warnings)
                stack.enter_context(quiet("A not p.d., added jitter"))
            yield

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        r"""GPyTorch's call; in eval mode the posterior at one tensor of test inputs is computed by :meth:`_joint`
        from the cached training factor (the same distribution; see :meth:`posterior`). In eval mode floating tensors
        are converted to the model's dtype, as in :meth:`predict`."""
        if not self.training:
            args = tuple(a.to(dtype=self.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)
        with self.numerics():
            if self._joint_ok(args, kwargs):
                return self._joint(args[0])
            key = self._check_strategy()
            if self.training:
                return super().__call__(*args, **kwargs)
            with factor_guard(self, "in a prediction"):  # a NaN from a user module named, not a NanError
                out = super().__call__(*args, **kwargs)
            self._check_strategy(key)  # a strategy built by this call: recorded with the state it was built for
            if isinstance(out, MultivariateNormal) and len(args) == 1 and isinstance(args[0], Tensor):
                check_prediction(self, args[0], "in a prediction", out.mean, computed_covariance(out))
                out = checked_lazily(self, args[0], out)  # a lazy covariance: checked when evaluated
            return out

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "prediction_strategy":  # GPyTorch's exact strategies get their covariance by a solve
            solve_covariance(value)  # (`gpgeom.botorch._fantasy.SolvedStrategy`: not by an explicit inverse root)
        super().__setattr__(name, value)

    def _check_strategy(self, key: list[Any] | None = None) -> list[Any] | None:
        r"""Drop GPyTorch's prediction strategy (its cached training covariance, Cholesky factor and mean cache) when
        the model's state changed since it was built: a parameter or buffer set by hand or by ``load_state_dict``,
        a kernel's ``nu``, the training data or the jitter (the key of :meth:`_state_key`). GPyTorch clears it only
        in train mode and in ``set_train_data``: a conditioned model predicted with its old hyperparameters after
        ``lengthscale = ...`` and conditioning a model whose strategy was stale failed. A strategy seen for the first
        time is recorded with the current state (this is called before and after every use; ``key``: the state's
        key when the caller has it, the one this returned before a call that does not change the state). Returns
        the key it used, if any."""
        strategy = self.prediction_strategy
        if strategy is None or self.training:
            return key
        cache = self.__dict__.setdefault("_strategy_cache", FactorCache())
        if key is not None and cache.value is strategy:
            return key  # checked against this key just before
        if key is None:
            with torch.no_grad():
                key = self._state_key()
        if cache.value is not strategy:
            cache.key, cache.value = key, strategy
        elif not cache.matches(key):
            self.prediction_strategy = None
            cache.key, cache.value = None, None
        return key

    def _state_key(self) -> list[Any]:
        r"""The :class:`~gpgeom.engine.chunking.FactorCache` key of the state a training factor depends on: the
        parameters, buffers and structure of the model, its training tensors (and fixed noise) and the jitter
        settings."""
        fixed, st = isinstance(self.likelihood, FixedNoiseGaussianLikelihood), gpytorch.settings
        # the jitter the factorisations use: within `numerics` the fit's, if any (read outside it, as after
        # conditioning, the global one made the key differ and the conditioned caches were dropped at the first call)
        jitter = self._fit_jitter if self._fit_jitter is not None else st.cholesky_jitter.value(self.dtype)
        settings = (self._fit_jitter, jitter, st.cholesky_max_tries.value())
        data = (*self.train_inputs, self.train_targets, self.likelihood.noise_covar.noise if fixed else None)
        return FactorCache.key_of(self, data, settings)

    def _gpytorch_path(self) -> contextlib.AbstractContextManager[None]:
        r"""Context in which ``self(X)`` goes through GPyTorch's prediction strategy (to build its caches), in this
        thread only (:mod:`._local`): another thread's prediction meanwhile keeps the cached training factor."""
        return bound(self, "gpytorch_path", True)

    # ---------------------------------------------------------------------------------------------------------
    # fitting and prediction

    def fit(self, **kwargs: Any) -> ExactGPModel:
        r"""Fit the hyperparameters by maximising the exact marginal likelihood (plus log priors).

        For a ``ScaleKernel`` over a Matern or RBF kernel with a Gaussian likelihood and a constant mean (the
        default model), L-BFGS-B runs on :func:`gpgeom.engine.exact_mll.exact_mll_loss`: the same loss as
        GPyTorch's ``ExactMarginalLogLikelihood`` with closed-form gradients, one factorisation per group of outputs
        that share their hyperparameters, and only the still-running outputs evaluated when each output has its
        own. Set ``model.fast_mll = False`` to go through GPyTorch's autograd instead.

        Args:
            **kwargs: Passed to :func:`gpgeom.engine.fitting.fit` (``restarts``, ``max_iter``, ``seed``,
                ``progress``, ``max_jitter``, ``optimizer``, ...).

        Returns:
            The model itself (in eval mode); the :class:`~gpgeom.engine.fitting.FitResult` is in ``fit_result_``.

        A fit that raises (an exception of the loss, ``KeyboardInterrupt``) leaves the model as it was before the
        call (:meth:`~gpgeom.ModelContract._kept_on_error`): its parameters, buffers and fitted attributes.
        """
        with self._kept_on_error():  # a fit that raises leaves the model as it was (gpgeom.base)
            self._fit_jitter = None
            # the closed-form-gradient loss (same value as GPyTorch's MLL) for the kernels it covers; GPyTorch otherwise
            loss = None
            if kwargs.get("optimizer", "auto") in ("auto", "lbfgs") and kwargs.get("data_loader") is None:
                loss = exact_mll_loss(self) if getattr(self, "fast_mll", True) else None
            if loss is not None:  # reads no GPyTorch setting (its jitter per thread: gpgeom.engine.exact_mll)
                result = fit(loss, module=self, **{**kwargs, "optimizer": "lbfgs"})
            else:
                # a refit starts in eval mode: not holding the prediction lock (numerics), which a thread-pool
                # attempt's objective may wait for while other work waits for this fit's attempts (test_threads.py);
                # GPyTorch's settings are process-wide, so another thread's GPyTorch model sees them meanwhile
                with bound(self, "fitting", True), self.numerics():
                    result = fit(ExactMarginalLogLikelihood(self.likelihood, self), **kwargs)
            default = gpytorch.settings.cholesky_jitter.value(self.train_inputs[0].dtype)
            self._fit_jitter = result.jitter if result.jitter > default else None
            self.fit_result_ = result
            self.prediction_strategy = None
            self._fitted = True
            return self

    @torch.no_grad()
    def predict(
        self,
        X: Tensor,
        return_std: bool = False,
        observation_noise: bool = False,
        chunk_size: int | None = None,
        max_memory: int | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Posterior mean (and standard deviation) in the original output units, in chunks of test points.

        Only the marginal of each test point is computed: per chunk, the ``chunk x n`` cross-covariance ``K*``, the
        mean ``K* alpha`` and, for the standard deviation, the kernel diagonal and one triangular solve against the
        Cholesky factor ``L`` of the training covariance. ``L`` and ``alpha`` are kept between calls in eval mode
        (recomputed when a parameter, a buffer, the training data or the jitter changes), so a mean-only call costs
        one ``K*`` and a matrix-vector product per chunk; the ``N x N`` test covariance is never formed. Chunks are
        sized from a memory budget (:mod:`gpgeom.engine.chunking`): ``3 x batch x m x n`` elements per test point
        (5 for kernels outside the Matern/RBF family) on top of the kept factor (``batch x m x n x n``) and the
        results. Equal to ``posterior(X).mean`` / ``.variance.sqrt()`` whatever the chunks. Other likelihoods than
        (fixed-noise) Gaussian and non-linear outcome transforms (``Log``, ...) go through :meth:`posterior`.

        Args:
            X: A ``test_batch_shape x N x d`` (or ``N x d``) tensor of test inputs.
            return_std: Also return the predictive standard deviation.
            observation_noise: Include the likelihood's noise (predict new observations, not the latent f); for a
                fixed-noise likelihood, the mean of the training noise, as BoTorch does.
            chunk_size: Test points per chunk; default: as many as ``max_memory`` allows.
            max_memory: Working-memory budget of a chunk, in bytes or a string such as ``"1GB"``; default
                :data:`gpgeom.engine.chunking.DEFAULT_MAX_MEMORY` (256 MiB) or the enclosing
                :func:`gpgeom.engine.chunking.memory_budget`.

        Returns:
            The mean, a ``broadcast(test_batch_shape, batch_shape) x N x m`` tensor, and with ``return_std`` the
            standard deviation of the same shape.
        """
        X = as_tensor("X", X, dtype=self.dtype, device=self.device)
        if X.dim() < 2 or X.shape[-1] != self._d:
            raise ValueError(f"`X` must be `batch_shape x N x {self._d}`, got shape {tuple(X.shape)}.")
        if chunk_size is not None:
            check_positive("chunk_size", chunk_size, integer=True)
        budget = resolve_max_memory(max_memory)
        N, m = X.shape[-2], self._num_outputs
        with eval_mode(self), self.numerics(), memory_budget(budget), raw_inputs(self, X):
            if not self._fast_predict_ok():  # the chunk's joint posterior: twice the kernel work per point
                out_dim = (1,) if m > 1 else ()  # the posterior's test inputs get an output dimension
                rows = chunk_size or chunk_size_for(2 * self._bytes_per_test_point(X.shape[:-2] + out_dim), total=N)
                post = lambda Z: self.posterior(Z, observation_noise=observation_noise)  # noqa: E731
                parts = [(p.mean, p.variance) for p in (post(X[..., sl, :]) for sl in chunk_slices(N, rows))]
                mean, var = (torch.cat(t, -2) for t in zip(*parts))
                return (mean, var.clamp_min(0.0).sqrt()) if return_std else mean
            Xt = self.transform_inputs(X)
            Xq = Xt.unsqueeze(-3) if m > 1 else Xt  # GPyTorch's layout: outputs are a batch dimension
            rows = chunk_size or chunk_size_for(self._bytes_per_test_point(Xq.shape[:-2]), total=N)
            mean, var = self._test_moments(Xq, rows, "diag" if return_std else "none")
            if return_std and observation_noise:  # fixed noise: the mean training noise, as BoTorch
                noise, fixed = self.likelihood.noise, isinstance(self.likelihood, FixedNoiseGaussianLikelihood)
                var = var + (noise.mean(dim=-1, keepdim=True) if fixed else noise)
        mean = mean.mT if m > 1 else mean.unsqueeze(-1)  # ``batch x N x m``
        var = (var.mT if m > 1 else var.unsqueeze(-1)) if return_std else None
        octf = getattr(self, "outcome_transform", None)
        if octf is not None:
            mean, var = octf.untransform(mean, var, X=Xt)
        return (mean, var.clamp_min(0.0).sqrt()) if return_std else mean

    def _fast_predict_ok(self) -> bool:
        if type(self.likelihood) not in (GaussianLikelihood, FixedNoiseGaussianLikelihood):
            return False
        octf = getattr(self, "outcome_transform", None)
        # affine transforms (Standardize) map the Gaussian marginals exactly; non-linear ones (Log, Power, ...)
        # change the posterior's family, so their moments come from ``posterior``
        return octf is None or bool(getattr(octf, "_is_linear", False))

    def _bytes_per_test_point(self, test_batch: tuple[int, ...] = ()) -> int:
        r"""Working bytes per test point of a chunk (:func:`~gpgeom.botorch.exact_predict.bytes_per_test_point` of
        this model's kernel and training inputs) for test inputs of batch shape ``test_batch`` in GPyTorch's layout
        (with the output dimension when ``m > 1``: as :meth:`_joint` gets them from BoTorch's ``posterior``)."""
        return bytes_per_test_point(self.covar_module, self.train_inputs[0], test_batch)

    # ---------------------------------------------------------------------------------------------------------
    # the training factor (cached between calls in eval mode) and the test moments from it

    def _train_factor(self) -> tuple[Tensor, Tensor]:
        r"""``(L, alpha)``: the lower Cholesky factor of the noisy training covariance (``batch_shape x (m) x n x n``)
        and ``alpha = (K + noise)^{-1} (y - mu)`` (``batch_shape x (m) x n``), in the transformed units.

        Kept (detached) between calls while the parameters, buffers, training tensors and jitter settings are
        unchanged (:class:`~gpgeom.engine.chunking.FactorCache`); computed afresh with gradients, and not kept, when
        gradients are enabled and GPyTorch's ``detach_test_caches`` is off."""
        if torch.is_grad_enabled() and not gpytorch.settings.detach_test_caches.on():
            return self._compute_factor()
        cache = self.__dict__.setdefault("_factor_cache", FactorCache())
        with torch.no_grad():
            return cache.get(self._state_key(), self._compute_factor)

    def _compute_factor(self) -> tuple[Tensor, Tensor]:
        train_X = self.train_inputs[0]
        rows = chunk_size_for(self._bytes_per_test_point(), total=train_X.shape[-2])
        return training_factor(self.covar_module, self.mean_module, self.likelihood, train_X, self.train_targets, rows)

    def _test_moments(self, Xq: Tensor, rows: int, second: str) -> tuple[Tensor, Tensor | None]:
        r"""Posterior mean ``batch x q`` of the latent GP at transformed inputs ``Xq`` and, by ``second``
        (``"none"``, ``"diag"``, ``"full"``), nothing, the variances or the covariance:
        :func:`~gpgeom.botorch.exact_predict.posterior_moments` from the cached training factor, ``rows`` test
        points at a time."""
        with factor_guard(self, "in a prediction"):  # a NaN from a user module named, not a NanError
            L, alpha = self._train_factor()
        mean, other = posterior_moments(
            self.covar_module, self.mean_module, self.train_inputs[0], L, alpha, Xq, rows, second
        )
        check_prediction(self, Xq, "in a prediction", mean, other)
        return mean, other

    def _joint_ok(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        r"""Whether ``self(X)`` in eval mode gives the joint posterior from the cached training factor: an
        unconditioned model (conditioned and fantasy models keep GPyTorch's updated caches) with a Gaussian
        likelihood, Cholesky algebra and GPyTorch's default posterior settings."""
        st = gpytorch.settings
        if self.training or len(args) != 1 or kwargs or not isinstance(args[0], Tensor) or self.train_inputs is None:
            return False
        flags = self.__dict__.get("_conditioned", False) or current(self, "gpytorch_path", False)
        modes = st.prior_mode.on() or st.skip_posterior_variances.on() or st.fast_pred_samples.on()
        exact = len(self.train_inputs) == 1 and self.train_inputs[0].shape[-2] <= st.max_cholesky_size.value()
        gaussian = type(self.likelihood) in (GaussianLikelihood, FixedNoiseGaussianLikelihood)
        return exact and gaussian and not (flags or modes)

    def _joint(self, X: Tensor) -> MultivariateNormal:
        r"""The joint posterior ``MultivariateNormal`` at transformed inputs ``X`` (``test_batch x q x d``) with
        GPyTorch's batch layout, from the kept training factor (GPyTorch 1.15 builds the ``(n + q) x (n + q)``
        kernel, gpytorch#2754). Differentiable in ``X``; in the hyperparameters only when ``X`` requires a gradient
        or ``detach_test_caches`` is off (BoTorch's ``propagate_grads``): with detached training caches that gradient
        is partial anyway, and its graph keeps every kernel temporary (1 GB at ``n = q = 2,000``, ``m = 2``)."""
        X = X.unsqueeze(-1) if X.dim() == 1 else X
        rows = chunk_size_for(self._bytes_per_test_point(X.shape[:-2]), total=X.shape[-2])
        track = X.requires_grad or not gpytorch.settings.detach_test_caches.on()
        with torch.set_grad_enabled(torch.is_grad_enabled() and track):
            mean, cov = self._test_moments(X, rows, "full")
        return MultivariateNormal(mean, to_linear_operator(cov))

    # ---------------------------------------------------------------------------------------------------------
    # BoTorch model API (with this model's numerics)

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> Posterior:
        r"""The BoTorch posterior at ``X``: for an unconditioned model with a Gaussian likelihood, from the kept
        training factor (:meth:`_joint`); conditioned and fantasy models use GPyTorch's updated caches.

        Args:
            X: A ``test_batch_shape x q x d`` floating tensor (converted to the model's dtype, as in :meth:`predict`).
            output_indices: Optional list of outputs to keep, in this order (all ``m`` by default).
            observation_noise: Add the likelihood's noise (``True``) or this ``test_batch_shape x q x m`` noise (a
                column for every output whatever ``output_indices``, in the outcome-transformed units: BoTorch's
                convention, e.g. of ``fantasize``; converted to the model's dtype).
            posterior_transform: Optional BoTorch ``PosteriorTransform`` (e.g. ``ScalarizedPosteriorTransform``).

        Returns:
            A ``GPyTorchPosterior`` over ``broadcast(test_batch_shape, batch_shape) x q x m'`` (``m'`` the number
            of selected outputs), in the original output units.
        """
        X = check_tensor("X", X, floating=True).to(dtype=self.dtype)  # gpgeom's dtype rule, as `predict`
        if isinstance(observation_noise, Tensor):  # and the noise that `fantasize` passes
            observation_noise = observation_noise.to(dtype=self.dtype)
        refuse_empty_batch(X, self._num_outputs)  # even for one of them: they come from the joint of all
        if output_indices is not None and self._num_outputs > 1:
            output_indices = list(output_indices)
            if not output_indices or any(not 0 <= i < self._num_outputs for i in output_indices):
                raise ValueError(
                    f"`output_indices` must be a non-empty list of indices in range({self._num_outputs}), "
                    f"got {output_indices}."
                )
        if output_indices is not None and self._num_outputs > 1 and output_indices != list(range(self._num_outputs)):
            # BoTorch's batched posterior untransforms the outputs it selects with the outcome transform's first
            # statistics (a Standardize's means and scales of outputs 0, 1, ..., not of those selected) and cannot
            # build a multitask distribution from one output: select them from the full (untransformed) joint.
            with self.numerics(), raw_inputs(self, X):
                full = super().posterior(X, observation_noise=observation_noise, **kwargs)
            if not isinstance(full, GPyTorchPosterior):
                raise NotImplementedError(
                    f"`output_indices` needs a Gaussian posterior, got a {type(full).__name__} (from the outcome "
                    f"transform {type(getattr(self, 'outcome_transform', None)).__name__}); use `subset_output`."
                )
            post = gaussian_posterior(*select_outputs(*joint_moments(full, detach=False), output_indices))
            return post if posterior_transform is None else posterior_transform(posterior=post, X=X)
        with self.numerics(), raw_inputs(self, X):  # a NaN that the input transform makes names it
            return super().posterior(
                X,
                output_indices=output_indices,
                observation_noise=observation_noise,
                posterior_transform=posterior_transform,
                **kwargs,
            )

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> ExactGPModel:
        r"""A new model conditioned on extra observations (no refit).

        Args:
            X: A ``batch_shape' x n' x d`` tensor of new inputs (broadcastable with the model's batch shape).
            Y: A ``batch_shape' x n' x m`` tensor of new outputs in the original units. ``X``, ``Y`` and ``noise``
                are converted to the model's dtype, as in :meth:`predict`.
            **kwargs: E.g. ``noise``, a ``batch_shape' x n' x m`` tensor of noise variances in the outcome-transformed
                units (BoTorch's convention), for fixed-noise models only (a ``ValueError`` otherwise).

        Returns:
            An :class:`ExactGPModel` with ``n + n'`` training points and batch shape ``batch_shape'`` broadcast
            with the model's (and with ``Y``'s, e.g. ``fantasize``'s fantasy dimension); its ``train_data`` (and the
            data of ``rebuild_with``, files, ``repr``) are the union in original units, ``noise`` converted to them.
        """
        X = check_tensor("X", X, floating=True).to(dtype=self.dtype)  # gpgeom's dtype rule, as `predict`
        # a failed experiment's NaN would poison every later posterior and acquisition
        Y = check_tensor("Y", Y).to(dtype=self.dtype)
        if Y.dim() < 2 or Y.shape[-1] != self._num_outputs:
            raise ValueError(f"`Y` must be `batch_shape x n' x {self._num_outputs}`, got shape {tuple(Y.shape)}.")
        if kwargs.get("noise") is not None:
            kwargs["noise"] = check_tensor("noise", kwargs["noise"]).to(dtype=self.dtype)
            if bool((kwargs["noise"] < 0).any()):
                raise ValueError(f"`noise` must be >= 0, got min {float(kwargs['noise'].min()):.3g}.")
            if not isinstance(self.likelihood, FixedNoiseGaussianLikelihood):
                # GPyTorch's fantasy strategy would update the mean with the likelihood's noise and the covariance
                # with `noise`: a posterior that is neither conditioning
                raise ValueError(
                    "`noise` can be given only for a fixed-noise model (built with `train_Yvar`); this model's "
                    f"{type(self.likelihood).__name__} has one inferred noise level, which conditioning uses: omit "
                    f"`noise` (got a tensor of shape {tuple(kwargs['noise'].shape)})."
                )
        self._check_strategy()  # a strategy of older hyperparameters would condition with them
        with named_step(self, "in condition_on_observations"):  # a NaN of a user module named there
            if self.prediction_strategy is None:  # GPyTorch conditions only a model with its prediction caches
                with torch.no_grad(), self._gpytorch_path():
                    ExactGPModel.posterior(self, self.train_data[0][..., :1, :])
            tf = getattr(self, "input_transform", None)  # BoTorch transforms the new points as `batch x m x n' x d`
            layout = tf.training_layout() if isinstance(tf, MemberNormalize) else contextlib.nullcontext()
            with self.numerics(), factor_guard(self, "in condition_on_observations"), layout:
                new = super().condition_on_observations(X, Y, **kwargs)
        check_conditioned(new, self.train_targets.shape[-1])
        # its data in original units: the union, concatenated when first read (`fantasize` never reads them)
        noise = kwargs.get("noise") if self._original_data[2] is not None else None
        octf = getattr(self, "outcome_transform", None)
        Yvar = None if noise is None else noise_in_original_units(octf, Y.detach(), noise.detach())
        grads = tuple(t is not None and t.requires_grad for t in (X, Y, kwargs.get("noise")))  # for its file
        # copies of the n' new rows: the caller's tensors (or `noise`) changed in place later are not the model's data
        X, Y, Yvar, noise = (None if t is None else t.detach().clone() for t in (X, Y, Yvar, kwargs.get("noise")))
        new._original_data = UnionData(self._original_data, X, Y, Yvar)
        new.__dict__["_conditioned"] = True  # its posterior keeps GPyTorch's updated caches (fast fantasies)
        new.__dict__.pop("_strategy_cache", None)
        new._check_strategy()  # its strategy, updated from this one, is for its state now
        record_conditioning(self, new, (X, Y, noise), set(kwargs) <= {"noise"}, grads)  # what its file replays
        return new

    def _find_output_dims(self, default_modules: tuple[str, ...] = ()) -> dict[str, int]:
        r"""Which parameters/buffers carry the output dimension, and where (for :meth:`subset_output`).

        Parameters of the modules named in ``default_modules`` (built by this class with batch shape
        ``batch_shape x m`` or ``batch_shape x 1``) all carry it at position ``len(batch_shape)``; so do those of
        any module whose ``batch_shape`` is ``batch_shape x m`` or ``batch_shape x 1``; for other modules (e.g. a
        custom likelihood) only tensors whose size there is ``m``. ``batch_shape`` is the modules' (the root's, for a
        conditioned or fantasy model, whose data carry more batch dimensions).
        """
        m = self._num_outputs
        if m == 1:
            return {}
        batch = self._module_batch_shape()
        k = len(batch)
        dims: dict[str, int] = {}
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if name.startswith(("outcome_transform.", "input_transform.")) or t.dim() <= k:
                continue
            if t.shape[:k] != batch or t.shape[k] not in (1, m):
                continue
            parent = ".".join(name.split(".")[:-1])
            owner = self.get_submodule(parent) if parent else self
            owner_batch = getattr(owner, "batch_shape", None)
            if (
                name.split(".")[0] in default_modules
                or (isinstance(owner_batch, torch.Size) and len(owner_batch) == k + 1 and owner_batch[k] in (1, m))
                or t.shape[k] == m
            ):
                dims[name] = k
        return dims

    def _module_batch_shape(self) -> torch.Size:
        r"""The batch shape the modules were built with (the root's data batch; conditioning leaves them as built
        while ``_input_batch_shape`` becomes the conditioned data's, e.g. with ``fantasize``'s fantasy dimension)."""
        return torch.Size(self._config["data_batch"])

    def get_fantasy_model(self, inputs: Tensor | list[Tensor], targets: Tensor, **kwargs: Any) -> ExactGPModel:
        r"""GPyTorch's fantasy model (``inputs``: ``batch' x n' x d``, ``targets``: ``batch' x (m) x n'``), with its
        updated caches kept as computed: with the new rows' gradient, and the mean's read (:mod:`._fantasy`)."""
        out: list[ExactGPModel] = []
        rows = [*(inputs if isinstance(inputs, list) else [inputs]), targets]
        with fantasy_caches(rows, out, parent=self.prediction_strategy):
            history = conditioning_history(self)  # under the update's lock, which another thread's update empties
            out.append(super().get_fantasy_model(inputs, targets, **kwargs))
        out[0].__dict__[PARENT_HISTORY] = history  # for `record_conditioning`
        return out[0]

    def subset_output(self, idcs: list[int]) -> ExactGPModel:
        r"""A copy of the model restricted to some outputs.

        Args:
            idcs: Output indices to keep (in ``range(m)``).

        Returns:
            An :class:`ExactGPModel` with ``len(idcs)`` outputs and the same hyperparameters for those outputs.
        """
        m = self._num_outputs
        if not idcs or any(not 0 <= i < m for i in idcs):
            raise ValueError(f"`idcs` must be a non-empty list of output indices in range({m}), got {idcs}.")
        new = copy.deepcopy(self)
        if list(idcs) == list(range(m)):
            return new
        mm = len(idcs)
        index = torch.tensor(idcs, device=self.train_targets.device)
        new.prediction_strategy = None
        new._num_outputs = mm
        new._aug_batch_shape = self._input_batch_shape + (torch.Size([mm]) if mm > 1 else torch.Size())
        if isinstance(getattr(new, "input_transform", None), MemberNormalize):  # its training inputs' output size
            new.input_transform.num_outputs = mm
        # the output dimension counted from the end: a fantasy model's fixed noise has fewer batch dimensions than
        # its data (`m x n`, its data `fantasies x m x n`)
        pick = lambda t, dim: t.index_select(dim, index) if mm > 1 else t.select(dim, idcs[0])  # noqa: E731
        new.train_inputs = tuple(pick(t, -3) for t in new.train_inputs)
        new.train_targets = pick(new.train_targets, -2)
        X0, Y0, V0 = new._original_data  # in original units, outputs last (a conditioned model's union too)
        new._original_data = (X0, Y0[..., list(idcs)], None if V0 is None else V0[..., list(idcs)])
        # With an input transform BoTorch keeps the untransformed training inputs (``batch x m x n x d``) to restore
        # them in train mode and to extend them in ``condition_on_observations``/``fantasize``: subset them too.
        # (Indexed from the end: a conditioned model may store them with fewer batch dimensions than its data.)
        orig = getattr(new, "_original_train_inputs", None)
        if isinstance(orig, Tensor) and not new._has_transformed_inputs:
            new._original_train_inputs = None  # train mode: stale; set again from train_inputs by eval()
        elif isinstance(orig, Tensor):
            if orig.dim() < 3 or orig.shape[-3] != m:
                raise RuntimeError(
                    f"Cannot subset the stored original training inputs of shape {tuple(orig.shape)}: expected the "
                    f"output dimension ({m}) third from the end."
                )
            orig = orig.index_select(-3, index)
            new._original_train_inputs = orig if mm > 1 else orig.squeeze(-3)
        named = dict(new.named_parameters())
        named.update(dict(new.named_buffers()))
        for name, dim in self._output_dims.items():
            t = named[name]
            data = t.data.index_select(dim, index) if t.shape[dim] == m else t.data
            t.data = data.squeeze(dim) if mm == 1 else data
        mb = self._module_batch_shape()  # the modules' batch: the root's for a conditioned model (data: `k` dims)
        kb = len(mb)
        for _, module in new.named_modules():
            b = getattr(module, "batch_shape", None)
            if isinstance(b, torch.Size) and module is not new and len(b) == kb + 1 and b[:kb] == mb:
                if b[kb] == m:
                    module.batch_shape = b[:kb] + (torch.Size([mm]) if mm > 1 else torch.Size())
                elif b[kb] == 1 and mm == 1:
                    module.batch_shape = b[:kb]
        if isinstance(new.likelihood, FixedNoiseGaussianLikelihood):
            noise = new.likelihood.noise_covar.noise
            new.likelihood.noise_covar.noise = pick(noise, -2)
        if hasattr(new, "outcome_transform"):
            new.outcome_transform = new.outcome_transform.subset_output(idcs=list(idcs))
        new._output_dims = new._find_output_dims(new._default_modules)
        return new

    # ---------------------------------------------------------------------------------------------------------
    # the model contract: data, rebuild, files, devices, repr

    def _check_fitted(self) -> None:
        r"""An exact GP predicts with any hyperparameters, fitted or not: nothing to check."""

    @property
    def train_data(self) -> tuple[Tensor, Tensor]:
        r"""The training data in original units: ``train_X`` (``batch_shape x n x d``, before the input transform)
        and ``train_Y`` (``batch_shape x n x m``, before the outcome transform); for a model returned by
        ``condition_on_observations`` or ``fantasize``, the ``n + n'`` points of the union (with its batch shape)."""
        return self._original_data[0], self._original_data[1]

    def rebuild_with(self, X: Tensor, Y: Tensor, Yvar: Tensor | None = None) -> ExactGPModel:
        r"""The model rebuilt from scratch on its training data plus ``(X, Y)`` with the same hyperparameters and
        the same (fixed) input and outcome transforms, without optimisation: the reference that
        ``condition_on_observations(X, Y)`` must equal (:func:`gpgeom.botorch.check_botorch_model`, ``refit=``).

        Args:
            X: ``batch' x n' x d`` new inputs (original units), broadcastable with the model's batch shape.
            Y: ``batch' x n' x m`` new outputs (original units).
            Yvar: ``batch' x n' x m`` noise variances of the new outputs (fixed-noise models only).

        Returns:
            An :class:`ExactGPModel` on ``n + n'`` points, in eval mode.
        """
        X0, Y0, V0 = self._original_data
        X = as_tensor("X", X, dtype=self.dtype, device=self.device)
        Y = as_tensor("Y", Y, dtype=self.dtype, device=self.device)
        batch = torch.broadcast_shapes(X0.shape[:-2], X.shape[:-2], Y.shape[:-2])
        Yvar_all = None
        if V0 is not None:
            if Yvar is None:
                raise ValueError("A fixed-noise model needs `Yvar` for the new observations.")
            Yvar_all = cat_points(V0, as_tensor("Yvar", Yvar, dtype=self.dtype, device=self.device), batch)
        frozen = {}
        for name in ("input_transform", "outcome_transform"):
            module = getattr(self, name, None)
            frozen[name] = copy.deepcopy(module).eval() if module is not None else None
        new = ExactGPModel(
            cat_points(X0, X, batch),
            cat_points(Y0, Y, batch),
            Yvar_all,
            covar_module=copy.deepcopy(self.covar_module),
            mean_module=copy.deepcopy(self.mean_module),
            likelihood=copy.deepcopy(self.likelihood) if V0 is None else None,
            shared_hyperparameters=self.shared_hyperparameters,
            input_transform=frozen["input_transform"],
            outcome_transform=frozen["outcome_transform"],
            max_cholesky_size=self.max_cholesky_size,
        )
        new._fit_jitter = self._fit_jitter
        return new.eval()

    def __getstate__(self) -> dict[str, Any]:
        r"""The state for ``pickle`` and ``copy.deepcopy``: GPyTorch's prediction strategy is carried unless the
        state changed since it was built (:meth:`_check_strategy` drops it then)."""
        self._check_strategy()
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if state.get("prediction_strategy") is not None:  # recorded with the state it was built for
            self._check_strategy()

    def __deepcopy__(self, memo: dict[int, Any]) -> ExactGPModel:
        r"""An independent copy that keeps GPyTorch's prediction strategy, as pickling does (GPyTorch drops it on
        a deep copy; ``gpgeom.botorch._copies.copy_strategy``): a conditioned model's copy predicts bitwise as
        the original (it refactorised its training covariance: variances off by 1.3e-15 to 3.9e-15 on small tests)."""
        memo[id(self)] = new = type(self).__new__(type(self))
        state = self.__getstate__()
        strategy = state.get("prediction_strategy")
        new.__setstate__(copy_state({**state, "prediction_strategy": None}, memo))
        if strategy is not None:
            new.__dict__["prediction_strategy"] = copy_strategy(strategy, memo)
            new._check_strategy()
        return new

    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        data = self.__dict__.get("_original_data")
        if data is not None:
            X, Y, Yvar = (None if t is None else t.to(device=device, dtype=dtype) for t in data)
            if data[1].dtype == torch.float64:  # float64 outputs stay float64 (exact_inputs.standardised_outputs)
                Y = data[1].to(device=device)
            self._original_data = (X, Y, Yvar)
        if self._original_train_inputs is not None:  # BoTorch's untransformed inputs, back in training mode
            self._original_train_inputs = self._original_train_inputs.to(device=device, dtype=dtype)
        strategy = self.prediction_strategy  # kept where nothing moved (`load(path, map_location="cpu")` on the CPU)
        if strategy is None or any(t.dtype != dtype or t.device != device for t in strategy.train_inputs):
            self.prediction_strategy = None

    def _get_state(self) -> dict[str, Any]:
        return model_state(self)

    @classmethod
    def _from_state(cls, state: dict[str, Any], **modules: Any) -> ExactGPModel:
        r"""Rebuild from :meth:`_get_state` (:func:`~gpgeom.botorch.exact_files.restore_model`). Custom modules
        (kernel, mean, likelihood, transforms) are not stored (no code is unpickled): pass them to :meth:`load` by
        name (``covar_module=...``), freshly built."""
        return restore_model(cls, state, **modules)

    def _repr_fields(self) -> dict[str, Any]:
        X, Y, _ = self._original_data
        fields: dict[str, Any] = {"n": X.shape[-2], "d": X.shape[-1], "m": Y.shape[-1]}
        if len(X.shape) > 2:
            fields["batch_shape"] = tuple(X.shape[:-2])
        kernel = self.covar_module
        base = getattr(kernel, "base_kernel", kernel)
        name = type(base).__name__
        if getattr(base, "nu", None) is not None:
            name += f"(nu={float(base.nu):g})"
        fields["kernel"] = name
        with torch.no_grad():
            if getattr(base, "lengthscale", None) is not None:
                fields["lengthscale"] = base.lengthscale.detach().squeeze()
            if hasattr(kernel, "outputscale"):
                fields["outputscale"] = kernel.outputscale.detach().squeeze()
            noise = getattr(self.likelihood, "noise", None)
            if noise is not None:
                fields["noise"] = noise.detach().squeeze()
        if self.shared_hyperparameters:
            fields["shared_hyperparameters"] = True
        fields["dtype"] = self.dtype
        return fields
