r"""Tangent frames of a point cloud and the discrete parallel transport between them (steps 2-3 of the connection
Laplacian, :mod:`gpgeom.geometry.connection`; Singer & Wu, *Comm. Pure Appl. Math.* 2012).

* :func:`local_pca`, :func:`tangent_frames`: the frame :math:`T_i \in \mathbb{R}^{D \times d}` at each point from a
  local PCA of its ``k_pca`` nearest neighbours (centred at their mean), by default tilt-corrected by a local
  polynomial fit (degree 2 to 6, chosen by leave-one-out error; :func:`fit_size` its neighbourhood);
  :func:`frames_at` the same at new points; :func:`estimate_dimension` picks :math:`d` from the singular values.
* :func:`procrustes`: the orthogonal matrix closest to :math:`T_i^\top T_j`,
  :math:`O_{ij} = \arg\min_{O \in O(d)} \|O - T_i^\top T_j\|_F = U V^\top` with :math:`T_i^\top T_j = U \Sigma
  V^\top`, mapping frame-:math:`j` coordinates to frame :math:`i` (:math:`O_{ji} = O_{ij}^\top` exactly).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy.spatial import cKDTree

from gpgeom._validation import check_option, check_positive
from gpgeom._warnings import user_stacklevel
from gpgeom.geometry.point_cloud import as_points

__all__ = [
    "estimate_dimension",
    "fit_size",
    "frames_at",
    "local_noise_variance",
    "local_pca",
    "procrustes",
    "tangent_frames",
]

# ----------------------------------------------------------------------------------------------------------------
# tangent frames
# ----------------------------------------------------------------------------------------------------------------


def _neighbourhoods(X: np.ndarray, k_pca: int, workers: int = 1) -> np.ndarray:
    if k_pca > len(X):
        raise ValueError(f"`k_pca`={k_pca} exceeds the number of points n={len(X)}.")
    _, idx = cKDTree(X).query(X, k=k_pca, workers=workers)
    return idx.reshape(len(X), k_pca)


_FITS = ("auto", "sextic", "quintic", "quartic", "cubic", "quadratic", "pca")
_DEGREE = {"quadratic": 2, "cubic": 3, "quartic": 4, "quintic": 5, "sextic": 6}
_AUTO = ("quadratic", "cubic", "quartic", "quintic", "sextic")


def _n_terms(d: int, degree: int) -> int:
    r"""Number of monomials of degree at most ``degree`` in ``d`` variables, :math:`\binom{d + p}{p}`."""
    return math.comb(d + degree, degree)


def _usable(fit: str, k: int, d: int) -> bool:
    r"""Whether a neighbourhood of ``k`` points supports the fit (quadratic: more points than terms; cubic and up:
    three more, so that its leave-one-out residuals are informative)."""
    return k > _n_terms(d, _DEGREE[fit]) + (2 if _DEGREE[fit] >= 3 else 0)


def fit_size(fit: str, k_pca: int, d: int) -> int:
    r"""Points in the neighbourhood of the polynomial fit ``fit`` of :func:`local_pca` at dimension ``d``:
    ``k_pca`` for the quadratic and cubic fits, :math:`\max(k_{pca}, \binom{d+p}{p} + 3)` for the degree-:math:`p`
    fits from quartic up (their own, larger neighbourhood when ``k_pca`` is too small for them), 0 for ``"pca"``.

    >>> fit_size("cubic", 15, 2), fit_size("quartic", 15, 2), fit_size("sextic", 15, 2)
    (15, 18, 31)
    """
    check_option("fit", fit, _FITS[1:])
    if fit == "pca":
        return 0
    p = _DEGREE[fit]
    return k_pca if p <= 3 else max(k_pca, _n_terms(d, p) + 3)


def _polynomial_correction(
    Y: np.ndarray, T: np.ndarray, degree: int, scored: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Tilt-free frames from a local polynomial fit (see :func:`local_pca`) and its leave-one-out error.

    ``Y``: ``(c, k, D)`` offsets :math:`x_j - x_i`, nearest first; ``T``: ``(c, D, d)`` PCA frames. Returns
    ``(c, D, d)`` orthonormal frames and ``(c,)`` mean squared leave-one-out residuals :math:`|e_j|^2 / (1 - h_{jj})^2`
    of the fit over its first ``scored`` points (all by default; :math:`h` its leverages, the PRESS statistic: Allen,
    "The relationship between variable selection and data augmentation", Technometrics 1974). The tangent
    coordinates are divided by their largest norm in each neighbourhood before the monomials are formed (the
    fit is the same; its design matrix is not ill-conditioned by the powers of a small radius)."""
    d = T.shape[2]
    t = Y @ T  # (c, k, d) tangent coordinates
    R = Y - t @ np.swapaxes(T, 1, 2)  # (c, k, D) normal residuals
    h = np.linalg.norm(t, axis=2).max(axis=1)  # (c,) radius of each neighbourhood
    h = np.where(h > 0, h, 1.0)
    u = t / h[:, None, None]
    cols = [np.ones(t.shape[:2])]
    for deg in range(1, degree + 1):
        cols += [np.prod(u[..., list(c)], axis=-1) for c in itertools.combinations_with_replacement(range(d), deg)]
    F = np.stack(cols, axis=2)  # (c, k, p)
    Q, U = np.linalg.qr(F)  # (c, k, p), (c, p, p)
    diag = np.abs(np.diagonal(U, axis1=1, axis2=2))
    full = diag.min(axis=1) > 1e-10 * diag.max(axis=1)  # full column rank: least squares by QR, else pinv
    coef = np.empty((len(F), F.shape[2], R.shape[2]))  # (c, p, D)
    lev = np.empty(F.shape[:2])  # (c, k) leverages h_jj
    coef[full] = np.linalg.solve(U[full], np.swapaxes(Q[full], 1, 2) @ R[full])
    lev[full] = np.square(Q[full]).sum(axis=2)
    if not full.all():
        Fp = np.linalg.pinv(F[~full])  # (c', p, k)
        coef[~full] = Fp @ R[~full]
        lev[~full] = np.einsum("ckp,cpk->ck", F[~full], Fp)
    E = R - F @ coef
    m = F.shape[1] if scored is None else min(scored, F.shape[1])
    loo = np.mean(np.square(E[:, :m]).sum(-1) / np.square(np.maximum(1.0 - lev[:, :m], 1e-3)), axis=1)
    q, _ = np.linalg.qr(T + np.swapaxes(coef[:, 1 : 1 + d, :], 1, 2) / h[:, None, None])
    return q, loo


def local_pca(
    X: object,
    k_pca: int = 15,
    *,
    n_components: int | None = None,
    fit: str = "auto",
    chunk: int = 32768,
    workers: int = 1,
    return_fit: bool = False,
) -> tuple[np.ndarray, np.ndarray | None] | tuple[np.ndarray, np.ndarray | None, str]:
    r"""Batched local PCA: SVD of each point's ``k_pca`` nearest points (itself included), centred at their mean.

    With :math:`Y_i \in \mathbb{R}^{k_{pca} \times D}` the centred neighbourhood of :math:`x_i` and
    :math:`Y_i = U_i \operatorname{diag}(s_i) V_i^\top`, returns the singular values :math:`s_i` and, when
    ``n_components`` is given, frames :math:`T_i`:

    * ``fit="pca"`` (the reference): :math:`T_i = V_i[:, :d]`. This plane fits the whole neighbourhood, so it is
      tangent near the neighbourhood's centroid, not at :math:`x_i`: with random sampling it is tilted by about
      curvature :math:`\times` centroid offset (median 0.03, max 0.12 on a unit sphere with n = 800, k = 15).
    * ``fit="quadratic"``: in the PCA coordinates :math:`t_j = T_i^\top(x_j - x_i)` the normal residuals
      :math:`r_j = (I - T_iT_i^\top)(x_j - x_i)` are fitted by least squares as
      :math:`r_j \approx a + B t_j + \sum_{a \le b} C_{ab} t_{j,a} t_{j,b}` (the manifold as a graph over the PCA
      plane); the tangent plane at :math:`x_i` is spanned by the columns of :math:`T_i + B`, orthonormalised by QR.
      Leakage onto the true normal drops ~60-300x (median 5e-4 at n = 800). Needs
      ``k_pca > 1 + d + d(d+1)/2``.
    * ``fit="cubic"``: the same with the cubic monomials too (needs ``k_pca >`` the number of terms + 2, 12 for
      ``d = 2``). The quadratic fit's error is the cubic term of the surface: on an ellipsoid with axes
      (1, 0.75, 0.5), 1200 random points, ``k_pca = 15``, the median normal leakage drops from 6.0e-3 to 6.6e-4,
      and the part of a smooth tangent field lost by projecting it onto the frames from 0.96 % to 0.18 %. But the
      cubic fit follows positional noise: with noise of std 0.003 (4 % of the point spacing) its leakage is 3x the
      quadratic's.
    * ``fit="quartic"``, ``"quintic"``, ``"sextic"``: degree :math:`p = 4, 5, 6`, each on its own neighbourhood of
      the :func:`fit_size` :math:`= \max(k_{pca}, \binom{d+p}{p} + 3)` nearest points (18, 24, 31 for ``d = 2``,
      ``k_pca = 15``; the PCA plane stays that of the nearest ``k_pca``). A degree-:math:`p` fit of a graph over a
      neighbourhood of radius :math:`h` gets its slope with error :math:`O(h^p)` (Cazals and Pouget, "Estimating
      differential quantities using polynomial fitting of osculating jets", CAGD 2005), so the smallest
      neighbourhood that determines the fit is the most accurate on a clean cloud. Median leakage on a unit sphere
      (1200 random points, 3 seeds; ``benchmarks/rvgp_frames.py``): cubic 3.6e-4, the sextic that ``"auto"``
      picks there 5.5e-7 (the sphere's graph has no odd terms at the exact tangent plane).
    * ``fit="auto"`` (default): the fit with the smallest median over points of the mean leave-one-out residual of
      its local fits (the PRESS statistic), taken for every degree on the nearest ``k_pca`` points so that the
      degrees compare, over at most 2000 points (a fixed random subset of a larger cloud; the chosen fit is then
      made at every point); degrees are tried upwards until two in a row score worse than the best so far. Clean
      clouds get a high degree (sextic on the sphere, ellipsoid and Swiss roll above), noisy ones a low one: with
      positional noise of std 3e-4 (0.3 % of the spacing) and above, the quadratic fit (median leakage 1.2e-3 on
      the sphere, where the sextic's is 1.1e-2).

    A quadratic or cubic fit the neighbourhood does not support falls back to the next simpler one (``"pca"``
    last); ``"auto"`` skips the degrees whose neighbourhood exceeds the cloud. The frames whose fit scores above
    100 times the median take the lower-degree fit that scores best there, then refits of their nearest points
    (see ``_refit_outliers``). Time: 3-4x the choice between the quadratic and cubic fits alone when the degrees up
    to 6 are all tried (1200 points, ``k_pca = 15``: 0.7 s against 0.2 s), 2.7x at 1e4 points (``k_pca = 72``).

    Raises:
        ValueError: ``k_pca`` below 2 or above the number of points; ``fit`` unknown, or of degree 4-6 with a
        :func:`fit_size` above the number of points.

    Returns:
        ``s``: ``(n, min(k_pca, D))`` singular values, descending; ``frames``: ``(n, D, n_components)`` with
        orthonormal columns, or ``None``; with ``return_fit`` also the fit used (``"sextic"`` ... ``"quadratic"``,
        ``"pca"``).
    """
    X = as_points("X", X)
    n, D = X.shape
    check_positive("k_pca", k_pca, integer=True)
    check_option("fit", fit, _FITS)
    if k_pca < 2:
        raise ValueError(f"`k_pca` must be >= 2 (a neighbourhood of one point has no directions), got {k_pca}.")
    if k_pca > n:
        raise ValueError(f"`k_pca`={k_pca} exceeds the number of points n={n}.")
    fits: list[str] = []
    if n_components is not None and n_components < D:
        d = n_components
        if fit == "auto":
            fits = [f for f in _AUTO if fit_size(f, k_pca, d) <= n and _usable(f, fit_size(f, k_pca, d), d)]
        elif fit in ("quadratic", "cubic"):
            fits = [fit] if _usable(fit, k_pca, d) else []
            if not fits and fit == "cubic" and _usable("quadratic", k_pca, d):
                fits = ["quadratic"]
        elif fit != "pca":
            if fit_size(fit, k_pca, d) > n:
                raise ValueError(
                    f"`fit`={fit!r} needs neighbourhoods of {fit_size(fit, k_pca, d)} points at dim={d}; the cloud "
                    f"has n={n} points (use a lower degree or fit='auto')."
                )
            fits = [fit]
    k_all = max([k_pca] + [fit_size(f, k_pca, n_components or 0) for f in fits])
    idx = _neighbourhoods(X, k_all, workers)
    s_all = np.empty((n, min(k_pca, D)))
    frames = None if n_components is None else np.empty((n, D, n_components))
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        Y = X[idx[sl, :k_pca]]  # (c, k_pca, D), nearest first
        Yc = Y - Y.mean(axis=1, keepdims=True)
        if frames is None:
            s_all[sl] = np.linalg.svd(Yc, compute_uv=False)
            continue
        _, s_all[sl], Vt = np.linalg.svd(Yc, full_matrices=False)
        frames[sl] = np.swapaxes(Vt[:, :n_components, :], 1, 2)
    used = "pca"
    if fits:
        assert frames is not None
        sel = np.arange(n) if n <= _SELECT else np.sort(np.random.default_rng(0).choice(n, _SELECT, replace=False))
        score: dict[str, np.ndarray] = {}  # on the points sel
        cand: dict[str, np.ndarray] = {}
        worse = 0
        for f in fits:  # by increasing degree, until two in a row score worse than the best so far
            cand[f], score[f] = _fit_rows(X, idx, frames, sel, f, k_pca, chunk)
            best = min(float(np.median(v)) for v in score.values())
            worse = worse + 1 if float(np.median(score[f])) > best else 0
            if worse == 2:
                break
        used = min(score, key=lambda f: float(np.median(score[f])))
        level = {f: 100.0 * float(np.median(v)) for f, v in score.items()}
        if len(sel) < n:
            cand[used], score[used] = _fit_rows(X, idx, frames, np.arange(n), used, k_pca, chunk)
        frames = _refit_outliers(X, idx, frames, k_pca, cand[used], score[used], used, level, chunk)
    return (s_all, frames, used) if return_fit else (s_all, frames)


_SELECT = 2000  # points on which the degrees are compared (all of a smaller cloud; a fixed random subset)


def _fit_rows(
    X: np.ndarray, idx: np.ndarray, pca: np.ndarray, rows: np.ndarray, fit: str, k_pca: int, chunk: int
) -> tuple[np.ndarray, np.ndarray]:
    r"""Frames ``(r, D, d)`` and leave-one-out scores ``(r,)`` (on the nearest ``k_pca`` points) of the fit ``fit``
    at the points ``rows`` ``(r,)``, over their :func:`fit_size` nearest points ``idx`` ``(n, k)`` and from their
    PCA frames ``pca`` ``(n, D, d)``."""
    k_f = fit_size(fit, k_pca, pca.shape[2])
    T, sc = np.empty((len(rows),) + pca.shape[1:]), np.empty(len(rows))
    for start in range(0, len(rows), chunk):
        r = rows[start : start + chunk]
        off = X[idx[r, :k_f]] - X[r][:, None, :]  # (c, k_f, D)
        T[start : start + len(r)], sc[start : start + len(r)] = _polynomial_correction(off, pca[r], _DEGREE[fit], k_pca)
    return T, sc


def _refit_outliers(
    X: np.ndarray,
    idx: np.ndarray,
    pca: np.ndarray,
    k_pca: int,
    frames: np.ndarray,
    score: np.ndarray,
    used: str,
    level: dict[str, float],
    chunk: int,
) -> np.ndarray:
    r"""The frames ``(n, D, d)`` of the fit ``used`` (``score`` ``(n,)`` its leave-one-out scores), where the score
    exceeds ``level[used]`` (100 times its median) replaced by those of the lower-degree fit in ``level`` that
    scores lowest there (the scores are all taken on the nearest ``k_pca`` points, so they compare; ``pca``
    ``(n, D, d)`` the PCA frames), and the points still above the level of their fit refitted by
    :func:`_shrink_outliers`. A fit of high degree with barely more points than terms scores far above its median
    at a few percent of the points of a clean cloud; sent straight to the refits, whose 31-point sextic fits have no
    smaller subset to shrink to, they got the plane of the nearest 6 points: on 1200 random points (seeds 0-2) the
    largest leakage was 0.12 on a sphere, 0.2-0.6 on an ellipsoid, 0.24-0.30 on a Swiss roll; with this fallback
    2e-5-8e-5, 4e-3-2.5e-2 and 7e-3-2.7e-2 (the cubic fit alone: 2e-3-4e-3, 0.03-0.6, 0.14-0.23)."""
    n = len(frames)
    frames, sc = frames.copy(), score.copy()
    which = np.full(n, used, dtype=object)
    bad = np.flatnonzero(sc > level[used])
    for f in level:
        if _DEGREE[f] < _DEGREE[used] and bad.size:
            T, s = _fit_rows(X, idx, pca, bad, f, k_pca, chunk)
            better = s < sc[bad]
            frames[bad[better]], sc[bad[better]], which[bad[better]] = T[better], s[better], f
    for f in level:
        group = bad[(which[bad] == f) & (sc[bad] > level[f])]
        if group.size:
            _shrink_outliers(X, idx[:, : fit_size(f, k_pca, pca.shape[2])], frames, sc, f, k_pca, group, level[f])
    return frames


def _frames_from(
    Y: np.ndarray, x: np.ndarray, d: int, fit: str, scored: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""Frames ``(c, D, d)`` and leave-one-out scores ``(c,)`` (over the first ``scored`` points) of neighbourhoods
    ``Y`` ``(c, k, D)`` of points ``x`` ``(c, D)`` by PCA and the polynomial correction ``fit``."""
    _, _, Vt = np.linalg.svd(Y - Y.mean(axis=1, keepdims=True), full_matrices=False)
    return _polynomial_correction(Y - x[:, None, :], np.swapaxes(Vt[:, :d, :], 1, 2), _DEGREE[fit], scored)


def _shrink_outliers(
    X: np.ndarray,
    idx: np.ndarray,
    frames: np.ndarray,
    score: np.ndarray,
    fit: str,
    scored: int,
    bad: np.ndarray,
    level: float,
) -> None:
    r"""Refit, in place, the frames of the points ``bad`` ``(b,)`` whose neighbourhood's leave-one-out score
    exceeds ``level`` (100 times the median of the fit's scores over the cloud): with the nearest three quarters of
    the neighbours ``idx`` ``(n, k)``, repeatedly, down to three points more than the fit's terms, keeping a refit
    where it scores lower. A neighbourhood that reaches another sheet of the surface (the next turn of a roll, the
    other side of a fold) fits it badly, and its nearest points are the point's own sheet: on a Swiss roll (3000
    points, turns 0.25 apart), 4 edge points' frames leaked 0.26-0.69 onto the normal and made 80 % of the error of
    a GP on them; after the refit their leak is below 0.01. The median is the whole cloud's, so a point's frame can
    depend on points far from it."""
    d = frames.shape[2]
    k_min = _n_terms(d, _DEGREE[fit]) + 3
    k = idx.shape[1]
    while bad.size and k > k_min:
        k = max(k_min, (3 * k) // 4)
        T, sc = _frames_from(X[idx[bad, :k]], X[bad], d, fit, scored)
        better = sc < score[bad]
        frames[bad[better]], score[bad[better]] = T[better], sc[better]
        bad = bad[score[bad] > level]
    _one_sheet_refit(X, idx, frames, score, fit, bad, scored)


def _one_sheet_refit(
    X: np.ndarray, idx: np.ndarray, frames: np.ndarray, score: np.ndarray, fit: str, bad: np.ndarray, scored: int
) -> None:
    r"""Refit, in place, the frames of the points ``bad`` ``(b,)`` that :func:`_shrink_outliers` left with a bad
    score: their nearest subsets still hold two sheets. The plane of the nearest :math:`2d + 2` points (one sheet
    where the spacing is below the sheets' distance) selects the neighbours seen from the point within 17 degrees
    of it (offset across it at most 0.3 times the offset along it), and the polynomial fit on those (of degree
    ``fit``, or the highest lower one they support) replaces the frame where it scores lower (with too few of them
    for a quadratic fit, the plane itself does). On a Swiss roll of 1200 points, 2.5 turns 0.4 apart (seed 1),
    2 points kept frames with 0.67-0.79 of the normal in them, 1.1 % of a smooth field was lost by projecting it
    onto the frames and a GP on them had 3x the error of a Euclidean GP; after this refit, 0.02 and 0.16 %. (At 600
    points neighbourhoods of 15 reach the next turn at 30 % of the points, and the loss only falls from 7 % to 5 %:
    the cloud does not resolve the surface.)"""
    d = frames.shape[2]
    near = min(2 * d + 2, idx.shape[1])
    lower = [f for f in _AUTO[::-1] if _DEGREE[f] <= _DEGREE[fit]]  # highest degree first
    for i in bad:
        Y = X[idx[i]] - X[i]  # (k, D) offsets, the point itself first
        T = np.linalg.svd(Y[:near] - Y[:near].mean(0), full_matrices=False)[2][:d].T  # (D, d)
        t = Y @ T
        keep = np.linalg.norm(Y - t @ T.T, axis=1) <= 0.3 * np.linalg.norm(t, axis=1)
        keep[0] = True
        f = next((f for f in lower if _usable(f, int(keep.sum()), d)), None)
        if f is None:
            frames[i] = T
            continue
        Tn, sc = _frames_from(X[idx[i][keep]][None], X[i][None], d, f, scored)
        if sc[0] < score[i]:
            frames[i], score[i] = Tn[0], sc[0]


def frames_at(cloud: np.ndarray, points: np.ndarray, k_pca: int, dim: int, fit: str) -> np.ndarray:
    r"""Tangent frames ``(m, D, dim)`` at new ``points`` ``(m, D)`` near a ``cloud`` ``(n, D)``: PCA of each
    point's ``k_pca`` nearest cloud points, corrected by the local polynomial fit ``fit`` (``"quadratic"`` to
    ``"sextic"``, or ``"pca"``; as in :func:`local_pca`, on its :func:`fit_size` nearest cloud points, with the
    offsets taken from the new point)."""
    k = min(k_pca, len(cloud))
    k_fit = min(fit_size(fit, k_pca, dim), len(cloud)) if fit in _DEGREE else 0
    _, nb = cKDTree(cloud).query(points, k=max(k, k_fit))
    Y = cloud[nb.reshape(len(points), max(k, k_fit))]
    _, _, Vt = np.linalg.svd(Y[:, :k] - Y[:, :k].mean(1, keepdims=True), full_matrices=False)
    T = np.swapaxes(Vt[:, :dim, :], 1, 2)
    if fit in _DEGREE and dim < cloud.shape[1] and _usable(fit, k_fit, dim):
        T, _ = _polynomial_correction(Y[:, :k_fit] - points[:, None, :], T, _DEGREE[fit])
    return T


def estimate_dimension(singular_values: np.ndarray, threshold: float = 0.9) -> int:
    r"""Manifold dimension from local-PCA singular values.

    Rule: with the explained-variance fractions :math:`r_{i,m} = \sum_{a \le m} s_{i,a}^2 / \sum_a s_{i,a}^2`,
    :math:`d` is the smallest :math:`m` such that the **median** over points of :math:`r_{i,m}` reaches
    ``threshold`` (default 0.9). The median makes the rule robust to the few neighbourhoods that straddle
    high-curvature regions or outliers (the reference uses mean minus one standard deviation, threshold 0.8).

    Args:
        singular_values: ``(n, m)`` from :func:`local_pca`.
        threshold: Fraction of local variance the tangent space must explain, in ``(0, 1]``.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must lie in (0, 1], got {threshold!r}.")
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    total = s2.sum(axis=1, keepdims=True)
    frac = np.cumsum(s2, axis=1) / np.where(total > 0, total, 1.0)
    med = np.median(frac, axis=0)
    return int(np.argmax(med >= threshold - 1e-12) + 1) if np.any(med >= threshold - 1e-12) else s2.shape[1]


def tangent_frames(
    X: object,
    dim: int | None = None,
    *,
    k_pca: int = 15,
    threshold: float = 0.9,
    fit: str = "auto",
    workers: int = 1,
    return_fit: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, str]:
    r"""Orthonormal tangent frames by local PCA, with the manifold dimension given or estimated.

    Args:
        X: Points ``(n, D)``.
        dim: Manifold dimension :math:`d`, ``1 <= d <= D`` and ``d < k_pca``; ``None`` estimates it with
            :func:`estimate_dimension` (``threshold``).
        k_pca: Points in each PCA neighbourhood, the point itself included.
        fit: ``"auto"`` (default), ``"sextic"``, ``"quintic"``, ``"quartic"``, ``"cubic"``, ``"quadratic"``
            (tilt-corrected) or ``"pca"`` (the reference); see :func:`local_pca`.
        threshold: Explained-variance threshold of the dimension estimate (``dim=None``).
        workers: Threads of the KD-tree neighbour queries (-1: all).
        return_fit: Also return the fit used.

    Returns:
        ``frames`` ``(n, D, d)`` with :math:`T_i^\top T_i = I_d`, and the singular values ``(n, min(k_pca, D))``
        (and the fit used, with ``return_fit``).
    """
    X = as_points("X", X)
    D = X.shape[1]
    if dim is not None:
        _check_dim(dim, D, k_pca)
        s, frames, used = local_pca(X, k_pca, n_components=dim, fit=fit, workers=workers, return_fit=True)
    else:
        s, _ = local_pca(X, k_pca, workers=workers)
        dim = estimate_dimension(s, threshold)
        _check_dim(dim, D, k_pca)
        _, frames, used = local_pca(X, k_pca, n_components=dim, fit=fit, workers=workers, return_fit=True)
    assert frames is not None
    if dim < s.shape[1]:
        deficient = s[:, dim - 1] <= 1e-10 * np.maximum(s[:, 0], np.finfo(float).tiny)
    else:
        deficient = s[:, -1] <= 1e-10 * np.maximum(s[:, 0], np.finfo(float).tiny)
        deficient &= k_pca - 1 < dim
    if np.any(deficient):
        warnings.warn(
            f"{int(deficient.sum())} of {len(X)} PCA neighbourhoods span fewer than dim={dim} directions (e.g. point "
            f"{int(np.flatnonzero(deficient)[0])}); their frames are completed arbitrarily. Increase k_pca.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return (frames, s, used) if return_fit else (frames, s)


def _check_dim(dim: object, D: int, k_pca: int) -> None:
    check_positive("dim", dim, integer=True)
    assert isinstance(dim, int)
    if dim > D:
        raise ValueError(f"The manifold dimension dim={dim} exceeds the ambient dimension D={D}.")
    if dim >= k_pca:
        raise ValueError(f"Local PCA needs k_pca > dim points per neighbourhood, got k_pca={k_pca}, dim={dim}.")


def procrustes(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Batched orthogonal Procrustes between frames: :math:`O = \arg\min_{O \in O(d)} \|O - A^\top B\|_F`.

    With :math:`A^\top B = U \Sigma V^\top`, :math:`O = U V^\top` (reflections allowed: frames carry no
    orientation). :math:`O` maps coordinates in frame ``B`` to coordinates in frame ``A``.

    Args:
        A, B: ``(..., D, d)`` frames with orthonormal columns.

    Returns:
        ``O`` ``(..., d, d)`` orthogonal, and ``cosines`` ``(..., d)``: the singular values of :math:`A^\top B`,
        the cosines of the principal angles between the two subspaces (1 = parallel planes).
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if A.shape != B.shape or A.ndim < 2:
        raise ValueError(f"`A` and `B` must be frames of the same shape (..., D, d), got {A.shape} and {B.shape}.")
    M = np.swapaxes(A, -1, -2) @ B
    U, s, Vt = np.linalg.svd(M)
    return U @ Vt, s


def local_noise_variance(
    points: np.ndarray,
    values: np.ndarray,
    frames: np.ndarray,
    n_neighbors: int = 30,
    max_centres: int = 5000,
    labels: np.ndarray | None = None,
) -> float | None:
    r"""Estimate of the observation-noise variance per tangent coordinate, made without a spectral basis.

    For each point :math:`i`, the values of its ``n_neighbors`` nearest other locations (vectors: their tangent
    coordinates transported into frame :math:`i` by :math:`O_{ij}` = Procrustes(:math:`T_i, T_j`)) are fitted by least
    squares with a polynomial in the tangent coordinates :math:`T_i^\top (x_j - x_i)`, cubic (quadratic with fewer
    points). The leave-one-out residual :math:`r_i` at :math:`x_i` has :math:`E\|r_i\|^2 = d\,\sigma^2 (1 + h_i)`
    plus a squared bias, :math:`h_i` the fit's leverage at :math:`x_i` and the bias :math:`O(\rho^4)` for a smooth
    field and neighbourhoods of radius :math:`\rho` (local polynomial variance estimation: Hall and Marron, "On
    variance estimation in nonparametric regression", Biometrika 1990), so
    :math:`\hat\sigma^2 = \mathrm{mean}_i \|r_i\|^2 / (d (1 + h_i))`. Measured with 500 points, 30 neighbours:
    noise-free sphere 4e-7, torus 4e-4 (their rank-48 residuals: 2e-3, 3e-2); tangent noise of variance 2.5e-3:
    2.49e-3, 2.75e-3.

    **Locality.** The bias grows with the neighbourhood's radius relative to the field's lengthscale and the
    surface's curvature radius, and a component with few points spread over it has only wide neighbourhoods (with
    20 points on a unit sphere the 19 neighbours of a point are the whole sphere). A neighbourhood therefore holds
    at most a quarter of the distinct locations of its component (``min(n_neighbors, m // 4)``), and a component
    whose neighbourhoods cannot hold a quadratic fit (:math:`1 + d + d(d+1)/2 + 10` points, 16 on a surface, so
    fewer than 64 distinct locations) gives no term: its noise cannot be told from the field's variation. With 150
    or more points per component and 30 neighbours nothing changes. Measured (``benchmarks/noise_estimate.py``,
    ``benchmarks/results/noise_estimate.md``): estimate over true variance on a unit sphere with a smooth field and
    noise std 0.1, with 20 points 25-33 (now no estimate), 80 points 0.98-1.12 (now 0.88-1.03; std 0.01:
    6.9-10.9, now 2.0-2.6).

    **Duplicates.** The points are put in a canonical order (lexicographic in position and value), and the
    neighbours of a point are the *other distinct locations*: its own exact duplicates are excluded, and the
    observations at a neighbouring location enter as their mean, with leverage weight :math:`w_j^2 / c_j` for
    :math:`c_j` observations there (:math:`h_i = \sum_j w_j^2 / c_j`). The estimate does not depend on the order of
    the points (bit for bit).

    With ``labels`` (e.g. the graph components of the points) the neighbours of a point are taken among the points
    with its label only, and the degree from their number; a label with too few points gives no term, and the
    estimate is the mean of the terms of all labels. Without, a point of a component with fewer than
    ``n_neighbors + 1`` points borrowed neighbours from another component: RVGP on two unit spheres 10 apart, 150
    points observed on one and 6 on the other, tangent noise of std 0.1 on both, estimated 1.11-5.99 times the noise
    variance (seeds 0-5), now 0.97-1.18 (``tests/test_rvgp_semantics.py``).

    Args:
        points: ``(m, D)`` positions.
        values: ``(m, D)`` vectors or ``(m,)`` scalars.
        frames: ``(m, D, d)`` orthonormal tangent frames at the points.
        n_neighbors: Distinct locations per local fit (at most a quarter of the component's).
        max_centres: At most this many points (a fixed random subset of the canonical order) are fitted; all are
            neighbours.
        labels: Optional ``(m,)`` labels; neighbours share the point's label.

    Returns:
        The estimate (units of ``values`` squared), or ``None`` when no label has the distinct locations of a local
        quadratic fit (``4 * (1 + d + d(d+1)/2 + 10)``, 64 on a surface).
    """
    points = np.asarray(points, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    frames = np.asarray(frames, dtype=np.float64)
    m = len(points)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != (m,):
            raise ValueError(f"`labels` must have shape ({m},) (one per point), got {labels.shape}.")
    # canonical order: lexicographic in (position, value); rows equal in both are interchangeable
    keys = np.concatenate([points, values.reshape(m, -1)], axis=1)
    order = np.lexsort(keys.T[::-1]) if m else np.arange(0)
    points, values, frames = points[order], values[order], frames[order]
    c = np.arange(m) if m <= max_centres else np.sort(np.random.default_rng(0).choice(m, max_centres, replace=False))
    if labels is None:
        terms = _loo_noise_terms(points, values, frames, c, n_neighbors)
        return None if terms is None else float(np.mean(terms))
    labels = labels[order]
    parts = []
    for lab in np.unique(labels):
        own = np.flatnonzero(labels == lab)
        centres = np.searchsorted(own, c[labels[c] == lab])  # the fitted points of this label, as its rows
        if len(centres):
            terms = _loo_noise_terms(points[own], values[own], frames[own], centres, n_neighbors)
            parts += [] if terms is None else [terms]
    return float(np.mean(np.concatenate(parts))) if parts else None


def _loo_noise_terms(
    points: np.ndarray, values: np.ndarray, frames: np.ndarray, c: np.ndarray, n_neighbors: int
) -> np.ndarray | None:
    r"""The terms :math:`\|r_i\|^2 / (d (1 + h_i))` of :func:`local_noise_variance` at the centres ``c`` ``(q,)``,
    among the ``(m, D)`` points (values, ``(m, D, d)`` frames) in canonical order; ``None`` with too few distinct
    locations for a local quadratic fit."""
    d = frames.shape[2]
    uniq, first, inv, count = np.unique(points, axis=0, return_index=True, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    mean = np.zeros((len(uniq),) + values.shape[1:])
    np.add.at(mean, inv, values)  # in the canonical order: the same sums for any input order
    mean /= count.reshape((-1,) + (1,) * (values.ndim - 1))
    ufr = frames[first]
    nn = min(n_neighbors, len(uniq) // 4)  # a neighbourhood: at most a quarter of the component
    terms = [()]  # monomials of the tangent coordinates, by degree, while there are 10 points more than terms
    for deg in (1, 2, 3):
        more = list(itertools.combinations_with_replacement(range(d), deg))
        if nn < len(terms) + len(more) + (3 if deg == 1 else 10):
            break
        terms += more
    if len(terms) < 1 + d + d * (d + 1) // 2:
        return None
    _, nb = cKDTree(uniq).query(points[c], k=nn + 1)
    nb = nb[:, 1:]  # the other locations (the point's own, at distance 0, is the first and only such)
    U = np.einsum("mDd,mjD->mjd", frames[c], uniq[nb] - points[c][:, None])
    design = np.stack([np.prod(U[..., list(t)], axis=-1) for t in terms], axis=-1)
    Xp = np.linalg.pinv(design)[:, 0, :]  # m x nn: weights of the fit's value at the point
    if values.ndim == 1:
        C, c0 = mean[nb][..., None], values[c][:, None]
    else:
        O, _ = procrustes(np.repeat(frames[c][:, None], nn, 1), ufr[nb])
        C = np.einsum("mjab,mjDb,mjD->mja", O, ufr[nb], mean[nb])
        c0 = np.einsum("mDd,mD->md", frames[c], values[c])
    r2 = np.square(c0 - np.einsum("mj,mjc->mc", Xp, C)).mean(-1)
    return r2 / (1.0 + (np.square(Xp) / count[nb]).sum(-1))
