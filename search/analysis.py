"""Is the winner real? Seed replicates per configuration, a stated tie test against the best, and which
swept fields matter; pure functions of the results table's rows (search/results.py).

    from search.analysis import summarize
    s = summarize(rows, fields=["lr", "weight_decay", "n_heads", "ff_dim", "n_layers", "seed"],
                  metrics=["best/val_l1", "test/l1"])
    s.configurations            # one dict per configuration (every swept field but seed): mean, std, n
    s.ties["regressor"]         # Ties: the best configuration, how many are tied with it, how many worse
    s.importance["regressor"]   # Importance: fANOVA share of best/val_l1's variance per swept field
    s.no_effect                 # [NoEffect("weight_decay", 16, 16)]: fields whose values give identical rows

A configuration is every swept field but `seed`; its replicates are its rows with different seeds
(`--seeds N`). Family-aware: a row ranks by its family's best metric (its family's `best`, model/families/; a
row without `family` is of the default family), and bests, ties and importance are computed within a family. Families are
compared with each other only on the test metrics both report (`compare_families`).

The tie test: a one-sided Welch t-test of "this configuration's mean is worse (higher) than the best's"
over the seeds' values, at level ALPHA per comparison, with no correction for making many comparisons.
The best is chosen by the same means, which biases its mean low, so the test leans towards calling a
configuration worse: a "tied" is a statement the data cannot refute, not a proof of equality. With one
seed nothing is tested, and the tables say so.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from model import families as registry
from model.config import (DEFAULT_FAMILY, TEST_ALIGN, TEST_ATTR_ALL, TEST_CLIP, TEST_KID_INDOMAIN, TEST_KID_RANDOM,
                          TEST_L1, TEST_R1, TEST_RECALL, TEST_TYPE_ACC)

SEED = "seed"  # the TrainConfig field whose grid axis holds the replicates
ALPHA = 0.05
TEST = f"one-sided Welch t-test (H1: a configuration's mean is worse than the best's), level α = {ALPHA} per comparison"
TEST_SHORT = f"one-sided Welch t-test, α = {ALPHA}"
EVALUATOR = "fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0)"
# The test metrics a family comparison ranks by, and which way is better. The guards against wrong winners
# (memorisation, diversity) are shown side by side but not ranked.
DIRECTION = {TEST_L1: "min", TEST_CLIP: "max", TEST_ATTR_ALL: "max", TEST_ALIGN: "max", TEST_R1: "max",
             TEST_TYPE_ACC: "max", TEST_KID_RANDOM: "min", TEST_KID_INDOMAIN: "min", TEST_RECALL: "max"}


def family(row: dict) -> str:
    return row.get("family") or DEFAULT_FAMILY


def ranked_by(row: dict) -> str:
    """The metric that ranks this row: its family's best-so-far selection metric (lower is better)."""
    return registry.get(family(row)).best


def number(value) -> float | None:
    """A finite number, else None: "off", "unavailable", inf and NaN are not values to average."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def levels(values) -> list:
    """A field's distinct values in order: numbers by value (1024 after 512), then anything else by text."""
    def key(v):
        return (1, str(v), 0.0) if number(v) is None else (0, "", float(v))

    return sorted(set(values), key=key)


def families(rows: list[dict]) -> list[str]:
    """The families present, in the registry's order (an unknown name after them)."""
    present, known = {family(r) for r in rows}, registry.names()
    return [f for f in known if f in present] + sorted(present - set(known))


def welch_greater(a, b) -> float:
    """p-value of the one-sided Welch t-test of H1: mean(a) > mean(b); each needs at least 2 values.

    Two samples without spread (bit-identical replicates) have no t statistic: their means either differ
    (p = 0) or not (p = 0.5, the value of t = 0)."""
    from scipy.stats import t as student_t

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's test needs at least 2 values per sample, got {len(a)} and {len(b)}")
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff = a.mean() - b.mean()
    if va + vb == 0:
        return 0.0 if diff > 0 else 0.5 if diff == 0 else 1.0
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(student_t.sf(t, df))


# ---------------------------------------------------------------------------- configurations and ties


def configurations(rows: list[dict], fields: list[str], metrics: list[str]) -> list[dict]:
    """One dict per configuration: its fields (all but seed), family, ranked_by, `seeds` ("3/3": completed
    of all), and per metric the mean over its completed seeds and `<metric> std` (sample std, n-1; None
    below 2 values). A metric no seed has a number for keeps the seeds' shared text ("off"). `_values`
    holds the completed seeds' numbers per metric, `_rows` its rows, `_complete` whether every seed completed
    (the underscored keys are not written to the tables)."""
    keys = [f for f in fields if f != SEED]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((family(r), *(r.get(k) for k in keys)), []).append(r)
    out = []
    for members in groups.values():
        ok = [r for r in members if r.get("status") == "ok"]
        c = {k: members[0].get(k) for k in keys}
        c.update(family=family(members[0]), ranked_by=ranked_by(members[0]), seeds=f"{len(ok)}/{len(members)}",
                 _complete=len(ok) == len(members), _rows=members, _values={})
        for m in dict.fromkeys([*metrics, c["ranked_by"]]):
            values = [v for v in (number(r.get(m)) for r in ok) if v is not None]
            c["_values"][m] = values
            texts = {r.get(m) for r in ok if r.get(m) is not None and number(r.get(m)) is None}
            c[m] = float(np.mean(values)) if values else (texts.pop() if len(texts) == 1 else None)
            c[f"{m} std"] = float(np.std(values, ddof=1)) if len(values) >= 2 else None
        out.append(c)
    return out


@dataclass
class Ties:
    """Within one family: the best configuration, and how the others compare with it."""
    family: str
    metric: str
    best: dict | None  # None when no configuration completed every seed
    tied: int = 0
    worse: int = 0
    untested: int = 0  # fewer than 2 completed seeds on either side
    reason: str | None = None  # why nothing was tested


def rank(configs: list[dict], seeds: int) -> dict[str, Ties]:
    """Sort `configs` in place (by family, then the mean of its ranking metric) and mark each: `best`,
    `vs_best` ("best", "tied", "worse" or None when untested) and `p_vs_best`. The best of a family is its
    lowest mean among configurations whose every seed completed (as the one-seed table's best is the best
    completed trial)."""
    order = {f: i for i, f in enumerate(families(configs))}

    def key(c):
        mean = number(c[c["ranked_by"]])
        return order[c["family"]], mean is None, mean or 0.0

    configs.sort(key=key)
    out = {}
    for fam in order:
        mine = [c for c in configs if c["family"] == fam]
        metric = mine[0]["ranked_by"]
        eligible = [c for c in mine if c["_complete"] and number(c[metric]) is not None]
        ties = Ties(fam, metric, eligible[0] if eligible else None)
        if seeds < 2:
            ties.reason = ("one seed per configuration, so whether the best is distinguishable from the others cannot "
                           "be claimed (seed noise is not measured); rerun with --seeds 3 to test it")
        elif ties.best is None:
            ties.reason = f"no {fam} configuration completed every seed"
        best_values = ties.best["_values"][metric] if ties.best else []
        for c in mine:
            c["best"], c["vs_best"], c["p_vs_best"] = c is ties.best, "best" if c is ties.best else None, None
            if c is ties.best or ties.reason:
                continue
            values = c["_values"][metric]
            if len(values) < 2 or len(best_values) < 2:
                ties.untested += 1
                continue
            c["p_vs_best"] = welch_greater(values, best_values)
            c["vs_best"] = "worse" if c["p_vs_best"] < ALPHA else "tied"
            ties.tied += c["vs_best"] == "tied"
            ties.worse += c["vs_best"] == "worse"
        out[fam] = ties
    return out


def best_rows(rows: list[dict], fields: list[str]) -> dict[str, dict]:
    """Per family, the row whose checkpoint stands for the search: the best configuration's best seed."""
    ties = rank(configurations(rows, fields, []), seeds=1)  # seeds=1: the bests alone, no tests
    out = {}
    for fam, t in ties.items():
        if t.best is not None:
            ok = [r for r in t.best["_rows"] if r.get("status") == "ok" and number(r.get(t.metric)) is not None]
            out[fam] = min(ok, key=lambda r: r[t.metric])
    return out


def tie_sentence(t: Ties, n_configs: int, seeds: int, named: bool = False) -> str:
    """The one sentence the Markdown summary gives per family (`named`: say which, in a mixed search)."""
    name = f" {t.family}" if named or t.family != DEFAULT_FAMILY else ""
    if t.reason:
        return f"No tie claim{f' for the{name} configurations' if name else ''}: {t.reason}."
    others = n_configs - 1
    text = (f"{t.tied} of the other {others}{name} configurations {'is' if t.tied == 1 else 'are'} tied with the best "
            f"(not distinguishable from it on mean `{t.metric}` over {seeds} seeds: {TEST_SHORT}); {t.worse} "
            f"{'is' if t.worse == 1 else 'are'} worse")
    return text + (f", {t.untested} untested (fewer than 2 completed seeds)." if t.untested else ".")


# ---------------------------------------------------------------------------- families compared


def compare_families(ties: dict[str, Ties], metrics: list[str], seeds: int) -> list[dict]:
    """The families' best configurations side by side on the test metrics all of them report. Per metric:
    each family's mean and std, and where the metric has a direction and there are seeds, the better family
    (by mean) and, for each other family, the same tie test against it."""
    reps = {fam: t.best for fam, t in ties.items() if t.best is not None}
    if len(reps) < 2:
        return []
    out = []
    for m in metrics:
        if not m.startswith("test/") or any(not c["_values"].get(m) for c in reps.values()):
            continue
        row = {"metric": m, "direction": DIRECTION.get(m)}
        for fam, c in reps.items():
            row[fam], row[f"{fam} std"] = c[m], c[f"{m} std"]
        if row["direction"] and seeds >= 2 and len({c[m] for c in reps.values()}) > 1:  # equal means: no better one
            sign = 1.0 if row["direction"] == "min" else -1.0
            better = min(reps, key=lambda f: sign * reps[f][m])
            row["better"] = better
            for fam in reps:
                if fam != better and min(len(reps[fam]["_values"][m]), len(reps[better]["_values"][m])) >= 2:
                    p = welch_greater([sign * v for v in reps[fam]["_values"][m]],
                                      [sign * v for v in reps[better]["_values"][m]])
                    row[f"{fam} p"], row[f"{fam} vs {better}"] = p, "worse" if p < ALPHA else "tied"
        out.append(row)
    return out


# ---------------------------------------------------------------------------- which fields matter


@dataclass
class NoEffect:
    """A swept field whose values gave identical results: in `identical` of the `groups` sets of completed
    rows that differ only in this field, every metric is the same."""
    field: str
    identical: int
    groups: int

    @property
    def everywhere(self) -> bool:
        return self.identical == self.groups

    def sentence(self) -> str:
        if self.everywhere:
            return (f"`{self.field}` has no effect: in all {self.groups} groups of trials that differ only in "
                    f"`{self.field}`, every metric is identical")
        return (f"`{self.field}` gives identical results in {self.identical} of the {self.groups} groups of trials "
                f"that differ only in it")


def no_effect(rows: list[dict], fields: list[str], metrics: list[str]) -> list[NoEffect]:
    ok = [r for r in rows if r.get("status") == "ok"]
    out = []
    for f in fields:
        groups: dict[tuple, list[dict]] = {}
        for r in ok:
            groups.setdefault((family(r), *(r.get(g) for g in fields if g != f)), []).append(r)
        varied = [g for g in groups.values() if len({r.get(f) for r in g}) > 1]
        same = sum(len({tuple(r.get(m) for m in metrics) for r in g}) == 1 for g in varied)
        if same:
            out.append(NoEffect(f, same, len(varied)))
    return out


@dataclass
class Importance:
    family: str
    metric: str
    trials: int  # completed trials with a finite metric: what the evaluator saw
    values: dict[str, float] = field(default_factory=dict)  # field -> share of the metric's variance, highest first
    skipped: str | None = None  # why there are no values


def importance(rows: list[dict], fields: list[str], fam: str) -> Importance:
    """Optuna's fANOVA on the finished trials of one family: each swept field's share of the variance of
    the family's ranking metric (its main effect, from a random-forest fit over the trials). The trials go
    into an in-memory study as categorical parameters; `seed`, when swept, is one of them, so its share is
    the seed noise the others can be read against."""
    metric = registry.get(fam).best
    done = [r for r in rows if family(r) == fam and r.get("status") == "ok" and number(r.get(metric)) is not None]
    imp = Importance(fam, metric, len(done))
    swept = [f for f in fields if f != "family" and len({r.get(f) for r in done}) > 1]
    values = [r[metric] for r in done]
    if len(done) < 2:
        imp.skipped = f"{len(done)} completed trial{'' if len(done) == 1 else 's'} with a finite `{metric}` (needs 2)"
    elif not swept:
        imp.skipped = "no swept field takes two values among the completed trials"
    elif max(values) == min(values):
        imp.skipped = f"every completed trial has the same `{metric}` ({values[0]:.6g}): no field changes it"
    if imp.skipped:
        return imp

    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {f: CategoricalDistribution(levels(r[f] for r in done)) for f in swept}
    study = optuna.create_study(direction="minimize")
    for r in done:
        study.add_trial(optuna.trial.create_trial(params={f: r[f] for f in swept}, distributions=dists,
                                                  value=float(r[metric])))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            shares = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except Exception as e:  # noqa: BLE001 — an export after a long search must not fail on its figure
        logging.getLogger(__name__).warning("importance skipped: %s", e)
        imp.skipped = f"optuna's fANOVA failed: {type(e).__name__}: {e}"
        return imp
    imp.values = {f: float(v) for f, v in sorted(shares.items(), key=lambda kv: -kv[1])}
    return imp


# ---------------------------------------------------------------------------- all of it


@dataclass
class Summary:
    seeds: int  # replicates per configuration (1: no seed axis)
    configurations: list[dict]  # ranked (see rank)
    ties: dict[str, Ties]
    families_compared: list[dict]
    importance: dict[str, Importance]
    no_effect: list[NoEffect]


def seed_count(rows: list[dict], fields: list[str]) -> int:
    return len({r.get(SEED) for r in rows}) if SEED in fields and rows else 1


def summarize(rows: list[dict], fields: list[str], metrics: list[str]) -> Summary:
    seeds = seed_count(rows, fields)
    configs = configurations(rows, fields, metrics)
    ties = rank(configs, seeds)
    return Summary(seeds, configs, ties, compare_families(ties, metrics, seeds),
                   {fam: importance(rows, fields, fam) for fam in families(rows)}, no_effect(rows, fields, metrics))
