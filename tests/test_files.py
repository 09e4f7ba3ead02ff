"""Fit once per dataset, cache by key (model/files.py load_or_fit): a second call loads instead of fitting, another
key or a damaged file refits (with a warning), a folder that cannot be written keeps the object in memory; without
a cache folder the process keeps the fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.dataset import PreparedData, Split
from model.files import dataset_key, key_hash, load_or_fit


def tiny_data(cache_dir, fingerprint="fp-1", ids=(1, 2, 3)) -> PreparedData:
    split = Split(np.array(ids, np.int64), [f"t{i}" for i in ids], np.zeros((len(ids), 3, 2, 2), np.float32))
    info = {"fingerprint": fingerprint, **({"cache_dir": str(cache_dir)} if cache_dir else {})}
    return PreparedData(split, split, split, info=info)


class Counter:
    """A fit function that counts its calls and returns a fresh tensor each time."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return torch.full((3,), float(self.calls))


def run(data, fit, config=None):
    return load_or_fit(data.info.get("cache_dir"), "thing", dataset_key(data, "thing", 1, config), fit,
                       lambda t: {"t": t}, lambda s: s["t"])


def test_the_second_call_loads_what_the_first_fitted(tmp_path):
    fit = Counter()
    first = run(tiny_data(tmp_path), fit)
    second = run(tiny_data(tmp_path), fit)
    assert fit.calls == 1 and torch.equal(first, second)
    digest = key_hash(dataset_key(tiny_data(tmp_path), "thing", 1))
    assert [p.name for p in tmp_path.iterdir()] == [f"thing-{digest[:16]}.pt"]


@pytest.mark.parametrize("change", [dict(fingerprint="fp-2"), dict(ids=(1, 2, 4))])
def test_another_dataset_or_training_split_is_another_key(tmp_path, change):
    fit = Counter()
    run(tiny_data(tmp_path), fit)
    run(tiny_data(tmp_path, **change), fit)
    assert fit.calls == 2


def test_key_covers_config_and_version(tmp_path):
    data = tiny_data(tmp_path)
    keys = {key_hash(dataset_key(data, "thing", 1, {"a": 1})), key_hash(dataset_key(data, "thing", 1, {"a": 2})),
            key_hash(dataset_key(data, "thing", 2, {"a": 1})), key_hash(dataset_key(data, "other", 1, {"a": 1}))}
    assert len(keys) == 4


def test_a_damaged_file_is_refitted_with_a_warning(tmp_path):
    fit = Counter()
    run(tiny_data(tmp_path), fit)
    (path,) = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(UserWarning, match="unreadable"):
        again = run(tiny_data(tmp_path), fit)
    assert fit.calls == 2 and torch.equal(again, torch.full((3,), 2.0))
    assert torch.equal(run(tiny_data(tmp_path), fit), again) and fit.calls == 2  # the repaired file is used


def test_a_file_under_another_key_is_not_used(tmp_path):
    fit = Counter()
    data = tiny_data(tmp_path)
    digest = key_hash(dataset_key(data, "thing", 1))
    torch.save({"key": "someone else's", "t": torch.zeros(3)}, tmp_path / f"thing-{digest[:16]}.pt")
    with pytest.warns(UserWarning, match="does not match"):
        assert torch.equal(run(data, fit), torch.ones(3))


def test_without_a_cache_folder_the_process_keeps_it_and_each_call_gets_its_own(monkeypatch):
    """Data built in memory (no cache_dir): fitted once per key in this process; every call gets its own object,
    so one caller's change reaches no other; another key fits; only the last MEMORY_KEYS keys are kept."""
    from model import files

    monkeypatch.setattr(files, "MEMORY", {})
    fit = Counter()
    first, second = run(tiny_data(None), fit), run(tiny_data(None), fit)
    assert fit.calls == 1 and torch.equal(first, second) and first is not second
    second += 5  # a caller changes what it got
    assert torch.equal(run(tiny_data(None), fit), torch.ones(3)) and fit.calls == 1
    run(tiny_data(None, ids=(1, 2, 4)), fit)
    assert fit.calls == 2
    for k in range(files.MEMORY_KEYS):  # the first key is pushed out of the process's memory
        run(tiny_data(None, fingerprint=f"other-{k}"), fit)
    calls = fit.calls
    assert torch.equal(run(tiny_data(None), fit), torch.full((3,), calls + 1.0)) and fit.calls == calls + 1


def test_data_without_a_fingerprint_and_a_cache_folder_fits_every_time(monkeypatch):
    """Nothing tells two hand-assembled datasets (no fingerprint) apart: such a fit is never kept."""
    from model import files

    monkeypatch.setattr(files, "MEMORY", {})
    fit = Counter()
    run(tiny_data(None, fingerprint=None), fit)
    run(tiny_data(None, fingerprint=None), fit)
    assert fit.calls == 2 and files.MEMORY == {}


def test_a_folder_that_cannot_be_written_keeps_it_in_memory(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")  # fails for root too, unlike a chmod
    with pytest.warns(UserWarning, match="not cached"):
        assert torch.equal(run(tiny_data(blocker), Counter()), torch.ones(3))
    assert blocker.read_text().startswith("a file")
