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

# The JSON (seed) mode page: docs/json-mode.md when it exists, else the short page
# in docs/guide/json-mode.md.
JSON_MODE = os.path.join(HERE, "json-mode.md")
if os.path.exists(JSON_MODE):
    exclude_patterns.append("json-mode.md")


def _json_mode_source(app: object, docname: str, source: list[str]) -> None:
    if docname == "guide/json-mode" and os.path.exists(JSON_MODE):
        source[0] = "```{include} ../json-mode.md\n:relative-docs: ../\n:relative-images:\n```\n"


def setup(app: object) -> None:
    app.connect("source-read", _json_mode_source)  # type: ignore[attr-defined]
