"""Preprocessing settings, spelled once: the cache key, the CLI flags and the provenance use these names.

    from data_pipeline.config import DataConfig
    DataConfig(image_size=64, augment_rotations=8, enriched_text=True)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataConfig:
    image_size: int = 64
    augment_rotations: int = 8  # N rotated copies of each training image; 1 = no augmentation
    enriched_text: bool = True  # description + classification + types
    paraphrases: int = 1  # texts per training record (preprocess.paraphrases); val and test keep their own text
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0

    def __post_init__(self):
        if self.paraphrases < 1:
            raise ValueError(f"paraphrases must be >= 1 (1 = the record's own text only), got {self.paraphrases}")
        # Training selects its best weights on val and reports test: neither split may be empty.
        if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"val_fraction and test_fraction must each be > 0 and sum to < 1; "
                             f"got {self.val_fraction} and {self.test_fraction}")
