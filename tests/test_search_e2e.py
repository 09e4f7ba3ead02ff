"""The real entry points in smoke mode: `python -m search.grid` and `python -m search.export`.

Each test runs the CLI as a subprocess (its own local Ray, as a user would) on the embedded
synthetic data, and checks the files it leaves. About 2-3 minutes in all on 2 cores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from model import checkpoint
from model.config import BEST_VAL_DENOISE, BEST_VAL_L1

REPO = Path(__file__).resolve().parents[1]
GRID_KEYS = ("lr", "weight_decay", "n_heads", "ff_dim", "n_layers")
pytestmark = pytest.mark.slow


def run_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


def read_table(exp: Path) -> list[dict]:
    with open(exp / "best_config.csv") as f:
        return list(csv.DictReader(f))


def trial_states(exp: Path) -> dict[str, str]:
    """trial_id -> status, from the experiment snapshot Tune keeps on disk (what --resume reads)."""
    from ray.tune import ExperimentAnalysis

    # Trials that have not reported yet have no result files: expected mid-search, not worth a warning.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    return {t.trial_id: t.status for t in ExperimentAnalysis(str(exp)).trials}


def assert_valid_png(path: Path):
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) > 100
        im.verify()


def interrupt_after(cmd, tune_exp: Path, at_least: int, sig: int, log: Path, while_waiting=None) -> tuple[int, dict]:
    """Run `cmd` until `at_least` trials have finished, then send `sig` to its process group
    (Ctrl-C reaches the whole foreground group; SIGKILL takes the driver and its local Ray, like a crash).
    `while_waiting()` is called at every poll. Returns the exit status and the trials finished at the signal."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            finished = {}
            while len(finished) < at_least:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, f"fewer than {at_least} trials finished in 240 s"
                time.sleep(0.5)
                if while_waiting is not None:
                    while_waiting()
                try:
                    finished = {t: s for t, s in trial_states(tune_exp).items() if s == "TERMINATED"}
                except Exception:  # noqa: BLE001 — the experiment is still being created
                    pass
            os.killpg(proc.pid, sig)
            rc = proc.wait(timeout=180)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of its local Ray is left
            except ProcessLookupError:
                pass
            proc.wait()
    return rc, finished


# Dropout off and 12 epochs: the unfused and the fused grid then train identically (a fused member equals
# its single run to float rounding), and a fused trial lasts long enough to be killed mid-training.
SMOKE = ["--preset", "smoke", "--epochs", "12", "--dropout-encoder", "0", "--dropout-attention", "0",
         "--dropout-decoder", "0"]


@pytest.fixture(scope="module")
def unfused(tmp_path_factory):
    """The 32-trial grid, unfused: its driver crashed (SIGKILL) after 4 trials, then `--resume` to the end.
    The command carries config flags (their stored values) because "rerun the same command with --resume"
    is what the search tells the user. Shared by the two tests below (the fused grid is compared with it)."""
    tmp = tmp_path_factory.mktemp("unfused")
    results = tmp / "results"
    tune_exp = results / "tune" / "grid-smoke"
    cmd = [sys.executable, "-m", "search.grid", *SMOKE, "--fuse", "off", "--results", str(results)]
    rc, finished = interrupt_after(cmd, tune_exp, 4, signal.SIGKILL, tmp / "crash.log")
    assert rc == -signal.SIGKILL and len(finished) < 32, "the search finished before the crash: nothing resumed"
    kept = {t: next(tune_exp.glob(f"trial_{t}/result.json")).read_text() for t in finished}
    run_cli(*cmd[2:], "--resume")
    return SimpleNamespace(tmp=tmp, results=results, exp=results / "grid-smoke", tune_exp=tune_exp, kept=kept)


def test_smoke_grid_crashed_resumed_and_exported(unfused):
    """The unfused grid after a driver crash and --resume; then search.export rebuilds the results."""
    results, exp, tune_exp, tmp_path = unfused.results, unfused.exp, unfused.tune_exp, unfused.tmp
    states = trial_states(tune_exp)
    assert len(states) == 32 and set(states.values()) == {"TERMINATED"}
    for t, text in unfused.kept.items():  # finished before the crash: not run again
        assert next(tune_exp.glob(f"trial_{t}/result.json")).read_text() == text

    rows = read_table(exp)
    assert len(rows) == 32 and all(r["status"] == "ok" for r in rows)
    vals = [float(r[BEST_VAL_L1]) for r in rows]
    assert vals == sorted(vals) and [r["best"] for r in rows].count("yes") == 1 and rows[0]["best"] == "yes"
    assert {r["test/clip_score"] for r in rows} == {"off"}  # the smoke preset turns CLIP off
    assert len({(r["lr"], r["weight_decay"], r["n_heads"], r["ff_dim"], r["n_layers"]) for r in rows}) == 32

    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["settings"]["preset"] == "smoke" and prov["dataset"]["synthetic"] is True
    assert prov["dataset"]["fingerprint"] and prov["code_version"] and prov["ray_version"].startswith("2.60")
    assert prov["best_trial"]["trial_id"] == rows[0]["trial_id"] and "cpu" in prov["devices"]
    md = (exp / "best_config.md").read_text()
    assert "preset: **smoke**" in md and "SYNTHETIC" in md and prov["dataset"]["fingerprint"] in md
    payload = json.loads((exp / "best_config.json").read_text())
    assert len(payload["rows"]) == 32 and payload["provenance"]["experiment"] == "grid-smoke"
    for name in ("learning_curves.png", "samples_train.png", "samples_test.png"):
        assert_valid_png(exp / name)

    # The best checkpoint is what model.generate loads: a finished trial keeps its best weights only.
    from model import checkpoint
    from model.generate import main as generate

    best_state = checkpoint.load(exp / "best_checkpoint")
    assert best_state["best_model"] and "optimizer" not in best_state and "model" not in best_state

    generate(["--checkpoint", str(exp / "best_checkpoint"), "A small red creature.", "--out", str(tmp_path / "g.png")])
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.size == (256, 256)  # 32 px enlarged ×8 to be seen

    # search.export rebuilds every file from the stored experiment alone.
    table = (exp / "best_config.csv").read_text()
    for name in ("best_config.csv", "best_config.md", "best_config.json", "learning_curves.png",
                 "samples_train.png", "samples_test.png"):
        (exp / name).unlink()
    run_cli("search.export", str(exp))
    assert (exp / "best_config.csv").read_text() == table
    for name in ("learning_curves.png", "samples_train.png", "samples_test.png"):
        assert_valid_png(exp / name)
    assert sorted(p.name for p in results.iterdir()) == ["grid-smoke", "tune"], "temporary folders left"
    for path in (exp, *exp.rglob("*")):
        assert os.stat(path).st_mode & 0o044 == 0o044, f"{path}: others on shared storage cannot read it"


def read_event_scalars(trial_dir: Path) -> dict[tuple[str, int], float]:
    """(tag, step) -> value from every TensorBoard event file in a trial folder, read as TensorBoard does: TFRecord
    frames (length, its CRC, an Event protobuf, its CRC) of tensorboardX's own schema, CRCs checked."""
    import struct

    from tensorboardX.crc32c import crc32c
    from tensorboardX.proto.event_pb2 import Event

    def masked(data: bytes) -> int:
        x = crc32c(data) & 0xFFFFFFFF
        return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    out = {}
    for path in sorted(trial_dir.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            header = data[pos:pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked(header), path
            body = data[pos + 12:pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])[0] == masked(body), path
            pos += 16 + length
            event = Event.FromString(body)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out[(value.tag, event.step)] = value.simple_value
    return out


def test_tensorboard_event_files_hold_the_reported_metrics(unfused):
    """Ray Tune's default TBXLoggerCallback: each trial's folder holds event files (what README's
    `tensorboard --logdir results/tune/<experiment>` shows) with every metric the trial reported, at its
    training iteration. Checked on the trials that finished before the driver was killed, whose files are whole."""
    assert unfused.kept
    for trial_id in unfused.kept:
        trial_dir = next(unfused.tune_exp.glob(f"trial_{trial_id}"))
        scalars = read_event_scalars(trial_dir)
        reports = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert len(reports) == 12
        for r in reports:
            for key in ("train/l1", "val/l1", BEST_VAL_L1, "samples_per_s"):
                assert scalars[(f"ray/tune/{key}", r["training_iteration"])] == pytest.approx(r[key], rel=1e-6)
        last = reports[-1]
        for key in ("test/l1", "test/retrieval_top1", "test/type_acc"):
            assert scalars[(f"ray/tune/{key}", last["training_iteration"])] == pytest.approx(last[key], rel=1e-6)


def test_nan_trial_errors_alone_and_is_not_retried(tmp_path):
    """`--lr inf` makes AdamW's first step send every weight to ±inf: the loss is NaN from the next step on.

    No test-only hook: an infinite learning rate is a value a user can type. The trial must
    error with the reason, the other trial must finish, and the FailureConfig retries must
    stop at once instead of re-running the diverging epoch.
    """
    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--experiment", "nan",
            "--lr", "inf", "1e-4", "--weight-decay", "1e-5", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2")
    rows = read_table(results / "nan")
    assert len(rows) == 2
    ok, bad = rows
    assert ok["status"] == "ok" and ok["best"] == "yes" and float(ok["lr"]) == 1e-4
    assert bad["lr"] == "inf" and bad[BEST_VAL_L1] == "" and bad["best"] == ""
    assert bad["status"].startswith("error: FloatingPointError: training loss became nan")
    assert "not retried" in bad["status"]


def test_asha_stops_staged_trials_early(tmp_path):
    """ASHA over staged trials (4 epochs, then 2 with the encoder's top layer unfrozen): a trial lasts 6."""
    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--scheduler", "asha", "--epochs", "4",
            "--finetune-epochs", "2", "--finetune-layers", "1", "--lr", "1e-4", "1e-5", "--weight-decay", "1e-5",
            "--n-layers", "2")
    rows = read_table(results / "grid-smoke")
    assert len(rows) == 8
    assert any(r["status"].startswith("stopped early (asha)") for r in rows)
    best = next(r for r in rows if r["best"] == "yes")
    assert best["status"] == "ok" and best["epochs"] == "6"
    assert "scheduler asha" in (results / "grid-smoke" / "best_config.md").read_text()
    best_weights = checkpoint.load(results / "grid-smoke" / "best_checkpoint")["best_model"][0]
    assert {k.split(".")[3] for k in best_weights if k.startswith("text_encoder.")} == {"5"}  # the top layer


def test_optuna_multi_objective_reports_pareto_front(tmp_path):
    """TPE over the diffusion family: its own selection metric is the first objective (the regressor's, best/val_l1,
    is the same code with BEST["regressor"]: tests/test_search.py)."""
    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--family", "diffusion", "--results", str(results), "--search",
            "optuna", "--num-samples", "4")
    exp = results / "optuna-smoke"
    rows = read_table(exp)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["family"] == "diffusion" for r in rows)
    for r in rows:  # the pareto column against a brute-force dominance check of the table's own numbers
        v, top1 = float(r[BEST_VAL_DENOISE]), float(r["val/retrieval_top1"])
        dominated = any(float(o[BEST_VAL_DENOISE]) <= v and float(o["val/retrieval_top1"]) >= top1
                        and (float(o[BEST_VAL_DENOISE]), float(o["val/retrieval_top1"])) != (v, top1) for o in rows)
        assert (r["pareto"] == "yes") == (not dominated), rows
    md = (exp / "best_config.md").read_text()
    assert f"## Pareto front: {BEST_VAL_DENOISE} (min) × val/retrieval_top1 (max)" in md
    objectives = json.loads((exp / "provenance.json").read_text())["search"]["objectives"]
    assert objectives == [[BEST_VAL_DENOISE, "min"], ["val/retrieval_top1", "max"]]  # no CLIP weights; never test


def test_both_families_in_one_search_interrupted_resumed_and_exported(tmp_path):
    """`--family regressor diffusion`: the family is a grid axis. Ctrl-C after the first trial, then --resume; the
    table ranks each family by its own selection metric (a column says which), marks a best per family and
    compares the families only on the metrics both report; each family's best checkpoint and sample grids (two
    samples per text for the sampler), and model.generate on the diffusion one."""
    results = tmp_path / "results"
    flags = ["--preset", "smoke", "--epochs", "3", "--family", "regressor", "diffusion", "--n-heads", "2",
             "--ff-dim", "512", "--n-layers", "2", "--weight-decay", "1e-5", "--results", str(results),
             "--experiment", "families"]
    rc, finished = interrupt_after([sys.executable, "-m", "search.grid", *flags], results / "tune" / "families", 1,
                                   signal.SIGINT, tmp_path / "interrupted.log")
    assert rc == 130 and len(finished) < 4, (tmp_path / "interrupted.log").read_text()[-3000:]
    run_cli("search.grid", *flags, "--resume")
    exp = results / "families"
    rows = read_table(exp)
    assert len(rows) == 4 and all(r["status"] == "ok" and r["epochs"] == "3" for r in rows)
    for family, metric in (("regressor", BEST_VAL_L1), ("diffusion", BEST_VAL_DENOISE)):
        mine = [r for r in rows if r["family"] == family]
        assert len(mine) == 2 and all(r["ranked_by"] == metric and r[metric] for r in mine)
        assert [r["best"] for r in mine] == ["yes", ""] and float(mine[0][metric]) <= float(mine[1][metric])
        other = BEST_VAL_DENOISE if metric == BEST_VAL_L1 else BEST_VAL_L1
        assert all(r[other] == "" for r in mine)  # a family is never given the other's selection metric
    md = (exp / "best_config.md").read_text()
    assert "## Families compared" in md and "| test/type_acc |" in md and f"| {BEST_VAL_L1} |" not in md.split(
        "## Families compared")[1].split("##")[0]
    for family in ("regressor", "diffusion"):
        state = checkpoint.load(exp / f"best_checkpoint_{family}")
        assert state["model_config"]["family"] == family
        for split in ("train", "test"):
            assert_valid_png(exp / f"samples_{family}_{split}.png")
    assert_valid_png(exp / "learning_curves.png")
    out = tmp_path / "generated.png"
    r = run_cli("model.generate", "--checkpoint", str(exp / "best_checkpoint_diffusion"), "A small red creature.",
                "--out", str(out))
    assert "sampled with ddim" in r.stdout
    assert_valid_png(out)


def test_seeds_fused_one_trial_of_12_members_mean_std_ties_and_importance(tmp_path):
    """`--seeds 3 --fuse on` on one architecture: one Tune trial training 12 members (the grid's 4 learning-rate
    x weight-decay points x 3 seeds); the table has 4 configurations, mean ± std over seeds and whether each
    is tied with the best; the JSON every seed's row; importance.png and parallel_coordinates.png beside."""
    from scipy import stats

    results = tmp_path / "results"
    run_cli("search.grid", "--preset", "smoke", "--results", str(results), "--experiment", "seeds", "--seeds", "3",
            "--fuse", "on", "--n-heads", "2", "--ff-dim", "512", "--n-layers", "2")
    exp = results / "seeds"
    assert len(trial_states(results / "tune" / "seeds")) == 1
    prov = json.loads((exp / "provenance.json").read_text())
    members = prov["search"]["fuse"]["members"]
    assert len(members) == 12 and {m["seed"] for m in members} == {0, 1, 2} and prov["search"]["points"] == 12

    payload = json.loads((exp / "best_config.json").read_text())
    per_seed = payload["rows"]
    assert len(per_seed) == 12 and len({(r["lr"], r["weight_decay"], r["seed"]) for r in per_seed}) == 12
    assert all(r["status"] == "ok" for r in per_seed)
    table = read_table(exp)
    assert len(table) == 4 and all(r["seeds"] == "3/3" for r in table) and "seed" not in table[0]
    values = {(float(r["lr"]), float(r["weight_decay"])): [] for r in table}
    for r in per_seed:
        values[(r["lr"], r["weight_decay"])].append(r[BEST_VAL_L1])
    means = [float(r[BEST_VAL_L1]) for r in table]
    assert means == sorted(means) and table[0]["vs_best"] == "best"
    best = values[(float(table[0]["lr"]), float(table[0]["weight_decay"]))]
    for r in table:  # against the JSON's per-seed rows, and scipy's Welch test
        mine = values[(float(r["lr"]), float(r["weight_decay"]))]
        assert float(r[BEST_VAL_L1]) == pytest.approx(sum(mine) / 3)
        assert float(r[f"{BEST_VAL_L1} std"]) == pytest.approx(stats.tstd(mine))
        if r["vs_best"] != "best":
            p = stats.ttest_ind(mine, best, equal_var=False, alternative="greater").pvalue
            assert float(r["p_vs_best"]) == pytest.approx(p) and r["vs_best"] == ("worse" if p < 0.05 else "tied")
    md = (exp / "best_config.md").read_text()
    tied = sum(r["vs_best"] == "tied" for r in table)
    assert f"**{tied} of the other 3 configurations {'is' if tied == 1 else 'are'} tied with the best" in md
    assert "α = 0.05" in md and " ± " in md and "## Every seed" in md
    assert "## Which hyperparameters matter" in md and "| seed |" in md and "| lr |" in md
    for name in ("importance.png", "parallel_coordinates.png"):
        assert_valid_png(exp / name)
    # The search's checkpoint is the best configuration's best seed.
    best_row = next(r for r in per_seed if r["best"])
    assert (best_row["lr"], best_row["weight_decay"]) == (float(table[0]["lr"]), float(table[0]["weight_decay"]))
    assert best_row[BEST_VAL_L1] == min(best)
    state = checkpoint.load(exp / "best_checkpoint")
    assert state["train_configs"][0]["seed"] == best_row["seed"] == members[best_row["member"]]["seed"]


def test_fused_grid_survives_a_killed_trial_and_ctrl_c_and_matches_unfused(tmp_path, unfused):
    """`--fuse on`: 8 Tune trials, one per architecture, each training its 4 (lr, weight_decay) points.
    One trial's process is SIGKILLed mid-training (FailureConfig retries it from its last epoch
    checkpoint), then the driver gets Ctrl-C (exit 130, partial results saved) and the search is resumed.
    With dropout off the 32 rows must equal the unfused search's, point by point: nothing was lost or
    trained twice. The search also logs to a real local MLflow store (`--mlflow-tracking-uri`), which the
    retry and the resume must keep writing to the same runs (assert_mlflow_runs)."""
    results = tmp_path / "results"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = [*SMOKE, "--results", str(results), "--mlflow-tracking-uri", mlflow_uri]
    plain = {tuple(r[k] for k in GRID_KEYS): r for r in read_table(unfused.exp)}

    cmd = [sys.executable, "-m", "search.grid", *flags, "--fuse", "on", "--experiment", "fused"]
    tune_exp = results / "tune" / "fused"
    killed = []

    def kill_one_trial_mid_training():
        for f in sorted(tune_exp.glob("trial_*/result.json")):
            reports = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            if reports and not killed and 2 <= reports[-1]["epoch"] < 12:
                os.kill(reports[-1]["pid"], signal.SIGKILL)
                killed.append((reports[-1]["trial_id"], reports[-1]["epoch"]))

    rc, finished = interrupt_after(cmd, tune_exp, 3, signal.SIGINT, tmp_path / "fused.log",
                                   while_waiting=kill_one_trial_mid_training)
    log = (tmp_path / "fused.log").read_text()
    assert rc == 130 and killed, log[-3000:]  # a partial search is not a success
    assert len(finished) < 8, "the fused search finished before the interrupt: nothing was resumed"
    partial = read_table(results / "fused")  # saved before exiting, one row per grid point
    assert len(partial) == 32 and {r["status"] for r in partial} >= {"ok", "pending"}
    assert "FileNotFoundError" not in log and log.count(" not started") == 1, log[-3000:]
    run_cli(*cmd[2:], "--resume")

    exp = results / "fused"
    assert len(trial_states(tune_exp)) == 8  # one Tune trial per architecture
    rows = read_table(exp)
    assert len(rows) == 32 and all(r["status"] == "ok" and r["epochs"] == "12" for r in rows)
    assert {r["member"] for r in rows} == {"0", "1", "2", "3"}
    for r in rows:
        theirs = plain[tuple(r[k] for k in GRID_KEYS)]
        for metric in (BEST_VAL_L1, "test/l1"):
            assert float(r[metric]) == pytest.approx(float(theirs[metric]), rel=2e-3), (r, metric)
        assert r["test/retrieval_top1"] == theirs["test/retrieval_top1"]
    reports = [json.loads(line) for line in
               next(tune_exp.glob(f"trial_{killed[0][0]}/result.json")).read_text().splitlines()]
    after = [r for r in reports if r["pid"] != reports[0]["pid"]]  # the retry runs in a new process ...
    assert after and after[0]["epoch"] > 1 and after[-1]["epoch"] == 12  # ... from its checkpoint, to the end
    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["search"]["fuse"]["on"] and prov["search"]["trials"] == 8 and prov["search"]["points"] == 32
    best = next(r for r in rows if r["best"] == "yes")
    from model import checkpoint

    state = checkpoint.load(exp / "best_checkpoint")  # the best member alone, as model.generate loads it
    assert state["member_of"]["member"] == int(best["member"]) and len(state["best_model"]) == 1
    assert state["train_configs"][0]["lr"] == float(best["lr"])
    assert_mlflow_runs(mlflow_uri, "fused", tune_exp, prov["search"]["fuse"]["members"], tmp_path)


def assert_mlflow_runs(uri: str, experiment: str, tune_exp: Path, members: list[dict], tmp_path: Path) -> None:
    """One MLflow run per Tune trial (Ray's own callback would open a second one for every trial the resume
    continued), its config and member points as params, every epoch's metrics equal to Tune's result.json,
    and its last checkpoint as the artifact."""
    from mlflow.tracking import MlflowClient  # the [mlflow] extra, part of [test]: CI installs it

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    trial_dirs = {p.name.removeprefix("trial_"): p for p in tune_exp.glob("trial_*")}
    assert sorted(r.data.tags["ray_trial_id"] for r in runs) == sorted(trial_dirs)
    for run in runs:
        assert run.info.status == "FINISHED", run.info
        trial_dir = trial_dirs[run.data.tags["ray_trial_id"]]
        config = json.loads((trial_dir / "params.json").read_text())
        want = {**config, **{f"m{k}/{name}": v for k, point in enumerate(members) for name, v in point.items()}}
        assert run.data.params == {k: str(v) for k, v in want.items()}
        reports = {}
        for line in (trial_dir / "result.json").read_text().splitlines():
            reports[json.loads(line)["epoch"]] = json.loads(line)  # a replayed epoch: its last report
        for key in ("m0/val/l1", "m3/best/val_l1", "val/l1"):
            history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            assert sorted(history) == list(range(1, 13)), (key, sorted(history))
            assert all(history[e] == pytest.approx(reports[e][key]) for e in history), key
        local = client.download_artifacts(run.info.run_id, "best_checkpoint", str(tmp_path / run.info.run_id))
        state = checkpoint.load(local)
        assert len(state["best_model"]) == len(members) and "final" in state
