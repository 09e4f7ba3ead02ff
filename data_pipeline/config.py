"""Preprocessing settings, spelled once: the cache key, the CLI flags and the provenance use these names; and the
valid range every numeric config field of the project states (this is the lowest package: model/ and search/
import it, never the reverse).

    from data_pipeline.config import DataConfig, at_least, check_ranges, fraction, positive
    DataConfig(image_size=64, augment_rotations=8, enriched_text=True)
    lr: float = positive(1e-4)                 # a field with its range, in any config dataclass
    check_ranges(self)                         # in __post_init__: ValueError naming the field, its range, its value

A config is checked where it is built, once: by the CLI (search.grid's flags become configs before Ray starts:
`error: ...`, exit status 2), by the Python API (the dataclass itself) and for every point a searcher samples
(each trial's configs are built with `dataclasses.replace`, which checks again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class Range:
    """low <= value <= high (open ends excluded, None unbounded)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{'(' if self.low_open or self.low is None else '['}{low}, {high}{')' if self.high_open or self.high is None else ']'}"


def ranged(default, low=None, high=None, low_open=False, high_open=False):
    """A dataclass field whose value must lie in the range."""
    return field(default=default, metadata={"range": Range(low, high, low_open, high_open)})


def positive(default):
    return ranged(default, 0, low_open=True)


def at_least(default, low):
    return ranged(default, low)


def fraction(default):
    """In [0, 1): a dropout, a probability, a decay."""
    return ranged(default, 0, 1, high_open=True)


def field_range(cls, name: str) -> Range | None:
    return next((f.metadata.get("range") for f in fields(cls) if f.name == name), None)


def check_ranges(cfg) -> None:
    """ValueError naming the first field of `cfg` outside its stated range."""
    for f in fields(cfg):
        r = f.metadata.get("range")
        if r is not None and getattr(cfg, f.name) not in r:
            raise ValueError(f"{f.name} must be in {r}, got {getattr(cfg, f.name)!r}")


@dataclass(frozen=True)
class DataConfig:
    image_size: int = at_least(64, 8)
    augment_rotations: int = at_least(8, 1)  # N rotated copies of each training image; 1 = no augmentation
    enriched_text: bool = True  # description + classification + types
    paraphrases: int = at_least(1, 1)  # texts per training record (preprocess.paraphrases); val and test keep their own
    val_fraction: float = ranged(0.1, 0, 1, low_open=True, high_open=True)
    test_fraction: float = ranged(0.1, 0, 1, low_open=True, high_open=True)
    split_seed: int = at_least(0, 0)

    def __post_init__(self):
        check_ranges(self)
        # Training selects its best weights on val and reports test: neither split may be empty.
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction and test_fraction must sum to < 1; got {self.val_fraction} and "
                             f"{self.test_fraction}")
