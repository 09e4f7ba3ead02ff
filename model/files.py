"""Files written whole or not at all, and what is fitted once per dataset and cached by key.

    from model.files import atomic_write, save_torch, load_or_fit
    atomic_write("table.md", text)                         # a reader sees the old file or the new one, never half
    save_torch(state, "run/checkpoint.pt")                  # the same, for torch.save
    clf = load_or_fit(data.info.get("cache_dir"), "type_classifier", key, fit, to_state, from_state)

`load_or_fit` is the one way an evaluator or a family keeps what it fits on a prepared dataset (the evaluator
networks of model/eval/, latent diffusion's autoencoder): `<cache_dir>/<name>-<sha256(key)[:16]>.pt` holds the key and
`to_state(fitted)`; a file whose key differs, or that cannot be read (cut short, another format), is refitted and
replaced with a warning; a folder that cannot be written keeps the fit in memory, with a warning. Without a
cache_dir (data built in memory) the fit is kept in this process (`MEMORY`, the last few keys): a bench that trains
several recipes on the same in-memory data fits each evaluator once, not once per run. Every call gets its own object
(`from_state` of the kept state), so no caller sees another's changes. A key that names a dataset without a
fingerprint (data assembled by hand) is never kept: nothing would tell two such datasets apart. Concurrent writers
each write a whole (identical) file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable


HOST = socket.gethostname()
MEMORY: dict[str, dict] = {}  # "<name>-<hash>" -> to_state(fitted), for fits without a cache_dir (insertion order)
MEMORY_KEYS = 8


def beside(path: Path, tag: str) -> Path:
    """A hidden name next to `path`, unique to this host, process and call (`.<name>.<tag>-<host>-<pid>-<hex>`), for
    its temporary or previous version: two writers never share one, and a leftover names the process that left it."""
    return path.with_name(f".{path.name}.{tag}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a file.

    The file is created with open(), so it gets the usual mode (0644 under umask 022), not mkstemp's 0600:
    others on shared storage can read the results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = beside(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_torch(obj, path: str | Path) -> Path:
    """torch.save, atomically (a crash never leaves half a file)."""
    import torch  # here, not above: a search's supervising process uses this module and never imports torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = beside(path, "tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def dataset_key(data, name: str, version: int, config=None, **extra) -> dict:
    """What an object fitted on a prepared dataset depends on: its name and code version, its config (a dataclass
    or dict), the dataset's fingerprint and its training record ids, and any JSON-able `extra` (training labels)."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return {"name": name, "version": version, "config": cfg, "fingerprint": data.info.get("fingerprint"),
            "train_ids": sorted({int(i) for i in data.train.ids}), **extra}


def key_hash(key: dict) -> str:
    """A stable hash of a JSON-able key (sorted, tuples as lists)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()


def load_or_fit(cache_dir: str | Path | None, name: str, key: dict, fit: Callable[[], Any],
                to_state: Callable[[Any], dict], from_state: Callable[[dict], Any]) -> Any:
    """The object `fit()` makes for this key: loaded from `<cache_dir>/<name>-<hash[:16]>.pt`, else fitted and cached
    (see the module docstring). `key` must hold everything the fit depends on, a code version included."""
    import torch

    digest = key_hash(key)
    path = Path(cache_dir) / f"{name}-{digest[:16]}.pt" if cache_dir else None
    if path is not None and path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("key") != digest:
                raise ValueError("its key does not match this dataset and code version")
            return from_state(saved)
        except Exception as e:  # a truncated or corrupt file, another format: refit, never crash a trial
            warnings.warn(f"{name} cache {path} unreadable ({type(e).__name__}: {e}); refitting it")
    kept = path is None and key.get("fingerprint", "") is not None  # a hand-made dataset has no fingerprint
    memo = f"{name}-{digest}"
    if kept and memo in MEMORY:
        return from_state(copy.deepcopy(MEMORY[memo]))
    start = time.perf_counter()
    fitted = fit()
    print(f"model: {name} fitted in {time.perf_counter() - start:.1f} s"
          + (f"; cached at {path}" if path else " (no cache_dir: kept in this process)" if kept else
             " (no cache_dir, no dataset fingerprint: not kept)"), file=sys.stderr, flush=True)
    if kept:
        MEMORY[memo] = copy.deepcopy(to_state(fitted))
        while len(MEMORY) > MEMORY_KEYS:
            MEMORY.pop(next(iter(MEMORY)))
    if path is not None:
        try:
            save_torch({"key": digest, **to_state(fitted)}, path)
        except OSError as e:
            warnings.warn(f"{name} not cached ({path}: {e}); it stays in memory and is refitted next time")
    return fitted
