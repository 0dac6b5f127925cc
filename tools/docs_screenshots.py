r"""Screenshots of the built documentation site in headless Chromium (Debian's ``chromium`` package).

Usage: ``python tools/docs_screenshots.py [--site docs/_build/html] [--out docs/_build/screenshots]``. Build the site
first (``bash tools/docs.sh``, with ``--offline-math`` for rendered formulas without network). Saves full-height
PNGs of the index, a model page, two tutorials, the engine page and the API index, and checks that every image of
those pages exists and that each page shows at least the images it should (the architecture diagram, the executed
figures). Install the browser with ``apt-get install -y chromium``; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import html.parser
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: page (relative to the site), file name of its screenshot, window height, images it must show at least
PAGES = [
    ("index.html", "index.png", 1400, 0),
    ("models/mmgp.html", "model_mmgp.png", 4200, 1),
    ("tutorials/user_data.html", "tutorial_user_data.png", 6200, 2),
    ("engine.html", "engine.png", 2600, 1),
    ("tutorials/botorch_multiobjective.html", "tutorial_botorch_multiobjective.png", 6400, 2),
    ("api/index.html", "api_index.png", 3000, 0),
]

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]


class _Images(html.parser.HTMLParser):
    r"""The ``src`` of every ``<img>`` of a page, and inline SVG objects."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            src = dict(attrs).get("src")
            if src:
                self.sources.append(src)


def check_images(page: Path, minimum: int) -> list[str]:
    r"""Problems with a page's images: missing files, or fewer images than expected."""
    parser = _Images()
    parser.feed(page.read_text())
    problems = []
    local = [s for s in parser.sources if not s.startswith(("http:", "https:", "data:"))]
    for src in local:
        if not (page.parent / src.split("#")[0]).exists():
            problems.append(f"{page.name}: image {src} does not exist")
    if len(parser.sources) < minimum:
        problems.append(f"{page.name}: {len(parser.sources)} images, expected at least {minimum}")
    return problems


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium found: apt-get install -y chromium")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "docs" / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()
    if not (args.site / "index.html").exists():
        sys.exit(f"{args.site}/index.html not found: build the site first (bash tools/docs.sh)")
    args.out.mkdir(parents=True, exist_ok=True)
    exe = browser()
    problems: list[str] = []
    for page, name, height, minimum in PAGES:
        path = args.site / page
        if not path.exists():
            problems.append(f"{page} not found")
            continue
        problems += check_images(path, minimum)
        target = args.out / name
        with tempfile.TemporaryDirectory(prefix="gpgeom-chromium-") as profile:
            cmd = [
                exe,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={args.width},{height}",
                "--virtual-time-budget=4000",
                f"--screenshot={target}",
                path.resolve().as_uri(),
            ]
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if run.returncode != 0 or not target.exists():
            problems.append(f"{page}: chromium failed ({run.returncode}): {run.stderr.strip()[-400:]}")
        else:
            print(f"{target} ({target.stat().st_size // 1024} KiB)")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
