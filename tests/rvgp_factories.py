"""Shared helpers of the RVGP tests: BoTorch inputs from cloud indices and dense block-diagonal matrices."""

import numpy as np
import torch

DT = torch.float64


def index_column(idx) -> torch.Tensor:
    """Cloud indices as the ``n x 1`` float64 BoTorch input of RVGP / LowRankSpectralGP."""
    return torch.as_tensor(np.asarray(idx), dtype=DT)[:, None]


def block_diagonal(per_point) -> np.ndarray:
    """The dense ``(q D, q D)`` block-diagonal matrix of a stack ``(q, D, D)`` of per-point blocks."""
    blocks = np.asarray(per_point)
    q, D, _ = blocks.shape
    out = np.zeros((q * D, q * D))
    for i in range(q):
        out[i * D : (i + 1) * D, i * D : (i + 1) * D] = blocks[i]
    return out
