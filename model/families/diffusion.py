"""The diffusion family: the thesis's text stack conditioning a diffusers UNet, trained as a DDPM.

    from model.families.diffusion import Denoiser, Diffusion, DiffusionConfig, Process
    section = DiffusionConfig(unet_width=32, prediction_type="v_prediction")
    net = Denoiser(model_cfg, section, text_dim=384, seeds=[0, 1])    # K = 2 members of one architecture
    process = Process(section)
    objective, loss = process.loss(net, x0, hidden, mask, t, noise)   # (K,) each: what it minimises, its loss
    images = process.sample(net, (hidden, mask), (null_hidden, null_mask), noise)   # (K, B, C, S, S)

Three things are kept apart, as lucidrains' denoising-diffusion-pytorch does: the network (`Denoiser`: the
text stack and the UNet), the process (`Process`: diffusers' DDPMScheduler adds the training noise, a DDIM,
DPM-Solver++ or DDPM scheduler samples, classifier-free guidance mixes the two predictions) and the trainer
(model/train.py's one loop: members, AdamW, EMA weights, checkpoints). `Diffusion` is the family
(model/families/__init__.py) that wraps them for the loop. Nothing diffusers provides is written here by hand:
the UNet, the noise schedules, `add_noise`, `get_velocity`, the samplers and the SNR of min-SNR weighting are
diffusers'; EMA is diffusers' `EMAModel` in the loop.

The text stack is every family's (model/text.py TextStack, with a final LayerNorm here): the frozen
BERT-family encoder's hidden states, a projection to d_model and the grid's transformer layers (n_heads,
ff_dim, n_layers), so the thesis's grid means the same for both families; its output is what the UNet's
cross-attention reads. `latent_channels > 0` denoises a small autoencoder's latents (model/families/autoencoder.py)
instead of pixels.

Members: every weight has a leading member axis K, as in the regressor. The UNet's parameters are the K
members' own UNets stacked ((K, *shape) each, member k initialized from its seed alone), and member k's
forward is `torch.func.functional_call` of the one UNet module with slice k of each: its own weights, its own
batch. The members run one after another (diffusers' UNet has no member axis), so on a GPU a fused diffusion
trial saves no kernel launches: the search trains diffusion trials unfused and says why (`Diffusion.fuses`).

Randomness: the noise, the timesteps and the conditioning-dropout coin of a training step come from the
member's own `torch.Generator` (`draws`), seeded by (seed, epoch) in the loop, so a resumed run continues
bit for bit and a member sees exactly what its single run sees. Sampling starts from noise the caller gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from data_pipeline.config import at_least, check_ranges, fraction, ranged
from model.augment import augment
from model.config import BEST_VAL_X0, EVAL_BATCH, TRAIN_LOSS, VAL_X0, ModelConfig, TrainConfig
from model.families import autoencoder
from model.members import init_members
from model.text import TextStack

TIMESTEPS = 1000  # DDPM's training timesteps
NORM_GROUPS = 8  # GroupNorm groups in the UNet: its narrowest level is 32 channels wide, 4 per group
# The selection metric's fixed noise levels, as the share of the signal's variance left (alpha-bar): every validation
# image is noised to each, at the timestep of the trial's own schedule closest to it, so trials that differ in noise
# schedule, prediction type or pixel vs latent space are compared on one quantity (the clean-image error in pixels).
# The levels reach down to where the sampler starts (trailing spacing: its first steps of 25 sit at alpha-bar 0, 0.004,
# 0.016, 0.035 on the cosine schedule): there the estimate comes from the text alone, and the layout (shape, size) is
# decided. Without 0.01 and 0.002 the metric ranked a model that drew no stated shape above one that did
# (results/BENCHMARKS.md, "min-SNR weighting starved the text").
VAL_SIGNAL = (0.95, 0.8, 0.6, 0.4, 0.2, 0.05, 0.01, 0.002)
VAL_NOISE_SEED = 1234  # the same noise for every member, epoch and trial: a deterministic metric
SAMPLE_SEED = 2024  # generated evaluation images start from this seed's noise: the same for every member and trial
SAMPLERS = ("ddim", "dpm", "ddpm")
# loss_weighting "learned": the log loss is learned per band of LOSS_BANDS equal timestep ranges, as LOSS_GAIN x a
# weight that starts at 0 (loss 1): the gain lets it follow the loss down a few decades within the first epochs at
# the members' learning rate (AdamW moves a weight about lr per step).
LOSS_BANDS, LOSS_GAIN = 20, 30.0


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion family's own fields, in diffusers' own names where it has them.

    The denoiser: a diffusers UNet2DConditionModel whose level i has unet_width * (1, 2, 2, 2, ...)[i] channels
    and unet_layers resnet layers, with cross-attention to the text stack's output at the unet_attention lowest
    levels (0: only in the middle block); n_heads (ModelConfig) sets its heads. latent_channels 0: it denoises
    pixels; C > 0: the C-channel latents of a small autoencoder (1/4 the side, Stable Diffusion's first stage),
    fitted once per dataset in autoencoder_steps Adam steps.

    The process: training noise from a DDPMScheduler with this beta schedule and prediction type, min-SNR-gamma
    loss weighting (0: off), the text replaced by the empty text with probability cond_dropout (so that
    classifier-free guidance has an unconditional model), EMA weights for evaluation and checkpoints (decay
    ema_decay; 0: off), and images sampled with sampler ("ddim", "dpm" for DPM-Solver++, or "ddpm") in
    sample_steps steps at guidance_scale (1: no guidance). The defaults are the best recipe measured on 2 CPU cores
    (bench/bench_diffusion.py "pixel-fast", results/BENCHMARKS.md): v-prediction and the cosine schedule; then, on
    the synthetic set, where the attributes a text states can be read (results/BENCHMARKS.md, issue 25): min-SNR-5
    with v-prediction's weight corrected (`Process.weights`: the old one starved the steps near pure noise, where
    only the text can say what to draw, and the model drew no stated shape), guidance 1.5 (at 3 every creature
    fills the frame, which hides the stated size and worsens KID) and one cross-attention-only level above the
    attention one (`unet_cross_levels`: the pattern and the feature follow the text).
    """
    unet_width: int = at_least(32, NORM_GROUPS)  # a multiple of NORM_GROUPS
    unet_levels: int = ranged(3, 2, 6)
    unet_layers: int = at_least(1, 1)
    unet_attention: int = at_least(1, 0)  # at most unet_levels
    # The next unet_cross_levels levels above those read the text through cross-attention alone (`TextAttention`:
    # GroupNorm, attention to the text stack's tokens, added back; no self-attention, no feed-forward): the words
    # reach a finer level (16 x 16 at the default three levels on 32 px, where a creature's pattern and feature are
    # drawn). On the synthetic set it draws every stated attribute right 0.22-0.29 of the time where the same 30
    # epochs without it draw 0.08, at 0.77x the step's speed in the bench, where a full transformer level there costs
    # 0.54x (results/BENCHMARKS.md, "The text at 16 x 16 by cross-attention alone"). Unmeasured on the Pokédex.
    unet_cross_levels: int = at_least(1, 0)  # unet_attention + unet_cross_levels at most unet_levels
    # How a ResNet block reads the timestep embedding (and the pooled text, which joins it): False adds it to the
    # features (diffusers' "default"); True scales and shifts the normalized features by it (ADM's adaptive GroupNorm,
    # Dhariwal & Nichol 2021, diffusers' "scale_shift"): the text reaches every level, the 32 x 32 one too, as a
    # gain, not only as an offset.
    unet_scale_shift: bool = False
    unet_dropout: float = fraction(0.0)  # in the UNet's ResNet blocks (the regressor's decoder has its own, dropout_decoder)
    latent_channels: int = at_least(0, 0)
    autoencoder_steps: int = at_least(1500, 1)
    prediction_type: str = "v_prediction"  # "epsilon", "v_prediction" or "sample"
    noise_schedule: str = "squaredcos_cap_v2"  # "linear", "scaled_linear" or "squaredcos_cap_v2"
    min_snr_gamma: float = at_least(5.0, 0)  # 0: off
    # "min-snr": the loss is min-SNR-gamma's weighted MSE. "learned": EDM2's uncertainty weighting on top (Karras et
    # al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 5): each member learns the
    # log of its loss per band of timesteps, u, and minimises loss / exp(u) + u, which holds every band's share of the
    # gradient equal however large its loss (the steps near pure noise, whose loss is the largest, no longer drown
    # the small steps that draw the details).
    loss_weighting: str = "min-snr"
    cond_dropout: float = fraction(0.1)
    ema_decay: float = fraction(0.999)  # 0: off
    sampler: str = "ddim"
    sample_steps: int = ranged(25, 1, TIMESTEPS)
    guidance_scale: float = at_least(1.5, 0)  # 1: none
    # The data pipeline's rotated copies of a training image carry the same text: a generative model would learn
    # creatures upside down that no text asks for. Off: each record's upright image only (rotations are not
    # augmentation for a model that draws what the text says); on: every copy, as the regressor trains.
    rotated_copies: bool = False

    def __post_init__(self):
        check_ranges(self)
        choices = {"prediction_type": ("epsilon", "v_prediction", "sample"), "sampler": SAMPLERS,
                   "noise_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
                   "loss_weighting": ("min-snr", "learned")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.unet_attention + self.unet_cross_levels > self.unet_levels or self.unet_width % NORM_GROUPS:
            raise ValueError(f"unet_attention + unet_cross_levels must be at most unet_levels and unet_width a multiple "
                             f"of {NORM_GROUPS}, got {self.unet_attention} + {self.unet_cross_levels}, "
                             f"{self.unet_levels} and {self.unet_width}")


# ---------------------------------------------------------------------------- the network


def unet_config(cfg: ModelConfig, section: DiffusionConfig, channels: int, size: int) -> dict:
    """UNet2DConditionModel's arguments for this ModelConfig on (channels, size, size) inputs (pixels, or an
    autoencoder's latents): levels of unet_width x (1, 2, 2, ...) channels, cross-attention at the
    `unet_attention` lowest levels and in the middle block, and at the `unet_cross_levels` above them (their
    transformer blocks are swapped for `TextAttention` in `unet`)."""
    widths = tuple(section.unet_width * (1 if i == 0 else 2) for i in range(section.unet_levels))
    attend = [i >= cross_from(section) for i in range(section.unet_levels)]  # down levels, top first
    return dict(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)),
        mid_block_type="UNetMidBlock2DCrossAttn", layers_per_block=section.unet_layers, norm_num_groups=NORM_GROUPS,
        cross_attention_dim=cfg.d_model, attention_head_dim=cfg.n_heads,  # diffusers' legacy name: the head count
        dropout=section.unet_dropout, resnet_time_scale_shift="scale_shift" if section.unet_scale_shift else "default",
        # pooled_text: the text's mean token, projected, joins the timestep embedding, which every ResNet block
        # of the UNet reads (as the regressor's pooled text reaches every decoder block).
        **({"class_embed_type": "projection", "projection_class_embeddings_input_dim": cfg.d_model}
           if cfg.pooled_text else {}))


def cross_from(section: DiffusionConfig) -> int:
    """The first (finest) level whose blocks read the text: the cross-attention-only levels, then the full ones."""
    return section.unet_levels - section.unet_attention - section.unet_cross_levels


class TextAttention(nn.Module):
    """A level's text, read through cross-attention alone: x + attention(GroupNorm(x) -> the text's tokens), in
    place of a diffusers transformer block (its self-attention, feed-forward and projections are most of a level's
    cost at 16 x 16 on a CPU). Called as the UNet's blocks call theirs; diffusers' `Attention` does the attending
    (and takes the UNet's text mask, already a bias)."""

    def __init__(self, channels: int, text_dim: int, heads: int):
        super().__init__()
        from diffusers.models.attention_processor import Attention

        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)
        self.attn = Attention(channels, cross_attention_dim=text_dim, heads=heads, dim_head=channels // heads)

    def forward(self, x, encoder_hidden_states=None, encoder_attention_mask=None, return_dict=False, **_):
        b, c, h, w = x.shape
        y = self.attn(self.norm(x).flatten(2).transpose(1, 2), encoder_hidden_states=encoder_hidden_states,
                      attention_mask=encoder_attention_mask)
        return (x + y.transpose(1, 2).reshape(b, c, h, w),)


def unet(cfg: ModelConfig, section: DiffusionConfig, channels: int, size: int) -> nn.Module:
    """A diffusers UNet2DConditionModel (`unet_config`), its `unet_cross_levels` levels' blocks reading the text
    through `TextAttention`."""
    from diffusers import UNet2DConditionModel

    net = UNet2DConditionModel(**unet_config(cfg, section, channels, size))
    levels = section.unet_levels
    for i in range(cross_from(section), levels - section.unet_attention):
        for block in (net.down_blocks[i], net.up_blocks[levels - 1 - i]):
            block.attentions = nn.ModuleList(TextAttention(a.in_channels, cfg.d_model, cfg.n_heads)
                                             for a in block.attentions)
    return net


class Denoiser(nn.Module):
    """K members: text stack -> UNet. forward((K, B, C, S, S) noisy images, (K, B) timesteps, text) -> prediction."""

    def __init__(self, cfg: ModelConfig, section: DiffusionConfig, text_dim: int, seeds=(0,), channels: int = 3,
                 size: int | None = None):
        super().__init__()
        self.text = TextStack(len(seeds), cfg, text_dim, norm=True)
        unets = []
        for seed in seeds:
            with torch.random.fork_rng(devices=[]):  # diffusers initializes from the global RNG
                torch.manual_seed(int(seed) + 1)  # +1: the text stack's generator already uses the seed itself
                unets.append(unet(cfg, section, channels, size or cfg.image_size))
        self.unet = unets[0]
        for name, _ in list(self.unet.named_parameters()):  # the members' UNets, stacked: (K, *shape) each
            owner, _, attr = name.rpartition(".")
            stacked = torch.stack([u.get_parameter(name).detach() for u in unets])
            self.unet.get_submodule(owner)._parameters[attr] = nn.Parameter(stacked)
        init_members(self.text, seeds)
        if section.loss_weighting == "learned":  # (K, bands): each member's log loss per band, over LOSS_GAIN
            self.log_loss = nn.Parameter(torch.zeros(len(seeds), LOSS_BANDS))

    @property
    def members(self) -> int:
        return self.text.proj.weight.shape[0]

    def forward(self, sample, timesteps, hidden, attention_mask):
        """sample (K, B, C, S, S), timesteps (K, B), hidden (K, B, T, H), mask (K, B, T) -> (K, B, C, S, S)."""
        text, _, pooled = self.text(hidden, attention_mask)  # (K, B, T, D), pooled (K, B, D) with pooled_text
        params = dict(self.unet.named_parameters())
        return torch.stack([
            functional_call(self.unet, {name: p[m] for name, p in params.items()}, (sample[m], timesteps[m]),
                            {"encoder_hidden_states": text[m], "encoder_attention_mask": attention_mask[m],
                             "class_labels": None if pooled is None else pooled[m]}).sample
            for m in range(sample.shape[0])])


# ---------------------------------------------------------------------------- the process


def draws(generators: list[torch.Generator], batch: int, shape: tuple, cond_dropout: float, device):
    """One training step's randomness, each member's from its own generator, in a fixed order:
    (drop (K, B) bool: text replaced by the empty text, timesteps (K, B), noise (K, B, *shape))."""
    drop, t, noise = [], [], []
    for g in generators:
        drop.append(torch.rand(batch, generator=g, device=device) < cond_dropout)
        t.append(torch.randint(0, TIMESTEPS, (batch,), generator=g, device=device))
        noise.append(torch.randn((batch, *shape), generator=g, device=device))
    return torch.stack(drop), torch.stack(t), torch.stack(noise)


class Process:
    """The process: training noise and targets, the loss, the validation metric, sampling (all diffusers')."""

    def __init__(self, cfg: DiffusionConfig, clip_sample: bool = True):
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
            # The v-loss is (SNR + 1) x the clean-image loss, so cap (SNR + 1), not SNR: min(SNR, gamma) / (SNR + 1),
            # diffusers' examples' formula, weights the steps near pure noise by ~SNR (2e-9 at t = 999), where only the
            # text can say what to draw, and the model learned no stated shape (results/BENCHMARKS.md; the fix of
            # huggingface/diffusers#5238 and kohya_ss#1555). This gives them weight 1 and caps the clean end at gamma.
            return (snr + 1).clamp(max=gamma) / (snr + 1)
        return clipped

    def loss(self, net, x0, hidden, mask, t, noise):
        """Each member's weighted MSE to its target and what it minimises: x0 (K, B, C, S, S), the text, the step's
        draws -> (objective (K,), loss (K,)). The objective is the loss, or with loss_weighting "learned" the loss
        over each band's learned loss, plus its log (DiffusionConfig)."""
        pred = net(self.noisy(x0, noise, t), t, hidden, mask)
        loss = self.weights(t) * (pred - self.target(x0, noise, t)).pow(2).flatten(2).mean(2)  # (K, B)
        if self.cfg.loss_weighting == "min-snr":
            return (mean := loss.mean(1)), mean
        u = LOSS_GAIN * net.log_loss.gather(1, t * LOSS_BANDS // TIMESTEPS)  # (K, B): each row's band's log loss
        return (loss / u.exp() + u).mean(1), loss.detach().mean(1)

    def clean(self, pred, x_t, t):
        """The clean image a prediction implies (K, B, ...), whatever the prediction type."""
        if self.cfg.prediction_type == "sample":
            return pred
        a = self.scheduler.alphas_cumprod.to(x_t.device)[t].view(*t.shape, 1, 1, 1)
        if self.cfg.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * pred
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()

    def val_timesteps(self) -> list[int]:
        """This schedule's timestep closest to each of VAL_SIGNAL's noise levels."""
        alphas = self.scheduler.alphas_cumprod
        return [int((alphas - level).abs().argmin()) for level in VAL_SIGNAL]

    @torch.no_grad()
    def x0_error(self, net, x0, text, noise, pixels, decode=None):
        """The selection metric: each member's mean squared error, in pixels, of the clean image it implies from
        x0 (N, C, S, S; pixels or latents) noised to each of VAL_SIGNAL's levels with the fixed `noise`
        (len(VAL_SIGNAL), N, C, S, S), against the real images `pixels` (N, 3, S', S'); `decode` maps latents to
        pixels. text = (hidden (K, N, T, H), mask (K, N, T)) -> (K,)."""
        k = net.members
        total = torch.zeros(k, device=x0.device)
        for j, step in enumerate(self.val_timesteps()):
            x = x0.expand(k, *x0.shape)  # (K, N, C, S, S)
            t = torch.full(x.shape[:2], step, device=x0.device, dtype=torch.long)
            x_t = self.noisy(x, noise[j].expand_as(x), t)
            estimate = self.clean(net(x_t, t, *text), x_t, t)
            if decode is not None:
                estimate = decode(estimate.flatten(0, 1)).view(k, *pixels.shape)
            total += (estimate.clamp(-1, 1) - pixels).pow(2).flatten(1).mean(1)
        return total / len(VAL_SIGNAL)

    def sampler(self):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        cls = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}[self.cfg.sampler]
        # trailing spacing: the first sampling step is the last training timestep, pure noise ("Common
        # Diffusion Noise Schedules and Sample Steps are Flawed", Lin et al. 2024); diffusers' default for
        # DDIM starts below it, which leaves a few-step sampler's images noisy.
        return cls.from_config(self.scheduler.config, timestep_spacing="trailing")

    @torch.no_grad()
    def sample(self, net, text, null, noise, steps=None, guidance=None, generator=None):
        """Images from noise (K, B, C, S, S) for the texts, text = (hidden (K, B, T, H), mask (K, B, T));
        classifier-free guidance mixes the predictions with the empty text's (`null`, the same shapes) at
        `guidance` (1: none). A stochastic sampler (ddpm) draws its per-step noise from `generator`."""
        (hidden, mask), (null_hidden, null_mask) = text, null
        steps = steps or self.cfg.sample_steps
        guidance = self.cfg.guidance_scale if guidance is None else guidance
        scheduler = self.sampler()
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


# ---------------------------------------------------------------------------- the family


class Diffusion:
    """The family (model/families/__init__.py): a DDPM conditioned on the text stack, over pixels or a small
    autoencoder's latents (`latent_channels`), sampled with a few-step sampler; selected on the validation
    clean-image error at fixed noise levels (`Process.x0_error`); EMA weights for evaluation and checkpoints.
    Trains on each record's upright image (`rotated_copies`), flipped and shifted (augment_flip, augment_shift)
    with each member's own stream."""

    name = "diffusion"
    Config = DiffusionConfig
    train_metric, selection, best = TRAIN_LOSS, VAL_X0, BEST_VAL_X0
    draws = None  # a sampler: as many images per text as asked
    fuses = ("the diffusion family's members would run one after another (diffusers' UNet has no member axis), "
             "so fusing saves no kernel launches")
    stages = False
    extra_texts = ("",)  # the empty text: the unconditional model of classifier-free guidance
    sampling_only = ("sampler", "sample_steps", "guidance_scale")  # the weights train the same whatever they are
    # Checkpoints written before unet_cross_levels existed (2026-12-08) have no cross-attention-only level.
    earlier = {"unet_cross_levels": 0}
    # The shared fields it was measured best with (bench/bench_diffusion.py "pixel-fast", results/BENCHMARKS.md),
    # where the dataclass defaults are the regressor's thesis recipe: a larger batch at a higher learning rate
    # with a warm-up, bf16, the pooled text, and no dropout (a UNet at this size does not overfit in these runs).
    recipe = {"batch_size": 64, "lr": (1e-3, 3e-4), "warmup_steps": 100, "precision": "bf16", "pooled_text": True,
              "dropout_encoder": 0.0}

    @staticmethod
    def check(model_cfg: ModelConfig, section: DiffusionConfig) -> None:
        # A UNet on pixels halves any of these sizes, and 16 px too (a size for quick checks: tests/test_diffusion.py
        # learns the synthetic set at 16 px); the autoencoder's latents are a quarter of the side.
        sizes = (32, 64, 128) if section.latent_channels else (16, 32, 64, 128)
        if model_cfg.image_size not in sizes:
            raise ValueError(f"image_size must be one of {sizes} for the diffusion family"
                             f"{' in latent space' if section.latent_channels else ''}, got {model_cfg.image_size}")

    @staticmethod
    def network(model_cfg: ModelConfig, section: DiffusionConfig, text_dim: int, seeds) -> Denoiser:
        factor = autoencoder.config(section).factor if section.latent_channels else 1
        return Denoiser(model_cfg, section, text_dim, seeds, channels=section.latent_channels or 3,
                        size=model_cfg.image_size // factor)

    @staticmethod
    def frozen(model_cfg, section: DiffusionConfig):
        """Latent diffusion's first stage, shared by every member (its weights come from fit_once or a checkpoint)."""
        return autoencoder.Autoencoder(autoencoder.config(section)) if section.latent_channels else None

    @staticmethod
    def describe(section: DiffusionConfig, steps=None, guidance=None) -> str:
        """How its images are drawn, for a line a user reads."""
        return (f"sampled with {section.sampler} in {steps or section.sample_steps} steps at guidance "
                f"{section.guidance_scale if guidance is None else guidance}")

    @staticmethod
    def clip_loss(section) -> None:
        return None  # it trains on its own denoising loss

    @staticmethod
    def fit_once(data, model_cfg, section: DiffusionConfig, device="cpu"):
        """The autoencoder of latent diffusion, fitted once per dataset and cached (None on pixels)."""
        return autoencoder.load_or_train(data, autoencoder.config(section), device) if section.latent_channels else None

    def __init__(self, net, texts, cfg: TrainConfig, section: DiffusionConfig, targets=None):
        self.net, self.texts, self.cfg, self.section = net, texts, cfg, section
        self.ema_decay = section.ema_decay
        self.ae = net.frozen  # None: pixel space
        # The sampler clips its clean-image estimate to [-1, 1], the pixels' range; a latent space has none.
        self.process = Process(section, clip_sample=self.ae is None)
        self.null = texts.index[""]
        if targets is None:  # generating from a checkpoint: the autoencoder came with its weights
            return
        if self.ae is not None and cfg.augment_shift:
            raise ValueError("augment_shift applies to the diffusion family on pixels, not on an autoencoder's latents "
                             f"(latent_channels={section.latent_channels}): drop one of them")
        ids = np.asarray(targets.data.train.ids)  # a record's rotated copies follow its upright image (copy 0)
        rows = np.arange(len(ids)) if section.rotated_copies else np.sort(np.unique(ids, return_index=True)[1])
        rows = torch.as_tensor(rows, device=targets.device)
        self.train_size, self.train_text = len(rows), texts.rows["train"][rows]
        self.pixels = {"train": targets.images["train"][rows], "val": targets.images["val"]}
        self.x0 = dict(self.pixels)  # what the denoiser learns to make: pixels, or their latents
        if self.ae is not None:
            self.ae.load_state_dict(self.fit_once(targets.data, net.cfg, section, targets.device).state_dict())
            self.x0 = {name: self.ae.encode(x) for name, x in self.pixels.items()}  # (N, C, S/4, S/4)
            if cfg.augment_flip:  # a flip of the image, encoded: the autoencoder is not exactly mirror-symmetric
                self.x0["flipped"] = self.ae.encode(self.pixels["train"].flip(-1))
        gen = torch.Generator(device=targets.device).manual_seed(VAL_NOISE_SEED)
        self.val_noise = torch.randn((len(VAL_SIGNAL), *self.x0["val"].shape), generator=gen, device=targets.device)

    def hidden_states(self, text_idx):
        return self.texts.hidden_states(self.net.text_encoder, text_idx)

    def targets(self, rows, streams):
        """The batch's clean images (K, B, C, S, S), each member's flipped and shifted from its own stream."""
        x0 = self.x0["train"][rows]
        if not (self.cfg.augment_flip or self.cfg.augment_shift):
            return x0
        if self.ae is None:
            return torch.stack([augment(x0[m], self.cfg.augment_flip, self.cfg.augment_shift, generator=g)
                                for m, g in enumerate(streams)])
        flip = torch.stack([torch.rand(rows.shape[1], generator=g, device=x0.device) < 0.5 for g in streams])
        return torch.where(flip[..., None, None, None], self.x0["flipped"][rows], x0)

    def loss(self, rows, streams):
        """Each member's denoising loss on its own batch, its noise, timesteps, dropout and augmentation from its
        stream. rows (K, B): positions among the rows it trains on (`train_size`)."""
        drop, t, noise = draws(streams, rows.shape[1], self.x0["train"].shape[1:], self.section.cond_dropout,
                               rows.device)
        text_idx = torch.where(drop, self.null, self.train_text[rows])
        return self.process.loss(self.net.generator, self.targets(rows, streams), *self.hidden_states(text_idx), t,
                                 noise)

    @torch.no_grad()
    def select(self) -> list[float]:
        """The validation clean-image error at fixed noise levels, in pixels (deterministic; no sampling)."""
        self.net.eval()
        rows, k = self.texts.rows["val"], self.net.generator.members
        decode = self.ae.decode if self.ae is not None else None
        total = 0.0
        for i in range(0, len(rows), EVAL_BATCH):
            text = self.hidden_states(rows[i:i + EVAL_BATCH].expand(k, -1))
            mse = self.process.x0_error(self.net.generator, self.x0["val"][i:i + EVAL_BATCH], text,
                                        self.val_noise[:, i:i + EVAL_BATCH], self.pixels["val"][i:i + EVAL_BATCH],
                                        decode)
            total = total + mse * len(text[0][0])
        return (total / len(rows)).tolist()

    def generate(self, split: str, sample: int = 0) -> torch.Tensor:
        """Sampled images for every row of a split, (K, N, 3, S, S): draw `sample` of a fixed seed, the same
        starting noise for every member."""
        return self.images(self.texts.rows[split], sample * 7919 + {"train": 0, "val": 1, "test": 2}[split])

    @torch.no_grad()
    def images(self, rows, seed: int = 0, steps=None, guidance=None) -> torch.Tensor:
        """Images for text rows (N,) from seed SAMPLE_SEED + seed: (K, N, 3, S, S) in [-1, 1]; `steps` and
        `guidance` override the section's sample_steps and guidance_scale."""
        self.net.eval()
        k, device, s = self.net.generator.members, rows.device, self.net.cfg.image_size
        size = s // (self.ae.factor if self.ae is not None else 1)
        gen = torch.Generator(device=device).manual_seed(SAMPLE_SEED + seed)
        noise = torch.randn((len(rows), self.section.latent_channels or 3, size, size), generator=gen, device=device)
        out = []
        for i in range(0, len(rows), EVAL_BATCH):
            idx = rows[i:i + EVAL_BATCH].expand(k, -1)
            text, null = self.hidden_states(idx), self.hidden_states(torch.full_like(idx, self.null))
            x = self.process.sample(self.net.generator, text, null, noise[i:i + EVAL_BATCH].expand(k, -1, -1, -1, -1),
                                    steps, guidance, generator=gen)
            if self.ae is not None:
                x = self.ae.decode(x.flatten(0, 1)).view(k, x.shape[1], 3, s, s)
            out.append(x)
        return torch.cat(out, dim=1).clamp(-1, 1)
