"""The real entry points in smoke mode: `python -m search.grid` through Ray dying under it, a killed trial, SIGTERM
and a second search on the same experiment, its driver killed, and search.export's and model.generate's main on what
it left (a damaged Tune snapshot too). Each test runs the search CLI as a subprocess (its own local Ray, as a user
would) on the embedded synthetic data (tests/e2e.py), and checks the files it leaves. The other end-to-end runs are
in tests/test_search_e2e_schedulers.py and tests/test_search_e2e_families.py, so that pytest-xdist spreads them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from e2e import (ONE_AT_A_TIME, REPO, assert_valid_png, descendants, interrupt_after, read_table, run_cli,
                 trial_states)
from model import checkpoint
from model.config import BEST_VAL_L1
from search import grid as grid_cli

GRID_KEYS = ("lr", "weight_decay", "n_heads", "ff_dim", "n_layers")
pytestmark = pytest.mark.slow


# Dropout off and 12 epochs: the unfused and the fused grid then train identically (a fused member equals
# its single run to float rounding), and a fused trial lasts long enough to be killed mid-training. A quarter of
# the thesis grid (2 heads, 2 encoder layers: 8 points, 2 architectures) is enough for every state these tests
# reach: trials finished before a crash and after it, a fused trial killed and retried while the other finishes.
SMOKE = ["--preset", "smoke", "--epochs", "12", "--n-heads", "2", "--n-layers", "2", "--dropout-encoder", "0",
         "--dropout-attention", "0", "--dropout-decoder", "0"]
POINTS, ARCHITECTURES = 8, 2


def kill_raylet(proc, killed: list) -> None:
    """SIGKILL the raylet of the search `proc` runs: Ray dying under a search (the OOM killer's usual victim)."""
    raylets = [pid for pid, cmd in descendants(proc.pid).items() if cmd.split(" ", 1)[0].endswith("/raylet")]
    assert len(raylets) == 1, descendants(proc.pid)
    os.kill(raylets[0], signal.SIGKILL)
    killed.append(raylets[0])


@pytest.fixture(scope="module")
def unfused(tmp_path_factory):
    """The 8-trial grid, unfused: Ray's raylet killed under it (SIGKILL) after 4 trials, then `--resume` to the
    end. The command carries config flags (their stored values) because "rerun the same command with --resume"
    is what the search tells the user. Shared by the tests below (the fused grid is compared with it); `partial` is
    a copy of the results as the stopped search left them."""
    tmp = tmp_path_factory.mktemp("unfused")
    for attempt in range(3):
        results = tmp / f"results{attempt}"
        tune_exp = results / "tune" / "grid-smoke"
        log, killed = tmp / f"ray-died{attempt}.log", []
        # One trial at a time (tests/e2e.py). The fused search below keeps two side by side: it checks the
        # partial table of every grid point, and Tune creates a trial for each only while it has room to run it.
        cmd = [sys.executable, "-m", "search.grid", *SMOKE, "--fuse", "off", "--results", str(results), *ONE_AT_A_TIME]
        rc, finished = interrupt_after(cmd, tune_exp, 4, signal.SIGKILL, log, send=lambda p: kill_raylet(p, killed))
        out = log.read_text()
        assert rc == 75 and len(finished) < POINTS, f"{rc}, {len(finished)} finished:\n{out[-3000:]}"
        # One line of ours: what died, that the results so far are kept, --resume; the partial table; no traceback.
        assert (f"[search] stopped: Ray's raylet (pid {killed[0]}) died under the search before every trial "
                "finished (partial results saved): rerun the same command with --resume") in out, out[-3000:]
        assert "Traceback" not in out and "SIGTERM received" not in out, out[-3000:]
        partial = {r["trial_id"]: r for r in read_table(results / "grid-smoke")}
        assert set(finished) <= {t for t, r in partial.items() if r["status"] == "ok"}, partial
        kept = {t: next(tune_exp.glob(f"trial_{t}/result.json")).read_text() for t in finished}
        shutil.copytree(results, tmp / f"partial{attempt}", symlinks=True)
        r = subprocess.run([sys.executable, "-m", *cmd[2:], "--resume"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        if r.returncode == 0:
            break
        # A kill inside Tune's own non-atomic copy of its snapshot to storage leaves it empty: the search
        # cannot be resumed, and must say so in one line (results/BENCHMARKS.md, "A driver killed mid-search").
        # That window is Tune's, not this test's subject (the driver is killed only if it hangs after Ray died:
        # search/supervise.py): stop a new search, at most twice more.
        out = r.stdout + r.stderr
        assert r.returncode == 2 and "snapshot" in out and "is damaged" in out, out[-3000:]
    else:
        pytest.fail("three crashes in a row landed in Tune's snapshot copy")
    return SimpleNamespace(tmp=tmp, results=results, exp=results / "grid-smoke", tune_exp=tune_exp, kept=kept,
                           partial=tmp / f"partial{attempt}", finished=finished)


def test_smoke_grid_crashed_resumed_and_exported(unfused):
    """The unfused grid after Ray died under it and --resume; then search.export rebuilds the results."""
    results, exp, tune_exp, tmp_path = unfused.results, unfused.exp, unfused.tune_exp, unfused.tmp
    states = trial_states(tune_exp)
    assert len(states) == POINTS and set(states.values()) == {"TERMINATED"}
    for t, text in unfused.kept.items():  # finished before the crash: not run again
        assert next(tune_exp.glob(f"trial_{t}/result.json")).read_text() == text

    rows = read_table(exp)
    assert len(rows) == POINTS and all(r["status"] == "ok" for r in rows)
    vals = [float(r[BEST_VAL_L1]) for r in rows]
    assert vals == sorted(vals) and [r["best"] for r in rows].count("yes") == 1 and rows[0]["best"] == "yes"
    assert {r["test/clip_score"] for r in rows} == {"off"}  # the smoke preset turns CLIP off
    assert len({(r["lr"], r["weight_decay"], r["n_heads"], r["ff_dim"], r["n_layers"]) for r in rows}) == POINTS

    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["settings"]["preset"] == "smoke" and prov["dataset"]["synthetic"] is True
    assert prov["dataset"]["fingerprint"] and prov["code_version"] and prov["ray_version"].startswith("2.60")
    assert prov["best_trial"]["trial_id"] == rows[0]["trial_id"] and "cpu" in prov["devices"]
    md = (exp / "best_config.md").read_text()
    assert "preset: **smoke**" in md and "SYNTHETIC" in md and prov["dataset"]["fingerprint"] in md
    # The driver fitted the evaluator networks before any trial: the attribute reader's ceiling (its reading of the
    # real test images) and the text-blind floor sit beside the table.
    assert 0.5 < prov["baselines"]["baseline/attr_colour_ceiling"] <= 1 and "| baseline/attr_all_floor |" in md
    payload = json.loads((exp / "best_config.json").read_text())
    assert len(payload["rows"]) == POINTS and payload["provenance"]["experiment"] == "grid-smoke"
    for name in ("learning_curves.png", "samples_train.png", "samples_test.png"):
        assert_valid_png(exp / name)

    # The best checkpoint is what model.generate loads: a finished trial keeps its best weights only.
    from model import checkpoint
    from model.generate import main as generate

    best_state = checkpoint.load(exp / "best_checkpoint")
    assert best_state.best_model and best_state.optimizer is None and best_state.model is None

    generate(["--checkpoint", str(exp / "best_checkpoint"), "A small red creature.", "--out", str(tmp_path / "g.png")])
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.size == (256, 256)  # 32 px enlarged ×8 to be seen

    # search.export rebuilds every file from the stored experiment alone.
    table = (exp / "best_config.csv").read_text()
    for name in ("best_config.csv", "best_config.md", "best_config.json", "learning_curves.png",
                 "samples_train.png", "samples_test.png"):
        (exp / name).unlink()
    from search.export import main as export  # in this process: its CLI start-up is search.grid's, tested above

    export([str(exp)])
    assert (exp / "best_config.csv").read_text() == table
    for name in ("learning_curves.png", "samples_train.png", "samples_test.png"):
        assert_valid_png(exp / name)
    assert sorted(p.name for p in results.iterdir()) == ["grid-smoke", "tune"], "temporary folders left"
    for path in (exp, *exp.rglob("*")):
        assert os.stat(path).st_mode & 0o044 == 0o044, f"{path}: others on shared storage cannot read it"


def _copy(results: Path, to: Path) -> Path:
    """A copy of a search's results and Ray files, its provenance pointing at the copied experiment."""
    shutil.copytree(results, to, symlinks=True)
    prov = json.loads((to / "grid-smoke" / "provenance.json").read_text())
    prov["ray_experiment"] = str(to / "tune" / "grid-smoke")
    (to / "grid-smoke" / "provenance.json").write_text(json.dumps(prov))
    return to / "grid-smoke"


def test_a_driver_that_died_is_reported_with_the_partial_table(unfused, tmp_path, capsys):
    """What the command does when its search's driver ended without a word (Ray's core ending it from C++, the OOM
    killer): search.grid's post_mortem on the results Ray's death left, as the supervising process calls it."""
    exp = _copy(unfused.partial, tmp_path / "results")
    (exp / "best_config.csv").unlink()
    status = grid_cli.post_mortem({"results_dir": str(exp)}, "the search's driver (pid 123) was killed by SIGKILL")
    out, err = capsys.readouterr()
    assert status == 75 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == (
        "[search] stopped: the search's driver (pid 123) was killed by SIGKILL before every trial finished (partial "
        "results saved): rerun the same command with --resume")
    rows = read_table(exp)
    assert len(rows) < POINTS and {r["trial_id"] for r in rows if r["status"] == "ok"} >= set(unfused.finished)
    assert f"[search] {POINTS} trials, " in out and "not finished" in out


def test_export_rebuilds_the_table_from_the_trial_folders_when_tunes_snapshot_is_damaged(unfused, tmp_path, capsys):
    """A disk that filled (or a kill during Tune's copy) leaves Tune's experiment snapshot cut short: search.export
    still writes the table of the trials that finished, from their own folders, and names what it could not read."""
    from search.export import main as export

    table = {r["trial_id"]: r for r in read_table(unfused.exp)}
    exp = _copy(unfused.results, tmp_path / "results")
    tune_exp = tmp_path / "results" / "tune" / "grid-smoke"
    state = max(tune_exp.glob("experiment_state-*.json"))
    state.write_text(state.read_text()[:200])  # cut short
    trials = sorted(tune_exp.glob("trial_*"))
    (trials[0] / "params.json").write_text('{"lr": ')  # this trial cannot be read at all
    result = trials[1] / "result.json"
    result.write_text(result.read_text() + '{"epoch": 13, "val/l')  # a last line cut short: the whole ones count
    for name in ("best_config.csv", "best_checkpoint"):
        shutil.rmtree(exp / name) if (exp / name).is_dir() else (exp / name).unlink()

    export([str(exp)])
    out = capsys.readouterr().out
    assert f"Tune's snapshot of {tune_exp} cannot be read (JSONDecodeError" in out
    assert f"rebuilt from the {POINTS - 1} trial folders; not read whole: {trials[0].name} (params.json missing or cut " \
           f"short); {trials[1].name} (1 line(s) of result.json cut short; the rest is read)" in out
    rebuilt = read_table(exp)
    assert {r["trial_id"] for r in rebuilt} == set(table) - {trials[0].name.removeprefix("trial_")}
    for r in rebuilt:  # every readable trial, as Tune's snapshot had it
        for column in ("status", "epochs", BEST_VAL_L1, "test/l1", "test/attr_all", "lr", "n_heads"):
            assert r[column] == table[r["trial_id"]][column], (r["trial_id"], column)
    best = next(r for r in rebuilt if r["best"] == "yes")
    assert checkpoint.load(exp / "best_checkpoint").train_configs[0]["lr"] == float(best["lr"])


def test_a_driver_killed_under_the_command_is_reported(tmp_path):
    """The real command, its search's driver SIGKILLed (as the kernel's OOM killer does) right after it took the
    experiment, before anything was saved: the command says so in one line, exit status 75, no traceback."""
    results = tmp_path / "results"
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "search.grid", "--preset", "smoke", "--results", str(results),
                                 "--experiment", "killed"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((results / ".killed.lock").is_file() and (results / ".killed.lock").read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        driver = json.loads((results / ".killed.lock").read_text())["pid"]
        assert driver in descendants(proc.pid)  # the search runs in the command's child
        os.kill(driver, signal.SIGKILL)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 75 and "Traceback" not in text, text[-3000:]
    assert text.strip().splitlines()[-1] == (
        f"[search] stopped: the search's driver (pid {driver}) was killed by SIGKILL (sent by the kernel's "
        "out-of-memory killer, or by kill -9), before the search was saved: rerun the same command")
    # The lock file still names the driver: stale now (its flock died with it), the next search takes it over.
    assert json.loads((results / ".killed.lock").read_text())["pid"] == driver


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
        for key in ("test/l1", "test/attr_all", "test/attr_all_lo"):
            assert scalars[(f"ray/tune/{key}", last["training_iteration"])] == pytest.approx(last[key], rel=1e-6)


def test_fused_grid_survives_a_killed_trial_and_sigterm_and_matches_unfused(tmp_path, unfused):
    """`--fuse on`: 2 Tune trials, one per architecture, each training its 4 (lr, weight_decay) points.
    One trial's process is SIGKILLed mid-training (FailureConfig retries it from its last epoch
    checkpoint), then the command gets SIGTERM, as `docker stop` or a scheduler's preemption sends it (exit 143,
    partial results saved, no Ray stack dump), and the search is resumed. Meanwhile a second search on the same
    experiment is refused in one line naming the first. With dropout off the 8 rows must equal the unfused
    search's, point by point: nothing was lost or trained twice. The search also logs to a real local MLflow store
    (`--mlflow-tracking-uri`), which the retry and the resume must keep writing to the same runs
    (assert_mlflow_runs)."""
    results = tmp_path / "results"
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = [*SMOKE, "--results", str(results), "--mlflow-tracking-uri", mlflow_uri]
    plain = {tuple(r[k] for k in GRID_KEYS): r for r in read_table(unfused.exp)}

    cmd = [sys.executable, "-m", "search.grid", *flags, "--fuse", "on", "--experiment", "fused"]
    tune_exp = results / "tune" / "fused"
    killed, second = [], []

    def kill_one_trial_mid_training_and_start_a_second_search():
        lock = results / ".fused.lock"
        if not second and lock.is_file() and lock.read_text():  # the first search holds the experiment
            second.append(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120))
        for f in sorted(tune_exp.glob("trial_*/result.json")):
            reports = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
            if reports and not killed and 2 <= reports[-1]["epoch"] < 12:
                os.kill(reports[-1]["pid"], signal.SIGKILL)
                killed.append((reports[-1]["trial_id"], reports[-1]["epoch"]))

    rc, finished = interrupt_after(cmd, tune_exp, 1, signal.SIGTERM, tmp_path / "fused.log",
                                   while_waiting=kill_one_trial_mid_training_and_start_a_second_search)
    log = (tmp_path / "fused.log").read_text()
    assert rc == 143 and killed, log[-3000:]  # a partial search is not a success
    assert len(finished) < ARCHITECTURES, "the fused search finished before the interrupt: nothing was resumed"
    assert "SIGTERM received" not in log and "Traceback" not in log, log[-3000:]  # no C++ stack dump, no traceback
    assert ("[search] stopped by SIGTERM before every trial finished (partial results saved): rerun the same command "
            "with --resume") in log
    partial = read_table(results / "fused")  # saved before exiting, one row per grid point
    assert len(partial) == POINTS and {r["status"] for r in partial} >= {"ok", "pending"}
    assert "FileNotFoundError" not in log and log.count(" not started") <= 1, log[-3000:]  # said once, if at all
    refused = second[0]
    assert refused.returncode == 2 and refused.stderr.startswith("error: fused is in use by another search (host "), (
        refused.stdout[-2000:], refused.stderr[-2000:])
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    run_cli(*cmd[2:], "--resume")

    exp = results / "fused"
    assert len(trial_states(tune_exp)) == ARCHITECTURES  # one Tune trial per architecture
    rows = read_table(exp)
    assert len(rows) == POINTS and all(r["status"] == "ok" and r["epochs"] == "12" for r in rows)
    assert {r["member"] for r in rows} == {"0", "1", "2", "3"}
    for r in rows:
        theirs = plain[tuple(r[k] for k in GRID_KEYS)]
        for metric in (BEST_VAL_L1, "test/l1"):
            assert float(r[metric]) == pytest.approx(float(theirs[metric]), rel=2e-3), (r, metric)
        assert r["test/attr_all"] == theirs["test/attr_all"]
    reports = [json.loads(line) for line in
               next(tune_exp.glob(f"trial_{killed[0][0]}/result.json")).read_text().splitlines()]
    after = [r for r in reports if r["pid"] != reports[0]["pid"]]  # the retry runs in a new process ...
    assert after and after[0]["epoch"] > 1 and after[-1]["epoch"] == 12  # ... from its checkpoint, to the end
    prov = json.loads((exp / "provenance.json").read_text())
    assert prov["search"]["fuse"]["on"] and prov["search"]["trials"] == ARCHITECTURES and prov["search"]["points"] == POINTS
    best = next(r for r in rows if r["best"] == "yes")
    from model import checkpoint

    state = checkpoint.load(exp / "best_checkpoint")  # the best member alone, as model.generate loads it
    assert state.member_of["member"] == int(best["member"]) and len(state.best_model) == 1
    assert state.train_configs[0]["lr"] == float(best["lr"])
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
        assert len(state.best_model) == len(members) and state.finished()
