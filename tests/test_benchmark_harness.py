"""The numbers the benchmark scripts report: medians, units, means over folds, counts, and which file a run writes
(``benchmarks/*.py``; the harness functions are called on tiny inputs, no benchmark is run but ``beijing_facts.py``,
which fits nothing and takes a second)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


def _load(name: str):
    r"""``benchmarks/<name>.py`` as a fresh module (the benchmarks' own folder on the path, as when run)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------------------------------
# funbat_continuous.py: the medians and the memory unit of its table
# ---------------------------------------------------------------------------------------------------------------------
def test_continuous_median_of_an_even_count_is_the_mean_of_the_middle_two():
    mod = _load("funbat_continuous")
    assert mod._median([1.0, 2.0, 3.0, 4.0]) == 2.5  # four sweeps with a hyper step: not the third sorted value
    assert mod._median([4.0, 1.0]) == 2.5
    assert mod._median([3.0, 1.0, 2.0]) == 2.0
    assert mod._median([]) != mod._median([])  # NaN


def test_continuous_memory_is_in_the_unit_of_the_other_tables():
    r"""VmRSS and ``ru_maxrss`` are KiB: MB = KiB / 1024 (``/ 1e3`` reported 2.4 % more than the RSS in MiB)."""
    import os

    mod = _load("funbat_continuous")
    with open("/proc/self/statm") as f:
        statm = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert mod._rss_mb() == pytest.approx(statm, rel=5e-3)
    assert mod._peak_rss_mb() >= mod._rss_mb() * (1 - 5e-3)


# ---------------------------------------------------------------------------------------------------------------------
# funbat.py --noise-calibration: the table is written from the run log
# ---------------------------------------------------------------------------------------------------------------------
def _record(data: str, noise: str, rmse: float, **kw) -> str:
    import json

    return json.dumps({"data": data, "noise": noise, "rmse": rmse, **kw})


def test_noise_calibration_log_keeps_the_last_run_of_each_fold():
    r"""A fold run twice (the log is appended to) counted twice in the mean over folds."""
    mod = _load("funbat")
    lines = [_record("beijing fold 0", "gaussian", 0.30), _record("beijing fold 1", "gaussian", 0.20), "",
             _record("beijing fold 0", "gaussian", 0.26), _record("beijing fold 0", "student_t", 0.25)]  # fmt: skip
    records = mod.latest_records(lines)
    assert [(r["data"], r["noise"], r["rmse"]) for r in records] == [
        ("beijing fold 1", "gaussian", 0.20),
        ("beijing fold 0", "gaussian", 0.26),
        ("beijing fold 0", "student_t", 0.25),
    ]


def test_noise_calibration_mean_over_folds_is_not_the_first_folds_value():
    mod = _load("funbat")
    assert mod.fold_summary([0.25]) == 0.25
    assert mod.fold_summary([0.2, 0.3]) == "0.2500 ± 0.0500"
    assert mod.fold_summary([2.1, 2.1]) == "2.1000 ± 0.0000"  # as before for finite values
    inf = float("inf")
    assert mod.fold_summary([inf, inf, inf]) == inf  # Gaussian noise: infinite degrees of freedom in every fold
    # one failed fold: the mean of the others, said so (was the first fold's 0.2 alone)
    assert mod.fold_summary([0.2, float("nan"), 0.4]) == "0.3000 ± 0.1000 (2 of 3 finite)"
    assert mod.fold_summary([float("nan"), float("nan")]) == "nan"


# ---------------------------------------------------------------------------------------------------------------------
# _folds.py: the header of the fold benchmarks (funbat_stations.py, funbat_day_offsets.py)
# ---------------------------------------------------------------------------------------------------------------------
class _SerialPool:
    def __init__(self, processes):
        _SerialPool.processes = processes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, items):
        return [fn(i) for i in items]


class _SerialContext:
    Pool = _SerialPool


def _fake_fold(fold: int) -> dict:
    return {"model": {"rmse": 0.1 * (fold + 1)}}


@pytest.mark.parametrize(("argv", "folds", "jobs", "name"), [
    (["--quick"], [0], 1, "f_quick"),  # one fold: one process, whatever --jobs says (default 2)
    (["--folds", "1", "3", "--jobs", "4"], [1, 3], 2, "f_quick"),
    (["--jobs", "3"], [0, 1, 2, 3, 4], 3, "f"),
])  # fmt: skip
def test_fold_benchmark_header_says_how_many_folds_ran_at_once(monkeypatch, tmp_path, argv, folds, jobs, name):
    mod = _load("_folds")
    written = {}

    def write_tables(rows, folds_, header, out_path, footer=()):
        written.update(rows=rows, folds=folds_, header=header, out_path=out_path)
        return 0

    monkeypatch.setattr(mod, "get_context", lambda method: _SerialContext)
    monkeypatch.setattr(mod, "write_tables", write_tables)
    monkeypatch.setattr(mod, "results_path", lambda n: tmp_path / f"{n}.md")
    mod.run_fold_benchmark(_fake_fold, argv=argv, description="", name="f", title="t", details="d")
    assert _SerialPool.processes == jobs
    assert written["folds"] == folds and written["out_path"] == tmp_path / f"{name}.md"
    assert written["rows"]["model"] == [{"rmse": pytest.approx(0.1 * (f + 1))} for f in folds]
    machine = written["header"][2]
    assert f"; {jobs} fold{'s' if jobs > 1 else ''} at a time, one process each;" in machine


# ---------------------------------------------------------------------------------------------------------------------
# funbat_stopping.py --trace / --trace-held: a trace of another fold never replaces the committed one
# ---------------------------------------------------------------------------------------------------------------------
def test_a_trace_of_another_fold_writes_its_quick_file(monkeypatch):
    monkeypatch.delenv("GPGEOM_BENCH_RESULTS", raising=False)
    mod = _load("funbat_stopping")
    results = BENCH / "results"
    committed = {"funbat_stopping_trace": mod.TRACE_FOLD, "funbat_stopping_trace_held": mod.HELD_FOLD}
    for name, fold in committed.items():
        assert f"fold {fold}" in (results / f"{name}.md").read_text().splitlines()[0]  # the committed table's fold
        assert mod.trace_path(name, fold, fold) == results / f"{name}.md"
        assert mod.trace_path(name, fold, fold, quick=True) == results / "local" / f"{name}_quick.md"
        other = (fold + 1) % 5
        assert mod.trace_path(name, other, fold) == results / "local" / f"{name}_quick.md"


# ---------------------------------------------------------------------------------------------------------------------
# scaling.py: a run without the GP or DDP section, or with other counts, is not the committed table
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "reduced"), [
    ([], False),
    (["--n", "400", "--gp-n", "200", "--restarts", "1", "--repeats", "3", "--ddp-steps", "200"], False),
    (["--quick"], True),
    (["--n", "100"], True),
    (["--gp-n", "50"], True),
    (["--skip-gp"], True),  # wrote scaling.md without its GP section
    (["--ddp-steps", "0"], True),  # ... without its DDP section
    (["--restarts", "3"], True),
    (["--repeats", "1"], True),
])  # fmt: skip
def test_scaling_reduced_runs_write_the_quick_table(argv, reduced):
    mod = _load("scaling")
    assert mod.is_reduced(mod.parse_args(argv)) is reduced


# ---------------------------------------------------------------------------------------------------------------------
# engine.py: the exact-GP fit times are of fits from the initial hyperparameters
# ---------------------------------------------------------------------------------------------------------------------
def test_engine_fit_times_every_fit_from_the_initial_hyperparameters(monkeypatch):
    r"""``timeit`` runs its function once to warm up; the fit's first attempt starts from the current parameters,
    so the timed fit started at the warm-up's optimum (a fraction of the fit the table's column names)."""
    import torch

    mod = _load("engine")
    starts = []

    class Recording(mod.ExactGPModel):
        def fit(self, *args, **kwargs):
            noise = float(self.likelihood.noise.detach())
            starts.append((self.fast_mll, noise, self.covar_module.base_kernel.lengthscale))
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(mod, "ExactGPModel", Recording)
    rows, calibration = mod.exact_fit_times([40], 3, 0, torch.device("cpu"), torch.float64)
    assert len(rows) == 1 and set(calibration) == {"n = 40"}
    for fast in (True, False):
        mine = [(noise, ls) for f, noise, ls in starts if f is fast]
        assert len(mine) == 2  # the warm-up and the timed fit
        assert mine[0][0] == mine[1][0] and torch.equal(mine[0][1], mine[1][1])


# ---------------------------------------------------------------------------------------------------------------------
# funbat_heteroscedastic.py: "lower than the defaults' on k of 5 folds" counts what the table prints
# ---------------------------------------------------------------------------------------------------------------------
def test_fold_counts_compare_the_printed_values():
    mod = _load("funbat_heteroscedastic")
    base = [0.26240, 0.26180, 0.25230, 0.24330, 0.24030]
    rows = [0.26238, 0.26100, 0.25230, 0.24332, 0.24040]  # fold 0: 0.2624 printed for both, a tie
    assert [f"{v:.4f}" for v in rows[:1]] == [f"{v:.4f}" for v in base[:1]]
    assert mod.lower_folds([0, 1, 2, 3, 4], rows, base) == [1]


# ---------------------------------------------------------------------------------------------------------------------
# memory.py: the threads line is the operations' (each runs in a child with one torch thread)
# ---------------------------------------------------------------------------------------------------------------------
def test_memory_report_gives_the_operations_threads(monkeypatch):
    import torch

    mod = _load("memory")
    before = torch.get_num_threads()
    try:
        rec = mod._child("mean", {"n": 40, "m": 1, "q": 10})
    finally:
        torch.set_num_threads(before)
    assert rec["threads"] == 1
    assert mod.operation_threads({"after": [rec], "before": [dict(rec)]}).endswith("torch threads 1")
    assert mod.operation_threads({"after": [{"op": "fit"}]}).endswith("torch threads unknown")  # an older record


# ---------------------------------------------------------------------------------------------------------------------
# trajectory.py section 7: the peak of the call itself, above the resident set at the call
# ---------------------------------------------------------------------------------------------------------------------
_BALLAST = """
import json, torch
big = torch.ones(300 * 2**20 // 8, dtype=torch.float64)  # an earlier peak of 300 MiB above the call's start
del big
out, base, peak = measure_call(lambda: torch.ones(80 * 2**20 // 8, dtype=torch.float64))
print(json.dumps({"base": base, "peak": peak, "out": out.numel() * 8 / 2**20}))
"""


def test_trajectory_memory_increase_is_the_calls_own():
    r"""The increase of a call that allocates 80 MiB after an earlier 300 MiB peak: about 80 MiB (the old baseline,
    the process's peak so far, gave 0 here, and 95 MiB for the committed 247 MiB output)."""
    import json
    import subprocess

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs (not Linux)")
    mod = _load("trajectory")
    out = subprocess.run([sys.executable, "-c", mod._PEAK_HELPERS + _BALLAST], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["peak"] != r["peak"]:
        pytest.skip("the high-water mark cannot be reset here")
    assert r["out"] == 80
    assert 75 <= r["peak"] - r["base"] <= 120


# ---------------------------------------------------------------------------------------------------------------------
# funbat_scale.py: "peak above data" is above the resident set after the data, not above the data's peak
# ---------------------------------------------------------------------------------------------------------------------
def test_funbat_scale_peak_above_data_counts_the_methods_whole_peak():
    import torch

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("no /proc/self/clear_refs (not Linux)")
    mod = _load("funbat_scale")
    ballast = torch.ones(300 * 2**20 // 8, dtype=torch.float64)  # the data's temporaries: an earlier peak
    ballast.add_(1.0)
    del ballast
    marks = mod._after_data()
    if not marks["reset"]:
        pytest.skip("the high-water mark cannot be reset here")
    work = torch.ones(80 * 2**20 // 8, dtype=torch.float64)  # the method's working memory
    mem = mod._memory(marks)
    del work
    assert 75 <= mem["above_mb"] <= 120  # was peak - peak so far = 0: the ballast's peak hid the method's
    assert mem["peak_mb"] >= marks["peak_data"] >= mem["data_mb"] + 250  # the process's peak keeps the data's


# ---------------------------------------------------------------------------------------------------------------------
# mmgp.py: a variant (other modes, plates, hyperparameters) without a --name of its own is not the committed table
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "quick"), [
    ({}, False),
    ({"old_default": True, "executor": "dask"}, False),  # the committed mmgp.md ran with --old-default
    ({"quick": True}, True),
    ({"n_modes_geometry": 16}, True),
    ({"n_modes_geometry": 16, "name": "mmgp_g16"}, False),  # a named variant: its own committed table
    ({"plate_options": "harmonic_amplitude=0.7"}, True),
    ({"hyperparameters": "per_field"}, True),
    ({"morphing": "rbf"}, True),
    ({"max_iter": 100}, True),
    ({"restarts": 0}, True),
])  # fmt: skip
def test_mmgp_variants_need_their_own_name(changes, quick):
    import argparse

    mod = _load("mmgp")
    args = argparse.Namespace(quick=False, name=None, old_default=False, executor="none", **mod.VARIANT_DEFAULTS)
    for key, value in changes.items():
        setattr(args, key, value)
    assert mod.report_quick(args) is quick


def test_mmgp_scores_leave_out_the_clamped_nodes_whatever_their_roundoff():
    """Clamped nodes (value 0) whose std is roundoff (exactly 0 before a geometry change, 1e-35-1e-11 after it) are
    left out of the field scores, so the NLPD does not follow the roundoff (about -40 per such node); others stay."""
    import numpy as np

    mod = _load("mmgp")
    sd = np.array([0.0, 1e-35, 4e-19, 1e-11, 1e-3, 0.02, 0.5])
    assert mod.scored_nodes(sd).tolist() == [False, False, False, False, True, True, True]
    rng = np.random.default_rng(0)
    sd_real = rng.uniform(0.01, 0.1, 500)
    y_real = rng.normal(0.0, sd_real)
    nlpd = []
    for clamped_sd in (0.0, 1e-18):  # the same clamped nodes, exact zero or roundoff std
        sd_all = np.r_[np.full(50, clamped_sd), sd_real]
        y_all, m_all = np.r_[np.zeros(50), y_real], np.r_[np.full(50, clamped_sd / 10), np.zeros(500)]
        keep = mod.scored_nodes(sd_all)
        nlpd.append(mod.metrics.nlpd(y_all[keep], m_all[keep], sd_all[keep]))
    assert nlpd[0] == nlpd[1]


# ---------------------------------------------------------------------------------------------------------------------
# rgnp.py: a paper-size run with other variants or budgets and no --report is not the committed paper table
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("changes", "quick"), [
    ({}, False),
    ({"jobs": 3, "device": "cuda"}, False),
    ({"paper_sizes": False}, True),
    ({"variants": "rgnp-diag"}, True),  # wrote rgnp_cpu_paper.md with one row
    ({"variants": "rgnp-lr-long", "report": "rgnp_cpu_paper_lowrank"}, False),  # a named run: its own table
    ({"long_steps": 500}, True),
    ({"seed": 1}, True),
    ({"lr": 1e-3}, True),
])  # fmt: skip
def test_rgnp_paper_variants_need_their_own_report(changes, quick):
    import argparse

    mod = _load("rgnp")
    args = argparse.Namespace(paper_sizes=True, report=None, jobs=1, device="cpu", **mod.PAPER_DEFAULTS)
    for key, value in changes.items():
        setattr(args, key, value)
    assert mod.report_quick(args) is quick


# ---------------------------------------------------------------------------------------------------------------------
# _common.write_benchmark_report: the head every report shares (title, machine line, facts), then the body
# ---------------------------------------------------------------------------------------------------------------------
def _common_writing_to(monkeypatch, folder: Path, machine: str):
    r"""``benchmarks/_common.py`` loaded with its reports sent to ``folder`` and ``machine_info`` giving ``machine``
    (with the device it is asked about, when ``machine`` has a ``{device}`` field)."""
    import torch

    monkeypatch.setenv("GPGEOM_BENCH_RESULTS", str(folder))
    mod = _load("_common")
    monkeypatch.setattr(
        mod, "machine_info", lambda device="cpu": machine.replace("{device}", str(torch.device(device)))
    )
    return mod


def test_benchmark_report_layout(monkeypatch, tmp_path, capsys):
    mod = _common_writing_to(monkeypatch, tmp_path, "M on {device}")
    body = ["## Table", "", "| a | b |\n|---|---|\n| 1 | 2 |", "", "after", "", ""]  # blank lines at the end dropped
    path = mod.write_benchmark_report(
        mod.report_name("x", quick=True), "A title", ["mode: quick", "data: d"], body, device="meta",
        machine_note="; peak 5 MB",
    )  # fmt: skip
    assert path == tmp_path / "x_quick.md"  # a quick run's own file, never the committed x.md
    expected = (
        "# A title\n\n- machine: M on meta; peak 5 MB\n- mode: quick\n- data: d\n\n"
        "## Table\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nafter\n"
    )
    assert path.read_text() == expected
    assert expected in capsys.readouterr().out  # printed as well
    # no facts, no body: the head alone, still one newline at the end
    path = mod.write_benchmark_report("y", "T", [], [])
    assert path == tmp_path / "y.md" and path.read_text() == "# T\n\n- machine: M on cpu\n"


def _parts(text: str) -> tuple[str, str, list[str], list[str]]:
    r"""A committed report cut into what :func:`write_benchmark_report` takes: title, machine, facts, body lines."""
    lines = text.split("\n")
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2].startswith("- machine: ")
    end = lines.index("", 3)
    return lines[0][2:], lines[2][len("- machine: ") :], [f[2:] for f in lines[3:end]], lines[end + 1 :]


@pytest.mark.parametrize("report", [
    "rvgp_frames", "trajectory_float32", "funbat_scale", "mmgp", "mmgp_bracket3d", "scaling", "rvgp", "rvgp_quick",
    "rgnp_cpu_paper", "rgnp_cpu_quick", "rgnp_calibration", "beijing_facts", "rvgp_span", "rgnp_inverse_points",
    "ddp_status",
])  # fmt: skip
def test_benchmark_report_rebuilds_the_committed_tables(monkeypatch, tmp_path, report):
    r"""The reports of the scripts that write through the helper, rebuilt from their parts: byte for byte the
    committed files (the blank lines of the head and the single newline at the end are the helper's)."""
    committed = (BENCH / "results" / f"{report}.md").read_text()
    title, machine, facts, body = _parts(committed)
    assert all(not f.startswith("- ") and f for f in facts)
    mod = _common_writing_to(monkeypatch, tmp_path, machine)
    path = mod.write_benchmark_report(report, title, facts, body)
    assert path.read_bytes() == committed.encode()


# ---------------------------------------------------------------------------------------------------------------------
# funbat_scale.py --repeats: FunBaT's noisy peak RSS as median and range over runs in fresh processes
# ---------------------------------------------------------------------------------------------------------------------
def test_funbat_scale_spread_is_median_and_range():
    mod = _load("funbat_scale")
    assert mod.spread([1060.0, 1655.0, 1129.0]) == "1129 (1060-1655)"  # one outlier does not move the median
    assert mod.spread([1060.0, 1129.0, 1137.0, 1655.0]) == "1133 (1060-1655)"  # even count: mean of the middle two
    assert mod.spread([848.94]) == "848.9"  # one run: the value alone


def test_funbat_scale_repeats_funbat_in_fresh_processes(monkeypatch):
    import itertools

    import numpy as np

    mod = _load("funbat_scale")
    calls, written = [], {}
    peaks, fits = itertools.cycle([1060.0, 1655.0, 1129.0]), itertools.cycle([30.0, 50.0, 31.0])

    def child(method, args):
        calls.append(method)
        mean = 0.0 if method == "svgp" or len(calls) == 1 else 0.5  # the later FunBaT runs: other means
        return {"mean": [mean] * mod.N_TEST, "std": [1.0] * mod.N_TEST, "detail": "d", "predict_s": 1.0,
                "fit_s": 9.0 if method == "svgp" else next(fits), "above_mb": 10.0 * len(calls),
                "peak_mb": 700.0 if method == "svgp" else next(peaks)}  # fmt: skip

    monkeypatch.setattr(mod, "child", child)
    monkeypatch.setattr(mod, "transparent_hugepages", lambda: "always [madvise] never")
    monkeypatch.setattr(mod, "write_benchmark_report", lambda *a, **kw: written.update(args=a, kw=kw))
    mod.main(["--n", "100", "--repeats", "3"])
    assert calls == ["funbat"] * 3 + ["svgp"]  # each run its own child process
    name, _title, facts, body = written["args"]
    assert name == "funbat_scale_quick"  # a reduced run: never the committed table
    assert written["kw"]["machine_note"] == "; transparent huge pages `always [madvise] never`"
    head, _, *rows = ([c.strip() for c in line.strip("|").split("|")] for line in body[0].splitlines())
    assert "peak RSS MB: median (min-max)" in head and "fit s (median)" in head
    funbat, svgp = (dict(zip(head, row)) for row in rows)
    assert funbat["runs"] == "3" and funbat["peak RSS MB: median (min-max)"] == "1129 (1060-1655)"
    assert float(funbat["fit s (median)"]) == np.median([30.0, 50.0, 31.0]) == 31.0  # not the mean, 37
    assert funbat["peak above data MB: median (min-max)"] == "20 (10-30)"
    assert svgp["runs"] == "1" and svgp["peak RSS MB: median (min-max)"] == "700"
    # the accuracy columns are the first run's; the facts say how far the runs' means are apart
    rms_y = float(np.sqrt(np.mean(mod.make_data(100)[3] ** 2)))  # the first run predicts 0; the others 0.5
    assert float(funbat["test RMSE"]) == pytest.approx(rms_y, rel=1e-3)
    assert "differ by at most 5.0e-01" in facts[-1] and "1060, 1655, 1129 MB" in facts[-1]
    monkeypatch.setattr(mod, "transparent_hugepages", lambda: None)  # not readable: no note
    mod.main(["--n", "100", "--repeats", "1"])
    assert written["kw"]["machine_note"] == ""
    with pytest.raises(SystemExit):
        mod.main(["--repeats", "0"])


def test_transparent_hugepages_reads_the_kernel_setting(monkeypatch, tmp_path):
    mod = _common_writing_to(monkeypatch, tmp_path, "M")
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(mod, "THP_ENABLED", setting)
    assert mod.transparent_hugepages() == "always [madvise] never"
    monkeypatch.setattr(mod, "THP_ENABLED", tmp_path / "absent")  # not Linux, or no THP support
    assert mod.transparent_hugepages() is None


# ---------------------------------------------------------------------------------------------------------------------
# beijing_facts.py: the facts of the bundled Beijing tensor that the FunBaT page and tutorial quote
# ---------------------------------------------------------------------------------------------------------------------
def test_beijing_facts_table_is_what_the_data_give():
    r"""``benchmarks/results/beijing_facts.md`` is what the script computes from the shipped data, line for line after
    the machine line; and its numbers agree with computations of their own: the day's share of the variance as the
    between-day sum of squares over the total (the script: one minus the within-day share), the stations' mean
    offsets from the loader's own rounded offsets (``load_beijing_air(day_offsets=True)``, to the rounding, 0.05)."""
    import numpy as np

    from gpgeom.datasets.tensors import BEIJING_STATIONS, load_beijing_air

    title, _machine, facts, body = _parts((BENCH / "results" / "beijing_facts.md").read_text())
    mod = _load("beijing_facts")
    head, computed = mod.facts()
    assert (title, facts) == (mod.TITLE, head)
    assert "\n".join(computed).split("\n") == body[:-1] and body[-1] == ""  # the report ends with one newline

    def row(label: str) -> list[str]:
        (line,) = (x for x in body if x.startswith(f"| {label} |"))
        return [c.strip() for c in line.strip("|").split("|")]

    data = load_beijing_air(station=True)
    X, y = data.X.numpy(), data.y.numpy()
    _, day, count = np.unique(X[:, 2], return_inverse=True, return_counts=True)
    between = float((count * (np.bincount(day, y) / count - y.mean()) ** 2).sum())
    assert float(row("day")[2]) == pytest.approx(between / float(((y - y.mean()) ** 2).sum()), abs=5e-5)
    offsets = load_beijing_air(day_offsets=True)
    station = np.rint(X[:, 3] * 1.1).astype(int)
    for k, key, col in ((0, "temp_range_C", 1), (1, "pres_range_hPa", 2)):
        lo, hi = offsets.info[key]
        off = lo + offsets.X[:, k].numpy() * (hi - lo) / 10.0
        means = np.bincount(station, off) / np.bincount(station)
        table = [float(row(s)[col]) for s in BEIJING_STATIONS]
        np.testing.assert_allclose(table, means, atol=0.05)


# ---------------------------------------------------------------------------------------------------------------------
# rvgp_span.py: the part of a field outside the span of the first eigenfields
# ---------------------------------------------------------------------------------------------------------------------
def test_rvgp_span_share_is_the_norm_of_the_orthogonal_part():
    r"""``outside_share`` of ``c = V a + b`` with ``b`` orthogonal to the (non-orthonormal) columns of ``V`` is
    ``|b| / |c|`` (closed form), 0 inside the span and 1 for ``b`` alone."""
    import numpy as np

    mod = _load("rvgp_span")
    rng = np.random.default_rng(0)
    V = rng.standard_normal((40, 5)) * np.arange(1, 6)  # columns of unequal norms, not orthogonal
    q, _ = np.linalg.qr(np.hstack([V, rng.standard_normal((40, 1))]))
    b, c_in = 0.3 * q[:, 5], V @ rng.standard_normal(5)
    assert mod.outside_share(c_in + b, V) == pytest.approx(0.3 / np.linalg.norm(c_in + b), rel=1e-12)
    assert mod.outside_share(c_in, V) < 1e-12 and mod.outside_share(b, V) == pytest.approx(1.0, rel=1e-12)
