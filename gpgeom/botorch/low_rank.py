r"""A GP with a finite-rank spectral kernel over point indices, computed in weight space; a BoTorch adapter.

**The model.** A :class:`~gpgeom.kernels.spectral.SpectralKernel` of rank ``k`` over ``n`` points with ``D``
outputs per point (``D = 1``: a scalar field; ``D > 1``: e.g. the lifted connection-Laplacian eigenfields of RVGP,
Peach et al., "Implicit Gaussian process representation of vector fields over arbitrary latent manifolds",
ICLR 2024, arXiv 2309.16746, sec. 3), times an outputscale :math:`\sigma_f^2`, is

.. math:: K(i, j) = \sigma_f^2 \sum_{l=1}^k \phi_l(i)\, \tilde f(\lambda_l)\, \phi_l(j)^\top
   \in \mathbb R^{D \times D}.

Stacking the observations point-major (row ``i D + a`` is output ``a`` at point ``i``) it factorises as
:math:`K = R R^\top` with the ``N x k`` rows :math:`R = \Phi\, \mathrm{diag}(\sigma_f^2 \tilde f)^{1/2}`, i.e.
:math:`f = R v` with :math:`v \sim \mathcal N(0, I_k)`: Bayesian linear regression on ``k`` features
(Rasmussen & Williams 2006, sec. 2.1, the weight-space view). With :math:`y = f + \varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, \sigma^2 I)`, the posterior of :math:`v` is Gaussian with precision
:math:`\Lambda = I + R^\top R / \sigma^2` and mean :math:`\Lambda^{-1} R^\top y / \sigma^2` (R&W eq. 2.8), and the
predictive at rows :math:`R_*` is :math:`\mathcal N(R_* \Lambda^{-1} R^\top y/\sigma^2, R_* \Lambda^{-1} R_*^\top)`
(R&W eq. 2.11): the same numbers as the function-space GP on the ``N x N`` matrix :math:`K + \sigma^2 I`.

**Square-root form, O(N k^2).** The base Gaussian on :math:`v` is :math:`\mathcal N(m_0, S_0 S_0^\top)`
(:math:`m_0 = 0, S_0 = I` for the exact GP; :math:`q(v)` after variational training). With :math:`A = R S_0` and
:math:`M = I + A^\top A / \sigma^2 = L_M L_M^\top` (every matrix factorised is :math:`\succeq I`),

.. math:: \bar v = m_0 + S_0 M^{-1} A^\top (y - R m_0) / \sigma^2, \qquad F = S_0 L_M^{-\top}, \qquad
   \mathrm{Cov}(v \mid y) = F F^\top,

(:meth:`LowRankSpectralGP.weight_posterior`), and the GP's base mean and covariance at index sets ``X1``, ``X2`` are
:math:`R_1 \bar v` and :math:`(F^\top R_1^\top)^\top (F^\top R_2^\top)` (never :math:`\Lambda^{-1}` itself). The
log marginal likelihood (R&W eq. 2.30) follows from the matrix inversion and determinant lemmas (R&W eqs. A.9,
A.10) with :math:`B = I + R^\top R / \sigma^2 = C C^\top`, :math:`K + \sigma^2 I` never formed:

.. math:: \log p(y) = -\tfrac12\left[\frac{y^\top y}{\sigma^2} - \frac{\|C^{-1} R^\top y\|^2}{\sigma^4}
   + \log|B| + N \log \sigma^2 + N \log 2\pi\right].

**Variational training** (large ``N``). The inducing variables are the ``k`` whitened coefficients :math:`v`
(inter-domain features: :math:`K_{uu} = I`, :math:`K_{uf} = R^\top`), :math:`q(v) = \mathcal N(m, S S^\top)`.
For a kernel of rank ``k`` no other inducing set of any size carries more information, and the minibatch ELBO
(Hensman, Fusi and Lawrence 2013) costs :math:`O(b k^2)` for ``b`` points:

.. math:: \mathcal L = \frac{N}{|\mathcal B|}\sum_{r \in \mathcal B} \left[\log\mathcal N(y_r \mid R_r m, \sigma^2)
   - \frac{\|S^\top R_r^\top\|^2}{2\sigma^2}\right] - \mathrm{KL}(\mathcal N(m, SS^\top) \,\|\, \mathcal N(0, I)).

:meth:`LowRankSpectralGP.init_variational` starts :math:`q` at the exact posterior for the current
hyperparameters (one streaming pass accumulating :math:`R^\top R` and :math:`R^\top y`).

**Noise model** (:mod:`~gpgeom.botorch.low_rank_noise`). With ``tangent_frames`` (the basis at point ``i``
spans only the column space of a frame :math:`T_i`, :math:`P_i = T_i T_i^\top`), the components of an observation
across the frames may have their own noise variance :math:`\sigma_\perp^2` (``normal_noise``). With
``noise_estimate``, a basis-free estimate of the observation noise, the residual variance :math:`\sigma^2` is split
into observation noise :math:`\sigma^2_{obs}` and a model-error variance :math:`\tau^2` (what the rank-``k`` basis
misses): the latent field is :math:`f = Rv + e`, one :math:`e_i \sim \mathcal N(0, \tau^2 P_i)` per point, shared
by every observation and query of the point. An observation's noise is :math:`\mathcal N(0, \sigma^2_{obs} P_x +
\nu (I - P_x))`, :math:`\nu` the noise across the frames (:attr:`LowRankSpectralGP.normal_observation_noise_variance`),
in the likelihood, conditioning and the predictive of observations alike.

**Points outside the basis** (:meth:`LowRankSpectralGP.extended_inputs`): basis values :math:`\gamma(x)\phi(x)`
whose taper :math:`\gamma \in [0, 1]` falls with the distance to the basis points get the prior variance they no
longer carry restored, :math:`(1 - \gamma^2)\, \bar p\, P_x` with :math:`\bar p` the mean prior variance of the
basis per direction of the span, so that far from the basis the posterior returns to the prior.

**Projected ambient part, nugget across the frames** (``ambient_kernel``; RVGP's default, whose why is in
:mod:`gpgeom.models.rvgp.ambient`). The latent field gets :math:`P_x a(x)`, :math:`a \sim \mathcal{GP}(0, \sigma_a^2
k(x, x') I_D)` on the points' coordinates, and, with ``noise_estimate`` and ``normal_noise``, :math:`e^\perp_i \sim
\mathcal N(0, \beta (I - P_i))`, :math:`\beta = \max(0, \sigma_\perp^2 - \sigma^2_{obs})` (the frames' error as
latent variance; the noise across the frames :math:`\nu = \sigma_\perp^2 - \beta`). The kernel is then full-rank:
likelihood and predictions use dense Cholesky algebra in float64 (:mod:`~gpgeom.botorch.low_rank_ambient`).

**BoTorch.** :class:`LowRankSpectralGP` is a :class:`~gpgeom.botorch.gaussian.GaussianSurrogate` with the base
moments above (original units); ``posterior``, ``condition_on_observations`` (Bayes' rule on the joint Gaussian),
``fantasize``, ``subset_output`` and the chunked ``predict`` are that class's. Inputs: point indices as floats,
``batch x q x 1``; outputs ``batch x q x D``. ``data_index``, ``data_y`` hold the observations of the base and the
likelihood; :meth:`LowRankSpectralGP.rebuild_with` appends to them: the exact refit on the union with the same
hyperparameters, which conditioning must equal.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from torch import Tensor, nn

from gpgeom._validation import check_positive
from gpgeom.botorch.gaussian import GaussianSurrogate, shallow_view
from gpgeom.botorch.low_rank_ambient import _AmbientAlgebra
from gpgeom.botorch.low_rank_inputs import _PointInputs
from gpgeom.botorch.low_rank_noise import _NoiseSplit
from gpgeom.engine.chunking import FactorCache
from gpgeom.kernels.spectral import SpectralKernel

__all__ = ["NOISE_FLOOR", "LowRankSpectralGP", "Minibatches"]

#: the smallest noise variance (scaled units): below, the ambient part's dense algebra lost digits (conditioned means
#: off by 1e-3 of the prior scale at 1e-9, 4e-6 at 1e-7: the prior variance, 1e2-1e3, minus nearly all of it)
NOISE_FLOOR = 1e-6


class LowRankSpectralGP(GaussianSurrogate, gpytorch.Module, _NoiseSplit, _PointInputs, _AmbientAlgebra):
    r"""Exact (or variational) GP with a finite-rank spectral kernel over point indices; a BoTorch model.

    The weight-space algebra of the module docstring: every quantity costs :math:`O(N k^2 + k^3)` for ``N``
    scalar observations and rank ``k``.

    Args:
        covar_module: ``ScaleKernel(SpectralKernel(...))`` with an ``n x D x k`` (or ``n x 1 x k``) basis.
        y_scale: Outputs are divided by this number internally (e.g. the root mean square of the training data), so
            that the noise constraint and initial values are unit free; means, covariances, noise and conditioning
            data of the BoTorch API are in the original units.
        y_offset: Subtracted from the outputs before the division by ``y_scale`` (e.g. the training mean of a scalar
            field, as BoTorch's ``Standardize``), a Python float kept in float64 whatever the model's dtype: the
            prior mean in the original units, added back to the means.
        noise: Initial noise variance :math:`\sigma^2` (scaled units; constrained to ``>= NOISE_FLOOR``).
        tangent_frames: Optional ``(n, D, d)`` orthonormal frames whose column spaces hold the basis at each point
            (the tangent likelihood and the model-error term, :mod:`~gpgeom.botorch.low_rank_noise`); ``None``: the
            whole ``D``-dimensional output space. The dense algebra keeps them in float64 as given (give float64
            frames to a float32 model), the model's own copy is in its dtype.
        ambient_kernel, ambient_points: Optional stationary kernel (e.g. ``ScaleKernel(RBFKernel())``) on the
            ``(n, D_in)`` coordinates of the points: the projected ambient part of the module docstring.

    Attributes:
        data_index: ``(*batch, N_pts)`` long indices of the observations the base posterior uses.
        data_y: ``(*batch, N_pts, D)`` those observations, less ``y_offset`` and divided by ``y_scale``.
        mode: ``"exact"`` (base :math:`N(0, I)` on :math:`v` plus all data) or ``"variational"`` (base
            :math:`q(v)` plus the data added after training, usually none).
        normal_noise: :math:`\sigma_\perp^2` (scaled units) or ``None`` (equal to the noise).
        noise_estimate: The basis-free estimate of the observation-noise variance (scaled units) that splits the
            residual variance into noise and model error, or ``None`` (all of it is noise).

    Example:
        >>> import torch; from gpytorch.kernels import ScaleKernel; from gpgeom.kernels import SpectralKernel
        >>> A = torch.diag(torch.ones(39, dtype=torch.float64), 1)  # a path graph of n = 40 points
        >>> lam, vec = torch.linalg.eigh(torch.diag((A + A.T).sum(-1)) - A - A.T)  # its Laplacian's eigenpairs
        >>> phi = torch.stack([vec[:, :10], vec.flip(0)[:, :10]], dim=1)  # n x D x k = 40 x 2 x 10, a lifted basis
        >>> idx = torch.arange(0, 40, 4, dtype=torch.float64)  # 10 observed points
        >>> Y = torch.stack([torch.sin(idx / 6), torch.cos(idx / 6)], dim=-1)  # 10 x D
        >>> gp = LowRankSpectralGP(ScaleKernel(SpectralKernel(lam[:10], phi))).rebuild_with(idx[:, None], Y)
        >>> gp.posterior(torch.tensor([[3.0], [7.0]], dtype=torch.float64)).mean.shape  # 2 points x D
        torch.Size([2, 2])
    """

    def __init__(
        self,
        covar_module: ScaleKernel,
        y_scale: float = 1.0,
        noise: float = 1e-2,
        y_offset: float = 0.0,
        tangent_frames: Tensor | None = None,
        ambient_kernel: Kernel | None = None,
        ambient_points: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(covar_module, ScaleKernel) or not isinstance(covar_module.base_kernel, SpectralKernel):
            raise TypeError("`covar_module` must be ScaleKernel(SpectralKernel(...)).")
        check_positive("y_scale", y_scale)
        check_positive("noise", noise)
        self.covar_module = covar_module
        ref = covar_module.base_kernel.basis.eigenvectors
        self.likelihood = GaussianLikelihood(noise_constraint=GreaterThan(NOISE_FLOOR))
        self.likelihood.to(dtype=ref.dtype, device=ref.device)
        self.likelihood.noise = torch.as_tensor(noise, dtype=torch.float64).to(ref)
        if not isinstance(y_offset, int | float) or not math.isfinite(y_offset):
            raise ValueError(f"`y_offset` must be a finite number, got {y_offset!r}.")
        self.y_scale = float(y_scale)
        self.y_offset = float(y_offset)
        self.mode = "exact"
        D = covar_module.base_kernel.output_dim
        self._base_num_outputs = D
        self.data_index = torch.zeros(0, dtype=torch.long, device=ref.device)
        self.data_y = torch.zeros(0, D, dtype=ref.dtype, device=ref.device)
        self._n_train_obs = 0
        if tangent_frames is not None:
            n = covar_module.base_kernel.num_points
            if not torch.is_tensor(tangent_frames) or tangent_frames.dim() != 3 or tangent_frames.shape[:2] != (n, D):
                raise ValueError(
                    f"`tangent_frames` must be an (n, D, d) = ({n}, {D}, d) tensor, got "
                    f"{tuple(tangent_frames.shape) if torch.is_tensor(tangent_frames) else type(tangent_frames)}."
                )
            if not 1 <= tangent_frames.shape[2] <= D:
                raise ValueError(f"`tangent_frames` must have 1 <= d <= D={D} columns, got {tangent_frames.shape[2]}.")
            # the dense algebra's copy is taken before rounding to the model's dtype (a float32 model given float64
            # frames keeps them, as a float64 model moved to float32 does)
            frames64 = tangent_frames.detach().to(dtype=torch.float64, device=ref.device)
            tangent_frames = tangent_frames.detach().to(ref)
        self.register_buffer("tangent_frames", tangent_frames, persistent=False)
        if (ambient_kernel is None) != (ambient_points is None):
            raise ValueError("`ambient_kernel` and `ambient_points` go together: give both or neither.")
        if ambient_points is not None:
            n = covar_module.base_kernel.num_points
            if not torch.is_tensor(ambient_points) or ambient_points.dim() != 2 or ambient_points.shape[0] != n:
                raise ValueError(f"`ambient_points` must be an (n, D_in) tensor with n={n} rows.")
            if not isinstance(ambient_kernel, Kernel):
                raise TypeError(f"`ambient_kernel` must be a gpytorch Kernel, got {type(ambient_kernel).__name__}.")
            ambient_points = ambient_points.detach().to(dtype=torch.float64, device=ref.device)
        self.ambient_kernel = None if ambient_kernel is None else ambient_kernel.to(dtype=ref.dtype, device=ref.device)
        # the geometry of the dense algebra stays in float64 whatever the model's dtype (moved with the device only)
        self.ambient_points = ambient_points
        self._frames64 = None if tangent_frames is None else frames64
        #: whether the ambient part is in the model (exact mode only; False: the spectral part alone)
        self.ambient_active = ambient_kernel is not None
        #: sigma_perp^2 of the components across the frames (scaled units); None: equal to the noise (isotropic)
        self.normal_noise: float | None = None
        #: an estimate of the observation-noise variance made without the basis (scaled units), or None
        self.noise_estimate: float | None = None

    # ------------------------------------------------------------------------------------------------------------
    # parts
    @property
    def kernel(self) -> SpectralKernel:
        r"""The spectral kernel inside the ``ScaleKernel``."""
        return self.covar_module.base_kernel

    @property
    def output_dim(self) -> int:
        r"""``D``, the number of outputs per point of the basis."""
        return self.covar_module.base_kernel.output_dim

    @property
    def noise(self) -> Tensor:
        r"""Noise variance :math:`\sigma^2` (scaled units), scalar tensor."""
        return self.likelihood.noise.reshape(())

    @property
    def tangent_dim(self) -> int:
        r"""``d``, the dimension of the span of the basis at a point (``D`` without ``tangent_frames``)."""
        return self.output_dim if self.tangent_frames is None else int(self.tangent_frames.shape[-1])

    @property
    def model_error_variance(self) -> Tensor:
        r""":math:`\tau^2 = \max(0, \sigma^2 - \max(\hat\sigma^2_{obs}, \sigma^2_{min}))` (scaled units, scalar
        tensor; zero without ``noise_estimate``): the latent variance per direction of the span that the rank-``k``
        basis misses. A noise variance at the floor :math:`\sigma^2_{min}` (``NOISE_FLOOR``) is a numerical jitter,
        not a measurement: it stays observation noise."""
        s2 = self.noise.detach()
        if self.noise_estimate is None:
            return torch.zeros_like(s2)
        return (s2 - max(self.noise_estimate, NOISE_FLOOR)).clamp_min(0.0)

    @property
    def normal_model_error_variance(self) -> Tensor:
        r""":math:`\beta = \max(0, \sigma_\perp^2 - \sigma^2_{obs})` (scaled units, scalar tensor; zero without
        ``noise_estimate`` or ``normal_noise``): the latent variance per direction across the frames, what the frames'
        error puts there (module docstring): the part of the observations' normal variance :math:`\sigma_\perp^2`
        that the noise :math:`\sigma^2_{obs}` does not explain, so that :math:`\beta + \nu = \sigma_\perp^2`
        (:attr:`normal_observation_noise_variance`; :math:`\beta = \sigma_\perp^2` counted the noise twice: the
        means at observed points kept half of their observation's normal component)."""
        s2 = self.noise.detach()
        if self.noise_estimate is None or self.normal_noise is None:
            return torch.zeros_like(s2)
        perp = torch.as_tensor(self.normal_noise, dtype=s2.dtype).to(s2)
        return (perp - self.observation_noise_variance).clamp_min(0.0)

    @property
    def observation_noise_variance(self) -> Tensor:
        r""":math:`\sigma^2_{obs} = \sigma^2 - \tau^2` (scaled units, scalar tensor): the noise of an observation
        (in the span of the frames, :attr:`normal_observation_noise_variance` across them)."""
        return self.noise.detach() - self.model_error_variance

    @property
    def normal_observation_noise_variance(self) -> Tensor:
        r""":math:`\nu = \sigma_\perp^2 - \beta` (scaled units, scalar tensor): the noise variance of an
        observation per direction across the frames, :math:`\min(\sigma_\perp^2, \sigma^2_{obs})` with
        ``noise_estimate``, :math:`\sigma_\perp^2` without; :math:`\sigma^2_{obs}` (isotropic noise) without
        ``normal_noise`` or frames. With the nugget :math:`\beta` an observation's variance across the frames is
        :math:`\beta + \nu = \sigma_\perp^2`, the likelihood's (:mod:`~gpgeom.botorch.low_rank_noise`)."""
        if self.normal_noise is None or self.tangent_frames is None:
            return self.observation_noise_variance
        return self._normal_split()[1].detach()  # the likelihood's split (low_rank_noise): one definition of nu

    def mean_prior_variance(self) -> Tensor:
        r""":math:`\bar p`, the prior variance of the rank-``k`` part averaged over the basis points, per direction
        of the span (scaled units, scalar tensor): :math:`\sigma_f^2 \sum_l \tilde f_l c_l \cdot D / d`."""
        kern = self.kernel
        per_row = (kern.spectrum().reshape(-1) * kern.basis.mass).sum()
        return self.covar_module.outputscale.reshape(()) * per_row * (self.output_dim / self.tangent_dim)

    def set_hyperparameters(
        self,
        lengthscale: float | None = None,
        outputscale: float | None = None,
        noise: float | None = None,
        nu: float | None = None,
        normal_noise: float | None = None,
        ambient_lengthscale: float | None = None,
        ambient_outputscale: float | None = None,
    ) -> None:
        r"""Set :math:`\kappa`, :math:`\sigma_f^2`, :math:`\sigma^2` (scaled units) and :math:`\nu` exactly in the
        model's dtype (GPyTorch's setters round Python floats through float32), and the ambient part's lengthscale
        and variance. ``noise`` sets the noise in every direction (``normal_noise`` returns to ``None``) unless
        ``normal_noise`` (:math:`\sigma_\perp^2`) is also given."""
        if normal_noise is not None:
            check_positive("normal_noise", normal_noise)
        amb = self.ambient_kernel
        if amb is None and (ambient_lengthscale, ambient_outputscale) != (None, None):
            raise ValueError("`ambient_lengthscale` and `ambient_outputscale` need a model with an ambient part.")
        targets = [(self.kernel, "lengthscale", lengthscale), (self.covar_module, "outputscale", outputscale)]
        targets += [(self.likelihood, "noise", noise), (self.kernel, "nu", nu)]
        if amb is not None:
            targets += [(amb.base_kernel, "lengthscale", ambient_lengthscale)]
            targets += [(amb, "outputscale", ambient_outputscale)]
        for module, name, value in targets:
            if value is not None:
                setattr(module, name, torch.as_tensor(value, dtype=torch.float64).to(self.kernel.basis.eigenvectors))
        if noise is not None or normal_noise is not None:
            self.normal_noise = None if normal_noise is None else float(normal_noise)

    def sqrt_spectrum(self) -> Tensor:
        r""":math:`(\sigma_f^2 \tilde f(\lambda_l))^{1/2}`, shape ``(k,)``."""
        return (self.covar_module.outputscale.reshape(()) * self.kernel.spectrum().reshape(-1)).sqrt()

    def rows(self, index: Tensor | None, phi: Tensor | None = None) -> Tensor:
        r"""Rows of :math:`R`: ``(*b, q D, k)`` for long ``index`` ``(*b, q)``, or for given basis values ``phi``
        ``(*b, q, D, k)`` (e.g. from an out-of-sample extension)."""
        if phi is None:
            phi = self.kernel.basis.eigenvectors[index]  # *b x q x D x k
        R = phi * self.sqrt_spectrum()
        return R.reshape(*R.shape[:-3], R.shape[-3] * R.shape[-2], R.shape[-1])

    # ------------------------------------------------------------------------------------------------------------
    # the weight posterior
    def q_scale_tril(self) -> Tensor:
        r"""Lower-triangular :math:`S` of :math:`q(v)`, positive diagonal, ``(k, k)``."""
        raw = self.q_raw_scale
        diag = torch.nn.functional.softplus(torch.diagonal(raw)) + 1e-8
        return torch.tril(raw, -1) + torch.diag(diag)

    def _base_v(self) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`m_0` ``(k,)`` and lower-triangular root :math:`S_0` ``(k, k)`` of the base Gaussian on
        :math:`v`: :math:`N(0, I)` (mode ``"exact"``) or :math:`q(v) = N(m, S S^\top)` (``"variational"``)."""
        k = self.kernel.num_eigenpairs
        ref = self.kernel.basis.eigenvectors
        if self.mode == "exact":
            return torch.zeros(k, dtype=ref.dtype, device=ref.device), torch.eye(k, dtype=ref.dtype, device=ref.device)
        return self.q_mean, self.q_scale_tril()

    def weight_posterior(self) -> tuple[Tensor, Tensor]:
        r"""Posterior mean of :math:`v` ``(*batch, k)`` and a root :math:`F` ``(*batch, k, k)`` of its covariance
        :math:`F F^\top` (scaled units), from the base (:meth:`_base_v`) and ``data_index``/``data_y``, in the
        square-root form of the module docstring. Differentiable; :meth:`_weight_posterior` caches it."""
        m0, S0 = self._base_v()
        k = m0.shape[-1]
        batch = self.data_index.shape[:-1]
        if self.data_index.shape[-1] == 0:
            return m0.expand(*batch, k), S0.expand(*batch, k, k)
        R = self.rows(self.data_index)  # *b x N x k
        y = self.data_y.reshape(*self.data_y.shape[:-2], -1)
        om = self._row_precisions()
        A = R @ S0
        M = torch.eye(k, dtype=R.dtype, device=R.device) + A.mT @ (A * om.unsqueeze(-1))
        LM = torch.linalg.cholesky(M)
        r = y - (R @ m0.unsqueeze(-1)).squeeze(-1)
        w = torch.cholesky_solve(A.mT @ (om * r).unsqueeze(-1), LM)
        mean = m0 + (S0 @ w).squeeze(-1)
        F = torch.linalg.solve_triangular(LM, S0.mT.expand(*LM.shape[:-2], k, k), upper=False).mT
        return mean, F

    def _weight_posterior(self) -> tuple[Tensor, Tensor]:
        r""":meth:`weight_posterior`, cached (detached) in eval mode (:meth:`_cached`)."""
        return self._cached("weights", self.weight_posterior)

    def _cached(self, name: str, compute: Any) -> tuple[Tensor, ...]:
        r"""``compute()`` (a tuple of tensors), cached detached in eval mode as GPyTorch caches its prediction
        strategy. The cache (a :class:`~gpgeom.engine.chunking.FactorCache`) is keyed on the data tensors and the
        float64 geometry of the ambient part (identity, version, fingerprint), the mode, the noise split (with
        :math:`\sigma_\perp^2`), the ambient switch, the values of every parameter and small buffer (a fixed
        ``nu``) and the identity and in-place version of the large ones (the basis, ``n x D x k``: no pass over it
        per call, which made a posterior at ``n = 20,000``, ``k = 200`` 8 times slower), so setting a
        hyperparameter, ``fit``, ``to`` or new data recompute it."""
        if self.training:
            return compute()
        mode = (self.mode, self.noise_estimate, self.normal_noise, self.ambient_active)
        data = (self.data_index, self.data_y, self.ambient_points, self._frames64)
        cache = self.__dict__.get("_wp_cache")
        if cache is None:
            cache = self.__dict__["_wp_cache"] = FactorCache()
        with torch.no_grad():
            store = cache.get(FactorCache.key_of(self, data, mode, fingerprint=False), dict)
            if name not in store:
                store[name] = tuple(t.detach() for t in compute())
        return store[name]

    # ------------------------------------------------------------------------------------------------------------
    # the projected ambient part: the switch (its dense algebra: gpgeom.botorch.low_rank_ambient)
    @property
    def uses_ambient(self) -> bool:
        r"""Whether predictions and the likelihood include the projected ambient part (exact mode only)."""
        return self.ambient_kernel is not None and self.ambient_active and self.mode == "exact"

    # ------------------------------------------------------------------------------------------------------------
    # training objectives
    def log_marginal_likelihood(self) -> Tensor:
        r"""Exact :math:`\log p(y)` of ``data_y`` (scaled units; mode ``"exact"``), by Woodbury; ``(*batch,)``."""
        if self.uses_ambient:
            return self._dense_log_marginal_likelihood()
        R = self.rows(self.data_index)
        N, k = R.shape[-2], R.shape[-1]
        d = self.tangent_dim
        tau2, s2 = self._noise_split()
        counts, ybar = self._groups()[:2]
        om = self._row_precisions()
        B = torch.eye(k, dtype=R.dtype, device=R.device) + R.mT @ (R * om.unsqueeze(-1))
        C = torch.linalg.cholesky(B)
        yb = ybar.reshape(*ybar.shape[:-2], -1)
        z = torch.linalg.solve_triangular(C, (R.mT @ (om * yb).unsqueeze(-1)), upper=False).squeeze(-1)
        # in the span: group means (weights om) and deviations from them (sigma_obs^2); across it: beta, sigma_perp^2
        q_perp, ld_perp = self._normal_likelihood_terms()
        tang = ybar.square().sum(-1) - self._normal_energy(self.data_index, ybar)
        e_mean = (tang / (counts * tau2 + s2)).sum(-1)
        dev = self.data_y - ybar
        e_dev = (dev.square().sum(-1) - self._normal_energy(self.data_index, dev)).sum(-1)
        quad = e_mean - z.square().sum(-1) + e_dev / s2 + q_perp
        logdet = 2 * torch.log(torch.diagonal(C, dim1=-2, dim2=-1)).sum(-1)
        logdet = logdet + (d / counts * torch.log(counts * tau2 + s2) + (1 - 1 / counts) * d * torch.log(s2)).sum(-1)
        logdet = logdet + ld_perp
        return -0.5 * (quad + logdet + N * math.log(2 * math.pi))

    def exact_loss(self) -> Tensor:
        r"""The negative log marginal likelihood per observation (the L-BFGS-B objective)."""
        return -self.log_marginal_likelihood() / self.data_y.numel()

    def elbo_loss(self, index: Tensor, y: Tensor) -> Tensor:
        r"""Negative ELBO per observation for a minibatch ``index`` ``(b,)``, ``y`` ``(b, D)`` (scaled units) of
        ``_n_train_obs`` scalar observations in all."""
        R = self.rows(index)  # (b D) x k
        yy = y.reshape(-1)
        s2, sp2 = self.noise, self._normal_noise()
        S = self.q_scale_tril()
        resid = yy - R @ self.q_mean
        var = (R @ S).square().sum(-1)
        b, D, d = y.shape[0], self.output_dim, self.tangent_dim
        e_perp = self._normal_energy(index, y).sum()  # R m and R S lie in the span: the residual across it is y's
        ll = -0.5 * (
            yy.numel() * math.log(2 * math.pi)
            + b * (d * torch.log(s2) + (D - d) * torch.log(sp2))
            + (resid.square().sum() - e_perp + var.sum()) / s2
            + e_perp / sp2
        )
        k = S.shape[-1]
        kl = 0.5 * (S.square().sum() + self.q_mean.square().sum() - k - 2 * torch.log(torch.diagonal(S)).sum())
        n_total = self._n_train_obs
        return -(ll * (n_total / yy.numel()) - kl) / n_total

    def ensure_variational(self) -> None:
        r"""Create the parameters of :math:`q(v)` (``q_mean`` ``(k,)``, ``q_raw_scale`` ``(k, k)``) if missing."""
        k = self.kernel.num_eigenpairs
        ref = self.kernel.basis.eigenvectors
        if "q_mean" not in self._parameters or self.q_mean.shape != (k,):
            self.q_mean = nn.Parameter(torch.zeros(k, dtype=ref.dtype, device=ref.device))
            inv1 = math.log(math.expm1(1.0))
            self.q_raw_scale = nn.Parameter(torch.eye(k, dtype=ref.dtype, device=ref.device) * inv1)

    @torch.no_grad()
    def init_variational(self, batches: Any) -> None:
        r"""Set :math:`q(v)` to the exact posterior for the current hyperparameters, accumulated in one streaming
        pass over ``batches`` of ``(index (b,), y (b, D))`` (:math:`R^\top R` and :math:`R^\top y`,
        :math:`O(N k^2)` time, :math:`O(k^2)` memory)."""
        self.ensure_variational()
        k = self.kernel.num_eigenpairs
        ref = self.kernel.basis.eigenvectors
        RtR = torch.zeros(k, k, dtype=ref.dtype, device=ref.device)
        Rty = torch.zeros(k, dtype=ref.dtype, device=ref.device)
        for index, y in batches:
            R = self.rows(index)
            RtR += R.mT @ R
            Rty += R.mT @ y.reshape(-1)
        s2 = self.noise
        Lam = torch.eye(k, dtype=ref.dtype, device=ref.device) + RtR / s2
        C = torch.linalg.cholesky(Lam)
        self.q_mean.copy_(torch.cholesky_solve((Rty / s2).unsqueeze(-1), C).squeeze(-1))
        # lower S with S S^T = Lam^-1, without forming the (ill-conditioned) inverse: Lam = U U^T with U upper
        # (the Cholesky factor of the index-reversed matrix, reversed back), then S = U^-T
        U = torch.linalg.cholesky(Lam.flip(0, 1)).flip(0, 1)
        S = torch.linalg.solve_triangular(U, torch.eye(k, dtype=U.dtype, device=U.device), upper=True).mT
        diag = torch.diagonal(S).clamp_min(1e-6)
        raw_diag = diag + torch.log(-torch.expm1(-diag))  # inverse softplus
        self.q_raw_scale.copy_(torch.tril(S, -1) + torch.diag(raw_diag))

    # ------------------------------------------------------------------------------------------------------------
    # the GaussianSurrogate hooks (original units; the parsing of their inputs: gpgeom.botorch.low_rank_inputs)
    @property
    def _base_batch_shape(self) -> torch.Size:
        return self.data_index.shape[:-1]

    def _check_inputs(self, X: Tensor) -> Tensor:
        if not torch.is_tensor(X) or X.dim() < 2 or X.shape[-1] != 1:
            raise ValueError(
                f"Inputs must be `batch x q x 1` point indices (stored as floats), got shape "
                f"{tuple(X.shape) if torch.is_tensor(X) else type(X).__name__}."
            )
        self.kernel._indices(X, "X")  # integers in range, else a ValueError naming them
        return X

    def extended_inputs(
        self,
        phi: Tensor,
        projectors: Tensor | None = None,
        missing: Tensor | None = None,
        index: Tensor | None = None,
        coords: Tensor | None = None,
    ) -> Tensor:
        r"""Internal inputs ``(m, 2 + D k + D^2 + D_in)`` standing for points outside the basis; the base functions
        accept them where they accept indices (never BoTorch's ``posterior``).

        Args:
            phi: ``(m, D, k)`` basis values at the points (already multiplied by their taper :math:`\gamma`).
            projectors: ``(m, D, D)`` projectors :math:`P_x` onto the span there (default :math:`I_D`).
            missing: ``(m,)`` the prior fraction :math:`1 - \gamma^2` to restore (default 0).
            index: ``(m,)`` the basis point each point coincides with, or -1 (default: all -1): the same input as
                that index for the model-error term.
            coords: ``(m, D_in)`` the points' coordinates, for the ambient part (required with one).
        """
        m, D = phi.shape[0], self.output_dim
        flat = phi.reshape(m, -1)
        if projectors is None:
            projectors = torch.eye(D, dtype=flat.dtype, device=flat.device).expand(m, D, D)
        if missing is None:
            missing = flat.new_zeros(m)
        key = flat.new_full((m, 1), -1.0) if index is None else index.to(flat).reshape(m, 1)
        parts = [key, flat, projectors.reshape(m, D * D).to(flat), missing.to(flat)[:, None]]
        if self.ambient_points is not None:
            if coords is None or tuple(coords.shape) != (m, self.ambient_points.shape[1]):
                raise ValueError(f"`coords` must be (m, D_in) = ({m}, {self.ambient_points.shape[1]}).")
            parts.append(coords.to(flat))
        return torch.cat(parts, dim=-1)

    def _base_mean(self, X: Tensor) -> Tensor:
        if self.uses_ambient:
            return self._dense_moments(X, None)[0] * self.y_scale + self.y_offset
        _, alpha, ybar, _, P, n_mean, _ = self._entries(X)
        mean_v, _ = self._weight_posterior()
        mean = (self._scaled_rows(X, alpha) @ mean_v.unsqueeze(-1)).squeeze(-1)
        mean = mean.reshape(*mean.shape[:-1], X.shape[-2], self.output_dim)
        mean = mean + alpha.unsqueeze(-1) * (P @ ybar.unsqueeze(-1)).squeeze(-1) + n_mean
        return mean * self.y_scale + self.y_offset

    def _base_covariance(self, X1: Tensor, X2: Tensor) -> Tensor:
        if self.uses_ambient:
            return self._dense_moments(X1, X2)[1] * self.y_scale**2
        _, F = self._weight_posterior()
        key1, a1, _, c1, P1, _, n_cov = self._entries(X1)
        V1 = F.mT @ self._scaled_rows(X1, a1).mT  # ((1 - alpha) R_1 F)^T: k x (q1 D)
        if X2 is X1:
            key2, V2 = key1, V1
        else:
            key2, a2 = self._entries(X2)[:2]
            V2 = F.mT @ self._scaled_rows(X2, a2).mT
        cov = V1.mT @ V2
        # the model-error and restored terms: between entries that are the same input
        same = self._same_inputs(X1, X2, key1, key2).to(cov.dtype)
        blocks = torch.einsum("...iab,...ij->...iajb", c1[..., None, None] * P1 + n_cov, same)
        q1, q2, D = X1.shape[-2], X2.shape[-2], self.output_dim
        cov = cov + blocks.reshape(*blocks.shape[:-4], q1 * D, q2 * D)
        return cov * self.y_scale**2

    def _base_variance(self, X: Tensor) -> Tensor:
        if self.uses_ambient:
            return self._dense_moments(X, None)[1] * self.y_scale**2
        _, F = self._weight_posterior()
        _, alpha, _, coef, P, _, n_cov = self._entries(X)
        var = (F.mT @ self._scaled_rows(X, alpha).mT).square().sum(-2)
        var = var.reshape(*var.shape[:-1], X.shape[-2], self.output_dim)
        var = var + coef.unsqueeze(-1) * torch.diagonal(P, dim1=-2, dim2=-1)
        return (var + torch.diagonal(n_cov, dim1=-2, dim2=-1)) * self.y_scale**2

    def _noise_variance(self, X: Tensor) -> Tensor:
        return torch.diagonal(self._noise_covariance(X), dim1=-2, dim2=-1)

    def _noise_covariance(self, X: Tensor) -> Tensor:
        r"""The noise of an observation at each entry of ``X``, ``(*b, q, D, D)`` (original units):
        :math:`\sigma^2_{obs} P_x + \nu (I - P_x)` (:attr:`normal_observation_noise_variance`; module docstring of
        :mod:`~gpgeom.botorch.low_rank_noise`)."""
        s2, nu = self.observation_noise_variance, self.normal_observation_noise_variance
        eye = torch.eye(self.output_dim, dtype=s2.dtype, device=s2.device)
        if self.tangent_frames is None or bool(nu == s2):
            return (s2 * self.y_scale**2 * eye).expand(*X.shape[:-1], *eye.shape)
        P = self._parse(X)[1].to(s2)
        return (s2 * P + nu * (eye - P)) * self.y_scale**2

    # ------------------------------------------------------------------------------------------------------------
    # the exact refit on the union (the reference of conditioning)
    def rebuild_with(self, X: Tensor, Y: Tensor) -> LowRankSpectralGP:
        r"""The model with ``(X, Y)`` appended to its weight-space data, same hyperparameters and base, no
        optimisation: the exact GP refitted on the union, which ``condition_on_observations(X, Y)`` must equal
        (:func:`gpgeom.botorch.check_botorch_model`, ``refit=``).

        Args:
            X: ``batch' x n' x 1`` point indices (floats holding integers).
            Y: ``batch' x n' x D`` observations in the original units.

        Returns:
            A model of the same class sharing the basis and the hyperparameters, of batch shape
            ``broadcast(batch', batch_shape)``, without conditioning blocks.

        Raises:
            ValueError: On a model conditioned with ``condition_on_observations`` or restricted by
                ``subset_output`` (rebuild the original model), or for inputs of the wrong shape.
        """
        if self.__dict__.get("_blocks") or self.__dict__.get("_output_subset") is not None:
            raise ValueError(
                "rebuild_with works on the model's own weight-space data: call it on the model before "
                "condition_on_observations/subset_output."
            )
        X = self._check_inputs(X)
        idx = self.kernel._indices(X, "X")
        D = self.output_dim
        if not torch.is_tensor(Y) or Y.dim() < 2 or Y.shape[-2:] != (X.shape[-2], D):
            raise ValueError(
                f"`Y` must be `batch x {X.shape[-2]} x {D}`, got "
                f"{tuple(Y.shape) if torch.is_tensor(Y) else type(Y).__name__}."
            )
        old_i, old_y = self.data_index, self.data_y
        batch = torch.broadcast_shapes(old_i.shape[:-1], idx.shape[:-1], Y.shape[:-2])
        new = shallow_view(self)  # shares the basis and the hyperparameters
        new.__dict__.pop("_wp_cache", None)
        new.data_index = torch.cat([old_i.expand(*batch, old_i.shape[-1]), idx.expand(*batch, idx.shape[-1])], -1)
        # less the offset in float64 (a float32 model given float64 values far from zero keeps their digits)
        ys = ((Y.to(torch.float64) - self.y_offset) / self.y_scale).to(old_y)
        new.data_y = torch.cat([old_y.expand(*batch, *old_y.shape[-2:]), ys.expand(*batch, *ys.shape[-2:])], -2)
        return new

    # ------------------------------------------------------------------------------------------------------------
    # devices and dtypes: the data tensors are plain attributes (shared with conditioned copies), moved here
    def _apply(self, fn: Any, recurse: bool = True) -> LowRankSpectralGP:
        out = super()._apply(fn, recurse)
        if "data_index" in self.__dict__:
            self.data_index = fn(self.data_index)  # integer tensors keep their dtype under .to(dtype=...)
            self.data_y = fn(self.data_y)
        for name in ("ambient_points", "_frames64"):
            if self.__dict__.get(name) is not None:
                self.__dict__[name] = self.__dict__[name].to(device=fn(torch.zeros(1)).device)
        self.__dict__.pop("_wp_cache", None)
        return out


class Minibatches:
    r"""Reshuffled minibatches ``(index (b,), y (b, D))`` of the training points, one pass per iteration.

    :func:`gpgeom.engine.fitting.fit` calls :meth:`reseed` at the start of every attempt, so that an attempt's
    minibatch order depends only on the fit's seed and the attempt's index (the same in a serial run and with an
    executor, whatever the other attempts did).

    Args:
        index: ``(N_pts,)`` long point indices.
        y: ``(N_pts, D)`` observations.
        batch_size: Points per minibatch.
        generator: The random generator of the shuffles until the next :meth:`reseed` (which replaces it, leaving
            this one alone), on any device (the shuffles are drawn on its device); ``None``: a CPU generator seeded
            with 0.
    """

    def __init__(self, index: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None) -> None:
        check_positive("batch_size", batch_size, integer=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator or None, got {type(generator).__name__}.")
        self.index, self.y, self.b = index, y, batch_size
        self.gen = generator if generator is not None else torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        r"""Shuffle from a new CPU generator seeded with ``seed`` from now on (the engine's per-attempt hook)."""
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(self.index), generator=self.gen, device=self.gen.device).to(self.index.device)
        for s in range(0, len(perm), self.b):
            sel = perm[s : s + self.b]
            yield self.index[sel], self.y[sel]
