"""Model size and training speed: parameters of every grid architecture, and samples/s of
the real training loop at batch 10, 64x64, with the text encoder frozen vs fine-tuned.

    python bench/bench_model.py [--samples 200] [--epochs 2]
    python bench/bench_model.py --quick               # seconds: checks the script (tests/test_benches.py)

Speeds come from `model.train.train` itself (its `samples_per_s`, training steps only),
on generated data of the real shape; absolute numbers hold for the machine printed above
the table only, the frozen/unfrozen ratio is what carries over.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine  # noqa: E402

from model import families  # noqa: E402
from model.config import SAMPLES_PER_S, ModelConfig, TrainConfig  # noqa: E402
from model.network import TextToImage  # noqa: E402
from model.text import load_text_encoder  # noqa: E402
from model.train import Runtime, train  # noqa: E402
from test_model import tiny_data  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="training samples per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="the fastest epoch is reported (the first warms up)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="10 samples, 1 epoch, 32 px: checks the script, "
                        "measures nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.epochs, args.image_size = 10, 1, 32
    size = args.image_size
    print(f"machine: {machine()}\n")

    _, encoder, _ = load_text_encoder()
    print("| n_heads | ff_dim | n_layers | trainable params (generator) | with the text encoder (all-MiniLM-L6-v2) |")
    print("|---|---|---|---|---|")
    text_params = sum(p.numel() for p in encoder.parameters())
    sizes = []
    for h, ff, n in itertools.product((2, 4), (512, 1024), (2, 3)):
        cfg = ModelConfig(n_heads=h, ff_dim=ff, n_layers=n)
        net = TextToImage(cfg, families.section(cfg), encoder)
        gen = sum(p.numel() for p in net.generator.parameters())
        sizes.append({"n_heads": h, "ff_dim": ff, "n_layers": n, "generator": gen, "with_encoder": gen + text_params})
        print(f"| {h} | {ff} | {n} | {gen:,} | {gen + text_params:,} |")

    data = tiny_data(n_train=args.samples, size=size)
    print(f"\n| text encoder | samples/s (batch 10, {size}x{size}, {args.samples} samples, fastest of {args.epochs} "
          "epochs) |")
    print("|---|---|")
    speeds = {}
    for frozen in (True, False):
        best = []
        train(ModelConfig(image_size=size, freeze_text_encoder=frozen), TrainConfig(epochs=args.epochs, clip_mode="off"),
              data,
              report=lambda m, s: best.append(m[SAMPLES_PER_S]), runtime=Runtime(device="cpu"))
        speeds[frozen] = max(best)
        print(f"| {'frozen (hidden states cached)' if frozen else 'fine-tuned (encoder in every step)'} | {speeds[frozen]:.1f} |")
    print(f"\nfrozen / fine-tuned speed ratio: {speeds[True] / speeds[False]:.2f}x")
    return {"sizes": sizes, "frozen_samples_per_s": speeds[True], "fine_tuned_samples_per_s": speeds[False],
            "ratio": speeds[True] / speeds[False]}


if __name__ == "__main__":
    main()
