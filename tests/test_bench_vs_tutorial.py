"""bench/bench_vs_tutorial.py: its tutorial-style load_data gives ours' records, and its `--quick` form runs the whole
comparison end to end (ours and the tutorial way, each its own process, on 2 points of the smoke grid), so that
README's headline ratio stays reproducible from the code that quotes it. The timed comparison is the bench (45 min)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.prepare import prepare_in_memory
from data_pipeline.synthetic import generate
from model.config import TRAIN_L1, VAL_L1
from benches import load_bench, table
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


def test_quick_comparison_runs_end_to_end(tmp_path, capsys):
    """`--quick` for real: ours (`python -m search.grid`) and the tutorial way, each its own process, on a weight-decay pair of the smoke grid (the `family` axis included). What it reads back: one report
    and one kept checkpoint per epoch of each tutorial trial, with the timing buckets the bench sums, on ours' data
    and split; what it prints: both ways' rows with a finite positive ratio, every table, the machine."""
    [r] = bench.main(["--quick", "--json", str(tmp_path / "vs.json")])
    settings = resolve("smoke", bench.QUICK_GRID)
    assert settings.grid["family"] == ("regressor",) and r["points"] == 2 and r["epochs"] == settings.train.epochs
    assert r["same_data"] and r["agreement"]["same_split"]
    assert r["agreement"]["split_sizes"] == {"train": 8, "val": 8, "test": 8}  # the smoke preset's 8 records
    assert r["agreement"]["pairs_identical"] == {"ours": True, "tutorial": True}  # weight decay rounds away
    [point] = r["agreement"]["points"]  # the pair is one distinct run
    assert point["point"]["family"] == "regressor"
    assert all(0 < point[way] < 2 for way in ("ours", "tutorial"))  # L1 of images in [-1, 1]
    assert point["tutorial_reshuffled"] is None and r["agreement"]["tolerance"] is None  # no calibration in --quick
    assert 0 < r["agreement"]["best"]["tutorial_test_l1"] < 2 and 0 < r["agreement"]["best"]["ours_test_l1"] < 2

    trials = r["tutorial"]["trials"]
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    for t in trials:
        assert [h["epoch"] for h in t["history"]] == list(range(1, r["epochs"] + 1))
        assert all(math.isfinite(h[TRAIN_L1]) and math.isfinite(h[VAL_L1]) for h in t["history"])
        assert all(f"time/{k}" in h for h in t["history"] for k in bench.TIMING)
        assert t["history"][0]["time/setup_s"] > 0 and t["history"][-1]["time/train_step_s"] > 0
    assert r["tutorial"]["checkpoints"] == 2 * r["epochs"]  # the tutorial's Tune keeps every checkpoint
    assert 0 < r["ours"]["checkpoints"] <= r["tutorial"]["checkpoints"]
    assert all(r[way]["before_fit_s"] < r[way]["wall_s"] for way in ("ours", "tutorial"))
    steps = r["step_ms"]
    assert set(steps) == {"tokenizer", "text encoder", "generator + backward + AdamW"} and min(steps.values()) > 0

    out = capsys.readouterr().out
    assert "This project vs the Ray Tune PyTorch tutorial pattern" in out and " cores" in out and "torch " in out
    rows = table(out, "| preset | points x epochs x rows | way |")
    assert [(row[0], row[1], row[2]) for row in rows] == [("smoke", "2 x 2 x 8", "ours"), ("smoke", "2 x 2 x 8", "tutorial")]
    ratio = float(rows[1][6].strip("*x"))
    assert 0 < ratio < math.inf and ratio == pytest.approx(r["tutorial"]["wall_s"] / r["ours"]["wall_s"], abs=0.01)
    [agree] = table(out, "| preset | same data and split")
    assert agree[1:5] == ["yes (8/8/8)", "True, True", "1", "not run (--quick)"]
    [timing] = [row for row in table(out, "| preset | way | trial time") if row[1] == "tutorial"]
    assert len(timing) == 13 and all(float(c) >= 0 for c in timing[5:11])  # the measured buckets
    assert len(table(out, "| preset | batch | tutorial, in the run")) == 1
    assert json.loads((tmp_path / "vs.json").read_text())[0]["points"] == 2


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
