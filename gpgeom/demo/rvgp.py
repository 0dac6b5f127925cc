r"""Demo section of RVGP: super-resolution and inpainting of a tangent vector field on a sphere point cloud."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np

from gpgeom.datasets.vector_fields import sphere_vector_field
from gpgeom.demo import Section, save_figure
from gpgeom.metrics import angular_errors, coverage, ood_std_ratio, relative_l2
from gpgeom.models.rvgp import RVGP, OutOfReachWarning


def rvgp_section(out_dir: Path, *, quick: bool, seed: int, progress: bool | None) -> Section:
    r"""Fit RVGP to a sparsely observed "mixed" field on a sphere cloud (a patch around the north pole removed);
    report accuracy, coverage and tangency on the unobserved points and plot truth, prediction and uncertainty."""
    import matplotlib.pyplot as plt

    n = 1_000 if quick else 3_000
    k = 48 if quick else 100
    out_dir = Path(out_dir)
    s = sphere_vector_field(n, "mixed", vector_noise=0.02, seed=seed)
    rng = np.random.default_rng(seed)
    patch = s.points[:, 2] > np.cos(0.4)  # the patch to inpaint
    observed = np.flatnonzero(~patch & (rng.random(n) < 0.3))  # 30 % of the rest: super-resolution
    hidden = np.setdiff1d(np.arange(n), observed)

    t0 = time.perf_counter()
    gp = RVGP(s.points, n_eigenpairs=k, dim=2, progress=progress)
    t_geom = time.perf_counter() - t0
    t0 = time.perf_counter()
    gp.fit(observed, s.vectors[observed], progress=progress, seed=seed)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    mean, std = (t.cpu().numpy() for t in gp.predict(return_std=True))
    t_pred = time.perf_counter() - t0
    truth = s.clean_vectors
    std_noisy = gp.predict(hidden, return_std=True, observation_noise=True)[1].cpu().numpy()
    ang = angular_errors(mean[hidden], truth[hidden])
    ang_patch = angular_errors(mean[patch], truth[patch])
    # the predictive of a new observation is scored against the held-out noisy observations, not the noise-free field
    cover = coverage(s.vectors[hidden], mean[hidden], std_noisy, level=0.95)
    latent_cover = coverage(truth[hidden], mean[hidden], std[hidden], level=0.9545)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfReachWarning)  # the point of the check: far from the cloud
        std_far = gp.predict_at(3.0 * s.points[hidden[:300]], return_std=True)[1].cpu().numpy()
    ood = ood_std_ratio(std_far, std[hidden])
    normal = np.abs(np.einsum("ij,ij->i", mean, s.normals)) / np.linalg.norm(mean, axis=1)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), subplot_kw={"aspect": "equal"})
    front = s.points[:, 0] > 0  # the hemisphere facing the viewer, projected on the (y, z) plane
    for ax, V, title in ((axes[0], truth, "truth"), (axes[1], mean, "RVGP mean")):
        sel = front & ~np.isin(np.arange(n), observed)
        ax.quiver(s.points[sel, 1], s.points[sel, 2], V[sel, 1], V[sel, 2], color="C0", scale=25, width=0.003)
        ob = front & np.isin(np.arange(n), observed)
        ax.quiver(
            s.points[ob, 1], s.points[ob, 2], s.vectors[ob, 1], s.vectors[ob, 2], color="C3", scale=25, width=0.003
        )
        ax.set_title(f"{title} (red: observed)")
    sd = np.linalg.norm(std, axis=1)
    sc = axes[2].scatter(s.points[front, 1], s.points[front, 2], c=sd[front], s=8, cmap="viridis")
    axes[2].set_title("posterior std |sigma| (patch at top)")
    fig.colorbar(sc, ax=axes[2], shrink=0.8)
    for ax in axes:
        ax.set_xlabel("y")
        ax.set_ylabel("z")
    path = save_figure(fig, out_dir, "rvgp_sphere.png")

    table = [
        ("points n / observed / eigenpairs k", f"{n} / {len(observed)} / {k}"),
        ("relative L2 on unobserved points", f"{relative_l2(mean[hidden], truth[hidden]):.4f}"),
        ("median / mean angle, unobserved (deg)", f"{np.median(ang):.2f} / {ang.mean():.2f}"),
        ("median angle inside the removed patch (deg)", f"{np.median(ang_patch):.2f} ({int(patch.sum())} points)"),
        ("95 % coverage of the held-out noisy observations (per component)", f"{cover:.3f}"),
        ("latent 2-sigma coverage of the noise-free field", f"{latent_cover:.3f}"),
        ("std 2 units off the sphere / std on it (OOD ratio)", f"{ood:.1f}"),
        ("median normal component |v.n|/|v|", f"{np.median(normal):.1e}"),
        (
            "learnt kappa / nu / noise std / model-error std",
            f"{float(gp.kernel.lengthscale.detach()):.3g} / {float(gp.kernel.nu.detach()):.3g} / "
            f"{float(gp.observation_noise_variance.sqrt()) * gp.y_scale:.3g} / "
            f"{float(gp.model_error_variance.sqrt()) * gp.y_scale:.3g}",
        ),
        (
            "ambient part (projected RBF on xyz): on / lengthscale / std",
            f"{gp.uses_ambient} / {float(gp.ambient_kernel.base_kernel.lengthscale.detach()):.3g} / "
            f"{float(gp.ambient_kernel.outputscale.detach().sqrt()) * gp.y_scale:.3g}",
        ),
        ("time geometry+eigensolve / fit / predict (s)", f"{t_geom:.2f} / {t_fit:.2f} / {t_pred:.3f}"),
    ]
    text = (
        "RVGP (Peach et al., ICLR 2024) on a sphere point cloud: the connection-Laplacian spectral Matern kernel "
        "plus an RBF kernel on the ambient coordinates projected onto the tangent frames (what the rank-k basis "
        "cannot represent), trained exactly by the marginal likelihood. 30 % of the points outside a polar "
        "patch are observed with tangent noise; the rest (super-resolution) and the patch (inpainting) are predicted. "
        "Predicted vectors are tangent by construction. The residual variance is split into observation noise "
        "(estimated by local polynomial fits, without the basis) and the model error of the rank-k basis, which the "
        "latent uncertainty keeps; far from the cloud the prediction returns to the prior."
    )
    return Section(title="RVGP: vector field on a point cloud", text=text, table=table, figures=[path])
