r"""MMGP's round-trip transfer error and its variance (``MMGP(transfer_variance=...)``) on coarse notched plates.

MMGP decodes on the common mesh and interpolates back, so every prediction carries the round-trip error
:math:`T_i = U_i - Q_i P_i U_i` (:mod:`gpgeom.models.mmgp.roundtrip`), computed here exactly for every mesh. For
small plate families with coarse meshes (``generate_notched_plates(mesh_size=h)``, seed 0 training, seed 1
held out), one fit per configuration, predicted with the transfer term off and on (the same model: only the
variance differs), per field:

* ``T share``: :math:`\sum T^2 / \sum e^2`, the share of the squared prediction error :math:`e` that is round-trip
  error (on the training meshes the GP reproduces the coefficients, and the round trip is most of the error);
* z RMS and 95 % coverage (:mod:`gpgeom.metrics`) of all nodes of the training meshes and of the held-out meshes,
  without and with the transfer term (nodes whose std is zero, e.g. the clamped edge of the displacements, where
  the error is zero too, are left out; the nodes of one mesh are correlated, so the coverage varies by more than the
  binomial error between families), and the NLPD of the held-out nodes, without and with the term;
* ``z RMS of T alone``: :math:`T_j / \sqrt{w_j (Q\kappa)_j}` on the held-out meshes, the calibration of the
  transfer model by itself (1 if its variance is right).

Usage: python benchmarks/mmgp_transfer.py [--quick]   (writes benchmarks/results/mmgp_transfer.md; a few minutes
on 2 cores; --quick: one configuration, results/local/)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import markdown_table, report_name, write_benchmark_report  # noqa: E402

from gpgeom.datasets.notched_plate import FIELD_NAMES, OUT_SCALAR_NAMES, generate_notched_plates  # noqa: E402
from gpgeom.metrics import coverage, nlpd, z_rms  # noqa: E402
from gpgeom.models.mmgp import MMGP, samples_to_arrays  # noqa: E402
from gpgeom.models.mmgp.roundtrip import interpolation_spread, roundtrip_variance  # noqa: E402

#: (n_train, n_test, mesh_size, MMGP settings); the defaults except restarts, and the former 8-mode default.
CONFIGS = [
    (30, 30, 0.1, {}),
    (40, 30, 0.15, {}),
    (60, 30, 0.1, {}),
    (40, 30, 0.15, {"n_modes_geometry": 8, "n_modes_fields": 8, "hyperparameters": "per_field"}),
]


def _pooled(model, meshes, mu, U, on: bool) -> tuple[np.ndarray, ...]:
    model.transfer_variance = on
    try:
        p = model.predict(meshes, mu, return_std=True)
    finally:
        model.transfer_variance = True
    m = [f.detach().cpu().numpy() for f in p.fields]
    s = [f.detach().cpu().numpy() for f in p.fields_std]
    return np.concatenate(U), np.concatenate(m), np.concatenate(s)


def _roundtrip(model, meshes, U) -> tuple[np.ndarray, np.ndarray]:
    r"""The exact round-trip errors ``(sum N_i, m)`` and the transfer model's variances of them, pooled."""
    import torch

    T, V = [], []
    kappa = torch.stack([f.transfer_kappa for f in model._fields], -1).double().cpu()
    for i, (mesh, u) in enumerate(zip(meshes, U, strict=True)):
        ops = model._operators(mesh, f"mesh {i}")
        T.append(u - ops.inv_proj @ (ops.proj @ u))
        w = interpolation_spread(ops.inv_proj, ops.morphed, model.common_morphed_)
        Q = torch.as_tensor(ops.inv_proj.toarray())
        V.append(roundtrip_variance(Q, kappa, torch.as_tensor(w / float(model._fields[0].transfer_spread[0]))).numpy())
    return np.concatenate(T), np.concatenate(V)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one configuration (results/local/)")
    args = ap.parse_args()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows, calib = [], []
    t_start = time.time()
    with tempfile.TemporaryDirectory() as cache:
        for n_train, n_test, h, settings in configs:
            kw = {"mesh_size": h, "cache_dir": cache, "progress": False}
            M, mu, U, w = samples_to_arrays(generate_notched_plates(n_train, seed=0, **kw))
            Mt, mut, Ut, _ = samples_to_arrays(generate_notched_plates(n_test, seed=1, **kw))
            model = MMGP(restarts=1, max_iter=200, seed=0, floater_start=(0.0, 0.0), **settings)
            model.fit(M, mu, U, w, field_names=FIELD_NAMES, scalar_names=OUT_SCALAR_NAMES, progress=False)
            label = f"{n_train}/{n_test}, h={h}, {M[0].n_points} nodes" + (", 8+8 modes per_field" if settings else "")
            stats = {}
            for where, (ms, mus, us) in {"train": (M, mu, U), "test": (Mt, mut, Ut)}.items():
                y, m0, s0 = _pooled(model, ms, mus, us, False)
                _, m1, s1 = _pooled(model, ms, mus, us, True)
                T, V = _roundtrip(model, ms, us)
                stats[where] = (y, m0, s0, m1, s1, T, V)
            for k, name in enumerate(FIELD_NAMES):
                row = [label, name]
                for where in ("train", "test"):
                    y, m0, s0, m1, s1, T, V = (a[:, k] for a in stats[where])
                    ok = s0 > 0
                    e = y[ok] - m0[ok]
                    row += [float(np.sum(T[ok] ** 2) / np.sum(e**2))]
                    row += [z_rms(y[ok], m0[ok], s0[ok]), z_rms(y[ok], m1[ok], s1[ok])]
                    row += [coverage(y[ok], m0[ok], s0[ok]), coverage(y[ok], m1[ok], s1[ok])]
                    if where == "test":  # a proper score: does the extra variance pay for itself?
                        row += [nlpd(y[ok], m0[ok], s0[ok]), nlpd(y[ok], m1[ok], s1[ok])]
                rows.append(row)
                _, _, _, _, _, T, V = (a[:, k] for a in stats["test"])
                pos = V > 0
                zt = T[pos] ** 2 / V[pos]
                wq = np.concatenate(
                    [interpolation_spread(*_ops(model, mesh)) for mesh in Mt]
                )[pos]  # fmt: skip
                edges = np.quantile(wq, [0, 0.25, 0.5, 0.75, 1.0])
                quart = [float(np.sqrt(zt[(wq >= a) & (wq <= b)].mean())) for a, b in zip(edges[:-1], edges[1:])]
                calib.append([label, name, float(np.sqrt(zt.mean())), *quart, int((~pos).sum())])
            print(f"{label}: done at {time.time() - t_start:.0f} s", flush=True)
    head = ["configuration", "field", "T share train", "z RMS train off", "z RMS train on", "cov95 train off"]
    head += ["cov95 train on", "T share test", "z RMS test off", "z RMS test on", "cov95 test off", "cov95 test on"]
    head += ["NLPD test off", "NLPD test on"]
    chead = ["configuration", "field", "z RMS of T alone (test)", "quartile 1 of w", "2", "3", "4 (largest w)"]
    chead += ["nodes with zero variance"]
    write_benchmark_report(
        report_name("mmgp_transfer", quick=args.quick),
        "MMGP: the round-trip transfer error and its variance (transfer_variance off / on)",
        [
            "data: generate_notched_plates(n, mesh_size=h), seed 0 training, seed 1 held out; MMGP defaults with "
            "restarts=1, max_iter=200, floater_start=(0, 0) (or the settings named)",
            "fields pooled over all nodes of all meshes; nodes whose std is zero (error zero too) left out",
            f"total {time.time() - t_start:.0f} s wall",
        ],
        [
            "## Calibration of the fields, without and with the transfer variance",
            "",
            markdown_table(head, rows),
            "",
            "## The transfer model alone on the held-out meshes: T / sqrt(w (Q kappa)), by quartile of the spread w",
            "",
            markdown_table(chead, calib),
        ],
    )


def _ops(model, mesh):
    ops = model._operators(mesh, "mesh")
    return ops.inv_proj, ops.morphed, model.common_morphed_


if __name__ == "__main__":
    main()
