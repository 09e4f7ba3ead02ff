"""Samples/s of one trial through `model.train.train`, per epoch: run it in two checkouts to compare loops.

    git worktree add /tmp/old 8a22673                     # the plain loop before the member axis
    (cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/this/bench/bench_loop_speed.py 64 old)
    python bench/bench_loop_speed.py 64 new
    python bench/bench_loop_speed.py 32 new --quick       # seconds: checks the script (tests/test_benches.py)

100 training rows of tests/test_model.py's tiny_data at the given size, batch 10, heads 2 / ff 512 /
layers 2, frozen encoder, 3 epochs, one thread (--quick: 20 rows, 1 epoch). Imports `model` from the
working directory's checkout.
"""

import argparse
import os
import sys

sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from machine import machine  # noqa: E402
from model.config import SAMPLES_PER_S, ModelConfig, TrainConfig  # noqa: E402
from model.train import train  # noqa: E402
from test_model import tiny_data  # noqa: E402

try:  # where the trial runs: a Runtime since model/ became one family per file (issue 23)
    from model.train import Runtime  # noqa: E402

    ON_CPU = {"runtime": Runtime(device="cpu")}
except ImportError:  # an older checkout, the one this bench compares against: a device keyword
    ON_CPU = {"device": "cpu"}


def main(argv=None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("size", type=int, help="image size (px)")
    p.add_argument("label", help="what the output line calls this checkout")
    p.add_argument("--quick", action="store_true", help="20 rows, 1 epoch: checks the script, measures nothing")
    args = p.parse_args(argv)
    rows, epochs = (20, 1) if args.quick else (100, 3)
    torch.set_num_threads(1)
    speeds = []
    train(ModelConfig(image_size=args.size), TrainConfig(epochs=epochs, clip_mode="off"),
          tiny_data(n_train=rows, size=args.size), report=lambda m, s: speeds.append(m[SAMPLES_PER_S]), **ON_CPU)
    print(f"{args.label}: samples/s per epoch {[round(x, 1) for x in speeds]}  ({machine()})")
    return speeds


if __name__ == "__main__":
    main()
