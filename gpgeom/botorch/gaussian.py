r"""The shared posterior and conditioning code of gpgeom's BoTorch adapters that are not GPyTorch ``ExactGP`` s.

A :class:`GaussianSurrogate` is a model whose predictive distribution at any finite set of inputs is jointly
Gaussian: a *base* mean function :math:`\mu(x) \in \mathbb R^m`, a base covariance function
:math:`C(x, x') \in \mathbb R^{m \times m}` (the model's own posterior: the low-rank weight-space GP of RVGP, the
Gaussian approximation of FunBaT's posterior over entries, ...) and an observation-noise covariance
:math:`N(x) \in \mathbb R^{m \times m}` per input, independent between inputs (by default diagonal, the variances
:math:`\sigma^2(x) \in \mathbb R^m_{\ge 0}`; RVGP's is :math:`\sigma^2_{obs} P_x + \nu (I - P_x)`). Subclasses give
those functions; this class turns them into everything BoTorch asks of a surrogate, with one code path for all of
them:

* ``posterior(X)`` over ``broadcast(batch, batch_shape) x q x m``: a ``GPyTorchPosterior`` of the joint Gaussian
  (``MultitaskMultivariateNormal`` for ``m > 1``), with ``output_indices``, ``observation_noise`` (``True``: add
  the block-diagonal :math:`N(X)`, one ``m x m`` block per input; a tensor of variances: add its diagonal) and
  ``posterior_transform``;
* ``condition_on_observations(X, Y, noise=None)``: Bayes' rule for the Gaussian model
  :math:`Y = f(X) + \varepsilon`, :math:`\varepsilon \sim \mathcal N(0, \mathrm{blockdiag}(N(X)))` (or the
  diagonal of the given ``noise`` variances). With the observations :math:`c` stacked (points-major, outputs
  interleaved),

  .. math:: \mu_{\mid c}(x) = \mu(x) + C(x, c)\,[C(c, c) + N_c]^{-1} (Y_c - \mu(c)), \qquad
            C_{\mid c}(x, x') = C(x, x') - C(x, c)\,[C(c, c) + N_c]^{-1} C(c, x'),

  the Schur complement of the joint Gaussian of :math:`(f(c) + \varepsilon_c, f(x))`. For a base that is an exact
  GP posterior, this *is* the posterior of the GP refitted on the union of the data with the same
  hyperparameters (Rasmussen & Williams 2006, eq. 2.19, applied twice); conditioning twice concatenates the data;
* a model of a transformed outcome (a subclass that sets BoTorch's ``outcome_transform``, e.g. ``Log`` for a model
  of :math:`\log y`): ``posterior`` and ``predict`` untransform the Gaussian (``untransform_posterior``; for ``Log`` a
  ``TransformedPosterior`` with log-normal moments and :math:`e^{\cdot}` of the Gaussian's samples) and
  ``condition_on_observations`` transforms ``Y`` first; a given ``noise`` is a variance of the transformed outcome
  (of :math:`\log y` for ``Log``), as are the tensors ``posterior(X, observation_noise=...)`` and ``fantasize`` take:
  BoTorch's convention, so that a fantasy is conditioned with the noise its values were drawn with;
* ``fantasize`` (BoTorch's ``FantasizeMixin``: sample :math:`Y` from ``posterior(X, observation_noise=True)``, then
  condition on it) and ``subset_output``;
* :meth:`GaussianSurrogate.predict`: chunked marginal means and standard deviations (no ``q x q`` covariance),
  chunks sized from a memory budget (:mod:`gpgeom.engine.chunking`) with the cost of a point that a subclass
  gives in :meth:`GaussianSurrogate._base_bytes_per_point`.

Shapes: inputs ``batch x q x d`` (``d`` as the subclass defines its inputs), outputs ``batch x q x m``; the joint
covariance is ``batch x (q m) x (q m)`` with row ``i m + a`` for output ``a`` at point ``i``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from botorch.acquisition.objective import PosteriorTransform
from botorch.models.model import FantasizeMixin, Model
from botorch.posteriors import GPyTorchPosterior, Posterior
from gpytorch.distributions import MultitaskMultivariateNormal, MultivariateNormal
from linear_operator import to_linear_operator
from linear_operator.operators import DiagLinearOperator
from linear_operator.utils.cholesky import psd_safe_cholesky
from torch import Tensor

from gpgeom._validation import check_positive, check_tensor
from gpgeom.botorch.outputs import refuse_empty_batch
from gpgeom.engine.chunking import chunk_size_for, chunk_slices, element_size

__all__ = ["DEFAULT_CHUNK", "GaussianSurrogate", "shallow_view"]

#: Points per chunk of :meth:`GaussianSurrogate.predict` when a subclass does not give the cost of a point.
DEFAULT_CHUNK = 2048


def shallow_view(obj: Any) -> Any:
    r"""A new object of ``obj``'s class sharing all of ``obj``'s attributes (what ``copy.copy`` does): the views of
    :meth:`GaussianSurrogate.condition_on_observations` and :meth:`~GaussianSurrogate.subset_output`, which share
    the fitted model's basis and hyperparameters. gpgeom models refuse ``copy.copy`` itself
    (:meth:`gpgeom.base.ModelContract.__copy__`), so these views are made here."""
    cls = type(obj)
    new = cls.__new__(cls)
    state = obj.__getstate__()
    if hasattr(new, "__setstate__"):
        new.__setstate__(dict(state))
    else:
        new.__dict__.update(state)
    return new


class _Block:
    r"""Observations added by one ``condition_on_observations`` call: inputs ``batch x n x d``, values
    ``batch x n x k`` of the ``k`` outputs ``outputs`` (indices into the base's ``m``) and their noise covariance per
    input ``batch x n x k x k``."""

    __slots__ = ("X", "Y", "noise", "outputs")

    def __init__(self, X: Tensor, Y: Tensor, noise: Tensor, outputs: list[int]) -> None:
        self.X, self.Y, self.noise, self.outputs = X, Y, noise, outputs


class GaussianSurrogate(Model, FantasizeMixin):
    r"""Base of BoTorch surrogates with a jointly Gaussian predictive (see the module docstring).

    Subclasses implement :meth:`_base_mean`, :meth:`_base_covariance` and :meth:`_noise_variance` (and may
    override :meth:`_base_variance` with a cheaper diagonal, :meth:`_noise_covariance` with noise correlated between
    the outputs of an input, :meth:`_check_inputs` and :attr:`_base_batch_shape`), and set
    ``self._base_num_outputs``. Everything is in the model's original output units.
    """

    _is_fully_bayesian = False
    _is_ensemble = False

    @property
    def likelihood(self) -> Any:
        r"""The ``likelihood`` submodule if the subclass registers one, else ``None`` (BoTorch's ``fantasize`` reads
        ``model.likelihood`` for a fixed-noise check)."""
        return self._modules.get("likelihood")

    def _apply(self, fn: Any, recurse: bool = True) -> GaussianSurrogate:
        r"""``nn.Module`` moves and casts (``to``, ``double``, ...) also apply to the stored conditioning data."""
        out = super()._apply(fn, recurse)
        blocks = self.__dict__.get("_blocks")
        if blocks:
            self.__dict__["_blocks"] = [_Block(fn(b.X), fn(b.Y), fn(b.noise), list(b.outputs)) for b in blocks]
        return out

    # ------------------------------------------------------------------------------------------------------------
    # what subclasses provide
    def _base_mean(self, X: Tensor) -> Tensor:
        r"""Base mean at ``X`` (``batch x q x d``): ``batch x q x m``."""
        raise NotImplementedError

    def _base_covariance(self, X1: Tensor, X2: Tensor) -> Tensor:
        r"""Base covariance between ``X1`` (``batch x q1 x d``) and ``X2`` (``batch x q2 x d``), batches broadcast:
        ``batch x (q1 m) x (q2 m)``, row ``i m + a`` = output ``a`` at point ``i``."""
        raise NotImplementedError

    def _base_variance(self, X: Tensor) -> Tensor:
        r"""Base marginal variances at ``X``: ``batch x q x m`` (default: the diagonal of :meth:`_base_covariance`)."""
        m = self._base_num_outputs
        cov = self._base_covariance(X, X)
        return torch.diagonal(cov, dim1=-2, dim2=-1).reshape(*cov.shape[:-2], -1, m)

    def _noise_variance(self, X: Tensor) -> Tensor:
        r"""Observation-noise variance at ``X``: ``batch x q x m`` (broadcastable); the diagonal of
        :meth:`_noise_covariance`."""
        raise NotImplementedError

    def _noise_covariance(self, X: Tensor) -> Tensor:
        r"""Observation-noise covariance between the ``m`` outputs of each input of ``X``: ``batch x q x m x m``
        (broadcastable; independent between inputs). Default: ``diag_embed`` of :meth:`_noise_variance`."""
        return torch.diag_embed(self._noise_variance(X))

    def _check_inputs(self, X: Tensor) -> Tensor:
        r"""Validate (and convert) BoTorch inputs ``batch x q x d``; the default checks the dimensions, a floating
        dtype and finite values (a NaN would give a NaN posterior, silently)."""
        if not isinstance(X, Tensor) or X.dim() < 2:
            raise ValueError(
                f"`X` must be a `batch x q x d` tensor, got {tuple(X.shape) if isinstance(X, Tensor) else type(X)}."
            )
        return check_tensor("X", X, floating=True)

    @property
    def _base_batch_shape(self) -> torch.Size:
        r"""Batch shape of the base model (``torch.Size([])`` unless a subclass is batched)."""
        return torch.Size([])

    # ------------------------------------------------------------------------------------------------------------
    # BoTorch attributes
    @property
    def _conditioning(self) -> list[_Block]:
        return self.__dict__.setdefault("_blocks", [])

    @property
    def _outputs(self) -> list[int]:
        out = self.__dict__.get("_output_subset")
        return list(range(self._base_num_outputs)) if out is None else out

    @property
    def num_outputs(self) -> int:
        r"""Number of outputs ``m`` (after ``subset_output``)."""
        return len(self._outputs)

    @property
    def batch_shape(self) -> torch.Size:
        r"""The base batch shape broadcast with the batch shapes of the conditioning data (fantasies add theirs)."""
        shape = self._base_batch_shape
        for block in self._conditioning:
            shape = torch.broadcast_shapes(shape, block.X.shape[:-2])
        return shape

    # ------------------------------------------------------------------------------------------------------------
    # the conditioned joint
    def _conditioned(self, X: Tensor, want_cov: bool) -> tuple[Tensor, Tensor]:
        r"""Mean ``batch x q x m`` and covariance ``batch x (q m) x (q m)`` (``want_cov``) or variances
        ``batch x q x m`` of all ``m`` base outputs at ``X``, conditioned on every stored block."""
        m = self._base_num_outputs
        blocks = self._conditioning
        batch = torch.broadcast_shapes(X.shape[:-2], self.batch_shape)
        Xb = X.expand(*batch, *X.shape[-2:])
        mean = self._base_mean(Xb).expand(*batch, X.shape[-2], m)
        second = self._base_covariance(Xb, Xb) if want_cov else self._base_variance(Xb)
        if not blocks:
            return mean, second
        Xc = torch.cat([b.X.expand(*batch, *b.X.shape[-2:]) for b in blocks], dim=-2)
        rows, values, noises, start = [], [], [], 0
        for b in blocks:
            n = b.X.shape[-2]
            idx = torch.arange(n, device=X.device)[:, None] * m + torch.tensor(b.outputs, device=X.device)
            rows.append(start * m + idx.reshape(-1))
            values.append(b.Y.expand(*batch, n, len(b.outputs)).reshape(*batch, -1))
            noises.append(b.noise.expand(*batch, *b.noise.shape[-3:]))
            start += n
        rows_t = torch.cat(rows)
        y_c = torch.cat(values, dim=-1)
        mu_c = self._base_mean(Xc).expand(*batch, Xc.shape[-2], m).reshape(*batch, -1)[..., rows_t]
        K_cc = self._base_covariance(Xc, Xc)[..., rows_t[:, None], rows_t]
        K_cc = K_cc + _block_diagonal(noises, K_cc)
        K_xc = self._base_covariance(Xb, Xc)[..., rows_t]  # batch x (q m) x n_c
        L = psd_safe_cholesky(0.5 * (K_cc + K_cc.mT))
        A = torch.linalg.solve_triangular(L, K_xc.mT, upper=False)  # batch x n_c x (q m)
        r = torch.linalg.solve_triangular(L, (y_c - mu_c).unsqueeze(-1), upper=False)
        mean = mean + (A.mT @ r).squeeze(-1).reshape(mean.shape)
        if want_cov:
            return mean, second - A.mT @ A
        return mean, second - A.square().sum(-2).reshape(second.shape)

    # ------------------------------------------------------------------------------------------------------------
    # BoTorch API
    def posterior(
        self,
        X: Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | Tensor = False,
        posterior_transform: PosteriorTransform | None = None,
        **kwargs: Any,
    ) -> Posterior:
        r"""The joint Gaussian posterior at ``X`` (its image under the ``outcome_transform``'s inverse when the subclass
        sets one: a ``TransformedPosterior`` for ``Log``).

        Args:
            X: A ``batch x q x d`` tensor of inputs.
            output_indices: Outputs to keep (indices into the ``num_outputs`` outputs; all by default).
            observation_noise: ``True`` adds the model's noise variance, a ``batch x q x m`` tensor adds that (a
                column for each of the ``m = num_outputs`` outputs, whatever ``output_indices``, as BoTorch's
                batched models read it; ``batch x q x 1``: the same for all); with an ``outcome_transform``, variances
                of the transformed outcome (e.g. of :math:`\log y`), added to the Gaussian before it is untransformed.
            posterior_transform: Optional BoTorch ``PosteriorTransform``.

        Returns:
            A ``GPyTorchPosterior`` over ``broadcast(batch, batch_shape) x q x m'`` (untransformed, see above); for
            ``q = 0`` the empty one, without evaluating the base.
        """
        self.eval()
        X = self._check_inputs(X)
        q, m = X.shape[-2], self._base_num_outputs
        outputs = self._outputs
        if output_indices is not None:
            output_indices = list(output_indices)
            if not output_indices or any(not 0 <= i < len(outputs) for i in output_indices):
                raise ValueError(
                    f"`output_indices` must be a non-empty list of indices in range({len(outputs)}), "
                    f"got {output_indices}."
                )
            outputs = [outputs[i] for i in output_indices]
        refuse_empty_batch(X, len(outputs))
        if isinstance(observation_noise, Tensor) and (
            observation_noise.dim() < 2 or observation_noise.shape[-1] not in (1, self.num_outputs)
        ):
            raise ValueError(
                f"`observation_noise` must be a `batch x q x {self.num_outputs}` tensor of noise variances (a column "
                f"for every output, whatever `output_indices`, as in BoTorch; or one column for all), got shape "
                f"{tuple(observation_noise.shape)}."
            )
        if q == 0:  # nothing to compute (and bases need not handle empty inputs): the empty Gaussian
            batch = torch.broadcast_shapes(X.shape[:-2], self.batch_shape)
            mean = torch.zeros(*batch, 0, m, dtype=self._empty_dtype(X), device=X.device)
            cov = mean.new_zeros(*batch, 0, 0)
        else:
            mean, cov = self._conditioned(X, want_cov=True)
        if isinstance(observation_noise, Tensor):
            extra = torch.zeros_like(mean)
            extra[..., self._outputs] = observation_noise.to(mean).expand(*mean.shape[:-1], self.num_outputs)
            cov = cov + torch.diag_embed(extra.reshape(*cov.shape[:-1]))
        elif observation_noise:
            noise = self._noise_covariance(X).to(mean).expand(*mean.shape, m)
            cov = cov + _block_diagonal([noise], cov)
        if outputs != list(range(m)):
            sel = (torch.arange(q, device=X.device)[:, None] * m + torch.tensor(outputs, device=X.device)).reshape(-1)
            mean, cov = mean[..., outputs], cov[..., sel[:, None], sel]
        cov = to_linear_operator(0.5 * (cov + cov.mT))
        if len(outputs) == 1:
            dist = MultivariateNormal(mean[..., 0], cov)
        else:
            dist = MultitaskMultivariateNormal(mean, cov, interleaved=True)
        post = self._untransform(GPyTorchPosterior(dist), X)
        return post if posterior_transform is None else posterior_transform(post)

    def _empty_dtype(self, X: Tensor) -> torch.dtype:
        r"""The dtype of an empty posterior at ``X``: that of the model's first floating parameter or buffer, else
        ``X``'s if floating, else torch's default."""
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return X.dtype if X.is_floating_point() else torch.get_default_dtype()

    def _untransform(self, post: GPyTorchPosterior, X: Tensor) -> Any:
        r"""``post`` in the units of the observations: the ``outcome_transform``'s ``untransform_posterior`` when the
        subclass sets one (BoTorch's idiom, e.g. ``Log`` for a model of :math:`\log y`), else ``post``."""
        transform = getattr(self, "outcome_transform", None)
        return post if transform is None else transform.untransform_posterior(post, X=X)

    def condition_on_observations(self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs: Any):
        r"""A model also conditioned on observations ``Y`` at ``X`` (no refit, hyperparameters shared).

        Args:
            X: A ``batch' x n' x d`` tensor of inputs (broadcastable with ``batch_shape``).
            Y: A ``batch' x n' x m`` tensor of observations, original units (``m = num_outputs``).
            noise: Optional ``batch' x n' x m`` observation-noise variances (independent noise); default: the
                model's noise covariance at ``X`` (:meth:`_noise_covariance`, its block of the outputs kept). With
                an ``outcome_transform`` they are variances of the transformed outcome (e.g. of :math:`\log Y`), not
                transformed here (BoTorch's convention; ``posterior`` and ``fantasize`` read a noise tensor so).

        Returns:
            A model of the same class, batch shape ``broadcast(batch', batch_shape)``, that shares the base (and its
            hyperparameters) and stores the new observations.
        """
        X = self._check_inputs(X)
        if not isinstance(Y, Tensor) or Y.dim() < 2 or Y.shape[-2:] != (X.shape[-2], self.num_outputs):
            raise ValueError(
                f"`Y` must be `batch x {X.shape[-2]} x {self.num_outputs}` (one row per input, one column per output), "
                f"got {tuple(Y.shape) if isinstance(Y, Tensor) else type(Y).__name__}."
            )
        if not bool(torch.isfinite(Y).all()):
            raise ValueError(f"`Y` must be finite, got {int((~torch.isfinite(Y)).sum())} NaN or infinite value(s).")
        transform = getattr(self, "outcome_transform", None)
        if transform is not None:  # the base is a model of the transformed outcome (e.g. log Y)
            Y, _ = transform(Y, None, X=X)  # `noise` is already in the transformed space (BoTorch's convention)
            if not bool(torch.isfinite(Y).all()):
                raise ValueError(
                    f"`Y` is outside the domain of the model's outcome transform {type(transform).__name__} "
                    "(a log transform needs Y > 0)."
                )
        outputs = self._outputs
        if noise is None:
            sel = torch.tensor(outputs, device=X.device)
            cov = self._noise_covariance(X)[..., sel[:, None], sel]
        elif not isinstance(noise, Tensor) or not bool(((noise >= 0) & torch.isfinite(noise)).all()):
            got = (
                f"min {float(noise.min()):.3g}, {int((~torch.isfinite(noise)).sum())} NaN or infinite"
                if isinstance(noise, Tensor) and noise.numel()
                else type(noise).__name__
            )
            raise ValueError(f"`noise` must be a tensor of finite non-negative variances shaped like `Y`, got {got}.")
        else:
            cov = torch.diag_embed(noise.expand(*noise.shape[:-1], Y.shape[-1]))
        batch = torch.broadcast_shapes(X.shape[:-2], Y.shape[:-2], cov.shape[:-3])
        X = X.expand(*batch, *X.shape[-2:])
        Y = Y.expand(*batch, *Y.shape[-2:])
        cov = cov.to(Y).expand(*batch, *Y.shape[-2:], Y.shape[-1])
        new = shallow_view(self)
        new.__dict__["_blocks"] = [*self._conditioning, _Block(X, Y, cov, list(outputs))]
        return new

    def subset_output(self, idcs: list[int]) -> GaussianSurrogate:
        r"""A view of the model restricted to outputs ``idcs`` (the joint, and any conditioning, are unchanged)."""
        outputs = self._outputs
        if not idcs or any(not 0 <= i < len(outputs) for i in idcs):
            raise ValueError(f"`idcs` must be a non-empty list of output indices in range({len(outputs)}), got {idcs}.")
        new = shallow_view(self)
        new.__dict__["_output_subset"] = [outputs[i] for i in idcs]
        return new

    def _base_bytes_per_point(self, X: Tensor) -> int | None:
        r"""Working bytes one test point of ``X`` (``batch x N x d``) costs in :meth:`_base_mean` and
        :meth:`_base_variance` (all batch members and outputs), for sizing the chunks of :meth:`predict`; ``None``
        (the default) when unknown: chunks then have at most :data:`DEFAULT_CHUNK` points. Override it with the
        largest temporaries of a point (e.g. a low-rank base: its ``m x k`` rows of features, twice)."""
        return None

    def _chunk_size(self, X: Tensor, max_memory: int | str | None) -> int:
        r"""Points per chunk of :meth:`predict` under the memory budget: the base cost of a point plus its rows
        against the conditioning data (``K_xc`` over all base outputs, its selected columns, ``A`` and ``A^2``:
        about ``4 m^2 n_c`` elements per batch member)."""
        N, m = X.shape[-2], self._base_num_outputs
        n_c = sum(b.X.shape[-2] for b in self._conditioning)
        batch = math.prod(torch.broadcast_shapes(X.shape[:-2], self.batch_shape))
        base = self._base_bytes_per_point(X)
        per_point = 4 * m * m * n_c * batch * element_size(X.dtype if X.is_floating_point() else torch.float64)
        if base is None:
            return min(DEFAULT_CHUNK, chunk_size_for(per_point, max_memory, total=N)) if per_point else DEFAULT_CHUNK
        return chunk_size_for(base + per_point, max_memory, total=N) if base + per_point else max(N, 1)

    @torch.no_grad()
    def predict(
        self,
        X: Tensor,
        return_std: bool = False,
        observation_noise: bool = False,
        chunk_size: int | None = None,
        max_memory: int | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Marginal predictive mean (and standard deviation) at ``X`` in chunks of points, never a ``q x q``
        covariance; equal to ``posterior(X).mean`` / ``.variance.sqrt()`` whatever the chunks.

        Args:
            X: ``batch x N x d`` inputs.
            return_std: Also return the standard deviations.
            observation_noise: Add the observation noise to the variance.
            chunk_size: Points per chunk; default: from ``max_memory`` and the cost of a point
                (:meth:`_base_bytes_per_point` plus the conditioning rows), at most :data:`DEFAULT_CHUNK` when the
                base cost is unknown.
            max_memory: Working-memory budget of a chunk, bytes or a string such as ``"1GB"``; default
                :func:`gpgeom.engine.chunking.resolve_max_memory` (256 MiB).

        Returns:
            The mean, ``broadcast(batch, batch_shape) x N x m``, and with ``return_std`` the standard deviation.
        """
        if chunk_size is not None:
            check_positive("chunk_size", chunk_size, integer=True)
        X = self._check_inputs(X)
        if X.shape[-2] == 0:  # no chunks: the empty posterior's shape and dtype
            mean = self.posterior(X).mean
            return (mean, torch.zeros_like(mean)) if return_std else mean
        chunk = chunk_size or self._chunk_size(X, max_memory)
        outputs = self._outputs
        transform = getattr(self, "outcome_transform", None)
        means, stds = [], []
        for sl in chunk_slices(X.shape[-2], chunk):
            Xc = X[..., sl, :]
            mean, var = self._conditioned(Xc, want_cov=False)
            mean = mean[..., outputs]
            if observation_noise and (return_std or transform is not None):
                var = var + self._noise_variance(Xc).to(var).expand(var.shape)
            var = var[..., outputs].clamp_min(0.0)
            if transform is not None:  # the marginals of the untransformed posterior (e.g. log-normal moments)
                post = self._untransform(GPyTorchPosterior(_independent_normal(mean, var)), Xc)
                mean, var = post.mean, post.variance
            means.append(mean)
            if return_std:
                stds.append(var.sqrt())
        mean = torch.cat(means, dim=-2)
        return (mean, torch.cat(stds, dim=-2)) if return_std else mean


def _block_diagonal(blocks: list[Tensor], like: Tensor) -> Tensor:
    r"""The block-diagonal matrix ``batch x (sum n_i k_i) x (sum n_i k_i)`` of the per-input blocks of
    ``blocks`` (each ``batch x n_i x k_i x k_i``, batches equal) in order, in ``like``'s dtype and device."""
    parts = []
    for b in blocks:
        n, k = b.shape[-3], b.shape[-1]
        eye = torch.eye(n, dtype=like.dtype, device=like.device)
        parts.append(torch.einsum("...iab,ij->...iajb", b.to(like), eye).reshape(*b.shape[:-3], n * k, n * k))
    if len(parts) == 1:
        return parts[0]
    size = sum(p.shape[-1] for p in parts)
    out = parts[0].new_zeros(*parts[0].shape[:-2], size, size)
    start = 0
    for p in parts:
        r = p.shape[-1]
        out[..., start : start + r, start : start + r] = p
        start += r
    return out


def _independent_normal(mean: Tensor, var: Tensor) -> MultivariateNormal:
    r"""The Gaussian with independent marginals of means ``mean`` and variances ``var`` (``batch x q x m``)."""
    if mean.shape[-1] == 1:
        return MultivariateNormal(mean[..., 0], DiagLinearOperator(var[..., 0]))
    flat = var.reshape(*var.shape[:-2], var.shape[-2] * var.shape[-1])  # named, not -1 (ambiguous in empty batches)
    return MultitaskMultivariateNormal(mean, DiagLinearOperator(flat), interleaved=True)
