r"""A cheap summary of a tensor's values, for telling whether a large tensor held by reference changed.

Caches and snapshots copy small tensors and hold large ones (more than :data:`COPY_LIMIT` elements) by identity,
in-place version counter and :func:`fingerprint`: :class:`gpgeom.engine.chunking.FactorCache` keys a training
factor on them, and :meth:`gpgeom.base.ModelContract._kept_on_error` tells a large buffer changed in place from one
written back with the same values.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["COPY_LIMIT", "fingerprint"]

#: Tensors up to this many elements are copied by caches and snapshots; larger ones are held (module docstring).
COPY_LIMIT = 2**16


def fingerprint(t: Tensor) -> Tensor:
    r"""A cheap summary of a held tensor's values (``O(numel)`` reads, no copy of it): float64 sum and norm and up
    to 64 evenly spaced entries. Writes through ``t.data`` (``param.data.copy_(...)``, ``X.data.mul_(2)``) do not
    bump ``t._version``: a cache keyed on the version alone kept a stale factor."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    x = t if t.is_floating_point() else t.to(torch.float64)
    parts = [x.sum(dtype=torch.float64).reshape(1), torch.linalg.vector_norm(x, dtype=torch.float64).reshape(1)]
    if t.is_contiguous() and t.numel():
        flat = x.view(-1)
        m = min(64, flat.numel())  # integer positions: float32 linspace rounds past the end above 2**24 entries
        idx = torch.arange(m, device=flat.device) * (flat.numel() - 1) // max(m - 1, 1)
        parts.append(flat[idx].to(torch.float64))
    return torch.cat(parts)
