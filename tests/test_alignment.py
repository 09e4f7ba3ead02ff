"""The in-domain text-image model (model/eval/alignment.py): on the synthetic set, real test images align with
their own texts far above shuffled texts and are retrieved far above chance, a text-blind image scores exactly
chance, R-precision equals a rank counted by hand, and the fit is deterministic and cached."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from eval_data import synthetic_data
from model.eval import alignment as al

# CI-sized: 40 epochs of 240 records (150 steps) of a width-8 tower fit in ~4 s CPU and already retrieve 0.9 of the
# synthetic test texts in the top 5 (chance 0.17). The default config is what bench/bench_eval_models.py measures.
TINY = dataclasses.replace(al.AlignConfig(), epochs=40, batch_size=64, width=8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    data = synthetic_data(tmp_path_factory.mktemp("alignment"))
    pooler = al.TextPooler(TINY.text_encoder, TINY.max_tokens)
    model = al.fit(data.train, TINY, pooler=pooler)
    yield data, model, pooler
    torch.set_num_threads(before)


def test_real_images_align_with_their_own_texts_far_above_shuffled_ones(fitted):
    data, model, _ = fitted
    refs = al.baselines(model, data.test)
    assert refs[al.BASELINE_ALIGN_REAL].lo > refs[al.BASELINE_ALIGN_SHUFFLED].hi
    assert refs[al.BASELINE_R_TOP1_CHANCE] == pytest.approx(1 / 30)
    assert refs[al.BASELINE_R_TOP5_REAL].mean > 3 * refs[al.BASELINE_R_TOP5_CHANCE]
    assert refs[al.BASELINE_R_TOP1_REAL].lo > 3 * refs[al.BASELINE_R_TOP1_CHANCE]


def test_a_text_blind_image_scores_exactly_chance(fitted):
    """The same image for every record: exactly one text is nearest to it, so top-1 is 1/R and top-5 is 5/R."""
    data, model, _ = fitted
    median = np.median(data.train.unit_images(), 0)
    blind = np.broadcast_to(median, (len(data.test), 2, *median.shape))
    hits = al.r_precision_hits(model, blind, data.test.texts)
    assert hits[1].mean() == pytest.approx(1 / len(data.test)) and hits[5].mean() == pytest.approx(5 / len(data.test))


def test_r_precision_is_the_rank_of_the_own_text(fitted):
    data, model, _ = fitted
    images = data.test.unit_images()
    img, txt = model.embed_images(images).numpy(), model.embed_texts(data.test.texts).numpy()
    for k in (1, 5):
        expected = [sum(img[i] @ txt[j] > img[i] @ txt[i] for j in range(len(txt))) < k for i in range(len(txt))]
        assert al.r_precision_hits(model, images, data.test.texts)[k][:, 0].tolist() == expected
    scores = al.alignment_scores(model, images, data.test.texts)[:, 0]
    assert scores == pytest.approx([img[i] @ txt[i] for i in range(len(txt))], abs=1e-5)


def test_pooled_text_state_ignores_padding(fitted):
    """The masked mean: a text pooled alone equals the same text pooled beside a longer one (padded)."""
    data, _, pooler = fitted
    short, long = "A small red creature.", data.train.texts[0]
    alone = al.TextPooler(TINY.text_encoder, TINY.max_tokens)([short])
    together = al.TextPooler(TINY.text_encoder, TINY.max_tokens)
    together.states.clear()
    batch = together([long, short])
    assert torch.allclose(batch[1], alone[0], atol=1e-5)


def test_the_fit_is_deterministic(fitted):
    data, model, pooler = fitted
    again = al.fit(data.train, TINY, pooler=pooler)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_load_or_fit_caches_the_model(fitted, tmp_path, monkeypatch):
    data, model, _ = fitted
    cached = dataclasses.replace(data, info={**data.info, "cache_dir": str(tmp_path)})
    monkeypatch.setattr(al, "fit", lambda *a, **k: model)  # the fixture's fit stands in for a new one
    first = al.load_or_fit(cached, TINY)
    monkeypatch.setattr(al, "fit", lambda *a, **k: pytest.fail("refitted instead of loading the cache"))
    loaded = al.load_or_fit(cached, TINY)
    assert first is model and loaded is not model
    assert len(list(tmp_path.glob("indomain_clip-*.pt"))) == 1
    images = data.test.unit_images()
    assert torch.equal(loaded.embed_images(images), model.embed_images(images))
    assert torch.allclose(loaded.embed_texts(data.test.texts), model.embed_texts(data.test.texts), atol=1e-6)


def test_a_cached_model_scores_every_split_without_the_text_encoder(fitted, tmp_path, monkeypatch):
    """The cache holds the pooled states of the val and test texts beside the weights: a loaded model embeds them
    exactly as the fitted one does without loading the encoder, and still loads it for a text it has not seen."""
    data, model, _ = fitted
    cached = dataclasses.replace(data, info={**data.info, "cache_dir": str(tmp_path)})
    monkeypatch.setattr(al, "fit", lambda *a, **k: model)
    al.load_or_fit(cached, TINY)  # fitted (the fixture's model) and cached
    monkeypatch.setattr(al, "_text_encoder", lambda name: pytest.fail("a cached model loaded the text encoder"))
    loaded = al.load_or_fit(cached, TINY)
    assert loaded is not model and loaded.pooler.encoder is None
    for split in (data.val, data.test):
        assert torch.equal(loaded.embed_texts(split.texts), model.embed_texts(split.texts))
    with pytest.raises(pytest.fail.Exception, match="loaded the text encoder"):
        loaded.embed_texts(["A text no split holds."])


def test_metrics_name_each_score_with_an_interval(fitted):
    data, model, _ = fitted
    generated = np.stack([data.test.unit_images(), data.test.unit_images()[:, :, :, ::-1]], 1)  # (R, 2, ...)
    out = al.metrics(model, generated, data.test)
    assert set(out) == {al.TEST_ALIGN, al.TEST_R_TOP1, al.TEST_R_TOP5}
    for name, (mean, lo, hi) in out.items():
        assert lo <= mean <= hi, name


def test_derangement_moves_every_item():
    for n in (2, 3, 30):
        p = al.derangement(n, seed=n)
        assert sorted(p.tolist()) == list(range(n)) and not np.any(p == np.arange(n))
    assert al.derangement(30, 1).tolist() == al.derangement(30, 1).tolist()


def test_record_rows_group_copies_and_pick_the_unrotated_one():
    ids = np.array([4, 4, 4, 4, 9, 9, 9, 9])  # 2 rotations x 2 paraphrases per record, rotation-major
    assert [g.tolist() for g in al.record_rows(ids)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [g.tolist() for g in al.record_rows(ids, rows_per_rotation=2)] == [[0, 1], [4, 5]]
