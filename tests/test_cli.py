import json
from pathlib import Path

import pytest

from gpgeom.cli import main
from gpgeom.demo import SECTIONS, run_demo

TUTORIALS = sorted((Path(__file__).resolve().parent.parent / "tutorials").glob("*.ipynb"))


def test_demo_list(capsys):
    assert main(["demo", "--list"]) == 0
    assert capsys.readouterr().out.split() == list(SECTIONS)


def test_demo_unknown_section(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"Unknown demo section\(s\) \['nope'\]"):
        run_demo(out, only=["nope"])
    assert not out.exists()  # nothing created for a wrong request
    # the command line says it in one line, without a traceback, and exits 2
    assert main(["demo", "--out", str(out), "--only", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown section(s) ['bogus']" in err and "Traceback" not in err
    assert not out.exists()


def test_help_and_version(capsys):
    import gpgeom

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"gpgeom {gpgeom.__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "gpgeom demo" in text and "gpgeom bench" in text
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "seed of every random draw" in capsys.readouterr().out


def test_bench_unknown_name(capsys):
    assert main(["bench", "no_such_benchmark"]) == 2
    assert "Unknown benchmark" in capsys.readouterr().err


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorials_read_smoke_test_flag_and_have_no_outputs(path):
    nb = json.loads(path.read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "SMOKE_TEST" in code, f"{path.name} must size its work by the SMOKE_TEST flag"
    assert "set_num_threads(1)" in code or "OMP_NUM_THREADS" in code
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), "strip outputs"


def test_demo_engine_sections_write_report_and_figures(tmp_path):
    report = run_demo(tmp_path, quick=True, only=["kalman"], progress=False)
    text = report.read_text()
    assert "Kalman vs dense log lik." in text
    assert (tmp_path / "kalman.png").stat().st_size > 10_000
