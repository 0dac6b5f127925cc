r"""The train/eval mode of a module around a prediction.

A prediction needs eval mode (GPyTorch's exact GPs predict only there), but it must leave the ``training`` flag of
every submodule as the user set it (``docs/contract.md``): a model put in train mode (``model.train()``) is back in
train mode after ``predict``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from torch import nn

__all__ = ["eval_mode", "in_eval_mode"]

_F = TypeVar("_F", bound=Callable[..., Any])


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    r"""``module.eval()`` inside the block; each submodule's ``training`` flag as it was on leaving it (also when the
    block raises). A module already in eval mode everywhere is not touched, so its prediction caches stay (GPyTorch's
    ``ExactGP.train()`` drops them)."""
    modes = [(m, m.training) for m in module.modules()]
    if not any(mode for _, mode in modes):
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train(modes[0][1])  # the module's own ``train`` (an ExactGP's drops its caches when leaving eval)
        for m, mode in modes:
            m.training = mode


def in_eval_mode(method: _F) -> _F:
    r"""A method of an ``nn.Module`` run inside :func:`eval_mode` of its ``self``."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with eval_mode(self):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
