r"""Random Grid Neural Processes (RGNP): physics- and data-informed amortised forward and inverse maps of a
parametric PDE (Vadeboncoeur, Akyildiz, Kazlauskaite, Girolami, Cirak, "Random Grid Neural Processes for
Parametric Partial Differential Equations", ICML 2023, arXiv 2301.11040).

**Problem.** A PDE :math:`\mathcal R[u](x; z, w) = 0` on a box :math:`\Omega \subset \mathbb R^D`, with
inverse-problem parameters :math:`z` (uniform prior on a box) and known parameters :math:`w` (uniform on a box).
The user gives the PDE as a *residual function* ``residual(u, x, z, w) -> (B, n)`` of the field values ``u``
``(B, n)`` at points ``x`` ``(B, n, D)`` (``x.requires_grad`` is on and ``u[b, i]`` depends on ``x[b, i]`` only, so
:func:`~gpgeom.pde.autodiff.pointwise_grad` (``torch.autograd.grad`` of the sum, ``create_graph=True``) gives exact
pointwise derivatives of any order), and optionally a *lift* ``lift(x, w) -> (b, d)`` that imposes the boundary
conditions hard: :math:`u(x) = b(x) + d(x)\,\hat u(x)` with :math:`d = 0` on the constrained boundary (Sukumar &
Srivastava, CMAME 389, 2022). Nothing is specific to one equation; :meth:`RGNP.from_family` wires a registered
:class:`gpgeom.pde.PDEFamily` (its residual, lift, domain and priors), and such a model reloads from its file alone.

**Model** (paper Sec. 3, the joint density and the ELBO; a random collocation grid :math:`X = \{x_i\}_{i=1}^N`,
:math:`x_i \sim U(\Omega)` i.i.d., drawn afresh at every step):

.. math::
    p(r = 0, z, \hat u, X) = \prod_{i=1}^N \mathcal N\bigl(r_i; 0, \varepsilon_r^2\bigr)\;
        q_\beta(z \mid u(X), w)\; p(\hat u)\, p(z)\, p(X), \qquad
    q(z, \hat u, X) = q_\alpha(\hat u \mid z, w, X)\, p(z)\, p(X),

with :math:`r_i = \mathcal R[u](x_i; z, w)` the residual of the lifted field (virtual observations
:math:`r = 0`), :math:`p(\hat u)` flat (improper, log-density 0) and :math:`\varepsilon_r` fixed or learned. Since
:math:`p(z)` and :math:`p(X)` appear in both, the ELBO per field is

.. math::
    \mathcal L = \mathbb E_{p(z)p(w)p(X)q_\alpha}\Bigl[\sum_{i=1}^N \log \mathcal N(r_i; 0, \varepsilon_r^2)
        + \log q_\beta(z \mid u(X), w) - \log q_\alpha(\hat u(X) \mid z, w, X)\Bigr]
        \;(+\ \text{data term}),

maximised jointly over :math:`\alpha, \beta` (and :math:`\varepsilon_r`) with reparameterised samples. In Pyro
terms (:meth:`RGNP.model`, :meth:`RGNP.guide`): sites ``z`` (prior in both), ``u`` (``ImproperUniform`` in the
model, :math:`q_\alpha` in the guide), ``pde`` (``pyro.factor``), ``z_obs`` (:math:`q_\beta`, observed at the
sampled :math:`z`) and, with data, ``y``; the loss is ``Trace_ELBO().differentiable_loss`` divided by the batch
size (:func:`gpgeom.engine.variational.elbo_loss`), minimised by :func:`gpgeom.engine.fitting.fit` (Adam).

The two networks, :math:`q_\alpha` (:class:`~gpgeom.models.rgnp.networks.ForwardNet`) and :math:`q_\beta`
(GICNet), and their initialisation are described in :mod:`~gpgeom.models.rgnp.networks`.

**Training**: :meth:`RGNP.fit` runs Adam through :func:`gpgeom.engine.fitting.fit`; ``lr_schedule="cosine"``
anneals the learning rate over the run (used by ``benchmarks/rgnp.py``).

**Data** (paper Sec. 3.3, the data-informed variant): fields with known :math:`(z, w)` observed with Gaussian noise
:math:`\sigma_y` at arbitrary points add :math:`\sum \log \mathcal N\bigl(y; b + d\mu, \operatorname{diag}(d)(L L^\top
+ \operatorname{diag}\sigma^2)\operatorname{diag}(d) + \sigma_y^2 I\bigr)` (:math:`\hat u` integrated out under
:math:`q_\alpha`), minibatched with the scale :math:`S/\text{data\_batch}` (a subsampled ``pyro.plate``): an
unbiased estimate of the log-likelihood of all :math:`S` data fields, which the loss, like the rest of the ELBO,
divides by ``batch_size`` :math:`B`. So the loss is the mean physics term per field plus :math:`1/B` times the data's
negative log-likelihood: the data's weight against the physics falls as :math:`1/B`. Under ``torchrun`` every rank
weights its data term by :math:`1/W`, so that :math:`W` ranks of batch :math:`B` take the step of one process of
batch :math:`W B` (:meth:`RGNP.fit`).

**Calibration** (:meth:`RGNP.calibrate`). :math:`q_\alpha` alone is overconfident: the ELBO sets
:math:`\sigma_\alpha` by the virtual-observation noise (a perturbation :math:`\sigma` of :math:`\hat u` costs
:math:`\|\mathcal R'[d\sigma]\|^2 / 2\varepsilon_r^2` and gains :math:`\log\sigma`, so :math:`\sigma_\alpha \sim
\varepsilon_r / \|\mathcal R'\|`), not by the network's approximation error, which nothing in the ELBO measures
(2-sigma coverage 0.1-0.2 of the truth on both built-in families). :meth:`RGNP.calibrate` adds a model discrepancy
(:class:`~gpgeom.engine.variational.ModelDiscrepancy`; Kennedy & O'Hagan 2001): :meth:`RGNP.predict` returns
:math:`\mathcal N\bigl(b + d\mu,\; D(LL^\top + \operatorname{diag}\sigma^2)D + C_\delta\bigr)`, :math:`C_\delta =
\rho^2 G(\tau^2 k_\ell + \eta^2 I)G`, :math:`G = \operatorname{diag}|d|^p`, :math:`\rho` the residual indicator
(:meth:`RGNP.residual_indicator`), hyperparameters by maximum a posteriori on reference fields; :math:`q_\beta`
is then trained on fields drawn from this predictive.

**Files**: :meth:`RGNP.save` writes the configuration and the network weights (:mod:`gpgeom._io`); a model from
:meth:`RGNP.from_family` with a registered family (:mod:`gpgeom.pde.registry`) stores the family's name and reloads
with ``RGNP.load(path)``; user callables cannot be stored, so a model built with ``residual=`` (and ``lift=``) asks
for them by name at :meth:`RGNP.load`.

Differences from the authors' reference TensorFlow code: the inverse network sees the lifted field; :math:`z` and
:math:`w` are normalised to :math:`[-1, 1]` before entering the networks (both the forward network and GICNet);
Fourier features are per axis (2·D·F features); GICNet as documented there, with the initialisation described in
:mod:`~gpgeom.models.rgnp.networks`.

The package, one concept per module
-----------------------------------
* :mod:`~gpgeom.models.rgnp.networks`: the forward network :math:`q_\alpha`
  (:class:`~gpgeom.models.rgnp.networks.ForwardNet` on
  :class:`~gpgeom.models.rgnp.networks.FourierFeatures`) and the initialisation of both networks;
* :mod:`~gpgeom.models.rgnp.model`: :class:`~gpgeom.models.rgnp.model.RGNP` (grids and parameters, the Pyro model
  and guide, the ELBO, fit, calibrate, predict, predict_inverse, files) and
  :func:`~gpgeom.models.rgnp.model.family_residual`;
* :mod:`~gpgeom.models.rgnp.calibration`: the work of :meth:`RGNP.calibrate` (the model discrepancy, its residual
  indicator, the inverse steps);
* :mod:`~gpgeom.models.rgnp.measures`: the error measures :func:`~gpgeom.models.rgnp.measures.nse` and
  :func:`~gpgeom.models.rgnp.measures.coverage`;
* private helpers: the checks of the user's residual, lift, data and prediction inputs (``_checks``), what a
  model file stores, about the PDE family and the user callables in particular (``_persistence``), and the inverse
  posterior against the prior box of :math:`z` (``_prior_box``: its truncated moments, the warning of a mean far
  outside).

Derivatives of the field for residuals: :func:`~gpgeom.pde.autodiff.pointwise_grad` (re-exported here).
"""

from __future__ import annotations

from gpgeom.models.rgnp.measures import coverage, nse
from gpgeom.models.rgnp.model import RGNP, family_residual
from gpgeom.models.rgnp.networks import ForwardNet, FourierFeatures
from gpgeom.pde.autodiff import pointwise_grad

__all__ = ["RGNP", "pointwise_grad", "family_residual", "FourierFeatures", "ForwardNet", "nse", "coverage"]
