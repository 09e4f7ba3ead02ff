"""What `--resume` checks in Tune's experiment snapshot before Tune restores from it.

    check_snapshot(ray_experiment, trials)   # before tune.Tuner.restore
    with refuse_empty_restart():
        tuner.fit()

Tune writes its snapshot files (experiment_state-<session>.json, the searcher's state) atomically on
the driver, then copies them to the experiment's storage in the background, not atomically. A driver
killed during that copy leaves a file cut short on storage (seen in CI: an empty basic-variant-state
file), and Tune's restore then logs "Failed to restore the run state", forgets the search and starts a
new experiment with one trial of an empty config. Neither may happen silently:

- The grid's searcher (BasicVariantGenerator) only creates trials. When its newest state is damaged
  but the snapshot holds every trial of the search, it has nothing left to do: its state files are
  removed (an older session's would create trials again) and the search resumes from the trials.
- Any other damaged file is a one-line error naming it. `refuse_empty_restart` turns a restore failure
  this check did not foresee into an error too, instead of Tune's fresh, empty experiment.
"""

from __future__ import annotations

import json
import logging
import posixpath
from contextlib import contextmanager

import pyarrow.fs

EXPERIMENT_STATE = "experiment_state-"
# The files Tune's restore loads besides the experiment state, newest (by name) of each kind.
SEARCHER_STATES = ("basic-variant-state-", "search_gen_state-", "searcher-state-", "callback-states-")
GRID_SEARCHER = "basic-variant-state-"
TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


class DamagedSnapshot(Exception):
    pass


def _newest(names: list[str], prefix: str) -> str | None:
    return max((n for n in names if n.startswith(prefix)), default=None)


def _damage(fs: pyarrow.fs.FileSystem, path: str) -> str | None:
    """Why the snapshot file at path cannot be loaded, or None."""
    import ray.cloudpickle as cloudpickle

    with fs.open_input_stream(path) as f:
        data = f.read()
    if not data:
        return "it is empty"
    try:
        if path.rsplit("/", 1)[-1].startswith(EXPERIMENT_STATE):
            json.loads(data)
        else:
            cloudpickle.loads(data)
    except Exception as e:  # noqa: BLE001 — whatever a cut-short pickle raises
        return f"it does not load ({type(e).__name__}: {e})"
    return None


def check_snapshot(ray_experiment: str, trials: int) -> None:
    """Raise DamagedSnapshot naming the damaged file, or repair a damaged grid-searcher state (see above)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(ray_experiment) if "://" in ray_experiment else (
        pyarrow.fs.LocalFileSystem(), ray_experiment)
    names = [f.base_name for f in fs.get_file_info(pyarrow.fs.FileSelector(root)) if f.type == pyarrow.fs.FileType.File]
    state = _newest(names, EXPERIMENT_STATE)
    if state is None:
        return  # nothing to check: Tune says so itself
    if why := _damage(fs, posixpath.join(root, state)):
        raise DamagedSnapshot(f"Tune's snapshot {posixpath.join(root, state)} is damaged: {why} (the driver was "
                              "killed while Tune copied it to storage); this search cannot be resumed, start it "
                              "again under a new --experiment name")
    with fs.open_input_stream(posixpath.join(root, state)) as f:
        recorded = len(json.loads(f.read())["trial_data"])
    for prefix in SEARCHER_STATES:
        newest = _newest(names, prefix)
        if newest is None or not (why := _damage(fs, posixpath.join(root, newest))):
            continue
        if prefix == GRID_SEARCHER and recorded >= trials:
            logging.getLogger(__name__).warning(
                "%s is damaged (%s); the snapshot holds all %d trials, so the grid's searcher has nothing left "
                "to create: its state is dropped and the search resumes from the trials", newest, why, trials)
            for name in names:
                if name.startswith(GRID_SEARCHER):
                    fs.delete_file(posixpath.join(root, name))
            continue
        raise DamagedSnapshot(f"Tune's searcher state {posixpath.join(root, newest)} is damaged: {why} (the driver "
                              "was killed while Tune copied it to storage); this search cannot be resumed, start it "
                              "again under a new --experiment name")


class _RaiseOnFailedRestore(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Failed to restore the run state"):
            cause = f": {record.exc_info[1]}" if record.exc_info and record.exc_info[1] else ""
            raise DamagedSnapshot(f"Tune could not restore the experiment{cause}; refusing to start a new, "
                                  "empty one in its place")


@contextmanager
def refuse_empty_restart():
    """Inside: Tune failing to restore raises DamagedSnapshot (out of Tuner.fit) instead of Tune logging it
    and starting a new experiment from an empty config."""
    logger, handler = logging.getLogger(TUNE_CONTROLLER_LOGGER), _RaiseOnFailedRestore()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
