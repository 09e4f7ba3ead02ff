"""The real entry points in smoke mode, beside the crash-and-resume grid (tests/test_search_e2e.py): a diverging
trial, ASHA over staged trials, Optuna's multi-objective search. Each runs `python -m search.grid` as a subprocess."""

from __future__ import annotations

import json

import pytest

from e2e import ONE_AT_A_TIME, read_table, run_cli
from model import checkpoint
from model.config import BEST_VAL_X0, BEST_VAL_L1

pytestmark = pytest.mark.slow


def test_nan_trial_errors_alone_and_is_not_retried(tmp_path):
    """`--lr inf` makes AdamW's first step send every weight to ±inf: the loss is NaN from the next step on.

    No test-only hook: an infinite learning rate is a value a user can type. The trial must
    error with the reason, the other trial must finish, and the FailureConfig retries must
    stop at once instead of re-running the diverging epoch.
    """
    results = tmp_path / "results"
    r = run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--experiment", "nan", "--lr", "inf",
                "1e-4", "--weight-decay", "1e-5", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2", status=1)
    rows = read_table(results / "nan")
    assert len(rows) == 2
    ok, bad = rows
    assert ok["status"] == "ok" and ok["best"] == "yes" and float(ok["lr"]) == 1e-4
    assert bad["lr"] == "inf" and bad[BEST_VAL_L1] == "" and bad["best"] == ""
    assert bad["status"].startswith("error: FloatingPointError: training loss became nan")
    assert "not retried" in bad["status"]
    # Exit status 1, not 0: a search with an errored trial is not a success, and the summary says how many and why.
    assert f"[search] 2 trials, 1 completed, 1 errored (the first, {bad['trial_id']}: {bad['status'][7:]})" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr  # the trial's traceback is in its error.txt, not on the console


def test_asha_stops_staged_trials_early(tmp_path):
    """ASHA over staged trials (4 epochs, then 2 with the encoder's top layer unfrozen): a trial lasts 6."""
    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--scheduler", "asha", "--epochs", "4",
            "--finetune-epochs", "2", "--finetune-layers", "1", "--lr", "1e-4", "1e-5", "--weight-decay", "1e-5",
            "--n-layers", "2", *ONE_AT_A_TIME)
    rows = read_table(results / "grid-smoke")
    assert len(rows) == 8
    assert any(r["status"].startswith("stopped early (asha)") for r in rows)
    best = next(r for r in rows if r["best"] == "yes")
    assert best["status"] == "ok" and best["epochs"] == "6"
    assert "scheduler asha" in (results / "grid-smoke" / "best_config.md").read_text()
    best_weights = checkpoint.load(results / "grid-smoke" / "best_checkpoint").best_model[0]
    assert {k.split(".")[3] for k in best_weights if k.startswith("text_encoder.")} == {"5"}  # the top layer


def test_optuna_multi_objective_reports_pareto_front(tmp_path):
    """TPE over the diffusion family: its own selection metric is the first objective (the regressor's, best/val_l1,
    is the same code with the regressor's `best`: tests/test_search.py)."""
    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--family", "diffusion", "--results", str(results), "--search",
            "optuna", "--num-samples", "2", *ONE_AT_A_TIME)
    exp = results / "optuna-smoke"
    rows = read_table(exp)
    assert len(rows) == 2 and all(r["status"] == "ok" and r["family"] == "diffusion" for r in rows)
    for r in rows:  # the pareto column against a brute-force dominance check of the table's own numbers
        v, attr = float(r[BEST_VAL_X0]), float(r["val/attr_mean"])
        dominated = any(float(o[BEST_VAL_X0]) <= v and float(o["val/attr_mean"]) >= attr
                        and (float(o[BEST_VAL_X0]), float(o["val/attr_mean"])) != (v, attr) for o in rows)
        assert (r["pareto"] == "yes") == (not dominated), rows
    md = (exp / "best_config.md").read_text()
    assert f"## Pareto front: {BEST_VAL_X0} (min) × val/attr_mean (max)" in md
    objectives = json.loads((exp / "provenance.json").read_text())["search"]["objectives"]
    assert objectives == [[BEST_VAL_X0, "min"], ["val/attr_mean", "max"]]  # no CLIP weights; never test
