import json
from pathlib import Path

import pytest
import torch

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
    torch.manual_seed(5)
    state = torch.get_rng_state()
    report = run_demo(tmp_path, quick=True, only=["kalman"], progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # the demo reseeded torch's global stream and left it there
    text = report.read_text()
    assert "Kalman vs dense log lik." in text
    assert (tmp_path / "kalman.png").stat().st_size > 10_000


def test_malformed_omp_num_threads_does_not_stop_the_command_line(monkeypatch, capsys):
    # the default of --threads was int($OMP_NUM_THREADS), evaluated for every command: "4,2" (an OpenMP list) or ""
    # raised a ValueError traceback before `gpgeom --help` or `gpgeom bench` could run
    for value, threads in (("4,2", 4), ("", 1), ("many", 1), ("0", 1), ("3", 3)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--help"])
        assert exc.value.code == 0
        assert "$OMP_NUM_THREADS or 1)" in capsys.readouterr().out
        from gpgeom import cli

        assert cli._default_threads() == threads


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--threads", "0"], "--threads: expected an int >= 1, got '0'"),
        (["demo", "--threads", "-2"], "--threads: expected an int >= 1, got '-2'"),
        (["demo", "--seed", "-1"], "--seed: expected an int >= 0, got '-1'"),
        (["demo", "--seed", "1.5"], "--seed: expected an int >= 0, got '1.5'"),
        (["demo", "--only"], "--only: expected at least one argument"),
        (["bench", "--nope"], "unrecognized arguments: --nope"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys, tmp_path, monkeypatch):
    # --threads 0 was a RuntimeError traceback from torch.set_num_threads; --seed -1 ran every section into numpy's
    # "expected non-negative seed"; an empty --only wrote a report of no section and exited 0
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "usage: gpgeom" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_run_demo_checks_its_arguments_before_creating_anything(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"`only` names no section"):
        run_demo(out, only=[])
    with pytest.raises(ValueError, match=r"`seed` must be an int >= 0, got -1"):
        run_demo(out, only=["kalman"], seed=-1)
    assert not out.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match=r"`out_dir` '.*a_file' exists and is not a folder"):
        run_demo(a_file, only=["kalman"])
    assert a_file.read_text() == "keep me"


def test_demo_output_that_cannot_be_a_folder_is_one_line_and_exit_status(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    # was FileExistsError / NotADirectoryError tracebacks from Path.mkdir
    assert main(["demo", "kalman", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "--out " in err and "exists and is not a folder" in err and "Traceback" not in err
    assert main(["demo", "kalman", "--out", str(a_file / "sub")]) == 1  # a file where a parent folder should be
    err = capsys.readouterr().err
    assert "cannot write the report under" in err and "Traceback" not in err
    assert a_file.read_text() == "keep me"


def test_failed_section_is_a_message_and_exit_status_1(tmp_path, capsys, monkeypatch):
    import gpgeom.demo as demo

    def broken(out_dir, *, quick, seed, progress):
        raise ArithmeticError("no convergence")

    monkeypatch.setitem(demo.SECTIONS, "broken", "math:nan")  # a registered name ...
    monkeypatch.setattr(demo, "_resolve", lambda name: broken)  # ... whose function fails
    # was the RuntimeError's traceback (exit status 1 by accident of Python's handler)
    assert main(["demo", "broken", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "section(s) ['broken'] failed" in err and "report.md" in err and "Traceback" not in err
    text = (tmp_path / "report.md").read_text()
    assert "## broken: FAILED" in text and "ArithmeticError: no convergence" in text
    with pytest.raises(demo.DemoFailed) as exc:  # the Python API: a RuntimeError that names what failed
        run_demo(tmp_path, only=["broken"])
    assert isinstance(exc.value, RuntimeError) and exc.value.failures == ["broken"]


def test_sections_as_positional_arguments_and_interrupt(tmp_path, capsys, monkeypatch):
    import gpgeom.demo as demo

    seen = []
    monkeypatch.setattr(demo, "run_demo", lambda out, **kw: seen.append(kw["only"]) or out / "report.md")
    # `gpgeom demo calibration` (as the calibration page writes it) was "unrecognized arguments: calibration"
    assert main(["demo", "calibration", "--out", str(tmp_path)]) == 0
    assert main(["demo", "kalman", "--only", "rvgp", "kalman", "--out", str(tmp_path)]) == 0
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert seen == [["calibration"], ["kalman", "rvgp"], None]
    capsys.readouterr()

    def interrupted(out, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "run_demo", interrupted)
    assert main(["demo", "kalman", "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "gpgeom demo: interrupted." and "Traceback" not in err


def test_bench_exit_status_and_scripts_without_quick(tmp_path, capfd, monkeypatch):
    from gpgeom import cli

    (tmp_path / "good.py").write_text("import sys\nprint('good', sys.argv[1:])\n")
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "quick.py").write_text(
        "import argparse\np = argparse.ArgumentParser()\np.add_argument(\"--quick\", action='store_true')\n"
        "print('quick', p.parse_args().quick)\n"
    )
    (tmp_path / "single.py").write_text("import argparse\nargparse.ArgumentParser().add_argument('--quick')\n")
    (tmp_path / "_helper.py").write_text("raise SystemExit(9)\n")
    monkeypatch.setattr(cli, "BENCHMARK_DIR", tmp_path)
    assert main(["bench", "quick", "good"]) == 0
    captured = capfd.readouterr()  # the scripts' own output too (file descriptor level)
    assert "quick False" in captured.out and "good []" in captured.out and captured.err == ""
    # a failing script: exit status 1 and its name (was the OR of the children's statuses, with no summary)
    assert main(["bench", "bad", "good"]) == 1
    assert "1 of 2 failed: bad (exit status 3)" in capfd.readouterr().err
    # --quick skips a script that has no --quick (it used to stop at argparse's "unrecognized arguments")
    assert main(["bench", "--quick", "good", "quick"]) == 0
    captured = capfd.readouterr()
    assert "== good: no --quick version, skipped ==" in captured.out and "quick True" in captured.out
    assert "skipped ['good']" in captured.err
    assert cli._takes_quick(tmp_path / "single.py") and not cli._takes_quick(tmp_path / "bad.py")  # either quote


def test_bench_list_names_each_script_its_quick_version_and_summary(tmp_path, capsys, monkeypatch):
    from gpgeom import cli

    (tmp_path / "alpha.py").write_text(
        '"""Alpha benchmark: what it\nmeasures.\n\nDetails."""\nimport argparse\n'
        "argparse.ArgumentParser().add_argument('--quick')\nraise SystemExit(5)\n"
    )
    (tmp_path / "beta.py").write_text(f'"""{"x" * 150}"""\nraise SystemExit(6)\n')
    (tmp_path / "gamma.py").write_text("raise SystemExit(7)\n")  # no docstring
    (tmp_path / "_helper.py").write_text('"""Not a benchmark."""\n')
    monkeypatch.setattr(cli, "BENCHMARK_DIR", tmp_path)
    assert main(["bench", "--list"]) == 0  # nothing runs: the scripts would exit 5, 6, 7
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "alpha  quick  Alpha benchmark: what it measures.",
        f"beta          {'x' * 97}...",
        "gamma",
    ]
