r"""Tables and plots of calibration summaries: a Markdown table of several models and one reliability diagram."""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = ["format_calibration_table", "plot_reliability"]

#: Column headers of the keys of :func:`gpgeom.metrics.calibration_summary`; other keys keep their own name.
_LABELS = {
    "coverage_50": "cov 50%",
    "coverage_90": "cov 90%",
    "coverage_95": "cov 95%",
    "z_rms": "z RMS",
    "nlpd": "NLPD",
    "crps": "CRPS",
    "width_95": "width 95%",
}


def _cell(v) -> str:
    r"""One table cell: an integer as it is, a real number with 3 decimals (scientific notation below 1e-3 and from
    1e4 on), a 0-d numpy array or torch tensor as the number it holds, anything else as ``str`` (``|`` escaped)."""
    if (isinstance(v, np.ndarray) or type(v).__module__.startswith("torch")) and getattr(v, "ndim", None) == 0:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return _escape(str(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.3e}"
    return f"{v:.3f}"


def _escape(text: str) -> str:
    r"""``text`` with ``|`` escaped, so that it stays in one Markdown table cell."""
    return text.replace("|", "\\|")


def format_calibration_table(rows: dict[str, dict]) -> str:
    r"""A Markdown table with one row per model and one column per key of its summary.

    Args:
        rows: ``{model name: summary}``, each summary a dict such as :func:`gpgeom.metrics.calibration_summary`
            returns (extra keys, e.g. an ``rmse``, become extra columns; columns follow the order of first appearance,
            a key a row lacks is shown as ``-``). Integers are written as integers, other numbers (Python, numpy
            or 0-d torch) with 3 decimals, or in scientific notation with 3 below 1e-3 and from 1e4 on; a ``|`` in
            a name or value is escaped.

    Returns:
        The table as a string (header, separator and one line per model, no trailing newline).
    """
    if not isinstance(rows, dict) or not rows:
        raise ValueError(f"rows must be a non-empty dict {{model name: summary dict}}, got {rows!r}.")
    keys: list[str] = []
    for name, summary in rows.items():
        if not isinstance(summary, dict):
            raise TypeError(f"rows[{name!r}] must be a dict of numbers, got {type(summary).__name__}.")
        keys += [k for k in summary if k not in keys]
    lines = [
        "| model | " + " | ".join(_escape(_LABELS.get(k, str(k))) for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, summary in rows.items():
        lines.append(
            f"| {_escape(str(name))} | " + " | ".join(_cell(summary[k]) if k in summary else "-" for k in keys) + " |"
        )
    return "\n".join(lines)


def plot_reliability(curves: dict[str, tuple], ax=None):
    r"""Reliability diagram: observed against nominal coverage of central intervals, one line per model, with the
    diagonal of perfect calibration (a line below it is over-confident, above it under-confident).

    Args:
        curves: ``{model name: (nominal, observed)}``, each pair as :func:`gpgeom.metrics.reliability_curve`
            returns (two arrays of the same length ``L``).
        ax: A matplotlib Axes to draw on; a new figure is made when ``None``.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if not isinstance(curves, dict) or not curves:
        raise ValueError("curves must be a non-empty dict {model name: (nominal, observed)}.")
    checked = {}
    for name, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"curves[{name!r}] must be a pair (nominal, observed).")
        nom, obs = (np.asarray(p, dtype=np.float64).ravel() for p in pair)
        if nom.shape != obs.shape or nom.size == 0:
            raise ValueError(
                f"curves[{name!r}]: nominal {nom.shape} and observed {obs.shape} must be equal, non-empty."
            )
        if not (np.isfinite(nom).all() and np.isfinite(obs).all()):
            raise ValueError(f"curves[{name!r}] holds NaN or infinite values.")
        checked[name] = (nom, obs)
    if ax is None:
        _, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1, label="calibrated")
    for name, (nom, obs) in checked.items():
        ax.plot(nom, obs, marker="o", ms=3, lw=1.5, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("observed coverage")
    ax.legend(loc="upper left", fontsize="small")
    return ax
