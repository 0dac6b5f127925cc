r"""Fits in several threads of one process (``docs/contract.md``, *Threads*).

``warnings.catch_warnings()`` is not thread-safe before Python 3.14 (it swaps the process's ``warnings.filters``
and puts back the list it saw on entry), and GPyTorch's settings blocks are process-wide (each puts back on exit
the value that was in force when it was made). Two fits whose blocks overlap, A entering first and leaving first,
left B's saved state (A's) for the process. The tests force that interleaving with events (bounded waits, never
timing luck) and check the filters, the settings, a warning of this thread and the fits' results.
"""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

import gpytorch
import pytest
import torch
from linear_operator.utils.warnings import NumericalWarning

DT = torch.float64
WAIT = 30.0


def _settings() -> tuple[Any, ...]:
    st = gpytorch.settings
    return (
        st.max_cholesky_size.value(),
        st.cholesky_jitter.value(torch.float32),
        st.cholesky_jitter.value(torch.float64),
        st.cholesky_max_tries.value(),
    )


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(25, 2, dtype=DT, generator=g)
    return X, torch.sin(5 * X[:, :1]) + 0.05 * torch.randn(25, 1, dtype=DT, generator=g)


class Overlap:
    r"""Fits A and B in threads, each held at :meth:`gate` (called inside its fit attempt): B starts after A is held,
    this thread looks (``during``: the settings, and a warning of its own with GPyTorch's jitter message) while both
    are held, then A finishes before B goes on. Bounded waits; :meth:`run` returns what the fits returned."""

    def __init__(self) -> None:
        self.a_in, self.b_in, self.warned, self.a_done = (threading.Event() for _ in range(4))
        self.held: set[str] = set()
        self.waits: list[bool] = []

    def gate(self) -> None:
        who = threading.current_thread().name
        if who in ("A", "B") and who not in self.held:  # the first time in each fit
            self.held.add(who)
            (self.a_in if who == "A" else self.b_in).set()
            self.waits.append((self.warned if who == "A" else self.a_done).wait(timeout=WAIT))

    def run(self, fit: Any) -> dict[str, Any]:
        out, errors = {}, []

        def work(who: str) -> None:
            try:
                if who == "B":
                    assert self.a_in.wait(timeout=WAIT)
                out[who] = fit(who)
            except BaseException as err:  # noqa: BLE001 - reported below
                errors.append(err)

        before, rng = _settings(), torch.get_rng_state()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.filterwarnings("error", message="a filter of this thread")
            filters = list(warnings.filters)
            threads = {w: threading.Thread(target=work, args=(w,), name=w) for w in "AB"}
            for t in threads.values():
                t.start()
            try:
                assert self.b_in.wait(timeout=WAIT) and self.a_in.is_set()
                during = _settings()  # both fits inside their attempts
                warnings.warn("A not p.d., added jitter of 1.0e-06 to the diagonal", NumericalWarning, stacklevel=1)
            finally:
                self.warned.set()
                threads["A"].join(timeout=WAIT)
                self.a_done.set()
                threads["B"].join(timeout=WAIT)
            after = list(warnings.filters)
        assert not errors, errors
        assert self.waits == [True, True]
        assert during == before  # the fits' settings before (ExactGPModel: max_cholesky_size 1000, max_tries 1)
        assert _settings() == before
        assert torch.equal(torch.get_rng_state(), rng)
        assert after == filters  # an "ignore A not p.d." filter more before
        assert len([w for w in caught if "1.0e-06" in str(w.message)]) == 1  # dropped before
        return out


@pytest.mark.parametrize("round_", range(3))
def test_overlapping_exact_gp_fits_leave_filters_settings_and_other_threads_warnings(monkeypatch, round_):
    r"""Two ExactGPModel fits held at their first factorisation (:class:`Overlap`). Before: the attempts silenced
    GPyTorch's jitter warning in ``warnings.catch_warnings()``, set GPyTorch's jitter settings and seeded torch's
    global stream, so while they ran this thread's own warning with that message was dropped and the settings here
    were A's (``cholesky_max_tries`` 1, not 6; the model's ``max_cholesky_size`` 1000, not 4096), and after both an
    "ignore" filter of that message stayed in ``warnings.filters``, with A's settings and a seeded stream. Now the
    fits set no filter, setting or stream that this thread sees, and give their serial results."""
    import gpgeom.engine.exact_mll as exact_mll
    from gpgeom import ExactGPModel

    data = {w: _data(i) for i, w in enumerate("AB")}
    Xt = torch.linspace(0, 1, 7, dtype=DT)[:, None].expand(7, 2).contiguous()

    def fit(who: str) -> Any:
        model = ExactGPModel(*data[who], max_cholesky_size=1000).fit(max_iter=15, restarts=1, seed=0, progress=False)
        return model.predict(Xt, return_std=True)

    ref = {w: fit(w) for w in "AB"}
    overlap = Overlap()
    factor = exact_mll.psd_safe_cholesky

    def gated(K: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        overlap.gate()
        return factor(K, *args, **kwargs)

    monkeypatch.setattr(exact_mll, "psd_safe_cholesky", gated)
    out = overlap.run(fit)
    for w in "AB":
        assert all(torch.equal(a, b) for a, b in zip(out[w], ref[w]))


def test_overlapping_funbat_fits_leave_the_settings(monkeypatch):
    r"""Two FunBaT fits held in their first hyperparameter step's loss (:class:`Overlap`): its engine fit set
    GPyTorch's jitter settings for the process, which this thread saw while both ran and which stayed after both
    (``cholesky_max_tries`` 1, not 6; float32 jitter 1e-8, not 1e-6). Its losses factorise with ``torch.linalg`` and
    draw nothing: now nothing is set, and the fits give their serial results."""
    import gpgeom.models.funbat.hyper as hyper
    from gpgeom import FunBaT
    from gpgeom.datasets.tensors import make_synthetic_tensor

    data = {w: make_synthetic_tensor(60, 6, rank=2, n_coords=6, seed=13 + i) for i, w in enumerate("AB")}

    def fit(who: str) -> Any:
        d = data[who]
        model = FunBaT(2, max_sweeps=3, hyper_method="marginal", n_restarts=0, seed=0)
        return model.fit(d.X_train.numpy(), d.y_train.clone(), progress=False).predict(d.X_test, return_std=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = {w: fit(w) for w in "AB"}
    overlap = Overlap()
    engine_fit = hyper.engine_fit

    def gated_fit(loss: Any, **kwargs: Any) -> Any:
        def gated() -> torch.Tensor:
            overlap.gate()
            return loss()

        gated.__dict__.update(vars(loss))  # its marks (thread_isolated)
        return engine_fit(gated, **kwargs)

    monkeypatch.setattr(hyper, "engine_fit", gated_fit)
    out = overlap.run(fit)
    for w in "AB":
        assert all(torch.equal(a, b) for a, b in zip(out[w], ref[w]))


def test_quiet_overlapping_blocks():
    r""":func:`gpgeom._warnings.quiet` in threads A and B, A entering first and leaving first, while this thread
    adds a filter of its own: the message is dropped in A and B only (this thread's is shown, and A's other
    warnings), the filters end as this thread left them (its own filter kept, no entry of ``quiet``), also after a
    ``catch_warnings`` block here that overlapped."""
    from gpgeom._warnings import quiet

    steps = {k: threading.Event() for k in ("a_in", "b_in", "added", "a_out")}
    shown: list[str] = []

    def run(who: str) -> None:
        if who == "B":
            assert steps["a_in"].wait(timeout=WAIT)
        with quiet("known message", UserWarning):
            warnings.warn(f"known message from {who}", UserWarning, stacklevel=1)
            steps["a_in" if who == "A" else "b_in"].set()
            assert steps["added" if who == "A" else "a_out"].wait(timeout=WAIT)
            warnings.warn(f"other message from {who}", UserWarning, stacklevel=1)
        if who == "A":
            steps["a_out"].set()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        threads = [threading.Thread(target=run, args=(w,), name=w) for w in "AB"]
        for t in threads:
            t.start()
        assert steps["b_in"].wait(timeout=WAIT)
        warnings.warn("known message from here", UserWarning, stacklevel=1)
        warnings.filterwarnings("ignore", message="added meanwhile")
        mine = warnings.filters[0]
        steps["added"].set()
        for t in threads:
            t.join(timeout=WAIT)
        shown = sorted(str(w.message) for w in caught)
        assert warnings.filters == [mine, *filters]
    assert shown == ["known message from here", "other message from A", "other message from B"]


def test_quiet_block_ending_while_another_thread_scans_the_filters():
    r"""Thread B's :func:`gpgeom._warnings.quiet` block ends while this thread is in the middle of scanning
    ``warnings.filters`` for a warning of its own (forced: a trace function of this thread waits there for B's block
    to end, at the first Python frame that the scan calls). This thread's "error" filter, the next entry after the
    block's, still raises the warning and the filters end as this thread left them. Before, the entry's ``match``
    was a Python method: B's block ended inside it, the entry was removed in place, the scan went on at the next
    index and skipped this thread's filter; the warning fell to the "ignore" filter behind it (in free runs, 16 of
    530,000 such warnings)."""
    from gpgeom._warnings import quiet

    steps = {k: threading.Event() for k in ("in", "end", "ended")}

    def run() -> None:
        with quiet("known message", UserWarning):
            steps["in"].set()
            steps["end"].wait(timeout=WAIT)
        steps["ended"].set()

    def tracer(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and not steps["end"].is_set():  # a Python frame called from inside the scan
            steps["end"].set()
            steps["ended"].wait(timeout=WAIT)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.filterwarnings("error", message="this thread's warning", category=UserWarning)
        filters = list(warnings.filters)
        thread = threading.Thread(target=run, name="B")
        thread.start()
        raised = False
        try:
            assert steps["in"].wait(timeout=WAIT)
            sys.settrace(tracer)
            try:
                warnings.warn("this thread's warning", UserWarning, stacklevel=1)
            except UserWarning:
                raised = True
            finally:
                sys.settrace(None)
        finally:
            steps["end"].set()
            thread.join(timeout=WAIT)
        assert raised
        assert warnings.filters == filters


def test_quiet_inside_a_recording_block_while_another_thread_is_inside_one():
    r"""Thread B is inside a :func:`gpgeom._warnings.quiet` block (as a fit's attempt is) while this thread records
    warnings as ``pytest.warns`` does (``catch_warnings(record=True)`` and an "always" filter) and enters a block of
    its own: the block's message is dropped here, as with B not running (the truth: the same steps alone), and the
    filters end as this thread left them. Before, the entry was already in the list that ``catch_warnings`` copied,
    behind the "always" filter, and was left there: the message was recorded (1 warning, 0 without B; also a jittered
    ExactGPModel's posterior recorded GPyTorch's jitter warning while another model fitted in a thread)."""
    from gpgeom._warnings import quiet

    def record() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet("known message", UserWarning):
                warnings.warn("known message here", UserWarning, stacklevel=1)
            warnings.warn("other message here", UserWarning, stacklevel=1)
        return [str(w.message) for w in caught]

    alone = record()
    steps = {k: threading.Event() for k in ("in", "end")}

    def run() -> None:
        with quiet("known message", UserWarning):
            steps["in"].set()
            steps["end"].wait(timeout=WAIT)

    filters = list(warnings.filters)
    thread = threading.Thread(target=run, name="B")
    thread.start()
    try:
        assert steps["in"].wait(timeout=WAIT)
        beside = record()
    finally:
        steps["end"].set()
        thread.join(timeout=WAIT)
    assert alone == ["other message here"]
    assert beside == alone
    assert warnings.filters == filters


def test_quiet_block_opened_in_one_thread_and_closed_in_another():
    r"""A :func:`gpgeom._warnings.quiet` block of a generator that this thread opens and thread B closes (a generator
    finished or collected there): after it, this thread's message is shown again (as before the block: the truth)
    and ``warnings.filters`` is as before. The first thread-local form of the patterns (commit 96da79c) looked for
    the pattern among B's at the end of the block and raised ``ValueError`` there, which left the block counted open
    and its entry in the filters for good."""
    from gpgeom._warnings import quiet

    def blocks() -> Any:
        with quiet("known message", UserWarning):
            yield

    errors: list[BaseException] = []

    def close(gen: Any) -> None:
        try:
            gen.close()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        warnings.warn("known message before", UserWarning, stacklevel=1)
        gen = blocks()
        next(gen)
        warnings.warn("known message inside", UserWarning, stacklevel=1)
        thread = threading.Thread(target=close, args=(gen,), name="B")
        thread.start()
        thread.join(timeout=WAIT)
        warnings.warn("known message after", UserWarning, stacklevel=1)
        after = list(warnings.filters)
    assert not errors, errors
    assert [str(w.message) for w in caught] == ["known message before", "known message after"]
    assert after == filters


def test_a_fit_without_restarts_does_not_wait_for_another_threads_attempt():
    r"""An ``ExactGPModel`` fit of the closed-form loss without restarts (its attempt 0 draws nothing and sets
    nothing process-wide) while another thread's engine item that is not thread-safe runs (as a thread-pool attempt of
    another fit, which holds the engine's state lock for its whole run): the fit ends while the item still runs, with
    its serial result (the truth). Before, attempt 0 took the lock too and waited for the item (a fit of 0.07 s alone
    took 2.8 s beside an item of 3 s)."""
    from concurrent.futures import ThreadPoolExecutor

    from gpgeom import ExactGPModel
    from gpgeom.engine.parallel import map_items

    X, Y = _data(0)
    ref = ExactGPModel(X, Y).fit(max_iter=15, progress=False)
    started, release = threading.Event(), threading.Event()

    def item(_: Any, i: int) -> int:
        started.set()
        release.wait(timeout=WAIT)
        return i

    pool = ThreadPoolExecutor(1)
    runner = threading.Thread(target=map_items, args=(pool, item, [0]), kwargs={"thread_safe": False})
    done: dict[str, Any] = {}
    fitter = threading.Thread(target=lambda: done.update(m=ExactGPModel(X, Y).fit(max_iter=15, progress=False)))
    runner.start()
    try:
        assert started.wait(timeout=WAIT)
        fitter.start()
        fitter.join(timeout=5.0)
        ended_beside = not fitter.is_alive()
    finally:
        release.set()
        runner.join(timeout=WAIT)
        if fitter.ident is not None:  # started
            fitter.join(timeout=WAIT)
        pool.shutdown()
    assert ended_beside
    for (name, a), (_, b) in zip(done["m"].state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), name


def test_quiet_with_context_aware_warnings_is_a_catch_warnings_block(monkeypatch):
    r"""Where ``catch_warnings`` is per context (Python 3.14+, ``-X context_aware_warnings``), ``quiet`` is one block
    of it: the known message is dropped, another is shown, and the filters are as before afterwards."""
    from gpgeom import _warnings

    monkeypatch.setattr(_warnings, "_CONTEXT_AWARE", True)
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with _warnings.quiet("known message", UserWarning):
            warnings.warn("known message here", UserWarning, stacklevel=1)
            warnings.warn("another message", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another message"]
    assert warnings.filters == before
