r"""What :meth:`MMGP.fit <gpgeom.models.mmgp.MMGP.fit>` records and what :meth:`MMGP.predict
<gpgeom.models.mmgp.MMGP.predict>` returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from gpgeom.engine.fitting import FitResult

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
        scalars_std: Predictive standard deviations of the scalars, ``n x q`` (``return_std``).
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
