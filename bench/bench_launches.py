"""Launch proxy, CPU: aten ops dispatched per trained sample by one trial (K = 1) and a fused trial
(K = 4, the grid's 4 learning-rate x weight-decay points of one architecture; K = 12, those points with
3 seeds each, `--seeds 3`), eager and compiled.

    python bench/bench_launches.py [--image-size 32] [--rows 20] [--members 1 4 12] [--no-compile]
    python bench/bench_launches.py --quick            # seconds: checks the script (tests/test_benches.py)

A GPU step of this model is bound by kernel launches, which a CPU cannot show; what it can count is
the operators dispatched. Method: one epoch of `model.train.train_epoch` (after `model.train.setup`, outside
the profiler) runs twice under torch.profiler, with `rows` and 2 x `rows` training rows (batch 10, the grid's
first architecture, dropout 0.3): the difference in ops divided by the difference in trained samples
(K x rows) is the training step's cost per sample alone, the epoch's fixed work cancelling out. (Until
2026-12-06 the whole `train_members` ran under the profiler; since the final evaluation fits its networks on
the training rows, its ops no longer cancelled: the quick form's 10 and 20 rows straddled the 16 records
below which no network is fitted.) "ops" counts every aten op the profiler
records; "kernel ops" those that call no other aten op and do not merely re-view memory (on a GPU, roughly one
kernel launch each). A compiled
step runs Inductor's generated kernels, which are no aten ops: its row counts what is still
dispatched through aten (None where torch.compile cannot run here).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from machine import machine  # noqa: E402

from model.config import ModelConfig, TrainConfig  # noqa: E402
from model.train import Runtime, setup, train_epoch  # noqa: E402
from search.settings import resolve  # noqa: E402
from search.space import fused_space  # noqa: E402
from test_model import tiny_data  # noqa: E402

# Ops that only make a new view of existing memory: no kernel on a GPU.
METADATA = {"aten::view", "aten::as_strided", "aten::_unsafe_view", "aten::_reshape_alias", "aten::resolve_conj",
            "aten::resolve_neg", "aten::empty", "aten::empty_strided", "aten::t", "aten::transpose", "aten::permute",
            "aten::expand", "aten::reshape", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
            "aten::detach", "aten::alias", "aten::split", "aten::chunk", "aten::narrow", "aten::unbind",
            "aten::as_strided_", "aten::lift_fresh", "aten::resize_", "aten::flatten", "aten::contiguous",
            "aten::split_with_sizes", "aten::_has_compatible_shallow_copy_type", "aten::is_nonzero", "aten::item",
            "aten::_local_scalar_dense", "aten::result_type", "aten::to"}
# One architecture's members as the search fuses them: its 4 grid points (lr, weight_decay), and with
# --seeds 3 those 4 points x 3 seeds.
POINTS = fused_space(resolve("full", {}).grid)[1]
SEEDED = fused_space(resolve("full", {}, seeds=3).grid)[1]


def members(k: int) -> list[dict]:
    """K = 4: the grid's points; K = 12: the points with 3 seeds each; other K: the first K seeded members."""
    return POINTS[:k] if k <= len(POINTS) else SEEDED[:k]


def count(k: int, rows: int, size: int, compiled: bool) -> tuple[int, int]:
    """(aten ops, kernel ops) of one epoch's training steps of K members on `rows` training rows: model.train's
    setup outside the profiler, its train_epoch inside (the final evaluation, whose evaluator networks fit on the
    training rows, would not cancel between the two row counts)."""
    cfgs = [TrainConfig(**m, epochs=1, batch_size=10, clip_mode="off", eval_fit=0.01) for m in members(k)]
    run = setup(ModelConfig(image_size=size), cfgs, tiny_data(n_train=rows, size=size), None, None,
                Runtime(device="cpu", compile=compiled))
    if compiled:  # setup resets torch.compile's caches: a first epoch compiles, the profiled one runs the kernels
        train_epoch(run, 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_epoch(run, int(compiled))
    aten = [e for e in prof.events() if e.name.startswith("aten::")]
    leaves = [e for e in aten if e.name not in METADATA and not any(c.name.startswith("aten::") for c in e.cpu_children)]
    return len(aten), len(leaves)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rows", type=int, default=20, help="training rows of the short run (the long one has twice)")
    p.add_argument("--members", type=int, nargs="+", default=[1, 4, 12], metavar="K",
                   help="member counts to measure (default 1 4 12: one trial, the grid's points, with 3 seeds)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--quick", action="store_true", help="K = 1 and 2, eager, 10 rows (a batch): checks the script")
    args = p.parse_args(argv)
    if args.quick:
        args.members, args.rows, args.no_compile = [1, 2], 10, True
    if any(k < 1 or k > len(SEEDED) for k in args.members):
        p.error(f"--members: each K must be between 1 and {len(SEEDED)}")
    torch.set_num_threads(1)
    print(f"machine: {machine()}\n")
    out = []
    modes = (False,) if args.no_compile else (False, True)
    for k, compiled in ((k, c) for c in modes for k in args.members):
        try:
            short, long = count(k, args.rows, args.image_size, compiled), count(k, 2 * args.rows, args.image_size,
                                                                                compiled)
            samples = k * args.rows
            out.append({"k": k, "compiled": compiled, "ops": (long[0] - short[0]) / samples,
                        "leaf": (long[1] - short[1]) / samples})
        except Exception as e:  # noqa: BLE001 — torch.compile needs a working C++ toolchain; report, go on
            out.append({"k": k, "compiled": compiled, "ops": None, "leaf": None, "why": f"{type(e).__name__}: {e}"})
    base = next((r for r in out if r["k"] == 1 and not r["compiled"] and r["ops"] is not None), out[0])
    print(f"| members K | compiled | aten ops / trained sample | kernel ops / trained sample | "
          f"kernel ops vs K = {base['k']}{'' if not base['compiled'] else ' compiled'} |")
    print("|---|---|---|---|---|")
    for r in out:
        if r["ops"] is None:
            print(f"| {r['k']} | {'yes' if r['compiled'] else 'no'} | — | — | not run: {r['why'][:80]} |")
            continue
        print(f"| {r['k']} | {'yes' if r['compiled'] else 'no'} | {r['ops']:.1f} | {r['leaf']:.1f} | "
              f"{r['leaf'] / base['leaf']:.2f}x |")
    print(f"\n{args.image_size} px, batch 10, grid architecture (n_heads 2, ff_dim 512, n_layers 2), one thread; "
          f"per-sample cost from runs of {args.rows} and {2 * args.rows} training rows")
    return out


if __name__ == "__main__":
    main()
