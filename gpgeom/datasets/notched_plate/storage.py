r"""Storage of NotchedPlate2d datasets: one ``.npz`` file per dataset (also the cache of
:func:`generate_notched_plates`), the ragged arrays concatenated with per-sample counts, versioned by
:data:`DATASET_VERSION`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gpgeom._cache import read_npz, write_npz
from gpgeom.datasets.notched_plate.samples import (
    FIELD_NAMES,
    IN_SCALAR_NAMES,
    OUT_SCALAR_NAMES,
    NotchedPlateSample,
    stack_scalars,
)
from gpgeom.datasets.notched_plate.shapes import NotchShape, PlateShape

__all__ = ["DATASET_VERSION", "load_notched_plates", "save_notched_plates"]

#: Bumped whenever the generated data would change; part of the cache key.
DATASET_VERSION = "notched-plate-v1"


def save_notched_plates(samples: Sequence[NotchedPlateSample], path: str | os.PathLike, *, _config: str = "") -> Path:
    r"""Save samples (a non-empty sequence) to one ``.npz`` file (written atomically). Returns the path."""
    if isinstance(samples, NotchedPlateSample) or not len(samples):
        raise ValueError(f"`samples` must be a non-empty sequence of NotchedPlateSample, got {samples!r:.80}.")
    arrays: dict[str, np.ndarray] = {
        "version": np.array(DATASET_VERSION),
        "config": np.array(_config),
        "n_points": np.array([len(s.points) for s in samples], dtype=np.int64),
        "n_triangles": np.array([len(s.triangles) for s in samples], dtype=np.int64),
        "n_boundary": np.array([len(s.boundary_loop) for s in samples], dtype=np.int64),
        "points": np.concatenate([s.points for s in samples]),
        "triangles": np.concatenate([s.triangles for s in samples]),
        "boundary_loop": np.concatenate([s.boundary_loop for s in samples]),
        "boundary_start": np.array([s.boundary_start for s in samples], dtype=np.int64),
        "landmarks": np.stack([s.landmarks for s in samples]),
        "mesh_size": np.array([s.mesh_size for s in samples]),
        "in_scalars": stack_scalars(samples, "in"),
        "out_scalars": stack_scalars(samples, "out"),
        "notch_depth": np.array([[s.shape.left.depth, s.shape.right.depth] for s in samples]),
        "notch_amplitude": np.array([[s.shape.left.amplitude, s.shape.right.amplitude] for s in samples]),
        "notch_coefs": np.array([[s.shape.left.coefs, s.shape.right.coefs] for s in samples], dtype=np.float64),
        "notch_kind": np.array([[s.shape.left.kind, s.shape.right.kind] for s in samples], dtype=np.str_),
        "notch_apex": np.array([[s.shape.left.apex, s.shape.right.apex] for s in samples]),
    }
    for name in FIELD_NAMES:
        arrays[f"field_{name}"] = np.concatenate([s.fields[name] for s in samples])
    return write_npz(path, arrays)


def load_notched_plates(path: str | os.PathLike, *, _expect_config: str | None = None) -> list[NotchedPlateSample]:
    r"""Load samples saved by :func:`save_notched_plates` (or by the cache of :func:`generate_notched_plates`)."""
    data = read_npz(path, DATASET_VERSION, _expect_config)
    cuts = {k: np.concatenate([[0], np.cumsum(data[f"n_{k}"])]) for k in ("points", "triangles", "boundary")}
    samples = []
    coefs = data["notch_coefs"]
    n = len(data["n_points"])
    kinds = data["notch_kind"] if "notch_kind" in data else np.full((n, 2), "smooth")  # files before the families
    apex = data["notch_apex"] if "notch_apex" in data else np.full((n, 2), 0.5)
    for i in range(n):
        p0, p1 = cuts["points"][i : i + 2]
        t0, t1 = cuts["triangles"][i : i + 2]
        b0, b1 = cuts["boundary"][i : i + 2]
        shape = PlateShape(
            *(
                NotchShape(
                    float(data["notch_depth"][i, j]),
                    tuple(float(c) for c in coefs[i, j]),
                    float(data["notch_amplitude"][i, j]),
                    str(kinds[i, j]),
                    float(apex[i, j]),
                )
                for j in range(2)
            )
        )
        samples.append(
            NotchedPlateSample(
                points=data["points"][p0:p1],
                triangles=data["triangles"][t0:t1],
                in_scalars=dict(zip(IN_SCALAR_NAMES, map(float, data["in_scalars"][i]))),
                fields={k: data[f"field_{k}"][p0:p1] for k in FIELD_NAMES},
                out_scalars=dict(zip(OUT_SCALAR_NAMES, map(float, data["out_scalars"][i]))),
                boundary_start=int(data["boundary_start"][i]),
                boundary_loop=data["boundary_loop"][b0:b1],
                landmarks=data["landmarks"][i],
                mesh_size=float(data["mesh_size"][i]),
                shape=shape,
            )
        )
    return samples
