#!/usr/bin/env python3
r"""Kernels over the points of a precomputed eigenbasis (graph, mesh or connection Laplacian).

Given ``k`` eigenpairs :math:`(\lambda_l, \phi_l)` of a positive semi-definite operator on ``n`` points (a graph or
mesh Laplacian, or a connection Laplacian whose eigenvectors are lifted to ambient vectors), a *spectral kernel*
applies a filter :math:`f` to the spectrum (the truncated Mercer / Karhunen-Loeve expansion):

.. math::
    k(i, j) = \sum_{l=1}^{k} \phi_l(i)\, f(\lambda_l)\, \phi_l(j).

With all ``n`` eigenpairs of a Laplacian :math:`L = \Phi \Lambda \Phi^\top` this is the matrix function
:math:`f(L)`. The two filters are

* Matern (Borovitskiy, Azangulov, Terenin, Mostowsky, Deisenroth and Durrande, "Matern Gaussian processes on
  graphs", AISTATS 2021, eq. 7; Borovitskiy et al., "Matern Gaussian processes on Riemannian manifolds", NeurIPS
  2020): :math:`f(\lambda) = \left(\tfrac{2\nu}{\kappa^2} + \lambda\right)^{-\nu - d/2}`, the spectral density of
  :math:`(\tfrac{2\nu}{\kappa^2} + \Delta)^{\nu/2 + d/4} u = \mathcal W`;
* heat / diffusion (squared-exponential limit :math:`\nu \to \infty`):
  :math:`f(\lambda) = e^{-\kappa^2 \lambda / 2}`,

with lengthscale :math:`\kappa`, smoothness :math:`\nu` and dimension :math:`d` (the manifold dimension for
meshes; ``d = 0``, the convention of GeometricKernels for graphs and of RVGP, leaves the exponent at :math:`-\nu`).

RVGP (Peach, Vinao-Carl, Grossman, Aguilar, Tsai, Vandergheynst and Gosztolai, "Implicit Gaussian process
representation of vector fields over arbitrary latent manifolds", ICLR 2024, sec. 3) uses the eigenvectors
:math:`u_l \in \mathbb R^{n d}` of the connection Laplacian, lifts them to ambient vectors with the tangent frames
:math:`T_i \in \mathbb R^{D \times d}`, :math:`\phi_l(i) = T_i u_l(i) \in \mathbb R^D`, and uses the vector-valued
kernel :math:`K(i, j) = \sum_l \phi_l(i) f(\lambda_l) \phi_l(j)^\top \in \mathbb R^{D \times D}`. Pass those
lifted eigenvectors as an ``n x D x k`` tensor: the kernel then has ``D`` outputs per input point.
"""

from __future__ import annotations

import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.kernels import Kernel
from gpytorch.priors import Prior
from linear_operator.operators import (
    LinearOperator,
    LowRankRootLinearOperator,
    MatmulLinearOperator,
    RootLinearOperator,
)
from torch import Tensor, nn

from gpgeom._validation import check_kernel_kwargs, check_option, check_positive, check_tensor
from gpgeom.kernels.variance import set_constrained

__all__ = ["SpectralKernel"]

_FILTERS = ("matern", "heat")


class _SpectralBasis(nn.Module):
    r"""Holds the eigen-data as buffers (they follow ``.to()``), outside the kernel's own batch-shaped buffers."""

    def __init__(self, eigenvalues: Tensor, eigenvectors: Tensor) -> None:
        super().__init__()
        self.register_buffer("eigenvalues", eigenvalues)  # k
        self.register_buffer("eigenvectors", eigenvectors)  # n x D x k
        # c_l = |phi_l|^2 / (n D): the contribution of eigenpair l to the mean prior variance per unit filter value
        n, D, _ = eigenvectors.shape
        self.register_buffer("mass", eigenvectors.square().sum((0, 1)) / (n * D))


class SpectralKernel(Kernel):
    r"""Matern or heat kernel on the points of a precomputed eigenbasis.

    .. math::
        k(i, j) = \sigma_0^{-2} \sum_{l=1}^{k} \phi_l(i)\, f_{\kappa,\nu}(\lambda_l)\, \phi_l(j), \qquad
        f_{\kappa,\nu}(\lambda) = \begin{cases}
            (2\nu/\kappa^2 + \lambda)^{-\nu - d/2} & \text{Matern} \\
            \exp(-\kappa^2 \lambda / 2) & \text{heat}
        \end{cases}

    **Normalisation** (``normalize=True``): :math:`\sigma_0^2 = \sum_l c_l f(\lambda_l)` with
    :math:`c_l = \lVert \phi_l \rVert^2 / N` and ``N = n * D`` rows of the basis, so that the prior variance averaged
    over all basis points (and output components) is exactly one:
    :math:`\frac{1}{N} \sum_{i,a} k((i,a),(i,a)) = 1`. This holds for any column scaling of the eigenvectors
    (orthonormal, or scaled by :math:`\sqrt{n}` as in GeometricKernels and RVGP), so that a wrapping
    :class:`~gpytorch.kernels.ScaleKernel`'s ``outputscale`` is the average prior variance. With
    ``normalize=False``, :math:`\sigma_0 = 1`.

    **Inputs** are indices of the basis points stored as floats in one column, ``... x n x 1`` (the
    GeometricKernels/BoTorch convention); they are rounded to integers, and must be integral and in
    ``[0, n - 1]``. Do not apply input transforms (``Normalize``) to them.

    **Vector-valued bases**: with ``eigenvectors`` of shape ``n x D x k`` the kernel returns the interleaved
    ``(n1 D) x (n2 D)`` matrix whose entry ``(i D + a, j D + b)`` is :math:`\sum_l \phi_l(i)_a f_l \phi_l(j)_b`
    (like :class:`~gpytorch.kernels.RBFKernelGrad`); :meth:`num_outputs_per_input` returns ``D``.

    **Structure**: ``forward`` returns the rank-``k`` factorisation (a
    :class:`~linear_operator.operators.LowRankRootLinearOperator` :math:`R R^\top` when ``x1`` equals ``x2`` and
    ``k < N``, a :class:`~linear_operator.operators.RootLinearOperator` when ``k >= N``, and a
    :class:`~linear_operator.operators.MatmulLinearOperator` :math:`R_1 R_2^\top` for cross-covariances), so adding a
    noise diagonal gives the Woodbury (low-rank plus diagonal) solve path.

    The kernel adopts the dtype and device of ``eigenvectors`` (its hyperparameters are moved there), and the
    eigen-data are buffers of the submodule ``basis`` (they follow ``.to()`` and are saved in the ``state_dict``).
    ``batch_shape`` batches the hyperparameters; the eigenbasis is shared by all batch members.

    :param eigenvalues: ``k`` eigenvalues :math:`\lambda_l \ge 0` (negative values within round-off,
        ``eigenvalue_tol``, are clamped to zero).
    :param eigenvectors: ``n x k`` (scalar) or ``n x D x k`` (vector-valued, lifted) eigenvectors; column ``l``
        belongs to ``eigenvalues[l]``.
    :param spectral_filter: ``"matern"`` or ``"heat"``.
    :param nu: Initial/fixed smoothness :math:`\nu > 0` (Matern only; ignored for heat). Default 1.5.
    :param learn_nu: Whether :math:`\nu` is a trainable parameter (``raw_nu`` with ``nu_constraint``) or a fixed
        buffer.
    :param dimension: :math:`d \ge 0` in the Matern exponent :math:`-\nu - d/2` (default 0, graph convention).
    :param normalize: Rescale to unit average prior variance (see above).
    :param nu_prior: Optional prior on :math:`\nu`.
    :param nu_constraint: Constraint on :math:`\nu` (default :class:`~gpytorch.constraints.Positive`).
    :param lengthscale_prior: Optional prior on :math:`\kappa`.
    :param lengthscale_constraint: Constraint on :math:`\kappa` (default Positive).
    :param eigenvalue_tol: Eigenvalues below ``-eigenvalue_tol`` are rejected; default
        ``1e3 * eps * max(1, max |lambda|)``.
    :param kwargs: Passed to :class:`~gpytorch.kernels.Kernel` (``batch_shape``, ``active_dims``, ...).

    :ivar lengthscale: :math:`\kappa`, shape ``*batch_shape x 1 x 1``.
    :ivar nu: :math:`\nu`, shape ``*batch_shape x 1 x 1`` (``None`` for the heat filter).

    Example:
        >>> import torch
        >>> from gpytorch.kernels import ScaleKernel
        >>> from gpgeom.kernels import SpectralKernel
        >>> n = 100
        >>> A = torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
        >>> A = A + A.T                                        # a path graph's adjacency, n x n
        >>> L = torch.diag(A.sum(-1)) - A                      # graph Laplacian, n x n
        >>> lam, phi = torch.linalg.eigh(L)
        >>> covar = ScaleKernel(SpectralKernel(lam[:50], phi[:, :50], nu=1.5))
        >>> idx = torch.arange(n, dtype=lam.dtype)[:, None]    # the kernel's inputs are node indices, n x 1
        >>> K = covar(idx).to_dense()                          # n x n, rank 50
        >>> K.shape, int(torch.linalg.matrix_rank(K))
        (torch.Size([100, 100]), 50)
    """

    has_lengthscale = True

    def __init__(
        self,
        eigenvalues: Tensor,
        eigenvectors: Tensor,
        spectral_filter: str = "matern",
        nu: float = 1.5,
        learn_nu: bool = True,
        dimension: float = 0,
        normalize: bool = True,
        nu_prior: Prior | None = None,
        nu_constraint: Interval | None = None,
        lengthscale_prior: Prior | None = None,
        lengthscale_constraint: Interval | None = None,
        eigenvalue_tol: float | None = None,
        **kwargs,
    ) -> None:
        check_tensor("eigenvalues", eigenvalues, ndim=1, floating=True)
        check_tensor("eigenvectors", eigenvectors, ndim=(2, 3), floating=True)
        check_option("spectral_filter", spectral_filter, _FILTERS)
        check_positive("dimension", dimension, allow_zero=True)
        if not isinstance(normalize, bool):
            raise TypeError(f"`normalize` must be a bool, got {type(normalize).__name__}.")
        if not isinstance(learn_nu, bool):
            raise TypeError(f"`learn_nu` must be a bool, got {type(learn_nu).__name__}.")
        if kwargs.get("ard_num_dims") not in (None, 1):
            raise ValueError(
                f"SpectralKernel takes one index column; `ard_num_dims`={kwargs['ard_num_dims']!r} is not supported."
            )
        k = eigenvalues.shape[0]
        if k == 0 or eigenvectors.shape[0] == 0:
            raise ValueError(
                f"The eigenbasis is empty: eigenvalues {tuple(eigenvalues.shape)}, eigenvectors "
                f"{tuple(eigenvectors.shape)}."
            )
        if eigenvectors.shape[-1] != k:
            raise ValueError(
                f"`eigenvectors` must be n x k or n x D x k with k = {k} (the number of eigenvalues), got shape "
                f"{tuple(eigenvectors.shape)}; eigenvector l is column eigenvectors[..., l]."
            )
        tol = eigenvalue_tol
        if tol is None:
            tol = 1e3 * torch.finfo(eigenvalues.dtype).eps * max(1.0, float(eigenvalues.abs().max()))
        else:
            check_positive("eigenvalue_tol", tol, allow_zero=True)
        if float(eigenvalues.min()) < -tol:
            raise ValueError(
                f"`eigenvalues` must be >= 0 (a positive semi-definite operator); the smallest is "
                f"{float(eigenvalues.min()):.3g}, beyond the round-off tolerance {tol:.3g}. Check the sign convention "
                "of the Laplacian (L = D - A) or pass `eigenvalue_tol`."
            )
        check_kernel_kwargs("SpectralKernel", kwargs)  # GPyTorch would drop unknown keywords silently
        super().__init__(lengthscale_prior=lengthscale_prior, lengthscale_constraint=lengthscale_constraint, **kwargs)

        dtype, device = eigenvectors.dtype, eigenvectors.device
        vecs = eigenvectors if eigenvectors.dim() == 3 else eigenvectors.unsqueeze(1)
        vals = eigenvalues.detach().to(dtype=dtype, device=device).clamp_min(0.0)
        self.basis = _SpectralBasis(vals, vecs.detach().clone())
        self.spectral_filter = spectral_filter
        self.dimension = float(dimension)
        self.normalize = normalize
        self.learn_nu = learn_nu

        if spectral_filter == "matern":
            check_positive("nu", nu)
            nu_t = torch.full((*self.batch_shape, 1, 1), float(nu), dtype=dtype, device=device)
            if learn_nu:
                if nu_constraint is None:
                    nu_constraint = Positive()
                elif not isinstance(nu_constraint, Interval):
                    raise TypeError(
                        f"`nu_constraint` must be a gpytorch Interval constraint (e.g. Positive()), got "
                        f"{type(nu_constraint).__name__}."
                    )
                self.register_parameter("raw_nu", nn.Parameter(torch.zeros_like(nu_t)))
                self.register_constraint("raw_nu", nu_constraint)
                if nu_prior is not None:
                    if not isinstance(nu_prior, Prior):
                        raise TypeError(f"`nu_prior` must be a gpytorch Prior, got {type(nu_prior).__name__}.")
                    self.register_prior("nu_prior", nu_prior, self._nu_param, self._nu_closure)
                self.to(dtype=dtype, device=device)
                self._set_nu(nu_t)
            else:
                if nu_prior is not None or nu_constraint is not None:
                    raise ValueError("`nu_prior`/`nu_constraint` need learn_nu=True.")
                self.register_buffer("fixed_nu", nu_t)
        elif nu_prior is not None or nu_constraint is not None:
            raise ValueError("`nu_prior`/`nu_constraint` apply to the Matern filter only.")
        self.to(dtype=dtype, device=device)

    # ------------------------------------------------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        r"""``n``, the number of points of the basis."""
        return self.basis.eigenvectors.shape[0]

    @property
    def num_eigenpairs(self) -> int:
        r"""``k``, the rank of the kernel."""
        return self.basis.eigenvalues.shape[0]

    @property
    def output_dim(self) -> int:
        r"""``D``, the number of outputs per point (1 for a scalar basis)."""
        return self.basis.eigenvectors.shape[1]

    @property
    def nu(self) -> Tensor | None:
        r"""The Matern smoothness :math:`\nu`, shape ``*batch_shape x 1 x 1`` (the constrained value of ``raw_nu``
        when learned, the fixed buffer otherwise); ``None`` for the heat filter. Setting it accepts a float or a
        tensor of that shape."""
        if self.spectral_filter != "matern":
            return None
        if self.learn_nu:
            return self.raw_nu_constraint.transform(self.raw_nu)
        return self.fixed_nu

    @nu.setter
    def nu(self, value: float | Tensor) -> None:
        self._set_nu(value)

    def _set_nu(self, value: float | Tensor) -> None:
        if self.spectral_filter != "matern":
            raise AttributeError("`nu` is defined for the Matern filter only.")
        ref = self.raw_nu if self.learn_nu else self.fixed_nu
        if not torch.is_tensor(value):
            value = torch.as_tensor(value, dtype=ref.dtype, device=ref.device)
        value = value.to(ref).expand_as(ref)
        if self.learn_nu:
            set_constrained(self, "nu", value)  # strictly inside the constraint: a bound's raw value is +-inf
        else:
            self.fixed_nu.copy_(value)

    def _nu_param(self, m: SpectralKernel) -> Tensor:
        return m.nu

    def _nu_closure(self, m: SpectralKernel, v: Tensor) -> None:
        m._set_nu(v)

    def _set_lengthscale(self, value: Tensor | float) -> None:
        r"""GPyTorch's setter, without its detour through the default dtype (``k.lengthscale = 0.7`` on a float64
        kernel stored 0.699999988), and strictly inside the constraint."""
        set_constrained(self, "lengthscale", value)

    def num_outputs_per_input(self, x1: Tensor, x2: Tensor) -> int:
        return self.output_dim

    # ------------------------------------------------------------------------------------------------------------
    def spectrum(self) -> Tensor:
        r"""The (normalised) filter values :math:`f(\lambda_l) / \sigma_0^2`, shape ``*batch_shape x k``."""
        lam = self.basis.eigenvalues
        kappa = self.lengthscale[..., 0, :]  # *batch x 1
        if self.spectral_filter == "heat":
            logf = -0.5 * kappa.square() * lam
        else:
            nu = self.nu[..., 0, :]
            logf = -(nu + 0.5 * self.dimension) * torch.log(2.0 * nu / kappa.square() + lam)
        if self.normalize:
            logz = torch.logsumexp(logf + torch.log(self.basis.mass), dim=-1, keepdim=True)
            logf = logf - logz
        return logf.exp()

    def _indices(self, x: Tensor, name: str) -> Tensor:
        if x.shape[-1] != 1:
            raise ValueError(
                f"SpectralKernel expects one column of point indices, `{name}` of shape ... x n x 1; got shape "
                f"{tuple(x.shape)}. Use `active_dims` to select the index column."
            )
        x = x[..., 0]
        if x.is_floating_point():
            idx = torch.round(x)
            bad = ~torch.isfinite(x) | ((x - idx).abs() > 1e-4)
            if bool(bad.any()):
                raise ValueError(
                    f"`{name}` must hold integer indices of the basis points (stored as floats); got e.g. "
                    f"{float(x[bad][0])!r}."
                )
            idx = idx.long()
        else:
            idx = x.long()
        n = self.num_points
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise ValueError(
                f"`{name}` indices must lie in [0, {n - 1}] (the basis has n = {n} points); got range "
                f"[{int(idx.min())}, {int(idx.max())}]."
            )
        return idx

    def _rows(self, idx: Tensor) -> Tensor:
        r"""``... x (n D) x k`` rows of the eigenvector matrix for indices ``... x n``."""
        phi = self.basis.eigenvectors[idx]  # ... x n x D x k
        return phi.reshape(*idx.shape[:-1], idx.shape[-1] * self.output_dim, self.num_eigenpairs)

    def forward(
        self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch: bool = False, **params
    ) -> Tensor | LinearOperator:
        r"""Kernel matrix ``... x (n1 D) x (n2 D)`` (a rank-``k`` linear operator) or its diagonal ``... x (n1 D)``.

        :param x1: ``... x n1 x 1`` indices (floats holding integers).
        :param x2: ``... x n2 x 1`` indices.
        :param diag: Return the diagonal (requires ``n1 == n2``).
        """
        if last_dim_is_batch:
            raise ValueError("SpectralKernel does not support last_dim_is_batch=True.")
        i1 = self._indices(x1, "x1")
        same = x1 is x2 or (x1.shape == x2.shape and torch.equal(x1, x2))
        i2 = i1 if same else self._indices(x2, "x2")
        sqrt_s = self.spectrum().sqrt().unsqueeze(-2)  # *batch x 1 x k
        R1 = self._rows(i1) * sqrt_s
        if diag:
            if same:
                return R1.square().sum(-1)
            R2 = self._rows(i2) * sqrt_s
            if R1.shape[-2] != R2.shape[-2]:
                raise ValueError(
                    f"diag=True needs x1 and x2 with the same number of points, got {x1.shape[-2]} and {x2.shape[-2]}."
                )
            return (R1 * R2).sum(-1)
        if same:
            return LowRankRootLinearOperator(R1) if R1.shape[-1] < R1.shape[-2] else RootLinearOperator(R1)
        R2 = self._rows(i2) * sqrt_s
        batch = torch.broadcast_shapes(R1.shape[:-2], R2.shape[:-2])
        R1 = R1.expand(*batch, *R1.shape[-2:])
        R2 = R2.expand(*batch, *R2.shape[-2:])
        return MatmulLinearOperator(R1, R2.mT)
