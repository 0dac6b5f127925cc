r"""Continuous-indexed tensors: a synthetic Tucker/CP generator with known latent functions, and Beijing air quality.

A *continuous-indexed tensor* (Fang et al., "Functional Bayesian Tucker decomposition for continuous-indexed tensor
data", ICLR 2024) is a set of entries :math:`(x_n, y_n)`, :math:`x_n = (x_{n1}, \dots, x_{nK}) \in \mathbb R^K`, whose
:math:`k`-th coordinate is a real number (temperature, pressure, time, ...) rather than an integer index. Each mode
has a finite set of *unique coordinates* in the training data; a test entry is **seen** when every one of its
coordinates is a training coordinate of its mode and **unseen** otherwise.

* :func:`make_synthetic_tensor` -- entries of an exact Tucker (or CP) model
  :math:`f(x) = \sum_{r_1 \dots r_K} W_{r_1 \dots r_K} \prod_k u^k_{r_k}(x_k)` with known smooth latent functions
  :math:`u^k_r(t) = \sin(2\pi \phi_{kr} t + \psi_{kr})` on :math:`[0, 1]` (frequencies
  :math:`\phi_{kr} \in [0.5, 1.5]`, phases :math:`\psi_{kr} \in [0, 2\pi)`, drawn from the seed) and a known core
  :math:`W` (standard normal entries, or the superdiagonal of ones for CP), scaled so that :math:`f` has unit
  standard deviation over :math:`[0, 1]^K`; Gaussian noise of standard deviation ``noise_sd`` is added to train and
  test values. Half of the test entries (``unseen_fraction``) have at least one coordinate that no training entry
  has.
* :func:`load_beijing_air` -- the BeijingAir tensor of the FunBaT paper (modes temperature, pressure, time;
  target PM2.5, PM10 or SO2), preprocessed as described in :func:`load_beijing_air`, optionally with temperature and
  pressure as offsets from the day's mean over the stations (``day_offsets=True``) and the measuring station as a
  fourth mode (``station=True``); :meth:`ContinuousTensor.split` makes the seeded random 80/20 folds.

All tensors are ``torch.float64`` on the CPU (convert with ``.to(...)``).

Data source (Beijing): Zhang, Guo, Chen, Li, Chen, "Cautionary tales on air-quality improvement in Beijing",
Proc. R. Soc. A 473 (2017); UCI Machine Learning Repository, Beijing Multi-Site Air-Quality Data, CC BY 4.0. The
package ships the preprocessed PM2.5 tensor (``gpgeom/data/beijing_pm25.npz``, see ``gpgeom/data/ATTRIBUTION.md``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gpgeom._seeds import resolve_seed
from gpgeom._validation import check_option, check_positive

__all__ = [
    "ContinuousTensor",
    "TensorSplit",
    "make_synthetic_tensor",
    "load_beijing_air",
    "beijing_csv_path",
    "write_beijing_npz",
    "BEIJING_TARGETS",
    "BEIJING_MODES",
    "BEIJING_STATIONS",
]

BEIJING_TARGETS = ("PM2.5", "PM10", "SO2")
BEIJING_MODES = ("temperature", "pressure", "time")
#: The 12 stations of the Beijing multi-site data, alphabetical: station ``s`` is at ``10 s / 11`` in the station mode.
BEIJING_STATIONS = (
    "Aotizhongxin",
    "Changping",
    "Dingling",
    "Dongsi",
    "Guanyuan",
    "Gucheng",
    "Huairou",
    "Nongzhanguan",
    "Shunyi",
    "Tiantan",
    "Wanliu",
    "Wanshouxigong",
)
_CSV_NAME = "beijing_air_daily.csv"
_SHIPPED = Path(__file__).resolve().parent.parent / "data" / "beijing_pm25.npz"


# ----------------------------------------------------------------------------------------------------------------
# containers
# ----------------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class TensorSplit:
    r"""A train/test split of a continuous-indexed tensor.

    Attributes:
        X_train: ``n_train x K`` training coordinates.
        y_train: ``n_train`` training values.
        X_test: ``n_test x K`` test coordinates.
        y_test: ``n_test`` test values (noisy, like the training values).
        test_unseen: ``n_test`` boolean, ``True`` where at least one coordinate of the entry is not a training
            coordinate of its mode.
        test_outside: ``n_test`` boolean, ``True`` where at least one coordinate lies outside the training range
            ``[min, max]`` of its mode (extrapolation; a subset of ``test_unseen``).
        mode_names: The ``K`` mode names.
        f_train: ``n_train`` noise-free values (synthetic data only, else ``None``).
        f_test: ``n_test`` noise-free values (synthetic data only, else ``None``).
        latent: ``latent(k, t)`` -> ``len(t) x R_k`` true latent functions of mode ``k`` at coordinates ``t``
            (synthetic data only, else ``None``).
        core: The true ``R_1 x ... x R_K`` core (synthetic data only, else ``None``).
        noise_sd: The noise standard deviation (synthetic data only, else ``None``).
        info: Anything else (seed, fold, sizes, units).
    """

    X_train: Tensor
    y_train: Tensor
    X_test: Tensor
    y_test: Tensor
    test_unseen: Tensor
    test_outside: Tensor
    mode_names: tuple[str, ...]
    f_train: Tensor | None = None
    f_test: Tensor | None = None
    latent: Callable[[int, Tensor], Tensor] | None = None
    core: Tensor | None = None
    noise_sd: float | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_modes(self) -> int:
        return self.X_train.shape[1]


def _unseen(X_train: Tensor, X_test: Tensor) -> tuple[Tensor, Tensor]:
    r"""``n_test`` booleans: some coordinate of the test entry is not among its mode's training coordinates;
    some coordinate is outside its mode's training range."""
    unseen = torch.zeros(X_test.shape[0], dtype=torch.bool)
    outside = torch.zeros(X_test.shape[0], dtype=torch.bool)
    for k in range(X_train.shape[1]):
        unseen |= ~torch.isin(X_test[:, k], torch.unique(X_train[:, k]))
        outside |= (X_test[:, k] < X_train[:, k].min()) | (X_test[:, k] > X_train[:, k].max())
    return unseen, outside


@dataclass(eq=False)
class ContinuousTensor:
    r"""All observed entries of a continuous-indexed tensor.

    Attributes:
        X: ``N x K`` coordinates.
        y: ``N`` values.
        mode_names: The ``K`` mode names.
        info: Provenance and units (e.g. the raw mean and standard deviation of a z-scored target).
    """

    X: Tensor
    y: Tensor
    mode_names: tuple[str, ...]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.X.shape[0]

    @property
    def n_unique(self) -> tuple[int, ...]:
        r"""Number of unique coordinates per mode."""
        return tuple(int(torch.unique(self.X[:, k]).numel()) for k in range(self.X.shape[1]))

    def split(
        self, fold: int = 0, *, test_fraction: float = 0.2, seed: int | None = 0, n_train: int | None = None
    ) -> TensorSplit:
        r"""A seeded random train/test split (the ``fold``-th of independent 80/20 splits).

        Fold ``f`` permutes the entries with ``numpy.random.default_rng([seed, f])`` and takes the first
        ``round(test_fraction N)`` as test entries. Optionally only the first ``n_train`` of the remaining entries
        are kept for training (a subsample for scaling studies); the test set is unchanged.

        Args:
            fold: Fold number (``>= 0``).
            test_fraction: Fraction of entries held out, in ``(0, 1)``.
            seed: Base seed, an int >= 0 (the split is the same whatever the global random states, which it
                leaves untouched), or ``None``: one draw of torch's global random stream (:mod:`gpgeom._seeds`),
                recorded in ``info["seed"]``.
            n_train: Optional number of training entries to keep.

        Returns:
            A :class:`TensorSplit` (``test_unseen`` marks entries with a coordinate absent from the training set).

        Raises:
            ValueError: For a negative or non-integer ``fold``, ``test_fraction`` outside ``(0, 1)`` or one that leaves
                no training entry, or ``n_train`` larger than the training part.
            TypeError, ValueError: For a ``seed`` that is not an int >= 0 or ``None``.
        """
        if not _is_int(fold) or fold < 0:
            raise ValueError(f"`fold` must be an int >= 0, got {fold!r}.")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"`test_fraction` must be in (0, 1), got {test_fraction!r}.")
        fold = int(fold)
        seed = resolve_seed("seed", seed)
        N = len(self)
        perm = torch.from_numpy(np.random.default_rng([seed, fold]).permutation(N))
        n_test = max(1, int(round(test_fraction * N)))
        if n_test >= N:
            raise ValueError(
                f"`test_fraction`={test_fraction!r} of {N} entries holds out {n_test}, leaving no training entry; "
                "lower it (or use a larger tensor)."
            )
        test, train = perm[:n_test], perm[n_test:]
        if n_train is not None:
            check_positive("n_train", n_train, integer=True)
            if n_train > train.numel():
                raise ValueError(f"`n_train`={n_train} exceeds the {train.numel()} training entries of the split.")
            train = train[:n_train]
        X_train, X_test = self.X[train], self.X[test]
        unseen, outside = _unseen(X_train, X_test)
        return TensorSplit(
            X_train=X_train,
            y_train=self.y[train],
            X_test=X_test,
            y_test=self.y[test],
            test_unseen=unseen,
            test_outside=outside,
            mode_names=self.mode_names,
            info={**self.info, "fold": fold, "seed": seed, "train_index": train, "test_index": test},
        )


# ----------------------------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------------------------
def _is_int(v: object) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _as_ranks(rank: int | Sequence[int], n_modes: int, name: str = "rank") -> tuple[int, ...]:
    r"""``rank`` (an int, or ``n_modes`` ints; numpy integers too) as ``n_modes`` Python ints ``>= 1``, or a
    ``ValueError`` naming the argument ``name``."""
    if _is_int(rank):
        ranks = (rank,) * n_modes
    else:
        try:
            ranks = tuple(rank)
        except TypeError:
            ranks = ()
    if len(ranks) != n_modes or any(not _is_int(r) or r < 1 for r in ranks):
        raise ValueError(f"`{name}` must be an int >= 1 or {n_modes} ints >= 1 (one per mode), got {rank!r}.")
    return tuple(int(r) for r in ranks)


def _truly_seen(train: np.ndarray, seen: np.ndarray, ncs: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    r"""The seen test cells ``seen`` (``n_seen x K`` grid indices) with those that have a grid coordinate no
    training cell (``train``, ``n_train x K``) has redrawn among the cells of the training entries' coordinates,
    distinct from every training and test cell. A grid coordinate is unused by the training entries when
    ``n_train`` is small next to ``n_coords``; the draws come from a child stream of ``rng`` (``rng.spawn``), so
    ``rng``'s own draws, and the data when every coordinate is used, do not change."""
    used = [np.unique(train[:, k]) for k in range(train.shape[1])]
    ok = np.all([np.isin(seen[:, k], used[k]) for k in range(len(used))], axis=0)
    n_bad = int((~ok).sum())
    if n_bad == 0:
        return seen
    sizes = tuple(len(u) for u in used)
    n_cells = math.prod(sizes)
    # the training cells and the kept seen cells, as flat indices into the grid of used coordinates
    pos = [np.searchsorted(u, c) for u, c in zip(used, np.concatenate([train, seen[ok]]).T)]
    taken = np.ravel_multi_index(tuple(pos), sizes)
    if n_cells - len(taken) < n_bad:
        raise ValueError(
            f"The training entries use {sizes} coordinates per mode: {n_cells} cells, {len(taken)} of them taken by "
            f"training and seen test entries, too few for {n_bad} more seen test entries; raise `n_train`, or lower "
            "`n_coords`, `n_test` or 1 - `unseen_fraction`."
        )
    child = rng.spawn(1)[0]
    if n_cells <= 5_000_000:
        free = np.setdiff1d(np.arange(n_cells), taken)
        new = child.choice(free, size=n_bad, replace=False)
    else:  # a huge grid: rejection (the taken cells are a small part of it)
        chosen: list[int] = []
        blocked = set(taken.tolist())
        while len(chosen) < n_bad:
            for c in child.integers(n_cells, size=2 * n_bad).tolist():
                if c not in blocked and len(chosen) < n_bad:
                    blocked.add(c)
                    chosen.append(c)
        new = np.asarray(chosen)
    out = seen.copy()
    out[~ok] = np.stack([u[i] for u, i in zip(used, np.unravel_index(new, sizes))], axis=1)
    return out


def make_synthetic_tensor(
    n_train: int = 1000,
    n_test: int = 500,
    *,
    n_modes: int = 3,
    rank: int | Sequence[int] = 2,
    decomposition: str = "tucker",
    n_coords: int | Sequence[int] = 50,
    noise_sd: float = 0.05,
    unseen_fraction: float = 0.5,
    unseen_range: str = "train",
    seed: int | None = 0,
) -> TensorSplit:
    r"""Entries of an exact continuous-indexed Tucker (or CP) tensor with known latent functions and core.

    Model: :math:`y = f(x) + \varepsilon`, :math:`\varepsilon \sim N(0, \sigma^2)`,

    .. math::
        f(x) = c \sum_{r_1 \dots r_K} W_{r_1 \dots r_K} \prod_{k=1}^K u^k_{r_k}(x_k), \qquad
        u^k_r(t) = \sin(2 \pi \phi_{kr} t + \psi_{kr}),

    with :math:`W` standard normal (Tucker) or :math:`W_{r \dots r} = 1`, zero elsewhere (CP, equal ranks), and
    :math:`c` such that :math:`f` has unit standard deviation over :math:`[0, 1]^K` (estimated on 20,000 uniform
    points drawn from the seed).

    Coordinates: each mode has ``n_coords`` training coordinates drawn uniformly in ``[0, 1]``; the training
    entries are distinct cells of that grid drawn uniformly. Test entries: a fraction ``1 - unseen_fraction`` are
    other cells of the training grid whose every coordinate is one of the training entries' (seen coordinates, never
    a training entry: a cell with a grid coordinate that no training entry uses, when ``n_train`` is small next to
    ``n_coords``, is redrawn); the rest are cells of the training entries' coordinates with each coordinate,
    independently with probability 1/2 and at least one, replaced by a fresh uniform draw (an unseen coordinate)
    inside the mode's training range (``unseen_range="train"``: interpolation) or in ``[0, 1]``
    (``unseen_range="unit"``: includes extrapolation beyond the extreme training coordinates, flagged in
    ``test_outside``).

    Args:
        n_train: Number of training entries (at most the number of grid cells).
        n_test: Number of test entries.
        n_modes: Number of modes ``K >= 1``.
        rank: Rank per mode (an int for all modes, or ``K`` ints); CP needs equal ranks.
        decomposition: ``"tucker"`` or ``"cp"``.
        n_coords: Number of training coordinates per mode (an int or ``K`` ints).
        noise_sd: Noise standard deviation :math:`\sigma \ge 0` (train and test values).
        unseen_fraction: Fraction of test entries with an unseen coordinate, in ``[0, 1]``.
        unseen_range: ``"train"`` or ``"unit"`` (where unseen coordinates are drawn).
        seed: Seed of every draw, an int >= 0 (the same data whatever the global random states, which it leaves
            untouched), or ``None``: one draw of torch's global random stream (:mod:`gpgeom._seeds`), recorded in
            ``info["seed"]``.

    Returns:
        A :class:`TensorSplit` with ``f_train``, ``f_test``, ``latent`` (``latent(k, t)`` -> ``len(t) x R_k``, the
        functions :math:`u^k` with the scale :math:`c^{1/K}` folded in), ``core`` (:math:`W` with the same
        convention, so that ``f = core x_1 u^1 ... x_K u^K`` exactly) and ``noise_sd``.

    Example:
        >>> data = make_synthetic_tensor(2000, 500, rank=2, noise_sd=0.05, seed=1)
        >>> data.X_train.shape, data.test_unseen.float().mean()
        (torch.Size([2000, 3]), tensor(0.5000))
    """
    check_positive("n_train", n_train, integer=True)
    check_positive("n_test", n_test, integer=True)
    check_positive("n_modes", n_modes, integer=True)
    check_option("decomposition", decomposition, ("tucker", "cp"))
    check_option("unseen_range", unseen_range, ("train", "unit"))
    check_positive("noise_sd", noise_sd, allow_zero=True)
    if not 0.0 <= float(unseen_fraction) <= 1.0:
        raise ValueError(f"`unseen_fraction` must be in [0, 1], got {unseen_fraction!r}.")
    K = n_modes
    ranks = _as_ranks(rank, K)
    if decomposition == "cp" and len(set(ranks)) != 1:
        raise ValueError(f"A CP tensor needs the same rank in every mode, got {ranks}.")
    ncs = _as_ranks(n_coords, K, "n_coords")
    cells = math.prod(ncs)
    n_seen_test = n_test - int(round(unseen_fraction * n_test))
    if n_train + n_seen_test > cells:
        raise ValueError(
            f"The grid has {cells} cells (n_coords={ncs}) but n_train + seen test entries = {n_train + n_seen_test}; "
            "raise `n_coords`."
        )
    seed = resolve_seed("seed", seed)
    rng = np.random.default_rng(seed)
    freq = [rng.uniform(0.5, 1.5, size=r) for r in ranks]
    phase = [rng.uniform(0.0, 2.0 * np.pi, size=r) for r in ranks]
    if decomposition == "tucker":
        core = rng.standard_normal(ranks)
    else:
        core = np.zeros(ranks)
        for r in range(ranks[0]):
            core[(r,) * K] = 1.0

    def raw_latent(k: int, t: np.ndarray) -> np.ndarray:
        return np.sin(2.0 * np.pi * freq[k][None, :] * t[:, None] + phase[k][None, :])

    def tucker(Us: list[np.ndarray], W: np.ndarray) -> np.ndarray:
        # f_n = sum_r W_r prod_k U^k_{n r_k} = vec(W)^T (u^1_n kron ... kron u^K_n)
        Z = Us[0]
        for U in Us[1:]:
            Z = (Z[:, :, None] * U[:, None, :]).reshape(Z.shape[0], -1)
        return Z @ W.reshape(-1)

    ref = rng.uniform(size=(20000, K))
    f_ref = tucker([raw_latent(k, ref[:, k]) for k in range(K)], core)
    scale = float(f_ref.std())
    if scale <= 0:  # pragma: no cover - a zero core cannot be drawn
        raise RuntimeError("Degenerate synthetic tensor (zero variance).")
    # Fold the scale into the latent functions so that core and latent reproduce f exactly.
    lat_scale = scale ** (-1.0 / K)

    def latent_np(k: int, t: np.ndarray) -> np.ndarray:
        return lat_scale * raw_latent(k, t)

    grids = [np.sort(rng.uniform(size=n)) for n in ncs]
    flat = rng.choice(cells, size=n_train + n_seen_test, replace=False)
    idx = np.stack(np.unravel_index(flat, ncs), axis=1)
    idx[n_train:] = _truly_seen(idx[:n_train], idx[n_train:], ncs, rng)
    X_grid = np.stack([grids[k][idx[:, k]] for k in range(K)], axis=1)
    X_train, X_seen = X_grid[:n_train], X_grid[n_train:]
    n_unseen = n_test - n_seen_test
    # unseen test entries: start from random cells of the training entries' coordinates (the whole grid when every
    # grid coordinate is used: the same draws), replace a random non-empty subset of coordinates
    used = [np.unique(X_train[:, k]) for k in range(K)]
    base = np.stack([used[k][rng.integers(len(used[k]), size=n_unseen)] for k in range(K)], axis=1)
    replace = rng.random((n_unseen, K)) < 0.5
    none = ~replace.any(axis=1)
    replace[none, rng.integers(K, size=int(none.sum()))] = True
    if unseen_range == "train":
        lo = np.array([X_train[:, k].min() for k in range(K)])
        hi = np.array([X_train[:, k].max() for k in range(K)])
    else:
        lo, hi = np.zeros(K), np.ones(K)
    fresh = lo + (hi - lo) * rng.uniform(size=(n_unseen, K))
    X_unseen = np.where(replace, fresh, base)
    X_test = np.concatenate([X_seen, X_unseen], axis=0)
    order = rng.permutation(n_test)
    X_test = X_test[order]

    def f_of(X: np.ndarray) -> np.ndarray:
        return tucker([latent_np(k, X[:, k]) for k in range(K)], core)

    f_train, f_test = f_of(X_train), f_of(X_test)
    y_train = f_train + noise_sd * rng.standard_normal(n_train)
    y_test = f_test + noise_sd * rng.standard_normal(n_test)
    to = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    Xtr, Xte = to(X_train), to(X_test)
    unseen, outside = _unseen(Xtr, Xte)

    def latent(k: int, t: Tensor) -> Tensor:
        if not 0 <= k < K:
            raise ValueError(f"Mode `k` must be in [0, {K - 1}], got {k}.")
        return to(latent_np(k, np.asarray(torch.as_tensor(t, dtype=torch.float64).cpu())))

    return TensorSplit(
        X_train=Xtr,
        y_train=to(y_train),
        X_test=Xte,
        y_test=to(y_test),
        test_unseen=unseen,
        test_outside=outside,
        mode_names=tuple(f"mode {k}" for k in range(K)),
        f_train=to(f_train),
        f_test=to(f_test),
        latent=latent,
        core=to(core),
        noise_sd=float(noise_sd),
        info={"seed": seed, "ranks": ranks, "decomposition": decomposition, "n_coords": ncs, "scale": scale},
    )


# ----------------------------------------------------------------------------------------------------------------
# Beijing air quality
# ----------------------------------------------------------------------------------------------------------------
def _source_data_dir() -> Path:
    # gpgeom/datasets/tensors.py -> repository root -> ../shared/data
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def beijing_csv_path(path: str | os.PathLike | None = None) -> Path:
    r"""Locate ``beijing_air_daily.csv``.

    Order: ``path`` (the CSV itself or a folder holding it); the environment variable ``GPGEOM_DATA`` (same);
    ``../shared/data`` next to a source checkout of gpgeom.

    Raises:
        FileNotFoundError: When none of them holds the file (the message lists where it looked).
    """
    tried: list[Path] = []
    candidates: list[Path] = []
    if path is not None:
        candidates.append(Path(path))
    elif os.environ.get("GPGEOM_DATA"):
        candidates.append(Path(os.environ["GPGEOM_DATA"]))
    else:
        candidates.append(_source_data_dir())
    for c in candidates:
        f = c / _CSV_NAME if c.is_dir() or c.suffix != ".csv" else c
        tried.append(f)
        if f.is_file():
            return f
    raise FileNotFoundError(
        f"Cannot find {_CSV_NAME} (looked at: {', '.join(map(str, tried))}). Pass `path=` (the CSV or its folder), "
        "or set the environment variable GPGEOM_DATA to its folder. It holds the daily station means of the UCI "
        "Beijing Multi-Site Air-Quality data (CC BY 4.0); see gpgeom/data/ATTRIBUTION.md."
    )


def _scale_0_10(x: np.ndarray) -> np.ndarray:
    r"""``x`` mapped linearly onto ``[0, 10]``; a constant ``x`` (for example every day offset of a table with one
    station a day) to zeros."""
    lo, hi = x.min(), x.max()
    return 10.0 * (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _read_beijing_csv(csv_path: Path, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    r"""Preprocess the daily CSV as the data README says: ``(X (N x 3) in [0, 10], y z-scored, station codes (N,)
    into BEIJING_STATIONS, info)``."""
    temp, pres, secs, vals, stations = [], [], [], [], []
    code_of = {name: k for k, name in enumerate(BEIJING_STATIONS)}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"year", "month", "day", "station", "TEMP", "PRES", target} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{csv_path} lacks the column(s) {sorted(missing)}.")
        for row in reader:
            try:
                t, p, v = float(row["TEMP"]), float(row["PRES"]), float(row[target])
            except (TypeError, ValueError):
                continue  # a row with a missing value among the kept columns is dropped
            if not (math.isfinite(t) and math.isfinite(p) and math.isfinite(v)):
                continue
            if row["station"] not in code_of:
                raise ValueError(
                    f"{csv_path}: unknown station {row['station']!r}; expected one of {', '.join(BEIJING_STATIONS)}."
                )
            day = _dt.datetime(int(row["year"]), int(row["month"]), int(row["day"]), tzinfo=_dt.UTC)
            stations.append(code_of[row["station"]])
            temp.append(t)
            pres.append(p)
            secs.append(day.timestamp())
            vals.append(v)
    if len(vals) < 2:  # the z-scores need two entries (a sample standard deviation)
        raise ValueError(
            f"{csv_path} has {len(vals)} row(s) with {target}, TEMP and PRES all present; at least 2 are needed."
        )
    temp_a, pres_a, secs_a, y = (np.asarray(a, dtype=np.float64) for a in (temp, pres, secs, vals))
    time_z = np.round((secs_a - secs_a.mean()) / secs_a.std(), 3)
    X = np.stack([_scale_0_10(np.round(temp_a, 1)), _scale_0_10(np.round(pres_a, 1)), _scale_0_10(time_z)], axis=1)
    mu, sd = float(y.mean()), float(y.std(ddof=1))
    info = {
        "target": target,
        "raw_mean": mu,
        "raw_std": sd,
        "units": "z-scored (raw = z * raw_std + raw_mean, in ug/m3)",
        "source": str(csv_path),
        "temp_range_C": (float(np.round(temp_a, 1).min()), float(np.round(temp_a, 1).max())),
        "pres_range_hPa": (float(np.round(pres_a, 1).min()), float(np.round(pres_a, 1).max())),
        "first_day": _dt.datetime.fromtimestamp(secs_a.min(), _dt.UTC).date().isoformat(),
        "last_day": _dt.datetime.fromtimestamp(secs_a.max(), _dt.UTC).date().isoformat(),
    }
    return X, (y - mu) / sd, np.asarray(stations, dtype=np.int64), info


def _day_offsets(X: np.ndarray, info: dict) -> tuple[np.ndarray, dict]:
    r"""``X`` (``N x 3`` in ``[0, 10]``) with temperature and pressure replaced by their offsets from the mean over
    the entries of the same day (:func:`~gpgeom.models.funbat.coordinates.group_offsets`), rounded to 0.1 (°C, hPa)
    and scaled to ``[0, 10]`` (:func:`load_beijing_air`)."""
    from gpgeom.models.funbat.coordinates import group_offsets  # the FunBaT package only when offsets are asked for

    raw, info = X.copy(), dict(info)
    for k, key in ((0, "temp_range_C"), (1, "pres_range_hPa")):
        lo, hi = info[key]
        raw[:, k] = np.round(lo + X[:, k] * (hi - lo) / 10.0, 1)  # the rounded reading, back in its units
    offsets = group_offsets(torch.from_numpy(raw), (0, 1), by=2, decimals=1).numpy()
    out = X.copy()
    for k, key in ((0, "temp_range_C"), (1, "pres_range_hPa")):
        out[:, k] = _scale_0_10(offsets[:, k])
        info[key] = (float(offsets[:, k].min()), float(offsets[:, k].max()))
    return out, info


def write_beijing_npz(out: str | os.PathLike, *, path: str | os.PathLike | None = None, target: str = "PM2.5") -> Path:
    r"""Write the preprocessed tensor as a compressed ``.npz`` (how ``gpgeom/data/beijing_pm25.npz`` was made).

    The file holds ``codes`` (``N x 3`` uint16 indices into the per-mode unique coordinates), ``coords_0..2``
    (sorted unique coordinates, float64), ``y`` (z-scored target, float64), ``raw_mean``/``raw_std``,
    ``station`` (``N`` uint8 indices into :data:`BEIJING_STATIONS`), ``temp_range_C``/``pres_range_hPa`` (the
    rounded minimum and maximum that ``[0, 10]`` stands for) and ``first_day``/``last_day`` (ISO dates of the
    table's first and last day).
    """
    check_option("target", target, BEIJING_TARGETS)
    X, y, station, info = _read_beijing_csv(beijing_csv_path(path), target)
    arrays = {
        "y": y,
        "raw_mean": np.float64(info["raw_mean"]),
        "raw_std": np.float64(info["raw_std"]),
        "station": station.astype(np.uint8),
        "temp_range_C": np.asarray(info["temp_range_C"], dtype=np.float64),
        "pres_range_hPa": np.asarray(info["pres_range_hPa"], dtype=np.float64),
        "first_day": np.array(info["first_day"]),
        "last_day": np.array(info["last_day"]),
    }
    codes = []
    for k in range(3):
        u, inv = np.unique(X[:, k], return_inverse=True)
        arrays[f"coords_{k}"] = u
        codes.append(inv.astype(np.uint16))
    arrays["codes"] = np.stack(codes, axis=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def load_beijing_air(
    target: str = "PM2.5",
    path: str | os.PathLike | None = None,
    *,
    prefer_shipped: bool = True,
    day_offsets: bool = False,
    station: bool = False,
) -> ContinuousTensor:
    r"""The BeijingAir continuous-indexed tensor of the FunBaT paper.

    Preprocessing: the hourly station files without rows that miss any kept column, averaged per (day, station):
    16,965 daily station means (12 stations, 2013-03-01 to 2017-02-28);
    modes: temperature rounded to 0.1 °C, pressure rounded to 0.1 hPa, time = the day as epoch seconds
    (UTC midnight), standardised and rounded to 3 decimals; each mode is then scaled linearly to ``[0, 10]``;
    the target is z-scored over the whole table (sample standard deviation). With this CSV the modes have 428,
    498 and 1461 unique coordinates (501 pressures from the hourly files: the daily CSV stores 6 significant digits,
    which moves a few roundings).

    With ``day_offsets=True`` the temperature and pressure modes are offsets from the day's mean: for each entry,
    its rounded temperature (pressure) minus the mean of the rounded temperatures (pressures) of all entries of its
    day, rounded to 0.1 °C (0.1 hPa) and scaled to ``[0, 10]`` (only inputs enter the mean, never the target). The
    time mode, the entries and ``y`` are unchanged; the day's mean itself is a function of the day, so the tensor
    holds the same information. The paper's coordinates put the small offsets between the stations of one day (median
    0.35 °C and 1.85 hPa, 95 % within 1.56 °C and 3.52 hPa) on the scale of the seasons (52.7 °C and 55.4 hPa;
    ``benchmarks/results/beijing_facts.md``), where the low-rank functions of a Tucker model cannot resolve them; as
    offsets they span the whole mode (``benchmarks/funbat_day_offsets.py`` measures FunBaT and the exact GP on both).

    With ``station=True`` the measuring station is a fourth mode: station ``s`` of :data:`BEIJING_STATIONS`
    (alphabetical) at ``10 s / 11``, so that it too spans ``[0, 10]``. The paper's tensor leaves it out, and the
    stations then differ only through the small within-day offsets of their temperature and pressure; with it, a
    model can learn a per-station effect (``benchmarks/results/funbat_stations.md`` measures the difference).

    Where the data come from: for PM2.5 the copy shipped in the package (``gpgeom/data/beijing_pm25.npz``) unless
    ``path`` is given or ``prefer_shipped=False``; otherwise the CSV from ``path`` (the file or its folder), the
    environment variable ``GPGEOM_DATA``, or ``../shared/data`` next to a source checkout (see
    :func:`beijing_csv_path`).

    Args:
        target: ``"PM2.5"``, ``"PM10"`` or ``"SO2"``.
        path: The CSV or its folder.
        prefer_shipped: Use the shipped PM2.5 copy when no ``path`` is given.
        day_offsets: Temperature and pressure as offsets from the day's mean (above).
        station: Add the station as a fourth mode.

    Returns:
        A :class:`ContinuousTensor` with ``X`` (``16965 x 3``, or ``16965 x 4`` with the station), ``y``
        (z-scored), mode names ``("temperature", "pressure", "time")`` (then ``"station"``) and ``info``
        (``raw_mean``, ``raw_std``, source, ``temp_range_C``/``pres_range_hPa`` that ``[0, 10]`` stands for; with
        ``day_offsets=True`` those of the offsets and ``mode_names`` ``("temperature offset", "pressure offset",
        "time")``; ``first_day``/``last_day``, the ISO dates that the time mode's 0 and 10 stand for; ``stations``,
        the station names in code order, with ``station=True``). Split it with :meth:`ContinuousTensor.split`.

    Raises:
        FileNotFoundError: When the CSV is needed and cannot be found.
        ValueError: A CSV without the needed columns, with an unknown station, or with fewer than 2 complete rows.
        TypeError: When ``day_offsets`` or ``station`` is not a bool.
    """
    for name, flag in (("day_offsets", day_offsets), ("station", station)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {type(flag).__name__} {flag!r}.")
    check_option("target", target, BEIJING_TARGETS)
    if target == "PM2.5" and path is None and prefer_shipped and _SHIPPED.is_file():
        with np.load(_SHIPPED) as z:
            codes = z["codes"].astype(np.int64)
            X = np.stack([z[f"coords_{k}"][codes[:, k]] for k in range(3)], axis=1)
            y = z["y"]
            stations = z["station"].astype(np.int64)
            info = {
                "target": target,
                "raw_mean": float(z["raw_mean"]),
                "raw_std": float(z["raw_std"]),
                "units": "z-scored (raw = z * raw_std + raw_mean, in ug/m3)",
                "source": str(_SHIPPED),
                "temp_range_C": tuple(float(v) for v in z["temp_range_C"]),
                "pres_range_hPa": tuple(float(v) for v in z["pres_range_hPa"]),
                # the committed copy predates these entries and holds the whole table
                "first_day": str(z["first_day"]) if "first_day" in z.files else "2013-03-01",
                "last_day": str(z["last_day"]) if "last_day" in z.files else "2017-02-28",
            }
    else:
        X, y, stations, info = _read_beijing_csv(beijing_csv_path(path), target)
    mode_names = BEIJING_MODES
    if day_offsets:
        X, info = _day_offsets(X, info)
        mode_names = ("temperature offset", "pressure offset", BEIJING_MODES[2])
    if station:
        X = np.concatenate([X, (10.0 / (len(BEIJING_STATIONS) - 1)) * stations[:, None].astype(np.float64)], axis=1)
        mode_names = (*mode_names, "station")  # after the offsets' names when day_offsets=True
        info["stations"] = BEIJING_STATIONS
    return ContinuousTensor(
        X=torch.as_tensor(X, dtype=torch.float64),
        y=torch.as_tensor(y, dtype=torch.float64),
        mode_names=mode_names,
        info=info,
    )
