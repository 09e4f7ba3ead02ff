"""Build (or reuse) the preprocessed dataset every trial trains on; also the `prepare` CLI.

    from data_pipeline.prepare import prepare_dataset
    data = prepare_dataset("../shared/datasets/pokedex")    # PreparedData, cached on disk
    data = prepare_dataset(None)                            # the embedded synthetic default (and says so)
    data = prepare_dataset(path, DataConfig(image_size=32), cache_root="/tmp/cache", progress=False)

    python -m data_pipeline.prepare --data ../shared/datasets/pokedex [--out DIR] [--image-size 32 ...]
    python -m data_pipeline.prepare                         # prepares the synthetic default

`data` is a Pokédex folder, a Complete-Pokédex csv folder, a parquet file or folder (see `sources`),
or None / "synthetic" / "synthetic:<seed>" for the generated default ("synthetic:<seed>:<records>": another
size). The flow:
read + validate the fields (`sources`; rejects with reasons) → Ray Data decode/alpha→white/resize/
rotate (`pipeline`; undecodable images rejected) → split the records that loaded by id →
PreparedData.save into the cache (uint8 images; `Split.unit_images()` scales them to [-1, 1]).

The cache is <cache_root>/prepared/<layout>-<fingerprint[:16]>/ with train/val/test.parquet and
info.json (what `PreparedData.load` reads: provenance, the split ids, `primary_types` = {"<id>": type}, and
`attributes` = {"<id>": the synthetic creature's drawn attributes}, empty for real data), plus summary.json
(counts, and `ambiguous_images`: each record with two image files, the one used and the ones ignored) and
rejected.jsonl (one line per rejected record: id, file, field, reason). The fingerprint hashes every byte read from the source,
the DataConfig and PIPELINE_VERSION: the same inputs and settings reuse the folder, anything else
builds a new one. cache_root is `--out`, else $POKEMON_T2I_CACHE, else ~/.cache/pokemon_t2i.
A cache folder that does not load as written (a file missing or damaged, rows that disagree with
info.json) is rebuilt, saying so; a build that dies leaves a `*.tmp-*` folder that the next build
removes; a cache that cannot be written is an error (CacheWriteError), not a silent miss.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from data_pipeline.config import DataConfig
from data_pipeline.dataset import SPLITS, CacheDamaged, PreparedData, Split, train_copies
from data_pipeline.preprocess import enriched_text, paraphrases, rotation_angles, split_ids
from data_pipeline.sources import Record, Rejection, detect_layout, keep_first_loaded, read_source

PIPELINE_VERSION = 3  # bump whenever a change to the code changes what a prepared dataset holds
SYNTHETIC_RECORDS = 300


STALE_TMP_SECONDS = 24 * 3600  # a build folder this old is abandoned, whoever started it


class NoUsableRecords(ValueError):
    """Every record of the source was rejected."""


class CacheWriteError(OSError):
    """The prepared dataset could not be moved into its cache folder."""


def default_cache_root() -> Path:
    return Path(os.environ.get("POKEMON_T2I_CACHE") or Path.home() / ".cache" / "pokemon_t2i")


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def _synthetic(data) -> tuple[int, int] | None:
    """(seed, records) if `data` asks for the synthetic set (None, "synthetic", "synthetic:<seed>",
    "synthetic:<seed>:<records>"; SYNTHETIC_RECORDS unless given), else None."""
    if data is None:
        return 0, SYNTHETIC_RECORDS
    text = str(data)
    if Path(text).exists() or not (text == "synthetic" or text.startswith("synthetic:")):
        return None  # a real path, even one called "synthetic"
    seed, _, records = (text.partition(":")[2] or "0").partition(":")
    if not seed.lstrip("-").isdigit():
        raise ValueError(f"'synthetic:<seed>' needs an integer seed, got {text!r}")
    if records and not (records.isdigit() and int(records) >= 10):
        raise ValueError(f"'synthetic:<seed>:<records>' needs at least 10 records (an integer), got {text!r}")
    return int(seed), int(records or SYNTHETIC_RECORDS)


def synthetic_source(data, cache_root: Path) -> tuple[Path, str] | None:
    """(its folder, its source name) if `data` asks for the synthetic set, generated there if not yet; else None."""
    synthetic = _synthetic(data)
    if synthetic is None:
        return None
    from data_pipeline.synthetic import generate

    seed, records = synthetic
    path = generate(Path(cache_root) / "synthetic" / f"seed{seed}-n{records}", records, seed)
    _announce_synthetic(seed, records, path)
    return path, f"synthetic:{seed}" + ("" if records == SYNTHETIC_RECORDS else f":{records}")


def _announce_synthetic(seed: int, records: int, folder: Path) -> None:
    bar = "=" * 78
    print(f"{bar}\nNOTE: no dataset given, using the embedded SYNTHETIC default (seed {seed}, "
          f"{records} generated creatures, in {folder}).\nResults on it say nothing about "
          f"real Pokémon: pass --data PATH (or data=PATH) for real data. info['synthetic'] = True.\n{bar}",
          file=sys.stderr, flush=True)


def fingerprint(content_hash: str, cfg: DataConfig) -> str:
    key = {"source": content_hash, "settings": asdict(cfg), "pipeline": PIPELINE_VERSION}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def record_text(r: Record, enriched: bool) -> str:
    return enriched_text(r.description, r.classification, r.primary, r.secondary) if enriched else r.description


def train_texts(r: Record, cfg: DataConfig) -> list[str]:
    """A training record's texts: its own (`record_text`), then cfg.paraphrases - 1 rewordings of it."""
    return paraphrases(r.description, r.classification, r.primary, r.secondary, cfg.paraphrases, cfg.enriched_text)


def summary_line(info: dict) -> str:
    c = info["counts"]
    what = "reused" if info.get("cache_reused") else "prepared"
    rejected = f"{c['rejected']} rejected (see {Path(info['cache_dir']) / 'rejected.jsonl'})" if c["rejected"] else "0 rejected"
    synthetic = " [SYNTHETIC default]" if info["synthetic"] else ""
    p = info["settings"].get("paraphrases", 1)
    paraphrased = f", each with {p} texts" if p > 1 else ""
    return (f"{what} {c['loaded']} of {c['found']} records from {info['source']}{synthetic}: {rejected}"
            f"{_ambiguous_note(info)}; "
            f"split train {c['train']} / val {c['val']} / test {c['test']} ({c['train_rows']} training images, "
            f"{info['settings']['augment_rotations']} rotations each{paraphrased}); cache {info['cache_dir']}")


def _ambiguous_note(info: dict) -> str:
    """The summary's clause for records with two image files (1.png and 001.png), or ""."""
    ambiguous = info.get("ambiguous_images") or []  # absent from caches built before it was recorded
    if not ambiguous:
        return ""
    a = ambiguous[0]
    return (f"; {len(ambiguous)} record(s) with two image files, e.g. id {a['id']}: used {a['used']}, not "
            f"{', '.join(a['ignored'])} (the layout's own spelling, else the shortest name; every one in "
            f"{Path(info['cache_dir']) / 'summary.json'})")


def prepare_dataset(data: str | Path | None, cfg: DataConfig = DataConfig(), cache_root: str | Path | None = None,
                    progress: bool = True) -> PreparedData:
    """The preprocessed dataset for `data` and `cfg`, from the cache when it is already there.

    Raises FileNotFoundError / ValueError for a path that is not a dataset, and NoUsableRecords
    when every record is rejected. Starts a local Ray (`init_ray`) if a build needs it and Ray is
    not running yet.
    """
    rotation_angles(cfg.augment_rotations)  # validate settings before reading anything
    if cfg.image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {cfg.image_size}")
    cache_root = Path(cache_root) if cache_root is not None else default_cache_root()

    synthetic = synthetic_source(data, cache_root)
    if synthetic is not None:
        path, source_name = synthetic
    else:
        path = Path(data).expanduser()
        source_name = str(path.resolve())

    detect_layout(path)  # a path that is no dataset fails here, before any progress line: one error line
    _log(progress, f"reading {path} ...")
    src = read_source(path)
    key = fingerprint(src.content_hash, cfg)
    cache_dir = cache_root / "prepared" / f"{src.layout}-{key[:16]}"

    if (cache_dir / "info.json").is_file():
        try:
            prepared = PreparedData.load(cache_dir)
        except CacheDamaged as exc:
            print(f"the cached dataset is damaged, rebuilding it: {exc}", file=sys.stderr, flush=True)
            shutil.rmtree(cache_dir)
        else:
            # the same bytes may sit at another path now: describe this run's source, not the first one's
            prepared.info.update(source=source_name, synthetic=synthetic is not None, cache_dir=str(cache_dir),
                                 cache_reused=True)
            print(summary_line(prepared.info), flush=True)
            return prepared

    info = {**_info(src, source_name, cfg, synthetic=synthetic is not None), "cache_dir": str(cache_dir),
            "cache_reused": False, "ray_log": str(cache_root / "logs" / f"prepare-{cache_dir.name}.log")}
    prepared, rejected = _build(src.records, src.rejected, cfg, info, progress, cache_dir)
    _write_cache(prepared, rejected, cache_dir)
    print(summary_line(prepared.info), flush=True)
    return prepared


def prepare_in_memory(data: str | Path, cfg: DataConfig = DataConfig()) -> PreparedData:
    """What `prepare_dataset` returns for a dataset path, built in this process without Ray and without
    the cache (so without pyarrow): for a machine that only trains, such as a GPU box with torch and
    transformers alone (bench/bench_gpu_grid.py). Slower than Ray Data on many cores; same arrays."""
    from data_pipeline.pipeline import run_local

    src = read_source(Path(data).expanduser())
    info = {**_info(src, str(Path(data).resolve()), cfg, synthetic=False), "built_in_memory": True}
    prepared, _ = _build(src.records, src.rejected, cfg, info, False, None, decode=run_local)
    return prepared


def _info(src, source_name: str, cfg: DataConfig, synthetic: bool) -> dict:
    """What a prepared dataset says of itself, before the build adds its splits and counts."""
    return {"source": source_name, "layout": src.layout, "fingerprint": fingerprint(src.content_hash, cfg),
            "settings": asdict(cfg), "synthetic": synthetic, "pipeline_version": PIPELINE_VERSION,
            "rotation_angles": rotation_angles(cfg.augment_rotations), "ambiguous_images": src.ambiguous_images}


def _build(records: list[Record], rejected: list[Rejection], cfg: DataConfig, info: dict, progress: bool,
           cache_dir: Path | None, decode=None) -> tuple[PreparedData, list[Rejection]]:
    """Decode, split and scale the records; `decode` is `pipeline.run_ray` (Ray Data) unless given."""
    from data_pipeline.pipeline import Item, split_arrays

    found = len(records) + len(rejected)
    if not records:
        _fail(rejected, found, info, cache_dir)

    what = f"{len(records)} images (size {cfg.image_size}, {cfg.augment_rotations} rotations of each training image)"
    items = [Item(k, r.image) for k, r in enumerate(records)]  # keyed by position, not id: copies of one id are
    start = time.perf_counter()                                # all decoded, and the first that loads is kept
    if decode is None:  # Ray Data, its log lines in info["ray_log"] rather than around ours
        from data_pipeline.pipeline import run_ray
        from data_pipeline.ray_env import init_ray, ray_logs_to

        _log(progress, f"preprocessing {what} with Ray Data (Ray's own log: {info['ray_log']}) ...")
        with ray_logs_to(Path(info["ray_log"]), f"preparing {info['source']} into {cache_dir}"):
            init_ray()
            decoded, errors = run_ray(items, cfg.image_size, cfg.augment_rotations, progress=progress)
    else:
        _log(progress, f"preprocessing {what} in this process ...")
        decoded, errors = decode(items, cfg.image_size, cfg.augment_rotations, progress=progress)
    _log(progress, f"preprocessed in {time.perf_counter() - start:.1f} s")
    rejected = rejected + [Rejection(records[k].id, records[k].file, "image", f"{reason} ({records[k].where})")
                           for k, reason in sorted(errors.items())]
    keep, duplicates = keep_first_loaded(records, set(decoded))
    rejected += duplicates
    by_id = {records[k].id: records[k] for k in keep}
    pixels = {records[k].id: decoded[k] for k in keep}
    if not pixels:
        _fail(rejected, found, info, cache_dir)

    info["splits"] = split_ids(pixels, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    # for per-type metrics (type accuracy): every loaded record's primary type, JSON keys being strings
    info["primary_types"] = {str(i): by_id[i].primary for name in SPLITS for i in info["splits"][name]}
    # for attribute accuracy: what each synthetic creature was drawn from (its text states them); real data has none
    info["attributes"] = {str(i): by_id[i].attributes for name in SPLITS for i in info["splits"][name]
                          if by_id[i].attributes is not None}
    arrays = split_arrays(pixels, info["splits"])
    built = {}
    for name in SPLITS:
        ids = info["splits"][name]
        if name == "train":  # each rotated copy once per paraphrase: rows (rotation, paraphrase) per record
            own = {i: train_texts(by_id[i], cfg) for i in ids}  # the same texts for every rotated copy
            texts = [t for i in ids for _ in range(cfg.augment_rotations) for t in own[i]]
            built[name] = Split(np.repeat(np.asarray(ids, np.int64), train_copies(asdict(cfg))),
                                texts, np.repeat(arrays[name], cfg.paraphrases, axis=0))
        else:
            built[name] = Split(np.asarray(ids, np.int64), [record_text(by_id[i], cfg.enriched_text) for i in ids],
                                arrays[name])
    info["counts"] = {"found": found, "loaded": len(pixels), "rejected": len(rejected),
                      **{name: len(info["splits"][name]) for name in SPLITS}, "train_rows": len(built["train"])}
    return PreparedData(info=info, **built), rejected


def _fail(rejected: list[Rejection], found: int, info: dict, cache_dir: Path | None) -> None:
    """Write the report where the cache would have gone (if any) and raise with the first few reasons."""
    where = ""
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / "rejected.jsonl").write_text("".join(r.to_json() + "\n" for r in rejected), encoding="utf-8")
        where = f" Full list: {cache_dir / 'rejected.jsonl'}"
    first = "; ".join(f"id {r.id} {r.field}: {r.reason}" for r in rejected[:3])
    raise NoUsableRecords(f"no usable records in {info['source']}: all {found} were rejected (e.g. {first}).{where}")


def _write_cache(prepared: PreparedData, rejected: list[Rejection], cache_dir: Path) -> None:
    """Write into a temporary folder, then rename: a reader never sees a half-written cache, and of
    two processes building the same cache, the second simply keeps the first one's. A build that
    dies leaves its temporary folder behind; the next build removes those (`_remove_stale_builds`)."""
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(cache_dir.parent)
    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        prepared.save(tmp)
        (tmp / "rejected.jsonl").write_text("".join(r.to_json() + "\n" for r in rejected), encoding="utf-8")
        summary = {**prepared.info["counts"], "source": prepared.info["source"],
                   "synthetic": prepared.info["synthetic"], "fingerprint": prepared.info["fingerprint"],
                   "settings": prepared.info["settings"], "cache_dir": str(cache_dir),
                   "ambiguous_images": prepared.info["ambiguous_images"], "ray_log": prepared.info["ray_log"]}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True), encoding="utf-8")
        if cache_dir.exists() and not (cache_dir / "info.json").exists():
            shutil.rmtree(cache_dir)  # the report of an earlier failed build, or a cache missing its info.json
        tmp.rename(cache_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            PreparedData.load(cache_dir)
            return  # another process finished the same cache first: theirs holds the same data
        except CacheDamaged:
            pass
        raise CacheWriteError(f"could not write the prepared dataset to {cache_dir}: {exc}. Check the space and "
                              f"permissions there, or pass another cache root (--out / $POKEMON_T2I_CACHE)") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_builds(folder: Path) -> None:
    """Remove `*.tmp-*` build folders left by builds that died: their process is gone (this machine)
    or they are older than STALE_TMP_SECONDS (another machine sharing the cache, or an older name)."""
    host = socket.gethostname()
    for tmp in folder.glob("*.tmp-*"):
        tmp_host, pid = None, None
        parts = tmp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)
        if len(parts) == 3 and parts[1].isdigit():
            tmp_host, pid = parts[0], int(parts[1])
        try:
            age = time.time() - tmp.stat().st_mtime
        except OSError:
            continue  # already gone
        if (tmp_host == host and not _process_alive(pid)) or age > STALE_TMP_SECONDS:
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.prepare", description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="dataset folder or file; omit for the synthetic default "
                        "('synthetic:<seed>' picks another seed, 'synthetic:<seed>:<records>' another size)")
    parser.add_argument("--out", default=None, help="cache root (default $POKEMON_T2I_CACHE or ~/.cache/pokemon_t2i)")
    parser.add_argument("--quiet", action="store_true", help="no progress output, only the summary line")
    for f in dataclasses.fields(DataConfig):  # the DataConfig field names are the flag names, as in search.grid
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    cfg = DataConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataConfig)})
    try:
        prepare_dataset(args.data, cfg, cache_root=args.out, progress=not args.quiet)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2  # a user error (a bad --data path or layout, no usable record), as search.grid says it
    return 0


if __name__ == "__main__":
    sys.exit(main())
