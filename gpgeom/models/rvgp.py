r"""RVGP: Gaussian processes for vector fields on a latent manifold known only through a point cloud.

Peach, Vinao-Carl, Grossman, Aguilar, Tsai, Vandergheynst and Gosztolai, "Implicit Gaussian process representation
of vector fields over arbitrary latent manifolds", ICLR 2024 (arXiv 2309.16746).

**Pipeline** (the method section of the paper; equation numbers are not quoted because the paper body could not be
re-read here, see ``shared/specs/rvgp.md``). From a cloud :math:`X \in \mathbb R^{n \times D}`:

1. the connection Laplacian :math:`L_c \in \mathbb R^{nd \times nd}` of the kNN graph, tangent frames
   :math:`T_i \in \mathbb R^{D \times d}` by local PCA and Procrustes transports :math:`O_{ij}`
   (:func:`gpgeom.geometry.connection.connection_laplacian`);
2. its ``k`` smallest eigenpairs :math:`L_c u_l = \lambda_l u_l`, lifted to ambient vector fields
   :math:`\phi_l(i) = T_i u_l(i) \in \mathbb R^D` (the paper's "positional encoding");
3. the vector-valued kernel, a :class:`~gpgeom.kernels.spectral.SpectralKernel` times an outputscale
   :math:`\sigma_f^2`,

   .. math:: K(i, j) = \sigma_f^2 \sum_{l=1}^k \phi_l(i)\, \tilde f(\lambda_l)\, \phi_l(j)^\top
      \in \mathbb R^{D\times D}, \qquad
      f(\lambda) = (2\nu/\kappa^2 + \lambda)^{-\nu}\ \text{(Matern)} \ \text{or}\ e^{-\kappa^2\lambda/2}
      \ \text{(diffusion)},

   with :math:`\tilde f = f / \sigma_0^2` normalised to unit mean prior variance; :math:`\kappa, \nu, \sigma_f^2`
   and the noise variance :math:`\sigma^2` are learnt.

**Finite rank, exact training in O(N k^2).** Write the kernel as :math:`K = R R^\top` with the rows
:math:`R = \Phi\, \mathrm{diag}(\sigma_f^2 \tilde f)^{1/2} \in \mathbb R^{N \times k}` (``N = n_train D`` scalar
observations, point-major: row ``i D + a`` is component ``a`` at point ``i``). Equivalently
:math:`f = R v`, :math:`v \sim \mathcal N(0, I_k)` (weight space). With :math:`y = f + \varepsilon`,
:math:`\varepsilon \sim \mathcal N(0, \sigma^2 I)`, the posterior of :math:`v` has precision and shift

.. math:: \Lambda = P_0 + R^\top R / \sigma^2, \qquad \eta = \eta_0 + R^\top y / \sigma^2
   \quad (P_0 = I, \eta_0 = 0 \text{ for the exact GP}),

so, with :math:`\Lambda = C C^\top` (Cholesky, ``k x k``), predictions at rows :math:`R_*` are
:math:`\mu_* = R_* \Lambda^{-1} \eta` and :math:`\Sigma_* = (C^{-1} R_*^\top)^\top (C^{-1} R_*^\top)` (computed in
the square-root form of :meth:`LowRankSpectralGP.weight_posterior`), and the
log marginal likelihood follows from Woodbury and the determinant lemma
(:math:`B = I + R^\top R/\sigma^2`, :math:`K + \sigma^2 I` never formed):

.. math:: \log p(y) = -\tfrac12\left[\frac{y^\top y}{\sigma^2} - \frac{(R^\top y)^\top B^{-1} R^\top y}{\sigma^4}
   + \log|B| + N \log \sigma^2 + N \log 2\pi\right].

Cost :math:`O(N k^2 + k^3)` per evaluation instead of the dense :math:`O(N^3)` Cholesky of the reference
(GPflow ``GPR`` on the ``(n D) x (n D)`` matrix).

**Variational training (large n).** The inducing variables are the ``k`` whitened spectral coefficients
:math:`v` (inter-domain inducing features, :math:`K_{uu} = I`, :math:`K_{uf} = R^\top`), with
:math:`q(v) = \mathcal N(m, S S^\top)`. Because the kernel has rank ``k``, inducing *points* at ``M`` cloud nodes
:math:`u = R_Z v` carry no more information than :math:`v` (for :math:`\mathrm{rank}\, R_Z = k` the two families of
:math:`q` coincide), so this is the optimal inducing set, at cost :math:`O(b k^2)` per minibatch of ``b`` points:

.. math:: \mathcal L = \frac{N}{|\mathcal B|}\sum_{r \in \mathcal B} \left[\log\mathcal N(y_r \mid R_r m, \sigma^2)
   - \frac{\|S^\top R_r^\top\|^2}{2\sigma^2}\right] - \mathrm{KL}(\mathcal N(m, SS^\top) \,\|\, \mathcal N(0, I)).

The optimiser starts from the exact posterior for the initial hyperparameters (one streaming pass accumulating
:math:`R^\top R`, :math:`R^\top y`). Predictions use :math:`q(v)` as the base Gaussian (further observations from
``condition_on_observations`` are added exactly, in square-root form).

**Out-of-sample extension** (:meth:`RVGP.extend`, rule "Nystrom with Procrustes transport"). A new point
:math:`x` near the cloud joins the graph with its ``k`` nearest cloud points :math:`j` (weights :math:`w_j`: 1, or
the Laplacian's Gaussian weights), gets a frame :math:`T_x` by PCA of those neighbours, and transports
:math:`O_{xj}` = Procrustes(:math:`T_x, T_j`). Solving the eigen-equation's row of the new node for its value
(Nystrom) gives, with :math:`c_l(j) = T_j^\top \phi_l(j)` and :math:`W = \sum_j w_j`,

.. math:: c_l(x) = \frac{\sum_j w_j O_{xj} c_l(j)}{W - \lambda_l} \ (\text{"none"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/\sqrt{d_x d_j}}{1 - \lambda_l - 1/d_x}\ (\text{"sym"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/d_x}{1 - \lambda_l - 1/d_x}\ (\text{"rw"}),

(:math:`d_x = 1 + W` the degree with the self loop), and :math:`\phi_l(x) = T_x c_l(x)`. At a cloud point this
reproduces :math:`c_l` up to the asymmetry of its kNN neighbourhood. The scalar case is the same with
:math:`d = 1`, :math:`O = 1`.

**Tangency.** Every lifted eigenvector lies in :math:`\mathrm{span}\, T_i`, so posterior means, samples and the
columns of the posterior covariance are tangent to the estimated frames by construction (no projection).

**Scalar fields** (``scalar=True``): the same model on the graph Laplacian's eigenvectors (``D_out = 1``).

**BoTorch.** :class:`RVGP` is a ``botorch.models.model.Model`` over point indices (inputs ``... x q x 1`` holding
integer indices as floats; outputs the ``D`` ambient components): ``posterior`` returns a
``GPyTorchPosterior(MultitaskMultivariateNormal)``; ``condition_on_observations``/``fantasize`` update the
weight-space posterior exactly; optimise acquisitions with ``optimize_acqf_discrete(acqf, q, choices=idx)``.

Bad input: vectors not of shape ``(len(index), D)`` (or ``(n, D)``), indices out of range or not integers,
non-finite values, a manifold dimension above ``D``, duplicate points (``ValueError`` from the geometry, or
``duplicates="drop"``), a disconnected graph (a warning from the geometry; the spectrum is the union of the
components' spectra, so every component gets its own low modes), ``n_eigenpairs`` above ``n d``: each a clear
``ValueError``/``TypeError``/warning.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.model import FantasizeMixin, Model
from botorch.posteriors import GPyTorchPosterior
from gpytorch.constraints import GreaterThan, Interval
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from gpytorch.kernels import ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from linear_operator import to_linear_operator
from scipy.spatial import cKDTree
from torch import Tensor, nn

from gpgeom._validation import check_option, check_positive
from gpgeom.engine.fitting import FitResult, fit
from gpgeom.geometry.connection import ConnectionLaplacian, connection_laplacian, graph_laplacian, procrustes
from gpgeom.kernels.spectral import SpectralKernel

__all__ = ["LowRankSpectralGP", "RVGP", "angular_errors", "relative_l2"]

_FILTERS = {"matern": "matern", "heat": "heat", "diffusion": "heat"}


def relative_l2(pred: object, true: object) -> float:
    r""":math:`\|\hat V - V\|_F / \|V\|_F` for ``(m, D)`` arrays."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    return float(np.linalg.norm(p - t) / max(np.linalg.norm(t), np.finfo(float).tiny))


def angular_errors(pred: object, true: object) -> np.ndarray:
    r"""Angles (degrees) between predicted and true vectors, ``(m,)`` (rows of ``(m, D)`` arrays)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(true, dtype=np.float64)
    num = np.einsum("ij,ij->i", p, t)
    den = np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), np.finfo(float).tiny)
    return np.degrees(np.arccos(np.clip(num / den, -1.0, 1.0)))


# ----------------------------------------------------------------------------------------------------------------
# the low-rank GP (a BoTorch model over point indices)
# ----------------------------------------------------------------------------------------------------------------


class LowRankSpectralGP(Model, gpytorch.Module, FantasizeMixin):
    r"""Exact (or variational) GP with a finite-rank spectral kernel, over point indices; a BoTorch model.

    The weight-space algebra of the module docstring: every quantity costs :math:`O(N k^2 + k^3)`.

    Args:
        covar_module: ``ScaleKernel(SpectralKernel(...))`` with an ``n x D x k`` (or ``n x k``) basis.
        y_scale: Outputs are divided by this number internally (root-mean-square of the training vectors), so
            that the noise constraint and initial values are unit free; predictions are in the original units.
        noise: Initial noise variance :math:`\sigma^2` (scaled units; constrained to ``>= 1e-6``).

    Attributes:
        data_index: ``(*batch, N_pts)`` long indices of the observations used by the posterior.
        data_y: ``(*batch, N_pts, D)`` observations (scaled by ``1 / y_scale``).
        mode: ``"exact"`` (prior :math:`N(0, I)` on :math:`v` plus all data) or ``"variational"`` (prior
            :math:`q(v)` plus data added after training).
    """

    _supports_cache_root = False

    def __init__(self, covar_module: ScaleKernel, y_scale: float = 1.0, noise: float = 1e-2) -> None:
        super().__init__()
        if not isinstance(covar_module, ScaleKernel) or not isinstance(covar_module.base_kernel, SpectralKernel):
            raise TypeError("`covar_module` must be ScaleKernel(SpectralKernel(...)).")
        self.covar_module = covar_module
        dtype = covar_module.base_kernel.basis.eigenvectors.dtype
        device = covar_module.base_kernel.basis.eigenvectors.device
        self.likelihood = GaussianLikelihood(noise_constraint=GreaterThan(1e-6)).to(dtype=dtype, device=device)
        self.likelihood.noise = torch.as_tensor(noise, dtype=torch.float64).to(dtype=dtype, device=device)
        self.y_scale = float(y_scale)
        self.mode = "exact"
        D = self.output_dim
        self.data_index = torch.zeros(0, dtype=torch.long, device=device)
        self.data_y = torch.zeros(0, D, dtype=dtype, device=device)
        self.fit_result: FitResult | None = None

    # -------------------------------------------------------------------------------------------------------- #
    @property
    def kernel(self) -> SpectralKernel:
        return self.covar_module.base_kernel

    @property
    def output_dim(self) -> int:
        return self.covar_module.base_kernel.output_dim

    @property
    def num_outputs(self) -> int:
        return self.output_dim

    @property
    def batch_shape(self) -> torch.Size:
        return self.data_index.shape[:-1]

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

    def rows(self, index: Tensor, phi: Tensor | None = None) -> Tensor:
        r"""Rows of :math:`R`: ``(*b, q * D, k)`` for ``index`` ``(*b, q)`` (or given basis values ``phi``
        ``(*b, q, D, k)``, e.g. from an out-of-sample extension)."""
        if phi is None:
            phi = self.kernel.basis.eigenvectors[index]  # *b x q x D x k
        R = phi * self.sqrt_spectrum()
        return R.reshape(*R.shape[:-3], R.shape[-3] * R.shape[-2], R.shape[-1])

    # -------------------------------------------------------------------------------------------------------- #
    def _base_v(self) -> tuple[Tensor, Tensor]:
        r"""Mean :math:`m_0` ``(k,)`` and lower-triangular root :math:`S_0` ``(k, k)`` of the base Gaussian on
        :math:`v`: :math:`N(0, I)` (mode ``"exact"``) or :math:`q(v) = N(m, S S^\top)` (``"variational"``)."""
        k = self.kernel.num_eigenpairs
        ref = self.kernel.basis.eigenvectors
        if self.mode == "exact":
            return torch.zeros(k, dtype=ref.dtype, device=ref.device), torch.eye(k, dtype=ref.dtype, device=ref.device)
        return self.q_mean, self.q_scale_tril()

    def q_scale_tril(self) -> Tensor:
        r"""Lower-triangular :math:`S` of :math:`q(v)`, positive diagonal, ``(k, k)``."""
        raw = self.q_raw_scale
        diag = torch.nn.functional.softplus(torch.diagonal(raw)) + 1e-8
        return torch.tril(raw, -1) + torch.diag(diag)

    def weight_posterior(self) -> tuple[Tensor, Tensor]:
        r"""Posterior mean of :math:`v` ``(*batch, k)`` and a root :math:`F` ``(*batch, k, k)`` of its covariance
        :math:`F F^\top`.

        From the base :math:`N(m_0, S_0 S_0^\top)` (:meth:`_base_v`) and the data :math:`y = R v + \varepsilon`, in
        square-root form (every matrix factorised is :math:`\succeq I`): :math:`A = R S_0`,
        :math:`M = I + A^\top A / \sigma^2 = L_M L_M^\top`,
        :math:`\bar v = m_0 + S_0 M^{-1} A^\top (y - R m_0) / \sigma^2`, :math:`F = S_0 L_M^{-\top}`. For the exact
        GP (:math:`m_0 = 0, S_0 = I`) this is the weight-space posterior of the module docstring
        (:math:`M = \Lambda`)."""
        m0, S0 = self._base_v()
        k = m0.shape[-1]
        if self.data_index.shape[-1] == 0:
            return m0.expand(*self.batch_shape, k), S0.expand(*self.batch_shape, k, k)
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

    def log_marginal_likelihood(self) -> Tensor:
        r"""Exact :math:`\log p(y)` of the data (mode ``"exact"``), by Woodbury; ``(*batch,)``."""
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

    def _exact_loss(self) -> Tensor:
        return -self.log_marginal_likelihood() / self.data_y.numel()

    def _elbo_loss(self, index: Tensor, y: Tensor) -> Tensor:
        r"""Negative ELBO per observation for a minibatch ``index`` ``(b,)``, ``y`` ``(b, D)`` (scaled)."""
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

    # -------------------------------------------------------------------------------------------------------- #
    def _check_index_input(self, X: Tensor) -> Tensor:
        if not torch.is_tensor(X) or X.dim() < 2 or X.shape[-1] != 1:
            raise ValueError(
                f"Inputs must be `batch x q x 1` point indices (stored as floats), got shape "
                f"{tuple(X.shape) if torch.is_tensor(X) else type(X).__name__}."
            )
        return self.kernel._indices(X, "X")  # validated long indices ``batch x q``

    def _predict_rows(self, Rq: Tensor, noise: Tensor | bool = False) -> tuple[Tensor, Tensor]:
        r"""Mean ``(*b, M)`` and covariance ``(*b, M, M)`` (scaled units) at rows ``Rq`` ``(*b, M, k)``."""
        mean_v, F = self.weight_posterior()
        batch = torch.broadcast_shapes(Rq.shape[:-2], mean_v.shape[:-1])
        Rq = Rq.expand(*batch, *Rq.shape[-2:])
        mean = (Rq @ mean_v.expand(*batch, mean_v.shape[-1]).unsqueeze(-1)).squeeze(-1)
        V = F.expand(*batch, *F.shape[-2:]).mT @ Rq.mT  # (R_* F)^T, k x M
        cov = V.mT @ V
        if isinstance(noise, Tensor):
            cov = cov + torch.diag_embed(noise.expand(mean.shape).to(cov))
        elif noise:
            cov = cov + self.noise * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        return mean, cov

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        r"""BoTorch posterior at point indices ``X`` (``batch x q x 1``), over ``batch x q x m`` outputs (``m = D``
        ambient components, or the selected ``output_indices``), in the original units."""
        self.eval()
        idx = self._check_index_input(X)
        D = self.output_dim
        noise = observation_noise
        if isinstance(observation_noise, Tensor):  # batch x q x m, original units
            noise = (observation_noise / self.y_scale**2).expand(*idx.shape, D).reshape(*idx.shape[:-1], -1)
        mean, cov = self._predict_rows(self.rows(idx), noise)
        q = idx.shape[-1]
        mean = mean * self.y_scale
        cov = cov * self.y_scale**2
        if output_indices is not None:
            oi = list(output_indices)
            if not oi or any(not 0 <= i < D for i in oi):
                raise ValueError(f"`output_indices` must be indices in range({D}), got {oi}.")
            sel = (torch.arange(q, device=mean.device)[:, None] * D + torch.tensor(oi, device=mean.device)).reshape(-1)
            mean, cov = mean[..., sel], cov[..., sel[:, None], sel]
            D = len(oi)
        # a linear operator: the (rank-deficient: no normal component) covariance is factorised lazily, with jitter
        cov = to_linear_operator(cov)
        if D == 1:
            dist = MultivariateNormal(mean, cov)
        else:
            dist = MultitaskMultivariateNormal(mean.reshape(*mean.shape[:-1], q, D), cov, interleaved=True)
        post = GPyTorchPosterior(dist)
        return post if posterior_transform is None else posterior_transform(post)

    def _with_data(self, index: Tensor, y: Tensor) -> LowRankSpectralGP:
        new = copy.copy(self)  # shares the (large) eigenbasis and the hyperparameters
        new.data_index, new.data_y = index, y
        return new

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> LowRankSpectralGP:
        r"""A model whose posterior also conditions on ``Y`` (``batch' x n' x D``, original units) at indices ``X``
        (``batch' x n' x 1``); exact (no refit), shares the hyperparameters."""
        idx = self._check_index_input(X)
        if Y.shape[-1] != self.output_dim or Y.shape[-2] != idx.shape[-1]:
            raise ValueError(f"`Y` must be `batch x {idx.shape[-1]} x {self.output_dim}`, got {tuple(Y.shape)}.")
        batch = torch.broadcast_shapes(self.batch_shape, idx.shape[:-1], Y.shape[:-2])
        old_i = self.data_index.expand(*batch, self.data_index.shape[-1])
        old_y = self.data_y.expand(*batch, *self.data_y.shape[-2:])
        new_i = torch.cat([old_i, idx.expand(*batch, idx.shape[-1])], -1)
        new_y = torch.cat([old_y, (Y / self.y_scale).to(old_y).expand(*batch, *Y.shape[-2:])], -2)
        return self._with_data(new_i, new_y)

    def subset_output(self, idcs: list[int]) -> Model:
        raise NotImplementedError("The components of a vector field share one kernel; use output_indices.")


# ----------------------------------------------------------------------------------------------------------------
# RVGP
# ----------------------------------------------------------------------------------------------------------------


def _as_index(name: str, index: object, n: int) -> np.ndarray:
    arr = np.asarray(index.detach().cpu() if isinstance(index, Tensor) else index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"Boolean `{name}` must have shape ({n},), got {arr.shape}.")
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of point indices, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.allclose(arr, np.round(arr)):
            raise ValueError(f"`{name}` must hold integer point indices.")
    arr = np.round(arr).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            f"`{name}` must lie in [0, {n - 1}] (the cloud has n={n} points), got [{arr.min()}, {arr.max()}]."
        )
    return arr


class RVGP(LowRankSpectralGP):
    r"""Vector-field GP on a point cloud (the connection-Laplacian spectral kernel); a BoTorch model.

    Example:
        >>> s = sphere_vector_field(1000, "mixed")
        >>> gp = RVGP(s.points, n_eigenpairs=48).fit(train_idx, s.vectors[train_idx])
        >>> mean, std = gp.predict(test_idx)                 # (m, 3) each, tangent
        >>> mean_new, std_new = gp.predict_at(new_points)    # out-of-sample (Nystrom)
        >>> gp.save("rvgp.pt"); gp2 = RVGP.load("rvgp.pt")

    Point indices (``fit``, ``predict``, BoTorch inputs) refer to the rows of :attr:`points` (the cloud after
    ``duplicates="drop"``, if used; the input rows are ``laplacian.index``). Posterior covariances have rank ``d``
    per point (no normal component), so drawing samples adds GPyTorch's jitter (a ``NumericalWarning``).

    Args:
        points: ``(n, D)`` point cloud (numpy, torch or sequence).
        n_eigenpairs: ``k``, the rank of the kernel (pick the end of a degenerate group, e.g. 48 on a sphere).
        dim: Manifold dimension ``d`` (``None``: estimated).
        k_neighbors: Neighbours of the kNN graph.
        spectral_filter: ``"matern"`` or ``"diffusion"`` (``"heat"``).
        nu, learn_nu: Matern smoothness (initial value) and whether it is learnt.
        lengthscale: Initial :math:`\kappa` (default: :math:`2\nu/\kappa^2 = \lambda_k / 2`, i.e. the filter
            halves over the kept spectrum; diffusion: :math:`\kappa^2 \lambda_k / 2 = 2`).
        scalar: Model a scalar field with the graph Laplacian (outputs ``(m,)``).
        laplacian: A prebuilt :class:`~gpgeom.geometry.connection.ConnectionLaplacian` (then the geometry
            arguments are ignored).
        eigenpairs: Optional precomputed ``(eigenvalues (k,), eigenvectors (n d, k))`` of the Laplacian.
        eig_method: Eigensolver (:meth:`ConnectionLaplacian.eigenpairs`).
        dtype, device: Of the GP tensors (float64 default; ``"cuda"`` for the GPU).
        laplacian_kwargs: Passed to :func:`~gpgeom.geometry.connection.connection_laplacian` (``normalization``,
            ``weights``, ``frames``, ``duplicates``, ``on_disconnected``, ...).
    """

    def __init__(
        self,
        points: object,
        *,
        n_eigenpairs: int = 50,
        dim: int | None = None,
        k_neighbors: int = 10,
        spectral_filter: str = "matern",
        nu: float = 1.5,
        learn_nu: bool = True,
        lengthscale: float | None = None,
        scalar: bool = False,
        laplacian: ConnectionLaplacian | None = None,
        eigenpairs: tuple[object, object] | None = None,
        eig_method: str = "auto",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        **laplacian_kwargs: Any,
    ) -> None:
        check_positive("n_eigenpairs", n_eigenpairs, integer=True)
        check_option("spectral_filter", spectral_filter, tuple(_FILTERS))
        if laplacian is None:
            if scalar:
                laplacian = graph_laplacian(points, k_neighbors, **laplacian_kwargs)
            else:
                laplacian = connection_laplacian(points, k_neighbors, dim=dim, **laplacian_kwargs)
        elif not isinstance(laplacian, ConnectionLaplacian):
            raise TypeError(f"`laplacian` must be a ConnectionLaplacian, got {type(laplacian).__name__}.")
        lap = laplacian
        d = 1 if scalar else lap.dim
        if n_eigenpairs > lap.n * d:
            raise ValueError(f"`n_eigenpairs`={n_eigenpairs} exceeds n*d={lap.n * d} (the Laplacian's size).")
        if eigenpairs is None:
            vals, vecs = lap.eigenpairs(n_eigenpairs, method=eig_method)
        else:
            vals, vecs = (
                np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64) for a in eigenpairs
            )
            if vals.shape != (n_eigenpairs,) or vecs.shape != (lap.n * d, n_eigenpairs):
                raise ValueError(
                    f"`eigenpairs` must be ((k,), (n d, k)) = (({n_eigenpairs},), ({lap.n * d}, {n_eigenpairs})), "
                    f"got {vals.shape}, {vecs.shape}."
                )
        vals = np.maximum(vals, 0.0)
        phi = vecs.reshape(lap.n, 1, n_eigenpairs) if scalar else lap.lift(vecs)  # n x D_out x k
        phi_t = torch.as_tensor(phi, dtype=dtype, device=device)
        base = SpectralKernel(
            torch.as_tensor(vals, dtype=dtype, device=device),
            phi_t,
            spectral_filter=_FILTERS[spectral_filter],
            nu=nu,
            learn_nu=learn_nu and _FILTERS[spectral_filter] == "matern",
            lengthscale_constraint=Interval(1e-3, 1e4),
        )
        lam_k = max(float(vals[-1]), 1e-6)
        if lengthscale is None:
            lengthscale = math.sqrt(4 * nu / lam_k) if _FILTERS[spectral_filter] == "matern" else math.sqrt(4 / lam_k)
        check_positive("lengthscale", lengthscale)
        base.lengthscale = torch.as_tensor(lengthscale, dtype=torch.float64).to(dtype=dtype, device=device)
        covar = ScaleKernel(base, outputscale_constraint=GreaterThan(1e-6)).to(dtype=dtype, device=device)
        super().__init__(covar)
        self.laplacian = lap
        self.scalar = bool(scalar)
        self.eigenvalues = vals
        self.eigenvectors = vecs
        self.config = {
            "n_eigenpairs": n_eigenpairs,
            "k_neighbors": k_neighbors,
            "spectral_filter": spectral_filter,
            "nu": nu,
            "learn_nu": learn_nu,
            "scalar": bool(scalar),
            "laplacian_kwargs": {k: v for k, v in laplacian_kwargs.items() if k != "frames"},
        }
        self._tree: cKDTree | None = None

    # -------------------------------------------------------------------------------------------------------- #
    @property
    def n(self) -> int:
        return self.laplacian.n

    @property
    def points(self) -> np.ndarray:
        return self.laplacian.points

    def _vectors(self, vectors: object, m: int) -> Tensor:
        v = np.asarray(vectors.detach().cpu() if isinstance(vectors, Tensor) else vectors, dtype=np.float64)
        D = self.output_dim
        if self.scalar and v.ndim == 1:
            v = v[:, None]
        if v.shape != (m, D):
            what = "values" if self.scalar else "vectors"
            raise ValueError(
                f"`{what}` must have shape ({m}, {D}) (one {'value' if self.scalar else 'ambient vector'} per "
                f"index; the cloud is {self.n} x {self.points.shape[1]}), got {v.shape}."
            )
        if not np.all(np.isfinite(v)):
            raise ValueError(f"`vectors` contain {int((~np.isfinite(v)).sum())} NaN or infinite value(s).")
        ref = self.kernel.basis.eigenvectors
        return torch.as_tensor(v, dtype=ref.dtype, device=ref.device)

    def fit(
        self,
        index: object,
        vectors: object,
        *,
        method: str = "exact",
        restarts: int = 1,
        max_iter: int = 200,
        batch_size: int = 1024,
        epochs: int = 200,
        lr: float = 0.05,
        patience: int = 20,
        seed: int | None = 0,
        progress: bool = False,
    ) -> RVGP:
        r"""Learn :math:`\kappa, \nu, \sigma_f^2, \sigma^2` (and :math:`q(v)`) from observed vectors.

        Args:
            index: ``(m,)`` integer indices of the observed points (or an ``(n,)`` boolean mask).
            vectors: ``(m, D)`` observed ambient vectors at those points (``(n, D)`` is also accepted, then
                rows ``index`` are taken). Scalar model: ``(m,)``.
            method: ``"exact"`` (L-BFGS-B on the Woodbury marginal likelihood, O(N k^2) per step) or
                ``"variational"`` (Adam on minibatch ELBOs of ``batch_size`` points, ``epochs``).
            restarts, max_iter, lr, patience, seed, progress: Passed to :func:`gpgeom.engine.fitting.fit`.

        Returns:
            ``self`` (the :class:`~gpgeom.engine.fitting.FitResult` is in ``fit_result``).
        """
        check_option("method", method, ("exact", "variational"))
        idx = _as_index("index", index, self.n)
        if len(idx) == 0:
            raise ValueError("`index` is empty: nothing to fit.")
        v = np.asarray(vectors.detach().cpu() if isinstance(vectors, Tensor) else vectors)
        if len(idx) != self.n and v.ndim >= 1 and v.shape[0] == self.n:
            v = v[idx]
        y = self._vectors(v, len(idx))
        scale = float(y.square().mean().sqrt())
        self.y_scale = scale if scale > 0 else 1.0
        ref = self.kernel.basis.eigenvectors
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=ref.device)
        ys = y / self.y_scale
        for name in ("q_mean", "q_raw_scale"):
            if name in self._parameters:
                self._parameters[name].requires_grad_(method == "variational")
        if method == "exact":
            self.mode = "exact"
            self.data_index, self.data_y = idx_t, ys
            self.fit_result = fit(
                self._exact_loss,
                module=self,
                optimizer="lbfgs",
                restarts=restarts,
                max_iter=max_iter,
                seed=seed,
                progress=progress,
            )
        else:
            k = self.kernel.num_eigenpairs
            self.mode = "variational"
            if "q_mean" not in self._parameters or self.q_mean.shape != (k,):
                self.q_mean = nn.Parameter(torch.zeros(k, dtype=ref.dtype, device=ref.device))
                inv1 = math.log(math.expm1(1.0))
                self.q_raw_scale = nn.Parameter(torch.eye(k, dtype=ref.dtype, device=ref.device) * inv1)
            self._n_train_obs = int(ys.numel())
            self.data_index = idx_t[:0]
            self.data_y = ys[:0]
            gen = torch.Generator().manual_seed(0 if seed is None else seed)
            loader = _Minibatches(idx_t, ys, batch_size, gen)
            self._init_q(loader)
            self.fit_result = fit(
                self._elbo_loss,
                module=self,
                optimizer="adam",
                data_loader=loader,
                epochs=epochs,
                lr=lr,
                patience=patience,
                restarts=restarts,
                seed=seed,
                progress=progress,
            )
        self.train_index = idx
        self.eval()
        return self

    @torch.no_grad()
    def _init_q(self, loader: _Minibatches) -> None:
        r"""Start :math:`q(v)` at the exact posterior for the current hyperparameters, accumulated in one streaming
        pass over the minibatches (:math:`R^\top R` and :math:`R^\top y`, :math:`O(N k^2)` time, :math:`O(k^2)`
        memory)."""
        k = self.kernel.num_eigenpairs
        ref = self.kernel.basis.eigenvectors
        RtR = torch.zeros(k, k, dtype=ref.dtype, device=ref.device)
        Rty = torch.zeros(k, dtype=ref.dtype, device=ref.device)
        for index, y in loader:
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

    # -------------------------------------------------------------------------------------------------------- #
    def _marginals(self, phi_or_idx: Tensor, is_phi: bool, return_cov: bool) -> tuple[Tensor, Tensor]:
        D = self.output_dim
        Rq = self.rows(phi_or_idx) if not is_phi else self.rows(None, phi_or_idx)
        mean_v, F = self.weight_posterior()
        mean = (Rq @ mean_v.unsqueeze(-1)).squeeze(-1)
        V = F.mT @ Rq.mT  # (R_* F)^T, k x (q D)
        q = Rq.shape[0] // D
        Vb = V.reshape(V.shape[0], q, D)
        if return_cov:
            cov = torch.einsum("kqa,kqb->qab", Vb, Vb)
        else:
            cov = Vb.square().sum(0)
        return mean.reshape(q, D), cov

    @torch.no_grad()
    def _predict(
        self, source: Tensor, is_phi: bool, return_std: bool, return_cov: bool, observation_noise: bool, chunk_size: int
    ) -> Any:
        self.eval()
        means, second = [], []
        for s in range(0, source.shape[0], chunk_size):
            m, c = self._marginals(source[s : s + chunk_size], is_phi, return_cov)
            if observation_noise:
                c = c + (
                    self.noise * torch.eye(self.output_dim, dtype=c.dtype, device=c.device)
                    if return_cov
                    else self.noise
                )
            means.append(m)
            second.append(c)
        mean = torch.cat(means) * self.y_scale
        sec = torch.cat(second) * self.y_scale**2
        if self.scalar:
            mean = mean[:, 0]
            sec = sec[:, 0, 0] if return_cov else sec[:, 0]
        out_mean = mean.cpu().numpy()
        if return_cov:
            return out_mean, sec.cpu().numpy()
        if return_std:
            return out_mean, sec.clamp_min(0).sqrt().cpu().numpy()
        return out_mean

    def predict(
        self,
        index: object | None = None,
        *,
        return_std: bool = True,
        return_cov: bool = False,
        observation_noise: bool = False,
        chunk_size: int = 4096,
    ) -> Any:
        r"""Posterior of the field at cloud points (super-resolution, inpainting).

        Args:
            index: ``(m,)`` point indices (or a boolean mask); ``None``: all ``n`` points.
            return_std: Also return the ``(m, D)`` per-component standard deviations.
            return_cov: Return the ``(m, D, D)`` per-point covariances instead (rank ``d``, in the tangent plane).
            observation_noise: Include the noise variance.

        Returns:
            ``mean`` ``(m, D)`` (``(m,)`` for a scalar field), tangent to the frames; with ``return_std`` also
            ``std``; with ``return_cov`` ``(mean, cov)``. numpy arrays in the original units.
        """
        idx = np.arange(self.n) if index is None else _as_index("index", index, self.n)
        ref = self.kernel.basis.eigenvectors
        src = torch.as_tensor(idx, dtype=torch.long, device=ref.device)
        return self._predict(src, False, return_std, return_cov, observation_noise, chunk_size)

    def predict_at(
        self,
        points: object,
        *,
        return_std: bool = True,
        return_cov: bool = False,
        observation_noise: bool = False,
        chunk_size: int = 4096,
    ) -> Any:
        r"""Posterior at new points near the cloud ``(m, D)``, through :meth:`extend` (see the module docstring).

        Returns:
            As :meth:`predict`; the vectors are tangent to the new points' PCA frames.
        """
        phi = torch.as_tensor(self.extend(points)[0], dtype=self.kernel.basis.eigenvectors.dtype)
        return self._predict(
            phi.to(self.kernel.basis.eigenvectors.device), True, return_std, return_cov, observation_noise, chunk_size
        )

    def extend(self, points: object) -> tuple[np.ndarray, np.ndarray]:
        r"""Out-of-sample extension of the lifted eigenvectors (Nystrom with Procrustes transport).

        Args:
            points: ``(m, D)`` new points near the cloud.

        Returns:
            ``phi`` ``(m, D_out, k)`` the basis at the new points and ``frames`` ``(m, D, d)`` their tangent frames
            (``(m, D, 0)`` for a scalar model).
        """
        lap = self.laplacian
        P = np.asarray(points.detach().cpu() if isinstance(points, Tensor) else points, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != lap.points.shape[1]:
            raise ValueError(f"`points` must have shape (m, {lap.points.shape[1]}), got {P.shape}.")
        if not np.all(np.isfinite(P)):
            raise ValueError("`points` contain NaN or infinite values.")
        if not np.allclose(lap.self_weights, 1.0):
            raise ValueError("The out-of-sample extension needs a Laplacian without density normalisation (alpha=0).")
        if self._tree is None:
            self._tree = cKDTree(lap.points)
        kk = lap.graph.k
        dist, nb = self._tree.query(P, k=kk)
        far = dist[:, 0] > 2.0 * np.median(lap.graph.rho)
        if np.any(far):
            warnings.warn(
                f"{int(far.sum())} of {len(P)} new points lie farther from the cloud than twice its median kNN "
                "radius; the extension extrapolates there.",
                UserWarning,
                stacklevel=2,
            )
        w = np.ones_like(dist) if lap.eps is None else np.exp(-(dist**2) / lap.eps)
        W = w.sum(1)
        lam = self.eigenvalues
        k = len(lam)
        vecs = self.eigenvectors
        if self.scalar:
            c_nb = vecs[nb]  # m x kk x k
            frames = np.zeros((len(P), P.shape[1], 0))
        else:
            d = lap.dim
            c_all = vecs.reshape(lap.n, d, k)
            Y = lap.points[nb] - lap.points[nb].mean(1, keepdims=True)
            _, _, Vt = np.linalg.svd(Y, full_matrices=False)
            frames = np.swapaxes(Vt[:, :d, :], 1, 2)  # m x D x d
            O, _ = procrustes(np.repeat(frames[:, None], kk, 1), lap.frames[nb])  # m x kk x d x d
            c_nb = np.einsum("mjab,mjbk->mjak", O, c_all[nb])  # transported into frame x
        if lap.normalization == "none":
            num = np.einsum("mj,mj...->m...", w, c_nb)
            den = W[:, None] - lam[None, :]
        else:
            dx = 1.0 + W
            ww = w / np.sqrt(dx[:, None] * lap.degree[nb]) if lap.normalization == "sym" else w / dx[:, None]
            num = np.einsum("mj,mj...->m...", ww, c_nb)
            den = 1.0 - lam[None, :] - 1.0 / dx[:, None]
        den = np.where(np.abs(den) < 1e-8, 1e-8, den)
        if self.scalar:
            phi = (num / den)[:, None, :]
        else:
            c_x = num / den[:, None, :]  # m x d x k
            phi = np.einsum("mDd,mdk->mDk", frames, c_x)
        # a point of the cloud keeps its own basis values
        same = dist[:, 0] <= 1e-12 * max(1.0, float(np.abs(lap.points).max()))
        if np.any(same):
            phi[same] = self.kernel.basis.eigenvectors.cpu()[torch.as_tensor(nb[same, 0])].numpy()
            if not self.scalar:
                frames[same] = lap.frames[nb[same, 0]]
        return phi, frames

    # -------------------------------------------------------------------------------------------------------- #
    def save(self, path: str) -> None:
        r"""Save the cloud, frames, eigenpairs, hyperparameters and training data (``torch.save``)."""
        lap = self.laplacian
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        blob = {
            "format": "gpgeom.RVGP/1",
            "config": self.config,
            "points": torch.as_tensor(lap.points),
            "frames": torch.as_tensor(lap.frames),
            "eigenvalues": torch.as_tensor(self.eigenvalues),
            "eigenvectors": torch.as_tensor(self.eigenvectors),
            "state": state,
            "mode": self.mode,
            "y_scale": self.y_scale,
            "data_index": self.data_index.cpu(),
            "data_y": self.data_y.cpu(),
            "n_train_obs": getattr(self, "_n_train_obs", 0),
            "dtype": str(self.kernel.basis.eigenvectors.dtype),
        }
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str, device: str | torch.device = "cpu") -> RVGP:
        r"""Rebuild a model saved by :meth:`save` (no eigensolve; the graph is rebuilt from the saved points)."""
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != "gpgeom.RVGP/1":
            raise ValueError(f"{path!r} is not an RVGP file saved by RVGP.save.")
        cfg = blob["config"]
        dtype = getattr(torch, blob["dtype"].split(".")[-1])
        kw = dict(cfg["laplacian_kwargs"])
        pts = blob["points"].numpy()
        kw.pop("duplicates", None)
        if cfg["scalar"]:
            lap = graph_laplacian(pts, cfg["k_neighbors"], **kw)
        else:
            kw.pop("dim", None)
            lap = connection_laplacian(pts, cfg["k_neighbors"], frames=blob["frames"].numpy(), **kw)
        model = cls(
            pts,
            n_eigenpairs=cfg["n_eigenpairs"],
            spectral_filter=cfg["spectral_filter"],
            nu=cfg["nu"],
            learn_nu=cfg["learn_nu"],
            scalar=cfg["scalar"],
            laplacian=lap,
            eigenpairs=(blob["eigenvalues"].numpy(), blob["eigenvectors"].numpy()),
            dtype=dtype,
            device=device,
        )
        model.config = cfg
        model.mode = blob["mode"]
        if model.mode == "variational":
            k = cfg["n_eigenpairs"]
            model.q_mean = nn.Parameter(torch.zeros(k, dtype=dtype, device=device))
            model.q_raw_scale = nn.Parameter(torch.zeros(k, k, dtype=dtype, device=device))
            model._n_train_obs = blob["n_train_obs"]
        model.load_state_dict(blob["state"])
        model.y_scale = blob["y_scale"]
        model.data_index = blob["data_index"].to(device)
        model.data_y = blob["data_y"].to(device=device, dtype=dtype)
        model.eval()
        return model


class _Minibatches:
    r"""Reshuffled minibatches ``(index (b,), y (b, D))`` of the training points, one pass per iteration."""

    def __init__(self, index: Tensor, y: Tensor, batch_size: int, generator: torch.Generator) -> None:
        check_positive("batch_size", batch_size, integer=True)
        self.index, self.y, self.b, self.gen = index, y, batch_size, generator

    def __iter__(self):
        perm = torch.randperm(len(self.index), generator=self.gen).to(self.index.device)
        for s in range(0, len(perm), self.b):
            sel = perm[s : s + self.b]
            yield self.index[sel], self.y[sel]
