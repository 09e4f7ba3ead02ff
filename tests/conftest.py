"""Shared test fixtures.

Data: `datafx` carries small builders (png, encode, pokedex_record, write_pokedex) and
`make_pokedex` writes a Pokédex-layout folder, so the data tests build exactly the odd and broken
inputs they check, in tmp_path. `shared_pokedex` is the real sample data, or a skip when absent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

SHARED_POKEDEX = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "pokedex"


def png(colour=(200, 40, 40, 255), size=(12, 12), mode="RGBA", fmt="PNG") -> bytes:
    """A solid-colour image of `mode` encoded as `fmt`."""
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt)
    return buf.getvalue()


def encode(img: Image.Image | np.ndarray, fmt="PNG", **kwargs) -> bytes:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def pokedex_record(i: int, types=("Grass", "Poison"), **overrides) -> dict:
    rec = {"id": i, "name": {"english": f"Mon{i}"}, "type": list(types), "species": "Seed Pokémon",
           "description": f"Creature number {i} naps in the sun."}
    rec.update(overrides)
    return rec


def write_pokedex(directory: Path, records: list[dict], images: dict) -> Path:
    """Write pokedex.json and images/thumbnails/NNN.png (images: file name → bytes) into `directory`."""
    thumbs = directory / "images" / "thumbnails"
    thumbs.mkdir(parents=True, exist_ok=True)
    (directory / "pokedex.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    for name, data in images.items():
        (thumbs / name).write_bytes(data)
    return directory


# The files that take longest (CI's --durations), started first so that the two workers finish together: pytest-xdist
# hands out whole files (--dist loadfile) in collection order (--no-loadscope-reorder; its default would start the
# files with most tests first, which are the quick ones). The other files keep their order after these.
LONGEST_FIRST = ("test_search_e2e.py", "test_diffusion.py", "test_search_e2e_families.py",
                 "test_search_e2e_schedulers.py", "test_cluster.py", "test_tune_restore.py", "test_benches.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture(scope="module")
def one_torch_thread():
    """For a module whose fits take a fraction of a second on one core (two threads on a busy 2-core machine only
    spin): torch on one thread while it runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def modules_after(code: str, modules: tuple[str, ...]) -> tuple[list[str], str]:
    """(which of `modules` a fresh interpreter has imported after running `code` in the repository, sorted; what it
    printed before that)."""
    import subprocess
    import sys

    probe = code + f"\nimport sys\nprint(sorted(m for m in {modules!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    *printed, last = r.stdout.strip().splitlines()
    return eval(last), "\n".join(printed)  # noqa: S307 — the list printed above


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Two pytest-xdist workers share two cores: each worker's torch (and the CLIs it starts) computes on one
    thread. Two threads per worker oversubscribe the cores, and on the small tensors of these tests a second
    thread buys little: the suite's CPU time falls by more than it loses in any one test."""
    import os

    import torch

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """Each test process (each pytest-xdist worker) prepares data into its own cache root, inherited by the CLI
    subprocesses it starts: no two workers build the same cache entry at once, and the suite writes nothing into
    the user's ~/.cache/pokemon_t2i."""
    import os

    old = os.environ.get("POKEMON_T2I_CACHE")
    os.environ["POKEMON_T2I_CACHE"] = str(tmp_path_factory.mktemp("t2i-cache"))
    yield
    if old is None:
        os.environ.pop("POKEMON_T2I_CACHE", None)
    else:
        os.environ["POKEMON_T2I_CACHE"] = old


@pytest.fixture
def datafx():
    return SimpleNamespace(png=png, encode=encode, pokedex_record=pokedex_record, write_pokedex=write_pokedex)


@pytest.fixture
def shared_pokedex() -> Path:
    if not (SHARED_POKEDEX / "pokedex.json").is_file():
        pytest.skip(f"real Pokédex sample data not found at {SHARED_POKEDEX} (a fresh clone has no ../shared)")
    return SHARED_POKEDEX


@pytest.fixture
def make_pokedex(tmp_path):
    """make_pokedex(n=6) → a folder with n good records (ids 1..n, solid-colour RGBA images)."""
    def make(n: int = 6, name: str = "pokedex") -> Path:
        records = [pokedex_record(i) for i in range(1, n + 1)]
        images = {f"{i:03d}.png": png((20 * i % 256, 100, 200, 255)) for i in range(1, n + 1)}
        return write_pokedex(tmp_path / name, records, images)
    return make
