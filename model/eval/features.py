"""Memorisation and diversity in feature space, so that they mean what they say.

    from model.eval import features as fe
    feature = fidelity.ClipFeatures(clip)             # or fidelity.RandomFeatures() where no in-domain model is
    ref = fe.TrainingReference.of(feature, data.train)  # the training images' features, once per dataset
    fe.memorisation(feature, generated, ref)          # {"copy_rate": Interval, "nn_ratio": Interval}: any images,
                                                      # e.g. generated from test texts, or from training texts
    fe.diversity(feature, generated)                  # Interval of within-text / between-text distance (S >= 2)

In pixel space noise reads as health: it pushes a sample away from every training image and from its sibling
samples. A feature space (the in-domain model's image tower, or a fixed random CNN) maps a noisy copy of an
image near the image, so these read the content.

- memorisation (Carlini et al. 2023): for each generated image, its feature distance to the nearest training
  record over that to the second-nearest (a record's distance is the nearest of its rotated copies, so its own
  copies never serve as the second neighbour). A copy of a training image has a ratio near 0; an image like
  the real unseen ones sits near their ratio. `copy_rate` (`test/copy_rate`) is the share of samples with a
  ratio below COPY_RATIO; `nn_ratio` (`test/nn_ratio`) the mean ratio. Both take any images, so the same call
  measures samples from training texts (where a memoriser copies most).
- diversity (`test/diversity`): the mean feature distance between two samples of one text, over the mean
  distance between samples of different texts. Near 1: the text does not matter (the starting noise decides
  the picture); near 0: one picture per text (a regressor, or a collapsed sampler); the real data's own level
  is unknown (one image per record), so read it against other rows and the cheaters.

Measured on the real Pokédex's test split (90 records, 32 px; bench/bench_eval_models.py), in-domain / random
features: the real test images' copy rate 0 / 0 (nearest/second-nearest ratio 0.90 / 0.96, the lowest of them
0.82 with random features), training images returned as samples (a copier) 1 / 1 (ratio 0); diversity of one
real image per text plus pixel noise of sigma 0.2 (a collapsed sampler that looks busy) 0.20 / 0.29, of random
training images whatever the text (a text-blind sampler) 1.00 / 1.01. In pixel L1 the same noisy collapsed
sampler's within-text distance is 0.38 of its between-text one. A training image with pixel noise of sigma 0.1
keeps a copy rate of 0.89 (random features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.eval.alignment import unit_tensor
from model.eval.intervals import Interval, bootstrap_interval
from model.config import TEST_COPY_RATE, TEST_DIVERSITY  # noqa: F401 (its metrics' names)

TEST_NN_RATIO = "test/nn_ratio"
COPY_RATIO = 0.5  # a sample nearer its nearest training record than half the distance to the second is a copy


def _flat_features(feature, images) -> tuple[torch.Tensor, int, int]:
    """(R*S, d) features of (R, S, 3, H, W) or (R, 3, H, W) images, with R and S."""
    x = unit_tensor(images)
    x = x[:, None] if x.ndim == 4 else x
    r, s = x.shape[:2]
    with torch.no_grad():
        return feature(x.flatten(0, 1)).double(), r, s


@dataclass(frozen=True)
class TrainingReference:
    features: torch.Tensor  # (M, d) one row per training row (rotated copies included)
    ids: np.ndarray  # (M,) the record id of each row

    @classmethod
    def of(cls, feature, split) -> "TrainingReference":
        with torch.no_grad():
            return cls(feature(split.images).double(), np.asarray(split.ids))


def nearest_ratios(query: torch.Tensor, ref: TrainingReference) -> np.ndarray:
    """(N,) each query row's distance to its nearest training record over that to its second-nearest record."""
    records, inverse = np.unique(ref.ids, return_inverse=True)
    if len(records) < 2:
        raise ValueError("memorisation needs at least 2 training records")
    d = torch.cdist(query.double(), ref.features)  # (N, M)
    per_record = torch.full((len(query), len(records)), float("inf"), dtype=torch.float64)
    per_record.scatter_reduce_(1, torch.as_tensor(inverse)[None].expand(len(query), -1), d, reduce="amin")
    two = per_record.topk(2, dim=1, largest=False).values  # (N, 2)
    return (two[:, 0] / two[:, 1].clamp(min=1e-12)).numpy()


def memorisation(feature, images, ref: TrainingReference, threshold: float = COPY_RATIO) -> dict[str, Interval]:
    """{"copy_rate", "nn_ratio"}: (mean, lo, hi) over records and samples of images (R, S, 3, H, W) or (R, ...)."""
    f, r, s = _flat_features(feature, images)
    ratios = nearest_ratios(f, ref).reshape(r, s)
    return {"copy_rate": bootstrap_interval((ratios < threshold).astype(np.float64)),
            "nn_ratio": bootstrap_interval(ratios)}


def diversity_scores(features: torch.Tensor) -> tuple[np.ndarray, float]:
    """features (R, S, d), S >= 2 -> (each record's mean distance between its own samples (R,), the mean distance
    between samples of different records)."""
    r, s = features.shape[:2]
    if s < 2 or r < 2:
        raise ValueError(f"diversity needs at least 2 samples of each of at least 2 texts, got {r} texts x {s} samples")
    within = torch.cdist(features, features)  # (R, S, S)
    within = (within.sum((1, 2)) / (s * (s - 1))).numpy()  # the diagonal is 0: mean over ordered pairs s != s'
    flat = features.flatten(0, 1)
    d = torch.cdist(flat, flat)  # (R*S, R*S)
    same = torch.block_diag(*[torch.ones(s, s, dtype=torch.bool)] * r)
    between = d[~same].mean().item()
    return within, between


def diversity(feature, images) -> Interval:
    """Within-text over between-text mean feature distance of images (R, S, 3, H, W): (mean, lo, hi), the interval
    over records (each record's within-text distance over the one between-text mean)."""
    f, r, s = _flat_features(feature, images)
    within, between = diversity_scores(f.view(r, s, -1))
    return bootstrap_interval(within / between)
