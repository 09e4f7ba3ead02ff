"""The diffusion family on what we have: its training speed, and its recipes within a training-time budget.

    python bench/bench_diffusion.py --throughput                       # samples/s of the training step, per variant
    python bench/bench_diffusion.py --data ../shared/datasets/pokedex --recipes first best --minutes 60 \\
        --regressor laptop-staged4 --out /tmp/diffusion                 # recipes on real data, beside the regressor
    python bench/bench_diffusion.py --quick [--throughput]             # seconds: checks the script (tests/test_benches.py)
    python bench/bench_diffusion.py --checkpoint results/<exp>/best_checkpoint --data synthetic:0:2400 \
        --augment-rotations 1 --guidance 1 1.5 2 3 --eval-samples 1    # a trained model's guidance, chosen on val
    python bench/bench_diffusion.py --checkpoint CKPT --data synthetic:0:2400 --augment-rotations 1 --probe
                                                                    # where its text decides what is drawn
    python bench/bench_diffusion.py --selection CKPT [CKPT ...] --data synthetic:0:2400 --augment-rotations 1
                                                                    # the per-epoch selection metric, fp32 vs bf16

Throughput (`--throughput`): the training step of `model.train.train` (its own samples_per_s: training steps
only, every member's samples) for the issue's first attempt and each speed variant, on the same rows.

Recipes: each trains through `model.train.train` (no Ray Tune) for as many epochs as fit in `--minutes` of
training at its measured speed (a short timing run first), on the same prepared data and split; then its
final metrics come from 4 sampled test images per text with fixed seeds (model/eval/evaluator.py), each with its
95% interval over records and samples: text faithfulness (attribute accuracy `attr_all` on the synthetic set,
the in-domain model's alignment `indomain_align` on real data), R-precision top-1, type accuracy (a small CNN),
KID on a random CNN's features, the copy rate (samples much nearer one training record than any other) and
diversity (within-text over between-text feature distance), beside the baselines they are read against (the real
test images' scores, chance), and test L1. `--regressor NAME` adds a regressor recipe of bench/bench_recipes.py
at its own epochs on the same split. Writes to --out: curves.png (the selection metric per epoch),
samples_<recipe>.png (real test images, then two samples per text, or a regressor's one image: the dataset's
artwork, never commit it),
the checkpoints, and diffusion.json. Recipes (each on top of `first`, the issue's first attempt):
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_recipes  # noqa: E402
from common import (baselines, cell, final_metrics, headline_columns, quick_data, quick_eval,  # noqa: E402
                    reference_line, save_results, train_logged)
from machine import machine  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.dataset import PreparedData  # noqa: E402
from model import families  # noqa: E402
from model.config import SAMPLES_PER_S, TEST_L1, VAL_ALIGN, VAL_ATTR_MEAN, ModelConfig, TrainConfig  # noqa: E402
from model.train import Runtime, train  # noqa: E402
from search.space import trial_configs  # noqa: E402

# One Runtime for every run of this process (the default device: a GPU where there is one, as the timing run and the
# recipe it plans for must share): the texts' encoder states are computed once for all recipes.
RUNTIME = Runtime()

# The first attempt, as a new user would try it: 1.6 M parameters, widths 32/64/64, cross-attention at
# the lowest level only (no cross-attention-only level), 32 px, MiniLM states through the thesis's text stack, epsilon
# prediction, cosine schedule, EMA, DDIM 25 steps, guidance 3, batch 64, lr 1e-3. The text stack is the thesis's
# recommended trial's.
FIRST = {"family": "diffusion", "n_heads": 4, "ff_dim": 1024, "n_layers": 2, "d_model": 64, "unet_width": 32,
         "unet_levels": 3, "unet_attention": 1, "unet_cross_levels": 0, "prediction_type": "epsilon",
         "noise_schedule": "squaredcos_cap_v2",
         "min_snr_gamma": 0.0, "pooled_text": False, "sampler": "ddim", "sample_steps": 25, "guidance_scale": 3.0, "batch_size": 64, "lr": 1e-3,
         "weight_decay": 1e-5, "dropout_encoder": 0.0, "dropout_attention": 0.0, "dropout_decoder": 0.0}
RECIPES = {
    "first": ("the issue's first attempt", {}),
    "linear": ("linear beta schedule (the toy disc set's better one)", {"noise_schedule": "linear"}),
    "v": ("v-prediction", {"prediction_type": "v_prediction"}),
    "x0": ("x0-prediction", {"prediction_type": "sample"}),
    "minsnr": ("min-SNR-5 loss weighting", {"min_snr_gamma": 5.0}),
    "v-minsnr": ("v-prediction + min-SNR-5", {"prediction_type": "v_prediction", "min_snr_gamma": 5.0}),
    "warmup": ("lr 2e-3 with 200 warm-up steps", {"lr": 2e-3, "warmup_steps": 200}),
    "b32": ("batch 32", {"batch_size": 32}),
    "small": ("a smaller UNet: widths 32/64, two levels", {"unet_levels": 2}),
    "wide": ("a wider UNet: widths 64/128/128", {"unet_width": 64}),
    "attn2": ("cross-attention at the two lowest levels", {"unet_attention": 2}),
    "pooled": ("+ the pooled text joins the timestep embedding (every ResNet block reads it)", {"pooled_text": True}),
    "latent": ("latent diffusion: a small autoencoder's 8x8x4 latents, a two-level UNet 64/128",
               {"latent_channels": 4, "unet_levels": 2, "unet_width": 64}),
    "pooled-v-minsnr": ("pooled text + v-prediction + min-SNR-5", {"pooled_text": True, "prediction_type": "v_prediction",
                                                                "min_snr_gamma": 5.0}),
    "latent-pooled": ("latent + pooled text", {"latent_channels": 4, "unet_levels": 2, "unet_width": 64,
                                              "pooled_text": True}),
    "latent-pooled-v-minsnr": ("latent + pooled text + v-prediction + min-SNR-5",
                               {"latent_channels": 4, "unet_levels": 2, "unet_width": 64, "pooled_text": True,
                                "prediction_type": "v_prediction", "min_snr_gamma": 5.0}),
    "pixel-fast": ("pooled text + v-prediction + min-SNR-5 + 100 warm-up steps + bf16 autocast",
                   {"pooled_text": True, "prediction_type": "v_prediction", "min_snr_gamma": 5.0, "warmup_steps": 100,
                    "precision": "bf16"}),
    "latent-fast": ("latent + pooled text + v-prediction + min-SNR-5 + 100 warm-up steps + bf16 autocast",
                    {"latent_channels": 4, "unet_levels": 2, "unet_width": 64, "pooled_text": True,
                     "prediction_type": "v_prediction", "min_snr_gamma": 5.0, "warmup_steps": 100, "precision": "bf16"}),
    # README's picture (docs/families.png) on the synthetic set: tests/test_diffusion.py's CI-sized model and recipe.
    "synthetic-small": ("the CI test's small model: d_model 32, one encoder layer, UNet 16/32, lr 3e-3, batch 32, "
                        "guidance 5, DDIM 10 steps", {"d_model": 32, "ff_dim": 64, "n_layers": 1, "n_heads": 2,
                                                      "unet_width": 16, "unet_levels": 2, "pooled_text": True,
                                                      "prediction_type": "v_prediction", "min_snr_gamma": 5.0,
                                                      "lr": 3e-3, "warmup_steps": 50, "batch_size": 32,
                                                      "guidance_scale": 5.0, "sample_steps": 10}),
    # The best found (results/BENCHMARKS.md: on the real Pokédex, pixel-fast's type accuracy equals latent-fast's,
    # with memorisation above 1 and retrieval above chance, which latent-fast's are not, and without the
    # autoencoder's 16-minute fit); bench/bench_gpu_grid.py --family diffusion trains the grid with it.
    "best": ("the best recipe found: pixel-fast", {}),
}
RECIPES["best"] = (RECIPES["best"][0], RECIPES["pixel-fast"][1])
__doc__ += "\n".join(f"    {name:9s} {about}" for name, (about, _) in RECIPES.items()) + "\n"


def configs(overrides: dict, image_size: int, epochs: int, train: dict | None = None) -> tuple:
    """(model, train, diffusion section) of a recipe on top of `first`; `train`: TrainConfig fields (--quick's
    evaluation)."""
    return trial_configs({**FIRST, **overrides}, ModelConfig(image_size=image_size),
                         TrainConfig(epochs=epochs, clip_mode="off", **(train or {})))


def timing(configs: tuple, data: PreparedData, rows: int, runtime: Runtime = RUNTIME) -> float:
    """samples/s of the training step on the first `rows` training rows, one epoch (the loop's own figure)."""
    model_cfg, train_cfg, section = configs
    small = PreparedData(data.train.take(rows), data.val.take(8), data.test.take(8), {"source": "timing"})
    # An autoencoder of a few steps: its quality does not change the denoiser's speed, and its fit is not a step;
    # nor are the final evaluation's networks (the shortest fit of each) and samples (one per text).
    section = replace(section, sample_steps=1, autoencoder_steps=5)
    train_cfg = replace(train_cfg, epochs=1, **{**quick_eval(), "eval_samples": 1})
    return train(model_cfg, train_cfg, small, family_cfg=section, runtime=runtime)[SAMPLES_PER_S]


def run(name: str, overrides: dict, data: PreparedData, image_size: int, minutes: float, out: Path,
        train: dict | None = None) -> dict:
    model_cfg, train_cfg, section = configs(overrides, image_size, 1, train)
    speed = timing((model_cfg, train_cfg, section), data, rows=min(len(data.train), 4 * train_cfg.batch_size))
    epochs = max(1, round(minutes * 60 * speed / len(data.train)))
    print(f"[{name}] {speed:.0f} samples/s -> {epochs} epochs in {minutes:g} min", flush=True)
    return fit(name, (model_cfg, replace(train_cfg, epochs=epochs), section), data, out)


def fit(name: str, configs: tuple, data: PreparedData, out: Path) -> dict:
    model_cfg, train_cfg, section = configs
    family = families.get(model_cfg.family)
    selection = family.selection
    r = train_logged(name, configs, data, out, lambda m: f"{selection} {m[selection]:.4f}", RUNTIME)
    train_s = sum(len(data.train) / m[SAMPLES_PER_S] for m in r.history)
    return {"recipe": name, "family": model_cfg.family, "wall_s": r.wall_s, "train_s": train_s,
            "samples_per_s": r.history[-1][SAMPLES_PER_S], "epochs": train_cfg.total_epochs,
            "steps": train_cfg.total_epochs * -(-len(data.train) // train_cfg.batch_size),
            "selection": selection, "best": r.final[family.best],
            "best_epoch": min(r.history, key=lambda m: m[selection])["epoch"], **final_metrics(r.final),
            "curve": {"epoch": [m["epoch"] for m in r.history], selection: [m[selection] for m in r.history]},
            "checkpoint": str(r.checkpoint), "config": {**asdict(model_cfg), **asdict(train_cfg), **asdict(section)}}


def guides(family_name: str) -> bool:
    """Whether a family's images have a guidance scale to sweep (its section has `guidance_scale`)."""
    return "guidance_scale" in {f.name for f in fields(families.get(family_name).Config)}


def selection_metric(data: PreparedData) -> str:
    """What a guidance scale is chosen on: validation mean attribute accuracy on the synthetic set, else the in-domain
    model's validation alignment (as the search's second objective; never a test metric)."""
    return VAL_ATTR_MEAN if data.info.get("attributes") else VAL_ALIGN


def guidance_sweep(ckpt: str, data: PreparedData, scales: list[float], train: dict | None = None) -> list[dict]:
    """A trained checkpoint's final metrics at each guidance scale (the weights do not change): choose the scale
    on validation (`selection_metric`), read the test metrics at it. Each scale is the family's own images (every
    row of a split, the fixed seeds of the loop's final evaluation) with that guidance_scale in its section, and
    the Evaluator's `final`, as the training loop ends; `train`: TrainConfig fields of the evaluation (--quick's)."""
    from model.eval.evaluator import EvalNets, Evaluator, split_images
    from model.generate import load_model
    from model.text import TextTable

    net, tokenizer = load_model(ckpt, device="cpu")
    cfg = replace(net.train_cfg, **(train or {}))
    family = families.get(net.cfg.family)
    texts = TextTable.of(tokenizer, data, net.cfg, "cpu", family.extra_texts).encode(net.text_encoder)
    evaluator = Evaluator(data, split_images(data, "cpu"), nets=EvalNets.load_or_fit(data, cfg.eval_fit))
    select, columns = selection_metric(data), headline_columns(data)
    out = []
    for g in scales:
        images = family(net, texts, cfg, replace(net.section, guidance_scale=g))  # generating only
        final = evaluator.final(images, [True], cfg.eval_samples)[0]
        out.append({"guidance": g, **final_metrics(final)})
        print(f"guidance {g:g}: {select} {cell(final, select)}, "
              + ", ".join(f"{col} {cell(final, name)}" for col, name in columns), flush=True)
    return out


def chosen(rows: list[dict], data: PreparedData) -> int:
    """The index of the sweep's row chosen on validation (`selection_metric`, higher is better)."""
    return max(range(len(rows)), key=lambda i: rows[i][selection_metric(data)])


def sweep_table(rows: list[dict], data: PreparedData) -> str:
    """The guidance sweep as a markdown table: the validation metric it is chosen on (the chosen scale in bold), then
    the test metrics, each attribute's accuracy on the synthetic set, KID and recall, with their 95% intervals."""
    from model.eval.attributes import ATTRIBUTES

    select = selection_metric(data)
    tests = ([f"test/attr_{a}" for a in (*ATTRIBUTES, "all", "mean")] if data.info.get("attributes") else ["test/indomain_align"])
    tests += ["test/kid_random", "test/recall_random"]
    best = chosen(rows, data)
    lines = ["| guidance | " + " | ".join([select, *tests]) + " |", "|---" * (len(tests) + 2) + "|"]
    for i, r in enumerate(rows):
        cells = [f"{r['guidance']:g}", cell(r, select, 2)] + [cell(r, m, 3 if "kid" in m else 2) for m in tests]
        lines.append("| " + " | ".join(f"**{c}**" if i == best and k < 2 else c for k, c in enumerate(cells)) + " |")
    return "\n".join(lines)


PROBE_LEVELS = (0.0, 0.001, 0.003, 0.01, 0.05, 0.1, 0.2)


def probe(ckpt: str, data: PreparedData, levels=PROBE_LEVELS, noise_seed: int = 0, eval_fit: float = 1.0) -> list[dict]:
    """Where does the text decide what is drawn? The test images noised to each signal level (alpha-bar: the
    schedule's closest timestep), the model's clean-image estimate given each record's text and given the empty
    text, read by the synthetic set's attribute reader (its fit `eval_fit` times as long, as TrainConfig's):
    {level, t, text: {attribute: accuracy}, empty: {...}}."""
    from model.eval import attributes as at
    from model.eval.evaluator import scaled
    from model.generate import load_model

    net, texts = load_model(ckpt, device="cpu", data=data)
    family = families.get(net.cfg.family)(net.eval(), texts, TrainConfig(), net.section)
    reader = at.load_or_fit(data, scaled(at.ReaderConfig(), eval_fit))
    attrs = at.split_attributes(data, "test")
    x0 = torch.as_tensor(data.test.unit_images()).float()[None]  # (1, N, 3, S, S): one member
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(noise_seed))
    rows = texts.rows["test"][None]
    alphas = family.process.scheduler.alphas_cumprod
    out = []
    for level in levels:
        t = torch.full(rows.shape, int((alphas - level).abs().argmin()), dtype=torch.long)
        x_t = family.process.noisy(x0, noise, t)
        read = {}
        for name, idx in (("text", rows), ("empty", torch.full_like(rows, family.null))):
            with torch.no_grad():  # the reader is fitted above (a first run on a dataset): not in here
                estimate = family.process.clean(net.generator(x_t, t, *family.hidden_states(idx)), x_t, t)[0]
            read[name] = at.attribute_accuracy(reader, estimate.clamp(-1, 1), attrs)
        out.append({"level": level, "t": int(t[0, 0]), **read})
    return out


def selection_precision(ckpts: list[str], data: PreparedData, repeats: int = 2) -> list[dict]:
    """Each trained checkpoint's per-epoch selection metric (the family's `select`, on --data's validation split)
    in fp32 and under the bf16 step's context (as `model.train` runs it for a bf16 trial): {checkpoint, fp32, bf16,
    fp32_s, bf16_s}, the seconds the fastest of `repeats` turns (this VM's speed drifts)."""
    import time

    from model.eval.evaluator import split_images
    from model.families import Targets
    from model.generate import load_model
    from model.train import step_context

    cpu, images = torch.device("cpu"), split_images(data, "cpu")
    out = []
    for ckpt in ckpts:
        net, texts = load_model(ckpt, device="cpu", data=data)
        family = families.get(net.cfg.family)(net.eval(), texts, TrainConfig(), net.section,
                                              Targets(data, images, None, cpu))
        row = {"checkpoint": ckpt}
        for _ in range(repeats):
            for precision in ("fp32", "bf16"):
                t0 = time.perf_counter()
                with step_context(cpu, precision, RUNTIME.math_attention):
                    row[precision] = family.select()[0]
                row[f"{precision}_s"] = min(row.get(f"{precision}_s", float("inf")), time.perf_counter() - t0)
        out.append(row)
        print(f"{ckpt}: fp32 {row['fp32']:.5f} in {row['fp32_s']:.1f} s, bf16 {row['bf16']:.5f} in "
              f"{row['bf16_s']:.1f} s", flush=True)
    return out


def probe_table(rows: list[dict]) -> str:
    """The probe as a markdown table: one column per signal level, a row per attribute, with the text and empty."""
    lines = ["| attribute, estimate from | " + " | ".join(f"{r['level']:g} ({r['t']})" for r in rows) + " |",
             "|---" * (len(rows) + 1) + "|"]
    for a in ("colour", "shape", "size", "pattern", "feature"):
        for name in ("text", "empty"):
            lines.append(f"| {a}, {'the text' if name == 'text' else 'the empty text'} | "
                         + " | ".join(f"{r[name][a]:.2f}" for r in rows) + " |")
    return "\n".join(lines)


def sweep_figure(ckpt: str, data: PreparedData, guidance: float, path: Path) -> None:
    """The figure a search writes for its best trial (search.figures.samples: real test images, then two samples
    per text), drawn at `guidance`."""
    from model.generate import load_model
    from search.figures import samples

    net, texts = load_model(ckpt, device="cpu", data=data)
    net.section = replace(net.section, guidance_scale=guidance)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples(net, texts, data.test, path, f"test: real (top) vs generated at guidance {guidance:g}")


# --throughput: the first attempt, then each speed variant on top of it.
SYNTHETIC = {"batch_size": 16, "precision": "bf16", "ff_dim": 512, "pooled_text": True, "prediction_type": "v_prediction",
             "min_snr_gamma": 5.0, "cond_dropout": 0.2, "weight_decay": 0.0}
VARIANTS = {
    "first (batch 64)": {},
    "batch 32": {"batch_size": 32},
    "two levels": {"unet_levels": 2},
    "cross-attention at two levels": {"unet_attention": 2},
    "widths 64/128/128": {"unet_width": 64},
    "batch 10 (the thesis's)": {"batch_size": 10},
    "bf16 autocast": {"precision": "bf16"},
    # Runtime.math_attention: the attention kernel under bf16 on a CPU, on the synthetic set's recipe (README's command:
    # batch 16, v-prediction, min-SNR-5, the pooled text), at one and at two cross-attention levels (the 16 x 16 one
    # too: four times the attention tokens). "flash": PyTorch's own choice, its CPU flash kernel (the loop's only one
    # until 2026-12-07); the others the math kernel the loop now uses there.
    "synthetic recipe, flash attention": {**SYNTHETIC, "math_attention": False},
    "synthetic recipe": SYNTHETIC,
    "synthetic recipe, two attention levels, flash attention": {**SYNTHETIC, "unet_attention": 2,
                                                                "math_attention": False},
    "synthetic recipe, two attention levels": {**SYNTHETIC, "unet_attention": 2},
    # The 16 x 16 level reading the text through cross-attention alone (TextAttention: no self-attention, no
    # feed-forward) instead of a full transformer block.
    "synthetic recipe, cross-attention alone at 16 x 16": {**SYNTHETIC, "unet_cross_levels": 1},
    "synthetic recipe, cross-attention alone at 16 x 16 and 32 x 32": {**SYNTHETIC, "unet_cross_levels": 2},
    # Two UNet levels (32 and 16 px): the lowest, where the text is attended, is 16 x 16, without the 8 x 8 level.
    "synthetic recipe, two UNet levels": {**SYNTHETIC, "unet_levels": 2},
    # The text stack's width, which the UNet's cross-attention and the pooled text read (the laptop preset's 64).
    "synthetic recipe, d_model 256": {**SYNTHETIC, "d_model": 256},
    # The autoencoder's fit is not part of the step: a few steps of it are enough to time the denoiser.
    "latent 8x8x4, two levels": {"latent_channels": 4, "unet_levels": 2, "autoencoder_steps": 5},
    "latent 8x8x4, widths 64/128": {"latent_channels": 4, "unet_levels": 2, "unet_width": 64, "autoencoder_steps": 5},
    "latent 8x8x4, widths 64/128, bf16": {"latent_channels": 4, "unet_levels": 2, "unet_width": 64,
                                          "autoencoder_steps": 5, "precision": "bf16"},
}
# --quick (checks the script in seconds, measures nothing): 40 synthetic creatures, one rotation, one epoch per
# recipe, every UNet 16 channels wide at two levels and sampled in 2 steps; --throughput: 16 rows, the first
# variant and one more beside it (not a latent one: its autoencoder's fit would be most of the run).
QUICK = {"unet_width": 16, "unet_levels": 2, "sample_steps": 2}
QUICK_VARIANTS = ("first (batch 64)", "synthetic recipe, flash attention")


def throughput(data: PreparedData, image_size: int, rows: int, variants: dict, repeats: int = 1) -> list[dict]:
    """Each variant's samples/s, measured `repeats` times in turn (variant after variant, then again: this VM's
    speed drifts by more than some differences measured here, and in turn each drift touches every variant)."""
    runs = {name: [] for name in variants}
    for _ in range(repeats):
        for name, over in variants.items():
            over = dict(over)
            runtime = replace(RUNTIME, math_attention=over.pop("math_attention", True))  # the same texts and CLIP
            runs[name].append(timing(configs(over, image_size, 1), data, rows, runtime))
            print(f"{name}: {runs[name][-1]:.1f} samples/s", flush=True)
    return [{"variant": name, "samples_per_s": sum(r) / len(r), "runs": r} for name, r in runs.items()]


def families_figure(rows: list[dict], data: PreparedData, path: Path, k: int = 6) -> None:
    """README's picture: the same test texts, real images on top, then each row's model (a regressor's one image,
    a diffusion model's two samples), texts shortened beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from model.generate import generate, load_model
    from search.figures import first_records

    idx = first_records(data.test, k)
    k = len(idx)  # a test split may hold fewer records
    texts = [data.test.texts[i] for i in idx]
    lines = [("real", data.test.unit_images()[idx])]
    for r in rows:
        net, tokenizer = load_model(r["checkpoint"], device="cpu")
        draws = 2 if families.get(net.cfg.family).draws != 1 else 1  # a sampler: two samples
        for seed in range(draws):
            label = r["family"] + (f", sample {seed}" if draws > 1 else "")
            lines.append((label, generate(net, tokenizer, texts, seed=seed).float().numpy()))
    fig, axes = plt.subplots(len(lines), k, figsize=(1.6 * k, 1.7 * len(lines) + 0.6), squeeze=False)
    for i, (label, images) in enumerate(lines):
        for j in range(k):
            axes[i][j].imshow(((np.clip(images[j], -1, 1) + 1) / 2).transpose(1, 2, 0))
            axes[i][j].set_xticks([]), axes[i][j].set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=8)
    for j, text in enumerate(texts):
        axes[-1][j].set_xlabel(" ".join(text.split()[:7]) + " …", fontsize=6, wrap=True)
    fig.suptitle("the same test texts: real, the regressor (one image), the diffusion model (two samples)", fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def curves_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in (r for r in rows if r["family"] == name):
            ax.plot(r["curve"]["epoch"], r["curve"][r["selection"]], marker="o", ms=2, label=r["recipe"])
        ax.set_title(f"{name}: {families.get(name).selection} per epoch")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", default=None, help="dataset path (default: the embedded synthetic set)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment-rotations", type=int, default=2)
    p.add_argument("--throughput", action="store_true", help="measure the training step's speed per variant, then stop")
    p.add_argument("--rows", type=int, default=256, help="training rows per throughput measurement")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="--throughput's variants (default: all; "
                   "each is compared with the first one named)")
    p.add_argument("--repeats", type=int, default=1, help="--throughput: measure the variants this many times in turn")
    p.add_argument("--recipes", nargs="+", default=["first"], choices=list(RECIPES))
    p.add_argument("--minutes", type=float, default=5.0, help="training time per recipe")
    p.add_argument("--regressor", nargs="*", default=[], help="regressor recipes of bench/bench_recipes.py to add")
    p.add_argument("--regressor-epochs", type=int, default=6)
    p.add_argument("--out", default="results/diffusion", help="figures, checkpoints and diffusion.json go here")
    p.add_argument("--figure", default=None, help="also draw every model's images for the same test texts here; "
                   "with --checkpoint, the search's sample figure at the scale chosen on val")
    p.add_argument("--guidance", nargs="*", type=float, default=[],
                   help="after training, each recipe's final metrics at these guidance scales too (chosen on val)")
    p.add_argument("--checkpoint", default=None, help="sweep this trained diffusion checkpoint's --guidance scales on "
                   "--data (the data it trained on), print the table and stop: no training")
    p.add_argument("--probe", action="store_true", help="with --checkpoint on the synthetic set: the attributes of "
                   "the model's clean-image estimate from noised test images, per signal level, with and without the text")
    p.add_argument("--selection", nargs="+", default=[], metavar="CKPT", help="the per-epoch selection metric of "
                   "these trained checkpoints on --data's validation split, in fp32 and in bf16: values and seconds")
    p.add_argument("--eval-samples", type=int, default=None, help="samples per text of --checkpoint's sweep "
                   "(default: the trial's own eval_samples)")
    p.add_argument("--quick", action="store_true", help="checks the script in seconds, measures nothing: 40 synthetic "
                   "creatures, 1 rotation, 1 epoch per recipe, a 16-channel two-level UNet, 2 sampler steps")
    args = p.parse_args(argv)
    if args.checkpoint and not (args.guidance or args.probe):
        p.error("--checkpoint sweeps guidance scales (--guidance) or probes where the text decides (--probe)")
    for name in args.regressor:  # before the long runs
        if bench_recipes.recipe_configs(name, ModelConfig(), TrainConfig(epochs=args.regressor_epochs))[3]:
            p.error(f"--regressor {name} changes the data: run it with bench/bench_recipes.py")
    tiny = QUICK if args.quick else {}
    if args.quick:
        args.augment_rotations, args.minutes, args.rows = 1, 0.0, 16

    from data_pipeline.prepare import prepare_dataset

    data_cfg = DataConfig(image_size=args.image_size, augment_rotations=args.augment_rotations)
    data = quick_data(data_cfg) if args.quick else prepare_dataset(args.data, data_cfg, progress=False)
    head = (f"machine: {machine()}\ndata: {data.info['source']}, {args.image_size} px, {args.augment_rotations} "
            f"rotations, train/val/test rows {len(data.train)}/{len(data.val)}/{len(data.test)}")
    if args.throughput:
        names = args.variants or (QUICK_VARIANTS if args.quick else list(VARIANTS))
        variants = {k: {**VARIANTS[k], **tiny} for k in names}
        rows = throughput(data, args.image_size, args.rows, variants, args.repeats)
        print(f"\n{head}; {args.rows} training rows per measurement, {args.repeats} in turn\n\n"
              "| variant | samples/s (mean) | each | vs the first row |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['variant']} | {r['samples_per_s']:.1f} | {' / '.join(f'{x:.1f}' for x in r['runs'])} | "
                  f"{r['samples_per_s'] / rows[0]['samples_per_s']:.2f}x |")
        return rows

    if args.selection:
        rows = selection_precision(args.selection, data)
        print(f"\n{head}; the selection metric on the {len(data.val)} validation records, the faster of 2 turns\n\n"
              "| checkpoint | fp32 | bf16 | bf16 - fp32 | fp32 s | bf16 s | bf16 / fp32 time |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['checkpoint']} | {r['fp32']:.5f} | {r['bf16']:.5f} | {r['bf16'] - r['fp32']:+.5f} | "
                  f"{r['fp32_s']:.1f} | {r['bf16_s']:.1f} | {r['bf16_s'] / r['fp32_s']:.2f} |")
        return rows

    evaluation = quick_eval() if args.quick else {}
    if args.checkpoint:
        samples = {} if args.eval_samples is None else {"eval_samples": args.eval_samples}
        if args.probe:
            print(f"{head}\ncheckpoint: {args.checkpoint}; attribute accuracy of its clean-image estimate from the test "
                  "images noised to each signal level alpha-bar (its timestep)\n")
            rows = probe(args.checkpoint, data, eval_fit=evaluation.get("eval_fit", 1.0))
            print(probe_table(rows))
            return rows
        print(f"{head}\ncheckpoint: {args.checkpoint}; the scale is chosen on {selection_metric(data)}", flush=True)
        rows = guidance_sweep(args.checkpoint, data, args.guidance, {**evaluation, **samples})
        print(sweep_table(rows, data))
        if args.figure:
            sweep_figure(args.checkpoint, data, rows[chosen(rows, data)]["guidance"], Path(args.figure))
        return rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = headline_columns(data)
    rows = []
    for name in args.recipes:
        rows.append(run(name, {**RECIPES[name][1], **tiny}, data, args.image_size, args.minutes, out, evaluation))
        print(f"[{name}] done: " + ", ".join(f"{col} {cell(rows[-1], m)}" for col, m in columns)
              + f", test L1 {rows[-1][TEST_L1]:.4f}", flush=True)
    for name in args.regressor:
        *configs_, _ = bench_recipes.recipe_configs(
            name, ModelConfig(image_size=args.image_size),
            TrainConfig(epochs=args.regressor_epochs, clip_mode="off", **evaluation))
        rows.append(fit(f"regressor {name}", tuple(configs_), data, out))

    from model.eval.evaluator import EvalNets

    nets = EvalNets.load_or_fit(data, TrainConfig(**evaluation).eval_fit)  # the trials' own: cached beside the data
    base = baselines(data, nets)
    budget = "one epoch per recipe (--quick)" if args.quick else f"{args.minutes:g} min of training per diffusion recipe"
    print(f"\n{head}; {budget}\n{reference_line(base)}\n")
    print("| recipe | samples/s | epochs (steps) | train min | best selection (epoch) | "
          + " | ".join(col for col, _ in columns) + " | test L1 |")
    print("|---|---|---|---|---|" + "---|" * len(columns) + "---|")
    for r in rows:
        about = RECIPES[r["recipe"]][0] if r["recipe"] in RECIPES else r["recipe"]
        print(f"| {r['recipe']}: {about} | {r['samples_per_s']:.0f} | {r['epochs']} ({r['steps']}) | {r['train_s'] / 60:.1f} "
              f"| {r['selection']} {r['best']:.4f} ({r['best_epoch']}) | "
              + " | ".join(cell(r, name) for _, name in columns) + f" | {r[TEST_L1]:.4f} |")
    print("\nEach cell: mean [95% interval] over test records and samples (the evaluation's noise, not the training "
          "seed's); '-': not measured (a regressor's diversity: one image per text).")
    for r in rows:
        if args.guidance and guides(r["family"]):
            print(f"\n[{r['recipe']}] guidance sweep (the scale is chosen on {selection_metric(data)}):")
            r["guidance_sweep"] = guidance_sweep(r["checkpoint"], data, args.guidance, evaluation)
    from model.generate import load_model
    from search.figures import samples

    curves_figure(rows, out / "curves.png")
    for r in rows:
        net, tokenizer = load_model(r["checkpoint"], device="cpu")
        samples(net, tokenizer, data.test, out / f"samples_{r['recipe'].replace(' ', '_')}.png",
                f"{r['recipe']}: test, real (top) vs generated")
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        families_figure(rows, data, Path(args.figure))
    save_results(out / "diffusion.json", base, rows, args)
    return rows


if __name__ == "__main__":
    main()
