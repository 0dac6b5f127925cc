r"""A BoTorch model list of gpgeom surrogates with several outputs per member.

BoTorch's ``ModelListGP`` assumes one output per member in two places: ``fantasize`` indexes the members by
output (``IndexError`` for a list whose first member has two outputs), and ``posterior`` labels the block-diagonal
joint of multi-output members with the wrong ordering (its marginal variances land on the wrong outputs and
points). :class:`SurrogateList` fixes both:

* ``posterior`` assembles the joint from the members' posteriors, block-diagonal across members (by output when
  every output is independent, as BoTorch's cached root decomposition needs; else in BoTorch's interleaved
  ordering), with ``output_indices``, ``observation_noise`` and ``posterior_transform``;

* ``condition_on_observations(X, Y)`` splits the ``m`` columns of ``Y`` (and of ``noise``) by member, in order;
* ``fantasize`` is BoTorch's generic rule (``FantasizeMixin``): sample all outputs from the joint posterior with
  observation noise, then condition on the samples, so members see independent draws and a fantasy model equals
  conditioning on the sampled values;
* ``predict`` concatenates the members' chunked marginal predictions (one memory budget, members in turn).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.model import FantasizeMixin
from botorch.models.model_list_gp_regression import ModelListGP
from botorch.posteriors import GPyTorchPosterior
from botorch.sampling.base import MCSampler
from gpytorch.distributions import MultitaskMultivariateNormal
from linear_operator.operators import BlockDiagLinearOperator
from torch import Tensor

from gpgeom.botorch.check import joint_moments
from gpgeom.botorch.outputs import gaussian_posterior, output_rows, refuse_empty_batch, select_outputs
from gpgeom.engine.chunking import chunk_slices, resolve_max_memory

__all__ = ["SurrogateList"]


def _member_predict(
    model: Any, X: Tensor, return_std: bool, observation_noise: bool, chunk_size: int | None, max_memory: int
) -> Any:
    r"""``model.predict`` (with the chunking options it takes), or the chunked marginals of ``model.posterior``."""
    if hasattr(model, "predict"):
        params = inspect.signature(model.predict).parameters
        anything = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        options = {"chunk_size": chunk_size, "max_memory": max_memory}
        kwargs = {k: v for k, v in options.items() if (anything or k in params) and v is not None}
        return model.predict(X, return_std=return_std, observation_noise=observation_noise, **kwargs)
    means, stds = [], []
    for sl in chunk_slices(X.shape[-2], chunk_size or 2048):
        post = model.posterior(X[..., sl, :], observation_noise=observation_noise)
        means.append(post.mean)
        stds.append(post.variance.clamp_min(0.0).sqrt())
    mean = torch.cat(means, -2)
    return (mean, torch.cat(stds, -2)) if return_std else mean


def _output_blocks(post: GPyTorchPosterior) -> list[Tensor] | None:
    r"""The ``batch x q x q`` covariance of each output of ``post`` when its outputs are independent by structure
    (one output, or BoTorch's block-diagonal non-interleaved multitask normal), else ``None``."""
    dist = post.distribution
    if not isinstance(dist, MultitaskMultivariateNormal):
        return [dist.lazy_covariance_matrix.to_dense()]
    covar = dist.lazy_covariance_matrix
    if dist._interleaved or not isinstance(covar, BlockDiagLinearOperator):
        return None
    base = covar.base_linear_op.to_dense()  # batch x k x q x q
    return list(base.unbind(-3))


class SurrogateList(ModelListGP):
    r"""Independent BoTorch GP models on the same inputs, outputs concatenated in order (``m = sum m_k``).

    Args:
        *gp_models: The members (e.g. :class:`~gpgeom.botorch.ExactGPModel` s with one or several outputs each).
    """

    @property
    def output_groups(self) -> list[tuple[int, int]]:
        r"""``(start, stop)`` output columns of every member."""
        out, start = [], 0
        for g in self.models:
            out.append((start, start + g.num_outputs))
            start += g.num_outputs
        return out

    @torch.no_grad()
    def predict(
        self,
        X: Tensor,
        return_std: bool = False,
        observation_noise: bool = False,
        chunk_size: int | None = None,
        max_memory: int | str | None = None,
    ) -> Any:
        r"""Predictive means (and standard deviations) of all outputs, ``batch x n x m``, in the original units.

        The members predict one after the other, each in chunks under the same memory budget, so the working
        memory is that of the largest member, not the sum.

        Args:
            X: ``batch x n x d`` inputs.
            return_std: Also return the standard deviations.
            observation_noise: Add each member's observation noise to its variance.
            chunk_size: Points per chunk of every member (default: from ``max_memory``).
            max_memory: Working-memory budget of a chunk (bytes or a string such as ``"1GB"``; default
                :func:`gpgeom.engine.chunking.resolve_max_memory`, 256 MiB). A member without a ``predict`` of its
                own (a plain BoTorch model) is asked for its posterior in chunks of ``chunk_size`` points
                (default 2048).

        Returns:
            The means, ``batch x n x m``, and with ``return_std`` the standard deviations.
        """
        budget = resolve_max_memory(max_memory)
        outs = [_member_predict(g, X, return_std, observation_noise, chunk_size, budget) for g in self.models]
        if not return_std:
            return torch.cat(outs, -1)
        return torch.cat([o[0] for o in outs], -1), torch.cat([o[1] for o in outs], -1)

    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> GPyTorchPosterior:
        r"""The joint posterior of the selected outputs at ``X``: block-diagonal across members.

        Built here from the members' own posteriors: BoTorch's ``ModelListGP.posterior`` labels the joint of a list
        whose members have several outputs as output-major while its blocks are not, so its marginal variances are
        assigned to the wrong outputs and points (found by this project's conformance check; MMGP's
        ``per_field`` GP list met it).

        Args:
            X: ``batch x q x d`` inputs.
            output_indices: Outputs to keep, in this order (default all ``m``).
            observation_noise: ``True`` adds each member's noise; a ``batch x q x m`` tensor (a column for every
                output of the list, whatever ``output_indices``, as in BoTorch; or ``batch x q x 1`` for all) adds
                that, each member getting its columns in its own convention.
            posterior_transform: Optional BoTorch ``PosteriorTransform``.

        Returns:
            A ``GPyTorchPosterior`` over ``batch x q x m'``: for ``m' > 1`` a ``MultitaskMultivariateNormal``,
            block-diagonal by output (``m'`` blocks ``q x q``, not interleaved, as BoTorch's ``ModelListGP``) when
            every member's outputs are independent by structure (one output, or BoTorch's block-diagonal form, as
            ExactGPModel's) and no output is asked for twice; else dense with interleaved covariance. BoTorch's
            cached root decomposition (``cache_root``, on by default in qLogNEI / qLogNEHVI for lists of GPyTorch
            models) needs the first form: it raised ``BotorchError: Expected BlockDiagLinearOperator`` on the dense
            one.
        """
        m = self.num_outputs
        wanted = list(range(m)) if output_indices is None else list(output_indices)
        if not wanted or any(not 0 <= i < m for i in wanted):
            raise ValueError(f"`output_indices` must be a non-empty list of indices in range({m}), got {wanted}.")
        refuse_empty_batch(X, len(wanted))
        if isinstance(observation_noise, Tensor) and observation_noise.shape[-1] not in (1, m):
            raise ValueError(
                f"`observation_noise` must be a `batch x q x {m}` tensor of noise variances (one column per output "
                f"of the list, or one for all), got shape {tuple(observation_noise.shape)}."
            )
        # the members' joints of the outputs they hold that are wanted (ascending), block-diagonal across members;
        # then the rows of `wanted`, in its order
        means, covs, held, blocks = [], [], [], []
        for g, (a, b) in zip(self.models, self.output_groups):
            local = sorted({i - a for i in wanted if a <= i < b})
            if not local:
                continue
            noise = observation_noise
            if isinstance(observation_noise, Tensor) and observation_noise.shape[-1] == m:
                noise = observation_noise[..., a:b]  # the member's outputs (BoTorch: before output_indices)
            post = g.posterior(X, output_indices=local if local != list(range(b - a)) else None,
                               observation_noise=noise, **kwargs)  # fmt: skip
            mean, cov = joint_moments(post, detach=False)
            if blocks is not None:
                own = _output_blocks(post)
                blocks = None if own is None else blocks + own
            means.append(mean)
            covs.append(cov)
            held += [a + j for j in local]
        q = X.shape[-2]
        batch = torch.broadcast_shapes(*(mu.shape[:-2] for mu in means))
        mean = torch.cat([mu.expand(*batch, *mu.shape[-2:]) for mu in means], dim=-1)  # batch x q x len(held)
        if blocks is not None and len(set(wanted)) == len(wanted) > 1:
            # every output independent of the others (no output asked for twice): BoTorch's own structure (as
            # ModelListGP's), which its cached root decomposition (qLogNEI, qLogNEHVI) needs
            order = [held.index(i) for i in wanted]
            covar = torch.stack([blocks[j].expand(*batch, q, q) for j in order], dim=-3)  # batch x m' x q x q
            mvn = MultitaskMultivariateNormal(mean[..., order], BlockDiagLinearOperator(covar), interleaved=False)
            post = GPyTorchPosterior(mvn)
            return post if posterior_transform is None else posterior_transform(post)
        k = mean.shape[-1]
        cov = mean.new_zeros(*batch, q * k, q * k)
        start = 0
        for mu, c in zip(means, covs):
            kk = mu.shape[-1]
            idx = output_rows(q, k, range(start, start + kk), device=mean.device)
            cov[..., idx[:, None], idx] = c.expand(*batch, *c.shape[-2:])
            start += kk
        if held != wanted:
            mean, cov = select_outputs(mean, cov, [held.index(i) for i in wanted])
        post = gaussian_posterior(mean, cov)
        return post if posterior_transform is None else posterior_transform(post)

    def subset_output(self, idcs: list[int]) -> Any:
        r"""The model of the outputs ``idcs`` (indices into the ``m`` outputs of the list), in that order: a member's
        ``subset_output`` for each run of consecutive indices of one member, a list of them when there are several
        runs (a member alone when there is one).

        BoTorch's ``ModelList.subset_output`` groups the indices by member, so it returns the outputs in member order
        (``[0, 2, 1]`` gave the outputs 0, 1, 2) and keeps a member whose outputs are all asked for in another order
        as it is (``[1, 0]`` gave 0, 1).

        Raises:
            ValueError: ``idcs`` empty or out of range, or asking for outputs of one member in two runs (they would
                become two independent members, losing their joint): reorder them, or use
                ``posterior(X, output_indices=idcs)``.
        """
        m, idcs = self.num_outputs, [int(i) for i in idcs]
        if not idcs or any(not 0 <= i < m for i in idcs):
            raise ValueError(f"`idcs` must be a non-empty list of output indices in range({m}), got {idcs}.")
        runs: list[tuple[int, list[int]]] = []  # (member, its local outputs) in the order of idcs
        for i in idcs:
            k, (a, _) = next((k, ab) for k, ab in enumerate(self.output_groups) if ab[0] <= i < ab[1])
            if runs and runs[-1][0] == k:
                runs[-1][1].append(i - a)
            elif any(k == r[0] for r in runs):
                raise ValueError(
                    f"`idcs` must ask for the outputs of each member in one run of consecutive entries (the list "
                    f"keeps a member's outputs together), got {idcs}: outputs {list(range(*self.output_groups[k]))} "
                    "belong to one member; use `posterior(X, output_indices=idcs)` for any order."
                )
            else:
                runs.append((k, [i - a]))
        members = []
        for k, local in runs:
            g = self.models[k]
            members.append(g if local == list(range(g.num_outputs)) else g.subset_output(local))
        return members[0] if len(members) == 1 else type(self)(*members)

    def condition_on_observations(self, X: Tensor, Y: Tensor, **kwargs: Any) -> SurrogateList:
        r"""Condition every member on observations at the same inputs.

        Args:
            X: ``batch x n' x d`` inputs (one tensor, as for a single model).
            Y: ``batch x n' x m`` observations of all outputs, original units.
            **kwargs: ``noise`` (optional, shaped like ``Y``) is split by member like ``Y``; the rest is passed on.
        """
        if Y.shape[-1] != self.num_outputs:
            raise ValueError(f"`Y` must have {self.num_outputs} outputs in its last dimension, got {Y.shape[-1]}.")
        noise = kwargs.pop("noise", None)
        members = []
        for g, (a, b) in zip(self.models, self.output_groups):
            kw = dict(kwargs) if noise is None else {**kwargs, "noise": noise[..., a:b]}
            members.append(g.condition_on_observations(X, Y[..., a:b], **kw))
        return type(self)(*members)

    def fantasize(self, X: Tensor, sampler: MCSampler, observation_noise: Tensor | None = None, **kwargs: Any):
        r"""A fantasy model: ``Y`` drawn jointly for all outputs from ``posterior(X, observation_noise=True)``, then
        :meth:`condition_on_observations` (BoTorch's ``FantasizeMixin.fantasize``)."""
        if kwargs.get("evaluation_mask") is not None:
            raise NotImplementedError("SurrogateList.fantasize does not support `evaluation_mask`.")
        kwargs.pop("evaluation_mask", None)
        return FantasizeMixin.fantasize(self, X, sampler, observation_noise=observation_noise, **kwargs)

    @property
    def fit_results(self) -> list[Any]:
        r"""The :class:`~gpgeom.engine.fitting.FitResult` of every member (``fit_result_``)."""
        return [getattr(g, "fit_result_", None) for g in self.models]

    def __copy__(self) -> SurrogateList:
        r"""Refused, as for the models (:meth:`gpgeom.base.ModelContract.__copy__`): a shallow copy shares the
        member GPs, so ``to(dtype=...)`` on the copy changed the original's members (its next posterior raised
        ``expected scalar type Double but found Float``). Use ``copy.deepcopy`` or ``pickle``.

        Raises:
            TypeError: Always, naming the remedies.
        """
        raise TypeError(
            "copy.copy(SurrogateList) is not supported: a shallow copy would share the member GPs with the original, "
            "so that to(...) on one would change the other. Use copy.deepcopy(model) for an independent copy."
        )
