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
from model.config import VAL_L1
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


def test_agreement_reads_pairs_reshuffles_and_the_best_by_hand():
    """The comparison's arithmetic on made-up runs: a weight-decay pair whose decay rounds away is one distinct
    point, the tolerance is the largest reshuffle difference, and without a reshuffled run (--quick) there is none."""
    settings = resolve("smoke", {"lr": (1e-4,), "weight_decay": (1e-5, 1e-6), "n_heads": (2, 4), "ff_dim": (512,),
                                 "n_layers": (2,)})
    grid = settings.grid
    assert bench.distinct_grid(grid)["weight_decay"] == (1e-5,)  # 1 - 1e-4 * 1e-5 is 1.0 in float32
    split, digest = {"train": [1, 2], "val": [3], "test": [4]}, "d"

    def point(heads, wd):
        return {"family": "regressor", "lr": 1e-4, "weight_decay": wd, "n_heads": heads, "ff_dim": 512, "n_layers": 2}

    def trials(vals, seed=None):  # one trial per (heads, wd) with its best val L1, every report on the split
        return [{"config": {**point(h, wd), **({"shuffle_seed": seed} if seed else {})},
                 "history": [{VAL_L1: 0.9, "split": digest}, {VAL_L1: v, "split": digest}]} for (h, wd), v in vals.items()]

    ours = {"settings": settings, "split": split, "train_rows": 2,
            "rows": {bench.point_key(point(h, wd), grid): {"best/val_l1": v, "test/l1": 0.6}
                     for (h, wd), v in {(2, 1e-5): .50, (2, 1e-6): .50, (4, 1e-5): .40, (4, 1e-6): .40}.items()}}
    tut = {"trials": trials({(2, 1e-5): .52, (2, 1e-6): .52, (4, 1e-5): .41, (4, 1e-6): .41}), "split": split,
           "split_digest": digest, "train_rows": 2, "best_test_l1": 0.7}
    again = {"trials": trials({(2, 1e-5): .49, (4, 1e-5): .44}, seed=1)}

    a = bench.agreement(ours, tut, again)
    assert a["same_split"] and a["distinct_points"] == 2 and a["pairs_identical"] == {"ours": True, "tutorial": True}
    assert a["tolerance"] == pytest.approx(0.03) and a["shuffles"]["median_abs"] == pytest.approx(0.03)
    assert a["ways"]["within"] == 2 and a["ways"]["mean"] == pytest.approx(0.015)  # deltas .02 (2 heads), .01 (4)
    assert a["best"]["ours_point"]["n_heads"] == a["best"]["tutorial_point"]["n_heads"] == 4
    assert a["best"]["delta"] == pytest.approx(0.01) and a["best"]["within"]
    assert [p["tutorial_reshuffled"] for p in a["points"]] == [.49, .44]

    quick = bench.agreement(ours, tut, None)
    assert quick["tolerance"] is None and quick["shuffles"] is None and quick["ways"]["within"] is None
    assert quick["best"]["within"] is None and [p["tutorial_reshuffled"] for p in quick["points"]] == [None, None]
    assert quick["ways"] == {**a["ways"], "within": None}  # the two ways' deltas need no reshuffle

    tut["trials"][1]["history"][1][VAL_L1] = .53  # the tutorial's pair no longer agrees; a report on another split
    tut["trials"][0]["history"][0]["split"] = "other"
    broken = bench.agreement(ours, tut, None)
    assert broken["pairs_identical"] == {"ours": True, "tutorial": False} and not broken["same_split"]
