"""What the install declares and what the entry points import (fast; no Ray, no model).

pyproject.toml must name every third-party package the code imports itself, not rely on it
arriving as someone else's dependency; `--help` must answer without loading matplotlib.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from conftest import modules_after

REPO = Path(__file__).resolve().parents[1]
LOCAL = {"model", "data_pipeline", "search", "bench", "tests", "conftest"}


def _imports(folder: str) -> set[str]:
    names = set()
    for path in (REPO / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    siblings = {p.stem for p in (REPO / folder).glob("*.py")}  # tests import each other's helpers
    return names - LOCAL - siblings - set(sys.stdlib_module_names)


def _declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _distributions(modules: set[str]) -> dict[str, set[str]]:
    dists = packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in dists.get(m, [])} for m in modules}


def test_every_imported_package_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    # An optional extra (mlflow) serves an opt-in flag; its import sits behind that flag's path.
    extras = set().union(*(_declared(reqs) for name, reqs in project["optional-dependencies"].items()
                           if name != "test"))
    missing = {m: d for folder in ("model", "data_pipeline", "search")
               for m, d in _distributions(_imports(folder)).items() if not d & (runtime | extras)}
    assert not missing, f"imported by the code but not in [project] dependencies or an extra: {missing}"
    tests = runtime | extras | _declared(project["optional-dependencies"]["test"])
    missing = {m: d for m, d in _distributions(_imports("tests")).items() if not d & tests}
    assert not missing, f"imported by the tests but not declared (dependencies or the test extra): {missing}"


def test_help_does_not_import_matplotlib():
    """`python -m search.grid` itself only watches the search: it loads neither torch nor Ray, whatever the flags. Its
    child, the driver, parses them: --help loads neither Ray nor matplotlib there (torch it does: the flags include
    every registered model family's own fields, and a family's module is its network too)."""
    run = ("import sys, runpy; sys.argv = ['search.grid', '--help']\n"
           "try: runpy.run_module('search.grid', run_name='__main__')\n"
           "except SystemExit: pass\n")
    loaded, printed = modules_after(run, ("torch", "ray", "matplotlib", "model.families"))
    assert "usage: python -m search.grid" in printed and "--unet-width" in printed  # the child's, a family's flag too
    assert loaded == []
    as_driver = "import os; os.environ['SEARCH_GRID_REPORT_FD'] = ''\n" + run  # no pipe: what the child runs
    loaded, printed = modules_after(as_driver, ("matplotlib", "ray", "diffusers", "open_clip"))
    assert "usage: python -m search.grid" in printed and "--unet-width" in printed
    assert loaded == []
