"""Model families: the Family protocol and the registry, the only place that names every family.

    from model import families
    family = families.get("diffusion")                  # the class; family.Config is its own config section
    section = family.Config(unet_width=64)               # its fields, defaulting to what was measured best
    network = family.network(model_cfg, section, text_dim=384, seeds=[0, 1])   # K = 2 members
    process = family(net, texts, train_cfg, section, targets)   # one trial's: loss, select, generate
    loss, metric = process.loss(rows, streams)           # rows (K, B) into the training split -> (K,), (K,)
    process.select()                                     # each member's selection metric on validation
    process.generate("test", sample=0)                   # (K, N, 3, S, S) images for every test row

A family is what turns the text stack's output into an image. The training loop (model/train.py), the evaluator,
the search, the table, the figures and `model.generate` know only this protocol; they ask the family, never
compare its name. A new family is one file with a class like `regressor.Regressor` and one line below (or
`register(MyFamily)` from your own code, before the configs that name it are built).

What a family supplies (class attributes and static methods, then per trial an instance):
- `name`, `Config`: its name (the `family` field's value) and its config section, a frozen dataclass of its own
  fields (CLI flags, search-space keys and table columns like any config field), defaults included.
- `train_metric`, `selection`, `best`: the metric it reports of training, the validation metric that picks each
  member's best weights (lower is better) and that metric's best so far, which ranks the family's rows.
- `draws`: distinct images it makes per text: 1 (one forward) or None (a sampler: as many as asked).
- `fuses`: None when members of one fused trial share kernels (fusing saves launches), else why not.
- `stages`: whether staged training (the text encoder fine-tuned in a second stage) applies.
- `extra_texts`: texts its text table must also hold (the empty text of classifier-free guidance).
- `recipe`: the shared fields (ModelConfig, TrainConfig, DataConfig; grid axes too) it was measured best with,
  where they differ from the dataclass defaults: `--family NAME` alone trains them (search/settings.py).
- `earlier` (optional): the value a field had in checkpoints written before the field existed, where its default
  has since changed what is built (a checkpoint stores every field of its section; one that lacks a field
  predates it).
- `check(model_cfg, section)`: refuse a combination it cannot build (image sizes), naming the fields.
- `network(model_cfg, section, text_dim, seeds)`: its K-member trainable network (every weight with a leading
  member axis, `.members` = K), reading the text through `model.text.TextStack`.
- `frozen(model_cfg, section)`: a frozen module every member shares that no source can give back (latent
  diffusion's autoencoder: checkpoints hold its weights), or None.
- `describe(section, **sampling)`: how its images are made, for a line a user reads ("sampled with ddim in 25
  steps at guidance 3").
- `clip_loss(section)`: the name of its loss when that loss needs CLIP's weights (model/eval/clip.py), else None.
- `fit_once(data, model_cfg, section, device)`: what must be fitted once per dataset before training (cached
  beside the prepared data; a search does it in its driver before any trial), or nothing.
- an instance per trial, `Family(net, texts, train_cfg, section, targets)` (`targets` None: generating only),
  with `train_size` (how many training rows it trains on: `loss` gets positions among them), `loss(rows,
  streams)`, `select()`, `generate(split, sample)`, `images(rows, seed, **sampling)` and `ema_decay` (0: no EMA
  weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from model.families.diffusion import Diffusion
from model.families.regressor import Regressor


@dataclass
class Targets:
    """What a trial's family trains towards: the dataset (for what is fitted once per dataset), every split's
    images on the device ((N, 3, S, S) float32 in [-1, 1]), and the CLIP scorer where one loaded (a CLIP loss)."""
    data: object  # data_pipeline.dataset.PreparedData
    images: dict
    scorer: object = None  # model.eval.clip.ClipScorer or None
    device: torch.device = torch.device("cpu")


class Family(Protocol):
    name: ClassVar[str]
    Config: ClassVar[type]
    train_metric: ClassVar[str]
    selection: ClassVar[str]
    best: ClassVar[str]
    draws: ClassVar[int | None]
    fuses: ClassVar[str | None]
    stages: ClassVar[bool]
    extra_texts: ClassVar[tuple]
    recipe: ClassVar[dict]
    sampling_only: ClassVar[tuple]  # its section's fields that change only how images are drawn, not the training
    ema_decay: float
    train_size: int

    @staticmethod
    def check(model_cfg, section) -> None: ...

    @staticmethod
    def network(model_cfg, section, text_dim: int, seeds) -> torch.nn.Module: ...

    @staticmethod
    def frozen(model_cfg, section) -> torch.nn.Module | None: ...

    @staticmethod
    def describe(section, **sampling) -> str: ...

    @staticmethod
    def clip_loss(section) -> str | None: ...

    @staticmethod
    def fit_once(data, model_cfg, section, device="cpu") -> None: ...

    def loss(self, rows, streams) -> tuple[torch.Tensor, torch.Tensor]: ...

    def select(self) -> list[float]: ...

    def generate(self, split: str, sample: int = 0) -> torch.Tensor: ...

    def images(self, rows, seed: int = 0, **sampling) -> torch.Tensor: ...


REGISTRY: dict[str, type] = {}


def register(family: type) -> type:
    """Add a family (or replace one of the same name); returns it, so it also works as a class decorator."""
    REGISTRY[family.name] = family
    return family


def get(name: str) -> type:
    """The family registered under `name`; ValueError naming the registered ones otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"family must be one of {tuple(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def stored(name: str, fields: dict):
    """Family `name`'s section from the fields a checkpoint or a stored search wrote (every field it had then): a
    field it lacks did not exist when it was written, and takes the family's `earlier` value where it has one."""
    family = get(name)
    return family.Config(**{**getattr(family, "earlier", {}), **fields})


def section(model_cfg, given=None):
    """The family config section of a ModelConfig's family: `given` (a section of that family's Config, or a dict
    of its fields, as a checkpoint stores it), else its defaults; checked against model_cfg."""
    family = get(model_cfg.family)
    if given is None:
        given = family.Config()
    elif isinstance(given, dict):
        given = stored(family.name, given)
    elif not isinstance(given, family.Config):
        raise TypeError(f"a {family.name} model takes a {family.Config.__name__}, got {type(given).__name__}")
    family.check(model_cfg, given)
    return given


register(Regressor)
register(Diffusion)
