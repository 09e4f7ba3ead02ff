"""Samples/s of one trial through `model.train.train`, per epoch: run it in two checkouts to compare loops.

    git worktree add /tmp/old 8a22673                     # the plain loop before the member axis
    (cd /tmp/old && PYTHONPATH=/tmp/old python /path/to/this/bench/bench_loop_speed.py 64 old)
    python bench/bench_loop_speed.py 64 new

100 training rows of tests/test_model.py's tiny_data at the given size, batch 10, heads 2 / ff 512 /
layers 2, frozen encoder, 3 epochs, one thread. Imports `model` from the working directory's checkout.
"""

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

torch.set_num_threads(1)
size, label = int(sys.argv[1]), sys.argv[2]
speeds = []
train(ModelConfig(image_size=size), TrainConfig(epochs=3, clip_mode="off"), tiny_data(n_train=100, size=size),
      report=lambda m, s: speeds.append(m[SAMPLES_PER_S]), device="cpu")
print(f"{label}: samples/s per epoch {[round(x, 1) for x in speeds]}  ({machine()})")
