r"""Snapshot proper orthogonal decomposition (POD) with a mass-matrix inner product.

Given snapshots :math:`u_1, \dots, u_n` of a nodal field on a common mesh, POD finds the modes :math:`\phi_k`,
orthonormal for the discrete :math:`L^2` inner product :math:`\langle u, v \rangle_M = u^\top M v` (``M`` the P1
mass matrix, :func:`gpgeom.geometry.fem.mass_matrix`), that best approximate the snapshots in that norm. The
*method of snapshots* (Sirovich 1987) works with the ``n x n`` correlation matrix, cheap when ``n << n_nodes``; it is
the dimension reduction of MMGP (Casenave et al., NeurIPS 2023, arXiv:2305.12871, Sec. 3.2):

.. math::
    S = [u_1 - \bar u, \dots, u_n - \bar u]^\top, \qquad C = S M S^\top = V \Lambda V^\top,
    \qquad \phi = \Lambda_k^{-1/2} V_k^\top S, \qquad \phi M \phi^\top = I_k,

coefficients :math:`a(u) = \phi M (u - \bar u)` and reconstruction :math:`\bar u + \phi^\top a`.

Inputs are numpy arrays or torch tensors; outputs are numpy float64 arrays.

POD is scale-equivariant: the modes of :math:`s u` are those of :math:`u`, its mean and coefficients :math:`s`
times theirs, at any magnitude of float64. The mean and :math:`C` are formed from snapshots scaled by a power of
two (exact in binary floating point) so that their squares neither overflow nor underflow (snapshots of 1e200 or
1e-200 did). Only the eigenvalues, squares in the snapshots' units, leave float64 for snapshots beyond about
1e154 or below 1e-154 (``inf`` or ``0``; the energy ratios stay exact).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from gpgeom._validation import check_positive
from gpgeom._warnings import user_stacklevel
from gpgeom.geometry.mesh import as_float_array

__all__ = ["SnapshotPOD"]


def _unit_scaled(S: np.ndarray) -> tuple[np.ndarray, int]:
    r"""``S`` scaled by the power of two :math:`2^{-e}` that brings :math:`\max |S|` into ``[0.5, 1)``, and ``e``
    (``0`` for an empty or all-zero ``S``): ``S == np.ldexp(T, e)`` exactly, whatever the magnitude of ``S``."""
    if S.size == 0:
        return S, 0
    e = int(np.frexp(np.abs(S).max())[1])
    return np.ldexp(S, -e), e


class SnapshotPOD:
    r"""Snapshot POD with a mass-matrix inner product, scikit-learn style (``fit`` / ``transform`` /
    ``inverse_transform``).

    Args:
        n_modes: Number of modes to keep. ``None`` (with ``energy=None``): every mode of non-negligible energy.
        energy: Alternatively, keep the fewest modes whose eigenvalues sum to at least this fraction ``(0, 1]`` of
            the total (the "energy" :math:`\sum_{j \le k} \lambda_j / \sum_j \lambda_j`).
        center: Subtract the snapshot mean before the decomposition (default). ``False`` reproduces the reference
            MMGP code, which decomposes the raw snapshots.
        rtol: Eigenvalues below ``rtol * lambda_max`` count as zero (numerical rank); their modes are never kept,
            since dividing by :math:`\sqrt{\lambda}` would amplify round-off.

    Attributes:
        mean_: Snapshot mean, ``(n_nodes[, n_components])`` (zeros when ``center=False``).
        modes_: M-orthonormal modes, ``(n_modes_, n_nodes[, n_components])``.
        eigenvalues_: Their eigenvalues :math:`\lambda_k` of :math:`C`, ``(n_modes_,)``, decreasing (squares in the
            snapshots' units: ``inf`` / ``0`` for snapshots beyond about 1e154 / below 1e-154, see the module).
        explained_energy_ratio_: :math:`\lambda_k / \sum_j \lambda_j` for the kept modes, ``(n_modes_,)``.
        n_modes_: Number of kept modes.
        mass_: The mass matrix used (``None`` = identity).
    """

    def __init__(
        self,
        n_modes: int | None = None,
        *,
        energy: float | None = None,
        center: bool = True,
        rtol: float = 1e-12,
    ) -> None:
        if n_modes is not None and energy is not None:
            raise ValueError("Give either `n_modes` or `energy`, not both.")
        if n_modes is not None:
            check_positive("n_modes", n_modes, integer=True)
        if energy is not None:
            check_positive("energy", energy)
            if energy > 1:
                raise ValueError(f"`energy` is a fraction in (0, 1], got {energy!r}.")
        check_positive("rtol", rtol, allow_zero=True)
        self.n_modes = n_modes
        self.energy = energy
        self.center = bool(center)
        self.rtol = float(rtol)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _snapshots(self, name: str, x: object) -> np.ndarray:
        X = as_float_array(name, x, ndim=(2, 3))
        if hasattr(self, "field_shape_") and X.shape[1:] != self.field_shape_:
            raise ValueError(
                f"`{name}` must have shape (n_samples, {', '.join(map(str, self.field_shape_))}) like the fitted "
                f"snapshots, got {X.shape}."
            )
        return X

    def _set_mass(self, mass: object, n_nodes: int, n_comp: int) -> None:
        self.mass_ = None
        self._mass_per_node = False
        if mass is None:
            return
        if sp.issparse(mass):
            M = sp.csr_matrix(mass, dtype=np.float64)
            if not np.isfinite(M.data).all():
                raise ValueError(f"`mass` must be finite, got {int((~np.isfinite(M.data)).sum())} NaN or inf value(s).")
        else:
            M = as_float_array("mass", mass, ndim=2)
        if M.shape[0] != M.shape[1]:
            raise ValueError(f"`mass` must be square, got shape {M.shape}.")
        if M.shape[0] == n_nodes:
            self._mass_per_node = n_comp > 1
        elif M.shape[0] != n_nodes * n_comp:
            raise ValueError(
                f"`mass` must be ({n_nodes}, {n_nodes}) (applied per component) or "
                f"({n_nodes * n_comp}, {n_nodes * n_comp}) (acting on flattened snapshots), got {M.shape}."
            )
        self.mass_ = M

    def _apply_mass(self, X: np.ndarray) -> np.ndarray:
        r"""``X M`` for flattened rows ``X`` ``(r, F)`` (``M`` is symmetric)."""
        if self.mass_ is None:
            return X
        if self._mass_per_node:
            r = X.shape[0]
            n_nodes, c = self.field_shape_
            Y = X.reshape(r, n_nodes, c).transpose(1, 0, 2).reshape(n_nodes, r * c)
            return np.asarray(self.mass_ @ Y).reshape(n_nodes, r, c).transpose(1, 0, 2).reshape(r, n_nodes * c)
        return np.asarray(self.mass_ @ X.T).T

    # -- API -----------------------------------------------------------------------------------------------------
    def fit(self, snapshots: object, mass: object | None = None) -> SnapshotPOD:
        r"""Compute the modes.

        Args:
            snapshots: ``(n_samples, n_nodes)`` or ``(n_samples, n_nodes, n_components)``.
            mass: Symmetric positive-definite inner-product matrix (scipy.sparse or dense): ``(n_nodes, n_nodes)``
                applied to each component, or ``(F, F)`` with ``F = n_nodes * n_components`` acting on the
                row-major flattened snapshot. ``None``: Euclidean inner product.
        """
        X = as_float_array("snapshots", snapshots, ndim=(2, 3))
        n = X.shape[0]
        if n < 1:
            raise ValueError("`snapshots` holds no sample.")
        self.field_shape_ = tuple(X.shape[1:])
        n_nodes = X.shape[1]
        n_comp = X.shape[2] if X.ndim == 3 else 1
        self._set_mass(mass, n_nodes, n_comp)
        # scale-equivariant at any magnitude: the Gram matrix holds squares of the snapshots (1e200 overflowed,
        # 1e-200 underflowed), so the mean and the Gram matrix are formed from snapshots scaled by powers of two,
        # which is exact in binary floating point, and scaled back after (the modes are scale-free)
        S, e = _unit_scaled(X.reshape(n, -1))
        mean = S.mean(axis=0) if self.center else np.zeros(S.shape[1])
        S, f = _unit_scaled(S - mean)
        mean = np.ldexp(mean, e)
        C = S @ self._apply_mass(S).T
        C = 0.5 * (C + C.T)
        lam, V = np.linalg.eigh(C)
        lam, V = lam[::-1], V[:, ::-1]
        total = float(np.clip(lam, 0.0, None).sum())
        lam_max = float(lam[0]) if n else 0.0
        rank = int((lam > self.rtol * lam_max).sum()) if lam_max > 0 else 0
        if self.n_modes is not None:
            if self.n_modes > n:
                raise ValueError(f"`n_modes`={self.n_modes} exceeds the number of snapshots ({n}).")
            k = self.n_modes
            if k > rank:
                warnings.warn(
                    f"Only {rank} POD mode(s) have non-negligible energy; keeping {rank} instead of n_modes={k}.",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
                k = rank
        elif self.energy is not None:
            frac = np.cumsum(lam[:rank]) / total if total > 0 else np.ones(rank)
            k = min(int(np.searchsorted(frac, self.energy * (1 - 1e-12))) + 1, rank)
        else:
            k = rank
        if k == 0:
            raise ValueError("The snapshots carry no energy (all equal to their mean); there is no mode to keep.")
        lam_k, V_k = lam[:k], V[:, :k]
        modes = (V_k / np.sqrt(lam_k)).T @ S
        self.mean_ = mean.reshape(self.field_shape_)
        self.modes_ = modes.reshape((k,) + self.field_shape_)
        with np.errstate(over="ignore", under="ignore"):  # squares of the snapshots: see the class docstring
            self.eigenvalues_ = np.ldexp(lam_k, 2 * (e + f))
        self.explained_energy_ratio_ = lam_k / total
        self.n_modes_ = k
        self._modes_flat = modes
        self._mean_flat = mean
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "modes_"):
            raise RuntimeError("This SnapshotPOD is not fitted yet; call fit(snapshots, mass) first.")

    def transform(self, snapshots: object) -> np.ndarray:
        r"""POD coefficients :math:`a = \phi M (u - \bar u)`: ``(n, n_nodes[, c])`` -> ``(n, n_modes_)``."""
        self._check_fitted()
        X = self._snapshots("snapshots", snapshots)
        S = X.reshape(X.shape[0], self._mean_flat.size) - self._mean_flat  # an explicit width: n = 0 is valid
        S, e = _unit_scaled(S)  # exact power-of-two scaling: M S neither overflows nor underflows
        return np.ldexp(self._apply_mass(S) @ self._modes_flat.T, e)

    def inverse_transform(self, coefficients: object) -> np.ndarray:
        r"""Reconstruction :math:`\bar u + \phi^\top a`: ``(n, n_modes_)`` -> ``(n, n_nodes[, c])``."""
        self._check_fitted()
        A = as_float_array("coefficients", coefficients, ndim=2, shape=(None, self.n_modes_))
        return (self._mean_flat + A @ self._modes_flat).reshape((A.shape[0],) + self.field_shape_)

    def fit_transform(self, snapshots: object, mass: object | None = None) -> np.ndarray:
        r"""``fit`` then ``transform`` of the same snapshots, ``(n, n_modes_)``."""
        return self.fit(snapshots, mass).transform(snapshots)
