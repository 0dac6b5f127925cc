r"""GP trajectories on SO(3)xR3: a rotational local-variable chain and an independent world-frame position chain,
with hand-written Jacobians.

Between knots :math:`a = k` and :math:`b = k + 1` the rotation is :math:`R(t) = R_a\,\mathrm{Exp}(\theta(t))` and
the local variable's state :math:`\gamma = (\theta, \dot\theta, \ddot\theta)` (WNOJ) or :math:`(\theta,
\dot\theta)` (WNOA) follows the linear GP of :mod:`gpgeom.models.trajectory.interpolation`, per axis with the
power spectral density :math:`Q_c^{rot}`; the position :math:`(p, v, a)` is an ordinary chain in the world frame
with :math:`Q_c^{pos}` (T.-M. Nguyen et al., *GPTR: Gaussian Process Trajectory Representation for Continuous-Time
Motion Estimation*, arXiv:2410.22931, 2024; Tang, Yoon & Barfoot, *A white-noise-on-jerk motion prior for
continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2), 2019, for the third-order prior).

At the knots (:mod:`gpgeom.models.trajectory.kinematics`)

.. math::
    \gamma_a = (0, \omega_a, \alpha_a), \qquad
    \gamma_b = \big(\theta_b,\ J_r^{-1}(\theta_b)\omega_b,\ J_r^{-1}(\theta_b)\alpha_b + H'(\theta_b, \omega_b)
    \dot\theta_b\big), \qquad \theta_b = \mathrm{Log}(R_a^\top R_b),

and at a time between them :math:`\gamma(t) = \Lambda(\tau)\gamma_a + \Psi(\tau)\gamma_b`, then
:math:`R(t) = R_a\mathrm{Exp}(\theta(t))`, :math:`\omega(t) = J_r\dot\theta`, :math:`\alpha(t) = J_r\ddot\theta
+ H(\theta, \dot\theta)\dot\theta`. The motion prior of an interval is :math:`e = W(\Delta)(\gamma_b -
\Phi(\Delta)\gamma_a)`, whitened per axis by :math:`Q_c^{-1/2}`, and the same for :math:`(p, v, a)`.

Jacobians (checked against ``torch.func.jacfwd`` in the tests): :math:`\partial\theta_b/\partial\delta_{R_a} =
-J_r^{-1}(\theta_b)R_{ab}^\top`, :math:`\partial\theta_b/\partial\delta_{R_b} = J_r^{-1}(\theta_b)`, the derivative
terms :math:`H, H', L_{11}, L_{12}, L'_{11}, L'_{12}` of :mod:`gpgeom.geometry.lie` for the rates, and the
block lower-triangular map :math:`G = \partial(R, \omega, \alpha)/\partial\gamma(t)` at the query time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gpgeom.models.trajectory.algebra import kron_eye
from gpgeom.models.trajectory.base import Trajectory
from gpgeom.models.trajectory.kinematics import so3_gamma_b, so3_outputs

__all__ = ["SO3xR3Trajectory"]


class SO3xR3Trajectory(Trajectory):
    r"""GP trajectory on SO(3)xR3: a rotational chain in the local variable :math:`\theta` and an independent
    world-frame position chain (the ``SO3xR3`` pose group of GPTR). See
    :class:`~gpgeom.models.trajectory.Trajectory` for the arguments and the module docstring for the equations.
    All Jacobians are hand-written (closed form).

    Example:
        >>> traj = SO3xR3Trajectory.uniform(0.0, 10.0, 0.1, qc_rot=10.0, qc_pos=10.0)
        >>> traj.fit([RangeMeasurement(t, anchors, ranges, tag_offset=offsets, sigma=0.05)])  # doctest: +SKIP
        >>> state, std = traj.fit(...).predict(np.linspace(0, 10, 1001), return_std=True)  # doctest: +SKIP
    """

    pose_group = "so3xr3"

    def _gamma_b(self, Ra: Tensor, Rb: Tensor, wb: Tensor, ab: Tensor | None, jac: bool):
        r""":math:`\gamma_b` (``M x N x 3``) and its Jacobians ``M x N x 3 x N x 3`` with respect to the rotational
        tangent :math:`(\delta_R, \delta_\omega, \delta_\alpha)` of knot ``a`` and of knot ``b``
        (:func:`~gpgeom.models.trajectory.kinematics.so3_gamma_b`)."""
        return so3_gamma_b(Ra, Rb, wb, ab, self.order, self.kinematics == "closed_form", jac)

    def _gamma_a(self, A: dict[str, Tensor]) -> Tensor:
        rates = [A["omega"]] + ([A["alpha"]] if self.order == 3 else [])
        return torch.stack([torch.zeros_like(A["omega"])] + rates, dim=1)

    def _interp_state(self, Xa, Xb, mix, level, jac):
        r"""Interpolated state (dict) and, with ``jac``, the pieces of its Jacobians: ``Gm`` (``M x 3L x 3L``,
        :math:`\partial(R, \omega, \alpha)/\partial\gamma^{rot}(t)`), ``E`` (:math:`\mathrm{Exp}(\theta(t))`) and the
        per-interval Jacobians of :math:`\gamma_b` (``U x N x 3 x N x 3``; ``inverse`` maps times to intervals)."""
        N = self.order
        if level > N - 1:
            raise ValueError(f"Accelerations need prior='wnoj' (this trajectory has prior={self.prior!r}).")
        cf = self.kinematics == "closed_form"
        A, B = self._unpack(Xa), self._unpack(Xb)
        Lam, Psi = mix.Lam, mix.Psi
        # gamma_b and its Jacobians depend on the interval only: evaluate them once per distinct interval
        Bu = self._unpack(Xb[mix.first])
        gb, Jgb_a, Jgb_b = self._gamma_b(A["R"][mix.first], Bu["R"], Bu["omega"], Bu.get("alpha"), jac)
        gb = gb[mix.inverse]
        ga = self._gamma_a(A)
        gt = Lam @ ga + Psi @ gb
        E, rates, Gm = so3_outputs(gt, level, cf, jac)
        out = {"R": A["R"] @ E, **rates}
        pos_a = torch.stack([A[c] for c in ("p", "v", "a")[:N]], dim=1)
        pos_b = torch.stack([B[c] for c in ("p", "v", "a")[:N]], dim=1)
        pt = Lam[:, : level + 1] @ pos_a + Psi[:, : level + 1] @ pos_b
        for i, c in enumerate(("p", "v", "a")[: level + 1]):
            out[c] = pt[:, i]
        if not jac:
            return out, None
        parts = {"Gm": Gm, "E": E, "Jgb_a": Jgb_a, "Jgb_b": Jgb_b}
        return out, parts

    def _interp(self, Xa, Xb, mix, level, jac, want_G=False):
        r"""Interpolated state (dict) and, with ``jac``, ``J_a, J_b`` (``M x 6(level+1) x s``) and ``G``."""
        out, c = self._interp_state(Xa, Xb, mix, level, jac)
        if not jac:
            return out, None, None, None
        N, L = self.order, level + 1
        Lam, Psi, inv = mix.Lam, mix.Psi, mix.inverse
        Gm, E = c["Gm"], c["E"]
        M = Gm.shape[0]
        n3, l3 = 3 * N, 3 * L
        # d gamma_t / d (rotational tangent of a, of b), only the L row blocks the outputs need: M x L x 3 x N x 3.
        # gamma_b depends on knot a through R_a only (column block 0); gamma_a = (0, omega_a, alpha_a).
        Pl = Psi[:, :L]
        Jt_a = Gm.new_zeros(M, L, 3, N, 3)
        Jt_a[:, :, :, 0, :] = (Pl @ c["Jgb_a"][:, :, :, 0, :][inv].reshape(M, N, 9)).reshape(M, L, 3, 3)
        Jt_a[:, :, :, 1:, :].diagonal(dim1=2, dim2=4).add_(Lam[:, :L, 1:, None])
        Jt_b = (Pl @ c["Jgb_b"][inv].reshape(M, N, 3 * n3)).reshape(M, L, 3, N, 3)
        Ja = Gm.new_zeros(M, 2 * l3, 2 * n3)
        Jb = Gm.new_zeros(M, 2 * l3, 2 * n3)
        Ja[:, :l3, :n3] = Gm @ Jt_a.reshape(M, l3, n3)
        Ja[:, :3, :3] += E.mT
        Jb[:, :l3, :n3] = Gm @ Jt_b.reshape(M, l3, n3)
        Ja[:, l3:, n3:] = kron_eye(Lam[:, :L]).reshape(M, l3, n3)
        Jb[:, l3:, n3:] = kron_eye(Psi[:, :L]).reshape(M, l3, n3)
        Gfull = None
        if want_G:
            Gfull = Gm.new_zeros(M, 2 * l3, 2 * n3)
            Gfull[:, :l3, :l3] = Gm
            Gfull[:, l3:, n3 : n3 + l3] = torch.eye(l3, dtype=Gm.dtype, device=Gm.device)
        return out, Ja, Jb, Gfull

    def _interp_linearize(self, Xa, Xb, mix, level, measure):
        r"""A measurement through the interpolated state, its Jacobians with respect to both knots contracted from
        the left: with :math:`J_s = [J_s^{rot}, J_s^{pos}]` (``M x r x 6L``) of the measurement,
        :math:`J_s J_{a,b}` is :math:`A\,\partial\gamma^{rot}(t)/\partial x_{a,b}` with :math:`A = J_s^{rot} G`
        (``r x 3L``), contracted with :math:`\Lambda, \Psi` and the per-interval :math:`\partial\gamma_b`
        before any ``6L x s`` matrix is formed, plus :math:`J_s^{rot} \mathrm{Exp}(\theta)^\top` on
        :math:`\delta_{R_a}` and :math:`J_s^{pos}(\Lambda, \Psi) \otimes I_3` on the positions (the same
        numbers as :meth:`_interp`, in ``O(r)`` instead of ``O(L)`` work per row)."""
        out, c = self._interp_state(Xa, Xb, mix, level, True)
        e, Js, Jp = measure(out)
        N, L = self.order, level + 1
        Lam, Psi = mix.Lam[:, :L], mix.Psi[:, :L]
        M, r = Js.shape[:2]
        l3 = 3 * L
        A = (Js[:, :, :l3] @ c["Gm"]).reshape(M, r, L, 3)
        Bk = torch.einsum("mrlc,mlk->mrkc", A, Psi).reshape(M, r, 3 * N)  # through gamma_b
        Jx = e.new_empty(M, r, 2, 6 * N)
        U = c["Jgb_b"].shape[0]
        Jgb = torch.cat([c["Jgb_b"].reshape(U, 3 * N, 3 * N), c["Jgb_a"][:, :, :, 0, :].reshape(U, 3 * N, 3)], -1)
        Jg = mix.per_interval_matmul(Bk, Jgb)
        Jx[:, :, 1, : 3 * N] = Jg[:, :, : 3 * N]
        Jx[:, :, 0, :3] = Jg[:, :, 3 * N :] + Js[:, :, :3] @ c["E"].mT
        Jx[:, :, 0, 3 : 3 * N] = torch.einsum("mrlc,mln->mrnc", A, Lam[:, :, 1:]).reshape(M, r, 3 * (N - 1))
        P = Js[:, :, l3:].reshape(M, r, L, 3)
        Jx[:, :, 0, 3 * N :] = torch.einsum("mrlc,mln->mrnc", P, Lam).reshape(M, r, 3 * N)
        Jx[:, :, 1, 3 * N :] = torch.einsum("mrlc,mln->mrnc", P, Psi).reshape(M, r, 3 * N)
        return e, Jx, Jp

    def _gamma_noise(self, C: Tensor) -> Tensor:
        r"""``M x 6N x 6N``: :math:`Q_{\tau|ab}` for the stacked :math:`(\gamma^{rot}, \gamma^{pos})`."""
        M, N = C.shape[0], self.order
        n3 = 3 * N
        out = C.new_zeros(M, 2 * n3, 2 * n3)
        out[:, :n3, :n3] = (kron_eye(C) * self.qc_rot[None, None, :, None, None]).reshape(M, n3, n3)
        out[:, n3:, n3:] = (kron_eye(C) * self.qc_pos[None, None, :, None, None]).reshape(M, n3, n3)
        return out

    def _prior(self, Xa, Xb, dt, jac):
        r"""Whitened prior residuals ``M x 6N`` and Jacobians ``M x 6N x 2 x s``."""
        N = self.order
        A, B = self._unpack(Xa), self._unpack(Xb)
        Phi, W = self._prior_mats(dt)
        gb, Jgb_a, Jgb_b = self._gamma_b(A["R"], B["R"], B["omega"], B.get("alpha"), jac)
        ga = self._gamma_a(A)
        pos_a = torch.stack([A[c] for c in ("p", "v", "a")[:N]], dim=1)
        pos_b = torch.stack([B[c] for c in ("p", "v", "a")[:N]], dim=1)
        wr, wp = self.qc_rot.rsqrt(), self.qc_pos.rsqrt()
        e_rot = (W @ (gb - Phi @ ga)) * wr
        e_pos = (W @ (pos_b - Phi @ pos_a)) * wp
        M = dt.shape[0]
        e = torch.cat([e_rot.reshape(M, 3 * N), e_pos.reshape(M, 3 * N)], dim=1)
        if not jac:
            return e, None
        Jra = Jgb_a.clone()
        Jra[:, :, :, 1:, :] -= kron_eye(Phi[:, :, 1:])
        n3 = 3 * N

        def whiten(Jblk, w):
            return ((W @ Jblk.reshape(M, N, 3 * n3)).reshape(M, N, 3, n3) * w[None, None, :, None]).reshape(M, n3, n3)

        Jx = e.new_zeros(M, 2 * n3, 2, 2 * n3)
        Jx[:, :n3, 0, :n3] = whiten(Jra, wr)
        Jx[:, :n3, 1, :n3] = whiten(Jgb_b, wr)
        Jx[:, n3:, 0, n3:] = whiten(-kron_eye(Phi), wp)
        eye = torch.eye(N, dtype=e.dtype, device=e.device).expand(M, N, N)
        Jx[:, n3:, 1, n3:] = whiten(kron_eye(eye), wp)
        return e, Jx
