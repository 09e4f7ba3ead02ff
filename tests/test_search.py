"""search/: the grid, settings and CLI flags, and the results table (fast; no Ray cluster).

The real entry points (`python -m search.grid`, `python -m search.export`) run end to end
in tests/test_search_e2e.py.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import fields

import numpy as np
import pytest

from data_pipeline.config import DataConfig
from data_pipeline.dataset import PreparedData, Split
from model.config import BEST_VAL_L1, TEST_CLIP, TEST_L1, TEST_TOP1, VAL_TOP1, ModelConfig, TrainConfig
from search import grid as grid_cli
from search.results import (TrialRecord, atomic_write, error_reason, pareto_front, replace_dir, table_rows,
                            write_tables)
from search.settings import PRESETS, Settings, add_config_flags, config_fields, config_overrides, limit_records, resolve
from search.space import GRID, grid_size, param_space, trial_configs


def test_grid_is_the_thesis_grid():
    assert GRID == {"lr": (1e-4, 1e-5), "weight_decay": (1e-5, 1e-6), "n_heads": (2, 4), "ff_dim": (512, 1024),
                    "n_layers": (2, 3)}
    assert grid_size(GRID) == 32
    space = param_space(GRID, "grid")
    assert {k: v["grid_search"] for k, v in space.items()} == {k: list(v) for k, v in GRID.items()}
    assert set(param_space(GRID, "optuna")) == set(GRID)  # same keys, categorical choices


def test_trial_configs_replace_only_the_swept_fields():
    base_m, base_t = ModelConfig(image_size=32, d_model=64), TrainConfig(epochs=3)
    point = {"lr": 1e-5, "weight_decay": 1e-6, "n_heads": 4, "ff_dim": 1024, "n_layers": 3}
    m, t = trial_configs(point, base_m, base_t)
    assert (m.n_heads, m.ff_dim, m.n_layers, t.lr, t.weight_decay) == (4, 1024, 3, 1e-5, 1e-6)
    assert (m.image_size, m.d_model, t.epochs) == (32, 64, 3)  # untouched
    with pytest.raises(KeyError, match="device"):
        trial_configs({"device": "cuda"}, base_m, base_t)  # runtime knobs never enter the space


def test_full_preset_is_the_thesis():
    s = resolve("full", {})
    assert (s.train.epochs, s.train.batch_size, s.model.image_size, s.data.augment_rotations) == (100, 10, 64, 8)
    assert s.data.enriched_text and s.train.loss == "l1" and s.max_records is None
    assert (s.model.dropout_encoder, s.model.dropout_attention, s.model.dropout_decoder) == (0.3, 0.3, 0.3)
    assert s.grid == GRID
    for name in ("laptop", "smoke"):
        assert resolve(name, {}).grid == GRID  # a preset shrinks the run, never the grid


def _parse(argv):
    return grid_cli.parse_args(argv)


def test_every_config_field_has_a_flag_of_the_same_name():
    import argparse

    p = argparse.ArgumentParser()
    add_config_flags(p)
    dests = {a.dest for a in p._actions}
    for cls in (ModelConfig, TrainConfig, DataConfig):
        for f in fields(cls):
            assert f.name in dests, f"no --{f.name.replace('_', '-')} flag"
    assert set(config_fields()) <= dests


def test_flags_override_preset_and_replace_grid_axes():
    args = _parse(["--epochs", "3", "--image-size", "64", "--no-enriched-text", "--n-heads", "4",
                   "--lr", "1e-3", "1e-4", "--preset", "smoke"])
    s = resolve(args.preset, config_overrides(args))
    assert s.train.epochs == 3 and s.model.image_size == s.data.image_size == 64 and not s.data.enriched_text
    assert s.grid["n_heads"] == (4,) and s.grid["lr"] == (1e-3, 1e-4) and grid_size(s.grid) == 16
    assert s.model.d_model == PRESETS["smoke"].overrides["d_model"]  # the preset's value stays where not overridden
    assert Settings.from_dict(json.loads(json.dumps(s.to_dict()))) == s  # what --resume reads back


def test_cli_rejects_contradictions():
    with pytest.raises(SystemExit):
        _parse(["--num-samples", "4"])  # only for --search optuna
    with pytest.raises(SystemExit):
        _parse(["--resume", "--epochs", "3"])  # a resumed search keeps its stored settings
    with pytest.raises(ValueError, match="divisible"):
        resolve("smoke", {"d_model": 30})  # caught before Ray starts, not in trial 17


def test_limit_records_keeps_every_rotation_of_a_kept_record():
    ids = np.array([5, 5, 5, 7, 7, 7, 9, 9, 9])
    split = Split(ids, [f"t{i}" for i in ids], np.zeros((9, 3, 4, 4), np.float32))
    data = PreparedData(split, split.take(3), split.take(3), {"source": "x"})
    small = limit_records(data, 2)
    assert small.train.ids.tolist() == [5, 5, 5, 7, 7, 7] and small.val.ids.tolist() == [5, 5, 5]
    assert "first 2 records" in small.info["subset"] and limit_records(data, None) is data


def _provenance(search="grid", epochs=2):
    s = resolve("smoke", {"epochs": epochs})
    return {"settings": s.to_dict(), "search": {"search": search, "scheduler": "fifo", "trials": 3,
                                                "objectives": [[BEST_VAL_L1, "min"], [VAL_TOP1, "max"]],
                                                "resources_per_trial": {"cpu": 1, "gpu": 0}, "max_failures": 2},
            "experiment": "t", "preset_about": "tiny", "clip": {"model": "m", "pretrained": "p", "status": "off"},
            "dataset": {"source": "synthetic:0", "synthetic": True, "fingerprint": "abc", "counts": {"train": 8}},
            "code_version": "unknown", "ray_version": "2.60.0", "torch_version": "x", "devices": "cpu",
            "ray_experiment": "/tmp/x", "baselines": {"baseline/test_l1_mean_train_image": 0.41}}


def _trial(tid, lr, best, status="TERMINATED", epochs=2, error=None, top1=0.1):
    last = {"epoch": epochs, BEST_VAL_L1: best, "time_total_s": 1.0, "node_id": "n1", "device": "cpu"}
    if epochs == 2 and status == "TERMINATED":
        last.update({TEST_L1: best + 0.01, TEST_CLIP: None, "test/clip_status": "off: CLIP scoring disabled",
                     TEST_TOP1: top1, VAL_TOP1: top1})
    point = {"lr": lr, "weight_decay": 1e-5, "n_heads": 2, "ff_dim": 512, "n_layers": 2}
    return TrialRecord(tid, point, status, [last], error)


def test_table_rows_sorted_best_marked_failures_explained():
    trials = [_trial("a", 1e-4, 0.5), _trial("b", 1e-5, 0.3), _trial("c", float("inf"), float("inf"), "ERROR", 1,
                                                                    "FloatingPointError: training loss became nan"),
              _trial("d", 1e-4, 0.2, epochs=1)]
    rows = table_rows(trials, _provenance())
    assert [r["trial_id"] for r in rows] == ["d", "b", "a", "c"]  # by best val L1; no number sorts last
    assert rows[0]["status"] == "stopped at epoch 1" and not rows[0]["best"]  # best = best *completed* trial
    assert rows[1]["best"] and sum(r["best"] for r in rows) == 1
    assert rows[1][TEST_CLIP] == "off"  # never a number when there is no score

    unavailable = _trial("e", 1e-4, 0.25)
    unavailable.history[-1]["test/clip_status"] = "unavailable: CLIP weights could not be loaded"
    assert table_rows([unavailable], _provenance())[0][TEST_CLIP] == "unavailable"
    assert rows[3]["status"] == "error: FloatingPointError: training loss became nan" and rows[3][BEST_VAL_L1] is None


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    rows = [{"v": float(a), "c": float(b)} for a, b in rng.random((40, 2))]
    front = pareto_front(rows, [("v", "min"), ("c", "max")])
    for r in rows:
        dominated = any(o["v"] <= r["v"] and o["c"] >= r["c"] and o != r for o in rows)
        assert (r in front) == (not dominated)


def test_write_tables_csv_json_md(tmp_path):
    prov = _provenance(search="optuna")
    rows = table_rows([_trial("a", 1e-4, 0.5, top1=0.3), _trial("b", 1e-5, 0.3, top1=0.1),
                       _trial("c", 1e-5, 0.6, top1=0.05)], prov)
    write_tables(rows, prov, tmp_path)
    with open(tmp_path / "best_config.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["b", "a", "c"] and table[0]["best"] == "yes"
    assert [r["pareto"] for r in table] == ["yes", "yes", ""]  # c is beaten by a on both objectives
    payload = json.loads((tmp_path / "best_config.json").read_text())
    assert payload["provenance"]["dataset"]["fingerprint"] == "abc" and len(payload["rows"]) == 3
    md = (tmp_path / "best_config.md").read_text()
    assert "SYNTHETIC" in md and "Pareto front" in md and "baseline/test_l1_mean_train_image" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_config.csv", "best_config.json", "best_config.md"]


def test_atomic_writes_leave_no_partial_files(tmp_path):
    atomic_write(tmp_path / "a.txt", "one")
    atomic_write(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_text() == "two" and len(list(tmp_path.iterdir())) == 1
    for content in ("old", "new"):
        src = tmp_path / f"src_{content}"
        src.mkdir()
        (src / "f").write_text(content)
        replace_dir(src, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "ckpt"]


def test_error_reason_names_the_exception():
    trace = ("Failure # 1 (occurred at 2026-01-01)\nray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
             "  File \"x.py\", line 3, in f\n    raise FloatingPointError(msg)\n"
             "FloatingPointError: training loss became nan in epoch 2 (lr=inf, weight_decay=1e-05)\n")
    assert error_reason(trace) == "FloatingPointError: training loss became nan in epoch 2 (lr=inf, weight_decay=1e-05)"
    assert error_reason(None) is None


def test_every_grid_point_builds_valid_configs():
    s = resolve("full", {})
    points = [dict(zip(s.grid, v)) for v in itertools.product(*s.grid.values())]
    assert len({tuple(p.items()) for p in points}) == 32
    for p in points:
        m, t = trial_configs(p, s.model, s.train)
        assert m.d_model % m.n_heads == 0


def test_trials_require_clip_when_the_driver_loaded_it():
    s = resolve("laptop", {})
    assert s.train.clip_mode == "auto"
    assert grid_cli.trial_settings(s, "ok").train.clip_mode == "required"
    unavailable = "unavailable: no weights"
    assert grid_cli.trial_settings(s, unavailable).train.clip_mode == "auto"  # the table already says why
    off = resolve("laptop", {"clip_mode": "off"})
    assert grid_cli.trial_settings(off, "off: CLIP scoring disabled") == off
