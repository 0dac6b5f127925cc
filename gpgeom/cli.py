r"""The ``gpgeom`` command line: ``gpgeom demo`` and ``gpgeom bench``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
DESCRIPTION = """gpgeom: Gaussian-process models of geometric and physical data.

  gpgeom demo    fit every model on built-in data, write figures and a report
  gpgeom bench   run the benchmark scripts of a source checkout"""


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from gpgeom.demo import SECTIONS, run_demo

    # small GP fits run about ten times slower with two threads on small machines: one thread unless told
    torch.set_num_threads(args.threads)

    if args.list:
        for name in SECTIONS:
            print(name)
        return 0
    unknown = [n for n in (args.only or []) if n not in SECTIONS]
    if unknown:  # before anything is created or imported
        print(f"gpgeom demo: unknown section(s) {unknown}; expected some of {list(SECTIONS)} (see --list).",
              file=sys.stderr)  # fmt: skip
        return 2
    report = run_demo(
        args.out, quick=args.quick, seed=args.seed, only=args.only, progress=False if args.no_progress else None
    )
    print(f"Report written to {report}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    if not BENCHMARK_DIR.is_dir():
        print(f"No benchmarks folder at {BENCHMARK_DIR}: `gpgeom bench` runs from a source checkout.", file=sys.stderr)
        return 2
    scripts = sorted(p for p in BENCHMARK_DIR.glob("*.py") if not p.name.startswith("_"))
    if args.names:
        known = {p.stem: p for p in scripts}
        unknown = [n for n in args.names if n not in known]
        if unknown:
            print(f"Unknown benchmark(s) {unknown}; expected some of {sorted(known)}.", file=sys.stderr)
            return 2
        scripts = [known[n] for n in args.names]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    status = 0
    for script in scripts:
        print(f"== {script.stem} ==", flush=True)
        extra = ["--quick"] if args.quick else []
        status |= subprocess.call([sys.executable, str(script), *extra], env=env)
    return status


def main(argv: list[str] | None = None) -> int:
    from gpgeom import __version__

    parser = argparse.ArgumentParser(
        prog="gpgeom", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"gpgeom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,bench}")

    demo = sub.add_parser("demo", help="fit every model on built-in data; write figures and a report")
    demo.add_argument("--out", type=Path, default=Path("gpgeom-demo"), help="output folder (default: ./gpgeom-demo)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes (about a minute in all)")
    demo.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    demo.add_argument("--only", nargs="*", default=None, help="run only these sections (see --list)")
    demo.add_argument("--list", action="store_true", help="list the sections and exit")
    demo.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown when the output is a terminal)"
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("OMP_NUM_THREADS", "1")),
        help="torch CPU threads (default: $OMP_NUM_THREADS or 1)",
    )
    demo.set_defaults(func=_cmd_demo)

    bench = sub.add_parser("bench", help="run the benchmark scripts of a source checkout")
    bench.add_argument("names", nargs="*", help="benchmark names (default: all)")
    bench.add_argument("--quick", action="store_true", help="smaller sizes")
    bench.set_defaults(func=_cmd_bench)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
