"""The cheater panel: do the image metrics rank the real images first, and expose every hand-made cheater?

    python bench/bench_metrics.py                          # the embedded synthetic set, 32 px, 1 rotation (laptop data)
    python bench/bench_metrics.py --data ../shared/datasets/pokedex --augment-rotations 2   # real data (no attributes)
    python bench/bench_metrics.py --checkpoint results/<experiment>/best_checkpoint      # adds a trained model's row
    python bench/bench_metrics.py --out /tmp/fresh         # a fresh cache: every evaluator network fitted and timed

A metric a cheater passes is no evidence. So each metric is run on hand-made "generators" of the test split's
images, each a function of the split (R texts) -> (R, K, 3, S, S) images in [-1, 1], K samples per text:
  1. real         the real test images (must score best)
  2. other        a real image of another record of the same primary type (another test record's where the
                  type has one, else a val, else a training record's): K of them
  3. copier       the training image of the same type nearest (pixel L1) to the real test image
  4. disc         a flat disc in the type's mean colour (the mean over the type's training images' non-white pixels)
  5. median       the per-pixel median training image (text-blind)
  6. blob         a type-coloured ellipse at a random place and size, with Gaussian pixel noise: K of them
  7. noise        uniform noise: K of them
  8. checkpoint   (`--checkpoint PATH`, repeatable) a trained model's K samples (a regressor: one)
  9. wrong_<a>    synthetic only: fresh renders of each test text's stated attributes with attribute <a> changed
                  (another colour, shape, size, pattern, pattern colour or feature; pattern and its colour only
                  where the text states a pattern, about 2/3 of the records): K of them
  controls (not cheaters; what a metric that flags them gets wrong):
     render   fresh renders of the test texts' own attributes: a perfect generator that never saw the test images
     blurred  the real test images, Gaussian-blurred (sigma 1 px at 32 px): a soft but faithful generator
Generators 2-7 and 9 are cheaters. The metrics are a trial's final evaluation's (model/eval/evaluator.py), with
its evaluator networks (`EvalNets`: the attribute reader, the in-domain text-image model, the type CNN, a fixed
random CNN), each a `Metric` entry of METRICS: its per-record scores, which direction is better, the threshold that
exposes a row, what it catches. A row is EXPOSED on a metric when it is worse than the real images' row by at least
the metric's margin (KID: when it is at least the margin above 0, see `Metric.absolute`). The thresholds were
chosen from the two measured panels below: each sits between the controls (which no threshold may flag) and the
cheaters it catches.

| metric               | better | exposes a row at | catches (measured: synthetic S, the Pokédex P)                   |
|----------------------|--------|------------------|------------------------------------------------------------------|
| attr_all             | higher | <= real - 0.30   | any stated attribute wrong: every cheater on S (0.00-0.35; 0.97) |
| attr_<a> (each of 6) | higher | <= real - 0.30   | that attribute wrong: row wrong_<a> (0.00-0.35), others >= 0.96  |
| indomain_align       | higher | <= real - 0.05   | an image unlike its own text: other, disc, median, blob, noise   |
|                      |        |                  | on P (0.06-0.12 below), and on S the copier and most wrong_<a>;  |
|                      |        |                  | the controls <= 0.02 below on S and P                            |
| r_precision_top1     | higher | <= real - 0.25   | another text fits better: other, disc, blob, median, noise,      |
|                      |        |                  | wrong_colour, wrong_feature on S; nothing on P, where the real   |
|                      |        |                  | images score 0.04 (chance 0.01)                                  |
| type_acc             | higher | <= real - 0.15   | the wrong type (a CNN): median, noise; wrong_colour on S         |
| kid_random           | lower  | >= 0.010         | unlike the real images' feature statistics: median, noise (S, P) |
|                      |        |                  | disc and copier on P; blurred (sigma 1 px) stays below (0.001 S, |
|                      |        |                  | 0.004 P)                                                         |
| kid_indomain         | lower  | >= 0.20          | the same in the in-domain features: disc, median, blob, noise    |
| precision_random     | higher | <= real - 0.30   | unrealistic images: noise, disc on P                             |
| recall_random        | higher | <= real - 0.30   | real images left uncovered: disc, median, blob, noise            |
| copy_rate            | lower  | >= real + 0.30   | copies of training images: copier (1.00; any other row <= 0.04)  |
| diversity            | higher | never (shown)    | no real row to read it against (one image per text)              |
| type_acc_histogram   |        | not counted      | the metric before issue 24, for comparison                       |
| pixel_top1           |        | not counted      | the metric before issue 24, for comparison                       |

Measured (results/BENCHMARKS.md, "Metrics that a cheater cannot pass"; 2-core AMD EPYC shared with other jobs,
load 5-7): on the synthetic set (30 test records) every cheater is exposed, the real images rank first on
attr_all, and the controls are flagged by nothing; on the real Pokédex (90 test records) every cheater is exposed
and the real images rank first on indomain_align, but `other` (a real image of another record of the same type)
only by indomain_align, 0.060 [0.017, 0.099] below the real images (paired by text, p = 0.004): the in-domain
model tells a Pokémon from another of its type only weakly at 32 px (R-precision top-1 0.04 on the real images).

tests/test_metrics_panel.py asserts on the synthetic set, with the reader and the random CNN (fitting the in-domain
model to a useful level takes minutes): the real images rank first on attr_all; each cheater is exposed on the
metrics its Generator entry names (`exposed_by`); each wrong_<a> on attr_<a>, with every other attribute within
0.10 of the real images'; the controls on none. Its entry-point test runs every metric, on networks fitted for a
moment.

Every cell is the mean with its 95% interval (model/eval/intervals.py: a bootstrap over records and samples; KID's
from half-samples, model/eval/fidelity.py): the evaluation's noise (which test records, which sample seeds), not
the training seed's. Below the table: every row against the real images on the headline metric (attr_all on the
synthetic set, indomain_align on real data), paired by text; and the minimum detectable difference (80% power,
two-sided 0.05) of each headline metric from the scores of each row that is no cheater, at 30 and 90 records
(the synthetic and the Pokédex test splits), of two independent rows and of two trained models paired by text.
`baseline` row: the text-blind floor (the best any constant image scores on the attribute metrics), chance for
type accuracy and retrieval. The evaluator networks' fits are timed (wall beside CPU and the load average, as the
machine is shared): loaded from the cache when fitted before; `--out` a fresh folder to time every fit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

from data_pipeline import synthetic  # noqa: E402
from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.prepare import prepare_dataset  # noqa: E402
from model.eval import alignment as al  # noqa: E402
from model.eval import attributes as at  # noqa: E402
from model.eval import features as fe  # noqa: E402
from model.eval import fidelity as fd  # noqa: E402
from model.eval import type_accuracy as ta  # noqa: E402
from model.eval import type_classifier as ff  # noqa: E402
from model.eval.evaluator import EvalNets  # noqa: E402
from model.eval.intervals import (LEVEL, Interval, bootstrap_interval, mdd_of_scores,  # noqa: E402
                                  minimum_detectable_difference, paired_comparison)

SAMPLES = 4  # per text, for the generators that draw several
NEAR_CEILING = 0.10  # a wrong_<a> row's other attributes stay within this of the real images'
ATTR_MARGIN = 0.30  # attribute accuracy: real images 0.97-1.00; cheaters 0.00-0.35; controls within 0.10


# ---------------------------------------------------------------------------------------------
# What every generator and metric reads


@dataclass
class Panel:
    data: object  # PreparedData
    split: str
    real: torch.Tensor  # (R, 3, S, S) in [-1, 1]
    types: list[str]  # each record's primary type
    attrs: list[dict] | None  # each record's stated attributes (synthetic only)
    train: torch.Tensor  # (T, 3, S, S): each training record's unrotated image
    train_types: list[str]
    nets: EvalNets  # the evaluator networks, as a trial's final evaluation has them (model/eval/evaluator.py)
    samples: int = SAMPLES
    seed: int = 0
    fitted: dict = field(default_factory=dict)

    def evaluator(self, name: str, make: Callable):
        """Something the metrics need, made once per panel (the histogram classifier, training features)."""
        if name not in self.fitted:
            self.fitted[name] = make()
        return self.fitted[name]

    def generator(self, *keys) -> torch.Generator:
        """A torch generator seeded by the panel's seed and `keys` (a row's name, a record): rows never share noise."""
        digest = hashlib.sha256(repr((self.seed,) + keys).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))

    @property
    def texts(self) -> list[str]:
        return list(self.data.split(self.split).texts)

    @property
    def feature(self):
        """The evaluator's feature space for memorisation and diversity: the in-domain image tower where the model
        exists, else the random CNN (model/eval/evaluator.py's choice)."""
        return self.evaluator("feature", lambda: fd.ClipFeatures(self.nets.clip) if self.nets.clip is not None
                              else self.nets.random)


def make_panel(data, nets: EvalNets, split: str = "test", samples: int = SAMPLES, seed: int = 0) -> Panel:
    s = data.split(split)
    types = data.info["primary_types"]
    ids = np.asarray(data.train.ids)
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # a record's rotation-0 row comes first
    attrs = at.split_attributes(data, split) if nets.reader is not None else None
    return Panel(data, split, torch.as_tensor(s.unit_images()), [types[str(int(i))] for i in s.ids], attrs,
                 torch.as_tensor(data.train.unit_images()[first]), [types[str(int(ids[k]))] for k in first],
                 nets, samples, seed)


def fit_nets(data, scale: float = 1.0, log=print) -> tuple[EvalNets, list[dict]]:
    """The evaluator networks of a trial's final evaluation (EvalNets.load_or_fit's, each fit times `scale`), each
    timed: [{network, fitted or loaded, wall s, CPU s, load average before and after}]. A network is `fitted`
    when its cache file is new (or the data has no cache folder)."""
    from model.eval.evaluator import MIN_RECORDS, scaled

    cache = data.info.get("cache_dir")
    enough = len(np.unique(data.train.ids)) >= MIN_RECORDS
    costs, made = [], {}

    def timed(name: str, cache_name: str, make: Callable):
        before = set(Path(cache).glob(f"{cache_name}-*.pt")) if cache else set()
        load, start, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
        made[name] = make()
        fitted = not cache or bool(set(Path(cache).glob(f"{cache_name}-*.pt")) - before)
        costs.append({"network": name, "how": "fitted" if fitted else "loaded",
                      "wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                      "load_before": load, "load_after": os.getloadavg()[0]})
        log(f"{name}: {costs[-1]['how']} in {costs[-1]['wall_s']:.1f} s wall, {costs[-1]['cpu_s']:.1f} s CPU "
            f"(load average {load:.1f} before, {costs[-1]['load_after']:.1f} after)")

    with torch.random.fork_rng(devices=[]):
        if data.info.get("attributes"):
            timed("attribute reader", at.CACHE_NAME, lambda: at.load_or_fit(data, scaled(at.ReaderConfig(), scale)))
        if enough:
            timed("in-domain text-image model", al.CACHE_NAME,
                  lambda: al.load_or_fit(data, scaled(al.AlignConfig(), scale)))
            timed("type CNN", ta.CACHE_NAME, lambda: ta.load_or_fit(data, clip=made["in-domain text-image model"],
                                                                    cfg=scaled(ta.TypeCNNConfig(), scale)))
    nets = EvalNets(made.get("attribute reader"), made.get("in-domain text-image model"), made.get("type CNN"),
                    fd.RandomFeatures())
    return nets, costs


# ---------------------------------------------------------------------------------------------
# The generators: each (panel) -> (R, K, 3, S, S) in [-1, 1]


def real(p: Panel) -> torch.Tensor:
    return p.real[:, None]


def other_same_type(p: Panel) -> torch.Tensor:
    """K real images of other records of the record's type: the split's own, else val's, else training's."""
    pools = [(p.real, p.types)]
    if p.split != "val":
        pools.append((torch.as_tensor(p.data.val.unit_images()), [p.data.info["primary_types"][str(int(i))]
                                                                   for i in p.data.val.ids]))
    pools.append((p.train, p.train_types))
    out = []
    for r, t in enumerate(p.types):
        for images, types in pools:
            rows = [k for k, u in enumerate(types) if u == t and not (images is p.real and k == r)]
            if rows:
                break
        rows = rows or list(range(len(p.train)))  # a type nowhere else: any training image
        pick = torch.randint(len(rows), (p.samples,), generator=p.generator("other", r))
        out.append(images[[rows[int(k)] for k in pick]])
    return torch.stack(out)


def copier(p: Panel) -> torch.Tensor:
    """The training image of the record's type nearest to its real test image (pixel L1): an oracle copier."""
    out = []
    for r, t in enumerate(p.types):
        rows = [k for k, u in enumerate(p.train_types) if u == t] or list(range(len(p.train)))
        dist = (p.train[rows] - p.real[r]).abs().flatten(1).sum(1)
        out.append(p.train[rows[int(dist.argmin())]])
    return torch.stack(out)[:, None]


def type_colours(p: Panel) -> dict[str, torch.Tensor]:
    """{type: (3,) mean colour of its training images' non-white pixels} (model/eval/type_classifier.py's white
    margin)."""
    fg = (1 - p.train.amin(1)) / 2 > ff.ClassifierConfig().white_margin  # (T, S, S)
    out = {}
    for t in sorted(set(p.train_types)):
        rows = [k for k, u in enumerate(p.train_types) if u == t]
        out[t] = p.train[rows].permute(1, 0, 2, 3)[:, fg[rows]].mean(1)
    out[None] = p.train.permute(1, 0, 2, 3)[:, fg].mean(1)  # a type training never saw
    return out


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1  # (S, S) bool


def disc(p: Panel) -> torch.Tensor:
    """A flat disc in the type's mean colour, centred, a third of the image wide, on white."""
    colours, size = type_colours(p), p.real.shape[-1]
    mask = _ellipse(size, size / 2, size / 2, size / 3, size / 3)
    out = torch.ones_like(p.real)
    for r, t in enumerate(p.types):
        out[r][:, mask] = colours.get(t, colours[None])[:, None]
    return out[:, None]


def median(p: Panel) -> torch.Tensor:
    return at.median_train_image(p.data).expand(len(p.real), 1, *p.real.shape[1:])


def blob(p: Panel) -> torch.Tensor:
    """K type-coloured ellipses at a random place and size, with Gaussian pixel noise (sd 0.3) everywhere."""
    colours, size = type_colours(p), p.real.shape[-1]
    out = torch.ones(len(p.real), p.samples, *p.real.shape[1:])
    for r, t in enumerate(p.types):
        g = p.generator("blob", r)
        for k in range(p.samples):
            cy, cx, ry, rx = (torch.rand(4, generator=g) * torch.tensor([0.25, 0.25, 0.2, 0.2])
                              + torch.tensor([0.375, 0.375, 0.2, 0.2])) * size
            out[r, k][:, _ellipse(size, cy, cx, ry, rx)] = colours.get(t, colours[None])[:, None]
            out[r, k] += 0.3 * torch.randn(out[r, k].shape, generator=g)
    return out.clamp(-1, 1)


def noise(p: Panel) -> torch.Tensor:
    return torch.rand(len(p.real), p.samples, *p.real.shape[1:], generator=p.generator("noise")) * 2 - 1


def blurred(p: Panel) -> torch.Tensor:
    """The real test images, Gaussian-blurred (sigma 1 px at 32 px): a soft but faithful generator."""
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = p.real.shape[-1] / 32
    side = 2 * math.ceil(2 * sigma) + 1
    return gaussian_blur(p.real, [side, side], [sigma, sigma])[:, None]


def _change(attrs: dict, attribute: str, rng: random.Random) -> dict:
    """`attrs` with one stated attribute replaced by another value the text does not state."""
    a = dict(attrs)
    types = list(synthetic.TYPE_COLOURS)
    if attribute == "colour":  # not the pattern's colour either, or the pattern would vanish into the body
        a["primary"] = rng.choice([t for t in types if t not in (attrs["primary"], attrs["secondary"])])
    elif attribute == "shape":
        a["shape"] = rng.choice([s for s in synthetic.SHAPES if s != attrs["shape"]])
    elif attribute == "size":
        a["size"] = next(s for s in synthetic.SIZES if s != attrs["size"])
    elif attribute == "feature":
        a["feature"] = rng.choice([f for f in synthetic.FEATURES if f != attrs["feature"]])
    elif attrs["secondary"] and attribute == "pattern":
        a["pattern"] = rng.choice([x for x in synthetic.PATTERNS if x != attrs["pattern"]])
    elif attrs["secondary"] and attribute == "pattern_colour":
        a["secondary"] = rng.choice([t for t in types if t not in (attrs["primary"], attrs["secondary"])])
    return a  # a text that states no pattern: its pattern and pattern colour cannot be changed alone


def renders(attribute: str | None) -> Callable[[Panel], torch.Tensor]:
    """K fresh renders of each record's stated attributes, `attribute` changed (None: the control, unchanged).
    Seeded with strings "cheater-panel:...": disjoint from the dataset's and the reader's (model/eval/attributes.py)."""
    def generate(p: Panel) -> torch.Tensor:
        size = p.real.shape[-1]
        out = np.empty((len(p.attrs), p.samples, *p.real.shape[1:]), np.float32)
        for r, attrs in enumerate(p.attrs):
            for k in range(p.samples):
                rng = random.Random(f"cheater-panel:{p.seed}:{attribute}:{r}:{k}")
                out[r, k] = at.render(_change(attrs, attribute, rng) if attribute else attrs, rng, size)
        return torch.from_numpy(out)
    return generate


def from_checkpoint(path: str) -> Callable[[Panel], torch.Tensor]:
    """A trained model's K samples per text (seeds 0..K-1; a regressor draws one image per text)."""
    def generate(p: Panel) -> torch.Tensor:
        from model.generate import generate as sample, load_model  # here: it loads the text encoder

        net, tokenizer = load_model(path, "cpu")
        texts = list(p.data.split(p.split).texts)
        k = p.samples if net.cfg.family == "diffusion" else 1
        return torch.stack([sample(net, tokenizer, texts, seed=s).cpu() for s in range(k)], 1)
    return generate


@dataclass(frozen=True)
class Generator:
    name: str
    make: Callable[[Panel], torch.Tensor]
    cheater: bool  # rows 2-7 and 9; the real images, the controls and checkpoints are not
    # The metrics that expose it on the synthetic set whatever the in-domain model's fit (the attribute reader's
    # and the random CNN's): what tests/test_metrics_panel.py asserts. The bench's tables show the rest.
    exposed_by: tuple[str, ...] = ()
    synthetic_only: bool = False


GENERATORS = [
    Generator("real", real, False),
    Generator("other", other_same_type, True, ("attr_all",)),
    Generator("copier", copier, True, ("attr_all", "copy_rate")),
    Generator("disc", disc, True, ("attr_all", "recall_random")),
    Generator("median", median, True, ("attr_all", "recall_random", "kid_random")),
    Generator("blob", blob, True, ("attr_all", "recall_random")),
    Generator("noise", noise, True, ("attr_all", "recall_random", "kid_random", "precision_random")),
    *[Generator(f"wrong_{a}", renders(a), True, (f"attr_{a}",), True) for a in at.ATTRIBUTES],
    Generator("render", renders(None), False, (), True),
    Generator("blurred", blurred, False),
]


# ---------------------------------------------------------------------------------------------
# The metrics: each (panel, images (R, K, 3, S, S)) -> (R, K) per-record scores, an Interval, or None (unavailable)


@dataclass(frozen=True)
class Metric:
    name: str
    scores: Callable[[Panel, torch.Tensor], np.ndarray | Interval | None]
    higher_is_better: bool
    margin: float | None  # a row worse than the real images by at least this is exposed (None: shown, never exposes)
    catches: str
    baseline: Callable[[Panel], float | None] = lambda p: None  # the text-blind floor or chance, for the table
    # True: `margin` is read against 0, not the real images' row. For KID: unbiased, so 0 is what a generator of
    # the real distribution scores on average, while the real test images scored against themselves come out
    # below 0 (each record's own pair counts in the cross term: model/eval/fidelity.py), far below on the
    # in-domain features, where a record's image and anything drawn from its text lie close.
    absolute: bool = False


def attribute_metric(a: str) -> Metric:
    def scores(p: Panel, images: torch.Tensor):
        return None if p.attrs is None else at.attribute_scores(p.nets.reader, images, p.attrs)[a]

    catches = {"all": "any stated attribute wrong: a real image of another record, a copier, every text-blind or "
                      "colour-only image",
               "mean": "the stated attributes wrong, graded by how many: a real image of another record, a copier, "
                       "every text-blind image; one attribute wrong (rows wrong_<a>) costs 1/6"
               }.get(a, f"the {a.replace('_', ' ')} wrong (row wrong_{a})")
    return Metric(f"attr_{a}", scores, True, ATTR_MARGIN, catches,
                  lambda p: None if p.attrs is None else at.floor(p.attrs)[a])


def with_clip(f: Callable) -> Callable:
    """A metric of the in-domain model: None where the dataset has none (too few records)."""
    return lambda p, x: None if p.nets.clip is None else f(p, x)


def type_labels(p: Panel) -> np.ndarray:
    return p.evaluator("type_labels", lambda: ta.labels(p.nets.types, p.data.split(p.split),
                                                        p.data.info["primary_types"]))


def type_scores(p: Panel, images: torch.Tensor) -> np.ndarray | None:
    """(R, K): is the sample classified as its record's primary type by the evaluator's type classifier (the CNN of
    model/eval/type_accuracy.py, which sees shape)?"""
    if p.nets.types is None:
        return None
    return ta.hits(p.nets.types, images, type_labels(p)).astype(np.float64)


def type_chance(p: Panel) -> float | None:
    """The majority type's share of the split (what a classifier that always says one type scores)."""
    if p.nets.types is None:
        return None
    y = type_labels(p)
    return float(np.bincount(y[y >= 0]).max() / len(y))


def histogram_classifier(p: Panel):
    return p.evaluator("histogram", lambda: ff.load_or_train(p.data))


def histogram_scores(p: Panel, images: torch.Tensor) -> np.ndarray:
    """(R, K): the same question of model/eval/type_classifier.py's colour-histogram classifier (the metric before
    issue 24, kept for comparison)."""
    clf = histogram_classifier(p)
    labels, _ = ff.type_labels(p.data.split(p.split), p.data.info["primary_types"], clf.classes)
    r, k = images.shape[:2]
    return (clf.predict(images.flatten(0, 1)).cpu().view(r, k) == labels[:, None]).double().numpy()


def histogram_chance(p: Panel) -> float:
    clf = histogram_classifier(p)
    labels, _ = ff.type_labels(p.data.split(p.split), p.data.info["primary_types"], clf.classes)
    return ff.chance_accuracy(labels, len(clf.classes))


def pixel_top1(p: Panel, images: torch.Tensor) -> np.ndarray:
    """(R, K): is the record's real image the pixel-L1 nearest of the split's real images to the sample?
    model/eval/clip.py's retrieval_accuracy per record (conservative ranks: a tie is a miss). The retrieval metric
    before issue 24, kept for comparison."""
    real = p.real.flatten(1)
    hits = []
    for k in range(images.shape[1]):
        dist = torch.cdist(images[:, k].flatten(1), real, p=1)  # (R, R)
        hits.append((dist <= dist.diagonal()[:, None]).sum(1) - 1 < 1)
    return torch.stack(hits, 1).double().numpy()


def clip_features(p: Panel):
    return p.evaluator("clip_features", lambda: fd.ClipFeatures(p.nets.clip))


def precision_recall(p: Panel, images: torch.Tensor, what: str) -> np.ndarray:
    """Per-record precision ((R, K): is the sample inside some real image's k-NN ball?) or recall ((R,): is the
    real image inside some sample's ball?) on the random CNN's features (model/eval/fidelity.py, k = 3)."""
    real = p.evaluator("random_real", lambda: p.nets.random(p.real))
    ind = fd.precision_recall(real, p.nets.random(images.flatten(0, 1)))
    return ind[what].reshape(images.shape[:2]).astype(np.float64) if what == "precision" else ind[what].astype(
        np.float64)


def training_reference(p: Panel) -> fe.TrainingReference:
    return p.evaluator("training_reference", lambda: fe.TrainingReference.of(p.feature, p.data.train))


def copy_rate(p: Panel, images: torch.Tensor) -> Interval:
    """The share of samples much nearer one training record than any other (model/eval/features.py), in the
    evaluator's feature space (`Panel.feature`)."""
    return fe.memorisation(p.feature, images, training_reference(p))["copy_rate"]


def diversity(p: Panel, images: torch.Tensor) -> Interval | None:
    return fe.diversity(p.feature, images) if images.shape[1] > 1 else None


# The thresholds, each chosen from the measured panels (module docstring): the real images' side of it holds
# every control (fresh renders, blurred real images); the cheaters' side, each cheater on at least one metric.
METRICS = [
    *[attribute_metric(a) for a in at.SCORES],
    Metric("indomain_align", with_clip(lambda p, x: al.alignment_scores(p.nets.clip, x, p.texts)), True, 0.05,
           "images unlike their own text: text-blind images, another record's image, noise",
           lambda p: None),
    Metric("r_precision_top1", with_clip(lambda p, x: al.r_precision_hits(p.nets.clip, x, p.texts)[1]
                                         .astype(np.float64)), True, 0.25,
           "images that another text of the split describes better: another record's image, a copier",
           lambda p: 1 / len(p.real)),
    Metric("type_acc", type_scores, True, 0.15, "the wrong type (a CNN: colour and shape)", type_chance),
    Metric("kid_random", lambda p, x: fd.kid(p.nets.random, p.real, x), False, 0.01,
           "a distribution unlike the real images' (texture, sharpness, colour statistics): flat, blurred, noisy "
           "or constant images", absolute=True),
    Metric("kid_indomain", with_clip(lambda p, x: fd.kid(clip_features(p), p.real, x)), False, 0.20,
           "a distribution unlike the real images' in the in-domain image features", absolute=True),
    Metric("precision_random", lambda p, x: precision_recall(p, x, "precision"), True, 0.30,
           "unrealistic images (outside every real image's neighbourhood)"),
    Metric("recall_random", lambda p, x: precision_recall(p, x, "recall"), True, 0.30,
           "real images left uncovered (a collapsed or constant generator)"),
    Metric("copy_rate", copy_rate, False, 0.30, "copies of training images"),
    Metric("diversity", diversity, True, None, "shown only: the real images have one image per text, so there is "
           "no real row to read it against (1: the text does not matter; 0: one picture per text)"),
    Metric("type_acc_histogram", histogram_scores, True, 0.30,
           "the metric before issue 24 (colour histogram), for comparison: blind to shape", histogram_chance),
    Metric("pixel_top1", pixel_top1, True, 0.30, "the metric before issue 24 (pixel-L1 retrieval), for comparison: "
           "images far in pixels from the test image; passed by a near copy", lambda p: 1 / len(p.real)),
]
LEGACY = ("type_acc_histogram", "pixel_top1")  # shown beside the new metrics; exposing by them does not count


# ---------------------------------------------------------------------------------------------
# The panel


@dataclass(frozen=True)
class Row:
    name: str
    samples: int
    cells: dict  # metric name -> Interval
    exposed: tuple[str, ...]  # the metrics (not LEGACY) that expose it (the real images' own row: none)
    cheater: bool
    scores: dict = field(default_factory=dict, compare=False)  # metric name -> (R, K) per-record scores, where any
    seconds: float = 0.0  # every metric of the row, its images made


def exposes(metric: Metric, row: Interval, real_row: Interval) -> bool:
    """Is the row worse than the real images' by at least the metric's margin (or past it, an absolute one)?"""
    if metric.margin is None:
        return False
    reference = 0.0 if metric.absolute else real_row.mean
    worse = reference - row.mean if metric.higher_is_better else row.mean - reference
    return worse >= metric.margin - 1e-9


def run_panel(p: Panel, generators=None, metrics=None) -> list[Row]:
    """Every generator's row of intervals, the real images' first; `exposed` against the real images' row."""
    generators = GENERATORS if generators is None else generators
    metrics = METRICS if metrics is None else metrics
    synthetic_set = p.attrs is not None
    generators = [g for g in generators if synthetic_set or not g.synthetic_only]
    measured = []
    for g in generators:
        images = g.make(p)
        start = time.perf_counter()
        cells, scores = {}, {}
        for m in metrics:
            s = m.scores(p, images)
            if s is None:
                continue
            if isinstance(s, Interval):
                cells[m.name] = s
            else:
                cells[m.name], scores[m.name] = bootstrap_interval(s, seed=p.seed), np.asarray(s, dtype=np.float64)
        measured.append((g, images.shape[1], cells, scores, time.perf_counter() - start))
    real_cells = measured[0][2]

    def exposed_by(c: dict) -> tuple[str, ...]:
        return tuple(m.name for m in metrics  # a metric the real row lacks (diversity of one image) exposes none
                     if m.name not in LEGACY and m.name in c and m.name in real_cells
                     and exposes(m, c[m.name], real_cells[m.name]))

    return [Row(g.name, k, c, exposed_by(c), g.cheater, sc, sec) for g, k, c, sc, sec in measured]


def headline(p: Panel) -> str:
    """What the real images must rank first on: attribute accuracy on the synthetic set, else the in-domain
    model's alignment (the search's second objective on each)."""
    return "attr_all" if p.attrs is not None else "indomain_align"


def cell(i: Interval, digits: int) -> str:
    return f"{i.mean:.{digits}f} [{i.lo:.{digits}f}, {i.hi:.{digits}f}]"


def table(rows: list[Row], p: Panel, metrics=None) -> str:
    """A Markdown table: a row per generator, a column per metric, `mean [lo, hi]`, * where the row is exposed."""
    metrics = METRICS if metrics is None else metrics
    names = [m.name for m in metrics if any(m.name in row.cells for row in rows)]
    digits = {m.name: 3 if m.name.startswith("kid") else 2 for m in metrics}
    lines = ["| generator | K | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = [(cell(row.cells[n], digits[n]) + ("*" if n in row.exposed else "")) if n in row.cells else ""
                 for n in names]
        lines.append(f"| {row.name} | {row.samples} | " + " | ".join(cells) + " |")
    floors = {m.name: m.baseline(p) for m in metrics if m.name in names}
    lines.append("| baseline: text-blind floor / chance | | "
                 + " | ".join("" if floors[n] is None else f"{floors[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def thresholds(rows: list[Row], metrics=None) -> str:
    """The thresholds of the metrics that `rows` were measured on, as a Markdown table."""
    metrics = METRICS if metrics is None else metrics
    lines = ["| metric | better | exposes a row at | catches |", "|---|---|---|---|"]
    for m in (m for m in metrics if any(m.name in row.cells for row in rows)):
        sign = "<= real - " if m.higher_is_better else ">= real + "
        margin = "" if m.margin is None else f"{m.margin:.3f}" if m.margin < 0.1 else f"{m.margin:.2f}"
        at_ = ("never (shown only)" if m.margin is None else f"{'<= ' if m.higher_is_better else '>= '}{margin}"
               if m.absolute else f"{sign}{margin}")
        at_ += " (not counted: the old metric)" if m.name in LEGACY else ""
        lines.append(f"| {m.name} | {'higher' if m.higher_is_better else 'lower'} | {at_} | {m.catches} |")
    return "\n".join(lines)


def ranking(rows: list[Row], metric: str) -> list[str]:
    """The real images and the cheaters, best first on `metric` (higher is better)."""
    rows = [r for r in rows if (r.cheater or r.name == "real") and metric in r.cells]
    return [r.name for r in sorted(rows, key=lambda r: -r.cells[metric].mean)]


def paired_vs_real(rows: list[Row], metric: str) -> str:
    """Each row against the real images on the same texts (model/eval/intervals.py's paired_comparison of the
    per-record means, one-sided: are the real images better?), as a Markdown table."""
    real = rows[0].scores.get(metric)
    if real is None:
        return ""
    m = next(m for m in METRICS if m.name == metric)
    lines = [f"| generator | real - generator on {metric} [95% interval] | one-sided p (real better) |",
             "|---|---|---|"]
    for row in rows[1:]:
        if metric not in row.scores:
            continue
        a, b = real.mean(1), row.scores[metric].mean(1)
        c = paired_comparison(a, b) if m.higher_is_better else paired_comparison(b, a)
        lines.append(f"| {row.name} | {c.diff:+.3f} [{c.lo:+.3f}, {c.hi:+.3f}] | {c.p_value:.4f} |")
    return "\n".join(lines)


# The minimum detectable difference (model/eval/intervals.py) of the headline metrics, read off a row's scores.
MDD_METRICS = ("attr_all", "indomain_align", "r_precision_top1", "type_acc", "kid_random")
BINARY = ("attr_all", "r_precision_top1", "type_acc")  # per-sample scores of 0 or 1


def mdd(row: Row, metric: str, n_records: int, records: int, paired_with: Row | None = None) -> float | None:
    """The smallest difference between two rows of `metric` that a two-sided test at 0.05 finds with 80% power at
    n_records, with the spread of this row's scores over its `records`: two independent rows (or, `paired_with`,
    two rows on the same texts and sample seeds). KID has no per-record scores: its interval's half-width / 1.96
    is its standard error, two independent rows differ with sqrt(2) times it; only at its own number of records
    (how KID's error scales with R depends on how far the row is from the real images)."""
    if metric not in row.cells:
        return None
    if metric in row.scores:
        x = row.scores[metric]
        other = None if paired_with is None else paired_with.scores.get(metric)
        if paired_with is not None and other is None:
            return None
        if other is not None and other.shape != x.shape:  # K samples against one image per text: per-record means
            x, other = x.mean(1), other.mean(1)
        return mdd_of_scores(x, n_records, paired_with=other)
    if paired_with is not None or n_records != records:
        return None
    i = row.cells[metric]
    se = (i.hi - i.lo) / (2 * NormalDist().inv_cdf((1 + LEVEL) / 2))
    return float(minimum_detectable_difference(math.sqrt(2) * se, 1))


def mdd_table(rows: list[Row], records: int, sizes=(30, 90), pairs=()) -> str:
    """The MDDs of the headline metrics (`mdd`) at each number of records in `sizes`, from the scores on `records`
    records of each row that is no cheater (the real images, the controls, trained models); `pairs`: (a, b) row
    names, the paired MDD of two rows on the same texts and sample seeds."""
    by = {r.name: r for r in rows}
    names = [m for m in MDD_METRICS if any(m in r.cells for r in rows)]
    lines = ["| scores of | records | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    singles = [(r.name, r, None) for r in rows if not r.cheater]  # a cheater's scores are mostly all 0 or all 1
    for label, row, other in singles + [(f"{a} - {b} (paired)", by[a], by[b]) for a, b in pairs if a in by and b in by]:
        for n in sizes:
            values = [mdd(row, m, n, records, other) for m in names]
            lines.append(f"| {label} | {n} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
    for n in sizes:  # the largest a 0/1 metric can need: half the records right, one image per text
        lines.append(f"| worst case of a 0/1 metric (p = 0.5, one image per text) | {n} | "
                     + " | ".join(f"{minimum_detectable_difference(math.sqrt(2) * 0.5, n):.3f}"
                                  if m in BINARY else "" for m in names) + " |")
    return "\n".join(lines)


def _label(path: str) -> str:
    """A checkpoint's row name: its folder's name (a checkpoint file's folder says which trial it is), less a
    `checkpoint_` prefix."""
    p = Path(path)
    return (p.name if p.is_dir() else p.parent.name).removeprefix("checkpoint_")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="a dataset folder (default: the embedded synthetic set)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--augment-rotations", type=int, default=1)
    ap.add_argument("--samples", type=int, default=SAMPLES,
                    help="samples per text for the generators that draw several")
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained model's checkpoint (repeatable)")
    ap.add_argument("--out", default=None, help="cache root for the prepared data and the evaluator networks "
                    "(default: the pipeline's, shared with trials; a fresh folder times every fit)")
    ap.add_argument("--eval-fit", type=float, default=1.0,
                    help="each evaluator network's fit length, as a share of its default (TrainConfig.eval_fit)")
    ap.add_argument("--json", default=None, help="also write the rows, thresholds, costs and MDDs here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {machine()}")

    data = prepare_dataset(args.data, DataConfig(image_size=args.image_size, augment_rotations=args.augment_rotations),
                           cache_root=args.out, progress=False)
    print(f"evaluator networks ({data.image_size} px, one thread, fit length x{args.eval_fit:g}):")
    nets, costs = fit_nets(data, args.eval_fit, log=lambda line: print("  " + line, flush=True))
    p = make_panel(data, nets, samples=args.samples)
    generators = GENERATORS + [Generator(f"checkpoint {_label(c)}", from_checkpoint(c), False) for c in args.checkpoint]
    start = time.perf_counter()
    rows = run_panel(p, generators)
    print(f"\n{data.info['source']}, {data.image_size} px, {args.augment_rotations} rotation(s): {len(p.real)} test "
          f"records, up to {args.samples} samples per text; panel {time.perf_counter() - start:.0f} s "
          f"(the real images' row: every metric in {rows[0].seconds:.1f} s)\n")
    print(table(rows, p))
    print("\n* = exposed: worse than the real images by at least the metric's margin. Thresholds:\n")
    print(thresholds(rows))
    order = ranking(rows, headline(p))
    print(f"\nthe real images and the cheaters on {headline(p)}, best first: {', '.join(order)}")
    missed = [r.name for r in rows if r.cheater and not r.exposed]
    print("every cheater exposed" if not missed else f"NOT exposed by any metric: {', '.join(missed)}")
    paired = paired_vs_real(rows, headline(p))
    print(f"\nEvery row against the real images on {headline(p)}, paired by text:\n\n{paired}")
    pairs = [(a.name, b.name) for i, a in enumerate(rows) for b in rows[i + 1:]
             if a.name.startswith("checkpoint") and b.name.startswith("checkpoint")]
    print(f"\nMinimum detectable difference (80% power, two-sided 0.05) of two rows, from each row's own spread at the "
          f"split's size ({len(p.real)}) and the other dataset's:\n")
    mdds = mdd_table(rows, len(p.real), tuple(sorted({30, 90, len(p.real)})), pairs)
    print(mdds)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": machine(), "args": vars(args), "costs": costs, "ranking": order, "missed": missed,
            "rows": [{"name": r.name, "samples": r.samples, "cheater": r.cheater, "exposed": r.exposed,
                      "seconds": r.seconds, "cells": {k: list(v) for k, v in r.cells.items()}} for r in rows],
            "thresholds": thresholds(rows), "table": table(rows, p), "paired": paired, "mdd": mdds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
