r"""MMGP's field tails (``tail_energy``: the trailing POD modes of a field share one GP's hyperparameters) and the
projection of known fields on the retained modes (``project_fields``, the bound of any coefficient regression)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_operator import to_dense
from mesh_factories import notched_plate_arrays

from gpgeom.datasets.notched_plate import FIELD_NAMES, OUT_SCALAR_NAMES
from gpgeom.geometry.fem import mass_matrix
from gpgeom.geometry.mesh import Mesh
from gpgeom.models.mmgp import MMGP
from gpgeom.models.mmgp.latent_gp import gp_groups, output_groups, own_modes

pytest.importorskip("skfem")
pytest.importorskip("triangle")

N_TRAIN, N_TEST, H = 30, 6, 0.1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return notched_plate_arrays(tmp_path_factory.mktemp("plates"), N_TRAIN, N_TEST, H)


@pytest.fixture(scope="module")
def model(data):
    (M, mu, U, w), _ = data
    m = MMGP(n_modes_geometry=8, n_modes_fields=8, restarts=0, max_iter=60, seed=0, floater_start=(0.0, 0.0))
    return m.fit(M, mu, U, w, field_names=FIELD_NAMES, scalar_names=OUT_SCALAR_NAMES, progress=False)


def test_gp_groups_closed_form():
    r"""The groups and sharing flags of every mode, written out by hand."""
    nf = [4, 3]
    assert gp_groups(nf, 2, "shared") == ([(0, 9)], [True])
    assert gp_groups(nf, 2, "per_field") == ([(0, 4), (4, 7), (7, 8), (8, 9)], [True] * 4)
    assert gp_groups(nf, 2, "per_output") == ([(0, 9)], [False])
    assert gp_groups(nf, 2, "per_output", [4, 3]) == ([(0, 9)], [False])  # no tail: one batched GP as before
    groups, shared = gp_groups(nf, 2, "per_output", [2, 3])
    assert groups == [(0, 2), (2, 4), (4, 7), (7, 9)] and shared == [False, True, False, False]
    groups, shared = gp_groups(nf, 0, "per_output", [1, 1])
    assert groups == [(0, 1), (1, 4), (4, 5), (5, 7)] and shared == [False, True, False, True]
    assert output_groups(nf, 2, "per_output", [2, 3]) == [(0, 2), (2, 4), (4, 7), (7, 9)]
    with pytest.raises(ValueError, match="n_modes_own"):
        gp_groups(nf, 2, "per_output", [2])


def test_own_modes_rule():
    r"""Modes with an energy share >= ``tail_energy`` keep their own hyperparameters, at least one."""
    ratio = np.array([0.6, 0.3, 0.05, 0.004, 0.002, 0.001])
    assert own_modes(ratio, 6, 3e-3) == 4
    assert own_modes(ratio, 3, 3e-3) == 3  # never more than the modes kept
    assert own_modes(ratio, 6, 0.0) == 6
    assert own_modes(ratio, 6, 0.9) == 1
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="tail_energy"):
            own_modes(ratio, 6, bad)
        with pytest.raises(ValueError, match="tail_energy"):
            MMGP(tail_energy=bad)
    with pytest.raises(TypeError, match="tail_energy"):
        MMGP(tail_energy="small")


def _energy_ratios(model, M, U):
    r"""The fields' POD energy shares from a dense eigendecomposition of the transported snapshots' Gram matrix."""
    out = []
    Mc = mass_matrix(model.common_mesh_).toarray()
    for k in range(len(FIELD_NAMES)):
        F = np.stack([model._operators(m, "m").proj @ u[:, k] for m, u in zip(M, U)])
        F = F - F.mean(0)
        lam = np.sort(np.linalg.eigvalsh(F @ Mc @ F.T))[::-1]
        out.append(lam / lam.clip(0).sum())
    return out


def test_tails_structure_and_dense_posterior(model, data):
    r"""The separately fitted leading modes follow the energy rule on a dense POD; each field tail is one GP with
    one lengthscale vector whose posterior mean is the dense GP formula; the SurrogateList's prediction is the
    groups' side by side. Measured: own modes [2, 3, 5, 7] of 8 (30 coarse plates), 9 GPs."""
    (M, mu, U, w), (Mt, mut, _, _) = data
    own = [own_modes(r, 8, model.tail_energy) for r in _energy_ratios(model, M, U)]
    assert model.n_modes_own_ == own and any(o < 8 for o in own)
    assert (model.output_groups_, model._group_shared) == gp_groups([8] * 4, 3, "per_output", own)
    assert len(model.gps_) == len(model.output_groups_) > 1
    Z = model.encode(Mt, mut)
    mean = model.gp.predict(Z)
    for g, (a, b), sh in zip(model.gps_, model.output_groups_, model._group_shared, strict=True):
        assert g.num_outputs == b - a and g.covar_module.base_kernel.lengthscale.shape[0] == (1 if sh else b - a)
        torch.testing.assert_close(g.predict(Z), mean[:, a:b], rtol=0, atol=0)
        if not sh:
            continue
        # dense posterior mean of the shared tail: k*^T (K + s^2 I)^-1 (y - c), in standardised units
        X = g.input_transform(model.train_latent_)
        Xs = g.input_transform(Z)
        y = (model.train_targets_[:, a:b] - g.outcome_transform.means) / g.outcome_transform.stdvs
        K = to_dense(g.covar_module(X, X)).reshape(-1, len(X), len(X))[0]  # batch 1 (shared) or none (one mode)
        Ks = to_dense(g.covar_module(Xs, X)).reshape(-1, len(Xs), len(X))[0]
        noise = g.likelihood.noise.detach().reshape(-1)[0]
        c = g.mean_module.constant.detach().reshape(-1, 1)  # (b - a) x 1 constant means
        alpha = torch.linalg.solve(K + noise * torch.eye(len(X), dtype=K.dtype), y - c.T)
        dense = (c.T + Ks @ alpha) * g.outcome_transform.stdvs + g.outcome_transform.means
        torch.testing.assert_close(mean[:, a:b], dense.detach(), rtol=1e-7, atol=1e-9)
    j = model.output_groups_[[i for i, sh in enumerate(model._group_shared) if sh][0]][0]  # a tail coefficient
    ms, ss = model.output_gp(j).predict(Z, return_std=True)
    m_all, s_all = model.gp.predict(Z, return_std=True)
    torch.testing.assert_close(ms[:, 0], m_all[:, j], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ss[:, 0], s_all[:, j], rtol=1e-9, atol=1e-12)


def test_tails_save_load(model, data, tmp_path):
    r"""A model with field tails is written and read back with the same groups and predictions."""
    _, (Mt, mut, _, _) = data
    path = tmp_path / "tails.pt"
    model.save(path)
    back = MMGP.load(path)
    assert back.n_modes_own_ == model.n_modes_own_ and back.output_groups_ == model.output_groups_
    p0, p1 = model.predict(Mt, mut, return_std=True), back.predict(Mt, mut, return_std=True)
    for a, b in zip(p0.fields + p0.fields_std, p1.fields + p1.fields_std, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert "n_modes_own=" in repr(model)


def test_project_fields_is_the_m_orthogonal_projection():
    r"""``project_fields`` on meshes of one topology (``morphing="none"``: P = Q = I) is the mean plus the
    M-orthogonal projection on the retained modes (the residual is M-orthogonal to them and the projection is
    idempotent), and with every mode kept it returns a training snapshot exactly."""
    rng = np.random.default_rng(0)
    pts = np.array([[x, y] for y in np.linspace(0, 1, 5) for x in np.linspace(0, 1, 5)])
    cells = np.array([[i + 5 * j, i + 1 + 5 * j, i + 6 + 5 * j] for j in range(4) for i in range(4)]
                     + [[i + 5 * j, i + 6 + 5 * j, i + 5 + 5 * j] for j in range(4) for i in range(4)])  # fmt: skip
    n = 12
    meshes = [Mesh(pts + 0.01 * rng.standard_normal(pts.shape) * (0 < pts) * (pts < 1), cells) for _ in range(n)]
    mu = rng.standard_normal((n, 1))
    U = [np.stack([np.sin(3 * p[:, 0] + a) + p[:, 1] * a, np.cos(2 * p[:, 1] * a)], 1) for p, a in
         zip((m.points for m in meshes), mu[:, 0])]  # fmt: skip
    U = [u + 0.05 * rng.standard_normal(u.shape) for u in U]
    kw = {"morphing": "none", "n_modes_geometry": 3, "restarts": 0, "max_iter": 5, "seed": 0}
    model = MMGP(n_modes_fields=3, **kw).fit(meshes[:10], mu[:10], U[:10])
    Mc = mass_matrix(model.common_mesh_).toarray()
    proj = model.project_fields(meshes[10:], U[10:])
    for k, f in enumerate(model._fields):
        Phi, ubar = f.modes.numpy(), f.mean.numpy()
        for u, p in zip(U[10:], proj, strict=True):
            r = u[:, k] - p[:, k].numpy()
            np.testing.assert_allclose(Phi @ Mc @ r, 0.0, atol=1e-10)  # residual M-orthogonal to the modes
            d = p[:, k].numpy() - ubar
            np.testing.assert_allclose(Phi.T @ (Phi @ Mc @ d), d, atol=1e-10)  # in the span of the modes
            assert np.linalg.norm(r) > 1e-3  # 3 modes do not hold these fields
    full = MMGP(n_modes_fields=9, **kw).fit(meshes[:10], mu[:10], U[:10])  # 9 = rank of 10 centred snapshots
    for u, p in zip(U[:3], full.project_fields(meshes[:3], U[:3]), strict=True):
        np.testing.assert_allclose(p.numpy(), u, atol=1e-9)
    with pytest.raises(ValueError, match="output_fields"):
        model.project_fields(meshes[:1], [np.zeros((25, 3))])
