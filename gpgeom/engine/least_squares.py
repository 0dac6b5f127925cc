#!/usr/bin/env python3
r"""Gauss-Newton and Levenberg-Marquardt MAP estimation over a chain of states.

The problem (Barfoot, *State Estimation for Robotics*, 2017, ch. 4.3) is a nonlinear least-squares problem over
``K`` states and an optional vector of ``g`` global parameters, given as a list of factors
(:class:`~gpgeom.engine.factors.Factor`): the cost :math:`J(x, \gamma) = \sum_f \sum_m \rho_f(\lVert e_{fm}
\rVert)` of whitened residuals :math:`e_{fm}` with robust losses :math:`\rho_f` (:mod:`gpgeom.engine.factors`),
whose minimiser is the MAP estimate.

Each iteration linearises the whitened residuals about the current estimate with the perturbation
:math:`x_k \leftarrow \operatorname{retract}(x_k, \delta_k)`, :math:`\gamma \leftarrow \gamma + \delta_\gamma`:
:math:`e(\delta) \approx e + \mathsf J \delta`, and solves the Gauss-Newton normal equations (Barfoot eq. 4.99)

.. math::
    (\mathsf J^\top \Omega \mathsf J + \lambda D)\, \delta^\star = -\mathsf J^\top \Omega e,

with the iteratively reweighted least-squares (IRLS) weights :math:`\Omega` of the robust loss (identity for least
squares), :math:`\lambda = 0` for Gauss-Newton and :math:`\lambda > 0`, :math:`D = \operatorname{diag}(H)` for
Levenberg-Marquardt. The normal matrix :math:`H = \mathsf J^\top \Omega \mathsf J` is block-banded with a dense
border for the global parameters; its assembly, factorisation, solves and the covariances (Laplace approximation)
are in :mod:`gpgeom.engine.normal_equations`.

Public API:

* :class:`~gpgeom.engine.factors.Factor` -- a batch of residual blocks of one kind (defined in
  :mod:`gpgeom.engine.factors`, importable from here too).
* :func:`gauss_newton` -- the optimiser, returning a :class:`GaussNewtonResult`.
* :func:`block_banded_cholesky`, :func:`block_banded_solve`, :func:`block_banded_selected_inverse` -- the
  linear algebra, usable on their own (e.g. by a state-space smoother).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gpgeom._validation import check_option, check_positive, check_tensor
from gpgeom._warnings import user_stacklevel
from gpgeom.engine.banded import (
    block_banded_cholesky,
    block_banded_selected_inverse,
    block_banded_solve,
)
from gpgeom.engine.factors import Factor, RetractFn, _additive_retract, _cost, _name_nonfinite_jacobian, _Problem
from gpgeom.engine.normal_equations import (
    _assemble,
    _covariances,
    _damping_diagonal,
    _factor_bordered,
    _Normal,
    _Singular,
    _solve_bordered,
)
from gpgeom.errors import ConvergenceWarning, NotPSDError

__all__ = [
    "Factor",
    "GaussNewtonResult",
    "gauss_newton",
    "block_banded_cholesky",
    "block_banded_solve",
    "block_banded_selected_inverse",
]

_METHODS = ("lm", "gn")
#: Damping (relative to diag(H)) below which a step counts as undamped in the observable directions (``stol``).
_OBSERVABLE_DAMPING = 1e-6
#: Relative pivot threshold of the iterations' factorisations in float32 and below, in units of the dtype's eps (in
#: float64 they keep the covariances' ``1e3 eps`` = 2.2e-13, below the pivots of any problem well posed enough to
#: solve, and far enough above rounding that an exactly singular matrix is refused). A step only needs pivots above
#: rounding (an inaccurate step is caught by the cost test), whereas ``1e3 eps`` = 1.2e-4 in float32 refused the
#: undamped normal matrix of a WNOJ trajectory with knots every 0.05 s (pivot ratios 2.5e-6): LM kept its damping
#: near 1e-4 and stalled.
_STEP_SINGULAR_EPS_LOW_PRECISION = 10.0


@dataclass
class GaussNewtonResult:
    r"""The outcome of :func:`gauss_newton`.

    Attributes:
        states: ``K x p`` MAP states.
        globals: ``g`` MAP global parameters (empty when there are none).
        cost: Final cost :math:`\sum \rho(\lVert e \rVert)` (half the sum of squared whitened residuals for least
            squares).
        cost_history: Cost at the initial point and after each accepted step.
        iterations: Number of linear solves (accepted or rejected steps).
        converged: Whether a convergence test (``ftol``, ``xtol``, ``gtol`` or ``stol``) was met.
        message: Which test stopped the iteration.
        damping: Final Levenberg-Marquardt damping :math:`\lambda` (``0.0`` for Gauss-Newton, unless it continued
            as Levenberg-Marquardt after a step that raised the cost).
        covariances: ``K x s x s`` marginal covariances of the states' tangent perturbations (the diagonal blocks
            of :math:`H^{-1}` at the final estimate, border included), or ``None`` unless requested.
        cross_covariances: ``K x w x s x s``: ``cross_covariances[k, d - 1]`` is :math:`\operatorname{Cov}(\delta_k,
            \delta_{k+d})`, ``d = 1..w`` (zero where ``k + d >= K``), or ``None``.
        global_covariance: ``g x g`` marginal covariance of the global parameters, or ``None``.
        state_global_covariance: ``K x s x g`` cross-covariance of each state and the globals, or ``None``.
    """

    states: Tensor
    globals: Tensor
    cost: float
    cost_history: list[float]
    iterations: int
    converged: bool
    message: str
    damping: float
    covariances: Tensor | None = None
    cross_covariances: Tensor | None = None
    global_covariance: Tensor | None = None
    state_global_covariance: Tensor | None = None


def _singular_error(where: str, method: str, covariance: bool = False, dtype: torch.dtype | None = None) -> NotPSDError:
    low_precision = dtype is not None and dtype != torch.float64
    anchor = (
        "Add a prior factor that anchors the states (e.g. on the first state) or on the global parameters, and "
        "check that every state and global parameter is reached by some factor"
    )
    if covariance:
        return NotPSDError(
            f"The marginal covariances (Laplace approximation H^-1 at the estimate) do not exist: the undamped "
            f"normal matrix is singular at {where} (a gauge freedom, an unobserved state, or a rank-deficient "
            f"Jacobian at the estimate). {anchor}."
            + (
                f" In {dtype} it may instead be too ill-conditioned for three correct digits in its smallest pivot "
                "(e.g. a WNOJ trajectory with knots 0.1 s apart or closer, on a device without float64, where the "
                "covariances are computed in the states' dtype): refit in float64, or on the CPU, for the covariances."
                if low_precision
                else ""
            )
        )
    remedy = (
        "or use method='lm', whose damping regularises singular directions."
        if method == "gn"
        else "(the Levenberg-Marquardt damping grew beyond 1e16 without making it positive definite)."
    )
    return NotPSDError(
        f"The Gauss-Newton normal matrix is not positive definite at {where}: the factors do not determine "
        f"the estimate there (a gauge freedom, an unobserved state, or a rank-deficient Jacobian). {anchor}, "
        f"{remedy}"
        + (
            f" In {dtype} it may instead be too ill-conditioned for a pivot above rounding (e.g. a WNOJ trajectory "
            "with knots 0.05 s apart): use method='lm' or float64."
            if low_precision and method == "gn"
            else ""
        )
    )


# ----------------------------------------------------------------------------------------------------------------
# The optimiser
# ----------------------------------------------------------------------------------------------------------------
def gauss_newton(
    states: Tensor,
    factors: Sequence[Factor] | Factor,
    *,
    global_params: Tensor | None = None,
    retract: RetractFn | None = None,
    tangent_dim: int | None = None,
    bandwidth: int = 1,
    method: str = "lm",
    max_iter: int = 100,
    ftol: float | None = None,
    xtol: float | None = None,
    gtol: float | None = None,
    stol: float | None = None,
    initial_damping: float = 1e-4,
    compute_covariances: bool = False,
    singular_tol: float | None = None,
    chunk_size: int = 16384,
    banded: str = "auto",
    warn: bool = True,
) -> GaussNewtonResult:
    r"""MAP estimate of a chain of states by Gauss-Newton or Levenberg-Marquardt.

    Minimises :math:`\sum_f \sum_m \rho_f(\lVert W_{fm} r_{fm} \rVert)` (see :mod:`gpgeom.engine.factors`) by iterating
    :math:`(H + \lambda D)\delta = -b`, :math:`x_k \leftarrow \operatorname{retract}(x_k, \delta_k)`,
    :math:`\gamma \leftarrow \gamma + \delta_\gamma`, with the block-banded normal matrix
    :math:`H = \mathsf J^\top \Omega \mathsf J` and gradient :math:`b = \mathsf J^\top \Omega e` (Barfoot 2017,
    eq. 4.99 and sec. 4.3.1).

    * ``method="gn"``: :math:`\lambda = 0` and no line search. A singular normal matrix (e.g. no prior: a gauge
      freedom) raises :class:`~gpgeom.errors.NotPSDError`. A step that *increases* the cost (or gives non-finite
      states) is the sign of a normal matrix too close to singular for undamped steps (a direction the factors
      barely determine, where the linear model's step is huge) or of a strongly nonlinear problem: that step is
      rejected and the iteration continues as ``"lm"`` from the same estimate, with a
      :class:`~gpgeom.errors.ConvergenceWarning` that names the cost increase and the smallest pivot ratio of the
      normal matrix (so Gauss-Newton never oscillates; the result's ``message`` records the switch).
    * ``method="lm"``: Marquardt damping :math:`D = \operatorname{diag}(H)` (floored), a step is accepted when it
      decreases the cost, and :math:`\lambda` follows Nielsen's rule (accepted: :math:`\lambda \leftarrow \lambda
      \max(1/3, 1 - (2\varrho - 1)^3)` with the gain ratio :math:`\varrho` = actual / predicted decrease; rejected
      or not positive definite: :math:`\lambda \leftarrow \nu \lambda`, :math:`\nu \leftarrow 2\nu`). The
      accepted costs decrease monotonically and singular problems are regularised by the damping (the
      undetermined directions then stay near their initial values). Requested covariances are still computed
      from the undamped :math:`H` and raise :class:`~gpgeom.errors.NotPSDError` when it is singular.

    Convergence (after an accepted step, or at the start of an iteration for ``gtol``): relative cost decrease
    :math:`(c - c') \le \text{ftol}\, c`, or step norm :math:`\lVert\delta\rVert \le \text{xtol}(\lVert x\rVert +
    \text{xtol})` (all stored numbers and globals), or gradient :math:`\lVert b\rVert_\infty \le \text{gtol}`
    (whitened units), or (with ``stol``) a step below ``stol`` posterior standard deviations. A linear-Gaussian
    problem with the additive retraction is solved exactly by the first Gauss-Newton step; the second iteration
    detects convergence.

    The ``stol`` test is the one that recognises a converged estimate when some directions are (nearly)
    unobservable. Along such a direction the cost is almost flat, so the iterates keep drifting by steps that are
    large in the stored numbers (``xtol`` never fires) while the cost falls by a tiny, slowly shrinking amount per
    step (``ftol`` fires only after many iterations). In the metric of the posterior the same steps are tiny: for
    the step :math:`\delta` solved with damping :math:`\lambda`,

    .. math:: \lVert\delta\rVert_{H + \lambda D}^2 = \delta^\top(H + \lambda D)\,\delta = -b^\top\delta,
       \qquad |u^\top\delta| \le \lVert\delta\rVert_H \sqrt{u^\top H^{-1} u} \quad \text{for every } u,

    (Cauchy-Schwarz), so :math:`\sqrt{-b^\top\delta}` bounds the change of every linear function of the estimate in
    units of its (Laplace) posterior standard deviation. The test is applied to steps with
    :math:`\lambda \le 10^{-6}` only: such a step is the undamped Gauss-Newton step in every direction whose
    information exceeds :math:`10^{-6}` of the diagonal's (the observable ones), while the damping holds back the
    directions the factors do not determine (a heavily damped step is short in every metric and proves nothing).
    It assumes whitened residuals (the cost is a negative log-posterior), as in
    :mod:`gpgeom.models.trajectory`.

    Args:
        states: ``K x p`` initial states (float). Detached; the solver is not differentiable.
        factors: One :class:`Factor` or a sequence of them.
        global_params: Optional ``g`` initial global parameters (additive), shared by all factors.
        retract: ``retract(x, dx) -> x'`` with ``x`` ``N x p`` and ``dx`` ``N x s``; must be differentiable in
            ``dx`` with forward-mode autodiff (for Jacobians not supplied) and satisfy ``retract(x, 0) = x``.
            Default: addition (then ``s = p``).
        tangent_dim: ``s``; required when ``retract`` is given, defaults to ``p`` otherwise.
        bandwidth: ``w``: every residual block may span at most ``w + 1`` consecutive states.
        method: ``"lm"`` (default) or ``"gn"``.
        max_iter: Maximum number of linear solves. Exhausting it issues a
            :class:`~gpgeom.errors.ConvergenceWarning`.
        ftol, xtol, gtol: Convergence tolerances (see above); set to 0 to disable one. Defaults depend on the
            dtype: ``ftol = max(1e-12, 10 eps)``, ``xtol = max(1e-10, 10 eps)``, ``gtol = max(1e-10, 1e3 eps)``
            (float64: 1e-12, 1e-10, 1e-10; float32: 1.2e-6, 1.2e-6, 1.2e-4).
        stol: Step tolerance in posterior standard deviations (see above), e.g. ``0.1``; ``None`` (default) or 0
            disables the test.
        initial_damping: Initial :math:`\lambda` for ``"lm"`` (relative to :math:`\operatorname{diag}(H)`).
        compute_covariances: Also return the marginal covariances (Laplace approximation at the estimate,
            :math:`H^{-1}` with the IRLS weights of the final estimate) by selected inversion. For float32 states
            (on a device with float64) :math:`H` is summed from the float32 Jacobians in float64 and factorised
            and inverted there, and the covariances rounded to float32: summed in float32, :math:`H` of a WNOJ
            chain with knots 0.03 s apart was not positive definite (``tests/test_trajectory_float32_covariances.py``).
        singular_tol: Relative pivot threshold of :func:`block_banded_cholesky`. Default ``1e3 * eps`` (about
            three correct digits in the smallest pivot), except for the iterations' steps in float32 and below:
            ``10 * eps`` there (a pivot above rounding; an inaccurate step is caught by the cost test), since
            ``1e3 * eps`` = 1.2e-4 refuses well-posed problems such as a WNOJ trajectory with fine knots.
        chunk_size: Number of residual blocks whose normal-matrix contributions (``a s x a s`` each) are formed
            at once: the assembly's working memory is ``O(chunk_size a^2 s^2)`` plus the band, instead of growing
            with the number of blocks of a factor (blocks on the same states are summed per group first, see
            :func:`~gpgeom.engine.normal_equations._assemble`). The result does not depend on it (up to rounding).
        banded: The implementation of the block-banded factorisation, solve and selected inverse
            (:mod:`gpgeom.engine.banded`): ``"auto"`` (default: LAPACK's banded Cholesky on the CPU, odd-even
            reduction elsewhere, a float32 factorisation computed in float64), ``"lapack"``, ``"scan"``
            (odd-even reduction for the factorisation, the solves and the selected inverse, ``O(log K)`` batched
            steps on any device) or ``"loop"`` (the sequential recursions throughout, the reference). The results
            agree to rounding.
        warn: Issue the :class:`~gpgeom.errors.ConvergenceWarning` of an exhausted ``max_iter`` and the note of a
            Gauss-Newton step refused (``False``: none; the result's ``converged`` and ``message`` say the same).
            Passing ``False`` rather than filtering the warnings keeps ``warnings.filters`` of the process untouched
            (``warnings.catch_warnings`` is not thread-safe).

    Returns:
        A :class:`GaussNewtonResult`.

    Example:
        >>> K = 50
        >>> y = torch.randn(K, 1, dtype=torch.float64)
        >>> meas = Factor(torch.arange(K)[:, None], lambda x, g: x[:, 0] - y)
        >>> smooth = Factor(torch.stack([torch.arange(K - 1), torch.arange(1, K)], 1),
        ...                 lambda x, g: 10.0 * (x[:, 1] - x[:, 0]))
        >>> res = gauss_newton(torch.zeros(K, 1, dtype=torch.float64), [meas, smooth])
    """
    X = check_tensor("states", states, ndim=2, floating=True).detach()
    K, p = X.shape
    if K == 0 or p == 0:
        raise ValueError(f"`states` must be K x p with K, p >= 1, got shape {tuple(X.shape)}.")
    if global_params is None:
        G = X.new_zeros(0)
    else:
        G = check_tensor("global_params", global_params, ndim=1, floating=True).detach().to(X)
    g = G.shape[0]
    if isinstance(factors, Factor):
        factors = [factors]
    factors = list(factors)
    if not factors:
        raise ValueError("`factors` is empty; give at least one Factor.")
    for i, f in enumerate(factors):
        if not isinstance(f, Factor):
            raise TypeError(f"`factors[{i}]` must be a gpgeom Factor, got {type(f).__name__}.")
    check_positive("bandwidth", bandwidth, integer=True, allow_zero=True)
    check_option("method", method, _METHODS)
    check_positive("max_iter", max_iter, integer=True)
    eps = torch.finfo(X.dtype).eps
    ftol = max(1e-12, 10 * eps) if ftol is None else ftol
    xtol = max(1e-10, 10 * eps) if xtol is None else xtol
    gtol = max(1e-10, 1e3 * eps) if gtol is None else gtol
    stol = 0.0 if stol is None else stol
    for name, val in (("ftol", ftol), ("xtol", xtol), ("gtol", gtol), ("stol", stol)):
        check_positive(name, val, allow_zero=True)
    check_positive("initial_damping", initial_damping)
    if singular_tol is not None:
        check_positive("singular_tol", singular_tol)
    step_tol = singular_tol
    if singular_tol is None and X.dtype != torch.float64:
        step_tol = _STEP_SINGULAR_EPS_LOW_PRECISION * eps
    check_positive("chunk_size", chunk_size, integer=True)
    check_option("banded", banded, ("auto", "lapack", "scan", "loop"))
    if retract is None:
        if tangent_dim is not None and tangent_dim != p:
            raise ValueError(
                f"`tangent_dim`={tangent_dim} differs from the state size p={p}, but no `retract` was given; "
                "the default (additive) retraction needs tangent_dim == p."
            )
        retract, s = _additive_retract, p
    else:
        if not callable(retract):
            raise TypeError(f"`retract` must be callable, got {type(retract).__name__}.")
        if tangent_dim is None:
            raise ValueError("`tangent_dim` is required when a custom `retract` is given.")
        check_positive("tangent_dim", tangent_dim, integer=True)
        s = tangent_dim

    w = bandwidth
    for f in factors:
        idx = f.indices.to(X.device)
        f.indices = idx
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= K:
            raise ValueError(f"{f._label()}: `indices` must lie in [0, {K - 1}] (K = {K} states), got [{lo}, {hi}].")
        span = idx.max(1).values - idx.min(1).values
        if bool((span > w).any()):
            m = int((span > w).nonzero()[0, 0])
            raise ValueError(
                f"{f._label()}: residual block {m} spans states {int(idx[m].min())}..{int(idx[m].max())} "
                f"(span {int(span[m])}), more than `bandwidth`={w}. Increase `bandwidth` or split the factor."
            )
    prob = _Problem(factors=factors, retract=retract, K=K, p=p, s=s, g=g, w=w, chunk_size=int(chunk_size))

    # Check the retraction once (shape and identity at zero).
    x_test = retract(X, X.new_zeros(K, s))
    if not isinstance(x_test, Tensor) or x_test.shape != X.shape:
        got = tuple(x_test.shape) if isinstance(x_test, Tensor) else type(x_test).__name__
        raise ValueError(f"`retract(x, dx)` must return a tensor shaped like x ({K} x {p}), got {got}.")
    if x_test.dtype != X.dtype:  # else the first step's assembly fails in index_add_ with a dtype mismatch
        raise TypeError(f"`retract(x, dx)` must return a tensor of x's dtype {X.dtype}, got dtype {x_test.dtype}.")

    lam = float(initial_damping) if method == "lm" else 0.0
    nu = 2.0
    switched, switched_at = "", 0  # why and when a Gauss-Newton run continued as Levenberg-Marquardt
    N = _assemble(prob, X, G)
    cost = float(N.cost)
    history = [cost]
    iterations = 0
    converged = False
    message = f"reached max_iter={max_iter}"
    need_assembly = False
    while iterations < max_iter:
        if need_assembly:
            N = _assemble(prob, X, G)
            need_assembly = False
        grad_inf = float(torch.cat([N.bx.reshape(-1), N.bg]).abs().max())
        if not math.isfinite(grad_inf):  # the residuals are finite (checked): a Jacobian is not, or an overflow
            _name_nonfinite_jacobian(prob, X, G)
        if grad_inf <= gtol:
            converged, message = True, f"gradient norm {grad_inf:.3g} <= gtol"
            break
        iterations += 1
        try:
            Lb, Y, LS = _factor_bordered(N, lam, step_tol, banded)
        except _Singular as err:
            if method == "gn" and not switched:
                raise _singular_error(err.where, method, dtype=X.dtype) from None
            lam, nu = lam * nu, nu * 2.0
            if lam > 1e16:
                raise _singular_error(err.where, method, dtype=X.dtype) from None
            continue
        dx, dg = _solve_bordered(N, Lb, Y, LS, banded)
        step = torch.cat([dx.reshape(-1), dg])
        X_new = retract(X, dx)
        G_new = G + dg
        cost_new = float(_cost(prob, X_new, G_new)) if bool(torch.isfinite(X_new).all()) else math.inf
        if not math.isfinite(cost_new):
            cost_new = math.inf
        grad = torch.cat([N.bx.reshape(-1), N.bg])
        pred = 0.5 * float(-(grad @ step) + lam * (_damped_norm(N, dx, dg)))
        # Accept a decrease, or a step whose predicted and actual changes are both at round-off level (so that the
        # ftol/xtol tests can fire instead of the damping growing without bound).
        roundoff = 64.0 * torch.finfo(X.dtype).eps * max(cost, torch.finfo(X.dtype).tiny)
        if method == "gn" and not switched:
            accept = cost_new <= cost + roundoff
            if not accept:  # undamped steps no longer work here: continue damped (Levenberg-Marquardt)
                switched, switched_at = _gn_fallback_reason(N, Lb, cost, cost_new, iterations), iterations
                if warn:
                    warnings.warn(switched, ConvergenceWarning, stacklevel=user_stacklevel())
                lam, nu = float(initial_damping), 2.0
                continue
        else:
            accept = (cost_new < cost and pred > 0) or (cost_new <= cost + roundoff and pred <= roundoff)
        if not accept:
            lam, nu = lam * nu, nu * 2.0
            if lam > 1e16:
                message = (
                    "damping exceeded 1e16 without decreasing the cost: a minimum to working precision, or "
                    "a supplied Jacobian inconsistent with the residual"
                )
                break
            continue
        decrease = cost - cost_new
        lam_step = lam  # the damping this step was solved with (lam is updated below)
        xnorm = float(torch.cat([X.reshape(-1), G]).norm())
        X, G = X_new, G_new
        history.append(cost_new)
        cost_old, cost = cost, cost_new
        need_assembly = True
        if lam > 0.0:
            rho = decrease / pred if pred > 0 else 0.0
            lam = lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            lam = max(lam, 1e-12)
            nu = 2.0
        snorm = float(step.norm())
        # the step in posterior standard deviations, sqrt(delta^T (H + lam D) delta) = sqrt(-b^T delta), for steps
        # that are undamped in every observable direction (see the docstring)
        sdev = math.sqrt(max(-float(grad @ step), 0.0))
        if stol > 0 and lam_step <= _OBSERVABLE_DAMPING and sdev <= stol:
            converged = True
            message = (
                f"step of {sdev:.3g} posterior standard deviations <= stol (directions with less than "
                f"{_OBSERVABLE_DAMPING:g} of the diagonal's information are left to the damping)"
            )
            break
        if abs(decrease) <= ftol * cost_old:
            converged, message = True, f"relative cost decrease {abs(decrease) / max(cost_old, 1e-300):.3g} <= ftol"
            break
        if snorm <= xtol * (xnorm + xtol):
            converged, message = True, f"step norm {snorm:.3g} <= xtol * (|x| + xtol)"
            break
    if switched:
        message = f"{message} (Gauss-Newton continued as Levenberg-Marquardt from iteration {switched_at})"
    if not converged and warn:
        warnings.warn(
            f"gauss_newton stopped after {iterations} iterations without meeting ftol/xtol/gtol/stol ({message}; "
            f"cost {cost:.6g}); increase max_iter, start from a better initial estimate, loosen the tolerances or "
            "check the Jacobians.",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )

    result = GaussNewtonResult(
        states=X,
        globals=G,
        cost=cost,
        cost_history=history,
        iterations=iterations,
        converged=converged,
        message=message,
        damping=lam,
    )
    if compute_covariances:
        wide = _covariance_dtype(X)
        if need_assembly or wide != X.dtype:  # float32: once more, summed in float64 (_assemble)
            N = _assemble(prob, X, G, accumulate=None if wide == X.dtype else wide)
            if not bool(torch.isfinite(torch.cat([N.bx.reshape(-1), N.bg])).all()):
                _name_nonfinite_jacobian(prob, X, G)
        try:
            Lb, Y, LS = _factor_bordered(N, 0.0, singular_tol, banded)
        except _Singular as err:
            raise _singular_error(err.where, method, covariance=True, dtype=N.Hb.dtype) from None
        cov, cross, gcov, xgcov = _covariances(N, Lb, Y, LS, w, banded)
        result.covariances = cov.to(X.dtype)
        result.cross_covariances = cross.to(X.dtype)
        result.global_covariance = None if gcov is None else gcov.to(X.dtype)
        result.state_global_covariance = None if xgcov is None else xgcov.to(X.dtype)
    return result


def _covariance_dtype(X: Tensor) -> torch.dtype:
    r"""The dtype the covariances are computed in: float64 for lower-precision states on a device that has it (the
    CPU, CUDA), else the states' own. The Jacobians stay in the states' dtype; only the Gram sums, the factorisation
    and the selected inverse, ``O(K)`` blocks, are widened (:func:`~gpgeom.engine.normal_equations._assemble`)."""
    if X.dtype == torch.float64 or X.device.type == "mps":
        return X.dtype
    return torch.float64


def _pivot_ratio(N: _Normal, Lb: Tensor) -> float:
    r"""Smallest :math:`(L_{kk})_{ii}^2 / (H_{kk})_{ii}` of the state block: the smallest fraction of a variable's
    information left once the preceding variables are known (1 for independent variables, 0 when singular)."""
    piv = Lb[:, 0].diagonal(dim1=-2, dim2=-1).square()
    ref = N.Hb[:, 0].diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(piv.dtype).tiny)
    return float((piv / ref).min())


def _gn_fallback_reason(N: _Normal, Lb: Tensor, cost: float, cost_new: float, iteration: int) -> str:
    ratio = _pivot_ratio(N, Lb)
    return (
        f"method='gn': the Gauss-Newton step of iteration {iteration} would raise the cost from {cost:.6g} to "
        f"{cost_new:.6g}: the normal matrix is too close to singular for undamped steps, or the problem too "
        f"nonlinear here (smallest pivot ratio {ratio:.2g}, the fraction of a variable's information left once the "
        "others are known; small values mark directions the factors barely determine, e.g. an unobservable "
        "rotation, along which the undamped step is huge). Rejected the step and continued with "
        "Levenberg-Marquardt damping (method='lm') instead of oscillating."
    )


def _damped_norm(N: _Normal, dx: Tensor, dg: Tensor) -> Tensor:
    Dx, Dg = _damping_diagonal(N)
    return (Dx * dx.square()).sum() + (Dg * dg.square()).sum()
