r"""The coefficient functions of :mod:`gpgeom.geometry.lie`: scalar functions of :math:`t = |\theta|` (``A`` to
``D``, ``c3``, ``c4`` and their derivative levels, see the table in that module's docstring), each evaluated by its
Taylor series in :math:`s = t^2` below ``_SWITCH`` and in closed form above, branch-safe for autodiff (both branches
are evaluated on safe arguments and merged with ``torch.where``).

:func:`_coefs` evaluates several coefficients at once: one Horner recursion on a ``... x n`` tensor for all the
series (the coefficient tables padded with leading zeros, which leaves Horner's arithmetic unchanged) and one
:math:`\sin, \cos` of :math:`t` and :math:`t/2` shared by the closed forms, so a derivative term that needs eight
coefficients (:func:`~gpgeom.geometry.lie.so3_jr_dtheta3`) costs about one coefficient's number of operations
instead of eight. Series from the Taylor coefficients (Bernoulli numbers for ``D``; Abramowitz & Stegun 23.1).
"""

from __future__ import annotations

from fractions import Fraction
from math import factorial

import torch
from torch import Tensor

_SWITCH = 1.5  # rad; below it every coefficient uses its Taylor series in s = t^2
_N_TERMS = 22  # series terms at most (at s = _SWITCH^2 the first omitted D_2 term is < 1e-20 relative), trimmed
# per coefficient to those above 1e-18 of the terms' magnitude there (10-11 for A, B, C; 15-17 for D)
_LOG_SWITCH = 0.1  # |q_v| / w below which 2 atan(r)/r uses its series (r = |q_v| / w)
_LOG_TERMS = 12


def _bernoulli(n: int) -> list[Fraction]:
    """Bernoulli numbers B_0..B_n (B_1 = -1/2) from the recurrence sum_j C(m+1, j) B_j = 0."""
    b = [Fraction(1)]
    for m in range(1, n + 1):
        acc = Fraction(0)
        for j in range(m):
            acc += factorial(m + 1) // (factorial(j) * factorial(m + 1 - j)) * b[j]
        b.append(-acc / (m + 1))
    return b


def _trim(c: list[float]) -> tuple[float, ...]:
    """Drop the trailing terms below 1e-18 of the sum of the terms' magnitudes at s = _SWITCH^2 (Horner's cost)."""
    size = [abs(x) * _SWITCH ** (2 * k) for k, x in enumerate(c)]
    return tuple(c[: max(k for k, t in enumerate(size) if t > 1e-18 * sum(size)) + 1])


def _levels(a: list[Fraction], n: int) -> tuple[tuple[float, ...], ...]:
    """Series of f, f_1 = 2 df/ds, f_2 = 2 df_1/ds and f_3 = 2 df_2/ds from the coefficients a_k of f = sum a_k s^k."""
    f0 = [float(a[k]) for k in range(n)]
    f1 = [float(2 * (k + 1) * a[k + 1]) for k in range(n)]
    f2 = [float(4 * (k + 1) * (k + 2) * a[k + 2]) for k in range(n)]
    f3 = [float(8 * (k + 1) * (k + 2) * (k + 3) * a[k + 3]) for k in range(n)]
    return _trim(f0), _trim(f1), _trim(f2), _trim(f3)


_M = _N_TERMS + 3
_BERN = _bernoulli(2 * _M + 2)
_SERIES = {
    "A": _levels([Fraction((-1) ** k, factorial(2 * k + 1)) for k in range(_M)], _N_TERMS),
    "B": _levels([Fraction((-1) ** k, factorial(2 * k + 2)) for k in range(_M)], _N_TERMS),
    "C": _levels([Fraction((-1) ** k, factorial(2 * k + 3)) for k in range(_M)], _N_TERMS),
    "D": _levels([(-1) ** k * _BERN[2 * k + 2] / factorial(2 * k + 2) for k in range(_M)], _N_TERMS),
    "c3": _levels([Fraction((-1) ** k, factorial(2 * k + 4)) for k in range(_M)], _N_TERMS),
    "c4": _levels([Fraction((-1) ** k * (k + 1), factorial(2 * k + 5)) for k in range(_M)], _N_TERMS),
}
_LOG_SERIES = tuple(float(Fraction((-1) ** k, 2 * k + 1)) for k in range(_LOG_TERMS))


def _trig(t: Tensor) -> dict[str, Tensor]:
    """The sines and cosines the closed forms share: of ``t`` and of ``h = t / 2``, and ``1 - cos t``."""
    sn, cs = torch.sin(t), torch.cos(t)
    h = 0.5 * t
    sh = torch.sin(h)
    return {"sn": sn, "cs": cs, "h": h, "sh": sh, "omc": 2.0 * sh * sh}  # 1 - cos t without cancellation


def _closed(name: str, level: int, t: Tensor, trig: dict[str, Tensor] | None = None) -> Tensor:
    """Closed form of coefficient ``name`` at derivative level 0..3, for t >= _SWITCH (``trig``: :func:`_trig`)."""
    if trig is None:
        if name == "A":
            return torch.sin(t) / t
        trig = _trig(t)
    sn, cs, h, sh, omc = trig["sn"], trig["cs"], trig["h"], trig["sh"], trig["omc"]
    if name == "A":
        return sn / t
    if name == "B":
        if level == 0:
            return omc / (t * t)
        if level == 1:
            return (t * sn - 2.0 * omc) / t**4
        if level == 2:
            return (t * t * cs - 5.0 * t * sn + 8.0 * omc) / t**6
        return (-(t**3) * sn - 9.0 * t * t * cs + 33.0 * t * sn - 48.0 * omc) / t**8
    if name == "C":
        if level == 0:
            return (t - sn) / t**3
        if level == 1:
            return (3.0 * sn - 2.0 * t - t * cs) / t**5
        if level == 2:
            return (8.0 * t + t * t * sn + 7.0 * t * cs - 15.0 * sn) / t**7
        return (t**3 * cs - 12.0 * t * t * sn - 57.0 * t * cs - 48.0 * t + 105.0 * sn) / t**9
    if name == "D":
        if "ch" not in trig:
            trig["ch"] = torch.cos(h)
        ch = trig["ch"]
        cot = ch / sh
        if level == 0:
            return 1.0 / (t * t) - cot / (2.0 * t)
        if level == 1:
            return -2.0 / t**4 + 1.0 / (4.0 * t * t * sh * sh) + cot / (2.0 * t**3)
        return 8.0 / t**6 - 3.0 / (4.0 * t**4 * sh * sh) - ch / (4.0 * t**3 * sh**3) - 3.0 * cot / (2.0 * t**5)
    if name == "c3":
        return (t * t - 2.0 * omc) / (2.0 * t**4)
    if name == "c4":
        return (2.0 * t - 3.0 * sn + t * cs) / (2.0 * t**5)
    raise KeyError(name)


def _horner(s: Tensor, coeffs: tuple[float, ...]) -> Tensor:
    out = torch.full_like(s, coeffs[-1])
    for c in coeffs[-2::-1]:
        out = out * s + c
    return out


def _coef(name: str, s: Tensor, level: int = 0) -> Tensor:
    """Coefficient ``name`` (level 0, 1, 2) as a function of ``s = |theta|^2`` (``...``), branch-safe."""
    small = s < _SWITCH**2
    s_series = torch.where(small, s, torch.zeros_like(s))
    s_closed = torch.where(small, torch.full_like(s, _SWITCH**2), s)
    return torch.where(small, _horner(s_series, _SERIES[name][level]), _closed(name, level, torch.sqrt(s_closed)))


_TABLES: dict[tuple, list[Tensor]] = {}


def _series_rows(keys: tuple[tuple[str, int], ...], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
    """The series of ``keys`` as Horner rows (``n`` each, highest order first), padded with leading zeros; cached."""
    key = (keys, dtype, device)
    if key not in _TABLES:
        cols = [_SERIES[name][level] for name, level in keys]
        n = max(len(c) for c in cols)
        rows = [[c[i] if i < len(c) else 0.0 for c in cols] for i in range(n - 1, -1, -1)]
        _TABLES[key] = [torch.tensor(r, dtype=dtype, device=device) for r in rows]
    return _TABLES[key]


def _coefs(s: Tensor, *keys: tuple[str, int]) -> list[Tensor]:
    """Several coefficients ``(name, level)`` at ``s = |theta|^2`` (``...`` each), as :func:`_coef` gives them."""
    small = s < _SWITCH**2
    s_series = torch.where(small, s, torch.zeros_like(s)).unsqueeze(-1)
    t = torch.sqrt(torch.where(small, torch.full_like(s, _SWITCH**2), s))
    rows = _series_rows(keys, s.dtype, s.device)
    acc = rows[0].expand(*s.shape, len(keys))
    for r in rows[1:]:
        acc = acc * s_series + r
    trig = _trig(t)
    return [torch.where(small, acc[..., i], _closed(name, level, t, trig)) for i, (name, level) in enumerate(keys)]
