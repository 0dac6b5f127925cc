r"""Worker of ``tests/test_distributed.py``, run as ``torchrun --nproc_per_node=W tests/ddp_worker.py OUT`` (and
``... OUT stop``: :func:`stop_main`; ``... OUT fail``: :func:`fail_main`; ``... OUT engine``: :func:`engine_main`).

Every rank writes ``OUT/rank{r}.json``, ``OUT/state{r}.pt`` and ``OUT/data_grad{r}.pt``:

* ``data_grad{r}.pt``: the gradient of the data term in one step of ``RGNP.fit`` on batches of 2 fields
  (:func:`data_term_gradient`, averaged over the ranks);
* ``linear_error``: the gradient averaged by :func:`gpgeom.engine.distributed.average_gradients` (each rank a
  least-squares loss on its own data, rank-dependent initial parameters made equal by
  :func:`~gpgeom.engine.distributed.broadcast_parameters`) minus the mean of the per-rank gradients computed
  directly in this process (max abs), and the number of reductions (one per backward pass);
* an RGNP built from a rank-dependent initialisation, trained 20 steps by ``RGNP.fit``: its parameters
  (``state{r}.pt``), the loss history (the mean over the ranks), every rank's own first-step loss, how many files
  ``save`` wrote on this rank, and whether the saved file (written by rank 0) predicts like the rank's own model;
* ``refused``: the messages of the ``ValueError`` that ``RGNP.fit`` raised when the ranks were given a different
  ``lr``, different shards of ``data``, or models built with different ``boundary_margin`` (None where it
  trained), whether the parameters were left unchanged, and
  the loss of one matched step afterwards (the ranks are still in step).
"""

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import gpgeom.models.rgnp.model as rgnp_model  # noqa: E402
from gpgeom.engine import distributed as dd  # noqa: E402
from gpgeom.models.rgnp import RGNP  # noqa: E402
from gpgeom.pde import NonlinearPoisson1D  # noqa: E402

STEPS = 20
GIC = dict(lift_channels=4, lift_hidden=(8,), cnn_channels=(6, 6), mlp_hidden=(16,), grid_size=10)


def _linear_check(r: int, w: int) -> dict:
    torch.manual_seed(100 + r)  # a different initialisation on every rank
    lin = torch.nn.Linear(3, 2).double()
    dd.broadcast_parameters(lin)
    data = []
    for k in range(w):  # every rank can rebuild every rank's data
        g = torch.Generator().manual_seed(1000 + k)
        data.append((torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g).double()))

    def loss(module, k):
        x, y = data[k]
        return ((module(x) - y) ** 2).mean()

    start = [p.detach().clone() for p in lin.parameters()]
    with dd.average_gradients(lin) as averager:
        loss(lin, r).backward()
    grads = [p.grad.clone() for p in lin.parameters()]
    ref = [torch.zeros_like(p) for p in start]
    for k in range(w):  # the mean of the per-rank gradients, directly
        copy = torch.nn.Linear(3, 2).double()
        with torch.no_grad():
            for p, s in zip(copy.parameters(), start):
                p.copy_(s)
        loss(copy, k).backward()
        for acc, p in zip(ref, copy.parameters()):
            acc += p.grad / w
    error = max(float((g - e).abs().max()) for g, e in zip(grads, ref))
    return {"linear_error": error, "linear_reductions": averager.reductions, "linear_scale": float(ref[0].abs().max())}


def data_term_setup() -> tuple[RGNP, dict]:
    """The model and the data set of the data-term check: the same on every rank and in the test process."""
    torch.manual_seed(3)
    model = RGNP.from_family(
        NonlinearPoisson1D(), hidden=(8,), n_freqs=4, gicnet=GIC, batch_size=2, n_points=6, dtype=torch.float64
    )
    g = torch.Generator().manual_seed(4)
    S, m = 4, 5
    z = model.z_low + (model.z_high - model.z_low) * torch.rand(S, model.dim_z, generator=g, dtype=torch.float64)
    w = model.w_low + (model.w_high - model.w_low) * torch.rand(S, model.dim_w, generator=g, dtype=torch.float64)
    x = torch.rand(S, m, 1, generator=g, dtype=torch.float64) * 1.8 - 0.9
    y = 0.3 * torch.randn(S, m, generator=g, dtype=torch.float64)
    return model, {"x": x, "y": y, "z": z, "w": w}


def data_term_gradient(model: RGNP, data: dict, batch_size: int) -> torch.Tensor:
    """The gradient of the data term in one step of ``RGNP.fit`` (flat, over ``model.parameters()``): the gradient of
    fit's objective with ``data`` (all of it every step: no subsampling) minus the one without it, from the same seed
    (the same grids and draws of z and u; the data term draws nothing). The engine's ``fit`` is replaced by one
    backward pass, inside ``RGNP.fit``'s data-parallel block (under torchrun: the gradient averaged over the ranks)."""

    def one_backward(objective, module, seed, **_):
        torch.manual_seed(seed)
        module.zero_grad(set_to_none=True)
        value = objective()
        value.backward()
        return SimpleNamespace(history=[[float(value.detach())]], loss=float(value.detach()))

    real, rgnp_model.fit = rgnp_model.fit, one_backward
    try:
        grads = []
        for d in (data, None):
            model.fit(1, batch_size=batch_size, seed=11, data=d, data_batch=data["y"].shape[0], progress=False)
            parts = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
            grads.append(torch.cat([g.reshape(-1) for g in parts]))
    finally:
        rgnp_model.fit = real
    return grads[0] - grads[1]


def _refusals(model: RGNP, r: int) -> dict:
    torch.manual_seed(500)  # the same data set on every rank; rank 0 takes 3 of its fields, rank 1 the other 2
    z, w = model.sample_params(5)
    x = model.sample_grid(5, 7)
    full = {"x": x, "y": torch.zeros(5, 7), "z": z, "w": w}
    shard = {k: v[:3] if r == 0 else v[3:] for k, v in full.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict = {}
    for name, kw in {"lr": {"lr": 1e-3 * (r + 1)}, "data": {"lr": 1e-3, "data": shard, "data_batch": 2}}.items():
        try:
            model.fit(2, seed=1, progress=False, **kw)
            out[name] = None
        except ValueError as err:
            out[name] = str(err)
    out["unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    margin = RGNP.from_family(  # a hyperparameter that is no parameter: the ranks' boundary margins differ
        NonlinearPoisson1D(), hidden=(8,), n_freqs=4, gicnet=GIC, batch_size=2, n_points=8, boundary_margin=0.01 * r
    )
    try:
        margin.fit(1, seed=1, progress=False)
        out["margin"] = None
    except ValueError as err:
        out["margin"] = str(err)
    model.fit(1, lr=1e-3, seed=1, progress=False, data=full, data_batch=2)
    out["matched_loss"] = float(model.fit_history[-1])
    return out


def main(out: Path) -> None:
    torch.set_num_threads(1)
    assert dd.init_from_env(), "not started by torchrun"
    r, w = dd.rank(), dd.world_size()
    result = {"rank": r, "world_size": w, "backend": torch.distributed.get_backend()}
    result.update(_linear_check(r, w))
    torch.save(data_term_gradient(*data_term_setup(), batch_size=2), out / f"data_grad{r}.pt")

    torch.manual_seed(10 + r)  # different networks on every rank: fit must start from rank 0's
    model = RGNP.from_family(
        NonlinearPoisson1D(), hidden=(24, 24), n_freqs=8, gicnet=GIC, batch_size=4, n_points=16, dtype=torch.float32
    )
    own_losses: list[float] = []
    loss = model.loss

    def recording_loss(*args):
        value = loss(*args)
        own_losses.append(float(value.detach()))
        return value

    model.loss = recording_loss
    model.fit(STEPS, lr=3e-3, seed=0, progress=False)
    result["history"] = [float(v) for v in model.fit_history]
    result["own_first_loss"] = own_losses[0]
    save = torch.save
    writes = []

    def counting_save(obj, path, *a, **k):
        writes.append(str(path))
        return save(obj, path, *a, **k)

    torch.save = counting_save
    try:
        model.save(out / "model.pt")  # every rank calls it; rank 0 writes, all wait for it
    finally:
        torch.save = save
    result["writes"] = len(writes)
    back = RGNP.load(out / "model.pt")
    z, w_ = model.sample_params(3)
    x = model.sample_grid(3, 7)
    result["loaded_matches"] = bool(torch.equal(back.predict(z, w_, x), model.predict(z, w_, x)))
    save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"state{r}.pt")
    result["refused"] = _refusals(model, r)
    (out / f"rank{r}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def _small(r: int) -> RGNP:
    torch.manual_seed(20 + r)  # a different initialisation on every rank: fit starts from rank 0's
    return RGNP.from_family(
        NonlinearPoisson1D(), hidden=(8,), n_freqs=4, gicnet=GIC, batch_size=2, n_points=6, dtype=torch.float64
    )


def stop_main(out: Path) -> None:
    """``ddp_worker.py OUT stop``: callbacks that stop or raise on rank 1 only. Writes ``OUT/stop{r}.json`` and
    ``OUT/stop_state{r}.pt`` (after the stop), ``OUT/ref_state{r}.pt`` (``fit(steps=STOP)`` without a callback)."""
    torch.set_num_threads(1)
    assert dd.init_from_env(timeout_s=60.0), "not started by torchrun"  # a rank left waiting fails within a minute
    r = dd.rank()
    result: dict = {"rank": r}
    stop_at, seen = 4, []

    def stop_on_rank_1(step, loss):  # decides from this rank's own state: only rank 1 asks to stop
        seen.append(step)
        if r == 1 and step == stop_at:
            raise StopIteration

    model = _small(r).fit(10, lr=1e-2, seed=3, progress=False, callback=stop_on_rank_1)
    result.update(history=list(model.fit_history), stopped=model.fit_result_.stopped, seen=seen)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"stop_state{r}.pt")
    ref = _small(r).fit(stop_at, lr=1e-2, seed=3, progress=False)  # the ranks still in step: the same collectives
    result["ref_history"] = list(ref.fit_history)
    torch.save({k: v.detach().clone() for k, v in ref.state_dict().items()}, out / f"ref_state{r}.pt")

    def raise_on_rank_1(step, loss):
        if r == 1 and step == 2:
            raise KeyError("rank 1's callback fails")

    before = {k: v.clone() for k, v in ref.state_dict().items()}
    try:
        ref.fit(10, lr=1e-2, seed=3, progress=False, callback=raise_on_rank_1)
        result["raised"] = None
    except (KeyError, RuntimeError) as err:
        result["raised"] = f"{type(err).__name__}: {err}"
    result["unchanged"] = all(torch.equal(before[k], v) for k, v in ref.state_dict().items())
    ref.fit(1, lr=1e-2, seed=4, progress=False)
    result["matched_loss"] = float(ref.fit_history[-1])  # still in step afterwards
    (out / f"stop{r}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


class _FailingBackward(torch.autograd.Function):
    """The identity, whose backward pass raises ``ArithmeticError``."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise ArithmeticError("rank 1's residual fails in its backward pass")


def _fail_on(model: RGNP, r: int, rank: int, step: int, how: str) -> dict:
    """Make ``model``'s residual (the user's PDE code) fail on rank ``rank`` at training step ``step`` of its next
    fit (counted by its loss evaluations): return NaN everywhere (``how="nan"``), raise in its backward pass
    (``how="backward"``) or raise ``KeyboardInterrupt`` (``how="interrupt"``). The returned dict's ``"at"`` is when
    it first did (``time.monotonic()``), ``"steps"`` the steps begun, ``"restore"`` undoes it."""
    seen: dict = {"steps": 0, "at": None}
    residual, loss = model.residual_fn, model.loss

    def counting_loss(*args):
        seen["steps"] += 1
        return loss(*args)

    def failing_residual(u, x, z, w):
        out = residual(u, x, z, w)
        if r == rank and seen["steps"] == step:
            seen["at"] = seen["at"] or time.monotonic()
            if how == "interrupt":
                raise KeyboardInterrupt
            return out * float("nan") if how == "nan" else _FailingBackward.apply(out)
        return out

    def restore():
        del model.loss
        model.residual_fn = residual

    model.loss, model.residual_fn, seen["restore"] = counting_loss, failing_residual, restore
    return seen


def _failing_fit(model: RGNP, r: int, how: str, step: int, seed: int) -> dict:
    """``model.fit(10)`` with rank 1 failing at ``step`` (:func:`_fail_on`): the exception, the steps begun, the
    seconds from rank 1's failure to the end of the fit on this rank, whether the model was left as it was."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history = list(model.fit_history)
    seen = _fail_on(model, r, rank=1, step=step, how=how)
    start = time.monotonic()
    try:
        model.fit(10, lr=1e-2, seed=seed, progress=False)
        out: dict = {"raised": None}
    except (ValueError, RuntimeError, ArithmeticError, KeyboardInterrupt) as err:
        out = {"raised": f"{type(err).__name__}: {err}"}
    end = time.monotonic()
    seen["restore"]()
    times = torch.tensor([start, end, seen["at"] or 0.0], dtype=torch.float64)  # CLOCK_MONOTONIC: one machine
    all_times = [torch.zeros_like(times) for _ in range(dd.world_size())]
    torch.distributed.all_gather(all_times, times)
    out.update(steps_begun=seen["steps"], fit_s=end - start, after_failure_s=end - float(all_times[1][2]))
    out["unchanged"] = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    out["history_unchanged"] = list(model.fit_history) == history
    return out


def fail_main(out: Path) -> None:
    """``ddp_worker.py OUT fail``: rank 1's loss fails (its residual returns NaN) at step 3 of a fit of 10 steps,
    started from the state after ``fit(steps=2)``; then rank 1's residual raises in its backward pass at step 2 of
    another, and ``KeyboardInterrupt`` at step 1 of a third. Writes ``OUT/fail{r}.json`` (for each: the exception,
    the seconds from the failure on rank 1 to the end of the fit on this rank, whether the model was left as it was;
    the loss of a matched fit afterwards) and ``OUT/fail_state{r}.pt`` (after the failures), ``OUT/fit2_state{r}.pt``
    (a fresh ``fit(steps=2)``)."""
    torch.set_num_threads(1)
    # a rank left waiting in a collective fails after 30 s: the old code raised then (and mismatched what follows)
    assert dd.init_from_env(timeout_s=30.0), "not started by torchrun"
    r = dd.rank()
    model = _small(r).fit(2, lr=1e-2, seed=3, progress=False)
    result: dict = {"rank": r, "nan": _failing_fit(model, r, "nan", step=3, seed=5)}
    result["backward"] = _failing_fit(model, r, "backward", step=2, seed=6)
    result["interrupt"] = _failing_fit(model, r, "interrupt", step=1, seed=7)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"fail_state{r}.pt")
    ref = _small(r).fit(2, lr=1e-2, seed=3, progress=False)
    torch.save({k: v.detach().clone() for k, v in ref.state_dict().items()}, out / f"fit2_state{r}.pt")
    model.fit(1, lr=1e-2, seed=4, progress=False)
    result["matched_loss"] = float(model.fit_history[-1])  # still in step afterwards
    (out / f"fail{r}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def _engine_case(r: int, how: str) -> dict:
    """One data-parallel ``fit`` of the engine (a callable loss through ``DataParallel.mean_of``) where rank 1's loss
    raises, at its evaluation ``at`` (3 with L-BFGS-B, 2 with Adam), an error that ``fit`` handles in one process:
    a linear_operator ``NotPSDError`` (``how="jitter"``: retried with more jitter), a ``FloatingPointError`` with
    ``restarts=1`` (``"restart"``: the next attempt) or a ``NanError`` at an L-BFGS-B trial point (``"lbfgs"``: an
    infinite loss, the line search steps back). The exception, the loss evaluations on this rank, and a matched
    all-reduce afterwards (the ranks in step: 1 + 2 = 3)."""
    import gpytorch
    from linear_operator.utils.errors import NanError, NotPSDError

    from gpgeom.engine.fitting import fit

    torch.manual_seed(0)
    module = gpytorch.kernels.RBFKernel()  # a constrained parameter: restarts can redraw it
    evals = [0]
    error = {"jitter": NotPSDError, "restart": FloatingPointError, "lbfgs": NanError}[how]
    at = 3 if how == "lbfgs" else 2  # L-BFGS-B: a point of the line search (evaluation 1: the start, 2: the probe)

    def loss():
        evals[0] += 1
        if r == 1 and evals[0] == at:
            raise error(f"rank 1's loss fails ({how})")
        return ((module.lengthscale - 0.3 * (r + 1)) ** 2).sum()

    options = {"optimizer": "lbfgs"} if how == "lbfgs" else {"optimizer": "adam", "epochs": 5, "lr": 0.1}
    try:
        with dd.data_parallel(module, 0) as dp:
            fit(lambda: dp.mean_of(loss, "loss"), module=module, progress=False, seed=0,
                restarts=1 if how == "restart" else 0, **options)  # fmt: skip
        out: dict = {"raised": None}
    except (RuntimeError, ArithmeticError, NotPSDError, NanError) as err:
        out = {"raised": f"{type(err).__name__}: {err}"}
    out["evals"], out["at"] = evals[0], at
    check = torch.tensor([float(r + 1)])
    torch.distributed.all_reduce(check)
    out["after"] = float(check)
    return out


def engine_main(out: Path) -> None:
    """``ddp_worker.py OUT engine``: the engine's ``fit`` under ``data_parallel`` when rank 1's loss raises an error
    ``fit`` handles (:func:`_engine_case`); then a fit ended by ``StopIteration`` on every rank at evaluation 3,
    after which rank 0 raises ``OSError`` in the block (the stopped step's loss got no backward pass: no rank is in
    a gradient all-reduce). Writes ``OUT/engine{r}.json``."""
    torch.set_num_threads(1)
    assert dd.init_from_env(timeout_s=30.0), "not started by torchrun"  # a rank left waiting fails after 30 s
    r = dd.rank()
    result: dict = {how: _engine_case(r, how) for how in ("jitter", "restart", "lbfgs")}
    from gpgeom.engine.fitting import fit

    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    evals = [0]

    def stopping_loss(dp):
        value = dp.mean_of(lambda: ((lin(x) - y) ** 2).mean())
        evals[0] += 1
        if evals[0] == 3:
            raise StopIteration(value)
        return value

    start = time.monotonic()
    try:
        with dd.data_parallel(lin, 0) as dp:
            fit(lambda: stopping_loss(dp), module=lin, optimizer="adam", epochs=10, progress=False, seed=0)
            if r == 0:
                raise OSError("rank 0 cannot write its file")
        stop: dict = {"raised": None}
    except OSError as err:
        stop = {"raised": f"{type(err).__name__}: {err}"}
    stop["seconds"] = time.monotonic() - start
    check = torch.tensor([float(r + 1)])
    torch.distributed.all_reduce(check)
    stop["after"] = float(check)
    result["stop"] = stop
    (out / f"engine{r}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2:] == ["engine"]:
        engine_main(Path(sys.argv[1]))
    elif sys.argv[2:] == ["stop"]:
        stop_main(Path(sys.argv[1]))
    elif sys.argv[2:] == ["fail"]:
        fail_main(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]))
