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
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
