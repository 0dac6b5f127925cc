r"""The course of a FunBaT fit: the initial state, the snapshots that restarts choose between, and the sweep loop
with its hyperparameter schedule and convergence test.

Initial state (``_initialise(seed, init_scale)``, one per initialisation). Each mode's kernel at the initial
``lengthscale`` (none for a categorical mode) and ``variance``; its latent means the cosine basis
:math:`\cos(\pi r s)`, :math:`r = 0 \dots R_k - 1`, at the positions :math:`s` of
:func:`~gpgeom.models.funbat.priors.initial_positions` (the coordinates mapped onto ``[0, 1]`` by their range; a
categorical mode's labels by
their rank in mean value), plus ``init_scale`` times standard normal draws from a generator seeded by ``seed``; its
latent covariances :math:`0.01 I` and its messages zero. The Tucker core's mean is a draw of :math:`N(0, \sigma_W^2
I / P)` from the same generator, its covariance :math:`0.01 I`; the CP core is the superdiagonal of ones with zero
covariance. :math:`q(\tau)` starts at :math:`\mathbb E[\tau] = 10` (a noise sd of 0.32 of the standardised data)
with its shape :math:`a_0 + N/2`, the bias at zero mean and variance, the Student-t scales at their prior
(:mod:`~gpgeom.models.funbat.scales`; at ``dof``, or at 10 degrees of freedom when they are learned), and the
schedule below at its start.

Restarts (``n_restarts``, :meth:`FunBaT.fit <gpgeom.models.funbat.model.FunBaT.fit>`). Initialisation :math:`r`
(seed ``seed + r``, perturbation ``init_scale`` for :math:`r = 0` and ``max(init_scale, 0.5)`` after) runs
``restart_sweeps`` sweeps (at most ``max_sweeps``) and its state (``_STATE``: kernels, factors and messages, history,
schedule) is kept as a deep copy; the one with the largest ELBO after those sweeps (a non-finite ELBO counts as the
lowest) is restored and continued up to ``max_sweeps`` sweeps in all, its restart sweeps included.

Sweep loop (``_run``). A sweep updates every mode in turn (its messages, then its state-space smoother;
:mod:`~gpgeom.models.funbat.inference`), then the core, the bias, the noise and, with Student-t noise, the scales.
When some mode learns its hyperparameters, a step (:mod:`~gpgeom.models.funbat.hyper`) follows the sweep from sweep
``hyper_warmup`` on; the interval to the next step doubles, up to ``8 hyper_every``, while no log hyperparameter
moves by 1%, and is ``hyper_every`` again otherwise. Before a ``"sweep"`` step the sweep's smoothers also return the
score statistics. The convergence test compares the fitted training values with the previous sweep's, :math:`\|\bar
f - \bar f_{\text{old}}\| / \|\bar f_{\text{old}}\|`, and with Student-t scales also :math:`1/\nu`: the loop stops
when that change is below ``tol`` after ``min_sweeps`` sweeps and, with learned hyperparameters, once their steps
have settled (after the first step; after the third for ``"sweep"`` steps). Every sweep appends its entry to
``history`` (the fields are listed on :class:`~gpgeom.models.funbat.model.FunBaT`) and passes it to the
``callback``; a non-finite fit raises ``FloatingPointError``. A ``StopIteration`` from the ``callback`` ends the fit
after that sweep (no further sweep, restart or ``"refit"`` loop) and keeps its state as the fit. When the last sweep
ended with a hyperparameter step,
every mode is smoothed again with the new values (its messages kept), the expected squared residuals are recomputed
at the smoothed factors (nothing else is updated) and that entry's ``elbo`` is replaced by the ELBO of this state,
the one returned, which ``fit_result_.elbo``, ``elbo()`` and the choice among restarts read (the entry of an earlier
hyperparameter step holds the ELBO before that step). The final loop of a fit warns
(:class:`~gpgeom.errors.ConvergenceWarning`) when it stops at its sweep budget (with ``tol > 0``).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gpgeom._progress import progress_bar
from gpgeom._warnings import user_stacklevel
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat.inference import _Mode
from gpgeom.models.funbat.priors import initial_positions, mode_kernel
from gpgeom.models.funbat.scales import DOF_INIT

__all__: list[str] = []


class _Fitting:
    r"""The initial state, the restarts' snapshots and the sweep loop of :class:`~gpgeom.models.funbat.model.FunBaT`
    (module docstring)."""

    #: Set when the ``callback`` raised ``StopIteration`` (reset by every fit).
    _stopped = False
    #: Whether a fit that stops at its sweep budget warns (off for the held-out refit of ``scale_fit="heldout"``,
    #: which warns in no thread rather than filtering the process's warnings: ``gpgeom._warnings``).
    _warn_unconverged = True

    _STATE = (
        "kernels _modes _core_mean _core_cov _core_lam _core_eta _tau_a _tau_b _tau_data _bias_mean _bias_var "
        "history converged _f_old _next_hyper _interval _hyper_steps _rprop _hyper_settled _last_sq _scale_alpha "
        "_scale_beta _resid_sq _dof"
    ).split()

    def _snapshot(self) -> dict[str, Any]:
        return {k: copy.deepcopy(getattr(self, k)) for k in self._STATE if hasattr(self, k)}

    def _restore(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def _initialise(self, seed: int, init_scale: float) -> None:
        r"""Kernels, latent means (cosine basis and perturbation: ``priors.initial_positions``), core, noise."""
        K = len(self.ranks)
        dtype, device = self.dtype, self.device
        gen = torch.Generator().manual_seed(seed)
        self.kernels = torch.nn.ModuleList()
        self._modes = []
        for k in range(K):
            t, idx = self._coords[k]
            kern = mode_kernel(self._nus[k], k in self.categorical, dtype, device)
            if kern.has_lengthscale:  # a categorical mode has none
                kern.lengthscale = float(self._ls0[k])
            kern.variance = float(self._vs0[k])
            self.kernels.append(kern)
            I, R, (s, perm) = t.shape[0], self.ranks[k], initial_positions(t, idx, self._ys, k in self.categorical)
            noise = torch.randn(I, R, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)[perm]
            basis = torch.cos(math.pi * s[:, None] * torch.arange(R, dtype=dtype, device=device)[None, :])
            self._modes.append(
                _Mode(
                    t=t,
                    idx=idx,
                    u_mean=basis + init_scale * noise,
                    u_cov=0.01 * torch.eye(R, dtype=dtype, device=device).expand(I, R, R).clone(),
                    lam=torch.zeros(I, R, R, dtype=dtype, device=device),
                    eta=torch.zeros(I, R, dtype=dtype, device=device),
                )
            )
        P = math.prod(self.ranks)
        if self.decomposition == "tucker":
            W0 = torch.randn(P, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
            self._core_mean = W0 / math.sqrt(P) * math.sqrt(self.core_prior_variance)
            self._core_cov = 0.01 * torch.eye(P, dtype=dtype, device=device)
        else:
            R = self.ranks[0]
            W = torch.zeros((R,) * K, dtype=dtype, device=device)
            for r in range(R):
                W[(r,) * K] = 1.0
            self._core_mean = W.reshape(-1)
            self._core_cov = torch.zeros(P, P, dtype=dtype, device=device)
        self._core_lam = torch.zeros(P, P, dtype=dtype, device=device)
        self._core_eta = torch.zeros(P, dtype=dtype, device=device)
        a0, _ = self.noise_prior
        self._tau_a = torch.tensor(a0 + 0.5 * self._N, dtype=dtype, device=device)
        self._tau_b = self._tau_a / 10.0  # E[tau] = 10 to start: noise sd 0.32 of the standardised data
        self._tau_data = None
        self._bias_mean = torch.zeros((), dtype=dtype, device=device)
        self._bias_var = torch.zeros((), dtype=dtype, device=device)
        self._init_scales(self.dof if self.dof is not None else DOF_INIT)
        self._reset_schedule()

    def _reset_schedule(self) -> None:
        self.history, self.converged = [], False
        self._f_old = None
        self._next_hyper, self._interval, self._hyper_steps = self.hyper_warmup, self.hyper_every, 0
        self._rprop, self._hyper_settled = None, True

    def _train_rmse(self, f_bar: Tensor) -> float:
        r"""RMSE of the fitted training values ``f_bar`` (``N``) against the data, standardised units."""
        return float((f_bar - self._ys).square().mean().sqrt())

    def _run(self, max_sweeps: int, progress: bool | None, callback: Callable | None, final: bool) -> None:
        r"""Sweeps until the convergence test (only after a hyperparameter step when they are learned) or until
        ``max_sweeps`` sweeps in all have run."""
        if self._stopped:  # the callback ended the fit: no further sweep
            return
        K = len(self.ranks)
        start = len(self.history)
        bar = progress_bar(
            range(start, max_sweeps), progress=progress, desc=f"FunBaT-{self.decomposition}", leave=False
        )
        for sweep in bar:
            t0 = time.perf_counter()
            learn, failure = any(self._learn_modes) and sweep >= self._next_hyper, None
            # "sweep" hyperparameter steps take the gradient from this sweep's smoothers (hyper module docstring)
            self._want_score = learn and self._next_hyper_method() == "sweep"
            for k in range(K):
                self._update_mode(k)
            self._want_score = False
            f_bar = self._update_core_and_noise()
            if learn:
                change, failure = self._learn_hyperparameters()
                # adaptive schedule: double the interval while the hyperparameters move by < 1% (at most 8)
                cap = 8 * self.hyper_every
                self._interval = min(2 * self._interval, cap) if change < 0.01 else self.hyper_every
                self._next_hyper = sweep + self._interval
            f_old = self._f_old
            delta = math.inf if f_old is None else float((f_bar - f_old).norm() / f_old.norm().clamp_min(1e-30))
            if self._dof is not None:  # Student-t: 1/dof must settle too (it shifts the quantiles, Cornish-Fisher)
                dof_old = self.history[-1]["dof"] if self.history else None
                delta = max(delta, abs(1.0 / self._dof - 1.0 / dof_old) if dof_old else math.inf)
            self._f_old = f_bar
            entry = {
                "sweep": sweep,
                "delta": delta,
                "train_rmse": self._train_rmse(f_bar),
                "noise_sd": float((self._tau_b / self._tau_a).sqrt() * self.y_std),
                "seconds": time.perf_counter() - t0,
                "lengthscale": self.lengthscales_.tolist(),
                "variance": [float(kk.variance.detach()) for kk in self.kernels],
                "hyper_step": learn,
                "hyper_failure": failure,
                "elbo": self.elbo(),
                "dof": self._dof,
            }
            self.history.append(entry)
            bar.set_postfix(delta=f"{delta:.2e}", rmse=f"{entry['train_rmse']:.4f}")
            if callback is not None:
                try:
                    callback(self, entry)
                except StopIteration:  # the fit ends after this sweep and is kept (FunBaT.fit)
                    self._stopped = True
            if not math.isfinite(entry["train_rmse"]):
                raise FloatingPointError(
                    f"FunBaT diverged at sweep {sweep} (non-finite fit); try more damping or float64."
                )
            if self._stopped:
                break
            hypers_done = not any(self._learn_modes) or (self._hyper_steps > 0 and self._hyper_settled)
            if sweep + 1 >= self.min_sweeps and delta < self.tol and hypers_done:
                self.converged = True
                break
        bar.close()
        if self.history and self.history[-1]["hyper_step"]:  # smoothed posteriors with the final hyperparameters
            for k in range(K):
                self._smooth(k)
            # the last entry's ELBO and training RMSE are those of the state returned (restarts compare the ELBO,
            # fit_result_.elbo reports it)
            f_bar = self._refresh_residuals()
            self.history[-1]["elbo"] = self.elbo()
            self.history[-1]["train_rmse"] = self._train_rmse(f_bar)
        if final and not self.converged and self.tol > 0 and not self._stopped and self._warn_unconverged:
            warnings.warn(
                f"FunBaT stopped at max_sweeps={max_sweeps}, change {self.history[-1]['delta']:.2e} > tol={self.tol:g}:"
                " compare held-out error before raising max_sweeps (longer fits can predict worse).",
                ConvergenceWarning,
                stacklevel=user_stacklevel(),
            )
