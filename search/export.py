"""Rebuild a search's results from its stored Ray experiment: tables, figures, best checkpoint, provenance.

    python -m search.export results/grid-laptop

`python -m search.grid` calls `export` when the search ends; run it by hand after a search
that was interrupted, or to redraw results from an experiment on s3:// or NFS (the Ray
experiment location is read from provenance.json). Writes into the directory given:

    best_config.csv / .md / .json   one row per trial, sorted by best val L1, best marked
    learning_curves.png             train and val L1 per epoch, every trial
    samples_train.png / _test.png   generated vs real, best trial
    best_checkpoint/                for `python -m model.generate --checkpoint`
    provenance.json                 dataset, encoders, preset, code version, seed, devices
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from search.figures import learning_curves, samples
from model import checkpoint
from search.results import atomic_write, curves, load_trials, replace_dir, row_key, table_rows, write_tables
from search.settings import Settings, load_data

PROVENANCE = "provenance.json"


def read_provenance(results_dir: str | Path) -> dict:
    path = Path(results_dir) / PROVENANCE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the results directory of a search "
                                "(results/<experiment>, written by python -m search.grid)")
    return json.loads(path.read_text())


def write_provenance(results_dir: str | Path, provenance: dict) -> None:
    atomic_write(Path(results_dir) / PROVENANCE, json.dumps(provenance, indent=2, default=str) + "\n")


def devices(provenance: dict, rows: list[dict]) -> str:
    cluster = provenance["cluster"]
    ran = Counter(r["device"] for r in rows if r.get("device"))
    nodes = {r["node_id"] for r in rows if r.get("node_id")}
    trials = ", ".join(f"{d} ×{n}" for d, n in ran.items()) or "no trial reported yet"
    return (f"cluster {cluster['nodes']} node(s), {cluster['CPU']:g} CPU, {cluster['GPU']:g} GPU; "
            f"trials ran on {trials}, across {len(nodes)} node(s)")


def export(results_dir: str | Path, data=None) -> list[dict]:
    """Write every results file; `data` (the search's PreparedData) saves re-reading the dataset cache."""
    results_dir = Path(results_dir)
    prov = read_provenance(results_dir)
    trials = load_trials(prov["ray_experiment"])
    rows = table_rows(trials, prov)
    prov["devices"] = devices(prov, rows)
    prov["exported"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    best = next((r for r in rows if r["best"]), None)
    prov["best_trial"] = best and {k: best[k] for k in (*prov["settings"]["grid"], "trial_id", "member")}
    write_tables(rows, prov, results_dir)
    title = f"{prov['experiment']} (preset {prov['settings']['preset']})"
    best_key = best and row_key(best["trial_id"], best["member"])
    learning_curves(curves(trials, prov), best_key, results_dir / "learning_curves.png", title)

    if best is None:
        print(f"[export] no trial completed in {prov['ray_experiment']}: no best checkpoint or sample figures")
    else:
        record = next(t for t in trials if t.trial_id == best["trial_id"])
        tmp = tempfile.mkdtemp(dir=results_dir, prefix=".best_checkpoint.")
        record.checkpoint.to_directory(tmp)
        if best["member"] is not None:  # a fused trial's checkpoint holds every member: keep the best one alone
            checkpoint.save(checkpoint.member(checkpoint.load(tmp), best["member"]), tmp)
        replace_dir(tmp, results_dir / "best_checkpoint")

        from model.generate import load_model

        if data is None:
            data = load_data(prov["dataset"]["data_arg"], Settings.from_dict(prov["settings"]))
        net, tokenizer = load_model(results_dir / "best_checkpoint", device="cpu")
        for split in ("train", "test"):
            samples(net, tokenizer, data.split(split), results_dir / f"samples_{split}.png",
                    title=f"{split}: real (top) vs generated (bottom), best trial {best_key}")
    write_provenance(results_dir, prov)
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m search.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", help="results/<experiment>, as written by python -m search.grid")
    args = parser.parse_args(argv)
    rows = export(args.results_dir)
    print(f"[export] {len(rows)} trials -> {Path(args.results_dir) / 'best_config.md'}")
    return rows


if __name__ == "__main__":
    main()
