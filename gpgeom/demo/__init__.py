r"""``gpgeom demo``: fit every model on built-in data, write its figures and a Markdown report.

Each section is a function ``section(out_dir, *, quick, seed, progress) -> Section`` registered in
:data:`SECTIONS`; a section that fails is reported as failed (with its error) and the others still run.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpgeom._progress import resolve_progress


@dataclass
class Section:
    r"""What one demo section reports: a title, a short text, a table of numbers and figure files."""

    title: str
    text: str = ""
    table: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def save_figure(fig, out_dir: str | os.PathLike, name: str, *, tight: bool = True) -> Path:
    r"""Write a section's matplotlib figure as ``out_dir/name`` (110 dpi, tight layout unless ``tight=False``),
    close it and return the path."""
    import matplotlib.pyplot as plt

    if tight:
        fig.tight_layout()
    path = Path(out_dir) / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class DemoFailed(RuntimeError):
    r"""Some demo sections failed (the others ran; the report holds each failure's traceback).

    Attributes:
        failures: The names of the failed sections.
        report: The path of the report.
    """

    def __init__(self, failures: list[str], report: Path):
        super().__init__(f"Demo sections failed: {failures}; see {report}.")
        self.failures, self.report = list(failures), report


# name -> "module:function"; a model joins the demo by adding its line here.
SECTIONS: dict[str, str] = {
    "kalman": "gpgeom.demo.engine:kalman_section",
    "exact_gp": "gpgeom.demo.engine:exact_gp_section",
    "mmgp": "gpgeom.demo.mmgp:mmgp_section",
    "rvgp": "gpgeom.demo.rvgp:rvgp_section",
    "funbat": "gpgeom.demo.funbat:funbat_section",
    "rgnp": "gpgeom.demo.rgnp:rgnp_section",
    "trajectory": "gpgeom.demo.trajectory:trajectory_section",
    "calibration": "gpgeom.demo.calibration:calibration_section",
}


def _resolve(name: str) -> Callable[..., Section]:
    module, func = SECTIONS[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_demo(
    out_dir: str | os.PathLike = "gpgeom-demo",
    *,
    quick: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    progress: bool | None = None,
) -> Path:
    r"""Run the demo sections and write ``out_dir/report.md`` with their numbers and figures.

    Args:
        out_dir: Output folder (created if needed).
        quick: Smaller problem sizes.
        seed: Seed of every random draw (each section reseeds with it).
        only: Names of the sections to run (default: all of :data:`SECTIONS`).
        progress: Progress bars: ``True``, ``False`` or ``None`` (gpgeom's rule: shown in a terminal or notebook).

    Returns:
        The path of the report.

    Raises:
        ValueError: An unknown section name, an empty ``only``, a ``seed`` that is not an int >= 0, or an
            ``out_dir`` that exists and is not a folder (all before anything is created).
        TypeError: A ``progress`` that is not True, False or None (before anything is created).
        OSError: When the output folder or the report cannot be written (before any section runs).
        DemoFailed: After the report is written, when some sections failed (a ``RuntimeError``).
    """
    import matplotlib

    names = list(SECTIONS) if only is None else list(dict.fromkeys(only))  # each section once, in the given order
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:  # checked before the output folder is created
        raise ValueError(f"Unknown demo section(s) {unknown}; expected some of {list(SECTIONS)}.")
    if not names:
        raise ValueError(f"`only` names no section; expected some of {list(SECTIONS)} (or None for all).")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:  # numpy's generators need seeds >= 0
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}.")
    resolve_progress(progress)  # a bad value is refused here, not by every section in turn
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`out_dir` {str(out)!r} exists and is not a folder.")
    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.md"
    report.write_text("# gpgeom demo report\n\n(running)\n")  # an unwritable folder fails now, not after the fits
    lines = [
        "# gpgeom demo report",
        "",
        f"- machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}",
        f"- quick: {quick}, seed: {seed}",
        "",
    ]
    failures = []
    for name in names:
        t0 = time.perf_counter()
        try:
            # every section starts from torch's CPU stream seeded by `seed`, inside a fork of it: the caller's
            # stream is restored afterwards (it was reseeded and left there)
            with torch.random.fork_rng(devices=[]):
                torch.random.default_generator.manual_seed(seed)
                sec = _resolve(name)(out, quick=quick, seed=seed, progress=progress)
        except Exception as exc:  # keep the other sections running, and say what failed
            failures.append(name)
            lines += [f"## {name}: FAILED", "", "```", traceback.format_exc(), "```", ""]
            print(f"[demo] section {name} failed: {exc!r}")
            continue
        elapsed = time.perf_counter() - t0
        lines += [f"## {sec.title}", "", sec.text, "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sec.table]
        lines += [f"| section wall time | {elapsed:.1f} s |", ""]
        lines += [f"![{fig.stem}]({fig.relative_to(out)})" for fig in sec.figures]
        lines.append("")
        print(f"[demo] {sec.title}: done in {elapsed:.1f} s")
    report.write_text("\n".join(lines))
    if failures:
        raise DemoFailed(failures, report)
    return report
