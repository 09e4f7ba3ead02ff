"""Did the search beat the human? A budgeted search over the diffusion family, then its choice against the
hand-picked recipe at the same training budget, over several seeds, paired on the same test texts and sample seeds.

    python bench/bench_search_vs_hand.py --data ../shared/datasets/pokedex --out /tmp/vs-hand   # ~100 min, 2 cores
    python bench/bench_search_vs_hand.py --out /tmp/vs-hand --reuse      # again, reading a finished search's results
    python bench/bench_search_vs_hand.py --quick --out /tmp/x            # synthetic, tiny: checks the script

1. The search: `python -m search.grid` with Optuna's TPE stopped early by ASHA on the family's cheap per-epoch metric
   (val/x0_mse), --trials trials of --epochs epochs over SPACE (learning rate, batch size, learning-rate schedule,
   conditioning dropout, min-SNR gamma: 48 points), every other field the hand-picked recipe's (`hand()`:
   bench/bench_diffusion.py's pixel-fast). Its final choice (`choose`): of the trials that trained every epoch, the
   one with the highest validation faithfulness with power (val/indomain_align on real data, val/attr_mean on the
   synthetic set; per-record scores, paired; never a test metric), and the completed trials tied with it.
2. The comparison: the hand-picked recipe and the search's choice, each trained for --minutes of training at its
   own measured speed (one timing run per recipe, `bench_diffusion.timing`: the same budget, not the same epochs),
   once per seed of --seeds, without Ray; each evaluated on the test texts with the loop's fixed sample seeds
   (--eval-samples per text), so the two recipes' images of a seed are paired text for text and noise for noise.
   Per seed: the headline metrics with their 95% intervals (the evaluation's noise). Pooled (`verdicts`): for each
   paired metric, every seed's per-record scores side by side (records x seeds*samples), the difference choice -
   hand with its 95% interval and the one-sided sign-flip test each way (model/eval/intervals.py): "won" or
   "lost" where p < 0.05 in that direction, else "tied"; and in how many seeds the choice scored higher. KID has
   no per-record scores: its per-seed values are shown.

Prints both tables naming the machine; --json keeps every number.

Measured (2-core AMD EPYC VM, 2026-12-07, results/BENCHMARKS.md "Did the search beat the human?"): on the real
Pokédex the 44-minute search chose batch 16 and conditioning dropout 0.2 over pixel-fast's 64 and 0.1; at 8 minutes
of training, 3 seeds each: in-domain alignment 0.095 vs 0.080 (higher in 3/3 seeds; one-sided p 0.024, 0.073
Holm-adjusted: tied), KID lower in 3/3, type accuracy and R-precision tied. tests/test_bench_search_vs_hand.py tests
`choose`, `verdicts` and the search's command on made-up trials and rows; the whole script is run by hand.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))

import bench_diffusion  # noqa: E402
from bench_search_payoff import logged_wall, total  # noqa: E402
from common import cell, final_metrics, headline_columns, train_logged  # noqa: E402
from machine import machine  # noqa: E402

from model.config import TEST_KID_RANDOM, VAL_ALIGN, VAL_ATTR_MEAN  # noqa: E402
from model.eval.intervals import ALPHA, bootstrap_interval, paired_comparison  # noqa: E402

HAND = "pixel-fast"  # the hand-picked recipe (results/BENCHMARKS.md, "The diffusion family on the real Pokédex")
SPACE = {"lr": ["5e-4", "1e-3", "2e-3"], "batch_size": ["16", "64"], "lr_schedule": ["constant", "cosine"],
         "cond_dropout": ["0.1", "0.2"], "min_snr_gamma": ["0", "5"]}
QUICK_SPACE = {"lr": ["1e-3", "3e-3"], "batch_size": ["16", "32"]}
QUICK = {**bench_diffusion.QUICK, "d_model": 32, "ff_dim": 64, "n_layers": 1}
PAIRED = ("indomain_align", "attr_mean", "attr_all", "r_precision_top1", "type_acc")  # higher is better, each


def hand(quick: bool = False) -> dict:
    """The hand-picked recipe's fields: bench_diffusion's `first` with pixel-fast's changes (QUICK's tiny model with
    --quick)."""
    return {**bench_diffusion.FIRST, **bench_diffusion.RECIPES[HAND][1], **(QUICK if quick else {})}


def search_command(args, space: dict, recipe: dict) -> list[str]:
    """`python -m search.grid`: the space's axes, and every other field of `recipe` as one value."""
    def flag(k):
        return "--" + k.replace("_", "-")

    fixed = []
    for k, v in recipe.items():
        if k in space:
            continue
        fixed += [flag(k) if v else "--no-" + k.replace("_", "-")] if isinstance(v, bool) else [flag(k), str(v)]
    axes = [f for k, vs in space.items() for f in (flag(k), *vs)]
    return [sys.executable, "-m", "search.grid", "--data", args.data, "--preset", "laptop", "--results", str(args.out),
            "--experiment", "search", "--search", "optuna", "--search-seed", "0", "--num-samples", str(args.trials),
            "--scheduler", "asha", "--grace-period", str(args.grace_period), "--epochs", str(args.epochs),
            "--eval-samples", str(args.eval_samples), "--cpus-per-trial", str(args.cpus_per_trial), *fixed, *axes]


def run_search(args, space: dict, recipe: dict) -> float:
    """The search into <out>/tune/search, its log <out>/search.log; its wall time (with --reuse: a finished
    search's, from its log's closing line)."""
    log = Path(args.out) / "search.log"
    if args.reuse and (finished := logged_wall(log)) is not None:
        return finished
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(search_command(args, space, recipe), cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"the search failed ({rc}): see {log}")
    return time.time() - t0


def trial_rows(out: Path, space: dict, metric: str) -> list[dict]:
    """Each trial of the search: its point (the space's fields), the epochs it trained, and its last epoch's
    per-record scores of `metric` (None: stopped early, or no final evaluation)."""
    from search.results import load_trials

    rows = []
    for t in load_trials(str(out / "tune" / "search")):
        last = t.history[-1] if t.history else {}
        raw = last.get(f"scores/{metric}")
        rows.append({"point": {k: t.config.get(k) for k in space}, "epochs": len(t.history),
                     "x0_first": t.history[0].get("val/x0_mse") if t.history else None,
                     "scores": json.loads(raw) if raw else None})
    return rows


def choose(rows: list[dict], epochs: int) -> tuple[dict, list[dict]]:
    """(the completed trial with the highest mean score, every completed trial not shown worse than it: the paired
    test on the same validation texts and sample seeds, alpha 0.05). Completed: trained every epoch, with scores."""
    done = [r for r in rows if r["epochs"] >= epochs and r["scores"] is not None]
    if not done:
        raise SystemExit("no trial of the search completed: nothing to choose (more --trials, or a longer grace period)")
    best = max(done, key=total)
    tied = [r for r in done if r is not best and paired_comparison(best["scores"], r["scores"]).tied]
    return best, tied


def typed(point: dict) -> dict:
    """A trial's point as the recipe's fields (numbers where Tune kept the flags' text)."""
    def value(v):
        try:
            return int(v) if str(v).isdigit() else float(v)
        except ValueError:
            return v
    return {k: value(v) for k, v in point.items()}


def compare(recipes: dict, data, args) -> list[dict]:
    """Each recipe trained for args.minutes at its own speed, once per seed: a row per (recipe, seed) with its
    final metrics, the per-record test scores of PAIRED and its epochs. Each row is saved to <out>/compare.json as
    it ends; with --reuse, the rows found there for the same recipe fields and budget are kept, not trained again."""
    from model.config import SAMPLES_PER_S

    out = Path(args.out)
    saved = out / "compare.json"
    rows = json.loads(saved.read_text()) if args.reuse and saved.exists() else []
    rows = [r for r in rows if r.get("fields") == recipes.get(r["recipe"]) and r.get("minutes") == args.minutes]
    evaluation = {**(bench_diffusion.quick_eval() if args.quick else {}), "eval_samples": args.eval_samples}
    for name, overrides in recipes.items():
        configs = bench_diffusion.configs(overrides, args.image_size, 1, evaluation)
        if prior := [r for r in rows if r["recipe"] == name]:  # a budget already measured: its seeds stay paired
            speed, epochs = prior[0]["samples_per_s"], prior[0]["epochs"]
        else:
            speed = bench_diffusion.timing(configs, data, rows=min(len(data.train), 4 * configs[1].batch_size))
            epochs = max(1, round(args.minutes * 60 * speed / len(data.train)))
        print(f"[{name}] {speed:.0f} samples/s -> {epochs} epochs in {args.minutes:g} min", flush=True)
        for seed in range(args.seeds):
            if any(r["recipe"] == name and r["seed"] == seed for r in rows):
                continue
            model_cfg, train_cfg, section = configs
            run = train_logged(f"{name}-seed{seed}", (model_cfg, replace(train_cfg, epochs=epochs, seed=seed), section),
                               data, out, lambda m: f"val/x0_mse {m['val/x0_mse']:.4f}", bench_diffusion.RUNTIME)
            scores = {m: json.loads(run.final[f"scores/test/{m}"]) for m in PAIRED
                      if run.final.get(f"scores/test/{m}")}
            rows.append({"recipe": name, "seed": seed, "epochs": epochs, "samples_per_s": speed,
                         "train_s": sum(len(data.train) / h[SAMPLES_PER_S] for h in run.history),
                         "wall_s": run.wall_s, "x0_first": run.history[0]["val/x0_mse"], "scores": scores,
                         "fields": overrides, "minutes": args.minutes, **final_metrics(run.final)})
            saved.write_text(json.dumps(rows, indent=1, default=str))
    return sorted(rows, key=lambda r: (list(recipes).index(r["recipe"]), r["seed"]))


def verdicts(rows: list[dict], choice: str, base: str) -> list[dict]:
    """Per paired metric both recipes have: choice - base on the seeds' per-record scores side by side (each seed's
    samples of a record are one record's cells), its 95% interval, the one-sided p each way, each Holm-adjusted over
    the metrics compared (several metrics, several chances to win by luck), the verdict ("won", "lost" at an adjusted
    p < 0.05, else "tied") and in how many seeds the choice's mean is higher."""
    import numpy as np

    by = {name: sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["seed"]) for name in (choice, base)}
    if [r["seed"] for r in by[choice]] != [r["seed"] for r in by[base]]:
        raise ValueError("the two recipes must have run the same seeds to be paired")
    out = []
    for m in PAIRED:
        if not all(m in r["scores"] for rs in by.values() for r in rs):
            continue
        a, b = (np.concatenate([np.asarray(r["scores"][m], dtype=float) for r in by[n]], axis=1) for n in (choice, base))
        up, down = paired_comparison(a, b), paired_comparison(b, a)
        higher = sum(np.mean(x["scores"][m]) > np.mean(y["scores"][m]) for x, y in zip(by[choice], by[base]))
        out.append({"metric": f"test/{m}", "choice": float(a.mean()), "base": float(b.mean()), "diff": up.diff,
                    "lo": up.lo, "hi": up.hi, "p_choice_better": up.p_value, "p_base_better": down.p_value,
                    "seeds_higher": f"{higher}/{len(by[choice])}"})
    for direction in ("p_choice_better", "p_base_better"):
        for v, adjusted in zip(out, holm([v[direction] for v in out])):
            v[f"{direction}_holm"] = adjusted
    for v in out:
        v["verdict"] = ("won" if v["p_choice_better_holm"] < ALPHA else "lost" if v["p_base_better_holm"] < ALPHA
                        else "tied")
    return out


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (same order): the i-th smallest times (m - i), kept monotone, at most 1."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def tables(rows: list[dict], pooled: list[dict], columns: list[tuple[str, str]]) -> str:
    """The comparison as markdown: a row per (recipe, seed) with the headline metrics and their 95% intervals; then
    `verdicts`' pooled rows, and KID per seed (no per-record scores to pair)."""
    lines = ["| recipe | seed | epochs | train min | " + " | ".join(col for col, _ in columns) + " |",
             "|---|---|---|---|" + "---|" * len(columns)]
    lines += [f"| {r['recipe']} | {r['seed']} | {r['epochs']} | {r['train_s'] / 60:.1f} | "
              + " | ".join(cell(r, name) for _, name in columns) + " |" for r in rows]
    seeds = len({r["seed"] for r in rows})
    lines += ["", f"Pooled over {seeds} seeds, paired by test text and sample seed (search - {HAND}):", "",
              f"| metric | search | {HAND} | difference [95% interval] | p (search better) | p ({HAND} better) "
              "| verdict (Holm-adjusted p) | seeds where search is higher |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {v['metric']} | {v['choice']:.3f} | {v['base']:.3f} | {v['diff']:+.3f} [{v['lo']:+.3f}, "
              f"{v['hi']:+.3f}] | {v['p_choice_better']:.4f} | {v['p_base_better']:.4f} | {v['verdict']} "
              f"({min(v['p_choice_better_holm'], v['p_base_better_holm']):.3f}) | "
              f"{v['seeds_higher']} |" for v in pooled]
    kid = {name: ", ".join(f"{r[TEST_KID_RANDOM]:.4f}" for r in rows if r["recipe"] == name) for name in ("search", HAND)}
    lines.append(f"| {TEST_KID_RANDOM} (lower is better), per seed | {kid['search']} | {kid[HAND]} | | | | | |")
    return "\n".join(lines)


def axes(space: dict) -> str:
    """The space as "lr {5e-4, 1e-3} x batch_size {16, 64}"."""
    return " x ".join(f"{k} {{{', '.join(vs)}}}" for k, vs in space.items())


def describe(point: dict, recipe: dict) -> str:
    """The choice as its changes from the hand-picked recipe (or "the hand-picked recipe itself")."""
    changed = {k: v for k, v in typed(point).items() if recipe.get(k) != v}
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in changed.items()) or \
        "the hand-picked recipe itself"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset path (default: the embedded synthetic set)")
    p.add_argument("--out", required=True, help="the search's results, the runs' checkpoints and logs go here")
    p.add_argument("--trials", type=int, default=12, help="the search's trials (Optuna's TPE + ASHA)")
    p.add_argument("--epochs", type=int, default=30, help="a search trial's epochs (ASHA stops most sooner)")
    p.add_argument("--grace-period", type=int, default=8, help="epochs every search trial trains before ASHA may stop it")
    p.add_argument("--cpus-per-trial", type=int, default=2, help="CPUs per search trial (2 on 2 cores: one trial at a "
                   "time, so ASHA compares each trial with every one before it)")
    p.add_argument("--minutes", type=float, default=8.0, help="training time per comparison run")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per recipe in the comparison")
    p.add_argument("--eval-samples", type=int, default=2, help="sampled images per text in every final evaluation")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--reuse", action="store_true", help="read a finished search and finished comparison runs from "
                   "--out instead of running them again")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--quick", action="store_true", help="60 synthetic creatures, a tiny model, 4 trials of 2 epochs, "
                   "2 seeds of a few seconds: checks the script, measures nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.trials, args.epochs, args.grace_period = "synthetic:0:60", 4, 2, 1
        args.minutes, args.seeds = 0.05, 2
    args.data = args.data or "synthetic:0:300"
    Path(args.out).mkdir(parents=True, exist_ok=True)

    from data_pipeline.config import DataConfig
    from data_pipeline.prepare import prepare_dataset

    space, recipe = (QUICK_SPACE if args.quick else SPACE), hand(args.quick)
    search_s = run_search(args, space, recipe)
    data = prepare_dataset(args.data, DataConfig(image_size=args.image_size, augment_rotations=1), progress=False)
    metric = VAL_ATTR_MEAN if data.info.get("attributes") else VAL_ALIGN
    trials = trial_rows(Path(args.out), space, metric)
    best, tied = choose(trials, args.epochs)
    found = {**recipe, **typed(best["point"])}
    print(f"[search] {len(trials)} trials, {sum(t['epochs'] for t in trials)} trial-epochs, {search_s:.0f} s; "
          f"chosen on {metric}: {describe(best['point'], recipe)}; tied with it: "
          + ("; ".join(describe(t["point"], recipe) for t in tied) or "none"), flush=True)

    rows = compare({HAND: recipe, "search": found}, data, args)
    choice_row = next(r for r in rows if r["recipe"] == "search" and r["seed"] == 0)
    pooled = verdicts(rows, "search", HAND)

    columns = headline_columns(data)
    head = (f"machine: {machine()}\ndata: {data.info['source']}, {args.image_size} px, train/val/test rows "
            f"{len(data.train)}/{len(data.val)}/{len(data.test)}")
    print(f"\n{head}\nsearch: Optuna TPE + ASHA (grace {args.grace_period}), {args.trials} trials of {args.epochs} epochs "
          f"over {axes(space)}: {search_s / 60:.1f} min, "
          f"{sum(t['epochs'] for t in trials)} trial-epochs; chosen on {metric}: {describe(best['point'], recipe)}")
    print(f"epoch 1 val/x0_mse of the choice: {best['x0_first']} in the search, {choice_row['x0_first']:.4f} here "
          "(the same configuration, trained again: equal up to the threads' rounding)\n")
    print(tables(rows, pooled, columns))
    result = {"machine": machine(), "args": vars(args), "search_s": search_s, "trials": trials, "chosen": best,
              "tied": tied, "found": found, "rows": rows, "verdicts": pooled,
              "interval_of_choice_on_val": bootstrap_interval(best["scores"])}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
