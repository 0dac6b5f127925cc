r"""The ``gpgeom`` command line: ``gpgeom demo`` and ``gpgeom bench``."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
DESCRIPTION = """gpgeom: Gaussian-process models of geometric and physical data.

  gpgeom demo [section ...]   fit every model (or those sections) on built-in data, write figures and a report
  gpgeom bench [name ...]     run the benchmark scripts of a source checkout (--list: which there are)

Exit status: 0 done, 1 a section or benchmark failed, 2 a usage error, 130 interrupted."""


def _positive_int(text: str) -> int:
    r"""An argparse type: an int >= 1 (``--threads``)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def _seed(text: str) -> int:
    r"""An argparse type: an int >= 0 (``--seed``; numpy's generators take no negative seed)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return value


def _default_threads() -> int:
    r"""The default of ``--threads``: the first entry of ``$OMP_NUM_THREADS`` (OpenMP allows a list, ``"4,2"``) when it
    is an int >= 1, else 1 (a malformed value must not stop ``gpgeom --help``)."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from gpgeom.demo import SECTIONS, DemoFailed, run_demo

    if args.list:
        for name in SECTIONS:
            print(name)
        return 0
    only = None
    if args.sections or args.only is not None:
        only = list(dict.fromkeys([*args.sections, *(args.only or [])]))
    unknown = [n for n in (only or []) if n not in SECTIONS]
    if unknown:  # before anything is created or imported
        print(f"gpgeom demo: unknown section(s) {unknown}; expected some of {list(SECTIONS)} (see --list).",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"gpgeom demo: --out {str(args.out)!r} exists and is not a folder.", file=sys.stderr)
        return 2
    import torch

    # small GP fits run about ten times slower with two threads on small machines: one thread unless told
    torch.set_num_threads(args.threads)
    try:
        report = run_demo(
            args.out, quick=args.quick, seed=args.seed, only=only, progress=False if args.no_progress else None
        )
    except OSError as err:  # the output folder or the report cannot be written (checked before the fits)
        print(f"gpgeom demo: cannot write the report under {str(args.out)!r}: {err}", file=sys.stderr)
        return 1
    except DemoFailed as err:
        print(f"gpgeom demo: section(s) {err.failures} failed (the others ran); see {err.report}.", file=sys.stderr)
        return 1
    print(f"Report written to {report}")
    return 0


def _takes_quick(script: Path) -> bool:
    r"""Whether a benchmark script has a ``--quick`` option (its source defines one)."""
    return re.search(r"""["']--quick["']""", script.read_text(encoding="utf-8", errors="replace")) is not None


def _summary(script: Path, width: int = 100) -> str:
    r"""The first paragraph of a benchmark script's module docstring on one line, cut to ``width`` characters, read
    without running the script ("" without a docstring)."""
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8", errors="replace")))
    except SyntaxError:
        return ""
    first = " ".join((doc or "").strip().split("\n\n")[0].split())
    return first if len(first) <= width else first[: width - 3].rstrip() + "..."


def _cmd_bench(args: argparse.Namespace) -> int:
    if not BENCHMARK_DIR.is_dir():
        print(f"No benchmarks folder at {BENCHMARK_DIR}: `gpgeom bench` runs from a source checkout.", file=sys.stderr)
        return 2
    scripts = sorted(p for p in BENCHMARK_DIR.glob("*.py") if not p.name.startswith("_"))
    if args.list:  # name, whether it has a --quick version, what it measures
        width = max((len(p.stem) for p in scripts), default=0)
        for p in scripts:
            print(f"{p.stem:<{width}}  {'quick' if _takes_quick(p) else '     '}  {_summary(p)}".rstrip())
        return 0
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            print(f"Unknown benchmark(s) {unknown}; expected some of {sorted(known)}.", file=sys.stderr)
            return 2
        scripts = [known[n] for n in dict.fromkeys(args.names)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    failed, skipped = [], []
    for script in scripts:
        if args.quick and not _takes_quick(script):  # it would stop at "unrecognized arguments: --quick"
            print(f"== {script.stem}: no --quick version, skipped ==", flush=True)
            skipped.append(script.stem)
            continue
        print(f"== {script.stem} ==", flush=True)
        extra = ["--quick"] if args.quick else []
        code = subprocess.call([sys.executable, str(script), *extra], env=env)
        if code != 0:
            failed.append(f"{script.stem} (exit status {code})")
    if skipped:
        print(f"gpgeom bench: skipped {skipped} (no --quick version; run them without --quick).", file=sys.stderr)
    if failed:
        print(f"gpgeom bench: {len(failed)} of {len(scripts)} failed: {', '.join(failed)}.", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from gpgeom import __version__

    parser = argparse.ArgumentParser(
        prog="gpgeom", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"gpgeom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

    demo = sub.add_parser("demo", help="fit every model on built-in data; write figures and a report")
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("gpgeom-demo"),
        help="output folder, created if needed; its report.md and figures are overwritten (default: ./gpgeom-demo)",
    )
    demo.add_argument("--quick", action="store_true", help="smaller sizes (about a minute in all)")
    demo.add_argument("sections", nargs="*", help="run only these sections (see --list; default: all)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of every random draw, an int >= 0 (default: 0)")
    demo.add_argument("--only", nargs="+", default=None, metavar="SECTION", help="the same as the sections above")
    demo.add_argument("--list", action="store_true", help="list the sections and exit")
    demo.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown when the output is a terminal)"
    )
    demo.add_argument(
        "--threads",
        type=_positive_int,
        default=_default_threads(),
        help="torch CPU threads, an int >= 1 (default: $OMP_NUM_THREADS or 1)",
    )
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="run the benchmark scripts of a source checkout")
    bench.add_argument("names", nargs="*", help="benchmark names (see --list; default: all, which takes hours)")
    bench.add_argument("--list", action="store_true", help="list the benchmarks (name, --quick or not, summary)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes")
    bench.set_defaults(func=_cmd_bench)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's status for SIGINT, no traceback
        print(f"gpgeom {args.command}: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
