"""Evaluation in one place: built once per trial, called by the loop, the same for every model family.

    from model.eval.evaluator import EvalNets, Evaluator, split_images
    nets = EvalNets.load_or_fit(data)                   # the evaluator networks, fitted once per dataset (cached)
    images = split_images(data, device)                 # {"train", "val", "test"}: (N, 3, S, S) in [-1, 1]
    evaluator = Evaluator(data, images, scorer, clip_status, nets)   # CLIP's scorer or None (model/eval/clip.py)
    metrics = evaluator.final(family, alive, samples=4) # one dict per member, after training
    evaluator.baselines()                               # the reference points beside the table, once per dataset

A family's images for a split are (K, R, S, 3, H, W): K members, R records, S samples per text (`samples` draws
of a sampler, each from its own fixed seed; one for a family with one image per text). Every metric below is a
mean over records and samples with a 95% interval (model/eval/intervals.py: a bootstrap over records, then
samples; the noise it covers is the evaluation's, which records and which starting noise, not the training
seed's: `--seeds` covers that). A metric M is reported as M, M_lo and M_hi, and its per-record scores as the
JSON text `scores/M` ((R, S) lists), so that two rows of one search can be compared on the same texts and sample
seeds (paired: search/report.py).

On val and test:
- `attr_<a>`, `attr_all` and `attr_mean` (synthetic data: model/eval/attributes.py): does the image show each
  attribute its text states (colour, shape, size, pattern, pattern colour, feature), every one of them, and what
  share of them?
- `indomain_align`, `r_precision_top1/5` (model/eval/alignment.py, an in-domain text-image model trained on the
  training split, not OpenAI's CLIP): the image's cosine with its own text, and whether its own text is among the
  k nearest of the split's texts;
- `type_acc` (model/eval/type_accuracy.py: a small CNN, which sees shape): is it classified as its primary type?
- `l1` (pixels, the thesis's) and `clip_score` where real CLIP weights load.
On test only:
- distribution fidelity (model/eval/fidelity.py): unbiased KID against the real test images on a fixed random
  CNN's features (`kid_random`) and the in-domain image tower's (`kid_indomain`), precision and recall (k = 3);
- memorisation (model/eval/features.py): `copy_rate`, the share of samples much nearer one training record than
  any other, and `nn_ratio`; also of images generated from training texts (`train/copy_rate`), where a
  memoriser copies most;
- diversity: within-text over between-text feature distance (a sampler only: 1 = the text does not matter,
  0 = one picture per text).
An evaluator network that a dataset cannot have (no attributes: real data; too few records, no primary types:
data built in memory) leaves its metrics out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from data_pipeline.dataset import PreparedData, Split
from model.config import TEST_CLIP, TEST_L1, VAL_CLIP
from model.eval import alignment, attributes, features, fidelity, type_accuracy
from model.eval import clip as clip_score
from model.eval.intervals import Interval, bootstrap_interval

MIN_RECORDS = 16  # fewer training records than this (data built in memory by tests): no evaluator networks
TRAIN_TEXTS = 32  # training records whose texts are also generated from, for memorisation
TRAIN_COPY_RATE = "train/copy_rate"
# The metrics whose per-record scores are kept (scores/<metric>) for paired comparisons of two rows.
PAIRED = ("attr_all", "attr_mean", "indomain_align", "r_precision_top1", "type_acc")


def images(split: Split, device) -> torch.Tensor:
    """A split's images on the device as float32 in [-1, 1]; uint8 [0, 255] storage is scaled there."""
    x = torch.tensor(np.asarray(split.images), device=device)  # a copy: Ray's object store is read-only
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)  # (N, 3, S, S), the same x / 127.5 - 1 as the pipeline
    return x.float().clone()


def split_images(data: PreparedData, device) -> dict[str, torch.Tensor]:
    """Every split's images on the device, (N, 3, S, S) float32 in [-1, 1]: what a trial trains towards and is
    measured against."""
    return {name: images(data.split(name), torch.device(device)) for name in ("train", "val", "test")}


def member_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (K, N, 3, S, S), target (N, 3, S, S) or (K, N, ...) -> (K,) each member's mean L1."""
    return (pred - target).abs().flatten(1).mean(1)


def upright(split: Split) -> np.ndarray:
    """Each record's first row (its unrotated image: a record's rotated copies follow it)."""
    return np.sort(np.unique(np.asarray(split.ids), return_index=True)[1])


@dataclass
class EvalNets:
    """The evaluator networks of a prepared dataset, each fitted once per dataset and cached beside it
    (model/files.py): the attribute reader (synthetic data), the in-domain text-image model and the type classifier
    (datasets of MIN_RECORDS training records or more), and a fixed random CNN (nothing fitted)."""
    reader: object = None
    clip: object = None
    types: object = None
    random: object = None

    @classmethod
    def load_or_fit(cls, data: PreparedData, scale: float = 1.0) -> "EvalNets":
        """Loaded from the dataset's cache, else fitted there; `scale` (TrainConfig.eval_fit) shortens every fit
        (the smoke preset's 0.1: the code runs, the numbers mean little). The global random stream is left as it
        was: a trial's dropout masks do not depend on what evaluation loads."""
        with torch.random.fork_rng(devices=[]):
            enough = len(np.unique(data.train.ids)) >= MIN_RECORDS
            reader = (attributes.load_or_fit(data, scaled(attributes.ReaderConfig(), scale))
                      if data.info.get("attributes") else None)
            clip = alignment.load_or_fit(data, scaled(alignment.AlignConfig(), scale)) if enough else None
            types = (type_accuracy.load_or_fit(data, clip=clip, cfg=scaled(type_accuracy.TypeCNNConfig(), scale))
                     if enough and "primary_types" in data.info else None)
            return cls(reader, clip, types, fidelity.RandomFeatures())


def scaled(cfg, scale: float):
    """An evaluator config with its fit's length (steps or epochs) times `scale`."""
    if scale == 1:
        return cfg
    field = "steps" if hasattr(cfg, "steps") else "epochs"
    value = getattr(cfg, field) * scale
    return replace(cfg, **{field: max(1, int(value)) if field == "steps" else max(1.0, value)})


def flat(metrics: dict[str, Interval]) -> dict[str, float]:
    """{M: mean, M_lo: lo, M_hi: hi} for each metric's interval (JSON-ready)."""
    return {k: v for name, i in metrics.items() for k, v in ((name, i.mean), (f"{name}_lo", i.lo), (f"{name}_hi", i.hi))}


def scores_text(scores: np.ndarray) -> str:
    """(R, S) per-record scores as compact JSON (rounded: they are 0/1 or cosines)."""
    return json.dumps(np.round(np.asarray(scores, dtype=float), 4).tolist(), separators=(",", ":"))


class Evaluator:
    """Everything the metrics need, once per trial: the dataset, its split images (`split_images`), CLIP's scorer
    where weights loaded (else None, with the reason in `clip_status`) and the evaluator networks."""

    def __init__(self, data: PreparedData, images: dict[str, torch.Tensor], scorer=None, clip_status: str = "off",
                 nets: EvalNets | None = None):
        self.data, self.images, self.scorer, self.clip_status = data, images, scorer, clip_status
        self.nets = nets or EvalNets(random=fidelity.RandomFeatures())
        self.device = images["test"].device
        primary = data.info.get("primary_types")
        self.type_labels = ({s: type_accuracy.labels(self.nets.types, data.split(s), primary) for s in ("val", "test")}
                            if self.nets.types is not None else {})
        self.attrs = ({s: attributes.split_attributes(data, s) for s in ("val", "test")}
                      if self.nets.reader is not None else {})
        self.feature = fidelity.ClipFeatures(self.nets.clip) if self.nets.clip is not None else self.nets.random
        self.train_ref = features.TrainingReference.of(self.feature, data.train)

    def final(self, family, alive: list[bool], samples: int = 4) -> list[dict]:
        """Each live member's metrics from its generated val and test images ({} for a member that stopped)."""
        draws = 1 if family.draws == 1 else samples
        out = [{} for _ in alive]
        for split in ("val", "test"):
            generated = torch.stack([family.generate(split, s) for s in range(draws)], dim=2)  # (K, R, S, 3, H, W)
            for m in (m for m, a in enumerate(alive) if a):
                out[m].update(self.split_metrics(split, generated[m].float().cpu()))
        rows = torch.as_tensor(upright(self.data.train)[:TRAIN_TEXTS], device=self.device)
        from_training = family.images(family.texts.rows["train"][rows], seed=0)  # (K, R', 3, H, W)
        for m in (m for m, a in enumerate(alive) if a):
            copies = features.memorisation(self.feature, from_training[m].float().cpu(), self.train_ref)
            out[m].update(flat({TRAIN_COPY_RATE: copies["copy_rate"]}))
        return out

    def split_metrics(self, split: str, generated: torch.Tensor) -> dict:
        """One member's metrics on a split from its images (R, S, 3, H, W) (see the module docstring)."""
        real, s = self.images[split].cpu(), generated.shape[1]
        scores = {f"{split}/l1": (generated - real[:, None]).abs().flatten(2).mean(2).double().numpy()}
        if self.nets.reader is not None:
            for a, v in attributes.attribute_scores(self.nets.reader, generated, self.attrs[split]).items():
                scores[f"{split}/attr_{a}"] = v
        if self.nets.clip is not None:
            texts = list(self.data.split(split).texts)
            hits = alignment.r_precision_hits(self.nets.clip, generated, texts)
            scores.update({f"{split}/indomain_align": alignment.alignment_scores(self.nets.clip, generated, texts),
                           f"{split}/r_precision_top1": hits[1].astype(float),
                           f"{split}/r_precision_top5": hits[5].astype(float)})
        if self.nets.types is not None:
            scores[f"{split}/type_acc"] = type_accuracy.hits(self.nets.types, generated, self.type_labels[split]
                                                             ).astype(float)
        out = flat({name: bootstrap_interval(v) for name, v in scores.items()})
        out.update({f"scores/{name}": scores_text(v) for name, v in scores.items() if name.split("/")[1] in PAIRED})
        score = self.scorer.score(generated[:, 0], self.data.split(split).texts) if self.scorer is not None else None
        out[TEST_CLIP if split == "test" else VAL_CLIP] = score
        if split == "test":
            out["test/clip_status"] = self.clip_status
            out.update(self.test_only(real, generated, s))
        return out

    def test_only(self, real: torch.Tensor, generated: torch.Tensor, s: int) -> dict:
        """Distribution fidelity, memorisation and (a sampler's) diversity of the test images."""
        feature_sets = {"random": self.nets.random, **({"indomain": self.feature} if self.nets.clip else {})}
        out = fidelity.metrics(real, generated, feature_sets, "test")
        copies = features.memorisation(self.feature, generated, self.train_ref)
        out.update({features.TEST_COPY_RATE: copies["copy_rate"], features.TEST_NN_RATIO: copies["nn_ratio"]})
        if s > 1:
            out[features.TEST_DIVERSITY] = features.diversity(self.feature, generated)
        return flat(out)

    def baselines(self) -> dict:
        """Reference points beside every table (JSON-ready): CLIP's and L1's (model/eval/clip.py), the attribute
        reader's ceiling and floors, the in-domain model's real and shuffled-text scores and R-precision's chance,
        the type classifier's ceiling (the real test images) and chance, and the real test images' own
        memorisation (they are no copies) and KID against the real validation images (two real sets)."""
        out = clip_score.baselines(self.scorer, self.data, self.clip_status)
        test = self.data.test
        if self.nets.reader is not None:
            out.update(attributes.baselines(self.nets.reader, self.data, "test"))
        if self.nets.clip is not None:
            out.update(flat_or_value(alignment.baselines(self.nets.clip, test)))
        if self.nets.types is not None:
            labels = self.type_labels["test"]
            out["baseline/type_acc_ceiling"] = type_accuracy.type_accuracy(self.nets.types, test.images, labels).mean
            known = labels[labels >= 0]
            out["baseline/type_acc_chance"] = float(np.bincount(known).max() / len(labels)) if len(known) else 0.0
        real = self.images["test"].cpu()
        copies = features.memorisation(self.feature, real, self.train_ref)
        out["baseline/copy_rate_real"] = copies["copy_rate"].mean
        out["baseline/kid_random_real_val"] = fidelity.kid(self.nets.random, real, self.images["val"].cpu()[:len(real)]
                                                           ).mean if len(self.images["val"]) >= len(real) else None
        return out


def flat_or_value(values: dict) -> dict:
    """Intervals flattened (`flat`), plain numbers as they are."""
    return {**flat({k: v for k, v in values.items() if isinstance(v, Interval)}),
            **{k: v for k, v in values.items() if not isinstance(v, Interval)}}
