r"""Sphinx configuration of gpgeom's documentation site (build it with ``bash tools/docs.sh``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))

# Tutorials and executed pages run at smoke sizes, one torch thread, figures inline (not the Agg backend that a
# test runner may have set for the parent process: the kernels inherit this environment).
os.environ.setdefault("SMOKE_TEST", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("GPGEOM_PROGRESS", "0")
os.environ.pop("MPLBACKEND", None)
# tqdm.auto warns in every notebook that ipywidgets is missing; progress bars are off in the build anyway
os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")

import gpgeom  # noqa: E402

project = "gpgeom"
author = "gpgeom developers"
copyright = "2026, gpgeom developers"
release = version = gpgeom.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "sphinx_copybutton",
    "gpgeom_docs",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", "_generated/*.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# -- autodoc: Google-style docstrings with reST math ----------------------------------------------------------------
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_attr_annotations = True

# Every reference into gpgeom must resolve (a broken one is a warning, and CI builds with -W). Third-party names
# (torch, GPyTorch, BoTorch, numpy, ...) and builtins in signatures are not cross-linked: the build has no network
# for intersphinx inventories.
nitpicky = True
nitpick_ignore_regex = [] if os.environ.get("GPGEOM_DOCS_NITPICK_ALL") else [(r"py:.*", r"(?!gpgeom\b).*")]

# -- MyST and MyST-NB --------------------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("GPGEOM_DOCS_EXECUTE", "cache")
nb_execution_cache_path = str(DOCS / "_build" / ".jupyter_cache")
nb_execution_timeout = int(os.environ.get("GPGEOM_DOCS_TIMEOUT", "900"))
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_merge_streams = True
nb_execution_excludepatterns: list[str] = []

# -- HTML --------------------------------------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"gpgeom {version}"
html_static_path = ["_static"]
html_css_files = ["gpgeom.css"]
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "navbar_align": "left",
    "header_links_before_dropdown": 7,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version", "theme-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = True
# A local MathJax (tools/docs.sh --offline-math: a folder holding mathjax/tex-mml-chtml.js) for machines without
# network, e.g. for screenshots; the CDN otherwise.
if os.environ.get("GPGEOM_MATHJAX_DIR"):
    html_static_path.append(os.environ["GPGEOM_MATHJAX_DIR"])
    mathjax_path = "mathjax/tex-mml-chtml.js"
