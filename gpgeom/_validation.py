r"""Input checks shared by every module of gpgeom.

Each check raises :class:`ValueError` or :class:`TypeError` whose message names the argument, the expected form
and what was given, so that a user reading the traceback knows what to change.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

#: Headroom (a power of two) between a spread (a field's, a target's) and the square root of the largest / smallest
#: normal number of a dtype: the models' variances are sums of squares of the spread.
SQUARE_HEADROOM = 16.0
#: Ulps of the largest value within which a spread is the rounding of a dtype, not a scale of its own.
ROUNDING_ULPS = 64


def squarable_range(dtype: torch.dtype) -> tuple[float, float]:
    r"""The spreads :math:`d` whose squares (and sums of them) stay in the normal range of ``dtype``:
    :math:`[\sqrt{\text{tiny}} \cdot 16, \sqrt{\text{max}} / 16]` (float32: about 1.7e-18 to 1.2e18; float64:
    2.4e-153 to 8.4e152), as ``(low, high)``."""
    info = torch.finfo(dtype)
    return math.sqrt(info.tiny) * SQUARE_HEADROOM, math.sqrt(info.max) / SQUARE_HEADROOM


def within_rounding(spread: float, size: float, dtype: torch.dtype) -> bool:
    r"""Whether ``spread`` is within :data:`ROUNDING_ULPS` ulps of ``size`` (the values' largest magnitude) in
    ``dtype``: values equal to that dtype's rounding (float32 values of 1e-12 a few ulps apart), no spread of their
    own."""
    return spread <= ROUNDING_ULPS * torch.finfo(dtype).eps * size


def _shape_str(shape: Sequence[int | None | str]) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def first_bad(x: Tensor, bad: Tensor) -> str:
    r"""`` (first at index (i, j): nan)``: the position and value of the first ``True`` of ``bad`` (a boolean
    tensor of ``x``'s shape), for the messages that refuse NaN or infinite values; ``""`` when there is none."""
    where = bad.nonzero()
    if where.shape[0] == 0:
        return ""
    pos = tuple(int(i) for i in where[0])
    value = float(x[pos].real if x.is_complex() else x[pos])
    return f" ({value})" if not pos else f" (first at index {pos[0] if len(pos) == 1 else pos}: {value})"


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Iterable[int] | None = None,
    shape: Sequence[int | None | str] | None = None,
    finite: bool = True,
    floating: bool = False,
) -> Tensor:
    r"""Check that ``x`` is a tensor of the expected form and return it.

    Args:
        name: The argument's name, used in the error message.
        x: The value to check.
        ndim: Allowed number(s) of dimensions.
        shape: Expected trailing shape; ``None`` entries match any size. When given with fewer entries than
            ``x.dim()``, only the trailing dimensions are compared.
        finite: Reject NaN and infinite entries.
        floating: Require a floating-point dtype.

    Returns:
        ``x`` unchanged.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(
                f"`{name}` must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(x.shape)}."
            )
    if shape is not None:
        if x.dim() < len(shape) or any(
            s is not None and not isinstance(s, str) and x.shape[x.dim() - len(shape) + i] != s
            for i, s in enumerate(shape)
        ):
            raise ValueError(f"`{name}` must have trailing shape {_shape_str(shape)}, got shape {tuple(x.shape)}.")
    if floating and not x.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got dtype {x.dtype}.")
    if finite and (x.is_floating_point() or x.is_complex()) and not bool(torch.isfinite(x).all()):
        bad = ~torch.isfinite(x)
        n_bad = int(bad.sum())
        raise ValueError(
            f"`{name}` contains {n_bad} NaN or infinite value(s){first_bad(x, bad)}; remove or impute them first."
        )
    return x


def check_option(name: str, value: object, options: Iterable[object]) -> object:
    r"""Check that ``value`` is one of ``options`` and return it."""
    options = tuple(options)
    if value not in options:
        raise ValueError(f"Unknown `{name}`={value!r}; expected one of {', '.join(map(repr, options))}.")
    return value


def check_device(name: str, device: object) -> torch.device:
    r"""Check a device request and return it as a ``torch.device``.

    Accepts what ``torch.device`` accepts (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``, an int for a CUDA
    index). A CUDA device is refused when CUDA is not available, or when its index exceeds the visible devices; an
    ``"mps"`` device when MPS is not available. The check runs before any work, so a wrong request fails at once and
    names the argument instead of failing later inside torch.

    Raises:
        ValueError: For something that is not a device, or a device this machine does not have.
    """
    if isinstance(device, bool):
        raise ValueError(f"`{name}` must be a torch device such as 'cpu' or 'cuda', got {device!r}.")
    try:
        dev = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be a torch device such as 'cpu' or 'cuda', got {device!r}.") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"`{name}`={str(dev)!r} was asked for, but CUDA is not available on this machine.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"`{name}`={str(dev)!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)."
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"`{name}`={str(dev)!r} was asked for, but MPS is not available on this machine.")
    return dev


def check_increasing(name: str, t: Tensor, *, strict: bool = True) -> Tensor:
    r"""Check that ``t`` (``... x n``) increases along its last dimension (strictly by default)."""
    check_tensor(name, t, floating=True)
    if t.shape[-1] > 1:
        dt = t[..., 1:] - t[..., :-1]
        bad = dt <= 0 if strict else dt < 0
        if bool(bad.any()):
            idx = int(bad.reshape(-1, bad.shape[-1]).any(0).nonzero()[0])
            raise ValueError(
                f"`{name}` must be {'strictly ' if strict else ''}increasing along its last dimension; "
                f"entry {idx + 1} ({float(t.reshape(-1, t.shape[-1])[0, idx + 1]):.6g}) does not exceed "
                f"entry {idx} ({float(t.reshape(-1, t.shape[-1])[0, idx]):.6g}). Sort the inputs first."
            )
    return t


#: The keyword arguments of ``gpytorch.kernels.Kernel.__init__`` (``param_transform``: deprecated, warned about).
_KERNEL_KWARGS = frozenset(
    ("ard_num_dims", "batch_shape", "active_dims", "lengthscale_prior", "lengthscale_constraint", "eps",
     "param_transform")
)  # fmt: skip


def check_kernel_kwargs(owner: str, kwargs: dict) -> None:
    r"""Refuse keyword arguments that ``gpytorch.kernels.Kernel.__init__`` would swallow without effect: GPyTorch
    ignores unknown keywords, so ``MaternMarkovKernel(lengthscale=0.7)`` built a kernel at the default lengthscale."""
    unknown = sorted(set(kwargs) - _KERNEL_KWARGS)
    if unknown:
        names = ", ".join(f"`{k}`" for k in unknown)
        raise TypeError(
            f"{owner} got unexpected keyword argument(s) {names} (GPyTorch's Kernel takes {sorted(_KERNEL_KWARGS)}). "
            "Set hyperparameters after construction, e.g. `k.lengthscale = 0.7`."
        )


def check_positive(name: str, value: float | int, *, integer: bool = False, allow_zero: bool = False) -> None:
    r"""Check that a scalar option is positive (or non-negative) and not NaN, and an integer when asked (numpy
    scalars count: ``np.float32(0.5)``, ``np.int64(3)``)."""
    if integer and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__} ({value!r}).")
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__}.")
    if math.isnan(value) or ((value < 0) if allow_zero else (value <= 0)):
        raise ValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


def as_tensor(
    name: str,
    x: object,
    *,
    dtype: torch.dtype | None,
    device: torch.device | str | None = None,
    ndim: int | Iterable[int] | None = None,
    shape: Sequence[int | None | str] | None = None,
    finite: bool = True,
) -> Tensor:
    r"""Convert a numpy array, tensor, number or nested sequence to a tensor of ``dtype`` on ``device`` and check it.

    This is gpgeom's one dtype rule for inputs (see :mod:`gpgeom.base`): whatever the float dtype of ``x``, the
    result has the model's ``dtype`` (``None`` keeps a floating ``x``'s dtype and turns integers and booleans into
    float64) on the model's ``device``.

    Args:
        name: The argument's name, used in error messages.
        x: The value (numpy array, torch tensor, Python number or nested sequence of numbers).
        dtype: The floating dtype of the result.
        device: The device of the result (``None``: the device of a tensor ``x``, else the CPU).
        ndim, shape, finite: As in :func:`check_tensor`.

    Raises:
        TypeError: For a value that is not numeric (strings, objects, complex numbers).
        ValueError: For a wrong number of dimensions or shape, or NaN/inf values.
    """
    if isinstance(x, Tensor):
        t = x
    else:
        import numpy as np

        try:
            arr = np.asarray(x)
        except Exception as exc:  # noqa: BLE001 - ragged sequences and the like
            raise TypeError(
                f"`{name}` must be a numpy array or a torch tensor of numbers; got {type(x).__name__}."
            ) from exc
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(
                f"`{name}` must be a numpy array or a torch tensor of numbers; got {type(x).__name__} "
                f"of dtype {arr.dtype}."
            )
        t = torch.from_numpy(np.ascontiguousarray(arr)).reshape(arr.shape)  # keeps 0-d scalars 0-d
    if t.is_complex():
        raise TypeError(f"`{name}` must be real, got dtype {t.dtype}.")
    target = dtype if dtype is not None else (t.dtype if t.is_floating_point() else torch.float64)
    t = t.to(device=device if device is not None else t.device, dtype=target)
    return check_tensor(name, t, ndim=ndim, shape=shape, finite=finite)
