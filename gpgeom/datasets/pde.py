r"""Parametric PDE families with reference solvers of known accuracy (the RGNP problems, arXiv 2301.11040).

Two families of the Random Grid Neural Process experiments (spec ``rgnp.md`` sections 1.7 and 4). Each is a
:class:`PDEFamily`: a box domain, uniform priors on the inverse-problem parameters :math:`z` and the known parameters
:math:`w`, the PDE residual in torch (derivatives by ``torch.autograd.grad`` with ``create_graph=True``, so it can be
used inside a training loss), a hard boundary-condition ansatz, a scipy reference solver and a cached test set.

**Nonlinear Poisson 1-D** (:class:`NonlinearPoisson1D`), :math:`x \in [-1, 1]`:

.. math::
    -\bigl(k(u, x)\, u'\bigr)' = w, \quad u(\pm 1) = 0, \quad
    k(u, x) = \mathrm{softplus}\Bigl(u \sum_{i=0}^{4} z_i T_i(x)\Bigr) + 0.1,

:math:`T_i` Chebyshev polynomials, :math:`z \sim U(-1, 1)^5`, :math:`w \sim U(1, 2)`. Residual
:math:`r = -(k u')' - w = -(k_u u'^2 + k_x u' + k u'') - w`.
Reference (:func:`solve_nonlinear_poisson`): integrating once gives the **exact flux** :math:`k u' = c - w x`, so
:math:`u' = (c - w x) / k(u, x)`, :math:`u(-1) = 0`, an IVP solved by DOP853 (``rtol=1e-11``, ``atol=1e-13``); the
constant :math:`c` is the root of :math:`u(1; c) = 0` found by ``brentq`` (``xtol=1e-14``). :math:`u(1; c)` increases
with :math:`c`, and :math:`c = \pm(|w| + 1)` makes :math:`c - w x` of one sign on :math:`[-1, 1]`, which brackets the
root. Accuracy about 1e-9 or better (bounded by the IVP tolerances: tightening them to 1e-13/1e-15 changes
:math:`u` by < 5e-11); checked in ``tests/test_pde_datasets.py`` against the independent conservative
finite-difference Newton solver :func:`solve_nonlinear_poisson_fd` (measured order 1.99-2.00, max error 2e-6 to 1e-5
at 399 interior nodes; the Richardson extrapolation of the 199/399-node solutions agrees to 1e-9 to 4e-9).
Cost about 0.3 s per solve (brentq needs ~10 IVP solves).

**Viscous Burgers** (:class:`ViscousBurgers`), :math:`(x, t) \in [0, 1]^2`:

.. math::
    u_t + z_1\, u\, u_x - z_0\, u_{xx} = 0, \quad u(0, t) = u(1, t) = 0, \quad u(x, 0) = \sin(2 w \pi x) \sin(\pi x),

:math:`z_0 = \nu \sim U(0.01, 0.1)`, :math:`z_1 = a \sim U(0.5, 1)`, :math:`w \sim U(0.5, 2)` (the training prior of
the reference notebook; its FEniCS script uses :math:`\nu \in (0.005, 0.01)`, see spec 1.7).
Reference (:func:`burgers_cole_hopf`): :math:`v = a u` solves :math:`v_t + v v_x = \nu v_{xx}`; with
:math:`v = -2\nu \varphi_x / \varphi` and :math:`\varphi_t = \nu \varphi_{xx}`, Neumann :math:`\varphi_x = 0` at both
ends (so :math:`\varphi_0` is extended evenly about 0 and 1, 2-periodic) and
:math:`\varphi_0(x) = \exp(-F(x) / 2\nu)`, :math:`F(x) = \int_0^x v_0 = \tfrac{a x}{2}\bigl(\mathrm{sinc}((2w-1)x) -
\mathrm{sinc}((2w+1)x)\bigr)` (normalised sinc). Convolving with the heat kernel,

.. math::
    u(x, t) = \frac{1}{a t}\,
    \frac{\int (x - y)\, e^{E(y)}\, dy}{\int e^{E(y)}\, dy}, \qquad
    E(y) = -\frac{(x - y)^2}{4 \nu t} - \frac{F_{\mathrm{ext}}(y)}{2 \nu}.

Both integrals are evaluated with a log-sum-exp (so the ratio is well conditioned even where
:math:`\varphi` spans :math:`e^{\pm 25}`, which defeats the cosine-series form) by composite 16-point Gauss-Legendre
quadrature on :math:`[x - L, x + L]`, split at the integers (where :math:`F_{\mathrm{ext}}` has a kink in its third
derivative) into sub-panels no wider than :math:`2\sigma`, :math:`\sigma = \sqrt{2\nu t / (1 + t V)}` the narrowest
width of :math:`e^{E}` (:math:`V = |a|\pi(2|w| + 1) \ge \max |v_0'|`), and
:math:`L^2 = 4\nu t(\Delta F / 2\nu + 46)` so that the neglected tails are below :math:`e^{-46}` of the integrand's
maximum. Accuracy: refining every resolution parameter (24 nodes, 1-sigma panels, margin 60) changes :math:`u` by
< 1e-12 for :math:`t \ge 10^{-6}` (at smaller :math:`t` round-off of order :math:`10^{-16}\sqrt{\nu / t}` takes
over: 1e-9 at :math:`t = 10^{-14}`; :math:`t = 0` returns the initial condition exactly); against the
second-order method-of-lines solver :func:`solve_burgers_mol` the difference falls as
:math:`h^2` and the Richardson extrapolation of the 255/511-node solutions agrees to 2e-9 (:math:`\nu = 0.1`) and
9e-7 (:math:`\nu = 0.01`, the sharpest fields of the prior), relative to :math:`\max|u|`, the latter limited by the
method of lines (``tests/test_pde_datasets.py``). The evaluator is written in torch and is differentiable in
:math:`(x, t)`. With its nodes held fixed the quadrature sum is itself a finite sum of heat-equation solutions, so
its autograd Burgers residual vanishes to round-off (1e-14) whatever the resolution: that checks the residual code and
the transformation, while the accuracy of the values rests on the checks above.

Test sets (:meth:`PDEFamily.make_test_set`) are generated on first use and stored as ``.npz`` under
``$GPGEOM_CACHE/pde`` (default ``~/.cache/gpgeom/pde``), keyed by family, sizes and seed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import solve_banded
from scipy.optimize import brentq
from scipy.sparse import diags
from torch import Tensor

from gpgeom._validation import check_positive, check_tensor

__all__ = [
    "PDEFamily",
    "NonlinearPoisson1D",
    "ViscousBurgers",
    "PDETestSet",
    "solve_nonlinear_poisson",
    "solve_nonlinear_poisson_fd",
    "burgers_initial_condition",
    "burgers_cole_hopf",
    "solve_burgers",
    "solve_burgers_mol",
    "default_cache_dir",
]

_CACHE_VERSION = 1


# ---------------------------------------------------------------------------------------------------------------------
# helpers
def default_cache_dir() -> Path:
    r"""Root of gpgeom's cache: ``$GPGEOM_CACHE`` if set, else ``~/.cache/gpgeom``."""
    env = os.environ.get("GPGEOM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpgeom"


def _as_params(name: str, value: object, size: int) -> np.ndarray:
    arr = np.asarray(value, dtype=float).reshape(-1)
    if arr.size != size:
        raise ValueError(f"`{name}` must hold {size} number(s), got {arr.size} (shape {np.shape(value)}).")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` contains NaN or infinite values: {arr.tolist()}.")
    return arr


def _in_interval(name: str, x: np.ndarray, lo: float, hi: float) -> None:
    if x.size and (not np.all(np.isfinite(x)) or x.min() < lo - 1e-12 or x.max() > hi + 1e-12):
        raise ValueError(
            f"`{name}` must lie in [{lo:g}, {hi:g}] (the domain), got values in "
            f"[{np.nanmin(x):.6g}, {np.nanmax(x):.6g}]{' and NaN/inf' if not np.all(np.isfinite(x)) else ''}."
        )


def _grad(y: Tensor, x: Tensor) -> Tensor:
    """Pointwise derivative ``dy_i/dx_i`` (exact when ``y_i`` depends on ``x_i`` only), keeping the graph."""
    if not y.requires_grad:  # y does not depend on x (e.g. a constant field)
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


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
        s = s + z[:, i:i + 1] * t_next
        ds = ds + z[:, i:i + 1] * d_next
        t_prev, t_cur, d_prev, d_cur = t_cur, t_next, d_cur, d_next
    return s, ds


# ---------------------------------------------------------------------------------------------------------------------
# Nonlinear Poisson 1-D
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
    w = float(_as_params("w", w, 1)[0])
    xq = np.asarray(x, dtype=float)
    _in_interval("x", xq, -1.0, 1.0)
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
    w = float(_as_params("w", w, 1)[0])
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


# ---------------------------------------------------------------------------------------------------------------------
# Viscous Burgers
def burgers_initial_condition(x: Tensor | np.ndarray, w: float) -> Tensor | np.ndarray:
    r""":math:`u_0(x) = \sin(2 w \pi x) \sin(\pi x)` (torch or numpy, shape of ``x``)."""
    lib = torch if isinstance(x, Tensor) else np
    return lib.sin(2 * w * math.pi * x) * lib.sin(math.pi * x)


def _burgers_F(y: Tensor, a: float, w: float) -> Tensor:
    r""":math:`F_{ext}(y)`: :math:`\int_0^r v_0` at :math:`r` = ``y`` folded evenly into [0, 1] (period 2)."""
    r = torch.remainder(y, 2.0)
    r = torch.where(r > 1.0, 2.0 - r, r)
    return 0.5 * a * r * (torch.sinc((2 * w - 1) * r) - torch.sinc((2 * w + 1) * r))


_GL_CACHE: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def burgers_cole_hopf(
    x: Tensor,
    t: Tensor,
    nu: float,
    a: float,
    w: float,
    *,
    quad_nodes: int = 16,
    panel_sigmas: float = 2.0,
    margin: float = 46.0,
    chunk: int = 2_000_000,
) -> Tensor:
    r"""Cole-Hopf solution of :math:`u_t + a u u_x = \nu u_{xx}` on :math:`[0, 1]`, Dirichlet zero, :math:`u(x, 0) =
    \sin(2w\pi x)\sin(\pi x)`, evaluated by the quadrature described in the module docstring.

    Differentiable in ``x`` and ``t`` for :math:`t > 0` (the quadrature nodes are fixed, detached functions of the
    inputs); points with ``t == 0`` return the initial condition, whose autograd ``u_t`` is 0, not the PDE's.

    Args:
        x, t: Tensors of the same shape, :math:`x \in [0, 1]`, :math:`t \ge 0` (float64 recommended).
        nu, a, w: Viscosity :math:`\nu > 0`, convection :math:`a \ne 0` and initial-condition frequency :math:`w`.
        quad_nodes: Gauss-Legendre nodes per sub-panel.
        panel_sigmas: Sub-panel width in units of the narrowest integrand width :math:`\sigma`.
        margin: Tail cut-off, :math:`e^{-\text{margin}}` relative to the integrand's maximum.
        chunk: Points times nodes processed at once (memory bound).

    Returns:
        :math:`u(x, t)`, shape of ``x``; at ``t == 0`` exactly the initial condition.
    """
    check_tensor("x", x, floating=True)
    check_tensor("t", t, floating=True)
    if x.dtype != t.dtype:
        raise TypeError(f"`x` and `t` must have the same dtype, got {x.dtype} and {t.dtype}.")
    if x.shape != t.shape:
        raise ValueError(f"`x` and `t` must have the same shape, got {tuple(x.shape)} and {tuple(t.shape)}.")
    nu, a, w = float(nu), float(a), float(w)
    check_positive("nu", nu)
    if a == 0.0 or not math.isfinite(a) or not math.isfinite(w):
        raise ValueError(f"`a` must be finite and nonzero and `w` finite, got a={a!r}, w={w!r}.")
    _in_interval("x", x.detach().cpu().numpy(), 0.0, 1.0)
    if bool((t < 0).any()):
        raise ValueError(f"`t` must be >= 0, got min {float(t.min()):.6g}.")
    check_positive("quad_nodes", quad_nodes, integer=True)
    check_positive("panel_sigmas", panel_sigmas)
    check_positive("margin", margin)

    shape = x.shape
    xf, tf = x.reshape(-1), t.reshape(-1)
    positive = tf > 0
    u = burgers_initial_condition(xf, w)
    if not bool(positive.any()):
        return u.reshape(shape)
    idx = positive.nonzero().squeeze(-1)
    xp, tp = xf[idx], tf[idx]

    if quad_nodes not in _GL_CACHE:
        _GL_CACHE[quad_nodes] = np.polynomial.legendre.leggauss(quad_nodes)
    gl_x, gl_w = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in _GL_CACHE[quad_nodes])
    # range of F over [0, 1] from a fine grid, padded by the worst interpolation error |a| * spacing / 2
    grid = torch.linspace(0.0, 1.0, 4001, dtype=x.dtype, device=x.device)
    f_grid = _burgers_F(grid, a, w)
    delta_f = float(f_grid.max() - f_grid.min()) + abs(a) / 4000
    vmax = abs(a) * math.pi * (2 * abs(w) + 1)

    with torch.no_grad():
        xd, td = xp.detach(), tp.detach()
        half = torch.sqrt(4 * nu * td * (delta_f / (2 * nu) + margin))  # L
        sigma = torch.sqrt(2 * nu * td / (1 + td * vmax))
        k0 = torch.floor(xd - half)
        n_pieces = int((torch.ceil(xd + half) - k0).max())
        n_sub = int(torch.ceil(torch.clamp(2 * half, max=1.0) / (panel_sigmas * sigma)).max())
        n_sub = max(n_sub, 1)
        # work with offsets s = y - x (exact differences x - y even for tiny t); pieces split where y is an integer
        j = torch.arange(n_pieces, dtype=x.dtype, device=x.device)
        lo = torch.maximum(-half[:, None], k0[:, None] + j - xd[:, None])  # (N, K)
        hi = torch.minimum(half[:, None], k0[:, None] + j + 1 - xd[:, None])
        length = torch.clamp(hi - lo, min=0.0)
        m = torch.arange(n_sub, dtype=x.dtype, device=x.device)
        sub_len = length / n_sub  # (N, K)
        mid = lo[..., None] + (m + 0.5) * sub_len[..., None]  # (N, K, M)
        offsets = (mid[..., None] + 0.5 * sub_len[..., None, None] * gl_x).reshape(len(xd), -1)  # (N, K*M*q)
        weights = (0.5 * sub_len[..., None, None] * gl_w).expand(-1, -1, n_sub, -1).reshape(len(xd), -1)
        log_w = torch.where(weights > 0, torch.log(torch.clamp(weights, min=1e-300)), -math.inf)
        f_nodes = _burgers_F(xd[:, None] + offsets, a, w) / (2 * nu)

    per_point = offsets.shape[1]
    step = max(1, chunk // per_point)
    out = []
    for s in range(0, len(xp), step):
        sl = slice(s, s + step)
        # x - y with y = x_detached + s: exact in value, derivative 1 in x; the nodes y stay fixed, so the
        # quadrature sum is a finite sum of heat-equation solutions
        dx = (xp[sl] - xd[sl])[:, None] - offsets[sl]
        ts = tp[sl, None]
        logits = -dx * dx / (4 * nu * ts) - f_nodes[sl] + log_w[sl]
        p = torch.softmax(logits, dim=-1)
        out.append((p * dx).sum(-1) / (a * tp[sl]))
    u = u.index_put((idx,), torch.cat(out))
    return u.reshape(shape)


def solve_burgers(z: object, w: float, xt: object, **kwargs) -> np.ndarray:
    r"""Reference Burgers solution at points ``xt`` (``(..., 2)`` array of :math:`(x, t)`), :math:`z = (\nu, a)`.

    A float64 numpy wrapper of :func:`burgers_cole_hopf`; returns an array of shape ``xt.shape[:-1]``.
    """
    nu, a = _as_params("z", z, 2)
    w = float(_as_params("w", w, 1)[0])
    xt = np.asarray(xt, dtype=float)
    if xt.ndim == 0 or xt.shape[-1] != 2:
        raise ValueError(f"`xt` must have a trailing dimension of size 2 (x, t), got shape {xt.shape}.")
    _in_interval("xt[..., 1] (time)", xt[..., 1], 0.0, np.inf)
    xt_t = torch.as_tensor(xt, dtype=torch.float64)
    return burgers_cole_hopf(xt_t[..., 0], xt_t[..., 1], nu, a, w, **kwargs).numpy()


def solve_burgers_mol(
    z: object, w: float, n_interior: int, t_eval: object, *, rtol: float = 1e-9, atol: float = 1e-11
) -> tuple[np.ndarray, np.ndarray]:
    r"""Independent check: method of lines, second-order central differences, BDF in time.

    On :math:`x_j = j h`, :math:`h = 1/(N + 1)`, :math:`\dot u_j = -a\,(u_{j+1}^2 - u_{j-1}^2) / 4h +
    \nu\,(u_{j+1} - 2u_j + u_{j-1}) / h^2` (conservative flux :math:`a u^2 / 2`), integrated by ``solve_ivp``
    (BDF, exact sparse Jacobian).

    Returns:
        ``(x, u)``: ``x`` ``(N + 2,)`` including the boundary nodes, ``u`` ``(len(t_eval), N + 2)``.
    """
    nu, a = _as_params("z", z, 2)
    w = float(_as_params("w", w, 1)[0])
    check_positive("n_interior", n_interior, integer=True)
    t_eval = np.asarray(t_eval, dtype=float).reshape(-1)
    if t_eval.size == 0 or t_eval.min() < 0 or np.any(np.diff(t_eval) <= 0):
        raise ValueError("`t_eval` must be a non-empty increasing sequence of times >= 0.")
    n = n_interior
    h = 1.0 / (n + 1)
    x = h * np.arange(n + 2)

    def rhs(_t, u):
        up = np.append(u[1:], 0.0)
        um = np.insert(u[:-1], 0, 0.0)
        return -a * (up * up - um * um) / (4 * h) + nu * (up - 2 * u + um) / (h * h)

    def jac(_t, u):
        sup = -a * u[1:] / (2 * h) + nu / (h * h)  # d rhs_j / d u_{j+1}
        sub = a * u[:-1] / (2 * h) + nu / (h * h)  # d rhs_j / d u_{j-1}
        return diags([sub, np.full(n, -2 * nu / (h * h)), sup], [-1, 0, 1], format="csc")

    u0 = burgers_initial_condition(x[1:-1], w)
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), u0, method="BDF", t_eval=t_eval, jac=jac, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"method-of-lines integration failed: {sol.message}")
    u = np.zeros((t_eval.size, n + 2))
    u[:, 1:-1] = sol.y.T
    return x, u


# ---------------------------------------------------------------------------------------------------------------------
# families
@dataclass(frozen=True)
class PDETestSet:
    r"""A test set of reference solutions on a shared point set.

    Attributes:
        family: The family's name.
        x: Points, ``(N, dim)``.
        z: Inverse-problem parameters, ``(S, dim_z)``.
        w: Known parameters, ``(S, dim_w)``.
        u: Reference solutions at ``x``, ``(S, N)``.
        seed: Seed of the parameter draws.
    """

    family: str
    x: np.ndarray
    z: np.ndarray
    w: np.ndarray
    u: np.ndarray
    seed: int

    def to_torch(self, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> dict:
        r"""The arrays as tensors: a dict with keys ``x``, ``z``, ``w``, ``u``."""
        return {k: torch.as_tensor(getattr(self, k), dtype=dtype, device=device) for k in ("x", "z", "w", "u")}


class PDEFamily:
    r"""A parametric PDE family: domain, priors, torch residual, hard boundary ansatz, reference solver, test sets.

    Conventions (``B`` fields, ``n`` points each):

    * ``x``: ``(B, n, dim)`` points (columns as in :attr:`coordinates`), ``z``: ``(B, dim_z)``, ``w``: ``(B, dim_w)``.
    * ``u_fn``: a callable mapping ``x`` to ``(B, n)`` values. Derivatives are taken by
      ``torch.autograd.grad(u.sum(), x, create_graph=True)``, which gives *pointwise* derivatives only if
      ``u[b, i]`` depends on ``x[b, i]`` alone (true for the per-point networks of RGNP).
    """

    name: str = ""
    dim: int = 1
    coordinates: tuple[str, ...] = ()
    lower: tuple[float, ...] = ()
    upper: tuple[float, ...] = ()
    z_names: tuple[str, ...] = ()
    z_low: tuple[float, ...] = ()
    z_high: tuple[float, ...] = ()
    w_names: tuple[str, ...] = ()
    w_low: tuple[float, ...] = ()
    w_high: tuple[float, ...] = ()

    @property
    def dim_z(self) -> int:
        return len(self.z_names)

    @property
    def dim_w(self) -> int:
        return len(self.w_names)

    # -- priors --------------------------------------------------------------------------------------------------------
    def sample_params(self, n: int, rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Draw ``n`` parameter pairs from the uniform priors; returns ``z`` ``(n, dim_z)``, ``w`` ``(n, dim_w)``."""
        check_positive("n", n, integer=True)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        z = rng.uniform(self.z_low, self.z_high, size=(n, self.dim_z))
        w = rng.uniform(self.w_low, self.w_high, size=(n, self.dim_w))
        return z, w

    def sample_points(self, batch: int, n: int, generator: torch.Generator | None = None,
                      dtype: torch.dtype = torch.float64) -> Tensor:
        r"""I.i.d. uniform points in the domain, ``(batch, n, dim)`` (the random grids of RGNP)."""
        lo = torch.tensor(self.lower, dtype=dtype)
        hi = torch.tensor(self.upper, dtype=dtype)
        return lo + (hi - lo) * torch.rand(batch, n, self.dim, generator=generator, dtype=dtype)

    # -- physics -------------------------------------------------------------------------------------------------------
    def _check_xzw(self, x: Tensor, z: Tensor, w: Tensor) -> None:
        check_tensor("x", x, ndim=3, shape=(None, None, self.dim), floating=True)
        B = x.shape[0]
        check_tensor("z", z, ndim=2, shape=(B, self.dim_z), floating=True)
        check_tensor("w", w, ndim=2, shape=(B, self.dim_w), floating=True)

    def derivatives(self, u_fn: Callable[[Tensor], Tensor], x: Tensor) -> dict[str, Tensor]:
        r"""``u`` and the derivatives the residual needs, each ``(B, n)``, by autograd (graph kept)."""
        raise NotImplementedError

    def residual_from_derivatives(self, d: dict[str, Tensor], x: Tensor, z: Tensor, w: Tensor) -> Tensor:
        r"""The PDE residual ``(B, n)`` from :meth:`derivatives`' dict (pure tensor algebra)."""
        raise NotImplementedError

    def residual(self, u_fn: Callable[[Tensor], Tensor], x: Tensor, z: Tensor, w: Tensor) -> Tensor:
        r"""PDE residual :math:`r(x_i)` of the field ``u_fn`` at the points ``x``, ``(B, n)``, differentiable."""
        self._check_xzw(x, z, w)
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        return self.residual_from_derivatives(self.derivatives(u_fn, x), x, z, w)

    def _eval(self, u_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        u = u_fn(x)
        if u.dim() == 3 and u.shape[-1] == 1:
            u = u.squeeze(-1)
        if u.shape != x.shape[:2]:
            raise ValueError(f"`u_fn(x)` must return shape {tuple(x.shape[:2])} (B, n), got {tuple(u.shape)}.")
        return u

    def boundary_ansatz(self, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(b, d)``, each ``(B, n)``: any :math:`u = b + d\,N` meets the boundary/initial conditions."""
        raise NotImplementedError

    # -- reference solutions -------------------------------------------------------------------------------------------
    def solve(self, z: object, w: object, x: object) -> np.ndarray:
        r"""Reference solution for one parameter pair at points ``x`` (``(..., dim)``); shape ``x.shape[:-1]``."""
        raise NotImplementedError

    def test_points(self, n_points: int | tuple[int, ...]) -> np.ndarray:
        r"""The regular grid of a test set, ``(N, dim)``."""
        raise NotImplementedError

    def make_test_set(
        self,
        n_samples: int,
        n_points: int | tuple[int, ...],
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        *,
        refresh: bool = False,
    ) -> PDETestSet:
        r"""Reference solutions for ``n_samples`` prior draws on a regular grid, cached on first use.

        Args:
            n_samples: Number of parameter draws (``np.random.default_rng(seed)``, :meth:`sample_params`).
            n_points: Grid size (see :meth:`test_points`).
            seed: Seed of the draws.
            cache_dir: Cache root (default :func:`default_cache_dir`); the file goes to ``<root>/pde/``.
            refresh: Recompute even if a cached file exists.
        """
        check_positive("n_samples", n_samples, integer=True)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
        x = self.test_points(n_points)
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        pts = "x".join(map(str, np.atleast_1d(n_points))) if not isinstance(n_points, int) else str(n_points)
        path = root / "pde" / f"{self.name}_S{n_samples}_P{pts}_seed{seed}_v{_CACHE_VERSION}.npz"
        if path.exists() and not refresh:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            if (str(data.get("family")) == self.name and data["u"].shape == (n_samples, len(x))
                    and np.array_equal(data["x"], x)):
                return PDETestSet(self.name, data["x"], data["z"], data["w"], data["u"], int(data["seed"]))
        z, w = self.sample_params(n_samples, np.random.default_rng(seed))
        u = np.stack([self.solve(z[i], w[i], x) for i in range(n_samples)])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, family=np.array(self.name), x=x, z=z, w=w, u=u, seed=np.array(seed),
                 version=np.array(_CACHE_VERSION))
        os.replace(tmp, path)
        return PDETestSet(self.name, x, z, w, u, seed)


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
        u_x = _grad(u, x)[..., 0]
        u_xx = _grad(u_x, x)[..., 0]
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
        r""":math:`b = 0`, :math:`d = \cos(\pi x / 2)` (the reference's choice)."""
        xs = x[..., 0]
        return torch.zeros_like(xs), torch.cos(0.5 * math.pi * xs)

    def solve(self, z, w, x):
        x = np.asarray(x, dtype=float)
        if x.ndim == 0 or x.shape[-1] != 1:
            raise ValueError(f"`x` must have a trailing dimension of size 1, got shape {x.shape}.")
        return solve_nonlinear_poisson(_as_params("z", z, 5), w, x[..., 0])

    def test_points(self, n_points):
        check_positive("n_points", n_points, integer=True)
        if n_points < 2:
            raise ValueError(f"`n_points` must be >= 2, got {n_points}.")
        return np.linspace(-1.0, 1.0, n_points)[:, None]


class ViscousBurgers(PDEFamily):
    r""":math:`u_t + z_1 u u_x - z_0 u_{xx} = 0` on :math:`[0,1]^2`, :math:`u = 0` at :math:`x \in \{0, 1\}`,
    :math:`u(x, 0) = \sin(2w\pi x)\sin(\pi x)`; :math:`z_0 \sim U(0.01, 0.1)`, :math:`z_1 \sim U(0.5, 1)`,
    :math:`w \sim U(0.5, 2)`. Points are ``(x, t)``."""

    name = "viscous_burgers"
    dim = 2
    coordinates = ("x", "t")
    lower, upper = (0.0, 0.0), (1.0, 1.0)
    z_names = ("viscosity", "convection")
    z_low, z_high = (0.01, 0.5), (0.1, 1.0)
    w_names = ("frequency",)
    w_low, w_high = (0.5,), (2.0,)

    def derivatives(self, u_fn, x):
        u = self._eval(u_fn, x)
        g = _grad(u, x)
        u_x, u_t = g[..., 0], g[..., 1]
        u_xx = _grad(u_x, x)[..., 0]
        return {"u": u, "u_x": u_x, "u_t": u_t, "u_xx": u_xx}

    def residual_from_derivatives(self, d, x, z, w):
        r""":math:`r = u_t + z_1 u u_x - z_0 u_{xx}`."""
        return d["u_t"] + z[:, 1:2] * d["u"] * d["u_x"] - z[:, 0:1] * d["u_xx"]

    def boundary_ansatz(self, x, w):
        r""":math:`b = u_0(x)`, :math:`d = t \sin(\pi x)` (the reference's choice)."""
        xs, ts = x[..., 0], x[..., 1]
        b = torch.sin(2 * math.pi * w[:, :1] * xs) * torch.sin(math.pi * xs)
        return b, ts * torch.sin(math.pi * xs)

    def solve(self, z, w, x):
        return solve_burgers(z, w, x)

    def test_points(self, n_points):
        nx, nt = (n_points, n_points) if isinstance(n_points, int) else tuple(n_points)
        check_positive("n_points[0]", nx, integer=True)
        check_positive("n_points[1]", nt, integer=True)
        if nx < 2 or nt < 2:
            raise ValueError(f"`n_points` must be >= 2 per axis, got {(nx, nt)}.")
        xx, tt = np.meshgrid(np.linspace(0.0, 1.0, nx), np.linspace(0.0, 1.0, nt), indexing="ij")
        return np.stack([xx.reshape(-1), tt.reshape(-1)], axis=-1)
