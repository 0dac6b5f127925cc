r"""Out-of-distribution sensitivity of predictive uncertainty: how much larger the predicted standard deviations are
away from the data than near it."""

from __future__ import annotations

from gpgeom.metrics._inputs import as_float64

__all__ = ["ood_std_ratio"]


def ood_std_ratio(std_ood, std_in) -> float:
    r"""Ratio :math:`\overline{\sigma}_{\mathrm{ood}} / \overline{\sigma}_{\mathrm{in}}` of the mean predictive
    standard deviations at out-of-distribution and at in-distribution inputs.

    A model whose uncertainty grows away from its training data gives a ratio well above 1; a ratio near 1 means
    the model is equally confident where it has no data (the failure mode that held-out coverage near the data
    cannot detect). Pass the latent (noise-free) standard deviations where the model has them: an observation
    noise :math:`\sigma_n` adds the same floor in and out of distribution, so the ratio of the noise-included
    :math:`(\sigma^2 + \sigma_n^2)^{1/2}` is pulled towards 1 (with one latent std inside and one outside it lies
    between 1 and the latent ratio), and a growth of the latent std well below the noise level barely shows.

    Args:
        std_ood: Standard deviations at out-of-distribution inputs, any shape, ``>= 0``.
        std_in: Standard deviations at in-distribution inputs, any shape, ``>= 0`` and not all zero.

    Returns:
        The ratio as a Python float.
    """
    so, si = as_float64(std_ood, "std_ood"), as_float64(std_in, "std_in")
    for name, t in (("std_ood", so), ("std_in", si)):
        if bool((t < 0).any()):
            raise ValueError(f"{name} must be >= 0 everywhere, got min {float(t.min()):.3g}.")
    m_in = float(si.mean())
    if m_in == 0:
        raise ValueError("std_in is zero everywhere: the ratio is undefined.")
    return float(so.mean()) / m_in
