"""The thesis's model: the text's image in one forward, trained with pixel L1 (or a CLIP loss).

    from model.families.regressor import Regressor, RegressorConfig
    section = RegressorConfig(decoder_channels=256, loss="l1")
    generator = Regressor.network(model_cfg, section, text_dim=384, seeds=[0, 1])   # K = 2 members
    images = generator(hidden, mask)                    # (K, B, T, H), (K, B, T) -> (K, B, 3, S, S) in [-1, 1]

The network, top to bottom: the text stack (model/text.py: projection + the grid's transformer layers) ->
learned image queries attending to the encoded text (a 4x4 spatial latent) -> a CNN decoder of upsampling blocks
ending in Tanh. With `pooled_text` the text's mean token also conditions each image query and, FiLM-style, every
decoder block. Every weight carries the member axis K (model/members.py): K independent generators of one
architecture run as one forward, so a fused trial's members cost about what one does on a GPU.

`Regressor` is the family (model/families/__init__.py): its loss is pixel L1 between the forward's image and the
record's image (randomly flipped and shifted with `augment_flip`/`augment_shift`), or a CLIP loss; its selection
metric is validation L1; it makes one image per text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import EVAL_BATCH, TRAIN_L1, VAL_L1, BEST_VAL_L1, ModelConfig, TrainConfig
from model.eval.clip import clip_cosines
from model.eval.evaluator import member_l1
from data_pipeline.config import at_least, check_ranges
from model.augment import augment
from model.members import Attention, Conv, GroupNorm, LayerNorm, Linear, init_members
from model.text import TextStack

LOSSES = ("l1", "clip", "l1+clip")


@dataclass(frozen=True)
class RegressorConfig:
    """The regressor's own fields."""
    decoder_channels: int = at_least(256, 16)  # the decoder's widths halve from this at each upsampling: 128, 64, 32, ...
    loss: str = "l1"  # "l1", "clip" or "l1+clip" (model/eval/clip.py); the best weights are chosen by val L1 anyway
    clip_weight: float = at_least(0.1, 0)  # weight of the CLIP term in "l1+clip"

    def __post_init__(self):
        check_ranges(self)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be 'l1', 'clip' or 'l1+clip', got {self.loss!r}")


# ---------------------------------------------------------------------------- the network


class TextToLatent(nn.Module):
    """Learned image queries attend to the encoded text: (K, B, T, D) -> (K, B, D, L, L).

    With `pooled`, each query also gets its own linear map of the text's mean token (K, B, D): a direct
    path from the whole sentence to every latent position, beside the attention's weighted average.
    """

    def __init__(self, k: int, d: int, n_heads: int, dropout: float, latent_size: int, pooled: bool = False):
        super().__init__()
        self.latent_size = latent_size
        self.queries = nn.Parameter(torch.empty(k, latent_size * latent_size, d))
        self.pool = Linear(k, d, latent_size * latent_size * d) if pooled else None
        self.attn = Attention(k, d, n_heads, dropout)
        self.norm = LayerNorm(k, d)

    def init_member(self, m: int, gen: torch.Generator) -> None:
        nn.init.normal_(self.queries[m], generator=gen)

    def forward(self, text, key_bias, pooled=None):
        q = self.queries[:, None].expand(-1, text.shape[1], -1, -1)  # (K, B, L*L, D)
        if self.pool is not None:
            q = q + self.pool(pooled).view(q.shape)  # (K, B, L*L, D)
        latent = self.norm(q + self.attn(q, text, key_bias))  # (K, B, L*L, D)
        k, b, _, d = latent.shape
        return latent.transpose(-1, -2).reshape(k, b, d, self.latent_size, self.latent_size)



# The decoder works on (B, K*C, H, W): the members' channels side by side, so each convolution is one
# grouped convolution (groups = K) and each GroupNorm one group_norm with K times the groups.


class UpBlock(nn.Module):
    """Upsample x2 -> conv 3x3 -> GroupNorm -> GELU -> dropout. GroupNorm rather than BatchNorm: no
    running statistics, so batches of 10 (and members side by side) behave the same in train and eval.

    GroupNorm normalizes each image's channel groups, which wipes out a global offset such as the body
    colour; with `film` (d_text > 0) the pooled text scales and shifts every channel after it (FiLM, as
    AdaIN re-injects style), starting as the identity."""

    def __init__(self, k: int, c_in: int, c_out: int, dropout: float, d_text: int = 0):
        super().__init__()
        self.conv = Conv(k, c_in, c_out)
        self.norm = GroupNorm(k, min(8, c_out), c_out)
        self.film = Linear(k, d_text, 2 * c_out, zero=True) if d_text else None
        self.dropout = dropout

    def forward(self, y, pooled=None):
        y = self.norm(self.conv(F.interpolate(y, scale_factor=2, mode="nearest")))  # (B, K*C, H, W)
        if self.film is not None:
            scale, shift = self.film(pooled).chunk(2, dim=-1)  # (K, B, C) each
            b = y.shape[0]
            y = y * (1 + scale.transpose(0, 1).reshape(b, -1, 1, 1)) + shift.transpose(0, 1).reshape(b, -1, 1, 1)
        return F.dropout(F.gelu(y), self.dropout, self.training)



class Generator(nn.Module):
    """Everything after the pretrained text encoder, for K members: the trainable part. `seeds` gives each
    member's initialization seed; its length is K."""

    LATENT_SIZE = 4

    def __init__(self, cfg: ModelConfig, section: RegressorConfig, text_dim: int, seeds=(0,)):
        super().__init__()
        k, d = len(seeds), cfg.d_model
        self.text = TextStack(k, cfg, text_dim)
        self.to_latent = TextToLatent(k, d, cfg.n_heads, cfg.dropout_attention, self.LATENT_SIZE, cfg.pooled_text)
        n_up = int(math.log2(cfg.image_size // self.LATENT_SIZE))  # 32 -> 3, 64 -> 4, 128 -> 5
        # e.g. d, 128, 64, 32, 16 for the default decoder_channels 256
        channels = [d] + [max(section.decoder_channels >> i, 16) for i in range(1, n_up + 1)]
        self.decoder = nn.ModuleList([UpBlock(k, channels[i], channels[i + 1], cfg.dropout_decoder,
                                              d if cfg.pooled_text else 0) for i in range(n_up)])
        self.out = Conv(k, channels[-1], 3)
        init_members(self, seeds)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # start from a mid-grey image rather than a saturated Tanh, where gradients vanish

    @property
    def members(self) -> int:
        return self.text.proj.weight.shape[0]

    def forward(self, hidden, attention_mask):
        """hidden (K, B, T, H), attention_mask (K, B, T) -> (K, B, 3, S, S) in [-1, 1]."""
        b = hidden.shape[1]
        x, key_bias, pooled = self.text(hidden, attention_mask)  # (K, B, T, D), ..., (K, B, D) or None
        latent = self.to_latent(x, key_bias, pooled)  # (K, B, D, 4, 4)
        k = latent.shape[0]
        y = latent.transpose(0, 1).reshape(b, -1, *latent.shape[-2:])  # (B, K*D, 4, 4)
        for block in self.decoder:
            y = block(y, pooled)  # (B, K*C, 2H, 2W)
        y = torch.tanh(self.out(y))  # (B, K*3, S, S)
        return y.reshape(b, k, 3, *y.shape[-2:]).transpose(0, 1)  # (K, B, 3, S, S)



# ---------------------------------------------------------------------------- the family


class Regressor:
    """The family (model/families/__init__.py): one forward per text, pixel L1 (or a CLIP loss), selected on val L1."""

    name = "regressor"
    Config = RegressorConfig
    train_metric, selection, best = TRAIN_L1, VAL_L1, BEST_VAL_L1
    draws = 1  # one image per text, whatever the seed
    fuses = None  # members side by side in every kernel: a fused trial costs about what one member does on a GPU
    stages = True
    extra_texts = ()
    sampling_only = ()
    ema_decay = 0.0  # the thesis recipe's numbers: no EMA weights
    recipe = {}  # the shared fields' defaults are the thesis's: its own model

    @staticmethod
    def check(model_cfg: ModelConfig, section: RegressorConfig) -> None:
        # The decoder doubles a 4 px map 3 to 5 times.
        if model_cfg.image_size not in (32, 64, 128):
            raise ValueError(f"image_size must be one of (32, 64, 128) for the regressor family, got {model_cfg.image_size}")

    @staticmethod
    def network(model_cfg: ModelConfig, section: RegressorConfig, text_dim: int, seeds) -> Generator:
        return Generator(model_cfg, section, text_dim, seeds)

    @staticmethod
    def frozen(model_cfg, section):
        return None

    @staticmethod
    def describe(section: RegressorConfig, **sampling) -> str:
        return "one forward per text"

    @staticmethod
    def clip_loss(section: RegressorConfig) -> str | None:
        return None if section.loss == "l1" else section.loss

    @staticmethod
    def fit_once(data, model_cfg, section, device="cpu") -> None:
        return None

    def __init__(self, net, texts, cfg: TrainConfig, section: RegressorConfig, targets=None):
        self.net, self.texts, self.cfg, self.section = net, texts, cfg, section
        self.targets = targets.images if targets is not None else None
        self.train_size = len(self.targets["train"]) if targets is not None else 0  # rotated copies included
        self.scorer = targets.scorer if targets is not None else None
        self.text_features = self.scorer.text_features(texts.texts) if section.loss != "l1" else None  # (U, E)

    def forward(self, text_idx):
        """text_idx (K, B): member k's texts -> (K, B, 3, S, S)."""
        return self.net.generator(*self.texts.hidden_states(self.net.text_encoder, text_idx))

    def loss(self, rows, streams):
        """Each member's loss and L1 on its own batch: rows (K, B) -> (K,), (K,). Augmentation draws from the
        global RNG (the thesis recipe's numbers stay as they were), not the members' streams."""
        cfg, section, text_idx = self.cfg, self.section, self.texts.rows["train"][rows]
        pred = self.forward(text_idx)  # (K, B, 3, S, S)
        l1 = member_l1(pred, augment(self.targets["train"][rows], cfg.augment_flip, cfg.augment_shift))
        if section.loss == "l1":
            return l1, l1
        k, b = rows.shape
        c = 1 - clip_cosines(self.scorer, pred.flatten(0, 1), self.text_features[text_idx.flatten()]).view(k, b).mean(1)
        return (c if section.loss == "clip" else l1 + section.clip_weight * c), l1

    @torch.no_grad()
    def images(self, rows, seed: int = 0, **sampling) -> torch.Tensor:
        """Every member's image for text rows (N,): (K, N, 3, S, S); seed and sampling options do not apply."""
        self.net.eval()
        k = self.net.generator.members
        return torch.cat([self.forward(rows[i:i + EVAL_BATCH].expand(k, -1))
                          for i in range(0, len(rows), EVAL_BATCH)], dim=1)

    def generate(self, split: str, sample: int = 0) -> torch.Tensor:
        """Every member's image for each row of a split: (K, N, 3, S, S); the same for every sample."""
        return self.images(self.texts.rows[split])

    def select(self) -> list[float]:
        return member_l1(self.generate("val"), self.targets["val"]).tolist()
