r"""RVGP: Gaussian processes for vector fields on a latent manifold known only through a point cloud.

Peach, Vinao-Carl, Grossman, David, Mallas, Sharp, Malhotra, Vandergheynst and Gosztolai, "Implicit Gaussian
process representation of vector fields over arbitrary latent manifolds", ICLR 2024 (arXiv 2309.16746).

**Pipeline** (the paper's sec. 3, its construction of the RVGP kernel). From a cloud
:math:`X \in \mathbb R^{n \times D}`:

1. the connection Laplacian :math:`L_c \in \mathbb R^{nd \times nd}` of the kNN graph (Singer and Wu, "Vector
   diffusion maps and the connection Laplacian", CPAM 2012): tangent frames :math:`T_i \in \mathbb R^{D \times d}`
   by local PCA, transports :math:`O_{ij}` = the orthogonal Procrustes alignment of :math:`T_i^\top T_j`, blocks
   :math:`(L_c)_{ii} = \deg_i I_d`, :math:`(L_c)_{ij} = -w_{ij} O_{ij}`
   (:func:`gpgeom.geometry.connection.connection_laplacian`);
2. its ``k`` smallest eigenpairs :math:`L_c u_l = \lambda_l u_l`, lifted to ambient vector fields
   :math:`\phi_l(i) = T_i u_l(i) \in \mathbb R^D` (the paper's positional encoding of the tangent bundle);
3. the vector-valued kernel, a :class:`~gpgeom.kernels.spectral.SpectralKernel` times an outputscale
   :math:`\sigma_f^2`,

   .. math:: K(i, j) = \sigma_f^2 \sum_{l=1}^k \phi_l(i)\, \tilde f(\lambda_l)\, \phi_l(j)^\top
      \in \mathbb R^{D\times D}, \qquad
      f(\lambda) = (2\nu/\kappa^2 + \lambda)^{-\nu}\ \text{(Matern)} \ \text{or}\ e^{-\kappa^2\lambda/2}
      \ \text{(diffusion)},

   the graph Matern and diffusion filters of Borovitskiy et al. ("Matern Gaussian processes on graphs",
   AISTATS 2021, eq. 7 and its :math:`\nu \to \infty` limit) applied to :math:`L_c`, with
   :math:`\tilde f = f / \sigma_0^2` normalised to unit mean prior variance; :math:`\kappa, \nu, \sigma_f^2` and the
   noise variance :math:`\sigma^2` are learnt by maximising the marginal likelihood.

**Training** is the exact GP on this rank-``k`` kernel, computed in weight space in :math:`O(N k^2)` for ``N = n_train
D`` scalar observations (or variationally for large ``n``): :class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`,
whose module docstring has the algebra. The reference implementation factorises the dense ``N x N`` matrix. By
default (``ambient="rbf"``) an exact fit on at most ``AMBIENT_MAX_POINTS`` (2000) distinct training points adds a
stationary kernel on the coordinates projected onto the frames (:mod:`~gpgeom.models.rvgp.ambient`; gpgeom's
addition): the kernel is then full rank and the algebra dense on the ``n_train d`` tangent components
(:mod:`~gpgeom.botorch.low_rank_ambient`, :math:`O((n_{train} d)^3)`); ``ambient=None`` keeps the rank-``k``
kernel alone.

**Tangency.** Every lifted eigenvector lies in :math:`\mathrm{span}\, T_i`, and so do the model-error
(:mod:`~gpgeom.models.rvgp.model`), restored (:mod:`~gpgeom.models.rvgp.extension`) and projected ambient terms, so
posterior means, samples and the columns of the latent posterior covariance are tangent to the estimated frames by
construction (no projection), but for one term: the nugget :math:`\beta (I - P_i)` of the frames' error,
:math:`\beta = \max(0, \sigma_\perp^2 - \sigma^2_{obs})`, the observations' variance across the frames beyond the
noise (:class:`~gpgeom.botorch.low_rank.LowRankSpectralGP`). Where :math:`\beta > 0` the covariances get
:math:`\beta (I - P_i)` and the means at observed points a share :math:`\beta / (\beta + \sigma^2_{obs})` of their
observations' component across the frames; it is 0 on clean clouds with the default frames (their error is below the
noise floor) and about 0 with isotropic noise. The noise of an observation is :math:`\sigma^2_{obs} P_i + \nu
(I - P_i)`, :math:`\nu = \sigma_\perp^2 - \beta`, so that its variance across the frames is the likelihood's
:math:`\sigma_\perp^2` (``predict(..., observation_noise=True)``, conditioning, fantasies).

**Scalar fields** (``scalar=True``): the same model on the graph Laplacian's eigenvectors (``D_out = 1``).

**Targets.** A scalar field is modelled as :math:`y = c + g + \varepsilon`, ``g`` the spectral GP: :meth:`RVGP.fit`
centres the values on their training mean :math:`\bar y` and scales them by their standard deviation ``s`` about it,
:math:`(y - \bar y) / s`, in float64 whatever the model's dtype (as BoTorch's ``Standardize``; ``y_offset``,
``y_scale``), and the means are returned as :math:`\bar y + s\,m`. The constant is already in the prior's span: the
graph Laplacian's eigenvalue 0 has the constant eigenvector (one per graph component), the largest prior variance of
the filter, so the centring moves the prior mean of that mode to :math:`\bar y` and the data correct it through the
mode's posterior; a learnt constant mean would be a second copy of that mode, not identifiable from it. Scaled only by
their root mean square (before), values far from zero, :math:`10^6 + 0.1 f`, became :math:`1 + 10^{-7} f`: the
varying part fell below the noise floor (``NOISE_FLOOR``, a noise standard deviation of 1e-3 of the values' size:
1000, for a noise of 0.002), and the outputscale that explained the constant set the prior variance of every mode
(their ratios to the constant's are bounded, :mod:`~gpgeom.models.rvgp.smoothness`), so the float64 model predicted a
standard deviation of 152 for a field whose own model gives 0.0007 (``tests/test_rvgp_target_offset.py``).
Vector fields have no constant offset (a constant ambient vector is not tangent): they are scaled by their root mean
square only. A constant ambient vector ``c`` added to tangent vectors
is read as its projection :math:`P_i c`, a tangent field the model learns, plus a normal part that becomes
:math:`\sigma_\perp^2`, the frames' error, in the covariances across the frames; and the noise floor is 1e-3 of the
vectors' root mean square, so a ``c`` more than 1e3 times the noise hides the field's variation below it, as a
scalar's was: subtract such a constant first.

The package, one concept per module
-----------------------------------
* :mod:`~gpgeom.models.rvgp.model`: :class:`~gpgeom.models.rvgp.model.RVGP`, the model (geometry and kernel, ``fit``,
  ``predict``, ``predict_at``, files), its uncertainty, its BoTorch face and its checks of bad input;
* :mod:`~gpgeom.models.rvgp.smoothness`: the identifiable smoothness, the intervals of :math:`\kappa` and
  :math:`\nu` that the kept eigenvalues determine (``NU_BOUNDS``);
* :mod:`~gpgeom.models.rvgp.ambient`: the ambient part, the projected stationary kernel on the cloud's coordinates
  (``AMBIENT_MAX_POINTS``);
* :mod:`~gpgeom.models.rvgp.extension`: the out-of-sample extension, Nystrom features of new points tapered beyond
  the graph's reach (:class:`~gpgeom.models.rvgp.extension.OutOfReachWarning`).

The accuracy measures of vector fields, :func:`~gpgeom.metrics.vector_fields.relative_l2` and
:func:`~gpgeom.metrics.vector_fields.angular_errors`, are in :mod:`gpgeom.metrics` and importable from here too.
"""

from __future__ import annotations

from gpgeom.botorch.low_rank import LowRankSpectralGP
from gpgeom.geometry.tangent import local_noise_variance
from gpgeom.metrics.vector_fields import angular_errors, relative_l2
from gpgeom.models.rvgp.ambient import AMBIENT_MAX_POINTS as AMBIENT_MAX_POINTS
from gpgeom.models.rvgp.extension import OutOfReachWarning
from gpgeom.models.rvgp.model import RVGP
from gpgeom.models.rvgp.smoothness import NU_BOUNDS as NU_BOUNDS

__all__ = ["LowRankSpectralGP", "OutOfReachWarning", "RVGP", "angular_errors", "local_noise_variance", "relative_l2"]
