"""bench/bench_vs_tutorial.py: its tutorial-style load_data gives ours' records, and the pieces of its comparison.
Its `--quick` form runs the whole comparison end to end in tests/test_benches.py (beside the other benches: one
process, one Ray, one prepared smoke set). The timed comparison is the bench (45 min)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.prepare import prepare_in_memory
from data_pipeline.synthetic import generate
from model.config import TRAIN_L1, VAL_L1
from benches import load_bench
from search.settings import limit_records, resolve

bench = load_bench("bench_vs_tutorial")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synthetic") / "set", 40, 0)


@pytest.mark.parametrize("preset", ["smoke", "laptop"])
def test_tutorial_load_data_is_ours(synthetic, preset):
    """The tutorial way's own load_data + per-item transform gives ours' records, texts and pixels per split
    (ours: the pipeline's in-memory build, cut to the preset's subset)."""
    settings = resolve(preset, {})
    ours = limit_records(prepare_in_memory(synthetic, settings.data), settings.max_records)
    for theirs, split in zip(bench.load_data(synthetic, settings), (ours.train, ours.val, ours.test)):
        assert list(theirs.ids) == split.ids.tolist()
        assert theirs.texts == split.texts
        images = np.stack([theirs[i][1].numpy() for i in range(len(theirs))])
        np.testing.assert_allclose(images, split.unit_images(), atol=1e-6)


def test_best_val_skips_diverged_and_missing_epochs():
    assert bench.best_val({"history": [{VAL_L1: .5}, {VAL_L1: math.nan}, {VAL_L1: .3}, {VAL_L1: None}, {}]}) == .3
    assert math.isnan(bench.best_val({"history": [{VAL_L1: math.inf}]}))


def test_point_key_reads_a_table_row_and_a_tune_config_alike():
    """The results table leaves its family column out when every row is a regressor; a Tune config has it."""
    grid = resolve("smoke", {}).grid
    config = {"family": "regressor", "lr": 1e-4, "weight_decay": 1e-5, "n_heads": 2, "ff_dim": 512, "n_layers": 2}
    row = {k: v for k, v in config.items() if k != "family"} | {"best/val_l1": 0.3}
    assert bench.point_key(row, grid) == bench.point_key(config, grid) == ("regressor", 1e-4, 1e-5, 2.0, 512.0, 2.0)
    with pytest.raises(ValueError, match="regressor family only"):
        bench.regressor_only(resolve("smoke", {"family": ("regressor", "diffusion")}))
