#!/usr/bin/env python3
r"""RVGP's basis-free noise estimate (:func:`gpgeom.geometry.tangent.local_noise_variance`) against the truth.

Data: 1000 area-uniform points on a unit sphere and on an ellipsoid (half-axes 1, 0.75, 0.5), the fields of
:func:`gpgeom.datasets.vector_fields.ellipsoid_vector_field` (``"smooth"``: quadratic; ``"rough"`` at frequency 3,
wavelengths about 1.2, and at the default 8, about 0.45, finer than the spacing of 300 points), tangent noise of std
0.1 and 0.01; ``n_observed`` of the points (``default_rng(100 + seed).choice``), frames by local PCA of the whole
cloud; seeds 0-4. Cells: the estimate over the true variance, median [min, max] over the seeds; ``none``: no
estimate (too few distinct points for a local fit). ``before``: the estimator as it was (30 neighbours however few
the points, the point's duplicates not excluded), reimplemented here for the comparison.

Calibration: RVGP (48 eigenpairs, ``dim=2``) fitted on 20 and 80 points of the smooth fields (noise std 0.1, seeds
0-2), held-out latent 95 % coverage and z RMS against the noise-free field with the noise estimate the fit gives
(``after``), the old estimate (``before``) and the true variance (``truth``).

Usage: ``python benchmarks/noise_estimate.py``; writes ``benchmarks/results/noise_estimate.md`` (about a minute).
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import markdown_table, write_benchmark_report  # noqa: E402
from gpgeom.datasets.vector_fields import ellipsoid_vector_field  # noqa: E402
from gpgeom.geometry.tangent import local_noise_variance, procrustes, tangent_frames  # noqa: E402
from gpgeom.metrics import calibration_summary, coverage  # noqa: E402
from gpgeom.models.rvgp import RVGP  # noqa: E402

SURFACES = {"sphere": (1.0, 1.0, 1.0), "ellipsoid": (1.0, 0.75, 0.5)}
FIELDS = {"smooth": {}, "rough f=3": {"frequency": 3.0}, "rough f=8": {}}
NS = (10, 20, 40, 80, 150, 300)
SEEDS = range(5)


def before(points: np.ndarray, values: np.ndarray, frames: np.ndarray, n_neighbors: int = 30) -> float | None:
    r"""The estimator before the locality rule and the exclusion of duplicates (for the comparison only)."""
    m, d = len(points), frames.shape[2]
    nn = min(n_neighbors, m - 1)
    terms = [()]
    for deg in (1, 2, 3):
        more = list(itertools.combinations_with_replacement(range(d), deg))
        if nn < len(terms) + len(more) + (3 if deg == 1 else 10):
            break
        terms += more
    if len(terms) == 1:
        return None
    _, nb = cKDTree(points).query(points, k=nn + 1)
    nb = nb[:, 1:]
    U = np.einsum("mDd,mjD->mjd", frames, points[nb] - points[:, None])
    Xp = np.linalg.pinv(np.stack([np.prod(U[..., list(t)], axis=-1) for t in terms], axis=-1))[:, 0, :]
    O, _ = procrustes(np.repeat(frames[:, None], nn, 1), frames[nb])
    C = np.einsum("mjab,mjDb,mjD->mja", O, frames[nb], values[nb])
    c0 = np.einsum("mDd,mD->md", frames, values)
    r2 = np.square(c0 - np.einsum("mj,mjc->mc", Xp, C)).mean(-1)
    return float(np.mean(r2 / (1.0 + np.square(Xp).sum(-1))))


def cell(ratios: list[float | None]) -> str:
    if all(r is None for r in ratios):
        return "none"
    r = np.array([np.nan if v is None else v for v in ratios])
    miss = int(np.isnan(r).sum())
    return f"{np.nanmedian(r):.3g} [{np.nanmin(r):.3g}, {np.nanmax(r):.3g}]" + (f" ({miss} none)" if miss else "")


def ratios_table() -> list[str]:
    rows = []
    for (surf, axes), (field, kw), std in itertools.product(SURFACES.items(), FIELDS.items(), (0.1, 0.01)):
        new, old = {n: [] for n in NS}, {n: [] for n in NS}
        for seed in SEEDS:
            kind = "smooth" if field == "smooth" else "rough"
            s = ellipsoid_vector_field(1000, kind, axes=axes, vector_noise=std, seed=seed, **kw)
            T, _ = tangent_frames(s.points, dim=2)
            rng = np.random.default_rng(100 + seed)
            for n in NS:
                tr = rng.choice(1000, n, replace=False)
                for out, fn in ((new, local_noise_variance), (old, before)):
                    e = fn(s.points[tr], s.vectors[tr], T[tr])
                    out[n].append(None if e is None else e / std**2)
        for name, out in (("before", old), ("after", new)):
            rows.append([surf, field, std, name] + [cell(out[n]) for n in NS])
    return [markdown_table(["surface", "field", "noise std", "estimator"] + [f"n={n}" for n in NS], rows)]


def calibration_table() -> list[str]:
    rows = []
    std = 0.1
    for (surf, axes), n in itertools.product(SURFACES.items(), (20, 80)):
        acc = {k: [] for k in ("before", "after", "truth")}
        ratio_before, ratio_after = [], []
        for seed in range(3):
            s = ellipsoid_vector_field(1000, "smooth", axes=axes, vector_noise=std, seed=seed)
            perm = np.random.default_rng(100 + seed).permutation(1000)
            tr, te = perm[:n], perm[n:]
            gp = RVGP(s.points, n_eigenpairs=48, dim=2).fit(tr, s.vectors[tr], seed=0, progress=False)
            ys2 = gp.y_scale**2
            old = before(s.points[tr], s.vectors[tr] / gp.y_scale, gp.laplacian.frames[tr])
            after = gp.noise_estimate
            ratio_before.append(old * ys2 / std**2)
            ratio_after.append(None if after is None else after * ys2 / std**2)
            for name, val in (("before", old), ("after", after), ("truth", std**2 / ys2)):
                gp.noise_estimate = val
                mean, sd = gp.predict(te, return_std=True)
                cal = calibration_summary(s.clean_vectors[te], mean, sd)
                acc[name].append((coverage(s.clean_vectors[te], mean, sd), cal["z_rms"]))
        for name, vals in acc.items():
            a = np.array(vals)
            est = {"before": cell(ratio_before), "after": cell(ratio_after), "truth": "1"}[name]
            rows.append(
                [
                    surf,
                    n,
                    name,
                    est,
                    f"{a[:, 0].min():.3f}-{a[:, 0].max():.3f}",
                    f"{a[:, 1].min():.2f}-{a[:, 1].max():.2f}",
                ]
            )
    header = ["surface", "n observed", "noise estimate", "estimate / true", "latent 95 % coverage", "z RMS"]
    return [markdown_table(header, rows)]


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)
    body = ["## Estimate / true noise variance", "", *ratios_table(), "", "## RVGP held-out calibration (sparse)", ""]
    body += calibration_table()
    facts = [
        "1000-point clouds, tangent noise, frames by local PCA of the cloud; seeds 0-4 (calibration 0-2)",
        "cells: median [min, max] of estimate / true variance over the seeds; none: no estimate",
    ]
    write_benchmark_report("noise_estimate", "RVGP noise estimate", facts, body)


if __name__ == "__main__":
    main()
