"""Does the search earn its keep? The compute a search needs to find a diffusion recipe tied with the full grid's best.

    python bench/bench_search_payoff.py --out /tmp/payoff                 # grid, then ASHA and Optuna x 3 repetitions
    python bench/bench_search_payoff.py --out /tmp/payoff --reps 1 --epochs 8 --image-size 16   # smaller
    python bench/bench_search_payoff.py --quick --out /tmp/payoff-quick   # 4 points, 2 epochs: checks the script

On the embedded synthetic set, where a grid is affordable: a small space of the diffusion family's own fields
(learning rate x batch size x conditioning dropout x learning-rate schedule: 16 points by default, each the same
cost per epoch but for the batch size) is run
1. as the full grid (`python -m search.grid`, FIFO: every point to its last epoch), which names the grid's best
   configuration by validation mean attribute accuracy (`val/attr_mean`, the share of the stated attributes drawn
   right: the metric the search's final choice uses, graded, where every-attribute-right is about 0 for every point
   at this budget and would tie them all) and every configuration tied with it (the paired test of
   model/eval/intervals.py on the same validation texts and sample seeds: not shown worse at alpha 0.05);
2. with ASHA (random search over the same points, `--search random --scheduler asha`, repetition r samples with
   `--search-seed r`; every trial trains with the grid's seed, so a point trains as it did in the grid) and with
   Optuna's TPE stopped early by ASHA (`--search optuna --scheduler asha`), each repeated.
For each run: the compute, in trial-epochs (every epoch any trial trained) and wall time, until it first completes a
configuration tied with the grid's best, and whether its final choice (its completed trial with the best val/attr_mean)
is one. A point's training is deterministic (its seed, its data), so a
configuration's validation scores are the same in every run: whether a run found a tied one is read off the grid's.

Prints a table naming the machine; --json keeps every number.

Measured (2-core AMD EPYC VM, 2026-12-07, results/BENCHMARKS.md "Does the search save compute?"): the grid 320
trial-epochs, 1311 s, 3 points tied with its best; ASHA and Optuna + ASHA 102-164 trial-epochs (379-674 s), each
run ending on a tied point in 3 of 6 (ASHA 2/3, Optuna 1/3): the eventual winners (lr 1e-3) rank 5th-15th of 16 on
val/x0_mse at the rungs of epochs 2 and 6, where the higher learning rate leads.

The --quick form is run by hand (`python bench/bench_search_payoff.py --quick --out /tmp/x`: three searches, 14
minutes at load average 10 on 2 shared cores); the suite has no room for it. tests/test_bench_search_payoff.py
tests the arithmetic (`trial_row`, `tied_set`, `cost_to_find`) on made-up runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

from machine import machine  # noqa: E402

from model.config import VAL_ATTR_MEAN  # noqa: E402
from model.eval.intervals import bootstrap_interval, paired_comparison  # noqa: E402

SPACE = {"lr": ["1e-3", "3e-3"], "batch-size": ["16", "32"], "cond-dropout": ["0.1", "0.2"],
         "lr-schedule": ["constant", "cosine"]}
QUICK_SPACE = {"lr": ["1e-3", "3e-3"], "unet-width": ["16", "32"]}
SCORES = f"scores/{VAL_ATTR_MEAN}"
KEYS = ("lr", "unet_width", "cond_dropout", "batch_size", "lr_schedule")


def run_search(name: str, args, space: dict, *extra) -> float:
    """One `python -m search.grid` on the synthetic set into <out>/<name>; its wall time."""
    flags = [f for k, vs in space.items() for f in (f"--{k}", *vs)]
    cmd = [sys.executable, "-m", "search.grid", "--family", "diffusion", "--preset", "laptop", "--results",
           str(args.out), "--experiment", name, "--image-size", str(args.image_size), "--epochs", str(args.epochs),
           "--weight-decay", "0", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2", "--eval-samples", "2",
           "--sample-steps", str(args.sample_steps), *flags, *extra]
    if args.reuse and (finished := logged_wall(Path(args.out) / f"{name}.log")) is not None:
        return finished
    t0 = time.time()
    with open(Path(args.out) / f"{name}.log", "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{name} failed ({rc}): see {Path(args.out) / f'{name}.log'}")
    return time.time() - t0


def logged_wall(log: Path) -> float | None:
    """The wall time a finished search printed on its closing line ("[search] ...; wall time 1234 s"); None when
    the log is missing or has none (the search did not finish: --reuse runs it again)."""
    import re

    found = re.findall(r"wall time (\d+) s", log.read_text()) if log.exists() else []
    return float(found[-1]) if found else None


def trials(out: Path, name: str) -> list[dict]:
    """Each trial of a search (`trial_row`), read from its Tune results."""
    from search.results import load_trials

    return [trial_row(t) for t in load_trials(str(out / "tune" / name))]


def trial_row(t) -> dict:
    """A `search.results.TrialRecord`'s point (KEYS' values: None for an axis the space lacks), its epochs'
    timestamps (Tune's, whole seconds) and its last epoch's per-record validation scores (None without)."""
    last = t.history[-1] if t.history else {}
    return {"point": tuple(t.config.get(k) for k in KEYS), "stamps": [h["timestamp"] for h in t.history],
            "scores": json.loads(last[SCORES]) if last.get(SCORES) else None}


def total(t: dict) -> float:
    """A completed trial's validation score summed over records and samples: what ranks trials (the same cells for
    every trial, so the order of their means)."""
    return sum(map(sum, t["scores"]))


def tied_set(grid: list[dict]) -> tuple[tuple, set]:
    """(the grid's best point by val/attr_mean, every point not shown worse than it: paired, alpha 0.05)."""
    done = [t for t in grid if t["scores"] is not None]
    best = max(done, key=total)
    tied = {t["point"] for t in done if t is best or paired_comparison(best["scores"], t["scores"]).tied}
    return best["point"], tied


def cost_to_find(run: list[dict], tied: set, epochs: int) -> dict:
    """Trial-epochs and seconds from the run's first epoch until it first completes a tied point (None: never; a
    tied point ASHA stopped early was not found). Tune's timestamps are whole seconds: an epoch that ends in the
    second the tied point completed counts as before it."""
    ends = [t["stamps"][-1] for t in run if t["point"] in tied and len(t["stamps"]) >= epochs]
    if not ends:
        return {"trial_epochs": None, "seconds": None, "trials_started": len(run)}
    start = min(s for t in run for s in t["stamps"])
    found_at = min(ends)
    return {"trial_epochs": sum(sum(s <= found_at for s in t["stamps"]) for t in run),
            "seconds": round(found_at - start, 1), "trials_started": len(run)}


def final_choice(run: list[dict], tied: set) -> dict:
    """What the run ends with: every trial-epoch it trained, and its final choice, the completed trial with the
    highest validation score (val/attr_mean, as `tied_set` ranks the grid), and whether that choice is tied with
    the grid's best (None: no trial completed). A run can complete a tied point and still choose another."""
    done = [t for t in run if t["scores"] is not None]
    pick = max(done, key=total)["point"] if done else None
    return {"trial_epochs_total": sum(len(t["stamps"]) for t in run), "choice": pick,
            "choice_tied": None if pick is None else pick in tied}


def agreeing(run: list[dict], grid: list[dict]) -> str:
    """"a/b": of the run's b completed trials, how many scored exactly as the grid's trial of the same point (the
    determinism the bench relies on, checked)."""
    by_point = {t["point"]: t["scores"] for t in grid}
    done = [t for t in run if t["scores"] is not None]
    return f"{sum(t['scores'] == by_point.get(t['point']) for t in done)}/{len(done)}"


def grid_table(grid: list[dict], tied: set, best: tuple) -> str:
    """The grid's points as a markdown table: the point, its val/attr_mean with its 95% interval, tied or best."""
    lines = ["| " + " | ".join(KEYS) + f" | {VAL_ATTR_MEAN} | |", "|---" * (len(KEYS) + 2) + "|"]
    rows = sorted((t for t in grid if t["scores"] is not None), key=total, reverse=True)
    for t in rows:
        mean, lo, hi = bootstrap_interval(t["scores"])
        mark = "best" if t["point"] == best else "tied" if t["point"] in tied else ""
        lines.append("| " + " | ".join("-" if v is None else str(v) for v in t["point"])
                     + f" | {mean:.3f} [{lo:.3f}, {hi:.3f}] | {mark} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results root for the searches (and their logs)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of each early-stopping search (default 3)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="4 points, 2 epochs, 1 repetition: checks the script")
    p.add_argument("--reuse", action="store_true",
                   help="read every search that an earlier run of this bench (same flags) finished in --out instead of "
                        "running it again (its wall time from the search's own closing line in <out>/<name>.log)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.epochs, args.image_size = 1, 2, 16
    space = QUICK_SPACE if args.quick else SPACE
    points = 1
    for vs in space.values():
        points *= len(vs)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    where = machine()  # its load average is the one the searches started under
    wall = {"grid": run_search("grid", args, space)}
    grid = trials(Path(args.out), "grid")
    best, tied = tied_set(grid)
    runs = {"grid": {**cost_to_find(grid, tied, args.epochs), **final_choice(grid, tied)}}
    for r in range(args.reps):
        # --search-seed, not --seed: --seed is also the trials' training seed, and a point must train as in the grid
        for name, extra in ((f"asha-{r}", ("--search", "random", "--scheduler", "asha", "--num-samples", str(points),
                                           "--search-seed", str(r))),
                            (f"optuna-{r}", ("--search", "optuna", "--scheduler", "asha", "--num-samples", str(points),
                                             "--search-seed", str(r)))):
            wall[name] = run_search(name, args, space, *extra)
            run = trials(Path(args.out), name)
            runs[name] = {**cost_to_find(run, tied, args.epochs), **final_choice(run, tied),
                          "as_in_grid": agreeing(run, grid)}
    result = {"machine": where, "date": time.strftime("%Y-%m-%d"), "points": points, "epochs": args.epochs,
              "image_size": args.image_size, "best": dict(zip(KEYS, best)), "tied": len(tied), "runs": runs,
              "wall_s": wall}
    print(f"# Search payoff, {result['date']}\n\nmachine: {result['machine']}\n\n{points} points x {args.epochs} "
          f"epochs at {args.image_size} px; the grid's best by {VAL_ATTR_MEAN}: {result['best']}; {len(tied)} "
          "point(s) tied with it (paired, alpha 0.05)\n")
    print(grid_table(grid, tied, best) + "\n")
    print("| run | trial-epochs to a tied point | seconds to it | trials started | trial-epochs in all | its final "
          "choice tied | completed trials scored as in the grid | wall s |\n|---|---|---|---|---|---|---|---|")
    for name, c in runs.items():
        print(f"| {name} | {c['trial_epochs']} | {c['seconds']} | {c['trials_started']} | {c['trial_epochs_total']} | "
              f"{c['choice_tied']} | {c.get('as_in_grid', '-')} | {wall[name]:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
