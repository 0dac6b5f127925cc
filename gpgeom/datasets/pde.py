r"""Cached test sets of reference solutions of the parametric PDE families (the Random Grid Neural Process problems,
Vadeboncoeur et al., ICML 2023, arXiv 2301.11040, numerical experiments).

The families themselves (domain, priors, residual, boundary lift and reference solver) are defined in
:mod:`gpgeom.pde`: :class:`~gpgeom.pde.poisson.NonlinearPoisson1D` and :class:`~gpgeom.pde.burgers.ViscousBurgers`
(re-exported here for convenience). This module adds the data built from them: :func:`make_test_set` draws
parameters from a family's prior, solves with its reference solver on its regular test grid and stores the result
as ``.npz`` under ``$GPGEOM_CACHE/pde`` (default ``~/.cache/gpgeom/pde``, :func:`gpgeom._cache.cache_dir`), keyed by
family (and its :meth:`~gpgeom.pde.family.PDEFamily.config`), sizes and seed, so the solves run once per machine. A
cached file is used only if it holds the test points and the parameter draws the family makes now (a family whose
priors changed under the same name is solved again).
"""

from __future__ import annotations

import numbers
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from gpgeom._cache import cache_dir as _cache_dir
from gpgeom._cache import write_npz
from gpgeom._validation import check_device, check_positive
from gpgeom.pde.burgers import ViscousBurgers
from gpgeom.pde.family import PDEFamily
from gpgeom.pde.poisson import NonlinearPoisson1D

__all__ = ["PDEFamily", "NonlinearPoisson1D", "ViscousBurgers", "PDETestSet", "make_test_set"]

_CACHE_VERSION = 1


@dataclass(frozen=True)
class PDETestSet:
    r"""A test set of reference solutions on a shared point set.

    Attributes:
        family: The family's name.
        x: Points, ``(N, dim)``.
        z: Inverse-problem parameters, ``(S, dim_z)``.
        w: Known parameters, ``(S, dim_w)``.
        u: Reference solutions at ``x``, ``(S, N)``.
        seed: Seed of the parameter draws.
    """

    family: str
    x: np.ndarray
    z: np.ndarray
    w: np.ndarray
    u: np.ndarray
    seed: int

    def to_torch(self, dtype: torch.dtype = torch.float64, device: str | torch.device | None = None) -> dict:
        r"""The arrays as tensors: a dict with keys ``x``, ``z``, ``w``, ``u``."""
        if device is not None:
            device = check_device("device", device)
        return {k: torch.as_tensor(getattr(self, k), dtype=dtype, device=device) for k in ("x", "z", "w", "u")}


def make_test_set(
    family: PDEFamily,
    n_samples: int,
    n_points: int | tuple[int, ...],
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    refresh: bool = False,
) -> PDETestSet:
    r"""Reference solutions of ``family`` for ``n_samples`` prior draws on its regular test grid, cached on first use.

    Args:
        family: A :class:`~gpgeom.pde.family.PDEFamily` with a reference solver.
        n_samples: Number of parameter draws (``np.random.default_rng(seed)``, ``family.sample_params``).
        n_points: Grid size (see ``family.test_points``).
        seed: Seed of the draws.
        cache_dir: Cache root (default ``$GPGEOM_CACHE`` or ``~/.cache/gpgeom``); the file goes to ``<root>/pde/``.
        refresh: Recompute even if a cached file exists.

    Returns:
        The :class:`PDETestSet`.
    """
    if not isinstance(family, PDEFamily):
        raise TypeError(f"`family` must be a gpgeom.pde.PDEFamily, got {type(family).__name__}.")
    family.check_declaration()
    check_positive("n_samples", n_samples, integer=True)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative int, got {seed!r}.")
    seed = int(seed)
    x = family.test_points(n_points)
    pts = "x".join(map(str, np.atleast_1d(n_points))) if not isinstance(n_points, int) else str(n_points)
    config = family.config()
    tag = f"_c{zlib.crc32(repr(sorted(config.items())).encode()):08x}" if config else ""
    name = f"{family.name}{tag}_S{n_samples}_P{pts}_seed{seed}_v{_CACHE_VERSION}.npz"
    path = _cache_dir("pde", root=cache_dir) / name
    z, w = family.sample_params(n_samples, np.random.default_rng(seed))
    if path.exists() and not refresh:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        # the file is keyed by name, config, sizes and seed only: a family whose priors (or sampler) changed since,
        # e.g. a user family edited under the same name, draws other parameters, and its old fields are not its own
        if (
            str(data.get("family")) == family.name
            and data["u"].shape == (n_samples, len(x))
            and np.array_equal(data["x"], x)
            and np.array_equal(data["z"], z)
            and np.array_equal(data["w"], w)
        ):
            return PDETestSet(family.name, data["x"], data["z"], data["w"], data["u"], int(data["seed"]))
    u = np.stack([family.solve(z[i], w[i], x) for i in range(n_samples)])
    arrays = {"family": np.array(family.name), "x": x, "z": z, "w": w, "u": u, "seed": np.array(seed)}
    write_npz(path, {**arrays, "version": np.array(_CACHE_VERSION)})
    return PDETestSet(family.name, x, z, w, u, seed)
