"""The embedded synthetic set at 32 px with 2 rotations, built in memory (3 s) for the model/eval tests."""

from __future__ import annotations

from pathlib import Path

from data_pipeline.config import DataConfig
from data_pipeline.prepare import prepare_in_memory
from data_pipeline.synthetic import generate

SETTINGS = DataConfig(image_size=32, augment_rotations=2)


def synthetic_data(folder: Path, records: int = 300, seed: int = 0):
    """PreparedData of `records` synthetic creatures (240/30/30 for 300), without a cache folder."""
    return prepare_in_memory(generate(folder / f"synthetic-{seed}-{records}", records, seed), SETTINGS)
