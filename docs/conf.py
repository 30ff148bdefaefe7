"""Sphinx configuration of the dcspass documentation site.

Build it (warnings are errors, as in CI):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's package, so the site documents the code beside it even without an install.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dcspass

project = "dcspass"
author = "dcspass contributors"
copyright = "dcspass contributors"
release = dcspass.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
]

# The Markdown pages stay Markdown (GitHub renders them too); headings up to ### get link anchors,
# so links such as pass.md#instrument resolve on the site.
source_suffix = {".md": "markdown"}
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

root_doc = "index"
exclude_patterns = ["_build"]
# Fences without a language are command lines, tables or output: shown as plain text, not lexed.
highlight_language = "none"

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"dcspass {release}"
