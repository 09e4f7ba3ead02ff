"""Attribute accuracy on the embedded synthetic set: does each generated image show what its text states?

    from model.eval import attributes as at
    reader = at.load_or_fit(data)                        # once per (generator, image size, config, code): cached
    attrs = at.split_attributes(data, "test")            # each test record's stated attributes
    scores = at.attribute_scores(reader, generated, attrs)   # {"colour": (R, S) 0/1, ..., "all": (R, S) 0/1, "mean"}
    at.attribute_accuracy(reader, generated, attrs)      # {"colour": 0.97, ..., "all": 0.81, "mean": 0.95}
    at.metrics(reader, generated, attrs, "test")         # {"test/attr_colour": Interval(mean, lo, hi), ...}
    at.baselines(reader, data)                           # the ceiling (real test images) and the text-blind floors
    at.render(attrs[0], seed, data.image_size)           # (3, S, S) in [-1, 1]: a fresh creature, as prepared

In the spirit of GenEval and T2I-CompBench: every synthetic creature's text states its attributes
(data_pipeline/synthetic.py draws the picture from them), so a reader that recognises each attribute in an
image asks of a generated test image, attribute by attribute, whether it shows what its text says:
- colour: the body colour, i.e. the primary type (9 classes);
- shape (round, square, triangular, tall oval) and size (small, large);
- pattern: none, spots, stripes or belly ("none" for a creature without a secondary type, whose text states
  no pattern), and its colour, the secondary type's (none + 9);
- feature: horn, ears, wings, antennae or tail.
`all` is the share of images with every stated attribute right; `mean` the share of the stated attributes an image
draws right, averaged (a graded score: a model that gets five of six right scores 0.83 where `all` scores 0, so it
tells apart two models that `all` ties at 0 early in training; what a search selects on, search/grid.py). Read
them beside the reader's own accuracy on the real test images (the ceiling: `baseline/attr_*_ceiling`, near 1)
and two text-blind floors: the best any one constant image can score (`baseline/attr_*_floor`: the share of the
commonest class, the commonest full attribute set for `all`, the mean of the per-attribute floors for `mean`),
and what the per-pixel median training image scores (`baseline/attr_*_median_train_image`).

The reader is one small CNN with a head per attribute (three conv-BatchNorm-ReLU-maxpool levels, flattened so
that it sees where things are: a horn sits on top, a belly below). It is trained on FRESH renders, never on
the dataset: each step draws a batch of attribute sets the way the generator does (`sample_attributes`: types
uniform, a third without a secondary type, the rest uniform) and renders them with the generator's own
`draw_creature`, unrotated, through the data pipeline's own alpha-to-white and resize (`render`), at the
dataset's image size, then softens them (`soften`: a random blur and pixel noise, since generated images are
never as crisp as renders). So the data is unlimited and a generated image is judged by a reader that has never
seen a test record.

Disjoint from the dataset: a dataset's creatures are drawn from `random.Random(<int seed>)` (prepare's
"synthetic:<seed>"), the reader's batch k from `random.Random("attribute-reader:<seed>:<k>")`. Python seeds
a str with the integer made of its bytes followed by their SHA-512, a number above 2**512, so the two streams
start from the same state only for a dataset seed of more than 150 digits (MT19937's streams from different
seeds do not meet in any run of this length).

Deterministic: the same weights for the same ReaderConfig (its seed and thread count: the fit sets torch's
threads to `threads` and restores them, and seeds torch inside `fork_rng`, leaving the caller's stream alone).

Measured: `fit(size)` timed (600 steps of 64; a 2-core AMD EPYC shared with other jobs, load average 6-11), then
the reader on the synthetic default's 30 real test images, per attribute (colour, shape, size, pattern, pattern
colour, feature) and all; the same images blurred (sigma 1 px at 32 px, i.e. size / 32) and with pixel noise (sd
0.1), all; and 3000 fresh renders (`fresh_batch(3000, size, "held-out")`), all:
| image size | fit: wall s, CPU s | real test images              | all  | blurred | noisy | fresh |
| 16 px      | 85, 25             | 1.00 1.00 1.00 0.93 0.83 1.00 | 0.80 | 0.40    | 0.80  | 0.94  |
| 32 px      | 52, 46             | 1.00 1.00 1.00 1.00 0.97 1.00 | 0.97 | 0.87    | 0.93  | 0.98  |
| 64 px      | 101, 53            | 1.00 1.00 1.00 1.00 0.97 1.00 | 0.97 | 1.00    | 1.00  | 0.98  |
Wall time is the machine's load as much as the fit's: CPU time counts both threads (rendering on a second one
overlaps the training step). Without the blur and noise of training (`blur=0, noise=0`), the same reader read
the blurred 32 px images at 0.30 (feature 0.70, pattern 0.63): it judged softness, not content. Its remaining
misses are mostly patterns that barely show: spots clipped by the body's edge or bunched into what looks like a
belly, or dark on a dark body; at 16 px a pattern is a few pixels. A paler colour (mixed 30% with white) is read
as another colour about half the time, rightly: blue mixed with white is light blue. Reading the 30 test images
takes about 10 ms.

Cached like every evaluator (model/files.py load_or_fit: atomic write, an unreadable file refitted with a warning) as
`attribute_reader-<key[:16]>.pt` in the prepared dataset's `info["cache_dir"]` (or `cache_dir=`); the key
hashes the generator's source (synthetic.py), the data pipeline's version, the image size, the ReaderConfig
and READER_VERSION. Nothing in it depends on the dataset's records.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_pipeline import synthetic
from data_pipeline.prepare import PIPELINE_VERSION
from data_pipeline.preprocess import alpha_to_white, resize, to_unit_range
from model.files import load_or_fit as cached
from model.eval.intervals import Interval, bootstrap_interval

ATTRIBUTES = ("colour", "shape", "size", "pattern", "pattern_colour", "feature")
SCORES = ATTRIBUTES + ("all", "mean")
CLASSES = {  # attribute -> its class names; a label is an index into these
    "colour": tuple(synthetic.TYPE_COLOURS),  # the primary type
    "shape": tuple(synthetic.SHAPES),
    "size": tuple(synthetic.SIZES),
    "pattern": ("none",) + tuple(synthetic.PATTERNS),
    "pattern_colour": ("none",) + tuple(synthetic.TYPE_COLOURS),  # the secondary type
    "feature": tuple(synthetic.FEATURES),
}
TEST_ATTR = {"colour": "test/attr_colour", "shape": "test/attr_shape", "size": "test/attr_size",
             "pattern": "test/attr_pattern", "pattern_colour": "test/attr_pattern_colour",
             "feature": "test/attr_feature", "all": "test/attr_all", "mean": "test/attr_mean"}
VAL_ATTR = {"colour": "val/attr_colour", "shape": "val/attr_shape", "size": "val/attr_size",
            "pattern": "val/attr_pattern", "pattern_colour": "val/attr_pattern_colour",
            "feature": "val/attr_feature", "all": "val/attr_all", "mean": "val/attr_mean"}
BASELINE_CEILING = {a: f"baseline/attr_{a}_ceiling" for a in SCORES}  # the reader on the real test images
BASELINE_FLOOR = {a: f"baseline/attr_{a}_floor" for a in SCORES}  # the best one constant image can score
BASELINE_MEDIAN = {a: f"baseline/attr_{a}_median_train_image" for a in SCORES}
READER_VERSION = 2  # bump whenever a code change changes what a fitted reader predicts
CACHE_NAME = "attribute_reader"
SEED_PREFIX = "attribute-reader"  # the reader's renders are seeded with strings, the dataset's with integers
EVAL_BATCH = 256


@dataclass(frozen=True)
class ReaderConfig:
    resolution: int = 32  # larger images are area-downsampled to this (64 px costs about what 32 px does)
    width: int = 16  # channels of the first level; each of the two levels below doubles it
    hidden: int = 256  # the shared layer the heads read
    steps: int = 600  # each a batch of fresh renders
    batch_size: int = 64
    lr: float = 6e-3  # one-cycle peak
    weight_decay: float = 1e-4
    # Generated images are never as crisp as renders: each training image is Gaussian-blurred with a sigma drawn
    # from [0, blur] px (at 32 px; scaled with the image size) and gets pixel noise of an sd drawn from [0, noise],
    # so that a soft but faithful image is read for what it shows. Neither changes what an attribute is (a
    # paler colour would: mixed with white, blue nears light blue), so colours are left alone.
    blur: float = 1.0
    noise: float = 0.1
    seed: int = 0
    threads: int = 1  # torch threads during the fit: part of what makes it deterministic; one thread on a
    #                   shared 2-core machine is also the fastest (two spin against other jobs: 5-10x slower)


# ---------------------------------------------------------------------------------------------
# Attributes and labels


def labels_of(attrs: dict, where: str = "attributes") -> dict[str, int]:
    """One creature's stated attributes (pokedex.json's `attributes`) -> {attribute: class index}.
    ValueError naming `where` and the field for anything the generator cannot have written."""
    def index(attribute: str, field: str, value) -> int:
        names = CLASSES[attribute] if attribute != "pattern_colour" else CLASSES["colour"]
        if value not in names:
            raise ValueError(f"{where}: {field} = {value!r} is not one of {list(names)}")
        return names.index(value)

    missing = [f for f in ("primary", "secondary", "pattern", "shape", "size", "feature") if f not in attrs]
    if missing:
        raise ValueError(f"{where}: no {', '.join(missing)} (a synthetic creature's attributes hold primary, "
                         f"secondary, pattern, shape, size and feature)")
    secondary = attrs["secondary"]
    return {"colour": index("colour", "primary", attrs["primary"]),
            "shape": index("shape", "shape", attrs["shape"]),
            "size": index("size", "size", attrs["size"]),
            # no secondary type: no pattern is drawn and the text states none, whatever `pattern` holds
            "pattern": index("pattern", "pattern", attrs["pattern"]) if secondary else 0,
            "pattern_colour": index("pattern_colour", "secondary", secondary) + 1 if secondary else 0,
            "feature": index("feature", "feature", attrs["feature"])}


def split_attributes(data, split: str = "test") -> list[dict]:
    """The stated attributes of each row of a split (data.info["attributes"], which the data pipeline records
    for the synthetic set). KeyError naming the record for data without them (real data states none)."""
    stated = data.info.get("attributes") or {}
    ids = [int(i) for i in data.split(split).ids]
    missing = [i for i in ids if str(i) not in stated]
    if missing:
        raise KeyError(f"no stated attributes for record {missing[0]} of the {split} split ({len(missing)} of "
                       f"{len(ids)} records lack them): attribute accuracy needs the embedded synthetic set, "
                       f"prepared by a data pipeline that records data.info['attributes'] (PIPELINE_VERSION >= 3)")
    for i in ids:  # a bad record fails here, by its id, rather than as a row number later
        labels_of(stated[str(i)], f"data.info['attributes'] of record {i} ({split} split)")
    return [stated[str(i)] for i in ids]


def label_tensor(attrs: list[dict]) -> torch.Tensor:
    """(R, len(ATTRIBUTES)) int64 labels of R attribute sets, columns in ATTRIBUTES order."""
    rows = [labels_of(a, f"attribute set {k}") for k, a in enumerate(attrs)]
    return torch.tensor([[r[name] for name in ATTRIBUTES] for r in rows], dtype=torch.int64).view(-1, len(ATTRIBUTES))


# ---------------------------------------------------------------------------------------------
# Rendering: a creature as the data pipeline prepares it


def render(attrs: dict, rng: random.Random | int | str, size: int) -> np.ndarray:
    """(3, size, size) float32 in [-1, 1]: `synthetic.draw_creature(attrs, rng)` as a prepared dataset holds it.

    The pipeline's steps for an unrotated image (data_pipeline/preprocess.py): the sprite's RGBA alpha filled
    white, resized to size x size (`resize`: bicubic), scaled to [-1, 1] (`to_unit_range`). Its PNG round trip
    is lossless and rotation copy 0 is the image itself, so both are skipped. `rng` is the generator's own
    stream (a random.Random, advanced as drawing goes) or a seed for a new one.
    """
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    rgb = resize(alpha_to_white(np.asarray(synthetic.draw_creature(attrs, rng))), size)  # (S, S, 3) uint8
    return to_unit_range(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def fresh_batch(n: int, size: int, seed: str) -> tuple[torch.Tensor, torch.Tensor]:
    """n fresh creatures drawn as the generator draws them, from random.Random(seed) (a str: see the module
    docstring): ((n, 3, S, S) in [-1, 1], (n, len(ATTRIBUTES)) labels)."""
    rng = random.Random(seed)
    attrs = []
    images = np.empty((n, 3, size, size), np.float32)
    for k in range(n):
        attrs.append(synthetic.sample_attributes(rng, k))
        images[k] = render(attrs[-1], rng, size)
    return torch.from_numpy(images), label_tensor(attrs)


# ---------------------------------------------------------------------------------------------
# The reader


def _level(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                         nn.MaxPool2d(2))


class AttributeReader(nn.Module):
    """(N, 3, S, S) in [-1, 1] -> {attribute: (N, classes) logits}. S is the image size it was fitted at."""

    def __init__(self, image_size: int, cfg: ReaderConfig = ReaderConfig()):
        super().__init__()
        self.image_size, self.cfg = image_size, cfg
        side = min(image_size, cfg.resolution)
        if side < 8:
            raise ValueError(f"the attribute reader needs images of at least 8 px, got {image_size}")
        w = cfg.width
        self.trunk = nn.Sequential(_level(3, w), _level(w, 2 * w), _level(2 * w, 4 * w), nn.Flatten(),
                                   nn.Linear(4 * w * (side // 8) ** 2, cfg.hidden), nn.ReLU())
        self.heads = nn.ModuleDict({a: nn.Linear(cfg.hidden, len(CLASSES[a])) for a in ATTRIBUTES})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.float()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ValueError(f"the attribute reader was fitted on {self.image_size} px images, got "
                             f"{tuple(x.shape[-2:])}")
        if self.image_size > self.cfg.resolution:
            x = F.interpolate(x, size=(self.cfg.resolution,) * 2, mode="area")
        h = self.trunk(x)  # (N, hidden)
        return {a: head(h) for a, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images) -> torch.Tensor:
        """(N, len(ATTRIBUTES)) int64 class indices, columns in ATTRIBUTES order, on the CPU."""
        x = _unit(images)
        self.eval()
        if len(x) == 0:
            return torch.zeros(0, len(ATTRIBUTES), dtype=torch.int64)
        out = []
        for i in range(0, len(x), EVAL_BATCH):
            logits = self(x[i:i + EVAL_BATCH].to(self._device()))
            out.append(torch.stack([logits[a].argmax(1) for a in ATTRIBUTES], 1).cpu())
        return torch.cat(out)

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def _unit(images) -> torch.Tensor:
    """float32 in [-1, 1], from uint8 [0, 255] or float, numpy or torch."""
    x = images if torch.is_tensor(images) else torch.as_tensor(np.asarray(images))
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


def fit(image_size: int, cfg: ReaderConfig = ReaderConfig(), log=None) -> AttributeReader:
    """Train a reader on cfg.steps batches of fresh renders at `image_size`, on the CPU with cfg.threads
    threads: the same weights for the same arguments."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's torch seed is neither used nor moved
            torch.manual_seed(cfg.seed)
            return _fit(image_size, cfg, log)
    finally:
        torch.set_num_threads(threads)


def _fit(image_size: int, cfg: ReaderConfig, log) -> AttributeReader:
    reader = AttributeReader(image_size, cfg)
    opt = torch.optim.AdamW(reader.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    reader.train()
    batch = lambda step: fresh_batch(cfg.batch_size, image_size, f"{SEED_PREFIX}:{cfg.seed}:{step}")  # noqa: E731
    # Rendering (Python and Pillow) takes about half as long as a training step, and torch releases the GIL while
    # it computes: one thread draws batch k + 1 while the step on batch k runs. Batch k depends on k alone, so
    # the weights do not depend on the overlap.
    with ThreadPoolExecutor(1) as renderer:
        upcoming = renderer.submit(batch, 0)
        for step in range(cfg.steps):
            images, labels = upcoming.result()
            if step + 1 < cfg.steps:
                upcoming = renderer.submit(batch, step + 1)
            _step(reader, opt, schedule, images, labels)
            if log is not None and (step + 1) % 200 == 0:
                log(f"step {step + 1}/{cfg.steps}")
    return reader.eval().requires_grad_(False)


def soften(images: torch.Tensor, blur: float, noise: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, 3, S, S) in [-1, 1] -> the same, each image Gaussian-blurred with its own sigma from [0, blur * S / 32] px
    (separable, edges replicated) plus Gaussian noise of its own sd from [0, noise], clamped to [-1, 1]."""
    n, c, h, w = images.shape
    scale = blur * h / 32
    radius = max(1, math.ceil(2 * scale))
    sigma = (torch.rand(n, generator=generator) * scale).clamp(min=1e-3)  # a sigma near 0 leaves the image as is
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None]) ** 2)  # (N, taps)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N * 3, taps): one per channel
    x = F.pad(images.reshape(1, n * c, h, w), (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(n * c, 1, 1, -1), groups=n * c)
    x = F.conv2d(x, kernel.view(n * c, 1, -1, 1), groups=n * c).view(n, c, h, w)
    sd = torch.rand(n, 1, 1, 1, generator=generator) * noise
    return (x + sd * torch.randn(x.shape, generator=generator)).clamp(-1, 1)


def _step(reader, opt, schedule, images, labels) -> None:
    images = soften(images, reader.cfg.blur, reader.cfg.noise)  # torch's stream, seeded by `fit`
    logits = reader(images)
    loss = sum(F.cross_entropy(logits[a], labels[:, k]) for k, a in enumerate(ATTRIBUTES))  # one per head
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    schedule.step()


def generator_version() -> str:
    """sha256 of the generator's source: any change to how creatures are drawn is a new reader."""
    return hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()


def reader_key(image_size: int, cfg: ReaderConfig = ReaderConfig()) -> dict:
    """What a fitted reader depends on: the generator's source, the pipeline, the image size, its config, the code."""
    return {"name": CACHE_NAME, "version": READER_VERSION, "generator": generator_version(),
            "pipeline": PIPELINE_VERSION, "image_size": image_size, "config": dataclasses.asdict(cfg)}


def _state(reader: AttributeReader) -> dict:
    return {"image_size": reader.image_size, "config": dataclasses.asdict(reader.cfg),
            "weights": {k: v.detach().cpu().clone() for k, v in reader.state_dict().items()}}


def _from_state(state: dict) -> AttributeReader:
    reader = AttributeReader(int(state["image_size"]), ReaderConfig(**state["config"]))
    reader.load_state_dict(state["weights"])
    return reader.eval().requires_grad_(False)


def load_or_fit(data=None, cfg: ReaderConfig = ReaderConfig(), image_size: int | None = None,
                cache_dir: str | Path | None = None) -> AttributeReader:
    """The reader for `data`'s image size (or `image_size`), loaded from `cache_dir` (default: the prepared
    dataset's info["cache_dir"]) when fitted before, else fitted and cached there; in memory without a folder."""
    if image_size is None:
        if data is None:
            raise ValueError("load_or_fit needs a prepared dataset or an image_size")
        image_size = data.image_size
    if cache_dir is None and data is not None:
        cache_dir = data.info.get("cache_dir")
    log = lambda line: print(f"model.eval.attributes: {line}", file=sys.stderr, flush=True)  # noqa: E731
    return cached(cache_dir, CACHE_NAME, reader_key(image_size, cfg), lambda: fit(image_size, cfg, log), _state,
                  _from_state)


# ---------------------------------------------------------------------------------------------
# The metric and its baselines


def _per_record(images) -> torch.Tensor:
    """(R, S, 3, H, W) from (R, S, 3, H, W) or (R, 3, H, W) (one sample per record)."""
    x = _unit(images)
    return x[:, None] if x.ndim == 4 else x


def attribute_scores(reader: AttributeReader, images, attrs: list[dict]) -> dict[str, np.ndarray]:
    """{attribute: (R, S) float64 0/1, "all": (R, S), "mean": (R, S)}: is attribute a of sample s of record r read
    as its text states (attrs[r])? `all`: every attribute right; `mean`: the share of them right (in steps of
    1/6). images (R, S, 3, H, W) or (R, 3, H, W)."""
    x = _per_record(images)
    r, s = x.shape[:2]
    if len(attrs) != r:
        raise ValueError(f"{r} records of images but {len(attrs)} attribute sets")
    right = reader.predict(x.flatten(0, 1)).view(r, s, -1) == label_tensor(attrs)[:, None]  # (R, S, A)
    out = {a: right[..., k].double().numpy() for k, a in enumerate(ATTRIBUTES)}
    out["all"] = right.all(-1).double().numpy()
    out["mean"] = right.double().mean(-1).numpy()
    return out


def attribute_accuracy(reader: AttributeReader, images, attrs: list[dict]) -> dict[str, float]:
    """{attribute: accuracy, "all": share with every stated attribute right, "mean": the mean of the attributes'
    accuracies}, over records and samples."""
    return {a: float(v.mean()) for a, v in attribute_scores(reader, images, attrs).items()}


def metrics(reader: AttributeReader, generated, attrs: list[dict], prefix: str = "test") -> dict[str, Interval]:
    """{<prefix>/attr_<a>: (mean, lo, hi)}: each accuracy with its 95% bootstrap interval over records and samples."""
    return {f"{prefix}/attr_{a}": bootstrap_interval(v) for a, v in attribute_scores(reader, generated, attrs).items()}


def floor(attrs: list[dict]) -> dict[str, float]:
    """The best a text-blind constant image can score: one image is one reading of every attribute for all
    records, so at most the share of the commonest class (per attribute) or of the commonest attribute set
    (`all`); for `mean`, each attribute's floor is reached by the same image (it can show the commonest class of
    every attribute at once), so their mean."""
    labels = label_tensor(attrs)
    if len(labels) == 0:
        return {a: float("nan") for a in SCORES}
    out = {a: np.bincount(labels[:, k].numpy()).max() / len(labels) for k, a in enumerate(ATTRIBUTES)}
    _, counts = torch.unique(labels, dim=0, return_counts=True)
    out["all"] = counts.max().item() / len(labels)
    out["mean"] = float(np.mean([out[a] for a in ATTRIBUTES]))
    return {a: float(v) for a, v in out.items()}


def median_train_image(data) -> torch.Tensor:
    """(3, S, S) the per-pixel median of the training split's images (every row, as model/eval/clip.py's baseline;
    torch's median: the lower of the two middle values)."""
    return _unit(data.train.unit_images()).median(0).values


def baselines(reader: AttributeReader, data, split: str = "test") -> dict[str, float]:
    """On the split's records (JSON-ready): the ceiling (the reader on their real images), the text-blind floor
    (`floor`) and the per-pixel median training image's scores."""
    attrs = split_attributes(data, split)
    real = attribute_accuracy(reader, data.split(split).unit_images(), attrs)
    median = median_train_image(data)
    blind = attribute_accuracy(reader, median.expand(len(attrs), *median.shape), attrs)
    out = {BASELINE_CEILING[a]: real[a] for a in SCORES}
    out.update({BASELINE_FLOOR[a]: v for a, v in floor(attrs).items()})
    out.update({BASELINE_MEDIAN[a]: blind[a] for a in SCORES})
    return out
