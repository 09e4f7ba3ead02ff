"""search/: the grid, settings and CLI flags, and the results table (fast; no Ray cluster).

The real entry points (`python -m search.grid`, `python -m search.export`) run end to end
in tests/test_search_e2e.py.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import stat
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest

from data_pipeline.config import DataConfig
from data_pipeline.dataset import PreparedData, Split
from model.config import BEST_VAL_L1, TEST_ALIGN, TEST_CLIP, TEST_L1, VAL_ALIGN, ModelConfig, TrainConfig
from search import export as export_mod
from search import grid as grid_cli
from search.report import write_tables
from search.results import TrialRecord, error_reason, pareto_front, table_rows
from model.files import atomic_write
from search.store import Plan, replace_dir, staged_dir
from search.settings import (PRESETS, Settings, add_config_flags, config_overrides, limit_records, resolve,
                             retrains_note)
from search.space import GRID, distinct_points, fused_space, grid_size, param_space, trial_configs
from model.families.diffusion import DiffusionConfig
from model.families.regressor import RegressorConfig


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
    m, t, section = trial_configs(point, base_m, base_t)
    assert (m.n_heads, m.ff_dim, m.n_layers, t.lr, t.weight_decay) == (4, 1024, 3, 1e-5, 1e-6)
    assert (m.image_size, m.d_model, t.epochs) == (32, 64, 3)  # untouched
    assert section == RegressorConfig()  # no section given: the family's defaults
    with pytest.raises(KeyError, match="device"):
        trial_configs({"device": "cuda"}, base_m, base_t)  # runtime knobs never enter the space


def test_a_family_field_lands_in_its_own_section():
    """A family's own field (a flag like any other) sets that family's section, and only for its trials."""
    sections = {"diffusion": DiffusionConfig(unet_width=48)}
    m, _, section = trial_configs({"family": "diffusion", "sample_steps": 7}, ModelConfig(image_size=32),
                                  TrainConfig(), sections)
    assert m.family == "diffusion" and section == DiffusionConfig(unet_width=48, sample_steps=7)
    _, _, section = trial_configs({"family": "regressor", "sample_steps": 7}, ModelConfig(image_size=32),
                                  TrainConfig(), sections)
    assert section == RegressorConfig()  # a mixed search sweeps both families' fields; each takes its own
    s = resolve("smoke", {"unet_width": 24, "decoder_channels": 64})
    assert s.sections["diffusion"].unet_width == 24 and s.sections["regressor"].decoder_channels == 64
    assert s.trial({"family": "diffusion"})[2].unet_width == 24


def test_full_preset_is_the_thesis():
    s = resolve("full", {})
    assert (s.train.epochs, s.train.batch_size, s.model.image_size, s.data.augment_rotations) == (100, 10, 64, 8)
    assert s.data.enriched_text and s.sections["regressor"].loss == "l1" and s.max_records is None
    assert (s.model.dropout_encoder, s.model.dropout_attention, s.model.dropout_decoder) == (0.3, 0.3, 0.3)
    assert s.grid == {"family": ("regressor",), **GRID}  # the thesis's grid, of the thesis's model family
    assert resolve("smoke", {}).grid == s.grid  # a preset shrinks the run, not the grid
    assert resolve("smoke", {"family": ["regressor", "diffusion"]}).grid["family"] == ("regressor", "diffusion")
    # The laptop preset keeps the grid's 32 points and four of its axes; its learning rates are the thesis's
    # scaled x20 for its short schedule, and its printed line says so.
    laptop = resolve("laptop", {})
    assert grid_size(laptop.grid) == 32 and {k: v for k, v in laptop.grid.items() if k not in ("lr", "family")} == {
        k: v for k, v in GRID.items() if k != "lr"}
    assert laptop.grid["lr"] == pytest.approx(tuple(20 * lr for lr in GRID["lr"]))
    assert "twenty times the thesis's" in laptop.about()
    assert resolve("laptop", {"lr": [1e-4]}).grid["lr"] == (1e-4,)  # a flag still replaces the axis


def test_a_family_alone_trains_its_measured_recipe():
    """`--family diffusion` alone trains the shared fields the diffusion family was measured best with (not the
    regressor's thesis recipe, nor the laptop preset's regressor learning rates), says so, and records it; a flag
    still wins; a mixed search trains both families with its first family's shared fields."""
    from model.families.diffusion import Diffusion

    for preset in ("laptop", "full"):
        s = resolve(preset, {"family": ["diffusion"]})
        assert s.recipe == "diffusion" and s.grid["lr"] == Diffusion.recipe["lr"]
        assert (s.train.batch_size, s.train.precision, s.model.pooled_text) == (64, "bf16", True)
        assert "the diffusion family's measured recipe: batch_size 64" in s.about()
        assert "twenty times" not in s.about() and Settings.from_dict(s.to_dict()).recipe == "diffusion"
    flags = config_overrides(_parse(["--family", "diffusion", "--batch-size", "16", "--lr", "1e-3", "--epochs", "30"]))
    given = resolve("laptop", flags)
    assert given.train.batch_size == 16 and given.grid["lr"] == (1e-3,)
    # the start line says the recipe, then the flags that won over it (what ran: batch 16, not the recipe's 64)
    assert given.about(flags).endswith("over them, the flags: lr 0.001, epochs 30, batch_size 16")
    assert "flags" not in given.about() and "batch_size 64" in given.about(flags)
    mixed = resolve("laptop", {"family": ["regressor", "diffusion"]})
    assert mixed.recipe == "regressor" and mixed.train.batch_size == 10
    assert resolve("smoke", {"family": ["regressor", "diffusion"]}).sections["diffusion"].unet_width == 16


def _parse(argv):
    return grid_cli.parse_args(argv)


def test_every_config_field_has_a_flag_of_the_same_name():
    import argparse

    p = argparse.ArgumentParser()
    add_config_flags(p)
    flags = p._option_string_actions
    for cls in (ModelConfig, TrainConfig, DataConfig):
        for f in fields(cls):
            flag = f"--{f.name.replace('_', '-')}"
            assert flag in flags and flags[flag].dest == f.name, f"no {flag} flag"


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
        _parse(["--experiment", "tune"])  # the folder of Ray's own files beside the results
    with pytest.raises(SystemExit):
        _parse(["--grace-period", "6"])  # only for --scheduler asha
    assert _parse(["--scheduler", "asha", "--grace-period", "6"]).grace_period == 6
    with pytest.raises(ValueError, match="divisible"):
        resolve("smoke", {"d_model": 30})  # caught before Ray starts, not in trial 17


def test_limit_records_keeps_every_rotation_of_a_kept_record():
    ids = np.array([5, 5, 5, 7, 7, 7, 9, 9, 9])
    split = Split(ids, [f"t{i}" for i in ids], np.zeros((9, 3, 4, 4), np.float32))
    data = PreparedData(split, split.take(3), split.take(3), {"source": "x"})
    small = limit_records(data, 2)
    assert small.train.ids.tolist() == [5, 5, 5, 7, 7, 7] and small.val.ids.tolist() == [5, 5, 5]
    assert "first 2 records" in small.info["subset"] and limit_records(data, None) is data


def _provenance(search="grid", epochs=2, **fields) -> Plan:
    """A search's Plan, as provenance.json holds it (`fields` replace top-level entries)."""
    s = resolve("smoke", {"epochs": epochs})
    return Plan.from_dict({**{"settings": s.to_dict(), "search": {"search": search, "scheduler": "fifo", "trials": 3, "points": 3,
                                                "fuse": {"mode": "auto", "on": False, "reason": "off", "members": None},
                                                "objectives": [[BEST_VAL_L1, "min"], [VAL_ALIGN, "max"]],
                                                "resources_per_trial": {"cpu": 1, "gpu": 0}, "max_failures": 2},
            "experiment": "t", "preset_about": "tiny", "clip": {"model": "m", "pretrained": "p", "status": "off"},
            "dataset": {"source": "synthetic:0", "synthetic": True, "fingerprint": "abc", "counts": {"train": 8}},
            "code_version": "unknown", "ray_version": "2.60.0", "torch_version": "x", "devices": "cpu",
            "ray_experiment": "/tmp/x", "baselines": {"baseline/test_l1_mean_train_image": 0.41},
            "cluster": {"nodes": 1, "CPU": 2.0, "GPU": 0.0}}, **fields})


# ---------------------------------------------------------------------------- resume


def test_resume_accepts_the_same_command_and_names_a_changed_flag():
    prov = _provenance(epochs=2)
    same = _parse(["--preset", "smoke", "--epochs", "2", "--lr", "1e-4", "1e-5", "--scheduler", "fifo", "--resume"])
    assert grid_cli.resume_conflicts(same, prov, None) == []  # what the interrupted search says to run
    changed = _parse(["--preset", "smoke", "--epochs", "3", "--lr", "1e-3", "--resume"])
    assert sorted(grid_cli.resume_conflicts(changed, prov, None)) == [
        "--epochs (stored 2, given 3)", "--lr (stored (0.0001, 1e-05), given (0.001,))"]
    assert grid_cli.resume_conflicts(_parse(["--preset", "laptop", "--resume"]), prov, None) == [
        "--preset (stored 'smoke', given 'laptop')"]
    assert grid_cli.resume_conflicts(_parse(["--fuse", "on", "--resume"]), prov, None) == [
        "--fuse (stored 'auto', given 'on')"]


def _stored(tmp_path, ray_experiment, snapshot):
    """A results folder holding provenance.json, its Ray experiment elsewhere, with or without Tune's snapshot."""
    _provenance(experiment="exp", ray_experiment=str(ray_experiment)).save(tmp_path / "results" / "exp")
    ray_experiment.mkdir(parents=True)
    (ray_experiment / "tuner.pkl").write_bytes(b"")  # Tune writes it as fit() starts
    if snapshot:
        (ray_experiment / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    return tmp_path / "results" / "exp"


def test_resume_finds_the_experiment_from_provenance(tmp_path):
    # Stored with --storage-path elsewhere; --resume without the flag still finds it.
    results_dir = _stored(tmp_path, tmp_path / "bucket" / "exp", snapshot=True)
    prov, ray_experiment, restore = grid_cli.stored_search(_parse(["--resume"]), results_dir)
    assert ray_experiment == str(tmp_path / "bucket" / "exp") and restore and prov.experiment == "exp"
    with pytest.raises(SystemExit) as e:  # a new search into the same folder is refused
        grid_cli.stored_search(_parse([]), results_dir)
    assert e.value.code == 2


def test_resume_before_the_first_snapshot_starts_the_stored_search(tmp_path):
    # Killed between writing provenance.json and Tune's first snapshot: not stuck.
    results_dir = _stored(tmp_path, tmp_path / "results" / "tune" / "exp", snapshot=False)
    prov, ray_experiment, restore = grid_cli.stored_search(_parse(["--resume"]), results_dir)
    assert not restore and ray_experiment == prov.ray_experiment


def test_resume_without_a_stored_search_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        grid_cli.stored_search(_parse(["--resume"]), tmp_path / "results" / "nothing")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --resume:") and err.count("\n") == 1
    assert str(tmp_path / "results" / "nothing") in err


# ---------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("kind", ["missing", "no layout"])
def test_a_bad_data_path_is_a_one_line_error(kind, tmp_path, capsys):
    path = tmp_path / ("absent" if kind == "missing" else "empty")
    if kind == "no layout":
        path.mkdir()
    with pytest.raises(SystemExit) as e:
        grid_cli.check_data(str(path))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --data: ") and err.count("\n") == 1 and str(path) in err


def test_a_source_without_usable_records_is_a_one_line_error(make_pokedex, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("POKEMON_T2I_CACHE", str(tmp_path / "cache"))
    folder = make_pokedex(3)
    for png_file in (folder / "images" / "thumbnails").iterdir():
        png_file.unlink()  # every record rejected while reading, before Ray starts
    with pytest.raises(SystemExit) as e, grid_cli.user_errors("--data"):
        grid_cli.load_data(str(folder), resolve("smoke", {}))
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("reading ")]
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: --data: no usable records")


def test_clip_required_without_weights_is_a_one_line_error(capsys):
    settings = resolve("smoke", {"clip_mode": "required", "clip_pretrained": "/nonexistent/clip_weights.pt"})
    with pytest.raises(SystemExit) as e:
        grid_cli.check_clip(settings, None)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "/nonexistent/clip_weights.pt" in err and "--clip-pretrained" in err


def _trial(tid, lr, best, status="TERMINATED", epochs=2, error=None, top1=0.1):
    last = {"epoch": epochs, BEST_VAL_L1: best, "time_total_s": 1.0, "node_id": "n1", "device": "cpu"}
    if epochs == 2 and status == "TERMINATED":
        last.update({TEST_L1: best + 0.01, TEST_CLIP: None, "test/clip_status": "off: CLIP scoring disabled",
                     TEST_ALIGN: top1, VAL_ALIGN: top1})
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


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_leave_no_partial_files(tmp_path, umask_022):
    atomic_write(tmp_path / "a.txt", "one")
    atomic_write(tmp_path / "a.txt", b"two")
    assert (tmp_path / "a.txt").read_text() == "two" and len(list(tmp_path.iterdir())) == 1
    assert _mode(tmp_path / "a.txt") == 0o644  # readable by others on shared storage, not mkstemp's 0600
    for content in ("old", "new"):
        src = tmp_path / f"src_{content}"
        src.mkdir()
        (src / "f").write_text(content)
        replace_dir(src, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "ckpt"]


def test_a_results_set_is_replaced_whole_or_not_at_all(tmp_path, umask_022):
    dst = tmp_path / "exp"
    dst.mkdir()
    for name in ("best_config.csv", "samples_test.png"):
        (dst / name).write_text("old")
    with pytest.raises(KeyboardInterrupt), staged_dir(dst) as out:  # killed half-way through an export
        (out / "best_config.csv").write_text("new")
        raise KeyboardInterrupt
    assert {p.name: p.read_text() for p in dst.iterdir()} == {"best_config.csv": "old", "samples_test.png": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["exp"]  # no staging folder left

    with staged_dir(dst) as out:
        (out / "best_config.csv").write_text("new")
        (out / "best_checkpoint").mkdir()
        assert (dst / "best_config.csv").read_text() == "old"  # readers see the old set until the swap
    assert {p.name for p in dst.iterdir()} == {"best_config.csv", "best_checkpoint"}  # not two runs' files
    assert (dst / "best_config.csv").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["exp"]
    assert _mode(dst) == _mode(dst / "best_checkpoint") == 0o755  # not mkdtemp's 0700


class _Checkpoint:
    def to_directory(self, path):
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "checkpoint.pt"), "w") as f:
            f.write("weights")


def _exported_search(tmp_path, monkeypatch, fingerprint):
    """search.export on a stored search of 3 trials (one pending), reading a dataset with `fingerprint`."""
    results_dir = tmp_path / "results" / "exp"
    _provenance(experiment="exp", ray_experiment=str(tmp_path / "results" / "tune" / "exp")).save(results_dir)
    (results_dir / "samples_test.png").write_text("from an earlier export")
    trials = [_trial("a", 1e-4, 0.5), _trial("b", 1e-5, 0.3), TrialRecord("c", {"lr": 1e-5}, "PENDING")]
    trials[1].checkpoint = _Checkpoint()
    monkeypatch.setattr(export_mod, "load_trials", lambda path: trials)
    monkeypatch.setattr(export_mod, "load_data", lambda arg, settings: SimpleNamespace(info={"fingerprint": fingerprint}))
    import search.figures

    def no_samples(*args, **kwargs):
        raise AssertionError("sample figures drawn from data the search did not train on")

    monkeypatch.setattr(search.figures, "samples", no_samples)
    rows = export_mod.export(results_dir)
    return results_dir, rows


def test_export_skips_sample_figures_when_the_data_changed(tmp_path, monkeypatch, capsys, umask_022):
    results_dir, rows = _exported_search(tmp_path, monkeypatch, fingerprint="changed")
    out = capsys.readouterr().out
    assert "sample figures skipped: the data" in out and "changed" in out and "abc" in out
    assert out.count("not started") == 1 and "1 not started" in out  # once, not a FileNotFoundError per trial
    assert rows[0]["trial_id"] == "b" and rows[0]["best"]
    assert sorted(p.name for p in results_dir.iterdir()) == [
        "best_checkpoint", "best_config.csv", "best_config.json", "best_config.md", "importance.png",
        "learning_curves.png", "parallel_coordinates.png", "provenance.json"]  # the earlier samples_test.png is gone
    for path in (results_dir, *results_dir.rglob("*")):
        assert _mode(path) & 0o044 == 0o044, path  # group and others can read
    assert [p.name for p in results_dir.parent.iterdir()] == ["exp"]  # no staging or .best_checkpoint.* left


def test_export_refuses_a_folder_that_also_holds_the_ray_experiment(tmp_path):
    results_dir = tmp_path / "exp"
    _provenance(ray_experiment=str(results_dir)).save(results_dir)
    (results_dir / "trial_x").mkdir()
    with pytest.raises(export_mod.SetLayoutError, match="replaces that folder as a whole"):
        export_mod.export(results_dir)
    assert (results_dir / "trial_x").is_dir()


def test_error_reason_names_the_exception():
    trace = ("Failure # 1 (occurred at 2026-01-01)\nray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n"
             "  File \"x.py\", line 3, in f\n    raise FloatingPointError(msg)\n"
             "FloatingPointError: training loss became nan in epoch 2 (lr=inf, weight_decay=1e-05)\n")
    assert error_reason(trace) == "FloatingPointError: training loss became nan in epoch 2 (lr=inf, weight_decay=1e-05)"
    assert error_reason(None) is None


def test_every_grid_point_builds_valid_configs():
    """The swept values land in the configs a trial trains with: the thesis's 32 points, against literals."""
    s = resolve("full", {})
    built = set()
    for values in itertools.product(*s.grid.values()):
        m, t, _ = s.trial(dict(zip(s.grid, values)))
        built.add((m.family, t.lr, t.weight_decay, m.n_heads, m.ff_dim, m.n_layers))
    assert built == set(itertools.product(["regressor"], (1e-4, 1e-5), (1e-5, 1e-6), (2, 4), (512, 1024), (2, 3)))


def test_trials_require_clip_when_the_driver_loaded_it():
    s = resolve("laptop", {})
    assert s.train.clip_mode == "auto"
    assert grid_cli.trial_settings(s, "ok").train.clip_mode == "required"
    unavailable = "unavailable: no weights"
    assert grid_cli.trial_settings(s, unavailable).train.clip_mode == "auto"  # the table already says why
    off = resolve("laptop", {"clip_mode": "off"})
    assert grid_cli.trial_settings(off, "off: CLIP scoring disabled") == off


def test_fusing_decides_from_the_search_and_says_why_not():
    settings = resolve("smoke", {})
    members, reason = grid_cli.fuse_decision("auto", "grid", "fifo", 1.0, settings)
    assert len(members) == 4 and reason.startswith("on: each architecture is one trial of 4 members")
    assert grid_cli.fuse_decision("auto", "grid", "fifo", 0.0, settings)[0] is None  # CPU trials: compute-bound
    staged = resolve("smoke", config_overrides(_parse(["--finetune-epochs", "2"])))
    assert staged.train.total_epochs == 4
    members, reason = grid_cli.fuse_decision("auto", "grid", "fifo", 1.0, staged)
    assert members is None and "staged training (--finetune-epochs)" in reason
    with pytest.raises(ValueError, match="--fuse on: staged training"):
        grid_cli.fuse_decision("on", "grid", "fifo", 1.0, staged)
    with pytest.raises(ValueError, match="--fuse on: --scheduler asha"):
        grid_cli.fuse_decision("on", "grid", "asha", 1.0, settings)


@pytest.mark.parametrize("uri", ["nosuch://host/x", "file:///nonexistent/mlruns"])
def test_a_bad_mlflow_tracking_uri_is_a_one_line_error(uri, capsys):
    """An unknown scheme, or MLflow's file store (in maintenance mode: MLflow itself refuses it)."""
    from search.trackers import check_mlflow

    with pytest.raises(SystemExit) as e, grid_cli.user_errors("--mlflow-tracking-uri"):
        check_mlflow(uri)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: --mlflow-tracking-uri: {uri}: ") and err.count("\n") == 1


def test_planning_a_search_imports_mlflow_only_when_asked_for(tmp_path):
    """Ray's MLflow callback imports mlflow (most of a second): a search planned and given its Tuner without
    --mlflow-tracking-uri never loads it; with one, the plan stores the store's absolute path and the Tuner has the
    callback. (Tuner.fit itself then imports mlflow where it is installed, for Ray's usage telemetry: see
    search.grid.mlflow_store. What this holds is that our own start-up does not.)"""
    import textwrap
    from pathlib import Path

    from conftest import modules_after

    plan = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, "tests")
        from search import grid
        from search.settings import resolve
        from test_model import tiny_data

        def tuner(flags):
            args = grid.parse_args(flags)
            for name, value in grid.DEFAULTS.items():
                setattr(args, name, getattr(args, name) or value)
            settings = resolve("smoke", grid.config_overrides(args))
            where = grid.Where(Path({str(tmp_path / "exp")!r}), "/tmp/tune/exp",
                               {{"CPU": 2.0, "GPU": 0.0, "nodes": 1}}, {{"cpu": 1.0, "gpu": 0.0}})
            plan = grid.plan_search(args, [], where, settings, tiny_data(), (None, "off"))
            tuner = grid.new_tuner(lambda config: None, settings, plan, "/tmp/tune")
            callbacks = tuner._local_tuner._run_config.callbacks
            print(plan.search.mlflow_tracking_uri, [type(c).__name__ for c in callbacks])
        """)
    # one interpreter (each costs seconds of imports): which modules the first search loaded, then the second search
    both = plan + ("tuner([])\nprint(sorted(m for m in ('mlflow', 'search.trackers') if m in sys.modules))\n"
                   "tuner(['--mlflow-tracking-uri', 'sqlite:///m.db'])")
    loaded, printed = modules_after(both, ("mlflow",))
    *_, without, loaded_without, with_mlflow = printed.splitlines()
    assert loaded_without == "[]" and without == "None ['Progress']"
    here = Path(__file__).resolve().parents[1]  # the subprocess's working directory: a relative path resolves there
    assert loaded == ["mlflow"]
    assert with_mlflow == f"sqlite:///{here / 'm.db'} ['Progress', 'MLflowLogger']"


@pytest.mark.parametrize("family,metric,per_epoch", [("regressor", "best/val_l1", "val/l1"),
                                                     ("diffusion", "best/val_x0_mse", "val/x0_mse")])
def test_the_plan_selects_on_its_familys_metric_and_is_the_provenance(family, metric, per_epoch, tmp_path):
    from test_model import tiny_data

    args = _parse(["--search", "optuna", "--family", family])
    for name, value in grid_cli.DEFAULTS.items():
        setattr(args, name, getattr(args, name) or value)
    settings = resolve("smoke", config_overrides(args))
    where = grid_cli.Where(tmp_path / "exp", "/tmp/tune/exp", {"CPU": 2.0, "GPU": 0.0, "nodes": 1},
                           {"cpu": 1.0, "gpu": 0.0})
    plan = grid_cli.plan_search(args, [], where, settings, tiny_data(), (None, "off: CLIP scoring disabled"))
    plan.save(tmp_path / "exp")
    prov = json.loads((tmp_path / "exp" / "provenance.json").read_text())  # what --resume and export read
    # tiny_data (8 training records): too few for the evaluator networks, so the selection metric alone
    assert prov["search"]["objectives"] == [[metric, "min"]]
    assert prov["experiment"] == "exp" and Settings.from_dict(prov["settings"]) == settings
    assert prov["baselines"]["baseline/test_l1_median_train_image"] > 0  # the text-blind references, once
    assert Plan.load(tmp_path / "exp") == plan  # typed on both sides
    assert grid_cli.scheduler("asha", 10, family).metric == per_epoch  # ASHA stops on the family's epoch metric
    # its rungs: the grace period, then x3, below max_t; a tenth of the epochs unless --grace-period says otherwise
    assert [r for r, _ in grid_cli.scheduler("asha", 20, family)._brackets[0]._rungs] == [18, 6, 2]
    assert [r for r, _ in grid_cli.scheduler("asha", 20, family, 6)._brackets[0]._rungs] == [18, 6]
    assert plan.search.grace_period is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.experiment = "other"


def test_random_search_trains_different_points_of_the_space():
    """--search random draws its trials without replacement (Tune's own draws repeat points in a small space): every
    trial a different grid point, the same ones for the same seed, and never more than the space holds."""
    every = [dict(zip(GRID, values)) for values in itertools.product(*GRID.values())]
    drawn = distinct_points(GRID, 12, seed=3)
    assert len({json.dumps(p, sort_keys=True) for p in drawn}) == 12 and all(p in every for p in drawn)
    assert drawn == distinct_points(GRID, 12, seed=3) and drawn != distinct_points(GRID, 12, seed=4)
    assert sorted(map(str, distinct_points(GRID, 32, seed=0))) == sorted(map(str, every))  # the whole space
    with pytest.raises(ValueError, match="--num-samples"):
        distinct_points(GRID, 33, seed=0)
    # Tune's random searcher is handed exactly these points, one per trial
    assert grid_cli.searcher("random", [], 3, GRID, 12)._points_to_evaluate == drawn


def test_a_mixed_family_search_refuses_what_compares_trials_on_one_metric():
    mixed = resolve("smoke", {"family": ["regressor", "diffusion"]})
    assert grid_cli.family_of(resolve("smoke", {"family": ["diffusion"]}), "--scheduler asha") == "diffusion"
    for what in ("--scheduler asha", "--search optuna"):
        with pytest.raises(ValueError, match=f"{what} compares trials on one selection metric"):
            grid_cli.family_of(mixed, what)
    members, reason = grid_cli.fuse_decision("auto", "grid", "fifo", 1.0, mixed)
    assert members is None and "diffusion family's members would run one after another" in reason


def test_any_config_flag_given_several_values_is_a_search_axis():
    """--unet-width 16 32 sweeps the diffusion section's width like the thesis's five axes; one value is a field's
    value; what the data are prepared with takes one value only."""
    s = resolve("smoke", config_overrides(_parse(["--family", "diffusion", "--unet-width", "16", "32", "--epochs", "3",
                                                  "--lr", "1e-3"])))
    assert s.grid["unet_width"] == (16, 32) and s.train.epochs == 3 and grid_size(s.grid) == 2 * 16
    widths = {s.trial({**{k: v[0] for k, v in s.grid.items()}, "unet_width": w})[2].unet_width for w in (16, 32)}
    assert widths == {16, 32}
    with pytest.raises(ValueError, match="--image-size takes one value"):
        resolve("smoke", config_overrides(_parse(["--image-size", "32", "64"])))
    assert fused_space({"lr": (1e-3, 1e-4), "batch_size": (4, 8)}) == ({"batch_size": (4, 8)},
                                                                       [{"lr": 1e-3}, {"lr": 1e-4}])


def test_a_sweep_of_a_sampling_only_field_is_noted_as_retraining_the_same_weights():
    """--guidance-scale 1 3 trains two identical models (guidance acts only when sampling): the search says so and
    names the checkpoint sweep; a training field's sweep, or guidance at one value, gets no note."""
    def note(*flags):
        return retrains_note(resolve("smoke", config_overrides(_parse(["--family", "diffusion", *flags]))))

    said = note("--guidance-scale", "1", "3", "--sample-steps", "10", "20")
    assert "--guidance-scale, --sample-steps only change how images are sampled" in said
    assert "bench/bench_diffusion.py --checkpoint" in said
    assert "--checkpoint" not in note("--sampler", "ddim", "dpm") and "--sampler only changes" in note("--sampler",
                                                                                                       "ddim", "dpm")
    assert note("--unet-width", "16", "32") is None and note("--guidance-scale", "3") is None
    assert retrains_note(resolve("smoke", config_overrides(_parse(["--lr", "1e-3", "1e-4"])))) is None  # regressor
