r"""FunBaT's noise: the prior of the noise precision, which sets the calibration of the predictive intervals, and
Student-t noise: the Gaussian scale mixture, its mean-field factors :math:`q(\lambda_n)`, the learned degrees of
freedom and their evidence-lower-bound terms (``FunBaT(noise="student_t")``).

Noise prior (the calibration of the predictive intervals). The noise precision has the conjugate posterior
:math:`q(\tau) = \mathrm{Gamma}(a_\tau, b_\tau)`, :math:`a_\tau = a_0 + N/2`, :math:`b_\tau = b_0 + \tfrac12 \sum_n
\mathbb E_q[(y_n - b - f_n)^2]` (:mod:`~gpgeom.models.funbat.inference`), and the predictive noise variance is

.. math::
    \mathbb E_q[\tau^{-1}] = \frac{b_0 + \tfrac12 \sum_n \mathbb E_q[(y_n - b - f_n)^2]}{a_0 + N/2 - 1}
    \approx \frac1N \sum_n \mathbb E_q[(y_n - b - f_n)^2] + \frac{2 b_0}{N},

in standardised units of ``y``. The default ``noise_prior`` is :math:`(a_0, b_0) = (1, 10^{-3})`: the prior weighs
as two pseudo-entries with a sum of squares of :math:`2 \cdot 10^{-3}`, so the data set the noise. The former
default :math:`b_0 = 1` (a prior sum of squares of two whole data variances) added :math:`2/N` to the noise variance,
which dominated it for small or precise data (``N = 300``, noise sd 0.05: :math:`0.0067` on top of
:math:`0.0025`; a fitted noise sd of 0.118 on average instead of 0.060 with the current prior): the intervals were too
wide (over 8 synthetic tensors of 300 entries, 95% intervals covered 99.5% of held-out entries, z RMS 0.49; now 96.5%,
z RMS 0.91; ``N = 1000``: 99.6%, z RMS 0.69, now 96%, z RMS 0.96; ``benchmarks/funbat.py``,
``benchmarks/results/funbat.md``). The other suspects measure small:
:math:`\mathbb E[\tau^{-1}]` and :math:`1/\mathbb E[\tau]` differ by the factor :math:`a_\tau/(a_\tau - 1) = 1 +
O(1/N)`; the bias variance is :math:`O(1/N)`; and the factorised posterior does not double-count: the variance of a
noise-free entry (the sum of the per-factor contributions, :mod:`~gpgeom.models.funbat.entries`) equals that of the
joint Gauss-Newton (Laplace) posterior over every node value, the core and the bias, whose cross-covariances
represent the Tucker scale/rotation trade-offs, to within 2% (synthetic tensors of 1000 entries, seen and unseen
coordinates): the ambiguity spans only :math:`\sum_k R_k^2` of several hundred data-determined directions.

The Student-t likelihood written as a Gaussian scale mixture (Andrews & Mallows, "Scale mixtures of normal
distributions", JRSS B 36, 1974; its variational treatment: Tipping & Lawrence, "Variational inference for Student-t
models", Neurocomputing 69, 2005; Archambeau & Verleysen, "Robust Bayesian clustering", Neural Networks 20, 2007):

.. math::
    y_n \mid f_n, b, \tau, \lambda_n \sim N\big(b + f_n, (\tau \lambda_n)^{-1}\big), \qquad
    \lambda_n \sim \mathrm{Gamma}(\nu/2, \nu/2) \ \text{(shape, rate)},

so that, marginally over :math:`\lambda_n`, :math:`y_n - b - f_n` is Student-t with :math:`\nu` degrees of freedom
and scale :math:`\tau^{-1/2}`. The mean-field factor of each scale is conjugate,

.. math::
    q(\lambda_n) = \mathrm{Gamma}(\alpha, \beta_n), \qquad \alpha = \frac{\nu + 1}2, \qquad
    \beta_n = \frac\nu2 + \frac12 \mathbb E[\tau]\, e_n, \qquad e_n = \mathbb E_q[(y_n - b - f_n)^2],

and every other update of the sweep (:mod:`~gpgeom.models.funbat.inference`) sees entry :math:`n` with the weight
:math:`w_n = \mathbb E[\lambda_n] = \alpha / \beta_n`: the messages :math:`\Lambda_n, \eta_n`, the core's and the
bias's data terms and the noise's sum of squares :math:`\sum_n w_n e_n` are those of the Gaussian model with
precision :math:`\mathbb E[\tau] w_n` for entry :math:`n` (an entry with a large residual is down-weighted). The terms
of the evidence lower bound that the scales add are

.. math::
    \tfrac12 \sum_n \mathbb E[\log \lambda_n] - \sum_n \mathrm{KL}\big(\mathrm{Gamma}(\alpha, \beta_n) \,\|\,
    \mathrm{Gamma}(\nu/2, \nu/2)\big), \qquad \mathbb E[\log\lambda_n] = \psi(\alpha) - \log\beta_n,

with the Gaussian data term weighted, :math:`-\tfrac12 \mathbb E[\tau] \sum_n w_n e_n`.

Degrees of freedom. The ELBO depends on :math:`\nu` only through :math:`\sum_n \mathbb E_q[\log p(\lambda_n \mid
\nu)]`, whose derivative is

.. math::
    \frac{\partial}{\partial\nu} = \frac N2 \Big(\log\frac\nu2 + 1 - \psi\big(\tfrac\nu2\big) + c\Big), \qquad
    c = \frac1N \sum_n \big(\mathbb E[\log\lambda_n] - \mathbb E[\lambda_n]\big) \le -1,

(:math:`\log x - x \le -1` and Jensen). :math:`\log x - \psi(x)` decreases from :math:`+\infty` to 0, so the
objective is concave in :math:`\nu` with one stationary point, found by bisection on :math:`\log\nu`, and clipped to
``DOF_BOUNDS`` = :math:`[2.1, 100]`: below 2 the noise has no variance (``predict(return_std=True)`` needs it; 2.1
keeps the predictive variance finite and the quadrature's Gamma shape :math:`\nu/2 \ge 1.05`); above 100 the
Student-t is within :math:`O(1/\nu)` of the Gaussian (the ELBO is flat there and :math:`c \to -1` makes the root run
to infinity on Gaussian data). The clipped maximiser of a concave function is still the coordinate maximum over the
interval, so the sweep stays coordinate ascent (``FunBaT.elbo()`` never decreases without damping).

Scales shared along a mode (``FunBaT(noise="student_t", scale_mode=k)``). Heteroscedastic data whose noise level
changes along one mode (a day of a pollution episode is noisy at every station) share one scale per unique coordinate
:math:`g` of mode :math:`k` (a group :math:`G_g` of :math:`n_g` entries): :math:`\lambda_g \sim \mathrm{Gamma}(\nu/2,
\nu/2)`, :math:`y_n \sim N(b + f_n, (\tau \lambda_{g(n)})^{-1})`. Given the other factors the log joint is, in
:math:`\lambda_g`, :math:`(\nu/2 - 1 + n_g/2)\log\lambda_g - \lambda_g(\nu/2 + \tfrac12 \mathbb E[\tau]
\sum_{n \in G_g} e_n)`, so

.. math::
    q(\lambda_g) = \mathrm{Gamma}(\alpha_g, \beta_g), \qquad \alpha_g = \frac{\nu + n_g}2, \qquad
    \beta_g = \frac\nu2 + \frac12 \mathbb E[\tau] \sum_{n \in G_g} e_n,

every entry of the group has the weight :math:`w_n = \mathbb E[\lambda_{g(n)}] = \alpha_g / \beta_g`, and the
scale terms of the ELBO become :math:`\tfrac12 \sum_g n_g \mathbb E[\log\lambda_g] - \sum_g \mathrm{KL}(q(\lambda_g)
\| \mathrm{Gamma}(\nu/2, \nu/2))`. The per-entry model is the case of one entry per group (:math:`n_g = 1`). The
:math:`\nu`-derivative below holds with the sums and the mean :math:`c` over the :math:`G` groups instead of the
entries (:math:`\frac{\partial}{\partial\nu} \sum_g \mathbb E_q[\log p(\lambda_g \mid \nu)] = \frac G2 (\log\frac\nu2
+ 1 - \psi(\frac\nu2) + c)`, :math:`c = \frac1G \sum_g (\mathbb E[\log\lambda_g] - \mathbb E[\lambda_g])`), so
:func:`dof_update` takes the group factors unchanged.

Prediction: a new entry has its own scale from the prior, so the predictive distribution of a new observation is the
scale mixture :math:`\int N(y; \mathbb E f_*, \operatorname{Var} f_* + s^2/\lambda)\, \mathrm{Gamma}(\lambda; \nu/2,
\nu/2)\, d\lambda` with :math:`s^2 = \mathbb E[\tau^{-1}]` (:mod:`~gpgeom.models.funbat.predictive` computes it by
quadrature), of variance :math:`\operatorname{Var} f_* + s^2 \nu / (\nu - 2)`. With scales shared along mode
:math:`k`, a new entry whose coordinate on mode :math:`k` is a training group's shares that group's scale, whose
posterior is :math:`q(\lambda_g)`: the mixture is over :math:`\mathrm{Gamma}(\alpha_g, \beta_g)` (a Student-t with
:math:`2\alpha_g` degrees of freedom and scale :math:`(s^2 \beta_g / \alpha_g)^{1/2}` when :math:`\operatorname{Var}
f_* = 0`), of variance :math:`\operatorname{Var} f_* + s^2 \beta_g / (\alpha_g - 1)`; at any other coordinate the
scale is new and the mixture is the prior's, as above.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gpgeom._validation import check_option

__all__ = [
    "DOF_BOUNDS",
    "NOISE_MODELS",
    "SCALE_FITS",
    "cut_scale_fit",
    "scale_update",
    "group_scale_update",
    "scale_factors",
    "dof_update",
    "scale_elbo_terms",
    "gamma_kl",
    "noise_factor",
    "check_noise_options",
]

#: The noise models of ``FunBaT(noise=...)``.
NOISE_MODELS = ("gaussian", "student_t")
#: How ``FunBaT(noise="student_t", scale_fit=...)`` fits the scales: with the factors (``"joint"``), after them on the
#: residuals of the Gaussian fit (``"cut"``), or after them and then held while the factors are refitted (``"refit"``;
#: :mod:`~gpgeom.models.funbat.scales`), or on held-out entries (``"heldout"``, :mod:`~gpgeom.models.funbat.heldout`).
SCALE_FITS = ("joint", "cut", "refit", "heldout")
#: The interval of the learned degrees of freedom (module docstring).
DOF_BOUNDS = (2.1, 100.0)


def gamma_kl(a: Tensor, b: Tensor, a0: Tensor | float, b0: Tensor | float) -> Tensor:
    r""":math:`\mathrm{KL}(\mathrm{Gamma}(a, b) \| \mathrm{Gamma}(a_0, b_0))` (shape, rate), elementwise:
    :math:`(a - a_0)\psi(a) - \log\Gamma(a) + \log\Gamma(a_0) + a_0(\log b - \log b_0) + a (b_0 - b)/b`.

    Args:
        a, b: Shape and rate of the first Gamma (broadcastable tensors).
        a0, b0: Shape and rate of the second (tensors or floats).

    Returns:
        The divergences, the broadcast shape of the arguments.

    Example:
        >>> import torch
        >>> float(gamma_kl(torch.tensor(2.0), torch.tensor(3.0), 2.0, 3.0))
        0.0
    """
    a0 = torch.as_tensor(a0, dtype=a.dtype, device=a.device)
    b0 = torch.as_tensor(b0, dtype=a.dtype, device=a.device)
    return (
        (a - a0) * torch.digamma(a) - torch.lgamma(a) + torch.lgamma(a0) + a0 * (b.log() - b0.log()) + a * (b0 - b) / b
    )


def scale_update(resid_sq: Tensor, tau_mean: Tensor, dof: float) -> tuple[Tensor, Tensor]:
    r"""The mean-field factors :math:`q(\lambda_n) = \mathrm{Gamma}(\alpha, \beta_n)` (module docstring).

    Args:
        resid_sq: ``N`` expected squared residuals :math:`e_n = \mathbb E_q[(y_n - b - f_n)^2]`.
        tau_mean: :math:`\mathbb E[\tau]` (0-dim).
        dof: The degrees of freedom :math:`\nu`.

    Returns:
        ``(alpha, beta)``: the common shape (0-dim) and the ``N`` rates.
    """
    alpha = torch.full((), 0.5 * (dof + 1.0), dtype=resid_sq.dtype, device=resid_sq.device)
    beta = 0.5 * dof + 0.5 * tau_mean * resid_sq
    return alpha, beta


def group_scale_update(
    resid_sq: Tensor, tau_mean: Tensor, dof: float, groups: Tensor, counts: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The mean-field factors :math:`q(\lambda_g) = \mathrm{Gamma}(\alpha_g, \beta_g)` of scales shared by groups of
    entries (module docstring: :math:`\alpha_g = (\nu + n_g)/2`, :math:`\beta_g = \nu/2 + \tfrac12 \mathbb E[\tau]
    \sum_{n \in G_g} e_n`).

    Args:
        resid_sq: ``N`` expected squared residuals :math:`e_n`.
        tau_mean: :math:`\mathbb E[\tau]` (0-dim).
        dof: The degrees of freedom :math:`\nu`.
        groups: ``N`` group indices in ``[0, G)`` (int64).
        counts: ``G`` group sizes :math:`n_g` (of ``resid_sq``'s dtype).

    Returns:
        ``(alpha, beta)``: ``G`` shapes and ``G`` rates.

    Example:
        >>> import torch
        >>> a, b = group_scale_update(torch.tensor([1.0, 3.0, 2.0]), torch.tensor(1.0), 4.0, torch.tensor([0, 0, 1]),
        ...                           torch.tensor([2.0, 1.0]))
        >>> a.tolist(), b.tolist()
        ([3.0, 2.5], [4.0, 3.0])
    """
    sums = torch.zeros(counts.shape[0], dtype=resid_sq.dtype, device=resid_sq.device).index_add_(0, groups, resid_sq)
    return 0.5 * (dof + counts), 0.5 * dof + 0.5 * tau_mean * sums


def scale_factors(
    resid_sq: Tensor, tau_mean: Tensor, dof: float, groups: Tensor | None = None, counts: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""The scales' factors: :func:`scale_update` (one scale per entry, ``groups=None``) or
    :func:`group_scale_update` (scales shared by the groups ``groups`` of sizes ``counts``).

    Returns:
        ``(alpha, beta)``: shape (0-dim) and ``N`` rates, or ``G`` shapes and ``G`` rates.
    """
    if groups is None:
        return scale_update(resid_sq, tau_mean, dof)
    return group_scale_update(resid_sq, tau_mean, dof, groups, counts)


def _dof_gradient(dof: float, c: float) -> float:
    x = torch.tensor(0.5 * dof, dtype=torch.float64)
    return float(x.log() + 1.0 - torch.digamma(x)) + c


def dof_update(alpha: Tensor, beta: Tensor, bounds: tuple[float, float] = DOF_BOUNDS) -> float:
    r"""The degrees of freedom that maximise the ELBO given the factors :math:`q(\lambda_n)` (or :math:`q(\lambda_g)`
    of shared scales), within ``bounds`` (module docstring: the stationary point of a concave function, by bisection
    on :math:`\log\nu`).

    Args:
        alpha: The shape of :math:`q(\lambda_n)` (0-dim), or the ``G`` shapes of the groups.
        beta: The ``N`` (or ``G``) rates.
        bounds: ``(low, high)``.

    Returns:
        :math:`\nu` (a float in ``bounds``).
    """
    e_log = torch.digamma(alpha) - beta.log()
    c = float((e_log - alpha / beta).double().mean())
    lo, hi = bounds
    if _dof_gradient(lo, c) <= 0.0:
        return float(lo)
    if _dof_gradient(hi, c) >= 0.0:
        return float(hi)
    a, b = math.log(lo), math.log(hi)
    for _ in range(60):  # the bracket shrinks to 2^-60 of log(hi / lo)
        mid = 0.5 * (a + b)
        if _dof_gradient(math.exp(mid), c) > 0.0:
            a = mid
        else:
            b = mid
    return math.exp(0.5 * (a + b))


def scale_elbo_terms(alpha: Tensor, beta: Tensor, dof: float, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""The scales' parts of the ELBO: :math:`\tfrac12 \sum_n \mathbb E[\log\lambda_n]` minus the summed KL
    divergences from the prior :math:`\mathrm{Gamma}(\nu/2, \nu/2)`; for shared scales :math:`\tfrac12 \sum_g n_g
    \mathbb E[\log\lambda_g]` minus the KL of every group (module docstring).

    Args:
        alpha: Shape of :math:`q(\lambda_n)` (0-dim) or ``G`` shapes; beta: ``N`` (or ``G``) rates;
        dof: :math:`\nu`; counts: ``G`` group sizes :math:`n_g` (``None``: one entry per scale).

    Returns:
        ``(half_sum_e_log, sum_kl)``, both 0-dim.
    """
    alpha = alpha.expand_as(beta)
    e_log = torch.digamma(alpha) - beta.log()
    kl = gamma_kl(alpha, beta, 0.5 * dof, 0.5 * dof)
    return 0.5 * (e_log if counts is None else counts * e_log).sum(), kl.sum()


def noise_factor(dof: float | None) -> float:
    r""":math:`\mathbb E[\lambda^{-1}] = \nu / (\nu - 2)` under the prior :math:`\mathrm{Gamma}(\nu/2, \nu/2)`: the
    factor by which the scale mixture multiplies the noise variance of a new entry (1 for Gaussian noise,
    ``dof=None``)."""
    return 1.0 if dof is None else dof / (dof - 2.0)


def check_noise_options(
    noise: str, dof: float | None, scale_mode: int | None, scale_fit: str
) -> tuple[str, float | None, int | None, str]:
    r"""The noise arguments of :class:`~gpgeom.models.funbat.model.FunBaT` checked: ``noise`` one of
    :data:`NOISE_MODELS`; ``dof`` ``None`` (learned) or a finite number :math:`> 2` and ``scale_mode`` ``None`` or a
    mode index, both for Student-t noise only; ``scale_fit`` one of :data:`SCALE_FITS`, other than ``"joint"`` for
    Student-t noise only and ``"heldout"`` without ``scale_mode``.

    Returns:
        ``(noise, dof, scale_mode, scale_fit)``, with ``dof`` a float (or ``None``).

    Raises:
        TypeError, ValueError: An argument outside these rules.
    """
    noise = check_option("noise", noise, NOISE_MODELS)
    if dof is not None:
        if noise != "student_t":
            raise ValueError(f"`dof` applies to noise='student_t' only, got dof={dof!r} with noise={noise!r}.")
        if isinstance(dof, bool) or not isinstance(dof, int | float) or not 2.0 < dof < math.inf:
            raise ValueError(f"`dof` must be None (learned) or a finite number > 2, got {dof!r}.")
        dof = float(dof)
    if scale_mode is not None:
        if isinstance(scale_mode, bool) or not isinstance(scale_mode, int):
            raise TypeError(f"`scale_mode` must be None or an int (a mode index), got {scale_mode!r}.")
        if noise != "student_t":
            raise ValueError(
                f"`scale_mode` applies to noise='student_t' only, got scale_mode={scale_mode!r} with noise={noise!r}."
            )
        if scale_mode < 0:
            raise ValueError(f"`scale_mode` must be a mode index >= 0, got {scale_mode}.")
    scale_fit = check_option("scale_fit", scale_fit, SCALE_FITS)
    if scale_fit != "joint" and noise != "student_t":
        raise ValueError(f"`scale_fit={scale_fit!r}` applies to noise='student_t' only, got noise={noise!r}.")
    if scale_fit == "heldout" and scale_mode is not None:
        raise ValueError(f"`scale_fit='heldout'` needs scale_mode=None (one noise), got scale_mode={scale_mode!r}.")
    return noise, dof, scale_mode, scale_fit


def cut_scale_fit(
    resid_sq: Tensor,
    noise_prior: tuple[float, float],
    dof: float,
    *,
    learn_dof: bool = True,
    groups: Tensor | None = None,
    counts: Tensor | None = None,
    tol: float = 1e-10,
    max_iter: int = 5000,
) -> tuple[Tensor, Tensor, Tensor, Tensor, float, bool]:
    r"""The noise factors :math:`q(\tau)`, :math:`q(\lambda_n)` (or :math:`q(\lambda_g)`) and :math:`\nu` by
    coordinate ascent on the evidence lower bound with the expected squared residuals :math:`e_n` held fixed: the noise
    block of the sweep (module docstring) iterated to its fixed point, which is how ``scale_fit="cut"`` fits the scales
    after the factors (:mod:`~gpgeom.models.funbat.scales`).

    Each round sets the scales given :math:`\mathbb E[\tau]` and :math:`\nu` (:func:`scale_update` or
    :func:`group_scale_update`), then :math:`q(\tau) = \mathrm{Gamma}(a_0 + N/2,\ b_0 + \tfrac12 \sum_n \mathbb
    E[\lambda_{g(n)}]\, e_n)`, then :math:`\nu` (:func:`dof_update`, when learned); every step is a coordinate
    maximum, so the ELBO never decreases. It starts from the Gaussian fit's :math:`q(\tau)` (every weight 1) and
    stops when the rate of :math:`q(\tau)` and :math:`\nu` change by less than ``tol`` (relative) in a round; the
    returned scales are those of the final :math:`\mathbb E[\tau]` and :math:`\nu`.

    Args:
        resid_sq: ``N`` expected squared residuals :math:`e_n = \mathbb E_q[(y_n - b - f_n)^2]` (standardised units).
        noise_prior: :math:`(a_0, b_0)` of the Gamma prior on :math:`\tau`.
        dof: :math:`\nu` to start from (held when ``learn_dof`` is false).
        learn_dof: Update :math:`\nu` (within :data:`DOF_BOUNDS`).
        groups, counts: ``N`` group indices and ``G`` group sizes (scales shared along a mode); ``None``: one scale
            per entry.
        tol: Relative change that stops the rounds.
        max_iter: The most rounds.

    Returns:
        ``(tau_a, tau_b, alpha, beta, dof, converged)``: :math:`q(\tau)` (0-dim each), the scales' shapes (0-dim, or
        ``G``) and rates (``N`` or ``G``), :math:`\nu`, and whether a round changed less than ``tol``.

    Example:
        >>> import torch
        >>> e = torch.tensor([0.1, 0.2, 4.0, 0.1, 0.3, 0.2], dtype=torch.float64)
        >>> tau_a, tau_b, alpha, beta, dof, converged = cut_scale_fit(e, (1.0, 1e-3), 5.0, learn_dof=False)
        >>> bool(beta[2] > beta[0])  # the large residual gets the small scale (a small weight alpha / beta)
        True
    """
    a0, b0 = noise_prior
    N = resid_sq.shape[0]
    tau_a = torch.tensor(a0 + 0.5 * N, dtype=resid_sq.dtype, device=resid_sq.device)
    tau_b = b0 + 0.5 * resid_sq.sum()

    converged = False
    for _ in range(max_iter):
        alpha, beta = scale_factors(resid_sq, tau_a / tau_b, dof, groups, counts)
        w = alpha / beta
        new_b = b0 + 0.5 * ((w if groups is None else w[groups]) * resid_sq).sum()
        new_dof = dof_update(alpha, beta) if learn_dof else dof
        change = max(float((new_b - tau_b).abs() / tau_b), abs(new_dof - dof) / dof)
        tau_b, dof = new_b, new_dof
        if change < tol:
            converged = True
            break
    alpha, beta = scale_factors(resid_sq, tau_a / tau_b, dof, groups, counts)
    return tau_a, tau_b, alpha, beta, float(dof), converged
