"""Fit once per dataset, cache by key: the one helper every evaluator network uses.

    from model.eval.cache import cache_key, cache_file, load_or_fit
    key = cache_key(data, "indomain_clip", version=1, config=cfg)          # dataset fingerprint, training ids, ...
    model = load_or_fit(cache_file(data, "indomain_clip", key), key,
                        fit=lambda: fit(data, cfg),                        # -> the fitted object
                        save=lambda m: {"config": ..., "weights": m.state_dict()},   # -> plain data (torch.save-able)
                        load=lambda state: from_state(state),              # <- that plain data
                        what="in-domain CLIP")

An evaluator network (the in-domain text-image model, the type classifier, the autoencoder) depends only on
the prepared dataset, its training split and its own settings, so a search fits it once, in the driver, and
every trial loads it. `load_or_fit` is that rule:
- the file at `path` is loaded when its stored key equals `key` (a file from another dataset, config or code
  version is a mismatch, never silently used);
- a missing file is fitted and written atomically (a temporary file, then `os.replace`): concurrent trials each
  write a whole, identical file, never half of one;
- an unreadable or mismatched file is refitted and replaced, with a warning (a crashed write must not crash
  every later trial);
- a folder that cannot be written leaves the object in memory, with a warning; `path=None` (data built in
  memory, no cache_dir) fits in memory every call.
Weights are stored with `torch.save` and read with `weights_only=True`: plain tensors, numbers, strings,
lists and dicts only, so `save` returns plain data and `load` rebuilds the object from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def cache_key(data, name: str, version: int, config=None, **extra) -> str:
    """sha256 of what a fitted evaluator depends on: its name and code version, its config (a dataclass or dict),
    the dataset's fingerprint and its training record ids, plus any JSON-able `extra` (e.g. the training labels)."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    blob = json.dumps({"name": name, "version": version, "config": cfg, "fingerprint": data.info.get("fingerprint"),
                       "train_ids": sorted({int(i) for i in data.train.ids}), **extra}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_file(data, name: str, key: str) -> Path | None:
    """<data.info["cache_dir"]>/<name>-<key[:16]>.pt, or None for data without a cache folder (built in memory)."""
    cache_dir = data.info.get("cache_dir")
    return Path(cache_dir) / f"{name}-{key[:16]}.pt" if cache_dir else None


def load_or_fit(path: Path | None, key: str, fit: Callable[[], T], save: Callable[[T], dict],
                load: Callable[[dict], T], what: str) -> T:
    """The object cached at `path` under `key`, else `fit()` (then cached there). See the module docstring."""
    if path is not None and Path(path).exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or state.get("key") != key:
                raise ValueError("its key does not match this dataset, config and code version")
            return load(state["state"])
        except Exception as e:  # a truncated or corrupt file, another format: refit, never crash a trial
            warnings.warn(f"{what} cache {path} unreadable ({type(e).__name__}: {e}); refitting it")
    start = time.perf_counter()
    obj = fit()
    print(f"{what}: fitted in {time.perf_counter() - start:.1f} s"
          + (f"; cached at {path}" if path is not None else " (no cache_dir: in memory)"), file=sys.stderr, flush=True)
    if path is not None:
        _write(Path(path), {"key": key, "state": save(obj)}, what)
    return obj


def _write(path: Path, blob: dict, what: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, tmp)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # its folder is not one (a file in the way): there is nothing to remove
            pass
        warnings.warn(f"{what} not cached ({path}: {e}); it stays in memory and is refitted next time")
