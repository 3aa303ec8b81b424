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


# Other top-level pages (docs/*.md written beside this guide, e.g. payloads.md) join
# the guide's table of contents, so that none is left out of it (a warning, an error
# under -W).
LISTED = {"index", "protocol", "architecture", "encoding-measurements", "json-mode"}
EXTRA_PAGES = sorted(name[:-3] for name in os.listdir(HERE) if name.endswith(".md") and name[:-3] not in LISTED)


def _source(app: object, docname: str, source: list[str]) -> None:
    if docname == "guide/json-mode" and os.path.exists(JSON_MODE):
        source[0] = "```{include} ../json-mode.md\n:relative-docs: ../\n:relative-images:\n```\n"
    if docname == "index" and EXTRA_PAGES:
        source[0] = source[0].replace(
            "guide/benchmarks\n", "guide/benchmarks\n" + "".join(f"{p}\n" for p in EXTRA_PAGES)
        )


def setup(app: object) -> None:
    app.connect("source-read", _source)  # type: ignore[attr-defined]
