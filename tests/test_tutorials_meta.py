"""Static checks of the tutorial notebooks in ``tutorials/`` (no kernel, no execution).

Running the notebooks is ``pytest --nbmake tutorials/``; this module checks what a reader of
the committed notebooks relies on:

* every notebook listed in ``tutorials/README.md`` exists, and every notebook there is listed;
* each has code cells and a Markdown cell that cites an equation of the paper ("Eq 5", ...);
* its imports from ``miras_ref`` (and ``miras_gpu``) name only public modules and objects
  that exist, and no code reaches a private (``_``) attribute of anything;
* it is saved executed: every code cell ran, none raised, and at least one output is a PNG;
* it matches its generator, ``tutorials/build_notebooks.py`` (cell types and sources).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
README = TUTORIALS / "README.md"
GENERATOR = TUTORIALS / "build_notebooks.py"
NOTEBOOK_NAME = re.compile(r"\b(\d{2}_[A-Za-z0-9_]+\.ipynb)\b")
#: "Eq 4", "Eq. 28", "Eqs 28-32", "Equation 17", "(Eq 9)", "Proposition 3.2"
EQUATION_REF = re.compile(r"\b(?:Eqs?\.?|Equations?)\s*\(?\d+|\bProposition\s+\d")
#: packages of this project whose names a notebook may import (public ones only)
PACKAGES = ("miras_ref", "miras_gpu")


def listed_notebooks() -> list[str]:
    """Notebook file names in the order ``tutorials/README.md`` first mentions them."""
    if not README.is_file():
        return []
    names: list[str] = []
    for name in NOTEBOOK_NAME.findall(README.read_text(encoding="utf-8")):
        if name not in names:
            names.append(name)
    return names


def load(name: str) -> dict:
    return json.loads((TUTORIALS / name).read_text(encoding="utf-8"))


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def parse(cell: dict) -> ast.Module:
    # IPython magics and shell escapes are not Python; the tutorials use none, but be lenient
    lines = [ln for ln in source(cell).splitlines() if not ln.lstrip().startswith(("%", "!"))]
    return ast.parse("\n".join(lines))


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_readme_lists_notebooks():
    assert README.is_file(), "tutorials/README.md is missing"
    listed = listed_notebooks()
    assert listed, "tutorials/README.md lists no notebook (NN_name.ipynb)"
    on_disk = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert sorted(listed) == on_disk, (
        f"README lists {sorted(listed)} but tutorials/ holds {on_disk}")


def test_listed_notebooks_exist():
    missing = [n for n in listed_notebooks() if not (TUTORIALS / n).is_file()]
    assert not missing, f"listed in tutorials/README.md but missing: {missing}"


@pytest.fixture(params=listed_notebooks() or ["<none>"])
def notebook(request) -> tuple[str, dict]:
    name = request.param
    path = TUTORIALS / name
    assert path.is_file(), f"{name} is listed in tutorials/README.md but does not exist"
    return name, load(name)


def test_has_code_and_equation_markdown(notebook):
    name, nb = notebook
    assert code_cells(nb), f"{name} has no code cell"
    markdown = [source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert markdown, f"{name} has no Markdown cell"
    assert any(EQUATION_REF.search(m) for m in markdown), (
        f"{name}: no Markdown cell cites an equation (e.g. 'Eq 5')")
    assert any("$" in m for m in markdown), f"{name}: no LaTeX in the Markdown cells"


def test_imports_only_public_names(notebook):
    name, nb = notebook
    problems: list[str] = []
    for i, cell in enumerate(code_cells(nb)):
        tree = parse(cell)
        bound: set[str] = set()  # local names bound to miras_ref / miras_gpu modules or objects
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] not in PACKAGES:
                        continue
                    if any(is_private(part) for part in alias.name.split(".")):
                        problems.append(f"cell {i}: import {alias.name}")
                    importlib.import_module(alias.name)
                    bound.add(alias.asname or alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] not in PACKAGES:
                    continue
                if node.level or any(is_private(part) for part in node.module.split(".")):
                    problems.append(f"cell {i}: from {node.module} import ...")
                    continue
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if alias.name == "*" or is_private(alias.name):
                        problems.append(f"cell {i}: from {node.module} import {alias.name}")
                    elif not (hasattr(module, alias.name)
                              or importlib.util.find_spec(f"{node.module}.{alias.name}")):
                        problems.append(f"cell {i}: {node.module} has no {alias.name}")
                    bound.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            # no private attribute at all: of a module of ours, or of an object it returned
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                problems.append(f"cell {i}: private attribute .{node.attr}")
            if isinstance(node, ast.Name) and node.id in bound and is_private(node.id):
                problems.append(f"cell {i}: private name {node.id}")
    assert not problems, f"{name} uses non-public names of {' / '.join(PACKAGES)}: {problems}"


def test_imports_miras_ref_at_all(notebook):
    name, nb = notebook
    text = "\n".join(source(c) for c in code_cells(nb))
    assert re.search(r"^\s*(from|import)\s+miras_ref\b", text, re.M), (
        f"{name} does not import miras_ref")


def test_saved_with_outputs(notebook):
    name, nb = notebook
    pngs = 0
    for i, cell in enumerate(code_cells(nb)):
        if not source(cell).strip():
            continue
        assert cell.get("execution_count") is not None, (
            f"{name}: code cell {i} was not executed; run python tutorials/build_notebooks.py")
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", (
                f"{name}: code cell {i} raised {out.get('ename')}: {out.get('evalue')}")
            pngs += "image/png" in out.get("data", {})
    assert pngs >= 1, f"{name} has no saved image/png output"


def test_matches_generator(notebook):
    name, nb = notebook
    spec = importlib.util.spec_from_file_location("build_notebooks", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert name in module.NOTEBOOKS, f"{name} is not built by tutorials/build_notebooks.py"
    expected = module.NOTEBOOKS[name]()
    saved = [(c["cell_type"], source(c)) for c in nb["cells"]]
    assert saved == expected, (
        f"{name} differs from tutorials/build_notebooks.py; edit the generator and rebuild")
