"""Random meshes shared by the geometry tests, and the small notched-plate families of the MMGP tests."""

import contextlib

import numpy as np
import torch
import triangle

from gpgeom.geometry.mesh import Mesh


def seeded_rng():
    """A numpy generator seeded from torch's per-test seed (see conftest)."""
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))


def random_disk_mesh(rng, n_boundary=40, n_interior=150, jitter=0.2):
    """Constrained Delaunay of random points inside a random star-shaped polygon (many skinny triangles)."""
    base = 2 * np.pi * np.arange(n_boundary) / n_boundary
    ang = base + rng.uniform(-0.4, 0.4, n_boundary) * 2 * np.pi / n_boundary
    r = 1 + jitter * rng.uniform(-1, 1, n_boundary)
    B = np.c_[r * np.cos(ang), r * np.sin(ang)]
    rr = 0.7 * np.sqrt(rng.uniform(0, 1, n_interior))
    th = rng.uniform(0, 2 * np.pi, n_interior)
    V = np.r_[B, np.c_[rr * np.cos(th), rr * np.sin(th)]]
    S = np.c_[np.arange(n_boundary), (np.arange(n_boundary) + 1) % n_boundary]
    T = triangle.triangulate({"vertices": V, "segments": S}, "p")
    return Mesh(T["vertices"], T["triangles"])


def notched_plate_arrays(cache_dir, n_train, n_test, mesh_size):
    """``samples_to_arrays`` of ``n_train`` notched plates (seed 0) and ``n_test`` (seed 1), cached in ``cache_dir``."""
    from gpgeom.datasets.notched_plate import generate_notched_plates
    from gpgeom.models.mmgp import samples_to_arrays

    def arrays(n, seed):
        plates = generate_notched_plates(n, seed=seed, mesh_size=mesh_size, cache_dir=cache_dir, progress=False)
        return samples_to_arrays(plates)

    return arrays(n_train, 0), arrays(n_test, 1)


@contextlib.contextmanager
def switched(model, **values):
    """Set attributes of ``model`` (e.g. ``transfer_variance=False``) for the ``with`` block, then restore them."""
    before = {name: getattr(model, name) for name in values}
    for name, value in values.items():
        setattr(model, name, value)
    try:
        yield model
    finally:
        for name, value in before.items():
            setattr(model, name, value)
