"""Type accuracy: a text-faithfulness metric that needs nothing downloaded.

    from model.eval import type_classifier as ff
    clf = ff.load_or_train(data, device)             # once per dataset version: cached in data.info["cache_dir"]
    labels, _ = ff.type_labels(data.test, data.info["primary_types"], clf.classes)
    metrics[ff.TEST_TYPE_ACC] = ff.type_accuracy(clf, generated, labels)   # generated: (N_test, 3, S, S) in [-1, 1]
    baselines.update(ff.type_baselines(clf, data))   # baseline/type_acc_ceiling, baseline/type_acc_chance

With enriched text (the default) every description states the Pokémon's primary type ("It is of fire
type ..."), and on the real Pokédex the type shows mostly in the colours. So a classifier of the
primary type, trained only on the training split's real images, asks of each generated test image:
does it look like the type its text names? `test/type_acc` is the share of test records whose
generated image is classified as the record's primary type. Read it beside two baselines on the same test records:
- ceiling (`baseline/type_acc_ceiling`): the same classifier on the real test images;
- chance (`baseline/type_acc_chance`): the best a text-blind constant output can score, i.e. the
  share of the test records of the most frequent type (among the classifier's types). A constant
  image, whatever it is, is one prediction for every record, so it scores at most this.

The classifier is deliberately small and has nothing to download: a soft RGB colour histogram of
each image's non-white pixels (bins³ values, plus the non-white fraction), standardized, then
multinomial logistic regression with an L2 penalty, fitted with L-BFGS in float64 from zero weights
on one thread. That problem is strictly convex, so the fit is its unique minimizer: no seed, no
shuffling, the same weights on every run. Histograms ignore rotation and position, and the soft
(Gaussian) binning treats blurry generated colours like crisp real ones. Images are first
area-downsampled to `resolution` (32 px), so 64 px costs little more.

Measured on the real Pokédex (18 types, 718/90/90 records; `bench/bench_type_classifier.py`, one
thread): ceiling 0.344 on the test records, chance 0.167; the mean and the median training image
0.122, a white image 0.044, uniform noise 0.04-0.13. The type oracle (each record's primary type's median training
image; L1-optimal for a model that knows the type and nothing else) scores 0.122 at 32 px (2 rotations)
and 0.200 at 64 px (8): medians of many poses are pale, so even the type's own median image is rarely
recognised. An L1-trained model must know more than the type to score well here. Fit: 2.8 s CPU at 32 px with 2 rotations (1436
images), 5.4 s at 64 px with 8 (5744). Nothing else tried did better: RGB/hue histograms, other bins,
margins or penalties all cross-validate at 0.29-0.32 on the training records; a small CNN on the same
32 px images scored about 0.3-0.36 on val/test and took 10-20x longer. A 90-record test set moves
0.011 per record, so read differences below ~0.05 as noise.

API:
    TypeClassifier(classes, cfg)          nn.Module: forward(images) -> (N, C) logits; .predict(images) -> (N,)
    ClassifierConfig(resolution, bins, white_margin, l2, max_iter)
    load_or_train(data, device="cpu", primary_types=None, cfg=ClassifierConfig()) -> TypeClassifier
    train_classifier(data, primary_types=None, cfg=...) -> TypeClassifier   (no cache)
    fit(images, labels, classes, cfg=...) -> TypeClassifier
    type_labels(split, primary_types, classes=None) -> (labels (N,) int64, classes)
    type_accuracy(clf, images, labels) -> float
    type_baselines(clf, data, primary_types=None) -> {BASELINE_CEILING: float, BASELINE_CHANCE: float}
    TEST_TYPE_ACC = "test/type_acc"; BASELINE_CEILING, BASELINE_CHANCE; UNKNOWN = -1
`images` anywhere: (N, 3, S, S), numpy or torch, uint8 [0, 255] or float [-1, 1], any S, any device.
`primary_types` is {str(record id): type name}; None reads data.info["primary_types"].

Cache: with `data.info["cache_dir"]` the fitted classifier is saved there (model/files.py `load_or_fit`),
keyed by the dataset fingerprint, the training ids' primary types, ClassifierConfig and CLASSIFIER_VERSION,
so the search's trials load it instead of refitting. Without a cache_dir (data built in memory) it is fitted
in memory each call (seconds).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.config import TEST_TYPE_ACC  # noqa: F401 (re-exported: the metric this module computes)
from model.files import dataset_key, load_or_fit

BASELINE_CEILING = "baseline/type_acc_ceiling"
BASELINE_CHANCE = "baseline/type_acc_chance"
# The type oracle: each test record gets the per-pixel median training image of its primary type, the L1
# optimum of a model that learned the type from the text and nothing else. Its L1 is the bar for "learned more
# than the type"; its type accuracy is what the L1-optimal use of the type scores on this metric.
BASELINE_ORACLE_L1 = "baseline/test_l1_type_median_image"
BASELINE_ORACLE = "baseline/type_acc_type_median_image"
CLASSIFIER_VERSION = 1  # bump whenever a code change changes what a fitted classifier predicts
UNKNOWN = -1  # the label of a record whose type the classifier never saw in training: always a miss


@dataclass(frozen=True)
class ClassifierConfig:
    resolution: int = 32  # images are area-downsampled to this before the histogram
    bins: int = 4  # per channel: a bins**3 RGB histogram
    white_margin: float = 0.15  # a pixel is fully foreground once its darkest channel is this far below white (1)
    l2: float = 1e-2  # Pokédex 5-fold CV on training records ties 1e-3 and 1e-2 (0.31-0.32); the larger fits faster
    max_iter: int = 500  # L-BFGS iterations; about 150 reach the tolerance on the Pokédex


# ---------------------------------------------------------------------------------------------
# Images and labels


def _unit(images) -> torch.Tensor:
    """(N, 3, S, S) images as float32 in [-1, 1], from uint8 [0, 255] or float [-1, 1], numpy or torch."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1
    return x.float()


def _split_images(split) -> torch.Tensor:
    return _unit(split.unit_images())  # every Split scales its own images (uint8 or float)


def primary_types_of(data, primary_types: dict | None = None) -> dict:
    """`primary_types` when given, else the prepared data's own ({str(record id): primary type}); KeyError naming
    the fix when it has none."""
    if primary_types is not None:
        return primary_types
    if "primary_types" not in data.info:
        raise KeyError("data.info has no 'primary_types' ({record id: primary type}): re-prepare the dataset with a "
                       "data_pipeline that records them, or pass primary_types= explicitly")
    return data.info["primary_types"]


def type_labels(split, primary_types: dict, classes: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """(labels (N,) int64, classes) for a split's rows: labels index `classes`, UNKNOWN where a type is not in them.

    primary_types maps str(record id) to the type name (data.info["primary_types"]). classes
    defaults to the sorted types of this split; pass clf.classes to label a test split.
    """
    missing = [int(i) for i in split.ids if str(int(i)) not in primary_types]
    if missing:
        raise KeyError(f"no primary type for {len(missing)} record(s) of the split (e.g. id {missing[0]}); "
                       f"primary_types must cover every record id (as a string key)")
    names = [primary_types[str(int(i))] for i in split.ids]
    if classes is None:
        classes = sorted(set(names))
    index = {c: k for k, c in enumerate(classes)}
    return torch.tensor([index.get(n, UNKNOWN) for n in names], dtype=torch.int64), list(classes)


# ---------------------------------------------------------------------------------------------
# The classifier


def colour_histogram(images: torch.Tensor, cfg: ClassifierConfig) -> torch.Tensor:
    """(N, 3, S, S) in [-1, 1] -> (N, bins**3 + 1): the soft RGB histogram of the non-white pixels, and their share.

    Each channel value is softly assigned to `bins` centres on [0, 1] (Gaussian, width one bin
    spacing, normalized), a pixel's 3-D bin weight is the product over channels, and each pixel
    counts by how far it is from white, so the white background is ignored and the histogram
    sums to 1 over the foreground (all zeros for a blank white image).
    """
    x = _unit(images)
    if x.shape[-1] > cfg.resolution:
        x = F.interpolate(x, size=(cfg.resolution, cfg.resolution), mode="area")
    x = (x.clamp(-1, 1) + 1) / 2  # (N, 3, R, R) in [0, 1]
    fg = ((1 - x.amin(1)) / cfg.white_margin).clamp(0, 1)  # (N, R, R): 0 = white background, 1 = foreground
    centres = torch.linspace(0, 1, cfg.bins, device=x.device)
    k = torch.exp(-0.5 * ((x[..., None] - centres) * (cfg.bins - 1)) ** 2)  # (N, 3, R, R, bins)
    k = k / k.sum(-1, keepdim=True)
    hist = torch.einsum("nhwa,nhwb,nhwc,nhw->nabc", k[:, 0], k[:, 1], k[:, 2], fg).flatten(1)  # (N, bins**3)
    mass = fg.sum((1, 2))  # (N,)
    return torch.cat([hist / mass.clamp(min=1e-6)[:, None], (mass / fg[0].numel())[:, None]], 1)


class TypeClassifier(nn.Module):
    """Primary type from an image: colour histogram -> standardize -> linear. forward returns (N, C) logits."""

    def __init__(self, classes: list[str], cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.classes = list(classes)
        self.cfg = cfg
        n_features = cfg.bins ** 3 + 1
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.linear = nn.Linear(n_features, len(classes))

    def features(self, images) -> torch.Tensor:
        return colour_histogram(_unit(images).to(self.feature_mean.device), self.cfg)

    def forward(self, images) -> torch.Tensor:
        z = (self.features(images) - self.feature_mean) / self.feature_std  # (N, F)
        return self.linear(z)  # (N, C)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> torch.Tensor:
        """(N,) class indices into self.classes, on the classifier's device."""
        images = torch.as_tensor(images)
        if len(images) == 0:
            return torch.zeros(0, dtype=torch.int64, device=self.feature_mean.device)
        return torch.cat([self(images[i:i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)])


def fit(images, labels: torch.Tensor, classes: list[str], cfg: ClassifierConfig = ClassifierConfig()) -> TypeClassifier:
    """Fit a TypeClassifier on (images, labels) on the CPU, one thread; deterministic (strictly convex, zero init)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums whatever the caller's setting; no thread spin on a busy box
    try:
        return _fit(torch.as_tensor(images), labels, classes, cfg)
    finally:
        torch.set_num_threads(threads)


def _fit(images: torch.Tensor, labels: torch.Tensor, classes: list[str], cfg: ClassifierConfig) -> TypeClassifier:
    clf = TypeClassifier(classes, cfg)
    with torch.no_grad():
        feats = torch.cat([clf.features(images[i:i + 256]) for i in range(0, len(images), 256)]).double()  # (N, F)
    mean, std = feats.mean(0), feats.std(0, unbiased=False) + 1e-3  # the floor keeps near-empty bins from exploding
    z = (feats - mean) / std
    w = torch.zeros(z.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=cfg.max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                            history_size=20, line_search_fn="strong_wolfe")
    y = labels.to(torch.int64)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w + b, y) + cfg.l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        clf.feature_mean.copy_(mean.float())
        clf.feature_std.copy_(std.float())
        clf.linear.weight.copy_(w.T.float())
        clf.linear.bias.copy_(b.float())
    return clf.eval().requires_grad_(False)


def train_classifier(data, primary_types: dict | None = None,
                     cfg: ClassifierConfig = ClassifierConfig()) -> TypeClassifier:
    """Fit on the training split's real images (its rotated copies included); no cache."""
    labels, classes = type_labels(data.train, primary_types_of(data, primary_types))
    return fit(_split_images(data.train), labels, classes, cfg)


# ---------------------------------------------------------------------------------------------
# Cache


def cache_key(data, primary_types: dict | None = None, cfg: ClassifierConfig = ClassifierConfig()) -> dict:
    """What the fitted classifier depends on: the dataset version, its training labels, the settings, the code."""
    types = primary_types_of(data, primary_types)
    train_types = sorted({(int(i), types.get(str(int(i)))) for i in data.train.ids})
    return dataset_key(data, "type_classifier", CLASSIFIER_VERSION, cfg, train_types=train_types)


def _state(clf: TypeClassifier) -> dict:
    return {"version": CLASSIFIER_VERSION, "classes": clf.classes, "config": dataclasses.asdict(clf.cfg),
            "state_dict": clf.state_dict()}


def _from_state(state: dict) -> TypeClassifier:
    clf = TypeClassifier(state["classes"], ClassifierConfig(**state["config"]))
    clf.load_state_dict(state["state_dict"])
    return clf.eval().requires_grad_(False)


def load_or_train(data, device="cpu", primary_types: dict | None = None,
                  cfg: ClassifierConfig = ClassifierConfig()) -> TypeClassifier:
    """The type classifier for this prepared dataset, on `device`: loaded from its cache, else fitted (and cached)."""
    return load_or_fit(data.info.get("cache_dir"), "type_classifier", cache_key(data, primary_types, cfg),
                       lambda: train_classifier(data, primary_types, cfg), _state, _from_state).to(device)


# ---------------------------------------------------------------------------------------------
# The metric and its baselines


def type_accuracy(clf: TypeClassifier, images, labels: torch.Tensor) -> float:
    """Share of images classified as their label (UNKNOWN labels count as misses)."""
    labels = torch.as_tensor(labels)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        return float("nan")
    return (clf.predict(images).cpu() == labels.cpu()).float().mean().item()


def chance_accuracy(labels: torch.Tensor, n_classes: int) -> float:
    """The best score of one constant prediction: the share of the most frequent known label."""
    labels = torch.as_tensor(labels)
    known = labels[labels != UNKNOWN]
    if len(labels) == 0:
        return float("nan")
    return (np.bincount(known.numpy(), minlength=n_classes).max() / len(labels)).item() if len(known) else 0.0


def type_baselines(clf: TypeClassifier, data, primary_types: dict | None = None) -> dict:
    """On the test split's records (JSON-ready): the ceiling (the classifier on the real test images), chance,
    and the type oracle's L1 and type accuracy (per-type median training images; the global median for a
    type training never saw)."""
    types = primary_types_of(data, primary_types)
    labels, _ = type_labels(data.test, types, clf.classes)
    test, train = _split_images(data.test), _split_images(data.train)
    train_labels, _ = type_labels(data.train, types, clf.classes)
    medians = {c: train[train_labels == c].median(0).values for c in train_labels.unique().tolist()}
    fallback = train.median(0).values
    oracle = torch.stack([medians.get(c, fallback) for c in labels.tolist()]) if len(labels) else test
    return {BASELINE_CEILING: type_accuracy(clf, test, labels), BASELINE_CHANCE: chance_accuracy(labels, len(clf.classes)),
            BASELINE_ORACLE_L1: (oracle - test).abs().mean().item() if len(labels) else float("nan"),
            BASELINE_ORACLE: type_accuracy(clf, oracle, labels)}
