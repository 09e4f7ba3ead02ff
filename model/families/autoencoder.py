"""A small autoencoder for latent diffusion (Stable Diffusion's first stage), fitted once per dataset and cached.

    from model.families.autoencoder import AutoencoderConfig, load_or_train
    ae = load_or_train(data, AutoencoderConfig(latent_channels=4), device="cpu")   # diffusers' AutoencoderKL, frozen
    z = ae.encode(images)     # (N, 3, S, S) in [-1, 1] -> (N, 4, S/4, S/4), scaled to unit variance
    x = ae.decode(z)          # back to (N, 3, S, S), clamped to [-1, 1]

`DiffusionConfig.latent_channels > 0` trains the diffusion family on these latents instead of pixels: a 32 px
image becomes an 8 x 8 x 4 latent, so each denoiser step sees 12x fewer values (and the UNet is shallower).
The autoencoder is diffusers' `AutoencoderKL` (three levels of 32/64/64 channels: a factor 4 down), fitted on
the prepared training split's images (rotated copies included) with an L1 reconstruction loss and Stable
Diffusion's small KL weight, Adam, a fixed number of steps from a fixed seed: the same weights on every run with
the same thread count (a search fits it once, in its driver, before the trials: the family's `fit_once`). Its
latents are the posterior's mode times `scale` (1 / their standard deviation on the training images, Stable
Diffusion's scaling factor, measured here rather than copied).

Cache: with `data.info["cache_dir"]` the fitted autoencoder is saved there (model/files.py `load_or_fit`), keyed
by the dataset fingerprint, the training ids, AutoencoderConfig and VERSION, so a search's trials load it instead
of refitting. Every training checkpoint holds its weights too, so `python -m model.generate` needs no cache.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

from model.files import dataset_key, load_or_fit

VERSION = 1  # bump whenever a code change changes what a fitted autoencoder computes


@dataclass(frozen=True)
class AutoencoderConfig:
    latent_channels: int = 4
    widths: tuple = (32, 64, 64)  # three levels: images shrink by 4 on each side
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6  # Stable Diffusion's: a latent space kept near N(0, 1) without blurring
    seed: int = 0

    @property
    def factor(self) -> int:
        """How much smaller the latents' side is than the images'."""
        return 2 ** (len(self.widths) - 1)


class Autoencoder(nn.Module):
    """AutoencoderKL with the latent scale: encode/decode between [-1, 1] images and unit-variance latents."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        from diffusers import AutoencoderKL

        self.cfg = cfg
        n = len(cfg.widths)
        with torch.random.fork_rng(devices=[]):  # diffusers initializes from the global RNG
            torch.manual_seed(cfg.seed)
            self.vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                                     up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.widths),
                                     latent_channels=cfg.latent_channels, norm_num_groups=8, layers_per_block=1)
        self.register_buffer("scale", torch.ones(()))
        self.requires_grad_(False)

    @property
    def factor(self) -> int:
        return self.cfg.factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.vae.encode(images[i:i + batch]).latent_dist.mode() for i in range(0, len(images), batch)]
                         ) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        z = latents / self.scale
        return torch.cat([self.vae.decode(z[i:i + batch]).sample for i in range(0, len(z), batch)]).clamp(-1, 1)


def fit(images: torch.Tensor, cfg: AutoencoderConfig = AutoencoderConfig(), log=None) -> Autoencoder:
    """Fit on (N, 3, S, S) images in [-1, 1], on the CPU: deterministic for a given thread count."""
    with torch.random.fork_rng(devices=[]):  # its own generator below; the caller's global RNG untouched
        ae = Autoencoder(cfg)
        vae = ae.vae.requires_grad_(True).train()
        opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed)
        x = images.float().cpu()
        for step in range(cfg.steps):
            batch = x[torch.randint(0, len(x), (cfg.batch_size,), generator=gen)]
            posterior = vae.encode(batch).latent_dist
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
            recon = vae.decode(z).sample
            loss = (recon - batch).abs().mean() + cfg.kl_weight * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log and (step + 1) % 500 == 0:
                log(f"step {step + 1}/{cfg.steps}: L1 {(recon - batch).abs().mean().item():.4f}")
        ae.requires_grad_(False)
        with torch.no_grad():
            ae.scale.fill_(1.0 / ae.encode(x).std().item())
        return ae


def reconstruction_l1(ae: Autoencoder, images: torch.Tensor) -> float:
    """Mean absolute error of decode(encode(images)): what the latent space loses, the floor of a latent model's L1."""
    return (ae.decode(ae.encode(images)) - images).abs().mean().item()


def state(ae: Autoencoder) -> dict:
    """What a checkpoint holds of it: its config and weights (plain data)."""
    return {"config": {**dataclasses.asdict(ae.cfg), "widths": list(ae.cfg.widths)},
            "weights": {k: v.detach().cpu().clone() for k, v in ae.state_dict().items()}}


def from_state(s: dict) -> Autoencoder:
    cfg = s["config"]
    ae = Autoencoder(AutoencoderConfig(**{**cfg, "widths": tuple(cfg["widths"])}))
    ae.load_state_dict(s["weights"])
    return ae.eval()


def config(section) -> AutoencoderConfig:
    """The autoencoder a diffusion config section asks for (latent_channels, autoencoder_steps)."""
    return AutoencoderConfig(latent_channels=section.latent_channels, steps=section.autoencoder_steps)


def load_or_train(data, cfg: AutoencoderConfig, device="cpu") -> Autoencoder:
    """The autoencoder for this prepared dataset on `device`: loaded from its cache, else fitted (and cached)."""
    key = dataset_key(data, "autoencoder", VERSION, cfg)

    def fit_on_data() -> Autoencoder:
        images = torch.as_tensor(data.train.unit_images())
        return fit(images, cfg, log=lambda line: print(f"model.autoencoder: {line}", file=sys.stderr, flush=True))

    return load_or_fit(data.info.get("cache_dir"), "autoencoder", key, fit_on_data, state, from_state).to(device)
