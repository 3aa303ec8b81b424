"""Sphinx configuration: the guide (Markdown, via myst-parser) and the API reference
(autodoc). Build: ``sphinx-build -W -b html docs docs/_build`` (warnings are errors)."""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import fastrpc  # noqa: E402

project = "fastrpc"
author = "fastrpc developers"
release = version = fastrpc.__version__
copyright = "fastrpc developers"

extensions = ["sphinx.ext.autodoc", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]
suppress_warnings = ["myst.xref_missing"]  # links to files outside docs/ (../src/...) stay plain text

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = True
# Annotations naming types autodoc cannot resolve are shown as written, not warned about.
nitpicky = False

html_theme = "alabaster"
html_title = f"fastrpc {release}"
