"""Where the benchmark scripts write: a quick run never touches a committed table (``benchmarks/_common.py``)."""

from __future__ import annotations

import importlib.util
import json
import re
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


# ---------------------------------------------------------------------------------------------------------------------
# The documentation's citations of scripts and tables: every file it names exists, every flag it gives is the script's
# ---------------------------------------------------------------------------------------------------------------------
#: A repository path as the pages write it (``benchmarks/funbat.py``, ``benchmarks/results/mmgp.md``, ``tests/...``).
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:benchmarks|tests|tools|gpgeom|docs|tutorials)/[\w./-]*\w)")
#: A benchmark table named by its file name alone (``funbat_stopping.md``, ``gpu_check_h200.log``).
_RESULT_NAME = re.compile(
    r"(?<![\w/.-])((?:beijing|engine|funbat|mmgp|rgnp|rvgp|trajectory|scaling|memory|gpu_check)\w*\.(?:md|jsonl|log))\b"
)
#: ``python benchmarks/<name>.py --flag ...`` as the pages quote a run.
_SCRIPT_RUN = re.compile(r"(benchmarks/\w+\.py)((?: --[a-z0-9-]+(?: [\w.=,]+)?)+)")


def _documentation() -> dict[str, str]:
    """The prose a reader sees: the site's own pages, the README and the tutorials' markdown cells."""
    pages = {
        str(p.relative_to(ROOT)): p.read_text()
        for p in sorted((ROOT / "docs").rglob("*.md"))
        if not {"_build", "_generated", "api"} & set(p.relative_to(ROOT / "docs").parts)
    }
    pages["README.md"] = (ROOT / "README.md").read_text()
    for nb in sorted((ROOT / "tutorials").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        pages[str(nb.relative_to(ROOT))] = "\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
        )
    return pages


def _cited_paths(text: str) -> set[str]:
    paths = set()
    for match in _REPO_PATH.finditer(text):
        path = match.group(1)
        if "*" in path or path.startswith(("docs/_build", "benchmarks/results/local")):
            continue  # a pattern, or an output of a build or of a quick run
        if path.startswith(("docs/", "tutorials/")) and not Path(path).suffix:
            continue  # a {doc} target (``tutorials/mmgp``), not a file name
        if text[match.end(1) : match.end(1) + 1] == "*":
            continue  # the stem of a pattern (``benchmarks/results/mmgp*.md``)
        paths.add(path.rstrip("."))
    return paths


def test_the_documentation_finds_the_documentation_pages():
    pages = _documentation()
    assert {"README.md", "docs/models/funbat.md", "docs/scaling.md", "tutorials/trajectory.ipynb"} <= set(pages)


@pytest.mark.parametrize("page", sorted(_documentation()))
def test_every_file_the_documentation_cites_exists(page):
    text = _documentation()[page]
    missing = sorted(p for p in _cited_paths(text) if not (ROOT / p).exists())
    results = ROOT / "benchmarks" / "results"
    missing += sorted({m.group(1) for m in _RESULT_NAME.finditer(text)} - {p.name for p in results.iterdir()})
    assert not missing, f"{page} cites files that do not exist: {missing}"


@pytest.mark.parametrize("page", sorted(_documentation()))
def test_every_benchmark_flag_the_documentation_gives_is_the_scripts(page):
    unknown = []
    for match in _SCRIPT_RUN.finditer(_documentation()[page]):
        script = ROOT / match.group(1)
        if not script.exists():
            continue  # reported by the test above
        source = script.read_text() + (ROOT / "benchmarks" / "_folds.py").read_text()
        for flag in re.findall(r"--[a-z0-9-]+", match.group(2)):
            if not any(quoted in source for quoted in (f'"{flag}"', f"'{flag}'", f"``{flag}``")):
                unknown.append(f"{match.group(1)} {flag}")
    assert not unknown, f"{page} runs benchmarks with flags the scripts do not take: {unknown}"


def test_every_benchmark_table_a_page_includes_is_committed():
    included = set()
    for page in (ROOT / "docs").rglob("*.md"):
        if "_build" not in page.parts:
            included |= set(re.findall(r"_generated/bench_(\w+)\.md", page.read_text()))
    assert included, "no page includes a benchmark table"
    missing = sorted(name for name in included if not (ROOT / "benchmarks" / "results" / f"{name}.md").exists())
    assert not missing, f"pages include benchmark tables that are not in benchmarks/results/: {missing}"


def test_the_per_fold_counts_the_funbat_page_cites_agree_with_their_folds():
    r"""``funbat_heteroscedastic.md``'s per-fold RMSE table (the source of the FunBaT page's "better than the defaults
    on k folds of 5"): each row's count and fold list are the folds where its RMSE is below the defaults' row's, and
    its mean is the folds' mean."""
    text = (ROOT / "benchmarks" / "results" / "funbat_heteroscedastic.md").read_text()
    section = text.split("## Test RMSE per fold", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")][1:]
    assert len(rows) >= 3, "the per-fold table is missing"
    base = [float(v) for v in rows[0][1:-2]]
    for row in rows[1:]:
        folds = [float(v) for v in row[1:-2]]
        assert abs(sum(folds) / len(folds) - float(row[-2])) <= 1e-4, row[0]  # each printed to 4 decimals
        below = [i for i, (r, b) in enumerate(zip(folds, base)) if r < b]
        assert row[-1].strip() == f"{len(below)} of {len(folds)}: {below}", row[0]
