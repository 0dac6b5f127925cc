r"""Fail when the documentation build logged a warning that docs/known_warnings.txt does not list.

Usage: ``python tools/docs_warnings.py WARNINGS_LOG KNOWN_WARNINGS``. Each non-comment line of the known list is
``path | text``: a warning is known when its location contains ``path`` and its message contains ``text`` (no line
numbers, so that edits elsewhere in a file keep the entry valid). A known entry that no longer matches is reported, to
be removed; it does not fail the check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ENTRY = re.compile(r"^(?P<location>.*?): (?P<kind>WARNING|ERROR|CRITICAL): (?P<message>.*)$")


def read_warnings(log: Path) -> list[tuple[str, str]]:
    r"""``(location, message)`` of every warning in a Sphinx warnings file (continuation lines joined)."""
    out: list[tuple[str, str]] = []
    for line in log.read_text().splitlines() if log.exists() else []:
        m = ENTRY.match(line)
        if m:
            out.append((m.group("location"), m.group("message")))
        elif line.strip() and out:
            location, message = out[-1]
            out[-1] = (location, f"{message} {line.strip()}")
        elif line.strip():
            out.append(("", line.strip()))
    return out


def read_known(path: Path) -> list[tuple[str, str]]:
    r"""``(path, text)`` entries of the known-warnings file."""
    entries = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            where, _, text = line.partition("|")
            entries.append((where.strip(), text.strip()))
    return entries


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    warnings, known = read_warnings(Path(argv[1])), read_known(Path(argv[2]))
    used: set[int] = set()
    new = []
    for location, message in warnings:
        hit = [i for i, (where, text) in enumerate(known) if where in location and text in message]
        used.update(hit)
        if not hit:
            new.append(f"{location}: {message}")
    stale = [f"{where} | {text}" for i, (where, text) in enumerate(known) if i not in used]
    print(f"docs warnings: {len(warnings)} in the build, {len(warnings) - len(new)} known, {len(new)} new")
    for entry in stale:
        print(f"  no longer raised (remove it from the known list): {entry}")
    for entry in new:
        print(f"  NEW: {entry}")
    return 1 if new else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
