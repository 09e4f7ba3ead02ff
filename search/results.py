"""From a stored Ray Tune experiment to the table's rows: one row per trial (per member of a fused trial), sorted.

    from search.results import load_trials, table_rows
    trials = load_trials("results/tune/grid")          # the Ray experiment directory (or s3://...)
    rows = table_rows(trials, plan)                     # sorted by each family's best metric, best row marked
    # search/report.py writes them out: best_config.csv / .md / .json

A row holds its swept fields, its family's ranking metric (`ranked_by`: the family's `best`, model/families/) and
every metric its trial reported (None where it did not), its status and where it ran. A fused trial reports each
member's metrics under `m<k>/` (`member_report`, which search/trainable.py calls; `members_of` reads them back).
When Tune's experiment snapshot cannot be read, `trials_from_folders` rebuilds the trials from their folders.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field

from model import families as registry
from model.config import (DEFAULT_FAMILY, TEST_ALIGN, TEST_ATTR_ALL, TEST_CLIP, TEST_COPY_RATE, TEST_DIVERSITY,
                          TEST_KID_INDOMAIN, TEST_KID_RANDOM, TEST_L1, TEST_R1, TEST_RECALL, TEST_TYPE_ACC, VAL_ALIGN,
                          VAL_ATTR_ALL, VAL_ATTR_MEAN, VAL_CLIP, VAL_R1, VAL_TYPE_ACC)
from model.eval.attributes import ATTRIBUTES
from model.eval.evaluator import TRAIN_COPY_RATE
from model.eval.intervals import paired_comparison
from search import analysis
from search.store import Plan

TABLE = "best_config"
# Every metric a row carries (None where its trial did not report it): its family's ranking metric (its `best`),
# then the final metrics, each with its 95% interval (<metric>_lo, <metric>_hi; not CLIP's score): does the image
# show what its text states, how near the real images' distribution, and the guards against wrong winners
# (memorisation, diversity); then the validation metrics a searcher may select on.
GUARDS = (TEST_COPY_RATE, TRAIN_COPY_RATE, TEST_DIVERSITY)
HEADLINE = (TEST_ATTR_ALL, TEST_ALIGN, TEST_R1, TEST_TYPE_ACC, TEST_KID_RANDOM, TEST_KID_INDOMAIN, TEST_RECALL)
INTERVAL_METRICS = (TEST_L1, *HEADLINE, *GUARDS, VAL_ATTR_ALL, VAL_ATTR_MEAN, VAL_ALIGN, VAL_R1, VAL_TYPE_ACC,
                    *(f"test/attr_{a}" for a in (*ATTRIBUTES, "mean")))
SHARED_METRICS = (TEST_L1, TEST_CLIP, *HEADLINE, *GUARDS, VAL_ATTR_ALL, VAL_ATTR_MEAN, VAL_ALIGN, VAL_R1, VAL_TYPE_ACC,
                  VAL_CLIP, *(f"test/attr_{a}" for a in (*ATTRIBUTES, "mean")))
# The headline metric the rows of a search are compared on, pairwise (the first one the rows have scores of).
PAIRED_ON = (TEST_ATTR_ALL, TEST_ALIGN, TEST_TYPE_ACC)


def ranking_metrics() -> tuple[str, ...]:
    """Every registered family's ranking metric, in registry order."""
    return tuple(dict.fromkeys(registry.get(f).best for f in registry.names()))


def metric_names() -> tuple[str, ...]:
    """Every metric column a row has: the ranking metrics, the shared metrics and their intervals."""
    return (*ranking_metrics(), *SHARED_METRICS, *(f"{m}_{e}" for m in INTERVAL_METRICS for e in ("lo", "hi")))


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


def trial_runs(t: TrialRecord, plan: Plan) -> list[tuple[dict, int | None, list[dict]]]:
    """(grid point, member, history) for each table row of a trial: one, or one per fused member."""
    members = plan.search.fuse.members
    if not members:
        return [(dict(t.config), None, t.history)]
    return [({**t.config, **point}, k, [members_of(h, k) for h in t.history]) for k, point in enumerate(members)]


def table_rows(trials: list[TrialRecord], plan: Plan) -> list[dict]:
    settings, search = plan.settings, plan.search
    target = settings.train.total_epochs  # both stages of a staged trial
    rows = []
    for t, point, member, history in ((t, *run) for t in trials for run in trial_runs(t, plan)):
        last = history[-1] if history else {}
        epochs = int(last.get("epoch") or 0)
        def clip(metric):  # never a number when there is no score; the reason is in the table's header
            status = last.get("test/clip_status")
            if last.get(metric) is None and status:
                return "off" if status.startswith("off") else "unavailable"
            return last.get(metric)
        row = {k: point.get(k) for k in settings.grid}
        row.setdefault("family", settings.model.family)  # a grid axis once --family sweeps it
        row["ranked_by"] = analysis.ranked_by(row)
        row.update({m: last.get(m) for m in metric_names()})
        row.update({m: _finite(last.get(m)) for m in (*ranking_metrics(), TEST_L1)})
        row["scores"] = {m: json.loads(last[f"scores/{m}"]) for m in PAIRED_ON if last.get(f"scores/{m}")}
        row.update({TEST_CLIP: clip(TEST_CLIP), VAL_CLIP: clip(VAL_CLIP), "epochs": epochs,
                    "wall_s": round(last["time_total_s"], 1) if last.get("time_total_s") is not None else None,
                    "status": (f"error: FloatingPointError: {last['error']}" if last.get("error") else
                               _status(t, epochs, target, search.scheduler)),
                    "trial_id": t.trial_id, "member": member, "hostname": last.get("hostname"), "node_id": last.get("node_id"),
                    "device": last.get("device")})
        rows.append(row)
    sort_rows(rows)
    # Per family: the best completed trial, or with seed replicates the best configuration's best seed.
    best = {id(r) for r in analysis.best_rows(rows, list(settings.grid)).values()}
    for r in rows:
        r["best"] = id(r) in best
    paired_vs_best(rows)
    if search.search == "optuna":
        ok = [r for r in rows if r["status"] == "ok"]
        front = {id(r) for r in pareto_front(ok, [tuple(o) for o in search.objectives])}
        for r in rows:
            r["pareto"] = id(r) in front
    return rows


def paired_vs_best(rows: list[dict]) -> None:
    """In place, `paired_vs_best`: each completed row against its family's best row on the headline metric both have
    per-record scores of (PAIRED_ON), on the same test texts and sample seeds: the difference (row - best) with
    its paired bootstrap 95% interval, "better" or "worse" where the interval excludes 0, else "tied". The noise it
    covers is the evaluation's (which records, which samples), not the training seed's (`--seeds`)."""
    bests = {analysis.family(r): r for r in rows if r["best"]}
    for r in rows:
        best = bests.get(analysis.family(r))
        metric = next((m for m in PAIRED_ON if best and m in best["scores"] and m in r["scores"]), None)
        r["paired_vs_best"] = None
        if metric is None or r["status"] != "ok" or r is best:
            continue
        c = paired_comparison(r["scores"][metric], best["scores"][metric])
        verdict = "better" if c.lo > 0 else "worse" if c.hi < 0 else "tied"
        r["paired_vs_best"] = f"{verdict}: {metric} {c.diff:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}]"


def curves(trials: list[TrialRecord], plan: Plan) -> dict[str, dict]:
    """Per table row (`row_key`): its family, epochs, and the family's training and selection metrics per epoch
    (train/l1 and val/l1 for the regressor, train/loss and val/x0_mse for the diffusion family)."""
    out = {}
    for t in trials:
        for point, member, history in trial_runs(t, plan):
            if not history:
                continue
            family = registry.get(point.get("family") or DEFAULT_FAMILY)
            out[row_key(t.trial_id, member)] = {
                "family": family.name, "epoch": [h.get("epoch") for h in history],
                **{m: [h.get(m) for h in history] for m in (family.train_metric, family.selection)}}
    return out
