"""Ray Tune's overhead on the 32-trial smoke grid: how much longer the search takes than its trials.

    python bench/bench_tune_overhead.py                  # the smoke grid, default resources
    python bench/bench_tune_overhead.py --preset laptop  # the default main job's trials instead
    python bench/bench_tune_overhead.py --fuse on        # only the fused grid (8 trials of 4 members)
    python bench/bench_tune_overhead.py --quick          # 2 grid points: checks the script (tests/test_benches.py)

overhead = 1 - (sum of trial times / concurrency) / Tune wall time, where a trial's time is
Tune's `time_total_s` (its function running: training, reports, checkpoint saves) and the
wall time is `Tuner.fit()` start to end (provenance.json `fit_s`). What is left is Ray and Tune:
starting trial processes, scheduling, result handling, experiment snapshots. Target: <= 10%.
The table splits it into the one-time start-up (fit() start to the first trial running: trial
processes starting and importing torch) and the steady state after it. It runs the real entry
point (`search.grid.main`) in this process, on the synthetic data; the split comes from
timestamps taken by wrapping the search's progress callback (bench-only instrumentation).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402


# --quick: the grid pinned to one architecture and one learning rate, its 2 weight decays (2 trials, or 1 fused
# trial of 2 members); it checks the script in seconds and measures nothing.
QUICK_GRID = ["--lr", "1e-4", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2"]


def measure(fuse: str, preset: str, cpus_per_trial: float, grid_flags: list[str]) -> dict:
    """One search.grid run in this process (`--fuse fuse`), its Tune overhead."""
    from search.grid import main as grid
    from search.progress import Progress
    from search.results import load_trials

    stamps = {}
    setup = Progress.setup

    def timed_setup(self, *a, **kw):
        stamps["fit_start"] = time.time()  # Tune calls setup() as fit() begins
        return setup(self, *a, **kw)

    Progress.setup = timed_setup
    Progress.on_trial_start = lambda self, iteration, trials, trial, **info: stamps.setdefault("first", time.time())
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.time()
            rows = grid(["--preset", preset, "--results", tmp, "--experiment", "bench", "--fuse", fuse,
                         "--cpus-per-trial", str(cpus_per_trial), *grid_flags])
            total = time.time() - t0
            prov = json.loads((Path(tmp) / "bench" / "provenance.json").read_text())
            trials = load_trials(prov["ray_experiment"])  # Ray's files sit beside the results set
    finally:
        Progress.setup = setup
        del Progress.on_trial_start
    fit_s = prov["fit_s"][-1]
    trial_s = [t.history[-1]["time_total_s"] for t in trials]
    concurrency = min(prov["cluster"]["CPU"] // cpus_per_trial, len(trials))
    ideal = sum(trial_s) / concurrency
    startup = stamps["first"] - stamps["fit_start"]
    return {"fuse": fuse, "trials": len(trials), "rows": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
            "concurrency": int(concurrency), "sum_trial_s": sum(trial_s), "ideal_s": ideal, "fit_s": fit_s,
            "overhead": 1 - ideal / fit_s, "startup_s": startup, "steady_overhead": 1 - ideal / (fit_s - startup),
            "command_s": total}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="smoke", choices=("smoke", "laptop"))
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--fuse", nargs="+", default=["off", "on"], choices=("off", "on"),
                   help="run the grid unfused (32 trials), fused (8 trials of 4 members), or both (default)")
    p.add_argument("--quick", action="store_true", help="the smoke preset on 2 grid points: checks the script")
    args = p.parse_args(argv)
    if args.quick and args.preset != "smoke":
        p.error("--quick runs the smoke preset")
    grid_flags = QUICK_GRID if args.quick else []

    import ray

    where = machine()
    results = [measure(fuse, args.preset, args.cpus_per_trial, grid_flags) for fuse in args.fuse]
    print(f"\nRay Tune overhead, {time.strftime('%Y-%m-%d')}, Ray {ray.__version__}, {where}")
    print(f"preset {args.preset}{', grid ' + ' '.join(grid_flags) if grid_flags else ''}, {args.cpus_per_trial:g} CPU "
          "per trial, reuse_actors, one checkpoint per epoch\n")
    print("| --fuse | Tune trials (table rows) | concurrency | sum of trial times (s) "
          "| ideal wall = sum / concurrency (s) | Tune wall, fit() (s) | overhead | start-up (s) "
          "| overhead after start-up | whole command (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['fuse']} | {r['trials']} ({r['rows']} rows, {r['ok']} ok) | {r['concurrency']} "
              f"| {r['sum_trial_s']:.1f} | {r['ideal_s']:.1f} | {r['fit_s']:.1f} | {r['overhead']:.1%} "
              f"| {r['startup_s']:.1f} | {r['steady_overhead']:.1%} | {r['command_s']:.1f} |")
    for r in results:
        print(f"--fuse {r['fuse']}: overhead {r['overhead']:.1%}, target <= 10% "
              f"{'met' if r['overhead'] <= 0.10 else 'NOT met'}")
    print("(the whole command adds Ray start, data preparation and the results export)")
    return results


if __name__ == "__main__":
    main()
