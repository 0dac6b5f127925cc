#!/usr/bin/env python3
r"""RVGP's predictive of new noisy observations (``predict(..., observation_noise=True)``) under tangent noise, split
into the tangent and the normal part with the true normals, on a unit sphere and an ellipsoid.

Data: :func:`gpgeom.datasets.vector_fields.ellipsoid_vector_field` (half-axes 1, 1, 1 and 1, 0.75, 0.5; the
``"smooth"`` and ``"rough"`` fields), tangent noise of std 0.05 per direction of the TRUE tangent plane
(``vector_noise=0.05``); splits ``default_rng(seed).permutation``, seeds 0-4, at two sizes: the benchmark's (1200
points, 30 % observed, 50 eigenpairs; ``benchmarks/rvgp.py``) and the test's (400 points, half observed, 30
eigenpairs; ``tests/test_rvgp_noise_model.py``). RVGP with its defaults otherwise.

Columns (held-out points): ``z RMS`` and ``cov95``, the per-component (x, y, z) z of the noisy observations and the
fraction within 1.96 std; ``chi2 tan``, :math:`r_t^\top C_t^{-1} r_t / 2` of the residual's part in the true tangent
plane under the predictive covariance's block there (mean over the points; 1 when calibrated); ``chi2 tan, true
noise``, the same with the learnt :math:`\sigma^2_{obs}` replaced by the generator's 0.0025 in the predictive;
``z nrm``, the RMS z of the residual along the true normal; ``chi2 3x3``, :math:`r^\top C^{-1} r / 3`; ``latent chi2
tan``, the latent predictive against the noise-free field (tangent block of the estimated frames); ``s2_obs``, the
learnt noise variance (original units) against ``noise tr``/``noise te``, the sample variance per tangent direction
of the noise the generator drew at the training/held-out points; ``estimate``, RVGP's basis-free ``noise_estimate``;
``top 1 % of chi2 3x3``, the share of the 3x3 chi-square's sum carried by the held-out points with the largest 1 %;
``angle``, ``max angle tr``/``te``, the median angle (degrees) between the estimated and the true normals at the
held-out points and the largest at the training/held-out points. ``pooled`` rows: z RMS over all
components of the seeds, the chi2 columns averaged.

Redraws: the cloud, field and split of seed 0 at the test's size fixed, the tangent noise redrawn
(``default_rng(1000 + j)``, 30 draws): the mean tangent chi2 (with its standard error), the learnt
:math:`\sigma^2_{obs}` over the true variance and over the training draw's sample variance, and the correlation of the
tangent chi2 with the ratio held-out / training sample variance of the noise.

Usage: ``python benchmarks/rvgp_noisy_calibration.py``; writes ``benchmarks/results/rvgp_noisy_calibration.md``
(a few minutes on one core).
"""

from __future__ import annotations

import os
import sys
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import markdown_table, normal_angles, write_benchmark_report  # noqa: E402
from gpgeom.datasets.vector_fields import ellipsoid_vector_field  # noqa: E402
from gpgeom.models.rvgp import RVGP  # noqa: E402

SURFACES = {"sphere": (1.0, 1.0, 1.0), "ellipsoid": (1.0, 0.75, 0.5)}
SIZES = {"1200 pts, 30 %, k=50": (1200, 0.3, 50), "400 pts, 50 %, k=30": (400, 0.5, 30)}
NOISE = 0.05


def plane_basis(normals: np.ndarray) -> np.ndarray:
    r"""``(m, 3, 2)`` orthonormal bases of the planes orthogonal to the unit ``normals`` ``(m, 3)``."""
    a = np.where(np.abs(normals[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0.0, 1, 0]]))
    u = np.cross(normals, a)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return np.stack([u, np.cross(normals, u)], 2)


def chi2(r: np.ndarray, C: np.ndarray, B: np.ndarray) -> np.ndarray:
    r"""Per point :math:`(B^\top r)^\top (B^\top C B)^{-1} (B^\top r)` for ``r`` ``(m, 3)``, ``C`` ``(m, 3, 3)``,
    ``B`` ``(m, 3, j)``: ``(m,)``."""
    rb = np.einsum("iad,ia->id", B, r)
    Cb = np.einsum("iad,iab,ibe->ide", B, C, B)
    return np.einsum("id,ide,ie->i", rb, np.linalg.inv(Cb), rb)


def evaluate(gp: RVGP, s: object, tr: np.ndarray, te: np.ndarray, y: np.ndarray) -> dict:
    r"""The columns of the module docstring for a fitted ``gp`` and observations ``y`` ``(n, 3)`` of sample ``s``."""
    m, C = (t.detach().numpy() for t in gp.predict(te, return_cov=True, observation_noise=True))
    ml, Cl = (t.detach().numpy() for t in gp.predict(te, return_cov=True))
    Nt = s.normals[te]
    T = gp.laplacian.frames[te]
    r = y[te] - m
    B = plane_basis(Nt)
    s2 = float(gp.observation_noise_variance) * gp.y_scale**2
    Ct = C + (NOISE**2 - s2) * np.einsum("iad,ibd->iab", T, T)  # the true noise variance in the frames
    eps = y - s.clean_vectors
    est = gp.noise_estimate
    full = chi2(r, C, np.broadcast_to(np.eye(3), C.shape))
    angle_te = normal_angles(T, Nt)  # degrees between the estimated and the true normals
    return {
        "z2": (r**2 / np.einsum("iaa->ia", C)).ravel(),
        "chi2_tan": float(chi2(r, C, B).mean() / 2),
        "chi2_tan_true": float(chi2(r, Ct, B).mean() / 2),
        "zn2": (r * Nt).sum(1) ** 2 / np.einsum("ia,iab,ib->i", Nt, C, Nt),
        "chi2_full": float(full.mean() / 3),
        "lat_chi2_tan": float(chi2(s.clean_vectors[te] - ml, Cl, T).mean() / 2),
        "s2_obs": s2,
        "noise_tr": float((eps[tr] ** 2).sum(1).mean() / 2),
        "noise_te": float((eps[te] ** 2).sum(1).mean() / 2),
        "estimate": None if est is None else est * gp.y_scale**2,
        "angle": float(np.median(angle_te)),
        "angle_max_tr": float(normal_angles(gp.laplacian.frames[tr], s.normals[tr]).max()),
        "angle_max_te": float(angle_te.max()),
        "top_share": float(np.sort(full)[::-1][: max(1, len(te) // 100)].sum() / full.sum()),
    }


def per_seed_rows() -> list[list]:
    rows = []
    for size, (n, frac, k) in SIZES.items():
        for surface, axes in SURFACES.items():
            for kind in ("smooth", "rough"):
                res = []
                for seed in range(5):
                    s = ellipsoid_vector_field(n, kind, axes=axes, vector_noise=NOISE, seed=seed)
                    perm = np.random.default_rng(seed).permutation(n)
                    tr, te = np.sort(perm[: int(frac * n)]), np.sort(perm[int(frac * n) :])
                    gp = RVGP(s.points, n_eigenpairs=k).fit(tr, s.vectors[tr])
                    res.append(evaluate(gp, s, tr, te, s.vectors))
                    rows.append([f"{surface} {kind}, {size}", seed, *cells(res[-1:])])
                    print(rows[-1], flush=True)
                rows.append([f"{surface} {kind}, {size}", "pooled", *cells(res)])
    return rows


def cells(res: list[dict]) -> list:
    r"""One row's cells from the ``evaluate`` results of one or several seeds (pooled)."""
    z2 = np.concatenate([r["z2"] for r in res])
    zn2 = np.concatenate([r["zn2"] for r in res])
    mean = {k: float(np.mean([r[k] for r in res])) for k in ("chi2_tan", "chi2_tan_true", "chi2_full", "lat_chi2_tan")}
    one = res[0] if len(res) == 1 else {}
    est = one.get("estimate")
    return [
        float(np.sqrt(z2.mean())),
        float((z2 < 1.96**2).mean()),
        mean["chi2_tan"],
        mean["chi2_tan_true"],
        float(np.sqrt(zn2.mean())),
        mean["chi2_full"],
        mean["lat_chi2_tan"],
        one.get("s2_obs"),
        one.get("noise_tr"),
        one.get("noise_te"),
        est,
        one.get("top_share"),
        one.get("angle"),
        one.get("angle_max_tr"),
        one.get("angle_max_te"),
    ]


def redraw_rows(draws: int = 30) -> list[list]:
    rows = []
    n, frac, k = SIZES["400 pts, 50 %, k=30"]
    for surface, axes in SURFACES.items():
        s = ellipsoid_vector_field(n, "smooth", axes=axes, seed=0)
        perm = np.random.default_rng(0).permutation(n)
        tr, te = np.sort(perm[: int(frac * n)]), np.sort(perm[int(frac * n) :])
        base = RVGP(s.points, n_eigenpairs=k)
        chi, s2, ratio_tr, ratio = [], [], [], []
        for j in range(draws):
            g = np.random.default_rng(1000 + j)
            G = g.standard_normal((n, 3))
            y = s.clean_vectors + NOISE * (G - np.einsum("ij,ij->i", G, s.normals)[:, None] * s.normals)
            gp = RVGP(
                s.points, n_eigenpairs=k, laplacian=base.laplacian, eigenpairs=(base.eigenvalues, base.eigenvectors)
            )
            res = evaluate(gp.fit(tr, y[tr]), s, tr, te, y)
            chi.append(res["chi2_tan"])
            s2.append(res["s2_obs"])
            ratio_tr.append(res["s2_obs"] / res["noise_tr"])
            ratio.append(res["noise_te"] / res["noise_tr"])
        chi = np.array(chi)
        rows.append(
            [
                f"{surface} smooth, seed-0 cloud, 400 pts",
                draws,
                float(chi.mean()),
                float(chi.std(ddof=1) / np.sqrt(draws)),
                float(chi.min()),
                float(chi.max()),
                float(np.mean(s2) / NOISE**2),
                float(np.mean(ratio_tr)),
                float(np.corrcoef(chi, ratio)[0, 1]),
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    warnings.simplefilter("ignore", UserWarning)
    torch.set_num_threads(1)
    head = ["case", "seed", "z RMS", "cov95", "chi2 tan", "chi2 tan, true noise", "z nrm", "chi2 3x3"]
    head += ["latent chi2 tan", "s2_obs", "noise tr", "noise te", "estimate", "top 1 % of chi2 3x3"]
    head += ["angle deg", "max angle tr", "max angle te"]
    body = ["## Per seed", "", markdown_table(head, per_seed_rows()), "", "## Noise redrawn on one cloud", ""]
    rhead = ["case", "draws", "chi2 tan (mean)", "s.e.", "min", "max", "s2_obs / 0.0025", "s2_obs / noise tr"]
    body += [markdown_table([*rhead, "corr(chi2 tan, noise te / noise tr)"], redraw_rows()), ""]
    facts = [
        "tangent noise of std 0.05 per direction of the true tangent plane (variance 0.0025); RVGP defaults",
        "chi2 columns: per degree of freedom, mean over held-out points (1 when calibrated); z nrm: true normal",
    ]
    write_benchmark_report("rvgp_noisy_calibration", "RVGP noisy-observation calibration", facts, body)


if __name__ == "__main__":
    main()
