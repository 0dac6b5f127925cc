r"""The base class of the continuous-time GP trajectories: knots, interpolation, estimation and the model contract.

A trajectory is represented by its states at ``K`` knots :math:`t_0 < \dots < t_{K-1}`, each
:math:`(R, \omega, \alpha, p, v, a)` (white noise on jerk, WNOJ) or :math:`(R, \omega, p, v)` (white noise on
acceleration, WNOA), and a Gauss-Markov motion prior between consecutive knots (Barfoot, Tong & Sarkka, *Batch
continuous-time trajectory estimation as exactly sparse Gaussian process regression*, RSS 2014; Tang, Yoon &
Barfoot, *A white-noise-on-jerk motion prior for continuous-time trajectory estimation on SE(3)*, IEEE RA-L 4(2),
2019). The pose group -- :class:`~gpgeom.models.trajectory.so3xr3.SO3xR3Trajectory` or
:class:`~gpgeom.models.trajectory.se3.SE3Trajectory` -- supplies the local variable, its kinematics and the
Jacobians (``_interp``, ``_prior``, ``_gamma_noise``); this class supplies everything else:

* the knots (:meth:`Trajectory.set_knots`, :attr:`Trajectory.knots`) and their retraction
  :math:`R \leftarrow R\,\mathrm{Exp}(\delta_R)`, the rest additive (tangent order :math:`(\delta_R,
  \delta_\omega, \delta_\alpha, \delta_p, \delta_v, \delta_a)`, 18-D for WNOJ, 12-D for WNOA);
* evaluation at any time with Jacobians and posterior covariance (:meth:`Trajectory.interpolate`) and the
  contract's :meth:`Trajectory.predict` (mean state, marginal standard deviations or full covariances);
* MAP estimation of the knots from measurements (:meth:`Trajectory.fit`) by the engine's Gauss-Newton /
  Levenberg-Marquardt on the block-tridiagonal normal matrix (:mod:`gpgeom.models.trajectory.estimation`),
  started from the measurements (:mod:`gpgeom.models.trajectory.initialisation`) unless the knots were given;
* the model contract of :mod:`gpgeom.base`: ``fit`` returns the model with ``fit_result_``, numpy or torch inputs,
  ``to(device=..., dtype=...)``, ``save``/``load`` through one file format, an informative ``repr``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from gpgeom._progress import progress_bar
from gpgeom._validation import as_tensor, check_increasing, check_option, check_positive, check_tensor
from gpgeom._warnings import user_stacklevel
from gpgeom.base import ModelContract
from gpgeom.engine.chunking import chunk_size_for, resolve_max_memory
from gpgeom.engine.factors import Factor
from gpgeom.engine.least_squares import gauss_newton
from gpgeom.geometry.lie import check_rotation, check_unit_quaternion, quat_to_rotmat, rotmat_to_quat, so3_exp
from gpgeom.kernels.markov import WNOAKernel, WNOJKernel
from gpgeom.models.trajectory.algebra import as_vec3
from gpgeom.models.trajectory.estimation import build_factors, check_measurement
from gpgeom.models.trajectory.factors.base import Measurement
from gpgeom.models.trajectory.initialisation import (
    INIT_OPTIONS,
    at_default_state,
    check_measured_turns,
    initial_knots,
    knot_wraps,
)
from gpgeom.models.trajectory.interpolation import Bracket, MarkovChainAlgebra
from gpgeom.models.trajectory.kinematics import KINEMATICS
from gpgeom.models.trajectory.state import (
    COMPONENTS,
    TrajectoryFitResult,
    TrajectoryState,
    TrajectoryStd,
    components,
)

__all__ = ["PRIORS", "Trajectory"]

PRIORS = ("wnoj", "wnoa")
#: Default ``stol`` of :meth:`Trajectory.fit`: stop once a (nearly undamped) step moves the estimate by less than
#: this many posterior standard deviations (:func:`gpgeom.engine.least_squares.gauss_newton`).
STOL = 0.2


class Trajectory(ModelContract):
    r"""Continuous-time GP trajectory with knots carrying :math:`(R, \omega, \alpha, p, v, a)` (WNOJ) or
    :math:`(R, \omega, p, v)` (WNOA). Use :class:`~gpgeom.models.trajectory.SO3xR3Trajectory` or
    :class:`~gpgeom.models.trajectory.SE3Trajectory`.

    Args:
        knot_times: ``K`` strictly increasing knot times (``K >= 2``; numpy or torch); see also :meth:`uniform`.
        prior: ``"wnoj"`` (white noise on jerk, third order, default) or ``"wnoa"`` (white noise on acceleration,
            second order: no acceleration states).
        kinematics: ``"closed_form"`` (exact :math:`\dot\theta, \ddot\theta`, default) or ``"taylor"`` (the
            first-order approximation :math:`H' \approx -\tfrac12\omega^\wedge`).
        qc_rot: Power spectral density of the rotational white noise (float or 3-vector, per axis).
        qc_pos: Same for the translational part.
        dtype: ``torch.float64`` (default) or ``torch.float32``.
        device: Where the knots live.

    Knots start at the identity rotation and zero rates. :meth:`fit` estimates them from measurements (starting,
    by default, from knots built from the measurements themselves: :meth:`initialise`); :meth:`set_knots` gives
    them directly (and a later :meth:`fit` starts from them). Either makes the trajectory usable by :meth:`predict` and
    :meth:`save` (:meth:`interpolate` evaluates the current knots at any time).

    Attributes:
        fit_result_: The :class:`~gpgeom.models.trajectory.TrajectoryFitResult` of the last :meth:`fit`
            (``None`` before).
        covariances_: ``K x s x s`` marginal covariances of the knots' tangent perturbations (after
            ``fit(..., compute_covariances=True)``), else ``None``.
        cross_covariances_: ``K x 1 x s x s`` covariances between knots ``k`` and ``k + 1``, else ``None``.
    """

    pose_group = ""

    def __init__(
        self,
        knot_times: Tensor | Sequence[float],
        *,
        prior: str = "wnoj",
        kinematics: str = "closed_form",
        qc_rot: float | Sequence[float] | Tensor = 1.0,
        qc_pos: float | Sequence[float] | Tensor = 1.0,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        if type(self) is Trajectory:
            raise TypeError("Trajectory is abstract; use SO3xR3Trajectory or SE3Trajectory.")
        check_option("prior", prior, PRIORS)
        check_option("kinematics", kinematics, KINEMATICS)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}.")
        knot_times = as_tensor("knot_times", knot_times, dtype=None)
        check_tensor("knot_times", knot_times, ndim=1, floating=True)
        if knot_times.shape[0] < 2:
            raise ValueError(f"`knot_times` must hold at least 2 knots, got {knot_times.shape[0]}.")
        check_increasing("knot_times", knot_times)
        self.prior = prior
        self.kinematics = kinematics
        self.order = 3 if prior == "wnoj" else 2
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else knot_times.device
        self._times = _cast_knot_times(knot_times, dtype, self._device)
        # the times as given, for the time arithmetic (t - t_k, the spacings) whatever the dtype: in float32 a time
        # of 3e4 s is only known to 2e-3 s, a tenth of a 0.02 s knot interval
        self._times64 = knot_times.detach().to(dtype=torch.float64, device="cpu").clone()
        self.qc_rot = as_vec3("qc_rot", qc_rot).to(dtype=dtype, device=self._device)
        self.qc_pos = as_vec3("qc_pos", qc_pos).to(dtype=dtype, device=self._device)
        K = self.num_knots
        X = torch.zeros(K, self.state_dim, dtype=dtype, device=self._device)
        X[:, :9] = torch.eye(3, dtype=dtype, device=self._device).reshape(9)
        self._knots = X
        self._chain = MarkovChainAlgebra(self.order)
        self.covariances_: Tensor | None = None
        self.cross_covariances_: Tensor | None = None
        self.fit_result_: TrajectoryFitResult | None = None
        self._fitted = False

    # ----- construction helpers -----
    @classmethod
    def uniform(cls, t_start: float, t_end: float, dt: float, **kwargs: Any) -> Trajectory:
        r"""Knots ``t_start + k dt``, ``k = 0..K-1``, with the last knot at or after ``t_end`` (``kwargs``: those
        of the constructor). ``t_start``, ``t_end`` and ``dt`` are real numbers (Python or numpy scalars).

        ``K - 1`` is :math:`\lceil (t_{end} - t_{start})/dt\rceil` up to a relative ``1e-9``; where rounding leaves
        the last knot below ``t_end`` (``uniform(0.0, 0.9, 0.3)``: ``0.9 / 0.3 = 3.0000000000000004``, four knots,
        the last at ``0.8999999999999999``) it is put on ``t_end``, so that a measurement at ``t_end`` lies inside."""
        for nm, val in (("t_start", t_start), ("t_end", t_end)):
            if not isinstance(val, numbers.Real) or isinstance(val, bool) or not math.isfinite(val):
                raise TypeError(f"`{nm}` must be a finite real number, got {val!r}.")
        check_positive("dt", dt)
        t_start, t_end, dt = float(t_start), float(t_end), float(dt)
        if not t_end > t_start:
            raise ValueError(f"`t_end` ({t_end}) must exceed `t_start` ({t_start}).")
        K = int(math.ceil((t_end - t_start) / dt - 1e-9)) + 1
        times = t_start + dt * torch.arange(K, dtype=torch.float64)
        if times[-1] < t_end:
            times[-1] = t_end
        return cls(times, **kwargs)

    # ----- sizes and views -----
    @property
    def num_knots(self) -> int:
        r"""``K``."""
        return int(self._times.shape[0])

    @property
    def state_dim(self) -> int:
        r"""Numbers stored per knot: 9 (R) + 3 (N - 1) + 3 N (24 for WNOJ, 18 for WNOA)."""
        return 9 + 3 * (self.order - 1) + 3 * self.order

    @property
    def tangent_dim(self) -> int:
        r"""``s``: 18 for WNOJ, 12 for WNOA."""
        return 6 * self.order

    @property
    def state_components(self) -> tuple[str, ...]:
        r"""``("R", "omega", "alpha", "p", "v", "a")`` (WNOJ) or ``("R", "omega", "p", "v")`` (WNOA)."""
        return components(self.order - 1)

    @property
    def knot_times(self) -> Tensor:
        r"""``K`` knot times, in the trajectory's dtype (the bracketing of a time and the spacings use the times as
        given, in float64, so that a float32 trajectory far from ``t = 0`` keeps them exact). A copy: changing it in
        place changes nothing in the trajectory."""
        return self._times.clone()

    @property
    def knots(self) -> Tensor:
        r"""``K x state_dim`` stored knot states ``[vec(R) (row-major), omega, (alpha), p, v, (a)]``. A copy: changing
        it in place changes nothing in the trajectory (:meth:`set_knots` sets them)."""
        return self._knots.clone()

    def _slices(self) -> dict[str, slice]:
        """Tangent slices of each component (the storage after the 9 entries of R has the same layout, shifted)."""
        names = self.state_components
        return {c: slice(3 * i, 3 * i + 3) for i, c in enumerate(names)}

    def _unpack(self, X: Tensor) -> dict[str, Tensor]:
        r"""``... x state_dim`` -> dict of components (``R``: ``... x 3 x 3``, others ``... x 3``)."""
        out = {"R": X[..., :9].reshape(*X.shape[:-1], 3, 3)}
        rest = X[..., 9:]
        for i, c in enumerate(self.state_components[1:]):
            out[c] = rest[..., 3 * i : 3 * i + 3]
        return out

    def _pack(self, st: dict[str, Tensor]) -> Tensor:
        R = st["R"]
        parts = [R.reshape(*R.shape[:-2], 9)] + [st[c] for c in self.state_components[1:]]
        return torch.cat(parts, dim=-1)

    def __getattr__(self, name: str):
        if name in COMPONENTS:
            knots = self.__dict__.get("_knots")
            if knots is None:
                raise AttributeError(name)
            st = self._unpack(knots)
            if name not in st:
                raise AttributeError(f"A trajectory with prior={self.prior!r} has no `{name}` knots.")
            return st[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def quaternion(self) -> Tensor:
        r"""``K x 4`` knot rotations as unit quaternions ``(x, y, z, w)``."""
        return rotmat_to_quat(self._unpack(self._knots)["R"], validate=False)

    def retract(self, X: Tensor, dX: Tensor) -> Tensor:
        r""":math:`R \leftarrow R\,\mathrm{Exp}(\delta_R)`, the rest additive (``X``: ``... x state_dim``,
        ``dX``: ``... x tangent_dim``)."""
        R = X[..., :9].reshape(*X.shape[:-1], 3, 3) @ so3_exp(dX[..., :3])
        return torch.cat([R.reshape(*X.shape[:-1], 9), X[..., 9:] + dX[..., 3:]], dim=-1)

    def set_knots(self, *, R=None, q=None, omega=None, alpha=None, p=None, v=None, a=None) -> Trajectory:
        r"""Set (some of) the knot states; the others are kept. Marks the trajectory as usable (as ``fit`` does)
        and drops the covariances of an earlier fit.

        Args:
            R: ``K x 3 x 3`` rotations (checked orthonormal).
            q: Or ``K x 4`` unit quaternions ``(x, y, z, w)`` instead of ``R``.
            omega, alpha, p, v, a: ``K x 3`` (``alpha`` and ``a`` only for ``prior="wnoj"``).

        All values may be numpy arrays or torch tensors.

        Returns:
            ``self``.

        Warns:
            UserWarning: When the angular velocities of two consecutive knots turn the body the other way round from
                their rotations (a spin faster than :math:`\pi` per knot interval, which the local variable
                :math:`\mathrm{Log}(R_k^\top R_{k+1})` cannot hold;
                :func:`~gpgeom.models.trajectory.initialisation.knot_wraps`). :meth:`fit` warns the same of its
                estimate.
        """
        K = self.num_knots
        if R is not None and q is not None:
            raise ValueError("Give `R` or `q`, not both.")
        st = self._unpack(self._knots.clone())

        def given(name: str, x: object, shape: tuple) -> Tensor:
            # checked in its own floating dtype, then cast to the trajectory's
            return as_tensor(name, x, dtype=None, device=self.device, shape=shape)

        if q is not None:
            q = given("q", q, (4,))
            if q.shape != (K, 4):
                raise ValueError(f"`q` must have shape ({K}, 4) (one unit quaternion per knot), got {tuple(q.shape)}.")
            check_unit_quaternion(q, name="q")
            R = quat_to_rotmat(q.to(self.dtype), validate=False)
        if R is not None:
            R = given("R", R, (3, 3))
            if R.shape != (K, 3, 3):
                raise ValueError(f"`R` must have shape ({K}, 3, 3) (one rotation per knot), got {tuple(R.shape)}.")
            check_rotation(R, name="R")
            st["R"] = R.to(dtype=self.dtype)
        for name, val in (("omega", omega), ("alpha", alpha), ("p", p), ("v", v), ("a", a)):
            if val is None:
                continue
            if name not in st:
                raise ValueError(f"`{name}` is not a knot state of a prior={self.prior!r} trajectory.")
            val = given(name, val, (3,))
            if val.shape != (K, 3):
                raise ValueError(f"`{name}` must have shape ({K}, 3), got {tuple(val.shape)}.")
            st[name] = val.to(dtype=self.dtype)
        self._knots = self._pack(st)
        self.covariances_ = self.cross_covariances_ = None
        self._fitted = True
        wrap = knot_wraps(self)
        if wrap:
            warnings.warn(f"set_knots: {wrap}.", UserWarning, stacklevel=user_stacklevel())
        return self

    def _to(self, *, device: torch.device, dtype: torch.dtype) -> None:
        r"""Move the knots, :math:`Q_c`, the covariances and the fitted globals (:meth:`ModelContract.to
        <gpgeom.base.ModelContract.to>` calls it)."""
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}.")
        times = _cast_knot_times(self._times64, dtype, device)  # checked before anything moves
        super()._to(device=device, dtype=dtype)
        kw = {"dtype": dtype, "device": self._device}
        self._times = times.to(device=self._device)
        self._knots = self._knots.to(**kw)
        self.qc_rot, self.qc_pos = self.qc_rot.to(**kw), self.qc_pos.to(**kw)
        if self.covariances_ is not None:
            self.covariances_ = self.covariances_.to(**kw)
            self.cross_covariances_ = self.cross_covariances_.to(**kw)
        res = self.fit_result_
        if res is not None:
            res.globals = {k: v.to(**kw) for k, v in res.globals.items()}
            if res.global_covariance is not None:
                res.global_covariance = res.global_covariance.to(**kw)

    def prior_kernel(self, part: str = "pos") -> WNOJKernel | WNOAKernel:
        r"""The engine kernel of one part of the prior, ``batch_shape = (3,)`` (one per axis), with this
        trajectory's :math:`Q_c` and start time: ``part="pos"`` is the prior of :math:`p(t)` per world axis
        (SO(3)xR3), ``"rot"`` that of the local variable :math:`\theta`. Its ``P0`` is zero (set it to model the
        first knot's prior). The kernel is float64 (its start time exact) on the trajectory's device."""
        check_option("part", part, ("pos", "rot"))
        cls = WNOJKernel if self.order == 3 else WNOAKernel
        k = cls(t0=float(self._times64[0]), batch_shape=torch.Size([3])).to(dtype=torch.float64, device=self.device)
        k.qc = (self.qc_pos if part == "pos" else self.qc_rot).detach().to(torch.float64)
        return k

    # ----- the linear GP algebra (gpgeom.models.trajectory.interpolation) -----
    def _locate(self, t: Tensor, name: str) -> Bracket:
        r"""Bracketing knots and :math:`\Lambda(\tau), \Psi(\tau)` (``M x N x N``) for times ``t`` (``M``)."""
        return self._chain.locate(self._times64, t, name, dtype=self.dtype, device=self.device)

    def _spacing(self) -> Tensor:
        r"""``K - 1`` knot spacings :math:`\Delta_k`, taken in float64 and then cast to the trajectory's dtype."""
        return self._times64.diff().to(dtype=self.dtype, device=self.device)

    def _cond_cov_hat(self, s: Tensor, dt: Tensor) -> Tensor:
        r"""Interpolation covariance given both knots per unit :math:`Q_c` (``M x N x N``)."""
        return self._chain.conditional_cov(s, dt)

    def _prior_mats(self, dt: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\Phi(\Delta)` and the motion-prior whitening :math:`W(\Delta)` (``M x N x N``)."""
        return self._chain.prior_mats(dt)

    # ----- to be provided by the pose group -----
    def _interp(self, Xa: Tensor, Xb: Tensor, mix: Bracket, level: int, jac: bool, want_G: bool = False):
        r"""Interpolated state (dict) at the times of ``mix`` between knots ``Xa`` and ``Xb`` and, with ``jac``,
        the Jacobians ``M x d x s`` with respect to both knots and :math:`G = \partial X(t)/\partial\gamma(t)`."""
        raise NotImplementedError

    def _interp_linearize(self, Xa: Tensor, Xb: Tensor, mix: Bracket, level: int, measure):
        r"""A measurement ``measure(state) -> (e, J_s, J_p)`` (``J_s``: ``M x r x d``) at the interpolated state,
        and its Jacobians ``M x r x 2 x s`` with respect to both knots, :math:`[J_s J_a, J_s J_b]` (pose groups
        may contract :math:`J_s` into the chain rule without forming ``J_a, J_b``)."""
        st, Ja, Jb, _ = self._interp(Xa, Xb, mix, level, jac=True)
        e, Js, Jp = measure(st)
        return e, torch.stack([Js @ Ja, Js @ Jb], dim=2), Jp

    def _prior(self, Xa: Tensor, Xb: Tensor, dt: Tensor, jac: bool):
        r"""Whitened motion-prior residuals ``M x 6N`` and, with ``jac``, Jacobians ``M x 6N x 2 x s``."""
        raise NotImplementedError

    def _gamma_noise(self, C: Tensor) -> Tensor:
        r"""``M x 6N x 6N``: the conditional covariance ``C`` (per unit :math:`Q_c`) times the channels' :math:`Q_c`."""
        raise NotImplementedError

    # ----- evaluation -----
    def interpolate(
        self,
        t: object,
        *,
        jacobians: bool = False,
        covariance: bool = False,
        max_memory: int | float | str | None = None,
    ) -> TrajectoryState:
        r"""State, velocities and accelerations of the current knots at times ``t`` (any shape ``...``), with
        optional Jacobians with respect to the two bracketing knots and the posterior covariance.

        Args:
            t: Times inside the knot span, numpy or torch (a time equal to a knot time is exact: :math:`\Psi = 0`).
            jacobians: Also return ``jacobian_a``/``jacobian_b`` (``... x d x s``, see
                :class:`~gpgeom.models.trajectory.TrajectoryState`).
            covariance: Also return the posterior covariance ``... x d x d`` of the state perturbation at ``t``
                (needs a previous ``fit(..., compute_covariances=True)``):
                :math:`[J_a\ J_b]\,\Sigma_{ab}\,[J_a\ J_b]^\top + G\,(Q_{\tau|ab} \otimes Q_c)\,G^\top`, where
                :math:`Q_{\tau|ab} = Q(\tau) - \Psi(\tau)\Phi(\Delta-\tau)Q(\tau)` is the GP's uncertainty between
                known knots and :math:`G = \partial X(t)/\partial\gamma(t)` (Barfoot 2017, sec. 3.4.3).
            max_memory: Budget for the working memory of the Jacobians and covariances, bytes or a string such as
                ``"512MB"`` (default: the engine's, :data:`gpgeom.engine.chunking.DEFAULT_MAX_MEMORY` = 256 MiB, or
                the enclosing :func:`gpgeom.engine.chunking.memory_budget`): the times are processed in chunks whose
                intermediate tensors stay within it (measured: about six ``d x 2s`` matrices per time), written
                into the preallocated outputs. The results do not depend on it; the outputs themselves (``n d^2``
                numbers with ``covariance``) come on top (``benchmarks/trajectory.py`` measures the peak of 1e5
                times with covariances against one piece).
        """
        tin, t = self._query_times(t)
        resolve_max_memory(max_memory)  # a bad budget fails here, before any work
        if covariance and self.covariances_ is None:
            raise ValueError(
                "`covariance=True` needs the knots' posterior covariances: call fit(..., compute_covariances=True) "
                "first."
            )
        return self._state(t, self._interpolate_chunks(tin.reshape(-1), jacobians, covariance, False, max_memory))

    def _query_times(self, t: object) -> tuple[Tensor, Tensor]:
        r"""Query times as given (their floating dtype, float64 from numpy or Python numbers: the bracketing and
        :math:`t - t_k` use them) and in the trajectory's dtype and on its device (the state's ``t``: a copy, never
        the caller's tensor or array, which an in-place change of the returned state would otherwise write to)."""
        tin = as_tensor("t", t, dtype=None)
        return tin, tin.to(dtype=self.dtype, device=self.device, copy=True)

    def _state(self, t: Tensor, out: dict[str, Tensor]) -> TrajectoryState:
        r"""A :class:`TrajectoryState` of shape ``t.shape`` from the flat outputs of :meth:`_interpolate_chunks`."""
        shape, d = t.shape, 3 * len(self.state_components)

        def rs(name, tail):
            x = out.get(name)
            return None if x is None else x.reshape((*shape, *tail))  # a tuple: a scalar time has shape ()

        return TrajectoryState(
            t=t,
            R=rs("R", (3, 3)),
            omega=rs("omega", (3,)),
            alpha=rs("alpha", (3,)),
            p=rs("p", (3,)),
            v=rs("v", (3,)),
            a=rs("a", (3,)),
            index=rs("index", ()),
            jacobian_a=rs("jacobian_a", (d, self.tangent_dim)),
            jacobian_b=rs("jacobian_b", (d, self.tangent_dim)),
            covariance=rs("covariance", (d, d)),
        )

    def _interpolate_chunks(
        self, tf: Tensor, jacobians: bool, covariance: bool, variance_only: bool, max_memory: int | float | str | None
    ) -> dict[str, Tensor]:
        r""":meth:`_interpolate_flat` over chunks of times sized to the budget ``max_memory``, into preallocated
        outputs."""
        n = tf.shape[0]
        per_time = 6 * 8 * (3 * len(self.state_components)) * 2 * self.tangent_dim  # bytes of intermediates (measured)
        chunk = n if not (jacobians or covariance) else chunk_size_for(per_time, max_memory, total=n)
        if n <= chunk:
            return self._interpolate_flat(tf, jacobians, covariance, variance_only)
        out: dict[str, Tensor] = {}
        for lo in range(0, n, chunk):
            part = self._interpolate_flat(tf[lo : lo + chunk], jacobians, covariance, variance_only)
            for name, x in part.items():
                if name not in out:
                    out[name] = x.new_empty(n, *x.shape[1:])
                out[name][lo : lo + chunk] = x
        return out

    def _interpolate_flat(self, tf: Tensor, jacobians: bool, covariance: bool, variance_only: bool = False):
        r"""The state at times ``tf`` (``n``) as a dict (components, ``index``, ``jacobian_a``/``_b``, and
        ``covariance`` ``n x d x d`` or, with ``variance_only``, its diagonal ``variance`` ``n x d``)."""
        mix = self._locate(tf, "t")
        Xa, Xb = self._knots[mix.index], self._knots[mix.index + 1]
        level = self.order - 1
        st, Ja, Jb, G = self._interp(Xa, Xb, mix, level, jacobians or covariance, want_G=covariance)
        out = {c: st[c] for c in self.state_components}
        out["index"] = mix.index
        if jacobians:
            out["jacobian_a"], out["jacobian_b"] = Ja, Jb
        if covariance:
            k = mix.index[mix.first]  # the joint covariance of each interval's two knots, once per interval
            S_ab = self.cross_covariances_[k, 0]
            Sig = torch.cat(
                [torch.cat([self.covariances_[k], S_ab], -1), torch.cat([S_ab.mT, self.covariances_[k + 1]], -1)], -2
            )
            J = torch.cat([Ja, Jb], -1)
            cov = mix.per_interval_matmul(J, Sig) @ J.mT
            del J
            C = self._cond_cov_hat(mix.s, mix.dt)
            cov = cov + G @ self._gamma_noise(C) @ G.mT
            cov = 0.5 * (cov + cov.mT)
            if variance_only:
                out["variance"] = cov.diagonal(dim1=-2, dim2=-1).clone()
            else:
                out["covariance"] = cov
        return out

    def predict(
        self,
        t: object,
        return_std: bool = False,
        *,
        return_cov: bool = False,
        max_memory: int | float | str | None = None,
    ) -> TrajectoryState | tuple[TrajectoryState, TrajectoryStd] | tuple[TrajectoryState, Tensor]:
        r"""The posterior mean state at times ``t`` and, on request, its uncertainty.

        Args:
            t: Times inside the knot span (numpy or torch, any shape ``...``).
            return_std: Also return the marginal standard deviations per component and axis
                (:class:`~gpgeom.models.trajectory.TrajectoryStd`, ``... x 3`` each).
            return_cov: Also return the full covariance ``... x d x d`` of the state perturbation at each time
                (rows and columns in the order ``(R, omega, alpha, p, v, a)``, see :meth:`interpolate`).
            max_memory: Working-memory budget of the uncertainty, see :meth:`interpolate` (the standard
                deviations are taken chunk by chunk, so only ``n d`` numbers are kept).

        The uncertainty needs the knots' covariances of ``fit(..., compute_covariances=True)``.

        Returns:
            ``state`` (:class:`~gpgeom.models.trajectory.TrajectoryState`, without Jacobians or covariance),
            ``(state, std)`` with ``return_std`` or ``(state, covariance)`` with ``return_cov``.

        Raises:
            gpgeom.errors.NotFittedError: Before ``fit``, ``set_knots`` or ``load``.
        """
        self._check_fitted()
        if return_std and return_cov:
            raise ValueError("Ask for one of `return_std` and `return_cov`, not both (the std is in the covariance).")
        if (return_std or return_cov) and self.covariances_ is None:
            raise ValueError(
                f"`return_{'std' if return_std else 'cov'}=True` needs the knots' posterior covariances: call "
                "fit(..., compute_covariances=True) first."
            )
        if not return_std:
            st = self.interpolate(t, covariance=return_cov, max_memory=max_memory)
            cov, st.covariance = st.covariance, None
            return (st, cov) if return_cov else st
        tin, t = self._query_times(t)
        resolve_max_memory(max_memory)  # a bad budget fails here, before any work
        out = self._interpolate_chunks(tin.reshape(-1), False, True, True, max_memory)
        st = self._state(t, {k: v for k, v in out.items() if k != "variance"})
        sd = out["variance"].clamp_min(0.0).sqrt().reshape(*t.shape, out["variance"].shape[-1])
        parts = dict(zip(self.state_components, sd.split(3, dim=-1)))
        std = TrajectoryStd(**{c: parts.get(c) for c in COMPONENTS})
        return st, std

    def prior_residuals(self) -> Tensor:
        r"""``(K - 1) x 6N`` whitened motion-prior residuals of the current knots (useful for diagnostics)."""
        X = self._knots
        return self._prior(X[:-1], X[1:], self._spacing(), jac=False)[0]

    # ----- estimation -----
    def build_factors(
        self, measurements: Sequence[Measurement] | Measurement, *, chunk_size: int | None = 16384
    ) -> tuple[list[Factor], Tensor, dict[str, slice]]:
        r"""The engine factors of the motion prior and of the measurements (a measurement with more than
        ``chunk_size`` blocks is split into several factors, which bounds the engine's memory).

        Returns:
            ``(factors, g0, layout)``: a list of :class:`~gpgeom.engine.factors.Factor` (the prior first),
            the initial global parameters ``g`` and their layout (name -> slice of ``g``). Feed them to
            :func:`~gpgeom.engine.least_squares.gauss_newton` with ``retract=self.retract``,
            ``tangent_dim=self.tangent_dim`` and ``bandwidth=1``.
        """
        return build_factors(self, measurements, chunk_size=chunk_size)

    def fit(
        self,
        measurements: Sequence[Measurement] | Measurement,
        *,
        init: str = "auto",
        max_iter: int = 50,
        method: str = "lm",
        compute_covariances: bool = False,
        ftol: float | None = None,
        xtol: float | None = None,
        gtol: float | None = None,
        stol: float | None = None,
        warn: bool = True,
        chunk_size: int | None = 16384,
        progress: bool | None = None,
    ) -> Trajectory:
        r"""MAP estimate of the knots (and global parameters) from measurements.

        Minimises :math:`\sum_k \lVert e^{\text{prior}}_k\rVert^2/2 + \sum_m \rho(\lVert e_m\rVert)` with the
        engine's Gauss-Newton (``method="gn"``) or Levenberg-Marquardt (``"lm"``, default) on the block-tridiagonal
        normal matrix, :math:`O(K)` per iteration (:func:`gpgeom.engine.least_squares.gauss_newton`).

        Args:
            measurements: A measurement or a sequence of them (:mod:`gpgeom.models.trajectory.factors`).
            init: Where the iteration starts. ``"auto"`` (default): from knots built from the measurements
                (:meth:`initialise`) when the knots are still at the constructor's default state (identity
                rotations, zero positions and rates), else from the current knots (set by :meth:`set_knots` or an
                earlier fit: a warm start). ``"measurements"``: always from the measurements (an error when none of
                them is a pose, position or range). ``"none"``: from the current knots, whatever they are.
                ``fit_result_.init`` says which start was used.
            max_iter: Maximum number of linear solves.
            method: ``"lm"`` or ``"gn"``.
            compute_covariances: Also compute the knots' marginal covariances (:attr:`covariances_`,
                ``K x s x s``; :attr:`cross_covariances_`, ``K x 1 x s x s`` between knots ``k`` and ``k + 1``),
                needed by ``predict(..., return_std=True)``; the problem must be anchored (e.g. absolute
                measurements or a :class:`~gpgeom.models.trajectory.KnotPrior`). A float32 trajectory computes them
                in float64 (on devices with it) and stores them in float32.
            ftol, xtol, gtol: Convergence tolerances of the engine (defaults ``1e-10``, ``1e-9``, engine default
                in float64; ``1e-5``, ``1e-5``, engine default in float32, where the banded normal equations of a
                fine knot grid are too ill-conditioned for a tighter test).
            stol: Stop once a (nearly undamped) step moves the estimate by less than ``stol`` posterior standard
                deviations in every direction the measurements and the prior determine (default
                ``0.2``; ``0`` disables the test; see :func:`~gpgeom.engine.least_squares.gauss_newton`). It ends
                the slow drift of a fit along directions the data do not determine (e.g. the roll about the axis
                of two UWB tags), where the cost is flat and the other tests only fire after hundreds of steps.
            warn: Issue a :class:`~gpgeom.errors.ConvergenceWarning` when ``max_iter`` is reached.
            chunk_size: Measurements with more blocks are split into several engine factors (memory bound);
                ``None`` never splits. The result does not depend on it (up to rounding).
            progress: A bar over the linear solves: ``True``, ``False`` or ``None`` (shown when a person is
                watching; :mod:`gpgeom._progress`).

        Returns:
            ``self``, with :attr:`fit_result_` (:class:`~gpgeom.models.trajectory.TrajectoryFitResult`).
        """
        check_positive("max_iter", max_iter, integer=True)
        check_option("method", method, ("lm", "gn"))
        check_option("init", init, INIT_OPTIONS)
        if isinstance(measurements, Measurement):
            measurements = [measurements]
        if not isinstance(measurements, Sequence) or len(measurements) == 0:
            raise ValueError("`measurements` must be a non-empty sequence of trajectory measurements.")
        if chunk_size is not None:
            check_positive("chunk_size", chunk_size, integer=True)
        factors, g0, layout = self.build_factors(measurements, chunk_size=chunk_size)
        before = (self._knots, self.covariances_, self.cross_covariances_, self._fitted)
        start = self._initialise(measurements, init)
        if ftol is None:
            ftol = 1e-10 if self.dtype == torch.float64 else 1e-5
        if xtol is None:
            xtol = 1e-9 if self.dtype == torch.float64 else 1e-5
        bar = progress_bar(total=max_iter, desc=f"{type(self).__name__} ({method.upper()})", progress=progress)
        factors[0] = _counting(factors[0], bar)
        t0 = time.perf_counter()
        try:
            res = gauss_newton(
                self._knots,
                factors,
                global_params=g0 if g0.numel() else None,
                retract=self.retract,
                tangent_dim=self.tangent_dim,
                bandwidth=1,
                method=method,
                max_iter=max_iter,
                ftol=ftol,
                xtol=xtol,
                gtol=gtol,
                stol=STOL if stol is None else stol,
                compute_covariances=compute_covariances,
                warn=warn,
            )
            bar.update(res.iterations - bar.n)
            bar.set_postfix_str(f"cost {res.cost:.4g}, {'converged' if res.converged else 'not converged'}")
        except BaseException:  # a failed fit (singular problem, interrupt) leaves the trajectory as it was
            self._knots, self.covariances_, self.cross_covariances_, self._fitted = before
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        X = res.states
        R = X[:, :9].reshape(-1, 3, 3)
        q = rotmat_to_quat(R, validate=False)
        R = quat_to_rotmat(q / q.norm(dim=-1, keepdim=True), validate=False)  # remove round-off drift
        self._knots = torch.cat([R.reshape(-1, 9), X[:, 9:]], dim=1)
        self.covariances_ = res.covariances
        self.cross_covariances_ = res.cross_covariances
        gl = {name: res.globals[sl].clone() for name, sl in layout.items()}
        self.fit_result_ = TrajectoryFitResult(
            iterations=res.iterations,
            converged=res.converged,
            message=res.message,
            cost=res.cost,
            cost_history=list(res.cost_history),
            globals=gl,
            global_covariance=res.global_covariance,
            seconds=seconds,
            init=start,
        )
        self._fitted = True
        wrap = knot_wraps(self)
        if wrap:
            warnings.warn(f"fit: in the estimated knots, {wrap}.", UserWarning, stacklevel=user_stacklevel())
        return self

    def initialise(self, measurements: Sequence[Measurement] | Measurement) -> Trajectory:
        r"""Set the knots to a start built from the measurements (:mod:`gpgeom.models.trajectory.initialisation`):
        rotations from pose measurements (geodesic interpolation, the angle unwrapped), positions from pose and
        position measurements or, failing those, from UWB ranges (multilateration and a position-only solve, then
        the rotations from the tags' lever arms), rates by finite differences across the knots. Components no
        measurement informs keep their values.

        ``fit(..., init="auto")`` calls it when the knots are still at the constructor's default state.

        Returns:
            ``self``.

        Raises:
            ValueError: When no pose, position or range measurement is given.
        """
        if isinstance(measurements, Measurement):
            measurements = [measurements]
        for m in measurements:
            check_measurement(self, m)
        self._initialise(list(measurements), "measurements")
        return self

    def _initialise(self, measurements: Sequence[Measurement], init: str) -> str:
        r"""Apply ``init`` and say where the starting knots come from (``fit_result_.init``)."""
        if init == "none" or (init == "auto" and not at_default_state(self)):
            check_measured_turns(self, measurements)  # what the start from the measurements would refuse
            return "current knots"
        knots, text = initial_knots(self, measurements)
        if not knots:
            why = text or "no pose, position or range measurement to initialise from"
            if init == "measurements":
                raise ValueError(
                    "init='measurements' needs a PoseMeasurement, PositionMeasurement or RangeMeasurement to build "
                    f"the knots from ({why}); got {sorted({type(m).__name__ for m in measurements})}. Set the knots "
                    "with set_knots() and use init='none'."
                )
            if text:  # there were ranges, but they could not place the body: say so rather than start blind
                warnings.warn(
                    f"init='auto': {text}; the fit starts from the default knots (identity rotations, zero positions), "
                    "which can end in a wrong local minimum. Give a start with set_knots() (fit then keeps it).",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
            return f"current knots (the default state: {why})"
        self.set_knots(**knots)  # drops the covariances of an earlier fit
        return text

    # ----- the model contract: files and repr -----
    def _get_state(self) -> dict[str, Any]:
        res = self.fit_result_
        fit = None
        if res is not None:
            fit = {
                "iterations": int(res.iterations),
                "converged": bool(res.converged),
                "message": str(res.message),
                "cost": float(res.cost),
                "cost_history": [float(c) for c in res.cost_history],
                "globals": dict(res.globals),
                "global_covariance": res.global_covariance,
                "seconds": float(res.seconds),
                "init": str(res.init),
            }
        return {
            "prior": self.prior,
            "kinematics": self.kinematics,
            "dtype": str(self.dtype).replace("torch.", ""),
            "knot_times": self._times64,  # as given (float64): a float32 trajectory keeps its exact spacings
            "knots": self._knots,
            "qc_rot": self.qc_rot,
            "qc_pos": self.qc_pos,
            "covariances": self.covariances_,
            "cross_covariances": self.cross_covariances_,
            "fit_result": fit,
        }

    @classmethod
    def _from_state(cls, state: dict[str, Any], **kwargs: Any) -> Trajectory:
        if kwargs:
            raise TypeError(f"{cls.__name__}.load takes no extra keyword arguments, got {sorted(kwargs)}.")
        dtype = {"float32": torch.float32, "float64": torch.float64}[state["dtype"]]
        traj = cls(
            state["knot_times"],
            prior=state["prior"],
            kinematics=state["kinematics"],
            qc_rot=state["qc_rot"],
            qc_pos=state["qc_pos"],
            dtype=dtype,
        )
        # the stored tensors exactly (the constructor's copies pass through float64 checks)
        traj._times = state["knot_times"].to(dtype)
        traj.qc_rot, traj.qc_pos = state["qc_rot"].to(dtype), state["qc_pos"].to(dtype)
        traj._knots = state["knots"].to(dtype)
        if state.get("covariances") is not None:
            traj.covariances_ = state["covariances"].to(dtype)
            traj.cross_covariances_ = state["cross_covariances"].to(dtype)
        fit = state.get("fit_result")
        if fit is not None:
            traj.fit_result_ = TrajectoryFitResult(**fit)
        traj._fitted = True
        return traj

    def _repr_fields(self) -> dict[str, Any]:
        tk = self._times64  # as given: a float32 trajectory at 3e4 s would show 0.2 s spacings as 0.1992-0.2012
        gaps = tk.diff()
        uniform = bool(gaps.max() - gaps.min() <= 1e-6 * gaps.mean())  # to the digits that repr shows
        fields: dict[str, Any] = {
            "knots": self.num_knots,
            "span": [float(tk[0]), float(tk[-1])],
            "dt": float(gaps.mean()) if uniform else [float(gaps.min()), float(gaps.max())],
            "prior": self.prior,
            "kinematics": self.kinematics,
            "qc_rot": self.qc_rot,
            "qc_pos": self.qc_pos,
            "dtype": self.dtype,
        }
        if self.device.type != "cpu":
            fields["device"] = str(self.device)
        res = self.fit_result_
        if res is not None:
            fields["iterations"] = res.iterations
            fields["converged"] = res.converged
            fields["cost"] = float(res.cost)
            if res.globals:
                fields["globals"] = list(res.globals)
        fields["covariances"] = self.covariances_ is not None
        return fields


def _cast_knot_times(times: Tensor, dtype: torch.dtype, device: torch.device | str) -> Tensor:
    r"""``K`` knot times in ``dtype`` on ``device`` (a copy), refusing times that stop increasing once rounded.

    Knot times increasing in float64 can round to equal float32 numbers (``1e6``, ``1e6 + 0.01``, ``1e6 + 0.02``
    all round to ``1e6``): an interval of length 0 makes the motion prior's whitening :math:`Q(0)^{-1}` infinite,
    and every residual on it non-finite."""
    out = times.detach().to(dtype=dtype, device=device).clone()
    bad = out.diff() <= 0
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"`knot_times` are not strictly increasing in {str(dtype).replace('torch.', '')}: knots {k} and {k + 1} "
            f"(t = {float(times[k]):.17g} and {float(times[k + 1]):.17g}) both round to {float(out[k]):.9g} "
            f"({int(bad.sum())} interval(s) of length 0). Shift all times (knots and measurements) so that they start "
            "near 0, or keep dtype=torch.float64."
        )
    return out


def _counting(factor: Factor, bar: Any) -> Factor:
    r"""``factor`` (the motion prior, linearised once per engine assembly and evaluated once per trial step) with
    calls that move ``bar`` to the number of linear solves so far: the evaluations of trial steps."""
    if bar.disable:
        return factor
    calls = {"residual": 0}
    residual, linearize = factor.residual, factor.linearize

    def counted_residual(X: Tensor, G: Tensor) -> Tensor:
        calls["residual"] += 1
        return residual(X, G)

    def counted_linearize(X: Tensor, G: Tensor):
        bar.update(calls["residual"] - bar.n)
        return linearize(X, G)

    return dataclasses.replace(factor, residual=counted_residual, linearize=counted_linearize)
