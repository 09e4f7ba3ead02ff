"""Tune's restore rules for a trial, kept apart from training (no torch here): a toy trial that follows them
(bench/bench_resume_race.py, tests/test_tune_restore.py) starts in a second, not in the three that torch takes.

    last_reported_epoch()              # in a trial: the last epoch Tune holds of its reports on storage
    train_trial.__mixins__ = (RestoreFromSuccessor,)   # restore past a checkpoint the snapshot names but Tune deleted

search/trainable.py applies both: a restored trial first reports the epochs Tune missed, then trains on.
"""

from __future__ import annotations

import json
import logging
import posixpath

import pyarrow.fs
from ray import tune

# Written by RestoreFromSuccessor in the checkpoint it substituted: where from, and whether the copy finished.
SUBSTITUTE = "substitute.json"


def last_reported_epoch() -> int:
    """The last epoch in this trial's result.json on storage (0 if none): what Tune holds of its reports."""
    storage = tune.get_context().get_storage()
    fs, last = storage.storage_filesystem, 0
    try:
        with fs.open_input_stream(posixpath.join(storage.trial_fs_path, "result.json")) as f:
            lines = f.read().decode().splitlines()
    except FileNotFoundError:
        return 0
    for line in lines:
        try:
            last = max(last, int(json.loads(line).get("epoch", 0)))
        except (json.JSONDecodeError, AttributeError):  # a line cut short by the crash
            continue
    return last


class RestoreFromSuccessor:
    """Tune deletes a trial's oldest checkpoint when it registers a newer one, and snapshots the experiment
    (what `--resume` reads, with each trial's latest checkpoint and result.json) later, in the background.
    A driver killed in between leaves a snapshot naming a checkpoint that no longer exists, and Tune fails
    the trial: "Could not recover from checkpoint as it does not exist on storage anymore". Such a trial
    restores from the oldest checkpoint after the named one instead (Tune registered it before deleting the
    named one, so it is whole), copied to the named path so that Tune's bookkeeping, which deletes that path
    later, stays whole; train_trial then reports the epoch Tune missed first. A SUBSTITUTE note is written
    before the copy and marked done after it, so a copy cut short by another crash is redone, on a disk as
    on S3.

    Mixed into train_trial's Tune trainable through `__mixins__`, Ray's hook for it (Ray pinned to 2.60)."""

    def restore(self, checkpoint_path):
        ckpt = getattr(checkpoint_path, "checkpoint", None)
        if ckpt is not None and substitute_needed(ckpt.filesystem, ckpt.path):
            fs, (trial_dir, named) = ckpt.filesystem, posixpath.split(ckpt.path)
            found = fs.get_file_info(pyarrow.fs.FileSelector(trial_dir))
            later = sorted(f.base_name for f in found if f.type == pyarrow.fs.FileType.Directory
                           and f.base_name.startswith("checkpoint_") and f.base_name > named)
            if later:
                logging.getLogger(__name__).warning(
                    "%s is gone (the experiment snapshot predates its deletion): restoring from %s",
                    ckpt.path, later[0])
                note = {"from": later[0]}
                fs.create_dir(ckpt.path)
                write_note(fs, ckpt.path, {**note, "copied": False})
                # use_threads=False: pyarrow's threaded S3 uploads can fail (Ray's own copies avoid them too).
                pyarrow.fs.copy_files(posixpath.join(trial_dir, later[0]), ckpt.path, source_filesystem=fs,
                                      destination_filesystem=fs, use_threads=False)
                write_note(fs, ckpt.path, {**note, "copied": True})
        return super().restore(checkpoint_path)


def substitute_needed(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    """Whether the checkpoint at `path` is gone, or is a substitute whose copy was cut short."""
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return True
    note = posixpath.join(path, SUBSTITUTE)
    if fs.get_file_info(note).type == pyarrow.fs.FileType.NotFound:
        return False
    with fs.open_input_stream(note) as f:
        return not json.loads(f.read().decode())["copied"]


def write_note(fs: pyarrow.fs.FileSystem, path: str, note: dict) -> None:
    with fs.open_output_stream(posixpath.join(path, SUBSTITUTE)) as f:
        f.write(json.dumps(note).encode())
