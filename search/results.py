"""From a stored Ray Tune experiment to the results table: one row per trial, sorted, with provenance.

    from search.results import load_trials, table_rows, write_tables
    trials = load_trials("results/grid")               # the Ray experiment directory (or s3://...)
    rows = table_rows(trials, provenance)               # sorted by each family's best metric, best row marked
    write_tables(rows, provenance, "results/grid")      # best_config.csv / .md / .json, atomically

Columns use the config field names and metric names spelled in model/config.py, so the
table, the search space and the checkpoints read the same. A CLIP score that could not be
computed is shown as "unavailable" (or "off"), never as a number; the reason is stated once,
in the table's header and provenance. Each row ranks by its family's best metric (`ranked_by`:
the family's `best`, model/families/). With seed replicates (`--seeds N`) the CSV and Markdown tables have one row per
configuration (mean ± std over seeds, a tie test against the best: search/analysis.py) and the JSON
keeps every seed's row besides.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from model import families as registry
from model.config import (BEST_VAL_L1, DEFAULT_FAMILY, TEST_CLIP, TEST_DIVERSITY, TEST_L1, TEST_MEMORISATION,
                          TEST_NN_TRAIN, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, VAL_CLIP, VAL_TOP1, TrainConfig)
from search import analysis
from model.files import atomic_write

TABLE = "best_config"
# Every metric a row carries (None where its trial did not report it). The table shows each present family's
# ranking metric (its `best`), the thesis's test and validation metrics, and the guards against wrong
# winners (memorisation, diversity) where some row reports them.
GUARDS = (TEST_NN_TRAIN, TEST_MEMORISATION, TEST_DIVERSITY)
SHARED_METRICS = (TEST_L1, TEST_CLIP, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, *GUARDS, VAL_CLIP, VAL_TOP1)


def ranking_metrics() -> tuple[str, ...]:
    """Every registered family's ranking metric, in registry order."""
    return tuple(dict.fromkeys(registry.get(f).best for f in registry.names()))


def metric_names() -> tuple[str, ...]:
    return (*ranking_metrics(), *SHARED_METRICS)
# member: a fused trial's rows are its members (search/trainable.py), numbered in the provenance's order.
RUN_COLUMNS = ("epochs", "wall_s", "status", "trial_id", "member", "hostname", "node_id", "device")


@dataclass
class TrialRecord:
    trial_id: str
    config: dict  # the swept fields only
    ray_status: str  # TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    history: list = field(default_factory=list)  # one dict per epoch (the last report of each epoch)
    error: str | None = None  # the one-line reason when the trial failed
    checkpoint: object = None  # ray.tune.Checkpoint of the latest report, if any


# ---------------------------------------------------------------------------- reading


def _clean(value):
    """pandas turns a missing value into NaN: back to None, and numpy scalars to Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _finite(value):
    """A diverged trial reports best/val_l1 inf or nan: the table shows no number rather than a fake one."""
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def error_reason(text: str | None) -> str | None:
    """The line of a Ray error trace that names the exception, e.g. 'FloatingPointError: training loss ...'."""
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    named = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception", "Interrupt"))]
    reason = (named or lines)[-1]
    return reason.split("ray::", 1)[0] if reason.startswith("ray::") else reason


def quiet_unstarted_trials() -> None:
    """A trial that has not started has no result file, and Tune's ExperimentAnalysis (also the one fit()
    builds after a Ctrl-C) logs a FileNotFoundError for each: export says "N not started" once instead."""
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def load_trials(experiment_path: str) -> list[TrialRecord]:
    from ray.tune import ExperimentAnalysis

    quiet_unstarted_trials()
    analysis = ExperimentAnalysis(str(experiment_path))
    out = []
    for trial in analysis.trials:
        df = analysis.trial_dataframes.get(trial.trial_id)
        records = [] if df is None or df.empty else df.to_dict("records")
        history = _epochs([{k: _clean(v) for k, v in r.items()} for r in records])
        error = error_reason(trial.get_error()) if trial.status == "ERROR" else None
        out.append(TrialRecord(trial.trial_id, dict(trial.config), trial.status, history, error,
                               analysis.get_last_checkpoint(trial) if history else None))
    return out


def _epochs(reports: list[dict]) -> list[dict]:
    """A trial restored from an older checkpoint repeats epochs: each epoch's latest report, in epoch order."""
    by_epoch = {}
    for r in reports:
        by_epoch[int(r.get("epoch") or r.get("training_iteration") or 0)] = r
    return [by_epoch[e] for e in sorted(by_epoch)]


def trials_from_folders(experiment_path: str) -> tuple[list[TrialRecord], list[str]]:
    """The trials of a Ray experiment read from their own folders (params.json, result.json, error.txt, the newest
    checkpoint_*), without Tune's experiment snapshot: what search.export falls back to when that snapshot is
    damaged (a full disk, a driver killed while Tune copied it). Returns (trials, the folders it could not read).

    Without the snapshot Tune's own status is unknown, so it is read from the files: a trial whose last report has
    its final test metrics finished; one with an error.txt and no final report errored (its last failure is the
    reason); any other did not finish (it was running or waiting, or a scheduler stopped it early)."""
    import posixpath

    import pyarrow.fs
    from ray.tune import Checkpoint

    fs, root = pyarrow.fs.FileSystem.from_uri(experiment_path) if "://" in experiment_path else (
        pyarrow.fs.LocalFileSystem(), experiment_path)

    def read(path: str) -> str | None:
        try:
            with fs.open_input_stream(path) as f:
                return f.read().decode()
        except (FileNotFoundError, OSError):
            return None

    trials, unreadable = [], []
    folders = sorted((f for f in fs.get_file_info(pyarrow.fs.FileSelector(root))
                      if f.type == pyarrow.fs.FileType.Directory and f.base_name.startswith("trial_")),
                     key=lambda f: f.base_name)
    for folder in folders:
        try:
            config = json.loads(read(posixpath.join(folder.path, "params.json")) or "")
        except ValueError:
            unreadable.append(f"{folder.base_name} (params.json missing or cut short)")
            continue
        reports, cut = [], 0
        for line in (read(posixpath.join(folder.path, "result.json")) or "").splitlines():
            try:
                reports.append({k: _clean(v) for k, v in json.loads(line).items()})
            except ValueError:  # a line cut short by a full disk or a kill: the whole lines are kept
                cut += 1
        if cut:
            unreadable.append(f"{folder.base_name} ({cut} line(s) of result.json cut short; the rest is read)")
        history = _epochs(reports)
        last = history[-1] if history else {}
        finished = any(k == TEST_L1 or k.endswith("/" + TEST_L1) for k in last)
        errors = read(posixpath.join(folder.path, "error.txt"))
        status = "TERMINATED" if finished else "ERROR" if errors else "UNFINISHED"
        # The checkpoint the last report names (what Tune would return), else the newest one there.
        names = sorted(f.base_name for f in fs.get_file_info(pyarrow.fs.FileSelector(folder.path))
                       if f.type == pyarrow.fs.FileType.Directory and f.base_name.startswith("checkpoint_"))
        named = last.get("checkpoint_dir_name")
        named = named if named in names else (names[-1] if names else None)
        trial_id = last.get("trial_id") or folder.base_name.removeprefix("trial_")
        trials.append(TrialRecord(trial_id, config, status, history, error_reason(errors) if status == "ERROR" else None,
                                  Checkpoint(posixpath.join(folder.path, named), filesystem=fs)
                                  if named and history else None))
    return trials, unreadable


# ---------------------------------------------------------------------------- rows


def _status(t: TrialRecord, epochs: int, target: int, scheduler: str) -> str:
    if t.ray_status == "ERROR":
        return f"error: {t.error or 'unknown (see the trial error.txt)'}"
    if t.ray_status == "TERMINATED":
        if epochs >= target:
            return "ok"
        return f"stopped early ({scheduler}) at epoch {epochs}" if scheduler != "fifo" else f"stopped at epoch {epochs}"
    return t.ray_status.lower()


def sort_rows(rows: list[dict]) -> None:
    """In place: by family (model.config.FAMILIES order), then the row's own ranking metric, lowest first;
    a row without a number last."""
    order = {f: i for i, f in enumerate(analysis.families(rows))}

    def key(row):
        v = analysis.number(row[row["ranked_by"]])
        return order[analysis.family(row)], v is None, v or 0.0

    rows.sort(key=key)


def pareto_front(rows: list[dict], objectives: list[tuple[str, str]]) -> list[dict]:
    """Rows no other row beats on every objective ((metric, "min"|"max") pairs); rows missing a metric are out."""
    def vec(r):
        return [r[m] if mode == "min" else -r[m] for m, mode in objectives]

    pts = [r for r in rows if all(isinstance(r.get(m), (int, float)) for m, _ in objectives)]
    front = []
    for r in pts:
        a = vec(r)
        if not any(all(x <= y for x, y in zip(vec(o), a)) and vec(o) != a for o in pts):
            front.append(r)
    return front


NODE_KEYS = ("time_total_s", "hostname", "node_id", "device")  # a fused trial's, shared by its members' rows


def member_report(metrics: list[dict], family) -> dict:
    """A fused trial's per-member metrics as one flat Tune result (`m<k>/<metric>`), with the best live member's
    selection metric (the family's: val/l1 for the regressor) for the progress line and schedulers."""
    out = {"epoch": max(m.get("epoch", 0) for m in metrics)}
    for k, m in enumerate(metrics):
        out.update({f"m{k}/{key}": value for key, value in m.items()})
    live = [m for m in metrics if "error" not in m and family.selection in m]
    out[family.selection] = min((m[family.selection] for m in live), default=math.nan)
    out[family.best] = min((m[family.best] for m in live), default=math.nan)
    return out


def members_of(result: dict, member: int) -> dict:
    """The inverse of `member_report` for member k: its own metrics, with the trial's node keys and epoch."""
    prefix = f"m{member}/"
    return {**{k: result.get(k) for k in NODE_KEYS}, "epoch": result.get("epoch"),
            **{k[len(prefix):]: v for k, v in result.items() if k.startswith(prefix)}}


def row_key(trial_id: str, member: int | None) -> str:
    """A table row's name: the Tune trial id, with /m<k> for a member of a fused trial."""
    return trial_id if member is None else f"{trial_id}/m{member}"


def trial_runs(t: TrialRecord, provenance: dict) -> list[tuple[dict, int | None, list[dict]]]:
    """(grid point, member, history) for each table row of a trial: one, or one per fused member."""
    members = provenance["search"].get("fuse", {}).get("members")
    if not members:
        return [(dict(t.config), None, t.history)]
    return [({**t.config, **point}, k, [members_of(h, k) for h in t.history]) for k, point in enumerate(members)]


def table_rows(trials: list[TrialRecord], provenance: dict) -> list[dict]:
    settings = provenance["settings"]
    search = provenance["search"]
    target = TrainConfig(**settings["train"]).total_epochs  # both stages of a staged trial
    fixed_family = settings["model"].get("family") or DEFAULT_FAMILY
    rows = []
    for t, point, member, history in ((t, *run) for t in trials for run in trial_runs(t, provenance)):
        last = history[-1] if history else {}
        epochs = int(last.get("epoch") or 0)
        def clip(metric):  # never a number when there is no score; the reason is in the table's header
            status = last.get("test/clip_status")
            if last.get(metric) is None and status:
                return "off" if status.startswith("off") else "unavailable"
            return last.get(metric)
        row = {k: point.get(k) for k in settings["grid"]}
        row.setdefault("family", fixed_family)  # a grid axis once --family sweeps it
        row["ranked_by"] = analysis.ranked_by(row)
        row.update({m: last.get(m) for m in metric_names()})
        row.update({m: _finite(last.get(m)) for m in (*ranking_metrics(), TEST_L1)})
        row.update({TEST_CLIP: clip(TEST_CLIP), VAL_CLIP: clip(VAL_CLIP), "epochs": epochs,
                    "wall_s": round(last["time_total_s"], 1) if last.get("time_total_s") is not None else None,
                    "status": (f"error: FloatingPointError: {last['error']}" if last.get("error") else
                               _status(t, epochs, target, search["scheduler"])),
                    "trial_id": t.trial_id, "member": member, "hostname": last.get("hostname"), "node_id": last.get("node_id"),
                    "device": last.get("device")})
        rows.append(row)
    sort_rows(rows)
    # Per family: the best completed trial, or with seed replicates the best configuration's best seed.
    best = {id(r) for r in analysis.best_rows(rows, list(settings["grid"])).values()}
    for r in rows:
        r["best"] = id(r) in best
    if search["search"] == "optuna":
        ok = [r for r in rows if r["status"] == "ok"]
        front = {id(r) for r in pareto_front(ok, [tuple(o) for o in search["objectives"]])}
        for r in rows:
            r["pareto"] = id(r) in front
    return rows


def metric_columns(rows: list[dict]) -> list[str]:
    """Each present family's ranking metric, the thesis's metrics, and the guards some row reports."""
    ranking = [registry.get(f).best for f in analysis.families(rows) if f in registry.names()] or [BEST_VAL_L1]
    guards = [m for m in GUARDS if any(r.get(m) is not None for r in rows)]
    return [*ranking, TEST_L1, TEST_CLIP, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, *guards, VAL_CLIP, VAL_TOP1]


def field_columns(rows: list[dict]) -> list[str]:
    """The swept fields, as the rows carry them, and `family` where a row is not a regressor."""
    fields = [c for c in rows[0] if c not in (*metric_names(), *RUN_COLUMNS, "best", "pareto", "family", "ranked_by")]
    if any(analysis.family(r) != DEFAULT_FAMILY for r in rows):
        fields = ["family", *fields]
    return fields


def columns(rows: list[dict]) -> list[str]:
    if not rows:
        return ["best", "ranked_by", *metric_columns(rows), *RUN_COLUMNS]
    extra = ["pareto"] if "pareto" in rows[0] else []
    return ["best", *field_columns(rows), "ranked_by", *metric_columns(rows), *RUN_COLUMNS[:3], *extra,
            *RUN_COLUMNS[3:]]


def config_columns(rows: list[dict]) -> list[str]:
    """The per-configuration table's columns (with seed replicates): mean and std of each metric."""
    fields = [c for c in field_columns(rows) if c != analysis.SEED]
    stats = [c for m in metric_columns(rows) for c in (m, f"{m} std")]
    return ["best", "vs_best", "p_vs_best", *fields, "ranked_by", "seeds", *stats]


# ---------------------------------------------------------------------------- writing


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


def provenance_lines(p: dict) -> list[str]:
    d, s = p["dataset"], p["search"]
    clip = p["clip"]
    counts = ", ".join(f"{k} {v}" for k, v in (d.get("counts") or {}).items())
    return [
        f"- preset: **{p['settings']['preset']}** ({p['preset_about']})",
        f"- search: {s['search']}, scheduler {s['scheduler']}, {s['trials']} trials, "
        f"resources per trial {s['resources_per_trial']}, max failures {s['max_failures']}",
        f"- fused trials: {s.get('fuse', {}).get('reason', 'off')}",
        f"- dataset: {'SYNTHETIC ' if d.get('synthetic') else ''}{d.get('source')} "
        f"(fingerprint {d.get('fingerprint')}); rows {counts}" + (f"; {d['subset']}" if d.get("subset") else ""),
        f"- split: val_fraction {p['settings']['data']['val_fraction']}, test_fraction "
        f"{p['settings']['data']['test_fraction']}, split_seed {p['settings']['data']['split_seed']}",
        f"- text encoder: {p['settings']['model']['text_encoder']}; CLIP: {clip['model']} ({clip['pretrained']}): "
        f"{clip['status']}",
        f"- code: {p['code_version']}; seed {p['settings']['train']['seed']}; Ray {p['ray_version']}; "
        f"torch {p['torch_version']}",
        *([f"- seeds: {len(seeds)} per configuration ({', '.join(map(str, seeds))}), a grid axis of `seed`"]
          if (seeds := p["settings"]["grid"].get(analysis.SEED)) else []),
        f"- devices: {p['devices']}",
        f"- Ray experiment: {p['ray_experiment']}",
    ]


def summarize(rows: list[dict], provenance: dict) -> analysis.Summary:
    """search/analysis.py on this table: configurations, ties, families compared, importance, no-effect fields."""
    return analysis.summarize(rows, list(provenance["settings"]["grid"]), metric_columns(rows))


def _cell(value, col: str) -> str:
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


def write_tables(rows: list[dict], provenance: dict, out_dir: str | Path,
                 summary: analysis.Summary | None = None) -> None:
    out_dir = Path(out_dir)
    summary = summary or summarize(rows, provenance)
    cols = columns(rows)
    seeded = summary.seeds > 1 and bool(rows)
    ccols = config_columns(rows) if seeded else None
    configs = summary.configurations
    if seeded:
        _csv(out_dir / f"{TABLE}.csv", ccols, configs)
    else:
        _csv(out_dir / f"{TABLE}.csv", cols, rows)

    baselines = provenance.get("baselines") or {}
    payload = {"columns": cols, "rows": [{c: r[c] for c in cols} for r in rows]}
    if seeded:
        payload["configurations"] = {"columns": ccols, "rows": [{c: k[c] for c in ccols} for k in configs]}
    payload.update(analysis=analysis_payload(summary), baselines=baselines, provenance=provenance)
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
    md = [f"# Search results: {provenance['experiment']}", "", intro, "", *(x for t in ties for x in (t, "")),
          *provenance_lines(provenance), ""]
    if seeded:
        mcols = [c for c in ccols if c != "best" and not c.endswith(" std")]
        stats = set(metric_columns(rows))
        md += [_md_table(mcols, [[_mean_std(k, c) if c in stats else _fmt(k[c], c) for c in mcols] for k in configs]),
               "", "## Every seed", "", _md_table(cols, [[_cell(r[c], c) for c in cols] for r in rows]), ""]
    else:
        md += [_md_table(cols, [[_cell(r[c], c) for c in cols] for r in rows]), ""]
    md += importance_lines(summary) + families_lines(summary)
    if baselines:
        md += ["## Baselines (same test split, no training)", "",
               _md_table(["baseline", "value"], [[k, "unavailable" if v is None else _fmt(v)]
                                                 for k, v in baselines.items()]), ""]
    if "pareto" in cols:
        objs = " × ".join(f"{m} ({mode})" for m, mode in provenance["search"]["objectives"])
        md += [f"## Pareto front: {objs}", "",
               "\n".join(f"- trial {r['trial_id']}: " + ", ".join(f"{m} {_fmt(r[m])}" for m, _ in
                                                                 provenance["search"]["objectives"])
                         for r in rows if r.get("pareto")) or "(no completed trial)", ""]
    atomic_write(out_dir / f"{TABLE}.md", "\n".join(md))


def code_version() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def curves(trials: list[TrialRecord], provenance: dict) -> dict[str, dict]:
    """Per table row (`row_key`): its family, epochs, and the family's training and selection metrics per epoch
    (train/l1 and val/l1 for the regressor, train/loss and val/x0_mse for the diffusion family)."""
    out = {}
    for t in trials:
        for point, member, history in trial_runs(t, provenance):
            if not history:
                continue
            family = registry.get(point.get("family") or DEFAULT_FAMILY)
            out[row_key(t.trial_id, member)] = {
                "family": family.name, "epoch": [h.get("epoch") for h in history],
                **{m: [h.get(m) for h in history] for m in (family.train_metric, family.selection)}}
    return out
