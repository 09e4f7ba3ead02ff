"""Images/second of the Ray Data preprocessing pipeline against a plain single-process loop.

    python bench/bench_data_pipeline.py                      # the shared Pokédex, 64 px, 8 rotations
    python bench/bench_data_pipeline.py --repeats 7 --data PATH
    python bench/bench_data_pipeline.py --quick              # 60 synthetic records, 1 repeat, no calibration:
                                                             # seconds, checks the script (tests/test_data_prepare.py)

Run from the repository root (Ray workers import `data_pipeline` from the driver's working directory).

Both paths turn the same records into the same uint8 split arrays, the prepared dataset's format
(checked equal, element for element): the loop calls `prepare_pixels` record by record (N rotated
copies for training records, one otherwise); Ray Data decodes, resizes and rotates in parallel tasks
(`run_ray`) and `split_arrays` gathers the result per split. Reading the files and starting Ray are
outside the timed region (both paths need the bytes; Ray starts once per process), and are
reported on their own, as is the first Ray run, which also starts and warms the worker processes.
The two paths alternate, so a change in the machine's load hits both alike; the table shows the
median and best of the repeats, the load average and the processes' niceness, since other work
may share the machine and Ray runs its workers at nice 15 (RAY_worker_niceness=0 changes that).

Measured 2026-11-28, when both paths still produced float32 (since PIPELINE_VERSION 2 neither
scales), on a shared 2-core AMD EPYC VM (KVM) while other jobs kept the load average
at 3-5, 7 repeats, five runs: median ratio 0.82x-1.20x (the machine's own 2-process speedup swung
between 0.8x and 2x in the same minutes), best-time ratio 1.00x-1.28x; medians loop 1.51-1.61 s,
Ray Data 1.29-1.96 s for 898 images (560-600 vs 460-700 images/s); arrays equal in every repeat. Ray's
worker niceness (15 by default, 0 with RAY_worker_niceness=0) made no consistent difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.pipeline import Item, preprocess_loop, run_ray, split_arrays  # noqa: E402
from data_pipeline.preprocess import split_ids  # noqa: E402
from data_pipeline.ray_env import init_ray  # noqa: E402
from data_pipeline.sources import read_source  # noqa: E402
from machine import machine  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "pokedex"


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def parallel_headroom(n: int = 2_000_000) -> float:
    """Speedup two processes get over one on a fixed pure-Python task right now: what the machine
    (and whoever else is using it) leaves for any 2-way parallel code, Ray or not."""
    import multiprocessing

    t = time.perf_counter()
    _spin(n), _spin(n)
    serial = time.perf_counter() - t
    with multiprocessing.get_context("fork").Pool(2) as pool:
        pool.map(_spin, [n, n])  # warm the pool
        t = time.perf_counter()
        pool.map(_spin, [n, n])
        parallel = time.perf_counter() - t
    return serial / parallel


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="dataset (any layout data_pipeline reads; default: the shared "
                        "Pokédex, with --quick 60 generated synthetic records)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=DataConfig.image_size)
    parser.add_argument("--augment-rotations", type=int, default=DataConfig.augment_rotations)
    parser.add_argument("--num_blocks", type=int, default=None, help="Ray Data blocks (default: 2 per CPU)")
    parser.add_argument("--quick", action="store_true", help="60 records, 1 repeat, no parallel-headroom calibration")
    args = parser.parse_args(argv)

    if args.data is None and args.quick:
        from data_pipeline.synthetic import generate

        tmp = tempfile.TemporaryDirectory(prefix="bench-data-")  # removed when main returns
        args.data = str(generate(Path(tmp.name) / "synthetic", 60, 0))
    args.data = args.data or str(DEFAULT_DATA)
    if not Path(args.data).exists():
        raise SystemExit(f"no dataset at {args.data}; pass --data PATH")
    src = read_source(args.data)
    records = list({r.id: r for r in reversed(src.records)}.values())[::-1]  # first copy of each id
    records = records[:60] if args.quick else records
    repeats = 1 if args.quick else args.repeats
    size, rotations = args.image_size, args.augment_rotations
    images = {r.id: r.image for r in records}
    items = [Item(r.id, r.image) for r in records]
    cfg = DataConfig()
    splits = split_ids(images, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    load_at_start, where = load_average(), machine()
    # before Ray starts (forking a process that runs Ray's threads is unsafe); quick runs skip it,
    # as they may run inside a process where Ray is already up
    headroom = None if args.quick else parallel_headroom()

    t = time.perf_counter()
    init_ray()
    t_init = time.perf_counter() - t
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 0))
    worker_nice = ray.get(ray.remote(lambda: os.nice(0)).remote())

    def ray_path():
        pixels, errors = run_ray(items, size, rotations, num_blocks=args.num_blocks, progress=False)
        if errors:
            raise SystemExit(f"{len(errors)} images failed to decode, e.g. {next(iter(errors.items()))}")
        return split_arrays(pixels, splits)

    t = time.perf_counter()
    ray_path()
    t_first = time.perf_counter() - t

    loop_times, ray_times, equal = [], [], True
    for _ in range(repeats):
        t = time.perf_counter()
        reference = preprocess_loop(images, splits, size, rotations)
        loop_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        got = ray_path()
        ray_times.append(time.perf_counter() - t)
        equal &= all(got[s].shape == reference[s].shape and np.array_equal(got[s], reference[s]) for s in splits)
        del reference, got

    n = len(records)
    rows = {s: len(ids) * (rotations if s == "train" else 1) for s, ids in splits.items()}
    loop_med, ray_med = statistics.median(loop_times), statistics.median(ray_times)
    result = {"images": n, "loop_s": loop_med, "ray_s": ray_med, "loop_images_per_s": n / loop_med,
              "ray_images_per_s": n / ray_med, "ratio": loop_med / ray_med, "ratio_best": min(loop_times) / min(ray_times), "arrays_equal": equal,
              "ray_init_s": t_init, "ray_first_run_s": t_first, "ray_worker_nice": worker_nice,
              "parallel_headroom": headroom}

    print(f"\nData pipeline benchmark: {n} images from {args.data} → {size} px, {rotations} rotations "
          f"(output rows train {rows['train']} / val {rows['val']} / test {rows['test']})")
    print(f"machine: {where}\nload average {load_at_start} at start → {load_average()} at end; Ray {ray.__version__} "
          f"with {cpus} CPUs")
    print(f"loop process nice {os.nice(0)}, Ray workers nice {worker_nice} (Ray's default is 15, so on a busy "
          "machine its workers yield to everything else; RAY_worker_niceness=0 levels them with the loop)")
    if headroom is not None:
        print(f"2-process speedup on a plain CPU task, measured just before: {headroom:.2f}x "
              "(the ceiling for any 2-way parallel code at this load)")
    print(f"{repeats} alternating repeats; reading the files and starting Ray are not timed\n")
    print("| path                         | median s | best s | images/s (median) |")
    print("|------------------------------|---------:|-------:|------------------:|")
    print(f"| plain loop, 1 process        | {loop_med:8.2f} | {min(loop_times):6.2f} | {n / loop_med:17.0f} |")
    print(f"| Ray Data, {cpus} CPUs             | {ray_med:8.2f} | {min(ray_times):6.2f} | {n / ray_med:17.0f} |")
    print(f"\nratio Ray Data / plain loop (images/s): {result['ratio']:.2f}x on medians, "
          f"{result['ratio_best']:.2f}x on best times (the least disturbed run of each)")
    print(f"arrays checked equal (train, val, test, every repeat): {'yes' if equal else 'NO'}")
    print(f"one-off, not in the ratio: ray.init {t_init:.1f} s; first Ray run incl. worker start {t_first:.1f} s")
    return result


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out["arrays_equal"] else 1)
