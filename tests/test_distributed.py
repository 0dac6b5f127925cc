r"""Tests of data-parallel training, :mod:`gpgeom.engine.distributed`.

The multi-rank test launches ``torchrun`` (``python -m torch.distributed.run --nproc_per_node=2 --standalone``) on
``tests/ddp_worker.py`` (gloo, CPU, one thread per rank); the others run in this process, with no process group or a
gloo group of one rank.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import _FailingBackward as FailingBackward

from gpgeom.engine import distributed as dd
from gpgeom.models.rgnp import RGNP
from gpgeom.pde import NonlinearPoisson1D

ROOT = Path(__file__).resolve().parents[1]
DIST = torch.distributed
needs_gloo = pytest.mark.skipif(
    not (DIST.is_available() and DIST.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this PyTorch build",
)
SMALL_GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(6, 6), mlp_hidden=(16,), grid_size=10)


def _model(seed):
    torch.manual_seed(seed)
    return RGNP.from_family(
        NonlinearPoisson1D(), hidden=(24, 24), n_freqs=8, gicnet=SMALL_GIC, batch_size=4, n_points=16
    ).double()


@contextlib.contextmanager
def _one_rank(path):
    """A gloo process group of one rank in this process (destroyed on exit)."""
    DIST.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        yield
    finally:
        DIST.destroy_process_group()


@pytest.fixture
def group_of_one(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with _one_rank(tmp_path / "store"):
        yield


def test_single_process_is_untouched(monkeypatch):
    """No torchrun, no group: every function is a no-op (nothing registered, nothing drawn)."""
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not dd.launched() and dd.init_from_env() is False and not dd.is_initialized()
    assert (dd.world_size(), dd.rank(), dd.is_main_process()) == (1, 0, True)
    lin = torch.nn.Linear(2, 1)
    state = torch.random.get_rng_state()
    assert dd.rank_seed(7) == 7 and dd.rank_seed(None) is None
    assert torch.equal(state, torch.random.get_rng_state())  # no seed drawn
    with dd.average_gradients(lin) as averager:
        assert averager is None and not lin.weight._post_accumulate_grad_hooks
    loss = lin(torch.ones(1, 2)).sum()
    assert dd.mean_over_ranks(loss) is loss
    with dd.data_parallel(lin, 3) as dp:
        assert dp.seed == 3 and not dp.active and dp.progress(None) is None and dp.mean(loss) is loss
        assert [dp.agree(k) for k in (0, 1, 2)] == [0, 1, 2]  # one process: its own outcome, nothing sent
        with pytest.raises(ValueError, match="`outcome` must be an int >= 0, got -1"):
            dp.agree(-1)
        assert dp.mean_of(lambda: loss) is loss  # no group: compute() itself, its errors as they are
        with pytest.raises(KeyError, match="own"):
            dp.mean_of(lambda: {}["own"])


@needs_gloo
def test_mean_of_in_a_group_of_one(group_of_one):
    """In a group of one rank ``mean_of`` returns the loss's own value, bit for bit in float32 and float64 (the
    status travels in a float64 buffer), with its gradient; a compute that raises raises its own error, one that
    returns no scalar a ``TypeError``."""
    lin = torch.nn.Linear(3, 1)
    x = torch.randn(5, 3)
    with dd.data_parallel(lin, 0) as dp:
        for dtype in (torch.float32, torch.float64):
            lin.to(dtype)
            loss = torch.sin(lin(x.to(dtype))).sum() * 1.2345
            out = dp.mean_of(lambda loss=loss: loss, "test")
            assert out.dtype == dtype and torch.equal(out.detach(), loss.detach())
            (g,) = torch.autograd.grad(out, lin.bias, retain_graph=True)
            (ref,) = torch.autograd.grad(loss, lin.bias)
            assert torch.equal(g, ref)
        with pytest.raises(KeyboardInterrupt):

            def interrupted():
                raise KeyboardInterrupt

            dp.mean_of(interrupted)
        with pytest.raises(TypeError, match=r"`compute` must return a scalar tensor, got \(5, 1\)"):
            dp.mean_of(lambda: lin(x.double()))
        assert torch.equal(dp.mean_of(lambda: lin(x.double()).sum()).detach(), lin(x.double()).sum().detach())


def _jitter_retried_fit():
    """An Adam fit whose loss raises a linear_operator ``NotPSDError`` at its second evaluation (through
    ``DataParallel.mean_of``): ``fit`` retries the attempt with more jitter. The parameters and loss history."""
    import gpytorch
    from linear_operator.utils.errors import NotPSDError

    from gpgeom.engine.fitting import fit

    torch.manual_seed(0)
    kernel, evals = gpytorch.kernels.RBFKernel(), [0]

    def loss():
        evals[0] += 1
        if evals[0] == 2:
            raise NotPSDError("fails once")
        return ((kernel.lengthscale - 0.3) ** 2).sum()

    with dd.data_parallel(kernel, 0) as dp:
        result = fit(lambda: dp.mean_of(loss), module=kernel, optimizer="adam", epochs=4, lr=0.1, progress=False)
    return kernel.raw_lengthscale.detach().clone(), result.history, evals[0]


def test_a_group_of_one_retries_as_a_single_process(tmp_path, monkeypatch):
    """In a group of one rank an error of ``mean_of`` is the single process's: ``fit`` retries a ``NotPSDError``
    with more jitter there too (no other rank can go out of step), with the same parameters and history, bit for
    bit; ``raised_on_every_rank`` is then False."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = _jitter_retried_fit()
    with _one_rank(tmp_path / "store"):
        inside = _jitter_retried_fit()
        with dd.data_parallel(torch.nn.Linear(1, 1), 0) as dp:
            with pytest.raises(KeyError) as info:
                dp.mean_of(lambda: {}["own"])
        assert not dd.raised_on_every_rank(info.value)
    assert alone[2] == inside[2] > 2 and alone[1] == inside[1]  # the attempt was run again
    assert torch.equal(alone[0], inside[0])


@needs_gloo
def test_a_backward_pass_that_raises_after_the_loss_all_reduce(group_of_one):
    """In a group of one rank, a backward pass that raises after ``mean_of`` raises its own error out of the
    data-parallel block (after sending its status in place of the gradients: the all-reduces stay matched, the group
    works on); the gradients of a backward pass that went well are the plain ones, bit for bit."""
    torch.manual_seed(0)
    lin, x = torch.nn.Linear(3, 2).double(), torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(ArithmeticError, match="fails in its backward pass"):
        with dd.data_parallel(lin, 0) as dp:
            dp.mean_of(lambda: FailingBackward.apply(lin(x)).sum(), "test").backward()
    assert not lin.weight._post_accumulate_grad_hooks
    lin.zero_grad(set_to_none=True)
    (torch.sin(lin(x)).sum()).backward()
    ref = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad(set_to_none=True)
    with dd.data_parallel(lin, 0) as dp:
        dp.mean_of(lambda: torch.sin(lin(x)).sum()).backward()
    for p, r in zip(lin.parameters(), ref):
        assert torch.equal(p.grad, r)


@needs_gloo
def test_gradient_averaging_on_one_rank_leaves_gradients_bitwise_unchanged(group_of_one):
    """In a group of one rank the hooks run (one reduction per backward pass) and change nothing; an unused
    parameter keeps ``grad = None``; gradients accumulated over two passes are the plain sum."""
    torch.manual_seed(0)
    lin, unused = torch.nn.Linear(4, 3).double(), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    x = torch.randn(6, 4, dtype=torch.float64)

    def loss():
        return (lin(x) ** 2).mean() + torch.sin(lin.weight).sum()

    loss().backward()
    loss().backward()
    ref = [p.grad.clone() for p in lin.parameters()]
    lin.zero_grad(set_to_none=True)
    with dd.average_gradients([*lin.parameters(), unused]) as averager:
        value = dd.mean_over_ranks(loss())
        value.backward()
        assert averager.reductions == 1
        loss().backward()
        assert averager.reductions == 2
    assert unused.grad is None and not lin.weight._post_accumulate_grad_hooks  # hooks removed on exit
    for p, r in zip(lin.parameters(), ref):
        assert torch.equal(p.grad, r)
    assert torch.equal(value.detach(), loss().detach())


@needs_gloo
def test_rgnp_fit_in_a_group_of_one_is_bitwise_the_single_process_fit(tmp_path, monkeypatch):
    """The whole data-parallel path of ``RGNP.fit`` (broadcast, loss mean, gradient hooks) on one rank trains
    exactly as a single process: same loss history, same parameters, bit for bit."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    alone = _model(3).fit(6, lr=1e-2, seed=5, progress=False)
    with _one_rank(tmp_path / "store"):
        inside = _model(3).fit(6, lr=1e-2, seed=5, progress=False)
    assert inside.fit_history == alone.fit_history
    for (k, a), b in zip(inside.state_dict().items(), alone.state_dict().values()):
        assert torch.equal(a, b), k


@needs_gloo
def test_broadcast_parameters_copies_rank_zero_and_checks_structure(group_of_one):
    src = torch.nn.BatchNorm1d(3)  # parameters and buffers, a long buffer among them
    with torch.no_grad():
        src.weight.fill_(2.0)
    before = {k: v.clone() for k, v in src.state_dict().items()}
    dd.broadcast_parameters(src)  # one rank: its own values
    for k, v in src.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(TypeError, match="module"):
        dd.broadcast_parameters([src.weight])


def test_bad_arguments_and_environment(monkeypatch):
    with pytest.raises(ValueError, match="backend"):
        dd.init_from_env("mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        dd.init_from_env(timeout_s=0)
    monkeypatch.setenv("RANK", "one")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="RANK must be a non-negative integer.*'one'"):
        dd.init_from_env()
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK must be below WORLD_SIZE"):
        dd.init_from_env()
    monkeypatch.delenv("RANK")
    with pytest.raises(TypeError, match="`seed` must be an int"):
        dd.rank_seed(1.5)
    with pytest.raises(TypeError, match="leaf tensors"):
        with dd.average_gradients([torch.ones(2, requires_grad=True) * 2]):
            pass
    with pytest.raises(TypeError, match="`value` must be a tensor"):
        dd.mean_over_ranks(1.0)


def _torchrun(out, *args, timeout=240):
    """Run ``tests/ddp_worker.py OUT *args`` on two gloo ranks under torchrun."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    cmd += [str(ROOT / "tests" / "ddp_worker.py"), str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The output folder of one run of ``tests/ddp_worker.py`` on two gloo ranks under torchrun."""
    return _torchrun(tmp_path_factory.mktemp("ddp"))


def _dense_data_gradient(model, data, fields, noise=0.05):
    r"""The gradient of :math:`-\frac{1}{F} \sum_s \log\mathcal N(y_s;\, b + d\mu,\, D(LL^\top +
    \operatorname{diag}\sigma^2)D + \sigma_y^2 I)` over the model's parameters (flat), with a dense torch
    ``MultivariateNormal`` over the ``S`` data fields, :math:`F` = ``fields`` the fields per step."""
    model.zero_grad(set_to_none=True)
    x, y, z, w = (data[k] for k in ("x", "y", "z", "w"))
    q = model.forward_dist(z, w, x)
    b, d = model.lift(x, w)
    cov = d[..., :, None] * q.covariance_matrix * d[..., None, :] + noise**2 * torch.eye(y.shape[1], dtype=y.dtype)
    (-torch.distributions.MultivariateNormal(b + d * q.loc, cov).log_prob(y).sum() / fields).backward()
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()])


@needs_gloo
def test_data_term_of_two_ranks_weighs_as_in_one_process_of_twice_the_batch(two_ranks, monkeypatch):
    r"""With ``data=``, one step of ``RGNP.fit`` on 2 ranks of 2 fields carries the gradient of the data term of one
    process of 4 fields (each: the dense Gaussian log-likelihood of all the data divided by 4). The old code weighed
    the data term by 1/2 on each rank, twice the single process's weight (the two gradients differed by a factor 2)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ddp_worker import data_term_gradient, data_term_setup

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ranks = [torch.load(two_ranks / f"data_grad{r}.pt") for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])  # the averaged gradient, the same on both ranks
    model, data = data_term_setup()
    alone = data_term_gradient(model, data, batch_size=4)  # one process, 2 x 2 fields
    dense = _dense_data_gradient(model, data, fields=4)
    scale = float(dense.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(alone, dense, rtol=0, atol=1e-9 * scale)
    torch.testing.assert_close(ranks[0], dense, rtol=0, atol=1e-9 * scale)


@needs_gloo
def test_two_ranks_under_torchrun(two_ranks):
    """Two gloo ranks on the CPU: the averaged gradient equals the mean of the per-rank gradients computed directly;
    an RGNP whose ranks start from different networks ends 20 steps with bit-identical parameters; each rank drew its
    own grids (different first losses) and the recorded loss is their mean; the loss falls; only rank 0 wrote the model
    file, which every rank then reads back. Ranks given a different ``lr``, different shards of ``data`` (3 and 2
    fields) or models built with different ``boundary_margin`` are refused on both ranks before the first step (the old
    code trained on: with different learning rates the parameters of the ranks part, with shards the data term weighs
    1/W of the data's)."""
    res = [json.loads((two_ranks / f"rank{r}.json").read_text()) for r in range(2)]
    states = [torch.load(two_ranks / f"state{r}.pt") for r in range(2)]
    assert [r["rank"] for r in res] == [0, 1] and {r["world_size"] for r in res} == {2}
    for r in res:
        assert r["backend"] == "gloo" and r["linear_reductions"] == 1
        assert r["linear_error"] <= 1e-12 * r["linear_scale"]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    hist = res[0]["history"]
    assert hist == res[1]["history"] and len(hist) == 20
    first = [r["own_first_loss"] for r in res]
    assert first[0] != first[1]
    assert hist[0] == pytest.approx(sum(first) / 2, rel=1e-6)
    assert sum(hist[-5:]) < 0.8 * sum(hist[:5]), hist
    assert [r["writes"] for r in res] == [1, 0] and all(r["loaded_matches"] for r in res)
    refused = [r["refused"] for r in res]
    for k, ref in enumerate(refused):
        assert ref["lr"] is not None and ref["data"] is not None, ref
        assert f"lr (this rank: {1e-3 * (k + 1)!r}) on rank {k} of 2" in ref["lr"]
        assert "data (this rank: {'x': Tensor of shape " + repr((3 - k, 7, 1)) in ref["data"]
        assert ref["unchanged"] and "RGNP under torchrun" in ref["lr"]
        assert ref["margin"] is not None and f"model.boundary_margin (this rank: {0.01 * k!r})" in ref["margin"]
    assert refused[0]["matched_loss"] == refused[1]["matched_loss"]  # still in step after the refusals


@needs_gloo
def test_a_stop_or_an_error_of_one_ranks_callback_ends_the_fit_on_every_rank(tmp_path):
    r"""``RGNP.fit(callback=...)`` on two ranks where only rank 1's callback raises ``StopIteration`` (at step 4 of
    10): both ranks stop after step 4 (``fit_result_.stopped``), with the parameters and loss history of
    ``fit(steps=4)`` from the same start and seed on the same ranks, bit for bit, and the ranks stay in step (the next
    fits match). A ``KeyError`` from rank 1's callback is raised on rank 1 and a ``RuntimeError`` on rank 0, each
    model left as it was. Before, rank 0 went on into its step 5 all-reduce alone and rank 1 into its next fit's:
    mismatched collectives (the run failed or hung until the timeout)."""
    _torchrun(tmp_path, "stop", timeout=180)
    res = [json.loads((tmp_path / f"stop{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert r["stopped"] and r["seen"] == [1, 2, 3, 4] and len(r["history"]) == 4
        assert r["history"] == r["ref_history"] and r["unchanged"]
    assert res[0]["history"] == res[1]["history"]
    for r in range(2):
        stopped, ref = torch.load(tmp_path / f"stop_state{r}.pt"), torch.load(tmp_path / f"ref_state{r}.pt")
        for k in ref:
            assert torch.equal(stopped[k], ref[k]), k
    assert res[1]["raised"] == 'KeyError: "rank 1\'s callback fails"'
    assert res[0]["raised"].startswith(
        "RuntimeError: RGNP.fit, in the callback at step 2, under torchrun: rank 1 of 2 raised KeyError: "
        '"rank 1\'s callback fails"; rank 0 stops with it'
    )
    assert res[0]["matched_loss"] == res[1]["matched_loss"]


@needs_gloo
def test_a_step_that_fails_on_one_rank_ends_the_fit_on_every_rank_at_once(tmp_path):
    r"""``RGNP.fit`` on two ranks where rank 1's residual (user PDE code) returns NaN at step 3 of 10, from the state
    after ``fit(steps=2)``, then fits where it raises in its backward pass at step 2 and ``KeyboardInterrupt`` at
    step 1: rank 1 raises its own error (the ``ValueError`` of a NaN residual, as in one process; the
    ``ArithmeticError``; the ``KeyboardInterrupt``) and rank 0 a ``RuntimeError``
    naming rank 1 and its error, both within seconds of the failure (the collectives' timeout is 30 s); each model is
    left as it was, bit for bit the parameters of a fresh ``fit(steps=2)`` on the same ranks, and the ranks stay in
    step (the next fits match). Before, rank 0 waited in the loss (gradient) all-reduce until the timeout while rank 1
    went on into its next fit's collectives, and the run failed."""
    start = time.monotonic()
    _torchrun(tmp_path, "fail", timeout=150)
    assert time.monotonic() - start < 60  # start-up included; the old code took the 30 s timeout and failed
    res = [json.loads((tmp_path / f"fail{r}.json").read_text()) for r in range(2)]
    nan, backward = [r["nan"] for r in res], [r["backward"] for r in res]
    assert nan[1]["raised"].startswith("ValueError: `residual(u, x, z, w)` returned 12 NaN or infinite value(s)")
    assert nan[1]["raised"].endswith("(at training step 3)")
    assert nan[0]["raised"].startswith(
        "RuntimeError: RGNP.fit, in the loss at training step 3, under torchrun: rank 1 of 2 raised "
        "NonFiniteOutputError: `residual(u, x, z, w)` returned 12 NaN"
    )
    assert backward[1]["raised"] == "ArithmeticError: rank 1's residual fails in its backward pass"
    assert backward[0]["raised"] == (
        "RuntimeError: RGNP.fit, in the loss at training step 2, in its backward pass, under torchrun: rank 1 of 2 "
        "raised ArithmeticError: rank 1's residual fails in its backward pass; rank 0 stops with it (that rank's own "
        "error has the details)."
    )
    interrupt = [r["interrupt"] for r in res]
    assert interrupt[1]["raised"] == "KeyboardInterrupt: "
    assert interrupt[0]["raised"].startswith(
        "RuntimeError: RGNP.fit, in the loss at training step 1, under torchrun: rank 1 of 2 raised KeyboardInterrupt;"
    )
    for fits, steps in ((nan, 3), (backward, 2), (interrupt, 1)):
        for f in fits:
            assert f["steps_begun"] == steps and f["unchanged"] and f["history_unchanged"]
            assert f["after_failure_s"] < 10.0  # seconds from rank 1's failure to the end of the fit on this rank
    assert res[0]["matched_loss"] == res[1]["matched_loss"]
    for r in range(2):
        failed, ref = torch.load(tmp_path / f"fail_state{r}.pt"), torch.load(tmp_path / f"fit2_state{r}.pt")
        assert failed.keys() == ref.keys()
        for k in ref:
            assert torch.equal(failed[k], ref[k]), k


@needs_gloo
def test_the_engine_never_retries_alone_what_failed_on_every_rank(tmp_path):
    r"""The engine's ``fit`` of a loss through ``DataParallel.mean_of`` on two ranks, rank 1's loss raising at one
    evaluation an error that ``fit`` handles in one process (a linear_operator ``NotPSDError``: retried with more
    jitter; a ``FloatingPointError`` with ``restarts=1``: the next attempt; a ``NanError`` at an L-BFGS-B trial point:
    the line search steps back): rank 1 raises its own error and rank 0 a ``RuntimeError`` naming it, after the same
    number of evaluations on both ranks, and a matched all-reduce afterwards sums 1 + 2. Before, rank 1 went on alone
    and met rank 0's next collective mismatched (gloo aborted the run). A fit ended by ``StopIteration`` on both
    ranks, then an ``OSError`` on rank 0 in the data-parallel block: rank 0 raises it at once (before, it sent a
    status to a gradient all-reduce no rank was in: a hang until the timeout, or a mismatch with rank 1's next
    collective)."""
    _torchrun(tmp_path, "engine", timeout=150)
    res = [json.loads((tmp_path / f"engine{r}.json").read_text()) for r in range(2)]
    names = {"jitter": "NotPSDError", "restart": "FloatingPointError", "lbfgs": "NanError"}
    for how, name in names.items():
        own, other = res[1][how], res[0][how]
        assert own["raised"] == f"{name}: rank 1's loss fails ({how})", own
        assert other["raised"].startswith(f"RuntimeError: loss, under torchrun: rank 1 of 2 raised {name}: "), other
        assert own["evals"] == other["evals"] == own["at"] and own["after"] == other["after"] == 3.0
    stop = [r["stop"] for r in res]
    assert stop[0]["raised"] == "OSError: rank 0 cannot write its file" and stop[1]["raised"] is None
    assert stop[0]["seconds"] < 20.0 and stop[0]["after"] == stop[1]["after"] == 3.0
