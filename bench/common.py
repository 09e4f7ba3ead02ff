"""What several benches share: the tiny data of their `--quick` forms, and one logged training run.

    from common import quick_data, train_logged     # bench scripts put bench/ on sys.path (they run as scripts)
    data = quick_data(DataConfig(image_size=32))     # 40 synthetic creatures, prepared in this process
    run = train_logged("seed", (model_cfg, train_cfg, section), data, out, lambda m: f"val/l1 {m['val/l1']:.4f}")
    run.final, run.history, run.wall_s, run.checkpoint
    base = baselines(data, EvalNets.load_or_fit(data))  # the reference points every table is read against
    reference_line(base)                             # ... on one line, above the table
    headline_columns(data), cell(run.final, TEST_TYPE_ACC)   # the final metrics' columns, "mean [lo, hi]"
    quick_eval()                                     # TrainConfig fields of a --quick form's cheap final evaluation
    save_results(out / "recipes.json", base, rows, args)   # beside the machine and the command's arguments

A bench's `--quick` form runs its whole script on tiny data in seconds, so that a test runs it end to end
(tests/test_benches.py) and a refactor cannot break it unseen; its numbers measure nothing.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine import machine


def quick_data(cfg, records: int = 40):
    """The embedded synthetic set's generator, its first `records` creatures (split 32 / 4 / 4 for 40), prepared
    with DataConfig `cfg` in this process by the pipeline's own per-record functions (`prepare_in_memory`: no Ray,
    no cache)."""
    from dataclasses import replace

    from data_pipeline.prepare import prepare_in_memory
    from data_pipeline.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench-quick-") as tmp:
        data = prepare_in_memory(generate(Path(tmp) / "synthetic", records, 0), cfg)
    return replace(data, info={**data.info, "source": f"synthetic:0, its first {records} creatures (--quick)"})


def quick_eval() -> dict:
    """TrainConfig fields of a `--quick` form's final evaluation: 2 samples per text, the shortest fit of each
    evaluator network (a few reader steps, one epoch of the others): data built in memory has no cache, so every
    training run fits them again, and a quick form measures nothing."""
    return {"eval_samples": 2, "eval_fit": 0.01}


@dataclass(frozen=True)
class Run:
    final: dict  # the member's final metrics, as model.train.train returns them
    history: list[dict]  # every epoch's metrics
    wall_s: float
    checkpoint: Path  # its one-member checkpoint (model.generate.load_model reads it)


def train_logged(name: str, configs: tuple, data, out: Path, line, runtime=None) -> Run:
    """`model.train.train` of configs = (model_cfg, train_cfg, family section), as `search.space.trial_configs`
    makes them, with a progress line per epoch (`[name] epoch e/E: line(metrics)`); its checkpoint saved to
    out/checkpoint_<name>. `runtime`: a `model.train.Runtime` the caller keeps from one run to the next."""
    from model import checkpoint
    from model.train import train

    model_cfg, train_cfg, section = configs
    last = {}

    def report(metrics, state):
        last["state"] = state
        print(f"[{name}] epoch {metrics['epoch']}/{train_cfg.total_epochs}: {line(metrics)}", flush=True)

    t0 = time.perf_counter()
    final = train(model_cfg, train_cfg, data, report=report, family_cfg=section, runtime=runtime)
    wall = time.perf_counter() - t0
    ckpt = checkpoint.save(last["state"].member(0), out / f"checkpoint_{name}")
    return Run(final, last["state"].history[0], wall, ckpt)


def baselines(data, nets=None) -> dict:
    """The reference points of `model.eval.evaluator.Evaluator.baselines` (CLIP off) with the evaluator networks
    `nets` (`EvalNets`; None: the random CNN only): L1 of text-blind images, the attribute reader's ceiling and
    floor, the in-domain model's real and shuffled-text alignment and R-precision's chance, type accuracy's
    ceiling and chance, the real test images' copy rate and KID against the real validation images."""
    from model.eval.evaluator import Evaluator, split_images

    return Evaluator(data, split_images(data, "cpu"), nets=nets).baselines()


def headline_columns(data) -> list[tuple[str, str]]:
    """(column, metric) of the final metrics a bench's table shows, each with its 95% interval: text faithfulness
    (attribute accuracy on the synthetic set, else the in-domain model's alignment), R-precision, type accuracy,
    KID on random features, the copy rate and (a sampler's) diversity. model/eval/evaluator.py says what each is."""
    from model.config import (TEST_ALIGN, TEST_ATTR_ALL, TEST_COPY_RATE, TEST_DIVERSITY, TEST_KID_RANDOM, TEST_R1,
                              TEST_TYPE_ACC)

    faithful = ("attr_all", TEST_ATTR_ALL) if data.info.get("attributes") else ("indomain_align", TEST_ALIGN)
    return [faithful, ("R-prec top-1", TEST_R1), ("type acc", TEST_TYPE_ACC), ("KID random", TEST_KID_RANDOM),
            ("copy rate", TEST_COPY_RATE), ("diversity", TEST_DIVERSITY)]


def cell(metrics: dict, name: str, digits: int = 3) -> str:
    """`mean [lo, hi]` of a final metric (its 95% interval), or `-` where the metric is absent (a regressor's
    diversity, an evaluator network the dataset cannot have)."""
    if metrics.get(name) is None:
        return "-"
    return f"{metrics[name]:.{digits}f} [{metrics[f'{name}_lo']:.{digits}f}, {metrics[f'{name}_hi']:.{digits}f}]"


def reference_line(base: dict) -> str:
    """The baselines the table is read against, on one line: the real test images' own scores and chance."""
    from model.eval import alignment, attributes

    parts = []
    if attributes.BASELINE_CEILING["all"] in base:
        parts.append(f"attr_all real {base[attributes.BASELINE_CEILING['all']]:.3f}, text-blind floor "
                     f"{base[attributes.BASELINE_FLOOR['all']]:.3f}")
    if alignment.BASELINE_ALIGN_REAL in base:
        parts.append(f"indomain_align real {base[alignment.BASELINE_ALIGN_REAL]:.3f}, shuffled texts "
                     f"{base[alignment.BASELINE_ALIGN_SHUFFLED]:.3f}; R-prec top-1 real "
                     f"{base[alignment.BASELINE_R_TOP1_REAL]:.3f}, chance {base[alignment.BASELINE_R_TOP1_CHANCE]:.3f}")
    if "baseline/type_acc_ceiling" in base:
        parts.append(f"type acc real {base['baseline/type_acc_ceiling']:.3f}, "
                     f"chance {base['baseline/type_acc_chance']:.3f}")
    parts.append(f"real test images' copy rate {base['baseline/copy_rate_real']:.3f}")
    if base.get("baseline/kid_random_real_val") is not None:
        parts.append(f"KID random of real val vs real test images {base['baseline/kid_random_real_val']:.4f}")
    return "baselines: " + "; ".join(parts)


def final_metrics(final: dict) -> dict:
    """The final metrics a bench keeps in its JSON: every number with its interval, not the per-record scores'
    text (`scores/<metric>`, for paired comparisons within one search)."""
    return {k: v for k, v in final.items() if k.startswith(("test/", "val/", "train/")) and not isinstance(v, str)}


def save_results(path: Path, baselines: dict, rows: list[dict], args) -> None:
    """A bench's rows beside the baselines they are read against, the machine and the command's arguments."""
    path.write_text(json.dumps({"baselines": baselines, "rows": rows, "machine": machine(), "args": vars(args)},
                               indent=2, default=str))
    print(f"\nfigures, checkpoints and {path.name} in {path.parent}")
