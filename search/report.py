"""The results table written out: best_config.csv, .md and .json, from the rows search/results.py builds.

    from search.report import summarize, write_tables
    summary = summarize(rows, plan)                    # configurations, ties, families compared, importance
    write_tables(rows, plan, "results/grid", summary)  # best_config.csv / .md / .json, each written atomically

Columns use the config field names and metric names spelled in model/config.py, so the table, the search space
and the checkpoints read the same. A CLIP score that could not be computed is shown as "unavailable" (or "off"),
never as a number; the reason is stated once, in the table's header and provenance. With seed replicates
(`--seeds N`) the CSV and Markdown tables have one row per configuration (mean ± std over seeds, a tie test
against the best: search/analysis.py) and the JSON keeps every seed's row besides.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from model import families as registry
from model.config import BEST_VAL_L1, DEFAULT_FAMILY, TEST_CLIP, TEST_L1
from model.files import atomic_write
from search import analysis
from search.results import GUARDS, HEADLINE, INTERVAL_METRICS, RUN_COLUMNS, SHARED_METRICS, TABLE, metric_names
from search.store import Plan

PAIRED_NOTE = ("the row against its family's best on the same test texts and sample seeds (the headline metric's "
               "per-record scores): row - best, its paired bootstrap 95% interval, better or worse where that excludes 0")
INTERVALS = ("95% intervals [lo, hi]: bootstrap over the test (or validation) records and each record's sample seeds: "
             "the evaluation's noise, not the training seed's (--seeds measures that)")


def metric_columns(rows: list[dict]) -> list[str]:
    """Each present family's ranking metric, then every shared metric some row reports (model/eval/evaluator.py)."""
    ranking = [registry.get(f).best for f in analysis.families(rows) if f in registry.names()] or [BEST_VAL_L1]
    return [*ranking, *(m for m in SHARED_METRICS if m in (TEST_L1, TEST_CLIP) or any(r.get(m) is not None
                                                                                     for r in rows))]


def markdown_metrics(rows: list[dict]) -> list[str]:
    """The metrics best_config.md shows (with their intervals): ranking, L1, CLIP, the headline ones, the guards;
    per-attribute and validation metrics are in the CSV and JSON."""
    shown = {TEST_L1, TEST_CLIP, *HEADLINE, *GUARDS}
    return [m for m in metric_columns(rows) if m in shown or m not in SHARED_METRICS]


def with_intervals(metrics: list[str]) -> list[str]:
    """Each metric followed by its interval's columns, where it has one."""
    return [c for m in metrics for c in ((m, f"{m}_lo", f"{m}_hi") if m in INTERVAL_METRICS else (m,))]


def field_columns(rows: list[dict]) -> list[str]:
    """The swept fields, as the rows carry them, and `family` where a row is not a regressor."""
    fields = [c for c in rows[0] if c not in (*metric_names(), *RUN_COLUMNS, "best", "pareto", "family", "ranked_by",
                                              "scores", "paired_vs_best")]
    if any(analysis.family(r) != DEFAULT_FAMILY for r in rows):
        fields = ["family", *fields]
    return fields


def columns(rows: list[dict], metrics: list[str] | None = None) -> list[str]:
    """The table's columns: the swept fields, the metrics (default: every one, with its interval's columns), how
    each row compares with its family's best on the same texts (`paired_vs_best`), and where it ran."""
    metrics = with_intervals(metric_columns(rows)) if metrics is None else metrics
    if not rows:
        return ["best", "ranked_by", *metrics, *RUN_COLUMNS]
    extra = ["pareto"] if "pareto" in rows[0] else []
    return ["best", *field_columns(rows), "ranked_by", *metrics, "paired_vs_best", *RUN_COLUMNS[:3], *extra,
            *RUN_COLUMNS[3:]]


def config_columns(rows: list[dict]) -> list[str]:
    """The per-configuration table's columns (with seed replicates): mean and std of each metric."""
    fields = [c for c in field_columns(rows) if c != analysis.SEED]
    stats = [c for m in metric_columns(rows) for c in (m, f"{m} std")]
    return ["best", "vs_best", "p_vs_best", *fields, "ranked_by", "seeds", *stats]


def _fmt(value, col: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if col == "p_vs_best":
            return f"{value:.2g}"
        if col in ("lr", "weight_decay") or (value and abs(value) < 1e-3):
            return f"{value:.0e}"
        return f"{value:.4g}" if col != "wall_s" else f"{value:.1f}"
    return str(value)


def _md_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def provenance_lines(p: Plan) -> list[str]:
    d, s, settings = p.dataset, p.search, p.settings
    counts = ", ".join(f"{k} {v}" for k, v in (d.get("counts") or {}).items())
    return [
        f"- preset: **{settings.preset}** ({p.preset_about})",
        f"- search: {s.search}, scheduler {s.scheduler}, {s.trials} trials, "
        f"resources per trial {s.resources_per_trial}, max failures {s.max_failures}",
        f"- fused trials: {s.fuse.reason or 'off'}",
        f"- dataset: {'SYNTHETIC ' if d.get('synthetic') else ''}{d.get('source')} "
        f"(fingerprint {d.get('fingerprint')}); rows {counts}" + (f"; {d['subset']}" if d.get("subset") else ""),
        f"- split: val_fraction {settings.data.val_fraction}, test_fraction {settings.data.test_fraction}, "
        f"split_seed {settings.data.split_seed}",
        f"- text encoder: {settings.model.text_encoder}; CLIP: {p.clip.get('model')} ({p.clip.get('pretrained')}): "
        f"{p.clip_status}",
        f"- code: {p.code_version}; seed {settings.train.seed}; Ray {p.ray_version}; torch {p.torch_version}",
        *([f"- seeds: {len(seeds)} per configuration ({', '.join(map(str, seeds))}), a grid axis of `seed`"]
          if (seeds := settings.grid.get(analysis.SEED)) else []),
        f"- devices: {p.devices}",
        f"- Ray experiment: {p.ray_experiment}",
    ]


def summarize(rows: list[dict], plan: Plan) -> analysis.Summary:
    """search/analysis.py on this table: configurations, ties, families compared, importance, no-effect fields."""
    return analysis.summarize(rows, list(plan.settings.grid), metric_columns(rows))


def _cell(row: dict, col: str) -> str:
    """A Markdown cell: an interval metric as "mean [lo, hi]"."""
    value = row.get(col)
    if col in INTERVAL_METRICS and isinstance(value, float) and row.get(f"{col}_lo") is not None:
        return f"{value:.3g} [{row[f'{col}_lo']:.3g}, {row[f'{col}_hi']:.3g}]"
    return _fmt(value[:8] if col == "node_id" and value else value, col)


def _mean_std(c: dict, m: str) -> str:
    std = c.get(f"{m} std")
    return _fmt(c.get(m), m) if std is None else f"{_fmt(c.get(m), m)} ± {std:.2g}"


def _csv(path: Path, cols: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("yes" if r[c] else "") if isinstance(r[c], bool) else r[c] for c in cols})
    atomic_write(path, buf.getvalue())


def _public(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def analysis_payload(s: analysis.Summary) -> dict:
    """The summary as JSON: what best_config.json keeps beside the rows."""
    return {"seeds": s.seeds, "test": analysis.TEST if s.seeds > 1 else None, "alpha": analysis.ALPHA,
            "ties": {f: {"metric": t.metric, "best": t.best and _public(t.best), "tied": t.tied, "worse": t.worse,
                         "untested": t.untested, "reason": t.reason} for f, t in s.ties.items()},
            "families_compared": s.families_compared,
            "importance": {f: {"metric": i.metric, "evaluator": analysis.EVALUATOR, "trials": i.trials,
                               "values": i.values, "skipped": i.skipped} for f, i in s.importance.items()},
            "no_effect": [{"field": n.field, "identical": n.identical, "groups": n.groups} for n in s.no_effect]}


def importance_lines(s: analysis.Summary) -> list[str]:
    lines = ["## Which hyperparameters matter (`importance.png`, `parallel_coordinates.png`)", ""]
    no_effect = {n.field: n for n in s.no_effect}
    for fam, imp in s.importance.items():
        if imp.skipped:
            lines += [f"Importance for `{imp.metric}` ({fam}) skipped: {imp.skipped}.", ""]
            continue
        lines += [f"Share of the variance of `{imp.metric}` that each swept field explains alone, by {analysis.EVALUATOR}, "
                  f"over the {imp.trials} completed {fam} trials:", ""]
        body = []
        for f, v in imp.values.items():
            note = ("no effect (identical results)" if f in no_effect and no_effect[f].everywhere else
                    "the replicate: its share is seed noise, the level to read the others against" if f == analysis.SEED
                    else "")
            body.append([f, f"{v:.3f}", note])
        lines += [_md_table(["field", "importance", "note"], body), ""]
    lines += [f"- {n.sentence()}." for n in s.no_effect] + ([""] if s.no_effect else [])
    return lines


def families_lines(s: analysis.Summary) -> list[str]:
    if not s.families_compared:
        return []
    fams = [f for f, t in s.ties.items() if t.best is not None]
    lines = ["## Families compared (each family's best configuration, on the test metrics all report)", ""]
    if s.seeds < 2:
        lines += ["One seed per configuration: the values are shown, but which family is better cannot be claimed "
                  "(rerun with --seeds 3).", ""]
    else:
        lines += [f"Cells are mean ± std over seeds. Where a metric has a direction, the better family by mean, and the "
                  f"{analysis.TEST.replace('the best', 'the better family')} for each other family; the "
                  "memorisation and diversity guards are shown, not ranked.", ""]
    header = ["metric", "better is", *fams, "better family", *[f"{f} vs better (p)" for f in fams]]
    body = []
    for row in s.families_compared:
        verdicts = []
        for f in fams:
            tag = next((v for k, v in row.items() if k.startswith(f"{f} vs ")), None)
            verdicts.append(f"{tag} ({row[f'{f} p']:.3g})" if tag else "—")
        body.append([row["metric"], {"min": "lower", "max": "higher"}.get(row["direction"], "guard"),
                     *[_mean_std(row, f) for f in fams], row.get("better") or "—", *verdicts])
    return lines + [_md_table(header, body), ""]


def write_tables(rows: list[dict], plan: Plan, out_dir: str | Path,
                 summary: analysis.Summary | None = None) -> None:
    out_dir = Path(out_dir)
    summary = summary or summarize(rows, plan)
    cols = columns(rows)
    seeded = summary.seeds > 1 and bool(rows)
    ccols = config_columns(rows) if seeded else None
    configs = summary.configurations
    if seeded:
        _csv(out_dir / f"{TABLE}.csv", ccols, configs)
    else:
        _csv(out_dir / f"{TABLE}.csv", cols, rows)

    baselines = plan.baselines or {}
    payload = {"columns": cols, "rows": [{c: r[c] for c in cols} for r in rows]}
    if seeded:
        payload["configurations"] = {"columns": ccols, "rows": [{c: k[c] for c in ccols} for k in configs]}
    payload.update(analysis=analysis_payload(summary), baselines=baselines, provenance=plan.to_dict())
    atomic_write(out_dir / f"{TABLE}.json", json.dumps(payload, indent=2, default=str) + "\n")

    n_ok = sum(r["status"] == "ok" for r in rows)
    ranked = " or ".join(f"`{t.metric}`" for t in summary.ties.values()) or f"`{BEST_VAL_L1}`"
    if seeded:
        seeds = sorted({r.get(analysis.SEED) for r in rows}, key=repr)
        intro = (f"{len(rows)} runs: {len(configs)} configurations × {summary.seeds} seeds "
                 f"({', '.join(map(str, seeds))}), {n_ok} completed. One row per configuration, ranked by the mean "
                 f"over its completed seeds of its `ranked_by` metric, {ranked} (lower is better); cells are mean ± "
                 f"sample standard deviation over seeds. `vs_best`: the {analysis.TEST}, with no correction for the "
                 "number of comparisons; `p_vs_best`: its p-value. Every seed's row is listed below the table and "
                 "kept in best_config.json.")
    else:
        intro = (f"{len(rows)} trials, {n_ok} completed; sorted by {ranked} (lower is better); "
                 "the best completed trial is marked.")
    per_family = {f: sum(c["family"] == f for c in configs) for f in summary.ties}
    ties = [f"**{analysis.tie_sentence(t, per_family[f], summary.seeds, len(summary.ties) > 1)}**"
            for f, t in summary.ties.items()]
    md = [f"# Search results: {plan.experiment}", "", intro, "", *(x for t in ties for x in (t, "")),
          *provenance_lines(plan), f"- {INTERVALS}; `paired_vs_best`: {PAIRED_NOTE}", ""]
    shown = columns(rows, markdown_metrics(rows))
    if seeded:
        mcols = [c for c in ccols if c != "best" and not c.endswith(" std")]
        stats = set(metric_columns(rows))
        md += [_md_table(mcols, [[_mean_std(k, c) if c in stats else _fmt(k[c], c) for c in mcols] for k in configs]),
               "", "## Every seed", "", _md_table(shown, [[_cell(r, c) for c in shown] for r in rows]), ""]
    else:
        md += [_md_table(shown, [[_cell(r, c) for c in shown] for r in rows]), ""]
    md += importance_lines(summary) + families_lines(summary)
    if baselines:
        md += ["## Baselines (same test split, no training)", "",
               _md_table(["baseline", "value"], [[k, "unavailable" if v is None else _fmt(v)]
                                                 for k, v in baselines.items()]), ""]
    if "pareto" in cols:
        objs = " × ".join(f"{m} ({mode})" for m, mode in plan.search.objectives)
        md += [f"## Pareto front: {objs}", "",
               "\n".join(f"- trial {r['trial_id']}: " + ", ".join(f"{m} {_fmt(r[m])}" for m, _ in
                                                                 plan.search.objectives)
                         for r in rows if r.get("pareto")) or "(no completed trial)", ""]
    atomic_write(out_dir / f"{TABLE}.md", "\n".join(md))


