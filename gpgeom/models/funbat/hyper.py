r"""Hyperparameter steps of FunBaT: each mode's Matérn lengthscale and variance between sweeps.

Not in Fang et al. (ICLR 2024), whose code fixes them. Each mode's :math:`\theta_k` maximises the log marginal
likelihood of its current pseudo-observations (the part of the EP evidence that depends on it;
:mod:`~gpgeom.models.funbat.latent`), by steps between sweeps (from sweep ``hyper_warmup``; the interval doubles while
no log hyperparameter moves by 1%), run by :func:`gpgeom.engine.fitting.fit` (L-BFGS-B) in one of two ways:

* ``"marginal"``: the likelihood itself; per evaluation one Kalman filter and RTS smoother per mode without
  autograd gives its value and, in closed form, its gradient (:func:`~gpgeom.models.funbat.latent.latent_score`,
  :func:`~gpgeom.models.funbat.latent.score_surrogate`; no backward pass through the filter, memory linear in the
  number of unique coordinates);
* ``"em"``: an EM step (Dempster, Laird & Rubin 1977), maximising
  :func:`~gpgeom.models.funbat.latent.expected_log_prior` :math:`\mathbb E_q[\log p(x_{1:I} \mid \theta)]` under the
  smoother's moments at the current values, in its stable form (one filter and smoother per mode with the score
  statistics of :func:`~gpgeom.models.funbat.latent.latent_score`, then no Kalman recursion while it is maximised).
  By Fisher's identity its gradient at the current values is the likelihood's gradient; it increases the
  likelihood and has the same stationary points.

* ``"sweep"``: no Kalman recursion of its own. The sweep's smoother of each mode also returns the score statistics
  (:func:`~gpgeom.models.funbat.latent.latent_score`, the same filter and smoother), so the exact gradient of the
  mode's marginal likelihood at the current values comes with the sweep; the step is iRprop\ :sup:`-` (Riedmiller &
  Braun, "A direct adaptive method for faster backpropagation learning: the RPROP algorithm", ICNN 1993; Igel &
  Hüsken, "Improving the Rprop learning algorithm", 2000) on each log hyperparameter: it moves by its own step
  size in the direction of the gradient's sign; the step grows by 1.2 (up to 1) while the sign holds and halves
  (down to :math:`10^{-4}`) when it flips, and that step is skipped. Signs only: the marginal likelihood's scale,
  which changes from sweep to sweep with the sites, does not matter. With this method the fit's convergence test
  waits for 3 steps (the first steps grow while the sign holds: they are the ones that move far).

The default ``"auto"`` takes ``"sweep"`` when the modes hold more than :data:`SWEEP_THRESHOLD` unique coordinates
in all (continuous coordinates: a marginal step's 5-10 filter passes per mode then cost several sweeps), and
otherwise 3 marginal steps (EM moves slowly while a poor prior dominates the posterior), then EM (marginal
throughout for :math:`\nu = 5/2`, whose smallest steps make :math:`Q(\Delta)` numerically singular).

Failures. One numerical failure mode is caught: :class:`gpgeom.errors.NotPSDError` from the engine's ``fit``, raised
when no evaluation of the objective, the starting point included, factorised (a Cholesky factor of some
:math:`Q(\Delta)` or :math:`P_\infty`, or of a Kalman innovation, failed at every point tried; a trial point of the
line search that fails is rejected as an infinite loss and is no failure). The step then keeps the previous
hyperparameters, warns (``RuntimeWarning``) and records the message in the sweep's history entry
(``hyper_failure``). Every other exception propagates.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from gpgeom._warnings import user_stacklevel
from gpgeom.engine.fitting import fit as engine_fit
from gpgeom.errors import NotPSDError
from gpgeom.kernels.sde import MarkovKernel
from gpgeom.models.funbat.inference import _Mode
from gpgeom.models.funbat.latent import (
    ModeScore,
    expected_log_prior,
    joint_log_likelihood,
    latent_score,
    score_surrogate,
)

#: ``hyper_method="auto"`` takes the ``"sweep"`` steps above this many unique coordinates in all modes.
SWEEP_THRESHOLD = 10_000

#: The hyperparameters of a mode, in the order of the iRprop- state (a categorical mode has the variance only).
_HYPERS = ("lengthscale", "variance")
# iRprop- constants (module docstring): initial, smallest and largest step (log units), growth and shrink factors
_STEP0, _STEP_MIN, _STEP_MAX, _GROW, _SHRINK = 0.5, 1e-4, 1.0, 1.2, 0.5


class _HyperparameterSteps:
    r"""The hyperparameter steps of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    def _log_hypers(self) -> Tensor:
        r"""``K x 2`` log lengthscale (0 for a categorical mode, which has none) and log variance of every mode."""
        one = self.kernels[0].variance.new_ones(())
        return (
            torch.stack(
                [
                    torch.stack([k.lengthscale.reshape(()) if k.has_lengthscale else one, k.variance.reshape(())])
                    for k in self.kernels
                ]
            )
            .detach()
            .log()
        )

    def _next_hyper_method(self) -> str:
        r"""The method of the next hyperparameter step (``"auto"`` resolved; module docstring)."""
        method = self.hyper_method
        if method == "auto":
            if sum(int(md.t.shape[0]) for md in self._modes) > SWEEP_THRESHOLD:
                return "sweep"
            early = self._hyper_steps < 3  # the first steps move far: the marginal likelihood gets there at once
            smooth = max(k.state_dim for k in self.kernels) > 2  # nu = 5/2
            method = "em" if (not smooth and not early) else "marginal"
        return method

    def _learn_hyperparameters(self) -> tuple[float, str | None]:
        r"""One hyperparameter step for every mode; returns the largest change of a log hyperparameter and the
        message of a failed step (module docstring, ``None`` when none failed)."""
        before = self._log_hypers()
        method = self._next_hyper_method()
        self._hyper_steps += 1
        if method == "sweep":
            self._sweep_step()
            self.kernels.eval()
            change = float((self._log_hypers() - before).abs().max())
            self._hyper_settled = self._hyper_steps >= 3  # the first steps move far (the step grows)
            return change, None
        self._hyper_settled = True
        if method == "em":
            try:
                with torch.no_grad():  # the EM objective needs every Q_i numerically positive definite
                    for md, kern in zip(self._modes, self.kernels):
                        k64 = copy.deepcopy(kern).to(torch.float64)
                        _, Q = k64.transition(torch.diff(md.t.double()))
                        torch.linalg.cholesky(torch.cat([Q, k64.stationary_covariance()[None]]))
            except torch.linalg.LinAlgError:
                method = "marginal"
        if method == "em":
            failures = [
                self._em_step(md, kern)
                for md, kern, learn in zip(self._modes, self.kernels, self._learn_modes)
                if learn
            ]
        else:
            failures = [self._marginal_step()]
        self.kernels.eval()
        failed = [f for f in failures if f is not None]
        return float((self._log_hypers() - before).abs().max()), "; ".join(failed) if failed else None

    def _fit_hypers(self, loss: Callable[[], Tensor], module: torch.nn.Module, max_iter: int, what: str) -> str | None:
        r"""L-BFGS-B on ``loss`` over ``module``'s parameters; on the documented failure (module docstring) the
        previous values are restored, a ``RuntimeWarning`` is issued and its message returned."""
        state = {n: p.detach().clone() for n, p in module.named_parameters()}
        # both losses factorise with torch.linalg and draw nothing: the engine then sets no GPyTorch setting and
        # leaves torch's global stream alone, so FunBaT fits in threads do not see or leave each other's
        loss.thread_isolated = True  # type: ignore[attr-defined]
        try:
            engine_fit(loss, module=module, optimizer="lbfgs", max_iter=max_iter, progress=False)
        except NotPSDError as err:
            with torch.no_grad():
                for n, p in module.named_parameters():
                    p.copy_(state[n])
            message = f"{what}: {err}"
            warnings.warn(
                f"FunBaT: a hyperparameter step failed to factorise ({message}); kept the previous values.",
                RuntimeWarning,
                stacklevel=user_stacklevel(),
            )
            return message
        return None

    def _em_step(self, md: _Mode, kern: MarkovKernel) -> str | None:
        r"""M-step of one mode on the expected log prior under its current smoothed posterior (float64)."""
        k64 = copy.deepcopy(kern).to(torch.float64)
        t64 = md.t.to(torch.float64)
        # the posterior and its score statistics at the current values (one filter and smoother, float64): the
        # stable form of the expected log prior (latent.expected_log_prior)
        post64, score64 = latent_score(k64, t64, md.lam.double(), md.eta.double())
        scale = 1.0 / max(int(post64.mean.numel()), 1)

        def loss() -> Tensor:
            try:
                return -scale * expected_log_prior(k64, t64, post64, score64)
            except torch.linalg.LinAlgError:  # a trial point made some Q(dt) singular: reject it (line search)
                return sum(p.sum() for p in k64.parameters()) * 0.0 + math.inf

        failure = self._fit_hypers(loss, k64, self.hyper_max_iter or 20, "EM step")
        with torch.no_grad():
            for (_, p), (_, q) in zip(kern.named_parameters(), k64.named_parameters()):
                p.copy_(q.to(p))
        return failure

    def _marginal_step(self) -> str | None:
        r"""A few L-BFGS-B steps on the sum over modes of the pseudo-observations' log marginal likelihoods: each
        evaluation is one Kalman filter and smoother per mode without autograd (the value) and the closed-form
        score (the gradient; :func:`~gpgeom.models.funbat.latent.joint_log_likelihood` with ``(lam, eta)``
        sites): time and memory :math:`O(\sum_k I_k)`."""
        scale = 1.0 / max(sum(int(md.eta.numel()) for md in self._modes), 1)

        ts = [md.t for md in self._modes]
        sites = [(md.lam.detach(), md.eta.detach()) for md in self._modes]

        def loss() -> Tensor:
            try:
                value = joint_log_likelihood(list(self.kernels), ts, sites).sum()
            except torch.linalg.LinAlgError:  # a trial point failed to factorise: reject it (line search)
                return sum(p.sum() for p in self.kernels.parameters()) * 0.0 + math.inf
            return -scale * value

        # L-BFGS-B moves the learned modes' kernels only (learn_hyperparameters=False holds a mode)
        learned = torch.nn.ModuleList(k for k, learn in zip(self.kernels, self._learn_modes) if learn)
        return self._fit_hypers(loss, learned, self.hyper_max_iter or 5, "marginal-likelihood step")

    def _sweep_step(self) -> None:
        r"""One iRprop\ :sup:`-` step (module docstring) of every mode's log lengthscale and log variance, from the
        gradient of its marginal likelihood at the current values: :func:`~gpgeom.models.funbat.latent.score_surrogate`
        on the score statistics that this sweep's smoother left in ``md.score`` (modes without them keep their
        values)."""
        K = len(self.kernels)
        if self._rprop is None:
            # step, last sign; on the kernels' device, where the gradients' signs are
            self._rprop = torch.stack([torch.full((K, 2), _STEP0), torch.zeros(K, 2)]).to(
                dtype=torch.float64, device=self.device
            )
        steps, signs = self._rprop
        for k, (md, kern) in enumerate(zip(self._modes, self.kernels)):
            if md.score is None or not self._learn_modes[k]:
                md.score = None
                continue
            k64 = copy.deepcopy(kern).to(torch.float64)
            score = ModeScore(*(x.to(torch.float64) for x in md.score))
            md.score = None
            slots = [0, 1] if kern.has_lengthscale else [1]  # of _HYPERS; a categorical mode has the variance only
            raw = [getattr(k64, f"raw_{_HYPERS[i]}") for i in slots]
            grads = torch.autograd.grad(score_surrogate(k64, md.t.to(torch.float64), score), raw)
            # the constraints are increasing maps: the sign of d log Z / d raw is that of d log Z / d log value
            sign = raw[0].new_zeros(2)  # a slot the kernel lacks never moves
            sign[slots] = torch.stack([g.reshape(()) for g in grads]).sign()
            agree = sign * signs[k]
            steps[k] = torch.where(agree > 0, (steps[k] * _GROW).clamp(max=_STEP_MAX), steps[k])
            steps[k] = torch.where(agree < 0, (steps[k] * _SHRINK).clamp(min=_STEP_MIN), steps[k])
            sign = torch.where(agree < 0, torch.zeros_like(sign), sign)  # a flipped sign: no move this time
            signs[k] = sign
            with torch.no_grad():
                for i in slots:
                    name = _HYPERS[i]
                    current = getattr(kern, name)
                    constraint = getattr(kern, f"raw_{name}_constraint")
                    value = (current.detach().double().log() + sign[i] * steps[k, i]).exp()
                    lo, hi = float(constraint.lower_bound), float(constraint.upper_bound)
                    value = value.clamp(min=lo * (1 + 1e-6), max=hi * (1 - 1e-6) if math.isfinite(hi) else math.inf)
                    setattr(kern, name, value.to(current).reshape(current.shape))
