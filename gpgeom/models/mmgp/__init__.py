r"""MMGP: mesh-morphing Gaussian-process regression of physical fields on meshes of varying shape.

Casenave, Staber, Roynard, "MMGP: a Mesh Morphing Gaussian Process-based machine learning method for regression of
physical problems under non-parameterized geometrical variability", NeurIPS 2023, arXiv:2305.12871.

Data: ``n`` samples, sample ``i`` a triangle mesh :math:`\mathcal{M}_i` with :math:`N_i` nodes (node counts and
connectivity differ), input scalars :math:`\mu_i \in \mathbb{R}^p`, nodal output fields
:math:`U_i \in \mathbb{R}^{N_i \times m}` and output scalars :math:`w_i \in \mathbb{R}^q`. The method (paper Sec. 3,
Algorithm 1), one module per stage:

1. **Morphing** :math:`\varphi_i` of every mesh onto one reference shape (Sec. 3.1; :mod:`.transfer`): Floater /
   Tutte onto the unit disk (:func:`gpgeom.geometry.morphing.floater_disk`), a Wendland-C2 RBF map onto the common
   mesh's shape (in 3D: tetrahedral meshes, :func:`gpgeom.geometry.morphing3d.morph_volume`, and triangle
   surfaces, :func:`gpgeom.geometry.morphing3d.morph_surface`), the identity (``"physical"``, the baseline), or
   none (meshes that share their topology).
2. **Common mesh** :math:`\mathcal{M}_c` (:math:`N_c` nodes): a morphed training mesh (the middle one by default).
3. **Finite-element interpolation** (Sec. 3.1, Eq. (2); :mod:`.transfer`): P1 operators
   :math:`P_i \in \mathbb{R}^{N_c \times N_i}` (morphed mesh :math:`i` -> common nodes) and
   :math:`Q_i \in \mathbb{R}^{N_i \times N_c}` (common mesh -> morphed nodes of mesh :math:`i`), both
   :func:`gpgeom.geometry.transfer.p1_transfer` with clamping.
4. **Geometry embedding** (Sec. 3.2; :mod:`.reduction`): the physical coordinates transported to the common
   nodes, :math:`X_i = P_i x_i \in \mathbb{R}^{N_c \times d}` (:math:`d` = 2 or 3), reduced by a snapshot POD
   with the P1 mass matrix :math:`M` (Eq. (3)): :math:`\xi_i = \Phi_g M_d (X_i - \bar X) \in \mathbb{R}^{n_g}`
   with :math:`\Phi_g M_d \Phi_g^\top = I`.
5. **Field embedding** (:mod:`.reduction`): :math:`P_i U_i^{(f)}` reduced by one POD per field, coefficients
   :math:`a_i^{(f)} \in \mathbb{R}^{n_f}`.
6. **GP** (Sec. 3.3, Eq. (4); :mod:`.latent_gp`): independent exact GPs from
   :math:`z_i = (\xi_i, \mu_i) \in \mathbb{R}^{n_g + p}` to every field POD coefficient and every output scalar
   (:class:`gpgeom.botorch.ExactGPModel`, standardised outputs, Matern 5/2 ARD with learned noise by default).
   ``hyperparameters="per_output"`` (default) gives every output its own kernel and noise (one batched GP);
   ``"per_field"`` (the reference's choice) shares them among the modes of each field (one ``ExactGPModel`` with
   ``shared_hyperparameters=True`` per field, gathered with one GP per output scalar in a
   :class:`gpgeom.botorch.SurrogateList`); ``"shared"`` one set for all outputs. Output scalars whose training
   values are all positive are regressed as :math:`\log w` by default, with log-normal predictive moments
   (``scalar_transform``; :mod:`.scalars`) and exact intervals (:meth:`MMGPPrediction.scalar_interval`).
7. **Inference** on a new mesh (:mod:`.model`): morph, transfer, encode :math:`z`, predict the coefficients and
   decode :math:`\hat U^{(f)} = Q\,(\bar u^{(f)} + \Phi_f^\top \hat a^{(f)})` on the **original nodes** of the new
   mesh.

Predictive uncertainty (paper Sec. 3.4, which uses Monte Carlo): the decode chain is affine, so with the GP
marginal :math:`a^{(f)} \sim \mathcal{N}(\hat a, \operatorname{diag}(s^2))` (independent outputs) the nodal
variance is exactly

.. math:: \operatorname{Var}[\hat U_j] = \bigl[Q \Phi_f^\top \operatorname{diag}(s^2) \Phi_f Q^\top\bigr]_{jj}
          = \sum_k (A_{jk} s_k)^2, \qquad A = Q \Phi_f^\top \in \mathbb{R}^{N \times n_f},

computed from the ``N x n_f`` matrix :math:`A` (a sparse-times-dense product), never an ``N x N`` matrix. Monte
Carlo samples of the same distribution are available with ``n_samples``.

POD truncation (``truncation_variance=True``, default): the GP variance above only covers the retained modes. The
discarded modes are modelled as an independent zero-mean term whose variance on common node :math:`c` is the
cross-validated mean squared truncation residual of the training snapshots (10 interleaved folds; snapshot :math:`i`
is projected on the POD of the folds without it, which keeps the estimate out of sample),
:math:`r_c = \frac1n \sum_i \bigl(F_{ic} - \mathcal{P}_{-i} F_{i}\bigr)_c^2`, interpolated to the nodes of the
new mesh like a P1 field (:math:`Q r`, i.e. the residual is taken as fully correlated within a common element).
Monte Carlo draws (``n_samples``) add it as a spatially correlated field, not as white noise: the covariance
:math:`C = R^\top R / n` of the training snapshots' cross-validated residuals :math:`R`, transferred by :math:`Q`,
with the marginal variances :math:`(Q r)_j` of the std (:func:`.reduction.truncation_draws`).

Unexplained variation and unseen geometry (:mod:`.unexplained`): the GP inputs see :math:`n_g` geometry modes
only; the rest of the shape changes the outputs in a way that the training data record as the GPs' learned noise
:math:`\sigma_k^2` (retained coefficients, scalars) and as the truncation residual. The FE data have no measurement
noise, so :math:`\sigma_k^2` is part of the predictive variance of a new mesh (``predict(observation_noise=True)``,
default). Both terms are scaled per mesh (``geometry_variance=True``, default) by
:math:`\lambda = 1 - s + s \rho / \bar\rho`, where :math:`\rho` is the boundary energy of the mesh's geometry POD
residual, :math:`\bar\rho` its training reference (out of sample for the truncation term, :math:`\lambda_t = 1 - s
+ s g` with :math:`g` the mesh's out-of-distribution score; in sample for the noise, :math:`\lambda_n`) and
:math:`s \in [0, 1]` the fitted share of the term that grows with it (linear response to the unresolved boundary).
The field variance is then

.. math:: \operatorname{Var}[\hat U_j] = \sum_k A_{jk}^2 \bigl(s_k^2 + \lambda_n \sigma_k^2\bigr)
          + \lambda_t (Q r)_j + w_j (Q \kappa)_j.

The last term is the round-trip transfer error :math:`U_i - Q_i P_i U_i` (``transfer_variance=True``; off by
default, as it costs NLPD on held-out meshes; :mod:`.roundtrip`): what the common mesh cannot represent of a mesh's
field, with :math:`w_j` the node's interpolation spread in the common element and :math:`\kappa` a per-field
intensity estimated from the training meshes' exact round-trip errors. It leaves the mean unchanged.
``truncation_variance=False``, ``geometry_variance=False`` and ``observation_noise=False`` remove the corresponding
parts; with the three off (and ``transfer_variance`` off) it is the reference code's GP variance.
Why (300 shapes, 8 geometry modes, ``benchmarks/results/mmgp_before8.md``, rows "before"): with the terms held
constant, the std on half-ellipse notches (vertical notch ends, which no training notch has) rose 1.13-1.31 times
while the error rose 1.23-1.51 times, and the 95% coverage there fell to 0.85-0.92; the latent GP variance alone
covers 0.67-0.81 in distribution (``benchmarks/results/mmgp_wall.md``). With 24 geometry modes
(``benchmarks/results/mmgp.md``) the constant terms' std rises 1.49-1.57 times against errors 1.37-1.78 times.

Devices and dtypes: the geometry preprocessing (morphing, P1 transfer, geometry POD) runs on the CPU in float64
numpy; the GP stage and the decode run in ``model.dtype`` on ``model.device`` (``MMGP(device="cuda")`` or
``model.to(device="cuda")``), and every prediction is a tensor there.

Parallel stages (:mod:`.fanout`, :mod:`gpgeom.engine.parallel`): ``fit``, ``predict``, ``encode``,
``encode_targets`` and ``ood_score`` take ``executor=`` (a Dask ``Client.get_executor()``, a ``ProcessPoolExecutor``,
...): the morphing and transfers of the meshes run there in chunks, with the common mesh shipped once per worker,
and ``fit`` also fits separate GPs (``"per_field"``) or the restarts of one GP as tasks. The results equal the
serial run's (restart ``k`` is seeded from ``(seed, k)``).

The GP over the latent geometry, :attr:`MMGP.gp`, is a BoTorch model: optimise an output scalar over the latent
shape space with any acquisition function and decode the optimum with :meth:`MMGP.decode_geometry`.
"""

from __future__ import annotations

from gpgeom.models.mmgp.inputs import as_mesh, samples_to_arrays
from gpgeom.models.mmgp.model import MMGP
from gpgeom.models.mmgp.prediction import MMGPFitResult, MMGPPrediction

__all__ = ["MMGP", "MMGPFitResult", "MMGPPrediction", "as_mesh", "samples_to_arrays"]
