"""The Ray Data pipeline end to end: odd and broken input, the cache, the CLI, loopback-only Ray.

One local Ray instance (2 CPUs) serves the whole module.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import ray  # imported before data_pipeline on purpose: init_ray must still keep Ray on loopback

from data_pipeline.config import DataConfig
from data_pipeline.dataset import PreparedData
from data_pipeline.pipeline import Item, preprocess_loop, run_ray, split_arrays
from data_pipeline.prepare import NoUsableRecords, main, prepare_dataset, prepare_in_memory
from data_pipeline.preprocess import enriched_text
from data_pipeline.ray_env import init_ray
from e2e import descendants

REPO = Path(__file__).resolve().parents[1]
SMALL = DataConfig(image_size=16, augment_rotations=4, val_fraction=0.2, test_fraction=0.2)
RAY_FORWARDED = re.compile(r"^(\x1b\[[0-9;]*m)*\((raylet\b|.*?\bpid=\d+)")  # "(MapWorker(MapBatches(f)) pid=7)" too


def ours(text: str) -> list[str]:
    """The lines our code printed. Ray's driver forwards its daemons' and workers' lines to the same streams,
    prefixed "(raylet)" or "(pid=...)", whenever they arrive: after a test kills a worker, Ray's note of the
    death can land in the next test's capture (it did in CI)."""
    return [line for line in text.strip().splitlines() if not RAY_FORWARDED.match(line)]


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    init_ray(num_cpus=2)
    yield started
    if started:
        ray.shutdown()


DEFAULT_WORKER = str(Path(ray.__file__).parent / "_private" / "workers" / "default_worker.py")


def test_local_ray_listens_on_loopback_only(local_ray):
    if not local_ray:
        pytest.skip("Ray was already running when this module started; its processes are not ours to inspect")
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    try:
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"`ss` unavailable: {exc}")
    ours = {os.getpid(), *descendants(os.getpid())}  # this process and the Ray processes it started
    listening = [line.split()[3] for line in out.splitlines() if any(f"pid={p}," in line for p in ours)]
    assert len(listening) >= 2, out  # at least the GCS and the raylet
    for address in listening:
        host = address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
        assert host != "*" and ipaddress.ip_address(host).is_loopback, f"Ray listens on {address}"
    # No worker process prestarted (data_pipeline/ray_env.py): Ray's default starts one per CPU when a driver
    # connects, within a second of ray.init (no task has run here yet to start one).
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        commands = descendants(os.getpid()).values()
        workers = [c for c in commands if c.startswith("ray::IDLE") or c.split(" ")[1:2] == [DEFAULT_WORKER]]
        assert workers == [], workers
        time.sleep(0.2)


def test_ray_pipeline_equals_plain_loop(local_ray, datafx):
    """...and uses no deprecated Ray API: run_ray would hide a deprecated call turned into an error behind
    its record-by-record fallback, so the warnings are recorded and none may be a DeprecationWarning."""
    rng = np.random.default_rng(0)
    images = {i: datafx.encode(rng.integers(0, 256, (30 + i, 30 + i, 4), dtype=np.uint8)) for i in range(1, 10)}
    images[10] = datafx.png((10, 200, 30), mode="RGB", fmt="JPEG")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Ray's own bug, not our call (ray-project/ray#65302): DataContext() warns about three of its own
        # default fields, once, when the first Ray Data call in a process creates it.
        warnings.filterwarnings("ignore", r"`(use_push_based_shuffle|use_polars|use_arrow_tensor_v2)` is deprecated",
                                DeprecationWarning, "ray.data.context")
        pixels, errors = run_ray([Item(i, b) for i, b in images.items()] + [Item(99, b"broken")], 16, rotations=4,
                                 num_blocks=3, progress=False)
    deprecated = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if issubclass(w.category, DeprecationWarning)]
    assert deprecated == []
    assert set(pixels) == set(images) and list(errors) == [99] and "unreadable image" in errors[99]
    splits = {"train": [1, 2, 3, 4, 5, 6], "val": [7, 8], "test": [9, 10]}
    got, want = split_arrays(pixels, splits), preprocess_loop(images, splits, 16, 4)
    for name in splits:
        assert got[name].dtype == np.uint8 and got[name].shape == want[name].shape
        np.testing.assert_array_equal(got[name], want[name])
    assert got["train"].shape == (24, 3, 16, 16) and got["val"].shape == (2, 3, 16, 16)


def test_in_memory_build_without_ray_equals_the_cached_one(local_ray, tmp_path, datafx):
    """prepare_in_memory (a GPU box with no Ray or pyarrow) gives exactly prepare_dataset's data,
    bad records included."""
    folder, _ = _odd_and_broken_pokedex(tmp_path / "dex", datafx)
    cached = prepare_dataset(folder, SMALL, cache_root=tmp_path / "cache", progress=False)
    local = prepare_in_memory(folder, SMALL)
    for name in ("train", "val", "test"):
        a, b = cached.split(name), local.split(name)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.images, b.images)
        assert a.texts == b.texts
    for key in ("fingerprint", "splits", "primary_types", "attributes", "counts"):
        assert local.info[key] == cached.info[key], key
    assert cached.info["attributes"] == {}  # real data states no attributes


def test_worker_crash_rejects_that_record_and_keeps_the_rest(local_ray, datafx, monkeypatch):
    """A record whose decoding kills the worker process: its block fails (after Ray's retry), the block's
    records are retried one by one, and only the crashing one is reported, with the reason."""
    from data_pipeline import pipeline

    real = pipeline.preprocess_batch

    def crashing(batch, image_size, rotations):  # nested, so Ray ships it to the workers by value
        if any(bytes(b) == b"CRASH" for b in batch["image"]):
            os._exit(1)
        return real(batch, image_size, rotations)

    monkeypatch.setattr(pipeline, "preprocess_batch", crashing)
    items = [Item(i, datafx.png((10 * i, 100, 100, 255))) for i in range(1, 7)] + [Item(99, b"CRASH")]
    pixels, errors = run_ray(items, 8, rotations=1, num_blocks=2, progress=False)
    assert sorted(pixels) == [1, 2, 3, 4, 5, 6] and list(errors) == [99]
    assert "processing failed in its Ray task" in errors[99] and "Crash" in errors[99]


def _odd_and_broken_pokedex(directory: Path, datafx) -> tuple[Path, dict]:
    """Ids 1-8 load (every odd mode), 11-18 are broken in one way each."""
    rec, png, encode = datafx.pokedex_record, datafx.png, datafx.encode
    from PIL import Image

    palette = Image.new("P", (20, 20), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    good = {
        1: png(),                                                        # RGBA
        2: png((10, 200, 30), mode="RGB"),                               # RGB
        3: encode(palette, transparency=0),                              # P with transparency
        4: png((90, 128), mode="LA"),                                    # LA
        5: png(77, mode="L"),                                            # L
        6: encode(np.full((20, 20), 40000, np.uint16)),                  # 16-bit grey
        7: png((10, 200, 30), mode="RGB", fmt="JPEG"),                   # JPEG bytes behind a .png name
        8: png((10, 200, 30, 255), size=(2000, 2000)),                   # large
    }
    intact = png(size=(40, 40))
    records = [rec(i, types=("Fire",) if i % 2 else ("Grass", "Poison")) for i in good]
    records += [rec(11), rec(12), rec(13), rec(14),                     # truncated, garbage, empty file, missing file
                rec(15, description=""), rec(16, type=[]),               # blank description, no type
                {k: v for k, v in rec(17).items() if k != "id"}, rec(1, description="Again.")]  # no id, duplicate
    images = {f"{i:03d}.png": b for i, b in good.items()}
    images.update({"011.png": intact[: len(intact) // 2], "012.png": b"\x89PNG but not really", "013.png": b"",
                   "015.png": png(), "016.png": png()})
    expected_rejections = {(11, "image"), (12, "image"), (13, "image"), (14, "image"), (15, "description"),
                           (16, "type"), (None, "id"), (1, "id")}
    return datafx.write_pokedex(directory, records, images), expected_rejections


def test_prepare_bad_and_odd_input_end_to_end(local_ray, tmp_path, datafx, capsys):
    folder, expected = _odd_and_broken_pokedex(tmp_path / "dex", datafx)
    data = prepare_dataset(folder, SMALL, cache_root=tmp_path / "cache", progress=False)
    info = data.info
    cache_dir = Path(info["cache_dir"])

    # every broken record reported with id, file, field, reason; every good one kept
    lines = [json.loads(line) for line in (cache_dir / "rejected.jsonl").read_text().splitlines()]
    assert {(r["id"], r["field"]) for r in lines} == expected
    assert all(r["file"] and r["reason"] for r in lines)
    assert all(r["file"].endswith(f"{r['id']:03d}.png") and "unreadable image" in r["reason"]
               for r in lines if r["id"] in (11, 12, 13))
    assert info["counts"] == {"found": 16, "loaded": 8, "rejected": 8, "train": 4, "val": 2, "test": 2, "train_rows": 16}
    printed = ours(capsys.readouterr().out)
    assert printed == [f"prepared 8 of 16 records from {folder.resolve()}: 8 rejected (see "
                               f"{cache_dir / 'rejected.jsonl'}); split train 4 / val 2 / test 2 (16 training "
                               f"images, 4 rotations each); cache {cache_dir}"]
    summary = json.loads((cache_dir / "summary.json").read_text())
    assert {k: summary[k] for k in ("loaded", "rejected", "train", "val", "test")} == {
        "loaded": 8, "rejected": 8, "train": 4, "val": 2, "test": 2}

    # the split: disjoint, complete, recorded; train holds the rotated copies, val/test do not
    split_sets = [set(info["splits"][s]) for s in ("train", "val", "test")]
    assert set().union(*split_sets) == set(range(1, 9)) and sum(map(len, split_sets)) == 8
    assert data.train.images.shape == (16, 3, 16, 16) and len(data.val) == 2 and len(data.test) == 2
    assert data.train.ids.tolist() == [i for i in info["splits"]["train"] for _ in range(4)]
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == np.uint8
        unit = split.unit_images()
        assert unit.dtype == np.float32 and -1 <= unit.min() and unit.max() <= 1
        np.testing.assert_allclose(unit, split.images.astype(np.float64) / 127.5 - 1, atol=1e-6)

    # texts: enriched, one or two types
    row = {i: t for i, t in zip(data.val.ids.tolist() + data.train.ids.tolist(), data.val.texts + data.train.texts)}
    for i, text in row.items():
        types = ("Fire", None) if i % 2 else ("Grass", "Poison")
        assert text == enriched_text(f"Creature number {i} naps in the sun.", "Seed Pokémon", *types)

    # the odd modes came out as the expected colours (16-bit grey 40000 → 156; P index 1 → green)
    ids = data.train.ids.tolist() + data.val.ids.tolist() + data.test.ids.tolist()
    imgs = np.concatenate([data.train.images, data.val.images, data.test.images])
    centre = {i: imgs[ids.index(i), :, 8, 8].tolist() for i in range(1, 9)}
    assert centre[5] == [77, 77, 77] and centre[6] == [156, 156, 156] and centre[3] == [10, 200, 30]

    assert info["source"] == str(folder.resolve()) and info["synthetic"] is False
    assert info["settings"] == asdict(SMALL) and len(info["fingerprint"]) == 64
    again = PreparedData.load(cache_dir)
    np.testing.assert_array_equal(again.train.images, data.train.images)
    assert again.train.texts == data.train.texts

    # each loaded record's primary type, for per-type metrics, kept in info.json
    types = {str(i): "Fire" if i % 2 else "Grass" for i in range(1, 9)}
    assert info["primary_types"] == types and again.info["primary_types"] == types


def test_duplicate_id_keeps_the_first_copy_that_decodes(local_ray, tmp_path, datafx):
    """Copy 1 of id 2 does not decode: copy 2 is kept (not lost as a 'duplicate'); of id 3 both decode."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    red, green, blue = datafx.png((200, 0, 0, 255)), datafx.png((0, 200, 0, 255)), datafx.png((0, 0, 200, 255))
    ids = [1, 2, 2, 3, 3, 4, 5]
    images = [red, b"not an image", green, blue, red, red, red]
    pq.write_table(pa.table({"id": ids, "name": [f"M{k}" for k in range(7)], "description": ["Text."] * 7,
                             "primary_type": ["Fire"] * 7, "classification": ["X Pokémon"] * 7, "image": images}),
                   tmp_path / "mons.parquet")
    data = prepare_dataset(tmp_path / "mons.parquet", SMALL, cache_root=tmp_path / "cache", progress=False)
    assert data.info["counts"]["loaded"] == 5 and data.info["counts"]["found"] == 7
    rows = {int(i): img for split in (data.train, data.val, data.test) for i, img in zip(split.ids, split.images)}
    assert rows[2][:, 8, 8].tolist() == [0, 200, 0] and rows[3][:, 8, 8].tolist() == [0, 0, 200]
    lines = [json.loads(line) for line in (Path(data.info["cache_dir"]) / "rejected.jsonl").read_text().splitlines()]
    assert {(r["id"], r["field"]) for r in lines} == {(2, "image"), (3, "id")}
    dup = next(r for r in lines if r["field"] == "id")
    assert "row 3 of mons.parquet" in dup["reason"] and "row 4 of mons.parquet" in dup["reason"]
    assert "row 1 of mons.parquet" in next(r for r in lines if r["field"] == "image")["reason"]


def test_cache_reused_then_rebuilt_on_change(local_ray, tmp_path, make_pokedex, datafx, monkeypatch):
    folder, cache = make_pokedex(8), tmp_path / "cache"
    first = prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
    assert first.info["cache_reused"] is False
    parquet = Path(first.info["cache_dir"]) / "train.parquet"
    stamp = parquet.stat().st_mtime_ns

    def no_ray(*args, **kwargs):
        raise AssertionError("a cached dataset must not be preprocessed again")
    monkeypatch.setattr("data_pipeline.pipeline.run_ray", no_ray)
    second = prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
    assert second.info["cache_reused"] is True and second.info["fingerprint"] == first.info["fingerprint"]
    assert parquet.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(second.train.images, first.train.images)
    assert second.info["splits"] == first.info["splits"]  # the split is identical across runs
    assert second.info["primary_types"] == first.info["primary_types"] == {str(i): "Grass" for i in range(1, 9)}
    monkeypatch.undo()

    changed_setting = prepare_dataset(folder, DataConfig(**{**asdict(SMALL), "augment_rotations": 2}),
                                      cache_root=cache, progress=False)
    assert changed_setting.info["cache_reused"] is False and changed_setting.info["cache_dir"] != first.info["cache_dir"]
    assert len(changed_setting.train) == 2 * changed_setting.info["counts"]["train"]
    assert changed_setting.info["splits"] == first.info["splits"]  # rotations do not move the split

    (folder / "images" / "thumbnails" / "003.png").write_bytes(datafx.png((1, 2, 3, 255)))
    changed_source = prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
    assert changed_source.info["cache_reused"] is False
    assert changed_source.info["fingerprint"] != first.info["fingerprint"]


def _damage_missing_split(cache_dir: Path) -> None:
    (cache_dir / "val.parquet").unlink()


def _damage_truncated_split(cache_dir: Path) -> None:
    data = (cache_dir / "train.parquet").read_bytes()
    (cache_dir / "train.parquet").write_bytes(data[: len(data) // 2])


def _damage_info(cache_dir: Path) -> None:
    (cache_dir / "info.json").write_text('{"settings": {"image_si')


def _damage_row_count(cache_dir: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(cache_dir / "test.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), cache_dir / "test.parquet")


def test_damaged_cache_is_detected_and_rebuilt(local_ray, tmp_path, make_pokedex, capsys):
    from data_pipeline.dataset import CacheDamaged

    folder, cache = make_pokedex(8), tmp_path / "cache"
    first = prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
    cache_dir = Path(first.info["cache_dir"])
    for damage in (_damage_missing_split, _damage_truncated_split, _damage_info, _damage_row_count):
        damage(cache_dir)
        with pytest.raises(CacheDamaged):
            PreparedData.load(cache_dir)
        capsys.readouterr()
        again = prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
        assert again.info["cache_reused"] is False, damage.__name__
        assert "damaged, rebuilding" in capsys.readouterr().err
        np.testing.assert_array_equal(again.test.images, first.test.images)
        assert PreparedData.load(cache_dir).info["counts"] == first.info["counts"]  # whole again


def test_stale_build_folders_are_removed(local_ray, tmp_path, make_pokedex):
    import socket

    folder, cache = make_pokedex(6), tmp_path / "cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    prepared = cache / "prepared"
    stale = prepared / f"pokedex-0123456789abcdef.tmp-{host}-{dead.pid}-deadbeef"  # its process is gone
    old = prepared / "pokedex-0123456789abcdef.tmp-1a2b3c4d"  # an older name, two days old
    live = prepared / f"pokedex-fedcba9876543210.tmp-{host}-{os.getpid()}-0badf00d"  # a build still running
    for d in (stale, old, live):
        (d / "x").mkdir(parents=True)
    os.utime(old, (os.path.getmtime(old) - 2 * 86400,) * 2)
    prepare_dataset(folder, SMALL, cache_root=cache, progress=False)
    assert not stale.exists() and not old.exists() and live.exists()


def test_failed_cache_rename_is_reported(local_ray, tmp_path, make_pokedex, monkeypatch):
    import errno

    from data_pipeline.prepare import CacheWriteError

    real_rename = Path.rename

    def refuse(self, target):
        if ".tmp-" in self.name:
            raise OSError(errno.EACCES, "Permission denied", str(target))
        return real_rename(self, target)
    monkeypatch.setattr(Path, "rename", refuse)
    cache = tmp_path / "cache"
    with pytest.raises(CacheWriteError, match="could not write the prepared dataset to .*Permission denied"):
        prepare_dataset(make_pokedex(6), SMALL, cache_root=cache, progress=False)
    assert list((cache / "prepared").iterdir()) == []  # neither a cache nor a leftover build folder


def test_a_record_with_two_image_files_says_which_it_used(local_ray, tmp_path, make_pokedex, datafx, capsys):
    """001.png (the Pokédex's own spelling) and 1.png side by side: the prepared image is 001.png's, and
    the summary line, summary.json and info.json say so, on the build and on a reuse of the cache."""
    folder = make_pokedex(8)
    (folder / "images" / "thumbnails" / "1.png").write_bytes(datafx.png((0, 0, 0, 255)))  # 001.png is not black
    want = {"id": 1, "used": "001.png", "ignored": ["1.png"]}
    for reused in (False, True):
        data = prepare_dataset(folder, SMALL, cache_root=tmp_path / "cache", progress=False)
        line = capsys.readouterr().out
        assert data.info["cache_reused"] is reused and data.info["ambiguous_images"] == [want]
        assert "1 record(s) with two image files, e.g. id 1: used 001.png, not 1.png" in line
    summary = json.loads((Path(data.info["cache_dir"]) / "summary.json").read_text())
    assert summary["ambiguous_images"] == [want] and summary["loaded"] == 8
    split = next(data.split(s) for s in ("train", "val", "test") if 1 in data.split(s).ids)
    image = split.images[list(split.ids).index(1)]
    np.testing.assert_array_equal(image[:, 8, 8], [20, 100, 200])  # 001.png's colour (make_pokedex), not black


def test_zero_usable_records_is_a_clear_error(local_ray, tmp_path, datafx):
    rec = datafx.pokedex_record
    text_broken = datafx.write_pokedex(tmp_path / "a", [rec(1, description=""), rec(2, type=[])], {})
    with pytest.raises(NoUsableRecords, match="all 2 were rejected"):
        prepare_dataset(text_broken, SMALL, cache_root=tmp_path / "cache", progress=False)
    image_broken = datafx.write_pokedex(tmp_path / "b", [rec(1), rec(2)], {"001.png": b"x", "002.png": b""})
    with pytest.raises(NoUsableRecords, match="rejected.jsonl") as err:
        prepare_dataset(image_broken, SMALL, cache_root=tmp_path / "cache", progress=False)
    assert "unreadable image" in str(err.value)


def test_cli_prepares_and_reports(local_ray, tmp_path, datafx, capsys):
    folder, expected = _odd_and_broken_pokedex(tmp_path / "dex", datafx)
    out = tmp_path / "out"
    assert main(["--data", str(folder), "--out", str(out), "--image-size", "8", "--augment-rotations", "2",
                 "--no-enriched-text", "--quiet"]) == 0
    printed = ours(capsys.readouterr().out)
    assert len(printed) == 1 and "8 of 16 records" in printed[0] and "8 rejected" in printed[0]
    (cache_dir,) = (out / "prepared").iterdir()
    summary = json.loads((cache_dir / "summary.json").read_text())
    assert (summary["loaded"], summary["rejected"], summary["settings"]["image_size"]) == (8, 8, 8)
    assert summary["settings"]["enriched_text"] is False
    assert len((cache_dir / "rejected.jsonl").read_text().splitlines()) == 8
    assert PreparedData.load(cache_dir).val.texts[0].startswith("Creature number")
    capsys.readouterr()
    assert main(["--data", str(tmp_path / "missing"), "--out", str(out)]) == 2  # a user error, as search.grid
    err = ours(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith("error: ") and "missing" in err[0]  # one line naming the path


def test_synthetic_default_says_so(local_ray, tmp_path, capsys):
    data = prepare_dataset(None, DataConfig(image_size=8, augment_rotations=1), cache_root=tmp_path, progress=False)
    assert data.info["synthetic"] is True and data.info["source"] == "synthetic:0"
    assert "SYNTHETIC" in capsys.readouterr().err
    assert data.info["counts"]["loaded"] == 300 and data.info["counts"]["rejected"] == 0
    assert "It is of" in data.train.texts[0]
    # every record carries the attributes it was drawn from, as the generator wrote them
    entries = json.loads((tmp_path / "synthetic" / "seed0-n300" / "pokedex.json").read_text())
    assert data.info["attributes"] == {str(e["id"]): e["attributes"] for e in entries}
    again = PreparedData.load(data.info["cache_dir"])  # and the cache keeps them
    assert again.info["attributes"] == data.info["attributes"]


@pytest.mark.slow
def test_cli_subprocess_synthetic_default(tmp_path):
    """The real entry point, in its own process with its own Ray: no --data → the synthetic default. The
    console carries our progress and summary and none of Ray's log lines; those are in the file the
    progress line names (Ray Data logs its progress there too, stdout being no terminal here)."""
    env = {**os.environ, "POKEMON_T2I_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "data_pipeline.prepare", "--image-size", "8",
                          "--augment-rotations", "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "SYNTHETIC" in run.stderr and "[SYNTHETIC default]" in run.stdout
    (cache_dir,) = (tmp_path / "prepared").iterdir()
    summary = json.loads((cache_dir / "summary.json").read_text())
    assert summary["synthetic"] is True and summary["loaded"] == 300
    assert (cache_dir / "rejected.jsonl").read_text() == ""

    log = tmp_path / "logs" / f"prepare-{cache_dir.name}.log"
    assert f"preprocessing 300 images (size 8, 1 rotations of each training image) with Ray Data (Ray's own " \
           f"log: {log}) ..." in run.stderr.splitlines() and summary["ray_log"] == str(log)
    ray_line = re.compile(r"\t(INFO|WARNING) \S+\.py:\d+ -- ")  # Ray's format: "<time>\tINFO file.py:12 -- ..."
    assert not [line for line in (run.stdout + run.stderr).splitlines() if ray_line.search(line)], run.stderr
    logged = log.read_text(encoding="utf-8")
    assert "streaming_executor.py" in logged and "Starting execution of Dataset" in logged
    assert "logging_progress.py" in logged and "execution finished" in logged


def test_ray_log_lines_go_to_the_file_and_errors_to_the_console_too(tmp_path):
    """ray_logs_to, in this process: Ray's INFO and WARNING records reach the file only, ERROR ones both,
    and after it the console handlers are as before."""
    import io
    import logging

    import ray.data  # noqa: F401 — sets up the "ray.data" logger's handlers
    from ray._private.log import PlainRayHandler

    from data_pipeline.ray_env import ray_logs_to

    # Ray's console handlers hold the stderr of when they were made (pytest's, not capsys'): read them here
    screen = io.StringIO()
    consoles = [h for name in ("ray", "ray.data") for h in logging.getLogger(name).handlers
                if isinstance(h, PlainRayHandler)]
    assert len(consoles) == 2  # one each
    streams = [h.setStream(screen) for h in consoles]
    data, core = logging.getLogger("ray.data.test_logs"), logging.getLogger("ray.test_logs")
    try:
        with ray_logs_to(tmp_path / "logs" / "ray.log", "a test"):
            data.info("data-info")
            data.warning("data-warning")
            core.warning("core-warning")
            data.error("data-error")
        data.info("after-info")
    finally:
        for handler, stream in zip(consoles, streams):
            handler.setStream(stream)
    console, logged = screen.getvalue(), (tmp_path / "logs" / "ray.log").read_text()
    assert "data-error" in console and "after-info" in console
    assert not any(word in console for word in ("data-info", "data-warning", "core-warning"))
    assert logged.startswith("===== ") and " a test\n" in logged.splitlines(keepends=True)[0]
    assert all(word in logged for word in ("data-info", "data-warning", "core-warning", "data-error"))
    assert "after-info" not in logged


def test_real_pokedex(local_ray, shared_pokedex, tmp_path):
    data = prepare_dataset(shared_pokedex, DataConfig(image_size=16, augment_rotations=2),
                           cache_root=tmp_path, progress=False)
    c = data.info["counts"]
    assert (c["loaded"], c["rejected"], c["train"], c["val"], c["test"]) == (898, 0, 718, 90, 90)
    texts = dict(zip(np.concatenate([data.train.ids, data.val.ids, data.test.ids]).tolist(),
                     data.train.texts + data.val.texts + data.test.texts))
    assert texts[1] == ("Bulbasaur can be seen napping in bright sunlight. There is a seed on its back. By soaking "
                        "up the sun’s rays, the seed grows progressively larger. This Pokémon is classified as a "
                        "Seed Pokémon. It is of grass type and poison type.")
    assert texts[4].endswith("This Pokémon is classified as a Lizard Pokémon. It is of fire type.")
    assert data.train.images.shape == (2 * 718, 3, 16, 16)
    # white background: the corners of every unrotated image are white
    assert (data.val.images[:, :, 0, 0] >= 249).mean() > 0.95


def test_bench_quick(local_ray, capsys):
    """bench/bench_data_pipeline.py --quick (60 generated records) runs end to end: the two paths' arrays equal, its
    table's two rows, a finite positive ratio, the machine named."""
    from benches import load_bench, table

    bench = load_bench("bench_data_pipeline")
    result = bench.main(["--quick", "--image-size", "16"])
    assert result["arrays_equal"] is True and result["images"] == 60
    assert 0 < result["ratio"] < math.inf and 0 < result["ratio_best"] < math.inf
    out = capsys.readouterr().out
    assert [r[0] for r in table(out, "| path")] == ["plain loop, 1 process", "Ray Data, 2 CPUs"]
    assert "machine: " in out and "cores" in out and "arrays checked equal (train, val, test, every repeat): yes" in out


def test_synthetic_selector_parsing(tmp_path):
    from data_pipeline.prepare import SYNTHETIC_RECORDS as N, _synthetic

    assert [_synthetic(x) for x in (None, "synthetic", "synthetic:7", "synthetic:7:2400")] == [
        (0, N), (0, N), (7, N), (7, 2400)]
    assert _synthetic(tmp_path) is None
    with pytest.raises(ValueError, match="integer seed"):
        _synthetic("synthetic:seven")
    for bad in ("synthetic:1:many", "synthetic:1:5", "synthetic:1:-300"):
        with pytest.raises(ValueError, match="at least 10 records"):
            _synthetic(bad)


def test_a_synthetic_set_of_another_size_is_its_own_source(tmp_path):
    from data_pipeline.prepare import synthetic_source
    from data_pipeline.sources import read_source

    folder, name = synthetic_source("synthetic:3:40", tmp_path)
    assert name == "synthetic:3:40" and folder == tmp_path / "synthetic" / "seed3-n40"
    records = read_source(folder).records
    assert len(records) == 40 and all(r.attributes for r in records)
    assert synthetic_source("synthetic:3", tmp_path)[1] == "synthetic:3" and synthetic_source(tmp_path, tmp_path) is None


def test_split_stores_uint8_and_scales_on_request(tmp_path):
    """The prepared format: uint8 in the Split and on disk (3·S·S bytes a row), floats only from unit_images()."""
    import pyarrow.parquet as pq

    from data_pipeline.dataset import Split

    rng = np.random.default_rng(0)
    splits = {name: Split(np.arange(n, dtype=np.int64), [f"t{i}" for i in range(n)],
                          rng.integers(0, 256, (n, 3, 5, 5), dtype=np.uint8)) for name, n in (("train", 4), ("val", 2), ("test", 2))}
    data = PreparedData(info={"settings": {"image_size": 5}}, **splits)
    unit = data.train.unit_images()
    assert unit.dtype == np.float32 and unit.shape == (4, 3, 5, 5)
    np.testing.assert_allclose(unit, data.train.images / 127.5 - 1, atol=1e-6)
    assert unit[data.train.images == 0].min() == -1 and unit[data.train.images == 255].max() == 1
    data.save(tmp_path)
    assert {len(b) for b in pq.read_table(tmp_path / "train.parquet").column("image").to_pylist()} == {3 * 5 * 5}
    again = PreparedData.load(tmp_path)
    assert again.train.images.dtype == np.uint8
    np.testing.assert_array_equal(again.train.images, data.train.images)
    with pytest.raises(ValueError, match="uint8"):
        Split(np.arange(2), ["a", "b"], np.zeros((2, 3, 5, 5), np.float64))


def test_paraphrases_reword_training_texts_and_never_touch_val_or_test(local_ray, tmp_path, make_pokedex):
    folder = make_pokedex(12)
    records = json.loads((folder / "pokedex.json").read_text())
    for r in records:  # three sentences each, so rewordings can reorder and drop
        r["description"] = f"Creature {r['id']} naps in the sun. It hums softly. Its tail glows at night."
    (folder / "pokedex.json").write_text(json.dumps(records))
    plain = prepare_dataset(folder, DataConfig(image_size=8, augment_rotations=2), cache_root=tmp_path, progress=False)
    para = prepare_dataset(folder, DataConfig(image_size=8, augment_rotations=2, paraphrases=3), cache_root=tmp_path,
                           progress=False)
    for name in ("val", "test"):  # untouched: the same rows, texts and images
        assert para.split(name).texts == plain.split(name).texts
        np.testing.assert_array_equal(para.split(name).images, plain.split(name).images)
    train, base = para.train, plain.train
    assert len(train) == 3 * len(base) and train.ids.tolist() == np.repeat(base.ids, 3).tolist()
    for rid in set(base.ids.tolist()):
        mine = [t for t, i in zip(train.texts, train.ids) if i == rid]
        own = next(t for t, i in zip(base.texts, base.ids) if i == rid)
        assert mine[:3] == mine[3:] and mine[0] == own and len(set(mine)) == 3  # per rotation: own text + 2 new
        allowed = set(own.replace(".", " ").replace(",", " ").lower().split()) | {"a", "of", "it", "is", "this"}
        for t in mine[1:]:  # built from the record's own words: its sentences, classification and types
            assert set(t.replace(".", " ").replace(",", " ").lower().split()) <= allowed, t
            assert "grass type and poison type" in t  # the enriched fields are always stated
    # each copy keeps its own image: the rotation's, repeated once per text
    np.testing.assert_array_equal(train.images[::3], base.images)
    np.testing.assert_array_equal(train.images[1::3], base.images)
    # the paraphrased cache loads as written: a second run reuses it, rows and texts unchanged
    again = prepare_dataset(folder, DataConfig(image_size=8, augment_rotations=2, paraphrases=3), cache_root=tmp_path,
                            progress=False)
    assert again.info["cache_reused"] and again.train.texts == train.texts
