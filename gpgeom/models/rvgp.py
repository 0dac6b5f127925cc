r"""RVGP: Gaussian processes for vector fields on a latent manifold known only through a point cloud.

Peach, Vinao-Carl, Grossman, David, Mallas, Sharp, Malhotra, Vandergheynst and Gosztolai, "Implicit Gaussian
process representation of vector fields over arbitrary latent manifolds", ICLR 2024 (arXiv 2309.16746).

**Pipeline** (the paper's sec. 3, its construction of the RVGP kernel). From a cloud
:math:`X \in \mathbb R^{n \times D}`:

1. the connection Laplacian :math:`L_c \in \mathbb R^{nd \times nd}` of the kNN graph (Singer and Wu, "Vector
   diffusion maps and the connection Laplacian", CPAM 2012): tangent frames :math:`T_i \in \mathbb R^{D \times d}`
   by local PCA, transports :math:`O_{ij}` = the orthogonal Procrustes alignment of :math:`T_i^\top T_j`, blocks
   :math:`(L_c)_{ii} = \deg_i I_d`, :math:`(L_c)_{ij} = -w_{ij} O_{ij}`
   (:func:`gpgeom.geometry.connection.connection_laplacian`);
2. its ``k`` smallest eigenpairs :math:`L_c u_l = \lambda_l u_l`, lifted to ambient vector fields
   :math:`\phi_l(i) = T_i u_l(i) \in \mathbb R^D` (the paper's positional encoding of the tangent bundle);
3. the vector-valued kernel, a :class:`~gpgeom.kernels.spectral.SpectralKernel` times an outputscale
   :math:`\sigma_f^2`,

   .. math:: K(i, j) = \sigma_f^2 \sum_{l=1}^k \phi_l(i)\, \tilde f(\lambda_l)\, \phi_l(j)^\top
      \in \mathbb R^{D\times D}, \qquad
      f(\lambda) = (2\nu/\kappa^2 + \lambda)^{-\nu}\ \text{(Matern)} \ \text{or}\ e^{-\kappa^2\lambda/2}
      \ \text{(diffusion)},

   the graph Matern and diffusion filters of Borovitskiy et al. ("Matern Gaussian processes on graphs",
   AISTATS 2021, eq. 7 and its :math:`\nu \to \infty` limit) applied to :math:`L_c`, with
   :math:`\tilde f = f / \sigma_0^2` normalised to unit mean prior variance; :math:`\kappa, \nu, \sigma_f^2` and the
   noise variance :math:`\sigma^2` are learnt by maximising the marginal likelihood.

**Identifiable smoothness.** With ``k`` eigenpairs the likelihood sees the filter only on
:math:`[\lambda_1, \lambda_k]`, where :math:`(a + \lambda)^{-\nu}`, :math:`a = 2\nu/\kappa^2`, has three flat
directions: for :math:`a \gg \lambda_k` it is :math:`e^{-\kappa^2\lambda/2}(1 + O(\kappa^4\lambda_k^2/\nu))`, the
diffusion filter whatever :math:`\nu` (measured: :math:`\nu` ran to 6e4 on a sphere with 60 eigenpairs); for
:math:`a \ll \lambda_+` (the smallest positive kept eigenvalue) it is :math:`\lambda^{-\nu}` whatever
:math:`\kappa` (:math:`\kappa` ran to 9e3 on a torus); and when the filter barely decays over the kept spectrum all
filters are white there. So :math:`\nu \in [1/2, 16]` (16 exceeds any smoothness a sampled field can show: the
continuum field has :math:`\nu - d/2` mean-square derivatives; use ``spectral_filter="diffusion"`` for the limit),
and :math:`\kappa \in [\kappa_-, \kappa_+]` with :math:`\kappa_-^2 \lambda_k / 2 = 0.05` (a flatter filter decays
by less than 5 % over the kept spectrum) and, for Matern, :math:`2\nu_{min}/\kappa_+^2 = \lambda_+/100` (a smaller
knee changes no kept filter value by more than :math:`1.01^\nu`); for diffusion
:math:`\kappa_+^2 \lambda_+ / 2 = 40`. Interval constraints (L-BFGS-B on their sigmoid transforms).

**Training** is the exact GP on this rank-``k`` kernel, computed in weight space in :math:`O(N k^2)` for ``N = n_train
D`` scalar observations (or variationally for large ``n``): :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`,
whose module docstring has the algebra. The reference implementation factorises the dense ``N x N`` matrix.

**Uncertainty.** Three fixes of the calibration of the rank-``k`` posterior (measured on noise-free fields: 39 %
of the components inside the latent 2-sigma band on a torus; :class:`LowRankSpectralGP` has the algebra):

* *tangent likelihood*: observed vectors are tangent up to the frames' error, so their components across the frames
  get their own noise variance (closed-form maximum likelihood, fixed during the fit); one isotropic variance
  underestimated the in-plane residual by ``d/D``;
* *model error*: the truncated spectrum and the discretisation error of the graph eigenvectors put part of the
  field outside the span of the ``k`` features (on a noise-free torus 20 % of it in L2 with 60 eigenpairs, on a
  sphere a floor of 3.7 % spread evenly over the higher modes, so no filter's tail accounts for it), and the
  likelihood learnt it as noise. :meth:`RVGP.fit` estimates the observation noise without the basis
  (:func:`local_noise_variance`) and moves the rest of the residual variance into the latent variance, in the
  tangent plane;
* *far points* (below): the features decay and the prior variance they carried is restored.

**The ambient part** (``ambient="rbf"``, the default; ``"matern"``; ``None``: the spectral kernel alone). On
1200 i.i.d. points of an ellipsoid, 30 % observed, the spectral kernel alone (k = 50) had relative L2 0.90 on a
rough field and 0.099 on a smooth one, a plain Euclidean GP (one RBF on xyz shared by the three components) 0.23
and 0.0068. The basis is what loses: a graph's eigenfields carry the sampling noise of the cloud, so 6-14 % of a
smooth tangent field lies outside the span of the first 100 whatever the normalisation and weights
(:func:`~gpgeom.geometry.connection.connection_laplacian`), and a rough field needs hundreds; no filter, prior or
noise split recovers what the span lacks. The model therefore adds a stationary kernel on the ambient coordinates
projected onto the frames,

.. math:: K(x, x') \mathrel{+}= P_x\, \sigma_a^2 k(|x - x'|)\, P_{x'}, \qquad P_x = T_x T_x^\top,

(the construction of Hutchinson et al., "Vector-valued Gaussian processes on Riemannian manifolds via gauge
independent projected kernels", NeurIPS 2021, with the estimated frames), :math:`\sigma_a^2` and the lengthscale
learnt with the rest by the marginal likelihood, which weighs the two parts. The field stays tangent by
construction; the sum contains the Euclidean GP made tangent, so it does not lose to it except through the frames:
:math:`P_x` with estimated frames drops the part of the field across them (frames of a local cubic fit: 2.4e-4 of a
smooth field on a sphere of 1200 random points, 10x the Euclidean GP's error; the frames of the default degree-2-6
fit, :func:`~gpgeom.geometry.tangent.local_pca`, leak ~1e-6). The algebra is dense on the tangent components of the
observations (:class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`), so the part is used by exact fits on at most
``AMBIENT_MAX_POINTS`` distinct points; variational fits and larger ones use the spectral kernel alone. Against the
best of three Euclidean GPs with learnt hyperparameters (``benchmarks/rvgp.py``; 1200 points, 30 % observed, seeds
0-2), RVGP's relative L2 over theirs, median (max): sphere rough 1.00 (1.01), ellipsoid rough 0.98 (0.99), ellipsoid
smooth 0.045 (0.065), Swiss roll 0.42 (0.54), sphere smooth 0.064 (0.13): 1.6e-6 against 2.5e-5 (cubic frames: 14).

**Out-of-sample extension** (:meth:`RVGP.extend`, gpgeom's addition: the paper's model is transductive, its test
points belong to the cloud). A new point :math:`x` near the cloud joins the graph with its ``k`` nearest cloud points
:math:`j` (weights :math:`w_j`: 1, or the Laplacian's Gaussian weights), gets a frame :math:`T_x` by PCA of those
neighbours, and transports :math:`O_{xj}` = Procrustes(:math:`T_x, T_j`). Solving the eigen-equation's row of the
new node for its value (Nystrom) gives, with :math:`c_l(j) = T_j^\top \phi_l(j)` and :math:`W = \sum_j w_j`,

.. math:: c_l(x) = \frac{\sum_j w_j O_{xj} c_l(j)}{W - \lambda_l} \ (\text{"none"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/\sqrt{d_x d_j}}{1 - \lambda_l - 1/d_x}\ (\text{"sym"}), \quad
   \frac{\sum_j w_j O_{xj} c_l(j)/d_x}{1 - \lambda_l - 1/d_x}\ (\text{"rw"}),

(:math:`d_x = 1 + W` the degree with the self loop), and :math:`\phi_l(x) = T_x c_l(x)`. At a cloud point this
reproduces :math:`c_l` up to the asymmetry of its kNN neighbourhood (the cloud's own basis is returned there). The
scalar case is the same with :math:`d = 1`, :math:`O = 1`. The formula is a neighbour average: it does not decay
away from the cloud (before the taper below, a point 10 units away got the posterior std of a training point).
So with :math:`\delta` the distance to the nearest cloud point and :math:`r` the graph's reach (the median distance
of a cloud point to its ``k``-th neighbour), the features are :math:`\gamma\phi_l(x)`,
:math:`\gamma = \exp(-(\delta - r)_+^2 / 2r^2)`, and the prior variance they no longer carry,
:math:`(1 - \gamma^2)\bar p\, T_x T_x^\top` with :math:`\bar p` the cloud's mean prior variance per tangent
direction, is restored: far from the cloud the mean returns to 0 and the variance to the prior. Points beyond the
reach (:math:`\delta > r`) raise an :class:`OutOfReachWarning` with their count.

**Tangency.** Every lifted eigenvector lies in :math:`\mathrm{span}\, T_i`, and so do the model-error and restored
terms, so posterior means, samples and the columns of the latent posterior covariance are tangent to the estimated
frames by construction (no projection).

**Scalar fields** (``scalar=True``): the same model on the graph Laplacian's eigenvectors (``D_out = 1``).

**BoTorch.** :class:`RVGP` is a ``botorch.models.model.Model`` over point indices (inputs ``... x q x 1`` holding
integer indices as floats; outputs the ``D`` ambient components), through the shared Gaussian path of
:class:`~gpgeom.botorch.gaussian.GaussianSurrogate`: ``posterior`` returns a
``GPyTorchPosterior(MultitaskMultivariateNormal)``; ``condition_on_observations``/``fantasize`` apply Bayes' rule
to the joint, which equals the exact refit on the union (:meth:`~LowRankSpectralGP.rebuild_with`); optimise
acquisitions with ``optimize_acqf_discrete(acqf, q, choices=idx)``.

**The model contract** (:mod:`gpgeom.base`): ``fit`` returns the model (``fit_result_``), ``predict``/``predict_at``
return torch tensors ``m x D`` (``m x 1`` for a scalar field), numpy or torch inputs, ``to(device=, dtype=)``,
``save``/``load`` of everything ``predict`` needs (cloud, frames, graph and Laplacian, eigenpairs,
hyperparameters, data).

Bad input: vectors not of shape ``(len(index), D)`` (or ``(n, D)``), indices out of range or not integers,
non-finite values, a manifold dimension above ``D``, duplicate points (``ValueError`` from the geometry, or
``duplicates="drop"``), a disconnected graph (a warning from the geometry; the spectrum is the union of the
components' spectra, so every component gets its own low modes), ``n_eigenpairs`` above ``n d``: each a clear
``ValueError``/``TypeError``/warning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from gpytorch.constraints import GreaterThan, Interval
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from scipy.spatial import cKDTree
from torch import Tensor

from gpgeom._validation import check_device, check_option, check_positive
from gpgeom.base import ModelContract
from gpgeom.botorch.low_rank import LowRankSpectralGP, Minibatches
from gpgeom.engine.chunking import chunk_size_for, chunk_slices, element_size
from gpgeom.engine.fitting import FitResult, fit
from gpgeom.geometry.connection import ConnectionLaplacian, connection_laplacian, graph_laplacian, procrustes
from gpgeom.geometry.tangent import fit_size, frames_at, local_noise_variance, tangent_frames
from gpgeom.kernels.spectral import SpectralKernel

__all__ = ["LowRankSpectralGP", "OutOfReachWarning", "RVGP", "angular_errors", "local_noise_variance", "relative_l2"]

_FILTERS = {"matern": "matern", "heat": "heat", "diffusion": "heat"}
_AMBIENT = ("rbf", "matern", None)
AMBIENT_MAX_POINTS = 2000  #: the most distinct training points of a fit with the ambient part (module docstring)
NU_BOUNDS = (0.5, 16.0)  #: the interval of a learnt Matern smoothness (module docstring)


class OutOfReachWarning(UserWarning):
    r"""New points beyond the graph's reach (:meth:`RVGP.extend`): the prediction returns to the prior there."""


def _lengthscale_bounds(vals: np.ndarray, spectral_filter: str) -> tuple[float, float]:
    r"""The interval of :math:`\kappa` that keeps the filter identifiable with the kept eigenvalues ``vals``."""
    lam_k = max(float(vals[-1]), 1e-6)
    pos = vals[vals > 1e-8 * lam_k]
    lam_p = float(pos[0]) if pos.size else lam_k
    lo = math.sqrt(2 * 0.05 / lam_k)
    hi = math.sqrt(2 * NU_BOUNDS[0] / (0.01 * lam_p)) if spectral_filter == "matern" else math.sqrt(80 / lam_p)
    return lo, max(hi, 4 * lo)


def _ambient_kernel(points: np.ndarray, kind: str) -> tuple[ScaleKernel, tuple[float, float]]:
    r"""The ambient kernel :math:`\sigma_a^2 k(x, x')` on the cloud's coordinates: RBF or Matern-5/2 with one
    lengthscale in :math:`[\delta, 4 s]` (:math:`\delta` the median nearest-neighbour distance of the cloud,
    below which the part is a nugget; :math:`s` the root mean square distance to the centroid: longer lengthscales
    only make the kernel a low-degree polynomial with a huge variance, an ill-conditioned fit that took twice the
    iterations for the same error), started at :math:`s/2`, and :math:`\sigma_a^2 \ge 10^{-6}` (scaled units)."""
    rms = float(np.sqrt(np.mean(np.sum(np.square(points - points.mean(0)), axis=1))))
    nn = cKDTree(points).query(points, k=2)[0][:, 1]
    lo, hi = float(np.median(nn)), 4.0 * max(rms, float(np.median(nn)))
    lo = min(lo, hi / 40)
    con = Interval(lo, hi)
    base = RBFKernel(lengthscale_constraint=con) if kind == "rbf" else MaternKernel(2.5, lengthscale_constraint=con)
    base.lengthscale = torch.as_tensor(min(max(rms / 2, 1.01 * lo), hi / 1.01), dtype=torch.float64)
    return ScaleKernel(base, outputscale_constraint=GreaterThan(1e-6)), (lo, hi)


def _numpy(x: object) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)


def relative_l2(pred: object, true: object) -> float:
    r""":math:`\|\hat V - V\|_F / \|V\|_F` for ``(m, D)`` arrays or tensors."""
    p, t = _numpy(pred), _numpy(true)
    return float(np.linalg.norm(p - t) / max(np.linalg.norm(t), np.finfo(float).tiny))


def angular_errors(pred: object, true: object) -> np.ndarray:
    r"""Angles (degrees) between predicted and true vectors, ``(m,)`` numpy (rows of ``(m, D)`` arrays or
    tensors)."""
    p, t = _numpy(pred), _numpy(true)
    num = np.einsum("ij,ij->i", p, t)
    den = np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1), np.finfo(float).tiny)
    return np.degrees(np.arccos(np.clip(num / den, -1.0, 1.0)))


def _as_index(name: str, index: object, n: int) -> np.ndarray:
    arr = np.asarray(index.detach().cpu() if isinstance(index, Tensor) else index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"Boolean `{name}` must have shape ({n},), got {arr.shape}.")
        return np.flatnonzero(arr)
    if arr.ndim != 1:
        raise ValueError(f"`{name}` must be a 1-D array of point indices, got shape {arr.shape}.")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"`{name}` must hold integer point indices, got dtype {arr.dtype}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.allclose(arr, np.round(arr)):
            raise ValueError(f"`{name}` must hold integer point indices.")
    arr = np.round(arr).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(
            f"`{name}` must lie in [0, {n - 1}] (the cloud has n={n} points), got [{arr.min()}, {arr.max()}]."
        )
    return arr


def _plain(obj: Any) -> Any:
    r"""``obj`` with numpy scalars and arrays turned into Python numbers and tensors, values that a file read with
    ``weights_only=True`` can hold (anything else becomes its ``repr``)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if obj is None or isinstance(obj, bool | int | float | str | Tensor):
        return obj
    return repr(obj)


class RVGP(ModelContract, LowRankSpectralGP):
    r"""Vector-field GP on a point cloud (the connection-Laplacian spectral kernel); a BoTorch model.

    Example:
        >>> import os, tempfile, torch; from gpgeom.datasets.vector_fields import sphere_vector_field
        >>> s = sphere_vector_field(400, "mixed", seed=0)
        >>> train_idx, test_idx = torch.arange(0, 400, 3), torch.arange(1, 400, 3)
        >>> gp = RVGP(s.points, n_eigenpairs=24).fit(train_idx, s.vectors[train_idx], seed=0)
        >>> mean, std = gp.predict(test_idx, return_std=True)  # (m, 3) tensors each, tangent
        >>> mean.shape, std.shape
        (torch.Size([133, 3]), torch.Size([133, 3]))
        >>> new_points = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=-1)
        >>> mean_new, std_new = gp.predict_at(new_points, return_std=True)  # out-of-sample (Nystrom)
        >>> gp.save(path := os.path.join(tempfile.mkdtemp(), "rvgp.pt"))
        >>> bool(torch.equal(RVGP.load(path).predict(test_idx), mean))
        True

    Point indices (``fit``, ``predict``, BoTorch inputs) refer to the rows of :attr:`points` (the cloud after
    ``duplicates="drop"``, if used; the input rows are ``laplacian.index``). Posterior covariances have rank ``d``
    per point (no normal component), so drawing samples adds GPyTorch's jitter (a ``NumericalWarning``).

    Args:
        points: ``(n, D)`` point cloud (numpy, torch or sequence).
        n_eigenpairs: ``k``, the rank of the kernel (pick the end of a degenerate group, e.g. 48 on a sphere).
        dim: Manifold dimension ``d`` (``None``: estimated).
        k_neighbors: Neighbours of the kNN graph.
        spectral_filter: ``"matern"`` or ``"diffusion"`` (``"heat"``).
        nu, learn_nu: Matern smoothness (initial value) and whether it is learnt (then within ``NU_BOUNDS``).
        lengthscale: Initial :math:`\kappa` (default: :math:`2\nu/\kappa^2 = \lambda_k / 2`, i.e. the filter
            halves over the kept spectrum; diffusion: :math:`\kappa^2 \lambda_k / 2 = 2`), within the bounds of the
            module docstring (:attr:`lengthscale_bounds`).
        scalar: Model a scalar field with the graph Laplacian (outputs ``(m, 1)``).
        laplacian: A prebuilt :class:`~gpgeom.geometry.connection.ConnectionLaplacian` (then the geometry
            arguments are ignored).
        eigenpairs: Optional precomputed ``(eigenvalues (k,), eigenvectors (n d, k))`` of the Laplacian.
        eig_method: Eigensolver (:meth:`ConnectionLaplacian.eigenpairs`).
        dtype, device: Of the GP tensors (float64 default; ``"cuda"`` for the GPU).
        laplacian_kwargs: Passed to :func:`~gpgeom.geometry.connection.connection_laplacian` (``normalization``,
            ``weights``, ``frames``, ``duplicates``, ``on_disconnected``, ...).

    Attributes:
        fit_result_: The :class:`~gpgeom.engine.fitting.FitResult` of the last :meth:`fit`.
        train_index_: ``(m,)`` long indices of the training points of the last :meth:`fit`.
        laplacian: The :class:`~gpgeom.geometry.connection.ConnectionLaplacian` (graph, frames, transports).
        eigenvalues, eigenvectors: The ``k`` eigenpairs (numpy ``float64``; eigenvectors ``(n d, k)``).
        lengthscale_bounds: ``(lo, hi)`` of :math:`\kappa` (module docstring); a learnt :math:`\nu` is in ``NU_BOUNDS``.
        noise_estimate, normal_noise: Set by :meth:`fit`: the basis-free noise estimate that splits the residual
            variance into ``observation_noise_variance`` and ``model_error_variance``, and :math:`\sigma_\perp^2`.
        ambient_kernel, ambient_points: The ambient part's ``ScaleKernel`` and the ``(n, D)`` float64 coordinates it
            sees (``None`` with ``ambient=None``); ``ambient_lengthscale_bounds`` its lengthscale's ``(lo, hi)``.
        ambient_active: Whether the last :meth:`fit` used the ambient part (exact, at most ``AMBIENT_MAX_POINTS``
            distinct points); ``uses_ambient`` whether predictions do now.
        scalar, config: Whether the field is scalar; the constructor's arguments (what :meth:`load` rebuilds from).
    """

    _format_version = 3  # 2: bounded smoothness, noise split, tangent likelihood; 3: the ambient part

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
        ambient: str | None = "rbf",
        laplacian: ConnectionLaplacian | None = None,
        eigenpairs: tuple[object, object] | None = None,
        eig_method: str = "auto",
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        **laplacian_kwargs: Any,
    ) -> None:
        device = check_device("device", device)
        check_positive("n_eigenpairs", n_eigenpairs, integer=True)
        check_option("spectral_filter", spectral_filter, tuple(_FILTERS))
        check_option("ambient", ambient, _AMBIENT)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}.")
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
            vals, vecs = (_numpy(a) for a in eigenpairs)
            if vals.shape != (n_eigenpairs,) or vecs.shape != (lap.n * d, n_eigenpairs):
                raise ValueError(
                    f"`eigenpairs` must be ((k,), (n d, k)) = (({n_eigenpairs},), ({lap.n * d}, {n_eigenpairs})), "
                    f"got {vals.shape}, {vecs.shape}."
                )
        vals = np.maximum(vals, 0.0)
        phi = vecs.reshape(lap.n, 1, n_eigenpairs) if scalar else lap.lift(vecs)  # n x D_out x k
        filt = _FILTERS[spectral_filter]
        learn = learn_nu and filt == "matern"
        check_positive("nu", nu)
        if learn and not NU_BOUNDS[0] <= nu <= NU_BOUNDS[1]:
            raise ValueError(f"A learnt `nu` must start in {list(NU_BOUNDS)}, got {nu} (or pass learn_nu=False).")
        lo, hi = _lengthscale_bounds(vals, filt)
        lam_k = max(float(vals[-1]), 1e-6)
        if lengthscale is None:
            lengthscale = math.sqrt(4 * nu / lam_k) if filt == "matern" else math.sqrt(4 / lam_k)
            lengthscale = min(max(lengthscale, 1.01 * lo), hi / 1.01)
        check_positive("lengthscale", lengthscale)
        if not lo < lengthscale < hi:
            raise ValueError(
                f"`lengthscale`={lengthscale:.4g} lies outside ({lo:.4g}, {hi:.4g}), where the filter is identifiable "
                "with these eigenvalues (see the module docstring)."
            )
        base = SpectralKernel(
            torch.as_tensor(vals, dtype=dtype, device=device),
            torch.as_tensor(phi, dtype=dtype, device=device),
            spectral_filter=filt,
            nu=nu,
            learn_nu=learn,
            nu_constraint=Interval(*NU_BOUNDS) if learn else None,
            lengthscale_constraint=Interval(lo, hi),
        )
        base.lengthscale = torch.as_tensor(lengthscale, dtype=torch.float64).to(dtype=dtype, device=device)
        covar = ScaleKernel(base, outputscale_constraint=GreaterThan(1e-6)).to(dtype=dtype, device=device)
        frames = None if scalar else torch.as_tensor(lap.frames, dtype=dtype, device=device)
        amb_kernel = amb_points = None
        if ambient is not None:
            amb_kernel, amb_bounds = _ambient_kernel(lap.points, ambient)
            amb_points = torch.as_tensor(lap.points, dtype=dtype, device=device)
        super().__init__(covar, tangent_frames=frames, ambient_kernel=amb_kernel, ambient_points=amb_points)
        self.ambient_lengthscale_bounds = amb_bounds if ambient is not None else None
        self.lengthscale_bounds = (lo, hi)
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
            "ambient": ambient,
            "laplacian_kwargs": {k: v for k, v in laplacian_kwargs.items() if k != "frames"},
        }
        self.fit_result_: FitResult | None = None
        self.train_index_: Tensor | None = None
        self._tree: cKDTree | None = None

    # ------------------------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        r"""Number of points of the cloud."""
        return self.laplacian.n

    @property
    def points(self) -> np.ndarray:
        r"""``(n, D)`` the cloud (numpy ``float64``)."""
        return self.laplacian.points

    def _vectors(self, vectors: object, idx: np.ndarray) -> Tensor:
        r"""The observed vectors at ``idx`` as an ``(m, D_out)`` tensor of the model's dtype, checked."""
        v = self._as_tensor("vectors", vectors, finite=False)
        m, D = len(idx), self.output_dim
        if m != self.n and v.dim() >= 1 and v.shape[0] == self.n:
            v = v[torch.as_tensor(idx, device=v.device)]
        if self.scalar and v.dim() == 1:
            v = v[:, None]
        if tuple(v.shape) != (m, D):
            what = "values" if self.scalar else "vectors"
            raise ValueError(
                f"`{what}` must have shape ({m}, {D}) (one {'value' if self.scalar else 'ambient vector'} per "
                f"index; the cloud is {self.n} x {self.points.shape[1]}), got {tuple(v.shape)}."
            )
        bad = ~torch.isfinite(v)
        if bool(bad.any()):
            raise ValueError(f"`vectors` contain {int(bad.sum())} NaN or infinite value(s).")
        return v

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
        progress: bool | None = None,
    ) -> RVGP:
        r"""Learn :math:`\kappa, \nu, \sigma_f^2, \sigma^2` (and :math:`q(v)`) from observed vectors, by the tangent
        likelihood; then split :math:`\sigma^2` into noise and model error (module docstring, *Uncertainty*).
        Variational fits keep no data, so there the model-error term is not conditioned on the training points.

        Args:
            index: ``(m,)`` integer indices of the observed points (or an ``(n,)`` boolean mask); numpy or torch.
            vectors: ``(m, D)`` observed ambient vectors at those points (``(n, D)`` is also accepted, then
                rows ``index`` are taken); numpy or torch. Scalar model: ``(m,)`` or ``(m, 1)``.
            method: ``"exact"`` (L-BFGS-B on the Woodbury marginal likelihood, :math:`O(N k^2)` per step) or
                ``"variational"`` (Adam on minibatch ELBOs of ``batch_size`` points, ``epochs``).
            restarts, max_iter, lr, patience, seed: Passed to :func:`gpgeom.engine.fitting.fit`.
            progress: A progress bar: ``True``, ``False`` or ``None`` (shown in a terminal or notebook only;
                :mod:`gpgeom._progress`).

        Returns:
            ``self``; the :class:`~gpgeom.engine.fitting.FitResult` is in ``fit_result_``.
        """
        check_option("method", method, ("exact", "variational"))
        idx = _as_index("index", index, self.n)
        if len(idx) == 0:
            raise ValueError("`index` is empty: nothing to fit.")
        y = self._vectors(vectors, idx)
        scale = float(y.square().mean().sqrt())
        self.y_scale = scale if scale > 0 else 1.0
        ref = self.kernel.basis.eigenvectors
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=ref.device)
        ys = y / self.y_scale
        for name in ("_blocks", "_output_subset", "_wp_cache"):
            self.__dict__.pop(name, None)
        for name in ("q_mean", "q_raw_scale"):
            if name in self._parameters:
                self._parameters[name].requires_grad_(method == "variational")
        # the ambient part: exact fits on at most AMBIENT_MAX_POINTS distinct points (module docstring)
        self.ambient_active = bool(
            self.ambient_kernel is not None and method == "exact" and len(np.unique(idx)) <= AMBIENT_MAX_POINTS
        )
        if self.ambient_kernel is not None:
            self.ambient_kernel.requires_grad_(self.ambient_active)
        # the components across the frames: their own noise variance, closed-form maximum likelihood (module doc)
        self.noise_estimate, self.normal_noise = None, None
        D, d = self.output_dim, self.tangent_dim
        if d < D:
            e_perp = float(self._normal_energy(idx_t, ys).sum())
            self.normal_noise = max(e_perp / (len(idx) * (D - d)), 1e-12)
        if method == "exact":
            self.mode = "exact"
            self.data_index, self.data_y = idx_t, ys
            self._n_train_obs = int(ys.numel())
            result = fit(
                self.exact_loss,
                module=self,
                optimizer="lbfgs",
                restarts=restarts,
                max_iter=max_iter,
                seed=seed,
                progress=progress,
            )
        else:
            self.ensure_variational()
            self.mode = "variational"
            self._n_train_obs = int(ys.numel())
            self.data_index, self.data_y = idx_t[:0], ys[:0]
            gen = torch.Generator().manual_seed(0 if seed is None else seed)
            loader = Minibatches(idx_t, ys, batch_size, gen)
            self.init_variational(loader)
            result = fit(
                self.elbo_loss,
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
        self.noise_estimate = self._estimate_noise(idx, ys.detach().cpu().numpy().astype(np.float64))
        self.fit_result_ = result
        self.train_index_ = idx_t
        self._fitted = True
        self.eval()
        return self

    def _estimate_noise(self, idx: np.ndarray, ys: np.ndarray) -> float | None:
        r"""The observation-noise variance of the training data (scaled units) by :func:`local_noise_variance`,
        in the Laplacian's frames (scalar fields: PCA frames of the training points), or ``None``."""
        pts = self.points[idx]
        if not self.scalar:
            return local_noise_variance(pts, ys, self.laplacian.frames[idx])
        if len(idx) < 8:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            frames, _ = tangent_frames(pts, k_pca=min(15, len(idx)), fit="pca")
        return local_noise_variance(pts, ys[:, 0], frames)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _predict(
        self,
        X: Tensor,
        return_std: bool,
        return_cov: bool,
        observation_noise: bool,
        chunk_size: int,
        max_memory: int | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Marginals at internal inputs ``X`` (``(m, 1)`` indices or :meth:`extended_inputs`), in chunks of at
        most ``chunk_size`` points sized from the memory budget (:meth:`_bytes_per_point`), through the shared
        conditioned joint (so a conditioned model predicts with its extra data)."""
        self._check_fitted()
        check_positive("chunk_size", chunk_size, integer=True)
        self.eval()
        D = self.output_dim
        outputs = self._outputs
        step = min(chunk_size, chunk_size_for(self._bytes_per_point(new=False), max_memory, total=X.shape[-2]))
        step = min(step, 256) if return_cov else step
        means, seconds = [], []
        for start in range(0, X.shape[-2], step):
            Xc = X[..., start : start + step, :]
            if return_cov:
                mean, cov = self._conditioned(Xc, want_cov=True)
                q = Xc.shape[-2]
                cov = cov.reshape(*cov.shape[:-2], q, D, q, D)
                cov = torch.diagonal(cov, dim1=-4, dim2=-2).movedim(-1, -3)  # ... x q x D x D
                if observation_noise:
                    cov = cov + torch.diag_embed(self._noise_variance(Xc).to(cov).expand(*cov.shape[:-1]))
                seconds.append(cov[..., outputs, :][..., outputs])
            else:
                mean, var = self._conditioned(Xc, want_cov=False)
                if observation_noise:
                    var = var + self._noise_variance(Xc).to(var)
                seconds.append(var[..., outputs])
            means.append(mean[..., outputs])
        mean = torch.cat(means, dim=-2)
        if return_cov:
            return mean, torch.cat(seconds, dim=-3)
        if return_std:
            return mean, torch.cat(seconds, dim=-2).clamp_min(0.0).sqrt()
        return mean

    def predict(
        self,
        index: object | None = None,
        return_std: bool = False,
        observation_noise: bool = False,
        *,
        return_cov: bool = False,
        chunk_size: int = 4096,
        max_memory: int | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Posterior of the field at cloud points (super-resolution, inpainting).

        Args:
            index: ``(m,)`` point indices (or an ``(n,)`` boolean mask), numpy or torch; ``None``: all ``n`` points.
            return_std: Also return the ``(m, D)`` per-component standard deviations.
            observation_noise: Include the noise variance (predict observations rather than the field).
            return_cov: Return the ``(m, D, D)`` per-point covariances instead of standard deviations (rank ``d``,
                in the tangent plane, when ``observation_noise=False``).
            chunk_size: The most points per chunk.
            max_memory: Budget of the working memory of one chunk (bytes or a string such as ``"512MB"``;
                ``None``: :func:`gpgeom.engine.chunking.resolve_max_memory`), which sizes the chunks from the bytes
                a point costs (:meth:`_bytes_per_point`). The results do not depend on the chunks.

        Returns:
            The mean, an ``(m, D)`` tensor (``(m, 1)`` for a scalar field) tangent to the frames, of the model's
            dtype and device, in the original units; with ``return_std`` also the standard deviation; with
            ``return_cov`` ``(mean, cov)``. Equal to ``posterior(index[:, None]).mean`` / ``.variance.sqrt()``.

        Raises:
            gpgeom.errors.NotFittedError: Before :meth:`fit` or :meth:`load`.
        """
        self._check_fitted()
        idx = np.arange(self.n) if index is None else _as_index("index", index, self.n)
        X = torch.as_tensor(idx, device=self.device).to(self.dtype)[:, None]
        return self._predict(X, return_std, return_cov, observation_noise, chunk_size, max_memory)

    def predict_at(
        self,
        points: object,
        return_std: bool = False,
        observation_noise: bool = False,
        *,
        return_cov: bool = False,
        chunk_size: int = 4096,
        max_memory: int | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Posterior at new points, through :meth:`extend` (the module docstring): near the cloud the Nystrom
        extension, far from it the prior (mean 0, the prior variance restored).

        The extension and the prediction run chunk by chunk (at most ``chunk_size`` points, sized from
        ``max_memory`` with :meth:`_bytes_per_point`), so the working memory is bounded whatever ``m``: 1e5 new
        points on a 1e4-point sphere peaked at 2.35 GB of resident memory in one piece (``benchmarks/rvgp.py``).

        Args:
            points: ``(m, D)`` new points (numpy or torch).
            return_std, observation_noise, return_cov, chunk_size, max_memory: As in :meth:`predict`.

        Returns:
            As :meth:`predict`; the vectors are tangent to the new points' PCA frames.

        Warns:
            OutOfReachWarning: For points farther than :attr:`reach` from the cloud.
        """
        self._check_fitted()
        check_positive("chunk_size", chunk_size, integer=True)
        P = self._new_points(points)
        if len(P) == 0:
            raise ValueError("`points` must hold at least one point, got shape (0, D).")
        self._warn_out_of_reach(P, stacklevel=3)
        step = min(chunk_size, chunk_size_for(self._bytes_per_point(new=True), max_memory, total=len(P)))
        parts = []
        for sl in chunk_slices(len(P), step):
            phi, frames, gamma, key = self._extend(P[sl], stacklevel=3, warn=False)
            if self.scalar:
                proj = torch.ones(len(phi), 1, 1, dtype=phi.dtype, device=phi.device)
            else:
                proj = frames @ frames.mT
            coords = None if self.ambient_points is None else torch.as_tensor(P[sl], dtype=self.dtype).to(phi)
            X = self.extended_inputs(phi, proj, 1.0 - gamma.square(), key, coords)
            parts.append(self._predict(X, return_std, return_cov, observation_noise, step, max_memory))
        if not (return_std or return_cov):
            return torch.cat(parts, dim=-2)
        return torch.cat([p[0] for p in parts], dim=-2), torch.cat([p[1] for p in parts], dim=-3 if return_cov else -2)

    def _bytes_per_point(self, new: bool) -> int:
        r"""Working bytes one point of a prediction chunk costs: the rows ``(D, k)`` of the basis and the internal
        inputs, the dense algebra's cross-covariance with the ``N d`` tangent components of the training observations
        and its triangular solve (with the ambient part), and for a new point (:meth:`predict_at`) the extension's
        transported neighbour coefficients ``(k_nn, d, k)`` (float64) and its local fit over its
        :func:`~gpgeom.geometry.tangent.fit_size` neighbours; each counted a few times for the temporaries."""
        D, k = self.output_dim, self.kernel.num_eigenpairs
        d = 1 if self.scalar else self.laplacian.dim
        size = element_size(self.dtype)
        per = size * (8 * D * k + 4 * D * D + 16)
        if self.uses_ambient:
            per += 8 * 4 * D * d * int(self.data_index.shape[-1]) * max(1, math.prod(self.data_index.shape[:-1]))
        if new:
            lap = self.laplacian  # the polynomial fit's own neighbourhood (up to 28 terms)
            kp = max(lap.k_pca, lap.graph.k, fit_size(lap.frame_fit, lap.k_pca, d) if lap.frame_fit != "given" else 0)
            kk = lap.graph.k
            per += 8 * (3 * kk * d * (k + 2 * d) + 6 * kp * (D + 32))
        return per

    @property
    def reach(self) -> float:
        r""":math:`r`, the median distance of a cloud point to its ``k``-th graph neighbour: new points within it of
        the cloud get the full Nystrom features, farther ones tapered ones (the module docstring)."""
        return float(np.median(self.laplacian.graph.rho))

    def extend(self, points: object) -> tuple[Tensor, Tensor]:
        r"""Out-of-sample extension of the lifted eigenvectors (Nystrom with Procrustes transport, tapered beyond
        :attr:`reach`).

        Args:
            points: ``(m, D)`` new points (numpy or torch).

        Returns:
            ``phi`` ``(m, D_out, k)``, the basis at the new points times the taper :math:`\gamma`, and ``frames``
            ``(m, D, d)``, their tangent frames (``(m, D, 0)`` for a scalar model): tensors of the model's dtype and
            device.

        Raises:
            ValueError: For points of the wrong shape or non-finite values, or a Laplacian with density
                normalisation (``alpha > 0``), which the extension does not cover.

        Warns:
            OutOfReachWarning: For points farther than :attr:`reach` from the cloud, with their count.
        """
        phi, frames, _, _ = self._extend(points, stacklevel=3)
        return phi, frames

    def _new_points(self, points: object) -> np.ndarray:
        r"""``points`` as a float64 ``(m, D)`` array, validated for the extension."""
        lap = self.laplacian
        P = np.asarray(_numpy(points), dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != lap.points.shape[1]:
            raise ValueError(f"`points` must have shape (m, {lap.points.shape[1]}), got {P.shape}.")
        if not np.all(np.isfinite(P)):
            raise ValueError(f"`points` must be finite, got {int((~np.isfinite(P)).sum())} NaN or infinite value(s).")
        if not np.allclose(lap.self_weights, 1.0):
            raise ValueError("The out-of-sample extension needs a Laplacian without density normalisation (alpha=0).")
        if self._tree is None:
            self._tree = cKDTree(lap.points)
        return P

    def _warn_out_of_reach(self, P: np.ndarray, stacklevel: int) -> None:
        r"""One :class:`OutOfReachWarning` with the count of the points ``(m, D)`` beyond :attr:`reach`."""
        r = self.reach
        far = self._tree.query(P, k=1)[0].reshape(len(P)) > r
        if np.any(far):
            warnings.warn(
                f"{int(far.sum())} of {len(P)} new points lie beyond the graph's reach (farther than r={r:.3g}, the "
                "median k-th-neighbour distance, from every cloud point): their features are tapered, and the "
                "prediction returns to the prior (mean 0, prior variance) with the distance.",
                OutOfReachWarning,
                stacklevel=stacklevel,
            )

    def _extend(self, points: object, stacklevel: int, warn: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r""":meth:`extend`, the taper :math:`\gamma` ``(m,)`` and the cloud point each point is (or -1) ``(m,)``."""
        lap = self.laplacian
        P = self._new_points(points)
        if warn:
            self._warn_out_of_reach(P, stacklevel + 1)
        kk = lap.graph.k
        dist, nb = self._tree.query(P, k=kk)
        dist, nb = dist.reshape(len(P), kk), nb.reshape(len(P), kk)
        r = self.reach
        gamma = np.exp(-0.5 * np.square(np.maximum(dist[:, 0] - r, 0.0) / r))
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
            if lap.k_pca:  # the Laplacian's kind of frames (frames_at), else PCA of the graph neighbours
                frames = frames_at(lap.points, P, lap.k_pca, d, lap.frame_fit)
            else:
                Y = lap.points[nb] - lap.points[nb].mean(1, keepdims=True)
                frames = np.swapaxes(np.linalg.svd(Y, full_matrices=False)[2][:, :d, :], 1, 2)  # m x D x d
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
        # a point of the cloud keeps its own basis values and frame
        same = dist[:, 0] <= 1e-12 * max(1.0, float(np.abs(lap.points).max()))
        out = torch.as_tensor(phi * gamma[:, None, None], dtype=self.dtype, device=self.device)
        if np.any(same):
            own = torch.as_tensor(nb[same, 0], device=self.device)
            out[torch.as_tensor(np.flatnonzero(same), device=self.device)] = self.kernel.basis.eigenvectors[own]
            if not self.scalar:
                frames[same] = lap.frames[nb[same, 0]]
        as_t = lambda a: torch.as_tensor(a, dtype=self.dtype, device=self.device)  # noqa: E731
        return out, as_t(frames), as_t(gamma), as_t(np.where(same, nb[:, 0], -1))

    # ------------------------------------------------------------------------------------------------------------
    # the model contract: devices, files, repr
    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        r"""The data and conditioning tensors move with ``nn.Module.to`` (``LowRankSpectralGP._apply``); the
        geometry (cloud, graph, frames, eigenpairs, KD-tree) stays in numpy ``float64`` on the CPU, where the
        extension computes before casting to the model's dtype; only the cached posterior is dropped."""
        self.__dict__.pop("_wp_cache", None)

    def _get_state(self) -> dict[str, Any]:
        basis = "covar_module.base_kernel.basis."
        return {
            "laplacian": self.laplacian.state(),
            "eigenvalues": torch.from_numpy(np.ascontiguousarray(self.eigenvalues)),
            "eigenvectors": torch.from_numpy(np.ascontiguousarray(self.eigenvectors)),
            "config": _plain(self.config),
            "dtype": str(self.dtype).replace("torch.", ""),
            # the basis buffers are rebuilt from the eigenpairs and the frames (bitwise the same)
            "module_state": {k: v for k, v in self.state_dict().items() if not k.startswith(basis)},
            "mode": self.mode,
            "y_scale": float(self.y_scale),
            "data_index": self.data_index,
            "data_y": self.data_y,
            "n_train_obs": int(self._n_train_obs),
            "train_index": self.train_index_,
            "fit_result": None if self.fit_result_ is None else _plain(dataclasses.asdict(self.fit_result_)),
            "normal_noise": self.normal_noise,
            "noise_estimate": self.noise_estimate,
            "ambient_active": bool(self.ambient_active),
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any], **kwargs: Any) -> RVGP:
        if kwargs:
            raise TypeError(f"RVGP.load takes no extra arguments (the file holds everything), got {sorted(kwargs)}.")
        cfg = state["config"]
        lap = ConnectionLaplacian.from_state(state["laplacian"])
        model = cls(
            lap.points,
            n_eigenpairs=cfg["n_eigenpairs"],
            spectral_filter=cfg["spectral_filter"],
            nu=cfg["nu"],
            learn_nu=cfg["learn_nu"],
            scalar=cfg["scalar"],
            ambient=cfg.get("ambient"),
            laplacian=lap,
            eigenpairs=(state["eigenvalues"], state["eigenvectors"]),
            dtype=getattr(torch, state["dtype"]),
        )
        model.config = cfg
        if state["mode"] == "variational":
            model.ensure_variational()
        module_state = model.state_dict()
        module_state.update(state["module_state"])
        model.load_state_dict(module_state)
        model.mode = state["mode"]
        model.y_scale = state["y_scale"]
        model.data_index = state["data_index"].to(model.device)
        model.data_y = state["data_y"].to(device=model.device, dtype=model.dtype)
        model._n_train_obs = state["n_train_obs"]
        model.normal_noise, model.noise_estimate = state["normal_noise"], state["noise_estimate"]
        model.ambient_active = bool(state.get("ambient_active", False))
        ti = state["train_index"]
        model.train_index_ = None if ti is None else ti.to(model.device)
        fr = state["fit_result"]
        model.fit_result_ = None if fr is None else FitResult(**fr)
        model._fitted = True
        return model.eval()

    def _repr_fields(self) -> dict[str, Any]:
        lap = self.laplacian
        fields: dict[str, Any] = {
            "n": lap.n,
            "D": lap.points.shape[1],
            "d": 0 if self.scalar else lap.dim,
            "k": self.kernel.num_eigenpairs,
        }
        if self.scalar:
            fields["scalar"] = True
        fields["filter"] = self.kernel.spectral_filter
        s2 = self.y_scale**2
        with torch.no_grad():
            fields["kappa"] = self.kernel.lengthscale.detach().squeeze()
            if self.kernel.nu is not None:
                fields["nu"] = self.kernel.nu.detach().squeeze()
            # in the original units (the parameters live in units of y_scale)
            fields["outputscale"] = self.covar_module.outputscale.detach().squeeze() * s2
            if self.ambient_kernel is not None:
                fields["ambient"] = self.config["ambient"] if self.ambient_active else None
                fields["ambient_lengthscale"] = self.ambient_kernel.base_kernel.lengthscale.detach().squeeze()
                fields["ambient_outputscale"] = self.ambient_kernel.outputscale.detach().squeeze() * s2
            fields["noise"] = self.observation_noise_variance * s2
            fields["model_error"] = self.model_error_variance * s2
        if self.is_fitted:
            fields["n_train"] = self._n_train_obs // max(self.output_dim, 1)
            fields["mode"] = self.mode
        fields["dtype"] = self.dtype
        return fields
