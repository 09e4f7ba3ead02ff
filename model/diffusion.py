"""The diffusion family: the thesis's text stack conditioning a diffusers UNet, trained as a DDPM.

    from model.diffusion import Denoiser, Diffusion
    net = Denoiser(model_cfg, text_dim=384, seeds=[0, 1])              # K = 2 members of one architecture
    process = Diffusion(train_cfg)
    loss = process.loss(net, x0, hidden, mask, draws)                  # (K,): each member's own loss
    images = process.sample(net, hidden, mask, null_hidden, null_mask, noise)   # (K, B, C, S, S)

Three things are kept apart, as lucidrains' denoising-diffusion-pytorch does: the network (`Denoiser`: the
text stack and the UNet), the process (`Diffusion`: diffusers' DDPMScheduler adds the training noise, a DDIM,
DPM-Solver++ or DDPM scheduler samples, classifier-free guidance mixes the two predictions) and the trainer
(model/train.py's one loop: members, AdamW, EMA weights, checkpoints). Nothing diffusers provides is written
here by hand: the UNet, the noise schedules, `add_noise`, `get_velocity`, the samplers and the SNR of min-SNR
weighting are diffusers'; EMA is diffusers' `EMAModel` in the loop.

The text stack is the regressor's (model/network.py): the frozen BERT-family encoder's hidden states, a
projection to d_model and the grid's transformer layers (n_heads, ff_dim, n_layers), so the thesis's grid
means the same for both families; its output is what the UNet's cross-attention reads.

Members: every weight has a leading member axis K, as in the regressor. The UNet's parameters are the K
members' own UNets stacked ((K, *shape) each, member k initialized from its seed alone), and member k's
forward is `torch.func.functional_call` of the one UNet module with slice k of each: its own weights, its own
batch. The members run one after another (diffusers' UNet has no member axis), so on a GPU a fused diffusion
trial saves no kernel launches: the search trains diffusion trials unfused and says why.

Randomness: the noise, the timesteps and the conditioning-dropout coin of a training step come from the
member's own `torch.Generator` (`draws`), seeded by (seed, epoch) in the loop, so a resumed run continues
bit for bit and a member sees exactly what its single run sees. Sampling starts from noise the caller gives.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from model.config import ModelConfig, TrainConfig
from model.network import EncoderLayer, LayerNorm, Linear

TIMESTEPS = 1000  # DDPM's training timesteps
NORM_GROUPS = 8  # GroupNorm groups in the UNet: its narrowest level is 32 channels wide, 4 per group
# The selection metric's fixed timesteps, spread over the schedule: every validation image is noised at each.
VAL_TIMESTEPS = (50, 150, 300, 500, 700, 900)
VAL_NOISE_SEED = 1234  # the same noise for every member, epoch and trial: a deterministic metric


def unet_config(cfg: ModelConfig, channels: int, size: int) -> dict:
    """UNet2DConditionModel's arguments for this ModelConfig on (channels, size, size) inputs (pixels, or an
    autoencoder's latents): levels of unet_width x (1, 2, 2, ...) channels, cross-attention at the
    `unet_attention` lowest levels and in the middle block."""
    widths = tuple(cfg.unet_width * (1 if i == 0 else 2) for i in range(cfg.unet_levels))
    attend = [i >= cfg.unet_levels - cfg.unet_attention for i in range(cfg.unet_levels)]  # down levels, top first
    return dict(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=cfg.unet_layers, norm_num_groups=NORM_GROUPS,
        cross_attention_dim=cfg.d_model, attention_head_dim=cfg.n_heads,  # diffusers' legacy name: the head count
        dropout=cfg.dropout_decoder,
        # pooled_text: the text's mean token, projected, joins the timestep embedding, which every ResNet block
        # of the UNet reads (as the regressor's pooled text reaches every decoder block).
        **({"class_embed_type": "projection", "projection_class_embeddings_input_dim": cfg.d_model}
           if cfg.pooled_text else {}))


class Denoiser(nn.Module):
    """K members: text stack -> UNet. forward((K, B, C, S, S) noisy images, (K, B) timesteps, text) -> prediction."""

    def __init__(self, cfg: ModelConfig, text_dim: int, seeds=(0,), channels: int = 3, size: int | None = None):
        super().__init__()
        from diffusers import UNet2DConditionModel

        k, d = len(seeds), cfg.d_model
        self.proj = Linear(k, text_dim, d)
        self.layers = nn.ModuleList([EncoderLayer(k, d, cfg.n_heads, cfg.ff_dim, cfg.dropout_encoder)
                                     for _ in range(cfg.n_layers)])
        self.norm = LayerNorm(k, d)  # the pre-norm stack's output is unnormalized: cross-attention reads it normed
        unets = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):  # diffusers initializes from the global RNG
                torch.manual_seed(int(seed) + 1)  # +1: the text stack's generator already uses the seed itself
                unets.append(UNet2DConditionModel(**unet_config(cfg, channels, size or cfg.image_size)))
        self.unet = unets[0]
        for name, _ in list(self.unet.named_parameters()):  # the members' UNets, stacked: (K, *shape) each
            owner, _, attr = name.rpartition(".")
            stacked = torch.stack([u.get_parameter(name).detach() for u in unets])
            self.unet.get_submodule(owner)._parameters[attr] = nn.Parameter(stacked)
        with torch.no_grad():
            for m, seed in enumerate(seeds):
                gen = torch.Generator().manual_seed(int(seed))
                for module in (self.proj, *self.layers, self.norm):
                    for sub in module.modules():
                        if hasattr(sub, "init_member"):
                            sub.init_member(m, gen)

    @property
    def members(self) -> int:
        return self.proj.weight.shape[0]

    def encode(self, hidden, attention_mask):
        """The text stack: hidden (K, B, T, H), mask (K, B, T) -> (K, B, T, D)."""
        k, b = hidden.shape[:2]
        key_bias = torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device)
        key_bias = key_bias.masked_fill_(attention_mask == 0, float("-inf")).reshape(k * b, 1, 1, -1)
        x = self.proj(hidden)  # (K, B, T, D)
        for layer in self.layers:
            x = layer(x, key_bias)
        return self.norm(x)

    def forward(self, sample, timesteps, hidden, attention_mask):
        """sample (K, B, C, S, S), timesteps (K, B), hidden (K, B, T, H), mask (K, B, T) -> (K, B, C, S, S)."""
        text = self.encode(hidden, attention_mask)  # (K, B, T, D)
        pooled = None
        if self.unet.config.class_embed_type == "projection":
            tokens = attention_mask.unsqueeze(-1).to(text.dtype)  # (K, B, T, 1)
            pooled = (text * tokens).sum(2) / tokens.sum(2).clamp(min=1)  # (K, B, D): the mean of the real tokens
        params = dict(self.unet.named_parameters())
        return torch.stack([
            functional_call(self.unet, {name: p[m] for name, p in params.items()}, (sample[m], timesteps[m]),
                            {"encoder_hidden_states": text[m], "encoder_attention_mask": attention_mask[m],
                             "class_labels": None if pooled is None else pooled[m]}).sample
            for m in range(sample.shape[0])])


def draws(generators: list[torch.Generator], batch: int, shape: tuple, cond_dropout: float, device):
    """One training step's randomness, each member's from its own generator, in a fixed order:
    (drop (K, B) bool: text replaced by the empty text, timesteps (K, B), noise (K, B, *shape))."""
    drop, t, noise = [], [], []
    for g in generators:
        drop.append(torch.rand(batch, generator=g, device=device) < cond_dropout)
        t.append(torch.randint(0, TIMESTEPS, (batch,), generator=g, device=device))
        noise.append(torch.randn((batch, *shape), generator=g, device=device))
    return torch.stack(drop), torch.stack(t), torch.stack(noise)


class Diffusion:
    """The process: training noise and targets, the loss, the validation metric, sampling (all diffusers')."""

    def __init__(self, cfg: TrainConfig, clip_sample: bool = True):
        from diffusers import DDPMScheduler

        self.cfg = cfg
        # clip_sample: the sampler clips its x0 estimate to [-1, 1], the pixels' range (not a latent space's).
        self.scheduler = DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule=cfg.noise_schedule,
                                       prediction_type=cfg.prediction_type, clip_sample=clip_sample)

    def _flat(self, fn, x0, noise, t):
        """Apply a scheduler method, which expects (N, C, S, S) and (N,), to (K, B, ...) tensors."""
        k, b = t.shape
        return fn(x0.flatten(0, 1), noise.flatten(0, 1), t.flatten()).view(k, b, *x0.shape[2:])

    def noisy(self, x0, noise, t):
        return self._flat(self.scheduler.add_noise, x0, noise, t)

    def target(self, x0, noise, t):
        if self.cfg.prediction_type == "epsilon":
            return noise
        if self.cfg.prediction_type == "v_prediction":
            return self._flat(self.scheduler.get_velocity, x0, noise, t)
        return x0

    def weights(self, t):
        """Min-SNR-gamma loss weights (K, B) for this prediction type; ones when min_snr_gamma is 0."""
        gamma = self.cfg.min_snr_gamma
        if not gamma:
            return torch.ones(t.shape, device=t.device)
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.scheduler, t)
        clipped = snr.clamp(max=gamma)
        if self.cfg.prediction_type == "epsilon":
            return clipped / snr
        if self.cfg.prediction_type == "v_prediction":
            return clipped / (snr + 1)
        return clipped

    def loss(self, net, x0, hidden, mask, t, noise):
        """Each member's weighted MSE to its target: x0 (K, B, C, S, S), the text, the step's draws -> (K,)."""
        pred = net(self.noisy(x0, noise, t), t, hidden, mask)
        mse = (pred - self.target(x0, noise, t)).pow(2).flatten(2).mean(2)  # (K, B)
        return (self.weights(t) * mse).mean(1)

    def epsilon(self, pred, x_t, t):
        """The noise a prediction implies (K, B, ...): the same quantity whatever the prediction type."""
        if self.cfg.prediction_type == "epsilon":
            return pred
        a = self.scheduler.alphas_cumprod.to(x_t.device)[t].view(*t.shape, 1, 1, 1)
        if self.cfg.prediction_type == "v_prediction":
            return a.sqrt() * pred + (1 - a).sqrt() * x_t
        return (x_t - a.sqrt() * pred) / (1 - a).sqrt()

    @torch.no_grad()
    def denoise_mse(self, net, x0, hidden, mask, noise):
        """The selection metric: each member's mean squared error of the implied noise, with every image noised
        at each of VAL_TIMESTEPS with the fixed `noise` (len(VAL_TIMESTEPS), N, C, S, S) -> (K,)."""
        k = net.members
        total = torch.zeros(k, device=x0.device)
        for j, step in enumerate(VAL_TIMESTEPS):
            x = x0.expand(k, *x0.shape)  # (K, N, C, S, S)
            eps = noise[j].expand_as(x)
            t = torch.full(x.shape[:2], step, device=x0.device, dtype=torch.long)
            x_t = self.noisy(x, eps, t)
            total += (self.epsilon(net(x_t, t, hidden, mask), x_t, t) - eps).pow(2).flatten(1).mean(1)
        return total / len(VAL_TIMESTEPS)

    def sampler(self, name: str | None = None):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[name or self.cfg.sampler]
        # trailing spacing: the first sampling step is the last training timestep, pure noise ("Common
        # Diffusion Noise Schedules and Sample Steps are Flawed", Lin et al. 2024); diffusers' default for
        # DDIM starts below it, which leaves a few-step sampler's images noisy.
        return cls.from_config(self.scheduler.config, timestep_spacing="trailing")

    @torch.no_grad()
    def sample(self, net, hidden, mask, null_hidden, null_mask, noise, steps=None, guidance=None, sampler=None,
               generator=None):
        """Images from noise (K, B, C, S, S) for the texts (K, B, T, H); classifier-free guidance mixes the
        predictions with the empty text's (null_*: (K, B, T, H)) at `guidance` (1: none). A stochastic sampler
        (ddpm) draws its per-step noise from `generator`."""
        steps = steps or self.cfg.sample_steps
        guidance = self.cfg.guidance_scale if guidance is None else guidance
        scheduler = self.sampler(sampler)
        scheduler.set_timesteps(steps, device=noise.device)
        k, b = noise.shape[:2]
        x = noise * scheduler.init_noise_sigma
        text, text_mask = (torch.cat([hidden, null_hidden], 1), torch.cat([mask, null_mask], 1)) if guidance != 1 \
            else (hidden, mask)
        for step in scheduler.timesteps:
            x_in = scheduler.scale_model_input(x.flatten(0, 1), step).view_as(x)
            x_in = torch.cat([x_in, x_in], 1) if guidance != 1 else x_in
            t = torch.full(x_in.shape[:2], int(step), device=x.device, dtype=torch.long)
            pred = net(x_in, t, text, text_mask)  # (K, B or 2B, C, S, S)
            if guidance != 1:
                cond, uncond = pred.split(b, dim=1)
                pred = uncond + guidance * (cond - uncond)
            x = scheduler.step(pred.flatten(0, 1), step, x.flatten(0, 1), generator=generator).prev_sample.view_as(x)
        return x
