"""What several benches share: the tiny data of their `--quick` forms, and one logged training run.

    from common import quick_data, train_logged     # bench scripts put bench/ on sys.path (they run as scripts)
    data = quick_data(DataConfig(image_size=32))     # 40 synthetic creatures, prepared in this process
    run = train_logged("seed", (model_cfg, train_cfg, section), data, out, lambda m: f"val/l1 {m['val/l1']:.4f}")
    run.final, run.history, run.wall_s, run.checkpoint
    base = baselines(data)                           # the text-blind reference points every table is read against
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


def baselines(data) -> dict:
    """The reference points of `model.eval.evaluator.Evaluator.baselines` (CLIP off): L1 and retrieval of
    text-blind images, type accuracy's ceiling, chance and oracle, the real test images' memorisation and diversity."""
    from model.eval.evaluator import Evaluator, split_images

    return Evaluator(data, split_images(data, "cpu")).baselines()


def save_results(path: Path, baselines: dict, rows: list[dict], args) -> None:
    """A bench's rows beside the baselines they are read against, the machine and the command's arguments."""
    path.write_text(json.dumps({"baselines": baselines, "rows": rows, "machine": machine(), "args": vars(args)},
                               indent=2, default=str))
    print(f"\nfigures, checkpoints and {path.name} in {path.parent}")
