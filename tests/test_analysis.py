"""search/analysis.py through the results table: seed replicates, the tie test, families, importance (fast;
hand-built trials, no Ray). The real `--seeds` run is in tests/test_search_e2e.py."""

from __future__ import annotations

import csv
import itertools
import json
import statistics
import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from model.config import BEST_VAL_X0, BEST_VAL_L1, TEST_ALIGN, TEST_DIVERSITY, TEST_L1
from search import analysis
from search import grid as grid_cli
from search.figures import importance as importance_figure
from search.figures import learning_curves, parallel_coordinates
from search.report import summarize, write_tables
from search.results import TrialRecord, table_rows
from search.store import Plan
from search.settings import resolve
from search.space import fused_space, grid_size

PINNED = {"weight_decay": [1e-5], "n_heads": [2], "ff_dim": [512], "n_layers": [2]}


def _prov(seeds=1, families=None, **grid) -> Plan:
    s = resolve("smoke", {**PINNED, **grid, **({"family": families} if families else {})}, seeds=seeds)
    return Plan.from_dict({"settings": s.to_dict(), "experiment": "t", "preset_about": "tiny", "ray_experiment": "/tmp/x",
            "search": {"search": "grid", "scheduler": "fifo", "trials": 1, "points": grid_size(s.grid),
                       "fuse": {"mode": "auto", "on": False, "reason": "off", "members": None},
                       "objectives": [], "resources_per_trial": {"cpu": 1, "gpu": 0}, "max_failures": 2},
            "clip": {"model": "m", "pretrained": "p", "status": "off"},
            "dataset": {"source": "synthetic:0", "synthetic": True, "fingerprint": "abc", "counts": {}},
            "code_version": "unknown", "ray_version": "2.60.0", "torch_version": "x", "devices": "cpu",
            "baselines": {}, "cluster": {"nodes": 1, "CPU": 2.0, "GPU": 0.0}})


def _trial(tid, point, metrics, status="TERMINATED"):
    last = {"epoch": 2, "time_total_s": 1.0, "node_id": "n1", "device": "cpu", **metrics}
    return TrialRecord(tid, dict(point), status, [last])


def _seeded(values: dict[float, list[float]], **extra):
    """Trials of configurations that differ in lr only, one per (lr, seed): best/val_l1 from `values`."""
    point = {k: v[0] for k, v in PINNED.items()}
    return [_trial(f"{lr}-{seed}", {**point, "lr": lr, "seed": seed},
                   {BEST_VAL_L1: v, TEST_L1: v + 0.01, **extra})
            for lr, vs in values.items() for seed, v in enumerate(vs)]


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- the tie test


def test_welch_p_value_matches_scipy():
    rng = np.random.default_rng(0)
    for n_a, n_b in ((2, 2), (3, 3), (3, 5), (8, 4)):
        for _ in range(5):
            a, b = rng.normal(0.3, rng.uniform(0.001, 0.05), n_a), rng.normal(0.29, rng.uniform(0.001, 0.05), n_b)
            want = stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue
            assert analysis.welch_greater(a, b) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # Bit-identical replicates have no spread: different means are distinguishable, equal ones are not.
    assert analysis.welch_greater([0.3, 0.3], [0.2, 0.2]) == 0.0
    assert analysis.welch_greater([0.2, 0.2], [0.2, 0.2]) == 0.5
    assert analysis.welch_greater([0.2, 0.2], [0.3, 0.3]) == 1.0  # better than the best: never "worse"
    with pytest.raises(ValueError, match="at least 2"):
        analysis.welch_greater([0.3], [0.2, 0.21])


def test_configurations_differing_only_by_noise_are_tied_and_a_clearly_better_one_is_not(tmp_path):
    rng = np.random.default_rng(1)
    noise = {lr: list(0.30 + rng.normal(0, 0.01, 3)) for lr in (1e-4, 1e-5)}  # the same mean: noise only
    prov = _prov(seeds=3, lr=[1e-4, 1e-5])
    s = summarize(table_rows(_seeded(noise), prov), prov)
    best, other = s.configurations
    assert best["vs_best"] == "best" and other["vs_best"] == "tied"
    assert other["p_vs_best"] == pytest.approx(stats.ttest_ind(noise[other["lr"]], noise[best["lr"]], equal_var=False,
                                                               alternative="greater").pvalue)
    assert (s.ties["regressor"].tied, s.ties["regressor"].worse) == (1, 0)

    clear = {**noise, 1e-3: [0.20, 0.21, 0.19]}  # 10 noise standard deviations better
    prov = _prov(seeds=3, lr=[1e-3, 1e-4, 1e-5])
    rows = table_rows(_seeded(clear), prov)
    s = summarize(rows, prov)
    assert [c["lr"] for c in s.configurations][0] == 1e-3 and s.configurations[0]["vs_best"] == "best"
    assert [c["vs_best"] for c in s.configurations[1:]] == ["worse", "worse"]
    assert (s.ties["regressor"].tied, s.ties["regressor"].worse) == (0, 2)

    write_tables(rows, prov, tmp_path, s)
    md = (tmp_path / "best_config.md").read_text()
    assert "**0 of the other 2 configurations are tied with the best" in md and "α = 0.05" in md
    assert [r["vs_best"] for r in _read_csv(tmp_path / "best_config.csv")] == ["best", "worse", "worse"]


def test_seeds_table_is_mean_and_std_per_configuration_and_the_json_keeps_every_seed(tmp_path):
    values = {1e-4: [0.31, 0.29, 0.35], 1e-5: [0.40, 0.41, 0.38]}
    prov = _prov(seeds=3, lr=[1e-4, 1e-5])
    rows = table_rows(_seeded(values), prov)
    write_tables(rows, prov, tmp_path)
    payload = json.loads((tmp_path / "best_config.json").read_text())
    assert len(payload["rows"]) == 6 and {r["seed"] for r in payload["rows"]} == {0, 1, 2}
    table = _read_csv(tmp_path / "best_config.csv")
    assert len(table) == 2 and "seed" not in table[0] and table[0]["seeds"] == "3/3"
    for c in table:  # against the values the rows were made from
        mine = values[float(c["lr"])]
        assert float(c[BEST_VAL_L1]) == pytest.approx(statistics.mean(mine))
        assert float(c[f"{BEST_VAL_L1} std"]) == pytest.approx(statistics.stdev(mine))
    assert float(table[0]["lr"]) == 1e-4 and table[0]["best"] == "yes"  # ranked by the mean
    md = (tmp_path / "best_config.md").read_text()
    assert f"{statistics.mean(values[1e-4]):.4g} ± {statistics.stdev(values[1e-4]):.2g}" in md
    assert "## Every seed" in md and "seeds: 3 per configuration (0, 1, 2)" in md
    # The best row (its checkpoint is the search's) is the best configuration's best seed, not another's.
    assert [(r["lr"], r["seed"]) for r in rows if r["best"]] == [(1e-4, 1)]


def test_a_failed_seed_is_counted_and_its_configuration_cannot_be_best():
    values = {1e-4: [0.20, 0.21, 0.22], 1e-5: [0.30, 0.31, 0.32]}
    trials = _seeded(values)
    trials[2] = TrialRecord(trials[2].trial_id, trials[2].config, "ERROR", [], "FloatingPointError: nan")
    prov = _prov(seeds=3, lr=[1e-4, 1e-5])
    s = summarize(table_rows(trials, prov), prov)
    by_lr = {c["lr"]: c for c in s.configurations}
    assert by_lr[1e-4]["seeds"] == "2/3" and by_lr[1e-4][BEST_VAL_L1] == pytest.approx(0.205)
    assert by_lr[1e-5]["vs_best"] == "best" and by_lr[1e-4]["vs_best"] == "tied"  # lower mean, not worse


def test_one_seed_makes_no_tie_claim(tmp_path):
    prov = _prov(lr=[1e-4, 1e-5])
    point = {k: v[0] for k, v in PINNED.items()}
    rows = table_rows([_trial("a", {**point, "lr": 1e-4}, {BEST_VAL_L1: 0.3}),
                       _trial("b", {**point, "lr": 1e-5}, {BEST_VAL_L1: 0.5})], prov)
    write_tables(rows, prov, tmp_path)
    md = (tmp_path / "best_config.md").read_text()
    assert "No tie claim: one seed per configuration, so whether the best is distinguishable from the others cannot " \
           "be claimed" in md
    header = _read_csv(tmp_path / "best_config.csv")[0]
    assert "vs_best" not in header and "p_vs_best" not in header  # no invented column values
    ties = json.loads((tmp_path / "best_config.json").read_text())["analysis"]["ties"]["regressor"]
    assert ties["tied"] == ties["worse"] == 0 and "cannot be claimed" in ties["reason"]


# ---------------------------------------------------------------------------- families


def test_families_rank_by_their_own_metric_and_are_compared_on_shared_test_metrics(tmp_path):
    """A mixed search (family a grid axis, the lead's --family): each family is ranked, tied and
    compared within itself; the families only on test metrics both report."""
    prov = _prov(seeds=3, families=["regressor", "diffusion"], lr=[1e-4, 1e-5])
    point = {k: v[0] for k, v in PINNED.items()}
    reg = {1e-4: [0.30, 0.31, 0.29], 1e-5: [0.50, 0.52, 0.51]}
    dif = {1e-4: [0.09, 0.08, 0.10], 1e-5: [0.05, 0.06, 0.04]}  # diffusion's best is the other lr
    test_l1 = {"regressor": [0.25, 0.26, 0.24], "diffusion": [0.35, 0.36, 0.34]}
    trials = []
    for fam, vals, metric in (("regressor", reg, BEST_VAL_L1), ("diffusion", dif, BEST_VAL_X0)):
        for lr, vs in vals.items():
            for seed, v in enumerate(vs):
                best_lr = 1e-4 if fam == "regressor" else 1e-5
                m = {metric: v, TEST_L1: test_l1[fam][seed] if lr == best_lr else 0.9, TEST_ALIGN: 0.1}
                if fam == "diffusion":
                    m[TEST_DIVERSITY] = 0.2  # only diffusion reports it: not a shared metric
                trials.append(_trial(f"{fam}-{lr}-{seed}", {**point, "family": fam, "lr": lr, "seed": seed}, m))
    rows = table_rows(trials, prov)
    assert {(r["family"], r["ranked_by"]) for r in rows} == {("regressor", BEST_VAL_L1), ("diffusion", BEST_VAL_X0)}
    summary = summarize(rows, prov)
    assert {f: (t.best["lr"], t.worse) for f, t in summary.ties.items()} == {"regressor": (1e-4, 1), "diffusion": (1e-5, 1)}
    assert sorted((r["family"], r["lr"], r["seed"]) for r in rows if r["best"]) == [
        ("diffusion", 1e-5, 2), ("regressor", 1e-4, 2)]  # each family's best configuration's best seed

    compared = {c["metric"]: c for c in summary.families_compared}
    assert set(compared) == {TEST_L1, TEST_ALIGN}  # test/diversity: diffusion only
    l1 = compared[TEST_L1]
    assert l1["better"] == "regressor" and l1["diffusion vs regressor"] == "worse"
    assert l1["diffusion p"] == pytest.approx(stats.ttest_ind(test_l1["diffusion"], test_l1["regressor"],
                                                              equal_var=False, alternative="greater").pvalue)
    assert "better" not in compared[TEST_ALIGN]  # identical values: neither family is better
    assert set(summary.importance) == {"regressor", "diffusion"}
    assert summary.importance["diffusion"].metric == BEST_VAL_X0

    write_tables(rows, prov, tmp_path, summary)
    md = (tmp_path / "best_config.md").read_text()
    assert "## Families compared" in md and "0 of the other 1 diffusion configurations are tied" in md
    assert "0 of the other 1 regressor configurations are tied" in md
    table = _read_csv(tmp_path / "best_config.csv")
    assert [r["family"] for r in table] == ["regressor"] * 2 + ["diffusion"] * 2
    assert {r["ranked_by"] for r in table if r["family"] == "diffusion"} == {BEST_VAL_X0}


# ---------------------------------------------------------------------------- which fields matter


def _factorial(metric, **fixed):
    grid = {"lr": (1e-3, 1e-4), "weight_decay": (1e-5, 1e-6), "n_heads": (2, 4), "ff_dim": (512, 1024),
            "n_layers": (2, 3)}
    rows = []
    for values in itertools.product(*grid.values()):
        p = dict(zip(grid, values))
        v = metric(p)
        rows.append({**p, "status": "ok", BEST_VAL_L1: v, TEST_L1: None if v is None else v + 0.01, **fixed})
    return rows, list(grid)


def test_a_field_that_cannot_change_the_result_gets_the_lowest_importance_and_is_named():
    rows, fields = _factorial(lambda p: 0.2 + 0.05 * (p["lr"] == 1e-4) + 0.01 * (p["n_heads"] == 4)
                              + 0.004 * (p["ff_dim"] == 1024) + 0.002 * (p["n_layers"] == 3))
    s = analysis.summarize(rows, fields, [BEST_VAL_L1, TEST_L1])
    imp = s.importance["regressor"]
    assert imp.skipped is None and imp.trials == 32 and set(imp.values) == set(fields)
    assert min(imp.values, key=imp.values.get) == "weight_decay" and imp.values["weight_decay"] < 0.01
    assert list(imp.values)[:2] == ["lr", "n_heads"]  # the largest effects lead
    assert [(n.field, n.identical, n.groups) for n in s.no_effect] == [("weight_decay", 16, 16)]
    assert "`weight_decay` has no effect" in s.no_effect[0].sentence()

    # Weight decay acting only at the larger learning rate: named for the groups where it does nothing.
    rows, _ = _factorial(lambda p: 0.2 + 0.05 * (p["lr"] == 1e-4) + 0.03 * (p["lr"] == 1e-3) * (p["weight_decay"] == 1e-5))
    partial = {n.field: n for n in analysis.no_effect(rows, fields, [BEST_VAL_L1])}
    assert (partial["weight_decay"].identical, partial["weight_decay"].groups) == (8, 16)
    assert not partial["weight_decay"].everywhere and {"n_heads", "ff_dim", "n_layers"} <= set(partial)


@pytest.mark.parametrize("case", ["one trial", "metric missing", "all equal"])
def test_importance_is_skipped_with_the_reason_and_the_export_still_writes(case, tmp_path):
    if case == "one trial":
        rows, fields = _factorial(lambda p: 0.3)
        rows = rows[:1]
    else:
        rows, fields = _factorial(lambda p: None if case == "metric missing" else 0.3)
    s = analysis.summarize(rows, fields, [BEST_VAL_L1])
    why = s.importance["regressor"].skipped
    assert why and {"one trial": "1 completed trial", "metric missing": "0 completed trials",
                    "all equal": "the same"}[case] in why
    for r in rows:
        r.update(family="regressor", ranked_by=BEST_VAL_L1, best=False)
    importance_figure(s, tmp_path / "importance.png", "t")
    parallel_coordinates(rows, fields, tmp_path / "parallel_coordinates.png", "t")
    for name in ("importance.png", "parallel_coordinates.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_figures_draw_every_trial_and_no_legend_warning(tmp_path):
    rows, fields = _factorial(lambda p: 0.2 + 0.05 * (p["lr"] == 1e-4))
    for r in rows:
        r.update(family="regressor", ranked_by=BEST_VAL_L1, best=r is rows[0])
    s = analysis.summarize(rows, fields, [BEST_VAL_L1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels found to put in legend" included
        importance_figure(s, tmp_path / "importance.png", "t")
        parallel_coordinates(rows, fields, tmp_path / "parallel_coordinates.png", "t")
        # The best trial's series has no finite value (a diverged or diffusion trial): no legend to draw.
        learning_curves({"a": {"epoch": [1, 2], "train/l1": [None, None], "val/l1": [None, float("nan")]}}, "a",
                        tmp_path / "learning_curves.png", "t")
    import matplotlib.pyplot as plt

    captured = {}
    real_plot = plt.Axes.plot

    def plot(self, *args, **kwargs):
        captured.setdefault(id(self), []).append(args)
        return real_plot(self, *args, **kwargs)

    plt.Axes.plot = plot
    try:
        parallel_coordinates(rows, fields, tmp_path / "p.png", "t")
    finally:
        plt.Axes.plot = real_plot
    (lines,) = captured.values()
    assert len(lines) == len(rows)  # one line per completed trial, through every field and the metric
    assert all(len(x) == len(fields) + 1 for x, _ in lines)


# ---------------------------------------------------------------------------- --seeds on the command line


def test_seeds_are_a_grid_axis_of_the_seed_field_and_fused_members():
    s = resolve("smoke", {}, seeds=3)
    assert s.grid["seed"] == (0, 1, 2) and grid_size(s.grid) == 96 and s.seeds == 3 and s.train.seed == 0
    trial_grid, members = fused_space(s.grid)
    assert grid_size(trial_grid) == 8 and len(members) == 12  # 4 lr x weight_decay points x 3 seeds
    assert {m["seed"] for m in members} == {0, 1, 2} and set(members[0]) == {"lr", "weight_decay", "seed"}
    assert resolve("smoke", {"seed": 5}, seeds=3).grid["seed"] == (5, 6, 7)  # --seed 5 --seeds 3
    assert "seed" not in resolve("smoke", {}).grid
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        resolve("smoke", {}, seeds=0)
    members, reason = grid_cli.fuse_decision("auto", "grid", "fifo", 1.0, s)
    assert len(members) == 12 and "12 members (lr, weight_decay, seed)" in reason


def test_seeds_flag_refuses_searches_that_cannot_replicate_and_resume_compares_it(capsys):
    for extra in (["--search", "optuna", "--num-samples", "4"], ["--scheduler", "asha"]):
        with pytest.raises(SystemExit):
            grid_cli.parse_args(["--seeds", "3", *extra])
        assert "--seeds applies to the FIFO grid" in capsys.readouterr().err
    prov = _prov(seeds=3, lr=[1e-4, 1e-5])
    same = grid_cli.parse_args(["--preset", "smoke", "--seeds", "3", "--seed", "0", "--resume"])
    assert grid_cli.resume_conflicts(same, prov, None) == []
    assert grid_cli.resume_conflicts(grid_cli.parse_args(["--seeds", "2", "--resume"]), prov, None) == [
        "--seeds (stored 3, given 2)"]
    assert grid_cli.resume_conflicts(grid_cli.parse_args(["--mlflow-tracking-uri", "sqlite:////tmp/m.db", "--resume"]),
                                     prov, None) == ["--mlflow-tracking-uri (stored None, given 'sqlite:////tmp/m.db')"]
