r"""What :meth:`MMGP.fit <gpgeom.models.mmgp.MMGP.fit>` records and what :meth:`MMGP.predict
<gpgeom.models.mmgp.MMGP.predict>` returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from gpgeom.engine.fitting import FitResult
from gpgeom.models.mmgp.scalars import predictive_distributions, predictive_interval

__all__ = ["MMGPFitResult", "MMGPPrediction"]


@dataclass
class MMGPPrediction:
    r"""What :meth:`MMGP.predict` returns for ``n`` meshes with :math:`N_i` nodes, ``m`` fields, ``q`` scalars.

    Every array is a tensor of the model's dtype on its device.

    Attributes:
        fields: Predicted mean fields on the original nodes, ``n`` tensors ``N_i x m``.
        scalars: Predicted mean output scalars, ``n x q`` (log-normal means :math:`e^{m + v/2}` for the scalars of
            ``MMGP.scalar_transforms_`` ``"log"``, :mod:`~gpgeom.models.mmgp.scalars`).
        fields_std: Exact predictive standard deviations of the fields, ``n`` tensors ``N_i x m`` (``return_std``;
            including the GPs' learned noise with ``observation_noise`` and the POD truncation variance with
            ``truncation_variance``, both scaled by the mesh's geometry factor with ``geometry_variance``).
        scalars_std: Predictive standard deviations of the scalars, ``n x q`` (``return_std``; log-normal standard
            deviations for the ``"log"`` scalars: for their intervals use :meth:`scalar_interval`, not
            ``scalars +- 1.96 scalars_std``).
        field_samples: Monte Carlo draws, ``n`` tensors ``S x N_i x m`` (``n_samples = S > 0``); draws of different
            meshes are independent (each mesh's marginal).
        scalar_samples: Monte Carlo draws of the scalars, ``S x n x q`` (log-normal for the ``"log"`` ones).
        latent: The GP inputs :math:`z = (\xi, \mu)`, ``n x (n_g + p)``.
        ood_score: The out-of-distribution score of every mesh, ``(n,)``: the boundary energy of its geometry POD
            residual over the training shapes' mean out-of-sample value (:meth:`MMGP.ood_score`,
            :mod:`~gpgeom.models.mmgp.unexplained`); about 1 in the training family, larger for shapes the geometry
            modes cannot represent. It scales the unexplained variance terms (``geometry_variance``).
        timings: Wall seconds per stage (``morph``, ``transfer``, ``gp``, ``decode``), summed over the meshes.
        cpu_timings: The same in CPU seconds of this process (``time.process_time``; robust on a shared machine).
        scalars_gp_mean: The GP's predictive mean of the scalars in GP units, ``n x q``: of :math:`t = \log w` for
            the scalars of ``scalar_transforms`` ``"log"``, of :math:`w` for the others.
        scalars_gp_var: The GP's predictive variance in GP units, ``n x q`` (``return_std``; with the learned noise
            as ``scalars_std``): the scalars' predictive distribution is :math:`\mathcal N(m, v)` of :math:`t`
            (:meth:`scalar_distributions`).
        scalar_transforms: ``"log"`` or ``"none"`` for every scalar (``MMGP.scalar_transforms_``).

    The last three are ``None`` in a prediction built without them (they default to ``None``).
    """

    fields: list[Tensor]
    scalars: Tensor
    fields_std: list[Tensor] | None = None
    scalars_std: Tensor | None = None
    field_samples: list[Tensor] | None = None
    scalar_samples: Tensor | None = None
    latent: Tensor | None = None
    ood_score: Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    scalars_gp_mean: Tensor | None = None
    scalars_gp_var: Tensor | None = None
    scalar_transforms: list[str] | None = None

    def _gaussian_moments(self, method: str) -> tuple[Tensor, Tensor, list[str]]:
        r"""``(scalars_gp_mean, scalars_gp_var, scalar_transforms)``; ValueError naming ``method`` if one is missing."""
        if self.scalars_gp_var is None or self.scalars_gp_mean is None or self.scalar_transforms is None:
            why = (
                "it was built without the scalars' GP moments"
                if self.scalars_gp_mean is None or self.scalar_transforms is None
                else "predict ran without return_std"
            )
            raise ValueError(
                f"MMGPPrediction.{method} needs the scalars' predictive variances, and {why}: call "
                "MMGP.predict(..., return_std=True)."
            )
        return self.scalars_gp_mean, self.scalars_gp_var, self.scalar_transforms

    def scalar_distributions(self) -> list[Distribution]:
        r"""The predictive distribution of every output scalar, ``q`` :mod:`torch.distributions` objects of batch
        shape ``(n,)``: a :class:`~torch.distributions.LogNormal` (:math:`\log w \sim \mathcal N(m, v)`) for the
        scalars of ``scalar_transforms`` ``"log"``, a :class:`~torch.distributions.Normal` for the others
        (:func:`~gpgeom.models.mmgp.scalars.predictive_distributions`).

        Their ``mean`` and ``stddev`` are ``scalars[:, j]`` and ``scalars_std[:, j]``; ``icdf``, ``cdf``,
        ``log_prob`` and ``sample`` are exact. Needs ``predict(..., return_std=True)`` (ValueError otherwise).
        """
        return predictive_distributions(*self._gaussian_moments("scalar_distributions()"))

    def scalar_interval(self, level: float = 0.95) -> tuple[Tensor, Tensor]:
        r"""Equal-tailed ``level`` predictive intervals of the output scalars: ``(lower, upper)``, each ``n x q``.

        Exact for the predictive distribution (:meth:`scalar_distributions`): the log-normal quantiles
        :math:`e^{m \pm z\sqrt v}` for the scalars of ``scalar_transforms`` ``"log"`` (skewed: not
        ``scalars +- z * scalars_std``, whose lower end can be negative), :math:`m \pm z \sqrt v` for the others,
        :math:`z = \Phi^{-1}((1 + \ell)/2)` (:func:`~gpgeom.models.mmgp.scalars.predictive_interval`). Score
        them with :func:`gpgeom.metrics.interval_coverage`.

        Args:
            level: Nominal probability of the interval, in (0, 1) (ValueError otherwise, TypeError for a
                non-number).

        Raises:
            ValueError: the prediction has no scalar variances (``predict`` without ``return_std=True``).
        """
        return predictive_interval(*self._gaussian_moments("scalar_interval()"), level)


@dataclass
class MMGPFitResult:
    r"""What :meth:`MMGP.fit` did (``model.fit_result_``).

    Attributes:
        gps: The :class:`~gpgeom.engine.fitting.FitResult` of every GP of ``model.gps_``, in order.
        timings: Wall seconds per stage of the fit (``morph``, ``transfer``, ``pod``, ``gp``).
        cpu_timings: The same in CPU seconds of this process.
    """

    gps: list[FitResult]
    timings: dict[str, float] = field(default_factory=dict)
    cpu_timings: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        r"""The sum of the GPs' final losses (each a negative log marginal likelihood plus log priors per point)."""
        return float(sum(r.loss for r in self.gps))

    @property
    def converged(self) -> bool:
        r"""Whether every GP's winning attempt met its convergence test."""
        return all(r.converged for r in self.gps)

    def to_state(self) -> dict[str, Any]:
        r"""Plain Python values for a model file."""
        return {
            "gps": [dataclasses.asdict(r) for r in self.gps],
            "timings": dict(self.timings),
            "cpu_timings": dict(self.cpu_timings),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MMGPFitResult:
        r"""The inverse of :meth:`to_state`."""
        return cls(
            gps=[FitResult(**r) for r in state["gps"]],
            timings=dict(state["timings"]),
            cpu_timings=dict(state["cpu_timings"]),
        )
