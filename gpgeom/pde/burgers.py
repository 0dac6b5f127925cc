r"""The viscous Burgers family and its reference solvers (a problem of Random Grid Neural Processes, Vadeboncoeur et
al., ICML 2023, arXiv 2301.11040, numerical experiments).

:class:`ViscousBurgers`, :math:`(x, t) \in [0, 1]^2`:

.. math::
    u_t + z_1\, u\, u_x - z_0\, u_{xx} = 0, \quad u(0, t) = u(1, t) = 0, \quad u(x, 0) = \sin(2 w \pi x) \sin(\pi x),

:math:`z_0 = \nu \sim U(0.01, 0.1)`, :math:`z_1 = a \sim U(0.5, 1)`, :math:`w \sim U(0.5, 2)` (the training prior of
the authors' reference notebook; their FEniCS data script draws :math:`\nu \in (0.005, 0.01)`). Lift
:math:`u = u_0(x) + t \sin(\pi x)\,\hat u`.

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
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.sparse import diags
from torch import Tensor

from gpgeom._validation import check_positive, check_tensor
from gpgeom.pde._checks import as_params, check_interval
from gpgeom.pde.autodiff import pointwise_grad
from gpgeom.pde.family import PDEFamily
from gpgeom.pde.registry import register_family

__all__ = ["ViscousBurgers", "burgers_initial_condition", "burgers_cole_hopf", "solve_burgers", "solve_burgers_mol"]


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
    check_interval("x", x.detach().cpu().numpy(), 0.0, 1.0)
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
    nu, a = as_params("z", z, 2)
    w = float(as_params("w", w, 1)[0])
    xt = np.asarray(xt, dtype=float)
    if xt.ndim == 0 or xt.shape[-1] != 2:
        raise ValueError(f"`xt` must have a trailing dimension of size 2 (x, t), got shape {xt.shape}.")
    check_interval("xt[..., 1] (time)", xt[..., 1], 0.0, np.inf)
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
    nu, a = as_params("z", z, 2)
    w = float(as_params("w", w, 1)[0])
    check_positive("n_interior", n_interior, integer=True)
    t_eval = np.asarray(t_eval, dtype=float).reshape(-1)
    if t_eval.size == 0 or not np.isfinite(t_eval).all() or t_eval.min() < 0 or np.any(np.diff(t_eval) <= 0):
        raise ValueError(f"`t_eval` must be non-empty, increasing, finite and >= 0, got {t_eval.tolist()}.")
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


@register_family
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
        g = pointwise_grad(u, x)
        u_x, u_t = g[..., 0], g[..., 1]
        u_xx = pointwise_grad(u_x, x)[..., 0]
        return {"u": u, "u_x": u_x, "u_t": u_t, "u_xx": u_xx}

    def residual_from_derivatives(self, d, x, z, w):
        r""":math:`r = u_t + z_1 u u_x - z_0 u_{xx}`."""
        return d["u_t"] + z[:, 1:2] * d["u"] * d["u_x"] - z[:, 0:1] * d["u_xx"]

    def boundary_ansatz(self, x, w):
        r""":math:`b = u_0(x)`, :math:`d = t \sin(\pi x)` (the choice of the authors' reference code)."""
        xs, ts = x[..., 0], x[..., 1]
        b = torch.sin(2 * math.pi * w[:, :1] * xs) * torch.sin(math.pi * xs)
        return b, ts * torch.sin(math.pi * xs)

    def solve(self, z, w, x):
        return solve_burgers(z, w, x)

    def test_points(self, n_points):
        r"""The regular ``nx x nt`` grid of :math:`[0, 1]^2`, ``(nx * nt, 2)`` (``x`` varying slowest), for
        ``n_points`` an int (``nx = nt``) or a pair ``(nx, nt)``."""
        if isinstance(n_points, numbers.Integral) and not isinstance(n_points, bool):
            nx = nt = int(n_points)
        elif isinstance(n_points, tuple | list) and len(n_points) == 2:
            nx, nt = n_points
        else:
            raise ValueError(f"`n_points` must be an int or a pair (nx, nt) of ints, got {n_points!r}.")
        check_positive("n_points[0]", nx, integer=True)
        check_positive("n_points[1]", nt, integer=True)
        if nx < 2 or nt < 2:
            raise ValueError(f"`n_points` must be >= 2 per axis, got {(nx, nt)}.")
        xx, tt = np.meshgrid(np.linspace(0.0, 1.0, nx), np.linspace(0.0, 1.0, nt), indexing="ij")
        return np.stack([xx.reshape(-1), tt.reshape(-1)], axis=-1)
