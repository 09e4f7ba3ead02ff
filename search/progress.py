"""One progress line while a search runs: done / running / pending, with each running trial's latest selection
metric (its family's: val/l1 for the regressor, val/x0_mse for the diffusion family).

    tune.RunConfig(callbacks=[Progress(total=32)], verbose=0)

    [search 01:12] 9/32 done (1 errored) · 2 running · 21 pending · best val/l1 0.2714 (4f1a2_00003)
        running: 4f1a2_00009 epoch 3 val/l1 0.3120 · 4f1a2_00010 epoch 1 val/l1 0.4471

A line is printed when a trial finishes, fails or is retried, and at least every `every_s` seconds.

    with TuneLogs(stop).attached():   # Tune's own log lines, as a user should see them (below)
        tuner.fit()

Tune logs each failed trial with the whole Ray traceback, and its own advice on Ctrl-C ("Tuner.restore(...)"); the
reason is printed here in one line (the traceback stays in the trial's error.txt) and the advice is the search's
(`--resume`). A trial or a snapshot that cannot be written because the disk is full stops the search at once
(search/signals.py) instead of failing every trial in turn, each retry with it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from contextlib import contextmanager

from ray.tune import Callback

from model import families
from model.config import DEFAULT_FAMILY, TEST_ALIGN, TEST_ATTR_ALL, TEST_KID_RANDOM, TEST_TYPE_ACC
from search.results import error_reason
from search.signals import FAULT, Reason, Stop
from search.store import storage_full


# The final metrics a finished trial's line shows, with their 95% intervals, where it reports them.
SHOWN = (TEST_ATTR_ALL, TEST_ALIGN, TEST_TYPE_ACC, TEST_KID_RANDOM)


def final_line(result: dict) -> str:
    """"test/attr_all 0.62 [0.55, 0.69] · ..." from a trial's last report ("" before its final metrics)."""
    return " · ".join(f"{m} {result[m]:.3g} [{result[f'{m}_lo']:.3g}, {result[f'{m}_hi']:.3g}]" for m in SHOWN
                      if isinstance(result.get(m), float) and result.get(f"{m}_lo") is not None)


class Progress(Callback):
    def __init__(self, total: int, every_s: float = 30.0):
        self.total = total  # trials the search will run (the grid size or --num-samples)
        self.every_s = every_s
        self.latest: dict[str, tuple] = {}  # trial_id -> (epoch, its selection metric's name, value)
        self.final: dict[str, str] = {}  # trial_id -> its final metrics with their intervals, once reported
        self.start = self.last = time.monotonic()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # Called when fit() starts, also after Tuner.restore (which unpickles this object): restart the clock.
        self.latest.clear()
        self.final.clear()
        self.start = self.last = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metric = families.get(trial.config.get("family", DEFAULT_FAMILY)).selection
        self.latest[trial.trial_id] = (result.get("epoch"), metric, result.get(metric))
        self.final[trial.trial_id] = final_line(result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch, metric, val = self.latest.get(trial.trial_id, (None, families.get(DEFAULT_FAMILY).selection, None))
        val = f"{val:.4f}" if isinstance(val, float) else val
        final = self.final.get(trial.trial_id)
        print(f"[search] trial {trial.trial_id} {trial.config} finished after {epoch} epochs, {metric} {val}"
              + (f"; {final}" if final else ""))
        self.line(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"[search] trial {trial.trial_id} {trial.config} FAILED: {failure(trial)}")
        self.line(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        retries = "without limit" if trial.max_failures < 0 else f"up to {trial.max_failures}"
        print(f"[search] trial {trial.trial_id} failed ({failure(trial)}); retrying it from its last checkpoint "
              f"(failure {trial.run_metadata.num_failures}, retries {retries})", flush=True)

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last >= self.every_s:
            self.line(trials)

    def line(self, trials) -> None:
        self.last = time.monotonic()
        counts = Counter(t.status for t in trials)
        done = counts["TERMINATED"] + counts["ERROR"]
        active = counts["RUNNING"] + counts["PAUSED"]
        mins, secs = divmod(int(self.last - self.start), 60)
        msg = (f"[search {mins:02d}:{secs:02d}] {done}/{self.total} done ({counts['ERROR']} errored) · "
               f"{counts['RUNNING']} running · {max(0, self.total - done - active)} pending")
        for metric in sorted({m for _, m, _ in self.latest.values()}):  # a best per family: metrics differ
            vals = {tid: v for tid, (_, m, v) in self.latest.items() if m == metric and v is not None and math.isfinite(v)}
            if vals:
                best = min(vals, key=vals.get)
                msg += f" · best {metric} {vals[best]:.4f} ({best})"
        running = [f"{t.trial_id} epoch {self.latest[t.trial_id][0]} {self.latest[t.trial_id][1]} "
                   f"{self.latest[t.trial_id][2]:.4f}"
                   for t in trials if t.status == "RUNNING" and self.latest.get(t.trial_id, (0, "", None))[2] is not None]
        if running:
            msg += "\n    running: " + " · ".join(running)
        print(msg, flush=True)


def failure(trial) -> str:
    """Why a trial failed, in one line, and where its traceback is kept."""
    reason = None
    if trial.error_file:
        try:
            with open(trial.error_file) as f:
                reason = error_reason(f.read())
        except OSError:
            pass
    return f"{reason or 'see its error.txt'} (traceback: {trial.path}/error.txt)"


class TuneLogs(logging.Filter):
    """Tune's log lines as the search shows them: a failed trial's traceback dropped (Progress prints its reason), Tune's
    own lines about Ctrl-C dropped (the search prints its own, naming --resume), and the first error that says the
    disk is full turned into a stop of the whole search."""

    LOGGERS = ("ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state", "ray.tune.tune")
    DROPPED = ("Trial task failed", "Stop signal received", "Experiment has been interrupted", "Trials did not complete")
    WRITES = ("Trial task failed", "Saving experiment state to storage", "Experiment state snapshotting failed")

    def __init__(self, stop: Stop, storage: str = ""):
        super().__init__()
        self.stop = stop
        self.storage = storage  # where the search writes, for the stop's line

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(self.WRITES):
            error = record.exc_info[1] if record.exc_info else None
            if why := storage_full(error or message):
                trial = message.rsplit(" ", 1)[-1].removeprefix("train_trial_")  # "... for trial train_trial_<id>"
                who = (f"trial {trial} could not save its results" if message.startswith("Trial task failed")
                       else "Tune could not save its snapshot")
                self.stop.request(Reason(FAULT, f"{why}: {who} to {self.storage or 'storage'}", False))
                return False
            if not message.startswith(self.DROPPED):  # another write failure: its one line, not Ray's traceback
                record.msg, record.args = f"{message}: {error!r}" if error else message, None
                record.exc_info = record.stack_info = None
        return not message.startswith(self.DROPPED)

    @contextmanager
    def attached(self):
        loggers = [logging.getLogger(name) for name in self.LOGGERS]
        for logger in loggers:
            logger.addFilter(self)
        try:
            yield self
        finally:
            for logger in loggers:
                logger.removeFilter(self)
