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

**BoTorch.** :class:`LowRankSpectralGP` is a :class:`~gpgeom.botorch.gaussian.GaussianSurrogate`: its base mean,
covariance and variance are those of the weight posterior above (in the original output units), and
``posterior``, ``condition_on_observations`` (Bayes' rule on the joint Gaussian), ``fantasize``, ``subset_output``
and the chunked ``predict`` are the shared code of that class. Inputs are point indices stored as floats,
``batch x q x 1``; outputs ``batch x q x D``. The weight-space data (``data_index``, ``data_y``) hold the training
observations that define the base (and the marginal likelihood); :meth:`LowRankSpectralGP.rebuild_with` appends
observations to them, which is the exact refit on the union with the same hyperparameters, the reference that
conditioning must equal.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import gpytorch
import torch
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from torch import Tensor, nn

from gpgeom._validation import check_positive
from gpgeom.botorch.gaussian import GaussianSurrogate
from gpgeom.kernels.spectral import SpectralKernel

__all__ = ["LowRankSpectralGP", "Minibatches"]


class LowRankSpectralGP(GaussianSurrogate, gpytorch.Module):
    r"""Exact (or variational) GP with a finite-rank spectral kernel over point indices; a BoTorch model.

    The weight-space algebra of the module docstring: every quantity costs :math:`O(N k^2 + k^3)` for ``N``
    scalar observations and rank ``k``.

    Args:
        covar_module: ``ScaleKernel(SpectralKernel(...))`` with an ``n x D x k`` (or ``n x 1 x k``) basis.
        y_scale: Outputs are divided by this number internally (e.g. the root mean square of the training data), so
            that the noise constraint and initial values are unit free; means, covariances, noise and conditioning
            data of the BoTorch API are in the original units.
        noise: Initial noise variance :math:`\sigma^2` (scaled units; constrained to ``>= 1e-6``).

    Attributes:
        data_index: ``(*batch, N_pts)`` long indices of the observations the base posterior uses.
        data_y: ``(*batch, N_pts, D)`` those observations, divided by ``y_scale``.
        mode: ``"exact"`` (base :math:`N(0, I)` on :math:`v` plus all data) or ``"variational"`` (base
            :math:`q(v)` plus the data added after training, usually none).

    Example:
        >>> kernel = ScaleKernel(SpectralKernel(eigenvalues, phi))          # phi: n x D x k
        >>> gp = LowRankSpectralGP(kernel).rebuild_with(idx[:, None].double(), Y)   # exact GP on (idx, Y)
        >>> post = gp.posterior(torch.tensor([[3.0], [7.0]], dtype=torch.float64))  # 2 x D
    """

    def __init__(self, covar_module: ScaleKernel, y_scale: float = 1.0, noise: float = 1e-2) -> None:
        super().__init__()
        if not isinstance(covar_module, ScaleKernel) or not isinstance(covar_module.base_kernel, SpectralKernel):
            raise TypeError("`covar_module` must be ScaleKernel(SpectralKernel(...)).")
        check_positive("y_scale", y_scale)
        check_positive("noise", noise)
        self.covar_module = covar_module
        ref = covar_module.base_kernel.basis.eigenvectors
        self.likelihood = GaussianLikelihood(noise_constraint=GreaterThan(1e-6)).to(dtype=ref.dtype, device=ref.device)
        self.likelihood.noise = torch.as_tensor(noise, dtype=torch.float64).to(ref)
        self.y_scale = float(y_scale)
        self.mode = "exact"
        D = covar_module.base_kernel.output_dim
        self._base_num_outputs = D
        self.data_index = torch.zeros(0, dtype=torch.long, device=ref.device)
        self.data_y = torch.zeros(0, D, dtype=ref.dtype, device=ref.device)
        self._n_train_obs = 0

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

    def set_hyperparameters(
        self,
        lengthscale: float | None = None,
        outputscale: float | None = None,
        noise: float | None = None,
        nu: float | None = None,
    ) -> None:
        r"""Set :math:`\kappa`, :math:`\sigma_f^2`, :math:`\sigma^2` (scaled units) and :math:`\nu` exactly in the
        model's dtype (GPyTorch's setters round Python floats through float32)."""
        ref = self.kernel.basis.eigenvectors

        def t(v: float) -> Tensor:
            return torch.as_tensor(v, dtype=torch.float64).to(ref)

        if lengthscale is not None:
            self.kernel.lengthscale = t(lengthscale)
        if outputscale is not None:
            self.covar_module.outputscale = t(outputscale)
        if noise is not None:
            self.likelihood.noise = t(noise)
        if nu is not None:
            self.kernel.nu = t(nu)

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
        s2 = self.noise
        A = R @ S0
        M = torch.eye(k, dtype=R.dtype, device=R.device) + A.mT @ A / s2
        LM = torch.linalg.cholesky(M)
        r = y - (R @ m0.unsqueeze(-1)).squeeze(-1)
        w = torch.cholesky_solve((A.mT @ r.unsqueeze(-1)) / s2, LM)
        mean = m0 + (S0 @ w).squeeze(-1)
        F = torch.linalg.solve_triangular(LM, S0.mT.expand(*LM.shape[:-2], k, k), upper=False).mT
        return mean, F

    def _weight_posterior(self) -> tuple[Tensor, Tensor]:
        r""":meth:`weight_posterior`, cached (detached) in eval mode, as GPyTorch caches its prediction strategy.

        The cache is keyed on the data tensors (by identity), the mode and the values of every parameter, so
        setting a hyperparameter, ``fit``, ``to`` or new data recompute it."""
        if self.training:
            return self.weight_posterior()
        params = [p.detach().reshape(-1) for p in self.parameters()]
        values = torch.cat(params) if params else torch.zeros(0)
        cached = self.__dict__.get("_wp_cache")
        if cached is not None:
            index, y, mode, old, result = cached
            if (
                index is self.data_index
                and y is self.data_y
                and mode == self.mode
                and old.shape == values.shape
                and old.dtype == values.dtype
                and old.device == values.device
                and torch.equal(old, values)
            ):
                return result
        with torch.no_grad():
            result = tuple(t.detach() for t in self.weight_posterior())
        self.__dict__["_wp_cache"] = (self.data_index, self.data_y, self.mode, values.clone(), result)
        return result

    # ------------------------------------------------------------------------------------------------------------
    # training objectives
    def log_marginal_likelihood(self) -> Tensor:
        r"""Exact :math:`\log p(y)` of ``data_y`` (scaled units; mode ``"exact"``), by Woodbury; ``(*batch,)``."""
        R = self.rows(self.data_index)
        y = self.data_y.reshape(*self.data_y.shape[:-2], -1)
        N, k = R.shape[-2], R.shape[-1]
        s2 = self.noise
        B = torch.eye(k, dtype=R.dtype, device=R.device) + R.mT @ R / s2
        C = torch.linalg.cholesky(B)
        Rty = (R.mT @ y.unsqueeze(-1)).squeeze(-1)
        z = torch.linalg.solve_triangular(C, Rty.unsqueeze(-1), upper=False).squeeze(-1)
        quad = y.square().sum(-1) / s2 - z.square().sum(-1) / s2**2
        logdet = 2 * torch.log(torch.diagonal(C, dim1=-2, dim2=-1)).sum(-1) + N * torch.log(s2)
        return -0.5 * (quad + logdet + N * math.log(2 * math.pi))

    def exact_loss(self) -> Tensor:
        r"""The negative log marginal likelihood per observation (the L-BFGS-B objective)."""
        return -self.log_marginal_likelihood() / self.data_y.numel()

    def elbo_loss(self, index: Tensor, y: Tensor) -> Tensor:
        r"""Negative ELBO per observation for a minibatch ``index`` ``(b,)``, ``y`` ``(b, D)`` (scaled units) of
        ``_n_train_obs`` scalar observations in all."""
        R = self.rows(index)  # (b D) x k
        yy = y.reshape(-1)
        s2 = self.noise
        S = self.q_scale_tril()
        resid = yy - R @ self.q_mean
        var = (R @ S).square().sum(-1)
        ll = -0.5 * (math.log(2 * math.pi) + torch.log(s2) + (resid.square() + var) / s2)
        k = S.shape[-1]
        kl = 0.5 * (S.square().sum() + self.q_mean.square().sum() - k - 2 * torch.log(torch.diagonal(S)).sum())
        n_total = self._n_train_obs
        return -(ll.sum() * (n_total / yy.numel()) - kl) / n_total

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
    # the GaussianSurrogate hooks (original units)
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

    def _rows_at(self, X: Tensor) -> Tensor:
        r"""Rows :math:`R` ``(*b, q D, k)`` at ``X``: point indices ``(*b, q, 1)``, or basis values at points
        outside the basis ``(*b, q, 1 + D k)`` (column 0 ignored, then ``phi`` flattened; see
        :meth:`extended_inputs`)."""
        if X.shape[-1] == 1:
            return self.rows(self.kernel._indices(X, "X"))
        D, k = self.output_dim, self.kernel.num_eigenpairs
        return self.rows(None, X[..., 1:].reshape(*X.shape[:-1], D, k))

    def extended_inputs(self, phi: Tensor) -> Tensor:
        r"""Internal inputs ``(m, 1 + D k)`` standing for points outside the basis with basis values ``phi``
        ``(m, D, k)``; the base functions accept them where they accept indices (never BoTorch's ``posterior``)."""
        flat = phi.reshape(phi.shape[0], -1)
        return torch.cat([torch.full_like(flat[:, :1], -1.0), flat], dim=-1)

    def _base_mean(self, X: Tensor) -> Tensor:
        R = self._rows_at(X)
        mean_v, _ = self._weight_posterior()
        mean = (R @ mean_v.unsqueeze(-1)).squeeze(-1) * self.y_scale
        return mean.reshape(*mean.shape[:-1], X.shape[-2], self.output_dim)

    def _base_covariance(self, X1: Tensor, X2: Tensor) -> Tensor:
        _, F = self._weight_posterior()
        V1 = F.mT @ self._rows_at(X1).mT  # (R_1 F)^T: k x (q1 D)
        V2 = V1 if X2 is X1 else F.mT @ self._rows_at(X2).mT
        return (V1.mT @ V2) * self.y_scale**2

    def _base_variance(self, X: Tensor) -> Tensor:
        _, F = self._weight_posterior()
        var = (F.mT @ self._rows_at(X).mT).square().sum(-2) * self.y_scale**2
        return var.reshape(*var.shape[:-1], X.shape[-2], self.output_dim)

    def _noise_variance(self, X: Tensor) -> Tensor:
        return (self.noise.detach() * self.y_scale**2).expand(*X.shape[:-1], self.output_dim)

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
        new = copy.copy(self)  # shares the basis and the hyperparameters
        new.__dict__.pop("_wp_cache", None)
        new.data_index = torch.cat([old_i.expand(*batch, old_i.shape[-1]), idx.expand(*batch, idx.shape[-1])], -1)
        ys = (Y / self.y_scale).to(old_y)
        new.data_y = torch.cat([old_y.expand(*batch, *old_y.shape[-2:]), ys.expand(*batch, *ys.shape[-2:])], -2)
        return new

    # ------------------------------------------------------------------------------------------------------------
    # devices and dtypes: the data tensors are plain attributes (shared with conditioned copies), moved here
    def _apply(self, fn: Any, recurse: bool = True) -> LowRankSpectralGP:
        out = super()._apply(fn, recurse)
        if "data_index" in self.__dict__:
            self.data_index = fn(self.data_index)  # integer tensors keep their dtype under .to(dtype=...)
            self.data_y = fn(self.data_y)
        self.__dict__.pop("_wp_cache", None)
        return out


class Minibatches:
    r"""Reshuffled minibatches ``(index (b,), y (b, D))`` of the training points, one pass per iteration.

    Args:
        index: ``(N_pts,)`` long point indices.
        y: ``(N_pts, D)`` observations.
        batch_size: Points per minibatch.
        generator: The random generator of the shuffles.
    """

    def __init__(self, index: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> None:
        check_positive("batch_size", batch_size, integer=True)
        self.index, self.y, self.b, self.gen = index, y, batch_size, generator

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        perm = torch.randperm(len(self.index), generator=self.gen).to(self.index.device)
        for s in range(0, len(perm), self.b):
            sel = perm[s : s + self.b]
            yield self.index[sel], self.y[sel]
