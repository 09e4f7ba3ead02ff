"""Staged training: stage 2 continues from stage 1's best weights with the text encoder's top layers unfrozen."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from data_pipeline.dataset import PreparedData, Split
from model import checkpoint
from model.config import TEST_L1, VAL_L1, TrainConfig
from model.generate import generate, load_model
from model.eval.evaluator import images, member_l1
from model.text import load_text_encoder
from model.train import train, train_members
from test_members import SMALL
from test_model import tiny_data

STAGED = TrainConfig(lr=3e-3, weight_decay=0.0, epochs=3, batch_size=4, clip_mode="off", finetune_epochs=1,
                     finetune_layers=2, finetune_lr=0.0)


def _run(model_cfg, cfg, data, stop_after=None, resume=None):
    history, states = [], []

    def report(metrics, state):
        history.append(metrics)
        states.append(state)
        if metrics["epoch"] == stop_after:
            raise KeyboardInterrupt  # a killed run: its last state is what a checkpoint holds

    try:
        final = train(model_cfg, cfg, data, report=report, resume=resume)
    except KeyboardInterrupt:
        final = None
    return history, states, final


def _pretrained(name: str) -> dict:
    return {f"text_encoder.{k}": v for k, v in load_text_encoder()[1].named_parameters() if k.startswith(name)}


@pytest.mark.parametrize("layers", [2, 0])
def test_stage_two_starts_from_stage_one_best_weights(layers):
    # Training images black, validation images white: the better a model fits training, the worse its
    # validation, so stage 1's best weights are its first epoch's, far from its last.
    data = tiny_data(n_train=12)
    train_split = Split(data.train.ids, data.train.texts, -np.ones_like(data.train.images))
    val_split = Split(data.val.ids, data.val.texts, np.ones_like(data.val.images))
    data = PreparedData(train_split, val_split, data.test, data.info)
    # finetune_lr 0: stage 2 moves nothing, so its weights are exactly the ones it started from.
    history, states, _ = _run(SMALL, replace(STAGED, finetune_layers=layers), data)

    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert np.argmin([h[VAL_L1] for h in history[:3]]) == 0 and history[2][VAL_L1] > history[0][VAL_L1] + 0.05
    stage1_best, stage1_last = states[2].best_model[0], states[2].model
    assert not any(k.startswith("text_encoder.") for k in stage1_last)  # stage 1: the encoder is frozen
    assert any(not torch.equal(stage1_best[k][0], stage1_last[k][0]) for k in stage1_last)
    stage2 = states[3].model
    for k, w in stage1_best.items():
        assert torch.equal(stage2[k], w), k  # the generator starts from stage 1's best, not its last weights
    top = _pretrained("encoder.layer.4.") | _pretrained("encoder.layer.5.") if layers else {}
    assert set(k for k in stage2 if k.startswith("text_encoder.")) == set(top)  # the top 2 of 6 layers, or none
    for k, w in top.items():
        assert torch.equal(stage2[k], w), k  # ... and from the pretrained encoder
    assert history[3][VAL_L1] == pytest.approx(history[0][VAL_L1], rel=1e-5)


def test_stage_two_fine_tunes_the_top_layers_saves_them_and_resumes_exactly(tmp_path):
    data = tiny_data(n_train=8)
    cfg = replace(STAGED, epochs=1, finetune_epochs=2, finetune_layers=1, finetune_lr=3e-3)
    history, states, final = _run(SMALL, cfg, data)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    weights = states[-1].best_model[0]
    moved = {k: (weights[k] - w).abs().max().item() for k, w in _pretrained("encoder.layer.5.").items()}
    assert max(moved.values()) > 1e-4, moved  # the top layer learned
    assert not any(k.startswith("text_encoder.encoder.layer.4.") for k in weights)  # the rest stays frozen

    # The checkpoint generates with the fine-tuned layer: the same test L1 as training's final metrics.
    path = checkpoint.save(states[-1], tmp_path / "staged")
    net, tokenizer = load_model(path, device="cpu")
    generated = generate(net, tokenizer, data.test.texts)
    assert member_l1(generated[None], images(data.test, "cpu")).item() == pytest.approx(final[TEST_L1], rel=1e-5)

    # Killed after stage 2's first epoch, resumed: the same weights as the uninterrupted run.
    _, killed, _ = _run(SMALL, cfg, data, stop_after=2)
    resumed_history, resumed, _ = _run(SMALL, cfg, data, resume=checkpoint.load(checkpoint.save(killed[-1], tmp_path / "k")))
    assert [h["epoch"] for h in resumed_history] == [3]
    for k, w in states[-1].model.items():
        assert torch.equal(resumed[-1].model[k], w), k


def test_staged_training_trains_alone_from_a_frozen_encoder():
    data = tiny_data()
    with pytest.raises(ValueError, match="train a staged trial alone"):
        train_members(SMALL, [STAGED, replace(STAGED, lr=1e-3)], data)
    with pytest.raises(ValueError, match="freeze_text_encoder=True"):
        train(replace(SMALL, freeze_text_encoder=False), STAGED, data)
    with pytest.raises(ValueError, match="has 6 layers"):
        train(SMALL, replace(STAGED, epochs=1, finetune_layers=7), data)
    with pytest.raises(ValueError, match=r"finetune_layers must be in \[0, inf\), got -1"):
        TrainConfig(finetune_epochs=1, finetune_layers=-1)
