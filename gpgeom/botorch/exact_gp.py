r"""An exact GP regression model that is also a BoTorch model.

:class:`ExactGPModel` is the exact-GP building block of gpgeom (MMGP, RVGP and any GP surrogate). It is a
``gpytorch.models.ExactGP`` and a ``botorch.models.gpytorch.BatchedMultiOutputGPyTorchModel``, so it works with
every BoTorch acquisition function, ``fantasize`` and ``condition_on_observations``, and it adds:

* ``fit()`` through :func:`gpgeom.engine.fitting.fit` (L-BFGS-B, restarts, jitter escalation, progress bar);
* ``predict()`` in chunks of test points, in the original output units, equal to ``posterior()``;
* multi-output data with either separate hyperparameters per output (the BoTorch batched way) or one set of
  hyperparameters shared by all outputs (``shared_hyperparameters=True``);
* exact Cholesky algebra up to ``max_cholesky_size`` training points (GPyTorch switches to CG/Lanczos above 800 by
  default, which makes predictions and gradients approximate).

Shapes: ``train_X`` is ``batch_shape x n x d``, ``train_Y`` is ``batch_shape x n x m`` (the output dimension ``m``
is always explicit, even for ``m = 1``). Internally outputs become a batch dimension: the data are
``batch_shape x m x n x d`` when ``m > 1``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.gpytorch import BatchedMultiOutputGPyTorchModel
from botorch.models.model import FantasizeMixin
from botorch.models.transforms.input import InputTransform
from botorch.models.transforms.outcome import OutcomeTransform, Standardize
from botorch.models.utils import validate_input_scaling
from botorch.posteriors import GPyTorchPosterior, Posterior
from gpytorch.constraints import GreaterThan
from gpytorch.distributions import MultivariateNormal
from gpytorch.kernels import Kernel, MaternKernel, ScaleKernel
from gpytorch.likelihoods import FixedNoiseGaussianLikelihood, GaussianLikelihood, Likelihood
from gpytorch.means import ConstantMean, Mean
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.models import ExactGP
from gpytorch.priors import LogNormalPrior
from linear_operator import to_dense
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom._validation import check_positive, check_tensor
from gpgeom.engine.exact_mll import exact_mll_loss
from gpgeom.engine.fitting import FitResult, fit

__all__ = ["ExactGPModel", "default_covar_module", "default_likelihood"]

#: Smallest inferred noise variance of the default likelihood (standardised outputs).
MIN_NOISE = 1e-4


def default_covar_module(d: int, batch_shape: torch.Size | None = None) -> ScaleKernel:
    r"""The default kernel: ``ScaleKernel(MaternKernel(nu=2.5, ARD))`` for inputs in the unit cube.

    Priors (for standardised outputs and inputs scaled to ``[0, 1]^d``): lengthscales
    ``LogNormal(sqrt(2) + log(d) / 2, sqrt(3))`` (the dimension-scaled prior of Hvarfner et al., 2024), constrained
    to ``>= 0.025`` and started at the prior mode; outputscale ``LogNormal(0, 1)`` (median 1, the variance of
    standardised data), constrained to ``>= 1e-4`` and started at 1. Constraints have no transform, so L-BFGS-B
    sees them as bounds.

    Args:
        d: The input dimension (number of lengthscales).
        batch_shape: The kernel's batch shape (``batch_shape x m`` for separate hyperparameters per output).

    Returns:
        A ``ScaleKernel`` with ``base_kernel.lengthscale`` of shape ``batch_shape x 1 x d``.
    """
    batch_shape = torch.Size() if batch_shape is None else torch.Size(batch_shape)
    ls_prior = LogNormalPrior(loc=math.sqrt(2.0) + 0.5 * math.log(d), scale=math.sqrt(3.0))
    base = MaternKernel(
        nu=2.5,
        ard_num_dims=d,
        batch_shape=batch_shape,
        lengthscale_prior=ls_prior,
        lengthscale_constraint=GreaterThan(2.5e-2, transform=None, initial_value=ls_prior.mode),
    )
    return ScaleKernel(
        base,
        batch_shape=batch_shape,
        outputscale_prior=LogNormalPrior(loc=0.0, scale=1.0),
        outputscale_constraint=GreaterThan(1e-4, transform=None, initial_value=1.0),
    )


def default_likelihood(batch_shape: torch.Size | None = None) -> GaussianLikelihood:
    r"""The default likelihood: Gaussian noise with a ``LogNormal(-4, 1)`` prior, ``>= 1e-4``, started at its mode.

    Args:
        batch_shape: The likelihood's batch shape.

    Returns:
        A ``GaussianLikelihood`` whose ``noise`` has shape ``batch_shape x 1``.
    """
    batch_shape = torch.Size() if batch_shape is None else torch.Size(batch_shape)
    prior = LogNormalPrior(loc=-4.0, scale=1.0)
    return GaussianLikelihood(
        noise_prior=prior,
        batch_shape=batch_shape,
        noise_constraint=GreaterThan(MIN_NOISE, transform=None, initial_value=prior.mode),
    )


class ExactGPModel(BatchedMultiOutputGPyTorchModel, ExactGP, FantasizeMixin):
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
        input_transform: InputTransform | None = None,
        outcome_transform: OutcomeTransform | str | None = "default",
        max_cholesky_size: int = 4096,
    ) -> None:
        r"""Build the model (hyperparameters at their initial values; call :meth:`fit`).

        Args:
            train_X: A ``batch_shape x n x d`` tensor of training inputs.
            train_Y: A ``batch_shape x n x m`` tensor of training outputs (explicit ``m``, even for one output).
            train_Yvar: Optional ``batch_shape x n x m`` tensor of known non-negative noise variances (in the
                original units); the likelihood is then a ``FixedNoiseGaussianLikelihood``.
            covar_module: The kernel. Defaults to :func:`default_covar_module`. A custom kernel for ``m > 1``
                should have batch shape ``batch_shape x m`` (separate hyperparameters) or ``batch_shape x 1``
                (shared); a kernel without batch shape is shared by all outputs.
            mean_module: The mean. Defaults to a ``ConstantMean`` per output (batch shape ``batch_shape x m``).
            likelihood: The likelihood. Defaults to :func:`default_likelihood` (or fixed noise with
                ``train_Yvar``).
            shared_hyperparameters: For ``m > 1``: one kernel and one noise level for all outputs (each output
                keeps its own constant mean) instead of one set per output. The outputs stay independent GPs.
            input_transform: Optional BoTorch ``InputTransform`` (e.g. ``Normalize(d)``).
            outcome_transform: ``"default"`` (``Standardize(m, batch_shape)``), ``None`` or a BoTorch
                ``OutcomeTransform``. Predictions and posteriors are always in the original units.
            max_cholesky_size: Use Cholesky (exact) algebra up to this many training points per batch member;
                above, GPyTorch's CG/Lanczos approximations.

        Raises:
            TypeError, ValueError: For tensors of the wrong type, shape or dtype, NaN/inf values, negative noise
                or an unknown ``outcome_transform``.
        """
        check_tensor("train_X", train_X, floating=True)
        check_tensor("train_Y", train_Y, floating=True)
        if train_X.dim() < 2:
            raise ValueError(
                f"`train_X` must be `batch_shape x n x d` (at least 2-D), got shape {tuple(train_X.shape)}."
            )
        if train_Y.dim() != train_X.dim():
            hint = ""
            if train_Y.shape == train_X.shape[:-1]:
                hint = " Add the output dimension with train_Y.unsqueeze(-1)."
            raise ValueError(
                f"`train_Y` must be `batch_shape x n x m` with the same number of dimensions as `train_X` "
                f"{tuple(train_X.shape)}, got shape {tuple(train_Y.shape)}.{hint}"
            )
        if train_Y.shape[:-1] != train_X.shape[:-1]:
            raise ValueError(
                f"`train_Y` {tuple(train_Y.shape)} and `train_X` {tuple(train_X.shape)} must share the batch shape "
                "and the number of points n (all but the last dimension)."
            )
        if train_X.shape[-2] < 1 or train_X.shape[-1] < 1 or train_Y.shape[-1] < 1:
            raise ValueError(
                f"Need at least one point, one input dimension and one output; got train_X {tuple(train_X.shape)}, "
                f"train_Y {tuple(train_Y.shape)}."
            )
        if train_Y.dtype != train_X.dtype:
            raise TypeError(f"`train_X` ({train_X.dtype}) and `train_Y` ({train_Y.dtype}) must share a dtype.")
        if train_Yvar is not None:
            check_tensor("train_Yvar", train_Yvar, floating=True)
            if train_Yvar.shape != train_Y.shape:
                raise ValueError(
                    f"`train_Yvar` must have the shape of `train_Y` {tuple(train_Y.shape)}, "
                    f"got {tuple(train_Yvar.shape)}."
                )
            if bool((train_Yvar < 0).any()):
                raise ValueError("`train_Yvar` must be non-negative (noise variances).")
            train_Yvar = train_Yvar.to(train_X.dtype)
        if not isinstance(shared_hyperparameters, bool):
            raise TypeError(f"`shared_hyperparameters` must be a bool, got {type(shared_hyperparameters).__name__}.")
        check_positive("max_cholesky_size", max_cholesky_size, integer=True)
        if isinstance(outcome_transform, str):
            if outcome_transform != "default":
                raise ValueError(
                    f"Unknown `outcome_transform`={outcome_transform!r}; expected 'default', None or a BoTorch "
                    "OutcomeTransform."
                )
            outcome_transform = Standardize(m=train_Y.shape[-1], batch_shape=train_X.shape[:-2])
        elif outcome_transform is not None and not isinstance(outcome_transform, OutcomeTransform):
            raise TypeError(
                "`outcome_transform` must be 'default', None or a BoTorch OutcomeTransform, "
                f"got {type(outcome_transform).__name__}."
            )
        if input_transform is not None and not isinstance(input_transform, InputTransform):
            raise TypeError(
                f"`input_transform` must be a BoTorch InputTransform, got {type(input_transform).__name__}."
            )

        self._validate_tensor_args(X=train_X, Y=train_Y, Yvar=train_Yvar)
        with torch.no_grad():
            transformed_X = self.transform_inputs(X=train_X, input_transform=input_transform)
        if outcome_transform is not None:
            outcome_transform.train()
            train_Y, train_Yvar = outcome_transform(Y=train_Y, Yvar=train_Yvar, X=transformed_X)
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
        self.fit_result: FitResult | None = None
        #: Fit with the closed-form-gradient exact MLL when the model is in its family (see :meth:`fit`).
        self.fast_mll = True
        self._fit_jitter: float | None = None
        self._d = train_X.shape[-1]
        given = {"likelihood": likelihood_given, "mean_module": mean_module, "covar_module": covar_module}
        defaults = tuple(name for name, module in given.items() if module is None)
        self._default_modules = defaults
        self._output_dims = self._find_output_dims(defaults)
        self.to(train_X)

    # ---------------------------------------------------------------------------------------------------------
    # GPyTorch forward and numerics

    def forward(self, x: Tensor) -> MultivariateNormal:
        r"""The GP prior at ``x`` (``batch_shape x (m) x n x d``); input transforms apply in training mode only."""
        if self.training:
            x = self.transform_inputs(x)
        return MultivariateNormal(self.mean_module(x), self.covar_module(x))

    @contextlib.contextmanager
    def numerics(self) -> Iterator[None]:
        r"""Context with this model's linear-algebra settings.

        Cholesky (exact) algebra up to ``max_cholesky_size`` training points, and the jitter that :meth:`fit` had
        to use (if any) for later factorisations.
        """
        with contextlib.ExitStack() as stack:
            stack.enter_context(gpytorch.settings.max_cholesky_size(self.max_cholesky_size))
            if self._fit_jitter is not None:
                stack.enter_context(
                    gpytorch.settings.cholesky_jitter(float_value=self._fit_jitter, double_value=self._fit_jitter)
                )
                # the jitter is known and reported in fit_result; do not warn about it at every prediction
                stack.enter_context(warnings.catch_warnings())
                warnings.filterwarnings("ignore", message="A not p.d., added jitter")
            yield

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.numerics():
            return super().__call__(*args, **kwargs)

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
            The model itself (in eval mode); the :class:`~gpgeom.engine.fitting.FitResult` is in ``fit_result``.
        """
        self._fit_jitter = None
        # the closed-form-gradient loss (same value as GPyTorch's MLL) for the kernels it covers; GPyTorch otherwise
        loss = None
        if kwargs.get("optimizer", "auto") in ("auto", "lbfgs") and kwargs.get("data_loader") is None:
            loss = exact_mll_loss(self) if getattr(self, "fast_mll", True) else None
        with self.numerics():
            if loss is not None:
                result = fit(loss, module=self, **{**kwargs, "optimizer": "lbfgs"})
            else:
                result = fit(ExactMarginalLogLikelihood(self.likelihood, self), **kwargs)
        default = gpytorch.settings.cholesky_jitter.value(self.train_inputs[0].dtype)
        self._fit_jitter = result.jitter if result.jitter > default else None
        self.fit_result = result
        self.prediction_strategy = None
        return self

    @torch.no_grad()
    def predict(
        self,
        X: Tensor,
        return_std: bool = False,
        observation_noise: bool = False,
        chunk_size: int = 2048,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Posterior mean (and standard deviation) in the original output units, in chunks of test points.

        Only the marginal of each test point is computed: per chunk, the ``chunk_size x n`` cross-covariance and
        the kernel diagonal, against one Cholesky factor of the training covariance (computed once per call). The
        joint ``N x N`` test covariance is never formed (GPyTorch 1.15's ``posterior`` builds the full
        ``(n + q) x (n + q)`` kernel, gpytorch#2754), so memory is ``O(chunk_size x n)`` per batch member and
        output. The result equals ``posterior(X).mean`` / ``posterior(X).variance.sqrt()`` (same algebra). For
        likelihoods other than Gaussian / fixed-noise Gaussian, or non-linear outcome transforms (``Log``,
        ``Power``, ...), each chunk goes through :meth:`posterior` instead.

        Args:
            X: A ``test_batch_shape x N x d`` (or ``N x d``) tensor of test inputs.
            return_std: Also return the predictive standard deviation.
            observation_noise: Include the likelihood's noise (predict new observations, not the latent f); for a
                fixed-noise likelihood, the mean of the training noise, as BoTorch does.
            chunk_size: Number of test points per chunk.

        Returns:
            The mean, a ``broadcast(test_batch_shape, batch_shape) x N x m`` tensor, and with ``return_std`` the
            standard deviation of the same shape.
        """
        check_tensor("X", X, floating=True)
        if X.dim() < 2 or X.shape[-1] != self._d:
            raise ValueError(f"`X` must be `batch_shape x N x {self._d}`, got shape {tuple(X.shape)}.")
        check_positive("chunk_size", chunk_size, integer=True)
        X = X.to(self.train_inputs[0])
        self.eval()
        with self.numerics():
            fast = self._marginal_predictor(observation_noise) if self._fast_predict_ok() else None
            means, variances = [], []
            for start in range(0, X.shape[-2], chunk_size):
                Xc = X[..., start : start + chunk_size, :]
                if fast is not None:
                    mean, var = fast(Xc)
                else:
                    post = self.posterior(Xc, observation_noise=observation_noise)
                    mean, var = post.mean, post.variance
                means.append(mean)
                variances.append(var)
        mean = torch.cat(means, dim=-2)
        if not return_std:
            return mean
        return mean, torch.cat(variances, dim=-2).clamp_min(0.0).sqrt()

    def _fast_predict_ok(self) -> bool:
        if type(self.likelihood) not in (GaussianLikelihood, FixedNoiseGaussianLikelihood):
            return False
        octf = getattr(self, "outcome_transform", None)
        # affine transforms (Standardize) map the Gaussian marginals exactly; non-linear ones (Log, Power, ...)
        # change the posterior's family, so their moments come from ``posterior``
        return octf is None or bool(getattr(octf, "_is_linear", False))

    def _marginal_predictor(self, observation_noise: bool) -> Any:
        r"""A function ``Xc (test_batch x q x d) -> (mean, variance)`` (each ``batch x q x m``) for :meth:`predict`."""
        m = self._num_outputs
        train_X = self.train_inputs[0]  # eval mode: transformed inputs, ``batch_shape x (m) x n x d``
        prior = self.forward(train_X)
        noisy = self.likelihood(prior, train_X)
        chol = psd_safe_cholesky(to_dense(noisy.lazy_covariance_matrix))
        resid = (self.train_targets - prior.mean).unsqueeze(-1)
        alpha = torch.cholesky_solve(resid, chol).squeeze(-1)  # ``batch_shape x (m) x n``
        noise = None
        if observation_noise:
            noise = self.likelihood.noise
            if isinstance(self.likelihood, FixedNoiseGaussianLikelihood):
                noise = noise.mean(dim=-1, keepdim=True)
        octf = getattr(self, "outcome_transform", None)

        def predictor(Xc: Tensor) -> tuple[Tensor, Tensor]:
            Xt = self.transform_inputs(Xc)
            batch = torch.broadcast_shapes(Xt.shape[:-2], self._input_batch_shape)
            tail = train_X.shape[-3:] if m > 1 else train_X.shape[-2:]
            Xtr = train_X.expand(batch + tail)
            Xq = Xt.expand(batch + Xt.shape[-2:])
            if m > 1:
                Xq = Xq.unsqueeze(-3).expand(batch + (m,) + Xt.shape[-2:])
            cross = to_dense(self.covar_module(Xq, Xtr))  # ``batch x (m) x q x n``
            mean = self.mean_module(Xq) + (cross @ alpha.unsqueeze(-1)).squeeze(-1)
            v = torch.linalg.solve_triangular(chol.expand(cross.shape[:-2] + chol.shape[-2:]), cross.mT, upper=False)
            var = to_dense(self.covar_module(Xq, diag=True)) - v.pow(2).sum(-2)
            if noise is not None:
                var = var + noise
            if m > 1:  # ``batch x m x q`` -> ``batch x q x m``
                mean, var = mean.mT, var.mT
            else:
                mean, var = mean.unsqueeze(-1), var.unsqueeze(-1)
            if octf is not None:
                mean, var = octf.untransform(mean, var, X=Xt)
            return mean, var

        return predictor

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
        r"""The BoTorch posterior at ``X``.

        Args:
            X: A ``test_batch_shape x q x d`` tensor.
            output_indices: Optional list of outputs to keep (all ``m`` by default).
            observation_noise: Add the likelihood's noise (``True``) or this ``test_batch_shape x q x m`` noise.
            posterior_transform: Optional BoTorch ``PosteriorTransform`` (e.g. ``ScalarizedPosteriorTransform``).

        Returns:
            A ``GPyTorchPosterior`` over ``broadcast(test_batch_shape, batch_shape) x q x m'`` (``m'`` the number
            of selected outputs), in the original output units.
        """
        if output_indices is not None and self._num_outputs > 1:
            output_indices = list(output_indices)
            if not output_indices or any(not 0 <= i < self._num_outputs for i in output_indices):
                raise ValueError(
                    f"`output_indices` must be a non-empty list of indices in range({self._num_outputs}), "
                    f"got {output_indices}."
                )
        if output_indices is not None and len(output_indices) == 1 and self._num_outputs > 1:
            # BoTorch's batched posterior cannot build a multitask distribution from one output: take the
            # marginal of that output from the full (untransformed) posterior instead.
            with self.numerics():
                full = super().posterior(X, observation_noise=observation_noise, **kwargs)
            post = GPyTorchPosterior(distribution=full.distribution[..., output_indices[0]])
            return post if posterior_transform is None else posterior_transform(posterior=post, X=X)
        with self.numerics():
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
            Y: A ``batch_shape' x n' x m`` tensor of new outputs in the original units.
            **kwargs: E.g. ``noise``, a ``batch_shape' x n' x m`` tensor for fixed-noise models.

        Returns:
            An :class:`ExactGPModel` with ``n + n'`` training points and batch shape ``batch_shape'`` broadcast
            with the model's.
        """
        with self.numerics():
            return super().condition_on_observations(X, Y, **kwargs)

    def _find_output_dims(self, default_modules: tuple[str, ...] = ()) -> dict[str, int]:
        r"""Which parameters/buffers carry the output dimension, and where (for :meth:`subset_output`).

        Parameters of the modules named in ``default_modules`` (built by this class with batch shape
        ``batch_shape x m`` or ``batch_shape x 1``) all carry it at position ``len(batch_shape)``; so do those of
        any module whose ``batch_shape`` is ``batch_shape x m`` or ``batch_shape x 1``; for other modules (e.g. a
        custom likelihood) only tensors whose size there is ``m``.
        """
        m = self._num_outputs
        if m == 1:
            return {}
        k = len(self._input_batch_shape)
        dims: dict[str, int] = {}
        for name, t in list(self.named_parameters()) + list(self.named_buffers()):
            if name.startswith(("outcome_transform.", "input_transform.")) or t.dim() <= k:
                continue
            if t.shape[:k] != self._input_batch_shape or t.shape[k] not in (1, m):
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
        k = len(self._input_batch_shape)
        mm = len(idcs)
        index = torch.tensor(idcs, device=self.train_targets.device)
        new.prediction_strategy = None
        new._num_outputs = mm
        new._aug_batch_shape = self._input_batch_shape + (torch.Size([mm]) if mm > 1 else torch.Size())
        sel = index if mm > 1 else idcs[0]
        new.train_inputs = tuple(t[(slice(None),) * k + (sel,)] for t in new.train_inputs)
        new.train_targets = new.train_targets[(slice(None),) * k + (sel,)]
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
        for _, module in new.named_modules():
            b = getattr(module, "batch_shape", None)
            if isinstance(b, torch.Size) and module is not new and len(b) == k + 1 and b[:k] == self._input_batch_shape:
                if b[k] == m:
                    module.batch_shape = b[:k] + (torch.Size([mm]) if mm > 1 else torch.Size())
                elif b[k] == 1 and mm == 1:
                    module.batch_shape = b[:k]
        if isinstance(new.likelihood, FixedNoiseGaussianLikelihood):
            noise = new.likelihood.noise_covar.noise
            new.likelihood.noise_covar.noise = noise[(slice(None),) * k + (sel,)]
        if hasattr(new, "outcome_transform"):
            new.outcome_transform = new.outcome_transform.subset_output(idcs=list(idcs))
        new._output_dims = new._find_output_dims(new._default_modules)
        return new
