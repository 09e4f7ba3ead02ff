"""The real entry points in smoke mode: both model families in one search (interrupted, resumed, exported,
generated from), and seed replicates fused into one trial with their mean ± std, ties and importance."""

from __future__ import annotations

import json
import signal
import sys

import pytest

from e2e import ONE_AT_A_TIME, assert_valid_png, interrupt_after, read_table, run_cli, trial_states
from model import checkpoint
from model.config import BEST_VAL_X0, BEST_VAL_L1

pytestmark = pytest.mark.slow


def test_both_families_in_one_search_interrupted_resumed_and_exported(tmp_path, capsys):
    """`--family regressor diffusion`: the family is a grid axis. Ctrl-C after the first trial, and Ctrl-C again
    while the search saves (it must not cut Tune's snapshot short: the table is skipped instead), then --resume; the
    table ranks each family by its own selection metric (a column says which), marks a best per family and
    compares the families only on the metrics both report; each family's best checkpoint and sample grids (two
    samples per text for the sampler), and model.generate on the diffusion one."""
    results = tmp_path / "results"
    flags = ["--preset", "smoke", "--epochs", "3", "--family", "regressor", "diffusion", "--n-heads", "2",
             "--ff-dim", "512", "--n-layers", "2", "--weight-decay", "1e-5", "--results", str(results),
             "--experiment", "families", *ONE_AT_A_TIME]
    log = tmp_path / "interrupted.log"
    rc, finished = interrupt_after([sys.executable, "-m", "search.grid", *flags], results / "tune" / "families", 1,
                                   signal.SIGINT, log, again_after="[search] SIGINT: stopping the trials")
    text = log.read_text()
    assert rc == 130 and len(finished) < 4, text[-3000:]
    assert "Traceback" not in text and "rerun the same command with --resume" in text, text[-3000:]
    # The second Ctrl-C came while Tune was stopping (the table skipped after its snapshot) or during the export
    # (stopped there, nothing half written): either way no table of two runs, and the resume below finds it whole.
    assert "SIGINT again: the results table will be skipped" in text or "the results table was not rewritten" in text
    assert not (results / "families" / "best_config.csv").exists(), text[-3000:]
    run_cli("search.grid", *flags, "--resume")
    exp = results / "families"
    rows = read_table(exp)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["epochs"] == "3" for r in rows)
    for family, metric in (("regressor", BEST_VAL_L1), ("diffusion", BEST_VAL_X0)):
        mine = [r for r in rows if r["family"] == family]
        assert len(mine) == 2 and all(r["ranked_by"] == metric and r[metric] for r in mine)
        assert [r["best"] for r in mine] == ["yes", ""] and float(mine[0][metric]) <= float(mine[1][metric])
        other = BEST_VAL_X0 if metric == BEST_VAL_L1 else BEST_VAL_L1
        assert all(r[other] == "" for r in mine)  # a family is never given the other's selection metric
    md = (exp / "best_config.md").read_text()
    assert "## Families compared" in md
    compared = md.split("## Families compared")[1].split("##")[0]  # the smoke preset's 8 records: no type CNN
    assert "| test/attr_all |" in compared and "| test/l1 |" in compared and f"| {BEST_VAL_L1} |" not in compared
    for family in ("regressor", "diffusion"):
        state = checkpoint.load(exp / f"best_checkpoint_{family}")
        assert state.model_config["family"] == family
        for split in ("train", "test"):
            assert_valid_png(exp / f"samples_{family}_{split}.png")
    assert_valid_png(exp / "learning_curves.png")
    from model.generate import main as generate  # in this process: the CLI's start-up is tested elsewhere

    out = tmp_path / "generated.png"
    generate(["--checkpoint", str(exp / "best_checkpoint_diffusion"), "A small red creature.", "--out", str(out)])
    assert "sampled with ddim" in capsys.readouterr().out
    assert_valid_png(out)


def test_seeds_fused_one_trial_of_12_members_mean_std_ties_and_importance(tmp_path):
    """`--seeds 3 --fuse on` on one architecture: one Tune trial training 12 members (the grid's 4 learning-rate
    x weight-decay points x 3 seeds); the table has 4 configurations, mean ± std over seeds and whether each
    is tied with the best; the JSON every seed's row; importance.png and parallel_coordinates.png beside."""
    from scipy import stats

    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--experiment", "seeds", "--seeds", "3",
            "--fuse", "on", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2")
    exp = results / "seeds"
    assert len(trial_states(results / "tune" / "seeds")) == 1
    prov = json.loads((exp / "provenance.json").read_text())
    members = prov["search"]["fuse"]["members"]
    assert len(members) == 12 and {m["seed"] for m in members} == {0, 1, 2} and prov["search"]["points"] == 12

    payload = json.loads((exp / "best_config.json").read_text())
    per_seed = payload["rows"]
    assert len(per_seed) == 12 and len({(r["lr"], r["weight_decay"], r["seed"]) for r in per_seed}) == 12
    assert all(r["status"] == "ok" for r in per_seed)
    table = read_table(exp)
    assert len(table) == 4 and all(r["seeds"] == "3/3" for r in table) and "seed" not in table[0]
    values = {(float(r["lr"]), float(r["weight_decay"])): [] for r in table}
    for r in per_seed:
        values[(r["lr"], r["weight_decay"])].append(r[BEST_VAL_L1])
    means = [float(r[BEST_VAL_L1]) for r in table]
    assert means == sorted(means) and table[0]["vs_best"] == "best"
    best = values[(float(table[0]["lr"]), float(table[0]["weight_decay"]))]
    for r in table:  # against the JSON's per-seed rows, and scipy's Welch test
        mine = values[(float(r["lr"]), float(r["weight_decay"]))]
        assert float(r[BEST_VAL_L1]) == pytest.approx(sum(mine) / 3)
        assert float(r[f"{BEST_VAL_L1} std"]) == pytest.approx(stats.tstd(mine))
        if r["vs_best"] != "best":
            p = stats.ttest_ind(mine, best, equal_var=False, alternative="greater").pvalue
            assert float(r["p_vs_best"]) == pytest.approx(p) and r["vs_best"] == ("worse" if p < 0.05 else "tied")
    md = (exp / "best_config.md").read_text()
    tied = sum(r["vs_best"] == "tied" for r in table)
    assert f"**{tied} of the other 3 configurations {'is' if tied == 1 else 'are'} tied with the best" in md
    assert "α = 0.05" in md and " ± " in md and "## Every seed" in md
    assert "## Which hyperparameters matter" in md and "| seed |" in md and "| lr |" in md
    for name in ("importance.png", "parallel_coordinates.png"):
        assert_valid_png(exp / name)
    # The search's checkpoint is the best configuration's best seed.
    best_row = next(r for r in per_seed if r["best"])
    assert (best_row["lr"], best_row["weight_decay"]) == (float(table[0]["lr"]), float(table[0]["weight_decay"]))
    assert best_row[BEST_VAL_L1] == min(best)
    state = checkpoint.load(exp / "best_checkpoint")
    assert state.train_configs[0]["seed"] == best_row["seed"] == members[best_row["member"]]["seed"]
