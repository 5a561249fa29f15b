"""Sphinx configuration of the documentation site: ``python -m sphinx -W -n -b html docs docs/_build``.

``-n`` (nitpicky) makes every cross-reference that names nothing a warning and ``-W`` makes a warning an
error, so a docstring that points at a renamed function fails the build (CI builds it, ``.ci/run``).
References into torch, numpy and the standard library are not checked (no intersphinx: CI has no network).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

project = "pertattack"
author = "the pertattack developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
root_doc = "index"
html_theme = "alabaster"
html_theme_options = {"page_width": "1200px", "sidebar_width": "260px"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # the README's first heading is an h1 after the page's own title

nitpicky = True
# outside this package: torch, numpy, the standard library, typing's aliases and parameter names that
# napoleon's "Args:" sections turn into types
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|nn|collections|typing|pathlib|argparse|dataclasses|enum|abc)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Any|Callable|Iterable|Iterator|Sequence|Mapping|Path|Literal|Protocol|TypeVar)"),
    (r"py:.*", r"(optional|array-like|callable|default|float|int|str|bool|dict|list|tuple|None)"),
    (r"py:(class|exc)", r"(os|pickle|io|gzip|tarfile|json|zipfile|urllib|http)\..*"),
    (r"py:class", r"pertattack\.\S*\._\w+"),  # private bases that show-inheritance names
    # type aliases of the annotations (documented where they are defined, not as classes)
    (r"py:class", r"(pertattack\.\S+\.)?(Preprocess|OutputSelector|Map|T)"),
]


def _preset_table(app) -> None:
    """docs/api/presets.md, written from :func:`pertattack.list_attacks` at each build: the table cannot drift."""
    import pertattack

    lines = ["# Presets", "",
             "Every name that `get_attack` takes, written from `pertattack.list_attacks()` when these pages were "
             "built. `p` is the default norm (a keyword `p=` changes it); an eps is in the units of the input box.",
             "", "| name | p | objective | constraint | solver | what it is |", "|---|---|---|---|---|---|"]
    for row in pertattack.list_attacks():
        p = row.get("p")
        p = "inf" if isinstance(p, float) and math.isinf(p) else ("" if p is None else f"{p:g}")
        desc = str(row.get("description", "")).replace("|", "\\|")
        lines.append(f"| `{row['name']}` | {p} | {row.get('objective', '')} | {row.get('constraint', '')} | "
                     f"{row.get('solver', '')} | {desc} |")
    Path(app.srcdir, "api", "presets.md").write_text("\n".join(lines) + "\n")


def _short_names(app, env, node, contnode):
    """A short reference (``:func:`get_attack``` inside pertattack.attacks) names the one documented object
    of that name anywhere in the package. Unresolved (an error under -n -W) when none or several match."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].removeprefix("pertattack.").lstrip(".~")
    domain = env.get_domain("py")
    hits = [name for name in domain.objects if name == "pertattack." + target or name.endswith("." + target)]
    if len(hits) > 1:  # the same object re-exported: keep where it is defined
        hits = [h for h in hits if _defined_at(h)]
    if len(hits) != 1:
        return None
    obj = domain.objects[hits[0]]
    from sphinx.util.nodes import make_refnode

    return make_refnode(app.builder, node["refdoc"], obj.docname, obj.node_id, contnode, hits[0])


def _defined_at(name: str) -> bool:
    """Whether the documented ``name`` (module.qualname) is where its object is defined."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr, None)
        mod = getattr(obj, "__module__", None)
        return mod is None or name.startswith(mod + ".")
    return False


def setup(app):
    app.connect("builder-inited", _preset_table)
    app.connect("missing-reference", _short_names)
