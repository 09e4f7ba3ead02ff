"""The whole network of a trial: the pretrained text encoder, the family's K-member network, and what they share.

    from model.network import TextToImage
    from model.text import load_text_encoder
    tokenizer, encoder, source = load_text_encoder(cfg.text_encoder)
    net = TextToImage(cfg, section, encoder, seeds=[0, 1, 2, 3])    # 4 members of cfg.family's network
    net.generator                                                  # the family's trainable network (model/families/)
    net.trainable_state()                                          # what a checkpoint must hold

The text encoder is kept apart from the trainable `generator`, so a frozen encoder's hidden states can be
computed once per text (model/text.py TextTable) and the generator trained on them directly: a frozen encoder
that no stage trains is not even loaded (`text_encoder` None, `text_dim` its hidden size). A frozen encoder is
shared by every member; a fine-tuned one belongs to a single trial (K = 1). `frozen` is the family's shared frozen
part that no source can give back (latent diffusion's autoencoder), or None.

Weights between a checkpoint and the network: `load_trainable` (a checkpoint's `model`), `member_weights` and
`load_member` (one member's best weights, with a fine-tuned encoder's part).
"""

from __future__ import annotations

import torch.nn as nn

from model import families
from model.config import ModelConfig
from model.members import FlatParams


class TextToImage(nn.Module):
    def __init__(self, cfg: ModelConfig, section, text_encoder: nn.Module | None, seeds=(0,),
                 text_dim: int | None = None):
        super().__init__()
        if not cfg.freeze_text_encoder and len(seeds) != 1:
            raise ValueError("members share one text encoder, so it must be frozen (freeze_text_encoder=True) "
                             f"to train {len(seeds)} members together")
        family = families.get(cfg.family)
        self.cfg, self.section = cfg, section
        self.text_encoder = text_encoder
        self.frozen = family.frozen(cfg, section)
        self.generator = family.network(cfg, section, text_dim or text_encoder.config.hidden_size, seeds)
        if cfg.freeze_text_encoder and text_encoder is not None:
            self.text_encoder.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.cfg.freeze_text_encoder and self.text_encoder is not None:
            self.text_encoder.eval()  # a frozen encoder never uses dropout: its features are cached
        return self

    def trainable_state(self) -> dict:
        """The weights a checkpoint must hold: a frozen encoder is reloaded from its source instead (the family's
        frozen part has no source: its weights are held too)."""
        if self.cfg.freeze_text_encoder:  # and the top layers staged training unfroze, if it did
            return {**{f"generator.{k}": v for k, v in self.generator.state_dict().items()},
                    **{f"text_encoder.{k}": p for k, p in self.encoder_parameters() if p.requires_grad},
                    **self.shared_state()}
        return self.state_dict()

    def encoder_parameters(self):
        return [] if self.text_encoder is None else self.text_encoder.named_parameters()

    def shared_state(self) -> dict:
        """Frozen weights every member uses that no source can give back."""
        if self.frozen is None:
            return {}
        return {f"frozen.{k}": v for k, v in self.frozen.state_dict().items()}


def load_trainable(net: TextToImage, weights: dict) -> None:
    """Load a checkpoint's trainable weights (copied into the existing tensors); only a frozen encoder's
    (reloaded from its source) may be absent."""
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (net.cfg.freeze_text_encoder and k.startswith("text_encoder."))]
    if missing or unexpected:
        raise KeyError(f"checkpoint weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def member_weights(net: TextToImage, weights: FlatParams, m: int) -> dict:
    """Member m's trainable weights as a one-member state dict on the CPU (what a checkpoint keeps): the
    generator's, and a fine-tuned encoder's (all of it, or the top layers staged training unfroze)."""
    return {**weights.row(m, prefix="generator."), **encoder_weights(net),
            **{k: v.detach().cpu().clone() for k, v in net.shared_state().items()}}


def encoder_weights(net: TextToImage) -> dict:
    """The encoder's part of what a checkpoint holds (`trainable_state`: all of a fine-tuned encoder, the
    top layers staged training unfroze, or nothing), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in net.trainable_state().items() if k.startswith("text_encoder.")}


def load_member(net: TextToImage, weights: FlatParams, m: int, state: dict) -> None:
    """The reverse of `member_weights`: member m's weights (and a fine-tuned encoder's) from a state dict."""
    weights.load_row(m, state, prefix="generator.")
    encoder = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if encoder:  # a frozen encoder's unfrozen top layers are a part of it
        net.text_encoder.load_state_dict(encoder, strict=not net.cfg.freeze_text_encoder)
