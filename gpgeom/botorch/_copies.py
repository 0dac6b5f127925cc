r"""Deep copies of GPyTorch's prediction strategy (its training covariance, Cholesky factor and mean cache), for
:meth:`gpgeom.botorch.exact_gp.ExactGPModel.__deepcopy__`.

GPyTorch's ``DefaultPredictionStrategy.__deepcopy__`` returns ``None``, because the strategy holds tensors of an
autograd graph (non-leaf tensors, e.g. the mean cache of a conditioned model computed with the hyperparameters
requiring gradients), which ``copy.deepcopy`` refuses. The copy then rebuilt its caches: a conditioned model's
copy factorised the whole ``(n + n') x (n + n')`` covariance where the original had updated its factor by the
Schur complement of the new points, and its variances differed in the last bits. Pickling keeps the strategy, with
every tensor as a leaf of the same values; :func:`copy_strategy` does the same for a deep copy.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

__all__ = ["copy_state", "copy_strategy"]


def _graph_tensors(obj: Any, modules: bool = False) -> list[Tensor]:
    r"""The non-leaf tensors reachable from ``obj`` through dicts, lists, tuples, sets and object attributes (through
    ``torch.nn.Module``\ s too when ``modules``; else not: the model's modules, copied as the model is)."""
    found, seen, todo = [], set(), [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen or (isinstance(item, torch.nn.Module) and not modules):
            continue
        seen.add(id(item))
        if isinstance(item, Tensor):
            if not item.is_leaf:
                found.append(item)
        elif isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += list(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            todo.append(vars(item))
    return found


def _copy_as_leaves(obj: Any, memo: dict[int, Any], modules: bool = False) -> None:
    r"""Enter in ``memo`` a copy of every non-leaf tensor reachable from ``obj`` (:func:`_graph_tensors`): a leaf of
    the same values that requires a gradient as the tensor did, so that ``copy.deepcopy`` (which refuses non-leaf
    tensors) takes it."""
    for tensor in _graph_tensors(obj, modules):
        if id(tensor) not in memo:
            leaf = copy.deepcopy(tensor.detach(), memo).requires_grad_(tensor.requires_grad)
            memo[id(tensor)] = leaf
            memo.setdefault(id(memo), []).append(tensor)  # kept alive while the memo is (copy's convention)


def copy_state(state: dict[str, Any], memo: dict[int, Any]) -> dict[str, Any]:
    r"""A deep copy of a model's state (its ``__getstate__``, within the deep copy of the model: ``memo``) in which
    the tensors of an autograd graph are leaves of the same values, as pickling makes them: a fantasy model's
    training targets (``batch x n'`` fantasies sampled with gradients, for the acquisition's gradient), which
    ``copy.deepcopy`` refused.

    Args:
        state: The model's state dict (its prediction strategy left out: :func:`copy_strategy`).
        memo: The memo of the ``copy.deepcopy`` in progress.

    Returns:
        The copied state.
    """
    _copy_as_leaves(state, memo, modules=True)
    return copy.deepcopy(state, memo)


def copy_strategy(strategy: Any, memo: dict[int, Any]) -> Any:
    r"""A deep copy of a GPyTorch prediction strategy, within the deep copy of its model (``memo``: that copy's
    memo, so that the training inputs, labels and modules the strategy shares with the model are the copy's).

    Its tensors are copied with their values and storage sharing; those of an autograd graph (non-leaf) become
    leaves of the same values that require a gradient as they did, as pickling makes them: the copy's caches are
    bitwise the original's, independent of it and of its graph.

    Args:
        strategy: The model's ``prediction_strategy`` (not ``None``).
        memo: The memo of the ``copy.deepcopy`` in progress.

    Returns:
        The copied strategy.
    """
    _copy_as_leaves(vars(strategy), memo)
    cls = type(strategy)
    new = cls.__new__(cls)
    memo[id(strategy)] = new
    new.__dict__.update(copy.deepcopy(vars(strategy), memo))
    return new
