r"""FunBaTCP: the CP special case of FunBaT.

Fang et al., "Functional Bayesian Tucker Decomposition for Continuous-indexed Tensor Data" (ICLR 2024) treat CP as
the Tucker model with the core fixed to the superdiagonal of ones (equal ranks :math:`R` in every mode):
:math:`y_n = b + \sum_r \prod_k u^k_r(x_{nk}) + \varepsilon_n`. The messages then need :math:`R^2` numbers per entry
instead of :math:`R^{2K}`, and there is no core to update (:mod:`~gpgeom.models.funbat.inference`).
"""

from __future__ import annotations

from typing import Any

from gpgeom.models.funbat.model import FunBaT

__all__ = ["FunBaTCP"]


class FunBaTCP(FunBaT):
    r"""The CP special case of :class:`~gpgeom.models.funbat.model.FunBaT`: :math:`y_n = \sum_r \prod_k u^k_r(x_{nk}) +
    \varepsilon_n` (core fixed to the superdiagonal of ones, no core update). Same arguments as ``FunBaT`` except
    ``decomposition``; ``rank`` is one int. Its files load through ``FunBaT.load`` as a ``FunBaTCP``."""

    def __init__(self, rank: int = 2, **kwargs: Any) -> None:
        if "decomposition" in kwargs:
            raise TypeError("FunBaTCP fixes decomposition='cp'; use FunBaT for Tucker.")
        if not isinstance(rank, int) or isinstance(rank, bool):
            raise TypeError(f"FunBaTCP needs one int rank (the same in every mode), got {rank!r}.")
        super().__init__(rank, decomposition="cp", **kwargs)

    @classmethod
    def _from_config(cls, cfg: dict[str, Any], **extra: Any) -> FunBaTCP:
        cfg = {k: v for k, v in cfg.items() if k != "decomposition"}
        return super()._from_config(cfg, **extra)
