r"""Generation of NotchedPlate2d datasets: the options (:data:`DEFAULT_OPTIONS`) and their checks, the random draws
of one sample (shape, mesh size, Poisson ratio, load; sample ``i`` from ``numpy.random.default_rng([seed, i])``), and
:func:`generate_notched_plates` with its disk cache, progress bar and executors."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

import numpy as np

from gpgeom._cache import cache_dir as gpgeom_cache_dir
from gpgeom._progress import progress_bar, resolve_progress
from gpgeom._seeds import check_numpy_generator
from gpgeom.datasets.notched_plate.samples import NotchedPlateSample, make_notched_plate
from gpgeom.datasets.notched_plate.shapes import NOTCH_FAMILIES, NotchShape, PlateShape
from gpgeom.datasets.notched_plate.storage import DATASET_VERSION, load_notched_plates, save_notched_plates
from gpgeom.engine.parallel import jobs_executor, map_items

__all__ = ["DEFAULT_OPTIONS", "generate_notched_plates", "sample_plate_shape"]

#: Options of :func:`generate_notched_plates` (passed as keyword arguments) and their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {
    "depth_range": (0.05, 0.30),  # range of the notch depth scale d
    "max_depth": 0.45,  # notches deeper than this are redrawn
    "harmonic_amplitude": 0.35,  # a in the depth profile
    "n_harmonics": 4,  # harmonics k = 2 .. n_harmonics + 1
    "nu_range": (0.2, 0.45),  # Poisson ratio
    "load_range": (0.5, 1.5),  # top traction P
    "young": 1.0,  # Young's modulus
    "min_angle": 30.0,  # triangle's quality switch q
    "recovery": "l2",  # nodal stress recovery: "l2" or "average"
    "notch_family": "smooth",  # notch profiles: "smooth" (the family above), "half_ellipse" or "wedge"
}

#: Range of the apex position :math:`c` of a wedge notch.
WEDGE_APEX_RANGE = (0.35, 0.65)


def sample_plate_shape(rng: np.random.Generator, **options: Any) -> PlateShape:
    r"""Draw a random :class:`PlateShape` (left and right notches independent).

    Args:
        rng: The ``numpy.random.Generator`` to draw from (in place).
        **options: Any of ``depth_range``, ``max_depth``, ``harmonic_amplitude``, ``n_harmonics``, ``notch_family``
            (see :data:`DEFAULT_OPTIONS`).
    """
    check_numpy_generator("rng", rng)
    opts = _check_options(options)
    return _draw_shape(rng, opts)


def _draw_notch(rng: np.random.Generator, opts: Mapping[str, Any]) -> NotchShape:
    lo, hi = opts["depth_range"]
    family = opts.get("notch_family", "smooth")
    if family == "half_ellipse":  # maximal depth d <= depth_range[1] <= max_depth: never redrawn
        return NotchShape(float(rng.uniform(lo, hi)), kind="half_ellipse")
    if family == "wedge":
        depth = float(rng.uniform(lo, hi))
        return NotchShape(depth, kind="wedge", apex=float(rng.uniform(*WEDGE_APEX_RANGE)))
    for _ in range(1000):
        depth = float(rng.uniform(lo, hi))
        coefs = tuple(float(b) for b in rng.standard_normal(int(opts["n_harmonics"])))
        notch = NotchShape(depth, coefs, float(opts["harmonic_amplitude"]))
        if notch.max_depth() <= opts["max_depth"]:
            return notch
    raise RuntimeError("Could not draw a notch within `max_depth` in 1000 tries; increase `max_depth`.")


def _draw_shape(rng: np.random.Generator, opts: Mapping[str, Any]) -> PlateShape:
    left = _draw_notch(rng, opts)
    right = _draw_notch(rng, opts)
    return PlateShape(left, right)


def _generate_item(config: tuple[int, tuple[float, float], Mapping[str, Any]], index: int) -> NotchedPlateSample:
    seed, mesh_size, opts = config
    return _generate_one(seed, index, mesh_size, opts)


def _generate_one(seed: int, index: int, mesh_size: tuple[float, float], opts: Mapping[str, Any]):
    rng = np.random.default_rng([seed, index])
    h = float(rng.uniform(*mesh_size)) if mesh_size[0] < mesh_size[1] else float(mesh_size[0])
    shape = _draw_shape(rng, opts)
    nu = float(rng.uniform(*opts["nu_range"]))
    load = float(rng.uniform(*opts["load_range"]))
    return make_notched_plate(
        shape,
        h,
        load=load,
        nu=nu,
        young=float(opts["young"]),
        min_angle=float(opts["min_angle"]),
        recovery=opts["recovery"],
    )


def _check_range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a pair (low, high) of numbers, got {value!r}.") from None
    if not (lo <= a <= b <= hi):
        raise ValueError(f"`{name}` must satisfy {lo} <= low <= high <= {hi}, got {value!r}.")
    return a, b


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(map(repr, unknown))}; expected some of "
            f"{', '.join(map(repr, DEFAULT_OPTIONS))}."
        )
    opts = {**DEFAULT_OPTIONS, **options}
    opts["depth_range"] = _check_range("depth_range", opts["depth_range"], 0.0, 0.49)
    opts["nu_range"] = _check_range("nu_range", opts["nu_range"], -0.99, 0.499)
    opts["load_range"] = _check_range("load_range", opts["load_range"], -1e12, 1e12)
    for name, lo, hi in (("max_depth", 0.0, 0.49), ("harmonic_amplitude", 0.0, 1e3), ("min_angle", 0.0, 34.0)):
        value = opts[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise ValueError(f"`{name}` must be a number in [{lo}, {hi}], got {value!r}.")
        opts[name] = float(value)
    if opts["max_depth"] < opts["depth_range"][0]:
        raise ValueError("`max_depth` must be at least the lower end of `depth_range`.")
    n_h = opts["n_harmonics"]
    if isinstance(n_h, bool) or not isinstance(n_h, int) or n_h < 0:
        raise ValueError(f"`n_harmonics` must be an int >= 0, got {n_h!r}.")
    young = opts["young"]
    if isinstance(young, bool) or not isinstance(young, int | float) or not young > 0:
        raise ValueError(f"`young` must be a number > 0, got {young!r}.")
    opts["young"] = float(young)
    if opts["recovery"] not in ("l2", "average"):
        raise ValueError(f"Unknown `recovery`={opts['recovery']!r}; expected 'l2' or 'average'.")
    if opts["notch_family"] not in NOTCH_FAMILIES:
        raise ValueError(f"Unknown `notch_family`={opts['notch_family']!r}; expected one of {NOTCH_FAMILIES}.")
    if opts["notch_family"] != "smooth" and opts["max_depth"] < opts["depth_range"][1]:
        raise ValueError("`max_depth` must be at least the upper end of `depth_range` for these notch families.")
    return opts


def _check_mesh_size(mesh_size: Any) -> tuple[float, float]:
    if isinstance(mesh_size, int | float) and not isinstance(mesh_size, bool):
        mesh_size = (mesh_size, mesh_size)
    lo, hi = _check_range("mesh_size", mesh_size, 0.0, 1.0)
    if lo < 0.004:
        raise ValueError(f"`mesh_size` must be >= 0.004 (about 10^6 nodes), got {mesh_size!r}.")
    return lo, hi


def generate_notched_plates(
    n_samples: int,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    mesh_size: float | tuple[float, float] = (0.028, 0.036),
    *,
    progress: bool | None = None,
    use_cache: bool = True,
    n_jobs: int = 1,
    executor: Executor | None = None,
    **options: Any,
) -> list[NotchedPlateSample]:
    r"""Generate (or load from the disk cache) ``n_samples`` NotchedPlate2d samples.

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the first ``k`` samples do not depend on
    ``n_samples`` and different seeds give independent streams (use e.g. ``seed=0`` for training and ``seed=1`` for
    testing).

    Args:
        n_samples: Number of samples (>= 1).
        seed: Non-negative integer seed.
        cache_dir: Cache directory; ``None`` means gpgeom's cache (:func:`gpgeom._cache.cache_dir`:
            ``$GPGEOM_CACHE`` or ``~/.cache/gpgeom``). One ``.npz`` file per dataset, keyed by every parameter and
            :data:`DATASET_VERSION`.
        mesh_size: The boundary spacing ``h``: a range ``(low, high)`` drawn per sample, or one number. The default
            gives about 2.0k-3.7k nodes; ``0.1`` gives about 300 nodes.
        progress: A progress bar (tqdm) and a timing line while generating: ``True``, ``False`` or ``None``
            (gpgeom's rule: shown in a terminal or notebook, not in logs or tests; :mod:`gpgeom._progress`).
        use_cache: Read and write the cache.
        n_jobs: Shorthand for ``executor=ProcessPoolExecutor(n_jobs)`` (opened and closed by the call; 1: serial).
        executor: A ``concurrent.futures.Executor`` that runs the samples' finite-element solves (e.g.
            ``dask.distributed.Client(...).get_executor()``; :mod:`gpgeom.engine.parallel`), several samples per
            task. The samples are identical whatever runs them: sample ``i`` depends on ``(seed, i)`` only.
        **options: Overrides of :data:`DEFAULT_OPTIONS`; an unknown name raises :class:`ValueError`.
            ``notch_family="half_ellipse"`` or ``"wedge"`` draws notches of another shape family (out-of-distribution
            test sets for models trained on the default ``"smooth"`` family); the depth, mesh size and scalars are
            drawn from the same ranges.

    Returns:
        A list of :class:`NotchedPlateSample`.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int | np.integer) or n_samples < 1:
        raise ValueError(f"`n_samples` must be an int >= 1, got {n_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs < 1:
        raise ValueError(f"`n_jobs` must be an int >= 1, got {n_jobs!r}.")
    if executor is not None and n_jobs != 1:
        raise ValueError("Pass either `executor` or `n_jobs`, not both.")
    n_samples, seed = int(n_samples), int(seed)
    h_range = _check_mesh_size(mesh_size)
    opts = _check_options(options)

    path = None
    if use_cache:
        config = {"version": DATASET_VERSION, "n_samples": n_samples, "seed": seed, "mesh_size": h_range}
        # the notch family enters the key only when it is not the default, so the keys of the smooth datasets stay
        config.update({k: opts[k] for k in sorted(opts) if k != "notch_family" or opts[k] != "smooth"})
        text = json.dumps(config, sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:20]
        root = gpgeom_cache_dir(root=cache_dir)
        path = root / f"notched_plate_{key}.npz"
        if path.exists():
            try:
                return load_notched_plates(path, _expect_config=text)
            except (OSError, ValueError, KeyError) as err:
                print(f"gpgeom: ignoring unreadable cache {path} ({err}); regenerating.", file=sys.stderr)

    t0 = time.perf_counter()
    progress = resolve_progress(progress)
    with jobs_executor(executor, n_jobs) as ex:
        samples = _run_generation(n_samples, seed, h_range, opts, progress, ex)
    elapsed = time.perf_counter() - t0
    if progress:
        print(
            f"gpgeom: generated {n_samples} notched plates in {elapsed:.1f} s ({elapsed / n_samples:.3f} s/sample, "
            f"{np.mean([s.n_nodes for s in samples]):.0f} nodes on average).",
            file=sys.stderr,
        )
    if path is not None:
        save_notched_plates(samples, path, _config=text)
    return samples


def _run_generation(n, seed, h_range, opts, progress, executor) -> list[NotchedPlateSample]:
    bar = progress_bar(total=n, desc="notched plates", unit="sample", progress=progress) if progress else None
    try:
        return map_items(
            executor,
            _generate_item,
            range(n),
            (seed, h_range, opts),
            on_chunk=bar.update if bar is not None else None,
            label="sample",
        )
    finally:
        if bar is not None:
            bar.close()
