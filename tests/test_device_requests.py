r"""A device this machine does not have is refused at once, by one check (gpgeom._validation.check_device), with a
ValueError naming the argument: in every constructor and function that takes a device, in ``to(device=...)`` and
in ``load(map_location=...)``.

These run where CUDA is absent (the CPU-only CI); on a GPU machine they are skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpgeom
from gpgeom._validation import check_device
from gpgeom.botorch import ExactGPModel
from gpgeom.datasets.pde import PDETestSet
from gpgeom.errors import ConvergenceWarning
from gpgeom.models.mmgp import MMGP
from gpgeom.models.rgnp import RGNP
from gpgeom.models.rvgp import RVGP
from gpgeom.pde import NonlinearPoisson1D

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA where there is none")


def test_check_device_accepts_what_exists_and_names_the_argument():
    assert check_device("device", "cpu") == torch.device("cpu")
    assert check_device("device", torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"`where` must be a torch device such as 'cpu' or 'cuda', got 'gpu0'"):
        check_device("where", "gpu0")
    with pytest.raises(ValueError, match="`device` must be a torch device"):
        check_device("device", True)
    with pytest.raises(ValueError, match="`device` must be a torch device"):
        check_device("device", 3.5)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_check_device_refuses_cuda_without_cuda(device):
    with pytest.raises(ValueError, match=r"`device`='cuda(:\d)?' was asked for, but CUDA is not available"):
        check_device("device", device)


@no_cuda
def test_models_refuse_cuda_at_construction():
    # MMGP checks the device before anything else (an invalid option after it is not reached)
    with pytest.raises(ValueError, match=r"`device`='cuda' was asked for"):
        MMGP(device="cuda", morphing="not-a-morphing")
    # RVGP before building the Laplacian of its points (which are not even valid here)
    with pytest.raises(ValueError, match=r"`device`='cuda' was asked for"):
        RVGP(None, device="cuda")
    with pytest.raises(ValueError, match=r"`device`='cuda' was asked for"):
        PDETestSet("poisson", *(np.zeros((2, 1)) for _ in range(4)), seed=0).to_torch(device="cuda")


@no_cuda
def test_to_and_load_refuse_cuda(tmp_path):
    X = torch.rand(8, 2, dtype=torch.float64)
    gp = ExactGPModel(X, X.sum(1, keepdim=True)).fit(max_iter=5, progress=False)
    with pytest.raises(ValueError, match=r"`device`='cuda' was asked for"):
        gp.to(device="cuda")
    rgnp = RGNP.from_family(NonlinearPoisson1D(), hidden=(8,), n_freqs=2)
    with pytest.raises(ValueError, match=r"`device`='cuda:0' was asked for"):
        rgnp.to(device="cuda:0")
    gp.save(tmp_path / "gp.pt")
    with pytest.raises(ValueError, match=r"`map_location`='cuda' was asked for"):
        ExactGPModel.load(tmp_path / "gp.pt", map_location="cuda")
    with pytest.raises(ValueError, match=r"`map_location`='cuda' was asked for"):
        gpgeom.load(tmp_path / "gp.pt", map_location="cuda")
    # the CPU still works
    back = gpgeom.load(tmp_path / "gp.pt", map_location="cpu")
    assert back.device.type == "cpu"


def test_to_refuses_half_precision_and_leaves_the_model_as_it_was():
    r"""``to(dtype=torch.float16)`` (or bfloat16) passed the "floating dtype" check: a FunBaT moved there failed at
    ``predict`` with torch's ``"lu_cpu" not implemented for 'Half'`` and stayed in half precision. The contract's
    dtypes are float32 and float64: other ones raise a TypeError naming ``dtype`` before anything moves (FunBaT, a
    plain class; RVGP, an ``nn.Module``), and the predictions are those of before, bitwise."""
    from gpgeom.datasets.tensors import make_synthetic_tensor
    from gpgeom.datasets.vector_fields import sphere_vector_field

    d = make_synthetic_tensor(40, 5, rank=2, n_coords=6, seed=1)
    funbat = gpgeom.FunBaT(2, max_sweeps=2, min_sweeps=2, n_restarts=0, learn_hyperparameters=False)
    with pytest.warns(ConvergenceWarning):  # two sweeps are enough here
        funbat.fit(d.X_train, d.y_train)
    s = sphere_vector_field(100, "mixed")
    rvgp = RVGP(s.points, n_eigenpairs=8, dim=2).fit(np.arange(0, 100, 4), s.vectors[::4], max_iter=3, restarts=0)
    for model, query in ((funbat, lambda m: m.predict(d.X_test)), (rvgp, lambda m: m.predict())):
        before = query(model)
        for dtype in (torch.float16, torch.bfloat16, torch.int64):
            with pytest.raises(TypeError, match=rf"`dtype` must be torch.float32 or torch.float64, got {dtype}"):
                model.to(dtype=dtype)
        assert model.dtype == torch.float64 and torch.equal(query(model), before)
