"""Sphinx configuration of deepkd's documentation site (``nox -s docs`` builds it with ``-W``: warnings fail).

The pages are Markdown (MyST); the API reference comes from the docstrings (autodoc + napoleon); the config, CLI and
registry references are written from the code at every build by ``_ext/deepkd_reference.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # document the checkout being built, not an installed copy

from deepkd import __version__  # noqa: E402

project = "deepkd"
author = "deepkd developers"
copyright = "deepkd developers, Apache-2.0"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "deepkd_reference",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "bench-report-gpu.json"]

myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Each object is documented once, in the module that defines it: re-exports (``deepkd.Recipe``,
# ``deepkd.trainer.TrainConfig``...) are skipped, so cross-references have one target.
autodoc_default_options = {"members": True, "ignore-module-all": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of attributes autodoc documents

html_theme = "furo"
html_title = f"deepkd {release}"
html_static_path: list[str] = []
