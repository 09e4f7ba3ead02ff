"""The preprocessed dataset every trial trains on: the contract between the pipeline and the model.

    from data_pipeline.dataset import PreparedData, Split
    data = PreparedData.load(cache_dir)          # what `data_pipeline.prepare` wrote
    data.train.images                            # (N, 3, S, S) uint8 in [0, 255], as stored and shipped
    data.train.unit_images()                     # the same as float32 in [-1, 1] (x / 127.5 - 1), a new array
    data.train.texts                             # N strings, the (enriched) descriptions
    data.info["source"], data.info["synthetic"]  # provenance, recorded with every result

Plain numpy arrays and lists: no Ray, no torch (pyarrow only to save and load). The training split already holds its
rotated copies (one row per copy, the text repeated), so a trial never augments.

Images are kept as uint8: the cache, the Ray object store and each trial's copy hold a quarter of
the bytes float32 would, and the scaling to [-1, 1] is one elementwise step wherever floats are
needed (`unit_images()` here, or on the device in training). A Split also accepts float32 images
already in [-1, 1] (hand-built splits in tests and benchmarks); `unit_images()` returns those as is.
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
    images: np.ndarray  # (N, 3, S, S) uint8 in [0, 255] (or float32 in [-1, 1], see the module docstring)

    def __post_init__(self):
        n = len(self.ids)
        if len(self.texts) != n or len(self.images) != n:
            raise ValueError(f"split columns differ in length: ids {n}, texts {len(self.texts)}, images {len(self.images)}")
        if self.images.dtype not in (np.uint8, np.float32) or self.images.ndim != 4:
            raise ValueError(f"split images must be (N, 3, S, S) uint8 in [0, 255] (or float32 in [-1, 1]); "
                             f"got {self.images.dtype} {self.images.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, n: int) -> "Split":
        """The first n rows: for smoke runs and tests."""
        return Split(self.ids[:n], list(self.texts[:n]), self.images[:n])

    def unit_images(self) -> np.ndarray:
        """The images as float32 in [-1, 1] (x / 127.5 - 1): a new (N, 3, S, S) array, 4x the bytes of
        the uint8 ones (a split built with float32 images returns them as they are)."""
        if self.images.dtype == np.float32:
            return self.images
        from data_pipeline.preprocess import to_unit_range  # here: it imports Pillow, which loading does not need

        return to_unit_range(self.images)


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
        """One parquet file per split plus info.json. Images are stored as uint8 bytes (3·S·S per row)."""
        import pyarrow as pa  # here, not at the top: training (a GPU box without pyarrow) needs only the arrays
        import pyarrow.parquet as pq

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            s = self.split(name)
            table = pa.table({
                "id": pa.array(s.ids, pa.int64()),
                "text": pa.array(s.texts, pa.string()),
                "image": pa.array([_as_uint8(img).tobytes() for img in s.images], pa.binary()),
            })
            pq.write_table(table, directory / f"{name}.parquet")
        (directory / "info.json").write_text(json.dumps(self.info, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> "PreparedData":
        """Read what `save` wrote, checked: CacheDamaged (saying what is wrong) for a missing or unreadable
        file, an image of the wrong size, or rows that disagree with info.json's counts and split ids."""
        directory = Path(directory)
        try:
            return cls._load(directory)
        except CacheDamaged:
            raise
        except Exception as exc:  # noqa: BLE001 — json, arrow and numpy each raise their own types
            raise CacheDamaged(f"{directory}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _load(cls, directory: Path) -> "PreparedData":
        import pyarrow.parquet as pq

        info = json.loads((directory / "info.json").read_text())
        size = int(info["settings"]["image_size"])
        copies = train_copies(info["settings"])
        splits = {}
        for name in SPLITS:
            t = pq.read_table(directory / f"{name}.parquet").to_pydict()
            bad = next((i for i, b in enumerate(t["image"]) if len(b) != 3 * size * size), None)
            if bad is not None:
                raise CacheDamaged(f"{directory / name}.parquet row {bad}: image of {len(t['image'][bad])} bytes, "
                                   f"expected {3 * size * size} (uint8 3x{size}x{size})")
            if name in info.get("splits", {}):
                want = [i for i in info["splits"][name] for _ in range(copies if name == "train" else 1)]
                if t["id"] != want:
                    raise CacheDamaged(f"{directory / name}.parquet holds {len(t['id'])} rows that do not match "
                                       f"info.json's {len(want)} for the {name} split")
            images = np.stack([np.frombuffer(b, np.uint8) for b in t["image"]]) if t["image"] else np.zeros((0,), np.uint8)
            splits[name] = Split(np.asarray(t["id"], np.int64), t["text"], images.reshape(-1, 3, size, size))
        return cls(info=info, **splits)


def train_copies(settings: dict) -> int:
    """Rows per training record: each rotated copy once per paraphrase (data_pipeline/prepare.py)."""
    return int(settings.get("augment_rotations", 1)) * int(settings.get("paraphrases", 1))


class CacheDamaged(ValueError):
    """A prepared-data folder that cannot be loaded as written (`PreparedData.load` says why)."""


def _as_uint8(image: np.ndarray) -> np.ndarray:
    """A stored image is uint8: float32 [-1, 1] images (hand-built splits) are scaled back and rounded."""
    if image.dtype == np.uint8:
        return image
    return np.round((np.clip(image, -1, 1) + 1) * 127.5).astype(np.uint8)
