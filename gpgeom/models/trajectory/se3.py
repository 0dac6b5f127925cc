r"""GP trajectories on SE(3): one 6-D local variable for the pose, with hand-written Jacobians.

Between knots the pose is :math:`T(t) = T_a\,\mathrm{Exp}(\xi(t))` with :math:`\xi = (\phi, \rho) \in \mathbb R^6`
(rotation first) and the state :math:`\gamma = (\xi, \dot\xi, \ddot\xi)` (WNOJ) or :math:`(\xi, \dot\xi)` (WNOA)
follows the linear GP of :mod:`gpgeom.models.trajectory.interpolation` with :math:`Q_c = \operatorname{diag}(
Q_c^{rot}, Q_c^{pos})` (Anderson & Barfoot, *Full STEAM ahead: exactly sparse Gaussian process regression for batch
continuous-time trajectory estimation on SE(3)*, IROS 2015, for the second-order prior; Tang, Yoon & Barfoot, *A
white-noise-on-jerk motion prior for continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2), 2019, for the
third-order one). The body twist is :math:`\varpi = J_r(\xi)\dot\xi` with the 6x6 right Jacobian of SE(3)
(Barfoot, *State Estimation for Robotics*, 2017, ch. 7).

The kinematics in two channels
------------------------------
Because :math:`J_r(\xi)` is block lower-triangular, the rotational channel :math:`(\phi, \dot\phi, \ddot\phi)` obeys
the SO(3) relations of :mod:`gpgeom.models.trajectory.kinematics` exactly (the same as
:class:`~gpgeom.models.trajectory.SO3xR3Trajectory`). The translation of :math:`\mathrm{Exp}(\xi)` is
:math:`\tau = R_a^\top (p - p_a) = J_l(\phi)\rho` (Barfoot eq. 7.83), so the exact ("closed-form") translational
kinematics are its time derivatives, with :math:`f(\phi; x) = J_l(\phi) x`, :math:`H_l(\phi, x) = \partial_\phi
f`, :math:`L_l(\phi, x, d) = \partial_\phi[H_l(\phi, x) d]`:

.. math::
    \tau = J_l\rho, \qquad \dot\tau = H_l(\phi,\rho)\dot\phi + J_l\dot\rho, \qquad
    \ddot\tau = L_l(\phi,\rho,\dot\phi)\dot\phi + H_l(\phi,\rho)\ddot\phi + 2H_l(\phi,\dot\rho)\dot\phi + J_l\ddot\rho,

and :math:`p = p_a + R_a\tau`, :math:`v = R_a\dot\tau`, :math:`a = R_a\ddot\tau` (equal to :math:`v = R\nu`,
:math:`a = R(\dot\nu + \omega\times\nu)` of the body twist :math:`(\omega, \nu)`). At the right knot the same
relations are solved for :math:`(\rho, \dot\rho, \ddot\rho)` from :math:`\tau_b^{(n)} = R_a^\top(p_b - p_a),
R_a^\top v_b, R_a^\top a_b` (one :math:`J_l^{-1}` each), and at the left knot :math:`\gamma_a = (0, \varpi_a,
\dot\varpi_a)` with :math:`\varpi = (\omega, R^\top v)`, :math:`\dot\varpi = (\alpha, R^\top a - \omega\times
R^\top v)`.
With :math:`J_l(\phi) = J_r(-\phi)` every derivative is one of SO(3)'s (:mod:`gpgeom.geometry.lie`):
:math:`H_l(\phi, x) = -H(-\phi, x)`, :math:`L_l(\phi, x, d) = L_{11}(-\phi, x, d)`, the third derivative
:math:`-L_3(-\phi, x, d, e)` (:func:`~gpgeom.geometry.lie.so3_jr_dtheta3`) and the directional derivatives of the
matrix, :math:`-L_{12}(-\phi, \cdot, d)` and :math:`D^2J_r(-\phi)[d, e]`
(:func:`~gpgeom.geometry.lie.so3_jr_dtheta2_dv`).

``kinematics="taylor"`` keeps the first-order approximation of Tang et al. (2019) at the second derivative,
:math:`\ddot\xi_b = J_r^{-1}(\xi_b)\dot\varpi_b - \tfrac12\operatorname{ad}_{\varpi_b}\dot\xi_b` and
:math:`\dot\varpi = J_r(\xi)(\ddot\xi + \tfrac12\operatorname{ad}_\varpi\dot\xi)`, which needs only
:math:`S(\xi, y) = \partial(J_r(\xi)y)/\partial\xi` (:func:`~gpgeom.geometry.lie.se3_jr_dxi`).

Jacobians
---------
All closed form: the translational Jacobians at the right knot by implicit differentiation of the relations above
(:math:`d\rho^{(n)} = J_l^{-1}(d\tau^{(n)} - \sum_{m<n} F^y_{nm} d\rho^{(m)} - \sum_{m\le n} F^u_{nm}
d\phi^{(m)})`, :func:`_channel`), the output map's :math:`G = \partial X(t)/\partial\gamma(t)` from the same blocks
:math:`F^u, F^y`, and the chain rule through :math:`\gamma(t) = \Lambda\gamma_a + \Psi\gamma_b`. They are checked
against ``torch.func.jacfwd`` and finite differences in the tests. The derivative terms at one angle share their
coefficient functions (:func:`~gpgeom.geometry.lie.so3_jr_coefficients`). An SE(3) fit costs about twice an SO(3)xR3
fit (``benchmarks/trajectory.py``, section 6), where forward-mode autodiff cost 10-20 times as much.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.geometry.lie import (
    se3_ad,
    se3_jr,
    se3_jr_dxi,
    se3_jr_inv,
    so3_hat,
    so3_jr,
    so3_jr_coefficients,
    so3_jr_dtheta,
    so3_jr_dtheta2,
    so3_jr_dtheta2_dv,
    so3_jr_dtheta3,
    so3_jr_dtheta_dv,
    so3_jr_inv,
)
from gpgeom.models.trajectory.algebra import kron_eye, mv
from gpgeom.models.trajectory.base import Trajectory
from gpgeom.models.trajectory.kinematics import so3_gamma_b, so3_outputs

__all__ = ["SE3Trajectory"]


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def _channel(
    u: list[Tensor], n: int, jac: bool, y: list[Tensor] | None = None, src: list[Tensor] | None = None, J=None
):
    r"""The translational channel (module docstring) to derivative ``n - 1``, each SO(3) block computed once.

    ``u`` = :math:`(\phi, \dot\phi, \ddot\phi)` (list of ``M x 3``). Forward, with ``y`` =
    :math:`(\rho, \dot\rho, \ddot\rho)`: returns :math:`\tau^{(k)}`, ``k < n``. Inverse, with ``src`` =
    :math:`\tau^{(k)}`: returns ``y`` solved one derivative at a time, :math:`\rho^{(k)} = J_l^{-1}(\tau^{(k)} -
    \ldots)`. With ``jac`` also the blocks ``Fu[k][m]`` = :math:`\partial\tau^{(k)}/\partial\phi^{(m)}` (``m <= k``)
    and ``Fy[k][m]`` = :math:`\partial\tau^{(k)}/\partial\rho^{(m)}` (``m < k``; the diagonal is :math:`J_l`).

    Returns:
        ``(values, Fu, Fy, J)`` with ``J`` = :math:`J_l` (forward) or :math:`J_l^{-1}` (inverse; either may be
        passed in); ``Fu``, ``Fy`` are ``None`` without ``jac``.
    """
    tb = -u[0]
    solve = y is None
    if J is None:
        J = so3_jr_inv(tb) if solve else so3_jr(tb)

    k = so3_jr_coefficients(tb) if (n > 1 or jac) else None  # shared by the derivative terms below

    def H(x: Tensor) -> Tensor:  # H_l(phi, x)
        return -so3_jr_dtheta(tb, x, coefs=k)

    def Ll(x: Tensor, d: Tensor) -> Tensor:  # L_l(phi, x, d)
        return so3_jr_dtheta2(tb, x, d, coefs=k)

    def M1(d: Tensor) -> Tensor:  # d J_l(phi)[d] as a matrix
        return -so3_jr_dtheta_dv(tb, u[0], d, coefs=k)

    def step(k: int, rest: Tensor | float) -> Tensor:
        if solve:
            y.append(mv(J, src[k] - rest))
            return y[k]
        return rest + mv(J, y[k])

    if solve:
        y = []
    out = [step(0, 0.0)]
    H0 = H(y[0]) if (n > 1 or jac) else None
    if n > 1:
        out.append(step(1, mv(H0, u[1])))
    if n > 2:
        H1, L01 = H(y[1]), Ll(y[0], u[1])
        out.append(step(2, mv(L01, u[1]) + mv(H0, u[2]) + 2.0 * mv(H1, u[1])))
    if not jac:
        return out, None, None, J
    Fu: list[list[Tensor]] = [[H0]]
    Fy: list[list[Tensor]] = [[]]
    if n > 1:
        H1 = H(y[1]) if n == 2 else H1
        L01 = Ll(y[0], u[1]) if n == 2 else L01
        Fu.append([L01 + H1, H0])
        Fy.append([M1(u[1])])
    if n > 2:
        Fu.append(
            [
                -so3_jr_dtheta3(tb, y[0], u[1], u[1], coefs=k) + Ll(y[0], u[2]) + 2.0 * Ll(y[1], u[1]) + H(y[2]),
                2.0 * (L01 + H1),
                H0,
            ]
        )
        Fy.append([so3_jr_dtheta2_dv(tb, y[0], u[1], u[1], coefs=k) + M1(u[2]), 2.0 * Fy[1][0]])
    return out, Fu, Fy, J


class SE3Trajectory(Trajectory):
    r"""GP trajectory on SE(3): one 6-D local variable :math:`\xi = \mathrm{Log}(T_a^{-1}T(t))` (tangent order
    :math:`(\phi, \rho)`, rotation first) carrying the body twist :math:`\varpi = (\omega, R^\top v)` and its
    derivative :math:`\dot\varpi = (\alpha, R^\top a - \omega^\wedge R^\top v)`; :math:`Q_c = \operatorname{diag}(
    q_{rot}, q_{pos})`. Knots store the same :math:`(R, \omega, \alpha, p, v, a)` as
    :class:`~gpgeom.models.trajectory.SO3xR3Trajectory` (the conversion is exact), so every measurement applies to both.

    .. math::
        \dot\xi = J_r^{-1}(\xi)\varpi, \quad \ddot\xi = J_r^{-1}(\xi)\dot\varpi +
        \frac{\partial (J_r^{-1}(\xi)\varpi)}{\partial\xi}\dot\xi, \quad
        \varpi = J_r(\xi)\dot\xi, \quad \dot\varpi = J_r(\xi)\ddot\xi + \frac{\partial (J_r(\xi)\dot\xi)}
        {\partial\xi}\dot\xi,

    evaluated in the rotational and translational channels of the module docstring; ``kinematics="taylor"``
    replaces the derivative terms by :math:`-\tfrac12\operatorname{ad}_\varpi\dot\xi` and :math:`\tfrac12 J_r
    \operatorname{ad}_\varpi\dot\xi`. All Jacobians are hand-written (module docstring).
    """

    pose_group = "se3"

    # ----- the knots' local states -----
    def _twists(self, S: dict[str, Tensor], jac: bool):
        r""":math:`\varpi, \dot\varpi` of knots ``S`` (``M x 6`` each, as far as the order goes) and, with ``jac``,
        their Jacobians ``M x 6 x s`` with respect to the knot's tangent."""
        R, w = S["R"], S["omega"]
        nu = mv(R.mT, S["v"])
        out = [torch.cat([w, nu], -1)]
        if self.order == 3:
            ra = mv(R.mT, S["a"])
            out.append(torch.cat([S["alpha"], ra - _cross(w, nu)], -1))
        if not jac:
            return out, None
        sl, M, s = self._slices(), w.shape[0], self.tangent_dim
        eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(M, 3, 3)
        J1 = w.new_zeros(M, 6, s)
        J1[:, :3, sl["omega"]] = eye
        J1[:, 3:, sl["R"]] = so3_hat(nu)
        J1[:, 3:, sl["v"]] = R.mT
        Js = [J1]
        if self.order == 3:
            J2 = w.new_zeros(M, 6, s)
            hw = so3_hat(w)
            J2[:, :3, sl["alpha"]] = eye
            J2[:, 3:, sl["R"]] = so3_hat(ra) - hw @ so3_hat(nu)
            J2[:, 3:, sl["omega"]] = so3_hat(nu)
            J2[:, 3:, sl["v"]] = -hw @ R.mT
            J2[:, 3:, sl["a"]] = R.mT
            Js.append(J2)
        return out, Js

    def _gamma_a(self, A: dict[str, Tensor], jac: bool):
        r""":math:`\gamma_a = (0, \varpi_a, \dot\varpi_a)` (``M x N x 6``) and its Jacobian ``M x N x 6 x s``."""
        tw, Jtw = self._twists(A, jac)
        ga = torch.stack([torch.zeros_like(tw[0])] + tw, 1)
        if not jac:
            return ga, None
        return ga, torch.stack([torch.zeros_like(Jtw[0])] + Jtw, 1)

    def _gamma_b(self, A: dict[str, Tensor], B: dict[str, Tensor], jac: bool):
        r""":math:`\gamma_b` (``M x N x 6``) and its Jacobians ``M x N x 6 x s`` with respect to both knots."""
        N, s = self.order, self.tangent_dim
        cf = self.kinematics == "closed_form"
        Ra = A["R"]
        g_rot, Ja_rot, Jb_rot = so3_gamma_b(Ra, B["R"], B["omega"], B.get("alpha"), N, cf, jac)
        u = list(g_rot.unbind(1))
        src = [mv(Ra.mT, B["p"] - A["p"]), mv(Ra.mT, B["v"])] + ([mv(Ra.mT, B["a"])] if N == 3 else [])
        nk = 2 if (N == 3 and not cf) else N  # the Taylor variant's second derivative is solved in 6-D below
        y, Fu, Fy, Kli = _channel(u, nk, jac, src=src)
        if nk < N:
            xi, xid = torch.cat([u[0], y[0]], -1), torch.cat([u[1], y[1]], -1)
            tw, Jtw = self._twists(B, jac)
            Jinv = se3_jr_inv(xi)
            xidd = mv(Jinv, tw[1]) - 0.5 * mv(se3_ad(tw[0]), xid)
            y.append(xidd[:, 3:])
            u[2] = xidd[:, :3]
        gb = torch.stack([torch.cat([a, b], -1) for a, b in zip(u, y)], 1)
        if not jac:
            return gb, None, None
        M = Ra.shape[0]
        n3, sl = 3 * N, self._slices()
        # columns: knot a's (delta_R, delta_p), on which gamma_b depends, then all of knot b's tangent
        C = 6 + s
        Jr = Ra.new_zeros(M, N, 3, C)
        Jr[:, :, :, :3] = Ja_rot[:, :, :, 0]
        Jr[:, :, :, 6 : 6 + n3] = Jb_rot.reshape(M, N, 3, n3)
        Jy: list[Tensor] = []
        RaT = Ra.mT
        pos = ("p", "v", "a")
        for k in range(nk):
            d = Ra.new_zeros(M, 3, C)  # d tau^(k)
            d[:, :, :3] = so3_hat(src[k])
            if k == 0:
                d[:, :, 3:6] = -RaT
            col = 6 + sl[pos[k]].start
            d[:, :, col : col + 3] = RaT
            F = torch.cat(Fu[k][: k + 1] + Fy[k][:k], -1)  # M x 3 x 3(2k + 1)
            Jk = torch.cat([Jr[:, : k + 1].reshape(M, 3 * (k + 1), C)] + Jy, 1)
            Jy.append(Kli @ (d - F @ Jk))
        Ja = Ra.new_zeros(M, N, 6, s)
        Jb = Ra.new_zeros(M, N, 6, s)
        Ja[:, :, :3, sl["R"]] = Jr[:, :, :, :3]
        Jb[:, :, :3] = Jr[:, :, :, 6:]
        Jy = torch.stack(Jy, 1)
        Ja[:, :nk, 3:, sl["R"]] = Jy[..., :3]
        Ja[:, :nk, 3:, sl["p"]] = Jy[..., 3:6]
        Jb[:, :nk, 3:] = Jy[..., 6:]
        if nk < N:  # Taylor: d xi'' = -J^-1 S(xi, J^-1 w') d xi + J^-1 d w' - 1/2 ad_w d xi' + 1/2 ad_xi' d w
            S = se3_jr_dxi(xi, mv(Jinv, tw[1]))
            A0 = -Jinv @ S
            adw, adx = se3_ad(tw[0]), se3_ad(xid)
            Ja[:, 2] = A0 @ Ja[:, 0] - 0.5 * adw @ Ja[:, 1]
            Jb[:, 2] = A0 @ Jb[:, 0] - 0.5 * adw @ Jb[:, 1] + Jinv @ Jtw[1] + 0.5 * adx @ Jtw[0]
        return gb, Ja, Jb

    # ----- the output map -----
    def _outputs(self, A: dict[str, Tensor], gt: Tensor, level: int, jac: bool):
        r"""The state at the query times from knot ``a`` and :math:`\gamma(t)` (``M x N x 6``) and, with ``jac``,
        :math:`G = \partial X(t)/\partial\gamma(t)` restricted to the derivatives ``n < L`` of :math:`\gamma` it
        depends on (``M x 6L x 6L``, rows ``(R, omega, alpha)[:L] + (p, v, a)[:L]``, columns :math:`\gamma` as
        ``(n, (phi, rho))``; the columns ``n >= L`` of the full ``M x 6L x 6N`` map are zero) and the derivatives of
        the translation-part rows
        with respect to knot ``a``'s rotation (``D``: ``M x L x 3 x 3``, :math:`-R_a(\tau^{(k)})^\wedge`); with
        ``jac`` the state holds :math:`\mathrm{Exp}(\phi)` under ``"_E"``."""
        L = level + 1
        cf = self.kinematics == "closed_form"
        Ra = A["R"]
        u = list(gt[:, :, :3].unbind(1))
        y = list(gt[:, :, 3:].unbind(1))
        E, rates, Gr = so3_outputs(gt[:, :, :3], level, cf, jac)
        nk = min(L, 2) if (L == 3 and not cf) else L
        # J_l(phi) = Exp(phi) J_r(phi), with J_r from the rotational rows of G
        tau, Fu, Fy, Kl = _channel(u, nk, jac, y=y[:nk], J=E @ Gr[:, :3, :3] if jac else None)
        if nk < L:  # Taylor: the second derivative from the body twist
            xi, xid, xidd = gt[:, 0], gt[:, 1], gt[:, 2]
            Jr = se3_jr(xi)
            tw = mv(Jr, xid)
            yv = xidd + 0.5 * mv(se3_ad(tw), xid)
            twd = mv(Jr, yv)
            w, nu = tw[:, :3], tw[:, 3:]
            x = twd[:, 3:] + _cross(w, nu)
            tau.append(mv(E, x))
            rates["alpha"] = twd[:, :3]
        out = {"R": Ra @ E, **rates, "p": A["p"] + mv(Ra, tau[0])}
        if jac:
            out["_E"] = E
        names = ("v", "a")
        for k in range(1, L):
            out[names[k - 1]] = mv(Ra, tau[k])
        if not jac:
            return out, None, None
        M = gt.shape[0]
        G = gt.new_zeros(M, 2, L, 3, L, 6)
        G[:, 0, :, :, :L, :3] = Gr.reshape(M, L, 3, L, 3)
        for k in range(nk):
            for m in range(k + 1):
                G[:, 1, k, :, m, :3] = Ra @ Fu[k][m]
                G[:, 1, k, :, m, 3:] = Ra @ (Fy[k][m] if m < k else Kl)
        if nk < L:  # Taylor rows of alpha and a
            S1 = se3_jr_dxi(xi, xid)
            half = 0.5 * Jr
            dtwd = [se3_jr_dxi(xi, yv) - half @ se3_ad(xid) @ S1, half @ (se3_ad(tw) - se3_ad(xid) @ Jr), Jr]
            dtw = [S1, Jr]
            hx = so3_hat(x)
            RE = Ra @ E
            for m in range(3):
                dx = dtwd[m][:, 3:]
                if m < 2:
                    dx = dx - so3_hat(nu) @ dtw[m][:, :3] + so3_hat(w) @ dtw[m][:, 3:]
                G[:, 0, 2, :, m] = dtwd[m][:, :3]
                G[:, 1, 2, :, m] = RE @ dx
            G[:, 1, 2, :, 0, :3] -= RE @ hx @ so3_jr(xi[:, :3])
        D = torch.stack([-Ra @ so3_hat(tau[k]) for k in range(L)], 1)  # d(p, v, a)/d delta_R_a
        return out, G.reshape(M, 6 * L, 6 * L), D

    # ----- interpolation -----
    def _interp_parts(self, Xa, Xb, mix, level, jac):
        if level > self.order - 1:
            raise ValueError(f"Accelerations need prior='wnoj' (this trajectory has prior={self.prior!r}).")
        f, inv = mix.first, mix.inverse
        A = self._unpack(Xa)
        gb, Jgb_a, Jgb_b = self._gamma_b(self._unpack(Xa[f]), self._unpack(Xb[f]), jac)
        ga, Jga = self._gamma_a(self._unpack(Xa[f]), jac)
        gt = mix.Lam @ ga[inv] + mix.Psi @ gb[inv]
        out, G, D = self._outputs(A, gt, level, jac)
        return out, (G, D, out.pop("_E", None), Jga, Jgb_a, Jgb_b)

    def _project(self, Js: Tensor, parts, mix, level):
        r""":math:`[J_s J_a, J_s J_b]` (``M x r x 2 x s``) for a left factor ``Js`` (``M x r x 6L``), contracted
        through :math:`G` and :math:`\Lambda, \Psi` before the per-interval Jacobians of :math:`\gamma_{a,b}`."""
        G, D, E, Jga, Jgb_a, Jgb_b = parts
        N, L, s = self.order, level + 1, self.tangent_dim
        M, r = Js.shape[:2]
        A = (Js @ G).reshape(M, r, L, 6)  # the rows l < L of gamma(t) = Lam gamma_a + Psi gamma_b
        Ba = torch.einsum("mrlc,mlk->mrkc", A, mix.Lam[:, :L]).reshape(M, r, 6 * N)
        Bb = torch.einsum("mrlc,mlk->mrkc", A, mix.Psi[:, :L]).reshape(M, r, 6 * N)
        Jx = Js.new_empty(M, r, 2, s)
        U = Jgb_b.shape[0]
        Jx[:, :, 1] = mix.per_interval_matmul(Bb, Jgb_b.reshape(U, 6 * N, s))
        Ja = mix.per_interval_matmul(torch.cat([Ba, Bb], -1), torch.cat([Jga, Jgb_a], 1).reshape(U, 12 * N, s))
        sl = self._slices()
        l3 = 3 * L
        Ja[:, :, sl["R"]] += Js[:, :, :3] @ E.mT
        Ja[:, :, sl["R"]] += Js[:, :, l3:] @ D.reshape(M, l3, 3)
        Ja[:, :, sl["p"]] += Js[:, :, l3 : l3 + 3]
        Jx[:, :, 0] = Ja
        return Jx

    def _interp(self, Xa, Xb, mix, level, jac, want_G=False):
        r"""Interpolated state; with ``jac`` the Jacobians ``M x 6L x s`` with respect to both knots (the
        contraction of :meth:`_project` with the identity) and :math:`G`."""
        out, parts = self._interp_parts(Xa, Xb, mix, level, jac)
        if not jac:
            return out, None, None, None
        d = 6 * (level + 1)
        M = parts[0].shape[0]
        eye = torch.eye(d, dtype=parts[0].dtype, device=parts[0].device).expand(M, d, d)
        Jx = self._project(eye, parts, mix, level)
        G = None
        if want_G:  # the full M x 6L x 6N map (zero columns for the derivatives n >= L of gamma)
            G = parts[0].new_zeros(M, d, 6 * self.order)
            G[:, :, :d] = parts[0]
        return out, Jx[:, :, 0], Jx[:, :, 1], G

    def _interp_linearize(self, Xa, Xb, mix, level, measure):
        out, parts = self._interp_parts(Xa, Xb, mix, level, True)
        e, Js, Jp = measure(out)
        return e, self._project(Js, parts, mix, level), Jp

    def _gamma_noise(self, C: Tensor) -> Tensor:
        M, N = C.shape[0], self.order
        qc = torch.cat([self.qc_rot, self.qc_pos])
        return (kron_eye(C, 6) * qc[None, None, :, None, None]).reshape(M, 6 * N, 6 * N)

    def _prior(self, Xa, Xb, dt, jac):
        r"""Whitened prior residuals :math:`W(\gamma_b - \Phi\gamma_a) Q_c^{-1/2}` (``M x 6N``) and, with ``jac``,
        their Jacobians ``M x 6N x 2 x s`` (from those of :math:`\gamma_a, \gamma_b`)."""
        N = self.order
        A, B = self._unpack(Xa), self._unpack(Xb)
        Phi, W = self._prior_mats(dt)
        ga, Jga = self._gamma_a(A, jac)
        gb, Jgb_a, Jgb_b = self._gamma_b(A, B, jac)
        w = torch.cat([self.qc_rot, self.qc_pos]).rsqrt()
        M = dt.shape[0]
        e = ((W @ (gb - Phi @ ga)) * w).reshape(M, 6 * N)
        if not jac:
            return e, None
        s = self.tangent_dim
        WPhi = W @ Phi
        Ja = (W @ Jgb_a.reshape(M, N, 6 * s) - WPhi @ Jga.reshape(M, N, 6 * s)).reshape(M, N, 6, s)
        Jb = (W @ Jgb_b.reshape(M, N, 6 * s)).reshape(M, N, 6, s)
        Jx = torch.stack([Ja, Jb], 3) * w[None, None, :, None, None]
        return e, Jx.reshape(M, 6 * N, 2, s)
