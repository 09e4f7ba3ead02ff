"""A trial's training state, typed, and its checkpoint file: one torch file of plain data.

    from model import checkpoint
    checkpoint.save(state, "run/checkpoint.pt")   # a TrainingState; atomic, with a checksum of its tensors
    state = checkpoint.load("run/checkpoint.pt")  # or a directory holding checkpoint.pt; DamagedCheckpoint if
                                                  # its weights no longer match the checksum
    train(model_cfg, train_cfg, data, resume=state)
    checkpoint.save(state.member(2), "best")      # member 2 of a fused trial, on its own
    state.finished(), state.replay(after=3)       # training over?  the per-member reports after epoch 3

`TrainingState` is what `model.train.train_members` reports after every epoch, for its K members (a single trial
is K = 1), and the one place that says what a state holds. On disk it is a plain dict (`to_dict`), so loading runs
no pickled code (`weights_only=True`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from model.files import save_torch

FILENAME = "checkpoint.pt"
# 4: the family's config section beside model_config, the text stack under generator.text, the family's frozen
# part under frozen.
FORMAT = 4
CHECKSUM = "checksum"  # the file's key for the digest of its tensors, written by save and verified by load


class DamagedCheckpoint(ValueError):
    """A checkpoint whose tensors differ from the ones it was saved with (bytes changed on disk or in transit)."""


@dataclass
class TrainingState:
    """K members' training state after `epoch` epochs.

    model_config, family_config (the family's section), train_configs (one per member): `asdict` of each config.
    text_encoder: its name and the folder or hub name it loaded from. rng: torch's CPU and CUDA states.
    Per member: best_selection (the best value of its family's selection metric), best_model (its
    best-validation weights with a member axis of 1, or None; the EMA weights for a family that trains with
    them), history (per-epoch metrics), errors (why it stopped, or None). Shared: model (the last trainable
    weights, each with a leading member axis K), optimizer, ema (diffusers' EMAModel state) — None once the
    trial finished, since nothing trains it again — and final (each member's final metrics, once finished).
    member_of: {"member": m, "members": K} for one member cut out of a fused trial.
    """
    model_config: dict
    family_config: dict
    train_configs: list
    text_encoder: dict
    epoch: int
    rng: dict
    best_selection: list
    best_model: list
    history: list
    errors: list
    model: dict | None = None
    optimizer: dict | None = None
    ema: dict | None = None
    final: list | None = None
    member_of: dict | None = None
    format: int = FORMAT

    @property
    def members(self) -> int:
        return len(self.train_configs)

    def finished(self) -> bool:
        """Training is over (every epoch ran, or every member stopped): `final` holds the final metrics."""
        return self.final is not None

    def member(self, m: int) -> "TrainingState":
        """Member m alone, as a one-member state without the last weights, optimizer and EMA (a finished member
        is never trained again): its configs, best weights, history, final metrics."""
        if not 0 <= m < self.members:
            raise IndexError(f"member {m} requested, but this checkpoint holds {self.members} member(s) "
                             f"(0..{self.members - 1})")
        return replace(self, train_configs=[self.train_configs[m]], best_selection=[self.best_selection[m]],
                       best_model=[self.best_model[m]], history=[self.history[m]], errors=[self.errors[m]],
                       final=None if self.final is None else [self.final[m]], model=None, optimizer=None, ema=None,
                       member_of={"member": m, "members": self.members})

    def without_training(self) -> "TrainingState":
        """A finished trial's state without the last weights and optimizer (3 of its 4 copies of the weights):
        the best weights stay, for export and generate."""
        return replace(self, model=None, optimizer=None)

    def replay(self, after: int) -> list[list[dict]]:
        """The per-member reports of the epochs after `after` up to this state's last one, rebuilt from the
        history (a member that stopped reports its error, as the loop does)."""
        return [[next((h for h in hist if h["epoch"] == epoch), {"epoch": epoch, "error": error})
                 for hist, error in zip(self.history, self.errors)]
                for epoch in range(after + 1, self.epoch + 1)]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "this checkpoint") -> "TrainingState":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{where} was written by another version of this code (format {found}, expected "
                             f"{FORMAT}); retrain it")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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


def save(state: TrainingState, path: str | Path) -> Path:
    """Write the state with the checksum of its tensors, atomically (model/files.py save_torch: a temporary name
    of this process's own, then a rename, so a crash or a second writer never leaves half a file)."""
    plain = state.to_dict()
    return save_torch({**plain, CHECKSUM: checksum(plain)}, _file(path))


def load(path: str | Path, map_location="cpu") -> TrainingState:
    """The TrainingState in a checkpoint file (or the directory holding checkpoint.pt), its checksum verified:
    FileNotFoundError when there is none, DamagedCheckpoint naming the file when its tensors changed since it was
    written, ValueError when it is another version's."""
    path = _file(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: pass a checkpoint file or the directory holding {FILENAME}")
    # weights_only: a checkpoint holds tensors and plain data only, so loading runs no pickled code.
    state = torch.load(path, map_location=map_location, weights_only=True)
    written = state.pop(CHECKSUM, None) if isinstance(state, dict) else None
    if written is not None and (now := checksum(state)) != written:
        raise DamagedCheckpoint(f"{path} is damaged: its weights do not match the checksum written with them "
                                f"({now[:19]}... != {written[:19]}...); use another copy, or retrain")
    return TrainingState.from_dict(state, str(path))
