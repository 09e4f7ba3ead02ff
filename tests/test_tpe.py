"""search/tpe.py's TPESearch against a real Optuna study, without Ray's cluster: the searcher is asked and told
directly, as Tune would. Seconds."""

from __future__ import annotations

import logging

from optuna.samplers import TPESampler
from optuna.trial import TrialState
from ray import tune

from search.tpe import TPESearch, point_key

METRICS, MODES = ["best/val_x0_mse", "val/indomain_align"], ["min", "max"]
SPACE = {"lr": tune.choice([1e-3, 2e-3]), "batch_size": tune.choice([16, 64])}  # 4 points


def searcher(tries: int = 50) -> TPESearch:
    s = TPESearch(metric=METRICS, mode=MODES, sampler=TPESampler(seed=0), tries=tries)
    assert s.set_search_properties(None, None, SPACE)
    return s


def states(s: TPESearch) -> list[TrialState]:
    return [t.state for t in s._ot_study.trials]


def test_a_trial_stopped_early_is_told_as_pruned_not_left_running(caplog):
    """ASHA's stopped trial reports only the per-epoch metric: Ray's OptunaSearch alone leaves it RUNNING with a
    warning (checked first, so the test fails if Ray ever mends it and the class is no longer needed); ours tells
    Optuna it was pruned. A completed trial is told its two values."""
    from ray.tune.search.optuna import OptunaSearch

    plain = OptunaSearch(metric=METRICS, mode=MODES, sampler=TPESampler(seed=0))
    plain.set_search_properties(None, None, SPACE)
    plain.suggest("t0")
    with caplog.at_level(logging.WARNING):
        plain.on_trial_complete("t0", {"best/val_x0_mse": 0.09, "epoch": 8})
    assert [t.state for t in plain._ot_study.trials] == [TrialState.RUNNING]
    assert "could not be cast to float" in caplog.text

    s = searcher()
    s.suggest("stopped"), s.suggest("completed")
    s.on_trial_complete("stopped", {"best/val_x0_mse": 0.09, "epoch": 8})
    s.on_trial_complete("completed", {"best/val_x0_mse": 0.07, "val/indomain_align": 0.05, "epoch": 30})
    assert states(s) == [TrialState.PRUNED, TrialState.COMPLETE]
    assert s._ot_study.trials[1].values == [0.07, 0.05]


def test_a_point_already_tried_is_answered_untrained_and_tpe_asked_again():
    """Four points: four trials get four different points, however often TPE repeats itself; every repeat is in
    the study as the first trial of its point ended (its values; pruned; failed while it still trains). A fifth
    trial, with every point tried, gets a repeat after `tries` asks."""
    s = searcher()
    given = []
    for i in range(4):
        given.append(s.suggest(f"t{i}"))
        if i == 0:
            s.on_trial_complete("t0", {"best/val_x0_mse": 0.07, "val/indomain_align": 0.05})
        if i == 1:
            s.on_trial_complete("t1", {"best/val_x0_mse": 0.09})  # stopped early
    assert len({point_key(c) for c in given}) == 4
    firsts = {point_key(c): i for i, c in enumerate(given)}
    kept = {s._ot_trials[f"t{i}"].number for i in range(4)}
    study = s._ot_study.trials
    assert len(study) > 4  # TPE did repeat itself (its first draws are random, 4 points): the test tests something
    expected = {0: TrialState.COMPLETE, 1: TrialState.PRUNED, 2: TrialState.FAIL, 3: TrialState.FAIL}
    for t in study:
        if t.number not in kept:
            assert t.state == expected[firsts[point_key(t.params)]], (t.number, t.params, t.state)
            assert t.values == ([0.07, 0.05] if t.state == TrialState.COMPLETE else None)
    exhausted = s.suggest("t4")
    assert point_key(exhausted) in firsts
    assert len(s._ot_study.trials) == len(study) + s.tries  # tries - 1 repeats told, the last one to train
    assert s._ot_study.trials[-1].state == TrialState.RUNNING


def test_a_failed_point_may_be_tried_again():
    """A trial that errored leaves no result: a repeat of its point (a one-point space: every ask repeats it) is
    told as failed, not as pruned, so TPE does not learn from a crash that the region is poor; after `tries` asks
    the point trains again."""
    s = TPESearch(metric=METRICS, mode=MODES, sampler=TPESampler(seed=0), tries=5)
    s.set_search_properties(None, None, {"lr": tune.choice([1e-3])})
    s.suggest("t0")
    s.on_trial_complete("t0", error=True)
    assert s.suggest("t1") == {"lr": 1e-3}
    assert states(s) == [TrialState.FAIL] * 5 + [TrialState.RUNNING]  # t0, 4 repeats told, t1 training
    s.on_trial_complete("t1", {"best/val_x0_mse": 0.07, "val/indomain_align": 0.05})  # the retry trained
    s.suggest("t2")  # now a repeat of t1's result: told complete, not failed
    assert states(s)[6:] == [TrialState.COMPLETE] * 4 + [TrialState.RUNNING]
