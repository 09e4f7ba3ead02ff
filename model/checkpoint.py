"""Checkpoints as one torch file of plain data: weights, optimizer, epoch, RNG and the configs.

    from model import checkpoint
    checkpoint.save(state, "run/checkpoint.pt")   # atomic: a crash never leaves half a file
    state = checkpoint.load("run/checkpoint.pt")  # or a directory holding checkpoint.pt
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

import os
from pathlib import Path

import torch

FILENAME = "checkpoint.pt"


def _file(path: str | Path) -> Path:
    path = Path(path)
    return path / FILENAME if path.is_dir() or path.suffix == "" else path


def save(state: dict, path: str | Path) -> Path:
    path = _file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(path: str | Path, map_location="cpu") -> dict:
    path = _file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a checkpoint file or the directory holding {FILENAME}")
    # weights_only: a checkpoint holds tensors and plain data only, so loading runs no pickled code.
    return torch.load(path, map_location=map_location, weights_only=True)


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
