"""The thesis's grid, defined once, and how one point of it becomes a trial's configs.

    from search.space import AXES, GRID, fused_space, grid_size, param_space, trial_configs
    grid_size(GRID)                                   # 32; AXES adds the model family, one value by default
    param_space(GRID, "grid")                         # {"lr": tune.grid_search([...]), ...}
    distinct_points(GRID, 12, seed=0)                 # --search random's trials: 12 different points of the 32
    model_cfg, train_cfg, section = trial_configs({"lr": 1e-4, "n_heads": 4}, ModelConfig(), TrainConfig(), sections)
    trial_grid, members = fused_space(GRID)           # 8 architectures; 4 (lr, weight_decay) members each

The space holds only the swept fields, spelled as the config fields they set. Everything
else (epochs, image size, device, paths) reaches a trial through its base configs, so a
trial's config in Ray, its results row and its checkpoint carry exactly these five knobs.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import fields, replace

from model import families
from model.config import DEFAULT_FAMILY, MEMBER_FIELDS, ModelConfig, TrainConfig

# learning rate × weight decay × heads × feed-forward × layers = 2 × 2 × 2 × 2 × 2 = 32 trials.
GRID: dict[str, tuple] = {
    "lr": (1e-4, 1e-5),
    "weight_decay": (1e-5, 1e-6),
    "n_heads": (2, 4),
    "ff_dim": (512, 1024),
    "n_layers": (2, 3),
}

# What a search sweeps: the model family (`--family regressor diffusion` makes it an axis of two values), then
# the thesis's grid. Both families read the same five knobs: the text stack's heads, width and layers, and the
# optimizer's learning rate and weight decay.
AXES: dict[str, tuple] = {"family": (DEFAULT_FAMILY,), **GRID}

SEARCHES = ("grid", "random", "optuna")


def grid_size(grid: dict[str, tuple]) -> int:
    return math.prod(len(v) for v in grid.values())


def param_space(grid: dict[str, tuple], search: str) -> dict:
    """Ray Tune's view of the grid: every point once ("grid"), or categorical choices for a searcher ("random":
    uniform draws, "optuna": TPE)."""
    from ray import tune

    if search == "grid":
        return {k: tune.grid_search(list(v)) for k, v in grid.items()}
    if search in ("random", "optuna"):
        return {k: tune.choice(list(v)) for k, v in grid.items()}
    raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")


def distinct_points(grid: dict[str, tuple], n: int, seed: int) -> list[dict]:
    """n different points of the grid, drawn at random without replacement (the same n for the same seed): the
    trials of `--search random`. Tune's own random search draws every axis anew for each trial, so in a space of a
    few dozen points it trains some twice (a point trains deterministically: the same numbers again; the 12-trial
    search of results/BENCHMARKS.md trained 9 distinct points). ValueError when the grid has fewer than n."""
    total = grid_size(grid)
    if n > total:
        raise ValueError(f"--search random draws {n} different points of a space of {total} "
                         f"({' x '.join(str(len(v)) for v in grid.values())}): ask for at most {total} with "
                         "--num-samples, or train every point with --search grid")
    every = list(itertools.product(*grid.values()))
    return [dict(zip(grid, every[i])) for i in random.Random(seed).sample(range(total), n)]


def trial_configs(point: dict, model: ModelConfig, train: TrainConfig, sections: dict | None = None) -> tuple:
    """(model, train, family section): the base configs with this trial's swept values replaced. `sections` holds
    each family's base section (by family name; a missing one: its defaults); the trial's family (the point's
    `family`, else the model's) takes its own and the point's values of its fields. An unknown key is an error,
    not ignored."""
    model_keys = {f.name for f in fields(ModelConfig)}
    train_keys = {f.name for f in fields(TrainConfig)}
    model = replace(model, **{k: v for k, v in point.items() if k in model_keys})
    family = families.get(model.family)
    section = (sections or {}).get(family.name) or family.Config()
    section_keys = {f.name for f in fields(section)}
    # A field of another family's section is not an error: a mixed search sweeps both families' fields.
    other_keys = {f.name for name in families.names() for f in fields(families.get(name).Config)}
    unknown = set(point) - model_keys - train_keys - other_keys
    if unknown:
        raise KeyError(f"search-space keys {sorted(unknown)} are not fields of ModelConfig, TrainConfig or a "
                       "family's config section")
    train = replace(train, **{k: v for k, v in point.items() if k in train_keys})
    section = families.section(model, replace(section, **{k: v for k, v in point.items() if k in section_keys}))
    return model, train, section


def fused_space(grid: dict[str, tuple]) -> tuple[dict[str, tuple], list[dict]]:
    """The grid as fused trials: (the trial axes, the member points).

    A fused trial is one point of every axis but those members may differ in (learning rate, weight decay, seed:
    model.train.MEMBER_FIELDS); its members are every point of those, trained together by
    `model.train.train_members`. The thesis grid: 8 architectures x 4 members = the same 32 points.
    """
    member_keys = [k for k in grid if k in MEMBER_FIELDS]
    trial_grid = {k: v for k, v in grid.items() if k not in MEMBER_FIELDS}
    members = [dict(zip(member_keys, values)) for values in itertools.product(*(grid[k] for k in member_keys))]
    return trial_grid, members
