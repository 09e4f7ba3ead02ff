"""Load a script of bench/ as a module, for the tests that run a bench's functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str, pickle_by_value: bool = False):
    """bench/<name>.py as the module `name`. pickle_by_value: Ray pickles the module's functions by value, for a
    trainable defined there (Ray's trial workers cannot import bench/)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if pickle_by_value:
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(module)
    return module


def table(text: str, header: str) -> list[list[str]]:
    """The body of the first Markdown table in `text` whose header line starts with `header`: its rows' cells,
    stripped (an error if there is no such table)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    assert set(lines[start + 1].replace("|", "").replace(":", "").strip()) == {"-"}, lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows
