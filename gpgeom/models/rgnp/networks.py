r"""The networks of RGNP (:mod:`gpgeom.models.rgnp`): the pointwise forward network of :math:`q_\alpha` on Fourier
features of the points (:class:`ForwardNet`, :class:`FourierFeatures`), and the inverse network of
:math:`q_\beta`, GICNet (:mod:`gpgeom.nn.gicnet`), as RGNP uses it
(:meth:`~gpgeom.models.rgnp.model.RGNP.inverse_dist`).

**Forward network** :math:`q_\alpha(\hat u \mid z, w, X)`: a pointwise MLP (SiLU) on [Fourier features of
:math:`x`, :math:`x`, normalised :math:`z`, normalised :math:`w`] giving at each point a mean :math:`\mu(x)`, a
variance :math:`\sigma^2(x) = a + (b - a)\,\mathrm{sigmoid}(\cdot)` and, for ``rank = k > 0``, a row
:math:`l(x) \in \mathbb R^k`: :math:`q_\alpha = \mathcal N(\mu, L L^\top + \operatorname{diag}\sigma^2)`. Evaluated
pointwise, these Gaussians are the marginals of one Gaussian process over the solution field
(:class:`gpgeom.engine.variational.LowRankGaussian`; :meth:`RGNP.predict` returns its lifted mean and standard
deviation, or a GPyTorch ``MultivariateNormal`` over any point set). Samples :math:`\hat u = \mu + L\varepsilon_k +
\sigma \odot \varepsilon` depend on :math:`x_i` only through row :math:`i`, so autograd derivatives of a sample are
pointwise.

**Inverse network** :math:`q_\beta(z \mid u(X), w)`: the grid-invariant convolutional encoder GICNet of the same
paper (:class:`gpgeom.nn.gicnet.GICNet`) on the lifted field values (not :math:`\hat u = (u - b)/d`, which the
authors' reference code uses and which blows up where :math:`d \to 0`) and :math:`w`; output a Gaussian over
:math:`z` with diagonal (``inverse_rank = 0``) or low-rank-plus-diagonal covariance, parameterised on the prior box
scaled to :math:`[-1, 1]` (:meth:`RGNP.predict_inverse`). Its layers are initialised variance-preserving for SiLU
(:func:`gpgeom.nn.gicnet.silu_init_`): PyTorch's default initialisation shrinks the field-dependent part of the
signal and the gradients of the layers below by about :math:`\sqrt{0.379/3} \approx 0.36` per SiLU layer (derived
there), so that at the reference code's sizes (3 lifting, 6 convolution and 6 head layers) the spread of the output
over different fields is 4e-8 to 5e-8 of the output and the lowest layer's gradient 1e-9 to 4e-9 of the top layer's
(3 seeds; 0.41-0.62 and 0.29-0.46 with the SiLU-preserving initialisation;
``tests/test_gicnet.py::test_deep_encoder_keeps_its_input_dependence_at_initialisation``): :math:`q_\beta` then
learnt only its bias and stayed at the prior mean. The forward network keeps PyTorch's default initialisation: its
small initial weights give a smooth initial field (the SiLU-preserving one trained the forward network to a much
larger error in an earlier trial at the reference code's sizes, not kept as a benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gpgeom._validation import check_positive
from gpgeom.engine.variational import LowRankGaussian, bounded_variance

__all__ = ["FourierFeatures", "ForwardNet"]


class FourierFeatures(nn.Module):
    r"""Per-axis Fourier features :math:`[\sin(2\pi f_k x_d), \cos(2\pi f_k x_d)]_{d, k}`, ``(..., D)`` ->
    ``(..., 2 D F)``; frequencies log-spaced in ``freq_range`` (units of 1/x), optionally trainable."""

    def __init__(self, dim: int, n_freqs: int, freq_range: tuple[float, float] = (1e-3, 2.0), trainable: bool = False):
        super().__init__()
        check_positive("n_freqs", n_freqs, integer=True)
        lo, hi = freq_range
        check_positive("freq_range[0]", lo)
        check_positive("freq_range[1]", hi)
        f = torch.logspace(math.log10(lo), math.log10(hi), n_freqs, dtype=torch.get_default_dtype())
        f = f[None, :].expand(dim, n_freqs).clone()  # (D, F)
        if trainable:
            self.freqs = nn.Parameter(f)
        else:
            self.register_buffer("freqs", f)
        self.out_features = 2 * dim * n_freqs

    def forward(self, x: Tensor) -> Tensor:
        arg = 2 * math.pi * x[..., :, None] * self.freqs  # (..., D, F)
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1).flatten(-2)


class ForwardNet(nn.Module):
    r"""Pointwise network of :math:`q_\alpha(\hat u \mid z, w, x)`: ``x`` ``(B, n, D)``, normalised ``z`` ``(B, dz)``
    and ``w`` ``(B, dw)`` -> :class:`LowRankGaussian` over :math:`\hat u` ``(B, n)`` (rank ``k`` factor
    ``(B, n, k)``)."""

    def __init__(
        self, dim: int, dim_z: int, dim_w: int, *, hidden: Sequence[int], rank: int, n_freqs: int,
        freq_range: tuple[float, float], trainable_freqs: bool, variance_bounds: tuple[float, float],
    ) -> None:  # fmt: skip
        super().__init__()
        self.features = FourierFeatures(dim, n_freqs, freq_range, trainable_freqs) if n_freqs > 0 else None
        n_in = dim + dim_z + dim_w + (self.features.out_features if self.features is not None else 0)
        sizes = (n_in, *hidden, 2 + rank)
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        self.mlp = nn.Sequential(*layers)
        self.rank = rank
        self.variance_bounds = variance_bounds

    def forward(self, x_scaled: Tensor, x: Tensor, zw: Tensor) -> LowRankGaussian:
        parts = [x_scaled]
        if self.features is not None:
            parts.append(self.features(x))
        parts.append(zw[:, None, :].expand(-1, x.shape[1], -1))
        out = self.mlp(torch.cat(parts, dim=-1))  # (B, n, 2 + k)
        var = bounded_variance(out[..., 1], *self.variance_bounds)
        factor = out[..., 2:] if self.rank > 0 else None
        return LowRankGaussian(out[..., 0], var, factor)
