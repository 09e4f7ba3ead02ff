"""Readers of the three layouts, record validation and the synthetic default (no Ray, fast)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.preprocess import preprocess_image
from data_pipeline.sources import detect_layout, keep_first_loaded, read_source
from data_pipeline.synthetic import FEATURES, TYPE_COLOURS, generate

KAGGLE_HEADER = ["national_number", "gen", "english_name", "primary_type", "secondary_type", "classification",
                 "description"]


def kaggle_rows():
    return [["1", "I", "Bulbasaur", "grass", "poison", "Seed Pokémon", "A seed on its back,\ngrows larger."],
            ["4", "I", "Charmander", "fire", "", "Lizard Pokémon", "Prefers hot things."]]


def write_kaggle(directory, datafx, encoding="utf-8", delimiter=",", rows=None, header=KAGGLE_HEADER):
    (directory / "images" / "small_images").mkdir(parents=True)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(header)
    w.writerows(rows or kaggle_rows())
    (directory / "pokemon.csv").write_bytes(buf.getvalue().encode(encoding))
    for nr in ("1", "4"):
        (directory / "images" / "small_images" / f"{nr}.png").write_bytes(datafx.png(size=(215, 215)))
    return directory


# ----------------------------------------------------------------------------- layouts


def test_detect_layout(tmp_path, make_pokedex, datafx):
    folder = make_pokedex(2)
    assert detect_layout(folder) == detect_layout(folder / "pokedex.json") == "pokedex"
    kaggle = write_kaggle(tmp_path / "k", datafx)
    assert detect_layout(kaggle) == detect_layout(kaggle / "pokemon.csv") == "kaggle"
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"id": [1]}), tmp_path / "p" / "part-0.parquet")
    assert detect_layout(tmp_path / "p") == detect_layout(tmp_path / "p" / "part-0.parquet") == "parquet"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="pokedex.json"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "nope")


def test_pokedex_reader_fields(make_pokedex):
    src = read_source(make_pokedex(3))
    assert src.layout == "pokedex" and not src.rejected
    r = src.records[0]
    assert (r.id, r.name, r.primary, r.secondary, r.classification) == (1, "Mon1", "Grass", "Poison", "Seed Pokémon")
    assert r.image[:4] == b"\x89PNG" and r.file.endswith("images/thumbnails/001.png")


def test_pokedex_reader_carries_attributes_and_rejects_malformed_ones(tmp_path, datafx):
    """A synthetic record's `attributes` reach its Record as written; a record without has None; one that is not
    an object is rejected, naming the record and the field."""
    attrs = {"primary": "Fire", "secondary": None, "pattern": "spots", "shape": "round", "size": "small",
             "feature": "horn"}
    records = [datafx.pokedex_record(1, attributes=attrs), datafx.pokedex_record(2),
               datafx.pokedex_record(3, attributes=["Fire"])]
    src = read_source(datafx.write_pokedex(tmp_path, records, {f"{i:03d}.png": datafx.png() for i in (1, 2, 3)}))
    assert [(r.id, r.attributes) for r in src.records] == [(1, attrs), (2, None)]
    (bad,) = src.rejected
    assert (bad.id, bad.field) == (3, "attributes") and "record 2 of pokedex.json" in bad.reason


@pytest.mark.parametrize("encoding,delimiter", [("utf-16", "\t"), ("utf-8", ","), ("utf-8-sig", ",")])
def test_kaggle_csv_encodings_detected(tmp_path, datafx, encoding, delimiter):
    src = read_source(write_kaggle(tmp_path, datafx, encoding, delimiter))
    assert src.layout == "kaggle" and not src.rejected
    bulba, charm = src.records
    assert (bulba.id, bulba.name, bulba.primary, bulba.secondary) == (1, "Bulbasaur", "grass", "poison")
    assert bulba.description == "A seed on its back, grows larger."  # the line break inside a field survives csv
    assert (charm.id, charm.secondary, charm.classification) == (4, None, "Lizard Pokémon")
    assert charm.file.endswith("images/small_images/4.png")


def test_kaggle_missing_column_is_a_clear_error(tmp_path, datafx):
    write_kaggle(tmp_path, datafx, header=[h if h != "description" else "pokedex_text" for h in KAGGLE_HEADER])
    with pytest.raises(ValueError, match="description"):
        read_source(tmp_path)


def test_parquet_reader_binary_and_hf_struct(tmp_path, datafx):
    img = datafx.png()
    base = {"id": [1, 2, 3], "name": ["A", "B", "C"], "description": ["One.", None, "Three."],
            "primary_type": ["Fire", "Water", "Grass"], "secondary_type": [None, "Ice", ""],
            "classification": ["X Pokémon"] * 3}
    pq.write_table(pa.table({**base, "image": [img, img, img]}), tmp_path / "plain.parquet")
    hf = pa.array([{"bytes": img, "path": "a.png"}] * 3, pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    (tmp_path / "hf").mkdir()
    pq.write_table(pa.table({**base, "image": hf}), tmp_path / "hf" / "train-0.parquet")
    for path in (tmp_path / "plain.parquet", tmp_path / "hf"):
        src = read_source(path)
        assert [r.id for r in src.records] == [1, 3] and src.records[0].image == img
        assert src.records[1].secondary is None  # empty string → no secondary type
        (rej,) = src.rejected
        assert (rej.id, rej.field) == (2, "description") and "row 1" in rej.reason


def test_kaggle_as_downloaded_root_or_csv(tmp_path, datafx):
    """The download keeps the table in data/ (beside other csv files) and the images under the root."""
    root = tmp_path / "complete-pokedex"
    write_kaggle(root, datafx)
    (root / "data").mkdir()
    (root / "pokemon.csv").rename(root / "data" / "pokemon.csv")
    (root / "data" / "pokemon_utf8.csv").write_text("not the table we read\n")
    for path in (root, root / "data" / "pokemon.csv"):
        assert detect_layout(path) == "kaggle"
        src = read_source(path)
        assert [r.id for r in src.records] == [1, 4] and not src.rejected
        assert src.records[1].file == str(root / "images" / "small_images" / "4.png")


def test_image_names_with_or_without_zero_padding_in_both_folder_layouts(tmp_path, datafx):
    """A csv numbering records 1, 4, 25 next to 001.png (as many image sets are named), and a Pokédex
    next to 1.png: every image is found. A record with two files uses the layout's own spelling (else
    the shortest name), whatever the folder's listing order, and the source lists it."""
    red, blue, green = (datafx.png(c) for c in ((200, 0, 0, 255), (0, 0, 200, 255), (0, 200, 0, 255)))
    kaggle = write_kaggle(tmp_path / "k", datafx, rows=kaggle_rows() + [
        ["25", "I", "Pikachu", "electric", "", "Mouse Pokémon", "Stores electricity."],
        ["7", "I", "Squirtle", "water", "", "Tiny Turtle Pokémon", "Shoots water."]])
    images = kaggle / "images" / "small_images"
    (images / "1.png").rename(images / "001.png")  # zero-padded only
    (images / "004.png").write_bytes(blue)  # beside the csv's own spelling, 4.png
    (images / "4.png").write_bytes(red)
    (images / "0025.png").write_bytes(blue)  # two paddings, neither the own spelling: the shorter one wins
    (images / "025.png").write_bytes(green)
    (images / "readme.txt").write_text("not an image")  # id 7 has no file at all
    src = read_source(kaggle)
    assert [r.id for r in src.records] == [1, 4, 25]
    assert src.records[0].file == str(images / "001.png") and src.records[1].image == red
    assert src.records[2].file == str(images / "025.png") and src.records[2].image == green
    assert src.ambiguous_images == [{"id": 4, "used": "4.png", "ignored": ["004.png"]},
                                    {"id": 25, "used": "025.png", "ignored": ["0025.png"]}]
    (missing,) = src.rejected
    assert (missing.id, missing.field, missing.file) == ("7", "image", str(images / "7.png"))
    assert "missing file: no 7.png, zero-padded or not (e.g. 007.png)" in missing.reason and "line 6" in missing.reason

    rec = datafx.pokedex_record
    dex = datafx.write_pokedex(tmp_path / "dex", [rec(1), rec(2), rec(100)],
                               {"1.png": red, "2.png": red, "002.png": blue, "100.png": green})
    src = read_source(dex)
    assert [r.image for r in src.records] == [red, blue, green] and not src.rejected  # 002.png: the Pokédex's own
    assert src.ambiguous_images == [{"id": 2, "used": "002.png", "ignored": ["2.png"]}]
    # The used file is part of the content hash: removing the ignored one changes nothing, the used one does.
    (dex / "images" / "thumbnails" / "2.png").unlink()
    assert read_source(dex).content_hash == src.content_hash
    (dex / "images" / "thumbnails" / "002.png").unlink()
    assert read_source(dex).content_hash != src.content_hash


def test_real_pokedex_images_beside_a_complete_pokedex_csv(tmp_path, shared_pokedex):
    """The issue's case on the real data: a csv numbering records 1..898 beside the Pokédex's zero-padded
    thumbnails (linked, not copied). Before, ids 1-99 (99 of 898) were rejected as missing files."""
    rows = [[e["id"], "I", e["name"]["english"], e["type"][0], (e["type"][1:] or [""])[0], e["species"],
             e["description"]] for e in json.loads((shared_pokedex / "pokedex.json").read_text(encoding="utf-8"))]
    buf = io.StringIO()
    csv.writer(buf).writerows([KAGGLE_HEADER] + rows)
    (tmp_path / "pokemon.csv").write_text(buf.getvalue(), encoding="utf-8")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "small_images").symlink_to(shared_pokedex / "images" / "thumbnails")
    src = read_source(tmp_path)
    assert (len(src.records), src.rejected, src.ambiguous_images) == (898, [], [])
    assert src.records[0].file.endswith("small_images/001.png") and src.records[99].file.endswith("/100.png")


# ----------------------------------------------------------------------------- bad records


def test_kaggle_unclosed_quote_rejects_its_row_and_keeps_the_following_ones(tmp_path, datafx):
    header = ",".join(KAGGLE_HEADER)
    text = (f"{header}\n"
            '1,I,Bulbasaur,grass,poison,Seed Pokémon,"A seed on its back,\ngrows larger."\n'  # lines 2-3: legal
            '4,I,Charmander,fire,,"Lizard Pokémon,Prefers hot things.\n'                   # line 4: quote never closed
            "7,I,Squirtle,water,,Tiny Turtle Pokémon,Shoots water.\n"
            '9,I,Blastoise,water,,Shellfish Pokémon,"Jets of water,\ncrush steel."\n'
            "25,I,Pikachu,electric,,Mouse Pokémon,Stores electricity.\n")
    (tmp_path / "images" / "small_images").mkdir(parents=True)
    (tmp_path / "pokemon.csv").write_text(text, encoding="utf-8")
    for nr in (1, 4, 7, 9, 25):
        (tmp_path / "images" / "small_images" / f"{nr}.png").write_bytes(datafx.png())
    src = read_source(tmp_path)
    assert [r.id for r in src.records] == [1, 7, 9, 25]  # every record after the broken one is back
    assert src.records[0].description == "A seed on its back, grows larger."
    assert src.records[2].description == "Jets of water, crush steel."
    (rej,) = src.rejected  # every record read is loaded or rejected
    assert (rej.id, rej.field) == ("4", "classification")
    assert "unclosed quote" in rej.reason and "line 4 of pokemon.csv" in rej.reason


def test_every_broken_record_is_reported_and_good_ones_kept(tmp_path, datafx):
    rec, png = datafx.pokedex_record, datafx.png
    records = [
        rec(1),                                        # good
        rec(2),                                        # image file missing
        rec(3, description="   "),                     # blank description
        rec(4, description=42),                        # wrongly typed description
        {k: v for k, v in rec(5).items() if k != "description"},  # missing description
        rec(6, type=[]),                               # no type
        {k: v for k, v in rec(7).items() if k != "id"},  # no id
        rec(8),                                        # good
        rec(8, description="Second record with id 8."),  # duplicate id
        rec(9, species=""),                            # no classification
        rec(10, id="ten"),                             # id not an integer
        rec(11, types=("Fire",)),                      # good, one type
    ]
    images = {f"{i:03d}.png": png() for i in (1, 3, 4, 5, 6, 7, 8, 9, 11)}
    src = read_source(datafx.write_pokedex(tmp_path, records, images))
    assert [r.id for r in src.records] == [1, 8, 8, 11]  # duplicates are settled after decoding
    keep, duplicates = keep_first_loaded(src.records, loaded={0, 1, 2, 3})
    assert keep == [0, 1, 3] and src.records[1].description == "Creature number 8 naps in the sun."
    (dup,) = duplicates
    assert (dup.id, dup.field) == (8, "id") and "duplicate id 8" in dup.reason and "record 7 of pokedex.json" in dup.reason
    got = {(r.id, r.field) for r in src.rejected}
    assert got == {(2, "image"), (3, "description"), (4, "description"), (5, "description"), (6, "type"),
                   (None, "id"), (9, "classification"), ("ten", "id")}
    for r in src.rejected:
        assert r.file and r.reason
        json.loads(r.to_json())
    reasons = {(r.id, r.field): r.reason for r in src.rejected}
    assert "missing file" in reasons[(2, "image")]
    assert "blank description" in reasons[(3, "description")]
    assert "must be text" in reasons[(4, "description")]
    assert next(r for r in src.rejected if r.id == 2).file.endswith("002.png")


def test_corrupt_parquet_part_rejects_its_records_and_keeps_the_others(tmp_path, datafx):
    img = datafx.png()
    table = pa.table({"id": [1, 2], "description": ["One.", "Two."], "primary_type": ["Fire", "Ice"],
                      "classification": ["X Pokémon"] * 2, "image": [img, img]})
    pq.write_table(table, tmp_path / "part-0.parquet")
    pq.write_table(table.set_column(0, "id", pa.array([3, 4])), tmp_path / "part-1.parquet")
    whole = (tmp_path / "part-1.parquet").read_bytes()
    (tmp_path / "part-1.parquet").write_bytes(whole[: len(whole) // 2])  # an interrupted copy: no footer
    (tmp_path / "part-2.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    src = read_source(tmp_path)
    assert [r.id for r in src.records] == [1, 2]
    assert [(r.id, r.field, Path(r.file).name) for r in src.rejected] == [
        (None, "file", "part-1.parquet"), (None, "file", "part-2.parquet")]
    assert all("unreadable parquet file" in r.reason for r in src.rejected)


def test_content_hash_follows_content_not_location(tmp_path, make_pokedex, datafx):
    a, b = make_pokedex(3, "a"), make_pokedex(3, "b")
    assert read_source(a).content_hash == read_source(b).content_hash
    (b / "images" / "thumbnails" / "002.png").write_bytes(datafx.png((1, 2, 3, 255)))
    assert read_source(a).content_hash != read_source(b).content_hash


# ----------------------------------------------------------------------------- synthetic default


def test_synthetic_is_deterministic(tmp_path):
    a = generate(tmp_path / "a", n=300, seed=0)
    b = generate(tmp_path / "b", n=300, seed=0)
    c = generate(tmp_path / "c", n=300, seed=1)
    ha, hb, hc = (read_source(p).content_hash for p in (a, b, c))
    assert ha == hb != hc
    src = read_source(a)
    assert len(src.records) == 300 and not src.rejected


def test_synthetic_text_determines_image(tmp_path):
    folder = generate(tmp_path / "s", n=120, seed=3)
    entries = {e["id"]: e for e in json.loads((folder / "pokedex.json").read_text())}
    plain, by_word = 0, {}
    for r in read_source(folder).records:
        attrs = entries[r.id]["attributes"]
        colour_word, rgb = TYPE_COLOURS[attrs["primary"]]
        # every attribute is stated in the text the model sees
        assert f"{attrs['size']} {attrs['shape']} creature with a {colour_word} body" in r.description
        assert FEATURES[attrs["feature"]][0] in r.description and r.classification == FEATURES[attrs["feature"]][1]
        assert r.primary == attrs["primary"] and r.secondary == attrs["secondary"]
        if attrs["secondary"]:
            assert f"{TYPE_COLOURS[attrs['secondary']][0]} {attrs['pattern']}" in r.description  # "blue spots"
        else:
            # and the picture follows it: the commonest non-white colour is the stated body colour
            img = np.round((preprocess_image(r.image, 100)[0] + 1) * 127.5).reshape(3, -1).T
            img = img[(img < 250).any(axis=1)]
            colours, counts = np.unique(img, axis=0, return_counts=True)
            assert np.abs(colours[counts.argmax()] - rgb).max() <= 12, (r.id, attrs)
            word = re.search(r"creature with a ([a-z ]+) body", r.description).group(1)
            by_word.setdefault(word, []).append(colours[counts.argmax()])
            plain += 1
    assert plain > 20
    # Read from the text and the pixels alone, not the generator's table: one colour word, one body colour;
    # different words, clearly different colours; and the words mean their colour.
    body = {w: np.mean(c, 0) for w, c in by_word.items()}
    assert all(np.ptp(np.array(c), 0).max() <= 24 for c in by_word.values())
    assert all(np.abs(body[a] - body[b]).max() > 40 for a, b in itertools.combinations(body, 2))
    for word, channel in (("red", 0), ("green", 1), ("blue", 2)):
        assert word in body and np.argmax(body[word]) == channel, (word, body.get(word))
    assert body["black"].max() < 80 and body["yellow"][:2].min() > 200 > 2 * body["yellow"][2]
