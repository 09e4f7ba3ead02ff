"""Every bench whose figures README.md or results/BENCHMARKS.md quote runs end to end in its `--quick` form, so a
refactor cannot break one unseen. Each test reads what the bench prints or returns (its table's rows, the machine
line, numbers that must be finite or obey an invariant); the quick forms measure nothing. In one file, so one
process imports torch, the text encoder and Ray once for all of them.

Elsewhere: bench_vs_tutorial (tests/test_bench_vs_tutorial.py), bench_data_pipeline (tests/test_data_prepare.py),
bench_gpu_grid (tests/test_members.py), bench_resume_race's toy trial (tests/test_tune_restore.py).
"""

from __future__ import annotations

import json
import math

import pytest
import ray

from benches import load_bench, table
from model.config import BEST_VAL_L1, TEST_L1, TEST_MEMORISATION, TEST_TYPE_ACC


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and 0 < x < math.inf


def machine_named(out: str) -> bool:
    """bench/machine.py's line: CPU, cores, torch."""
    return "machine: " in out and " cores" in out and "torch " in out


@pytest.fixture(scope="module", autouse=True)
def ray_down_after():
    """bench_tune_overhead starts Ray in this process, as search.grid does: the next test file starts clean."""
    started = not ray.is_initialized()
    yield
    if started and ray.is_initialized():
        ray.shutdown()


def test_bench_model_quick(capsys):
    from model.text import load_text_encoder

    result = load_bench("bench_model").main(["--quick"])
    sizes = result["sizes"]
    assert len(sizes) == 8
    by = {(s["n_heads"], s["ff_dim"], s["n_layers"]): s["generator"] for s in sizes}
    assert all(by[2, f, n] == by[4, f, n] for f in (512, 1024) for n in (2, 3))  # heads split the same width
    assert all(by[h, f, 3] > by[h, f, 2] and by[h, 1024, n] > by[h, 512, n] for h in (2, 4) for f in (512, 1024)
               for n in (2, 3))
    encoder = sum(p.numel() for p in load_text_encoder()[1].parameters())
    assert {s["with_encoder"] - s["generator"] for s in sizes} == {encoder}
    assert finite_positive(result["ratio"]) and finite_positive(result["fine_tuned_samples_per_s"])
    out = capsys.readouterr().out
    assert machine_named(out) and len(table(out, "| n_heads |")) == 8
    assert [row[0] for row in table(out, "| text encoder |")] == ["frozen (hidden states cached)",
                                                                   "fine-tuned (encoder in every step)"]


def test_bench_loop_speed_quick(capsys):
    speeds = load_bench("bench_loop_speed").main(["32", "here", "--quick"])
    assert len(speeds) == 1 and finite_positive(speeds[0])
    out = capsys.readouterr().out
    assert "here: samples/s per epoch [" in out and " cores" in out


def test_bench_launches_quick(capsys):
    rows = load_bench("bench_launches").main(["--quick"])
    assert [(r["k"], r["compiled"]) for r in rows] == [(1, False), (4, False)]
    one, four = rows
    assert all(finite_positive(r["ops"]) and 0 < r["leaf"] < r["ops"] for r in rows)
    assert four["leaf"] < one["leaf"]  # a fused step dispatches fewer kernels per trained sample
    out = capsys.readouterr().out
    assert machine_named(out)
    body = table(out, "| members K |")
    assert [row[4] for row in body] == ["1.00x", f"{four['leaf'] / one['leaf']:.2f}x"]


def test_bench_recipes_quick(tmp_path, capsys):
    rows = load_bench("bench_recipes").main(["--quick", "--out", str(tmp_path)])
    assert [r["recipe"] for r in rows] == ["laptop-staged"]  # laptop alone: test_bench_diffusion_quick_recipes
    assert rows[0]["config"]["finetune_epochs"] == 2 and rows[0]["config"]["epochs"] == 1  # 3 epochs in all
    assert rows[0]["config"]["d_model"] == 64 and rows[0]["config"]["pooled_text"]  # the laptop recipe's own
    for r in rows:
        assert 0 < r[BEST_VAL_L1] < 2 and 0 < r[TEST_L1] < 2 and r["best_epoch"] in (1, 2, 3)
        assert (tmp_path / f"samples_{r['recipe']}.png").stat().st_size > 0
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "recipes.json").read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["laptop-staged"] and " cores" in saved["machine"]
    out = capsys.readouterr().out
    assert machine_named(out)
    body = table(out, "| recipe |")
    median = saved["baselines"]["baseline/test_l1_median_train_image"]
    assert [row[3] for row in body] == [f"{r[TEST_L1] / median - 1:+.1%}" for r in rows]  # vs the median image


def test_bench_diffusion_quick_throughput(capsys):
    rows = load_bench("bench_diffusion").main(["--quick", "--throughput"])
    assert [r["variant"] for r in rows] == ["first (batch 64)", "batch 32"]
    assert all(finite_positive(r["samples_per_s"]) for r in rows)
    out = capsys.readouterr().out
    assert machine_named(out) and table(out, "| variant |")[0] == ["first (batch 64)", f"{rows[0]['samples_per_s']:.1f}",
                                                                    "1.00x"]


def test_bench_diffusion_quick_recipes(tmp_path, capsys):
    """A diffusion recipe and a regressor beside it, the guidance sweep and README's figure, one epoch each."""
    figure = tmp_path / "families.png"
    rows = load_bench("bench_diffusion").main(["--quick", "--recipes", "synthetic-small", "--regressor", "laptop",
                                               "--regressor-epochs", "1", "--guidance", "1", "3", "--figure",
                                               str(figure), "--out", str(tmp_path)])
    assert [(r["recipe"], r["family"], r["epochs"]) for r in rows] == [("synthetic-small", "diffusion", 1),
                                                                      ("regressor laptop", "regressor", 1)]
    assert all(0 <= r[TEST_TYPE_ACC] <= 1 and finite_positive(r[TEST_MEMORISATION]) for r in rows)
    assert [g["guidance"] for g in rows[0]["guidance_sweep"]] == [1.0, 3.0] and "guidance_sweep" not in rows[1]
    for name in ("curves.png", "samples_synthetic-small.png", "samples_regressor_laptop.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert figure.stat().st_size > 0
    saved = json.loads((tmp_path / "diffusion.json").read_text())
    assert len(saved["rows"]) == 2 and " cores" in saved["machine"]
    out = capsys.readouterr().out
    assert machine_named(out) and "one epoch per recipe (--quick)" in out
    assert [row[2] for row in table(out, "| recipe | samples/s |")] == ["1 (1)", "1 (4)"]  # epochs (steps): 32 rows


def test_bench_type_classifier_quick(tmp_path, capsys):
    result = load_bench("bench_type_classifier").main(["--quick", "--out", str(tmp_path)])
    acc = result["accuracy"]
    assert list(acc)[:3] == ["ceiling: real test images", "chance: majority type's share", "real val images"]
    assert len(acc) == 7 and all(0 <= a <= 1 for a in acc.values())
    assert result["cache"].startswith(str(tmp_path)) and (tmp_path / result["cache"].split("/")[-1]).exists()
    captured = capsys.readouterr()
    assert captured.err.count("type_classifier fitted") == 1  # the second call loaded it from the cache
    assert machine_named(captured.out)


def test_bench_tune_overhead_quick(capsys):
    [r] = load_bench("bench_tune_overhead").main(["--quick", "--fuse", "on"])
    assert (r["fuse"], r["trials"], r["rows"], r["ok"], r["concurrency"]) == ("on", 1, 2, 2, 1)  # 2 members, 1 trial
    assert 0 <= r["overhead"] < 1 and 0 < r["startup_s"] < r["fit_s"] < r["command_s"]
    out = capsys.readouterr().out
    assert "Ray Tune overhead" in out and " cores" in out
    [row] = table(out, "| --fuse |")
    assert row[:3] == ["on", "1 (2 rows, 2 ok)", "1"] and row[6] == f"{r['overhead']:.1%}"


def test_bench_resume_race_quick(capsys):
    """One driver killed mid-search and resumed, with the fix: no errored trial, no epoch missing."""
    [r] = load_bench("bench_resume_race").main(["--quick", "--variants", "mixin"])
    assert r["runs"] == 1 and r["trials"] == 1 and (r["errored"], r["gaps"], r["empty"]) == (0, 0, 0)
    out = capsys.readouterr().out
    assert " cores" in out
    assert table(out, "| variant |") == [["the fix (search.trainable + search.snapshot)", "0/1", "0/1", "0",
                                          str(r["refused"]), "0"]]
