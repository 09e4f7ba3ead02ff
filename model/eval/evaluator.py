"""Evaluation in one place: built once per trial, called by the loop, the same for every model family.

    from model.eval.evaluator import Evaluator, split_images
    images = split_images(data, device)                 # {"train", "val", "test"}: (N, 3, S, S) in [-1, 1]
    evaluator = Evaluator(data, images, scorer, clip_status)   # CLIP's scorer or None (model/eval/clip.py)
    metrics = evaluator.final(generate, alive)          # one dict per member, after training
    evaluator.baselines()                               # the text-blind reference points, once per dataset

`generate(split, sample)` returns every member's images for the split's rows, (K, N, 3, S, S) in [-1, 1];
`sample` numbers independent draws of a sampler (a regressor returns the same images for every sample).
From them, per member:
- on test: L1 to the real images (`test/l1`), the CLIP score where weights load (`test/clip_score`, else None
  with the reason in `test/clip_status`), retrieval top-1/top-5 (is the record's real image the nearest to
  its generated one?), type accuracy (model/eval/type_classifier.py), and two guards against wrong winners:
  - memorisation (`test/nn_train_l1`, `test/memorisation_ratio`): each generated image's mean absolute
    difference to its nearest training image, and the mean of that over the same figure for the real test
    images (`baseline/nn_train_l1_real`). A model that copies training images has a ratio near 0; a model
    of unseen images like the real ones sits near 1; a blurry average sits above.
  - diversity (`test/diversity`): the mean absolute difference between sample 0 and sample 1 of the same
    text; 0 for a model with one image per text, and for a collapsed sampler.
- on validation (what a searcher, or a choice of guidance scale, may select on): the CLIP score, retrieval
  top-1 and type accuracy.
"""

from __future__ import annotations

import torch

from data_pipeline.dataset import PreparedData, Split
from model.config import (TEST_CLIP, TEST_DIVERSITY, TEST_L1, TEST_MEMORISATION, TEST_NN_TRAIN, TEST_TOP1, TEST_TOP5,
                          TEST_TYPE_ACC, VAL_CLIP, VAL_TOP1, VAL_TYPE_ACC)
from model.eval import clip
from model.eval import type_classifier

BASELINE_NN_REAL = "baseline/nn_train_l1_real"
BASELINE_DIVERSITY_REAL = "baseline/diversity_real_pairs"
MEMORISING = 1.0  # a memorisation ratio below this: closer to the training images than real unseen images are


def images(split: Split, device) -> torch.Tensor:
    """A split's images on the device as float32 in [-1, 1]; uint8 [0, 255] storage is scaled there."""
    import numpy as np

    x = torch.tensor(np.asarray(split.images), device=device)  # a copy: Ray's object store is read-only
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)  # (N, 3, S, S), the same x / 127.5 - 1 as the pipeline
    return x.float().clone()


def member_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (K, N, 3, S, S), target (N, 3, S, S) or (K, N, ...) -> (K,) each member's mean L1."""
    return (pred - target).abs().flatten(1).mean(1)


def nearest_l1(queries: torch.Tensor, references: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(N,) each query image's mean absolute difference to its nearest reference image."""
    q, r = queries.flatten(1).float(), references.flatten(1).float().to(queries.device)
    if len(q) == 0:
        return q.new_zeros(0)
    return torch.cat([torch.cdist(q[i:i + batch], r, p=1).min(1).values for i in range(0, len(q), batch)]) / q.shape[1]


def split_images(data: PreparedData, device) -> dict[str, torch.Tensor]:
    """Every split's images on the device, (N, 3, S, S) float32 in [-1, 1]: what a trial trains towards and is
    measured against."""
    return {name: images(data.split(name), torch.device(device)) for name in ("train", "val", "test")}


class Evaluator:
    """Everything the metrics need, once per trial: the dataset, its split images (`split_images`) and CLIP's
    scorer where weights loaded (else None, with the reason in `clip_status`)."""

    def __init__(self, data: PreparedData, images: dict[str, torch.Tensor], scorer=None, clip_status: str = "off"):
        self.data, self.images, self.scorer, self.clip_status = data, images, scorer, clip_status
        self.device = images["test"].device
        self.nn_real = nearest_l1(self.images["test"], self.images["train"]).mean().item()
        self.type_clf, self.type_labels = None, {}

    def load_type_classifier(self) -> None:
        """Type accuracy's classifier (cached beside the prepared data), loaded once. It needs each record's
        primary type (the data pipeline records it); data built in memory without it (tests) reports none.
        The loop calls this right before its first epoch: building the classifier draws from the global RNG
        (an nn.Linear's init), which the dropout masks draw from, and the recipes' numbers were measured so."""
        if self.type_clf is None and "primary_types" in self.data.info:
            self.type_clf = type_classifier.load_or_train(self.data, self.device)
            self.type_labels = {name: type_classifier.type_labels(self.data.split(name), self.data.info["primary_types"],
                                                               self.type_clf.classes)[0] for name in ("val", "test")}

    def final(self, generate, alive: list[bool]) -> list[dict]:
        """Each live member's metrics from its generated val and test images (see the module docstring); {} for a
        member that stopped."""
        self.load_type_classifier()
        k = len(alive)
        out = [{} for _ in range(k)]
        for name in ("val", "test"):
            texts, real = self.data.split(name).texts, self.images[name]
            generated = generate(name, 0)  # (K, N, 3, S, S)
            l1 = member_l1(generated, real).tolist()
            if name == "test":
                second = generate(name, 1)
                diversity = member_l1(generated, second).tolist()
            for m in range(k):
                if not alive[m]:
                    continue
                retrieval = clip.retrieval_accuracy(generated[m], real)
                score = self.scorer.score(generated[m], texts) if self.scorer is not None else None
                type_acc = (type_classifier.type_accuracy(self.type_clf, generated[m], self.type_labels[name])
                            if self.type_clf is not None else None)
                if name == "val":
                    out[m].update({VAL_CLIP: score, VAL_TOP1: retrieval["top1"], VAL_TYPE_ACC: type_acc})
                    continue
                nn = nearest_l1(generated[m], self.images["train"]).mean().item()
                out[m].update({
                    TEST_L1: l1[m], TEST_CLIP: score, "test/clip_status": self.clip_status,
                    TEST_TOP1: retrieval["top1"], TEST_TOP5: retrieval["top5"],
                    "test/retrieval_chance": retrieval["chance_top1"],
                    TEST_TYPE_ACC: type_acc,
                    TEST_NN_TRAIN: nn, TEST_MEMORISATION: nn / self.nn_real if self.nn_real > 0 else None,
                    TEST_DIVERSITY: diversity[m]})
        return out

    def baselines(self) -> dict:
        """Reference points beside every table (JSON-ready): CLIP's and L1's (model/eval/clip.py), type accuracy's
        (model/eval/type_classifier.py), the real test images' nearest-training-image L1, and the mean L1 between real
        test images of different records (how different two images of this data are)."""
        self.load_type_classifier()
        out = clip.baselines(self.scorer, self.data, self.clip_status)
        if self.type_clf is not None:
            out.update(type_classifier.type_baselines(self.type_clf, self.data))
        test = self.images["test"]
        out[BASELINE_NN_REAL] = self.nn_real
        out[BASELINE_DIVERSITY_REAL] = (test - test.roll(1, 0)).abs().mean().item() if len(test) > 1 else None
        return out
