"""Where the benchmark scripts write: a quick run never touches a committed table (``benchmarks/_common.py``)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_common(monkeypatch, results: str | None):
    if results is None:
        monkeypatch.delenv("GPGEOM_BENCH_RESULTS", raising=False)
    else:
        monkeypatch.setenv("GPGEOM_BENCH_RESULTS", results)
    spec = importlib.util.spec_from_file_location("bench_common_under_test", ROOT / "benchmarks" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_names_say_what_the_run_was(monkeypatch):
    common = _load_common(monkeypatch, None)
    assert common.report_name("rvgp") == "rvgp"
    assert common.report_name("rvgp", quick=True) == "rvgp_quick"
    assert common.report_name("rvgp", device="cuda") == "rvgp_cuda"
    assert common.report_name("engine", tags=("float64",), always_device=True) == "engine_cpu_float64"


def test_quick_runs_write_to_the_ignored_local_folder(monkeypatch, tmp_path):
    common = _load_common(monkeypatch, None)
    results = ROOT / "benchmarks" / "results"
    assert common.RESULTS == results
    assert common.LOCAL_RESULTS == results / "local"
    # the path is computed (and the local folder created), nothing is written
    assert common.results_path("trajectory_quick") == results / "local" / "trajectory_quick.md"
    assert common.results_path("trajectory") == results / "trajectory.md"
    if (ROOT / ".git").exists() and shutil.which("git"):
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", "benchmarks/results/local/trajectory_quick.md"], cwd=ROOT, check=False
        )
        assert ignored.returncode == 0, "benchmarks/results/local/ must be ignored by git"
    else:
        pytest.skip("not a git checkout: the .gitignore rule cannot be checked")


def test_the_environment_variable_moves_every_report(monkeypatch, tmp_path):
    common = _load_common(monkeypatch, str(tmp_path))
    assert common.results_path("rvgp_quick") == tmp_path / "rvgp_quick.md"
    assert common.results_path("rvgp") == tmp_path / "rvgp.md"
    path = common.write_report("rvgp_cuda_quick", "| a |\n")
    assert path == tmp_path / "rvgp_cuda_quick.md" and path.read_text() == "| a |\n"
