"""Type accuracy on real data: how good is the type classifier, and what do text-blind images score?

    python bench/bench_type_classifier.py --data ../shared/datasets/pokedex --image-size 32 --augment-rotations 2 \
        --out /tmp/typeacc_cache [--cv]
    python bench/bench_type_classifier.py --quick      # seconds: checks the script (tests/test_benches.py)

Prepares (or reuses) the dataset, fits the classifier on the training split's real images (timed,
one CPU thread), then prints on the test records: the ceiling (real test images), chance (majority
type's share), and text-blind images: the mean and the per-pixel median training image, a white image
and uniform noise, which should all score near or below chance. Also the val split's accuracy and a
second `load_or_train` call, which should load, not refit. `--cv` adds 5-fold cross-validation of the L2
penalty over the training records (how ClassifierConfig.l2 was chosen, without looking at val or test).
Primary types come from data.info["primary_types"], which the data pipeline records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import quick_data  # noqa: E402
from machine import machine  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.prepare import prepare_dataset  # noqa: E402
from model.eval import type_classifier as ff  # noqa: E402
from model.files import key_hash  # noqa: E402
from search.figures import first_records  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a Pokédex-layout folder (required but with --quick)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment-rotations", type=int, default=2)
    p.add_argument("--out", default=None, help="cache root for the prepared data (default: a temporary folder)")
    p.add_argument("--cv", action="store_true",
                   help="also: 5-fold cross-validation of the L2 penalty on the training records")
    p.add_argument("--quick", action="store_true", help="40 synthetic creatures, 1 rotation, prepared in this process: "
                   "checks the script in seconds, measures nothing")
    args = p.parse_args(argv)
    if not args.data and not args.quick:
        p.error("--data is required (or --quick)")
    torch.set_num_threads(1)

    out = args.out or tempfile.mkdtemp(prefix="typeacc-")
    cfg = DataConfig(image_size=args.image_size, augment_rotations=1 if args.quick else args.augment_rotations)
    if args.quick:  # in memory: the classifier caches in --out, as a prepared dataset's does in its cache folder
        data = quick_data(cfg)
        data = replace(data, info={**data.info, "cache_dir": out})
    else:
        data = prepare_dataset(args.data, cfg, cache_root=out, progress=False)
    types = data.info["primary_types"]
    # the bench must time a fit: drop an earlier run's cached classifier (model/files.py load_or_fit's file)
    path = Path(data.info["cache_dir"]) / f"type_classifier-{key_hash(ff.cache_key(data, types))[:16]}.pt"
    path.unlink(missing_ok=True)

    start, cpu = time.perf_counter(), time.process_time()
    clf = ff.load_or_train(data, "cpu", types)
    fit_s, fit_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    start = time.perf_counter()
    ff.load_or_train(data, "cpu", types)
    load_s = time.perf_counter() - start

    labels, _ = ff.type_labels(data.test, types, clf.classes)
    val_labels, _ = ff.type_labels(data.val, types, clf.classes)
    n = len(data.test)
    train = images_of(data.train)
    shape = (n, *train.shape[1:])
    blind = {
        "mean training image": train.mean(0, keepdim=True).expand(shape),
        "median training image": train.median(0, keepdim=True).values.expand(shape),
        "white image": torch.ones(shape),
        "uniform noise": torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 2 - 1,
    }
    base = ff.type_baselines(clf, data, types)
    print(f"machine: {machine()}\n{data.info['source']} at {data.image_size} px, {cfg.augment_rotations} rotations: "
          f"{len(data.train)} training images, {len(clf.classes)} types, {n} test records")
    print(f"fit {fit_s:.2f} s wall ({fit_cpu_s:.2f} s CPU; wall > CPU means a busy machine), "
          f"cached load {load_s:.3f} s ({path})")
    rows = [("ceiling: real test images", base[ff.BASELINE_CEILING]),
            ("chance: majority type's share", base[ff.BASELINE_CHANCE]),
            ("real val images", ff.type_accuracy(clf, images_of(data.val), val_labels))]
    rows += [(name, ff.type_accuracy(clf, images, labels)) for name, images in blind.items()]
    for name, acc in rows:
        print(f"  {name:<40} {acc:.3f}")
    cv = cross_validate(data, types, (1e-4, 1e-3, 1e-2, 1e-1)) if args.cv else {}
    for l2, acc in cv.items():
        print(f"  5-fold CV on training records, l2 {l2:<8g} {acc:.3f}")
    return {"accuracy": dict(rows), "fit_s": fit_s, "load_s": load_s, "cache": str(path), "cv": cv}


def images_of(split) -> torch.Tensor:
    """A split's images as the classifier reads them: (N, 3, S, S) float32 in [-1, 1]."""
    return torch.as_tensor(split.unit_images(), dtype=torch.float32)


def cross_validate(data, types: dict, l2s, folds: int = 5) -> dict:
    """{l2: mean held-out accuracy} over folds of the training records (a record's rotated copies stay together;
    each held-out record is scored once, on its first copy): selects settings without touching val or test."""
    labels, classes = ff.type_labels(data.train, types)
    images = images_of(data.train)
    ids = torch.as_tensor(data.train.ids)
    unique = ids.unique()
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(0))
    fold_of = dict(zip(unique.tolist(), (order % folds).tolist()))
    fold = torch.tensor([fold_of[i] for i in ids.tolist()])
    first = torch.zeros(len(ids), dtype=torch.bool)
    first[first_records(data.train, len(unique))] = True
    out = {}
    for l2 in l2s:
        accs = []
        for k in range(folds):
            clf = ff.fit(images[fold != k], labels[fold != k], classes, ff.ClassifierConfig(l2=l2))
            held = (fold == k) & first
            accs.append(ff.type_accuracy(clf, images[held], labels[held]))
        out[l2] = sum(accs) / folds
    return out


if __name__ == "__main__":
    main()
