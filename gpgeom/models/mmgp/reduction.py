r"""MMGP's reduced representations: the geometry POD and one POD per output field, and the decode of predicted
coefficients onto the nodes of any mesh with the exact predictive variance (Casenave et al., NeurIPS 2023,
arXiv:2305.12871, Sec. 3.2 and 3.4).

**Geometry** (paper Eq. (3)): the physical coordinates transported to the common nodes, :math:`X_i = P_i x_i \in
\mathbb{R}^{N_c \times 2}`, are reduced by a snapshot POD with the P1 mass matrix :math:`M`:
:math:`\xi_i = \Phi_g M_2 (X_i - \bar X) \in \mathbb{R}^{n_g}` with :math:`\Phi_g M_2 \Phi_g^\top = I`. This is
part of the geometry preprocessing and stays in float64 numpy on the CPU (:class:`GeometryPOD`).

**Fields**: :math:`P_i U_i^{(f)}` is reduced by one POD per field, coefficients :math:`a_i^{(f)} \in
\mathbb{R}^{n_f}`. The decode operators (means :math:`\bar u^{(f)}`, modes :math:`\Phi_f`, truncation variances
:math:`r^{(f)}`) are tensors of the model's dtype on its device (:class:`FieldPOD`), so that the decode
:math:`\hat U^{(f)} = Q(\bar u^{(f)} + \Phi_f^\top \hat a^{(f)})` (:func:`decode_fields`) runs where the GP runs.

**Exact variance**: the decode is affine, so with the GP marginal :math:`a^{(f)} \sim \mathcal{N}(\hat a,
\operatorname{diag}(s^2))` the nodal variance is :math:`\sum_k (A_{jk} s_k)^2` with :math:`A = Q \Phi_f^\top \in
\mathbb{R}^{N \times n_f}` (never an ``N x N`` matrix), plus the POD truncation variance :math:`(Q r)_j`, where
:math:`r_c` is the cross-validated mean squared truncation residual of the training snapshots on common node
:math:`c` (:func:`truncation_variance`), scaled per mesh and field by the geometry factor :math:`\lambda^{(f)}` of
:mod:`~gpgeom.models.mmgp.unexplained`.

**Monte Carlo draws** (``predict(..., n_samples=S)``): the truncation error is a smooth field (a combination of the
discarded modes), not white noise, and draws feed derived quantities (maxima, integrals, gradients). Its covariance
on the common nodes is that of the cross-validated residuals :math:`R \in \mathbb{R}^{n \times N_c}` themselves,
:math:`C = R^\top R / n` (so :math:`\operatorname{diag}(C) = r` exactly), kept as the factor :math:`L = R/\sqrt n`
(:attr:`FieldPOD.trunc_factor`, ``n x N_c``; not compressed by a truncated SVD: each out-of-sample residual adds
a direction, the spectrum is flat and nearly all ``n`` factors are needed for the trace). A draw on mesh :math:`i`
is :math:`\sqrt{\lambda}\, Q L^\top g` with :math:`g \sim \mathcal{N}(0, I_n)`, plus independent nodal noise of
variance :math:`\lambda\bigl(Q r - \operatorname{diag}(Q C Q^\top)\bigr) \ge 0` (the variation within a common
element that the interpolated variance :math:`Q r` holds and the interpolated residuals do not), so that the
draws' marginal variances are exactly the predictive std's (:func:`truncation_draws`). Model files written before
the factor draw independent nodes, as they did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from gpgeom._validation import squarable_range
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.geometry.pod import SnapshotPOD
from gpgeom.models.mmgp.inputs import mode_option
from gpgeom.models.mmgp.transfer import TransferOperators
from gpgeom.models.mmgp.unexplained import ROUNDING, cv_folds, geometry_share

__all__ = [
    "FieldPOD",
    "GeometryPOD",
    "check_field_spread",
    "decode_fields",
    "truncation_draws",
    "truncation_noise",
    "truncation_residuals",
    "truncation_variance",
]


def _same_on_every_mesh(S: np.ndarray, mean: np.ndarray) -> bool:
    r"""Whether the snapshots ``S`` ``(n, ...)`` equal ``mean`` (their mean, or zero uncentred) up to rounding: no POD
    mode would carry energy (one fixed geometry; a field that is zero, or constant, on every mesh)."""
    return bool(np.abs(S - mean).max() <= ROUNDING * np.abs(S).max())


# ----------------------------------------------------------------------------------------------------------------
# geometry
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class GeometryPOD:
    r"""The geometry POD (Eq. (3)), float64 numpy.

    Attributes:
        mean: :math:`\bar X`, ``(d N_c,)`` (interleaved ``x0, y0, x1, ...``; ``d`` the space dimension).
        modes: :math:`\Phi_g`, ``(n_g, d N_c)``.
        eigenvalues: ``(n_g,)``.
        encoder: :math:`W = \Phi_g M_d`, ``(n_g, d N_c)``, so :math:`\xi = W (x - \bar X)`.
    """

    mean: np.ndarray
    modes: np.ndarray
    eigenvalues: np.ndarray
    encoder: np.ndarray

    @classmethod
    def fit(
        cls, X: np.ndarray, common: Mesh, mass: sp.spmatrix, n_modes: int | float, center: bool, ref_compat: bool
    ) -> tuple[GeometryPOD, np.ndarray]:
        r"""The POD of the transported coordinates ``X`` ``(n, N_c, d)`` (``d`` = 2, or 3 for meshes in 3D) and their
        coefficients ``(n, n_g)``.

        ``ref_compat`` uses the reference implementation's inner product ``kron(I_d, M)`` applied to interleaved
        coordinates; otherwise ``M`` acts on each coordinate.
        """
        n, d = X.shape[0], X.shape[-1]
        ng, eg = mode_option("n_modes_geometry", n_modes)
        mean = X.mean(0) if center else np.zeros(X.shape[1:])
        if _same_on_every_mesh(X, mean):
            # every training shape is the same on the common mesh (one fixed geometry, e.g. morphing="none" on one
            # mesh): no mode carries energy. One zero mode keeps the shapes of the GP stage (a constant latent
            # input); it decodes to the mean shape.
            zero = np.zeros((1, mean.size))
            return cls(mean.reshape(-1), zero, np.zeros(1), zero.copy()), np.zeros((n, 1))
        pod = SnapshotPOD(ng, energy=eg, center=center)
        if ref_compat:
            M2 = mass_matrix(common, d, "blocked")
            xi = pod.fit_transform(X.reshape(n, -1), M2)
        else:
            M2 = mass_matrix(common, d, "interleaved")
            xi = pod.fit_transform(X, mass)
        modes = pod.modes_.reshape(pod.n_modes_, -1)
        encoder = np.ascontiguousarray((M2 @ modes.T).T)  # the layout of a loaded model: the same rounding
        return cls(pod.mean_.reshape(-1), modes, pod.eigenvalues_, encoder), xi

    @property
    def n_modes(self) -> int:
        return int(self.modes.shape[0])

    def transport(self, ops: TransferOperators, mesh: Mesh) -> np.ndarray:
        r"""The physical coordinates of ``mesh`` on the common nodes, :math:`P_i x_i`, flattened ``(d N_c,)``."""
        return np.asarray(ops.proj @ mesh.points).reshape(-1)

    def encode(self, ops: TransferOperators, mesh: Mesh) -> np.ndarray:
        r""":math:`\xi = W (P_i x_i - \bar X)`, ``(n_g,)``."""
        return self.encoder @ (self.transport(ops, mesh) - self.mean)

    def residual(self, x: np.ndarray) -> np.ndarray:
        r"""The part of transported coordinates ``x`` ``(k, 2 N_c)`` that the modes do not represent,
        :math:`x - \bar X - \Phi_g^\top \xi` with :math:`\xi = W (x - \bar X)`, ``(k, 2 N_c)``."""
        d = x - self.mean
        return d - (d @ self.encoder.T) @ self.modes

    def decode(self, xi: np.ndarray, dim: int = 2) -> np.ndarray:
        r"""Node positions :math:`\bar X + \Phi_g^\top \xi` of the common mesh, ``(k, N_c, dim)`` for ``xi``
        ``(k, n_g)`` (``dim``: the space dimension of the common mesh)."""
        return (self.mean + xi @ self.modes).reshape(len(xi), self.mean.size // dim, dim)  # k = 0 is valid

    def state(self) -> dict[str, Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> GeometryPOD:
        return cls(**{k: state[k].double().numpy() for k in cls.__dataclass_fields__})


# ----------------------------------------------------------------------------------------------------------------
# fields
# ----------------------------------------------------------------------------------------------------------------
def check_field_spread(F: np.ndarray, names: list[str], dtype: torch.dtype) -> None:
    r"""Raise a ``ValueError`` naming the field when the spread :math:`d = \max |F - \bar F|` of a field over the
    training meshes ``F`` ``(n, N_c, m)`` (transported, ``m`` fields named ``names``) has a square outside the
    normal range of ``dtype``: the POD is exact at any scale (:class:`~gpgeom.geometry.pod.SnapshotPOD`), but the
    model's variances are squares in the field's units, in ``dtype``. Supported: :math:`\sqrt{\text{tiny}} \cdot 16
    \le d \le \sqrt{\text{max}} / 16` (float64: about 2.4e-153 to 8.4e152; float32: 1.7e-18 to 1.2e18). Beyond,
    the predicted fields came out NaN (float32, fields of 1e30), or, unchecked, wrong by orders of magnitude
    (float64, 1e-200). A field equal on every mesh (:math:`d` rounding) has no variance and is not checked."""
    lo, hi = squarable_range(dtype)
    for k, name in enumerate(names):
        Fk = F[:, :, k]
        if _same_on_every_mesh(Fk, Fk.mean(0)):
            continue
        d = float(np.abs(Fk - Fk.mean(0)).max())
        if not lo <= d <= hi:
            hint = "" if dtype == torch.float64 else ", or use dtype=torch.float64"
            raise ValueError(
                f"`output_fields`: field {name!r} varies by up to {d:.3g} over the training meshes (max |u - mean| on "
                f"the common mesh); the model's variances are squares of that, outside the range of {dtype}, which "
                f"supports spreads in [{lo:.2g}, {hi:.2g}]. Rescale the field (divide by its typical size and "
                f"multiply the predictions back){hint}."
            )


@dataclass
class FieldPOD:
    r"""The POD of one output field on the common mesh, tensors of the model's dtype on its device.

    Attributes:
        mean: :math:`\bar u`, ``(N_c,)``.
        modes: :math:`\Phi_f`, ``(n_f, N_c)``, M-orthonormal.
        eigenvalues: ``(n_f,)``.
        trunc_var: The truncation variance :math:`r` on the common nodes, ``(N_c,)``.
        geometry_share: The geometric share :math:`s \in [0, 1]` of the field's unexplained variance (truncation
            and coefficient noise; :mod:`~gpgeom.models.mmgp.unexplained`), ``(1,)``.
        trunc_factor: :math:`L = R / \sqrt{n}`, ``(n, N_c)``: the cross-validated truncation residuals :math:`R` of
            the ``n`` training snapshots (:func:`truncation_residuals`), so that :math:`C = L^\top L` is their
            covariance with :math:`\operatorname{diag}(C) = r` (``(1, N_c)`` zeros for a field equal on every mesh;
            ``None`` in model files written before it: :func:`truncation_draws` falls back to independent nodes).
        transfer_kappa: The intensity of the round-trip transfer error on the common nodes times the reference
            spread, :math:`\kappa d_0`, ``(N_c,)`` (:mod:`~gpgeom.models.mmgp.roundtrip`,
            :func:`~gpgeom.models.mmgp.roundtrip.transfer_intensity`), and transfer_spread: :math:`d_0`, ``(1,)``
            (both ``None`` in model files written before them: no transfer term).
    """

    mean: Tensor
    modes: Tensor
    eigenvalues: Tensor
    trunc_var: Tensor
    geometry_share: Tensor
    trunc_factor: Tensor | None = None
    transfer_kappa: Tensor | None = None
    transfer_spread: Tensor | None = None

    @classmethod
    def fit(
        cls, F: np.ndarray, mass: sp.spmatrix, n_modes: int | float, center: bool, *, rho: np.ndarray,
        rho_mean: float, dtype: torch.dtype, device: torch.device,
    ) -> tuple[FieldPOD, np.ndarray, np.ndarray]:  # fmt: skip
        r"""The POD of the transported snapshots ``F`` ``(n, N_c)``, their coefficients ``(n, n_f)`` and the kept
        modes' shares of the snapshot energy :math:`\lambda_k / \sum_j \lambda_j` ``(n_f,)``; ``rho`` ``(n,)`` are
        the out-of-sample boundary residual energies of the training shapes and ``rho_mean`` their reference
        :math:`\bar\rho` (:class:`~gpgeom.models.mmgp.unexplained.GeometryResidual`)."""
        nk, ek = mode_option("n_modes_fields", n_modes)
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        mean = F.mean(0) if center else np.zeros(F.shape[1])
        if _same_on_every_mesh(F, mean):
            # the same field on every mesh (zero, or a constant up to transfer rounding): no mode carries energy.
            # One zero mode keeps the shapes of the GP stage; it decodes to the mean with zero variance.
            n, Nc = F.shape
            zero = cls(t(mean), t(np.zeros((1, Nc))), t([0.0]), t(np.zeros(Nc)), t([0.0]), t(np.zeros((1, Nc))))
            return zero, np.zeros((n, 1)), np.ones(1)
        pod = SnapshotPOD(nk, energy=ek, center=center)
        coefs = pod.fit_transform(F, mass)
        tv, energy, R = truncation_residuals(F, pod.n_modes_, center, mass)
        share = geometry_share(energy, rho, rho_mean, float(energy.mean()))
        ratio = pod.explained_energy_ratio_
        factor = t(R / np.sqrt(len(R)))
        return cls(t(pod.mean_), t(pod.modes_), t(pod.eigenvalues_), t(tv), t([share]), factor), coefs, ratio

    @property
    def n_modes(self) -> int:
        return int(self.modes.shape[0])

    def to(self, *, device: torch.device, dtype: torch.dtype) -> FieldPOD:
        move = lambda v: None if v is None else v.to(device=device, dtype=dtype)  # noqa: E731
        return FieldPOD(*(move(getattr(self, k)) for k in self.__dataclass_fields__))

    def project(self, F: np.ndarray, mass: sp.spmatrix) -> np.ndarray:
        r"""POD coefficients :math:`\Phi_f M (F - \bar u)` of snapshots ``F`` ``(n, N_c)`` (float64, CPU)."""
        mean = self.mean.detach().cpu().double().numpy()
        modes = self.modes.detach().cpu().double().numpy()
        return np.asarray(mass @ (F - mean).T).T @ modes.T

    def state(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> FieldPOD:
        r"""Rebuild from :meth:`state`; a state written before ``trunc_factor`` (``transfer_kappa``,
        ``transfer_spread``) leaves it ``None``."""
        optional = ("trunc_factor", "transfer_kappa", "transfer_spread")
        return cls(**{k: state.get(k) if k in optional else state[k] for k in cls.__dataclass_fields__})


def truncation_variance(S: np.ndarray, n_modes: int, center: bool, mass: sp.spmatrix, folds: int = 10) -> np.ndarray:
    r"""Cross-validated mean squared POD truncation residual per common node, ``(N_c,)``.

    Snapshot ``i`` is projected on the ``n_modes`` modes of a POD of the other folds (``folds`` interleaved
    folds), :math:`r_c = \frac1n \sum_i (F_{ic} - \mathcal{P}_{-i} F_i)_c^2`, so the estimate is out of sample, as
    for a new mesh (the in-sample residual is 2-3 times too small at n = 30; this one is 1.5-1.9 times too large
    there, less for larger n as the folds approach leave-one-out).
    """
    return truncation_residuals(S, n_modes, center, mass, folds)[0]


def truncation_residuals(
    S: np.ndarray, n_modes: int, center: bool, mass: sp.spmatrix, folds: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The cross-validated truncation variance :math:`r` ``(N_c,)`` (:func:`truncation_variance`), the
    out-of-sample residual energy :math:`e_i = \|F_i - \mathcal{P}_{-i} F_i\|_M^2` of every snapshot ``(n,)`` and the
    residuals themselves, :math:`R_i = F_i - \mathcal{P}_{-i} F_i`, ``(n, N_c)`` (zero for a snapshot whose fold
    leaves too few snapshots for a POD), so that :math:`r = \operatorname{diag}(R^\top R) / n`."""
    n = S.shape[0]
    acc, energy, res = np.zeros(S.shape[1]), np.zeros(n), np.zeros(S.shape)
    for train, test in cv_folds(n, folds):
        k = min(n_modes, len(train) - 1 if center else len(train))
        if k < 1:
            continue
        pod = SnapshotPOD(k, center=center).fit(S[train], mass)
        R = S[test] - pod.inverse_transform(pod.transform(S[test]))
        acc += (R**2).sum(0)
        energy[test] = np.einsum("ij,ij->i", R, np.asarray(mass @ R.T).T)
        res[test] = R
    return acc / n, energy, res


# ----------------------------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------------------------
def truncation_noise(
    gen: torch.Generator, n_samples: int, n_nodes: int, fields: list[FieldPOD], *, dtype: torch.dtype,
    device: torch.device,
) -> tuple[Tensor, Tensor | None]:  # fmt: skip
    r"""Standard normal draws for :func:`truncation_draws` on a mesh of ``n_nodes`` nodes, from ``gen`` (float64 on
    the CPU, then moved, so that every device draws the same numbers): the independent nodal part, ``S x N_i x m``,
    then the weights of the residual factors, ``S x sum k_f`` (``None`` when a field has no factor: files written
    before it, whose draws stay those of the independent nodal noise, number for number)."""
    noise = torch.randn(n_samples, n_nodes, len(fields), generator=gen, dtype=torch.float64)
    if any(f.trunc_factor is None for f in fields):
        return noise.to(dtype=dtype, device=device), None
    k = sum(int(f.trunc_factor.shape[0]) for f in fields)
    g = torch.randn(n_samples, k, generator=gen, dtype=torch.float64)
    return noise.to(dtype=dtype, device=device), g.to(dtype=dtype, device=device)


def truncation_draws(
    Q: Tensor, fields: list[FieldPOD], tv: Tensor, noise: Tensor, g: Tensor | None, scale: Tensor | None
) -> Tensor:
    r"""Monte Carlo draws of the POD truncation term on the nodes of one mesh, ``S x N_i x m``.

    With the residual factor :math:`L = R / \sqrt{n}` of every field (:class:`FieldPOD`), the draw is
    :math:`\sqrt{\lambda}\, Q L^\top g + \sqrt{d} \odot h` with :math:`g \sim \mathcal{N}(0, I_n)` and
    :math:`h \sim \mathcal{N}(0, I_{N_i})`: a spatially correlated field of covariance :math:`\lambda\, Q C Q^\top`
    (:math:`C = L^\top L = R^\top R / n`, the covariance of the training snapshots' out-of-sample residuals) plus
    the remainder :math:`d = \lambda \bigl(Q r - \operatorname{diag}(Q C Q^\top)\bigr) \ge 0` (P1 weights are
    convex, so :math:`(Q C Q^\top)_{jj} \le (Q r)_j`; the part of the residual that varies within a common
    element) on independent nodes, so that the marginal variances are exactly those of the predictive std,
    :math:`\lambda (Q r)_j`. Without a factor (``g`` ``None``) the draw is :math:`\sqrt{\lambda Q r} \odot h`,
    independent nodes, as before the factor.

    Args:
        Q: :math:`Q_i`, sparse ``N_i x N_c``.
        fields: The field PODs (``m``).
        tv: The truncation variances :math:`\lambda (Q r)`, ``N_i x m``.
        noise: :math:`h`, ``S x N_i x m``; g: the factor weights, ``S x sum k_f`` (:func:`truncation_noise`).
        scale: :math:`\lambda` per field, ``(m,)`` (``None``: 1).
    """
    if g is None:
        return tv.sqrt() * noise
    offs = np.concatenate([[0], np.cumsum([f.trunc_factor.shape[0] for f in fields])]).tolist()
    QL = [Q @ f.trunc_factor.mT for f in fields]  # N_i x k_f each
    corr = torch.stack([g[:, offs[k] : offs[k + 1]] @ A.mT for k, A in enumerate(QL)], -1)  # S x N_i x m
    diag = torch.stack([A.square().sum(1) for A in QL], -1)  # diag(Q C Q^T), N_i x m
    lam = torch.ones(len(fields), dtype=tv.dtype, device=tv.device) if scale is None else scale
    rest = (tv - lam * diag).clamp_min(0.0)
    return lam.sqrt() * corr + rest.sqrt() * noise


def decode_fields(
    Q: Tensor,
    fields: list[FieldPOD],
    mean: Tensor,
    std: Tensor | None,
    *,
    truncation: bool,
    eps: Tensor | None = None,
    noise: Tensor | None = None,
    trunc_scale: Tensor | None = None,
    trunc_eps: Tensor | None = None,
    transfer_var: Tensor | None = None,
    transfer_noise: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""Decode the predicted coefficients of one mesh onto its nodes.

    Args:
        Q: :math:`Q_i`, sparse ``N_i x N_c`` on the model's device.
        fields: The field PODs (``m`` of them, ``sum n_f`` coefficients).
        mean: Predicted coefficients :math:`\hat a` of all fields, ``(sum n_f,)``.
        std: Their predictive standard deviations :math:`s`, ``(sum n_f,)`` (``None``: no variance).
        truncation: Add the POD truncation variance :math:`\lambda^{(f)} Q r^{(f)}`.
        trunc_scale: The factors :math:`\lambda^{(f)}` of the truncation variances, ``(m,)`` (``None``: 1).
        eps: Standard normal draws of the coefficients, ``S x sum n_f`` (Monte Carlo samples; needs ``std``).
        noise: Standard normal draws of the truncation term on the nodes, ``S x N_i x m`` (with ``eps`` and
            ``truncation``), and trunc_eps: those of its residual factors, ``S x sum k_f`` (``None``: independent
            nodes); both from :func:`truncation_noise`, combined by :func:`truncation_draws`.
        transfer_var: The variance of the round-trip transfer error on the nodes, ``N_i x m``
            (:func:`~gpgeom.models.mmgp.roundtrip.roundtrip_variance`; ``None``: none), added to the variance and,
            with ``transfer_noise`` (standard normal, ``S x N_i x m``), to the draws as independent nodal noise.

    Returns:
        ``(mean N_i x m, std N_i x m or None, samples S x N_i x m or None)``.
    """
    offs = np.concatenate([[0], np.cumsum([f.n_modes for f in fields])]).tolist()
    parts = [(f, slice(offs[k], offs[k + 1])) for k, f in enumerate(fields)]
    common = torch.stack([f.mean + mean[sl] @ f.modes for f, sl in parts], -1)  # N_c x m
    U = Q @ common
    tv = None
    if truncation and (std is not None or eps is not None):
        # the P1 weights can be -1e-15 (rounding): a variance is never negative
        tv = (Q @ torch.stack([f.trunc_var for f in fields], -1)).clamp_min(0.0)  # N_i x m
        if trunc_scale is not None:
            tv = tv * trunc_scale
    sd = None
    if std is not None:
        A = Q @ torch.cat([f.modes for f in fields], 0).mT  # N_i x sum n_f: A = Q Phi^T for every field
        var = torch.stack([A[:, sl].square() @ std[sl].square() for _, sl in parts], -1)
        for extra in (tv, transfer_var):
            var = var if extra is None else var + extra
        sd = var.sqrt()
    draws = None
    if eps is not None:
        S = eps.shape[0]
        coefs = mean + std * eps  # S x sum n_f
        common = torch.stack([f.mean + coefs[:, sl] @ f.modes for f, sl in parts], -1)  # S x N_c x m
        draws = (Q @ common.permute(1, 0, 2).reshape(common.shape[1], -1)).reshape(-1, S, len(fields))
        draws = draws.permute(1, 0, 2)  # S x N_i x m
        if tv is not None:
            draws = draws + truncation_draws(Q, fields, tv, noise, trunc_eps, trunc_scale)
        if transfer_var is not None:
            draws = draws + transfer_var.sqrt() * transfer_noise
    return U, sd, draws
