r"""Seed arguments of gpgeom's random draws: their check, and the generator they stand for.

One rule for every ``seed`` of the data generators and geometry helpers (as for the fits of :mod:`gpgeom.engine`
and the models' ``seed``): an int ``>= 0`` gives a fixed stream, the same whatever the global random states, which
it leaves untouched; ``None`` takes one draw of torch's global random stream as the seed (``torch.manual_seed``
before the call repeats it, as it repeats a fit with ``seed=None``); where a signature says so, a
``numpy.random.Generator`` or a ``torch.Generator`` is drawn from in place. Anything else (a bool, a float, a
string, a negative int) raises an error naming the argument, the accepted forms and what was given.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = ["check_numpy_generator", "check_seed", "global_seed", "numpy_rng", "resolve_seed", "torch_generator"]

#: Seeds drawn for ``seed=None`` lie in ``[0, 2**62)`` (the fits of :mod:`gpgeom.engine` draw theirs here too).
_DRAW_HIGH = 2**62
#: The largest seed a ``torch.Generator`` takes.
_TORCH_MAX = 2**64 - 1


def _forms(none: bool, numpy_generator: bool, torch_generator: bool) -> str:
    forms = ["an int >= 0"]
    forms += ["a numpy.random.Generator"] if numpy_generator else []
    forms += ["a torch.Generator"] if torch_generator else []
    forms += ["None"] if none else []
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def check_seed(
    name: str, seed: object, *, none: bool = True, numpy_generator: bool = False, torch_generator: bool = False
) -> None:
    r"""Check a seed argument: an int ``>= 0`` (numpy integers count, bools do not), or ``None``, a
    ``numpy.random.Generator`` or a ``torch.Generator`` where allowed.

    Raises:
        TypeError: For a value of another type (``1.5``, ``"3"``, ``True``, a generator of the other library).
        ValueError: For a negative int.
    """
    if (none and seed is None) or (numpy_generator and isinstance(seed, np.random.Generator)):
        return
    if torch_generator and isinstance(seed, torch.Generator):
        return
    forms = _forms(none, numpy_generator, torch_generator)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"`{name}` must be {forms}, got {type(seed).__name__} ({seed!r}).")
    if seed < 0:
        raise ValueError(f"`{name}` must be {forms}, got {seed!r}.")


def global_seed() -> int:
    r"""The seed that ``seed=None`` stands for: one draw of torch's global random stream, in ``[0, 2**62)``."""
    return int(torch.randint(0, _DRAW_HIGH, (1,)).item())


def resolve_seed(name: str, seed: object) -> int:
    r"""``seed`` checked (an int ``>= 0`` or ``None``) as an int: ``None`` is :func:`global_seed`."""
    check_seed(name, seed)
    return global_seed() if seed is None else int(seed)  # type: ignore[call-overload]


def numpy_rng(name: str, seed: object, *, generator: bool = True) -> np.random.Generator:
    r"""The numpy generator of a seed argument: a ``numpy.random.Generator`` itself (when ``generator``), else
    ``numpy.random.default_rng(seed)`` (``None``: of :func:`global_seed`)."""
    check_seed(name, seed, numpy_generator=generator)
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(resolve_seed(name, seed))


def torch_generator(name: str, seed: object) -> torch.Generator:
    r"""The CPU torch generator of a seed argument: a ``torch.Generator`` itself, else a new one seeded with
    ``seed`` (``None``: :func:`global_seed`)."""
    check_seed(name, seed, torch_generator=True)
    if isinstance(seed, torch.Generator):
        return seed
    value = resolve_seed(name, seed)
    if value > _TORCH_MAX:
        raise ValueError(f"`{name}` must be at most 2**64 - 1 (the range of a torch.Generator), got {seed!r}.")
    return torch.Generator().manual_seed(value)


def check_numpy_generator(name: str, rng: object) -> np.random.Generator:
    r"""Check that ``rng`` is a ``numpy.random.Generator`` (for functions that draw from a caller's generator) and
    return it; an int seed is refused with the remedy ``numpy.random.default_rng(seed)``."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"`{name}` must be a numpy.random.Generator (e.g. numpy.random.default_rng(0)), got "
            f"{type(rng).__name__} ({rng!r})."
        )
    return rng
