r"""The nonlinear Poisson family in 1-D and its reference solvers (a problem of Random Grid Neural Processes,
Vadeboncoeur et al., ICML 2023, arXiv 2301.11040, numerical experiments).

:class:`NonlinearPoisson1D`, :math:`x \in [-1, 1]`:

.. math::
    -\bigl(k(u, x)\, u'\bigr)' = w, \quad u(\pm 1) = 0, \quad
    k(u, x) = \mathrm{softplus}\Bigl(u \sum_{i=0}^{4} z_i T_i(x)\Bigr) + 0.1,

:math:`T_i` Chebyshev polynomials, :math:`z \sim U(-1, 1)^5`, :math:`w \sim U(1, 2)`. Residual
:math:`r = -(k u')' - w = -(k_u u'^2 + k_x u' + k u'') - w`; lift :math:`u = \cos(\pi x / 2)\,\hat u`.

Reference (:func:`solve_nonlinear_poisson`): integrating once gives the **exact flux** :math:`k u' = c - w x`, so
:math:`u' = (c - w x) / k(u, x)`, :math:`u(-1) = 0`, an IVP solved by DOP853 (``rtol=1e-11``, ``atol=1e-13``); the
constant :math:`c` is the root of :math:`u(1; c) = 0` found by ``brentq`` (``xtol=1e-14``). :math:`u(1; c)` increases
with :math:`c`, and :math:`c = \pm(|w| + 1)` makes :math:`c - w x` of one sign on :math:`[-1, 1]`, which brackets the
root. Accuracy about 1e-9 or better (bounded by the IVP tolerances: tightening them to 1e-13/1e-15 changes
:math:`u` by < 5e-11); checked in ``tests/test_pde_datasets.py`` against the independent conservative
finite-difference Newton solver :func:`solve_nonlinear_poisson_fd` (measured order 1.99-2.00, max error 2e-6 to 1e-5
at 399 interior nodes; the Richardson extrapolation of the 199/399-node solutions agrees to 1e-9 to 4e-9).
Cost about 0.3 s per solve (brentq needs ~10 IVP solves).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import solve_banded
from scipy.optimize import brentq
from torch import Tensor

from gpgeom._validation import check_positive
from gpgeom.pde._checks import as_params, check_interval
from gpgeom.pde.autodiff import pointwise_grad
from gpgeom.pde.family import PDEFamily
from gpgeom.pde.registry import register_family

__all__ = ["NonlinearPoisson1D", "solve_nonlinear_poisson", "solve_nonlinear_poisson_fd"]


def _chebyshev(x: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`s(x) = \sum_i z_i T_i(x)` and :math:`s'(x)`; ``x`` ``(B, n)``, ``z`` ``(B, K)`` -> two ``(B, n)``."""
    K = z.shape[-1]
    t_prev, t_cur = torch.ones_like(x), x
    d_prev, d_cur = torch.zeros_like(x), torch.ones_like(x)
    s = z[:, :1] * t_prev
    ds = torch.zeros_like(x)
    if K > 1:
        s = s + z[:, 1:2] * t_cur
        ds = ds + z[:, 1:2] * d_cur
    for i in range(2, K):
        # T_i = 2 x T_{i-1} - T_{i-2};  T_i' = 2 T_{i-1} + 2 x T_{i-1}' - T_{i-2}'
        t_next = 2 * x * t_cur - t_prev
        d_next = 2 * t_cur + 2 * x * d_cur - d_prev
        s = s + z[:, i : i + 1] * t_next
        ds = ds + z[:, i : i + 1] * d_next
        t_prev, t_cur, d_prev, d_cur = t_cur, t_next, d_cur, d_next
    return s, ds


def _poisson_k(u: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, u * np.polynomial.chebyshev.chebval(x, z)) + 0.1


def solve_nonlinear_poisson(
    z: object, w: float, x: object, *, rtol: float = 1e-11, atol: float = 1e-13, return_flux_constant: bool = False
) -> np.ndarray | tuple[np.ndarray, float]:
    r"""Reference solution of :math:`-(k(u,x) u')' = w`, :math:`u(\pm 1) = 0` by shooting on the exact flux.

    Args:
        z: The 5 Chebyshev coefficients of :math:`k` (any length :math:`\ge 1` works).
        w: The constant source.
        x: Query points in :math:`[-1, 1]`, any shape.
        rtol, atol: Tolerances of the DOP853 integration.
        return_flux_constant: Also return :math:`c` of the flux :math:`k u' = c - w x`.

    Returns:
        :math:`u(x)`, float64 array of the shape of ``x`` (and :math:`c`).
    """
    z = np.asarray(z, dtype=float).reshape(-1)
    if z.size == 0 or not np.all(np.isfinite(z)):
        raise ValueError(f"`z` must be a non-empty finite array of Chebyshev coefficients, got {z.tolist()}.")
    w = float(as_params("w", w, 1)[0])
    xq = np.asarray(x, dtype=float)
    check_interval("x", xq, -1.0, 1.0)
    check_positive("rtol", rtol)
    check_positive("atol", atol)

    def rhs(s, u, c):
        return (c - w * s) / _poisson_k(u, s, z)

    def end_value(c):
        sol = solve_ivp(rhs, (-1.0, 1.0), [0.0], args=(c,), method="DOP853", rtol=rtol, atol=atol)
        return sol.y[0, -1]

    bound = abs(w) + 1.0
    c = brentq(end_value, -bound, bound, xtol=1e-14, rtol=4 * np.finfo(float).eps, maxiter=200)
    sol = solve_ivp(rhs, (-1.0, 1.0), [0.0], args=(c,), method="DOP853", rtol=rtol, atol=atol, dense_output=True)
    u = sol.sol(xq.reshape(-1))[0].reshape(xq.shape)
    u = np.where((xq == -1.0) | (xq == 1.0), 0.0, u)
    return (u, float(c)) if return_flux_constant else u


def solve_nonlinear_poisson_fd(
    z: object, w: float, n_interior: int, *, tol: float = 1e-13, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    r"""Independent check: conservative second-order finite differences + Newton on a uniform grid.

    With :math:`h = 2 / (N + 1)`, :math:`x_j = -1 + j h` and :math:`k_{j \pm 1/2} = k((u_j + u_{j \pm 1})/2,
    x_{j \pm 1/2})`, solves :math:`-[k_{j+1/2}(u_{j+1} - u_j) - k_{j-1/2}(u_j - u_{j-1})] / h^2 = w`,
    :math:`u_0 = u_{N+1} = 0`, by Newton's method with the exact tridiagonal Jacobian (with backtracking).

    Returns:
        ``(x, u)``, both of shape ``(N + 2,)`` including the boundary nodes.
    """
    z = np.asarray(z, dtype=float).reshape(-1)
    w = float(as_params("w", w, 1)[0])
    check_positive("n_interior", n_interior, integer=True)
    n = n_interior
    h = 2.0 / (n + 1)
    x = -1.0 + h * np.arange(n + 2)
    xm = x[:-1] + h / 2  # midpoints x_{j+1/2}, j = 0..N
    s_mid = np.polynomial.chebyshev.chebval(xm, z)

    def parts(u_full):
        du = np.diff(u_full)  # u_{j+1} - u_j at midpoints
        arg = 0.5 * (u_full[:-1] + u_full[1:]) * s_mid
        k = np.logaddexp(0.0, arg) + 0.1
        dk = 0.5 / (1.0 + np.exp(-arg)) * s_mid  # dk/du_j = dk/du_{j+1} = sigmoid(arg) s / 2
        flux = k * du
        res = -(flux[1:] - flux[:-1]) - w * h * h  # h^2 times the residual at interior nodes
        return res, k, dk, du

    u = np.zeros(n + 2)
    res, k, dk, du = parts(u)
    for _ in range(max_iter):
        # d res_j / d u_{j+1}, d u_j, d u_{j-1}  (res_j = -k_{j+1/2} du_{j+1/2} + k_{j-1/2} du_{j-1/2} - w h^2)
        kp, kmn = k[1:], k[:-1]
        dkp, dkm = dk[1:], dk[:-1]
        dup, dum = du[1:], du[:-1]
        upper = -kp - dkp * dup
        diag = kp - dkp * dup + kmn + dkm * dum
        lower = -kmn + dkm * dum
        ab = np.zeros((3, n))
        ab[0, 1:] = upper[:-1]
        ab[1] = diag
        ab[2, :-1] = lower[1:]
        step = solve_banded((1, 1), ab, -res)
        norm0 = np.linalg.norm(res)
        lam = 1.0
        while True:
            trial = u.copy()
            trial[1:-1] += lam * step
            res_t, k_t, dk_t, du_t = parts(trial)
            if np.linalg.norm(res_t) < norm0 or lam < 1e-4:
                break
            lam /= 2
        u, res, k, dk, du = trial, res_t, k_t, dk_t, du_t
        if np.max(np.abs(lam * step)) < tol:
            return x, u
    raise RuntimeError(f"Newton did not converge in {max_iter} iterations (last step {np.max(np.abs(step)):.3g}).")


@register_family
class NonlinearPoisson1D(PDEFamily):
    r""":math:`-(k(u,x) u')' = w` on :math:`[-1, 1]`, :math:`u(\pm1) = 0`,
    :math:`k = \mathrm{softplus}(u \sum_{i<5} z_i T_i(x)) + 0.1`, :math:`z \sim U(-1,1)^5`, :math:`w \sim U(1,2)`."""

    name = "nonlinear_poisson_1d"
    dim = 1
    coordinates = ("x",)
    lower, upper = (-1.0,), (1.0,)
    z_names = ("z0", "z1", "z2", "z3", "z4")
    z_low, z_high = (-1.0,) * 5, (1.0,) * 5
    w_names = ("source",)
    w_low, w_high = (1.0,), (2.0,)

    def derivatives(self, u_fn, x):
        u = self._eval(u_fn, x)
        u_x = pointwise_grad(u, x)[..., 0]
        u_xx = pointwise_grad(u_x, x)[..., 0]
        return {"u": u, "u_x": u_x, "u_xx": u_xx}

    def conductivity(self, u: Tensor, x: Tensor, z: Tensor) -> Tensor:
        r""":math:`k(u, x)` for ``u``, ``x`` ``(B, n)`` and ``z`` ``(B, 5)``."""
        s, _ = _chebyshev(x, z)
        return torch.nn.functional.softplus(u * s) + 0.1

    def residual_from_derivatives(self, d, x, z, w):
        r""":math:`r = -(k_u u_x^2 + k_x u_x + k u_{xx}) - w`, :math:`k_u = \sigma(us) s`,
        :math:`k_x = \sigma(us) u s'`, :math:`s = \sum z_i T_i`, :math:`\sigma` the logistic function."""
        xs = x[..., 0]
        s, ds = _chebyshev(xs, z)
        u, u_x, u_xx = d["u"], d["u_x"], d["u_xx"]
        arg = u * s
        k = torch.nn.functional.softplus(arg) + 0.1
        sig = torch.sigmoid(arg)
        return -(sig * s * u_x * u_x + sig * u * ds * u_x + k * u_xx) - w[:, :1]

    def boundary_ansatz(self, x, w):
        r""":math:`b = 0`, :math:`d = \cos(\pi x / 2)` (the choice of the authors' reference code)."""
        xs = x[..., 0]
        return torch.zeros_like(xs), torch.cos(0.5 * math.pi * xs)

    def solve(self, z, w, x):
        x = np.asarray(x, dtype=float)
        if x.ndim == 0 or x.shape[-1] != 1:
            raise ValueError(f"`x` must have a trailing dimension of size 1, got shape {x.shape}.")
        return solve_nonlinear_poisson(as_params("z", z, 5), w, x[..., 0])

    def test_points(self, n_points):
        check_positive("n_points", n_points, integer=True)
        if n_points < 2:
            raise ValueError(f"`n_points` must be >= 2, got {n_points}.")
        return np.linspace(-1.0, 1.0, n_points)[:, None]
