"""The Ray Tune adapter: one trial = `model.train.train` plus checkpoints and reports.

    trainable = tune.with_parameters(train_trial, data=data, settings=settings)
    tune.Tuner(trainable, param_space=param_space(GRID, "grid")).fit()

`config` holds only the swept fields; the base configs and the data come in through
`tune.with_parameters`, so the dataset goes into the object store once per search and
every trial on a node reads the same copy. Each epoch's metrics are reported with the
training state as a checkpoint; a retried or resumed trial continues from the latest one.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from data_pipeline.dataset import PreparedData
from model import checkpoint
from model.train import default_device, train
from search.settings import Settings
from search.space import trial_configs

# Written in the trial's working directory when its loss diverges. Training resumes from the
# last checkpoint with the same RNG state, so a FailureConfig retry would diverge again at the
# same step: the retry reads the note and fails at once instead of re-running the epoch. (The
# directory is per node and Ray session: a retry elsewhere, or `--resume`, re-runs one epoch.)
DIVERGED = "diverged.txt"


def where() -> dict:
    """Which node and device ran the trial: recorded in every report, shown in the results table."""
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "device": device}


def train_trial(config: dict, data: PreparedData, settings: Settings) -> None:
    model_cfg, train_cfg = trial_configs(config, settings.model, settings.train)
    # Ray logs one "Checkpoint successfully created" line per report otherwise: 3,200 for the grid.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    # Ray gives a trial its CPU share; without this torch would start one thread per core in every trial.
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    diverged = Path(tune.get_context().get_trial_dir()) / DIVERGED
    if diverged.exists():
        raise FloatingPointError(diverged.read_text() + " (not retried: it diverged before, from this checkpoint)")

    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = checkpoint.load(d)
    node = where()

    def report(metrics: dict, state: dict) -> None:
        if "final" in state:
            # A finished trial is never trained again: its last checkpoint keeps the best weights
            # (for export and generate) and drops the optimizer and last weights, 3 of 4 copies.
            state = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, d)
            tune.report({**metrics, **node}, checkpoint=tune.Checkpoint.from_directory(d))

    if resume is not None and "final" in resume:
        # The driver died after this trial's last report but before Tune recorded it as done:
        # report the finished state again rather than training zero epochs and reporting nothing.
        report(resume["final"], resume)
        return
    try:
        train(model_cfg, train_cfg, data, report=report, resume=resume, device=default_device())
    except FloatingPointError as e:
        diverged.write_text(str(e))
        raise
