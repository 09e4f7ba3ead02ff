"""A Tune snapshot that names a checkpoint Tune has since deleted (the driver was killed between the two).

Tune deletes a trial's oldest checkpoint when it registers a newer one and writes its snapshot (and the
trial's result.json) a moment later, in the background: a driver killed in between leaves a snapshot
naming a deleted checkpoint (seen in CI: "Could not recover from checkpoint as it does not exist on storage
anymore"). That race is too narrow to hit on purpose, so the state it leaves is made by hand from a real
Tune run: a trial stops with an error after epoch 2 (the snapshot names the epoch-2 checkpoint); then, as
after the crash, that checkpoint is gone and two later ones (epochs 3 and 4) exist.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest
import torch

from model import checkpoint as state_file
from model.config import TrainConfig
from model.train import train_members
from benches import load_bench
from search.snapshot import DamagedSnapshot, check_snapshot, refuse_empty_restart
from search.restore import SUBSTITUTE
from test_members import SMALL
from test_model import tiny_data

EPOCHS = 5


resume_race = load_bench("bench_resume_race", pickle_by_value=True)  # its toy trial runs in Tune's workers


def counting_trainable(mixin: bool):
    """The bench's toy trial (train_trial's restore rules), 5 epochs, its first run stopping after epoch 2."""
    return resume_race.counting_trainable(EPOCHS, mixin, stop_after=2)


def rows(trial_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


CASES = ("checkpoint gone", "substitute cut short", "result.json behind")


@pytest.fixture(scope="module")
def restored(tmp_path_factory) -> dict:
    """Experiments of toy trials, one trial per case (without the mixin: "tune alone"; with it: CASES), run
    until they stop after epoch 2, the state made by hand, then restored by a new driver, as after a crash.
    "substitute cut short": a driver killed again while the mixin copied the successor.
    "result.json behind": the named checkpoint is there, but result.json on storage ends an epoch earlier.
    Besides, Tune's own snapshot files cut short (search.snapshot): the grid searcher's state in the CASES
    experiment (repaired), the experiment state of a third one (refused).
    Returns trials: case -> (the restored trial's result, its trial directory), and what the checks did."""
    import ray
    from ray import tune

    from data_pipeline.ray_env import init_ray

    storage = tmp_path_factory.mktemp("tune")
    experiments = {"alone": (counting_trainable(False), ["tune alone"]), "mixin": (counting_trainable(True), CASES),
                   "damaged": (counting_trainable(True), ["experiment state cut short"])}
    init_ray(num_cpus=2)
    try:
        for name, (trainable, cases) in experiments.items():
            tune.Tuner(trainable, param_space={"case": tune.grid_search(list(cases))}, run_config=tune.RunConfig(
                name=name, storage_path=str(storage), verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2))).fit()
    finally:
        ray.shutdown()  # the resume below is a new driver, as after a crash
    dirs = {}
    for trial_dir in storage.glob("*/count_*"):
        case = json.loads((trial_dir / "params.json").read_text())["case"]
        dirs[case] = trial_dir
        assert [r["epoch"] for r in rows(trial_dir)] == [1, 2]
        named = rows(trial_dir)[-1]["checkpoint_dir_name"]
        for epoch, name in ((3, "checkpoint_000002"), (4, "checkpoint_000003")):
            (trial_dir / name).mkdir()
            (trial_dir / name / "state.json").write_text(json.dumps({"epoch": epoch}))
        if case == "result.json behind":
            (trial_dir / "result.json").write_text(json.dumps(rows(trial_dir)[0]) + "\n")
        else:
            shutil.rmtree(trial_dir / named)
        if case == "substitute cut short":
            (trial_dir / named).mkdir()
            (trial_dir / named / SUBSTITUTE).write_text(json.dumps({"from": "checkpoint_000002", "copied": False}))
            (trial_dir / named / "state.json").write_text("{")  # cut short
    assert sorted(dirs) == sorted(["tune alone", *CASES, "experiment state cut short"])
    for name, prefix in (("mixin", "basic-variant-state-"), ("damaged", "experiment_state-")):
        max((storage / name).glob(prefix + "*")).write_bytes(b"")  # what a kill during Tune's copy leaves
    out = SimpleNamespace(trials={})
    check_snapshot(str(storage / "mixin"), trials=len(CASES))
    out.grid_searcher_states_left = list((storage / "mixin").glob("basic-variant-state-*"))
    with pytest.raises(DamagedSnapshot) as out.refused_check:
        check_snapshot(str(storage / "damaged"), trials=1)

    init_ray(num_cpus=2)
    try:
        for name, (trainable, _) in experiments.items():
            with refuse_empty_restart():
                if name == "damaged":  # what Tune alone does with it: start a new, empty experiment
                    with pytest.raises(DamagedSnapshot) as out.refused_restore:
                        tune.Tuner.restore(str(storage / name), trainable, resume_errored=True).fit()
                    continue
                for result in tune.Tuner.restore(str(storage / name), trainable, resume_errored=True).fit():
                    out.trials[result.config["case"]] = (result, dirs[result.config["case"]])
    finally:
        ray.shutdown()
    out.damaged_experiment_trials = sorted(p.name for p in (storage / "damaged").glob("count_*"))
    return out


def test_tune_alone_fails_the_trial_whose_named_checkpoint_is_gone(restored):
    """The failure the mixin exists for: the state made by hand reproduces it."""
    result, _ = restored.trials["tune alone"]
    assert result.error is not None and "does not exist on storage anymore" in str(result.error)


@pytest.mark.parametrize("case", CASES)
def test_a_restored_trial_continues_and_its_results_have_every_epoch_once(restored, case):
    result, trial_dir = restored.trials[case]
    assert result.error is None
    # Restored from epoch 3 (the oldest successor, not the newest: 4), or from epoch 2 with result.json
    # ending at 1: the epoch result.json lacks is reported before training goes on, so the results have
    # every epoch once (and Tune, which counted the named checkpoint's epoch, counts them right).
    reports = rows(trial_dir)
    assert [r["epoch"] for r in reports] == [1, 2, 3, 4, 5]
    if case != "result.json behind":
        assert [r["training_iteration"] for r in reports] == [1, 2, 3, 4, 5]
    with result.checkpoint.as_directory() as d:
        assert json.loads((Path(d) / "state.json").read_text())["epoch"] == EPOCHS


def test_a_damaged_grid_searcher_state_is_dropped_and_the_trials_resume(restored):
    """The CASES experiment's searcher state was cut short: dropped (every trial is in the snapshot), and all
    its trials continued above."""
    assert restored.grid_searcher_states_left == [] and set(restored.trials) >= set(CASES)


def test_a_damaged_experiment_state_is_refused_not_restarted_empty(restored):
    assert "experiment_state-" in str(restored.refused_check.value) and "it is empty" in str(restored.refused_check.value)
    # Past the check, Tune would log the failure and start a new experiment with one empty-config trial:
    # the guard stops it before any trial starts.
    assert "could not restore" in str(restored.refused_restore.value)
    assert len(restored.damaged_experiment_trials) == 1  # the original trial only


def test_replay_rebuilds_the_reports_of_the_epochs_tune_missed():
    """TrainingState.replay (what train_trial reports first after a restore): a fused state's history gives back
    exactly the reports the loop made, a stopped member's error included."""
    reports, states = [], []
    good = TrainConfig(lr=1e-3, epochs=4, batch_size=4, clip_mode="off")
    bad = TrainConfig(lr=float("inf"), epochs=4, batch_size=4, clip_mode="off")  # diverges in epoch 1

    def report(metrics, state):
        reports.append(metrics)
        states.append(state)

    train_members(SMALL, [good, bad], tiny_data(), report=report)
    assert "diverged" in reports[0][1]["error"]
    assert states[2].replay(after=1) == reports[1:3]  # epochs 2 and 3, from the epoch-3 state
    assert states[2].replay(after=3) == []
    final = states[3].replay(after=0)  # the finished state: its last epoch without the final metrics
    assert final[:3] == reports[:3]
    # Epoch 4 as an epoch report: the per-epoch keys of epochs 1-3 (the final metrics are not replayed).
    assert [set(m) for m in final[3]] == [set(m) for m in reports[2]]
    expected = [{k: m[k] for k in reports[2][i]} for i, m in enumerate(reports[3])]
    # The final evaluation recomputes val/l1 (with its interval) in float64 from per-record means: the epoch's
    # float32 mean to rounding, not bit for bit.
    assert final[3][0].pop("val/l1") == pytest.approx(expected[0].pop("val/l1"), rel=1e-6, abs=0)
    assert final[3] == expected


def test_train_trial_reports_the_epoch_tune_missed_then_trains_on_exactly(tmp_path, monkeypatch):
    """train_trial itself, fused, with Tune's calls stood in for: restored from a state at epoch 2 while its
    result.json ends at epoch 1 (and a line cut short), it reports epoch 2 with that state, then trains on;
    its reports equal an uninterrupted run's (dropout on: the RNG resumes too)."""
    import search.trainable as trainable
    from ray import tune

    from search.settings import resolve

    settings = resolve("smoke", {"epochs": 4, "batch_size": 4})
    arch = {"n_heads": 2, "ff_dim": 64, "n_layers": 2, "weight_decay": 0.0}
    members = [{"lr": 1e-3}, {"lr": 3e-4}]
    data, restored, reports = tiny_data(), [None], []

    def report(result, checkpoint=None):
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                state = state_file.load(d)
        reports.append((result, state))

    storage = SimpleNamespace(storage_filesystem=pyarrow.fs.LocalFileSystem(), trial_fs_path=str(tmp_path))
    context = SimpleNamespace(get_trial_dir=lambda: str(tmp_path), get_assigned_resources=lambda: {"CPU": 1},
                              get_node_id=lambda: "node", get_storage=lambda: storage)
    monkeypatch.setattr(trainable, "ray", SimpleNamespace(get_runtime_context=lambda: context))
    monkeypatch.setattr(tune, "get_context", lambda: context)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: restored[0])
    monkeypatch.setattr(tune, "report", report)

    trainable.train_trial(arch, data, settings, members)  # uninterrupted
    full, reports[:] = list(reports), []
    state_file.save(full[1][1], tmp_path / "checkpoint_000001")  # the state after epoch 2
    (tmp_path / "result.json").write_text(json.dumps(full[0][0]) + "\n" + '{"epoch": 2, "val')
    restored[0] = tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000001"))
    trainable.train_trial(arch, data, settings, members)

    assert [r["epoch"] for r, _ in reports] == [2, 3, 4] and reports[0][1].epoch == 2
    assert all(state is not None for _, state in reports)
    assert [untimed(r) for r, _ in reports] == [untimed(r) for r, _ in full[1:]]
    for name, w in full[-1][1].best_model[0].items():
        assert torch.equal(w, reports[-1][1].best_model[0][name]), name


def untimed(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.endswith("samples_per_s")}
