"""Type accuracy that sees shape (model/eval/type_accuracy.py): on the synthetic set the CNN recognises the real
test images' types and a text-blind image scores at most chance; cross-validation folds are by record; the fit is
cached."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eval_data import synthetic_data
from model.eval import type_accuracy as ta

TINY = dataclasses.replace(ta.TypeCNNConfig(), epochs=40, batch_size=64, width=8)  # 150 steps, ~4 s CPU


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    data = synthetic_data(tmp_path_factory.mktemp("type_accuracy"))
    types = data.info["primary_types"]
    y, classes = ta._train_labels(data.train, types)
    from model.eval.alignment import record_rows
    yield data, types, ta.fit_cnn(data.train.images, y, classes, TINY, record_rows(data.train.ids))
    torch.set_num_threads(before)


def test_the_cnn_recognises_real_test_images_and_not_a_text_blind_one(fitted):
    data, types, clf = fitted
    y = ta.labels(clf, data.test, types)
    real = ta.type_accuracy(clf, data.test.images, y)
    chance = max(np.mean(y == c) for c in set(y.tolist()))
    blind = np.broadcast_to(np.median(data.train.unit_images(), 0), (len(y), 3, 32, 32))
    assert real.mean > 0.7 and real.lo > 3 * chance
    assert ta.type_accuracy(clf, blind, y).mean <= chance + 1e-9  # one picture is one prediction for every record


def test_hits_are_counted_per_record_and_sample(fitted):
    data, types, clf = fitted
    y = ta.labels(clf, data.test, types)
    images = np.stack([data.test.unit_images(), np.ones_like(data.test.unit_images())], 1)  # (R, 2, ...)
    h = ta.hits(clf, images, y)
    assert h.shape == (len(y), 2)
    assert h[:, 0].tolist() == (clf.predict(data.test.images) == y).tolist()
    assert h[:, 1].tolist() == (clf.predict(images[:, 1]) == y).tolist()


def test_a_type_the_classifier_never_saw_is_a_miss(fitted):
    data, types, clf = fitted
    unseen = {**types, str(int(data.test.ids[0])): "Dragon"}
    y = ta.labels(clf, data.test, unseen)
    assert y[0] == ta.UNKNOWN and not ta.hits(clf, data.test.images, y)[0, 0]


def test_folds_are_disjoint_records_that_cover_the_split():
    ids = np.repeat(np.arange(20, 43), 2)  # 23 records, two rotated copies each
    folds = ta.folds_by_record(ids, 5, seed=1)
    flat = np.concatenate(folds)
    assert sorted(flat.tolist()) == list(range(20, 43)) and len(folds) == 5
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]


def test_cross_validation_holds_records_out(fitted, monkeypatch):
    """Each fold's classifier is fitted without any copy of its held-out records, and each held-out record is
    judged once, on its unrotated image."""
    data, types, _ = fitted
    seen = []
    real_fit = ta.fit_cnn

    def spy(images, y, classes, cfg, groups):
        seen.append(len(images))
        return real_fit(images, y, classes, dataclasses.replace(cfg, epochs=8), groups)

    monkeypatch.setattr(ta, "fit_cnn", spy)
    result = ta.cross_validate(data, 3, which=("cnn", "histogram"), cnn_cfg=TINY, log=None)
    folds = ta.folds_by_record(data.train.ids, 3)
    assert seen == [2 * (240 - len(f)) for f in folds]  # two rotated copies of every other record
    for name in ("cnn", "histogram"):
        assert len(result[name]["per_fold"]) == 3
    assert result["histogram"]["accuracy"] > 0.9  # on the synthetic set the type is the body colour


def test_the_cnn_is_cached(fitted, tmp_path, monkeypatch):
    data, types, clf = fitted
    cached = dataclasses.replace(data, info={**data.info, "cache_dir": str(tmp_path)})
    monkeypatch.setattr(ta, "fit_cnn", lambda *a, **k: clf)
    ta.load_or_fit_cnn(cached, cfg=TINY)
    monkeypatch.setattr(ta, "fit_cnn", lambda *a, **k: pytest.fail("refitted instead of loading the cache"))
    loaded = ta.load_or_fit_cnn(cached, cfg=TINY)
    assert loaded.classes == clf.classes
    assert np.array_equal(loaded.predict(data.test.images), clf.predict(data.test.images))


def test_real_creatures_are_rarely_taken_for_shapeless_images(fitted):
    """The "no creature" class must not swallow real images. (Whether it rejects a flat disc in a type's colour is
    measured on the real Pokédex, bench/bench_eval_models.py: on the synthetic set a round creature is such a disc
    with an outline, and its type is its colour.)"""
    data, _, clf = fitted
    assert clf.cfg.reject > 0
    assert np.mean(clf.predict(data.test.images) == len(clf.classes)) < 0.1


def test_shapeless_images_are_seeded_and_in_range():
    palette = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    a = ta.shapeless(16, 32, palette, torch.Generator().manual_seed(3))
    b = ta.shapeless(16, 32, palette, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (16, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    assert (a == 1).all(1).float().mean() > 0.3  # mostly white background, as the data's images
