"""Generate images from text with a trained checkpoint.

    python -m model.generate --checkpoint results/<experiment>/best_checkpoint \\
        "A small green seed Pokémon. It is of grass type and poison type." --out bulba.png

Several prompts make one grid, in prompt order. Each image is enlarged to about 256 px
(`--size`, nearest-neighbour, so the model's pixels stay sharp squares); `--raw` writes the
model's own 32 or 64 px. A diffusion checkpoint samples: `--seed` picks the starting noise,
`--steps` and `--guidance` override the trial's sample_steps and guidance_scale, `--samples 2`
draws two images per prompt (one row per sample); a regressor checkpoint makes one image per
prompt in one forward, and says so when given those flags. As a library:

    net, tokenizer = load_model("results/exp/best_checkpoint")
    images = generate(net, tokenizer, ["..."], seed=0)      # (B, 3, S, S) in [-1, 1]; steps=, guidance= for a sampler
    save_grid(images, "grid.png", size=256)
    net, texts = load_model("results/exp/best_checkpoint", data=data)   # a dataset's own texts only: with a frozen
    images = generate(net, texts, data.test.texts[:8])      # encoder, its cached states (the encoder is not loaded)
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from model import checkpoint, families
from model.checkpoint import TrainingState
from model.config import ModelConfig, TrainConfig
from model.network import TextToImage, load_trainable
from model.text import TextTable, frozen_texts, load_text_encoder
from model.train import default_device


def read_checkpoint(path, member: int = 0) -> TrainingState:
    """One member's state (a fused trial's checkpoint holds several); ValueError naming the file when
    it is missing, not one of ours, or the member has no weights to generate with."""
    try:
        state = checkpoint.load(path)
        families.section(ModelConfig(**state.model_config), state.family_config)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(str(e)) from e
    except Exception as e:  # noqa: BLE001 — torch.load's many ways to reject a foreign file
        detail = " ".join(str(e).split())[:200]
        raise ValueError(f"{path} is not a checkpoint written by model.train or search.grid "
                         f"({type(e).__name__}: {detail})") from e
    try:
        state = state.member(member)
    except IndexError as e:
        raise ValueError(f"{path}: {e}") from e
    if state.best_model[0] is None:
        raise ValueError(f"{path}: member {member} has no best-validation weights (it diverged before its first "
                         f"validation): {state.errors[0]}")
    return state


def load_model(path, device=None, member: int = 0, data=None):
    """Rebuild the network a checkpoint describes, with its best-validation weights. A fused trial's
    checkpoint holds several members: `member` picks one. `data`: see `model_from_state`."""
    return model_from_state(read_checkpoint(path, member), device, data)


def model_from_state(state: TrainingState, device=None, data=None):
    """The network of a one-member state (`read_checkpoint`'s), with its best-validation weights (a diffusion
    model's EMA weights), and its tokenizer. It carries its trial's TrainConfig as `net.train_cfg`.

    `data`: the prepared dataset whose texts alone it will draw. A frozen encoder that no stage trained is then not
    loaded: the second value is the dataset's TextTable of its cached states (`frozen_texts`, as training read
    them), which `generate` takes in place of the tokenizer."""
    device = device or default_device()
    cfg = ModelConfig(**state.model_config)
    section = families.section(cfg, state.family_config)
    tuned = any(k.startswith("text_encoder.") for k in state.best_model[0])
    if data is not None and cfg.freeze_text_encoder and not tuned:
        words = frozen_texts(data, cfg, families.get(cfg.family).extra_texts)
        net = TextToImage(cfg, section, None, text_dim=words.dim)
        words = words.to(device)
    else:
        words, encoder, _ = load_text_encoder(cfg.text_encoder)
        net = TextToImage(cfg, section, encoder)
    load_trainable(net, state.best_model[0])
    net.train_cfg = TrainConfig(**state.train_configs[0])
    return net.to(device).eval(), words


@torch.no_grad()
def generate(net: TextToImage, tokenizer, prompts: list[str], seed: int = 0, **sampling) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1]: the family's images for the prompts, from seed `seed` (a sampler's starting noise;
    a one-forward family ignores it); `sampling` (steps, guidance) overrides a sampler's settings. `tokenizer`: the
    model's, or a TextTable that holds every prompt (`model_from_state` with data)."""
    device = next(net.parameters()).device
    family = families.get(net.cfg.family)
    if isinstance(tokenizer, TextTable):
        texts = tokenizer
        rows = torch.tensor([texts.index[p] for p in prompts], dtype=torch.long, device=device)
    else:
        texts = TextTable.tokenized(tokenizer, {"prompts": list(prompts)}, net.cfg.max_tokens, device,
                                    family.extra_texts)
        rows = texts.rows["prompts"]
    process = family(net.eval(), texts, getattr(net, "train_cfg", None) or TrainConfig(), net.section)
    return process.images(rows, seed, **sampling)[0]  # a one-member network


def grid_tensor(images: torch.Tensor, size: int | None = 256, ncol: int | None = None) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1] -> one (3, H, W) grid in [0, 1]: ncol columns (default near-square), white
    2 px gaps, each image enlarged by the whole factor that brings it to at least `size` px (None: as is)."""
    images = images.detach().float().cpu().clamp(-1, 1)
    s = images.shape[-1]
    factor = max(1, math.ceil(size / s)) if size else 1
    if factor > 1:
        images = F.interpolate(images, scale_factor=factor, mode="nearest")
    n, _, h, w = images.shape
    ncol = min(ncol or math.ceil(math.sqrt(n)), n)
    pad = 2 if n > 1 else 0
    grid = torch.ones(3, math.ceil(n / ncol) * (h + pad) + pad, ncol * (w + pad) + pad)
    for k, image in enumerate((images + 1) / 2):
        top, left = pad + (k // ncol) * (h + pad), pad + (k % ncol) * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    return grid


def save_grid(images: torch.Tensor, path, size: int | None = 256, ncol: int | None = None) -> torch.Tensor:
    """grid_tensor's grid written as an 8-bit PNG (rounded to the nearest level)."""
    grid = grid_tensor(images, size, ncol)
    Image.fromarray(grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(path)
    return grid


MAX_STEPS = 1000  # a sampler takes at most as many steps as the noise schedule has training timesteps


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Everything in the command that can be wrong before the checkpoint is read: argparse's `error:` line and exit
    status 2, before any model is loaded. Ranges: --samples, --size and --steps at least 1 (--steps at most the
    noise schedule's 1000 training timesteps), --member and --seed at least 0, --guidance a finite number >= 0; --out
    in an existing folder, named with an extension Pillow writes an RGB image as (.png, .jpg, .webp, .bmp, .tiff, ...);
    --device one torch knows and this machine has."""
    for flag, value, low, high in (("--samples", args.samples, 1, None), ("--size", args.size, 1, None),
                                   ("--steps", args.steps, 1, MAX_STEPS), ("--member", args.member, 0, None),
                                   ("--seed", args.seed, 0, 2**63 - 1)):
        if value is not None and (value < low or (high is not None and value > high)):
            parser.error(f"{flag} {value}: must be at least {low}" + (f" and at most {high}" if high else ""))
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        parser.error(f"--guidance {args.guidance}: must be a finite number >= 0 (1 = no guidance)")
    if not all(p.strip() for p in args.prompts):
        parser.error("a prompt is empty: each prompt is the description of one image")
    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        parser.error(f"--out {out}: " + ("that is a folder; name the image file in it" if out.is_dir() else
                                         f"the folder {out.parent} does not exist"))
    fmt = Image.registered_extensions().get(out.suffix.lower())
    try:
        Image.new("RGB", (1, 1)).save(io.BytesIO(), fmt)  # what it must write: an 8-bit RGB grid
    except (KeyError, ValueError, OSError, TypeError):
        parser.error(f"--out {out}: {'no extension' if not out.suffix else f'Pillow cannot write an RGB image as {out.suffix!r}'}"
                     "; name it .png (or .jpg, .webp, .bmp, .tiff)")
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device {args.device!r}: not a device torch knows (cpu, cuda, cuda:1, mps, ...)")
        backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
        if device.type != "cpu" and not (backend is not None and backend.is_available() and
                                         (device.index is None or device.index < backend.device_count())):
            parser.error(f"--device {args.device}: this machine has no such device"
                         + (f" (torch sees {torch.cuda.device_count()} CUDA device(s))" if device.type == "cuda" else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or the directory holding checkpoint.pt")
    parser.add_argument("prompts", nargs="+", help="one or more descriptions")
    parser.add_argument("--out", default="generated.png",
                        help="image to write, in an existing folder: .png (default generated.png), or any format Pillow "
                             "writes RGB as (.jpg, .webp, .bmp, .tiff); a grid for several prompts")
    parser.add_argument("--member", type=int, default=0,
                        help="which member of a fused trial's checkpoint, from 0 (default 0)")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--size", type=int, default=256,
                      help="enlarge each image (nearest-neighbour) to at least this many px, >= 1 (default 256)")
    view.add_argument("--raw", action="store_true", help="write the model's own resolution (32 or 64 px)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N, mps: one this machine has (default: cuda when present, else cpu)")
    sampling = parser.add_argument_group("a sampling family's checkpoints (diffusion); a one-forward family (the "
                                         "regressor) makes one image per prompt")
    sampling.add_argument("--seed", type=int, default=0, help="starting noise, >= 0 (default 0)")
    sampling.add_argument("--steps", type=int, default=None,
                          help="sampler steps, 1 to 1000 (default: the trial's sample_steps)")
    sampling.add_argument("--guidance", type=float, default=None,
                          help="classifier-free guidance scale, >= 0 (default: the trial's guidance_scale; 1 = none)")
    sampling.add_argument("--samples", type=int, default=1,
                          help="images per prompt, >= 1, one grid row each (default 1)")
    args = parser.parse_args(argv)
    check_args(parser, args)
    try:
        state = read_checkpoint(args.checkpoint, args.member)  # a wrong --checkpoint is a user error: one line
    except ValueError as e:
        print(f"error: --checkpoint: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    net, tokenizer = model_from_state(state, args.device)
    family = families.get(net.cfg.family)
    given = [f"--{name}" for name, default in (("seed", 0), ("steps", None), ("guidance", None), ("samples", 1))
             if getattr(args, name) != default]
    if family.draws == 1 and given:
        print(f"note: {' '.join(given)} ignored: a {family.name} checkpoint makes one image per prompt in one forward",
              file=sys.stderr, flush=True)
    draws = args.samples if family.draws != 1 else 1
    sampling = {"steps": args.steps, "guidance": args.guidance} if family.draws != 1 else {}
    images = torch.cat([generate(net, tokenizer, args.prompts, args.seed + i, **sampling) for i in range(draws)])
    grid = save_grid(images, args.out, size=None if args.raw else args.size, ncol=len(args.prompts) if draws > 1 else None)
    n = len(images)
    how = f", {family.describe(net.section, **sampling)}, seed {args.seed}" if family.draws != 1 else ""
    print(f"wrote {args.out} ({n} image{'s' * (n > 1)}, {net.cfg.image_size} px each, grid "
          f"{grid.shape[2]}×{grid.shape[1]} px{how})")
    return args.out


if __name__ == "__main__":
    main()
