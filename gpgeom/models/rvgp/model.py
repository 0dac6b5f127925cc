r"""The RVGP model: :class:`RVGP` builds the geometry and the kernel of :mod:`gpgeom.models.rvgp` from a point
cloud, fits them to observed vectors, predicts at cloud points and new points, and keeps the model contract.

**Uncertainty.** Three fixes of the calibration of the rank-``k`` posterior (measured on noise-free fields: 39 %
of the components inside the latent 2-sigma band on a torus; :class:`LowRankSpectralGP` has the algebra, its noise
model in :mod:`~gpgeom.botorch.low_rank_noise`):

* *tangent likelihood*: observed vectors are tangent up to the frames' error, so their components across the frames
  get their own noise variance (closed-form maximum likelihood, fixed during the fit); one isotropic variance
  underestimated the in-plane residual by ``d/D``;
* *model error*: the truncated spectrum and the discretisation error of the graph eigenvectors put part of the
  field outside the span of the ``k`` features (on a noise-free torus 20 % of it in L2 with 60 eigenpairs, on a
  sphere a floor of 3.7 % spread evenly over the higher modes, so no filter's tail accounts for it), and the
  likelihood learnt it as noise. :meth:`RVGP.fit` estimates the observation noise without the basis
  (:func:`local_noise_variance`, neighbours within each graph component) and moves the rest of the residual
  variance into the latent variance, in the tangent plane;
* *far points* (:mod:`~gpgeom.models.rvgp.extension`): the features decay and the prior variance they carried is
  restored.

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

Bad input: a cloud with no more rows than ``k_neighbors`` (named as likely transposed when its transpose would
do), vectors not of shape ``(len(index), D)`` (or ``(n, D)`` in cloud order when ``len(index) != n``; a permuted full
index with ``(n, D)`` vectors is ambiguous and refused), indices out of range or not integers,
non-finite values, a manifold dimension above ``D``, duplicate points (``ValueError`` from the geometry, or
``duplicates="drop"``), a disconnected graph (a warning from the geometry; the spectrum is the union of the
components' spectra, so every component gets its own low modes, and the ambient part is zero between components:
no information passes between them), ``n_eigenpairs`` above ``n d``: each a clear
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
from gpytorch.kernels import ScaleKernel
from scipy.spatial import cKDTree
from torch import Tensor

from gpgeom._modes import in_eval_mode
from gpgeom._progress import StageBar
from gpgeom._validation import as_tensor, check_device, check_option, check_positive, first_bad
from gpgeom._warnings import quiet, user_stacklevel
from gpgeom.base import ModelContract
from gpgeom.botorch.low_rank import LowRankSpectralGP, Minibatches
from gpgeom.engine.chunking import chunk_size_for, chunk_slices, element_size, resolve_max_memory
from gpgeom.engine.fitting import FitResult, fit
from gpgeom.geometry.connection import (
    CONNECTION_STAGES,
    GRAPH_STAGES,
    ConnectionLaplacian,
    connection_laplacian,
    graph_laplacian,
)
from gpgeom.geometry.tangent import fit_size, local_noise_variance, tangent_frames
from gpgeom.kernels.spectral import SpectralKernel
from gpgeom.models.rvgp._inputs import _as_cloud, _as_index, _numpy
from gpgeom.models.rvgp.ambient import (
    _AMBIENT,
    AMBIENT_MAX_POINTS,
    _ambient_inputs,
    _ambient_kernel,
    _ambient_origin,
)
from gpgeom.models.rvgp.extension import _NystromExtension
from gpgeom.models.rvgp.smoothness import _FILTERS, NU_BOUNDS, _lengthscale_bounds

__all__ = ["RVGP"]

#: The stages of :meth:`RVGP.fit` (its progress bar), in order; the constructor's are those of the Laplacian
#: (``CONNECTION_STAGES`` of :mod:`gpgeom.geometry.connection`, scalar fields ``GRAPH_STAGES``), then ``"eigenpairs"``.
FIT_STAGES = ("hyperparameter fit", "noise estimate")


def _permutes(idx: np.ndarray) -> bool:
    r"""Whether the ``(n,)`` indices ``idx`` are a permutation of ``0..n-1`` other than the identity."""
    return not np.array_equal(idx, np.arange(len(idx))) and np.array_equal(np.sort(idx), np.arange(len(idx)))


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


def _check_chunking(chunk_size: object, max_memory: object) -> None:
    r"""``chunk_size`` (a positive int) and ``max_memory`` (bytes, a string such as ``"1GB"`` or ``None``), checked
    as the chunked prediction reads them (a ``TypeError`` or ``ValueError`` naming the argument)."""
    check_positive("chunk_size", chunk_size, integer=True)
    resolve_max_memory(max_memory)


class RVGP(ModelContract, LowRankSpectralGP, _NystromExtension):
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
    per point (no normal component; plus :math:`\beta (I - P_i)` where the nugget of the frames' error is positive,
    :mod:`gpgeom.models.rvgp`, *Tangency*), so drawing samples adds GPyTorch's jitter (a ``NumericalWarning``).

    Args:
        points: ``(n, D)`` point cloud, one point per row, ``n > k_neighbors`` (numpy, torch or sequence); fewer
            rows are refused, as likely transposed when ``D > n`` and ``D > k_neighbors``.
        n_eigenpairs: ``k``, the rank of the kernel (pick the end of a degenerate group, e.g. 48 on a sphere).
        dim: Manifold dimension ``d`` (``None``: estimated).
        k_neighbors: Neighbours of the kNN graph.
        spectral_filter: ``"matern"`` or ``"diffusion"`` (``"heat"``).
        nu, learn_nu: Matern smoothness (initial value) and whether it is learnt (then within ``NU_BOUNDS``).
        lengthscale: Initial :math:`\kappa` (default: :math:`2\nu/\kappa^2 = \lambda_k / 2`, i.e. the filter
            halves over the kept spectrum; diffusion: :math:`\kappa^2 \lambda_k / 2 = 2`), within the bounds of
            :mod:`~gpgeom.models.rvgp.smoothness` (:attr:`lengthscale_bounds`).
        scalar: Model a scalar field with the graph Laplacian (outputs ``(m, 1)``).
        ambient: ``"rbf"`` (default), ``"matern"`` or ``None``: the stationary kernel on the cloud's coordinates
            (projected onto the frames for a vector field) that is added to the spectral one in exact fits on at most
            ``AMBIENT_MAX_POINTS`` (2000) distinct training points (dense algebra there; ``None``: the rank-``k``
            spectral kernel alone, trained in weight space; :mod:`~gpgeom.models.rvgp.ambient`).
        laplacian: A prebuilt :class:`~gpgeom.geometry.connection.ConnectionLaplacian` (then the geometry
            arguments are ignored).
        eigenpairs: Optional precomputed ``(eigenvalues (k,), eigenvectors (n d, k))`` of the Laplacian.
        eig_method: Eigensolver (:meth:`ConnectionLaplacian.eigenpairs`).
        dtype, device: Of the GP tensors (float64 default; ``"cuda"`` for the GPU).
        progress: A bar of the geometry's stages (neighbour graph, frames, connection or graph Laplacian,
            eigenpairs: on a large cloud the longer part of building and fitting a model): ``True``, ``False`` or
            ``None`` (shown in a terminal or notebook only; :mod:`gpgeom._progress`).
        laplacian_kwargs: Passed to :func:`~gpgeom.geometry.connection.connection_laplacian` (``normalization``,
            ``weights``, ``frames``, ``duplicates``, ``on_disconnected``, ...).

    Attributes:
        fit_result_: The :class:`~gpgeom.engine.fitting.FitResult` of the last :meth:`fit`.
        train_index_: ``(m,)`` long indices of the training points of the last :meth:`fit`.
        laplacian: The :class:`~gpgeom.geometry.connection.ConnectionLaplacian` (graph, frames, transports).
        eigenvalues, eigenvectors: The ``k`` eigenpairs (numpy ``float64``; eigenvectors ``(n d, k)``).
        lengthscale_bounds: ``(lo, hi)`` of :math:`\kappa` (:mod:`~gpgeom.models.rvgp.smoothness`); a learnt
            :math:`\nu` is in ``NU_BOUNDS``.
        noise_estimate, normal_noise: Set by :meth:`fit`: the basis-free noise estimate that splits the residual
            variance into ``observation_noise_variance`` and ``model_error_variance``, and :math:`\sigma_\perp^2`.
            ``noise_estimate`` is ``None`` when no graph component has the 64 distinct training points of a local
            fit (:func:`local_noise_variance`, *Locality*): the noise cannot be told from the field's variation, the
            model-error term is off and the residual variance is all observation noise (set ``noise_estimate``,
            scaled by ``y_scale**2``, where the noise is known).
        ambient_kernel, ambient_points: The ambient part's ``ScaleKernel`` and the ``(n, D + 1)`` float64 inputs it
            sees, the coordinates and the graph component label (``None`` with ``ambient=None``; it is zero between
            components, :mod:`~gpgeom.models.rvgp.ambient`); ``ambient_lengthscale_bounds`` its lengthscale's
            ``(lo, hi)``.
        ambient_active: Whether the last :meth:`fit` used the ambient part (exact, at most ``AMBIENT_MAX_POINTS``
            distinct points); ``uses_ambient`` whether predictions do now.
        scalar, config: Whether the field is scalar; the constructor's arguments (what :meth:`load` rebuilds from).
        y_offset, y_scale: Set by :meth:`fit`: the observations are ``(y - y_offset) / y_scale`` inside the model. A
            scalar field's ``y_offset`` is its training mean and ``y_scale`` the standard deviation about it (as
            BoTorch's ``Standardize``); a vector field's ``y_offset`` is 0 and ``y_scale`` its root mean square
            (:mod:`gpgeom.models.rvgp`, *Targets*).
    """

    # 2: bounded smoothness, noise split, tangent likelihood; 3: the ambient part; 4: scalar targets centred
    # (``y_offset``; data_y less it): a reader of format 3 would drop the offset and predict means off by it
    _format_version = 4
    _oldest_format_version = 3  # read with y_offset 0, as written

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
        progress: bool | None = None,
        **laplacian_kwargs: Any,
    ) -> None:
        device = check_device("device", device)
        check_positive("n_eigenpairs", n_eigenpairs, integer=True)
        check_option("spectral_filter", spectral_filter, tuple(_FILTERS))
        check_option("ambient", ambient, _AMBIENT)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}.")
        stages = () if laplacian is not None else GRAPH_STAGES if scalar else CONNECTION_STAGES
        stages += ("eigenpairs",) if eigenpairs is None else ()
        with StageBar(stages, desc="RVGP geometry", progress=progress) as bar:  # no stage (a loaded model): no bar
            if laplacian is None:
                check_positive("k_neighbors", k_neighbors, integer=True)
                points = _as_cloud(points, k_neighbors)
                if scalar:
                    laplacian = graph_laplacian(points, k_neighbors, **laplacian_kwargs, _stages=bar)
                else:
                    laplacian = connection_laplacian(points, k_neighbors, dim=dim, **laplacian_kwargs, _stages=bar)
            elif not isinstance(laplacian, ConnectionLaplacian):
                raise TypeError(f"`laplacian` must be a ConnectionLaplacian, got {type(laplacian).__name__}.")
            lap = laplacian
            d = 1 if scalar else lap.dim
            if n_eigenpairs > lap.n * d:
                raise ValueError(f"`n_eigenpairs`={n_eigenpairs} exceeds n*d={lap.n * d} (the Laplacian's size).")
            if eigenpairs is None:
                bar.start("eigenpairs")
                vals, vecs = lap.eigenpairs(n_eigenpairs, method=eig_method)
        if eigenpairs is not None:
            vals, vecs = (_numpy(a) for a in eigenpairs)
            if vals.shape != (n_eigenpairs,) or vecs.shape != (lap.n * d, n_eigenpairs):
                raise ValueError(
                    f"`eigenpairs` must be ((k,), (n d, k)) = (({n_eigenpairs},), ({lap.n * d}, {n_eigenpairs})), "
                    f"got {vals.shape}, {vecs.shape}."
                )
            tol = 1e-8 * max(1.0, float(np.abs(vals).max()))
            if float(vals.min()) < -tol:  # round-off aside, a negative eigenvalue is the wrong sign convention
                raise ValueError(
                    f"`eigenpairs` must hold the eigenvalues of the (positive semi-definite) Laplacian, >= 0: the "
                    f"smallest is {float(vals.min()):.3g}, beyond round-off ({tol:.1e}). Check the sign convention "
                    "(L = D - A, smallest eigenvalues first)."
                )
        vals = np.maximum(vals, 0.0)  # round-off below zero
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
                "with these eigenvalues (see the docstring of gpgeom.models.rvgp.smoothness)."
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
        # float64 frames: the model keeps them for its dense algebra and rounds its own copy to `dtype`
        frames = None if scalar else torch.as_tensor(lap.frames, dtype=torch.float64, device=device)
        amb_kernel = amb_points = None
        if ambient is not None:
            labels = lap.graph.labels
            amb_kernel, amb_bounds = _ambient_kernel(lap.points, ambient, labels)
            amb_points = _ambient_inputs(lap.points, labels, _ambient_origin(lap.points))
            amb_points = torch.as_tensor(amb_points, dtype=torch.float64, device=device)
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
        r"""The observed vectors at ``idx`` as an ``(m, D_out)`` float64 tensor on the model's device (a scalar
        field is standardised in float64 before it reaches the model's dtype), checked: one row per index, or the
        cloud's ``n`` rows in order when ``m != n`` (rows ``idx`` taken); with ``m == n`` the rows are one per index,
        and a permutation of the points other than ``0..n-1`` is refused (:meth:`fit`)."""
        v = as_tensor("vectors", vectors, dtype=torch.float64, device=self.device, finite=False)
        m, D = len(idx), self.output_dim
        if m != self.n and v.dim() >= 1 and v.shape[0] == self.n:
            v = v[torch.as_tensor(idx, device=v.device)]
        elif v.dim() >= 1 and v.shape[0] == m == self.n and _permutes(idx):
            what = "values" if self.scalar else "vectors"
            raise ValueError(
                f"`index` is a permutation of all n={m} points, so `{what}` of shape {tuple(v.shape)} could be one "
                "row per index or the cloud's rows in order, and the two fits differ. Sort the index: "
                f"`fit(np.sort(index), {what})` for rows in cloud order, or `order = np.argsort(index); "
                f"fit(index[order], {what}[order])` for rows per index (the fit does not depend on the order)."
            )
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
            raise ValueError(
                f"`vectors` contain {int(bad.sum())} NaN or infinite value(s){first_bad(v, bad)} (row, component): "
                "remove those rows (and their indices) first."
            )
        return v.detach()  # training data: the loss must not differentiate (twice) through the caller's graph

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
            vectors: ``(m, D)`` observed ambient vectors at those points, one row per index (scalar model:
                ``(m,)`` or ``(m, 1)``); numpy or torch. When ``m != n`` the whole field in cloud order, ``(n, D)``,
                is also accepted, and its rows ``index`` are taken. When ``m == n`` the rows are always one per
                index; if ``index`` is then a permutation of the points other than ``0..n-1`` the reading is
                ambiguous (one row per index or cloud order give different fits) and refused: sort the index
                (with the rows, if they are per index).
            method: ``"exact"`` (L-BFGS-B on the Woodbury marginal likelihood, :math:`O(N k^2)` per step) or
                ``"variational"`` (Adam on minibatch ELBOs of ``batch_size`` points, ``epochs``).
            restarts, max_iter, lr, patience, seed: Passed to :func:`gpgeom.engine.fitting.fit`. ``seed`` also
                sets the minibatch order of ``method="variational"`` (attempt ``k`` from ``(seed, k)``); ``None``
                draws both the restarts' starting points and the minibatch order from torch's global generator.
            batch_size, epochs: Minibatch size (points) and epochs of ``method="variational"``.
            progress: A bar of the stages (hyperparameter fit, with the engine's bar of each attempt, then the noise
                estimate): ``True``, ``False`` or ``None`` (shown in a terminal or notebook only;
                :mod:`gpgeom._progress`).

        Returns:
            ``self``; the :class:`~gpgeom.engine.fitting.FitResult` is in ``fit_result_``.

        A fit that raises (bad input, an exception of the loss, ``KeyboardInterrupt``) leaves the model as it was
        before the call (:meth:`~gpgeom.ModelContract._kept_on_error`): parameters, data, scales and caches.
        """
        # a fit that raises leaves the model as it was (gpgeom.base)
        with self._kept_on_error(), StageBar(FIT_STAGES, desc="RVGP fit", progress=progress) as bar:
            check_option("method", method, ("exact", "variational"))
            idx = _as_index("index", index, self.n)
            if len(idx) == 0:
                raise ValueError("`index` is empty: nothing to fit.")
            y = self._vectors(vectors, idx)  # float64
            if self.scalar:
                # centred on their training mean, then scaled by their standard deviation (module docstring of
                # gpgeom.models.rvgp, *Targets*; correctly rounded sums: the same numbers whatever the order)
                flat = y.cpu().numpy().ravel()
                offset = math.fsum(flat) / flat.size
                scale = math.sqrt(math.fsum(np.square(flat - offset)) / flat.size)
                if scale == 0:  # constant values: their root mean square (the scale of the old fits)
                    scale = math.sqrt(math.fsum(np.square(flat)) / flat.size)
            else:
                # vector fields: scaled by their root mean square in the model's dtype, as before the scalar
                # offset, so that their fits and predictions stay the same bit for bit
                offset, y = 0.0, y.to(self.dtype)
                scale = float(y.square().mean().sqrt())
            if scale == 0:
                warnings.warn(
                    "Every observed vector is zero: there is no scale to normalise them by, so the model predicts zero "
                    "with a standard deviation set by the priors in the units of `vectors`.",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
            self.y_scale = scale if scale > 0 else 1.0
            self.y_offset = offset
            ref = self.kernel.basis.eigenvectors
            idx_t = torch.as_tensor(idx, dtype=torch.long, device=ref.device)
            ys = ((y - offset) / self.y_scale).to(self.dtype) if self.scalar else y / self.y_scale
            for name in ("_blocks", "_output_subset", "_wp_cache"):
                self.__dict__.pop(name, None)
            for name in ("q_mean", "q_raw_scale"):
                if name in self._parameters:
                    self._parameters[name].requires_grad_(method == "variational")
            # the ambient part: exact fits on at most AMBIENT_MAX_POINTS distinct points (rvgp.ambient)
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
            bar.start("hyperparameter fit")
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
                # the fit reseeds the loader at every attempt from (seed, attempt) (Minibatches.reseed); the start of
                # q(v) takes the points in order (its sums do not depend on a shuffle)
                loader = Minibatches(idx_t, ys, batch_size)
                self.init_variational(
                    (idx_t[s : s + batch_size], ys[s : s + batch_size]) for s in range(0, len(idx_t), batch_size)
                )
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
            bar.start("noise estimate")
            self.noise_estimate = self._estimate_noise(
                idx, ((y - offset) / self.y_scale).cpu().numpy().astype(np.float64)
            )
            self.fit_result_ = result
            self.train_index_ = idx_t
            self._fitted = True
            self.eval()
            return self

    def _estimate_noise(self, idx: np.ndarray, ys: np.ndarray) -> float | None:
        r"""The observation-noise variance of the training data (scaled units) by :func:`local_noise_variance`,
        in the Laplacian's frames (scalar fields: PCA frames of each component's training points, where it has at
        least 8), or ``None``. Neighbours are taken within the training point's graph component: the field has no
        relation between components (a component with few training points borrowed neighbours from another). ``None``
        without a component of enough distinct training points for local fits (the model-error term is then off)."""
        pts, labels = self.points[idx], self.laplacian.graph.labels[idx]
        if not self.scalar:
            return local_noise_variance(pts, ys, self.laplacian.frames[idx], labels=labels)
        parts = []  # (estimate, its number of training points) per component
        for lab in np.unique(labels):
            own = np.flatnonzero(labels == lab)
            if len(own) < 8:
                continue
            with quiet(r"\d+ of \d+ PCA neighbourhoods span fewer", UserWarning):  # this thread's only
                frames, _ = tangent_frames(pts[own], k_pca=min(15, len(own)), fit="pca")
            est = local_noise_variance(pts[own], ys[own, 0], frames)
            parts += [] if est is None else [(est, len(own))]
        if len(parts) <= 1:
            return parts[0][0] if parts else None
        return sum(e * w for e, w in parts) / sum(w for _, w in parts)

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    @in_eval_mode
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
                    cov = cov + self._noise_covariance(Xc).to(cov)
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
                in the tangent plane, when ``observation_noise=False``, but for the nugget of the frames' error,
                :math:`\beta (I - P)`, where it is positive: :mod:`gpgeom.models.rvgp`, *Tangency*).
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
        _check_chunking(chunk_size, max_memory)  # here, so that no point fails as one does
        idx = np.arange(self.n) if index is None else _as_index("index", index, self.n)
        if len(idx) == 0:  # no point: the results at point 0, sliced to none (their shapes, dtype and device)
            out = self.predict(np.zeros(1, dtype=np.int64), return_std, observation_noise, return_cov=return_cov)
            return tuple(t[:0] for t in out) if isinstance(out, tuple) else out[:0]
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
        r"""Posterior at new points, through :meth:`extend` (:mod:`~gpgeom.models.rvgp.extension`): near the
        cloud the Nystrom extension, far from it the prior (mean 0, a scalar field's training mean, the prior
        variance restored).

        The extension and the prediction run chunk by chunk (at most ``chunk_size`` points, sized from
        ``max_memory`` with :meth:`_bytes_per_point`), so the working memory is bounded whatever ``m``: 1e5 new
        points on a 1e4-point sphere peaked at 2.35 GB of resident memory in one piece (``benchmarks/rvgp.py``).

        Args:
            points: ``(m, D)`` new points (numpy or torch).
            return_std, observation_noise, return_cov, chunk_size, max_memory: As in :meth:`predict`.

        Returns:
            As :meth:`predict`; the vectors are tangent to the new points' PCA frames. No point (``(0, D)``): the
            empty results of :meth:`predict` on ``[]`` (``(0, D)``, ``(0, D, D)``).

        Warns:
            OutOfReachWarning: For points farther than :attr:`reach` from the cloud.
        """
        self._check_fitted()
        _check_chunking(chunk_size, max_memory)  # here, so that no point fails as one does
        P = self._new_points(points)
        if len(P) == 0:  # no point: as predict([]), the empty results of the model's dtype and device
            return self.predict([], return_std, observation_noise, return_cov=return_cov)
        self._warn_out_of_reach(P)
        step = min(chunk_size, chunk_size_for(self._bytes_per_point(new=True), max_memory, total=len(P)))
        parts = []
        origin = _ambient_origin(self.laplacian.points) if self.ambient_points is not None else None
        for sl in chunk_slices(len(P), step):
            phi, frames, gamma, key = self._extend(P[sl], warn=False)
            if self.scalar:
                proj = torch.ones(len(phi), 1, 1, dtype=phi.dtype, device=phi.device)
            else:
                proj = frames @ frames.mT
            coords = None
            if self.ambient_points is not None:  # with the component of the nearest cloud point
                near = self._tree.query(P[sl], k=1)[1].reshape(-1)
                coords = _ambient_inputs(P[sl], self.laplacian.graph.labels[near], origin)
                coords = torch.as_tensor(coords, dtype=self.dtype).to(phi)
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
        the cloud get the full Nystrom features, farther ones tapered ones (:mod:`~gpgeom.models.rvgp.extension`)."""
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
        phi, frames, _, _ = self._extend(points)
        return phi, frames

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
            # the eigen-data are rebuilt from the eigenpairs and the frames (bitwise the same); their masses are
            # stored: a model moved to float32 holds the rounded float64 ones, which float32 eigenvectors do not give
            "module_state": {
                k: v for k, v in self.state_dict().items() if not k.startswith(basis) or k == basis + "mass"
            },
            "mode": self.mode,
            "y_scale": float(self.y_scale),
            "y_offset": float(self.y_offset),
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
        model.y_offset = float(state.get("y_offset", 0.0))  # files written before the offset: none (zero)
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
            if self.is_fitted:
                fields["offset"] = self.y_offset  # the training mean, the prior mean (original units)
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
