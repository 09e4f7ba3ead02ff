"""Read a dataset in any supported layout into validated records, rejecting bad ones with reasons.

    from data_pipeline.sources import read_source
    src = read_source("../shared/datasets/pokedex")   # layout detected from the path
    src.layout, len(src.records), src.rejected[:3], src.content_hash

Layouts (`detect_layout` picks one from the path):
- "pokedex": `pokedex.json` (a list of records with `id`, `name.english`, `description`,
  `type` = [primary] or [primary, secondary], `species` = the classification; the synthetic set's records
  also carry `attributes`, what the creature was drawn from) and `images/thumbnails/NNN.png` (zero-padded id)
  beside it. The path is the folder or the json file.
- "parquet": one `.parquet` file or a folder of them, columns `id`, `name`, `description`,
  `primary_type`, `secondary_type` (may be null/empty), `classification`, `image` (encoded bytes,
  or a Hugging Face image struct {bytes, path}).
- "kaggle": "The Complete Pokédex Dataset": `pokemon.csv` (UTF-16 + tabs or UTF-8 + commas, both
  detected) with `national_number`, `english_name`, `primary_type`, `secondary_type`,
  `classification`, `description`, and `images/small_images/<national_number>.png`. As downloaded,
  the table is `<root>/data/pokemon.csv` and the images `<root>/images/small_images/`; a flat folder
  (`pokemon.csv` beside `images/`) works too. The path is the folder or the csv file.

Image names: in both folder layouts a record's image is `<id>.png` with or without zero padding
(`1.png`, `001.png`, `0001.png`): image sets are named either way, whatever the layout's own
spelling (`001.png` for the Pokédex, `1.png` for the Complete Pokédex). If a record has several, the
layout's own spelling is used, else the shortest name; `SourceData.ambiguous_images` lists each
such record with the file used and the ones ignored (prepare reports them in its summary).

Every field is checked here, before any pixel work: a record with no usable id, a missing, blank or
non-text description, no type, no classification or a missing image file becomes a
`Rejection(id, file, field, reason)`; the rest go on. Undecodable images are caught later, in the
Ray tasks, and only then are duplicate ids settled (`keep_first_loaded`): the first copy of an id
whose image loads is kept, so `records` may hold an id more than once. A missing classification is rejected even when the
enriched text is off, so the set of records (and so the split) does not depend on that setting.

`content_hash` covers every byte that was read (metadata file and each image file, in order),
so any change to the source changes the cache key.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path


LAYOUTS = ("pokedex", "parquet", "kaggle")
KAGGLE_COLUMNS = ("national_number", "english_name", "primary_type", "secondary_type", "classification", "description")
PARQUET_COLUMNS = ("id", "name", "description", "primary_type", "secondary_type", "classification", "image")


@dataclass(frozen=True)
class Record:
    id: int
    name: str
    description: str
    primary: str
    secondary: str | None
    classification: str
    image: bytes  # the encoded image file, decoded later in the Ray tasks
    file: str  # where the image came from, for reports
    where: str = ""  # where the record sits in its source ("row 3 of x.parquet"), for reports
    # what a synthetic creature was drawn from (pokedex.json's "attributes", data_pipeline/synthetic.py): the
    # stated attributes that attribute accuracy checks; None for real data. Not hashed: a dict cannot be.
    attributes: dict | None = field(default=None, hash=False)


@dataclass(frozen=True)
class Rejection:
    id: int | str | None  # as found in the source (None when the record has no id)
    file: str
    field: str
    reason: str

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "file": self.file, "field": self.field, "reason": self.reason}, ensure_ascii=False)


@dataclass(frozen=True)
class SourceData:
    layout: str
    path: Path
    records: list[Record]
    rejected: list[Rejection] = field(default_factory=list)
    content_hash: str = ""
    # records with more than one image file (1.png and 001.png): {"id", "used", "ignored"}, by id
    ambiguous_images: list[dict] = field(default_factory=list)


def detect_layout(path: str | Path) -> str:
    """'pokedex', 'parquet' or 'kaggle' for a file or folder; ValueError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset path {path} does not exist")
    if path.is_file():
        if path.suffix == ".json":
            return "pokedex"
        if path.suffix == ".parquet":
            return "parquet"
        if path.suffix in (".csv", ".tsv", ".txt"):
            return "kaggle"
    elif (path / "pokedex.json").is_file():
        return "pokedex"
    elif (path / "pokemon.csv").is_file() or (path / "data" / "pokemon.csv").is_file():
        return "kaggle"
    elif any(path.glob("*.parquet")):
        return "parquet"
    raise ValueError(
        f"cannot tell the dataset layout of {path}: expected a folder with pokedex.json (+ images/thumbnails/), "
        "a folder with pokemon.csv or data/pokemon.csv (+ images/small_images/), a .parquet file or a folder of them")


def read_source(path: str | Path) -> SourceData:
    """Read and validate the dataset at `path` (layout detected)."""
    path = Path(path)
    layout = detect_layout(path)
    reader = {"pokedex": _read_pokedex, "parquet": _read_parquet, "kaggle": _read_kaggle}[layout]
    hasher = hashlib.sha256(layout.encode())
    records, rejected, ambiguous = reader(path, hasher)
    return SourceData(layout, path.resolve(), records, rejected, hasher.hexdigest(), ambiguous)


# ----------------------------------------------------------------------------- validation, shared


class _Reject(Exception):
    def __init__(self, field_name: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field_name, reason


def _parse_id(value) -> int:
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise _Reject("id", "missing id" if value is None or isinstance(value, str) else f"id must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _Reject("id", f"id must be an integer, got {value!r}")


def _text(value, name: str, required: bool = True) -> str | None:
    """A stripped, whitespace-collapsed string; rejects missing, blank and non-string values."""
    if value is None or (isinstance(value, float) and value != value):  # None, or NaN from a table
        if required:
            raise _Reject(name, f"missing {name}")
        return None
    if not isinstance(value, str):
        raise _Reject(name, f"{name} must be text, got {type(value).__name__} {value!r:.40}")
    text = " ".join(value.split())
    if not text and required:
        raise _Reject(name, f"blank {name}")
    return text or None


def _record(raw_id, name, description, primary, secondary, classification, load_image, file: str,
            where: str, attributes=None) -> Record:
    """Validate one record's fields in a fixed order; the first problem found is the one reported."""
    rid = _parse_id(raw_id)
    description = _text(description, "description")
    primary = _text(primary, "type")
    secondary = _text(secondary, "type", required=False)
    classification = _text(classification, "classification")
    name = _text(name, "name", required=False) or f"#{rid}"
    if attributes is not None and not isinstance(attributes, dict):
        raise _Reject("attributes", f"attributes must be an object, got {type(attributes).__name__} {attributes!r:.40}")
    return Record(rid, name, description, primary, secondary, classification, load_image(), file, where, attributes)


def _build(raw_id, fields: dict, load_image, file: str, where: str, records: list, rejected: list) -> None:
    try:
        records.append(_record(raw_id, load_image=load_image, file=file, where=where, **fields))
    except _Reject as r:
        shown_id = raw_id if isinstance(raw_id, (int, str)) and not isinstance(raw_id, bool) else None
        rejected.append(Rejection(shown_id, file, r.field, f"{r.reason} ({where})"))


def _file_loader(path: Path, hasher, missing: str = "missing file"):
    def load() -> bytes:
        if not path.is_file():
            hasher.update(f"{path.name}:missing".encode())
            raise _Reject("image", missing)
        data = path.read_bytes()
        hasher.update(f"{path.name}:{len(data)}:".encode())
        hasher.update(data)
        return data
    return load


class _ImageFolder:
    """A layout's image folder, where record `id`'s image is `<id>.png` with any zero padding.

    `own(id)` is the layout's spelling: it names a missing file and wins when a record has several.
    The folder is listed once, so a record costs no file-system call of its own.
    """

    def __init__(self, folder: Path, own):
        self.folder, self.own = folder, own
        self.names: dict[int, list[str]] = {}
        self._ambiguous: dict[int, dict] = {}
        if folder.is_dir():
            for entry in os.scandir(folder):
                stem, ext = entry.name[:-4], entry.name[-4:]
                if ext == ".png" and stem.isascii() and stem.isdigit() and entry.is_file():
                    self.names.setdefault(int(stem), []).append(entry.name)

    def find(self, rid: int) -> tuple[Path, str]:
        """(the image file of record `rid`, the reason to give if it is missing)."""
        own = self.own(rid)
        names = sorted(self.names.get(rid, []), key=lambda n: (n != own, len(n), n))
        if len(names) > 1:
            self._ambiguous[rid] = {"id": rid, "used": names[0], "ignored": names[1:]}
        if not names:
            example = f" (e.g. {rid:03d}.png)" if rid < 100 else ""
            return self.folder / own, f"missing file: no {rid}.png, zero-padded or not{example}"
        return self.folder / names[0], "missing file"

    def ambiguous(self) -> list[dict]:
        return [self._ambiguous[i] for i in sorted(self._ambiguous)]


def keep_first_loaded(records: list[Record], loaded: set[int]) -> tuple[list[int], list[Rejection]]:
    """Indices (into `records`) of the first copy of each id whose image loaded (`loaded`: indices),
    and a rejection for every later copy that loaded too (an id names one Pokémon). Decided after
    decoding, so a good copy is not lost behind an earlier one whose image turns out unreadable;
    copies that did not load are reported by whoever decoded them."""
    kept: dict[int, Record] = {}
    keep, rejected = [], []
    for k, r in enumerate(records):
        if k not in loaded:
            continue
        if r.id in kept:
            first = kept[r.id]
            rejected.append(Rejection(r.id, r.file, "id", f"duplicate id {r.id}: kept the first copy that loaded, "
                                                         f"{first.name} ({first.where or first.file}) ({r.where})"))
        else:
            kept[r.id] = r
            keep.append(k)
    return keep, rejected


# ----------------------------------------------------------------------------- the three layouts


def _read_pokedex(path: Path, hasher) -> tuple[list[Record], list[Rejection], list[dict]]:
    json_path = path if path.is_file() else path / "pokedex.json"
    raw = json_path.read_bytes()
    hasher.update(raw)
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(entries, list):
        raise ValueError(f"{json_path} must hold a JSON list of records, found {type(entries).__name__}")
    images = _ImageFolder(json_path.parent / "images" / "thumbnails", lambda rid: f"{rid:03d}.png")
    records, rejected = [], []
    for i, e in enumerate(entries):
        where = f"record {i} of {json_path.name}"
        if not isinstance(e, dict):
            rejected.append(Rejection(None, str(json_path), "record", f"record is a {type(e).__name__}, not an object ({where})"))
            continue
        raw_id = e.get("id")
        try:
            image_path, missing = images.find(_parse_id(raw_id))
        except _Reject as r:
            rejected.append(Rejection(raw_id if isinstance(raw_id, (int, str)) else None, str(json_path), r.field, f"{r.reason} ({where})"))
            continue
        types = e.get("type")
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types or len(types) > 2:
            rejected.append(Rejection(raw_id, str(json_path), "type", f"type must be a list of one or two type names, got {types!r} ({where})"))
            continue
        name = e.get("name")
        fields = {"name": name.get("english") if isinstance(name, dict) else name,
                  "description": e.get("description"), "primary": types[0],
                  "secondary": types[1] if len(types) > 1 else None, "classification": e.get("species"),
                  "attributes": e.get("attributes")}
        _build(raw_id, fields, _file_loader(image_path, hasher, missing), str(image_path), where, records, rejected)
    return records, rejected, images.ambiguous()


def _decode_csv(raw: bytes, csv_path: Path) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if raw[:200].count(b"\x00") > 20:  # UTF-16 without a byte-order mark: every other byte is 0
        return raw.decode("utf-16-le" if raw[1:2] == b"\x00" else "utf-16-be")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{csv_path} is neither UTF-16 nor UTF-8 ({exc}); re-save it as UTF-8") from exc


def _kaggle_paths(path: Path) -> tuple[Path, Path]:
    """(csv file, image folder) for a Complete-Pokédex folder or csv, flat or as downloaded (data/ + images/)."""
    if path.is_file():
        csv_path = path
    else:
        csv_path = path / "pokemon.csv" if (path / "pokemon.csv").is_file() else path / "data" / "pokemon.csv"
    beside, above = csv_path.parent / "images" / "small_images", csv_path.parent.parent / "images" / "small_images"
    return csv_path, (above if not beside.is_dir() and above.is_dir() else beside)


class _Lines:
    """The csv file's physical lines, handed to csv.reader one at a time: `pos` says how many it took."""

    def __init__(self, lines: list[str], pos: int):
        self.lines, self.pos = lines, pos

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pos >= len(self.lines):
            raise StopIteration
        self.pos += 1
        return self.lines[self.pos - 1]


def _csv_records(text: str, delimiter: str, csv_path: Path, rejected: list[Rejection]):
    """(header, then (line number, row dict) for each record), every physical line accounted for.

    A quoted field may hold line breaks (descriptions do), but a quote that is opened and never
    closed makes csv read every following line into that field, silently losing those records. So a
    record that spans several lines, one of which is itself a whole record (as many fields as the
    header, an integer national_number), is rejected, naming its line and the field, and reading
    starts again on the line after it. A record that csv cannot parse at all (a field past csv's size
    limit, say) is handled the same way.
    """
    lines = list(io.StringIO(text, newline=""))
    src = _Lines(lines, 0)
    reader = csv.reader(src, delimiter=delimiter)
    header = next(reader, [])
    yield header
    id_col = header.index("national_number") if "national_number" in header else 0

    def whole_record(line: str) -> bool:
        fields = next(csv.reader([line], delimiter=delimiter), [])
        return len(fields) == len(header) and fields[id_col].strip().isdigit()

    while True:
        start = src.pos  # index of the record's first line; its line number is start + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row, error = None, f"csv cannot parse it ({exc})"
        else:
            error = None
            if src.pos - start > 1 and any(whole_record(line) for line in lines[start + 1:src.pos]):
                broken = next((i for i, f in enumerate(row) if "\n" in f or "\r" in f), len(row) - 1)
                column = header[broken] if broken < len(header) else f"column {broken + 1}"
                error = (f"unclosed quote in field {column!r}: it runs over the next {src.pos - start - 1} line(s), "
                         "which hold records of their own")
        if error is None:
            if row:  # csv gives [] for a blank line
                yield start + 1, dict(zip(header, row + [None] * (len(header) - len(row))))
            continue
        first = next(csv.reader([lines[start]], delimiter=delimiter), [])
        raw_id = first[id_col].strip() if len(first) > id_col and first[id_col].strip() else None
        field_name = column if row is not None else "record"
        rejected.append(Rejection(raw_id, str(csv_path), field_name,
                                  f"{error}; the lines after it are read on their own (line {start + 1} of {csv_path.name})"))
        src = _Lines(lines, start + 1)
        reader = csv.reader(src, delimiter=delimiter)


def _read_kaggle(path: Path, hasher) -> tuple[list[Record], list[Rejection], list[dict]]:
    csv_path, image_dir = _kaggle_paths(path)
    images = _ImageFolder(image_dir, lambda rid: f"{rid}.png")
    raw = csv_path.read_bytes()
    hasher.update(raw)
    text = _decode_csv(raw, csv_path)
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if first_line.count("\t") > first_line.count(",") else ","
    records, rejected = [], []
    rows = _csv_records(text, delimiter, csv_path, rejected)
    header = next(rows)
    missing = [c for c in KAGGLE_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{csv_path} lacks the column(s) {missing}; found {header}. "
                         "Expected the Complete Pokédex layout (national_number, english_name, primary_type, ...)")
    for line, row in rows:
        where = f"line {line} of {csv_path.name}"
        raw_id = row["national_number"]
        try:
            image_path, missing = images.find(_parse_id(raw_id))
        except _Reject as r:
            rejected.append(Rejection(raw_id or None, str(csv_path), r.field, f"{r.reason} ({where})"))
            continue
        fields = {"name": row["english_name"], "description": row["description"], "primary": row["primary_type"],
                  "secondary": row["secondary_type"], "classification": row["classification"]}
        _build(raw_id, fields, _file_loader(image_path, hasher, missing), str(image_path), where, records, rejected)
    return records, rejected, images.ambiguous()


def _image_bytes(value):
    """The encoded bytes of a parquet image cell: raw binary, or a Hugging Face {bytes, path} struct."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not value:
        raise _Reject("image", "missing image bytes")
    if not isinstance(value, (bytes, bytearray)):
        raise _Reject("image", f"image must be encoded bytes, got {type(value).__name__}")
    return bytes(value)


def _read_parquet(path: Path, hasher) -> tuple[list[Record], list[Rejection], list[dict]]:
    """Each file (and each row group) on its own: a corrupt part rejects its records, naming the file,
    and the other parts still load. A part without the needed columns is an error (the wrong dataset).
    Images sit in the rows, so none is ambiguous."""
    import pyarrow.parquet as pq  # here: the other layouts need no pyarrow (a GPU box that only trains has none)

    files = [path] if path.is_file() else sorted(path.glob("*.parquet"))
    records, rejected = [], []
    for f in files:
        hasher.update(f.name.encode())
        hasher.update(f.read_bytes())
        try:
            part = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001 — arrow raises several types for a damaged file
            rejected.append(Rejection(None, str(f), "file", f"unreadable parquet file, none of its records could be "
                                      f"read: {type(exc).__name__}: {exc}"))
            continue
        names = part.schema_arrow.names
        missing = [c for c in PARQUET_COLUMNS if c not in names and c not in ("name", "secondary_type")]
        if missing:
            raise ValueError(f"{f} lacks the column(s) {missing}; found {names}. "
                             f"Expected {list(PARQUET_COLUMNS)} with the image as encoded bytes")
        row = 0
        for g in range(part.num_row_groups):
            n = part.metadata.row_group(g).num_rows
            try:
                columns = part.read_row_group(g).to_pydict()
            except Exception as exc:  # noqa: BLE001
                try:
                    ids = part.read_row_group(g, columns=["id"]).column("id").to_pylist()
                except Exception:  # noqa: BLE001 — the ids are damaged too
                    ids = [None] * n
                rejected += [Rejection(ids[i], str(f), "file", f"unreadable row group {g}: {type(exc).__name__}: "
                                       f"{exc} (row {row + i} of {f.name})") for i in range(n)]
                row += n
                continue
            for i in range(n):
                def cell(c, i=i):
                    return columns[c][i] if c in columns else None
                fields = {"name": cell("name"), "description": cell("description"), "primary": cell("primary_type"),
                          "secondary": cell("secondary_type"), "classification": cell("classification")}
                image = cell("image")
                _build(cell("id"), fields, lambda image=image: _image_bytes(image), str(f), f"row {row + i} of {f.name}",
                       records, rejected)
            row += n
    return records, rejected, []
