#!/usr/bin/env python3
r"""RVGP's frames: the normal leakage of the tilt-corrected frames on a unit sphere, their tail on sparse clouds of
an ellipsoid, and what each costs RVGP.

The problem is that of the "RVGP against the Euclidean GP" section of ``benchmarks/rvgp.py``: 1200 i.i.d. points of a
unit sphere with the smooth noise-free field of :func:`gpgeom.datasets.vector_fields.ellipsoid_vector_field`
(``axes=(1, 1, 1)``), 30 % observed (split ``default_rng(seed).permutation``, seeds 0-2). Per seed and frame fit
(``frame_fit="auto"``, the default, which picks the degree by leave-one-out error, and ``frame_fit="cubic"``): the fit
the Laplacian used, the median and largest normal leakage of its frames, :math:`\|F_i^\top n_i\|` with the exact
normal :math:`n_i = x_i` (0 for a frame in the tangent plane), and the relative L2 error of RVGP's latent mean
(``RVGP(points, n_eigenpairs=50, frame_fit=...)``, every other setting at its default) against the noise-free field
at the held-out points, with its fit + predict time. The last rows are the medians over the seeds.

Sparse clouds (second table): the ellipsoid of half-axes (1, 0.75, 0.5) sampled at 300, 400, 600 and 1200 points
(:func:`~gpgeom.datasets.vector_fields.ellipsoid_vector_field`, smooth field, tangent noise 0.05, seeds 0-4): the
angle between each default frame's normal and the exact normal in degrees (median, 99th percentile and largest over
the cloud), and at 400 points (half observed, ``n_eigenpairs=30``, ``dim=2``) the relative L2 error of RVGP's latent
mean against the noise-free field at the held-out points with the default frames and with exact frames (``frames=``,
an orthonormal basis of each exact tangent plane): what the frames' tail costs.

Usage: ``python benchmarks/rvgp_frames.py [--quick]``. Writes ``benchmarks/results/rvgp_frames.md``; ``--quick``
(seed 0 only) writes ``benchmarks/results/local/rvgp_frames_quick.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown_table, normal_angles, peak_rss_mib, report_name, write_benchmark_report  # noqa: E402

from gpgeom import RVGP  # noqa: E402
from gpgeom.datasets.vector_fields import ellipsoid_vector_field  # noqa: E402
from gpgeom.metrics import relative_l2  # noqa: E402

N, FITS = 1200, ("auto", "cubic")
SPARSE_SIZES, SPARSE_AXES = (300, 400, 600, 1200), (1.0, 0.75, 0.5)


def one(seed: int, fit: str) -> list:
    r"""One row: the frames' leakage and RVGP's relative L2 error for ``seed`` and ``frame_fit=fit``."""
    s = ellipsoid_vector_field(N, "smooth", axes=(1.0, 1.0, 1.0), seed=seed)
    perm = np.random.default_rng(seed).permutation(N)
    tr, te = perm[: int(0.3 * N)], perm[int(0.3 * N) :]
    t0 = time.perf_counter()
    gp = RVGP(s.points, n_eigenpairs=50, frame_fit=fit).fit(tr, s.vectors[tr])
    mean = gp.predict(te).cpu().numpy()
    t = time.perf_counter() - t0
    lap = gp.laplacian
    leak = np.linalg.norm(np.einsum("nD,nDd->nd", s.normals, lap.frames), axis=1)
    return [
        seed,
        fit,
        lap.frame_fit,
        float(np.median(leak)),
        float(leak.max()),
        relative_l2(mean, s.clean_vectors[te]),
        t,
    ]


def sparse(n: int, seed: int) -> list:
    r"""One row of the sparse-cloud table: the frames' normal angles on ``n`` points of the ellipsoid and, at 400
    points, RVGP's relative L2 error with the default and with exact frames."""
    s = ellipsoid_vector_field(n, "smooth", axes=SPARSE_AXES, vector_noise=0.05, seed=seed)
    default = RVGP(s.points, n_eigenpairs=30, dim=2)  # the frames RVGP builds by default
    ang = normal_angles(default.laplacian.frames, s.normals)
    row: list = [n, seed, float(np.median(ang)), float(np.percentile(ang, 99)), float(ang.max())]
    if n != 400:
        return row + ["-", "-"]
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    tangent = np.cross(s.normals, np.array([0.3, 0.5, 0.8]))
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    exact = np.stack([tangent, np.cross(s.normals, tangent)], 2)
    errors = []
    for gp in (default, RVGP(s.points, n_eigenpairs=30, dim=2, frames=exact)):
        gp.fit(tr, s.vectors[tr])
        errors.append(relative_l2(gp.predict(te).detach().cpu().numpy(), s.clean_vectors[te]))
    return row + errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seed 0 only")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = (0,) if args.quick else (0, 1, 2)
    t0 = time.perf_counter()
    rows = []
    for seed in seeds:
        for fit in FITS:
            rows.append(one(seed, fit))
            print("  ", rows[-1], flush=True)
    for fit in FITS:
        mine = [r for r in rows if r[1] == fit]
        rows.append(
            ["median", fit, "-", *(float(np.median([r[i] for r in mine])) for i in (3, 4, 5, 6))]  # noqa: B023
        )
    sparse_rows = [sparse(n, seed) for n in SPARSE_SIZES for seed in ((0,) if args.quick else range(5))]
    for row in sparse_rows:
        print("  ", row, flush=True)
    sparse_header = [
        "points",
        "seed",
        "median angle deg",
        "p99 angle deg",
        "max angle deg",
        "RVGP relL2, default frames",
        "RVGP relL2, exact frames",
    ]
    header = [
        "seed",
        "frame_fit",
        "fit used",
        "median leakage",
        "max leakage",
        "RVGP relL2 (held-out)",
        "t_fit+pred s",
    ]
    write_benchmark_report(
        report_name("rvgp_frames", quick=args.quick),
        "RVGP's frames: normal leakage and RVGP's error on a unit sphere (1200 points, 30 % observed, smooth "
        "noise-free field), and the frames' tail on sparse clouds of an ellipsoid",
        [
            f"mode: {'quick' if args.quick else 'full'}; {time.perf_counter() - t0:.0f} s in all; peak memory of the "
            f"process (resident set, Linux): {peak_rss_mib():.0f} MB; `benchmarks/rvgp_frames.py` (its docstring says "
            "what each column is)"
        ],
        [
            markdown_table(header, rows),
            "\n## Sparse clouds: the ellipsoid (1, 0.75, 0.5), frames' normal angle to the exact normal, and RVGP "
            "(400 points: half observed, tangent noise 0.05) with its default and with exact frames\n\n"
            + markdown_table(sparse_header, sparse_rows),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
