r"""The state of FunBaT's Student-t noise scales on the model: their initialisation, the groups of shared scales, and
the scales fitted after the factors (``FunBaT(noise="student_t", scale_fit="cut")``), then held in a refit
(``scale_fit="refit"``), or fitted on held-out entries (``scale_fit="heldout"``, :mod:`~gpgeom.models.funbat.heldout`).

Joint fit (``scale_fit="joint"``, the default). The scales :math:`q(\lambda_n)` (or :math:`q(\lambda_g)` with
``scale_mode``) are factors of the mean-field posterior like any other: every sweep weights entry :math:`n` by
:math:`\mathbb E[\lambda_{g(n)}]` in the factors' updates (:mod:`~gpgeom.models.funbat.noise`). On heteroscedastic
data this down-weights the noisy groups in the mean: a noisy day weighs little in its own day factor, which the
day's GP prior then pulls towards its neighbours. Where the noisy groups carry signal for a squared-error score
(the pollution episodes of BeijingAir-PM2.5), the mean gets worse (``benchmarks/funbat_heteroscedastic.py``).

Cut fit (``scale_fit="cut"``). Modular Bayesian inference (Liu, Bayarri & Berger, "Modularization in Bayesian
analysis", Bayesian Analysis 4, 2009; Plummer, "Cuts in Bayesian graphical models", Statistics and Computing 25,
2015; Jacob et al., "Better together? Statistical learning in models made of modules", 2017): the feedback from the
noise module to the mean module is cut. The sweeps fit the Gaussian model, :math:`q(\mathcal U^k)`,
:math:`q(\mathcal W)`, :math:`q(b)` and :math:`q(\tau)`, exactly as ``noise="gaussian"`` does (every weight 1);
then, with :math:`q(\mathcal U^k)\, q(\mathcal W)\, q(b)` held, the Student-t noise block is iterated to its fixed
point on the expected squared residuals of the training entries,

.. math::
    e_n = \mathbb E_q\big[(y_n - b - f_n)^2\big] = \big(y_n - \mathbb E[b + f_n]\big)^2 + \operatorname{Var}_q(b +
    f_n),

by :func:`~gpgeom.models.funbat.noise.cut_scale_fit`: coordinate ascent on the ELBO over :math:`q(\tau)`, the scales
and :math:`\nu` only (each step a coordinate maximum, so the ELBO of the noise block never decreases). The result is
a model of the same form as the joint one, so the predictive, the files and the BoTorch adapter are unchanged: the
mean and :math:`\operatorname{Var} f_*` are the Gaussian fit's, a new entry's noise is the scale mixture of its
group's :math:`q(\lambda_g)` where its coordinate on ``scale_mode`` was seen and of the prior
:math:`\mathrm{Gamma}(\nu/2, \nu/2)` elsewhere (:mod:`~gpgeom.models.funbat.predictive`). ``elbo()`` then reports the
Student-t model's bound at these factors. The cut is a choice, not the posterior of one model: the factors are not
the Student-t model's coordinate maximum (the mean ignores what the noise module learned), which is what keeps the
Gaussian model's squared-error accuracy. On heteroscedastic data whose noisy groups are signal, choose it when the
intervals matter as much as the mean; on outliers (entries that are not signal) the joint fit, which down-weights
them, gives the better mean.

Refit (``scale_fit="refit"``). The cut leaves the latent variance the Gaussian model's, computed with one noise
level: too large for a group whose noise is small, too small for a noisy one. ``"refit"`` takes the cut's scales as
known weights and continues the sweeps (up to ``max_sweeps`` more, the same convergence test, hyperparameter steps
included): every update is then the joint model's with :math:`q(\lambda_g)` held, so the factors, :math:`q(\tau)` and
the latent variance see each group's noise level, while the scales are not refitted to the new residuals (the joint
fit's spiral in which a down-weighted group is followed less and so looks noisier still). This is the two-stage
scheme of Kersting et al., "Most likely heteroscedastic Gaussian process regression", ICML 2007, with one
Gamma-distributed noise scale per group instead of a second GP on the log noise. The sweeps with held scales are
coordinate ascent on the same ELBO (the scales' factors held fixed), so without damping and hyperparameter steps
``elbo()`` never decreases in them.

The residuals are in-sample: a training entry's own value shaped the factors, so :math:`e_n` underestimates the
error at a held-out entry of the same group (on Beijing the training RMSE is 0.19 against a test RMSE of 0.24
after 30 sweeps on fold 4, ``benchmarks/results/funbat_stopping_trace.md``), and the fitted noise is correspondingly
small; the predictive adds :math:`\operatorname{Var} f_*`, which is large where
the data are few. ``"heldout"`` avoids this: the noise of the predictive is fitted on entries the factors have not seen.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gpgeom._warnings import user_stacklevel
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.funbat.entries import entry_marginals
from gpgeom.models.funbat.heldout import heldout_noise_fit, heldout_split
from gpgeom.models.funbat.noise import cut_scale_fit, scale_factors

__all__: list[str] = []

#: The degrees of freedom before the first update (learned dof).
DOF_INIT = 10.0


class _NoiseScales:
    r"""The scales' state of :class:`~gpgeom.models.funbat.model.FunBaT` (module docstring)."""

    def _init_scales(self, dof: float | None) -> None:
        r"""Student-t: :math:`q(\lambda_n)` (or :math:`q(\lambda_g)` with ``scale_mode``) at its prior
        :math:`\mathrm{Gamma}(\nu/2, \nu/2)` (every weight 1). Gaussian noise, and the sweeps of a cut fit: no scales
        (``_dof`` and ``_scale_alpha`` ``None``; the sweeps are the Gaussian model's)."""
        joint = self.noise == "student_t" and self.scale_fit == "joint"
        self._dof = float(dof) if joint else None
        self._scales_held = False
        self._scale_alpha = self._scale_beta = self._resid_sq = None
        self._heldout_noise = None  # scale_fit="heldout": (s2, dof), standardised units; rebuild_with presets it
        self._set_scale_groups()
        if self._dof is not None:
            G = self._N if self._scale_groups is None else self._scale_counts.shape[0]
            self._scale_alpha = torch.tensor(0.5 * self._dof, dtype=self.dtype, device=self.device)
            self._scale_beta = self._scale_alpha.expand(G).clone()
            if self._scale_groups is not None:
                self._scale_alpha = self._scale_beta.clone()
            self._resid_sq = torch.zeros(self._N, dtype=self.dtype, device=self.device)

    def _set_scale_groups(self) -> None:
        r"""The group of every training entry (``N`` indices of the unique coordinates of mode ``scale_mode``) and the
        ``G`` group sizes; both ``None`` without ``scale_mode``."""
        self._scale_groups = self._scale_counts = None
        if self.scale_mode is not None and self.noise == "student_t":
            t, idx = self._coords[self.scale_mode]
            self._scale_groups = idx
            self._scale_counts = torch.bincount(idx, minlength=t.shape[0]).to(self.dtype)

    def _finish_scales(self, progress: bool | None, callback: Any) -> None:
        r"""After the sweeps: nothing for ``scale_fit="joint"``; the cut scales for ``"cut"``; for ``"refit"`` the cut
        scales, then sweeps with them held (up to ``max_sweeps`` more, the same convergence test; module docstring)."""
        if self.scale_fit == "joint":  # also every Gaussian model (the constructor allows no other)
            return
        if self.scale_fit == "heldout":
            self._fit_heldout_noise(progress)
            return
        self._fit_cut_scales()
        if self.scale_fit == "refit":
            self._scales_held, self.converged = True, False
            self._run(len(self.history) + self.max_sweeps, progress, callback, final=True)

    def _fit_heldout_noise(self, progress: bool | None) -> None:
        r"""``scale_fit="heldout"``: the Gaussian model refitted without a seeded tenth of the entries, the Student-t
        noise :math:`(s^2, \nu)` that maximises the log density of those (:mod:`~gpgeom.models.funbat.heldout`), set
        on this model (:math:`\mathbb E[\tau^{-1}] = s^2`; the training entries' scale factors from their residuals,
        which only ``elbo()`` reads)."""
        if self._heldout_noise is None:
            fit_idx, held = heldout_split(self._N, self.seed)
            cfg = self._config()  # the same model in this one's units: coordinates normalised, targets standardised
            cfg.update(noise="gaussian", dof=None, scale_mode=None, scale_fit="joint", target_transform="none",
                       standardize=False, normalize_coordinates=False)  # fmt: skip
            sub = type(self)._from_config(cfg, dtype=self.dtype, device=self.device)
            sub._warn_unconverged = False  # its sweep budget is this fit's business: no ConvergenceWarning
            sub.fit(self._X[fit_idx], self._ys[fit_idx], progress=progress)
            mean, sd = sub._model_moments(self._X[held], False)
            s2, dof, _ = heldout_noise_fit(self._ys[held] - mean, sd.square(), self.dof)
            self._heldout_noise = (s2, dof)
        s2, dof = self._heldout_noise
        with torch.no_grad():
            mean, var, _ = entry_marginals(self, self._X)
        e = ((self._ys - mean).square() + var).clamp_min(0.0)
        tau_a = torch.tensor(self.noise_prior[0] + 0.5 * self._N, dtype=self.dtype, device=self.device)
        tau_b = s2 * (tau_a - 1.0)  # E[1/tau] = s2
        alpha, beta = scale_factors(e, tau_a / tau_b, dof, None, None)
        self._tau_a, self._tau_b, self._tau_data = tau_a, tau_b, None
        self._scale_alpha, self._scale_beta, self._dof, self._resid_sq = alpha, beta, float(dof), e

    def _fit_cut_scales(self) -> None:
        r"""``scale_fit="cut"``: the noise factors on the expected squared residuals of the fitted Gaussian model
        (module docstring); sets ``_tau_a``, ``_tau_b``, the scales, ``_dof`` and ``_resid_sq``."""
        with torch.no_grad():
            mean, var, _ = entry_marginals(self, self._X)
        e = ((self._ys - mean).square() + var).clamp_min(0.0)
        dof = self.dof if self.dof is not None else DOF_INIT
        tau_a, tau_b, alpha, beta, dof, converged = cut_scale_fit(
            e, self.noise_prior, dof, learn_dof=self.dof is None, groups=self._scale_groups, counts=self._scale_counts
        )
        if not converged:
            msg = "FunBaT's cut noise fit stopped at its round limit before its fixed point (scales not converged)."
            warnings.warn(msg, ConvergenceWarning, stacklevel=user_stacklevel())
        self._tau_a, self._tau_b, self._tau_data = tau_a, tau_b, None
        self._scale_alpha, self._scale_beta, self._dof, self._resid_sq = alpha, beta, dof, e
