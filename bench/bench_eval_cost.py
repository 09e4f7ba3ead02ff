"""The final evaluation's share of a trial: one laptop-preset regressor trial, run several times in one process.

    python bench/bench_eval_cost.py                        # 3 trials of the laptop preset's first grid point
    python bench/bench_eval_cost.py --trials 5 --out /tmp/cost   # a cache root of its own (networks fitted first)
    python bench/bench_eval_cost.py --quick                # seconds: checks the script, measures nothing

Issue 24's budget: the final evaluation (model/eval/evaluator.py's `Evaluator.final`: every metric of a member's
generated val and test images, after its last epoch) adds at most 10% to a laptop-preset trial. The trial is
`model.train.train` without Ray on the synthetic set as the laptop preset prepares it (300 creatures, 32 px, one
rotation), at the preset grid's first point (lr 2e-3, 7 epochs); `Evaluator.final` is timed inside it (wall and
CPU), beside the load average, since the machine may be shared. Its evaluator networks are loaded from the
dataset's cache, as in every trial of a search but its first: a child process fits any the cache lacks before
the first trial, so that this process's first trial is a fresh process's first trial. That one pays the final
evaluation's one-time costs (the imports and loads a first evaluation makes); the later ones are what a Ray Tune
worker, which runs trial after trial (`reuse_actors`), pays per trial. One torch thread.

Measured (results/BENCHMARKS.md, "Metrics that a cheater cannot pass", its cost table; 2-core AMD EPYC shared
with other agents' jobs): see there, before and after the in-domain model's cache kept its texts' states.

--quick: two smoke-preset trials (2 epochs) on 40 synthetic creatures prepared in this process; the evaluator
networks fitted for a moment inside each trial (data in memory has no cache).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import quick_data, quick_eval, train_logged  # noqa: E402
from machine import machine  # noqa: E402

from data_pipeline.prepare import prepare_dataset  # noqa: E402
from model.eval import evaluator as ev  # noqa: E402
from search.settings import resolve  # noqa: E402


def trial_configs(preset: str, quick: bool) -> tuple:
    """(model, train, section, settings) of the preset grid's first point; quick: the smoke preset's, evaluated cheaply."""
    settings = resolve(preset, {})
    model_cfg, train_cfg, section = settings.trial({k: v[0] for k, v in settings.grid.items()})
    return model_cfg, replace(train_cfg, **quick_eval()) if quick else train_cfg, section, settings


def timed_trials(configs: tuple, data, trials: int, out: Path) -> list[dict]:
    """Each trial's wall and CPU seconds, its final evaluation's (Evaluator.final, wrapped for the while), and the
    load average before and after."""
    spent = {}
    final = ev.Evaluator.final

    def timed_final(self, *args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        result = final(self, *args, **kwargs)
        spent.update(wall=time.perf_counter() - start, cpu=time.process_time() - cpu)
        return result

    rows = []
    ev.Evaluator.final = timed_final
    try:
        for i in range(trials):
            fresh = i == 0
            load, cpu = os.getloadavg()[0], time.process_time()
            run = train_logged(f"trial{i + 1}", configs, data, out, lambda m: f"val/l1 {m['val/l1']:.4f}")
            cpu = time.process_time() - cpu
            rows.append({"trial": i + 1, "first_in_process": fresh, "trial_wall_s": run.wall_s, "trial_cpu_s": cpu,
                         "final_wall_s": spent["wall"], "final_cpu_s": spent["cpu"],
                         "share": spent["wall"] / run.wall_s, "share_cpu": spent["cpu"] / cpu,
                         "load_before": load, "load_after": os.getloadavg()[0]})
    finally:
        ev.Evaluator.final = final
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| run | trial wall s | final evaluation wall s | share | CPU s: trial / final (share) | load average |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        run = "new process, 1st trial" if r["first_in_process"] else f"same process, trial {r['trial']}"
        lines.append(f"| {run} | {r['trial_wall_s']:.1f} | {r['final_wall_s']:.2f} | {100 * r['share']:.1f}% | "
                     f"{r['trial_cpu_s']:.1f} / {r['final_cpu_s']:.2f} ({100 * r['share_cpu']:.1f}%) | "
                     f"{r['load_before']:.1f} -> {r['load_after']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="trials run one after another in this process")
    ap.add_argument("--out", default=None, help="cache root for the prepared data and the evaluator networks "
                    "(default: the pipeline's, shared with trials)")
    ap.add_argument("--quick", action="store_true", help="two smoke-preset trials on 40 in-memory creatures")
    ap.add_argument("--fit-only", action="store_true", help=argparse.SUPPRESS)  # the child that fits the networks
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model_cfg, train_cfg, section, settings = trial_configs("smoke" if args.quick else "laptop", args.quick)
    if args.quick:
        data = quick_data(settings.data)
    else:
        if not args.fit_only:  # fitted in a child, so that nothing of it warms this process
            subprocess.run([sys.executable, __file__, "--fit-only"] + (["--out", args.out] if args.out else []),
                           check=True)
        data = prepare_dataset(None, settings.data, cache_root=args.out, progress=False)
        if args.fit_only:
            ev.EvalNets.load_or_fit(data, train_cfg.eval_fit)
            return []
    print(f"machine: {machine()}")
    print(f"{data.info['source']}: {len(data.train)} training rows; {model_cfg.family}, lr {train_cfg.lr:g}, "
          f"{train_cfg.total_epochs} epochs, {train_cfg.eval_samples} samples per text, evaluator fits "
          f"x{train_cfg.eval_fit:g}{' (--quick: measures nothing)' if args.quick else ''}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-eval-cost-") as tmp:
        rows = timed_trials((model_cfg, train_cfg, section), data, 2 if args.quick else args.trials, Path(tmp))
    print(f"\nThe final evaluation's share of each trial (one torch thread):\n\n{table(rows)}")
    return rows


if __name__ == "__main__":
    main()
