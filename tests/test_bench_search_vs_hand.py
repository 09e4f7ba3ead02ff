"""bench/bench_search_vs_hand.py's parts that decide its verdict, on made-up trials and rows: which trial the search
chooses (`choose`), the pooled paired verdict over seeds (`verdicts`), and that its search command trains the
hand-picked recipe with only the space's fields varied (parsed by search.grid's own parser and settings). No Ray,
no training: seconds.

The whole script (a search, then 2 recipes x 3 seeds of training) is run by hand: `python
bench/bench_search_vs_hand.py --quick --out /tmp/x` checks it (106 s on 2 cores, 2026-12-07: a 4-trial search, 2 x 2 runs); the suite has no room for it.
"""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest
from benches import load_bench

bench = load_bench("bench_search_vs_hand")

RECORDS, SAMPLES = 12, 2


def cells(value: float = 1.0, zeros: int = 0) -> list[list[float]]:
    """(RECORDS, SAMPLES) scores, all `value` but the first `zeros` records' cells 0."""
    return [[0.0 if r < zeros else value] * SAMPLES for r in range(RECORDS)]


def trial(lr: str, epochs: int, scores=None) -> dict:
    return {"point": {"lr": lr}, "epochs": epochs, "x0_first": 0.3, "scores": scores}


def test_choose_takes_the_best_completed_trial_and_lists_the_tied():
    """A trial ASHA stopped (fewer epochs) is no candidate however high its last score; nor one without scores.
    Of the completed: every cell 1 is the best; one record at 0 (p about 1/2 by a sign flip of that record) is
    tied; six records at 0 (p about 1/64) is not."""
    rows = [trial("stopped", 8, cells(2.0)), trial("best", 30, cells()), trial("one-less", 30, cells(zeros=1)),
            trial("worse", 30, cells(zeros=6)), trial("unscored", 30)]
    best, tied = bench.choose(rows, epochs=30)
    assert best["point"] == {"lr": "best"}
    assert [t["point"]["lr"] for t in tied] == ["one-less"]


def test_choose_refuses_a_search_that_completed_nothing():
    with pytest.raises(SystemExit, match="no trial of the search completed"):
        bench.choose([trial("stopped", 8, cells())], epochs=30)


def row(recipe: str, seed: int, align, type_acc) -> dict:
    return {"recipe": recipe, "seed": seed, "scores": {"indomain_align": align, "type_acc": type_acc}}


def test_verdicts_pool_the_seeds_pairwise_and_name_the_direction():
    """Alignment: the search's is 0.2 above on every record in both seeds: won (every sign flip but the all-plus
    one falls below it), difference +0.2. Type accuracy: the hand recipe's is 1 where the search's is 0 on every
    record of seed 0 and equal in seed 1: lost, and the search is higher in 0 of 2 seeds."""
    rows = [row("search", s, cells(0.5), cells(0.0 if s == 0 else 1.0)) for s in (0, 1)]
    rows += [row("hand", s, cells(0.3), cells(1.0)) for s in (1, 0)]  # order does not matter: paired by seed
    by = {v["metric"]: v for v in bench.verdicts(rows, "search", "hand")}
    assert set(by) == {"test/indomain_align", "test/type_acc"}  # only the metrics both have
    align, acc = by["test/indomain_align"], by["test/type_acc"]
    assert align["verdict"] == "won" and align["diff"] == pytest.approx(0.2) and align["seeds_higher"] == "2/2"
    assert align["lo"] == pytest.approx(0.2) and align["p_choice_better"] < 0.01 < align["p_base_better"]
    assert acc["verdict"] == "lost" and acc["diff"] == pytest.approx(-0.5) and acc["seeds_higher"] == "0/2"


def test_verdicts_call_equal_rows_tied_and_refuse_unpaired_seeds():
    same = [row(name, 0, cells(0.4), cells(1.0, zeros=3)) for name in ("search", "hand")]
    assert {v["verdict"] for v in bench.verdicts(same, "search", "hand")} == {"tied"}
    with pytest.raises(ValueError, match="same seeds"):
        bench.verdicts([row("search", 0, cells(), cells()), row("hand", 1, cells(), cells())], "search", "hand")


def test_the_search_trains_the_hand_picked_recipe_with_only_the_space_varied():
    """The command, read by search.grid's own parser and settings: the space's fields are its axes with their
    values; every other field of the hand-picked recipe is one value, the recipe's own, wherever the settings keep
    it (a one-value axis, or the model, train or diffusion section)."""
    from search.grid import parse_args
    from search.settings import config_overrides, resolve

    args = SimpleNamespace(data="../shared/datasets/pokedex", out="/tmp/x", trials=12, grace_period=8, epochs=30,
                           cpus_per_trial=2,
                           eval_samples=2)
    recipe = bench.hand()
    argv = bench.search_command(args, bench.SPACE, recipe)[3:]  # after "python -m search.grid"
    settings = resolve("laptop", config_overrides(parse_args(argv)))
    for k, values in bench.SPACE.items():
        assert settings.grid[k] == tuple(bench.typed({k: v})[k] for v in values), k
    section = settings.sections["diffusion"]
    for k, v in recipe.items():
        if k in bench.SPACE or k == "family":
            continue
        if k in settings.grid:
            assert settings.grid[k] == (v,), k
        else:
            where = next(c for c in (settings.model, settings.train, section) if k in {f.name for f in fields(c)})
            assert getattr(where, k) == v, k
    assert settings.grid["family"] == ("diffusion",)


def test_describe_names_only_what_the_search_changed():
    recipe = bench.hand()
    assert bench.describe({"lr": "0.001", "batch_size": "64"}, recipe) == "the hand-picked recipe itself"
    assert bench.describe({"lr": "0.002", "lr_schedule": "cosine"}, recipe) == "lr 0.002, lr_schedule cosine"


def test_holm_adjusts_for_the_metrics_compared():
    """Holm by hand: sorted 0.0242, 0.3924, 0.7153 times 3, 2, 1 = 0.0726, 0.7848, 0.7153, then kept monotone
    (0.7848 for the last). A one-sided p of 0.024 on one metric of three is not a win at 0.05."""
    assert bench.holm([0.0242, 0.7153, 0.3924]) == pytest.approx([0.0726, 0.7848, 0.7848])
    assert bench.holm([0.6, 0.9]) == [1.0, 1.0]
