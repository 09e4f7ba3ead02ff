"""One progress line while a search runs: done / running / pending, with each running trial's latest selection
metric (its family's: val/l1 for the regressor, val/x0_mse for the diffusion family).

    tune.RunConfig(callbacks=[Progress(total=32)], verbose=0)

    [search 01:12] 9/32 done (1 errored) · 2 running · 21 pending · best val/l1 0.2714 (4f1a2_00003)
        running: 4f1a2_00009 epoch 3 val/l1 0.3120 · 4f1a2_00010 epoch 1 val/l1 0.4471

A line is printed when a trial finishes or fails, and at least every `every_s` seconds.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from ray.tune import Callback

from model import families
from model.config import DEFAULT_FAMILY
from search.results import error_reason


class Progress(Callback):
    def __init__(self, total: int, every_s: float = 30.0):
        self.total = total  # trials the search will run (the grid size or --num-samples)
        self.every_s = every_s
        self.latest: dict[str, tuple] = {}  # trial_id -> (epoch, its selection metric's name, value)
        self.start = self.last = time.monotonic()

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        # Called when fit() starts, also after Tuner.restore (which unpickles this object): restart the clock.
        self.latest.clear()
        self.start = self.last = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metric = families.get(trial.config.get("family", DEFAULT_FAMILY)).selection
        self.latest[trial.trial_id] = (result.get("epoch"), metric, result.get(metric))

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch, metric, val = self.latest.get(trial.trial_id, (None, families.get(DEFAULT_FAMILY).selection, None))
        val = f"{val:.4f}" if isinstance(val, float) else val
        print(f"[search] trial {trial.trial_id} {trial.config} finished after {epoch} epochs, {metric} {val}")
        self.line(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        reason = None
        if trial.error_file:
            try:
                with open(trial.error_file) as f:
                    reason = error_reason(f.read())
            except OSError:
                pass
        print(f"[search] trial {trial.trial_id} {trial.config} FAILED: {reason or 'see its error.txt'}")
        self.line(trials)

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
