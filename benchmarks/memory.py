"""Memory benchmark of the exact GP (``ExactGPModel``): peak resident memory and time of the operations that used
to hold the largest tensors.

* ``fit``: L-BFGS-B on the closed-form-gradient exact MLL, ``n = 2,000`` points, ``m = 2`` outputs, ``d = 3``;
* ``posterior``: the joint ``posterior(X)`` over ``q = 2,000`` points (``n = 2,000``, ``m = 2``) with its mean,
  marginal variances and dense ``(q m) x (q m)`` covariance;
* ``predict``: ``predict(X, return_std=True)`` of ``N = 100,000`` points (``n = 2,000``, ``m = 2``), default memory
  budget;
* ``mean``: mean-only ``predict`` of ``q = 3,000`` points at ``n = 1,000`` and ``6,000`` (``m = 1``), first call
  (which factorises the training covariance) and second call (which may reuse it), against the bare product
  ``K(X*, X) alpha`` with ``alpha`` precomputed.

Every operation runs in its own interpreter; the peak resident set size (RSS) of the operation is the kernel's
high-water mark after resetting it (``/proc/self/clear_refs``) just before the operation, minus the RSS at that
moment; the total peak (including the ~330 MB of the imported libraries) is printed too. CPU time
(``time.process_time``) is printed next to the wall time: on a loaded machine compare ratios from one run.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--quick] [--before DIR]

``--before DIR`` runs every operation a second time with the ``gpgeom`` package found in ``DIR`` (for example
the last commit, unpacked without touching the working tree: ``mkdir /tmp/old && git archive HEAD gpgeom | tar -x
-C /tmp/old``) and prints both columns with their ratios. The table is written to
``benchmarks/results/memory.md`` (``memory_quick.md`` for ``--quick``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: The operations, each run in a fresh interpreter: (name, keyword arguments).
FULL = [
    ("fit", {"n": 2000, "m": 2, "max_iter": 30}),
    ("posterior", {"n": 2000, "m": 2, "q": 2000}),
    ("predict", {"n": 2000, "m": 2, "q": 100_000}),
    ("predict", {"n": 2000, "m": 2, "q": 100_000, "max_memory": "128MiB"}),
    ("mean", {"n": 1000, "m": 1, "q": 3000}),
    ("mean", {"n": 6000, "m": 1, "q": 3000}),
]
QUICK = [
    ("fit", {"n": 500, "m": 2, "max_iter": 5}),
    ("posterior", {"n": 500, "m": 2, "q": 500}),
    ("predict", {"n": 500, "m": 2, "q": 10_000}),
    ("predict", {"n": 500, "m": 2, "q": 10_000, "max_memory": "16MiB"}),
    ("mean", {"n": 500, "m": 1, "q": 1000}),
]


# ---------------------------------------------------------------------------------------------------------------
# the child: one operation, one JSON line on stdout


def _measure(fn):
    r"""``(result, wall s, cpu s, peak RSS of fn above the RSS at its start MB, total peak MB)``."""
    import gc

    from _common import peak_rss_mib, reset_peak_rss, status_mib

    gc.collect()
    reset = reset_peak_rss()
    base = status_mib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = peak_rss_mib()
    return out, wall, cpu, (peak - base if reset else float("nan")), peak


def _model(n: int, m: int, d: int = 3, fitted_hypers: bool = True):
    import torch

    from gpgeom.botorch.exact_gp import ExactGPModel

    g = torch.Generator().manual_seed(n + m)
    X = torch.rand(n, d, generator=g, dtype=torch.float64)
    cols = [torch.sin(6.0 * X[:, 0] + k) + (k + 1) * X[:, 1:].sum(-1) / d for k in range(m)]
    Y = torch.stack(cols, -1) + 0.05 * torch.randn(n, m, generator=g, dtype=torch.float64)
    model = ExactGPModel(X, Y, max_cholesky_size=max(4096, n))
    if fitted_hypers:  # typical fitted values, set by hand: prediction cost does not depend on them
        model.covar_module.base_kernel.initialize(lengthscale=0.3)
        model.covar_module.initialize(outputscale=1.0)
        model.likelihood.initialize(noise=2.5e-3)
    return model.eval(), g


def _child(op: str, kw: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    n, m = kw["n"], kw["m"]
    rec: dict = {"op": op, **kw, "threads": torch.get_num_threads()}
    if op == "fit":
        model, _ = _model(n, m, fitted_hypers=False)
        model.train()
        _, wall, cpu, peak, total = _measure(
            lambda: model.fit(restarts=0, max_iter=kw["max_iter"], seed=0, progress=False)
        )
        rec.update(wall=wall, cpu=cpu, peak=peak, total=total, loss=float(model.fit_result_.loss))
        return rec
    model, g = _model(n, m)
    Xq = torch.rand(kw["q"], 3, generator=g, dtype=torch.float64)
    if op == "posterior":
        marks = {}

        from _common import peak_rss_mib

        def joint():
            marks["start"] = (time.perf_counter(), time.process_time())
            post = model.posterior(Xq)
            value = post.mean.sum() + post.variance.sum()
            marks["moments"] = (peak_rss_mib(), time.perf_counter(), time.process_time())
            return value + post.distribution.covariance_matrix.sum()

        _, wall, cpu, peak, total = _measure(joint)
        (t0, c0), (p1, t1, c1) = marks["start"], marks["moments"]
        rec.update(wall=wall, cpu=cpu, peak=peak, total=total)
        rec.update(peak_moments=p1 - (total - peak), total_moments=p1, wall_moments=t1 - t0, cpu_moments=c1 - c0)
    elif op == "predict":
        kwargs = {}
        if kw.get("max_memory") is not None:
            if "max_memory" not in inspect.signature(model.predict).parameters:
                rec.update(wall=None, cpu=None, peak=None, total=None)
                return rec
            kwargs["max_memory"] = kw["max_memory"]
        _, wall, cpu, peak, total = _measure(lambda: model.predict(Xq, return_std=True, **kwargs))
        rec.update(wall=wall, cpu=cpu, peak=peak, total=total)
    elif op == "mean":
        _, wall, cpu, peak, total = _measure(lambda: model.predict(Xq))
        _, wall2, cpu2, _, _ = _measure(lambda: model.predict(Xq))
        with torch.no_grad():  # the reference: K(X*, X) alpha with alpha known
            Xtr = model.train_inputs[0]
            K = model.likelihood(model.forward(Xtr), Xtr).covariance_matrix
            alpha = torch.cholesky_solve((model.train_targets - model.mean_module(Xtr)).unsqueeze(-1),
                                         torch.linalg.cholesky(K))  # fmt: skip
            del K
            Xt = model.transform_inputs(Xq)
            _, wall_ref, cpu_ref, _, _ = _measure(lambda: model.covar_module(Xt, Xtr).to_dense() @ alpha)
        rec.update(wall=wall, cpu=cpu, peak=peak, total=total, wall_warm=wall2, cpu_warm=cpu2)
        rec.update(wall_ref=wall_ref, cpu_ref=cpu_ref)
    else:
        raise ValueError(op)
    return rec


# ---------------------------------------------------------------------------------------------------------------
# the parent: run every operation in a subprocess, print and write the table


def _run(op: str, kw: dict, root: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps([op, kw])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(HERE))
    if out.returncode != 0:
        raise RuntimeError(f"{op} {kw} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rows(op: str, kw: dict) -> list[tuple[str, str]]:
    r"""The table rows of an operation: (label, suffix of the record's keys)."""
    if op == "fit":
        return [(f"fit n={kw['n']} m={kw['m']} ({kw['max_iter']} L-BFGS-B iterations)", "")]
    if op == "posterior":
        what = f"joint posterior q={kw['q']} (n={kw['n']}, m={kw['m']})"
        return [(f"{what}: mean, variances", "_moments"), (f"{what}: + dense (q m)^2 covariance", "")]
    if op == "predict":
        budget = f", max_memory={kw['max_memory']}" if kw.get("max_memory") else ""
        return [(f"predict+std N={kw['q']:,} (n={kw['n']}, m={kw['m']}{budget})", "")]
    return [(f"mean-only predict q={kw['q']} n={kw['n']} (first call)", "")]


def operation_threads(results: dict[str, list[dict]]) -> str:
    r"""What the machine line adds: the torch threads of the operations, each run in its own interpreter with
    ``torch.set_num_threads(1)`` (the machine's "torch threads" is the parent's, which runs no operation)."""
    threads = sorted({rec.get("threads") for recs in results.values() for rec in recs} - {None})
    return "operations: each in its own interpreter, torch threads " + (
        ", ".join(map(str, threads)) if threads else "unknown"
    )


def _fmt(rec: dict, key: str, digits: str = ".0f") -> str:
    value = rec.get(key)
    return "n/a" if value is None else format(value, digits)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--before", type=Path, default=None, help="folder holding an older `gpgeom` package to compare")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        op, kw = json.loads(args.child)
        print(json.dumps(_child(op, kw)))
        return

    sys.path.insert(0, str(HERE))
    from _common import machine_info, markdown_table, report_name, write_report

    ops = QUICK if args.quick else FULL
    roots = [("after", REPO)] + ([("before", args.before.resolve())] if args.before is not None else [])
    results: dict[str, list[dict]] = {name: [] for name, _ in roots}
    for op, kw in ops:
        for name, root in roots:
            rec = _run(op, kw, root)
            results[name].append(rec)
            print(f"  {name:6s} {op} {kw}: {json.dumps(rec)}", flush=True)

    def times(rec: dict, suffix: str) -> str:
        wall, cpu = rec.get("wall" + suffix), rec.get("cpu" + suffix)
        return "n/a" if wall is None else f"{wall:.3g} / {cpu:.3g}"

    if args.before is None:
        header = ["operation", "peak RSS above start (MB)", "total peak RSS (MB)", "wall / CPU (s)"]
    else:
        header = ["operation", "peak RSS above start, before -> after (MB)", "total peak RSS, before -> after (MB)",
                  "wall / CPU before (s)", "wall / CPU after (s)", "peak ratio", "CPU ratio"]  # fmt: skip
    rows = []
    for i, (op, kw) in enumerate(ops):
        a = results["after"][i]
        for label, sfx in _rows(op, kw):
            peak, total = "peak" + sfx, "total" + sfx
            if args.before is None:
                rows.append([label, _fmt(a, peak), _fmt(a, total), times(a, sfx)])
                continue
            b = results["before"][i]
            ratio = "n/a" if b.get(peak) is None else f"{a[peak] / max(b[peak], 1e-9):.2f}"
            cpu_ratio = "n/a" if b.get("cpu" + sfx) is None else f"{a['cpu' + sfx] / b['cpu' + sfx]:.2f}"
            rows.append([
                label, f"{_fmt(b, peak)} -> {_fmt(a, peak)}", f"{_fmt(b, total)} -> {_fmt(a, total)}",
                times(b, sfx), times(a, sfx), ratio, cpu_ratio,
            ])  # fmt: skip
    lines = [
        "# Exact-GP memory and time",
        "",
        f"Machine: {machine_info('cpu')}; {operation_threads(results)}",
        "",
        "Peak RSS above start: the operation's own peak (the kernel's high-water mark reset just before it); total:"
        " with the ~330 MB of the imported libraries, the data and the model.",
        "",
        markdown_table(header, rows),
        "",
        "## Mean-only prediction against K(X*, X) alpha with alpha known: wall / CPU seconds",
        "",
    ]
    mean_header = ["n (code)", "q", "first call", "second call", "K* alpha", "second call / K* alpha (CPU)"]
    mean_rows = []
    for name, _ in roots:
        for (op, kw), rec in zip(ops, results[name]):
            if op == "mean":
                mean_rows.append([
                    f"{kw['n']} ({name})", kw["q"], times(rec, ""), times(rec, "_warm"), times(rec, "_ref"),
                    f"{rec['cpu_warm'] / rec['cpu_ref']:.2f}",
                ])  # fmt: skip
    lines += [markdown_table(mean_header, mean_rows), ""]
    fits = [f"{name}: {rec['loss']:.12g}" for name, _ in roots for (op, _k), rec in zip(ops, results[name])
            if op == "fit"]  # fmt: skip
    if fits:
        lines += [f"Final fit losses (the same objective: they must agree): {', '.join(fits)}", ""]
    write_report(report_name("memory", quick=args.quick), "\n".join(lines))


if __name__ == "__main__":
    main()
