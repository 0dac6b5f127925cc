"""Shared helpers of the benchmark scripts: machine description, timing, tables written to benchmarks/results/, and
the measures several scripts report (:func:`normal_angles`).

Report names (:func:`report_name`): a full run on the CPU writes ``<name>.md``, the committed table; any other run
adds what it is, ``<name>_<device>.md`` and/or ``<name>_quick.md`` (``<name>_cuda_quick.md``), so that a quick
or GPU run never overwrites a committed full table.

Where (:func:`results_path`): full runs write to ``benchmarks/results/``; quick runs to
``benchmarks/results/local/`` (ignored by git), so that running any benchmark with ``--quick`` leaves ``git status``
clean. The ``*_quick.md`` tables committed in ``benchmarks/results/`` are records of deliberate runs (a device run,
or a table quoted in the docs), copied there by hand from ``local/``. The environment variable
``GPGEOM_BENCH_RESULTS`` sends every report to another folder (the GPU check writes there).

Layout (:func:`write_benchmark_report`): a title, the ``- machine:`` line, the run's facts as ``- `` lines, then the
tables; the scripts write through it unless their layout differs (``engine.py``, ``memory.py``, ``trajectory.py``,
and the writers with an ``--out`` path or a closing blank line).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(os.environ.get("GPGEOM_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
#: Where quick runs write unless ``GPGEOM_BENCH_RESULTS`` is set (ignored by git).
LOCAL_RESULTS = RESULTS if os.environ.get("GPGEOM_BENCH_RESULTS") else RESULTS / "local"


def results_path(name: str) -> Path:
    """The file of report ``name`` (from :func:`report_name`): ``LOCAL_RESULTS`` for quick runs, else ``RESULTS``."""
    folder = LOCAL_RESULTS if name.endswith("_quick") else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{name}.md"


def report_name(
    name: str,
    *,
    device: torch.device | str = "cpu",
    quick: bool = False,
    tags: Sequence[str] = (),
    always_device: bool = False,
) -> str:
    """The report name of a run: ``<name>[_<device>][_<tags>...][_quick]``.

    Args:
        name: The name of the full CPU run (the committed table).
        device: The device of the run; the name carries it unless it is the CPU (or always, with ``always_device``,
            for reports whose committed names include ``cpu``, e.g. ``engine_cpu_float64``).
        quick: A reduced run (``--quick``, or any non-default size): adds ``_quick``.
        tags: Other parts of the configuration that make a different table (e.g. a dtype), after the device.
    """
    dev = torch.device(device).type
    parts = [name]
    if always_device or dev != "cpu":
        parts.append(dev)
    parts += [str(t) for t in tags]
    if quick:
        parts.append("quick")
    return "_".join(parts)


def machine_info(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    return (
        f"{platform.node()} ({platform.machine()}), {os.cpu_count()} cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"device {device} (GPU: {gpu})"
    )


#: The kernel's transparent-huge-page setting (Linux); huge pages make a process's resident set jump by 2 MiB pages.
THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def transparent_hugepages() -> str | None:
    r"""The kernel's transparent-huge-page setting as it reads in :data:`THP_ENABLED` (e.g. ``"always [madvise]
    never"``: the bracketed mode is in force), for the machine lines of memory benchmarks; ``None`` where it cannot
    be read (not Linux)."""
    try:
        return THP_ENABLED.read_text().strip() or None
    except OSError:
        return None


def timeit(fn: Callable[[], object], repeats: int = 3, device: torch.device | str = "cpu") -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run), synchronising CUDA."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def status_mib(key: str) -> float:
    r"""A memory line of ``/proc/self/status`` in MiB (``"VmRSS"``: the resident set now; ``"VmHWM"``: its
    high-water mark since the start or the last :func:`reset_peak_rss`); NaN where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024  # kB (KiB)
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    r"""The process's peak resident set size so far in MiB (``ru_maxrss``, KiB on Linux; reset with it by
    :func:`reset_peak_rss`)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    r"""Reset the kernel's high-water mark of the resident set to the resident set now (``/proc/self/clear_refs``),
    so that ``status_mib("VmHWM")`` is the peak of what runs next; ``False`` where it cannot be reset. ``ru_maxrss``
    is reset with it: read the process's whole peak before."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, text: str) -> Path:
    """Write ``text`` as report ``name`` (a :func:`report_name`) to :func:`results_path` ``(name)`` and print it."""
    path = results_path(name)
    path.write_text(text)
    print(text)
    print(f"\n(written to {path})")
    return path


def write_benchmark_report(
    name: str,
    title: str,
    facts: Sequence[str],
    body: Sequence[str],
    *,
    device: torch.device | str = "cpu",
    machine_note: str = "",
) -> Path:
    r"""Assemble a benchmark's report in the layout the scripts share, write it as report ``name`` and print it.

    The text, line by line::

        # <title>

        - machine: <machine_info(device)><machine_note>
        - <fact>            (one line per entry of ``facts``: the mode, the data, what the columns are, ...)

        <body>              (the entries of ``body`` as they are: headings, paragraphs, tables, blank lines)

    ending with exactly one newline (blank lines at the end of ``body`` are dropped).

    Args:
        name: The report's name from :func:`report_name`: a quick run or a run on another device writes its own file
            (in ``results/local/`` for quick runs, :func:`results_path`), never over a committed full table.
        title: The title, without the leading ``# ``.
        facts: The bullet lines after the machine line, without the leading ``- ``.
        body: The lines after the head, each a line or several joined by newlines.
        device: The device the machine line describes (:func:`machine_info`).
        machine_note: Text appended to the machine line (e.g. ``"; peak resident memory 512 MB"``).

    Returns:
        The path written (as :func:`write_report`, which writes it).
    """
    head = [f"# {title}", "", f"- machine: {machine_info(device)}{machine_note}", *(f"- {f}" for f in facts), ""]
    return write_report(name, "\n".join([*head, *body]).rstrip("\n") + "\n")


def normal_angles(frames: np.ndarray, normals: np.ndarray) -> np.ndarray:
    r"""Angles in degrees ``(n,)`` between the normals of the ``n x 3 x 2`` tangent frames and the exact unit
    ``normals`` ``(n, 3)`` (``rvgp_frames.py``, ``rvgp_noisy_calibration.py``)."""
    est = np.cross(frames[:, :, 0], frames[:, :, 1])
    est /= np.linalg.norm(est, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.abs((est * normals).sum(1)), 0.0, 1.0)))
