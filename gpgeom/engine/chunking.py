r"""Memory budgets for chunked computations, and the memory-lean pieces of chunked GP prediction.

**Budgets.** From a budget in bytes to a number of items per chunk.

Prediction at many test points, and loss evaluations over many independent covariance matrices, are done in
chunks whose working memory grows linearly with the chunk: ``fixed + chunk x per_item`` bytes. Instead of a fixed
number of points per chunk (too many for a large training set, needlessly few for a small one), gpgeom sizes its
chunks from a *memory budget*:

.. math:: \text{chunk} = \max\Big(1, \Big\lfloor \frac{\text{budget} - \text{fixed}}{\text{per item}} \Big\rfloor\Big),

capped by the number of items. The budget is :data:`DEFAULT_MAX_MEMORY` (256 MiB) unless a call passes its own
(``max_memory=``, an integer number of bytes or a string such as ``"2GB"`` or ``"256 MiB"``) or the code runs
inside :func:`memory_budget`. A budget bounds the *working* memory of one chunk (the tensors a chunk allocates
and frees); the inputs, the results and cached factors come on top. A chunk never has fewer than one item: a
single item larger than the budget still runs (the budget is a target, not a hard limit).

Example:
    >>> from gpgeom.engine.chunking import chunk_size_for, memory_budget
    >>> n, N, itemsize = 10_000, 1_000_000, 8
    >>> per_point = 8 * n * itemsize  # eight n-vectors of temporaries per test point
    >>> chunk_size_for(per_point, total=N)  # default budget, 256 MiB
    419
    >>> with memory_budget("2GB"):
    ...     chunk_size_for(per_point, total=N)  # about eight times as many points per chunk
    3125

How a model uses it: estimate the bytes one test point (or one batch member) costs in the largest temporaries
of its prediction (for a kernel model: the rows of the cross-covariance and of the triangular solve against the
training factor, counted with the batch and output dimensions), call :func:`chunk_size_for` with that and the
``max_memory`` argument of its ``predict``, and loop over :func:`chunk_slices`.

**Prediction from a training factor.** A GP-like model predicts from quantities of its training data alone (a
Cholesky factor, ``alpha = K^{-1} (y - mu)``, a low-rank root): :class:`FactorCache` keeps them between calls and
recomputes them when the module's parameters, buffers or data change. Against such a factor,
:func:`solve_lower_folded` solves for the test points of a whole test batch at once without copying the factor per
batch member, and :func:`sub_gram` forms ``K** - V^T V`` without a temporary.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from gpgeom._fingerprint import COPY_LIMIT
from gpgeom._fingerprint import fingerprint as _fingerprint

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "FactorCache",
    "chunk_size_for",
    "chunk_slices",
    "element_size",
    "memory_budget",
    "parse_memory",
    "resolve_max_memory",
    "solve_lower_folded",
    "sub_gram",
]

#: The default working-memory budget of a chunked computation: 256 MiB (the working memory the former fixed chunks
#: of 2,048 test points had for an exact GP on 2,000 points with two outputs, now whatever the sizes).
DEFAULT_MAX_MEMORY = 256 * 2**20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_current: list[int] = [DEFAULT_MAX_MEMORY]


def parse_memory(value: int | float | str) -> int:
    r"""A memory size in bytes from an integer, a float or a string with a unit.

    Args:
        value: Bytes (``536870912``, ``5e8``, NumPy integers and floats too) or a string: a number and one of
            ``B``, ``KB``/``K``, ``MB``/``M``, ``GB``/``G``, ``TB`` (powers of 1000) or ``KiB``, ``MiB``, ``GiB``,
            ``TiB`` (powers of 1024), any case, e.g. ``"512MiB"``, ``"2 GB"``, ``"1.5g"``.

    Returns:
        The size in bytes, a positive ``int``.

    Raises:
        TypeError: For another type (a ``bool`` included).
        ValueError: For a size that is not positive and finite, or a string that is not a size.
    """
    # numbers.Real takes NumPy's integers and float32 (np.int64(2**30), a size read from a config array, was
    # refused as "must be an int")
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise TypeError(
            f"`max_memory`: a memory size must be an int, a float or a string such as '512MB', got {value!r}."
        )
    if isinstance(value, str):
        match = _PATTERN.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"`max_memory`: cannot read the memory size {value!r}; expected a number and a unit, e.g. '512MB', "
                "'2GiB'."
            )
        size = float(match.group(1)) * _UNITS[unit]
    elif isinstance(value, numbers.Integral):
        size = int(value)  # exact: float() rounds integers above 2**53
    else:
        size = float(value)
    if not math.isfinite(size) or size < 1:
        raise ValueError(f"`max_memory`: a memory size must be at least one byte and finite, got {value!r}.")
    return int(size)


def resolve_max_memory(max_memory: int | float | str | None = None) -> int:
    r"""The budget in bytes: ``max_memory`` if given (see :func:`parse_memory`), else the current default
    (:data:`DEFAULT_MAX_MEMORY`, or the value of the innermost :func:`memory_budget`)."""
    return _current[-1] if max_memory is None else parse_memory(max_memory)


@contextlib.contextmanager
def memory_budget(max_memory: int | float | str) -> Iterator[int]:
    r"""Context in which chunked computations that are not given a ``max_memory`` use this budget.

    Args:
        max_memory: The budget (bytes or a string, see :func:`parse_memory`).

    Yields:
        The budget in bytes.
    """
    size = parse_memory(max_memory)
    _current.append(size)
    try:
        yield size
    finally:
        _current.pop()


def element_size(dtype: torch.dtype) -> int:
    r"""Bytes per element of ``dtype`` (8 for ``float64``, 4 for ``float32``)."""
    return torch.empty((), dtype=dtype).element_size()


def chunk_size_for(
    per_item: int | float,
    max_memory: int | float | str | None = None,
    *,
    fixed: int | float = 0,
    total: int | None = None,
) -> int:
    r"""Items per chunk so that ``fixed + chunk x per_item`` bytes fit in the budget (at least one item).

    Args:
        per_item: Working bytes that grow with each item of a chunk (a test point, a batch member), ``>= 0``;
            0 means that the chunk size does not matter for memory (one chunk of ``total`` items).
        max_memory: The budget (bytes or a string, :func:`parse_memory`); ``None``: :func:`resolve_max_memory`.
        fixed: Working bytes of a chunk that do not grow with it, ``>= 0``.
        total: The number of items; the chunk is capped by it (and is ``total`` when ``per_item`` is 0).

    Returns:
        The chunk size, an ``int >= 1``.

    Raises:
        ValueError: For a negative or non-finite ``per_item`` or ``fixed``, or ``per_item = 0`` without ``total``.
    """
    per_item, fixed = float(per_item), float(fixed)
    if not (math.isfinite(per_item) and per_item >= 0 and math.isfinite(fixed) and fixed >= 0):
        raise ValueError(f"`per_item` and `fixed` must be finite and >= 0, got {per_item} and {fixed}.")
    budget = resolve_max_memory(max_memory)
    cap = None if total is None else max(1, int(total))
    if per_item == 0:
        if cap is None:
            raise ValueError("`per_item` = 0 needs `total` (the chunk is then all items).")
        return cap
    chunk = max(1, int((budget - fixed) // per_item))
    return chunk if cap is None else min(chunk, cap)


def chunk_slices(total: int, chunk: int) -> Iterator[slice]:
    r"""The slices ``[0, chunk), [chunk, 2 chunk), ...`` covering ``range(total)`` (none for ``total = 0``)."""
    if chunk < 1:
        raise ValueError(f"`chunk` must be >= 1, got {chunk}.")
    for start in range(0, total, chunk):
        yield slice(start, min(start + chunk, total))


class FactorCache:
    r"""A value computed from a module's state (a training factor), kept between calls and recomputed when the
    state changes.

    The key (:meth:`key_of`) holds copies of the module's parameters and buffers (compared by value, so that
    ``param.data.copy_(...)`` and GPyTorch's ``initialize(...)``, which do not count as in-place versions, are
    seen), the given data tensors and any parameter or buffer of more than :attr:`COPY_LIMIT` elements (held and
    compared by identity, in-place version counter and a fingerprint: not copied; the fingerprint, a float64 sum,
    norm and up to 64 evenly spaced entries, sees writes through ``.data``, which bypass the version counter), the
    structure of the module (the class of every submodule and its public plain attributes: a Matern kernel's
    ``nu``, which is no parameter, ``ard_num_dims``, a transform's options) and extra plain values (settings). Copies
    (``copy.deepcopy``) and pickles of an object holding a cache start with an empty one: a copy may be changed, a
    file never holds it.

    Example:
        >>> import torch
        >>> from gpgeom.engine.chunking import FactorCache
        >>> module = torch.nn.Linear(2, 1)
        >>> X = torch.randn(5, 2)
        >>> cache, calls = FactorCache(), []
        >>> def compute():
        ...     calls.append(1)
        ...     return module(X)
        >>> first = cache.get(FactorCache.key_of(module, (X,)), compute)
        >>> again = cache.get(FactorCache.key_of(module, (X,)), compute)  # same state: not recomputed
        >>> with torch.no_grad():
        ...     _ = module.bias.fill_(1.0)
        >>> changed = cache.get(FactorCache.key_of(module, (X,)), compute)  # a parameter changed: recomputed
        >>> len(calls)
        2
    """

    __slots__ = ("key", "value")

    #: Parameters and buffers up to this many elements are copied into the key; larger ones are held.
    COPY_LIMIT = COPY_LIMIT  # gpgeom._fingerprint's, shared with the snapshots of a failed fit

    def __init__(self) -> None:
        self.key: list[Any] | None = None
        self.value: Any = None

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (FactorCache, ())

    @staticmethod
    def key_of(
        module: nn.Module, data: Iterable[Tensor | None] = (), extra: Iterable[Any] = (), *, fingerprint: bool = True
    ) -> list[Any]:
        r"""The key of ``module``'s state: ``extra`` values, the module's structure (:func:`_structure`), copies of
        the parameters and buffers (or ``(tensor, version, fingerprint)`` above :attr:`COPY_LIMIT` elements), and
        ``(tensor, version, fingerprint)`` for every tensor of ``data`` (``None`` entries are skipped).

        ``fingerprint=False`` keys the parameters and buffers above :attr:`COPY_LIMIT` by identity and in-place
        version only (``(tensor, version)``, no ``O(numel)`` pass over them): for a cache read on every prediction
        whose cost does not grow with them (a spectral basis of ``n x D x k`` entries), at the price of not seeing
        writes through ``.data`` to them."""
        key: list[Any] = [*extra, _structure(module)]
        small = FactorCache.COPY_LIMIT
        key += [
            t.detach().clone()
            if t.numel() <= small
            else ((t, t._version, _fingerprint(t)) if fingerprint else (t, t._version))
            for t in (*module.parameters(), *module.buffers())
        ]
        return key + [(t, t._version, _fingerprint(t)) for t in data if t is not None]

    def matches(self, key: list[Any]) -> bool:
        r"""Whether ``key`` equals the stored key (tensors by value, data by identity and version, the rest by
        ``==``)."""
        if self.key is None or len(self.key) != len(key):
            return False
        for a, b in zip(self.key, key):
            if isinstance(a, Tensor):
                same = isinstance(b, Tensor) and (a.shape, a.dtype, a.device) == (b.shape, b.dtype, b.device)
                if not (same and torch.equal(a, b)):
                    return False
            elif isinstance(a, tuple):
                if not (isinstance(b, tuple) and len(a) == len(b) and a[0] is b[0] and a[1] == b[1]):
                    return False
                if len(a) > 2 and not torch.equal(a[2], b[2]):
                    return False
            elif a != b:
                return False
        return True

    def get(self, key: list[Any], compute: Callable[[], Any]) -> Any:
        r"""The stored value if ``key`` matches, else ``compute()`` (stored with ``key``)."""
        if not self.matches(key):
            self.key, self.value = None, None  # free the old value before computing the new one
            self.value = compute()
            self.key = key
        return self.value


#: plain attribute types that :func:`_structure` records (values compared with ``==``)
_PLAIN = (bool, int, float, str, torch.Size)


def _structure(module: nn.Module) -> list[Any]:
    r"""Every submodule's name, class and public plain attributes (bool, int, float, str, ``torch.Size``; not
    ``training``): the state a computation depends on that is neither a parameter nor a buffer, e.g. a GPyTorch
    Matern kernel's ``nu`` (a training factor kept across ``kernel.nu = 0.5`` predicted with the old smoothness,
    off by 7.9) or a module swapped for another class with equal parameter values. A list (compared with ``==``
    by :meth:`FactorCache.matches`; its tuples are data entries)."""
    return [
        (
            name,
            type(m),
            tuple((k, v) for k, v in vars(m).items() if k[0] != "_" and k != "training" and isinstance(v, _PLAIN)),
        )
        for name, m in module.named_modules()
    ]


def solve_lower_folded(L: Tensor, rhs: Tensor) -> Tensor:
    r"""``L^{-1} rhs`` for lower-triangular factors ``L`` (``A x n x n``) and right-hand sides ``rhs``
    (``T x A' x n x k``, ``A'`` broadcastable with ``A``). The extra leading dimensions ``T`` (a test batch) are
    folded into the columns, so that one solve with ``T k`` columns runs per factor: a plain
    ``torch.linalg.solve_triangular`` would expand ``L`` to ``T x A x n x n`` and copy it (``T`` copies of the
    factor: 4 GB for 128 test batch members at ``n = 2,000``).

    Returns:
        A ``T x broadcast(A, A') x n x k`` tensor (a permuted view).
    """
    t = max(rhs.dim() - L.dim(), 0)
    A = torch.broadcast_shapes(L.shape[:-2], rhs.shape[t:-2])
    L = L.expand(A + L.shape[-2:])  # a copy only where the factor's own batch broadcasts
    if t == 0:
        return torch.linalg.solve_triangular(L, rhs.expand(A + rhs.shape[-2:]), upper=False)
    lead, (n, k) = rhs.shape[:t], rhs.shape[-2:]
    rhs = rhs.expand(lead + A + (n, k))
    perm = [*range(t, t + len(A) + 1), *range(t), rhs.dim() - 1]  # ``A x n x T x k``
    out = torch.linalg.solve_triangular(L, rhs.permute(perm).reshape(A + (n, -1)), upper=False)
    return out.reshape(A + (n,) + lead + (k,)).permute([perm.index(i) for i in range(len(perm))])


def sub_gram(K: Tensor, A: Tensor, B: Tensor) -> Tensor:
    r"""``K - A^T B`` for ``K`` (``batch x c x q``), ``A`` (``batch x n x c``) and ``B`` (``batch x n x q``), same
    batch: in the storage of ``K`` (no ``c x q`` temporary) when no gradient is recorded and ``K`` is contiguous,
    out of place otherwise."""
    if torch.is_grad_enabled() or not K.is_contiguous():
        return K - A.mT @ B
    K.view(-1, *K.shape[-2:]).baddbmm_(A.reshape(-1, *A.shape[-2:]).mT, B.reshape(-1, *B.shape[-2:]), alpha=-1.0)
    return K
