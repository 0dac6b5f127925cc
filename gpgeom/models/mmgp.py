r"""MMGP: mesh-morphing Gaussian-process regression of physical fields on meshes of varying shape.

Casenave, Staber, Roynard, "MMGP: a Mesh Morphing Gaussian Process-based machine learning method for regression of
physical problems under non-parameterized geometrical variability", NeurIPS 2023, arXiv:2305.12871.

Data: ``n`` samples, sample ``i`` a triangle mesh :math:`\mathcal{M}_i` with :math:`N_i` nodes (node counts and
connectivity differ), input scalars :math:`\mu_i \in \mathbb{R}^p`, nodal output fields
:math:`U_i \in \mathbb{R}^{N_i \times m}` and output scalars :math:`w_i \in \mathbb{R}^q`. The method (paper Sec. 3,
Algorithm 1):

1. **Morphing** :math:`\varphi_i` of every mesh onto one reference shape (Sec. 3.1): Floater / Tutte onto the unit
   disk (:func:`gpgeom.geometry.morphing.floater_disk`), a Wendland-C2 RBF map onto the common mesh's shape, or none
   (meshes that share their topology).
2. **Common mesh** :math:`\mathcal{M}_c` (:math:`N_c` nodes): a morphed training mesh (the middle one by default).
3. **Finite-element interpolation** (Sec. 3.1, Eq. (2)): P1 operators :math:`P_i \in \mathbb{R}^{N_c \times N_i}`
   (morphed mesh :math:`i` -> common nodes) and :math:`Q_i \in \mathbb{R}^{N_i \times N_c}` (common mesh -> morphed
   nodes of mesh :math:`i`), both :func:`gpgeom.geometry.mesh.p1_transfer` with clamping.
4. **Geometry embedding** (Sec. 3.2): the physical coordinates transported to the common nodes,
   :math:`X_i = P_i x_i \in \mathbb{R}^{N_c \times 2}`, reduced by a snapshot POD with the P1 mass matrix
   :math:`M` (Eq. (3)): :math:`\xi_i = \Phi_g M_2 (X_i - \bar X) \in \mathbb{R}^{n_g}` with :math:`\Phi_g M_2
   \Phi_g^\top = I`.
5. **Field embedding**: :math:`P_i U_i^{(f)}` reduced by one POD per field, coefficients
   :math:`a_i^{(f)} \in \mathbb{R}^{n_f}`.
6. **GP** (Sec. 3.3, Eq. (4)): independent exact GPs from :math:`z_i = (\xi_i, \mu_i) \in \mathbb{R}^{n_g + p}` to
   every field POD coefficient and every output scalar (:class:`gpgeom.botorch.exact_gp.ExactGPModel`, standardised
   outputs, Matern 5/2 ARD with learned noise by default). ``hyperparameters="per_output"`` (default) gives every
   output its own kernel and noise (one batched GP); ``"per_field"`` (the reference's choice) shares them among the
   modes of each field (one ``ExactGPModel`` with ``shared_hyperparameters=True`` per field) and gives every output
   scalar its own GP; ``"shared"`` one set for all outputs.
7. **Inference** on a new mesh: morph, transfer, encode :math:`z`, predict the coefficients and decode
   :math:`\hat U^{(f)} = Q\,(\bar u^{(f)} + \Phi_f^\top \hat a^{(f)})` on the **original nodes** of the new mesh.

Predictive uncertainty (paper Sec. 3.4, which uses Monte Carlo): the decode chain is affine, so with the GP
marginal :math:`a^{(f)} \sim \mathcal{N}(\hat a, \operatorname{diag}(s^2))` (independent outputs) the nodal
variance is exactly

.. math:: \operatorname{Var}[\hat U_j] = \bigl[Q \Phi_f^\top \operatorname{diag}(s^2) \Phi_f Q^\top\bigr]_{jj}
          = \sum_k (A_{jk} s_k)^2, \qquad A = Q \Phi_f^\top \in \mathbb{R}^{N \times n_f},

computed from the ``N x n_f`` matrix :math:`A` (a sparse-times-dense product), never an ``N x N`` matrix. Monte
Carlo samples of the same distribution are available with ``n_samples``.

POD truncation (``truncation_variance=True``, default): the GP variance above only covers the retained modes. The
discarded modes are modelled as an independent zero-mean term whose variance on common node :math:`c` is the
cross-validated mean squared truncation residual of the training snapshots (10 interleaved folds; snapshot :math:`i`
is projected on the POD of the folds without it, which keeps the estimate out of sample),
:math:`r_c = \frac1n \sum_i \bigl(F_{ic} - \mathcal{P}_{-i} F_{i}\bigr)_c^2`, interpolated to the nodes of the
new mesh like a P1 field (:math:`Q r`, i.e. the residual is taken as fully correlated within a common element):

.. math:: \operatorname{Var}[\hat U_j] = \sum_k (A_{jk} s_k)^2 + (Q r)_j.

It leaves the mean unchanged; ``truncation_variance=False`` gives the GP part alone.

The GP over the latent geometry, :attr:`MMGP.gp`, is a BoTorch model: optimise an output scalar over the latent
shape space with any acquisition function and decode the optimum with :meth:`MMGP.decode_geometry`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.model_list_gp_regression import ModelListGP
from botorch.models.transforms.input import Normalize
from botorch.posteriors import GPyTorchPosterior, Posterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from gpytorch.kernels import Kernel, RBFKernel
from linear_operator import to_dense

from gpgeom._validation import check_option, check_positive
from gpgeom.botorch.exact_gp import ExactGPModel, default_covar_module
from gpgeom.geometry.mesh import Mesh, as_float_array, mass_matrix, p1_transfer
from gpgeom.geometry.morphing import RBFMorphing, floater_disk
from gpgeom.geometry.pod import SnapshotPOD

__all__ = ["MMGP", "MMGPModelList", "MMGPPrediction", "as_mesh", "samples_to_arrays"]

_MORPHINGS = ("floater", "rbf", "none")
_KERNELS = ("matern52", "matern32", "matern12", "rbf")
_HYPERPARAMETERS = ("per_field", "per_output", "shared")
_FORMAT = "gpgeom.mmgp/1"


def _now() -> np.ndarray:
    r"""``(wall, cpu)`` clock readings: ``time.perf_counter()`` and ``time.process_time()``."""
    return np.array([time.perf_counter(), time.process_time()])


def _split(t: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, float]]:
    return {k: float(v[0]) for k, v in t.items()}, {k: float(v[1]) for k, v in t.items()}


# ----------------------------------------------------------------------------------------------------------------
# input helpers
# ----------------------------------------------------------------------------------------------------------------
def as_mesh(mesh: object, name: str = "mesh") -> Mesh:
    r"""A :class:`~gpgeom.geometry.mesh.Mesh` from a Mesh, a ``(points, triangles)`` pair, or any object with
    ``points`` ``(N, 2)`` and ``triangles`` (or ``cells``) ``(n_tri, 3)`` attributes (e.g. a
    :class:`~gpgeom.datasets.notched_plate.NotchedPlateSample`)."""
    if isinstance(mesh, Mesh):
        return mesh
    if isinstance(mesh, tuple | list) and len(mesh) == 2:
        return Mesh(mesh[0], mesh[1])
    cells = getattr(mesh, "triangles", None)
    if cells is None:
        cells = getattr(mesh, "cells", None)
    if hasattr(mesh, "points") and cells is not None:
        return Mesh(mesh.points, cells)
    raise TypeError(
        f"`{name}` must be a gpgeom Mesh, a (points, triangles) pair or an object with `points` and `triangles`; "
        f"got {type(mesh).__name__}."
    )


def samples_to_arrays(samples: Sequence[Any]) -> tuple[list[Mesh], np.ndarray, list[np.ndarray], np.ndarray]:
    r"""Split NotchedPlate2d samples into MMGP's inputs.

    Returns:
        ``(meshes, input_scalars, output_fields, output_scalars)``: ``n`` meshes, ``(n, 2)`` (P, nu), ``n`` arrays
        ``(N_i, 4)`` (U1, U2, von_mises, sigma22) and ``(n, 3)`` (max_vm, mean_U2_top, compliance).
    """
    meshes = [Mesh(s.points, s.triangles) for s in samples]
    mu = np.stack([s.in_scalar_array() for s in samples])
    fields = [s.field_array() for s in samples]
    w = np.stack([s.out_scalar_array() for s in samples])
    return meshes, mu, fields, w


def _scalars(name: str, x: object, n: int) -> np.ndarray:
    if x is None:
        return np.zeros((n, 0))
    arr = as_float_array(name, x, ndim=(1, 2))
    if arr.ndim == 1:
        arr = arr[:, None] if n > 1 or arr.shape[0] == 1 else arr[None, :]
    if arr.shape[0] != n:
        raise ValueError(f"`{name}` must have one row per mesh ({n}), got shape {arr.shape}.")
    return arr


def _mode_option(name: str, value: int | float) -> tuple[int | None, float | None]:
    r"""``int`` -> fixed number of modes; ``float`` in (0, 1] -> energy fraction."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be an int (number of modes) or a float in (0, 1] (energy), got {value!r}.")
    if isinstance(value, int):
        check_positive(name, value, integer=True)
        return value, None
    if not 0.0 < value <= 1.0:
        raise ValueError(f"`{name}` as a float is an energy fraction in (0, 1], got {value!r}.")
    return None, float(value)


# ----------------------------------------------------------------------------------------------------------------
# prediction container
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class MMGPPrediction:
    r"""What :meth:`MMGP.predict` returns for ``n`` meshes with :math:`N_i` nodes, ``m`` fields, ``q`` scalars.

    Attributes:
        fields: Predicted mean fields on the original nodes, ``n`` arrays ``(N_i, m)``.
        scalars: Predicted mean output scalars, ``(n, q)``.
        fields_std: Exact predictive standard deviations of the fields, ``n`` arrays ``(N_i, m)`` (``return_std``;
            including the POD truncation variance when ``truncation_variance`` is on).
        scalars_std: Predictive standard deviations of the scalars, ``(n, q)`` (``return_std``).
        field_samples: Monte Carlo draws, ``n`` arrays ``(S, N_i, m)`` (``n_samples = S > 0``); draws of different
            meshes are independent (each mesh's marginal).
        scalar_samples: Monte Carlo draws of the scalars, ``(S, n, q)``.
        latent: The GP inputs :math:`z = (\xi, \mu)`, ``(n, n_g + p)``.
        timings: Wall seconds per stage (``morph``, ``transfer``, ``gp``, ``decode``), summed over the meshes.
        cpu_timings: The same in CPU seconds of this process (``time.process_time``; robust on a shared machine).
    """

    fields: list[np.ndarray]
    scalars: np.ndarray
    fields_std: list[np.ndarray] | None = None
    scalars_std: np.ndarray | None = None
    field_samples: list[np.ndarray] | None = None
    scalar_samples: np.ndarray | None = None
    latent: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)


class MMGPModelList(ModelListGP):
    r"""A BoTorch ``ModelListGP`` of independent :class:`~gpgeom.botorch.exact_gp.ExactGPModel` groups (outputs
    concatenated in order), with the ``predict`` of :class:`~gpgeom.botorch.exact_gp.ExactGPModel`."""

    @torch.no_grad()
    def predict(
        self, X: torch.Tensor, return_std: bool = False, observation_noise: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""Predictive means (and standard deviations) of all outputs, ``n x m``, in the original units."""
        outs = [g.predict(X, return_std=return_std, observation_noise=observation_noise) for g in self.models]
        if not return_std:
            return torch.cat(outs, -1)
        return torch.cat([o[0] for o in outs], -1), torch.cat([o[1] for o in outs], -1)

    def posterior(
        self,
        X: torch.Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | torch.Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> Posterior:
        r"""``ModelListGP.posterior``; a ``posterior_transform`` is applied to a dense copy of the joint covariance
        (the lazy block covariance of a list of batched multi-output GPs cannot be scalarised by linear_operator)."""
        post = super().posterior(X, output_indices=output_indices, observation_noise=observation_noise, **kwargs)
        if posterior_transform is None:
            return post
        if isinstance(post, GPyTorchPosterior):
            mvn = post.distribution
            cov = to_dense(mvn.lazy_covariance_matrix)
            if isinstance(mvn, MultitaskMultivariateNormal):
                mvn = MultitaskMultivariateNormal(mvn.mean, cov, interleaved=mvn._interleaved)
            else:
                mvn = MultivariateNormal(mvn.mean, cov)
            post = GPyTorchPosterior(mvn)
        return posterior_transform(post)

    def condition_on_observations(self, X: torch.Tensor, Y: torch.Tensor, **kwargs: Any) -> MMGPModelList:
        r"""Condition every group on observations at the same inputs: ``X`` ``batch x n' x d`` (one tensor, as for
        a single model), ``Y`` ``batch x n' x m`` (all outputs); ``noise`` (optional) shaped like ``Y``."""
        if Y.shape[-1] != self.num_outputs:
            raise ValueError(f"`Y` must have {self.num_outputs} outputs in its last dimension, got {Y.shape[-1]}.")
        noise = kwargs.pop("noise", None)
        out, i = [], 0
        for g in self.models:
            j = i + g.num_outputs
            kw = dict(kwargs) if noise is None else {**kwargs, "noise": noise[..., i:j]}
            out.append(g.condition_on_observations(X, Y[..., i:j], **kw))
            i = j
        return MMGPModelList(*out)

    @property
    def fit_results(self) -> list[Any]:
        r"""The :class:`~gpgeom.engine.fitting.FitResult` of every group."""
        return [g.fit_result_ for g in self.models]


@dataclass
class _Operators:
    morphed: np.ndarray  # (N_i, 2) morphed node positions
    proj: sp.csr_matrix  # (N_c, N_i): mesh i -> common nodes
    inv_proj: sp.csr_matrix  # (N_i, N_c): common mesh -> nodes of mesh i
    t_morph: np.ndarray  # (wall, cpu) seconds
    t_transfer: np.ndarray


# ----------------------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------------------
class MMGP:
    r"""Mesh-morphing GP regression of nodal fields and scalars (Casenave et al., NeurIPS 2023).

    Args:
        morphing: ``"floater"`` (default; Tutte map onto the unit disk, meshes with exactly one boundary loop),
            ``"rbf"`` (Wendland-C2 RBF map of each mesh onto the common mesh's shape, boundary nodes matched by
            normalised arc length from their lowest-leftmost node; the same number of boundary loops in every
            mesh) or ``"none"`` (every mesh has the common mesh's node count and node order, as for a fixed
            topology; the transfers are identities).
        common_mesh: ``"middle"`` (training mesh ``n // 2``, the reference's choice), an ``int`` index of a
            training mesh, or a user mesh (anything :func:`as_mesh` accepts) in physical coordinates, morphed like
            the others.
        n_modes_geometry: Geometry POD modes :math:`n_g`: an ``int``, or a float in (0, 1] = the energy fraction to
            keep.
        n_modes_fields: Modes per output field :math:`n_f` (``int`` or energy fraction), or a sequence with one
            entry per field.
        kernel: ``"matern52"`` (ARD, default), ``"matern32"``, ``"matern12"``, ``"rbf"``, or a callable
            ``(d, batch_shape) -> gpytorch Kernel`` with that batch shape (then :meth:`save` is not available).
        hyperparameters: How the GP hyperparameters (kernel and noise) are tied across outputs: ``"per_output"``
            (default; separate hyperparameters for every coefficient and scalar, one batched GP whose members get
            their own L-BFGS-B runs and keep their own best restart), ``"per_field"`` (one GP with shared
            hyperparameters over the POD coefficients of each field, as the reference, and one GP per output
            scalar) or ``"shared"`` (one set for all outputs). Each output is an independent GP with its own
            constant mean in every case, and the predictive variance is exact. Measured on NotchedPlate2d
            (``benchmarks/results/mmgp.md``): ``"per_output"`` is the more accurate (the leading modes are smooth,
            the trailing ones noise-like, and one shared noise level fits neither); ``"per_field"`` factorises one
            kernel matrix per field and is about 3x cheaper to train (10 attempts at 300 shapes: 32 s vs 103 s of
            CPU).
        truncation_variance: Add the POD truncation variance (module docstring) to the predicted field variance.
        restarts: Random restarts of the hyperparameter fit (on top of the first attempt).
        max_iter: L-BFGS-B iterations per attempt.
        center: Centre the POD snapshots (``False`` decomposes the raw snapshots, as the reference code does).
        ref_compat: Reproduce the reference code: Floater boundary angles and orientation of Muscat, no centring,
            and the geometry inner product ``kron(I_2, M)`` applied to interleaved coordinates (spec ``mmgp.md``
            Sec. 2.6).
        floater_start: Where the Floater boundary walk starts (the node that lands at angle 0):
            ``"min_x"`` (the reference rule: lowest-leftmost boundary node, ties within round-off) or a point
            ``(2,)``, the boundary node nearest to it. A geometric anchor (e.g. a corner every shape shares) is
            the robust choice: it also holds for decoded shapes (:meth:`decode_geometry`), whose straight edges
            are straight only up to the POD truncation, which can move the "min_x" node along the edge.
        seed: Seed of the restarts and of the Monte Carlo draws.
        progress: Progress bars while fitting.

    Attributes (after :meth:`fit`):
        gp: A BoTorch model from the latent inputs :math:`z = (\xi, \mu)` (``d = n_g + p`` columns, original units,
            normalised inside by a fixed ``Normalize`` transform) to the ``n_outputs = sum(n_f) + q`` outputs (the
            field POD coefficients, field by field, then the scalars): the single
            :class:`~gpgeom.botorch.exact_gp.ExactGPModel` for ``"per_output"`` / ``"shared"``, a
            :class:`MMGPModelList` (a BoTorch ``ModelListGP`` of the group GPs with a ``predict`` method) for
            ``"per_field"``.
        gps_: The fitted :class:`~gpgeom.botorch.exact_gp.ExactGPModel` of every output group (``"per_field"``: one per
            field, then one per output scalar); ``output_groups_`` their ``(start, stop)`` output columns.
        common_mesh_: The common mesh in physical coordinates (``N_c`` nodes).
        common_morphed_: Its morphed node positions ``(N_c, 2)``.
        n_modes_geometry_, n_modes_fields_: The numbers of modes kept.
        train_latent_: ``(n, d)`` training inputs; ``train_targets_``: ``(n, n_outputs)``.
        timings_: Wall seconds per stage of the fit (``morph``, ``transfer``, ``pod``, ``gp``); ``cpu_timings_`` the
            same in CPU seconds of this process.
    """

    def __init__(
        self,
        *,
        morphing: str = "floater",
        common_mesh: str | int | object = "middle",
        n_modes_geometry: int | float = 8,
        n_modes_fields: int | float | Sequence[int | float] = 8,
        kernel: str | Callable[[int, torch.Size], Kernel] = "matern52",
        hyperparameters: str = "per_output",
        truncation_variance: bool = True,
        restarts: int = 10,
        max_iter: int = 500,
        center: bool = True,
        ref_compat: bool = False,
        floater_start: str | Sequence[float] = "min_x",
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        check_option("morphing", morphing, _MORPHINGS)
        if isinstance(common_mesh, str):
            check_option("common_mesh", common_mesh, ("middle",))
        elif isinstance(common_mesh, int) and not isinstance(common_mesh, bool):
            if common_mesh < 0:
                raise ValueError(f"`common_mesh` as an index must be >= 0, got {common_mesh}.")
        else:
            common_mesh = as_mesh(common_mesh, "common_mesh")
        _mode_option("n_modes_geometry", n_modes_geometry)
        if isinstance(n_modes_fields, Sequence):
            for v in n_modes_fields:
                _mode_option("n_modes_fields", v)
        else:
            _mode_option("n_modes_fields", n_modes_fields)
        if isinstance(kernel, str):
            check_option("kernel", kernel, _KERNELS)
        elif not callable(kernel):
            raise TypeError(f"`kernel` must be one of {_KERNELS} or a callable (d, batch_shape) -> Kernel.")
        check_positive("restarts", restarts, integer=True, allow_zero=True)
        check_option("hyperparameters", hyperparameters, _HYPERPARAMETERS)
        check_positive("max_iter", max_iter, integer=True)
        check_positive("seed", seed, integer=True, allow_zero=True)
        self.morphing = morphing
        self.common_mesh = common_mesh
        self.n_modes_geometry = n_modes_geometry
        self.n_modes_fields = list(n_modes_fields) if isinstance(n_modes_fields, Sequence) else n_modes_fields
        self.kernel = kernel
        self.hyperparameters = hyperparameters
        self.truncation_variance = bool(truncation_variance)
        self.restarts = restarts
        self.max_iter = max_iter
        self.center = bool(center)
        self.ref_compat = bool(ref_compat)
        if isinstance(floater_start, str):
            check_option("floater_start", floater_start, ("min_x",))
        else:
            floater_start = [float(v) for v in as_float_array("floater_start", floater_start, ndim=1, shape=(2,))]
        self.floater_start = floater_start
        self.seed = seed
        self.progress = bool(progress)

    # ------------------------------------------------------------------------------------------------------------
    # morphing and transfer
    # ------------------------------------------------------------------------------------------------------------
    def _floater(self, mesh: Mesh) -> np.ndarray:
        if self.ref_compat:
            return floater_disk(mesh, start=self.floater_start, orientation="reference", angles="reference", rtol=0.0)
        return floater_disk(mesh, start=self.floater_start)

    @staticmethod
    def _loops_with_start(mesh: Mesh) -> list[np.ndarray]:
        r"""Boundary loops (mesh on the left), each rolled to start at its lowest-leftmost node."""
        out = []
        P = mesh.points
        for lp in mesh.boundary_loops():
            B = P[lp]
            i0 = int(np.lexsort((B[:, 1], B[:, 0]))[0])
            out.append(np.roll(lp, -i0))
        return out

    @staticmethod
    def _arclength(B: np.ndarray) -> np.ndarray:
        seg = np.sqrt((np.diff(np.vstack([B, B[:1]]), axis=0) ** 2).sum(1))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        return s / s[-1]  # (nB + 1,), closing node included

    def _rbf_morph(self, mesh: Mesh) -> np.ndarray:
        r"""Map ``mesh`` onto the common shape: boundary node at arc-length fraction ``s`` of its loop goes to the
        point at fraction ``s`` of the matching common loop; the interior follows the Wendland-C2 RBF map."""
        loops = self._loops_with_start(mesh)
        ref = self._ref_loops
        if len(loops) != len(ref):
            raise ValueError(
                f"RBF morphing needs the same number of boundary loops as the common mesh ({len(ref)}); this mesh "
                f"has {len(loops)}."
            )
        P = mesh.points
        src, tgt = [], []
        free = list(range(len(ref)))
        for lp in sorted(loops, key=len, reverse=True):
            c = P[lp].mean(0)
            j = min(free, key=lambda k: float(((ref[k][0].mean(0) - c) ** 2).sum()))
            free.remove(j)
            RB, Rs = ref[j]
            s = self._arclength(P[lp])[:-1]
            closed = np.vstack([RB, RB[:1]])
            tgt.append(np.column_stack([np.interp(s, Rs, closed[:, 0]), np.interp(s, Rs, closed[:, 1])]))
            src.append(P[lp])
        S, T = np.concatenate(src), np.concatenate(tgt)
        if len(S) > 1500:  # keep the dense RBF solve small: every k-th control point
            step = math.ceil(len(S) / 1500)
            S, T = S[::step], T[::step]
        return RBFMorphing(S, T)(P)

    def _morph(self, mesh: Mesh, index: str) -> np.ndarray:
        try:
            if self.morphing == "floater":
                if mesh.dim != 2:
                    raise ValueError(f"Floater morphing needs 2D meshes, got {mesh.dim}D points.")
                return self._floater(mesh)
            if self.morphing == "rbf":
                return self._rbf_morph(mesh)
            return mesh.points
        except ValueError as exc:
            raise ValueError(f"MMGP(morphing={self.morphing!r}): {index}: {exc}") from exc

    def _operators(self, mesh: Mesh, index: str) -> _Operators:
        t0 = _now()
        if self.morphing == "none":
            if mesh.n_points != self.common_mesh_.n_points:
                raise ValueError(
                    f"MMGP(morphing='none'): {index} has {mesh.n_points} nodes, the common mesh "
                    f"{self.common_mesh_.n_points}; without morphing every mesh must share the common mesh's nodes "
                    "(same topology). Use morphing='floater' or 'rbf' for meshes that differ."
                )
            eye = sp.identity(mesh.n_points, format="csr")
            return _Operators(mesh.points, eye, eye, _now() - t0, np.zeros(2))
        morphed = self._morph(mesh, index)
        t1 = _now()
        proj = p1_transfer(mesh.with_points(morphed, keep_data=False), self._common_morphed_mesh.points)
        inv_proj = p1_transfer(self._common_morphed_mesh, morphed)
        return _Operators(morphed, proj, inv_proj, t1 - t0, _now() - t1)

    # ------------------------------------------------------------------------------------------------------------
    # fit
    # ------------------------------------------------------------------------------------------------------------
    def _check_fields(self, output_fields: object, meshes: list[Mesh]) -> list[np.ndarray]:
        if isinstance(output_fields, np.ndarray | torch.Tensor) and len(meshes) and output_fields.ndim >= 2:
            output_fields = list(output_fields)
        if not isinstance(output_fields, Sequence) or len(output_fields) != len(meshes):
            raise ValueError(
                f"`output_fields` must be a sequence with one array (N_i, m) per mesh ({len(meshes)} meshes)."
            )
        out = []
        for i, (u, mesh) in enumerate(zip(output_fields, meshes)):
            if isinstance(u, Mapping):
                u = np.column_stack([np.asarray(v, dtype=np.float64) for v in u.values()])
            arr = u.detach().cpu().numpy() if isinstance(u, torch.Tensor) else np.asarray(u, dtype=np.float64)
            if arr.ndim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape[0] != mesh.n_points:
                raise ValueError(
                    f"`output_fields[{i}]` has shape {arr.shape}, but mesh {i} has {mesh.n_points} nodes: each field "
                    "array must be (N_i, m) with one row per node of its mesh."
                )
            if out and arr.shape[1] != out[0].shape[1]:
                raise ValueError(
                    f"`output_fields[{i}]` has {arr.shape[1]} field(s), `output_fields[0]` {out[0].shape[1]}; "
                    "every sample needs the same fields."
                )
            if not np.isfinite(arr).all():
                bad = np.argwhere(~np.isfinite(arr))[0]
                raise ValueError(
                    f"`output_fields[{i}]` contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s) "
                    f"(first at node {int(bad[0])}, field {int(bad[1])}); remove or impute them first."
                )
            out.append(arr)
        return out

    def _make_kernel(self, d: int, m: int, shared: bool = False) -> Kernel:
        batch = torch.Size([1 if shared else m]) if m > 1 else torch.Size()
        if callable(self.kernel):
            return self.kernel(d, batch)
        k = default_covar_module(d, batch_shape=batch)
        if self.kernel in ("matern32", "matern12"):
            k.base_kernel.nu = 1.5 if self.kernel == "matern32" else 0.5
        elif self.kernel == "rbf":
            old = k.base_kernel
            k.base_kernel = RBFKernel(
                ard_num_dims=d,
                batch_shape=batch,
                lengthscale_prior=old.lengthscale_prior,
                lengthscale_constraint=old.raw_lengthscale_constraint,
            )
        return k

    def _make_gp(self, X: torch.Tensor, Y: torch.Tensor, bounds: torch.Tensor, shared: bool = False) -> ExactGPModel:
        d, m = X.shape[-1], Y.shape[-1]
        shared = shared and m > 1
        return ExactGPModel(
            X,
            Y,
            covar_module=self._make_kernel(d, m, shared),
            shared_hyperparameters=shared,
            input_transform=Normalize(d=d, bounds=bounds),
        )

    def _groups(self) -> list[tuple[int, int]]:
        r"""``(start, stop)`` output columns of each GP."""
        total = sum(self.n_modes_fields_) + len(self.scalar_names_)
        if self.hyperparameters != "per_field":
            return [(0, total)]
        offs = np.concatenate([[0], np.cumsum(self.n_modes_fields_)]).astype(int)
        groups = [(int(offs[k]), int(offs[k + 1])) for k in range(len(self.n_modes_fields_))]
        return groups + [(int(offs[-1]) + j, int(offs[-1]) + j + 1) for j in range(len(self.scalar_names_))]

    def _build_gps(self, Z: torch.Tensor, Y: torch.Tensor) -> list[ExactGPModel]:
        shared = self.hyperparameters != "per_output"
        return [self._make_gp(Z, Y[:, a:b], self._bounds, shared) for a, b in self.output_groups_]

    @property
    def gp(self) -> ExactGPModel | MMGPModelList:
        r"""The BoTorch model of all ``sum(n_f) + q`` outputs (see the class docstring)."""
        self._check_fitted()
        if len(self.gps_) == 1:
            return self.gps_[0]
        if getattr(self, "_gp_list", None) is None:
            self._gp_list = MMGPModelList(*self.gps_)
        return self._gp_list

    def _gp_predict(self, Z: torch.Tensor, return_std: bool, observation_noise: bool) -> tuple[np.ndarray, ...]:
        means, stds = [], []
        for g in self.gps_:
            out = g.predict(Z, return_std=return_std, observation_noise=observation_noise)
            means.append(out[0] if return_std else out)
            if return_std:
                stds.append(out[1])
        mean = torch.cat(means, -1).numpy()
        return (mean, torch.cat(stds, -1).numpy()) if return_std else (mean, None)

    def _set_common(self, common: Mesh) -> None:
        self.common_mesh_ = common
        if self.morphing == "rbf":
            self._ref_loops = []
            for lp in self._loops_with_start(common):
                B = common.points[lp]
                self._ref_loops.append((B, self._arclength(B)))
            self.common_morphed_ = common.points.copy()
        else:
            self.common_morphed_ = self._morph(common, "common mesh")
        self._common_morphed_mesh = common.with_points(self.common_morphed_, keep_data=False)
        self._mass = mass_matrix(common)  # (N_c, N_c)

    def fit(
        self,
        meshes: Sequence[object],
        input_scalars: object,
        output_fields: object,
        output_scalars: object = None,
        *,
        field_names: Sequence[str] | None = None,
        scalar_names: Sequence[str] | None = None,
    ) -> MMGP:
        r"""Morph, transfer, reduce and fit the GP.

        Args:
            meshes: ``n`` triangle meshes (see :func:`as_mesh`), :math:`N_i` nodes each.
            input_scalars: ``(n, p)`` (or ``None`` for ``p = 0``).
            output_fields: ``n`` arrays ``(N_i, m)`` (or ``(N_i,)`` for one field, or dicts name -> ``(N_i,)``).
            output_scalars: ``(n, q)`` (or ``None``).
            field_names, scalar_names: Optional names (default ``field0``, ... / ``scalar0``, ...).

        Returns:
            ``self``.
        """
        meshes = [as_mesh(m, f"meshes[{i}]") for i, m in enumerate(meshes)]
        n = len(meshes)
        if n < 2:
            raise ValueError(f"MMGP needs at least 2 training meshes, got {n}.")
        mu = _scalars("input_scalars", input_scalars, n)
        U = self._check_fields(output_fields, meshes)
        w = _scalars("output_scalars", output_scalars, n)
        n_fields = U[0].shape[1]
        self.field_names_ = list(field_names) if field_names is not None else [f"field{k}" for k in range(n_fields)]
        self.scalar_names_ = (
            list(scalar_names) if scalar_names is not None else [f"scalar{k}" for k in range(w.shape[1])]
        )
        if len(self.field_names_) != n_fields or len(self.scalar_names_) != w.shape[1]:
            raise ValueError("`field_names` / `scalar_names` must have one name per field / output scalar.")
        nmf = self.n_modes_fields if isinstance(self.n_modes_fields, list) else [self.n_modes_fields] * n_fields
        if len(nmf) != n_fields:
            raise ValueError(f"`n_modes_fields` has {len(nmf)} entries for {n_fields} fields.")
        timings = {k: np.zeros(2) for k in ("morph", "transfer", "pod", "gp")}

        if isinstance(self.common_mesh, Mesh):
            common = self.common_mesh
        else:
            c = n // 2 if self.common_mesh == "middle" else int(self.common_mesh)
            if c >= n:
                raise ValueError(f"`common_mesh`={c} is not the index of a training mesh (n = {n}).")
            common = meshes[c]
            self.common_index_ = c
        t0 = _now()
        self._set_common(common)
        timings["morph"] += _now() - t0
        Nc = common.n_points

        # transport geometry and fields to the common mesh (Eq. (2))
        X = np.empty((n, Nc, 2))
        F = np.empty((n, Nc, n_fields))
        for i, mesh in enumerate(meshes):
            ops = self._operators(mesh, f"mesh {i}")
            timings["morph"] += ops.t_morph
            timings["transfer"] += ops.t_transfer
            X[i] = ops.proj @ mesh.points[:, :2]
            F[i] = ops.proj @ U[i]

        # POD (Eq. (3))
        t0 = _now()
        center = self.center and not self.ref_compat
        ng, eg = _mode_option("n_modes_geometry", self.n_modes_geometry)
        pod_g = SnapshotPOD(ng, energy=eg, center=center)
        if self.ref_compat:
            xi = pod_g.fit_transform(X.reshape(n, -1), mass_matrix(common, 2, "blocked"))
        else:
            xi = pod_g.fit_transform(X, self._mass)
        modes_g = pod_g.modes_.reshape(pod_g.n_modes_, -1)  # (n_g, 2 N_c), interleaved
        self._geom = {
            "mean": pod_g.mean_.reshape(-1),
            "modes": modes_g,
            "eigenvalues": pod_g.eigenvalues_,
        }
        # encoder W = Phi_g M_2 (n_g, 2 N_c), so xi = W (x - mean)
        self._geom["W"] = self._geometry_encoder(modes_g, common)
        self._fields = []
        coefs = []
        for k in range(n_fields):
            nk, ek = _mode_option("n_modes_fields", nmf[k])
            pod = SnapshotPOD(nk, energy=ek, center=center)
            coefs.append(pod.fit_transform(F[:, :, k], self._mass))
            self._fields.append(
                {
                    "mean": pod.mean_,
                    "modes": pod.modes_,
                    "eigenvalues": pod.eigenvalues_,
                    "trunc_var": self._truncation_variance(F[:, :, k], pod.n_modes_, center),
                }
            )
        timings["pod"] = _now() - t0
        self.n_modes_geometry_ = int(modes_g.shape[0])
        self.n_modes_fields_ = [int(f["modes"].shape[0]) for f in self._fields]

        # GP (Eq. (4))
        Z = np.concatenate([xi, mu], axis=1)
        Y = np.concatenate(coefs + [w], axis=1)
        self.n_input_scalars_ = mu.shape[1]
        self._train(torch.as_tensor(Z), torch.as_tensor(Y), timings)
        self.timings_, self.cpu_timings_ = _split(timings)
        return self

    def _truncation_variance(self, S: np.ndarray, n_modes: int, center: bool, folds: int = 10) -> np.ndarray:
        r"""Cross-validated mean squared POD truncation residual per common node, ``(N_c,)``: snapshot ``i`` is
        projected on the ``n_modes`` modes of a POD of the other folds (``folds`` interleaved folds), so the
        estimate is out of sample, as for a new mesh (the in-sample residual is 2-3 times too small at n = 30; this
        one is 1.5-1.9 times too large there, less for larger n as the folds approach leave-one-out)."""
        n = S.shape[0]
        folds = min(folds, n)
        acc = np.zeros(S.shape[1])
        for f in range(folds):
            test = np.arange(f, n, folds)
            train = np.setdiff1d(np.arange(n), test)
            k = min(n_modes, len(train) - 1 if center else len(train))
            if k < 1:
                continue
            pod = SnapshotPOD(k, center=center).fit(S[train], self._mass)
            acc += ((S[test] - pod.inverse_transform(pod.transform(S[test]))) ** 2).sum(0)
        return acc / n

    def _geometry_encoder(self, modes_g: np.ndarray, common: Mesh) -> np.ndarray:
        if self.ref_compat:
            M2 = mass_matrix(common, 2, "blocked")
        else:
            M2 = mass_matrix(common, 2, "interleaved")
        return np.asarray((M2 @ modes_g.T).T)

    def _train(self, Z: torch.Tensor, Y: torch.Tensor, timings: dict[str, float]) -> None:
        lo, hi = Z.min(0).values, Z.max(0).values
        hi = torch.where(hi > lo, hi, lo + 1.0)
        self._bounds = torch.stack([lo, hi])
        self.train_latent_ = Z.numpy()
        self.train_targets_ = Y.numpy()
        t0 = _now()
        self._gp_list = None
        self.output_groups_ = self._groups()
        self.gps_ = self._build_gps(Z, Y)
        for g in self.gps_:
            g.fit(restarts=self.restarts, max_iter=self.max_iter, seed=self.seed, progress=self.progress)
        timings["gp"] = _now() - t0

    # ------------------------------------------------------------------------------------------------------------
    # encode / decode
    # ------------------------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "gps_"):
            raise RuntimeError("This MMGP is not fitted yet; call fit(...) or MMGP.load(path) first.")

    @property
    def n_latent(self) -> int:
        r"""Input dimension of :attr:`gp`: ``n_g + p``."""
        self._check_fitted()
        return self.n_modes_geometry_ + self.n_input_scalars_

    @property
    def latent_bounds(self) -> torch.Tensor:
        r"""``2 x d`` box of the training latent inputs (columns min / max), e.g. the bounds of ``optimize_acqf``."""
        self._check_fitted()
        return self._bounds.clone()

    def output_index(self, name: str) -> int:
        r"""Column of output scalar ``name`` among the ``sum(n_f) + q`` outputs of :attr:`gp`."""
        self._check_fitted()
        check_option("name", name, self.scalar_names_)
        return sum(self.n_modes_fields_) + self.scalar_names_.index(name)

    def output_gp(self, output: str | int) -> ExactGPModel:
        r"""A single-output BoTorch model of one output of :attr:`gp` (an output scalar name or a column index),
        with that output's fitted hyperparameters and the same latent inputs (``d = n_g + p``, original units).

        Use it as the surrogate of a shape optimisation (e.g. ``qLogNoisyExpectedImprovement`` on ``"max_vm"``).
        It is built afresh rather than by ``gp.subset_output``, which does not carry BoTorch's stored original
        training inputs of an input-transformed batched model (``condition_on_observations`` / ``fantasize`` then
        fail).
        """
        self._check_fitted()
        m = self.output_groups_[-1][1]
        j = self.output_index(output) if isinstance(output, str) else int(output)
        if not 0 <= j < m:
            raise ValueError(f"`output` index must be in range({m}), got {output!r}.")
        g = next(k for k, (a, b) in enumerate(self.output_groups_) if a <= j < b)
        gp, jj = self.gps_[g], j - self.output_groups_[g][0]
        Z, Y = torch.as_tensor(self.train_latent_), torch.as_tensor(self.train_targets_[:, j : j + 1])
        new = self._make_gp(Z, Y, self._bounds)
        old = gp.state_dict()
        state = {}
        for name, t in new.state_dict().items():
            src = old[name]
            if src.shape == t.shape:
                state[name] = src.clone()
            elif name.startswith("outcome_transform."):
                state[name] = src[..., jj : jj + 1].clone()
            else:  # per-output parameter (leading dim m) or shared one (leading dim 1)
                state[name] = src[jj if src.shape[0] > 1 else 0].reshape(t.shape).clone()
        new.load_state_dict(state)
        new._fit_jitter = gp._fit_jitter
        new.eval()
        return new

    def encode(self, meshes: Sequence[object], input_scalars: object = None) -> np.ndarray:
        r"""Latent GP inputs :math:`z = (\xi, \mu)` of meshes, ``(n, n_g + p)``."""
        self._check_fitted()
        meshes = [as_mesh(m, f"meshes[{i}]") for i, m in enumerate(meshes)]
        mu = _scalars("input_scalars", input_scalars, len(meshes))
        if mu.shape[1] != self.n_input_scalars_:
            raise ValueError(f"`input_scalars` must have {self.n_input_scalars_} column(s), got {mu.shape[1]}.")
        xi = np.stack([self._encode_geometry(self._operators(m, f"mesh {i}"), m) for i, m in enumerate(meshes)])
        return np.concatenate([xi, mu], axis=1)

    def _encode_geometry(self, ops: _Operators, mesh: Mesh) -> np.ndarray:
        x = np.asarray(ops.proj @ mesh.points[:, :2]).reshape(-1)
        return self._geom["W"] @ (x - self._geom["mean"])

    def decode_geometry(self, latent: object, *, as_mesh: bool = True) -> list[Mesh] | np.ndarray:
        r"""Shapes of latent geometry coordinates: the common mesh with its nodes at :math:`\bar X + \Phi_g^\top \xi`.

        Args:
            latent: ``(k, n_g)`` geometry coefficients, or ``(k, n_g + p)`` latent inputs of :attr:`gp` (the scalar
                columns are ignored); a single ``(n_g,)`` / ``(n_g + p,)`` vector is accepted.
            as_mesh: Return meshes (common-mesh connectivity) instead of node positions.

        Returns:
            ``k`` :class:`Mesh` objects, or the node positions ``(k, N_c, 2)``.
        """
        self._check_fitted()
        z = latent.detach().cpu().numpy() if isinstance(latent, torch.Tensor) else np.asarray(latent, dtype=float)
        if z.ndim == 1:
            z = z[None]
        ng = self.n_modes_geometry_
        if z.ndim != 2 or z.shape[1] not in (ng, self.n_latent) or not np.isfinite(z).all():
            raise ValueError(f"`latent` must be finite (k, {ng}) or (k, {self.n_latent}), got shape {z.shape}.")
        pos = (self._geom["mean"] + z[:, :ng] @ self._geom["modes"]).reshape(len(z), -1, 2)
        if not as_mesh:
            return pos
        return [Mesh(p, self.common_mesh_.cells) for p in pos]

    # ------------------------------------------------------------------------------------------------------------
    # predict
    # ------------------------------------------------------------------------------------------------------------
    def predict(
        self,
        meshes: Sequence[object],
        input_scalars: object = None,
        *,
        return_std: bool = False,
        n_samples: int = 0,
        observation_noise: bool = False,
    ) -> MMGPPrediction:
        r"""Predict the fields on the original nodes of new meshes, and the output scalars.

        Args:
            meshes: ``n`` meshes (any node count / connectivity that the morphing accepts).
            input_scalars: ``(n, p)``.
            return_std: Also return the exact predictive standard deviations (fields: :math:`\sqrt{\sum_k (A_{jk}
                s_k)^2 + (Q r)_j}` per node, see the module docstring).
            n_samples: Number ``S`` of Monte Carlo draws of the coefficients and scalars to decode (0 = none).
            observation_noise: Include the GPs' learned noise in the coefficient / scalar variances (predicts new
                observations; the default is the latent GP, as the reference).

        Returns:
            An :class:`MMGPPrediction`.
        """
        self._check_fitted()
        check_positive("n_samples", n_samples, integer=True, allow_zero=True)
        meshes = [as_mesh(m, f"meshes[{i}]") for i, m in enumerate(meshes)]
        n = len(meshes)
        mu = _scalars("input_scalars", input_scalars, n)
        if mu.shape[1] != self.n_input_scalars_:
            raise ValueError(f"`input_scalars` must have {self.n_input_scalars_} column(s), got {mu.shape[1]}.")
        tm = {k: np.zeros(2) for k in ("morph", "transfer", "gp", "decode")}
        ops_all, xi = [], []
        for i, mesh in enumerate(meshes):
            ops = self._operators(mesh, f"mesh {i}")
            tm["morph"] += ops.t_morph
            tm["transfer"] += ops.t_transfer
            ops_all.append(ops)
            xi.append(self._encode_geometry(ops, mesh))
        Z = np.concatenate([np.stack(xi), mu], axis=1)
        t0 = _now()
        want_std = return_std or n_samples > 0
        mean, std = self._gp_predict(torch.as_tensor(Z), want_std, observation_noise)
        tm["gp"] = _now() - t0

        t0 = _now()
        nf = self.n_modes_fields_
        offs = np.concatenate([[0], np.cumsum(nf)])
        q = len(self.scalar_names_)
        rng = np.random.default_rng([self.seed, 7919])
        fields, fields_std, fsamp = [], [], []
        eps = rng.standard_normal((n_samples, n, mean.shape[1])) if n_samples else None
        for i, ops in enumerate(ops_all):
            Ui, Si, Di = [], [], []
            for k, fk in enumerate(self._fields):
                a = mean[i, offs[k] : offs[k + 1]]
                Ui.append(ops.inv_proj @ (fk["mean"] + a @ fk["modes"]))
                # (N_i,); the P1 weights can be -1e-15 (rounding), so clamp: a variance is never negative
                tv = np.maximum(ops.inv_proj @ fk["trunc_var"], 0.0) if self.truncation_variance else None
                if return_std:
                    A = np.asarray(ops.inv_proj @ fk["modes"].T)  # (N_i, n_f)
                    var = (A**2) @ std[i, offs[k] : offs[k + 1]] ** 2
                    Si.append(np.sqrt(var + tv if tv is not None else var))
                if n_samples:
                    draws = a + std[i, offs[k] : offs[k + 1]] * eps[:, i, offs[k] : offs[k + 1]]  # (S, n_f)
                    d_i = np.asarray(ops.inv_proj @ (fk["mean"] + draws @ fk["modes"]).T).T  # (S, N_i)
                    if tv is not None:
                        d_i = d_i + np.sqrt(tv) * rng.standard_normal(d_i.shape)
                    Di.append(d_i)
            fields.append(np.column_stack(Ui))
            if return_std:
                fields_std.append(np.column_stack(Si))
            if n_samples:
                fsamp.append(np.stack(Di, axis=-1))
        tm["decode"] = _now() - t0
        sl = slice(offs[-1], offs[-1] + q)
        return MMGPPrediction(
            fields=fields,
            scalars=mean[:, sl],
            fields_std=fields_std if return_std else None,
            scalars_std=std[:, sl] if return_std else None,
            field_samples=fsamp if n_samples else None,
            scalar_samples=(mean[None, :, sl] + std[None, :, sl] * eps[:, :, sl]) if n_samples else None,
            latent=Z,
            timings=_split(tm)[0],
            cpu_timings=_split(tm)[1],
        )

    # ------------------------------------------------------------------------------------------------------------
    # persistence
    # ------------------------------------------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "morphing": self.morphing,
            "n_modes_geometry": self.n_modes_geometry,
            "n_modes_fields": self.n_modes_fields,
            "kernel": self.kernel,
            "hyperparameters": self.hyperparameters,
            "truncation_variance": self.truncation_variance,
            "restarts": self.restarts,
            "max_iter": self.max_iter,
            "center": self.center,
            "ref_compat": self.ref_compat,
            "floater_start": self.floater_start,
            "seed": self.seed,
            "progress": self.progress,
        }

    def save(self, path: str | os.PathLike) -> None:
        r"""Save the fitted model with ``torch.save`` (tensors and plain Python values only, so :meth:`load` can use
        ``weights_only=True``)."""
        self._check_fitted()
        if callable(self.kernel):
            raise ValueError("A model with a custom kernel callable cannot be saved; use a kernel name.")
        t = torch.as_tensor
        state = {
            "format": _FORMAT,
            "config": self._config(),
            "common_points": t(self.common_mesh_.points),
            "common_cells": t(self.common_mesh_.cells),
            "geometry": {k: t(v) for k, v in self._geom.items()},
            "fields": [{k: t(v) for k, v in f.items()} for f in self._fields],
            "field_names": list(self.field_names_),
            "scalar_names": list(self.scalar_names_),
            "n_input_scalars": int(self.n_input_scalars_),
            "train_latent": t(self.train_latent_),
            "train_targets": t(self.train_targets_),
            "bounds": self._bounds,
            "gp_states": [g.state_dict() for g in self.gps_],
            "timings": dict(self.timings_),
            "cpu_timings": dict(self.cpu_timings_),
            "fit_jitters": [g._fit_jitter for g in self.gps_],
        }
        torch.save(state, os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> MMGP:
        r"""Load a model written by :meth:`save` (predictions are identical)."""
        state = torch.load(os.fspath(path), weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{os.fspath(path)!r} is not an MMGP file written by MMGP.save ({_FORMAT}).")
        cfg = dict(state["config"])
        cfg.setdefault("hyperparameters", "per_output")  # files written before the option existed
        cfg.setdefault("truncation_variance", False)
        model = cls(**cfg)
        common = Mesh(state["common_points"].numpy(), state["common_cells"].numpy())
        model._set_common(common)
        model._geom = {k: v.numpy() for k, v in state["geometry"].items()}
        model._fields = [{k: v.numpy() for k, v in f.items()} for f in state["fields"]]
        for f in model._fields:
            f.setdefault("trunc_var", np.zeros(f["modes"].shape[1]))
        model.field_names_ = state["field_names"]
        model.scalar_names_ = state["scalar_names"]
        model.n_input_scalars_ = state["n_input_scalars"]
        model.n_modes_geometry_ = int(model._geom["modes"].shape[0])
        model.n_modes_fields_ = [int(f["modes"].shape[0]) for f in model._fields]
        model._bounds = state["bounds"]
        Z, Y = state["train_latent"], state["train_targets"]
        model.train_latent_, model.train_targets_ = Z.numpy(), Y.numpy()
        model.output_groups_ = model._groups()
        model.gps_ = model._build_gps(Z, Y)
        gp_states = state.get("gp_states", [state.get("gp_state")])
        jitters = state.get("fit_jitters", [state.get("fit_jitter")])
        for g, st, jit in zip(model.gps_, gp_states, jitters, strict=True):
            g.load_state_dict(st)
            g._fit_jitter = jit
            g.eval()
        model._gp_list = None
        model.timings_, model.cpu_timings_ = state["timings"], state["cpu_timings"]
        return model
