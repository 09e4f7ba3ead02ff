"""Does the text steer the image? Training recipes on real data, each against the text-blind baselines.

    python bench/bench_recipes.py --data ../shared/datasets/pokedex --image-size 32 --epochs 20
    python bench/bench_recipes.py --data ../shared/datasets/pokedex --recipes seed pooled --image-size 64
    python bench/bench_recipes.py --recipes seed laptop                 # the synthetic default set
    python bench/bench_recipes.py --quick --out /tmp/recipes            # seconds: checks the script (tests/test_benches.py)

One run per recipe, the same prepared data, split and epochs, through `model.train.train` (no Ray
Tune). Each row: best validation L1 (and its epoch), test L1 beside the per-pixel median and mean
training images (the text-blind L1 optimum and the average Pokémon), then the final metrics
(model/eval/evaluator.py), each with its 95% interval over test records: text faithfulness (attribute accuracy
`attr_all` on the synthetic set, the in-domain model's alignment `indomain_align` on real data), R-precision
top-1, type accuracy (a small CNN), KID on a random CNN's features and the copy rate, beside the real test
images' own scores and chance (printed above the table). Writes learning_curves.png and samples_<recipe>.png
(real top, generated bottom) to --out.

Recipes are config overrides (flag = config field = table column; a field of the regressor's own section, such
as decoder_channels, alike), each on top of `seed`, the
thesis's recommended trial (heads 4, ff 1024, 2 layers, lr 1e-4, wd 1e-5, dropout 0.3):
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (baselines, cell, final_metrics, headline_columns, quick_data, quick_eval,  # noqa: E402
                    reference_line, save_results, train_logged)
from machine import machine  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from model.config import BEST_VAL_L1, TEST_DIVERSITY, TEST_L1, TRAIN_L1, VAL_L1, ModelConfig, TrainConfig  # noqa: E402
from search.space import trial_configs  # noqa: E402

SEED = {"n_heads": 4, "ff_dim": 1024, "n_layers": 2, "lr": 1e-4, "weight_decay": 1e-5}
RECIPES = {
    "seed": ("the thesis's recommended trial", {}),
    "lr1e-3": ("learning rate 1e-3", {"lr": 1e-3}),
    "wd": ("a weight decay that acts: 1e-2 (the grid's 1e-5 rounds away in float32)", {"weight_decay": 1e-2}),
    "flip": ("+ random horizontal flips and shifts of up to 1/8 of the side", {"augment_flip": True,
                                                                            "augment_shift": 0.125}),
    "pooled": ("+ the pooled text conditions the image queries and the decoder (FiLM)", {"pooled_text": True}),
    "nodrop": ("dropout 0 (encoder, attention, decoder)", {"dropout_encoder": 0.0, "dropout_attention": 0.0,
                                                           "dropout_decoder": 0.0}),
    "pooled2e-3": ("+ pooled text, learning rate 2e-3", {"pooled_text": True, "lr": 2e-3}),
    "para3": ("+ 3 texts per training record (its own and 2 rewordings)", {"paraphrases": 3}),
    "laptop": ("the laptop preset's model and learning rate: d_model 64, pooled text, lr 2e-3",
               {"lr": 2e-3, "pooled_text": True, "d_model": 64}),
    "laptop-reg": ("laptop against memorizing: + flips, shifts of up to 1/8, weight decay 0.1",
                   {"lr": 2e-3, "pooled_text": True, "d_model": 64, "augment_flip": True, "augment_shift": 0.125,
                    "weight_decay": 0.1}),
    "laptop-small": ("laptop with a smaller decoder: 64 channels at the first block (256 by default)",
                     {"lr": 2e-3, "pooled_text": True, "d_model": 64, "decoder_channels": 64}),
    # Staged recipes keep the total: stage 1 is --epochs minus finetune_epochs.
    "staged": ("staged: the last 2 epochs from stage 1's best weights, the encoder's top 2 layers unfrozen, "
               "lr 1e-5", {"finetune_epochs": 2, "finetune_layers": 2, "finetune_lr": 1e-5}),
    "laptop-staged": ("laptop, staged: the last 2 epochs from stage 1's best weights, the encoder's top 2 layers "
                      "unfrozen, lr 2e-4", {"lr": 2e-3, "pooled_text": True, "d_model": 64, "finetune_epochs": 2,
                                            "finetune_layers": 2, "finetune_lr": 2e-4}),
    "laptop-restart": ("laptop, the control for laptop-staged: the same stage 2 with the encoder left frozen",
                       {"lr": 2e-3, "pooled_text": True, "d_model": 64, "finetune_epochs": 2, "finetune_layers": 0,
                        "finetune_lr": 2e-4}),
    "laptop-staged4": ("laptop, staged, a longer stage 2: 2 epochs, then 4 with the encoder's top 2 layers",
                       {"lr": 2e-3, "pooled_text": True, "d_model": 64, "finetune_epochs": 4, "finetune_layers": 2,
                        "finetune_lr": 2e-4}),
    "laptop-staged4-all": ("laptop-staged4 with all 6 encoder layers unfrozen in stage 2",
                           {"lr": 2e-3, "pooled_text": True, "d_model": 64, "finetune_epochs": 4, "finetune_layers": 6,
                            "finetune_lr": 2e-4}),
}
# --quick: the small model staged (stage 1 is the plain recipe; its checkpoint has encoder layers). The plain laptop
# recipe alone trains in bench_diffusion.py --quick --regressor laptop (tests/test_benches.py).
QUICK = ["laptop-staged"]
__doc__ += "\n".join(f"    {name:8s} {about}" for name, (about, _) in RECIPES.items()) + "\n"


def recipe_configs(name: str, base_model: ModelConfig, base_train: TrainConfig) -> tuple:
    """(model, train, family section, DataConfig overrides): a recipe's configs on top of `seed`. A staged recipe
    trains as many epochs in all as the others: stage 1 is the base's epochs minus its finetune_epochs."""
    overrides = {**SEED, **RECIPES[name][1]}
    data_over = {k: overrides.pop(k) for k in [f.name for f in fields(DataConfig)] if k in overrides}
    if overrides.get("finetune_epochs"):
        overrides["epochs"] = base_train.epochs - overrides["finetune_epochs"]
    return (*trial_configs(overrides, base_model, base_train), data_over)


def run(name: str, data, data_arg: str | None, base_model: ModelConfig, base_train: TrainConfig, out: Path) -> dict:
    model_cfg, train_cfg, section, data_over = recipe_configs(name, base_model, base_train)
    if data_over:  # a data recipe (paraphrases): the same records and split, other training rows
        from data_pipeline.prepare import prepare_dataset

        data = prepare_dataset(data_arg, replace(DataConfig(**data.info["settings"]), **data_over), progress=False)
    r = train_logged(name, (model_cfg, train_cfg, section), data, out,
                     lambda m: f"train L1 {m[TRAIN_L1]:.4f}, val L1 {m[VAL_L1]:.4f}")
    best_epoch = min(r.history, key=lambda m: m[VAL_L1])["epoch"]
    return {"recipe": name, "about": RECIPES[name][0], "wall_s": r.wall_s, "best_epoch": best_epoch,
            BEST_VAL_L1: r.final[BEST_VAL_L1], **final_metrics(r.final),
            "checkpoint": str(r.checkpoint),
            "curve": {"epoch": [m["epoch"] for m in r.history], TRAIN_L1: [m[TRAIN_L1] for m in r.history],
                      VAL_L1: [m[VAL_L1] for m in r.history]},
            "config": {**asdict(model_cfg), **asdict(train_cfg), **asdict(section)}}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", default=None, help="dataset path (default: the embedded synthetic set)")
    p.add_argument("--recipes", nargs="+", default=None, choices=list(RECIPES), help="default: all")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment-rotations", type=int, default=8)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default="results/recipes", help="figures, checkpoints and recipes.json go here")
    p.add_argument("--quick", action="store_true", help="checks the script in seconds, measures nothing: 40 synthetic "
                   "creatures, 1 rotation, 3 epochs, recipe laptop-staged unless given")
    args = p.parse_args(argv)
    if args.quick:
        args.recipes, args.augment_rotations, args.epochs = args.recipes or QUICK, 1, 3
        if any(recipe_configs(name, ModelConfig(), TrainConfig(epochs=3))[3] for name in args.recipes):
            p.error("--quick trains on its own 40 records: a recipe that changes the data (para3) needs --data")
    args.recipes = args.recipes or list(RECIPES)

    from data_pipeline.prepare import prepare_dataset
    from search.figures import learning_curves, samples

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = DataConfig(image_size=args.image_size, augment_rotations=args.augment_rotations)
    data = quick_data(data_cfg) if args.quick else prepare_dataset(args.data, data_cfg, progress=False)
    base_model = ModelConfig(image_size=args.image_size)
    base_train = TrainConfig(epochs=args.epochs, clip_mode="off", **(quick_eval() if args.quick else {}))
    rows = [run(name, data, args.data, base_model, base_train, out) for name in args.recipes]

    from model.eval.evaluator import EvalNets

    base = baselines(data, EvalNets.load_or_fit(data, base_train.eval_fit))  # the trials' own: cached with the data
    median, mean = base["baseline/test_l1_median_train_image"], base["baseline/test_l1_mean_train_image"]
    columns = [(col, name) for col, name in headline_columns(data) if name != TEST_DIVERSITY]  # one image per text
    print(f"\nmachine: {machine()}\ndata: {data.info['source']}, {args.image_size} px, {args.augment_rotations} "
          f"rotations, train/val/test rows {len(data.train)}/{len(data.val)}/{len(data.test)}; {args.epochs} epochs, "
          f"batch 10\ntext-blind test L1: median image {median:.4f}, mean image {mean:.4f}\n{reference_line(base)}\n")
    print("| recipe | best val L1 (epoch) | test L1 | vs median image | " + " | ".join(c for c, _ in columns)
          + " | wall s |")
    print("|---|---|---|---|" + "---|" * len(columns) + "---|")
    for r in rows:
        print(f"| {r['recipe']}: {r['about']} | {r[BEST_VAL_L1]:.4f} ({r['best_epoch']}) | {r[TEST_L1]:.4f} "
              f"| {r[TEST_L1] / median - 1:+.1%} | " + " | ".join(cell(r, name) for _, name in columns)
              + f" | {r['wall_s']:.0f} |")
    print("\nEach metric: mean [95% interval] over the test records (the evaluation's noise, not the training "
          "seed's).\n")

    learning_curves({r["recipe"]: r["curve"] for r in rows}, min(rows, key=lambda r: r[BEST_VAL_L1])["recipe"],
                    out / "learning_curves.png", f"recipes, {args.image_size} px")
    from model.generate import load_model

    for r in rows:
        net, tokenizer = load_model(r["checkpoint"], device="cpu")
        samples(net, tokenizer, data.test, out / f"samples_{r['recipe']}.png",
                title=f"{r['recipe']}: test, real (top) vs generated (bottom)")
    save_results(out / "recipes.json", base, rows, args)
    return rows


if __name__ == "__main__":
    main()
