"""The preprocessed dataset every trial trains on: the contract between the pipeline and the model.

    from data_pipeline.dataset import PreparedData, Split
    data = PreparedData.load(cache_dir)          # what `data_pipeline.prepare` wrote
    data.train.images                            # (N, 3, S, S) float32 in [-1, 1]
    data.train.texts                             # N strings, the (enriched) descriptions
    data.info["source"], data.info["synthetic"]  # provenance, recorded with every result

Plain numpy arrays and lists: no Ray, no torch (pyarrow only to save and load). The training split already holds its
rotated copies (one row per copy, the text repeated), so a trial never augments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    ids: np.ndarray  # (N,) int64, the record id of each row (repeated for rotated copies)
    texts: list[str]  # (N,) the text the model is conditioned on
    images: np.ndarray  # (N, 3, S, S) float32 in [-1, 1]

    def __post_init__(self):
        n = len(self.ids)
        if len(self.texts) != n or len(self.images) != n:
            raise ValueError(f"split columns differ in length: ids {n}, texts {len(self.texts)}, images {len(self.images)}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> "Split":
        """The first n rows: for smoke runs and tests."""
        return Split(self.ids[:n], list(self.texts[:n]), self.images[:n])


@dataclass(frozen=True)
class PreparedData:
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)  # provenance: source, fingerprint, settings, split ids, synthetic

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])

    def split(self, name: str) -> Split:
        return getattr(self, name)

    def save(self, directory: str | Path) -> None:
        """One parquet file per split plus info.json. Images are stored as float32 bytes."""
        import pyarrow as pa  # here, not at the top: training (a GPU box without pyarrow) needs only the arrays
        import pyarrow.parquet as pq

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            s = self.split(name)
            table = pa.table({
                "id": pa.array(s.ids, pa.int64()),
                "text": pa.array(s.texts, pa.string()),
                "image": pa.array([img.astype(np.float32).tobytes() for img in s.images], pa.binary()),
            })
            pq.write_table(table, directory / f"{name}.parquet")
        (directory / "info.json").write_text(json.dumps(self.info, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> "PreparedData":
        import pyarrow.parquet as pq

        directory = Path(directory)
        info = json.loads((directory / "info.json").read_text())
        size = int(info["settings"]["image_size"])
        splits = {}
        for name in SPLITS:
            t = pq.read_table(directory / f"{name}.parquet").to_pydict()
            images = np.stack([np.frombuffer(b, np.float32) for b in t["image"]]) if t["image"] else np.zeros((0,), np.float32)
            splits[name] = Split(np.asarray(t["id"], np.int64), t["text"], images.reshape(-1, 3, size, size))
        return cls(info=info, **splits)
