"""Generate images from text with a trained checkpoint.

    python -m model.generate --checkpoint results/<experiment>/best_checkpoint \\
        "A small green seed Pokémon. It is of grass type and poison type." --out bulba.png

Several prompts make one grid, in prompt order. As a library:

    net, tokenizer = load_model("results/exp/best_checkpoint")
    images = generate(net, tokenizer, ["..."])      # (B, 3, S, S) in [-1, 1]
    to_image(images).save("grid.png")
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from PIL import Image

from model import checkpoint
from model.config import ModelConfig
from model.network import TextToImage, load_text_encoder
from model.train import STATE_FORMAT, default_device, load_trainable


def load_model(path, device=None, member: int = 0):
    """Rebuild the network a checkpoint describes, with its best-validation weights. A fused trial's
    checkpoint holds several members: `member` picks one."""
    device = device or default_device()
    state = checkpoint.load(path)
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} was written by an older version of this code (format {state.get('format')}, "
                         f"expected {STATE_FORMAT}); retrain it")
    state = checkpoint.member(state, member)
    if state["best_model"][0] is None:
        raise ValueError(f"{path}: member {member} has no best-validation weights (it diverged before its first "
                         f"validation): {state.get('errors', [None])[0]}")
    cfg = ModelConfig(**state["model_config"])
    tokenizer, encoder, _ = load_text_encoder(cfg.text_encoder)
    net = TextToImage(cfg, encoder)
    load_trainable(net, state["best_model"][0])
    return net.to(device).eval(), tokenizer


@torch.no_grad()
def generate(net: TextToImage, tokenizer, prompts: list[str]) -> torch.Tensor:
    device = next(net.parameters()).device
    tok = tokenizer(prompts, padding=True, truncation=True, max_length=net.cfg.max_tokens, return_tensors="pt")
    return net.eval()(tok["input_ids"].to(device), tok["attention_mask"].to(device))[0]  # a one-member network


def to_image(images: torch.Tensor, ncol: int | None = None) -> Image.Image:
    """(B, 3, S, S) in [-1, 1] -> one RGB image, a grid of ncol columns (default: near-square)."""
    b, _, s, _ = images.shape
    ncol = ncol or math.ceil(math.sqrt(b))
    nrow = math.ceil(b / ncol)
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    grid = np.full((nrow * s, ncol * s, 3), 255, np.uint8)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        r, c = divmod(i, ncol)
        grid[r * s:(r + 1) * s, c * s:(c + 1) * s] = img
    return Image.fromarray(grid)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or the directory holding checkpoint.pt")
    parser.add_argument("prompts", nargs="+", help="one or more descriptions")
    parser.add_argument("--out", default="generated.png", help="PNG to write (a grid for several prompts)")
    parser.add_argument("--member", type=int, default=0, help="which member of a fused trial's checkpoint (default 0)")
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    args = parser.parse_args(argv)
    net, tokenizer = load_model(args.checkpoint, args.device, args.member)
    to_image(generate(net, tokenizer, args.prompts)).save(args.out)
    print(f"wrote {args.out} ({len(args.prompts)} image{'s' * (len(args.prompts) > 1)}, {net.cfg.image_size}px)")
    return args.out


if __name__ == "__main__":
    main()
