"""From a stored Ray Tune experiment to the results table: one row per trial, sorted, with provenance.

    from search.results import load_trials, table_rows, write_tables
    trials = load_trials("results/grid")               # the Ray experiment directory (or s3://...)
    rows = table_rows(trials, provenance)               # sorted by best val L1, best row marked
    write_tables(rows, provenance, "results/grid")      # best_config.csv / .md / .json, atomically

Columns use the config field names and metric names spelled in model/config.py, so the
table, the search space and the checkpoints read the same. A CLIP score that could not be
computed is shown as "unavailable" (or "off"), never as a number; the reason is stated once,
in the table's header and provenance.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import math
import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from model.config import (BEST_VAL_L1, TEST_CLIP, TEST_L1, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, TRAIN_L1, VAL_CLIP,
                          VAL_L1, VAL_TOP1, TrainConfig)

TABLE = "best_config"
METRIC_COLUMNS = (BEST_VAL_L1, TEST_L1, TEST_CLIP, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, VAL_CLIP, VAL_TOP1)
# member: a fused trial's rows are its members (search/trainable.py), numbered in the provenance's order.
RUN_COLUMNS = ("epochs", "wall_s", "status", "trial_id", "member", "hostname", "node_id", "device")
NODE_KEYS = ("time_total_s", "hostname", "node_id", "device")


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
        reports = [{k: _clean(v) for k, v in r.items()} for r in records]
        # A trial restored from an older checkpoint repeats epochs: keep each epoch's latest report.
        by_epoch = {}
        for r in reports:
            by_epoch[int(r.get("epoch") or r.get("training_iteration") or 0)] = r
        history = [by_epoch[e] for e in sorted(by_epoch)]
        error = error_reason(trial.get_error()) if trial.status == "ERROR" else None
        out.append(TrialRecord(trial.trial_id, dict(trial.config), trial.status, history, error,
                               analysis.get_last_checkpoint(trial) if history else None))
    return out


# ---------------------------------------------------------------------------- rows


def _status(t: TrialRecord, epochs: int, target: int, scheduler: str) -> str:
    if t.ray_status == "ERROR":
        return f"error: {t.error or 'unknown (see the trial error.txt)'}"
    if t.ray_status == "TERMINATED":
        if epochs >= target:
            return "ok"
        return f"stopped early ({scheduler}) at epoch {epochs}" if scheduler != "fifo" else f"stopped at epoch {epochs}"
    return t.ray_status.lower()


def _sort_key(row: dict):
    v = row[BEST_VAL_L1]
    return (v is None, v or 0.0)


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


def row_key(trial_id: str, member: int | None) -> str:
    """A table row's name: the Tune trial id, with /m<k> for a member of a fused trial."""
    return trial_id if member is None else f"{trial_id}/m{member}"


def member_history(history: list[dict], member: int | None) -> list[dict]:
    """A fused trial's reports cut to one member's (`m<k>/` prefix dropped); a plain trial's as they are."""
    if member is None:
        return history
    prefix = f"m{member}/"
    return [{**{k: h.get(k) for k in NODE_KEYS}, "epoch": h.get("epoch"),
             **{k[len(prefix):]: v for k, v in h.items() if k.startswith(prefix)}} for h in history]


def trial_runs(t: TrialRecord, provenance: dict) -> list[tuple[dict, int | None, list[dict]]]:
    """(grid point, member, history) for each table row of a trial: one, or one per fused member."""
    members = provenance["search"].get("fuse", {}).get("members")
    if not members:
        return [(dict(t.config), None, t.history)]
    return [({**t.config, **point}, k, member_history(t.history, k)) for k, point in enumerate(members)]


def table_rows(trials: list[TrialRecord], provenance: dict) -> list[dict]:
    settings = provenance["settings"]
    search = provenance["search"]
    target = TrainConfig(**settings["train"]).total_epochs  # both stages of a staged trial
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
        row.update({BEST_VAL_L1: _finite(last.get(BEST_VAL_L1)), TEST_L1: _finite(last.get(TEST_L1)),
                    TEST_CLIP: clip(TEST_CLIP), TEST_TOP1: last.get(TEST_TOP1), TEST_TOP5: last.get(TEST_TOP5),
                    TEST_TYPE_ACC: last.get(TEST_TYPE_ACC),
                    VAL_CLIP: clip(VAL_CLIP), VAL_TOP1: last.get(VAL_TOP1), "epochs": epochs,
                    "wall_s": round(last["time_total_s"], 1) if last.get("time_total_s") is not None else None,
                    "status": (f"error: FloatingPointError: {last['error']}" if last.get("error") else
                               _status(t, epochs, target, search["scheduler"])),
                    "trial_id": t.trial_id, "member": member, "hostname": last.get("hostname"), "node_id": last.get("node_id"),
                    "device": last.get("device")})
        rows.append(row)
    rows.sort(key=_sort_key)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in rows:
        r["best"] = bool(ok) and r is ok[0]
    if search["search"] == "optuna":
        front = {id(r) for r in pareto_front(ok, [tuple(o) for o in search["objectives"]])}
        for r in rows:
            r["pareto"] = id(r) in front
    return rows


def columns(rows: list[dict]) -> list[str]:
    grid_cols = [c for c in rows[0] if c not in METRIC_COLUMNS + RUN_COLUMNS + ("best", "pareto")] if rows else []
    extra = ["pareto"] if rows and "pareto" in rows[0] else []
    return ["best", *grid_cols, *METRIC_COLUMNS, *RUN_COLUMNS[:3], *extra, *RUN_COLUMNS[3:]]


# ---------------------------------------------------------------------------- writing


def _beside(path: Path, tag: str) -> Path:
    """A hidden, unique name next to `path` for its temporary or previous version."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a reader never sees half a table.

    The file is created with open(), so it gets the usual mode (0644 under umask 022), not
    mkstemp's 0600: others on shared storage can read the results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _beside(path, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where that is unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def replace_dir(filled_tmp: str | Path, dst: str | Path) -> None:
    """Swap a fully written directory into place: `dst` is always the old or the new one, never half.

    On Linux the two trade places atomically; elsewhere (or on a filesystem without the call)
    there is a moment between two renames when `dst` is absent.
    """
    filled_tmp, dst = Path(filled_tmp), Path(dst)
    if dst.exists() and _exchange(filled_tmp, dst):
        shutil.rmtree(filled_tmp)  # the old directory, now under the temporary name
        return
    old = _beside(dst, "old")
    if dst.exists():
        os.replace(dst, old)
    os.replace(filled_tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_dir(dst: str | Path):
    """An empty folder beside `dst` to build a new version in; when the block ends without an
    error it replaces `dst` as a whole (replace_dir), otherwise it is removed and `dst` is untouched.

        with staged_dir("results/grid") as tmp:
            (tmp / "a.csv").write_text(...)       # readers still see the old results/grid
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    for stale in (*dst.parent.glob(f".{dst.name}.staged-*"), *dst.parent.glob(f".{dst.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a process killed mid-way
    tmp = _beside(dst, "staged")
    tmp.mkdir()  # os.mkdir: the usual mode, not mkdtemp's 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dst)


def _fmt(value, col: str = "") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
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
        f"- devices: {p['devices']}",
        f"- Ray experiment: {p['ray_experiment']}",
    ]


def write_tables(rows: list[dict], provenance: dict, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    cols = columns(rows)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({c: ("yes" if r[c] else "") if isinstance(r[c], bool) else r[c] for c in cols})
    atomic_write(out_dir / f"{TABLE}.csv", buf.getvalue())

    baselines = provenance.get("baselines") or {}
    payload = {"columns": cols, "rows": [{c: r[c] for c in cols} for r in rows], "baselines": baselines,
               "provenance": provenance}
    atomic_write(out_dir / f"{TABLE}.json", json.dumps(payload, indent=2, default=str) + "\n")

    n_ok = sum(r["status"] == "ok" for r in rows)
    md = [f"# Search results: {provenance['experiment']}", "",
          f"{len(rows)} trials, {n_ok} completed; sorted by `{BEST_VAL_L1}` (lower is better); "
          "the best completed trial is marked.", "", *provenance_lines(provenance), "",
          _md_table(cols, [[_fmt(r[c][:8] if c == "node_id" and r[c] else r[c], c) for c in cols] for r in rows]),
          ""]
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
    """Per table row (`row_key`): epochs and the train/val L1 series, for the learning-curve figure."""
    return {row_key(t.trial_id, member): {"epoch": [h.get("epoch") for h in history],
                                          TRAIN_L1: [h.get(TRAIN_L1) for h in history],
                                          VAL_L1: [h.get(VAL_L1) for h in history]}
            for t in trials for _, member, history in trial_runs(t, provenance) if history}
