"""The evaluator networks of model/eval on one dataset: fit times, what real and text-blind images score, the
cross-validated choice of type classifier, and the minimum detectable difference at the test split's size.

    python bench/bench_eval_models.py --data ../shared/datasets/pokedex --image-size 32 --augment-rotations 2
    python bench/bench_eval_models.py                      # the embedded synthetic set
    python bench/bench_eval_models.py --folds 5            # also: 5-fold CV of the type classifiers (slow)
    python bench/bench_eval_models.py --quick              # seconds: checks the script (tests/test_benches.py)

Prints the machine, then:
- fits, each timed in wall and CPU seconds with the load average beside them (a fresh cache folder, so they fit;
  a second call must load): the in-domain text-image model (model/eval/alignment.py), the CNN type classifier
  (model/eval/type_accuracy.py), the histogram classifier it replaced (model/eval/type_classifier.py);
- on the test records, each with its 95% interval: the real images' in-domain alignment with their own texts and
  with a derangement of them, their R-precision against chance, type accuracy of the real images and of a flat
  disc in each type's mean colour (the colour gamer that beats the histogram classifier) under each classifier,
  KID and precision/coverage of the real validation images against the real test images (real vs real: ~0) and
  of the discs;
- memorisation (copy rate, nearest/second-nearest ratio) of the real test images and of training images (a
  copier), and diversity of one real image per text plus pixel noise (a collapsed sampler) and of random
  training images (a text-blind one), in both feature spaces;
- the minimum detectable difference between two rows at the test split's size (2.80 x sqrt(2) x the per-record
  SD / sqrt(n): two independent rows; a paired comparison of rows on the same texts and seeds does better);
- with --folds: k-fold cross-validation by record on the training split of the histogram, CNN and zero-shot
  classifiers (each fold fits its own in-domain model);
- with --cv-rotations K: K-fold cross-validation by record of the in-domain model trained with and without the
  rotated copies (held-out records' unrotated images against their own texts: R-precision among the fold's
  texts, and the alignment gap to a derangement of them).

--quick: 40 synthetic creatures prepared in this process (bench/common.py's quick_data, no Ray) and every
evaluator network fitted for a moment (model.eval.evaluator.scaled(cfg, 0.01)); its numbers measure nothing.
`main` returns {"rows": {name: Interval or number}, "test_records": n}: the rows it printed.

Measured (AMD EPYC, 2 cores shared with other jobs at load average 5-12, one torch thread; CPU seconds are the
budget's measure, wall seconds the contention's): the in-domain model fits in 29 s CPU on the synthetic set and
80-85 s CPU on the real Pokédex (257-335 s wall), the CNN type classifier in 22-30 s and 82 s CPU. On the real
test split (90 records): in-domain alignment 0.113 [0.078, 0.145] vs shuffled texts 0.005 [-0.035, 0.043];
R-precision top-1 0.044, top-5 0.167 (chance 0.011, 0.056); type accuracy of the real images / of a flat disc in
the type's mean colour: CNN 0.311 / 0.000, zero-shot 0.200 / 0.189, histogram 0.344 / 0.267 (chance 0.167);
minimum detectable difference at 90 records: alignment 0.068, top-1 0.087, top-5 0.157, type accuracy 0.19-0.20,
KID 0.134 (in-domain) and 0.0079 (random features). The module docstrings of model/eval/ hold the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import quick_data  # noqa: E402
from machine import machine  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.prepare import prepare_dataset  # noqa: E402
from model.eval import type_classifier as ff  # noqa: E402
from model.eval import alignment as al  # noqa: E402
from model.eval import features as fe  # noqa: E402
from model.eval import fidelity as fd  # noqa: E402
from model.eval import intervals as iv  # noqa: E402
from model.eval import type_accuracy as ta  # noqa: E402
from model.eval.evaluator import scaled  # noqa: E402

Z = 1.959964  # the normal quantile of a 95% interval


def timed(what: str, fn):
    """fn() with its wall and CPU seconds and the load average before and after, printed."""
    load, wall, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"  {what:<44} {wall:7.1f} s wall {cpu:7.1f} s CPU   load {load:.1f} -> {os.getloadavg()[0]:.1f}", flush=True)
    return out


def discs(data, types: dict) -> np.ndarray:
    """(R, 3, S, S) a flat disc (radius S/3, centred, on white) in the mean colour of the non-white pixels of the
    training images of each test record's primary type (bench/bench_metrics.py's colour gamer)."""
    train = torch.as_tensor(data.train.unit_images())
    fg = (1 - train.amin(1)) / 2 > ff.ClassifierConfig().white_margin  # (N, S, S)
    train_types = np.array(ta.type_names(data.train, types))
    colours = {t: train[train_types == t].permute(1, 0, 2, 3)[:, fg[train_types == t]].mean(1)
               for t in set(train_types)}
    everyone = train.permute(1, 0, 2, 3)[:, fg].mean(1)
    s = data.image_size
    yy, xx = torch.meshgrid(torch.arange(s) + 0.5, torch.arange(s) + 0.5, indexing="ij")
    mask = (yy - s / 2) ** 2 + (xx - s / 2) ** 2 <= (s / 3) ** 2
    out = torch.ones(len(data.test), 3, s, s)
    for r, t in enumerate(ta.type_names(data.test, types)):
        out[r][:, mask] = colours.get(t, everyone)[:, None]
    return out.numpy()


def cross_validate_rotations(data, folds: int) -> dict:
    """{rotations: {"r5": Interval, "r1": Interval, "gap": Interval}} over held-out training records."""
    pooler = al.TextPooler(al.AlignConfig().text_encoder, al.AlignConfig().max_tokens)
    out = {}
    for rotations in (True, False):
        cfg = dataclasses.replace(al.AlignConfig(), rotations=rotations)
        r1, r5, gap = [], [], []
        for f, held in enumerate(ta.folds_by_record(data.train.ids, folds)):
            model = al.fit(ta._rows(data.train, np.setdiff1d(np.unique(data.train.ids), held)), cfg, pooler=pooler)
            test = ta._first_rows(ta._rows(data.train, held))
            hits = al.r_precision_hits(model, test.images, test.texts)
            r1.append(hits[1][:, 0])
            r5.append(hits[5][:, 0])
            shuffled = [test.texts[j] for j in al.derangement(len(test.texts))]
            gap.append((al.alignment_scores(model, test.images, test.texts)
                        - al.alignment_scores(model, test.images, shuffled))[:, 0])
            print(f"    rotations={rotations} fold {f + 1}/{folds}: R@1 {r1[-1].mean():.3f} R@5 {r5[-1].mean():.3f} "
                  f"(chance {5 / len(test.texts):.3f}) gap {gap[-1].mean():.3f}", flush=True)
        out[rotations] = {k: iv.bootstrap_interval(np.concatenate(v).astype(np.float64))
                          for k, v in (("r1", r1), ("r5", r5), ("gap", gap))}
    return out


def row(name: str, value, rows: dict | None = None) -> None:
    """One line of the table, kept in `rows` (what `main` returns) when given."""
    if rows is not None:
        rows[name] = value
    if isinstance(value, iv.Interval):
        print(f"  {name:<52} {value.mean:8.4f}  [{value.lo:8.4f}, {value.hi:8.4f}]")
    else:
        print(f"  {name:<52} {value:8.4f}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=None, help="a dataset path; omit for the embedded synthetic set")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--augment-rotations", type=int, default=2)
    p.add_argument("--folds", type=int, default=0, help="k-fold CV of the type classifiers on the training split")
    p.add_argument("--cv-rotations", type=int, default=0,
                   help="K-fold CV of the in-domain model with vs without the rotated copies")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared 2-core machine)")
    p.add_argument("--quick", action="store_true", help="40 synthetic creatures prepared in this process, every "
                   "evaluator network fitted for a moment: checks the script in seconds, measures nothing")
    args = p.parse_args(argv)
    if args.quick and (args.data or args.folds or args.cv_rotations):
        p.error("--quick runs the main form on its own synthetic creatures: no --data, --folds or --cv-rotations")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")

    if args.quick:
        data = quick_data(DataConfig(image_size=32, augment_rotations=2))
        fits = (scaled(al.AlignConfig(), 0.01), scaled(ta.TypeCNNConfig(), 0.01))
    else:
        data = prepare_dataset(args.data, DataConfig(image_size=args.image_size,
                                                     augment_rotations=args.augment_rotations), progress=False)
        fits = (al.AlignConfig(), ta.TypeCNNConfig())
    with tempfile.TemporaryDirectory(prefix="eval-models-") as fresh:  # an empty cache: the first calls fit
        return run(args, dataclasses.replace(data, info={**data.info, "cache_dir": fresh}), *fits)


def run(args, data, align_cfg: al.AlignConfig, cnn_cfg: ta.TypeCNNConfig) -> dict:
    """Everything after the data, with the configs of the in-domain model and of the CNN type classifier."""
    types = data.info["primary_types"]
    print(f"{data.info['source']}: {len(set(data.train.ids))} training records ({len(data.train)} images), "
          f"{len(data.test)} test records, {data.image_size} px; {args.threads} torch thread(s)")

    rows = {}
    if args.cv_rotations:
        print(f"{args.cv_rotations}-fold cross-validation of the in-domain model's rotated copies:")
        for rotations, result in cross_validate_rotations(data, args.cv_rotations).items():
            for name, value in result.items():
                row(f"rotations={rotations}: held-out {name}", value, rows)
        return {"rows": rows, "test_records": len(data.test)}

    print("fits (a fresh cache, then a cached load):")
    clip = timed("in-domain text-image model: fit", lambda: al.load_or_fit(data, align_cfg))
    timed("in-domain text-image model: cached load", lambda: al.load_or_fit(data, align_cfg))
    cnn = timed("CNN type classifier: fit", lambda: ta.load_or_fit_cnn(data, cfg=cnn_cfg))
    hist = ta.HistogramTypes(timed("histogram type classifier: fit", lambda: ff.train_classifier(data, types)))
    zero = ta.ZeroShotTypes(clip, cnn.classes)

    test, n = data.test, len(data.test)
    refs = al.baselines(clip, test)
    disc = discs(data, types)
    print(f"test records ({n}), mean [95% interval]:")
    for name, value in refs.items():
        row(name, value, rows)
    for name, clf in (("cnn", cnn), ("zeroshot", zero), ("histogram", hist)):
        y = ta.labels(clf, test, types)
        row(f"type accuracy, {name}: real test images", ta.type_accuracy(clf, test.images, y), rows)
        row(f"type accuracy, {name}: flat disc in the type's mean colour", ta.type_accuracy(clf, disc, y), rows)
    row("type accuracy: chance (majority type's share)",
        max(np.mean(np.array(ta.type_names(test, types)) == t) for t in set(ta.type_names(test, types))), rows)
    features = {"indomain": fd.ClipFeatures(clip), "random": fd.RandomFeatures()}
    fidelity = {}
    if len(data.val) == n:
        for who, images in (("real val images", data.val.images), ("flat discs", disc)):
            fidelity[who] = fd.metrics(test.images, images, features)
            for name, value in fidelity[who].items():
                if "recall" not in name and "density" not in name:
                    row(f"{name}: {who}", value, rows)

    print("memorisation and diversity in feature space (model/eval/features.py):")
    gen = torch.Generator().manual_seed(0)
    real = torch.as_tensor(test.unit_images())
    pool = torch.as_tensor(data.train.unit_images())
    copies = pool[torch.randint(0, len(pool), (n,), generator=gen)]
    collapsed = real[:, None].expand(n, 4, *real.shape[1:])
    noisy = (collapsed + 0.2 * torch.randn(collapsed.shape, generator=gen)).clamp(-1, 1)
    blind = pool[torch.randint(0, len(pool), (n * 4,), generator=gen)].view(n, 4, *real.shape[1:])
    for fname, feature in features.items():
        ref = fe.TrainingReference.of(feature, data.train)
        for who, images in (("real test images", real), ("training images (a copier)", copies)):
            for name, value in fe.memorisation(feature, images, ref).items():
                row(f"{name} ({fname}): {who}", value, rows)
        for who, images in (("one real image per text + noise 0.2", noisy), ("random training images", blind)):
            row(f"diversity ({fname}): {who}", fe.diversity(feature, images), rows)

    print(f"minimum detectable difference between two independent rows at {n} records "
          "(80% power, alpha 0.05 two-sided):")
    shuffled = [test.texts[j] for j in al.derangement(n)]
    per_record = {al.TEST_ALIGN: al.alignment_scores(clip, test.images, test.texts),
                  "indomain_align gap to shuffled texts": al.alignment_scores(clip, test.images, test.texts)
                  - al.alignment_scores(clip, test.images, shuffled)}
    hits = al.r_precision_hits(clip, test.images, test.texts)
    per_record[al.TEST_R_TOP1], per_record[al.TEST_R_TOP5] = hits[1], hits[5]
    for name, clf in (("cnn", cnn), ("zeroshot", zero), ("histogram", hist)):
        per_record[f"{ta.TEST_TYPE_ACC} ({name})"] = ta.hits(clf, test.images, ta.labels(clf, test, types))
    for name, scores in per_record.items():
        row(name, iv.mdd_of_scores(scores.astype(np.float64)), rows)
    for name, value in fidelity.get("real val images", {}).items():
        if name.startswith("test/kid"):  # the half-sample spread is the KID's standard error
            row(f"{name} (from its interval)", 2.80 * np.sqrt(2) * (value.hi - value.lo) / (2 * Z), rows)

    if args.folds:
        print(f"{args.folds}-fold cross-validation by record on the training split (held-out records' unrotated "
              "images; each fold fits its own classifiers):")
        for name, result in ta.cross_validate(data, args.folds, log=lambda line: print(f"    {line}", flush=True)).items():
            row(f"CV type accuracy, {name} (per fold {', '.join(f'{a:.2f}' for a in result['per_fold'])})",
                result["interval"], rows)
    return {"rows": rows, "test_records": n}


if __name__ == "__main__":
    main()
