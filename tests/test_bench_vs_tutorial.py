"""bench/bench_vs_tutorial.py's tutorial-style trainable: it trains on ours' data and split, and reports what
the comparison reads. The timed comparison itself is the bench (minutes); this runs its trainable for real
through Ray Tune on a tiny config (one grid point, 2 epochs, the smoke preset's 8 records per split)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import ray

from data_pipeline.prepare import prepare_in_memory
from data_pipeline.synthetic import generate
from model.config import TRAIN_L1, VAL_L1
from benches import load_bench
from search.settings import limit_records, resolve



bench = load_bench("bench_vs_tutorial", pickle_by_value=True)  # its trainable runs in Tune's workers
POINT = {"lr": (1e-3,), "weight_decay": (1e-5,), "n_heads": (2,), "ff_dim": (512,), "n_layers": (2,)}


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


def test_tutorial_trainable_reports_each_epoch_on_ours_split(synthetic, tmp_path):
    """Through Ray Tune for real: one report and one checkpoint per epoch, finite train and val L1, the
    timing buckets the bench sums, every report on ours' split, and the best checkpoint scored on test."""
    settings = resolve("smoke", {**POINT, "epochs": 2})
    started = not ray.is_initialized()
    try:
        out = bench.tutorial_search(settings, str(synthetic), str(tmp_path / "tune"))
    finally:
        if started:
            ray.shutdown()
    [trial] = out["trials"]
    assert trial["error"] is None
    assert [h["epoch"] for h in trial["history"]] == [1, 2]
    assert all(math.isfinite(h[TRAIN_L1]) and math.isfinite(h[VAL_L1]) for h in trial["history"])
    timing = ("setup_s", "load_data_s", "data_wait_s", "train_step_s", "val_s", "save_s")  # what BENCHMARKS splits
    assert all(f"time/{k}" in h for h in trial["history"] for k in timing)
    assert sum(h["time/train_step_s"] for h in trial["history"]) > 0 and trial["history"][0]["time/setup_s"] > 0
    assert len(list((tmp_path / "tune").glob("tutorial/*/checkpoint_*"))) == 2  # Tune keeps every checkpoint

    ours = limit_records(prepare_in_memory(synthetic, settings.data), settings.max_records)
    assert out["split"] == {"train": ours.train.ids.tolist(), "val": ours.val.ids.tolist(),
                            "test": ours.test.ids.tolist()}
    assert {h["split"] for h in trial["history"]} == {out["split_digest"]}
    # best_val skips a diverged or missing epoch's value
    assert bench.best_val({"history": [{VAL_L1: .5}, {VAL_L1: math.nan}, {VAL_L1: .3}, {VAL_L1: None}, {}]}) == .3
    assert math.isnan(bench.best_val({"history": [{VAL_L1: math.inf}]}))
    assert 0 < out["best_test_l1"] < 2  # L1 between images in [-1, 1]
