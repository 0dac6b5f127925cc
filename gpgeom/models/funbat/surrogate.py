r"""FunBaT as a BoTorch surrogate over the continuous coordinates, with joint posteriors, conditioning and fantasies.

**The Gaussian it uses.** Under FunBaT's factorised posterior :math:`q(b)\, q(\mathcal W) \prod_k q(\mathcal U^k)`
(Fang et al., ICLR 2024) an entry is a multilinear function of Gaussian factors, so the entries are *not* jointly
Gaussian. The adapter uses the Gaussian with their exact first and second moments under :math:`q`
(:mod:`~gpgeom.models.funbat.entries`): for entries :math:`f = b + f_W` at :math:`x` and :math:`f'` at :math:`x'`,

.. math::
    \operatorname{Cov}(f, f') = v_b + \sum_{r, r'} \mathbb E[W_r W_{r'}]
    \prod_k \mathbb E\big[u^k_{r_k}(x_k)\, u^k_{r'_k}(x'_k)\big] - \mathbb E f_W\, \mathbb E f'_W,

with the latent functions' cross-coordinate covariances :math:`\operatorname{Cov}_q(u^k(s), u^k(t))` from the
state-space smoother's joint posterior, propagated along the chain of training coordinates
(:mod:`~gpgeom.models.funbat.conditional`). Its diagonal is :meth:`~gpgeom.models.funbat.model.FunBaT.predict`'s
variance; entries that share a latent function (the same or nearby coordinates in some mode) are correlated.

**Conditioning is an approximation.** ``condition_on_observations`` (and hence ``fantasize``) is exact Gaussian
conditioning of this moment-matched Gaussian (:class:`~gpgeom.botorch.gaussian.GaussianSurrogate`: Bayes' rule with the
noise variance :math:`\mathbb E[\tau^{-1}]`; for Student-t noise the t variance :math:`\mathbb E[\tau^{-1}] \nu/(\nu -
2)`, a moment match of the scale mixture, :mod:`~gpgeom.models.funbat.noise`; with scales shared along a mode, the
variance of the entry's group where its coordinate was seen), not a refit: a refit would change the EP messages of every
mode, the core and the noise. ``tests/test_funbat.py`` measures the difference against
:meth:`~gpgeom.models.funbat.model.FunBaT.rebuild_with` (FunBaT refitted on the union with the same hyperparameters held
fixed, 40 sweeps from a base swept near its fixed point) on a rank-2, two-mode tensor of 400 entries (noise sd 0.05):
the largest difference of the conditioned posterior at the new and held-out points, relative to the largest predictive
variance (standard deviation for means), is 0.019-0.073 for two new entries drawn from the predictive, while
conditioning moves the posterior by 0.09-0.55 on that scale; the tests use a tolerance of 0.15. (Mean-field coordinate
ascent drifts slowly along the Tucker scale/rotation ridge: the model fitted with ``tol=1e-4`` (the default before 1e-3)
moves by 0.09 on that scale when swept on without new data, so a comparison with a refit needs a base near its fixed
point.) Gradients flow to the inputs (``optimize_acqf`` works).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gpgeom.botorch.gaussian import GaussianSurrogate
from gpgeom.botorch.lognormal import Log
from gpgeom.engine.sites import gain_products
from gpgeom.models.funbat.entries import entry_joint
from gpgeom.models.funbat.noise import noise_factor

__all__ = ["FunBaTBoTorchModel"]


class FunBaTBoTorchModel(GaussianSurrogate):
    r"""A fitted :class:`~gpgeom.models.funbat.model.FunBaT` as a single-output BoTorch model over the coordinates.

    ``posterior(X)`` for ``X`` of shape ``batch x q x K`` (original coordinate units) is the joint moment-matched
    Gaussian of the entries (module docstring) in the original units of ``y``; ``predict`` gives its marginals (equal to
    :meth:`~gpgeom.models.funbat.model.FunBaT.predict`). ``condition_on_observations`` and ``fantasize`` are Bayes' rule
    on that Gaussian (an approximation of a refit; module docstring for its measured error). With
    ``target_transform="log"`` the Gaussian is that of :math:`\log y` and the adapter carries BoTorch's ``Log``
    outcome transform: ``posterior`` is a ``TransformedPosterior`` (log-normal marginals, samples :math:`e^{\cdot}`
    of the Gaussian's) and ``condition_on_observations`` takes ``Y > 0`` in the original units; a noise tensor (of
    ``posterior``, ``condition_on_observations``, ``fantasize``) is a variance of :math:`\log y`.

    Args:
        funbat: The fitted model (shared, not copied: a later ``fit`` or ``to`` of it is what the adapter predicts
            with).
    """

    def __init__(self, funbat: Any) -> None:
        super().__init__()
        funbat._check_fitted()
        self.funbat = funbat
        self._base_num_outputs = 1
        self.register_buffer("_anchor", torch.zeros((), dtype=funbat.dtype, device=funbat.device))
        self._tables_key: list[tuple[Tensor, int]] = []  # the gains the tables were built from (_gain_tables)
        self._tables_cache: list[Any] = []
        if funbat.target_transform == "log":  # the Gaussian is that of log y: BoTorch's Log outcome transform
            self.outcome_transform = Log().eval()
        # built in eval mode, as it stays: it only predicts (``posterior`` calls ``eval()``, as BoTorch's models do,
        # which flipped the ``training`` flag of a new adapter at its first prediction)
        self.eval()

    @property
    def _tables(self) -> list[Any]:
        r"""The smoothers' gain products of every mode (:func:`~gpgeom.engine.sites.gain_products`), rebuilt when the
        FunBaT's posterior changed since they were built (a new ``fit``, ``to``: the adapter shares the model, so its
        mean would otherwise follow the new posterior and its covariance the old one)."""
        self.funbat._follow_kernels()  # kernels changed by hand: the modes re-smoothed first (FunBaT._check_fitted)
        gains = [md.post.gain for md in self.funbat._modes]
        key = self._tables_key
        if len(key) != len(gains) or any(g is not k or g._version != v for g, (k, v) in zip(gains, key, strict=True)):
            self._tables_cache = [gain_products(g.detach()) for g in gains]
            self._tables_key = [(g, g._version) for g in gains]
        return self._tables_cache

    def _check_inputs(self, X: Tensor) -> Tensor:
        fb = self.funbat
        fb._follow_kernels()
        X = fb._check_X(X, K=len(fb.ranks))
        if X.dim() < 2:
            raise ValueError(f"`X` must be `batch x q x K`, got shape {tuple(X.shape)}.")
        return X

    def _base_mean(self, X: Tensor) -> Tensor:
        fb = self.funbat
        mean, _, _ = fb._predict_std_units(X)
        return (mean * fb.y_std + fb.y_mean).to(mean.dtype).unsqueeze(-1)

    def _base_variance(self, X: Tensor) -> Tensor:
        fb = self.funbat
        _, var, _ = fb._predict_std_units(X)
        return (var * fb.y_std.square().to(var.dtype)).unsqueeze(-1)

    def _base_covariance(self, X1: Tensor, X2: Tensor) -> Tensor:
        fb = self.funbat
        K = X1.shape[-1]
        batch = torch.broadcast_shapes(X1.shape[:-2], X2.shape[:-2])
        q1, q2 = X1.shape[-2], X2.shape[-2]
        B = math.prod(batch)  # not -1: a reshape of 0 points (q = 0, conditioning on no observation) is ambiguous
        X1n = fb._normalise_query(X1.expand(*batch, q1, K), "X").reshape(B, q1, K)
        X2n = fb._normalise_query(X2.expand(*batch, q2, K), "X").reshape(B, q2, K)
        _, cov = entry_joint(fb, self._tables, X1n, X2n)
        return (cov * fb.y_std.square().to(cov.dtype)).reshape(*batch, q1, q2)

    def _noise_variance(self, X: Tensor) -> Tensor:
        fb = self.funbat
        noise = fb._tau_b / (fb._tau_a - 1.0) * noise_factor(fb._dof)  # Student-t: its variance
        noise = fb._new_entry_noise(X, noise)  # scales shared along a mode: the entry's group's, where seen
        return (noise * fb.y_std.square().to(noise.dtype)).expand(X.shape[:-1]).unsqueeze(-1)
