"""RVGP's semantics against independent truths: no information between the connected components of the graph, and
the normal components of the observations (noise across the frames) handled as the noise model says."""

import warnings

import numpy as np
import pytest
import torch

from gpgeom.datasets.vector_fields import sample_sphere, sphere_field
from gpgeom.models.rvgp import RVGP, OutOfReachWarning


@pytest.fixture
def seed():
    # seeded per test by conftest's torch seed: fresh data for every GPGEOM_TEST_SEED
    return int(torch.randint(0, 2**31 - 1, ()).item())


@pytest.mark.parametrize("ambient", ["rbf", "matern", None])
def test_no_information_between_graph_components(seed, ambient):
    r"""Two unit spheres 10 apart, only the first observed: the graph has two components, and the kernel has no
    covariance between them (the connection Laplacian is block diagonal over them), so on the second sphere the
    posterior is the prior: mean 0, no covariance with the first. The ambient RBF on the coordinates had no notion
    of components: its lengthscale ran to the bound set by the union's spread, and the means on the unobserved
    sphere reached 111 where the data's largest is 3."""
    rng = np.random.default_rng(seed)
    A = sample_sphere(200, method="uniform", seed=rng)
    B = sample_sphere(200, method="uniform", seed=rng) + np.array([10.0, 0.0, 0.0])
    V = sphere_field(A, "mixed")[0]
    tr = rng.choice(200, 70, replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the disconnected graph's warning
        gp = RVGP(np.concatenate([A, B]), n_eigenpairs=30, dim=2, ambient=ambient).fit(tr, V[tr], max_iter=60)
    assert gp.laplacian.graph.n_components == 2
    mean = gp.predict().numpy()
    scale = np.abs(mean[:200]).max()
    assert scale > 0.5
    assert np.abs(mean[200:]).max() < 1e-9 * scale
    # the joint posterior of two points of A and two of B: no covariance across
    post = gp.posterior(torch.tensor([[0.0], [1.0], [200.0], [201.0]], dtype=torch.float64))
    cov = post.distribution.covariance_matrix.detach().numpy()  # (4 D, 4 D), point-major
    assert np.abs(cov[:6, 6:]).max() < 1e-9 * np.abs(cov).max()
    # new points next to B (within the graph's reach) join B
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfReachWarning)
        near_b = gp.predict_at(B[:5] * 1.001 + np.array([-0.01, 0.0, 0.0])).numpy()
    assert np.abs(near_b).max() < 1e-9 * scale
