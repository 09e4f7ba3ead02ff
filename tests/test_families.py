"""A third model family, registered from this test file alone, runs through the loop, a search, export and
generate: the family protocol (model/families/__init__.py) is all that the rest of the code asks.

`Flat` paints each text's image one colour: a linear map of the mean of its text stack's output. It has its own
config section (a field of its own), its own metric names, and no project file names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from model import families
from model.config import EVAL_BATCH, TEST_L1, ModelConfig, TrainConfig
from model.eval.evaluator import member_l1
from model.members import Linear, init_members
from model.text import TextStack
from model.train import train_members
from test_model import NO_DROPOUT, tiny_data


@dataclass(frozen=True)
class FlatConfig:
    gain: float = 2.0  # the colour is tanh(gain * linear(mean text)): a field only this family has


class FlatNet(nn.Module):
    """K members: text stack -> mean over the real tokens -> one RGB colour per text."""

    def __init__(self, cfg: ModelConfig, section: FlatConfig, text_dim: int, seeds):
        super().__init__()
        self.text = TextStack(len(seeds), cfg, text_dim)
        self.colour = Linear(len(seeds), cfg.d_model, 3)
        self.size, self.gain = cfg.image_size, section.gain
        init_members(self, seeds)

    @property
    def members(self) -> int:
        return self.colour.weight.shape[0]

    def forward(self, hidden, mask):  # (K, B, T, H), (K, B, T) -> (K, B, 3, S, S)
        x, _, _ = self.text(hidden, mask)
        tokens = mask.unsqueeze(-1).to(x.dtype)
        rgb = torch.tanh(self.gain * self.colour((x * tokens).sum(2) / tokens.sum(2)))  # (K, B, 3)
        return rgb[..., None, None].expand(*rgb.shape, self.size, self.size)


class Flat:
    name = "flat"
    Config = FlatConfig
    train_metric, selection, best = "train/flat_l1", "val/flat_l1", "best/val_flat_l1"
    draws, fuses, stages, extra_texts, ema_decay, recipe = 1, None, False, (), 0.0, {}

    @staticmethod
    def check(model_cfg, section):
        if section.gain <= 0:
            raise ValueError(f"gain must be > 0 for the flat family, got {section.gain}")

    @staticmethod
    def network(model_cfg, section, text_dim, seeds):
        return FlatNet(model_cfg, section, text_dim, seeds)

    @staticmethod
    def frozen(model_cfg, section):
        return None

    @staticmethod
    def fit_once(data, model_cfg, section, device="cpu"):
        return None

    @staticmethod
    def describe(section, **sampling):
        return "one flat colour per text"

    @staticmethod
    def clip_loss(section):
        return None

    def __init__(self, net, texts, cfg, section, targets=None):
        self.net, self.texts = net, texts
        self.targets = targets.images if targets is not None else None
        self.train_size = len(self.targets["train"]) if targets is not None else 0

    def images(self, rows, seed=0, **sampling):
        self.net.eval()
        k = self.net.generator.members
        with torch.no_grad():
            return torch.cat([self.net.generator(*self.texts.hidden_states(self.net.text_encoder,
                                                                           rows[i:i + EVAL_BATCH].expand(k, -1)))
                              for i in range(0, len(rows), EVAL_BATCH)], dim=1)

    def generate(self, split, sample=0):
        return self.images(self.texts.rows[split])

    def loss(self, rows, streams):
        pred = self.net.generator(*self.texts.hidden_states(self.net.text_encoder, self.texts.rows["train"][rows]))
        l1 = member_l1(pred, self.targets["train"][rows])
        return l1, l1

    def select(self):
        return member_l1(self.generate("val"), self.targets["val"]).tolist()


@pytest.fixture
def flat():
    families.register(Flat)
    yield Flat
    families.REGISTRY.pop(Flat.name)


SMALL = dict(image_size=32, d_model=32, ff_dim=64, n_layers=1, max_tokens=32, **NO_DROPOUT)


def test_a_registered_family_trains_in_the_one_loop(flat):
    data = tiny_data(n_train=8)
    cfgs = [TrainConfig(lr=lr, epochs=4, batch_size=4, clip_mode="off") for lr in (3e-3, 1e-3)]
    history = []
    final = train_members(ModelConfig(family="flat", **SMALL), cfgs, data, report=lambda m, s: history.append((m, s)),
                          family_cfg=FlatConfig(gain=1.5))
    # Its own metric names, per member; the shared final metrics beside them.
    assert all(Flat.best in m and TEST_L1 in m for m in final)
    assert [m[0]["epoch"] for m, _ in history] == [1, 2, 3, 4]
    assert history[-1][1].family_config == {"gain": 1.5}  # its section travels with the checkpoint
    assert history[-1][0][0]["train/flat_l1"] < history[0][0][0]["train/flat_l1"]  # it learns
    assert final[0][Flat.best] != final[1][Flat.best]  # two members, two learning rates
    with pytest.raises(ValueError, match="gain must be > 0 for the flat family"):
        families.section(ModelConfig(family="flat", **SMALL), FlatConfig(gain=0.0))


def test_a_registered_family_runs_a_search_export_and_generate(flat, tmp_path, monkeypatch):
    """The real CLIs' main functions in this process (a user's script that registers its family, then calls them):
    the search ships the family's class to its Ray workers, which never import this file by name."""
    import ray.cloudpickle

    import sys

    from model.generate import main as generate
    from search.export import main as export
    from search.grid import main as search

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # as a class defined in a user's __main__ is
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = tmp_path / "results"
    grid = ["--lr", "3e-3", "--weight-decay", "0", "--n-heads", "2", "--ff-dim", "64", "--n-layers", "1"]
    rows = search(["--preset", "smoke", "--family", "flat", "--gain", "1.5", "--results", str(results),
                   "--experiment", "flat", "--epochs", "2", "--max-concurrent", "1", *grid])
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["ranked_by"] == Flat.best
    exp = results / "flat"
    export([str(exp)])
    table = json.loads((exp / "best_config.json").read_text())
    assert table["rows"][0]["family"] == "flat" and isinstance(table["rows"][0][Flat.best], float)
    assert json.loads((exp / "provenance.json").read_text())["settings"]["sections"]["flat"] == {"gain": 1.5}

    out = tmp_path / "flat.png"
    generate(["--checkpoint", str(exp / "best_checkpoint"), "A red square creature.", "A blue stripe creature.",
              "--raw", "--out", str(out)])
    with Image.open(out) as im:
        pixels = np.asarray(im.convert("RGB")).astype(int)
    left, right = pixels[2:34, 2:34], pixels[2:34, 36:68]  # two 32 px images side by side, 2 px gaps
    assert np.ptp(left.reshape(-1, 3), axis=0).max() <= 1 and np.ptp(right.reshape(-1, 3), axis=0).max() <= 1
    assert np.abs(left[0, 0] - right[0, 0]).max() > 0  # two texts, two colours
