r"""The FunBaT model class: configuration, fitting by conditional-EP sweeps, prediction, the model contract.

Fang et al., "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data", ICLR 2024
(arXiv:2311.04829). The model and the inference are described in :mod:`gpgeom.models.funbat`; the updates live in
:mod:`~gpgeom.models.funbat.inference` (sweeps), :mod:`~gpgeom.models.funbat.latent` (the state-space posterior of a
mode), :mod:`~gpgeom.models.funbat.hyper` (hyperparameters), :mod:`~gpgeom.models.funbat.entries` (moments of entries),
:mod:`~gpgeom.models.funbat.fitting` (the initial state, restarts, the sweep loop and its convergence test),
:mod:`~gpgeom.models.funbat.persistence` (files and devices).

Differences from the authors' code: zero prior mean for the first state (not random), no second "prior" per
pseudo-observation, a proper core prior, the core covariance in the messages and the noise update, exact GP
conditionals at unseen coordinates (not a merge heuristic), learned hyperparameters, standardised targets (the
updates collapse to zero without), a bias factor, a convergence test, restarts chosen by ELBO, predictive variances.

Noise prior: the default ``noise_prior`` :math:`(a_0, b_0) = (1, 10^{-3})` lets the data set the noise; the
predictive noise variance it gives, why the former :math:`b_0 = 1` made the intervals too wide and why the
factorised posterior does not double-count the variance of an entry: :mod:`~gpgeom.models.funbat.noise`.

Limitations: the variance of a noise-free entry exceeds its errors where the truth is smoother than the Matérn prior
(on the synthetic sinusoids with ``nu=1.5``, pooled over three tensors, the z RMS of the noise-free values is below 1
at seen and below 0.9 at unseen coordinates: ``tests/test_funbat.py``,
``test_noise_free_intervals_are_conservative_on_the_smooth_sinusoids``; the joint posterior of
:mod:`~gpgeom.models.funbat.noise` gives the same), so ``predict(..., observation_noise=False)`` and the BoTorch
adapter are conservative there. The
noise is Gaussian and homoscedastic: for heavy-tailed or heteroscedastic data (BeijingAir-PM2.5) the intervals have
about the right total variance (z RMS 1.06) but cover more than nominal at low levels (50%: 0.68) and slightly less at
95% (0.94), as the exact GP with a Gaussian likelihood does there (5 folds: 0.70 / 0.92 / 0.94, z RMS 1.08;
``benchmarks/results/funbat.md``). ``noise="student_t"`` (:mod:`~gpgeom.models.funbat.noise`) fixes the low levels but
not the whole distribution there (Beijing, 5 folds, ``benchmarks/funbat.py --noise-calibration``,
``benchmarks/results/funbat_calibration.md``): the learned degrees of freedom sit at or near their lower bound 2.1
(2.10-2.21), the true predictive intervals cover 0.52 / 0.86 / 0.92 (Gaussian 0.68 / 0.91 / 0.94), the NLPD drops from
0.012 to -0.21, but the 90/95% intervals cover less than nominal and the test RMSE rises from 0.252 to 0.277: the
scales down-weight the pollution episodes, which are signal for a squared-error score (the residuals are
heteroscedastic rather than independent Student-t). On Student-t data it recovers nominal coverage and on Gaussian
data it costs nothing (``tests/test_funbat_student_t.py``). One scale per day (``scale_mode=2``, the time mode) is the
better model there (NLPD -0.38, CRPS 0.114 against Gaussian 0.122, coverage 0.54 / 0.89 / 0.93, z RMS 1.07) but is not
nominal either (dof again at 2.1; RMSE 0.284 ± 0.024 against 0.252: the noisy days are down-weighted); on synthetic
noise drawn per coordinate of a mode it is nominal (``tests/test_funbat_scale_groups.py``). ``scale_fit="cut"`` keeps
the Gaussian mean (RMSE 0.252) and fits the day scales after it (:mod:`~gpgeom.models.funbat.scales`): coverage 0.636 /
0.925 / 0.953, NLPD -0.248 (``benchmarks/results/funbat_heteroscedastic.md``). The default stays Gaussian.
The updates are coordinate ascent on a non-convex ELBO: ``n_restarts`` chooses among initialisations by ELBO. Unseen
coordinates far (several lengthscales) from the training ones get the prior.

Accuracy against an exact GP on BeijingAir-PM2.5, overfitting, larger ranks: the FunBaT page of the documentation
(choose the rank on held-out entries). FunBaT's advantage is scale: a sweep without a hyperparameter step costs
:math:`O(N + \sum_k I_k)` time and memory (the exact GP's Cholesky: :math:`N^3`, ``benchmarks/funbat.py``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gpgeom._validation import check_option, check_positive
from gpgeom.base import ModelContract
from gpgeom.botorch.lognormal import lognormal_mean_std
from gpgeom.models.funbat import persistence
from gpgeom.models.funbat.conditional import latent_conditional
from gpgeom.models.funbat.entries import entry_marginals
from gpgeom.models.funbat.fitting import _Fitting
from gpgeom.models.funbat.hyper import _HyperparameterSteps
from gpgeom.models.funbat.inference import _ConditionalEP, _Mode
from gpgeom.models.funbat.inputs import _Inputs
from gpgeom.models.funbat.noise import check_noise_options, noise_factor
from gpgeom.models.funbat.predictive import _PredictiveDistribution
from gpgeom.models.funbat.priors import check_categorical
from gpgeom.models.funbat.scales import _NoiseScales
from gpgeom.models.funbat.target import (
    TARGET_TRANSFORMS,
    check_target_scale,
    target_standardization,
    to_model_target,
)

__all__ = ["FunBaT", "FunBaTFitResult"]


@dataclass
class FunBaTFitResult:
    r"""Summary of :meth:`FunBaT.fit` (``model.fit_result_``).

    Attributes:
        sweeps: Sweeps of the chosen initialisation (restart sweeps included).
        converged: Whether the convergence test stopped the fit.
        elbo: Final evidence lower bound (standardised units; with ``scale_fit="cut"`` or ``"refit"`` the Student-t
            model's at the final factors and scales, :meth:`FunBaT.elbo`).
        elbo_history: The ELBO after every sweep.
        restart_elbos: The ELBO of each initialisation after ``restart_sweeps`` (empty without restarts).
        seconds: Wall time of the fit.
        message: What stopped the sweeps.
        stopped: Whether the ``callback`` ended the fit (``StopIteration``).
    """

    sweeps: int
    converged: bool
    elbo: float
    elbo_history: list[float] = field(default_factory=list)
    restart_elbos: list[float] = field(default_factory=list)
    seconds: float = 0.0
    message: str = ""
    stopped: bool = False


def _as_rank_tuple(rank: int | Sequence[int]) -> tuple[int, ...] | int:
    if isinstance(rank, bool):
        raise TypeError(f"`rank` must be an int or a sequence of ints, got {rank!r}.")
    if isinstance(rank, int):
        if rank < 1:
            raise ValueError(f"`rank` must be >= 1, got {rank}.")
        return rank
    try:
        ranks = tuple(rank)
    except TypeError:
        raise TypeError(f"`rank` must be an int or a sequence of ints, got {type(rank).__name__}.") from None
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) for r in ranks):
        raise TypeError(f"`rank` must be an int or a non-empty sequence of ints, got {rank!r}.")
    if any(r < 1 for r in ranks):
        raise ValueError(f"Every rank must be >= 1, got {ranks}.")
    return ranks


class FunBaT(
    ModelContract, _Inputs, _Fitting, _ConditionalEP, _HyperparameterSteps, _NoiseScales, _PredictiveDistribution
):
    r"""Functional Bayesian Tucker decomposition of a continuous-indexed tensor (Fang et al., ICLR 2024).

    See :mod:`gpgeom.models.funbat` for the model, the inference and the equations. Typical use::

        model = FunBaT(rank=2, nu=1.5).fit(X_train, y_train)          # X: N x K coordinates, y: N values
        mean, std = model.predict(X_test, return_std=True)            # N' x 1 each, any coordinates
        u_mean, u_cov = model.latent(0, t)                            # u^1 at coordinates t: n x R, n x R x R
        bo = model.as_botorch()                                       # BoTorch model over the coordinates

    Args:
        rank: Rank per mode: an int for every mode or one int per mode (Tucker); CP needs one rank.
        decomposition: ``"tucker"`` (learned core) or ``"cp"`` (superdiagonal core of ones).
        nu: Matérn smoothness of the latent functions, 0.5, 1.5 or 2.5 (one for all modes, or one per mode).
        categorical: Modes whose coordinates are unordered labels (an index or several): independent values per
            label instead of a Matérn GP (invariant to relabelling, the prior at an unseen label; ``nu`` and
            ``lengthscale`` do not apply, the variance is learned; :mod:`gpgeom.models.funbat.priors`). A query
            label is the training label it equals at the lower precision of the two dtypes (float32 queries of
            float64 labels), refused when it equals two (:mod:`gpgeom.models.funbat.inputs`).
        lengthscale: Initial lengthscale(s) in normalised coordinate units (each mode's training range is
            mapped to ``[0, 1]`` when ``normalize_coordinates``): a float or one per mode.
        variance: Initial prior variance(s) of the latent components: a float or one per mode.
        learn_hyperparameters: Learn each mode's lengthscale and variance (marginal likelihood of the
            pseudo-observations, at the end of a sweep) from sweep ``hyper_warmup`` on: a bool for every mode or one
            bool per mode (``False`` keeps that mode's ``lengthscale`` and ``variance`` as given).
        learn_noise: Update the noise precision :math:`q(\tau)` in every sweep. ``False`` keeps the first estimate
            (the first sweep's update sets it); cleared from a ``fit`` callback it holds the noise from the next
            sweep on (``benchmarks/funbat_drift.py``).
        hyper_warmup: First sweep (0-based) with a hyperparameter step.
        hyper_every: Sweeps between hyperparameter steps (the interval doubles, up to ``8 hyper_every``, while the
            hyperparameters move by less than 1%).
        hyper_method: ``"em"``, ``"marginal"``, ``"sweep"`` or ``"auto"`` (:mod:`gpgeom.models.funbat.hyper`): EM
            steps on the expected log prior (one filter and smoother per mode, then no Kalman recursion), L-BFGS-B on
            the marginal likelihood itself (one filter and smoother per mode and evaluation), sign-based steps on
            the marginal likelihood's exact gradient from the sweep's own smoother (no extra filter), or ``"sweep"``
            above ``SWEEP_THRESHOLD`` (10,000) unique coordinates in all modes and otherwise 3 marginal steps then EM
            when every :math:`\nu \le 3/2` (EM falls back to marginal when some :math:`Q(\Delta)` is numerically
            singular).
        hyper_max_iter: L-BFGS-B iterations per step (default 20 for EM, 5 for marginal).
        damping: Damping :math:`\rho \in [0, 1)` of the latent messages (0: no damping).
        damping_core: Damping of the core's data message (Tucker).
        damping_tau: Damping of the noise-precision message.
        max_sweeps: Maximum number of sweeps (one sweep updates every mode, the core and the noise once).
        min_sweeps: Sweeps before the convergence test may stop the fit.
        tol: Convergence test: stop when the relative change of the fitted training values between two sweeps,
            :math:`\|\bar f - \bar f_{\text{old}}\| / \|\bar f_{\text{old}}\|`, and with Student-t noise the change of
            :math:`1/\nu` are below ``tol`` (after ``min_sweeps`` and the first hyperparameter step; the third with
            ``"sweep"`` steps), else a :class:`~gpgeom.errors.ConvergenceWarning`. Below the default 1e-3 the sweeps
            can overfit (Beijing PM2.5: the FunBaT page of the docs, "Accuracy on BeijingAir-PM2.5").
        core_prior_variance: :math:`\sigma_W^2` of the core prior :math:`N(0, \sigma_W^2 I)` (Tucker).
        noise_prior: :math:`(a_0, b_0)` of the Gamma prior on the noise precision :math:`\tau` (of standardised
            targets; shape and rate). The default :math:`(1, 10^{-3})` lets the data set the noise
            (:mod:`~gpgeom.models.funbat.noise` gives the predictive noise variance and why the former :math:`b_0 = 1`
            made the intervals too wide); :math:`a_0 + N/2 > 1` is needed for a finite :math:`\mathbb E[\tau^{-1}]`.
        standardize: Standardise ``y`` (training mean and standard deviation, the latter floored at the rounding
            scale of targets constant to rounding; :func:`~gpgeom.models.funbat.target.target_standardization`);
            predictions are in the original units. Strongly recommended (the Tucker updates are linear in each
            other's means and collapse to the zero fixed point when ``y`` is small).
        normalize_coordinates: Map each mode's training coordinates affinely to ``[0, 1]``; ``False``: only shift
            them by their training minimum (in float64), keeping their units.
        bias: Add a constant :math:`b \sim N(0, \sigma_b^2)` to the model, :math:`y_n = b + f(x_n) + \varepsilon_n`,
            with its own Gaussian factor :math:`q(b)`. Centring ``y`` adds a constant to the tensor, which is
            one more rank in every mode; the bias takes it so that an exact rank-:math:`R` tensor stays rank
            :math:`R`.
        bias_prior_variance: :math:`\sigma_b^2` (standardised units).
        init_scale: Standard deviation of the random perturbation of the initial latent means (which start
            from the cosine basis :math:`\cos(\pi r t)`, :math:`r = 0 \dots R-1`, in normalised coordinates; a
            categorical mode's labels by their rank in mean value, :func:`~.priors.initial_positions`).
        n_restarts: Extra random initialisations (seeds ``seed + r``, perturbation ``max(init_scale, 0.5)``); each
            runs ``restart_sweeps`` sweeps and the one with the largest ``elbo()`` is continued.
        restart_sweeps: Sweeps per initialisation before choosing.
        seed: Seed of the initialisation.
        noise: ``"gaussian"`` or ``"student_t"``: Student-t noise as a Gaussian scale mixture with a mean-field
            factor per entry, which down-weights entries with large residuals (:mod:`gpgeom.models.funbat.noise`;
            for heavy-tailed data; the predictive distribution is then a scale mixture, see
            :meth:`predict_quantile`, :meth:`predict_interval`, :meth:`log_predictive_density`).
        dof: Degrees of freedom :math:`\nu > 2` of the Student-t noise, held fixed; ``None`` learns them (ELBO,
            within :data:`~gpgeom.models.funbat.noise.DOF_BOUNDS` :math:`= [2.1, 100]`).
        scale_mode: Student-t noise only: ``None`` (one scale per entry) or a mode ``k``: the entries with the same
            coordinate on mode ``k`` share one scale :math:`\lambda_g \sim \mathrm{Gamma}(\nu/2, \nu/2)`, for noise
            whose level varies along that mode (heteroscedastic; e.g. the time mode when whole days are noisy). A new
            entry at a training coordinate of mode ``k`` (matched like a categorical label) then has that group's
            posterior scale, elsewhere the prior (:mod:`gpgeom.models.funbat.noise`).
        scale_fit: Student-t noise only: ``"joint"`` fits the scales with the factors (they weight the entries in
            every sweep); ``"cut"`` fits the Gaussian model, then the scales, the noise and ``dof`` on its residuals
            with the factors held, so the mean is the Gaussian model's and the scales only shape the predictive noise;
            ``"refit"`` then continues the sweeps with those scales held as known weights (the mean and the latent
            variance see each group's noise level). For heteroscedastic data whose noisy groups are signal
            (:mod:`gpgeom.models.funbat.scales`). ``"heldout"`` (no ``scale_mode``): the Gaussian model with the
            noise and ``dof`` that maximise a held-out tenth's density (:mod:`gpgeom.models.funbat.heldout`).
        target_transform: ``"none"`` or ``"log"``: fit the model to :math:`\log y` (positive targets with
            multiplicative errors, a log-normal likelihood; :mod:`gpgeom.models.funbat.target`). ``y`` stays in its
            units everywhere (``fit``, ``predict``, quantiles, CDF, density, BoTorch); the noise, ``history``'s
            ``noise_sd`` and the ELBO are in :math:`\log y`.
        dtype: Computation dtype (default float64; inputs of any dtype are converted to it).
        device: Computation device (default: that of ``X`` in :meth:`fit`, the CPU for numpy input).

    Attributes:
        fit_result_: A :class:`FunBaTFitResult` (this and the following after :meth:`fit` or ``load``).
        history: One dict per sweep (``sweep``, ``delta``, ``train_rmse`` (standardised units), ``noise_sd``
            (original units), ``seconds``, ``lengthscale`` (original units), ``variance``, ``hyper_step``,
            ``hyper_failure`` (``None``, or the message of a hyperparameter step that failed to factorise and kept
            the previous values, :mod:`gpgeom.models.funbat.hyper`), ``elbo``; the last entry's ``elbo`` and
            ``train_rmse`` are the returned state's, after the final re-smoothing, :mod:`gpgeom.models.funbat.fitting`;
            its ``delta`` is its sweep's change, before that smoothing).
        restart_elbos: The ELBO of each initialisation after ``restart_sweeps`` (with ``n_restarts``).
        converged: Whether the convergence test stopped the fit.
        ranks: The rank of every mode.
        kernels: ``torch.nn.ModuleList`` of the ``K`` :class:`~gpgeom.kernels.markov.MaternMarkovKernel` (a
            :class:`~gpgeom.kernels.categorical.CategoricalMarkovKernel` for a ``categorical`` mode).

    The fitted hyperparameters are the properties :attr:`lengthscales_` and :attr:`variances_`, the core's posterior
    :attr:`core_mean` and :attr:`core_cov`, the noise :attr:`noise_variance` and :attr:`dof_`.
    """

    _format_version = 4  # 2: the noise model (Student-t scales, degrees of freedom); 3: the float64 coordinate map;
    # 4: the training labels of the categorical modes and scale_mode, and their dtype (inputs.py)

    _CONFIG = (
        "rank decomposition nu lengthscale_init variance_init learn_hyperparameters learn_noise hyper_warmup "
        "hyper_every hyper_method hyper_max_iter damping damping_core damping_tau max_sweeps min_sweeps tol "
        "core_prior_variance noise_prior standardize normalize_coordinates bias bias_prior_variance init_scale "
        "n_restarts restart_sweeps seed noise dof scale_mode scale_fit target_transform categorical"
    ).split()

    def __init__(
        self,
        rank: int | Sequence[int] = 2,
        *,
        decomposition: str = "tucker",
        nu: float | Sequence[float] = 1.5,
        categorical: int | Sequence[int] | None = None,
        lengthscale: float | Sequence[float] = 0.3,
        variance: float | Sequence[float] = 1.0,
        learn_hyperparameters: bool | Sequence[bool] = True,
        learn_noise: bool = True,
        hyper_warmup: int = 2,
        hyper_every: int = 1,
        hyper_method: str = "auto",
        hyper_max_iter: int | None = None,
        damping: float = 0.0,
        damping_core: float = 0.0,
        damping_tau: float = 0.0,
        max_sweeps: int = 100,
        min_sweeps: int = 5,
        tol: float = 1e-3,
        core_prior_variance: float = 1.0,
        noise_prior: tuple[float, float] = (1.0, 1e-3),
        standardize: bool = True,
        normalize_coordinates: bool = True,
        bias: bool = True,
        bias_prior_variance: float = 1.0,
        init_scale: float = 0.1,
        n_restarts: int = 2,
        restart_sweeps: int = 10,
        seed: int = 0,
        noise: str = "gaussian",
        dof: float | None = None,
        scale_mode: int | None = None,
        scale_fit: str = "joint",
        target_transform: str = "none",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.rank = _as_rank_tuple(rank)
        check_option("decomposition", decomposition, ("tucker", "cp"))
        if decomposition == "cp" and not isinstance(self.rank, int) and len(set(self.rank)) != 1:
            raise ValueError(f"CP needs the same rank in every mode, got rank={self.rank}.")
        self.decomposition = decomposition
        for v in [nu] if isinstance(nu, int | float) else list(nu):
            check_option("nu", v, (0.5, 1.5, 2.5))
        self.nu = nu if isinstance(nu, int | float) else tuple(float(v) for v in nu)
        self.categorical = check_categorical(categorical)
        for name, val in (("lengthscale", lengthscale), ("variance", variance)):
            for v in [val] if isinstance(val, int | float) else list(val):
                check_positive(name, v)
        self.lengthscale_init = lengthscale if isinstance(lengthscale, int | float) else tuple(lengthscale)
        self.variance_init = variance if isinstance(variance, int | float) else tuple(variance)
        if not isinstance(learn_hyperparameters, bool):
            flags = learn_hyperparameters
            if isinstance(flags, str) or not isinstance(flags, Sequence) or not flags:
                raise TypeError(f"`learn_hyperparameters` must be a bool or one bool per mode, got {flags!r}.")
            if not all(isinstance(v, bool) for v in flags):
                raise TypeError(f"`learn_hyperparameters` must hold bools (one per mode), got {list(flags)!r}.")
            learn_hyperparameters = tuple(flags)
        self.learn_hyperparameters = learn_hyperparameters
        if not isinstance(learn_noise, bool):
            raise TypeError(f"`learn_noise` must be a bool, got {learn_noise!r}.")
        self.learn_noise = learn_noise
        check_positive("hyper_warmup", hyper_warmup, integer=True, allow_zero=True)
        check_positive("hyper_every", hyper_every, integer=True)
        if hyper_max_iter is not None:
            check_positive("hyper_max_iter", hyper_max_iter, integer=True)
        self.hyper_method = check_option("hyper_method", hyper_method, ("auto", "em", "marginal", "sweep"))
        self.hyper_warmup, self.hyper_every, self.hyper_max_iter = hyper_warmup, hyper_every, hyper_max_iter
        for name, val in (("damping", damping), ("damping_core", damping_core), ("damping_tau", damping_tau)):
            if isinstance(val, bool) or not isinstance(val, int | float) or not 0.0 <= val < 1.0:
                raise ValueError(f"`{name}` must be a number in [0, 1), got {val!r}.")
        self.damping, self.damping_core, self.damping_tau = float(damping), float(damping_core), float(damping_tau)
        check_positive("max_sweeps", max_sweeps, integer=True)
        check_positive("min_sweeps", min_sweeps, integer=True, allow_zero=True)
        check_positive("tol", tol, allow_zero=True)
        self.max_sweeps, self.min_sweeps, self.tol = max_sweeps, min_sweeps, float(tol)
        check_positive("core_prior_variance", core_prior_variance)
        self.core_prior_variance = float(core_prior_variance)
        if len(noise_prior) != 2:
            raise ValueError(f"`noise_prior` must be (a0, b0), got {noise_prior!r}.")
        check_positive("noise_prior[0]", noise_prior[0])
        check_positive("noise_prior[1]", noise_prior[1])
        self.noise_prior = (float(noise_prior[0]), float(noise_prior[1]))
        self.standardize = bool(standardize)
        self.normalize_coordinates = bool(normalize_coordinates)
        if not isinstance(bias, bool):
            raise TypeError(f"`bias` must be a bool, got {bias!r}.")
        self.bias = bias
        check_positive("bias_prior_variance", bias_prior_variance)
        self.bias_prior_variance = float(bias_prior_variance)
        check_positive("init_scale", init_scale, allow_zero=True)
        self.init_scale = float(init_scale)
        check_positive("n_restarts", n_restarts, integer=True, allow_zero=True)
        check_positive("restart_sweeps", restart_sweeps, integer=True)
        self.n_restarts, self.restart_sweeps = n_restarts, restart_sweeps
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"`seed` must be an int, got {seed!r}.")
        self.seed = seed
        self.noise, self.dof, self.scale_mode, self.scale_fit = check_noise_options(noise, dof, scale_mode, scale_fit)
        self.target_transform = check_option("target_transform", target_transform, TARGET_TRANSFORMS)
        if dtype is not None and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"`dtype` must be torch.float32, torch.float64 or None, got {dtype!r}.")
        self._dtype = dtype or torch.float64
        self._device_arg = torch.device(device) if device is not None else None
        self._device = self._device_arg or torch.device("cpu")
        self._fitted = False
        self.restart_elbos: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.converged = False
        self._want_score = False  # set during a sweep whose smoothers also return the score (hyper_method="sweep")
        self._scale_groups = self._scale_counts = None  # shared scales (scale_mode): set by _set_scale_groups
        self._scale_alpha = self._scale_beta = self._resid_sq = self._dof = None  # Student-t: set by _init_scales
        self._scales_held = False  # scale_fit="refit": the scales are held as known weights in its last sweeps
        self._kernel_keys: list[list[Tensor]] | None = None  # the kernels the posteriors were smoothed with

    # ------------------------------------------------------------------------------------------------------------
    # configuration helpers
    def _per_mode(self, value: Any, K: int, name: str) -> list:
        if isinstance(value, int | float):
            return [value] * K
        value = list(value)
        if len(value) != K:
            raise ValueError(f"`{name}` has {len(value)} entries but the data have K={K} modes.")
        return value

    @property
    def _learn_modes(self) -> list[bool]:
        r"""Whether each mode learns its hyperparameters (``learn_hyperparameters`` spread over the ``K`` modes)."""
        return [bool(v) for v in self._per_mode(self.learn_hyperparameters, len(self.ranks), "learn_hyperparameters")]

    def _config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._CONFIG}

    @classmethod
    def _from_config(cls, cfg: dict[str, Any], **extra: Any) -> FunBaT:
        r"""A new unfitted model from :meth:`_config`'s dict (``extra``: ``dtype``, ``device``)."""
        cfg = dict(cfg)
        rank = cfg.pop("rank")
        ls, var = cfg.pop("lengthscale_init"), cfg.pop("variance_init")
        return cls(rank, lengthscale=ls, variance=var, **cfg, **extra)

    @property
    def n_modes(self) -> int:
        r"""The number of modes ``K``."""
        self._check_fitted()
        return len(self.ranks)

    # ------------------------------------------------------------------------------------------------------------
    # fitting
    def fit(
        self,
        X: Tensor,
        y: Tensor,
        mask: Tensor | None = None,
        *,
        progress: bool | None = None,
        callback: Callable[[FunBaT, dict[str, Any]], None] | None = None,
    ) -> FunBaT:
        r"""Fit by conditional-EP sweeps until the convergence test or ``max_sweeps``.

        Args:
            X: ``N x K`` coordinates (finite; numpy or torch, converted to the model's dtype).
            y: ``N`` (or ``N x 1``) values; NaN marks a missing entry (ignored, like ``mask=False``).
            mask: Optional ``N`` booleans, ``False`` for missing entries.
            progress: Progress bar over sweeps (``None``: when a person is watching, :mod:`gpgeom._progress`).
            callback: Called after every sweep (the restarts' too) as ``callback(model, history_entry)``; setting
                ``model.learn_hyperparameters = False`` there holds the hyperparameters from the next sweep on,
                ``model.learn_noise = False`` the noise. Raising ``StopIteration`` there ends the fit after that sweep
                and keeps it (``fit_result_.stopped``, its ``message`` says so; no further sweep or restart).

        Returns:
            ``self``, with :attr:`fit_result_`.

        Raises:
            TypeError, ValueError: Bad shapes, NaN coordinates, ranks that do not match ``K``, no observed entry,
                targets whose standard deviation has a square outside the range of the model's dtype (float32: about
                1.7e-18 to 1.2e18; :func:`~gpgeom.models.funbat.target.check_target_scale`).

        A fit that raises (bad input, a divergence, an exception or ``KeyboardInterrupt`` from the ``callback``)
        leaves the model as it was before the call: unfitted, or the previous fit with its data and ``fit_result_``;
        to stop early and keep the fit, raise ``StopIteration`` from the callback.
        """
        with self._kept_on_error():  # every attribute fit rebinds (it never changes the previous objects in place)
            return self._fit(X, y, mask, progress, callback)

    def _fit(
        self, X: Tensor, y: Tensor, mask: Tensor | None, progress: bool | None, callback: Callable | None
    ) -> FunBaT:
        start = time.perf_counter()
        self._kernel_keys = None  # no re-smoothing by _follow_kernels while the sweeps move the hyperparameters
        if self._device_arg is None and isinstance(X, Tensor):
            self._device = X.device
        X, src = self._check_X(X, with_dtype=True)
        X = X.detach()  # training data: no autograd graph of the caller's is kept or differentiated
        N, K = X.shape
        y, y_src = self._check_y(y, N)  # float64: standardised in it (inputs.py)
        y = y.detach()
        keep = ~torch.isnan(y)
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool or mask.shape != (N,):
                raise ValueError(f"`mask` must be booleans of shape ({N},), got {mask.dtype} {tuple(mask.shape)}.")
            keep &= mask.to(keep.device)
        if int(keep.sum()) < 1:
            raise ValueError("No observed entry (every y is NaN or masked).")
        X, y = X[keep], to_model_target(y[keep], self.target_transform)
        N = X.shape[0]
        if self.noise_prior[0] + 0.5 * N <= 1.0:
            raise ValueError(
                f"`noise_prior` a0={self.noise_prior[0]:g} with {N} observed entr{'y' if N == 1 else 'ies'}: "
                "a0 + N/2 must exceed 1 for a finite predictive noise variance E[1/tau]; raise a0 or add entries."
            )
        if self.categorical and self.categorical[-1] >= K:
            raise ValueError(f"`categorical` must hold mode indices in [0, {K - 1}], got {list(self.categorical)}.")
        if self.scale_mode is not None and self.scale_mode >= K:
            raise ValueError(f"`scale_mode` must be a mode index in [0, {K - 1}], got {self.scale_mode}.")
        ranks = (self.rank,) * K if isinstance(self.rank, int) else self.rank
        if len(ranks) != K:
            raise ValueError(f"`rank` has {len(ranks)} entries but the data have K={K} modes.")
        if self.decomposition == "cp" and len(set(ranks)) != 1:
            raise ValueError(f"CP needs the same rank in every mode, got {ranks}.")
        self.ranks = tuple(int(r) for r in ranks)
        self._nus = self._per_mode(self.nu, K, "nu")
        self._ls0 = self._per_mode(self.lengthscale_init, K, "lengthscale")
        self._vs0 = self._per_mode(self.variance_init, K, "variance")
        self._per_mode(self.learn_hyperparameters, K, "learn_hyperparameters")  # one flag per mode
        dtype, device = self.dtype, self.device
        if self.standardize:  # targets
            eps = min(torch.finfo(y_src).eps, torch.finfo(dtype).eps)  # the rounding y carries (target.py)
            y_mean, y_std = target_standardization(y, eps)  # floored at the rounding scale, warnings (target.py)
            check_target_scale(y, y_std, dtype, self.target_transform)  # its square in the dtype's range
        else:
            y_mean = torch.zeros((), dtype=y.dtype, device=device)
            y_std = torch.ones((), dtype=y.dtype, device=device)
        self.y_mean, self.y_std = y_mean, y_std  # float64 (inputs.py): only the standardised values are rounded
        self._set_coordinate_map(X)  # float64 lo and span (inputs.py)
        self._set_labels(X, src)  # the labels query coordinates are matched to (inputs.py)
        self._set_data(self._normalise(X), ((y - y_mean) / y_std).to(dtype))
        self._fitted = True
        restarts, self._stopped = [], False
        for r in range(self.n_restarts + 1 if self.n_restarts else 1):
            self._initialise(self.seed + r, self.init_scale if r == 0 else max(self.init_scale, 0.5))
            if self.n_restarts:
                self._run(min(self.restart_sweeps, self.max_sweeps), progress, callback, final=False)
                restarts.append((self.history[-1]["elbo"], r, None if self._stopped else self._snapshot()))
            if self._stopped:  # StopIteration from the callback: this initialisation's state is the fit
                break
        self.restart_elbos = [x[0] for x in restarts] if self._stopped else []
        if self.n_restarts and not self._stopped:
            best = max(restarts, key=lambda x: x[0] if math.isfinite(x[0]) else -math.inf)
            self._restore(best[2])
            self.restart_elbos = [x[0] for x in sorted(restarts, key=lambda x: x[1])]
        self._run(self.max_sweeps, progress, callback, final=True)
        self._finish_scales(progress, callback)  # scale_fit "cut" / "refit" (scales.py)
        self._record(start)
        self._key_kernels()
        return self

    def _key_kernels(self) -> None:
        r"""Record the kernels' parameters and buffers the modes' posteriors are now smoothed with."""
        self._kernel_keys = [[v.detach().clone() for v in k.state_dict().values()] for k in self.kernels]

    def _follow_kernels(self) -> None:
        r"""Re-smooth every mode whose kernel was changed by hand since the fit (``model.kernels[k].lengthscale =
        ...``, ``load_state_dict``): its posterior becomes the exact one under the new prior given its kept messages,
        as at the end of a fit whose last sweep moved the hyperparameters (:mod:`~gpgeom.models.funbat.fitting`);
        the core, bias and noise are kept and the expected squared residuals recomputed. Without it ``predict`` gave
        the old posterior at the training coordinates and the new kernel's conditional of it elsewhere."""
        keys = self.__dict__.get("_kernel_keys")
        if keys is None:
            return
        changed = False
        for k, (kern, key) in enumerate(zip(self.kernels, keys, strict=True)):
            now = list(kern.state_dict().values())
            if len(now) != len(key) or not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(now, key)):
                self._smooth(k)
                changed = True
        if changed:
            self._refresh_residuals()
            self._key_kernels()

    def _check_fitted(self) -> None:
        super()._check_fitted()
        self._follow_kernels()

    def _record(self, start: float) -> None:
        what = "the fitted values and of 1/dof" if self.history and self.history[-1]["dof"] else "the fitted values"
        done = f"relative change of {what} below tol={self.tol:g}"
        message = done if self.converged else f"max_sweeps={self.max_sweeps} reached"
        if self._stopped:
            message = f"stopped by the callback (StopIteration) after sweep {self.history[-1]['sweep']}"
        elbos = [h["elbo"] for h in self.history]
        self.fit_result_ = FunBaTFitResult(
            sweeps=len(self.history),
            converged=self.converged and not self._stopped,
            stopped=self._stopped,
            elbo=self.elbo() if self.scale_fit != "joint" else elbos[-1] if elbos else math.nan,
            elbo_history=elbos,
            restart_elbos=list(self.restart_elbos),
            seconds=time.perf_counter() - start,
            message=message,
        )

    def rebuild_with(self, X: Tensor, y: Tensor, *, max_sweeps: int | None = None, tol: float | None = None) -> FunBaT:
        r"""The model refitted on its training data plus ``(X, y)`` with the same hyperparameters held fixed: the
        kernels, the coordinate normalisation and the target standardisation are kept, the factors are warm-started
        from this model's posterior (new coordinates from :meth:`latent`) and updated by sweeps until the convergence
        test, without restarts. The reference against which the BoTorch adapter's conditioning is measured.

        Args:
            X: ``n x K`` new coordinates (original units).
            y: ``n`` (or ``n x 1``) new values (original units); NaN marks a missing entry (left out, as in
                :meth:`fit`).
            max_sweeps: Sweep budget (default: the model's ``max_sweeps``).
            tol: Convergence tolerance (default: the model's ``tol``).

        Returns:
            A new fitted model of the same class.
        """
        self._check_fitted()
        K = len(self.ranks)
        X, src = self._check_X(X, K=K, with_dtype=True)  # labels matched to the training ones (inputs.py)
        X = X.reshape(-1, K).detach()
        y = self._check_y(y, X.shape[0])[0].detach()  # float64, standardised in it (inputs.py)
        keep = ~torch.isnan(y)  # missing entries, as in fit: NaN messages made every factor NaN (LinAlgError)
        X, y = X[keep], to_model_target(y[keep], self.target_transform)
        cfg = self._config()
        cfg.update(learn_hyperparameters=False, n_restarts=0)
        if self.noise == "student_t":
            cfg["dof"] = self._dof  # held fixed, like the kernels
        cfg["max_sweeps"] = self.max_sweeps if max_sweeps is None else max_sweeps
        cfg["tol"] = self.tol if tol is None else tol
        new = type(self)._from_config(cfg, dtype=self.dtype, device=self.device)
        start = time.perf_counter()
        new.ranks = self.ranks
        new.y_mean, new.y_std, new.coord_lo, new.coord_span = self.y_mean, self.y_std, self.coord_lo, self.coord_span
        new._fit_dtype = self._fit_dtype
        self._add_labels(new, X, src)
        new._set_data(
            torch.cat([self._X, self._normalise_query(X, "X")]),
            torch.cat([self._ys, ((y - self.y_mean) / self.y_std).to(self._ys.dtype)]),
        )
        new.kernels = copy.deepcopy(self.kernels)
        new._modes = []
        dtype, device = self.dtype, self.device
        with torch.no_grad():
            for k, (t, idx) in enumerate(new._coords):
                m, C = latent_conditional(self.kernels[k], self._modes[k].t, self._modes[k].post, t)
                I, R = m.shape
                zeros = torch.zeros(I, R, R, dtype=dtype, device=device)
                new._modes.append(_Mode(t, idx, m, C, zeros, torch.zeros(I, R, dtype=dtype, device=device)))
        new._core_mean, new._core_cov = self._core_mean.clone(), self._core_cov.clone()
        new._core_lam, new._core_eta = torch.zeros_like(self._core_lam), torch.zeros_like(self._core_eta)
        new._tau_a = self.noise_prior[0] + 0.5 * torch.tensor(float(new._N), dtype=dtype, device=device)
        new._tau_b = self._tau_b * new._tau_a / self._tau_a  # the same E[tau] to start
        new._tau_data = None
        new._bias_mean, new._bias_var = self._bias_mean.clone(), self._bias_var.clone()
        new._init_scales(self._dof)
        if self.scale_fit == "heldout":  # the noise is held like the kernels
            new._heldout_noise = (float(self._tau_b / (self._tau_a - 1.0)), self._dof)
        new._nus, new._ls0, new._vs0 = self._nus, self._ls0, self._vs0
        new._fitted = True
        new._reset_schedule()
        new._run(new.max_sweeps, False, None, final=True)
        new._finish_scales(False, None)
        new._record(start)
        new._key_kernels()
        return new

    # ------------------------------------------------------------------------------------------------------------
    # prediction
    def latent(self, k: int, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Posterior of the latent function :math:`u^k` at coordinates ``t`` (original units, any values).

        Args:
            k: Mode index, ``0 <= k < K``.
            t: ``n`` coordinates of mode ``k`` (numpy or torch).

        Returns:
            ``(mean, cov)``: ``n x R_k`` and ``n x R_k x R_k`` (the latent functions are identified only up to an
            invertible linear map per mode that the core absorbs; compare with a truth after aligning).
        """
        self._check_fitted()
        K = len(self.ranks)
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < K:
            raise ValueError(f"Mode `k` must be an int in [0, {K - 1}], got {k!r}.")
        t, src = self._as_coordinates("t", t, finite=True)
        if t.dim() != 1:
            raise ValueError(f"`t` must be 1-D (n coordinates), got shape {tuple(t.shape)}.")
        t = self._match_labels(t, src, "t", k)  # a label of a categorical mode: as in predict (inputs.py)
        tn = self._normalise_query(t, "t", k)
        md = self._modes[k]
        with torch.no_grad():
            return latent_conditional(self.kernels[k], md.t, md.post, tn)

    def _predict_std_units(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Mean and variance of :math:`f` in standardised units at ``X`` (``... x K``), and ``E[1/tau]``."""
        K = len(self.ranks)
        mean, var, noise = entry_marginals(self, self._normalise_query(X, "X").reshape(-1, K))
        return mean.reshape(X.shape[:-1]), var.reshape(X.shape[:-1]), noise

    def predict(
        self, X: Tensor, return_std: bool = False, observation_noise: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Predictive mean (and standard deviation) of the entries at coordinates ``X``, in the original units.

        With ``target_transform="log"`` these are the moments of :math:`e^{T}` for the Gaussian :math:`T` in
        :math:`\log y` (:mod:`gpgeom.models.funbat.target`), so the mean also depends on ``observation_noise``.

        Args:
            X: ``... x K`` coordinates (numpy or torch), seen or unseen in training (outside a mode's training
                range the latent function is extrapolated, :mod:`gpgeom.models.funbat.conditional`).
            return_std: Also return the standard deviation.
            observation_noise: Include the noise (predict a new observation) rather than the latent entry.

        Returns:
            The mean, shape ``... x 1``; with ``return_std`` also the standard deviation, shape ``... x 1``.
        """
        mean, sd = self._model_moments(X, observation_noise)
        if self.target_transform == "log":
            mean, sd = lognormal_mean_std(mean, sd.square())
        return (mean.unsqueeze(-1), sd.unsqueeze(-1)) if return_std else mean.unsqueeze(-1)

    # ------------------------------------------------------------------------------------------------------------
    # fitted quantities
    @property
    def core_mean(self) -> Tensor:
        r"""``R_1 x ... x R_K`` posterior mean of the core."""
        self._check_fitted()
        return self._core_mean.reshape(self.ranks)

    @property
    def core_cov(self) -> Tensor:
        r"""``P x P`` posterior covariance of ``vec(core)`` (zeros for CP)."""
        self._check_fitted()
        return self._core_cov

    @property
    def noise_variance(self) -> float:
        r"""The variance of the noise of a new entry in the original units of ``y`` (of :math:`\log y` with
        ``target_transform="log"``): :math:`\mathbb E[\tau^{-1}]`,
        times :math:`\nu / (\nu - 2)` for Student-t noise (:mod:`gpgeom.models.funbat.noise`; with ``scale_mode``,
        that of an entry at a coordinate outside the training groups: ``predict`` gives each entry its group's)."""
        self._check_fitted()
        return float(self._tau_b / (self._tau_a - 1.0) * self.y_std.square()) * noise_factor(self._dof)

    @property
    def dof_(self) -> float:
        r"""The degrees of freedom :math:`\nu` of the Student-t noise (fitted or fixed); ``math.inf`` for Gaussian
        noise."""
        self._check_fitted()
        return math.inf if self._dof is None else float(self._dof)

    @property
    def lengthscales_(self) -> Tensor:
        r"""``K`` lengthscales of the latent functions, in original coordinate units (NaN for a categorical mode)."""
        self._check_fitted()
        ls = [k.lengthscale.detach().reshape(()) if k.has_lengthscale else math.nan for k in self.kernels]
        span = self.coord_span.to(self.dtype)
        return torch.stack([span.new_tensor(v) if isinstance(v, float) else v for v in ls]) * span

    @property
    def variances_(self) -> Tensor:
        r"""``K`` prior variances of the latent components."""
        self._check_fitted()
        return torch.stack([k.variance.detach().reshape(()) for k in self.kernels])

    def as_botorch(self) -> Any:
        r"""This fitted model as a BoTorch :class:`~gpgeom.models.funbat.surrogate.FunBaTBoTorchModel` over the
        (original-unit) coordinates, with the joint moment-matched Gaussian over entries (conditioning and
        fantasies supported)."""
        from gpgeom.models.funbat.surrogate import FunBaTBoTorchModel

        self._check_fitted()
        return FunBaTBoTorchModel(self)

    # ------------------------------------------------------------------------------------------------------------
    # the model contract
    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        persistence.move(self, device, dtype)
        super()._to(device=device, dtype=dtype)
        self._device_arg = torch.device(device)

    def _get_state(self) -> dict[str, Any]:
        return persistence.get_state(self)

    @classmethod
    def _from_state(cls, state: dict[str, Any], **kwargs: Any) -> FunBaT:
        if kwargs:
            raise TypeError(f"{cls.__name__}.load takes no extra arguments (a FunBaT file holds everything), got "
                            f"{sorted(kwargs)}.")  # fmt: skip
        return persistence.from_state(cls, state)

    def _repr_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"decomposition": self.decomposition}
        if not self.is_fitted:
            fields.update(rank=self.rank, nu=self.nu)
            return fields
        fields.update(
            ranks=self.ranks,
            modes=len(self.ranks),
            n=int(self._N),
            coordinates=[int(md.t.shape[0]) for md in self._modes],
            nu=[float(k.nu) if hasattr(k, "nu") else "categorical" for k in self.kernels],
            lengthscales=self.lengthscales_,
            variances=self.variances_,
            noise=self.noise_variance,
            **({"noise_model": "student_t", "dof": self._dof, "scale_fit": self.scale_fit} if self._dof else {}),
            sweeps=len(self.history),
            converged=self.converged,
            dtype=self.dtype,
        )
        return fields
