#!/usr/bin/env python3
r"""How much of a tangent field lies outside the span of a connection Laplacian's first eigenfields (no model fitted).

RVGP's spectral kernel can only represent fields in the span of its ``k`` eigenfields
(:mod:`gpgeom.models.rvgp.ambient` says why it adds an ambient part). This script measures that span directly: for
a noise-free tangent field :math:`v` on a cloud, in the frames' coordinates :math:`c_i = T_i^\top v_i` (``nd``
values, :meth:`~gpgeom.geometry.connection.ConnectionLaplacian.project`), the relative L2 norm of its least-squares
residual against the first ``k`` eigenvectors :math:`V` of the connection Laplacian,
:math:`\|c - V V^+ c\| / \|c\|` (Euclidean, for every normalisation).

Data: 1200 i.i.d. area-uniform points of the ellipsoid with half-axes (1, 0.75, 0.5) and the fields of
:func:`gpgeom.datasets.vector_fields.ellipsoid_vector_field` (``"smooth"``: quadratic; ``"rough"``: frequency 8,
wavelengths about 0.45), seeds 0-2 (the points and the rough field), ``dim=2``. Laplacians
(:func:`~gpgeom.geometry.connection.connection_laplacian`): the defaults (``k=10`` graph, unit weights,
unnormalised), and Gaussian weights with ``alpha=1`` and ``"sym"`` or ``"rw"`` normalisation at ``k=10`` and ``k=30``.

Usage: ``python benchmarks/rvgp_span.py [--quick]`` (about a minute). Writes ``benchmarks/results/rvgp_span.md``;
``--quick`` (seed 0 only) writes ``benchmarks/results/local/rvgp_span_quick.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import markdown_table, report_name, write_benchmark_report  # noqa: E402
from gpgeom.datasets.vector_fields import ellipsoid_vector_field  # noqa: E402
from gpgeom.geometry.connection import connection_laplacian  # noqa: E402

TITLE = "RVGP: the part of a tangent field outside the span of the first eigenfields"
N_POINTS = 1200
#: Eigenfield counts (columns).
COUNTS = (50, 100, 200)
#: The connection Laplacians compared: label, keyword arguments of ``connection_laplacian``.
SETTINGS = (
    ("defaults (k=10, unit weights, unnormalised)", {}),
    ("gaussian, alpha=1, sym, k=10", {"weights": "gaussian", "alpha": 1.0, "normalization": "sym"}),
    ("gaussian, alpha=1, rw, k=10", {"weights": "gaussian", "alpha": 1.0, "normalization": "rw"}),
    ("gaussian, alpha=1, sym, k=30", {"weights": "gaussian", "alpha": 1.0, "normalization": "sym", "k": 30}),
    ("gaussian, alpha=1, rw, k=30", {"weights": "gaussian", "alpha": 1.0, "normalization": "rw", "k": 30}),
)


def outside_share(values: np.ndarray, vectors: np.ndarray) -> float:
    r"""``||c - V V^+ c|| / ||c||`` for ``values`` ``c`` (``nd``) and ``vectors`` ``V`` (``nd x k``)."""
    coef, *_ = np.linalg.lstsq(vectors, values, rcond=None)
    return float(np.linalg.norm(values - vectors @ coef) / np.linalg.norm(values))


def table(seeds: range) -> list[str]:
    """The report's body: one row per field, Laplacian and eigenfield count; one column per seed."""
    rows = []
    for kind in ("smooth", "rough"):
        samples = [ellipsoid_vector_field(N_POINTS, kind, seed=seed) for seed in seeds]
        for label, kw in SETTINGS:
            shares = []
            for s in samples:
                lap = connection_laplacian(s.points, dim=2, **kw)
                _, vectors = lap.eigenpairs(max(COUNTS))
                values = lap.project(s.vectors).reshape(-1)
                shares.append([outside_share(values, vectors[:, :k]) for k in COUNTS])
            for j, k in enumerate(COUNTS):
                rows.append([kind, label, k, *(f"{100 * sh[j]:.1f} %" for sh in shares)])
    header = ["field", "connection Laplacian", "eigenfields", *(f"seed {seed}" for seed in seeds)]
    return ["## Relative L2 norm of the part outside the span", "", markdown_table(header, rows)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only, to benchmarks/results/local/")
    args = parser.parse_args(argv)
    seeds = range(1) if args.quick else range(3)
    facts = [
        f"{N_POINTS} i.i.d. area-uniform points of the ellipsoid (1, 0.75, 0.5), noise-free ellipsoid_vector_field"
        f" fields, dim=2; seeds {seeds[0]}-{seeds[-1]}",
        "cells: ||c - V V^+ c|| / ||c|| for the field's frame coordinates c and the first k eigenvectors V"
        " (least squares, Euclidean)",
        "`benchmarks/rvgp_span.py` (its docstring says what each row is)",
    ]
    write_benchmark_report(report_name("rvgp_span", quick=args.quick), TITLE, facts, table(seeds))


if __name__ == "__main__":
    main()
