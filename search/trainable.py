"""The Ray Tune adapter: one trial = `model.train.train_members` plus checkpoints and reports.

    trainable = tune.with_parameters(train_trial, data=data, settings=settings, members=None, used=None)
    tune.Tuner(trainable, param_space=param_space(GRID, "grid")).fit()

`config` holds only the swept fields; the base configs and the data come in through
`tune.with_parameters`, so the dataset goes into the object store once per search and
every trial on a node reads the same copy. Each epoch's metrics are reported with the
training state as a checkpoint; a retried or resumed trial continues from the latest one.

Fused (`members` = the member points of `search.space.fused_space`): the trial is one architecture
and trains every member point with it at once. Tune takes one flat dict of numbers per report, so its reports
hold each member's metrics under `m<k>/` (`m0/val/l1`, `m2/test/l1`, `m1/error`: `member_report`, read back by
`members_of`) and, for the progress line and schedulers, the best live member's selection metric; the results
table expands them into one row per member.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

import ray
import torch
from ray import tune

from data_pipeline.dataset import PreparedData
from model import checkpoint, families
from model.checkpoint import TrainingState
from model.train import Runtime, default_device, train_members
from search.restore import RestoreFromSuccessor, last_reported_epoch
from search.results import member_report
from search.settings import Settings

# Written in the trial's working directory when its loss diverges. Training resumes from the
# last checkpoint with the same RNG state, so a FailureConfig retry would diverge again at the
# same step: the retry reads the note and fails at once instead of re-running the epoch. (The
# directory is per node and Ray session: a retry elsewhere, or `--resume`, re-runs one epoch.)
# A fused trial needs no note: its checkpoint records which members diverged.
DIVERGED = "diverged.txt"


def where() -> dict:
    """Which node and device ran the trial: recorded in every report, shown in the results table."""
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "device": device}


# Where this worker process trains, and what it keeps for its next trial (a frozen encoder's states of the
# search's texts, CLIP's weights): Tune reuses the process (reuse_actors), and every trial of a search needs the same.
WORKER = Runtime(device=default_device())


def exit_request_kept(unraisable) -> None:
    """sys.unraisablehook of a trial's process. Ray's SIGTERM handler raises SystemExit wherever the process is;
    inside a weakref or __del__ callback Python cannot raise it, so it printed "Exception ignored in ..." with a
    traceback on the search's console and the exit request was lost. The request is made again instead, from
    another thread a moment later (raised here, the handler would run inside this hook, itself a callback);
    anything else is reported as before."""
    if issubclass(unraisable.exc_type, SystemExit):
        threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return
    sys.__unraisablehook__(unraisable)


def train_trial(config: dict, data: PreparedData, settings: Settings, members: list[dict] | None = None,
                used: dict | None = None) -> None:
    sys.unraisablehook = exit_request_kept
    for family_class in (used or {}).values():  # the search's families, as its driver registered them
        families.register(family_class)
    fused = members is not None
    points = [{**config, **m} for m in members] if fused else [config]
    configs = [settings.trial(p) for p in points]
    model_cfg, section, train_cfgs = configs[0][0], configs[0][2], [t for _, t, _ in configs]
    family = families.get(model_cfg.family)
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

    def report(metrics: list[dict], state: TrainingState | None) -> None:
        if not fused and "error" in metrics[0]:  # a single trial that diverged fails (Tune records the reason)
            diverged.write_text(metrics[0]["error"])
            raise FloatingPointError(metrics[0]["error"])
        result = {**(member_report(metrics, family) if fused else metrics[0]), **node}
        if state is None:
            tune.report(result)
            return
        if state.finished():
            # A finished trial is never trained again: its last checkpoint keeps the best weights
            # (for export and generate) and drops the optimizer and last weights, 3 of 4 copies.
            state = state.without_training()
        with tempfile.TemporaryDirectory() as d:
            checkpoint.save(state, d)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    if resume is not None:
        # Tune writes result.json to storage in the background, with its snapshot: after a driver crash it
        # can end before the restored state (and RestoreFromSuccessor restores past the snapshot). The
        # epochs it lacks are reported first, from the state's history; the last with the state.
        missed = resume.replay(after=last_reported_epoch())
        for metrics in missed[:-1]:
            report(metrics, None)
        if missed and not resume.finished():
            report(missed[-1], resume)
    if resume is not None and resume.finished():
        # The driver died after this trial's last report but before Tune recorded it as done:
        # report the finished state again rather than training zero epochs and reporting nothing.
        report(resume.final, resume)
        return
    train_members(model_cfg, train_cfgs, data, report=report, resume=resume, family_cfg=section, runtime=WORKER)


train_trial.__mixins__ = (RestoreFromSuccessor,)
