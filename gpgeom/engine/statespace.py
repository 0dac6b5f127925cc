#!/usr/bin/env python3
r"""Linear-Gaussian state-space engine: exact discretisation, Kalman filter, RTS smoother, temporal GP regression.

A Markov GP prior (:mod:`gpgeom.kernels.markov`) observed at sorted times :math:`t_1 < \dots < t_n` is the
linear-Gaussian state-space model (Särkkä & Solin, *Applied SDEs*, 2019, sec. 12.4; Hartikainen & Särkkä 2010)

.. math::
    x_1 \sim N(m_0, P_0), \qquad x_k = \Phi_k x_{k-1} + q_k,\ q_k \sim N(0, Q_k), \qquad
    y_k = H x_k + \varepsilon_k,\ \varepsilon_k \sim N(0, r_k),

with :math:`\Phi_k = \Phi(t_k - t_{k-1})`, :math:`Q_k = Q(t_k - t_{k-1})`. The Kalman filter computes
:math:`p(x_k \mid y_{1:k})` and the log marginal likelihood :math:`\log p(y_{1:n})` by the prediction-error
decomposition, the Rauch-Tung-Striebel smoother :math:`p(x_k \mid y_{1:n})`; both cost :math:`O(n s^3)` and are
exactly the dense GP quantities. Everything is batched over leading dimensions and differentiable by autograd.

Observations are scalar; an infinite noise variance :math:`r_k`, or ``mask[k] = False``, marks :math:`y_k` missing.
The front functions :func:`log_marginal_likelihood` and :func:`posterior` take a
:class:`~gpgeom.kernels.markov.MarkovKernel`, check the inputs, and (for :func:`posterior`) merge the test times
into the grid as missing observations, so that predictions anywhere are the exact GP conditional.

**Scaling of the state.** The state of a Markov kernel is badly scaled when its time unit is far from its
lengthscale: Matérn-5/2's :math:`x = (f, f', f'')` has stationary variances :math:`\sigma^2 (1, \lambda^2/3,
\lambda^4)`, :math:`\lambda = \sqrt5/\ell`, i.e. :math:`(1, 3 \cdot 10^{-11}, 7 \cdot 10^{-21})` for times in
seconds and a lengthscale of 3 days. The sequential filter survives that; the associative scan, whose elements
combine through solves with :math:`I + C_i J_j` (:math:`C` of order :math:`\lambda^{2k}` next to :math:`J` of order
:math:`\lambda^{-2k}`), did not: in float32 its log likelihood was -89.8 instead of 70.8 (200 points over 100
days), and even in float64 it lost digits (1e-9 relative; 4e-7 at a lengthscale of a year). So
:func:`kalman_filter` and :func:`rts_smoother` run on the balanced state :math:`x' = D^{-1} x`, with the diagonal
:math:`D = \operatorname{diag}(d)`, :math:`d_i \approx \sqrt{\max_k (P_k)_{ii}}` over the prior and process-noise
covariances (the filter) or the predicted covariances (the smoother), rounded to a power of two:
:math:`\Phi \to D^{-1} \Phi D`, :math:`Q \to D^{-1} Q D^{-1}`, :math:`H \to H D`, :math:`(m_0, P_0) \to
(D^{-1} m_0, D^{-1} P_0 D^{-1})`, and the results back by :math:`m = D m'`, :math:`P = D P' D`, :math:`G = D G' D^{-1}`.
A similarity transform of the state leaves the model, hence the likelihood and the moments of :math:`f`, exactly
invariant; with powers of two the transform itself is exact in floating point. :math:`D` is a constant (detached),
which is right for the gradients since nothing depends on it; it is computed per batch member, on the inputs'
device and in their dtype.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch
from torch import Tensor

from gpgeom._validation import check_increasing, check_tensor
from gpgeom.kernels.sde import MarkovKernel, discretize

__all__ = [
    "discretize",
    "KalmanFilterResult",
    "RTSSmootherResult",
    "StateSpacePosterior",
    "kalman_filter",
    "rts_smoother",
    "log_marginal_likelihood",
    "posterior",
    "PARALLEL_THRESHOLD",
]

_LOG_2PI = math.log(2.0 * math.pi)

#: Series at least this long use the associative-scan filter/smoother when ``parallel=None``.
PARALLEL_THRESHOLD = 64


# --------------------------------------------------------------------------------------------------------------
# Kalman filter and RTS smoother
# --------------------------------------------------------------------------------------------------------------
class KalmanFilterResult(NamedTuple):
    r"""Output of :func:`kalman_filter`.

    Attributes:
        mean: ``batch x n x s`` filtered means :math:`E[x_k \mid y_{1:k}]`.
        cov: ``batch x n x s x s`` filtered covariances.
        pred_mean: ``batch x n x s`` predicted means :math:`E[x_k \mid y_{1:k-1}]` (entry 0 is ``m0``).
        pred_cov: ``batch x n x s x s`` predicted covariances (entry 0 is ``P0``).
        log_likelihood: ``batch`` log marginal likelihood :math:`\log p(y_{\text{observed}})`.
    """

    mean: Tensor
    cov: Tensor
    pred_mean: Tensor
    pred_cov: Tensor
    log_likelihood: Tensor


class RTSSmootherResult(NamedTuple):
    r"""Output of :func:`rts_smoother`.

    Attributes:
        mean: ``batch x n x s`` smoothed means :math:`E[x_k \mid y_{1:n}]`.
        cov: ``batch x n x s x s`` smoothed covariances.
        gain: ``batch x (n-1) x s x s`` smoother gains :math:`G_k = P_{k|k} \Phi_{k+1}^\top P_{k+1|k}^{-1}`;
            the smoothed lag-one cross-covariance is :math:`\operatorname{Cov}(x_k, x_{k+1} \mid y) = G_k
            P_{k+1|n}`.
    """

    mean: Tensor
    cov: Tensor
    gain: Tensor


def _batch_shape(*parts: tuple[str, torch.Size]) -> torch.Size:
    try:
        return torch.broadcast_shapes(*(shape for _, shape in parts))
    except RuntimeError:
        desc = ", ".join(f"{name}: {tuple(shape)}" for name, shape in parts)
        raise ValueError(f"Batch shapes do not broadcast ({desc}).") from None


def _check_filter_inputs(**tensors: Tensor) -> None:
    r"""Every input of :func:`kalman_filter` is a floating tensor, and the model's (all but ``y``, which is converted
    to their dtype) share one dtype: integer observations cast the noise variances to integers (0.1 -> 0) and gave a
    wrong filter and likelihood, mixed dtypes failed inside a matrix product ("expected scalar type Double but found
    Float")."""
    for name, t in tensors.items():
        check_tensor(name, t, floating=True, finite=False)
    model = {name: t.dtype for name, t in tensors.items() if name != "y"}
    if len(set(model.values())) > 1:
        got = ", ".join(f"{name} {str(dt).replace('torch.', '')}" for name, dt in model.items())
        raise TypeError(f"`Phi`, `Q`, `H`, `m0` and `P0` must share one floating dtype, got {got}.")


def _check_filter_shapes(
    Phi: Tensor, Q: Tensor, H: Tensor, m0: Tensor, P0: Tensor, noise: object, mask: object, n: int, s: int
) -> None:
    r"""The model's shapes agree with ``y`` (``n`` steps) and ``H`` (``s`` states): a mismatch failed inside an
    ``expand`` or a product ("The expanded size of the tensor (11) must match the existing size (9)"), a float or
    integer ``mask`` with "bitwise_and_cpu not implemented for 'Double'"."""
    if H.dim() < 2 or H.shape[-2] != 1:
        raise ValueError(f"`H` must be `batch x 1 x s` (one measurement row), got shape {tuple(H.shape)}.")
    want = f"(batch..., {n - 1}, {s}, {s}): n - 1 = {n - 1} transitions for the {n} steps of `y`, s = {s} from `H`"
    for name, t in (("Phi", Phi), ("Q", Q)):
        if t.dim() < 3 or tuple(t.shape[-3:]) != (n - 1, s, s):
            raise ValueError(f"`{name}` must have shape {want}; got {tuple(t.shape)}.")
    if m0.dim() < 1 or m0.shape[-1] != s:
        raise ValueError(f"`m0` must have shape (batch..., {s}) (s from `H`), got {tuple(m0.shape)}.")
    if P0.dim() < 2 or tuple(P0.shape[-2:]) != (s, s):
        raise ValueError(f"`P0` must have shape (batch..., {s}, {s}) (s from `H`), got {tuple(P0.shape)}.")
    if isinstance(noise, Tensor) and noise.dim() and noise.shape[-1] not in (1, n):
        raise ValueError(f"`noise` must be a scalar or have shape (batch..., {n}) like `y`, got {tuple(noise.shape)}.")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"`mask` must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}.")
        if mask.dim() < 1 or mask.shape[-1] != n:
            raise ValueError(f"`mask` must have shape (batch..., {n}) like `y`, got {tuple(mask.shape)}.")


def kalman_filter(
    Phi: Tensor,
    Q: Tensor,
    H: Tensor,
    y: Tensor,
    noise: Tensor | float,
    m0: Tensor,
    P0: Tensor,
    mask: Tensor | None = None,
    joseph: bool = False,
    parallel: bool = False,
    H_per_step: bool = False,
) -> KalmanFilterResult:
    r"""Batched Kalman filter for scalar observations :math:`y_k = H x_k + \varepsilon_k` (or :math:`H_k x_k`).

    Prediction :math:`m^-_k = \Phi_k m_{k-1}`, :math:`P^-_k = \Phi_k P_{k-1} \Phi_k^\top + Q_k`; update with
    :math:`S_k = H P^-_k H^\top + r_k`, :math:`K_k = P^-_k H^\top / S_k`, :math:`m_k = m^-_k + K_k (y_k - H m^-_k)`,
    :math:`P_k = P^-_k - S_k K_k K_k^\top` (an exactly symmetric rank-one downdate; with ``joseph=True`` the Joseph
    form :math:`(I - K_k H) P^-_k (I - K_k H)^\top + r_k K_k K_k^\top`). The log likelihood is
    :math:`-\tfrac12 \sum_{k \text{ observed}} [\log(2\pi S_k) + (y_k - H m^-_k)^2 / S_k]`.
    No matrix is inverted; missing steps only predict.

    With ``parallel=True`` the same filter is computed by an associative (prefix) scan in :math:`O(\log n)`
    sequential steps of batched :math:`s \times s` algebra (Särkkä & García-Fernández, "Temporal parallelization
    of Bayesian smoothers", IEEE TAC 2021, sec. IV): element :math:`k` is the conditional
    :math:`p(x_k \mid x_{k-1}, y_k) = N(A_k x_{k-1} + b_k, C_k)` with the information pair :math:`(\eta_k, J_k)` of
    :math:`p(y_k \mid x_{k-1})`. It does more arithmetic (about 2x) and small solves of :math:`I + C_i J_j`, but
    far fewer Python steps: it wins for long series on GPUs and on CPUs alike.

    Args:
        Phi: ``batch x (n-1) x s x s`` transitions, ``Phi[..., k-1, :, :]`` maps :math:`x_{k-1}` to :math:`x_k`.
        Q: ``batch x (n-1) x s x s`` process noise covariances.
        H: ``batch x 1 x s`` measurement matrix, or with ``H_per_step`` a ``batch x n x 1 x s`` stack of one row
            :math:`H_k` per step (e.g. observing :math:`f` at some steps and :math:`f'` at others).
        y: ``batch x n`` observations, a floating tensor, converted to the dtype of ``Phi`` (values at missing steps
            are ignored, NaN allowed there).
        noise: ``batch x n`` (or scalar) noise variances :math:`r_k \ge 0`; ``inf`` marks a missing observation.
        m0: ``batch x s`` prior mean of :math:`x_1`.
        P0: ``batch x s x s`` prior covariance of :math:`x_1`.
        mask: Optional ``batch x n`` boolean, ``True`` where :math:`y_k` is observed.
        joseph: Use the Joseph-form covariance update (sequential filter only; more robust in float32).
        parallel: Use the associative-scan filter.
        H_per_step: ``H`` holds one measurement row per step.

    Returns:
        A :class:`KalmanFilterResult` (batch shape = broadcast of all inputs' batch shapes).

    Raises:
        TypeError: For an input that is not a floating tensor (integer ``y``: convert it, e.g. ``y.double()``),
            ``Phi``, ``Q``, ``H``, ``m0``, ``P0`` of different dtypes, or a ``mask`` that is not boolean.
        ValueError: For shapes that disagree with ``y``'s ``n`` and ``H``'s ``s``, negative or NaN ``noise``, or
            non-finite ``y`` at observed steps.
    """
    _check_filter_inputs(Phi=Phi, Q=Q, H=H, m0=m0, P0=P0, y=y)
    y = y.to(Phi.dtype)  # the model's dtype: the noise variances follow it (a float32 y rounded them to float32)
    if y.dim() < 1:
        raise ValueError("`y` must have shape (batch..., n), got a 0-dim tensor.")
    n = y.shape[-1]
    s = H.shape[-1]
    if H_per_step and (H.dim() < 3 or H.shape[-3:-1] != (n, 1)):
        raise ValueError(
            f"With `H_per_step=True`, `H` must be `batch x n x 1 x s` with n = {n} (the length of `y`), got shape "
            f"{tuple(H.shape)}."
        )
    _check_filter_shapes(Phi, Q, H, m0, P0, noise, mask, n, s)
    if not H_per_step:
        H = H.unsqueeze(-3)  # the same row at every step: batch x 1 x 1 x s
    noise = torch.as_tensor(noise, dtype=y.dtype, device=y.device)
    if noise.dim() == 0:
        noise = noise.expand(y.shape)
    if bool(torch.isnan(noise).any()):  # NaN fails isfinite: it would silently mark a step missing
        raise ValueError("`noise` contains NaN; use inf (or `mask`) to mark a missing observation.")
    if bool((noise < 0).any()):
        raise ValueError(f"`noise` must be >= 0 (variances), got minimum {float(noise.min()):.6g}.")
    obs = torch.isfinite(noise)
    if mask is not None:
        obs = obs & mask
    bad = obs & ~torch.isfinite(y)
    if bool(bad.any()):
        raise ValueError(
            f"`y` contains {int(bad.sum())} NaN or infinite value(s) at observed times; pass `mask` (False there) "
            "or an infinite `noise` to mark them missing."
        )
    batch = _batch_shape(
        ("Phi", Phi.shape[:-3]),
        ("Q", Q.shape[:-3]),
        ("H", H.shape[:-3]),
        ("y", y.shape[:-1]),
        ("noise", noise.shape[:-1]),
        ("m0", m0.shape[:-1]),
        ("P0", P0.shape[:-2]),
        ("mask", obs.shape[:-1]),
    )
    B = batch.numel()
    dtype = y.dtype
    # Flatten the batch: every tensor below is B x ...
    Phi = Phi.expand(*batch, n - 1, s, s).reshape(B, n - 1, s, s)
    Q = Q.expand(*batch, n - 1, s, s).reshape(B, n - 1, s, s)
    H = H.expand(*batch, n, 1, s).reshape(B, n, 1, s)
    obs = obs.expand(*batch, n).reshape(B, n)
    y = torch.where(obs, y.expand(*batch, n).reshape(B, n), torch.zeros((), dtype=dtype, device=y.device))
    r = torch.where(obs, noise.expand(*batch, n).reshape(B, n), torch.ones((), dtype=dtype, device=y.device))
    w = obs.to(dtype)
    m0 = m0.expand(*batch, s).reshape(B, s, 1)
    P0 = P0.expand(*batch, s, s).reshape(B, s, s)
    # The filter runs on the balanced state D^{-1} x (module docstring, "Scaling of the state")
    d = _state_scale(torch.cat([P0.unsqueeze(1), Q], dim=1))  # B x s
    Phi, Q, H = _similar(Phi, d), _congruent(Q, d[:, None, :]), H * d[:, None, None, :]
    m0, P0 = m0 / d[..., None], _congruent(P0, d)
    if parallel:
        fm, fP, pm, pP = _parallel_filter(Phi, Q, H, y, r, w, m0, P0)
    else:
        fm, fP, pm, pP = _sequential_filter(Phi, Q, H, y, r, w, m0, P0, joseph)
    # Innovations from the predictions (batched, identical for both filters; H P H^T is invariant under D).
    S = (H @ pP @ H.transpose(-1, -2))[..., 0, 0] + r  # B x n
    v = y - (H @ pm)[..., 0, 0]
    ll = -0.5 * (w * (torch.log(S) + _LOG_2PI + v.square() / S)).sum(-1)
    dn = d[:, None, :]  # back to the caller's state x = D x'
    fm, pm = fm[..., 0] * dn, pm[..., 0] * dn
    fP, pP = _congruent(fP, 1.0 / dn), _congruent(pP, 1.0 / dn)
    return KalmanFilterResult(
        mean=fm.reshape(*batch, n, s),
        cov=fP.reshape(*batch, n, s, s),
        pred_mean=pm.reshape(*batch, n, s),
        pred_cov=pP.reshape(*batch, n, s, s),
        log_likelihood=ll.reshape(batch),
    )


def _sequential_filter(
    Phi: Tensor, Q: Tensor, H: Tensor, y: Tensor, r: Tensor, w: Tensor, m: Tensor, P: Tensor, joseph: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The recursion on flattened inputs (``B x ...``, ``m`` as ``B x s x 1``); returns ``B x n x ...`` stacks
    of filtered and predicted means (``B x n x s x 1``) and covariances."""
    n, s = y.shape[1], H.shape[-1]
    Hs = H.unbind(1)  # one B x 1 x s row per step
    Phis, Qs = Phi.unbind(1), Q.unbind(1)
    ys, rs, ws = y[:, :, None, None].unbind(1), r[:, :, None, None].unbind(1), w[:, :, None, None].unbind(1)
    eye = torch.eye(s, dtype=y.dtype, device=y.device).expand(y.shape[0], s, s)
    pm, pP, fm, fP = [], [], [], []
    for k in range(n):
        if k:
            A = Phis[k - 1]
            m = torch.bmm(A, m)
            P = torch.baddbmm(Qs[k - 1], torch.bmm(A, P), A.transpose(1, 2))
            P = 0.5 * (P + P.transpose(1, 2))
        pm.append(m)
        pP.append(P)
        Hk = Hs[k]
        Ph = torch.bmm(P, Hk.transpose(1, 2))  # B x s x 1
        S = torch.bmm(Hk, Ph) + rs[k]  # B x 1 x 1
        c = ws[k] / S
        m = m + Ph * (c * (ys[k] - torch.bmm(Hk, m)))
        if joseph:
            K = Ph * c
            A = torch.baddbmm(eye, K, Hk, alpha=-1.0)
            P = torch.baddbmm(rs[k] * torch.bmm(K, K.transpose(1, 2)), torch.bmm(A, P), A.transpose(1, 2))
        else:
            P = torch.baddbmm(P, Ph * c, Ph.transpose(1, 2), alpha=-1.0)
        fm.append(m)
        fP.append(P)
    return torch.stack(fm, 1), torch.stack(fP, 1), torch.stack(pm, 1), torch.stack(pP, 1)


def _sym(X: Tensor) -> Tensor:
    return 0.5 * (X + X.transpose(-1, -2))


def _state_scale(P: Tensor) -> Tensor:
    r"""Balancing scale ``B x s`` of the state from a stack ``B x m x s x s`` of its covariances (the prior
    :math:`P_0` and the process noises :math:`Q_k`, or the predicted covariances): :math:`d_i = 2^{\operatorname
    {round}(\log_2 \sqrt{v_i})}`, :math:`v_i = \max_k (P_k)_{ii}` (1 where that is zero or not finite). A power of
    two, so that :math:`D^{-1} \Phi D`, :math:`D^{-1} Q D^{-1}` and :math:`H D` are exact in floating point; detached:
    every result is invariant under :math:`D` (module docstring, "Scaling of the state")."""
    v = P.detach().diagonal(dim1=-2, dim2=-1).amax(1)  # B x s
    ok = torch.isfinite(v) & (v > 0)
    e = torch.round(0.5 * torch.log2(torch.where(ok, v, torch.ones_like(v))))
    return torch.where(ok, torch.exp2(e), torch.ones_like(v))


def _similar(Phi: Tensor, d: Tensor) -> Tensor:
    r""":math:`D^{-1} \Phi D` for ``Phi`` ``B x m x s x s`` and the diagonal ``d`` ``B x s``."""
    return Phi * (d[:, None, None, :] / d[:, None, :, None])


def _congruent(P: Tensor, d: Tensor) -> Tensor:
    r""":math:`D^{-1} P D^{-1}` for ``P`` ``B x s x s`` and ``d`` ``B x s``, or ``P`` ``B x m x s x s`` and ``d``
    ``B x 1 x s``."""
    return P / (d[..., :, None] * d[..., None, :])


def _associative_scan(fn, elems: tuple[Tensor, ...], reverse: bool = False) -> tuple[Tensor, ...]:
    r"""Inclusive scan of ``fn`` along dimension 1 of every tensor in ``elems`` (``B x n x ...``).

    ``fn(earlier, later)`` combines two aligned stacks of elements; it must be associative. The odd-even
    recursion (Blelloch 1990; as in ``jax.lax.associative_scan``) takes :math:`O(\log n)` levels, each one batched
    call of ``fn``. With ``reverse=True`` the scan runs from the end (``fn`` still gets the earlier element first).
    """
    if reverse:
        out = _associative_scan(lambda a, b: fn(b, a), tuple(e.flip(1) for e in elems))
        return tuple(e.flip(1) for e in out)
    n = elems[0].shape[1]
    if n < 2:
        return elems
    reduced = fn(tuple(e[:, 0 : n - 1 : 2] for e in elems), tuple(e[:, 1::2] for e in elems))
    odd = _associative_scan(fn, reduced)  # prefixes ending at 1, 3, 5, ...
    if n % 2 == 0:
        even = fn(tuple(e[:, :-1] for e in odd), tuple(e[:, 2::2] for e in elems))
    else:
        even = fn(odd, tuple(e[:, 2::2] for e in elems))
    out = []
    for e0, ev, od in zip(elems, even, odd, strict=True):
        res = e0.new_empty(e0.shape)
        res[:, 0:1] = e0[:, 0:1]
        res[:, 2::2] = ev
        res[:, 1::2] = od
        out.append(res)
    return tuple(out)


def _filter_combine(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    r"""Associative operator of the parallel Kalman filter (Särkkä & García-Fernández 2021, Lemma 8)."""
    A1, b1, C1, e1, J1 = a
    A2, b2, C2, e2, J2 = b
    s = A1.shape[-1]
    eye = torch.eye(s, dtype=A1.dtype, device=A1.device)
    M = eye + C1 @ J2
    X = torch.linalg.solve(M, torch.cat([A1, b1 + C1 @ e2, C1], dim=-1))  # M^{-1} [A1, b1 + C1 e2, C1]
    XA, Xb, XC = X[..., :s], X[..., s : s + 1], X[..., s + 1 :]
    Y = torch.linalg.solve(M.transpose(-1, -2), torch.cat([e2 - J2 @ b1, J2 @ A1], dim=-1))  # M^{-T} [...]
    Ye, YJ = Y[..., :1], Y[..., 1:]
    A1T = A1.transpose(-1, -2)
    return (
        A2 @ XA,
        A2 @ Xb + b2,
        _sym(A2 @ XC @ A2.transpose(-1, -2) + C2),
        A1T @ Ye + e1,
        _sym(A1T @ YJ + J1),
    )


def _parallel_filter(
    Phi: Tensor, Q: Tensor, H: Tensor, y: Tensor, r: Tensor, w: Tensor, m0: Tensor, P0: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""Associative-scan Kalman filter on flattened inputs (see :func:`kalman_filter`)."""
    B, n = y.shape
    s = H.shape[-1]
    eye = torch.eye(s, dtype=y.dtype, device=y.device)
    # Prior covariance / mean of x_k before the update at step k: (P0, m0) for k = 1, (Q_k, 0) given x_{k-1}.
    Pprior = torch.cat([P0.unsqueeze(1), Q], dim=1)  # B x n x s x s
    mprior = torch.cat([m0.unsqueeze(1), m0.new_zeros(B, n - 1, s, 1)], dim=1)  # B x n x s x 1
    Hn = H  # B x n x 1 x s
    HT = Hn.transpose(-1, -2)
    yk, rk, wk = y[..., None, None], r[..., None, None], w[..., None, None]
    PH = Pprior @ HT  # B x n x s x 1
    S = Hn @ PH + rk  # B x n x 1 x 1
    K = PH * (wk / S)
    IKH = eye - K @ Hn
    Phi0 = torch.cat([torch.zeros_like(P0).unsqueeze(1), Phi], dim=1)  # A_1 = 0
    A = IKH @ Phi0
    b = mprior + K * (yk - Hn @ mprior)
    C = _sym(IKH @ Pprior)
    PhiTHT = Phi0.transpose(-1, -2) @ HT  # B x n x s x 1
    eta = PhiTHT * (wk * yk / S)
    J = _sym(PhiTHT @ PhiTHT.transpose(-1, -2) * (wk / S))
    _, fm, fP, _, _ = _associative_scan(_filter_combine, (A, b, C, eta, J))
    # Predictions from the filtered moments: m^-_k = Phi_k m_{k-1}, P^-_k = Phi_k P_{k-1} Phi_k^T + Q_k.
    pm = torch.cat([m0.unsqueeze(1), Phi @ fm[:, :-1]], dim=1)
    pP = torch.cat([P0.unsqueeze(1), _sym(Phi @ fP[:, :-1] @ Phi.transpose(-1, -2) + Q)], dim=1)
    return fm, fP, pm, pP


def _smoother_combine(a: tuple[Tensor, ...], b: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    r"""Compose :math:`p(x_k \mid x_{k+1}) = N(E_k x_{k+1} + g_k, L_k)` (earlier ``a``) with the later ``b``."""
    E1, g1, L1 = a
    E2, g2, L2 = b
    return E1 @ E2, E1 @ g2 + g1, _sym(E1 @ L2 @ E1.transpose(-1, -2) + L1)


def rts_smoother(
    Phi: Tensor, filtered: KalmanFilterResult, parallel: bool = False, zero_steps: Tensor | None = None
) -> RTSSmootherResult:
    r"""Rauch-Tung-Striebel smoother (Särkkä & Solin 2019, sec. 12.4; Särkkä, *Bayesian Filtering and
    Smoothing*, 2013, Theorem 8.2):

    .. math::
        G_k = P_k \Phi_{k+1}^\top (P^-_{k+1})^{-1}, \quad
        m^s_k = m_k + G_k (m^s_{k+1} - m^-_{k+1}), \quad
        P^s_k = P_k + G_k (P^s_{k+1} - P^-_{k+1}) G_k^\top.

    All gains are computed at once by one batched linear solve (no explicit inverse); the backward loop only
    multiplies small matrices. With ``parallel=True`` the backward recursion is a reverse associative scan of
    the affine conditionals :math:`p(x_k \mid x_{k+1}, y_{1:k}) = N(G_k x_{k+1} + m_k - G_k m^-_{k+1},
    P_k - G_k P^-_{k+1} G_k^\top)` (Särkkä & García-Fernández 2021, sec. V).

    Args:
        Phi: ``batch x (n-1) x s x s`` transitions, as given to :func:`kalman_filter`.
        filtered: The :func:`kalman_filter` output.
        parallel: Use the associative-scan smoother.
        zero_steps: Optional ``batch x (n-1)`` boolean, ``True`` where step ``k -> k+1`` does not move the state
            (a repeated time: :math:`\Phi = I`, :math:`Q = 0`, so :math:`P^-_{k+1} = P_k`). The gain there is
            :math:`G_k = I`, exactly, instead of a solve with :math:`P^-_{k+1}`, which is singular when
            :math:`P_k` is (an observation without noise at time ``k``).

    Returns:
        A :class:`RTSSmootherResult`.
    """
    mf, Pf, mp, Pp = filtered.mean, filtered.cov, filtered.pred_mean, filtered.pred_cov
    batch = mf.shape[:-2]
    n, s = mf.shape[-2:]
    if Phi.dim() < 3 or tuple(Phi.shape[-3:]) != (n - 1, s, s):
        raise ValueError(
            f"`Phi` must have shape (batch..., {n - 1}, {s}, {s}) (the transitions given to kalman_filter for its "
            f"{n} steps), got {tuple(Phi.shape)}."
        )
    B = batch.numel()
    mf, Pf = mf.reshape(B, n, s, 1), Pf.reshape(B, n, s, s)
    mp, Pp = mp.reshape(B, n, s, 1), Pp.reshape(B, n, s, s)
    Phi = Phi.expand(*batch, n - 1, s, s).reshape(B, n - 1, s, s)
    # on the balanced state D^{-1} x, as the filter (module docstring, "Scaling of the state")
    d = _state_scale(Pp)  # B x s
    dn = d[:, None, :]
    Phi, mf, mp = _similar(Phi, d), mf / dn[..., None], mp / dn[..., None]
    Pf, Pp = _congruent(Pf, dn), _congruent(Pp, dn)
    # G_k^T = (P^-_{k+1})^{-1} Phi_{k+1} P_k   (P^-, P symmetric)
    lhs, rhs = Pp[:, 1:], Phi @ Pf[:, :-1]  # B x (n-1) x s x s each
    if zero_steps is not None:
        # G_k = I where the state does not move: I^{-1} I, without a (possibly singular) solve
        zero = zero_steps.expand(*batch, n - 1).reshape(B, n - 1)[..., None, None]
        eye = torch.eye(s, dtype=lhs.dtype, device=lhs.device)
        lhs, rhs = torch.where(zero, eye, lhs), torch.where(zero, eye, rhs)
    G = torch.linalg.solve(lhs, rhs).transpose(-1, -2)  # B x (n-1) x s x s
    if parallel:
        E = torch.cat([G, torch.zeros_like(Pf[:, :1])], dim=1)
        g = torch.cat([mf[:, :-1] - G @ mp[:, 1:], mf[:, -1:]], dim=1)
        Lk = torch.cat([_sym(Pf[:, :-1] - G @ Pp[:, 1:] @ G.transpose(-1, -2)), Pf[:, -1:]], dim=1)
        _, ms, Ps = _associative_scan(_smoother_combine, (E, g, Lk), reverse=True)
    else:
        Gs = G.unbind(1)
        mfs, Pfs, mps, Pps = mf.unbind(1), Pf.unbind(1), mp.unbind(1), Pp.unbind(1)
        m, P = mfs[-1], Pfs[-1]
        msl, Psl = [m], [P]
        for k in range(n - 2, -1, -1):
            Gk = Gs[k]
            m = torch.baddbmm(mfs[k], Gk, m - mps[k + 1])
            P = torch.baddbmm(Pfs[k], torch.bmm(Gk, P - Pps[k + 1]), Gk.transpose(1, 2))
            P = 0.5 * (P + P.transpose(1, 2))
            msl.append(m)
            Psl.append(P)
        ms, Ps = torch.stack(msl[::-1], 1), torch.stack(Psl[::-1], 1)
    ms, Ps, G = ms * dn[..., None], _congruent(Ps, 1.0 / dn), _similar(G, 1.0 / d)  # back to x = D x'
    return RTSSmootherResult(
        mean=ms.reshape(*batch, n, s),
        cov=Ps.reshape(*batch, n, s, s),
        gain=G.reshape(*batch, n - 1, s, s),
    )


# --------------------------------------------------------------------------------------------------------------
# GP regression front
# --------------------------------------------------------------------------------------------------------------
class StateSpacePosterior(NamedTuple):
    r"""Output of :func:`posterior`: the exact GP posterior of :math:`f = H x` (latent, without noise).

    Attributes:
        mean: ``batch x n`` posterior mean of :math:`f` at the training times.
        variance: ``batch x n`` posterior variance of :math:`f` at the training times.
        test_mean: ``batch x n_test`` posterior mean at ``t_test`` (``None`` without ``t_test``).
        test_variance: ``batch x n_test`` posterior variance at ``t_test`` (``None`` without ``t_test``).
        state_mean: ``batch x n x s`` smoothed state means at the training times.
        state_cov: ``batch x n x s x s`` smoothed state covariances at the training times.
        test_state_mean: ``batch x n_test x s`` (``None`` without ``t_test``).
        test_state_cov: ``batch x n_test x s x s`` (``None`` without ``t_test``).
        log_likelihood: ``batch`` log marginal likelihood of the observed ``y``.
    """

    mean: Tensor
    variance: Tensor
    test_mean: Tensor | None
    test_variance: Tensor | None
    state_mean: Tensor
    state_cov: Tensor
    test_state_mean: Tensor | None
    test_state_cov: Tensor | None
    log_likelihood: Tensor


def _check_kernel(kernel: object, dtype: torch.dtype) -> None:
    if not isinstance(kernel, MarkovKernel):
        raise TypeError(
            f"`kernel` must be a gpgeom.kernels.MarkovKernel (it needs an SDE form), got {type(kernel).__name__}."
        )
    for name, p in kernel.named_parameters():
        if p.is_floating_point() and p.dtype != dtype:
            raise TypeError(
                f"`kernel` parameter {name} has dtype {p.dtype} but `t` has dtype {dtype}; "
                f"call kernel.to({dtype}) or convert the data."
            )


def _prepare(
    kernel: MarkovKernel, t: Tensor, y: Tensor, noise: Tensor | float, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, torch.Size]:
    r"""Validate the shapes and dtypes and broadcast the data (the values are checked by :func:`kalman_filter`).
    Returns ``(t, y, noise, observed, batch)``, all ``batch x n``."""
    check_tensor("t", t, floating=True)
    if t.dim() < 1:
        raise ValueError("`t` must have shape (..., n), got a 0-dim tensor.")
    if t.dim() >= 2 and t.shape[-1] == 1 and t.shape[-2] > 1:  # the kernels' (n, 1) input convention
        raise ValueError(
            f"`t` must have shape (..., n) (times along the last dimension), got {tuple(t.shape)}: a column of "
            f"{t.shape[-2]} times would be {t.shape[-2]} separate series of one time each; pass t[..., 0] (and y "
            "likewise)."
        )
    check_increasing("t", t)
    n = t.shape[-1]
    if n < 1:
        raise ValueError("`t` must contain at least one time.")
    _check_kernel(kernel, t.dtype)
    check_tensor("y", y, floating=True, finite=False)
    if y.dim() < 1 or y.shape[-1] != n:
        raise ValueError(
            f"`y` must have shape (..., n) with n={n} matching `t` {tuple(t.shape)}, got shape {tuple(y.shape)}."
        )
    if y.dtype != t.dtype:
        raise TypeError(f"`y` has dtype {y.dtype} but `t` has dtype {t.dtype}; use one dtype.")
    if isinstance(noise, Tensor):
        check_tensor("noise", noise, floating=True, finite=False)
        if noise.dim() > 0 and noise.shape[-1] != n:
            raise ValueError(
                f"`noise` must be a scalar or have shape (..., n) with n={n}, got shape {tuple(noise.shape)}."
            )
        noise = noise.to(t.dtype)
    elif isinstance(noise, numbers.Real) and not isinstance(noise, bool):  # NumPy scalars too (np.float32 was refused)
        noise = torch.tensor(float(noise), dtype=t.dtype, device=t.device)
    else:
        raise TypeError(f"`noise` must be a float or a tensor, got {type(noise).__name__}.")
    if noise.dim() == 0:
        noise = noise.expand(n)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(f"`mask` must be a boolean tensor, got {getattr(mask, 'dtype', type(mask).__name__)}.")
        if mask.dim() < 1 or mask.shape[-1] != n:
            raise ValueError(f"`mask` must have shape (..., n) with n={n}, got shape {tuple(mask.shape)}.")
    batch = _batch_shape(
        ("t", t.shape[:-1]),
        ("y", y.shape[:-1]),
        ("noise", noise.shape[:-1]),
        ("mask", mask.shape[:-1] if mask is not None else torch.Size()),
        ("kernel.batch_shape", kernel.batch_shape),
    )
    observed = torch.isfinite(noise)
    if mask is not None:
        observed = observed & mask
    observed = observed.expand(*batch, n)
    y = y.expand(*batch, n)
    # NaN or negative noise and NaN y at observed times are refused by kalman_filter, which every caller runs
    return t.expand(*batch, n), y, noise.expand(*batch, n), observed, batch


def _use_parallel(parallel: bool | None, n: int) -> bool:
    if parallel is None:
        return n >= PARALLEL_THRESHOLD
    if not isinstance(parallel, bool):
        raise TypeError(f"`parallel` must be None or a bool, got {parallel!r}.")
    return parallel


def _filter(
    kernel: MarkovKernel, t: Tensor, y: Tensor, noise: Tensor, observed: Tensor, parallel: bool
) -> tuple[Tensor, KalmanFilterResult, Tensor]:
    dt = t[..., 1:] - t[..., :-1]
    Phi, Q = kernel.transition(dt)
    m0, P0 = kernel.initial_state(t[..., 0])
    H = kernel.sde().H
    return Phi, kalman_filter(Phi, Q, H, y, noise, m0, P0, mask=observed, parallel=parallel), H


def log_marginal_likelihood(
    kernel: MarkovKernel,
    t: Tensor,
    y: Tensor,
    noise: Tensor | float,
    mask: Tensor | None = None,
    parallel: bool | None = None,
) -> Tensor:
    r"""Log marginal likelihood :math:`\log N(y \mid 0, K + \operatorname{diag}(r))` of a Markov GP, in
    :math:`O(n)` by the Kalman filter (not divided by ``n``, unlike ``ExactMarginalLogLikelihood``).

    Args:
        kernel: A :class:`~gpgeom.kernels.markov.MarkovKernel` (zero prior mean).
        t: ``batch x n`` (or ``n``) strictly increasing times.
        y: ``batch x n`` observations.
        noise: Scalar or ``batch x n`` noise variances (``inf`` = missing).
        mask: Optional ``batch x n`` boolean, ``True`` where ``y`` is observed (NaN allowed elsewhere).
        parallel: ``True`` for the associative-scan filter, ``False`` for the sequential one, ``None`` (default)
            for the scan when ``n >= PARALLEL_THRESHOLD``. Both give the same numbers (to rounding).

    Returns:
        ``broadcast(batch, kernel.batch_shape)`` log likelihood, differentiable wrt the kernel's parameters,
        ``y`` and ``noise``.
    """
    t, y, noise, observed, _ = _prepare(kernel, t, y, noise, mask)
    par = _use_parallel(parallel, t.shape[-1])
    return _filter(kernel, t, y, noise, observed, par)[1].log_likelihood


def posterior(
    kernel: MarkovKernel,
    t: Tensor,
    y: Tensor,
    noise: Tensor | float,
    t_test: Tensor | None = None,
    mask: Tensor | None = None,
    parallel: bool | None = None,
) -> StateSpacePosterior:
    r"""Exact GP posterior of a Markov GP by Kalman filtering and RTS smoothing.

    Test times are merged into the sorted training grid as missing observations (a stable sort puts a test time
    equal to a training time just after it), so the returned moments equal the dense GP conditional
    :math:`k_*^\top (K + R)^{-1} y` and :math:`k_{**} - k_*^\top (K + R)^{-1} k_*` anywhere: between, before and
    after the training times. Cost :math:`O((n + n_{\text{test}}) s^3)`.

    Args:
        kernel: A :class:`~gpgeom.kernels.markov.MarkovKernel` (zero prior mean).
        t: ``batch x n`` (or ``n``) strictly increasing training times.
        y: ``batch x n`` observations.
        noise: Scalar or ``batch x n`` noise variances (``inf`` = missing).
        t_test: Optional ``batch x n_test`` (or ``n_test``) test times, in any order.
        mask: Optional ``batch x n`` boolean, ``True`` where ``y`` is observed.
        parallel: Associative-scan filter and smoother (``True``), sequential (``False``), or by length (``None``,
            the scan when ``n + n_test >= PARALLEL_THRESHOLD``).

    Returns:
        A :class:`StateSpacePosterior` (latent :math:`f`; add the noise variance for :math:`y`).
    """
    t, y, noise, observed, batch = _prepare(kernel, t, y, noise, mask)
    n = t.shape[-1]
    if t_test is not None:
        check_tensor("t_test", t_test, floating=True)
        if t_test.dim() < 1:
            raise ValueError("`t_test` must have shape (..., n_test), got a 0-dim tensor.")
        if t_test.dtype != t.dtype:
            raise TypeError(f"`t_test` has dtype {t_test.dtype} but `t` has dtype {t.dtype}; use one dtype.")
        batch = _batch_shape(("training data", batch), ("t_test", t_test.shape[:-1]))
        nt = t_test.shape[-1]
        t_all = torch.cat([t.expand(*batch, n), t_test.expand(*batch, nt)], dim=-1)
        order = torch.argsort(t_all, dim=-1, stable=True)
        inv = torch.argsort(order, dim=-1)
        t_all = t_all.gather(-1, order)
        y_all = torch.cat([y.expand(*batch, n), y.new_zeros(*batch, nt)], -1).gather(-1, order)
        r_all = torch.cat([noise.expand(*batch, n), noise.new_ones(*batch, nt)], -1).gather(-1, order)
        o_all = torch.cat([observed.expand(*batch, n), observed.new_zeros(*batch, nt)], -1).gather(-1, order)
    else:
        t_all, y_all, r_all, o_all = t, y, noise, observed
    par = _use_parallel(parallel, t_all.shape[-1])
    Phi, kf, H = _filter(kernel, t_all, y_all, r_all, o_all, par)
    # a test time equal to a training time (or to another test time) is a step of zero length
    sm = rts_smoother(Phi, kf, parallel=par, zero_steps=t_all[..., 1:] == t_all[..., :-1])
    s = sm.mean.shape[-1]
    h = H[..., 0, :]
    batch = sm.mean.shape[:-2]
    f_mean = (sm.mean * h.unsqueeze(-2)).sum(-1)  # batch x N
    f_var = torch.einsum("...i,...nij,...j->...n", h, sm.cov, h)
    if t_test is None:
        return StateSpacePosterior(f_mean, f_var, None, None, sm.mean, sm.cov, None, None, kf.log_likelihood)
    inv = inv.expand(*batch, inv.shape[-1])
    f_mean, f_var = f_mean.gather(-1, inv), f_var.gather(-1, inv)
    N = inv.shape[-1]
    st_mean = sm.mean.gather(-2, inv[..., None].expand(*batch, N, s))
    st_cov = sm.cov.gather(-3, inv[..., None, None].expand(*batch, N, s, s))
    return StateSpacePosterior(
        mean=f_mean[..., :n],
        variance=f_var[..., :n],
        test_mean=f_mean[..., n:],
        test_variance=f_var[..., n:],
        state_mean=st_mean[..., :n, :],
        state_cov=st_cov[..., :n, :, :],
        test_state_mean=st_mean[..., n:, :],
        test_state_cov=st_cov[..., n:, :, :],
        log_likelihood=kf.log_likelihood,
    )
