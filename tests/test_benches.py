"""Every bench whose figures README.md or results/BENCHMARKS.md quote runs end to end in its `--quick` form, so a
refactor cannot break one unseen. Each test reads what the bench prints or returns (its table's rows, the machine
line, numbers that must be finite or obey an invariant); the quick forms measure nothing. In one file, so one
process imports torch, the text encoder and Ray once for all of them: bench_vs_tutorial runs both ways on the Ray
that bench_tune_overhead started and the smoke set it prepared (their order here is what saves it).

Elsewhere: bench_vs_tutorial's pieces (tests/test_bench_vs_tutorial.py), bench_data_pipeline beside the pipeline's
tests and their Ray (tests/test_data_prepare.py), bench_gpu_grid in a process where only torch and transformers
import (tests/test_members.py), bench_resume_race's toy trial (tests/test_tune_restore.py).
"""

from __future__ import annotations

import json
import math

import pytest
import ray

from benches import load_bench, table
from model.config import (BEST_VAL_L1, TEST_ATTR_ALL, TEST_COPY_RATE, TEST_DIVERSITY, TEST_KID_RANDOM, TEST_L1,
                          TEST_R1, TEST_TYPE_ACC, TRAIN_L1, VAL_ATTR_MEAN, VAL_L1)
from search.settings import resolve


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and 0 < x < math.inf


def with_interval(row: dict, name: str, low: float = 0.0, high: float = 1.0) -> bool:
    """A final metric with its 95% interval around it, all within [low, high]."""
    return low <= row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"] <= high


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
    assert [(r["k"], r["compiled"]) for r in rows] == [(1, False), (2, False)]
    one, two = rows
    assert all(finite_positive(r["ops"]) and 0 < r["leaf"] < r["ops"] for r in rows)
    assert two["leaf"] < one["leaf"]  # a fused step dispatches fewer kernels per trained sample
    out = capsys.readouterr().out
    assert machine_named(out)
    body = table(out, "| members K |")
    assert [row[4] for row in body] == ["1.00x", f"{two['leaf'] / one['leaf']:.2f}x"]


def test_bench_recipes_quick(tmp_path, capsys):
    rows = load_bench("bench_recipes").main(["--quick", "--out", str(tmp_path)])
    assert [r["recipe"] for r in rows] == ["laptop-staged"]  # laptop alone: test_bench_diffusion_quick_recipes
    assert rows[0]["config"]["finetune_epochs"] == 2 and rows[0]["config"]["epochs"] == 1  # 3 epochs in all
    assert rows[0]["config"]["d_model"] == 64 and rows[0]["config"]["pooled_text"]  # the laptop recipe's own
    for r in rows:
        assert 0 < r[BEST_VAL_L1] < 2 and 0 < r[TEST_L1] < 2 and r["best_epoch"] in (1, 2, 3)
        assert all(with_interval(r, m) for m in (TEST_ATTR_ALL, TEST_R1, TEST_TYPE_ACC, TEST_COPY_RATE))
        assert with_interval(r, TEST_KID_RANDOM, -1, 10) and TEST_DIVERSITY not in r  # a regressor: one image per text
        assert (tmp_path / f"samples_{r['recipe']}.png").stat().st_size > 0
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    saved = json.loads((tmp_path / "recipes.json").read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["laptop-staged"] and " cores" in saved["machine"]
    out = capsys.readouterr().out
    assert machine_named(out)
    body = table(out, "| recipe |")
    median = saved["baselines"]["baseline/test_l1_median_train_image"]
    assert [row[3] for row in body] == [f"{r[TEST_L1] / median - 1:+.1%}" for r in rows]  # vs the median image
    assert [row[4] for row in body] == [f"{r[TEST_ATTR_ALL]:.3f} [{r[TEST_ATTR_ALL + '_lo']:.3f}, "
                                        f"{r[TEST_ATTR_ALL + '_hi']:.3f}]" for r in rows]  # with its interval
    assert "attr_all real " in out and "type acc real " in out  # the baselines it is read against


def test_bench_diffusion_quick_throughput(capsys):
    rows = load_bench("bench_diffusion").main(["--quick", "--throughput", "--repeats", "2"])
    assert [r["variant"] for r in rows] == ["first (batch 64)", "synthetic recipe, flash attention"]
    assert all(len(r["runs"]) == 2 and all(map(finite_positive, r["runs"])) for r in rows)  # measured twice, in turn
    assert all(r["samples_per_s"] == pytest.approx(sum(r["runs"]) / 2) for r in rows)
    out = capsys.readouterr().out
    first = rows[0]
    assert machine_named(out) and table(out, "| variant |")[0] == [
        "first (batch 64)", f"{first['samples_per_s']:.1f}", " / ".join(f"{x:.1f}" for x in first["runs"]), "1.00x"]


def test_bench_diffusion_quick_recipes(tmp_path, capsys):
    """A diffusion recipe and a regressor beside it, the guidance sweep and README's figure, one epoch each."""
    figure = tmp_path / "families.png"
    rows = load_bench("bench_diffusion").main(["--quick", "--recipes", "synthetic-small", "--regressor", "laptop",
                                               "--regressor-epochs", "1", "--guidance", "1", "3", "--figure",
                                               str(figure), "--out", str(tmp_path)])
    assert [(r["recipe"], r["family"], r["epochs"]) for r in rows] == [("synthetic-small", "diffusion", 1),
                                                                      ("regressor laptop", "regressor", 1)]
    for r in rows:
        assert all(with_interval(r, m) for m in (TEST_ATTR_ALL, TEST_R1, TEST_TYPE_ACC, TEST_COPY_RATE))
        assert with_interval(r, TEST_KID_RANDOM, -1, 10)
    assert with_interval(rows[0], TEST_DIVERSITY, 0, 10) and TEST_DIVERSITY not in rows[1]  # a sampler's only
    sweep = rows[0]["guidance_sweep"]
    assert [g["guidance"] for g in sweep] == [1.0, 3.0] and "guidance_sweep" not in rows[1]
    assert all(with_interval(g, VAL_ATTR_MEAN) and with_interval(g, TEST_ATTR_ALL) for g in sweep)
    for name in ("curves.png", "samples_synthetic-small.png", "samples_regressor_laptop.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert figure.stat().st_size > 0
    saved = json.loads((tmp_path / "diffusion.json").read_text())
    assert len(saved["rows"]) == 2 and " cores" in saved["machine"]
    out = capsys.readouterr().out
    assert machine_named(out) and "one epoch per recipe (--quick)" in out
    body = table(out, "| recipe | samples/s |")
    assert [row[2] for row in body] == ["1 (1)", "1 (4)"]  # epochs (steps): 32 rows
    div = TEST_DIVERSITY
    assert [row[-2] for row in body] == ["-" if div not in r else
                                         f"{r[div]:.3f} [{r[div + '_lo']:.3f}, {r[div + '_hi']:.3f}]" for r in rows]

    # --checkpoint: the same sweep of the trained checkpoint, no training (deterministic: the same numbers at the
    # same scale); the scale chosen on val is marked in the table
    again = load_bench("bench_diffusion").main(["--quick", "--checkpoint", rows[0]["checkpoint"], "--guidance", "3", "1",
                                                "--figure", str(tmp_path / "chosen.png")])
    assert [g["guidance"] for g in again] == [3.0, 1.0]
    assert {m: again[1][m] for m in (VAL_ATTR_MEAN, TEST_ATTR_ALL, TEST_KID_RANDOM)} == \
        {m: sweep[0][m] for m in (VAL_ATTR_MEAN, TEST_ATTR_ALL, TEST_KID_RANDOM)}
    body = table(capsys.readouterr().out, "| guidance |")
    chosen = max(range(2), key=lambda i: again[i][VAL_ATTR_MEAN])  # graded: the two scales rarely tie on it
    assert [row[0] for row in body] == [["**3**", "1"], ["3", "**1**"]][chosen]
    assert (tmp_path / "chosen.png").stat().st_size > 0

    # --probe: the attributes of its clean-image estimate per signal level, with the text and with the empty text
    probed = load_bench("bench_diffusion").main(["--quick", "--checkpoint", rows[0]["checkpoint"], "--probe"])
    assert [r["level"] for r in probed] == [0.0, 0.001, 0.003, 0.01, 0.05, 0.1, 0.2]
    assert all(0 <= r[k][a] <= 1 for r in probed for k in ("text", "empty") for a in ("colour", "shape", "size"))
    assert probed[0]["t"] > probed[-1]["t"]  # more noise, a later timestep
    body = table(capsys.readouterr().out, "| attribute, estimate from |")
    assert body[2][0] == "shape, the text" and body[2][1] == f"{probed[0]['text']['shape']:.2f}"

    # --selection: the checkpoint's selection metric again, in fp32 (what its fp32 training recorded as its best)
    # and under bf16 (close, not equal)
    picked = load_bench("bench_diffusion").main(["--quick", "--selection", rows[0]["checkpoint"]])
    assert picked[0]["fp32"] == pytest.approx(rows[0]["best"], rel=1e-5)
    assert picked[0]["bf16"] == pytest.approx(picked[0]["fp32"], rel=0.02) and picked[0]["bf16"] != picked[0]["fp32"]
    body = table(capsys.readouterr().out, "| checkpoint | fp32 | bf16 |")
    assert body[0][:3] == [rows[0]["checkpoint"], f"{picked[0]['fp32']:.5f}", f"{picked[0]['bf16']:.5f}"]


def test_bench_type_classifier_quick(tmp_path, capsys):
    result = load_bench("bench_type_classifier").main(["--quick", "--out", str(tmp_path)])
    acc = result["accuracy"]
    assert list(acc)[:3] == ["ceiling: real test images", "chance: majority type's share", "real val images"]
    assert len(acc) == 7 and all(0 <= a <= 1 for a in acc.values())
    assert result["cache"].startswith(str(tmp_path)) and (tmp_path / result["cache"].split("/")[-1]).exists()
    captured = capsys.readouterr()
    assert captured.err.count("type_classifier fitted") == 1  # the second call loaded it from the cache
    assert machine_named(captured.out)


def test_bench_eval_models_quick(capsys):
    """The evaluator networks fitted for a moment on 40 synthetic creatures: every printed interval holds its mean,
    R-precision's chance is 1/(test records), each classifier has its disc row, and a minimum detectable difference
    is finite, and zero exactly where the matching row's per-record scores are all equal (a zero-width interval)."""
    import re

    result = load_bench("bench_eval_models").main(["--quick"])
    rows, n = result["rows"], result["test_records"]
    out = capsys.readouterr().out
    assert machine_named(out) and f", {n} test records, 32 px" in out and n == 4  # 40 creatures: 32 / 4 / 4
    for fit in ("in-domain text-image model: fit", "in-domain text-image model: cached load",
                "CNN type classifier: fit", "histogram type classifier: fit"):
        assert re.search(rf"^  {fit}\s+\d+\.\d s wall\s+\d+\.\d s CPU   load ", out, re.M), fit

    printed = re.findall(r"^  (.+?)\s+(-?\d+\.\d{4})  \[\s*(-?\d+\.\d{4}),\s+(-?\d+\.\d{4})\]$", out, re.M)
    intervals = {name: value for name, value in rows.items() if isinstance(value, tuple)}
    assert len(printed) == len(intervals) > 30 and {name for name, *_ in printed} == set(intervals)
    assert all(float(lo) <= float(mean) <= float(hi) for _, mean, lo, hi in printed)
    assert all(i.lo <= i.mean <= i.hi for i in intervals.values())
    assert rows["baseline/r_precision_top1_chance"] == 1 / n and rows["baseline/r_precision_top5_chance"] == 1.0
    for clf in ("cnn", "zeroshot", "histogram"):
        for images in ("real test images", "flat disc in the type's mean colour"):
            assert 0 <= rows[f"type accuracy, {clf}: {images}"].mean <= 1

    mdd = out.split("minimum detectable difference between two independent rows at 4 records")[1]
    mdd = dict(re.findall(r"^  (.+?)\s+(-?\d+\.\d{4})$", mdd, re.M))
    scored_by = {"test/indomain_align": "baseline/indomain_align_real",  # the row whose per-record scores it uses
                 "test/r_precision_top1": "baseline/r_precision_top1_real",
                 "test/r_precision_top5": "baseline/r_precision_top5_real",
                 **{f"test/type_acc ({c})": f"type accuracy, {c}: real test images"
                    for c in ("cnn", "zeroshot", "histogram")},
                 **{f"test/kid_{f} (from its interval)": f"test/kid_{f}: real val images" for f in ("indomain", "random")}}
    assert set(mdd) == {*scored_by, "indomain_align gap to shuffled texts"}
    assert all(math.isfinite(rows[name]) and rows[name] >= 0 for name in mdd)
    assert all((rows[name] > 0) == (rows[row].lo < rows[row].hi) for name, row in scored_by.items())
    assert finite_positive(rows["indomain_align gap to shuffled texts"])  # cosines of real vs shuffled texts differ

def test_bench_tune_overhead_quick(capsys):
    [r] = load_bench("bench_tune_overhead").main(["--quick", "--fuse", "on"])
    assert (r["fuse"], r["trials"], r["rows"], r["ok"], r["concurrency"]) == ("on", 1, 2, 2, 1)  # 2 members, 1 trial
    assert 0 <= r["overhead"] < 1 and 0 < r["startup_s"] < r["fit_s"] < r["command_s"]
    out = capsys.readouterr().out
    assert "Ray Tune overhead" in out and " cores" in out
    [row] = table(out, "| --fuse |")
    assert row[:3] == ["on", "1 (2 rows, 2 ok)", "1"] and row[6] == f"{r['overhead']:.1%}"


def test_bench_vs_tutorial_quick(tmp_path, capsys):
    """ours (search.grid's main) and the tutorial way (its Tuner over `train_pokemon`), on one point of the smoke
    grid (the `family` axis included), in this process after bench_tune_overhead: its Ray and its prepared smoke set
    (the agreement over pairs and reshuffles: tests/test_bench_vs_tutorial.py). What it reads back: one report and one kept checkpoint per epoch of each tutorial trial, with the
    timing buckets the bench sums, on ours' data and split, each way's output lines timed; what it prints: both
    ways' rows with a finite positive ratio, every table, the machine."""
    bench = load_bench("bench_vs_tutorial")
    [r] = bench.main(["--quick", "--json", str(tmp_path / "vs.json")])
    settings = resolve("smoke", bench.QUICK_GRID)
    assert settings.grid["family"] == ("regressor",) and r["points"] == 1 and r["epochs"] == settings.train.epochs
    assert r["same_data"] and r["agreement"]["same_split"]
    assert r["agreement"]["split_sizes"] == {"train": 8, "val": 8, "test": 8}  # the smoke preset's 8 records
    assert r["agreement"]["pairs_identical"] == {"ours": None, "tutorial": None}  # no weight-decay pair
    [point] = r["agreement"]["points"]
    assert point["point"]["family"] == "regressor"
    assert all(0 < point[way] < 2 for way in ("ours", "tutorial"))  # L1 of images in [-1, 1]
    assert point["tutorial_reshuffled"] is None and r["agreement"]["tolerance"] is None  # no calibration in --quick
    assert 0 < r["agreement"]["best"]["tutorial_test_l1"] < 2 and 0 < r["agreement"]["best"]["ours_test_l1"] < 2

    trials = r["tutorial"]["trials"]
    assert len(trials) == 1 and all(t["error"] is None for t in trials)
    for t in trials:
        assert [h["epoch"] for h in t["history"]] == list(range(1, r["epochs"] + 1))
        assert all(math.isfinite(h[TRAIN_L1]) and math.isfinite(h[VAL_L1]) for h in t["history"])
        assert all(f"time/{k}" in h for h in t["history"] for k in bench.TIMING)
        assert t["history"][0]["time/setup_s"] > 0 and t["history"][-1]["time/train_step_s"] > 0
    assert r["tutorial"]["checkpoints"] == r["epochs"]  # the tutorial's Tune keeps every checkpoint
    assert 0 < r["ours"]["checkpoints"] <= r["tutorial"]["checkpoints"]
    assert all(r[way]["before_fit_s"] < r[way]["wall_s"] for way in ("ours", "tutorial"))  # the lines' marks, timed
    assert r["ours"]["data_ready_s"] < r["ours"]["before_fit_s"]
    steps = r["step_ms"]
    assert set(steps) == {"tokenizer", "text encoder", "generator + backward + AdamW"} and min(steps.values()) > 0

    out = capsys.readouterr().out
    assert "This project vs the Ray Tune PyTorch tutorial pattern" in out and " cores" in out and "torch " in out
    rows = table(out, "| preset | points x epochs x rows | way |")
    assert [(row[0], row[1], row[2]) for row in rows] == [("smoke", "1 x 2 x 8", "ours"), ("smoke", "1 x 2 x 8", "tutorial")]
    ratio = float(rows[1][6].strip("*x"))
    assert 0 < ratio < math.inf and ratio == pytest.approx(r["tutorial"]["wall_s"] / r["ours"]["wall_s"], abs=0.01)
    [agree] = table(out, "| preset | same data and split")
    assert agree[1:5] == ["yes (8/8/8)", "None, None", "1", "not run (--quick)"]
    [timing] = [row for row in table(out, "| preset | way | trial time") if row[1] == "tutorial"]
    assert len(timing) == 13 and all(float(c) >= 0 for c in timing[5:11])  # the measured buckets
    assert len(table(out, "| preset | batch | tutorial, in the run")) == 1
    assert json.loads((tmp_path / "vs.json").read_text())[0]["points"] == 1


def test_bench_resume_race_quick(capsys):
    """One driver killed mid-search and resumed, with the fix: no errored trial, no epoch missing."""
    [r] = load_bench("bench_resume_race").main(["--quick", "--variants", "mixin"])
    assert r["runs"] == 1 and r["trials"] == 1 and (r["errored"], r["gaps"], r["empty"]) == (0, 0, 0)
    out = capsys.readouterr().out
    assert " cores" in out
    assert table(out, "| variant |") == [["the fix (search.restore + search.snapshot)", "0/1", "0/1", "0",
                                          str(r["refused"]), "0"]]
