"""bench/bench_search_payoff.py's arithmetic on made-up runs, against values worked out by hand: which grid points
are tied with the grid's best (`tied_set`), the compute until a run first completes one (`cost_to_find`), and what
it reads of a Tune trial (`trial_row`). No Ray, no training: a second.

Its `--quick` form (three `python -m search.grid` searches: 14 minutes at load average 10 on 2 shared cores) is run
by hand, not here (the suite has no room for it): `python bench/bench_search_payoff.py --quick --out /tmp/x`.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from benches import load_bench

bench = load_bench("bench_search_payoff")

RECORDS, SAMPLES = 12, 2


def scores(*, zeros: int = 0, value: float = 1.0) -> list[list[float]]:
    """(RECORDS, SAMPLES) per-record scores, all `value` but the first `zeros` cells (row-major) 0."""
    flat = [0.0 if i < zeros else value for i in range(RECORDS * SAMPLES)]
    return [flat[r * SAMPLES:(r + 1) * SAMPLES] for r in range(RECORDS)]


def trial(point, stamps, cells=None) -> dict:
    return {"point": point, "stamps": stamps, "scores": cells}


def test_tied_set_keeps_the_identical_and_the_insignificantly_worse_points():
    """Best: every cell 1. Its copy differs nowhere (p = 1). One cell lower: one record's difference is +0.5 and
    a sign flip of that record alone decides the null, so p is about 1/2: tied. Every cell 0: all 12 records
    differ by +1, and only the all-plus flip (1 in 2^12) reaches it, p about 2/4001: not tied. A trial without
    scores (it never finished) is no candidate."""
    best, copy, one_less, zeros, unfinished = (("1e-3", w) for w in (16, 32, 64, 128, 256))
    grid = [trial(one_less, [1, 2], scores(zeros=1)), trial(best, [1, 2], scores()),
            trial(zeros, [1, 2], scores(value=0.0)), trial(copy, [1, 2], scores()), trial(unfinished, [1])]
    found, tied = bench.tied_set(grid)
    assert found in (best, copy)  # the two share the highest sum; either is the grid's best
    assert tied == {best, copy, one_less}
    assert bench.paired_comparison(scores(), scores(value=0.0)).p_value < 0.01  # the hand-worked p, checked


def test_cost_to_find_counts_trial_epochs_until_a_tied_point_completes():
    """3 epochs. The tied point `early` was stopped by ASHA after 2 epochs: not found. `slow` completes at 140,
    `fast` at 135: found at 135, 35 s after the run's first epoch (100). Trial-epochs by then: other 3 (100, 110,
    120), early 2, slow 2 (112, 125), late 1 (130: 150 is after), fast 3; 11 in all."""
    tied = {"early", "slow", "fast"}
    run = [trial("other", [100, 110, 120]), trial("early", [105, 115]), trial("slow", [112, 125, 140]),
           trial("late", [130, 150]), trial("fast", [118, 127, 135])]
    assert bench.cost_to_find(run, tied, 3) == {"trial_epochs": 11, "seconds": 35, "trials_started": 5}
    without_fast = run[:4]  # then found when `slow` completes at 140: other 3, early 2, slow 3, late 1
    assert bench.cost_to_find(without_fast, tied, 3) == {"trial_epochs": 9, "seconds": 40, "trials_started": 4}


def test_cost_to_find_counts_an_epoch_in_the_same_second_as_before_it():
    """Tune's timestamps are whole seconds: `other`'s epoch stamped 135 counts, its 136 does not."""
    run = [trial("tied", [101, 120, 135]), trial("other", [100, 135, 136])]
    assert bench.cost_to_find(run, {"tied"}, 3) == {"trial_epochs": 5, "seconds": 35, "trials_started": 2}


def test_cost_to_find_is_none_when_no_tied_point_completes():
    """A tied point stopped early does not count; nor does a run whose trials never reported (no stamps)."""
    run = [trial("tied", [100, 110]), trial("other", [101, 111, 121]), trial("tied", [])]
    assert bench.cost_to_find(run, {"tied"}, 3) == {"trial_epochs": None, "seconds": None, "trials_started": 3}
    assert bench.cost_to_find([trial("tied", []), trial("other", [])], {"tied"}, 3)["trial_epochs"] is None
    assert bench.cost_to_find(run, {"nowhere"}, 2)["trial_epochs"] is None  # an untied point completing is no find


def test_trial_row_reads_the_point_the_stamps_and_the_last_epochs_scores():
    """The point in KEYS' order (None for an axis the quick space lacks), every epoch's stamp, the last epoch's
    per-record scores (JSON text in Tune's results), or None when the last epoch has none."""
    cells = [[1.0, 0.0], [0.0, 1.0]]
    config = {"family": "diffusion", "batch_size": 16, "lr": 3e-3, "unet_width": 32}  # no cond_dropout, lr_schedule
    done = SimpleNamespace(config=config, history=[{"timestamp": 100, bench.SCORES: "[[0,0],[0,0]]"},
                                                   {"timestamp": 110, bench.SCORES: json.dumps(cells)}])
    assert bench.trial_row(done) == {"point": (3e-3, 32, None, 16, None), "stamps": [100, 110], "scores": cells}
    stopped = SimpleNamespace(config=config, history=[{"timestamp": 100, bench.SCORES: json.dumps(cells)},
                                                      {"timestamp": 104}])
    assert bench.trial_row(stopped)["scores"] is None
    assert bench.trial_row(SimpleNamespace(config=config, history=[])) == {"point": (3e-3, 32, None, 16, None),
                                                                           "stamps": [], "scores": None}


def test_final_choice_is_the_best_completed_trial_and_may_miss_a_completed_tied_point():
    """The run completes the tied point `t` (one cell lower) and `u` (every cell 1), which the tied set given here
    leaves out: its final choice is `u`, not tied, though `cost_to_find` says it found `t`. Trial-epochs in all
    count the stopped trial's too."""
    run = [trial("t", [1, 2, 3], scores(zeros=1)), trial("u", [1, 2, 3], scores()), trial("s", [1])]
    assert bench.final_choice(run, {"t"}) == {"trial_epochs_total": 7, "choice": "u", "choice_tied": False}
    assert bench.cost_to_find(run, {"t"}, 3)["trial_epochs"] is not None
    assert bench.final_choice([trial("s", [1])], {"t"}) == {"trial_epochs_total": 1, "choice": None,
                                                             "choice_tied": None}


def test_agreeing_counts_completed_trials_scored_as_in_the_grid():
    grid = [trial("a", [1, 2], scores()), trial("b", [1, 2], scores(zeros=2))]
    run = [trial("a", [5, 6], scores()), trial("b", [5, 6], scores(zeros=3)), trial("a", [7])]
    assert bench.agreeing(run, grid) == "1/2"


def test_grid_table_ranks_completed_points_and_marks_the_best_and_the_tied():
    grid = [trial(("1e-3", None, "0.1", "16", "cosine"), [1, 2], scores(zeros=1)),
            trial(("3e-3", None, "0.1", "16", "cosine"), [1, 2], scores()),
            trial(("3e-3", None, "0.2", "32", "constant"), [1])]  # stopped: no scores, no row
    best, tied = bench.tied_set(grid)
    lines = bench.grid_table(grid, tied, best).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| lr | unet_width | cond_dropout | batch_size | lr_schedule |")
    assert lines[2].startswith("| 3e-3 | - | 0.1 | 16 | cosine | 1.000 [1.000, 1.000] | best |")
    assert lines[3].startswith("| 1e-3 | - |") and lines[3].endswith("| tied |")


def test_logged_wall_reads_the_searchs_closing_line(tmp_path):
    """--reuse takes a finished search's wall time from its own last closing line; a log without one (the search
    did not finish) or no log at all means: run it again."""
    log = tmp_path / "grid.log"
    log.write_text("[search] 16 trials, 16 completed, 0 errored; wall time 1311 s\n[search] best: ...\n")
    assert bench.logged_wall(log) == 1311.0
    log.write_text("[search] preset laptop: ...\n")
    assert bench.logged_wall(log) is None and bench.logged_wall(tmp_path / "absent.log") is None
