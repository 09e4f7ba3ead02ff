"""Checkpoints as one torch file of plain data: weights, optimizer, epoch, RNG and the configs.

    from model import checkpoint
    checkpoint.save(state, "run/checkpoint.pt")   # atomic: a crash never leaves half a file; with a checksum
    state = checkpoint.load("run/checkpoint.pt")  # or a directory holding checkpoint.pt; DamagedCheckpoint if
                                                  # its weights no longer match the checksum
    train(model_cfg, train_cfg, data, resume=state)
    checkpoint.save(checkpoint.member(state, 2), "best")   # member 2 of a fused trial, on its own

A state (what `model.train.train_members` reports, for K members; a single trial is K = 1) holds:
format, model_config, train_configs (one `asdict` per member), text_encoder (name and the folder or
hub name it loaded from), epoch (epochs completed), model (trainable weights, each with a leading
member axis K), best_model (per member: its best-validation weights with a member axis of 1, or
None; the EMA weights for a family that trains with them), optimizer, ema (diffusers' EMAModel state,
or None), rng (torch CPU and CUDA states), best_selection (per member: the best value of its family's
selection metric), history (per member, per-epoch metrics), errors (per member: why it stopped, or None)
and, once training finished, final (the final metrics per member). `member(state, m)` is member m alone as a one-member state: what
`python -m model.generate` and the search's best_checkpoint/ hold.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import torch

FILENAME = "checkpoint.pt"
CHECKSUM = "checksum"  # the state's key for the digest of its tensors, written by save and verified by load


class DamagedCheckpoint(ValueError):
    """A checkpoint whose tensors differ from the ones it was saved with (bytes changed on disk or in transit)."""


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() or path.suffix == "" else path


def _tensors(value, key: str = ""):
    """(key path, tensor) for every tensor in a state, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for k in sorted(value, key=str):
            yield from _tensors(value[k], f"{key}/{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{key}/{i}")


def checksum(state: dict) -> str:
    """sha256 of every tensor in the state (its place, dtype, shape and bytes) except the checksum itself: ~1 GB/s,
    about a quarter of what torch.save costs."""
    h = hashlib.sha256()
    for key, t in _tensors({k: v for k, v in state.items() if k != CHECKSUM}):
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{h.hexdigest()}"


def save(state: dict, path: str | Path) -> Path:
    """Write `state` with the checksum of its tensors, atomically: a temporary name of this process's own, then a
    rename, so a crash or a second writer never leaves half a file."""
    path = _file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save({**state, CHECKSUM: checksum(state)}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    """The state saved at `path` (a file, or the directory holding checkpoint.pt), its checksum verified:
    DamagedCheckpoint naming the file if its tensors changed since it was written. A state saved before checksums
    existed has none to verify."""
    path = _file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a checkpoint file or the directory holding {FILENAME}")
    # weights_only: a checkpoint holds tensors and plain data only, so loading runs no pickled code.
    state = torch.load(path, map_location=map_location, weights_only=True)
    written = state.pop(CHECKSUM, None) if isinstance(state, dict) else None
    if written is not None and (now := checksum(state)) != written:
        raise DamagedCheckpoint(f"{path} is damaged: its weights do not match the checksum written with them "
                                f"({now[:19]}... != {written[:19]}...); use another copy, or retrain")
    return state


def member(state: dict, m: int) -> dict:
    """Member m of a (fused) training state as a one-member state, without the optimizer and last
    weights (a finished member is never trained again): its configs, best weights, history, final metrics."""
    k = len(state["train_configs"])
    if not 0 <= m < k:
        raise IndexError(f"member {m} requested, but this checkpoint holds {k} member(s) (0..{k - 1})")
    out = {key: state[key] for key in ("format", "model_config", "text_encoder", "epoch", "rng") if key in state}
    for key in ("train_configs", "best_model", "best_selection", "history", "errors", "final"):
        if key in state:
            out[key] = [state[key][m]]
    out["member_of"] = {"member": m, "members": k}
    return out
