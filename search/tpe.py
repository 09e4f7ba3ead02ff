"""`--search optuna`: Ray Tune's OptunaSearch (Optuna's TPE), with two mends for how this search uses it.

    from search.tpe import TPESearch
    TPESearch(metric=["best/val_x0_mse", "val/indomain_align"], mode=["min", "max"], sampler=TPESampler(seed=0))

1. **A trial ASHA stops is told as pruned.** It ends without the final evaluation, so without the faithfulness
   objective (val/attr_mean, val/indomain_align): OptunaSearch tells Optuna [x0, None], Optuna refuses it ("The value
   None could not be cast to float", a logged warning) and the trial stays RUNNING in the study, where TPE does not
   see it. The Pokédex search of bench/bench_search_vs_hand.py (12 trials, 10 stopped) left TPE 2 trials to learn
   from. Told as pruned, a stopped trial counts below every completed one (Optuna's TPE ranks pruned trials after
   complete ones), which is the scheduler's own judgement.
2. **A point already tried is not trained again.** In a small space of choices TPE proposes points it has tried
   (its first 10 trials are random draws, with replacement): that search trained 9 distinct points in 12 trials,
   46 of its 172 trial-epochs on repeats, with the same numbers each time (a point's training is deterministic).
   A repeat is told to Optuna as the first trial ended (its values, or pruned) and TPE asked again; a repeat of a
   point still training, or of one that failed, is told as failed (TPE ignores it). After `tries` repeats in a row
   the repeat is trained: the space is nearly exhausted.
"""

from __future__ import annotations

import json

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch


def point_key(config: dict) -> str:
    """A configuration as one comparable text (nested dicts, any order)."""
    return json.dumps(config, sort_keys=True, default=str)


class TPESearch(OptunaSearch):
    def __init__(self, *args, tries: int = 50, **kwargs):
        super().__init__(*args, **kwargs)
        self.tries = tries
        self._first_of = {}  # point_key -> the Tune trial id that trains (or trained) it
        self._ended = {}  # Tune trial id -> its objective values (None: pruned), once it ended without an error
        self._failed = set()  # Tune trial ids that ended with an error

    def _metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]

    def _values(self, result: dict | None):
        """The objectives' values of a final result, or None where any is missing (a trial stopped early)."""
        if not result or any(result.get(m) is None for m in self._metrics()):
            return None
        values = [float(result[m]) for m in self._metrics()]
        return values if isinstance(self.metric, list) else values[0]

    def suggest(self, trial_id: str):
        for attempt in range(self.tries):
            config = super().suggest(trial_id)
            first = self._first_of.get(key := point_key(config))
            if first is None or attempt == self.tries - 1:  # new, or `tries` repeats in a row: train it
                if first is None or first in self._failed:
                    self._first_of[key] = trial_id
                return config
            # A repeat: answer it from the first trial without training, and ask TPE again for this Tune trial.
            ot_trial = self._ot_trials.pop(trial_id)
            if first not in self._ended:  # still training, or it failed (which a retry may not)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif self._ended[first] is None:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, self._ended[first])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        values = None if error else self._values(result)
        if error:
            self._failed.add(trial_id)
        else:
            self._ended[trial_id] = values
        # Without every objective, OptunaSearch's own rule (no value, no error) tells Optuna the trial was pruned.
        super().on_trial_complete(trial_id, result if values is not None else None, error)
