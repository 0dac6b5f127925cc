r"""GP trajectories on SE(3): one 6-D local variable for the pose, Jacobians by forward-mode automatic
differentiation.

Between knots the pose is :math:`T(t) = T_a\,\mathrm{Exp}(\xi(t))` with :math:`\xi = (\phi, \rho) \in \mathbb R^6`
(rotation first) and the state :math:`\gamma = (\xi, \dot\xi, \ddot\xi)` (WNOJ) or :math:`(\xi, \dot\xi)` (WNOA)
follows the linear GP of :mod:`gpgeom.models.trajectory.interpolation` with :math:`Q_c = \operatorname{diag}(
Q_c^{rot}, Q_c^{pos})` (Anderson & Barfoot, *Full STEAM ahead: exactly sparse Gaussian process regression for batch
continuous-time trajectory estimation on SE(3)*, IROS 2015, for the second-order prior; Tang, Yoon & Barfoot, *A
white-noise-on-jerk motion prior for continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2), 2019, for the
third-order one). The body twist is :math:`\varpi = J_r(\xi)\dot\xi` with the 6x6 right Jacobian of SE(3)
(Barfoot, *State Estimation for Robotics*, 2017, ch. 7); the closed-form kinematics keep the exact derivative
term :math:`\partial(J_r^{-1}(\xi)\varpi)/\partial\xi\,\dot\xi` (a forward-mode directional derivative), the
``"taylor"`` option its first-order approximation :math:`-\tfrac12\operatorname{ad}_\varpi\dot\xi` (Tang et al.
2019).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.geometry.lie import se3_ad, se3_jr, se3_jr_inv, so3_exp, so3_jl, so3_jl_inv, so3_log, so3_vee
from gpgeom.models.trajectory.algebra import kron_eye, mv, rowwise_jacobian
from gpgeom.models.trajectory.base import Trajectory
from gpgeom.models.trajectory.state import components

__all__ = ["SE3Trajectory"]


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

    with the 6x6 right Jacobian of SE(3) (:func:`gpgeom.geometry.lie.se3_jr`); ``kinematics="taylor"`` replaces
    the derivative terms by :math:`-\tfrac12\operatorname{ad}_\varpi\dot\xi` and :math:`\tfrac12 J_r
    \operatorname{ad}_\varpi\dot\xi`. Jacobians: forward-mode autodiff, once per knot interval for
    :math:`\gamma_{a,b}` and once per time for the output map (exact; the SE(3) second-derivative terms of
    :math:`J_r` are not hand-written, so an iteration costs about ten times that of
    :class:`~gpgeom.models.trajectory.SO3xR3Trajectory`).
    """

    pose_group = "se3"

    def _twists(self, S: dict[str, Tensor]) -> list[Tensor]:
        R, w = S["R"], S["omega"]
        nu = mv(R.mT, S["v"])
        out = [torch.cat([w, nu], -1)]
        if self.order == 3:
            beta = mv(R.mT, S["a"]) - torch.linalg.cross(w, nu, dim=-1)
            out.append(torch.cat([S["alpha"], beta], -1))
        return out

    def _gammas(self, A: dict[str, Tensor], B: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        cf = self.kinematics == "closed_form"
        Ra, Rb = A["R"], B["R"]
        phi = so3_log(Ra.mT @ Rb, validate=False)
        rho = mv(so3_jl_inv(phi), mv(Ra.mT, B["p"] - A["p"]))
        xi = torch.cat([phi, rho], -1)
        tw_b = self._twists(B)
        Jinv = se3_jr_inv(xi)
        xid = mv(Jinv, tw_b[0])
        gb = [xi, xid]
        if self.order == 3:
            if cf:
                w0 = tw_b[0]
                d = torch.func.jvp(lambda x: mv(se3_jr_inv(x), w0), (xi,), (xid,))[1]
            else:
                d = -0.5 * mv(se3_ad(tw_b[0]), xid)
            gb.append(mv(Jinv, tw_b[1]) + d)
        ga = [torch.zeros_like(xi)] + self._twists(A)
        return torch.stack(ga, 1), torch.stack(gb, 1)

    def _outputs(self, A: dict[str, Tensor], gt: Tensor, level: int) -> dict[str, Tensor]:
        cf = self.kinematics == "closed_form"
        xi = gt[:, 0]
        phi, rho = xi[:, :3], xi[:, 3:]
        R = A["R"] @ so3_exp(phi)
        out = {"R": R, "p": A["p"] + mv(A["R"], mv(so3_jl(phi), rho))}
        if level >= 1:
            Jr = se3_jr(xi)
            xid = gt[:, 1]
            tw = mv(Jr, xid)
            out["omega"] = tw[:, :3]
            out["v"] = mv(R, tw[:, 3:])
        if level >= 2:
            xidd = gt[:, 2]
            if cf:
                d = torch.func.jvp(lambda x: mv(se3_jr(x), xid), (xi,), (xid,))[1]
                wr = mv(Jr, xidd) + d
            else:
                wr = mv(Jr, xidd + 0.5 * mv(se3_ad(tw), xid))
            out["alpha"] = wr[:, :3]
            out["a"] = mv(R, wr[:, 3:] + torch.linalg.cross(tw[:, :3], tw[:, 3:], dim=-1))
        return out

    def _interval_gammas(self, Xa: Tensor, Xb: Tensor, jac: bool):
        r""":math:`\gamma_a, \gamma_b` (``U x N x 6``) of ``U`` intervals and, with ``jac``, their Jacobians
        ``U x N x 6 x 2s`` with respect to the tangents of both knots (forward-mode autodiff)."""
        if not jac:
            ga, gb = self._gammas(self._unpack(Xa), self._unpack(Xb))
            return ga, gb, None, None
        s, N, U = self.tangent_dim, self.order, Xa.shape[0]

        def f(d, xa, xb):
            a, b = self._gammas(self._unpack(self.retract(xa, d[:, :s])), self._unpack(self.retract(xb, d[:, s:])))
            return torch.cat([a.reshape(-1, 6 * N), b.reshape(-1, 6 * N)], 1)

        val, J = rowwise_jacobian(f, (Xa, Xb), 2 * s)  # U x 12N, U x 12N x 2s
        val, J = val.reshape(U, 2, N, 6), J.reshape(U, 2, N, 6, 2 * s)
        return val[:, 0], val[:, 1], J[:, 0], J[:, 1]

    def _flatten_tangent(self, out: dict[str, Tensor], base_R: Tensor, comps: tuple[str, ...]) -> Tensor:
        parts = []
        for c in comps:
            parts.append(so3_vee(base_R.mT @ out["R"]) if c == "R" else out[c])
        return torch.cat(parts, -1)

    def _interp(self, Xa, Xb, mix, level, jac, want_G=False):
        r"""Interpolated state; Jacobians by the chain rule through :math:`\gamma(t) = \Lambda\gamma_a +
        \Psi\gamma_b`: forward-mode derivatives of :math:`\gamma_{a,b}` per interval (``2s`` directions) and of the
        output map :math:`(T_a, \gamma(t)) \mapsto X(t)` per time (``6 + 6N`` directions)."""
        if level > self.order - 1:
            raise ValueError(f"Accelerations need prior='wnoj' (this trajectory has prior={self.prior!r}).")
        N, s = self.order, self.tangent_dim
        f, inv = mix.first, mix.inverse
        ga, gb, Jga, Jgb = self._interval_gammas(Xa[f], Xb[f], jac)
        gt = mix.Lam @ ga[inv] + mix.Psi @ gb[inv]
        A = self._unpack(Xa)
        out = self._outputs(A, gt, level)
        if not jac:
            return out, None, None, None
        M = gt.shape[0]
        comps = components(level)
        Rt = out["R"]
        Ra, pa = A["R"], A["p"]

        def h(d, ra, pa_, g, rt):
            base = {"R": ra @ so3_exp(d[:, :3]), "p": pa_ + d[:, 3:6]}
            return self._flatten_tangent(self._outputs(base, g + d[:, 6:].reshape(-1, N, 6), level), rt, comps)

        _, Jo = rowwise_jacobian(h, (Ra, pa, gt, Rt), 6 + 6 * N)  # M x d x (6 + 6N)
        Jgt = mix.Lam @ Jga[inv].reshape(M, N, 12 * s) + mix.Psi @ Jgb[inv].reshape(M, N, 12 * s)
        G = Jo[:, :, 6:]
        J = G @ Jgt.reshape(M, 6 * N, 2 * s)
        ps = self._slices()["p"]
        J[:, :, 0:3] += Jo[:, :, 0:3]
        J[:, :, ps] += Jo[:, :, 3:6]
        return out, J[:, :, :s], J[:, :, s:], (G if want_G else None)

    def _gamma_noise(self, C: Tensor) -> Tensor:
        M, N = C.shape[0], self.order
        qc = torch.cat([self.qc_rot, self.qc_pos])
        return (kron_eye(C, 6) * qc[None, None, :, None, None]).reshape(M, 6 * N, 6 * N)

    def _prior(self, Xa, Xb, dt, jac):
        N = self.order
        A, B = self._unpack(Xa), self._unpack(Xb)
        Phi, W = self._prior_mats(dt)
        ga, gb = self._gammas(A, B)
        w = torch.cat([self.qc_rot, self.qc_pos]).rsqrt()
        e = ((W @ (gb - Phi @ ga)) * w).reshape(dt.shape[0], 6 * N)
        if not jac:
            return e, None
        s = self.tangent_dim

        def f(d, xa, xb, h):
            return self._prior(self.retract(xa, d[:, :s]), self.retract(xb, d[:, s:]), h, jac=False)[0]

        _, J = rowwise_jacobian(f, (Xa, Xb, dt), 2 * s)  # M x 6N x 2s
        return e, J.reshape(J.shape[0], J.shape[1], 2, s)
