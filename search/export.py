"""Rebuild a search's results from its stored Ray experiment: tables, figures, best checkpoint, provenance.

    python -m search.export results/grid-laptop

`python -m search.grid` calls `export` when the search ends; run it by hand after a search
that was interrupted, or to redraw results from an experiment on s3:// or NFS (the Ray
experiment location is read from provenance.json). The set is built in a temporary folder
beside the one given and swapped in as a whole: a reader sees the old set or the new one,
never files of two runs side by side. It holds:

    best_config.csv / .md / .json   one row per trial, sorted by best val L1, best marked (with --seeds: one
                                    row per configuration, mean ± std, tied with the best or not; the JSON
                                    keeps every seed's row), and which swept fields matter
    learning_curves.png             train and val L1 per epoch, every trial
    importance.png                  each swept field's fANOVA importance for the ranking metric
    parallel_coordinates.png        every trial's configuration against its ranking metric
    samples_train.png / _test.png   generated vs real, best trial (two samples per text for a diffusion model)
    best_checkpoint/                for `python -m model.generate --checkpoint`
    (a mixed search, --family regressor diffusion: best_checkpoint_<family>/, samples_<family>_<split>.png)
    provenance.json                 dataset, encoders, preset, code version, seed, devices

Ray's own files live elsewhere (<results>/tune/<experiment>, or --storage-path). The sample
figures are drawn only from the data the search trained on (same fingerprint); otherwise
they are skipped and the run says why.

When Tune's experiment snapshot cannot be read (cut short by a full disk, or by a driver killed while Tune copied
it), the table is rebuilt from the trial folders themselves (their params.json, result.json, error.txt and
checkpoints), and the run names the trials it could not read. A provenance.json cut short, or one naming a Ray
experiment that is not there, is a one-line error (exit status 2); a full disk while writing, one line too (75).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from search.analysis import tie_sentence
from search.report import summarize, write_tables
from search.results import curves, load_trials, row_key, table_rows, trials_from_folders
from search.settings import load_data
from search.store import PROVENANCE, DamagedProvenance, Plan, staged_dir, storage_full


class SetLayoutError(ValueError):
    """The results folder also holds Ray's experiment, so it cannot be replaced as a whole."""


def devices(plan: Plan, rows: list[dict]) -> str:
    cluster = plan.cluster
    ran = Counter(r["device"] for r in rows if r.get("device"))
    nodes = {r["node_id"] for r in rows if r.get("node_id")}
    trials = ", ".join(f"{d} ×{n}" for d, n in ran.items()) or "no trial reported yet"
    return (f"cluster {cluster['nodes']} node(s), {cluster['CPU']:g} CPU, {cluster['GPU']:g} GPU; "
            f"trials ran on {trials}, across {len(nodes)} node(s)")


def user_error(message) -> SystemExit:
    """A mistake in the command or its inputs: one line on stderr, exit status 2, no traceback."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    return SystemExit(2)


def ray_files_inside(results_dir: Path, ray_experiment: str) -> bool:
    """Whether Ray's experiment folder is the results folder or above it (export replaces that folder whole)."""
    return "://" not in ray_experiment and Path(ray_experiment).resolve() in (results_dir, *results_dir.parents)


def check_layout(results_dir: Path, ray_experiment: str) -> None:
    if ray_files_inside(results_dir, ray_experiment):
        raise SetLayoutError(
            f"{results_dir} holds Ray's experiment too (written before results and Ray's files were kept apart): "
            f"search.export replaces that folder as a whole and would drop it. Move the Ray files (trial_*, "
            f"experiment_state-*.json, basic-variant-state-*, tuner.pkl) to their own folder and set "
            f"ray_experiment in {results_dir / PROVENANCE} to it")


def data_changed(plan: Plan, data) -> str | None:
    """Why `data` is not the data the search trained on (its fingerprint differs), or None."""
    stored, now = plan.dataset.get("fingerprint"), data.info.get("fingerprint")
    if now == stored:
        return None
    return f"the data at {plan.data_arg} changed since the search (fingerprint {now} != stored {stored})"


def figure_data(plan: Plan, data=None):
    """(the search's dataset, None), or (None, why not) when it cannot be read or is not the data the
    search trained on (its fingerprint differs): sample figures from other data would mislead."""
    if data is None:
        try:
            data = load_data(plan.data_arg, plan.settings)
        except (FileNotFoundError, ValueError) as e:
            return None, f"the search's data {plan.data_arg} cannot be read ({e})"
    if why := data_changed(plan, data):
        return None, f"{why}; restore that data to draw them"
    return data, None


def not_started_line(trials) -> str | None:
    pending = sum(1 for t in trials if not t.history and t.ray_status == "PENDING")
    silent = sum(1 for t in trials if not t.history and t.ray_status != "PENDING")
    parts = [f"{pending} not started"] * bool(pending) + [f"{silent} started but not reported yet"] * bool(silent)
    return f"[export] {len(trials)} trials, {', '.join(parts)}" if parts else None


def experiment_exists(ray_experiment: str) -> bool:
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(ray_experiment) if "://" in ray_experiment else (
        pyarrow.fs.LocalFileSystem(), ray_experiment)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def read_trials(ray_experiment: str) -> list:
    """The experiment's trials from Tune's snapshot, or rebuilt from their folders when the snapshot cannot be read."""
    try:
        return load_trials(ray_experiment)
    except Exception as e:  # noqa: BLE001 — what a damaged snapshot raises varies: JSON, pickle, missing keys
        why = " ".join(f"{type(e).__name__}: {e}".split())[:200]
    if not experiment_exists(ray_experiment):
        raise FileNotFoundError(f"{PROVENANCE} names the Ray experiment {ray_experiment}, which is not there (moved, "
                                f"deleted, or its storage is not mounted): put it back, or set ray_experiment in "
                                f"{PROVENANCE} to where it is now")
    trials, unreadable = trials_from_folders(ray_experiment)
    print(f"[export] Tune's snapshot of {ray_experiment} cannot be read ({why}): the table is rebuilt from the "
          f"{len(trials)} trial folders" + (f"; not read whole: {'; '.join(unreadable)}" if unreadable else ""),
          flush=True)
    if not trials:
        raise FileNotFoundError(f"{ray_experiment} holds no trial folder to rebuild the table from")
    return trials


def export(results_dir: str | Path, data=None) -> list[dict]:
    """Write every results file; `data` (the search's PreparedData) saves re-reading the dataset cache."""
    # matplotlib: not for `--help` or a failing flag
    from search.figures import importance, learning_curves, parallel_coordinates

    results_dir = Path(results_dir).resolve()
    plan = Plan.load(results_dir)
    check_layout(results_dir, plan.ray_experiment)
    trials = read_trials(plan.ray_experiment)
    if line := not_started_line(trials):
        print(line, flush=True)
    rows = table_rows(trials, plan)
    bests = [r for r in rows if r["best"]]  # one per family: each is ranked by its own selection metric
    grid = plan.settings.grid
    point = lambda r: {k: r[k] for k in (*grid, "trial_id", "member")}  # noqa: E731
    mixed = len(grid.get("family", ())) > 1
    plan = plan.measured(devices=devices(plan, rows), exported=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         best_trial=point(bests[0]) if bests else None,
                         best_trials={r.get("family"): point(r) for r in bests} if mixed else None)
    title = f"{plan.experiment} (preset {plan.settings.preset})"
    summary = summarize(rows, plan)
    per_family = Counter(c["family"] for c in summary.configurations)
    for fam, ties in summary.ties.items():
        print(f"[export] {tie_sentence(ties, per_family[fam], summary.seeds, len(summary.ties) > 1)}", flush=True)
    for imp in summary.importance.values():
        if imp.skipped:
            print(f"[export] importance for {imp.metric} ({imp.family}) skipped: {imp.skipped}", flush=True)

    with staged_dir(results_dir) as out:
        write_tables(rows, plan, out, summary)
        best_key = bests and row_key(bests[0]["trial_id"], bests[0]["member"])
        learning_curves(curves(trials, plan), best_key or None, out / "learning_curves.png", title)
        importance(summary, out / "importance.png", title)
        parallel_coordinates(rows, list(grid), out / "parallel_coordinates.png", title)
        if not bests:
            print(f"[export] no trial completed in {plan.ray_experiment}: no best checkpoint or sample figures")
        for r in bests:
            data = best_files(r, trials, plan, out, data)
        plan.save(out)
    return rows


def best_files(r: dict, trials: list, plan: Plan, out: Path, data):
    """A best row's checkpoint (best_checkpoint/, the member alone of a fused trial) and its sample figures; a mixed
    search has a best per family: best_checkpoint_<family>/, samples_<family>_<split>.png. Returns the data read."""
    from model import checkpoint
    from model.generate import load_model
    from search.figures import samples

    tag = f"_{r['family']}" if len(plan.settings.grid.get("family", ())) > 1 else ""
    ckpt = out / f"best_checkpoint{tag}"
    next(t for t in trials if t.trial_id == r["trial_id"]).checkpoint.to_directory(str(ckpt))
    if r["member"] is not None:  # a fused trial's checkpoint holds every member: keep the best alone
        checkpoint.save(checkpoint.load(ckpt).member(r["member"]), ckpt)
    data, why_not = figure_data(plan, data)
    if data is None:
        print(f"[export] sample figures skipped: {why_not}", flush=True)
        return None
    net, tokenizer = load_model(ckpt, device="cpu", data=data)  # its texts' cached states: no encoder to load
    for split in ("train", "test"):
        samples(net, tokenizer, data.split(split), out / f"samples{tag}_{split}.png",
                title=f"{split}: real (top row) vs generated (below), best {r.get('family', '')} trial "
                      f"{row_key(r['trial_id'], r['member'])}")
    return data


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="results/<experiment>, as written by python -m search.grid")
    args = parser.parse_args(argv)
    try:
        rows = export(args.results_dir)
    except (FileNotFoundError, DamagedProvenance, SetLayoutError) as e:  # not a results folder, a damaged one, or
        # one it must not replace
        raise user_error(e) from None
    except OSError as e:
        if not (why := storage_full(e)):
            raise
        print(f"error: {why} while writing the results of {args.results_dir} ({e.filename or e}): the previous "
              "results are untouched; free some space and run this again", file=sys.stderr, flush=True)
        raise SystemExit(75) from None
    print(f"[export] {len(rows)} trials -> {Path(args.results_dir) / 'best_config.md'}")
    return rows


if __name__ == "__main__":
    main()
