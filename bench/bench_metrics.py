"""The cheater panel: do the image metrics rank the real images first, and expose every hand-made cheater?

    python bench/bench_metrics.py                          # the embedded synthetic set, 32 px, 1 rotation (laptop data)
    python bench/bench_metrics.py --data ../shared/datasets/pokedex --augment-rotations 2   # real data (no attributes)
    python bench/bench_metrics.py --checkpoint results/<experiment>/best_checkpoint      # adds a trained model's row

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
  8. checkpoint   (bench only, `--checkpoint PATH`, repeatable) a trained model's K samples (a regressor: one)
  9. wrong_<a>    synthetic only: fresh renders of each test text's stated attributes with attribute <a> changed
                  (another colour, shape, size, pattern, pattern colour or feature; pattern and its colour only
                  where the text states a pattern, about 2/3 of the records): K of them
  controls (not cheaters; what a metric that flags them gets wrong):
     render   fresh renders of the test texts' own attributes: a perfect generator that never saw the test images
     blurred  the real test images, Gaussian-blurred (sigma 1 px at 32 px): a soft but faithful generator
Generators 2-7 and 9 are cheaters. A metric is one `Metric` entry of METRICS (name, per-record scores, which
direction is better, the margin that exposes a cheater, what it catches); a row is EXPOSED on a metric when it
scores worse than the real images by at least the margin. The thresholds, one table (printed by the bench):

| metric               | better | exposes a row at | catches                                                |
|----------------------|--------|------------------|--------------------------------------------------------|
| attr_all             | higher | <= real - 0.30   | any stated attribute wrong: rows 2-7 and 9             |
| attr_<a> (each of 6) | higher | <= real - 0.30   | that attribute wrong: row wrong_<a>                    |
| type_acc             | higher | <= real - 0.30   | the wrong colour; fooled by 2, 3 and 4 (right colour)  |
| pixel_top1           | higher | <= real - 0.30   | images far in pixels from the test image; fooled by 3  |

The test (tests/test_metrics_panel.py) asserts, on the synthetic set: the real images rank first on attr_all
among rows 1-7 and 9; rows 2-7 are exposed on attr_all; each wrong_<a> on attr_<a>, with every other attribute
within 0.10 of the real images' (near the ceiling).

Every cell is the mean with its 95% bootstrap interval over records and samples (model/eval/intervals.py): the
evaluation's noise (which test records, which sample seeds), not the training seed's. `baseline` rows: the
text-blind floor (the best any constant image scores on the attribute metrics, chance for type accuracy and
retrieval; the real images' pixel_top1 is 1 by construction, each being its own nearest real image).
`--data PATH` runs the panel on a real dataset: the attribute metrics, rows 9 and the render control
need the synthetic set's stated attributes, so they are left out there.

The reader's cost is printed too: its fit (one thread; wall beside CPU time and the load average, since the
machine is shared) and one evaluation of attribute accuracy on the test split.

Measured on the synthetic set (32 px, 1 rotation, 30 test records, 4 samples per text; a 2-core AMD EPYC shared
with other jobs, load average 4-8): the reader fits in 43 s CPU (both threads; 52-98 s wall as the load varied)
and reads the real test images at 1.00 on every attribute but pattern colour (0.97): attr_all 0.97 [0.90, 1.00].
Every cheater is exposed on attr_all (0.00-0.03; wrong_pattern and wrong_pattern_colour 0.33-0.35, the third of
the texts that state no pattern), each wrong_<a> on attr_<a> (0.00-0.35) with the other attributes at 0.96-1.00.
The controls: render 0.97, blurred 0.87 (colour, shape, size, pattern and feature 0.97-1.00). Type accuracy
passes other (0.94), copier (1.00) and disc (1.00) against the real images' 0.97; pixel top-1 passes the copier
(0.77 against 1.00). Trained models (bench/bench_diffusion.py's recipes, the README's picture): the laptop
regressor (7 epochs) draws the stated shape and size (1.00, 1.00) in the wrong colour (0.30; type accuracy 0.27);
the small diffusion model (72 epochs) the stated colour (1.00; type accuracy 0.93) in the wrong shape and size
(0.37, 0.40, near the floor): attr_all 0.07 and 0.02.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

from data_pipeline import synthetic  # noqa: E402
from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.prepare import prepare_dataset  # noqa: E402
from model.eval import type_classifier as ff  # noqa: E402
from model.eval import attributes as at  # noqa: E402
from model.eval.intervals import Interval, bootstrap_interval  # noqa: E402

SAMPLES = 4  # per text, for the generators that draw several
MARGIN = 0.30  # a row this far below the real images on a metric is exposed by it
NEAR_CEILING = 0.10  # a wrong_<a> row's other attributes stay within this of the real images'


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
    samples: int = SAMPLES
    seed: int = 0
    reader_cfg: at.ReaderConfig = at.ReaderConfig()
    fitted: dict = field(default_factory=dict)

    def evaluator(self, name: str, make: Callable):
        """A fitted evaluator network, made once per panel."""
        if name not in self.fitted:
            self.fitted[name] = make()
        return self.fitted[name]

    def generator(self, *keys) -> torch.Generator:
        """A torch generator seeded by the panel's seed and `keys` (a row's name, a record): rows never share noise."""
        digest = hashlib.sha256(repr((self.seed,) + keys).encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def make_panel(data, split: str = "test", samples: int = SAMPLES, seed: int = 0,
               reader_cfg: at.ReaderConfig = at.ReaderConfig()) -> Panel:
    s = data.split(split)
    types = data.info["primary_types"]
    ids = np.asarray(data.train.ids)
    first = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])  # a record's rotation-0 row comes first
    attrs = at.split_attributes(data, split) if data.info.get("attributes") else None
    return Panel(data, split, torch.as_tensor(s.unit_images()), [types[str(int(i))] for i in s.ids], attrs,
                 torch.as_tensor(data.train.unit_images()[first]), [types[str(int(ids[k]))] for k in first],
                 samples, seed, reader_cfg)


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
    """{type: (3,) mean colour of its training images' non-white pixels} (model/eval/type_classifier.py's white margin)."""
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
    exposed_by: tuple[str, ...] = ()  # the metrics the test expects to expose it
    synthetic_only: bool = False


GENERATORS = [
    Generator("real", real, False),
    Generator("other", other_same_type, True, ("attr_all",)),
    Generator("copier", copier, True, ("attr_all",)),
    Generator("disc", disc, True, ("attr_all",)),
    Generator("median", median, True, ("attr_all",)),
    Generator("blob", blob, True, ("attr_all",)),
    Generator("noise", noise, True, ("attr_all",)),
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
    margin: float  # a row worse than the real images by at least this is exposed
    catches: str
    baseline: Callable[[Panel], float | None] = lambda p: None  # the text-blind floor or chance, for the table


def reader(p: Panel) -> at.AttributeReader:
    return p.evaluator("reader", lambda: at.load_or_fit(p.data, p.reader_cfg))


def attribute_metric(a: str) -> Metric:
    def scores(p: Panel, images: torch.Tensor):
        return None if p.attrs is None else at.attribute_scores(reader(p), images, p.attrs)[a]

    return Metric(f"attr_{a}", scores, True, MARGIN, "any stated attribute wrong" if a == "all" else f"the {a} wrong",
                  lambda p: None if p.attrs is None else at.floor(p.attrs)[a])


def type_scores(p: Panel, images: torch.Tensor) -> np.ndarray:
    """(R, K): is the sample classified as its record's primary type (model/eval/type_classifier.py)?"""
    clf = p.evaluator("type_classifier", lambda: ff.load_or_train(p.data))
    labels, _ = ff.type_labels(p.data.split(p.split), p.data.info["primary_types"], clf.classes)
    r, k = images.shape[:2]
    return (clf.predict(images.flatten(0, 1)).cpu().view(r, k) == labels[:, None]).double().numpy()


def type_chance(p: Panel) -> float:
    clf = p.evaluator("type_classifier", lambda: ff.load_or_train(p.data))
    labels, _ = ff.type_labels(p.data.split(p.split), p.data.info["primary_types"], clf.classes)
    return ff.chance_accuracy(labels, len(clf.classes))


def pixel_top1(p: Panel, images: torch.Tensor) -> np.ndarray:
    """(R, K): is the record's real image the pixel-L1 nearest of the split's real images to the sample?
    model/eval/clip.py's retrieval_accuracy per record (conservative ranks: a tie is a miss)."""
    real = p.real.flatten(1)
    hits = []
    for k in range(images.shape[1]):
        dist = torch.cdist(images[:, k].flatten(1), real, p=1)  # (R, R)
        hits.append((dist <= dist.diagonal()[:, None]).sum(1) - 1 < 1)
    return torch.stack(hits, 1).double().numpy()


METRICS = [
    *[attribute_metric(a) for a in at.SCORES],
    Metric("type_acc", type_scores, True, MARGIN, "the wrong colour; a colour histogram, blind to shape", type_chance),
    Metric("pixel_top1", pixel_top1, True, MARGIN, "images far in pixels from the test image; blind to near copies",
           lambda p: 1 / len(p.real)),
]


# ---------------------------------------------------------------------------------------------
# The panel


@dataclass(frozen=True)
class Row:
    name: str
    samples: int
    cells: dict  # metric name -> Interval
    exposed: tuple[str, ...]  # metrics that expose it (the real images' own row: none)
    cheater: bool


def exposes(metric: Metric, row: Interval, real_row: Interval) -> bool:
    worse = real_row.mean - row.mean if metric.higher_is_better else row.mean - real_row.mean
    return worse >= metric.margin - 1e-9


def run_panel(p: Panel, generators=GENERATORS, metrics=METRICS) -> list[Row]:
    """Every generator's row of intervals, the real images' first; `exposed` against the real images' row."""
    synthetic_set = p.attrs is not None
    generators = [g for g in generators if synthetic_set or not g.synthetic_only]
    measured = []
    for g in generators:
        images = g.make(p)
        cells = {}
        for m in metrics:
            s = m.scores(p, images)
            if s is not None:
                cells[m.name] = s if isinstance(s, Interval) else bootstrap_interval(s, seed=p.seed)
        measured.append((g, images.shape[1], cells))
    real_cells = measured[0][2]

    def exposed_by(c: dict) -> tuple[str, ...]:
        return tuple(m.name for m in metrics  # a metric the real row lacks (diversity of one image) exposes none
                     if m.name in c and m.name in real_cells and exposes(m, c[m.name], real_cells[m.name]))

    return [Row(g.name, k, c, exposed_by(c), g.cheater) for g, k, c in measured]


def table(rows: list[Row], p: Panel, metrics=METRICS) -> str:
    """A Markdown table: a row per generator, a column per metric, `mean [lo, hi]`, * where the row is exposed."""
    names = [m.name for m in metrics if any(m.name in row.cells for row in rows)]
    lines = ["| generator | K | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for row in rows:
        cells = [f"{row.cells[n].mean:.2f} [{row.cells[n].lo:.2f}, {row.cells[n].hi:.2f}]"
                 + ("*" if n in row.exposed else "") if n in row.cells else "" for n in names]
        lines.append(f"| {row.name} | {row.samples} | " + " | ".join(cells) + " |")
    floors = {m.name: m.baseline(p) for m in metrics if m.name in names}
    lines.append("| baseline: text-blind floor / chance | | "
                 + " | ".join("" if floors[n] is None else f"{floors[n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def thresholds(rows: list[Row], metrics=METRICS) -> str:
    """The thresholds of the metrics that `rows` were measured on, as a Markdown table."""
    lines = ["| metric | better | exposes a row at | catches |", "|---|---|---|---|"]
    for m in (m for m in metrics if any(m.name in row.cells for row in rows)):
        sign = "<= real - " if m.higher_is_better else ">= real + "
        better = "higher" if m.higher_is_better else "lower"
        lines.append(f"| {m.name} | {better} | {sign}{m.margin:.2f} | {m.catches} |")
    return "\n".join(lines)


def _label(path: str) -> str:
    """A checkpoint's row name: its folder's name (a checkpoint file's folder says which trial it is)."""
    p = Path(path)
    return p.name if p.is_dir() else p.parent.name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="a dataset folder (default: the embedded synthetic set)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--augment-rotations", type=int, default=1)
    ap.add_argument("--samples", type=int, default=SAMPLES,
                    help="samples per text for the generators that draw several")
    ap.add_argument("--checkpoint", action="append", default=[], help="a trained model's checkpoint (repeatable)")
    ap.add_argument("--out", default=None,
                    help="cache root for the prepared data and the reader (default: a temporary folder)")
    ap.add_argument("--refit", action="store_true", help="fit the attribute reader even if it is cached (to time it)")
    ap.add_argument("--reader-steps", type=int, default=at.ReaderConfig().steps,
                    help="training steps of the attribute reader (fewer: a quicker, weaker reader)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {machine()}")

    data = prepare_dataset(args.data, DataConfig(image_size=args.image_size, augment_rotations=args.augment_rotations),
                           cache_root=args.out or tempfile.mkdtemp(prefix="bench-metrics-"), progress=False)
    p = make_panel(data, samples=args.samples, reader_cfg=at.ReaderConfig(steps=args.reader_steps))
    if p.attrs is not None:
        cache_dir = data.info.get("cache_dir")  # none for data built in memory: the reader is fitted every run
        key = at.reader_key(data.image_size, p.reader_cfg)
        path = Path(cache_dir) / f"{at.CACHE_NAME}-{key[:16]}.pt" if cache_dir else None
        cached = path is not None and path.exists() and not args.refit
        if path is not None and args.refit:
            path.unlink(missing_ok=True)
        load = os.getloadavg()[0]
        start, cpu = time.perf_counter(), time.process_time()
        reader(p)
        print(f"attribute reader ({data.image_size} px, {p.reader_cfg.steps} steps of {p.reader_cfg.batch_size} fresh "
              f"renders, {p.reader_cfg.threads} thread): {'loaded' if cached else 'fitted'} in "
              f"{time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU (both threads: "
              f"rendering and training), load average {load:.1f} before and {os.getloadavg()[0]:.1f} after "
              f"(cache: {path})")
        start = time.perf_counter()
        at.attribute_accuracy(reader(p), p.real, p.attrs)
        print(f"attribute accuracy of the {len(p.real)} real test images: {1e3 * (time.perf_counter() - start):.0f} ms")
    generators = GENERATORS + [Generator(f"checkpoint {_label(c)}", from_checkpoint(c), False) for c in args.checkpoint]
    start = time.perf_counter()
    rows = run_panel(p, generators)
    print(f"\n{data.info['source']}, {data.image_size} px, {args.augment_rotations} rotation(s): {len(p.real)} test "
          f"records, up to {args.samples} samples per text; panel {time.perf_counter() - start:.0f} s\n")
    print(table(rows, p))
    print("\n* = exposed: worse than the real images by at least the metric's margin. Thresholds:\n")
    print(thresholds(rows))
    missed = [r.name for r in rows if r.cheater and not r.exposed]
    print("\nevery cheater exposed" if not missed else f"\nNOT exposed by any metric: {', '.join(missed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
