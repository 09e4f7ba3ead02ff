"""What a search trains with: a preset, then command-line overrides, resolved into frozen configs.

    from search.settings import add_config_flags, resolve
    parser = argparse.ArgumentParser(); add_config_flags(parser)
    args = parser.parse_args(["--epochs", "3", "--lr", "1e-3", "1e-4"])
    settings = resolve("smoke", config_overrides(args))
    settings.train.epochs, settings.grid["lr"]           # 3, (0.001, 0.0001)

Precedence: dataclass defaults < preset < flags. One flag per config field, named after it
(`n_heads` <-> `--n-heads`); a field in two configs (`image_size`) sets both. A flag given several values makes its
field a search axis (`--unet-width 32 64`: two grid points per point of the rest, or a searcher's choices). The configs are ModelConfig,
TrainConfig, DataConfig and every registered model family's own section (`settings.sections["diffusion"]`: the
diffusion family's DiffusionConfig), so `--unet-width 64` is a flag like `--epochs 3`. A swept field's
flag takes one or more values and replaces that axis of the grid (`--lr 1e-3` pins it).
Seed replicates (`resolve(..., seeds=3)`, the CLI's `--seeds 3`) are one more grid axis, of the
TrainConfig field `seed`: values seed .. seed+2, so a fused trial trains them as members too.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import asdict, dataclass, field, fields
from typing import get_type_hints

import numpy as np

from data_pipeline.config import DataConfig, field_range
from data_pipeline.dataset import PreparedData, Split
from model import families
from model.config import ModelConfig, TrainConfig
from search.analysis import SEED  # the TrainConfig field that --seeds turns into a grid axis
from search.space import AXES, trial_configs



def config_classes() -> tuple[type, ...]:
    """Every config dataclass a flag can set: the shared three, then each registered family's section."""
    return (ModelConfig, TrainConfig, DataConfig, *(families.get(name).Config for name in families.names()))


@dataclass(frozen=True)
class Preset:
    about: str
    overrides: dict = field(default_factory=dict)  # config field -> value, for every config that has the field
    max_records: int | None = None  # keep the first N records of each split (a train record keeps all its rotations)
    recipes: dict = field(default_factory=dict)  # family -> its overrides at this preset's scale (over the above)
    notes: dict = field(default_factory=dict)  # family -> what its recipe here is and why, for the printed line


PRESETS = {
    # The thesis's settings are the dataclass defaults: 100 epochs, batch 10, 64 px, dropout 0.3 ×3,
    # N=8 rotations, enriched descriptions, L1 loss, every record.
    "full": Preset("thesis settings: 100 epochs, batch 10, 64 px, N=8 rotations, enriched text, all records"),
    # Sized so the default `python -m search.grid` (32 trials, the synthetic set's 300 records) finishes
    # in under 6 minutes on a 2-core CPU and its best trial learns the text, colours included (README,
    # results/BENCHMARKS.md). The thesis's learning rates (1e-4, 1e-5) stay at the median image for this
    # short schedule, so the lr axis is scaled x20; the pooled-text path (FiLM) is what lets colour through
    # the decoder's GroupNorm; d_model 64 and no rotations (the synthetic creatures stand upright) buy the
    # epochs colour needs. Heads, ff_dim, layers and weight decay are the thesis's.
    "laptop": Preset(
        "32 px, 7 epochs, no rotations, d_model 64",
        {"image_size": 32, "epochs": 7, "augment_rotations": 1, "d_model": 64},
        recipes={"regressor": {"pooled_text": True, "lr": (2e-3, 2e-4)}},
        notes={"regressor": "pooled text (FiLM); learning rates 2e-3 and 2e-4, twenty times the thesis's (which learn "
                            "nothing from the text in 7 epochs)"},
    ),
    # Tiny, for tests and CI: exercises every code path in seconds per trial.
    "smoke": Preset(
        "32 px, 2 epochs, no rotations, d_model 32, first 8 records per split, texts cut to 32 tokens, CLIP off, "
        "2 samples per text and a tenth of each evaluator network's fit; a diffusion trial: a 2-level UNet 16 "
        "channels wide, 4 sampler steps",
        {"image_size": 32, "epochs": 2, "augment_rotations": 1, "d_model": 32, "max_tokens": 32, "clip_mode": "off",
         "eval_samples": 2, "eval_fit": 0.1},
        max_records=8,
        recipes={"diffusion": {"unet_width": 16, "unet_levels": 2, "sample_steps": 4}},
    ),
}


@dataclass(frozen=True)
class Settings:
    preset: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    grid: dict  # swept field -> tuple of values
    max_records: int | None = None
    sections: dict = field(default_factory=dict)  # family name -> its config section (every registered family)
    recipe: str = ""  # the family whose measured recipe set the shared fields (the search's first family)

    @property
    def seeds(self) -> int:
        """Replicates per configuration: the length of the `seed` axis (1 without one)."""
        return len(self.grid.get(SEED, (None,)))

    def to_dict(self) -> dict:
        return {"preset": self.preset, "model": asdict(self.model), "train": asdict(self.train),
                "data": asdict(self.data), "grid": {k: list(v) for k, v in self.grid.items()},
                "max_records": self.max_records, "sections": {k: asdict(v) for k, v in self.sections.items()},
                "recipe": self.recipe}

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        sections = {name: families.stored(name, fields_) for name, fields_ in d.get("sections", {}).items()}
        return cls(d["preset"], ModelConfig(**d["model"]), TrainConfig(**d["train"]), DataConfig(**d["data"]),
                   {k: tuple(v) for k, v in d["grid"].items()}, d.get("max_records"), sections, d.get("recipe", ""))

    def about(self, flags: dict | None = None) -> str:
        """What the preset and the family's recipe set, for the line printed at start and recorded; then `flags` (the
        command's config_overrides, the family aside), which win over both: a reader of the line sees what ran."""
        preset = PRESETS[self.preset]
        parts = [preset.about, preset.notes.get(self.recipe, "")]
        recipe = families.get(self.recipe).recipe if self.recipe else {}
        if recipe:
            parts.append(f"the {self.recipe} family's measured recipe: " + ", ".join(f"{k} {v}" for k, v in recipe.items()))
        if given := {k: v for k, v in (flags or {}).items() if k != "family"}:
            values = {k: (v[0] if len(v) == 1 else tuple(v)) if isinstance(v, list) else v for k, v in given.items()}
            parts.append("over them, the flags: " + ", ".join(f"{k} {v}" for k, v in values.items()))
        return "; ".join(p for p in parts if p)

    def trial(self, point: dict) -> tuple:
        """(model, train, family section) of one point of the grid."""
        return trial_configs(point, self.model, self.train, self.sections)


def retrains_note(settings: Settings) -> str | None:
    """A note when the search sweeps a field that only changes how a family draws its images (its `sampling_only`:
    the diffusion family's sampler, steps and guidance), or None: every value of it trains the same weights again,
    where one training and a sweep of its checkpoint would do (bench/bench_diffusion.py --checkpoint)."""
    swept = {k for k, v in settings.grid.items() if len(v) > 1}
    sampling = {f for fam in settings.grid["family"] for f in getattr(families.get(fam), "sampling_only", ())}
    names = sorted(swept & sampling)
    if not names:
        return None
    flags = ", ".join("--" + n.replace("_", "-") for n in names)
    hint = ("; guidance scales can be compared on one training by sweeping its checkpoint: python "
            "bench/bench_diffusion.py --checkpoint <results>/<experiment>/best_checkpoint --guidance 1 1.5 3"
            if "guidance_scale" in names else "")
    return (f"[search] note: {flags} only change{'s' if len(names) == 1 else ''} how images are sampled, so each "
            f"value trains the same weights again{hint}")


def config_fields() -> dict[str, type]:
    """Every config field name once, with its type (image_size appears in two configs, same type)."""
    out = {}
    for cls in config_classes():
        hints = get_type_hints(cls)
        for f in fields(cls):
            out.setdefault(f.name, hints[f.name])
    return out


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (default: the preset's value; see model/config.py, "
                                      "model/families/, data_pipeline/config.py; a value outside a field's "
                                      "range is refused before Ray starts)")
    for name, typ in config_fields().items():
        flag = "--" + name.replace("_", "-")
        owners = "/".join(c.__name__ for c in config_classes() if name in {f.name for f in fields(c)})
        ranges = {str(r) for c in config_classes() if (r := field_range(c, name)) is not None}
        owners += f"; in {' / '.join(sorted(ranges))}" if ranges else ""
        if name in AXES:
            group.add_argument(flag, type=typ, nargs="+", default=None, metavar=name.upper(),
                               help=f"grid axis, default {' '.join(map(str, AXES[name]))} ({owners})")
        elif typ is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=owners)
        else:  # one value; several make the field a search axis (a grid's, or a searcher's choices)
            group.add_argument(flag, type=typ, nargs="+", default=None, metavar=name.upper(), help=owners)


def config_overrides(args: argparse.Namespace) -> dict:
    """The config flags the user actually gave: a grid axis's values as a list, another field's one value as it
    is, and several values of another field as a tuple (it becomes a search axis)."""
    out = {}
    for name in config_fields():
        value = getattr(args, name, None)
        if value is None:
            continue
        if name not in AXES and isinstance(value, list):
            value = value[0] if len(value) == 1 else tuple(value)
        out[name] = value
    return out


def resolve(preset: str, overrides: dict, seeds: int = 1) -> Settings:
    """The settings of a search. Precedence, lowest first: the dataclass defaults, the family's measured recipe
    (`Family.recipe`: the shared fields it was measured best with), the preset's scale, the preset's overrides for
    that family, the flags. Shared fields follow the search's first family (a mixed search trains both families
    with them); each family's own section takes its own recipe's fields."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    p = PRESETS[preset]
    searched = tuple(overrides.get("family") or AXES["family"])
    first = families.get(searched[0]).name  # an unknown family: refused here, by name

    def merged_for(family: str) -> dict:  # a preset may move a grid axis too (laptop's learning rates)
        return {**families.get(family).recipe, **p.overrides, **p.recipes.get(family, {}), **overrides}

    merged = merged_for(first)
    # A field given several values is a search axis: the thesis grid's five are always axes; any other becomes
    # one (a tuple of its values), except what the data are prepared with, once per search.
    swept = {k for k, v in merged.items() if k in AXES or isinstance(v, tuple)}
    if data_axes := sorted(swept & {f.name for f in fields(DataConfig)}):
        raise ValueError(f"--{data_axes[0].replace('_', '-')} takes one value: the data are prepared once per search")
    fixed = {k: v for k, v in merged.items() if k not in swept}
    grid = {**AXES, **{k: tuple(v) if isinstance(v, (list, tuple)) else (v,) for k, v in merged.items() if k in swept}}
    if seeds > 1:  # replicates of every point: seed, seed+1, ... (train.seed stays the first)
        base = fixed.get(SEED, TrainConfig().seed)
        grid[SEED] = tuple(range(base, base + seeds))

    def build(cls, values=fixed):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    sections = {name: build(families.get(name).Config, {k: v for k, v in merged_for(name).items() if k not in swept})
                for name in families.names()}
    settings = Settings(preset, build(ModelConfig), build(TrainConfig), build(DataConfig), grid, p.max_records,
                        sections, first)
    if settings.model.image_size != settings.data.image_size:
        raise ValueError("model and data image_size differ")  # unreachable through flags: one flag sets both
    # Build every trial's configs now, so a bad combination (d_model not divisible by a head count, a size the
    # family cannot make) fails before Ray starts rather than inside trial 17.
    for values in itertools.product(*grid.values()):
        settings.trial(dict(zip(grid, values)))
    return settings


def limit_records(data: PreparedData, max_records: int | None) -> PreparedData:
    """The first `max_records` records of each split (all rotated copies of a kept train record)."""
    if max_records is None:
        return data

    def head(s: Split) -> Split:
        keep = list(dict.fromkeys(s.ids.tolist()))[:max_records]
        mask = np.isin(s.ids, keep)
        return Split(s.ids[mask], [t for t, m in zip(s.texts, mask) if m], s.images[mask])

    info = {**data.info, "subset": f"first {max_records} records of each split"}
    return PreparedData(head(data.train), head(data.val), head(data.test), info)


def load_data(data: str | None, settings: Settings) -> PreparedData:
    """The prepared dataset (cached by the data pipeline), cut to the preset's record limit."""
    from data_pipeline.prepare import prepare_dataset

    return limit_records(prepare_dataset(data, settings.data), settings.max_records)
