"""Memorisation and diversity in feature space (model/eval/features.py): a copier is caught and real unseen images
are not; a collapsed sampler stays far from 1 however much noise it adds, a text-blind one sits at 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eval_data import synthetic_data
from model.eval import features as fe
from model.eval.fidelity import RandomFeatures


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = synthetic_data(tmp_path_factory.mktemp("memorisation"))
    feature = RandomFeatures()
    return data, feature, fe.TrainingReference.of(feature, data.train)


def test_nearest_ratios_match_a_loop_over_records():
    rng = np.random.default_rng(0)
    ids = np.repeat(np.arange(10), 2)  # two rows (rotated copies) per record
    ref = fe.TrainingReference(torch.as_tensor(rng.normal(0, 1, (20, 4))), ids)
    queries = torch.as_tensor(rng.normal(0, 1, (6, 4)))
    got = fe.nearest_ratios(queries, ref)
    for q, ratio in zip(queries.numpy(), got):
        per_record = sorted(min(np.linalg.norm(q - ref.features[j].numpy()) for j in np.flatnonzero(ids == r))
                            for r in range(10))
        assert ratio == pytest.approx(per_record[0] / per_record[1])


def test_a_copier_is_caught_and_real_unseen_images_are_not(setup):
    data, feature, ref = setup
    rng = np.random.default_rng(0)
    copies = data.train.unit_images()[rng.integers(0, len(data.train), len(data.test))]  # rotated copies too
    copier = fe.memorisation(feature, copies, ref)
    real = fe.memorisation(feature, data.test.unit_images(), ref)
    assert copier["copy_rate"].mean == 1.0 and copier["nn_ratio"].mean < 1e-3
    assert real["copy_rate"].mean == 0.0 and real["nn_ratio"].lo > 0.7


def test_a_copy_of_a_record_is_not_excused_by_its_own_rotated_copy(setup):
    """The second neighbour is another record: a copy's ratio is ~0, not its distance over its rotation's."""
    data, feature, ref = setup
    two_rows = data.train.unit_images()[:2]  # record 1's unrotated and rotated image
    assert data.train.ids[0] == data.train.ids[1]
    assert fe.nearest_ratios(feature(two_rows), ref).max() < 1e-3


def test_diversity_reads_the_text_not_the_noise(setup):
    """One picture per text plus pixel noise (sigma 0.2 on [-1, 1]) stays far below 1; the same pictures drawn
    regardless of the text sit at 1; one picture per text without noise is exactly 0."""
    data, feature, _ = setup
    test = torch.as_tensor(data.test.unit_images())
    r, s = len(test), 4
    collapsed = test[:, None].expand(r, s, *test.shape[1:])
    gen = torch.Generator().manual_seed(0)
    noisy = (collapsed + 0.2 * torch.randn(collapsed.shape, generator=gen)).clamp(-1, 1)
    pool = torch.as_tensor(data.train.unit_images())
    blind = pool[torch.randint(0, len(pool), (r * s,), generator=gen)].view(r, s, *test.shape[1:])
    assert fe.diversity(feature, collapsed).mean == pytest.approx(0.0, abs=1e-6)
    assert fe.diversity(feature, noisy).hi < 0.5
    mean, lo, hi = fe.diversity(feature, blind)
    assert lo < 1.0 < hi and 0.85 < mean < 1.15


def test_diversity_needs_two_samples_of_two_texts(setup):
    data, feature, _ = setup
    with pytest.raises(ValueError, match="at least 2 samples"):
        fe.diversity(feature, data.test.unit_images()[:, None])
