r"""GICNet: a grid-invariant convolutional encoder of fields sampled at arbitrary points.

The grid-invariant convolutional network (GICNet) introduced as the encoder of the inverse map
:math:`q_\beta(z \mid u(X), w)` of Random Grid Neural Processes (Vadeboncoeur, Akyildiz, Kazlauskaite, Girolami,
Cirak, ICML 2023, arXiv 2301.11040). It maps a set of :math:`n` scattered observations
:math:`\{(x_i, u_i)\}_{i=1}^n`, :math:`x_i \in \Omega = \prod_d [a_d, b_d] \subset \mathbb{R}^D`,
:math:`D \in \{1, 2, 3\}`, together with known parameters :math:`w \in \mathbb{R}^p`, to a vector of
``out_features`` numbers, so that the result does not depend on the order of the points and only weakly on how
many there are and where they lie.

Stages (shapes for a batch of :math:`B` sets, :math:`P` lifted channels, grid :math:`G = R_1 \times \dots \times R_D`):

1. **Lifting** (pointwise MLP, shared weights): :math:`h_i = \mathrm{MLP}(u_i) \in \mathbb{R}^P`;
   ``(B, n, C) -> (B, n, P)``.
2. **Aggregation onto the fixed grid** :math:`g \in G` (one lengthscale vector :math:`\ell_p \in \mathbb{R}^D_{>0}`
   per channel, squared-exponential kernel :math:`k_p(g, x) = \prod_d \exp(-(g_d - x_d)^2 / 2\ell_{pd}^2)`), output
   :math:`v_p(g)`, ``(B, P, R_1, ..., R_D)``, by one of two rules (``aggregation``):

   **"quadrature"** (default): a quadrature of the kernel average of the field over the *domain*. Per dimension,
   :math:`Q_d = s_d (R_d - 1) + 1` equispaced quadrature nodes on :math:`[a_d, b_d]` (:math:`2 s_d + 1` when
   :math:`R_d = 1`; :math:`s_d` = ``quadrature_factor``, default 4, 2, 1 for :math:`D` = 1, 2, 3), so that every
   grid node is a quadrature node; nodes :math:`y_j` (:math:`j` a multi-index), trapezoidal weights
   :math:`\omega_j = \prod_d \omega_{d, j_d}` (:math:`1/(Q_d - 1)`, halved at both ends) and cells :math:`C_j`
   (the box of half a spacing :math:`\delta_d = (b_d - a_d)/(Q_d - 1)` around :math:`y_j`, clipped to
   :math:`\Omega`). The lifted field is resampled on the nodes and smoothed there:

   .. math::
       \tilde h_p(y_j) = \frac{1}{|I_j|} \sum_{i \in I_j} h_{ip}, \qquad
       v_p(g) = \frac{\sum_j \omega_j\, k_p(g, y_j)\, \tilde h_p(y_j)}{\sum_j \omega_j\, k_p(g, y_j)},
       \qquad \text{(R), (Q)}

   with :math:`I_j` the points inside :math:`C_j` when there are any, else the points nearest to :math:`y_j`
   (distances in coordinates scaled to :math:`[0, 1]^D`; exact ties averaged). :math:`\tilde h_p` is the
   nearest-neighbour (Voronoi) interpolant of the :math:`h_{ip}` where the points are sparser than the cells, and
   their cell means where they are denser. Read as a weighted aggregation over the points, (Q) is
   :math:`v_p(g) = \sum_i W_{ip}(g)\, h_{ip} / \sum_i W_{ip}(g)` with :math:`W_{ip}(g) = \sum_{j: i \in I_j}
   \omega_j k_p(g, y_j) / |I_j|`: each point weighs the kernel mass of the part of the domain it represents
   (its discretised Voronoi cell, or its share of its cell), not 1/n. The weights sum to
   :math:`\sum_j \omega_j k_p(g, y_j)`, whatever the points, so (Q) is the trapezoidal rule for

   .. math::
       v^*_p(g) = \frac{\int_\Omega k_p(g, x)\, h_p(x)\, dx}{\int_\Omega k_p(g, x)\, dx}

   applied to :math:`\tilde h_p`: an integral over :math:`\Omega`, not an average over the points, so regions where
   the points cluster get no extra weight and no density floor is needed. Kernel and weights factorise over the
   dimensions, so (Q) is :math:`D` contractions with the row-normalised factors :math:`\omega_{d,j}\,
   e^{-(g_r - y_j)^2 / 2\ell_{pd}^2} / \sum_{j'} (\cdot)` (a softmax: finite for any :math:`\ell`; as
   :math:`\ell \to 0`, :math:`v_p(g) \to \tilde h_p(g)`). The points enter only through the cell index and the
   nearest-point search, so :math:`v_p` has no gradient with respect to :math:`x` (it does with respect to
   :math:`u`, the lifting weights and :math:`\ell`). Cost :math:`O(B\, n \prod_d Q_d)` for the nearest-point search
   (chunked to bound the memory) plus :math:`O(B P \prod_d Q_d \sum_d R_d)` for the contractions.

   **"points"**: the Nadaraya-Watson average over the points of the earlier versions,

   .. math::
       \rho_p(g) = \frac{1}{n\, c_p} \sum_{i=1}^n k_p(g, x_i), \qquad
       v_p(g) = \frac{\frac{1}{n\, c_p} \sum_{i=1}^n k_p(g, x_i)\, h_{ip}}{\rho_p(g) + \varepsilon},

   with :math:`c_p = \prod_d \frac{\ell_{pd}\sqrt{2\pi}}{b_d - a_d}\,
   \mathrm{erf}\bigl(\frac{b_d - a_d}{2\sqrt{2}\,\ell_{pd}}\bigr)`, the mean of :math:`k_p(g, x)` over
   :math:`x \sim U(\Omega)` for :math:`g` at the centre of :math:`\Omega`. So the **density** :math:`\rho_p` is about
   1 inside the domain for uniformly drawn points, whatever :math:`n` and :math:`\ell_p`, and :math:`\varepsilon`
   (``eps``, default 1e-6) is a *relative* density floor.

   With ``density_channel=True`` (either rule) the densities :math:`\rho_p` are appended as :math:`P` channels:
   output ``(B, 2P, ...)``, values first.
3. **Grid coordinates** rescaled to :math:`[-1, 1]` appended as :math:`D` channels.
4. **CNN**: ``Conv{D}d`` layers (``same`` padding, SiLU), each followed by a factor-2 pooling along every axis that
   still has at least 2 cells (``pool="avg"``, ``"max"`` or ``"none"``).
5. **Head**: MLP (SiLU) on ``[flatten(CNN features), w]`` (with ``count_feature``, also
   :math:`\log(n / n_{ref})`, :math:`n` the number of real points of each set) giving ``(B, out_features)``.

Why the output is (nearly) invariant to the set of points:

* **Order**: every point enters only through sums over :math:`i` (cell means, ties, kernel sums), so a permutation
  changes the result by float round-off only.
* **Replication**: replicating every point :math:`m` times leaves the cell means, the nearest-point values and
  (both sums being divided by :math:`n` before they are combined) the "points" rule unchanged, so the output is
  unchanged *exactly* (up to round-off). With ``count_feature=True`` the head is also given :math:`\log(n / n_{ref})`
  (``count_reference``), the one input through which the number of points acts: an inverse posterior's spread
  should narrow with more observations, which the aggregated values alone cannot tell (RGNP switches it on when it
  trains on a range of grid sizes).
* **Number, "quadrature"**: for points of density :math:`p > 0` on :math:`\Omega`, every cell eventually holds
  points and :math:`\tilde h_p(y_j) \to \bar h_{pj}`, the :math:`p`-weighted mean of :math:`h_p` over :math:`C_j`,
  so :math:`v_p \to v^\infty_p = \sum_j \omega_j k_p(g, y_j)\, \bar h_{pj} / \sum_j \omega_j k_p(g, y_j)`, a limit
  that depends neither on :math:`n` nor (beyond :math:`O(\delta^2)` inside a cell) on the sampling density. The
  deviation is :math:`v_p - v^\infty_p = \sum_j a_j e_j` with normalised weights :math:`a_j \ge 0`,
  :math:`\sum_j a_j = 1`, and :math:`e_j = \tilde h_p(y_j) - \bar h_{pj}`; with :math:`L` a Lipschitz constant of
  :math:`h_p`: for *sparse* sets (most cells empty) :math:`|e_j| \le L (r_j + \tfrac12 \|\delta\|)`, :math:`r_j`
  the distance from :math:`y_j` to the nearest point, of order :math:`(|\Omega|/n)^{1/D}`, so the deviation falls
  like :math:`n^{-1/D}` (:math:`1/n` in 1-D), and errors of opposite signs on the two sides of a point partly cancel
  in the kernel average; for *dense* sets (:math:`m_j \approx n |C_j| / |\Omega|` points per cell) :math:`e_j` is
  the error of a sample mean over a cell, standard deviation about :math:`L \delta / \sqrt{12 m_j}` per dimension
  and independent between cells, and the kernel averages about :math:`(2\sqrt\pi\, \ell / \delta)^D` of them: the
  deviation falls like :math:`n^{-1/2}`, a factor of order :math:`\delta / \ell = 1/s` below the Monte Carlo error
  of the "points" rule.
* **Number, "points"**: both sums are sample means and converge (law of large numbers) to
  :math:`\int k_p(g, x)\, p(x)\, dx` and :math:`\int k_p(g, x)\, h_p(x)\, p(x)\, dx`, a kernel-weighted local average
  of :math:`h_p` weighted by the sampling density; the deviation of a finite set is the Monte Carlo error of these
  means, of order :math:`L \ell / \sqrt{n\, \ell^D p(g)}`: large when a kernel width holds few points.
* **Measured** at initialisation (default lengthscale = one grid spacing, 20-node grid on :math:`[-1, 1]`, smooth
  fields, default initialisation, median over 10 network seeds of the mean over 8 draws of uniform points), change
  relative to the spread over a family of different fields, grid values / output, against 10 000 points:
  "quadrature" 9.0% / 5.1% at 30 points, 1.5% / 1.2% at 100, 0.68% / 0.58% at 300, 0.20% / 0.16% at 3000;
  "points" 20% / 11%, 9.4% / 5.9%, 5.1% / 3.1%, 1.7% / 1.1% (the :math:`n^{-1/2}` of a Monte Carlo error).
  Between 30 and 300 points (40 network seeds): "quadrature" 9.7% (median), 17% (worst) for the grid values and
  5.7%, 13% for the output; "points" 21%, 27% and 13%, 21%. What remains at 30 points is mostly
  the information that is not there: a draw that leaves the outer 20% of the interval empty changes the output by
  50% under either rule (a piecewise-linear interpolant instead of :math:`\tilde h` gains only 0.2 points). A
  lengthscale far below the point spacing (the reference's initial :math:`10^{-3}`) makes the "points" rule jump
  between nearest points and hit the density floor; "quadrature" then returns :math:`\tilde h_p(g)`. Trained as
  RGNP's inverse encoder (nonlinear Poisson, 700 Adam steps at the CPU sizes of the RGNP benchmark, 5 seeds), the
  posterior mean of :math:`z` from 30 and from 300 sensors of the same fields differs by 15-20% of its spread over
  the fields with "quadrature", 23-30% with "points", at a similar inverse error (z NSE median 0.72 vs 0.77).
* **Density channel**: :math:`\rho_p` estimates the sampling density itself, whose relative Monte Carlo error
  :math:`1/\sqrt{n c_p}` is about 50% for 30 points at one grid spacing. For the i.i.d. uniform random grids of RGNP
  it carries only this sampling noise (at initialisation the change of the output between 30 and 300 points is then
  about ten times its spread over different fields), so it is **off by default**; switch it on when the sampling
  pattern is informative (gappy observation sets, as in ConvCNP's SetConv).

Padding: sets of different sizes are batched by padding to a common :math:`n` and passing ``mask`` (``True`` for
real points). Padded entries are ignored completely (their values may be anything, even NaN); :math:`n` in the
formulas above is the number of real points of each set.

Differences from the authors' reference TensorFlow code: the quadrature aggregation (the reference takes the
unnormalised kernel sum over the points with an absolute floor 1e-6; the "points" rule normalises it by :math:`n`
with a relative floor), the optional density channel,
per-dimension lengthscales, ``same`` padding with pooling instead of ``valid`` convolutions, a plain ``Conv3d`` in 3-D
instead of the factorised 2-D + 1-D convolution, and one MLP on ``[features, w]`` instead of the DeepONet-style
branch/trunk head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from gpytorch.constraints import Positive
from torch import Tensor, nn

from gpgeom._validation import check_option, check_positive, check_tensor

__all__ = ["GICNet", "SILU_GAIN", "silu_init_"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def _per_dim(name: str, value: object, dim: int) -> tuple:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value,) * dim
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == dim:
        return tuple(value)
    raise ValueError(f"`{name}` must be a number or a sequence of {dim} numbers (one per dimension), got {value!r}.")


def _int_tuple(name: str, value: object, *, allow_empty: bool = False) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, Sequence) or isinstance(value, str) or (not allow_empty and len(value) == 0):
        raise ValueError(
            f"`{name}` must be a {'possibly empty ' if allow_empty else 'non-empty '}sequence of "
            f"positive ints, got {value!r}."
        )
    for i, v in enumerate(value):
        check_positive(f"{name}[{i}]", v, integer=True)
    return tuple(value)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers with SiLU in between (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def _silu_gain() -> float:
    r""":math:`1 / \sqrt{\mathbb E[\mathrm{SiLU}(Z)^2]}`, :math:`Z \sim \mathcal N(0, 1)` (about 1.6766), by
    80-node Gauss-Hermite quadrature (probabilists' weight :math:`e^{-z^2/2}`)."""
    z, wq = np.polynomial.hermite_e.hermegauss(80)
    silu = z / (1.0 + np.exp(-z))
    return float(1.0 / math.sqrt((wq * silu**2).sum() / math.sqrt(2.0 * math.pi)))


SILU_GAIN = _silu_gain()


def silu_init_(layers: Sequence[nn.Module], first_gain: float = 1.0) -> None:
    r"""Variance-preserving initialisation of a chain of ``Linear``/``Conv`` layers separated by SiLU (in place).

    Weights :math:`W \sim \mathcal N(0, g^2 / \mathrm{fan\_in})` (``fan_in`` = input features, or input channels
    times the kernel volume), biases 0. A pre-activation :math:`y = W a` then has :math:`\mathbb E[y^2] =
    g^2\, \mathbb E[a^2]`. For a layer fed by a SiLU of standard normal pre-activations
    :math:`\mathbb E[a^2] = \mathbb E[\mathrm{SiLU}(Z)^2] \approx 0.3558`, so :math:`g` = :data:`SILU_GAIN`
    :math:`\approx 1.677` keeps :math:`\mathbb E[y^2] = 1` from layer to layer; the mean squared derivative
    :math:`\mathbb E[\mathrm{SiLU}'(Z)^2] \approx 0.379` then makes the layer-to-layer Jacobian gain
    :math:`g^2 \cdot 0.379 \approx 1.07`, so input-dependent variations and gradients neither vanish nor explode
    through many layers. PyTorch's default (``kaiming_uniform_(a=sqrt(5))``, :math:`\mathrm{Var}\,W =
    1/(3\,\mathrm{fan\_in})`) gives :math:`g^2 = 1/3` instead: every SiLU layer multiplies the input-dependent part
    of the signal, and the gradients of the layers below, by about :math:`\sqrt{0.379/3} \approx 0.36`.
    The first layer (fed by the raw inputs, not by a SiLU) uses ``first_gain``.
    """
    first = True
    for layer in layers:
        if not isinstance(layer, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
            continue
        fan_in = layer.weight[0].numel()
        gain = first_gain if first else SILU_GAIN
        with torch.no_grad():
            layer.weight.normal_(0.0, gain / math.sqrt(fan_in))
            if layer.bias is not None:
                layer.bias.zero_()
        first = False


class GICNet(nn.Module):
    r"""Grid-invariant convolutional encoder of scattered fields (see the module docstring for the equations).

    Args:
        dim: Dimension :math:`D` of the points (1, 2 or 3; use 2 for space-time 1-D problems, 3 for 2-D + time).
        in_channels: Number :math:`C` of field components per point.
        out_features: Size of the output vector (e.g. ``2 * dim_z`` for the mean and log-variance of :math:`z`).
        domain: ``(lower, upper)``, each a number or a sequence of ``dim`` numbers; the box :math:`\Omega`.
        grid_size: Grid cells :math:`R_d` per dimension (int or sequence of ``dim`` ints); grid nodes are
            ``linspace(lower_d, upper_d, R_d)`` (the centre when :math:`R_d = 1`). Default 20 (1-D), 10 (2-D, 3-D).
        param_features: Number :math:`p \ge 0` of known parameters :math:`w` fed to the head.
        lift_channels: Number :math:`P` of lifted channels (each gets its own lengthscales).
        lift_hidden: Hidden widths of the lifting MLP.
        cnn_channels: Output channels of the convolution layers (may be empty: no CNN).
        kernel_size: Odd convolution kernel size.
        pool: ``"avg"``, ``"max"`` or ``"none"``: pooling after each convolution.
        mlp_hidden: Hidden widths of the head MLP.
        init_lengthscale: Initial lengthscales, in the units of :math:`x`: ``None`` (one grid spacing per
            dimension, every channel), a positive number, a pair ``(lo, hi)`` (log-spaced over the
            channels, same for every dimension) or a tensor broadcastable to ``(P, D)``.
        density_channel: Append the normalised densities :math:`\rho_p(g)` as :math:`P` further channels (off by
            default: for random uniform points they are sampling noise, see the module docstring).
        aggregation: ``"quadrature"`` (default): the quadrature (R), (Q) of the kernel average over the domain,
            which converges as the number of points grows; ``"points"``: the Nadaraya-Watson average over the points
            of earlier versions (its change with the number of points is a Monte Carlo error; kept for models
            trained with it).
        quadrature_factor: Quadrature cells :math:`s_d` per grid cell (int or sequence of ``dim`` ints; default
            4 in 1-D, 2 in 2-D, 1 in 3-D). Larger values move the limit closer to the integral :math:`v^*_p` at
            a cost proportional to :math:`\prod_d s_d`.
        eps: Relative density floor :math:`\varepsilon` of the ``"points"`` ratio.
        domain_tol: Points may exceed the box by ``domain_tol * (upper - lower)`` (round-off) before an error.
        weight_init: ``"silu"`` (default): the variance-preserving initialisation :func:`silu_init_` of the lifting
            MLP, the CNN and the head; ``"torch"``: PyTorch's default initialisation, under which the
            input-dependent part of the output and the gradients of the lower layers shrink by about 0.36 per
            layer (at the reference's sizes, 3 + 6 + 6 layers, the output hardly depends on the field and the
            first lifting layer's gradient is 1e-9 to 4e-9 of the top layer's;
            ``tests/test_gicnet.py::test_deep_encoder_keeps_its_input_dependence_at_initialisation``).
        count_feature: Give the head :math:`\log(n / n_{ref})` as a further input, :math:`n` the number of real
            points of each set (off by default: the output is then invariant to replicating the points).
        count_reference: :math:`n_{ref}` (> 0), the number of points at which that input is 0.

    Shapes in :meth:`forward`: ``x`` ``(B, n, D)``, ``u`` ``(B, n, C)``, ``w`` ``(B, p)``, ``mask`` ``(B, n)``;
    output ``(B, out_features)``. The module works on any device and floating dtype it is moved to; inputs are
    converted to the dtype of its parameters after validation.
    """

    def __init__(
        self,
        dim: int,
        in_channels: int,
        out_features: int,
        domain: tuple[float | Sequence[float], float | Sequence[float]],
        *,
        grid_size: int | Sequence[int] | None = None,
        param_features: int = 0,
        lift_channels: int = 16,
        lift_hidden: Sequence[int] = (32, 32),
        cnn_channels: Sequence[int] = (32, 32, 32),
        kernel_size: int = 3,
        pool: str = "avg",
        mlp_hidden: Sequence[int] = (128, 128),
        init_lengthscale: float | tuple[float, float] | Tensor | None = None,
        density_channel: bool = False,
        aggregation: str = "quadrature",
        quadrature_factor: int | Sequence[int] | None = None,
        eps: float = 1e-6,
        domain_tol: float = 1e-9,
        weight_init: str = "silu",
        count_feature: bool = False,
        count_reference: float = 1.0,
    ) -> None:
        super().__init__()
        check_option("dim", dim, (1, 2, 3))
        check_positive("in_channels", in_channels, integer=True)
        check_positive("out_features", out_features, integer=True)
        check_positive("param_features", param_features, integer=True, allow_zero=True)
        check_positive("lift_channels", lift_channels, integer=True)
        check_positive("kernel_size", kernel_size, integer=True)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd (so that 'same' padding is symmetric), got {kernel_size}.")
        check_option("pool", pool, ("avg", "max", "none"))
        check_option("weight_init", weight_init, ("silu", "torch"))
        check_option("aggregation", aggregation, ("quadrature", "points"))
        check_positive("eps", eps)
        check_positive("domain_tol", domain_tol, allow_zero=True)
        if not isinstance(count_feature, bool):
            raise TypeError(f"`count_feature` must be True or False, got {count_feature!r}.")
        check_positive("count_reference", count_reference)
        lift_hidden = _int_tuple("lift_hidden", lift_hidden, allow_empty=True)
        cnn_channels = _int_tuple("cnn_channels", cnn_channels, allow_empty=True)
        mlp_hidden = _int_tuple("mlp_hidden", mlp_hidden, allow_empty=True)
        if grid_size is None:
            grid_size = 20 if dim == 1 else 10
        grid_size = _int_tuple("grid_size", _per_dim("grid_size", grid_size, dim))
        if quadrature_factor is None:
            quadrature_factor = {1: 4, 2: 2, 3: 1}[dim]
        quadrature_factor = _int_tuple("quadrature_factor", _per_dim("quadrature_factor", quadrature_factor, dim))
        if not (isinstance(domain, Sequence) and len(domain) == 2):
            raise ValueError(f"`domain` must be a pair (lower, upper), got {domain!r}.")
        lower = [float(v) for v in _per_dim("domain lower bound", domain[0], dim)]
        upper = [float(v) for v in _per_dim("domain upper bound", domain[1], dim)]
        for d in range(dim):
            if not (math.isfinite(lower[d]) and math.isfinite(upper[d]) and lower[d] < upper[d]):
                raise ValueError(
                    f"`domain` must have finite bounds with lower < upper in every dimension; dimension {d} has "
                    f"[{lower[d]}, {upper[d]}]."
                )

        self.dim = dim
        self.in_channels = in_channels
        self.out_features = out_features
        self.param_features = param_features
        self.lift_channels = lift_channels
        self.grid_size = grid_size
        self.density_channel = bool(density_channel)
        self.aggregation = aggregation
        self.quadrature_factor = quadrature_factor
        self.eps = float(eps)
        self.domain_tol = float(domain_tol)
        self.count_feature = count_feature
        self.count_reference = float(count_reference)

        self.register_buffer("lower", torch.tensor(lower, dtype=torch.get_default_dtype()))
        self.register_buffer("upper", torch.tensor(upper, dtype=torch.get_default_dtype()))
        for d in range(dim):
            if grid_size[d] == 1:
                axis = torch.tensor([(lower[d] + upper[d]) / 2])
            else:
                axis = torch.linspace(lower[d], upper[d], grid_size[d])
            self.register_buffer(f"axis{d}", axis.to(torch.get_default_dtype()))

        # quadrature grid of aggregation="quadrature": Q_d equispaced nodes per dimension containing the grid nodes
        self.quad_size = tuple(
            quadrature_factor[d] * (grid_size[d] - 1) + 1 if grid_size[d] > 1 else 2 * quadrature_factor[d] + 1
            for d in range(dim)
        )

        mesh = torch.meshgrid(
            *[2 * (getattr(self, f"axis{d}") - lower[d]) / (upper[d] - lower[d]) - 1 for d in range(dim)], indexing="ij"
        )
        self.register_buffer("coord_channels", torch.stack(mesh, dim=0))  # (D, R_1, ..., R_D), in [-1, 1]

        # 1. lifting
        self.lift = _mlp((in_channels, *lift_hidden, lift_channels))

        # 2. lengthscales (P, D) through a softplus positivity constraint
        spacing = torch.tensor(
            [(upper[d] - lower[d]) / max(grid_size[d] - 1, 1) for d in range(dim)], dtype=torch.get_default_dtype()
        )
        ls0 = self._initial_lengthscale(init_lengthscale, spacing)
        self.lengthscale_constraint = Positive()
        self.raw_lengthscale = nn.Parameter(self.lengthscale_constraint.inverse_transform(ls0))

        # 4. CNN
        c = lift_channels * (2 if self.density_channel else 1) + dim
        layers: list[nn.Module] = []
        size = list(grid_size)
        for c_out in cnn_channels:
            layers += [_CONV[dim](c, c_out, kernel_size, padding=kernel_size // 2), nn.SiLU()]
            c = c_out
            if pool != "none" and any(s >= 2 for s in size):
                k = tuple(2 if s >= 2 else 1 for s in size)
                layers.append((_AVG_POOL if pool == "avg" else _MAX_POOL)[dim](k, stride=k))
                size = [s // 2 if s >= 2 else s for s in size]
        self.cnn = nn.Sequential(*layers)
        self.feature_shape = (c, *size)
        n_flat = c * math.prod(size)

        # 5. head
        self.head = _mlp((n_flat + param_features + int(count_feature), *mlp_hidden, out_features))

        if weight_init == "silu":  # keeps the input dependence alive through many layers (see silu_init_)
            silu_init_(list(self.lift))
            silu_init_(list(self.cnn))
            silu_init_(list(self.head), first_gain=SILU_GAIN if cnn_channels else 1.0)

    def _initial_lengthscale(self, init: object, spacing: Tensor) -> Tensor:
        P, D = self.lift_channels, self.dim
        if init is None:
            return spacing[None, :].expand(P, D).clone()
        if isinstance(init, Tensor):
            check_tensor("init_lengthscale", init, floating=True)
            try:
                ls = torch.broadcast_to(init.to(spacing.dtype), (P, D)).clone()
            except RuntimeError as err:
                raise ValueError(
                    f"`init_lengthscale` must broadcast to (lift_channels, dim) = ({P}, {D}), got shape "
                    f"{tuple(init.shape)}."
                ) from err
            if bool((ls <= 0).any()):
                raise ValueError(f"`init_lengthscale` must be > 0 everywhere, got a minimum of {float(ls.min()):g}.")
            return ls
        if isinstance(init, tuple | list) and len(init) == 2:
            lo, hi = init
            check_positive("init_lengthscale[0]", lo)
            check_positive("init_lengthscale[1]", hi)
            ls = torch.logspace(math.log10(lo), math.log10(hi), P, dtype=spacing.dtype)
            return ls[:, None].expand(P, D).clone()
        if isinstance(init, int | float) and not isinstance(init, bool):
            check_positive("init_lengthscale", init)
            return torch.full((P, D), float(init), dtype=spacing.dtype)
        raise ValueError(
            f"`init_lengthscale` must be None, a positive number, a pair (lo, hi) or a tensor, got {init!r}."
        )

    # ------------------------------------------------------------------------------------------------------------
    @property
    def lengthscale(self) -> Tensor:
        r"""Lengthscales :math:`\ell_{pd}`, shape ``(lift_channels, dim)``."""
        return self.lengthscale_constraint.transform(self.raw_lengthscale)

    @property
    def grid_axes(self) -> list[Tensor]:
        r"""Grid node coordinates per dimension, a list of ``dim`` tensors of shapes ``(R_d,)``."""
        return [getattr(self, f"axis{d}") for d in range(self.dim)]

    def grid_points(self) -> Tensor:
        r"""All grid nodes, shape ``(R_1 * ... * R_D, D)`` in C (row-major) order of the grid axes."""
        mesh = torch.meshgrid(*self.grid_axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)

    # ------------------------------------------------------------------------------------------------------------
    def _check_inputs(self, x: object, u: object, mask: object) -> Tensor:
        check_tensor("x", x, ndim=3, shape=(None, None, self.dim), floating=True, finite=False)
        B, n = x.shape[0], x.shape[1]
        check_tensor("u", u, ndim=3, shape=(B, n, self.in_channels), floating=True, finite=False)
        if n == 0:
            raise ValueError("`x` holds no points (n = 0); every set needs at least one point.")
        if mask is None:
            mask = torch.ones(B, n, dtype=torch.bool, device=x.device)
        else:
            check_tensor("mask", mask, ndim=2, shape=(B, n))
            if mask.dtype != torch.bool:
                raise TypeError(f"`mask` must be a bool tensor (True for real points), got dtype {mask.dtype}.")
        counts = mask.sum(dim=1)
        if bool((counts == 0).any()):
            b = int((counts == 0).nonzero()[0])
            raise ValueError(f"set {b} of the batch has no real points (its `mask` row is all False).")
        for name, t in (("x", x), ("u", u)):
            bad = ~torch.isfinite(t).all(dim=-1) & mask
            if bool(bad.any()):
                raise ValueError(
                    f"`{name}` contains {int(bad.sum())} real point(s) with NaN or infinite entries; remove them "
                    f"or mark them False in `mask`."
                )
        lower = self.lower.to(x.dtype)
        upper = self.upper.to(x.dtype)
        slack = self.domain_tol * (upper - lower)
        outside = ((x < lower - slack) | (x > upper + slack)) & mask[..., None]
        if bool(outside.any()):
            b, i, d = (int(v) for v in outside.nonzero()[0])
            raise ValueError(
                f"{int(outside.any(-1).sum())} point(s) of `x` lie outside the domain declared at construction "
                f"(lower={self.lower.tolist()}, upper={self.upper.tolist()}); e.g. x[{b}, {i}, {d}] = "
                f"{float(x[b, i, d]):.6g} is not in [{float(self.lower[d]):.6g}, {float(self.upper[d]):.6g}]. "
                f"Rescale the points or build GICNet with a domain that contains them."
            )
        return mask

    def _check_w(self, w: object, B: int) -> Tensor | None:
        if self.param_features > 0:
            if w is None:
                raise ValueError(f"`w` is required: this GICNet was built with param_features={self.param_features}.")
            check_tensor("w", w, ndim=2, shape=(B, self.param_features), floating=True)
        elif w is not None:
            if not (isinstance(w, Tensor) and w.numel() == 0):
                raise ValueError("`w` must be None: this GICNet was built with param_features=0.")
            w = None
        return w

    def grid_features(self, x: Tensor, u: Tensor, mask: Tensor | None = None) -> Tensor:
        r"""Stages 1-3: lifted values interpolated onto the grid, densities and grid coordinates.

        Args:
            x: Points, ``(B, n, D)``, inside the domain.
            u: Field values at the points, ``(B, n, C)``.
            mask: ``(B, n)`` bool, ``True`` for real points (default: all real).

        Returns:
            ``(B, P [+ P] + D, R_1, ..., R_D)``: channels :math:`v_1..v_P`, then :math:`\rho_1..\rho_P` (when
            ``density_channel``), then the grid coordinates rescaled to :math:`[-1, 1]`.
        """
        mask = self._check_inputs(x, u, mask)
        return self._grid_features(x, u, mask)

    def _grid_features(self, x: Tensor, u: Tensor, mask: Tensor) -> Tensor:
        ref = self.raw_lengthscale
        x = torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)).to(ref.dtype)
        u = torch.where(mask[..., None], u, torch.zeros((), dtype=u.dtype, device=u.device)).to(ref.dtype)
        m = mask.to(ref.dtype)  # (B, n)
        B, n, _ = x.shape
        P, D = self.lift_channels, self.dim

        h = self.lift(u)  # (B, n, P)
        ls = self.lengthscale  # (P, D)
        parts = []
        if self.aggregation == "quadrature":
            parts.append(self._quadrature_values(x, h, mask))
        if self.aggregation == "points" or self.density_channel:
            # per-dimension kernel factors K_d[b, p, r, i] = exp(-(g_r - x_id)^2 / (2 l_pd^2))
            factors = []
            for d, axis in enumerate(self.grid_axes):
                diff = axis.to(ref.dtype)[None, None, :, None] - x[:, None, None, :, d]  # (B, 1, R_d, n)
                factors.append(torch.exp(-0.5 * (diff / ls[None, :, d, None, None]) ** 2))  # (B, P, R_d, n)
            # weights of the two sums: m_i h_ip and m_i, stacked last: (B, P, n, 2)
            v = torch.stack([(m[..., None] * h).transpose(1, 2), m[:, None, :].expand(B, P, n)], dim=-1)
            sums = self._separable_sum(factors, v)  # (B, P, R_1, ..., R_D, 2)
            width = (self.upper - self.lower).to(ref.dtype)  # (D,)
            c = (ls * math.sqrt(2 * math.pi) / width * torch.erf(width / (2 * math.sqrt(2) * ls))).prod(-1)  # (P,)
            scale = (m.sum(1)[:, None] * c[None, :]).reshape(B, P, *([1] * D))  # n_b * c_p
            density = sums[..., 1] / scale
            if self.aggregation == "points":
                parts.append(sums[..., 0] / scale / (density + self.eps))
            if self.density_channel:
                parts.append(density)
        parts.append(self.coord_channels.to(ref.dtype).expand(B, D, *self.grid_size))
        return torch.cat(parts, dim=1)

    def _quad_axis(self, d: int, like: Tensor) -> Tensor:
        """Quadrature nodes of dimension ``d`` scaled to [0, 1], ``(Q_d,)``, in the dtype and device of ``like``."""
        return torch.linspace(0.0, 1.0, self.quad_size[d], dtype=like.dtype, device=like.device)

    def _quad_weight(self, d: int, like: Tensor) -> Tensor:
        """Trapezoidal weights of the nodes of dimension ``d`` (sum 1; halved at both ends), ``(Q_d,)``."""
        q = self.quad_size[d]
        weight = torch.full((q,), 1.0 / (q - 1), dtype=like.dtype, device=like.device)
        weight[0] = weight[-1] = 0.5 / (q - 1)
        return weight

    def _quadrature_values(self, x: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        r"""Stage 2 with ``aggregation="quadrature"``: :math:`v_p(g)` of eq. (Q), ``(B, P, R_1, ..., R_D)``."""
        hq = self._resample(x, h, mask)  # (B, Q_1 * ... * Q_D, P)
        B, P, D = h.shape[0], self.lift_channels, self.dim
        ls = self.lengthscale / (self.upper - self.lower).to(h.dtype)  # (P, D), in units of the box widths
        out = hq.reshape(B, *self.quad_size, P)
        letters = "ijk"[:D]
        for d in range(D):
            lower, width = self.lower[d].to(h.dtype), (self.upper[d] - self.lower[d]).to(h.dtype)  # no host sync
            g = (self.grid_axes[d].to(h.dtype) - lower) / width  # (R_d,) in [0, 1]
            y, logw = self._quad_axis(d, h), self._quad_weight(d, h).log()  # (Q_d,), (Q_d,)
            # normalised per-dimension weights a_d[p, r, j] = w_j k(g_r, y_j) / sum_j' w_j' k(g_r, y_j')
            a = torch.softmax(logw - 0.5 * ((g[None, :, None] - y[None, None, :]) / ls[:, d, None, None]) ** 2, -1)
            src = "b" + "".join("RST"[e] if e < d else letters[e] for e in range(D)) + "p"
            dst = "b" + "".join("RST"[e] if e <= d else letters[e] for e in range(D)) + "p"
            out = torch.einsum(f"p{'RST'[d]}{letters[d]},{src}->{dst}", a, out)
        return out.movedim(-1, 1)  # (B, P, R_1, ..., R_D)

    def _resample(self, x: Tensor, h: Tensor, mask: Tensor) -> Tensor:
        r"""The lifted field resampled on the quadrature nodes, eq. (R): ``(B, Q_1 * ... * Q_D, P)``.

        ``x`` ``(B, n, D)``, ``h`` ``(B, n, P)``, ``mask`` ``(B, n)`` (padded points take no part).
        """
        B, n, D = x.shape
        P, dtype, device = h.shape[-1], h.dtype, h.device
        M = math.prod(self.quad_size)
        xi = ((x - self.lower.to(dtype)) / (self.upper - self.lower).to(dtype)).clamp(0.0, 1.0)  # (B, n, D) in [0, 1]
        # cell means: the cell of a point is that of its nearest node along every axis
        flat = torch.zeros(B, n, dtype=torch.long, device=device)
        for d, q in enumerate(self.quad_size):
            flat = flat * q + torch.round(xi[..., d] * (q - 1)).long().clamp(0, q - 1)
        flat = torch.where(mask, flat, torch.zeros_like(flat))
        m = mask.to(dtype)
        count = torch.zeros(B, M, dtype=dtype, device=device).scatter_add_(1, flat, m)  # (B, M)
        total = torch.zeros(B, M, P, dtype=dtype, device=device)
        total = total.scatter_add(1, flat[..., None].expand(B, n, P), h * m[..., None])
        inside = total / count.clamp_min(1.0)[..., None]
        # empty cells: the mean value of the nearest points (ties within round-off), distances in [0, 1]^D units
        mesh = torch.meshgrid(*[self._quad_axis(d, h) for d in range(D)], indexing="ij")
        y = torch.stack([t.reshape(-1) for t in mesh], -1)  # (M, D)
        xi = torch.where(mask[..., None], xi, torch.full((), 1e3, dtype=dtype, device=device))  # padding: far away
        slack = 64 * torch.finfo(dtype).eps
        spacing2 = sum(1.0 / (q - 1) ** 2 for q in self.quad_size)
        chunk = max(1, (1 << 22) // max(B * n, 1))  # bounds the (B, chunk, n) distance blocks
        nearest = []
        for start in range(0, M, chunk):
            yc = y[start : start + chunk]  # (Mc, D)
            d2 = (yc[None, :, None, 0] - xi[:, None, :, 0]).square()  # (B, Mc, n)
            for d in range(1, D):
                d2 = d2 + (yc[None, :, None, d] - xi[:, None, :, d]).square()
            dmin = d2.amin(-1, keepdim=True)
            tie = (d2 <= dmin + slack * (dmin + spacing2)).to(dtype)
            nearest.append((tie @ h) / tie.sum(-1, keepdim=True))  # (B, Mc, P)
        nearest = torch.cat(nearest, 1) if len(nearest) > 1 else nearest[0]
        return torch.where(count[..., None] > 0, inside, nearest)

    @staticmethod
    def _separable_sum(factors: list[Tensor], v: Tensor) -> Tensor:
        r""":math:`S[b,p,r_1..r_D,j] = \sum_i \prod_d K_d[b,p,r_d,i]\, v[b,p,i,j]` without the full kernel tensor.

        ``factors``: D tensors ``(B, P, R_d, n)``; ``v``: ``(B, P, n, J)``. Peak memory about
        ``B P n (R_1..R_{D-1} + R_D J)`` numbers instead of ``B P n R_1..R_D``.
        """
        last = factors[-1]
        B, P, R_last, n = last.shape
        J = v.shape[-1]
        if len(factors) == 1:
            return last @ v  # (B, P, R_1, J)
        lead = factors[0]
        for K in factors[1:-1]:
            lead = (lead[..., :, None, :] * K[..., None, :, :]).flatten(-3, -2)  # (B, P, R_1 R_2 .., n)
        rhs = (last.transpose(-1, -2)[..., :, :, None] * v[..., :, None, :]).flatten(-2)  # (B, P, n, R_D J)
        out = lead @ rhs  # (B, P, R_1..R_{D-1}, R_D J)
        sizes = [K.shape[-2] for K in factors]
        return out.reshape(B, P, *sizes, J)

    def forward(self, x: Tensor, u: Tensor, w: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        r"""Encode a batch of scattered fields.

        Args:
            x: Points, ``(B, n, D)``, inside the domain (else :class:`ValueError`).
            u: Field values, ``(B, n, C)``.
            w: Known parameters, ``(B, p)``; required when ``param_features > 0``, else ``None``.
            mask: ``(B, n)`` bool, ``True`` for real points, ``False`` for padding (default: all real).

        Returns:
            ``(B, out_features)``.
        """
        mask = self._check_inputs(x, u, mask)
        w = self._check_w(w, x.shape[0])
        feats = self.cnn(self._grid_features(x, u, mask)).flatten(1)
        if w is not None:
            feats = torch.cat([feats, w.to(feats.dtype)], dim=-1)
        if self.count_feature:  # log(n / n_ref): the only input that tells the head how many points were observed
            n = mask.sum(1, keepdim=True).to(feats.dtype)
            feats = torch.cat([feats, (n / self.count_reference).log()], dim=-1)
        return self.head(feats)
