"""MkDocs hook: build the equation index from ``miras_ref.equations.EQUATIONS``.

A page whose Markdown contains the placeholder ``{{ equation_index }}`` gets it replaced by a
table with one row per entry of ``miras_ref.equations.EQUATIONS``::

    | Paper | What | Implementation | Tests |

Each entry is expected to have the attributes ``key`` (e.g. ``"Eq 11"``), ``title``,
``implementation`` (a dotted path such as ``"miras_ref.bias.LpBias"``) and ``tests`` (a
tuple of pytest node ids). The implementation cell links to the mkdocstrings anchor of that
object on the API page (mkdocstrings uses the full dotted path as the anchor id).

During a build the hook also checks that every implementation can be imported and that every
test node id names an existing test file and test function; each problem is logged as a
warning, which fails ``mkdocs build --strict``.

``render_table`` has no MkDocs dependency, so tests can import this file and call it.
"""

from __future__ import annotations

import ast
import importlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = "{{ equation_index }}"
API_PAGE = "api/miras_ref.md"

log = logging.getLogger("mkdocs.hooks.equation_index")


def _cell(text: str) -> str:
    """Make ``text`` safe for one cell of a Markdown pipe table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(text: str) -> str:
    """Format ``text`` as inline code inside a table cell."""
    text = _cell(text)
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _entries(equations: Any) -> list[Any]:
    if isinstance(equations, Mapping):
        return list(equations.values())
    return list(equations)


def render_table(entries: Iterable[Any], api_page: str = API_PAGE) -> str:
    """Render equation-index entries as a Markdown table.

    Parameters
    ----------
    entries
        Objects with attributes ``key``, ``title``, ``implementation`` and ``tests``
        (for example the frozen dataclasses of ``miras_ref.equations.EQUATIONS``), or a
        mapping whose values are such objects.
    api_page
        Path, relative to the page holding the table, of the API page whose anchors are
        the full dotted paths of the documented objects.

    Returns
    -------
    str
        A Markdown pipe table with the columns Paper, What, Implementation and Tests,
        followed by a blank line.
    """
    lines = [
        "| Paper | What | Implementation | Tests |",
        "| --- | --- | --- | --- |",
    ]
    for entry in _entries(entries):
        impl = str(entry.implementation).strip()
        impl_cell = f"[{_code(impl)}]({api_page}#{impl})" if impl else ""
        tests = tuple(entry.tests or ())
        tests_cell = "<br>".join(_code(t) for t in tests)
        lines.append(f"| {_cell(entry.key)} | {_cell(entry.title)} | {impl_cell} | {tests_cell} |")
    return "\n".join(lines) + "\n"


def _resolve(dotted: str) -> bool:
    """Whether ``dotted`` names an importable module or an attribute inside one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _test_names(path: str) -> set[str]:
    """Names ``func`` and ``Class::method`` of the test functions defined in ``path``."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), filename=path)
    names: set[str] = set()
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, funcs):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, funcs):
                    names.add(f"{node.name}::{sub.name}")
    return names


def check_entries(entries: Iterable[Any], root: str) -> list[str]:
    """Problems with the entries: unimportable implementations, unknown test node ids.

    Parameters
    ----------
    entries
        As for :func:`render_table`.
    root
        The repository root, against which test node ids are resolved.

    Returns
    -------
    list of str
        One human-readable message per problem; empty when all is well.
    """
    problems: list[str] = []
    cache: dict[str, set[str] | None] = {}
    for entry in _entries(entries):
        impl = str(entry.implementation).strip()
        if not impl:
            problems.append(f"{entry.key}: no implementation given")
        elif not _resolve(impl):
            problems.append(f"{entry.key}: cannot import implementation {impl!r}")
        if not entry.tests:
            problems.append(f"{entry.key}: no tests listed")
        for node_id in entry.tests or ():
            file_part, _, rest = str(node_id).partition("::")
            path = os.path.join(root, file_part)
            if file_part not in cache:
                try:
                    cache[file_part] = _test_names(path) if os.path.isfile(path) else None
                except SyntaxError:
                    cache[file_part] = None
            names = cache[file_part]
            if names is None:
                problems.append(f"{entry.key}: test file not found or unparsable: {file_part}")
                continue
            name = rest.split("[", 1)[0]
            if name and name not in names:
                problems.append(f"{entry.key}: no test {name!r} in {file_part}")
    return problems


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace ``{{ equation_index }}`` with the table built from ``EQUATIONS``."""
    if PLACEHOLDER not in markdown:
        return markdown

    root = os.path.dirname(os.path.abspath(config.config_file_path))
    if root not in sys.path:
        sys.path.insert(0, root)

    try:
        from miras_ref.equations import EQUATIONS
    except ImportError as exc:
        from mkdocs.exceptions import PluginError

        raise PluginError(
            f"equation_index hook: cannot import miras_ref.equations.EQUATIONS ({exc})"
        ) from exc

    entries = _entries(EQUATIONS)
    for problem in check_entries(entries, root):
        log.warning("equation index: %s", problem)

    # The API page link must be relative to the page that holds the table.
    page_dir = os.path.dirname(page.file.src_uri) if page is not None else ""
    api_page = os.path.relpath(API_PAGE, page_dir or ".").replace(os.sep, "/")
    return markdown.replace(PLACEHOLDER, render_table(entries, api_page=api_page))
