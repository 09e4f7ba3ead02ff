"""Decode every record's image with Ray Data, one bad file never costing the good ones.

    from data_pipeline.pipeline import Item, run_ray, split_arrays, preprocess_loop
    items = [Item(id=1, image=png_bytes), Item(id=2, image=other_bytes)]
    pixels, errors = run_ray(items, image_size=64, rotations=8)  # {1: (8, 3, 64, 64) uint8, 2: ...}, {}
    splits = {"train": [1], "val": [2], "test": []}
    arrays = split_arrays(pixels, splits)          # train: all 8 copies, val/test: copy 0; uint8
    reference = preprocess_loop({1: png_bytes, 2: other_bytes}, splits, 64, 8)  # the plain loop
    assert all((arrays[s] == reference[s]).all() for s in splits)

Every record gets its N rotated copies inside the Ray task that decodes it; validation and test
keep only copy 0 (the image itself). That costs a few extra 64-px rotations (a few per cent of the work) and
buys a split computed after decoding, over exactly the records that loaded, so an unreadable image
never leaves a hole in the validation or test set. A record whose image does not decode comes back
in `errors` (id → reason).

Why the Ray Data plan looks the way it does (measured on 2 cores, ~900 small images, ~2 s of work):
- the records are cut into a few blocks of about equal decode cost, one Ray task each
  (`map_batches(batch_size=None)`): per-task overhead is what a finer cut would add, and the 89
  large 475-px images all sit at the end of the Pokédex by id, so cutting in id order would leave
  one task with most of the work;
- tasks return uint8 (steps 1–4 of `preprocess`), and the prepared splits stay uint8: a quarter of
  the bytes of float32 through the object store (float32 blocks cost ~0.5 s here), in the cache and
  in every trial; the scaling to [-1, 1] (step 5) happens where floats are needed (`Split.unit_images`);
- a block whose task fails (a worker crash, twice) is dropped, not fatal: its records are then run one
  Ray task each, and those that still fail come back in `errors` with the reason. Ray Data retries a
  task whose worker died forever, so a record that kills its worker every time would hang the run;
  the cap is `_capped_batch`'s (map_batches' own `max_retries`, through `**ray_remote_args`, is
  deprecated in Ray 2.60 and goes in 2.64, and no named parameter replaces it);
- Ray Data's per-operator resource reservation is switched off for this one-operator plan: it
  holds a lone map operator to half the CPUs while it ramps up, which on 2 cores means one task
  at a time (measured: 4 × 0.5 s tasks took 1.8 s with it, 1.05 s without).
"""

from __future__ import annotations

import heapq
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np

from data_pipeline.preprocess import ImageTooLarge, prepare_pixels


@dataclass(frozen=True)
class Item:
    id: int
    image: bytes  # the encoded image file


def _error(exc: Exception) -> str:
    if isinstance(exc, ImageTooLarge):
        return f"image too large: {exc}"
    return f"unreadable image: {type(exc).__name__}: {exc}"


def preprocess_batch(batch: dict[str, np.ndarray], image_size: int, rotations: int) -> dict[str, np.ndarray]:
    """The map_batches function: one output row per rotated copy, plus one row (zero image) per
    record that failed, carrying the reason in `error`. A record's rows are consecutive."""
    ids, images, errors = [], [], []
    for rid, data in zip(batch["id"], batch["image"]):
        try:
            out, error = prepare_pixels(data, image_size, rotations), ""
        except Exception as exc:  # noqa: BLE001 — whatever the decoder raises, it is this record's problem
            out, error = np.zeros((1, 3, image_size, image_size), np.uint8), _error(exc)
        ids += [int(rid)] * len(out)
        images.append(out)
        errors += [error] * len(out)
    return {
        "id": np.asarray(ids, np.int64),
        "image": np.concatenate(images) if images else np.zeros((0, 3, image_size, image_size), np.uint8),
        "error": np.asarray(errors, dtype=object),
    }


PROGRESS_EVERY_S = 10.0  # run_ray's progress line, at most this often
BLOCK_ATTEMPTS = 2  # a block's first run and one retry (a transient worker death), then its records one by one


class BlockGaveUp(RuntimeError):
    """A block's task was started BLOCK_ATTEMPTS times on this node (its worker died each time)."""


def _attempts_dir(run: str) -> str:
    return os.path.join(tempfile.gettempdir(), "pokemon_t2i-block-attempts", run)


def _start_attempt(run: str, block: int) -> bool:
    """Mark one more attempt of `block` in run `run` on this node: False once BLOCK_ATTEMPTS are marked."""
    folder = _attempts_dir(run)
    try:
        os.makedirs(folder, exist_ok=True)
        for k in range(BLOCK_ATTEMPTS):
            try:
                os.close(os.open(os.path.join(folder, f"{block}.{k}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return True
            except FileExistsError:
                continue
    except OSError:
        return True  # no writable temp folder: run the block uncapped rather than not at all
    return False


def _capped_batch(batch: dict[str, np.ndarray], fn, run: str, image_size: int, rotations: int):
    """The map_batches function: `fn` (preprocess_batch) on one block, at most BLOCK_ATTEMPTS times per node.

    Ray Data reruns a task whose worker died, without limit. Each run leaves a mark in a folder of this
    `run` on its node; once BLOCK_ATTEMPTS are there, the next run raises BlockGaveUp instead, a Python
    error that Ray does not retry, so the block is dropped (max_errored_blocks=-1) and `run_ray` runs its
    records one Ray task each. On a cluster a retry may land on another node, which counts from zero:
    BLOCK_ATTEMPTS per node at most, still bounded."""
    block = int(batch["block"][0])
    if not _start_attempt(run, block):
        raise BlockGaveUp(f"block {block} ({len(batch['id'])} records, ids {batch['id'][:5].tolist()}...) killed "
                          f"its Ray worker {BLOCK_ATTEMPTS} times: its records are retried one Ray task each")
    return fn(batch, image_size, rotations)


def preprocess_loop(images: dict[int, bytes], splits: dict[str, list[int]], image_size: int,
                    rotations: int) -> dict[str, np.ndarray]:
    """The plain single-process loop: `prepare_pixels` record by record, N copies for training,
    one otherwise (uint8). The reference the Ray pipeline is checked and timed against (on images
    that decode: a broken one raises here)."""
    out = {}
    for name, ids in splits.items():
        copies = rotations if name == "train" else 1
        arrays = [prepare_pixels(images[i], image_size, copies) for i in ids]
        out[name] = np.concatenate(arrays) if arrays else np.zeros((0, 3, image_size, image_size), np.uint8)
    return out


def split_arrays(pixels: dict[int, np.ndarray], splits: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """Per split, the records' uint8 copies (all of them for train, copy 0 otherwise) in the order
    of `splits`: the same arrays as `preprocess_loop`."""
    size = next(iter(pixels.values())).shape[-1] if pixels else 0
    out = {}
    for name, ids in splits.items():
        parts = [pixels[i] if name == "train" else pixels[i][:1] for i in ids]
        out[name] = np.concatenate(parts) if parts else np.zeros((0, 3, size, size), np.uint8)
    return out


def balanced_chunks(items: list[Item], n_chunks: int) -> list[list[Item]]:
    """Longest-processing-time-first: costliest first, each to the lightest chunk so far.
    Cost ≈ encoded bytes (decode time grows with them) + a fixed amount for resizing and rotating."""
    def cost(item: Item) -> int:
        return len(item.image) + 30_000  # resize + 8 rotations at 64 px ≈ decoding 30 kB of PNG, roughly

    heap = [(0, k) for k in range(n_chunks)]
    chunks: list[list[Item]] = [[] for _ in range(n_chunks)]
    for item in sorted(items, key=cost, reverse=True):
        load, k = heapq.heappop(heap)
        chunks[k].append(item)
        heapq.heappush(heap, (load + cost(item), k))
    return [c for c in chunks if c]


def default_num_blocks(n_items: int) -> int:
    """Two blocks per CPU of the Ray cluster, so one slow block does not leave a core idle at the
    end; more for large datasets, so a block stays a few hundred images and progress moves."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
    return max(1, min(n_items, max(2 * cpus, -(-n_items // 500))))


def run_ray(items: list[Item], image_size: int, rotations: int = 1, num_blocks: int | None = None,
            progress: bool = True) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Steps 1–4 of `preprocess` for every item with Ray Data (from_arrow → map_batches → iter_batches).
    Needs Ray initialized (`data_pipeline.ray_env.init_ray`). Returns id → (rotations, 3, S, S) uint8
    and id → reason for the records whose image failed."""
    import pyarrow as pa
    import ray

    if not items:
        return {}, {}
    chunks = balanced_chunks(items, num_blocks or default_num_blocks(len(items)))
    tables = [pa.table({"id": pa.array([it.id for it in c], pa.int64()),
                        "image": pa.array([it.image for it in c], pa.binary()),
                        "block": pa.array([k] * len(c), pa.int32())}) for k, c in enumerate(chunks)]
    run = uuid.uuid4().hex  # names this call's attempt marks (`_capped_batch`)

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.op_resource_reservation_enabled,
             ctx.max_errored_blocks)
    # The progress on the console is ours (below). Off a terminal Ray Data logs its own progress, to wherever
    # the caller sends Ray's log (prepare: a file, `ray_env.ray_logs_to`); on one it would draw bars there.
    ctx.enable_progress_bars, ctx.print_on_execution_start = progress and not sys.stdout.isatty(), progress
    ctx.op_resource_reservation_enabled = False  # see the module docstring
    ctx.max_errored_blocks = -1  # a failed block is dropped, not fatal: its records are retried below
    pixels, errors = {}, {}
    try:
        ds = ray.data.from_arrow(tables)  # one block per chunk
        ds = ds.map_batches(_capped_batch, batch_size=None, batch_format="numpy", zero_copy_batch=True,
                            fn_kwargs={"fn": preprocess_batch, "run": run, "image_size": image_size,
                                       "rotations": rotations})
        shown = time.monotonic()
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):  # blocks as they finish
            _collect(batch, pixels, errors)
            if progress and time.monotonic() - shown > PROGRESS_EVERY_S:
                print(f"  {len(pixels) + len(errors)} of {len(items)} images done", file=sys.stderr, flush=True)
                shown = time.monotonic()
    except Exception as exc:  # noqa: BLE001 — whatever broke the run, the records are retried one by one
        print(f"Ray Data run failed ({type(exc).__name__}: {str(exc)[:300]}); retrying record by record",
              file=sys.stderr, flush=True)
    finally:
        (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.op_resource_reservation_enabled,
         ctx.max_errored_blocks) = saved
        shutil.rmtree(_attempts_dir(run), ignore_errors=True)  # this node's marks; other nodes' are empty files
    lost = [it for it in items if it.id not in pixels and it.id not in errors]
    if lost:
        _one_by_one(lost, image_size, rotations, pixels, errors)
    return pixels, errors


def run_local(items: list[Item], image_size: int, rotations: int = 1,
              progress: bool = False) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """`run_ray`'s result computed in this process, record by record, without Ray: for a machine that
    has no Ray (a GPU box that only trains, see `prepare.prepare_in_memory`)."""
    pixels, errors = {}, {}
    for it in items:
        _collect(preprocess_batch(_one_record(it), image_size, rotations), pixels, errors)
    return pixels, errors


def _one_by_one(items: list[Item], image_size: int, rotations: int, pixels: dict, errors: dict) -> None:
    """The records of failed blocks, one Ray task each and no retry: a record that still fails (its
    worker crashed, say) is rejected with the reason, and the others come back."""
    import ray

    task = ray.remote(max_retries=0)(preprocess_batch)
    refs = {it.id: task.remote(_one_record(it), image_size, rotations) for it in items}
    for rid, ref in refs.items():
        try:
            _collect(ray.get(ref), pixels, errors)
        except Exception as exc:  # noqa: BLE001 — a crashed worker, a lost object: this record's failure
            errors[rid] = f"processing failed in its Ray task: {type(exc).__name__}: {str(exc)[:300]}"


def _one_record(it: Item) -> dict[str, np.ndarray]:
    """One record as a batch of `preprocess_batch`'s input."""
    return {"id": np.array([it.id], np.int64), "image": np.array([it.image], dtype=object)}


def _collect(batch: dict[str, np.ndarray], pixels: dict[int, np.ndarray], errors: dict[int, str]) -> None:
    """Cut one output block back into per-record arrays (views, no copy)."""
    ids = batch["id"]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(ids)]):
        if batch["error"][s]:
            errors[int(ids[s])] = str(batch["error"][s])
        else:
            pixels[int(ids[s])] = batch["image"][s:e]
