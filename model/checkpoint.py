"""Checkpoints as one torch file of plain data: weights, optimizer, epoch, RNG and the configs.

    from model import checkpoint
    checkpoint.save(state, "run/checkpoint.pt")   # atomic: a crash never leaves half a file
    state = checkpoint.load("run/checkpoint.pt")  # or a directory holding checkpoint.pt
    train(model_cfg, train_cfg, data, resume=state)

A state dict holds: model_config and train_config (`asdict`), text_encoder (name and the
folder or hub name it loaded from), epoch (epochs completed), model and best_model
(trainable weights), optimizer, rng (torch CPU and CUDA states), best_val_l1, history
(per-epoch metrics) and, once training finished, final (the final metrics).
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
