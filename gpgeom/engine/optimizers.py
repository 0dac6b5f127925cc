r"""The two optimisers behind :func:`gpgeom.engine.fitting.fit` (internal to the engine).

* :func:`run_lbfgs`: L-BFGS-B (``scipy.optimize.minimize``) on the flattened raw parameters, or, for a batch of
  independent problems (separate hyperparameters per output or per batch member), one L-BFGS-B run per member
  evaluated together (``botorch.optim.batched_lbfgs_b.fmin_l_bfgs_b_batched``, Byrd, Lu, Nocedal & Zhu 1995).
  ``members=`` restricts a batched run to some of the members (the others keep their values): the executor path of
  :func:`~gpgeom.engine.fitting.fit` runs the members of one attempt in several tasks
  (:mod:`gpgeom.engine.attempts`). The batched runs advance in lockstep (every member still iterating is evaluated
  once per call), so each member follows the same iterates whichever members share its run.
* :func:`run_adam`: Adam (Kingma & Ba 2015) with early stopping on a bias-corrected exponential moving average of
  the epoch losses, on the full batch or on minibatches.

Both return an :class:`Attempt` and leave the best parameters they evaluated in the module.

A loss that raises ``StopIteration`` (e.g. from a user's callback inside it) ends the run there as a completed one
(``Attempt.stopped``; not converged), with the best parameters evaluated so far, as ``scipy.optimize.minimize``
treats a callback's ``StopIteration``. No step is taken from that evaluation. At L-BFGS-B's first evaluation (the
starting point's, under ``torch.no_grad()``) nothing was evaluated: the run returns the start with ``loss = inf``;
at its second (the first with gradients) the start is kept with the first evaluation's loss
(:func:`gpgeom.engine.attempts.run_attempt` evaluates the loss at the start once more, without gradients, for a
run that stopped before any finite loss; not with a data loader, whose minibatches may be there because the full
data does not fit in memory: the start then keeps ``loss = inf``). Adam on the full batch takes a loss
tensor carried by the exception (``raise StopIteration(loss)``, the loss of the current parameters) as that
evaluation's loss: it is the last epoch of the history and a candidate for the best parameters, so a run stopped at
its ``k``-th evaluation ends as one of ``epochs=k`` does. With minibatches, the epoch in progress counts when it took
a step (its mean loss over those steps, its parameters at the stop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from linear_operator.utils.errors import NanError
from scipy.optimize import Bounds, minimize
from torch import Tensor, nn

from gpgeom.engine.distributed import no_backward, raised_on_every_rank

__all__ = ["Attempt", "LR_SCHEDULES", "MemberBests", "batch_members", "lr_factor_fn", "run_adam", "run_lbfgs"]

#: Range of u = log(x - lower) for parameters bounded below only (x - lower between 1e-13 and 1e13).
_LOG_MIN, _LOG_MAX = -30.0, 30.0


class MemberBests:
    r"""For a batch of independent problems: each member's best loss over the attempts, its parameter rows
    (``nb x ...`` per parameter name), the attempt they came from, and the largest jitter any attempt used."""

    def __init__(self, losses: np.ndarray, params: dict[str, Tensor], attempt: int, jitter: float) -> None:
        nb = losses.size
        self.loss = losses.copy()
        self.rows = {n: p.detach().reshape(nb, -1).clone() for n, p in params.items()}
        self.attempt = [attempt] * nb
        self.jitter = jitter

    def update(self, losses: np.ndarray, params: dict[str, Tensor], attempt: int, jitter: float) -> None:
        better = losses < self.loss
        rows = torch.as_tensor(better)
        for n, p in params.items():
            self.rows[n][rows] = p.detach().reshape(losses.size, -1)[rows]
        for i in np.flatnonzero(better):
            self.attempt[i] = attempt
        self.loss = np.minimum(losses, self.loss)
        self.jitter = max(self.jitter, jitter)


class Attempt:
    r"""Outcome of one optimiser run.

    Attributes:
        history: The loss after every L-BFGS-B iteration (every evaluation of a batched run) or Adam epoch.
        loss: The best loss evaluated (the sum over the members of a batched run).
        converged: Whether the optimiser met its convergence test.
        member_losses: Best loss of every member of a batch of independent problems, ``(nb,)`` (or of the run's
            ``members``); ``None`` for one problem.
        trace: For a run on some ``members``: per evaluation, every member's contribution to the total in
            ``history`` (``(len(members),)`` arrays), from which the caller rebuilds the whole batch's history.
        state, rows: The final state dict and parameter rows, kept when the run was on a copy of the module.
        members: The members a batched run optimised (``None``: all).
        nonfinite: For one L-BFGS-B problem that stopped on a trial point whose loss (or gradient) was not finite:
            what the loss returned and at which evaluations (``None`` otherwise).
        stopped: Whether the loss raised ``StopIteration`` (the caller's request to end the fit there).
    """

    def __init__(self) -> None:
        self.history: list[float] = []
        self.loss = math.inf
        self.converged = False
        self.member_losses: np.ndarray | None = None
        self.trace: list[np.ndarray] | None = None
        self.state: dict[str, Any] | None = None
        self.rows: dict[str, Tensor] | None = None
        self.members: np.ndarray | None = None
        self.nonfinite: str | None = None
        self.stopped = False


def _kind(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value}"


#: The start of the note :func:`_noted` adds (read back by :meth:`gpgeom.engine.attempts.FitJob.diagnose`).
STEP_NOTE = "gpgeom fit: raised while evaluating the loss at "


def _noted(err: BaseException, where: str) -> None:
    r"""Add a note to ``err`` saying at which step of the optimiser the loss raised it."""
    err.add_note(f"{STEP_NOTE}{where}.")


def _nonfinite_gradient(params: dict[str, Tensor]) -> str | None:
    r"""The name of the first parameter whose gradient holds NaN or inf (one device sync when all are finite)."""
    grads = [(n, t.grad) for n, t in params.items() if t.grad is not None]
    if not grads or bool(torch.stack([torch.isfinite(g).all() for _, g in grads]).all()):
        return None
    return next(n for n, g in grads if not bool(torch.isfinite(g).all()))


def _backward(loss: Tensor) -> None:
    r"""``loss.backward()``, with a clear error for a loss that depends on no trainable parameter (torch says only
    "element 0 of tensors does not require grad")."""
    if not loss.requires_grad:
        raise ValueError(
            "The loss does not depend on any trainable parameter (it carries no gradient): compute it from the "
            "parameters being fitted (not from detached values or numbers), outside torch.no_grad()."
        )
    loss.backward()


def _flat_bounds(
    names: list[str], tensors: list[Tensor], bounds: dict[str, tuple[Any, Any]]
) -> tuple[np.ndarray, np.ndarray]:
    r"""Lower and upper bounds of every entry of ``tensors``, each shaped like its tensor (``-inf``/``inf`` = none)."""
    lower, upper = [], []
    for n, t in zip(names, tensors):
        for b, dest, default in zip(bounds.get(n, (None, None)), (lower, upper), (-np.inf, np.inf)):
            if b is None:
                arr = np.full(tuple(t.shape), default)
            else:
                arr = torch.as_tensor(b, dtype=torch.float64).expand(t.shape).cpu().numpy().copy()
                arr[np.isnan(arr)] = default
            dest.append(arr)
    return lower, upper


def batch_members(
    probe: Tensor, params: dict[str, Tensor], bounds: dict[str, tuple[Any, Any]]
) -> tuple[int | None, np.ndarray, np.ndarray]:
    r"""The batch layout of a loss value ``probe``: ``(nb, lower, upper)`` with ``nb`` the number of independent
    members (``None``: one problem) and the flattened bounds, ``(nb, p)`` or ``(1, p)``.

    A batch of independent problems: a loss of shape ``B`` with ``B.numel() > 1``, every parameter of shape
    ``B x ...``, and the same bounds in every member (the batched L-BFGS-B takes one set of bounds)."""
    names = list(params)
    tensors = [params[n] for n in names]
    B = probe.shape
    batched = probe.dim() > 0 and B.numel() > 1 and all(t.dim() >= len(B) and t.shape[: len(B)] == B for t in tensors)
    lower, upper = _flat_bounds(names, tensors, bounds)
    nb = B.numel() if batched else 1
    lo_all = np.concatenate([a.reshape(nb, -1) for a in lower], axis=1)
    hi_all = np.concatenate([a.reshape(nb, -1) for a in upper], axis=1)
    if batched and not (np.all(lo_all == lo_all[:1]) and np.all(hi_all == hi_all[:1])):
        batched, nb = False, 1
        lo_all = np.concatenate([a.reshape(1, -1) for a in lower], axis=1)
        hi_all = np.concatenate([a.reshape(1, -1) for a in upper], axis=1)
    return (nb if batched else None), lo_all, hi_all


def run_lbfgs(
    module: nn.Module,
    loss_fn: Callable[..., Tensor],
    params: dict[str, Tensor],
    bounds: dict[str, tuple[Any, Any]],
    max_iter: int,
    bar: Any,
    members: np.ndarray | None = None,
) -> Attempt:
    r"""L-BFGS-B on the flattened parameters.

    When the loss is a batch of independent problems (:func:`batch_members`, e.g. separate hyperparameters per
    output), each batch member gets its own L-BFGS-B run (``botorch.optim.batched_lbfgs_b.fmin_l_bfgs_b_batched``),
    evaluated together; otherwise one ``scipy.optimize.minimize`` run on the summed loss. Either way the best
    finite evaluation is kept.

    Args:
        module: The module that owns ``params`` (put in train mode).
        loss_fn: ``loss_fn()`` -> the loss (shape ``B`` for a batch); with ``accepts_batch_indices``,
            ``loss_fn(batch_indices=idx)`` -> the losses of members ``idx``.
        params: The trainable parameters by name; bounds: their bounds by name (GPyTorch constraints).
        max_iter: Iterations of every L-BFGS-B run.
        bar: A progress bar (``update``, ``set_postfix``).
        members: Optimise only these members of a batched loss (sorted indices into the flattened batch; the loss
            must accept ``batch_indices``); the other members' parameters are left as they are.
    """
    out = Attempt()
    names = list(params)
    tensors = [params[n] for n in names]
    module.train()
    start = [t.detach().clone() for t in tensors]
    try:
        with torch.no_grad():
            probe = loss_fn()
    except StopIteration:  # the loss asked to end the run at its first evaluation: nothing evaluated, no step
        out.stopped = True
        if members is not None:  # a run on some members reports them, each at an infinite loss (nothing evaluated)
            out.members = np.asarray(members, dtype=np.int64)
            out.trace, out.member_losses = [], np.full(out.members.size, np.inf)
        return out
    except Exception as err:
        _noted(err, "the starting point")
        raise
    nb_batch, lo_all, hi_all = batch_members(probe, params, bounds)
    batched = nb_batch is not None
    nb = nb_batch if batched else 1
    if members is not None:
        if not (batched and getattr(loss_fn, "accepts_batch_indices", False)):
            raise ValueError("`members` needs a batch of independent problems whose loss accepts `batch_indices`.")
        sel = np.asarray(members, dtype=np.int64)
        lo_all, hi_all = lo_all[sel], hi_all[sel]
        out.members, out.trace = sel, []
    else:
        sel = None
    rows_of = (lambda a: a) if sel is None else (lambda a: a[sel])  # this run's rows of an ``nb x p`` array
    x0 = rows_of(torch.cat([t.detach().double().cpu().reshape(nb, -1) for t in tensors], dim=1).numpy())
    x0 = np.clip(x0, lo_all, hi_all)
    sizes = [t.numel() // nb for t in tensors]
    nr = x0.shape[0]  # rows optimised here

    # Entries bounded below only (lengthscales, variances, noise: GPyTorch constraints without transform) are
    # optimised as u = log(x - lower), as GPy and scikit-learn do: the loss is far better conditioned in u when a
    # parameter spans orders of magnitude (measured on 35 Matern-5/2 ARD GPs, n = 300, d = 10: the first 100
    # iterations close 4x more of the gap to the optimum), and the bound is never active.
    logmask = np.isfinite(lo_all[0]) & ~np.isfinite(hi_all[0])
    lo_log = lo_all[0, logmask]  # the same for every row (a batched run has equal bounds)

    def to_raw(u: np.ndarray) -> np.ndarray:
        x = u.copy()
        x[:, logmask] = lo_log + np.exp(u[:, logmask])
        return x

    def from_raw(x: np.ndarray) -> np.ndarray:
        u = x.copy()
        u[:, logmask] = np.log(np.maximum(x[:, logmask] - lo_log, math.exp(_LOG_MIN)))
        return u

    lo_all = np.where(logmask, _LOG_MIN, lo_all)
    hi_all = np.where(logmask, _LOG_MAX, hi_all)
    x0 = np.clip(from_raw(x0), lo_all, hi_all)
    best_f = np.full(nr, np.inf)
    best_x = x0.copy()
    current = x0.copy()
    sel_t = None if sel is None else torch.as_tensor(sel, device=tensors[0].device if tensors else None)

    def set_x(u: np.ndarray) -> None:
        x = to_raw(u)
        with torch.no_grad():
            offset = 0
            for t, s in zip(tensors, sizes):
                block = torch.as_tensor(x[:, offset : offset + s]).to(t)
                if sel_t is None:
                    t.copy_(block.reshape(t.shape))
                else:  # only this run's members
                    t[sel_t] = block.reshape((nr,) + t.shape[1:])
                offset += s

    n_evals = [0]
    nonfinite: list[tuple[int, str]] = []  # one problem: (evaluation, what the loss returned) when not finite

    # a loss that can evaluate a subset of the batch members (e.g. gpgeom.engine.exact_mll) is asked only for the
    # members whose L-BFGS-B runs are still going
    subset = batched and bool(getattr(loss_fn, "accepts_batch_indices", False))

    def evaluate(x: np.ndarray, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Loss and gradient at ``x`` (``nr x p``, this run's rows) of the rows ``idx`` (all when ``None``)."""
        set_x(x)
        rows = np.arange(x.shape[0]) if idx is None else idx
        if sel is not None:
            idx = rows  # a run on some members always names them
        for t in tensors:
            t.grad = None
        n_evals[0] += 1
        try:
            if subset and idx is not None:
                loss = loss_fn(batch_indices=(idx if sel is None else sel[idx]).tolist())
            else:
                loss = loss_fn()
            _backward(loss.sum())
        except NanError as err:
            # A trial point of the line search gave a NaN covariance (e.g. a lengthscale driven to 0): report an
            # infinite loss so that the line search backtracks. NaN at the starting point fails the attempt, and so
            # does one raised on every data-parallel rank (the others left the fit with their own error).
            if n_evals[0] == 1 or raised_on_every_rank(err):
                raise
            if subset and len(rows) > 1:
                # one NaN member fails the whole evaluation: evaluate the members one by one, so that a member's
                # value never depends on which members share its evaluation
                parts = [evaluate(x, rows[k : k + 1]) for k in range(len(rows))]
                return np.concatenate([f for f, _ in parts]), np.concatenate([g for _, g in parts])
            return np.full(len(rows), np.inf), np.zeros((len(rows), x.shape[1]))
        except Exception as err:
            _noted(err, f"L-BFGS-B evaluation {n_evals[0]}")
            raise
        if batched:
            f = loss.detach().double().cpu().reshape(-1).numpy()
            if not (subset and idx is not None):
                f = f[rows]
        else:
            f = np.array([float(loss.sum().detach())])
        grads = [
            (t.grad if t.grad is not None else torch.zeros_like(t)).detach().double().cpu().reshape(nb, -1)
            for t in tensors
        ]
        g = rows_of(torch.cat(grads, dim=1).numpy())[rows]
        g[:, logmask] *= np.exp(x[rows][:, logmask])  # dx/du = x - lower = exp(u)
        bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
        if not batched and bad[0]:
            grad = _nonfinite_gradient(params) if np.isfinite(f[0]) else None
            what = _kind(float(f[0])) if grad is None else f"a finite loss with a non-finite gradient for `{grad}`"
            if n_evals[0] == 1:  # nothing to backtrack to
                raise FloatingPointError(f"returned {what} at the starting point (L-BFGS-B evaluation 1)")
            nonfinite.append((n_evals[0], what))
        f = np.where(bad, np.inf, f)
        g[bad] = 0.0
        better = f < best_f[rows]
        best_f[rows[better]] = f[better]
        best_x[rows[better]] = x[rows[better]]
        return f, g

    if batched:
        from botorch.optim.batched_lbfgs_b import fmin_l_bfgs_b_batched

        last_f = np.full(nr, np.inf)

        def batched_fun(x: np.ndarray, batch_indices: Any = None) -> tuple[np.ndarray, np.ndarray]:
            idx = np.arange(nr) if batch_indices is None else np.asarray(batch_indices, dtype=int)
            current[idx] = x
            f, g = evaluate(current, idx)
            last_f[idx] = f
            contrib = np.where(np.isfinite(best_f), best_f, last_f)
            total = float(np.sum(contrib))
            out.history.append(total)
            if out.trace is not None:
                out.trace.append(contrib)
            bar.update(1)
            bar.set_postfix(loss=f"{total:.5g}", refresh=False)
            return f, g

        bnds = [(float(a), float(b)) for a, b in zip(lo_all[0], hi_all[0])]
        try:
            _, _, infos = fmin_l_bfgs_b_batched(batched_fun, x0, bounds=bnds, maxiter=max_iter, pass_batch_indices=True)
            converged = all(int(info.get("warnflag", 1)) == 0 for info in infos)
        except StopIteration:  # the loss asked to end the run here
            out.stopped, converged = True, False
            no_backward()  # under torchrun: that evaluation's loss gets no backward pass
    else:

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = evaluate(x.reshape(1, -1))
            return float(f[0]), g[0]

        def callback(intermediate_result: Any) -> None:
            f = float(intermediate_result.fun)
            out.history.append(f)
            bar.update(1)
            bar.set_postfix(loss=f"{f:.5g}", refresh=False)

        try:
            res = minimize(
                fun,
                x0[0],
                jac=True,
                method="L-BFGS-B",
                bounds=Bounds(lo_all[0], hi_all[0]),
                callback=callback,
                options={"maxiter": max_iter},
            )
        except StopIteration:  # the loss asked to end the run here
            out.stopped, res = True, None
            no_backward()  # under torchrun: that evaluation's loss gets no backward pass
        converged = res is not None and bool(res.success) and math.isfinite(float(res.fun))
        if res is not None and not math.isfinite(float(res.fun)) and nonfinite:
            # the run stopped on a non-finite trial point: not converged, and the caller says so
            first, what = nonfinite[0]
            out.nonfinite = (
                f"returned {what} at L-BFGS-B evaluation {first} ({len(nonfinite)} of {n_evals[0]} evaluations "
                "non-finite, counted as an infinite loss), where the run stopped"
            )
    if out.stopped and not np.isfinite(best_f).any():
        # stopped before any finite evaluation of the run: the parameters stay at the start (exactly, not
        # through x0's round trip) with the starting point's loss, evaluated under no_grad above
        with torch.no_grad():
            for t, s0 in zip(tensors, start):
                t.copy_(s0)
        f0 = rows_of(probe.detach().double().cpu().reshape(nb)).numpy() if batched else np.array([float(probe.sum())])
        best_f = np.where(np.isfinite(f0), f0, np.inf)
    else:
        set_x(best_x)
    out.loss = float(best_f.sum())
    out.converged = converged
    out.member_losses = best_f.copy() if batched else None
    return out


LR_SCHEDULES = ("constant", "cosine")


def lr_factor_fn(
    lr_schedule: str | Callable[[int], float] | None, lr_final_fraction: float, epochs: int
) -> Callable[[int], float] | None:
    r"""The learning-rate factor per Adam epoch, ``epoch -> factor`` (``None``: constant, factor 1).

    ``"cosine"``: :math:`f_e = \phi + (1 - \phi)\,\tfrac12\bigl(1 + \cos(\pi e / E)\bigr)`, :math:`e = 0, \dots,
    E - 1` (``E = epochs``, :math:`\phi` = ``lr_final_fraction``): 1 at the first epoch, falling to :math:`\phi` at
    :math:`e = E` (the closed form of ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = E``,
    ``eta_min = phi * lr``). A callable is used as given; its values are checked when they are used.
    """
    if isinstance(lr_final_fraction, bool) or not isinstance(lr_final_fraction, int | float):
        raise TypeError(f"`lr_final_fraction` must be a number in [0, 1], got {type(lr_final_fraction).__name__}.")
    if not 0.0 <= lr_final_fraction <= 1.0:
        raise ValueError(f"`lr_final_fraction` must lie in [0, 1], got {lr_final_fraction}.")
    if lr_schedule is None or (isinstance(lr_schedule, str) and lr_schedule == "constant"):
        return None
    if isinstance(lr_schedule, str):
        if lr_schedule != "cosine":
            raise ValueError(
                f"Unknown `lr_schedule`={lr_schedule!r}; expected None, one of {LR_SCHEDULES} or a "
                "callable epoch -> factor."
            )
        phi = float(lr_final_fraction)
        return lambda e: phi + (1.0 - phi) * 0.5 * (1.0 + math.cos(math.pi * e / epochs))
    if not callable(lr_schedule):
        raise TypeError(
            f"`lr_schedule` must be None, one of {LR_SCHEDULES} or a callable epoch -> factor, got "
            f"{type(lr_schedule).__name__}."
        )
    return lr_schedule


def run_adam(
    module: nn.Module,
    step_loss: Callable[[Any], Tensor],
    batches: Callable[[], Iterable[Any]],
    params: dict[str, Tensor],
    bounds: dict[str, tuple[Any, Any]],
    lr: float,
    epochs: int,
    patience: int,
    rel_tol: float,
    bar: Any,
    lr_factor: Callable[[int], float] | None = None,
) -> Attempt:
    out = Attempt()
    tensors = list(params.values())
    clamps = []
    for n, t in params.items():
        lo, hi = bounds.get(n, (None, None))
        lo = None if lo is None or (not torch.is_tensor(lo) and not math.isfinite(lo)) else lo
        hi = None if hi is None or (not torch.is_tensor(hi) and not math.isfinite(hi)) else hi
        if lo is not None or hi is not None:
            clamps.append((t, lo, hi))
    opt = torch.optim.Adam(tensors, lr=lr)
    beta, ema, best_ema, stale = 0.9, 0.0, math.inf, 0
    best_loss, best_params = math.inf, [t.detach().clone() for t in tensors]
    module.train()
    for epoch in range(epochs):
        if lr_factor is not None:  # the learning rate of this epoch: lr * factor(epoch)
            factor = lr_factor(epoch)
            if isinstance(factor, bool) or not isinstance(factor, int | float | np.floating | np.integer):
                raise TypeError(f"`lr_schedule`({epoch}) must return a number, got {type(factor).__name__}.")
            if not (math.isfinite(factor) and factor >= 0):
                raise ValueError(f"`lr_schedule`({epoch}) returned {factor}; factors must be finite and >= 0.")
            for group in opt.param_groups:
                group["lr"] = lr * float(factor)
        total, count = 0.0, 0
        for b, batch in enumerate(batches()):
            where = f"Adam epoch {epoch}" + ("" if batch is None else f", minibatch {b}")
            opt.zero_grad(set_to_none=True)
            try:
                loss = step_loss(batch)
            except StopIteration as stop:  # the end of the run, asked for by the loss (module docstring)
                out.stopped, loss = True, stop.value
                no_backward()  # under torchrun: this loss gets no backward pass
                if batch is not None or not isinstance(loss, Tensor):
                    break
            except Exception as err:
                _noted(err, where)
                raise
            value = float(loss.detach())
            # caught before the step, where the loss returned it: the step would make every parameter NaN
            if not math.isfinite(value):
                raise FloatingPointError(f"returned {_kind(value)} at {where}")
            if not out.stopped:
                _backward(loss)
                grad = _nonfinite_gradient(params)
                if grad is not None:
                    raise FloatingPointError(
                        f"returned a finite loss with a non-finite gradient for `{grad}` at {where}"
                    )
            if batch is None and value < best_loss:  # full batch: this loss belongs to the pre-step parameters
                best_loss, best_params = value, [t.detach().clone() for t in tensors]
            if out.stopped:  # full batch: this evaluation is the last epoch, without its step
                total, count = total + value, count + 1
                break
            opt.step()
            with torch.no_grad():
                for t, lo, hi in clamps:
                    t.copy_(t.clamp(min=lo, max=hi))
            total += value
            count += 1
        if count == 0 and out.stopped:
            break
        if count == 0:
            raise ValueError(f"`data_loader` yielded no minibatch in epoch {epoch}; it must yield at least one (X, y).")
        epoch_loss = total / count
        if not math.isfinite(epoch_loss):
            raise FloatingPointError(f"the loss became {epoch_loss} at epoch {epoch}")
        if batch is not None and epoch_loss < best_loss:  # minibatches: keep the end-of-epoch parameters
            best_loss, best_params = epoch_loss, [t.detach().clone() for t in tensors]
        out.history.append(epoch_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{epoch_loss:.5g}", refresh=False)
        if out.stopped:
            break
        # Early stopping on the bias-corrected exponential moving average of the epoch losses.
        ema = beta * ema + (1 - beta) * epoch_loss
        smoothed = ema / (1 - beta ** (epoch + 1))
        improved = not math.isfinite(best_ema) or smoothed < best_ema - rel_tol * max(abs(best_ema), 1e-12)
        if improved:
            best_ema, stale = smoothed, 0
        else:
            stale += 1
            if stale >= patience:
                out.converged = True
                break
    # Adam's last iterate can sit on a spike of the loss: return the best parameters seen.
    with torch.no_grad():
        for t, b in zip(tensors, best_params):
            t.copy_(b)
    out.loss = best_loss
    return out
