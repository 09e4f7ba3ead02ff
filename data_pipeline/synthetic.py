"""The embedded default dataset: synthetic creatures whose picture follows from their text.

    from data_pipeline.synthetic import generate
    folder = generate("/tmp/synth", n=300, seed=0)   # writes pokedex.json + images/thumbnails/NNN.png
    # then read it like real data: data_pipeline.sources.read_source(folder)

Each creature is drawn from a handful of attributes, and its Pokédex text states every one of them,
so a text-to-image model can learn the mapping and a hyperparameter search has something real to
rank (the model sees only the text):
- primary type → body colour ("Fire" → red); the description names the colour, the types say the type;
- secondary type (two of three creatures) → the colour of a pattern: spots, stripes or a belly;
- body shape (round, square, triangular, tall oval) and size (small, large);
- one feature (a horn, two pointed ears, wings, antennae, a long tail), which also names the
  classification ("Horned Pokémon").
A little unstated jitter (position ±4 px, colour ±12, size ±6 %) keeps two creatures with the same
attributes from being pixel copies. 100×100 RGBA on a transparent background, like the real
thumbnails, so the same preprocessing (alpha → white, resize) applies. Same seed → same bytes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 100
TYPE_COLOURS = {  # type → (colour word used in the description, RGB)
    "Fire": ("red", (214, 48, 39)),
    "Water": ("blue", (46, 96, 220)),
    "Grass": ("green", (52, 168, 64)),
    "Electric": ("yellow", (244, 208, 36)),
    "Psychic": ("pink", (236, 112, 182)),
    "Poison": ("purple", (132, 58, 168)),
    "Ground": ("brown", (146, 98, 50)),
    "Ice": ("light blue", (150, 222, 236)),
    "Dark": ("black", (48, 44, 56)),
}
SHAPES = ("round", "square", "triangular", "tall oval")
SIZES = {"small": 0.27, "large": 0.39}  # body half-width as a fraction of the canvas
PATTERNS = ("spots", "stripes", "belly")
FEATURES = {  # feature → (phrase in the description, classification)
    "horn": ("a single horn on its head", "Horned Pokémon"),
    "ears": ("two pointed ears", "Eared Pokémon"),
    "wings": ("a pair of wings", "Winged Pokémon"),
    "antennae": ("two long antennae", "Antenna Pokémon"),
    "tail": ("a long tail", "Tailed Pokémon"),
}
HABITATS = {
    "Fire": "near volcanoes", "Water": "in clear lakes", "Grass": "in sunny meadows", "Electric": "near power lines",
    "Psychic": "in quiet temples", "Poison": "in murky swamps", "Ground": "in dry canyons", "Ice": "on snowy peaks",
    "Dark": "in deep caves",
}
SYLLABLES = ("ka", "zu", "mi", "ro", "pa", "ne", "lo", "chu", "ri", "ta", "bo", "sa", "fu", "gi", "mo", "dra", "vee", "ly")
OUTLINE = (28, 28, 32, 255)


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 12) -> tuple[int, int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour) + (255,)


def _body_box(cx: float, cy: float, r: float, shape: str) -> tuple[float, float, float, float]:
    if shape == "tall oval":
        return (cx - 0.72 * r, cy - 1.15 * r, cx + 0.72 * r, cy + 1.15 * r)
    return (cx - r, cy - r, cx + r, cy + r)


def _draw_body(draw: ImageDraw.ImageDraw, box, shape: str, fill, outline=None) -> None:
    x0, y0, x1, y1 = box
    if shape in ("round", "tall oval"):
        draw.ellipse(box, fill=fill, outline=outline, width=2)
    elif shape == "square":
        draw.rounded_rectangle(box, radius=(x1 - x0) * 0.18, fill=fill, outline=outline, width=2)
    else:  # triangular: point up
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=outline, width=2)


def draw_creature(attrs: dict, rng: random.Random) -> Image.Image:
    """The RGBA sprite for one attribute set (see the module docstring)."""
    img = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    body = _jitter(TYPE_COLOURS[attrs["primary"]][1], rng)
    r = SIZE * SIZES[attrs["size"]] * rng.uniform(0.94, 1.06)
    cx, cy = SIZE / 2 + rng.uniform(-4, 4), SIZE * 0.55 + rng.uniform(-4, 4)
    box = _body_box(cx, cy, r, attrs["shape"])
    x0, y0, x1, y1 = box
    feature = attrs["feature"]

    # features behind the body first
    if feature == "wings":
        for side in (-1, 1):
            xa = cx + side * (x1 - x0) * 0.35
            tip = min(r * 0.9, (SIZE / 2 - 2) - abs(xa - SIZE / 2))  # keep the wing on the canvas
            draw.polygon([(xa, cy - r * 0.3), (xa + side * tip, cy - r * 0.9), (xa + side * tip * 0.8, cy + r * 0.2)],
                         fill=(235, 235, 240, 255), outline=OUTLINE)
    elif feature == "tail":
        draw.line([(x1 - r * 0.2, cy + r * 0.4), (min(SIZE - 3, x1 + r * 0.6), cy - r * 0.1),
                   (min(SIZE - 2, x1 + r * 0.7), cy - r * 0.7)], fill=body, width=5, joint="curve")

    _draw_body(draw, box, attrs["shape"], body, OUTLINE)

    if attrs["secondary"]:  # the pattern, clipped to the body through a mask
        accent = _jitter(TYPE_COLOURS[attrs["secondary"]][1], rng)
        layer = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        ld = ImageDraw.Draw(layer)
        if attrs["pattern"] == "spots":
            for _ in range(4):
                sx, sy, sr = rng.uniform(x0, x1), rng.uniform(cy - r * 0.1, y1), r * 0.2
                ld.ellipse((sx - sr, sy - sr, sx + sr, sy + sr), fill=accent)
        elif attrs["pattern"] == "stripes":
            for k in range(3):
                ys = cy - r * 0.1 + k * r * 0.38
                ld.rectangle((x0, ys, x1, ys + r * 0.16), fill=accent)
        else:  # belly
            ld.ellipse((cx - r * 0.5, cy, cx + r * 0.5, y1 - 3), fill=accent)
        mask = Image.new("L", (SIZE, SIZE), 0)
        _draw_body(ImageDraw.Draw(mask), (x0 + 2, y0 + 2, x1 - 2, y1 - 2), attrs["shape"], 255)
        img.paste(layer, (0, 0), Image.composite(layer.getchannel("A"), Image.new("L", (SIZE, SIZE), 0), mask))

    top = y0 + (r * 0.55 if attrs["shape"] == "triangular" else 0)
    if feature == "horn":
        draw.polygon([(cx - r * 0.15, top + 2), (cx + r * 0.15, top + 2), (cx, max(1, top - r * 0.6))], fill=(250, 240, 200, 255), outline=OUTLINE)
    elif feature == "ears":
        for side in (-1, 1):
            ex = cx + side * r * 0.45
            draw.polygon([(ex - r * 0.2, top + 4), (ex + r * 0.2, top + 4), (ex + side * r * 0.1, max(1, top - r * 0.45))], fill=body, outline=OUTLINE)
    elif feature == "antennae":
        for side in (-1, 1):
            tip = (cx + side * r * 0.5, max(3, top - r * 0.55))
            draw.line([(cx + side * r * 0.15, top + 3), tip], fill=OUTLINE, width=2)
            draw.ellipse((tip[0] - 3, tip[1] - 3, tip[0] + 3, tip[1] + 3), fill=OUTLINE)

    eye_y, eye_dx, eye_r = cy - r * 0.15, r * 0.3, max(2.0, r * 0.12)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse((ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r), fill=(255, 255, 255, 255), outline=OUTLINE)
        draw.ellipse((ex - eye_r * 0.5, eye_y - eye_r * 0.5, ex + eye_r * 0.5, eye_y + eye_r * 0.5), fill=OUTLINE)
    return img


def describe(attrs: dict) -> str:
    """The description: states colour, pattern, shape, size and feature (types and classification
    go in the record's own fields, which the enriched text adds)."""
    colour = TYPE_COLOURS[attrs["primary"]][0]
    pattern = ""
    if attrs["secondary"]:
        accent = TYPE_COLOURS[attrs["secondary"]][0]
        pattern = {"spots": f" covered in {accent} spots", "stripes": f" with {accent} stripes",
                   "belly": f" and a {accent} belly"}[attrs["pattern"]]
    return (f"{attrs['name']} is a {attrs['size']} {attrs['shape']} creature with a {colour} body{pattern}. "
            f"It has {FEATURES[attrs['feature']][0]}. It lives {HABITATS[attrs['primary']]}.")


def sample_attributes(rng: random.Random, record_id: int) -> dict:
    types = list(TYPE_COLOURS)
    primary = rng.choice(types)
    secondary = rng.choice([t for t in types if t != primary]) if rng.random() < 2 / 3 else None
    name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return {"id": record_id, "name": name, "primary": primary, "secondary": secondary,
            "pattern": rng.choice(PATTERNS), "shape": rng.choice(SHAPES), "size": rng.choice(list(SIZES)),
            "feature": rng.choice(list(FEATURES))}


def generate(directory: str | Path, n: int = 300, seed: int = 0) -> Path:
    """Write n creatures in the Pokédex layout into `directory` (created; reused as is if it already
    holds a complete set) and return it. Written to a temporary folder first and renamed, so a
    half-written set is never picked up."""
    directory = Path(directory)
    if (directory / "pokedex.json").is_file():
        return directory
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images" / "thumbnails").mkdir(parents=True)
    rng = random.Random(seed)
    entries = []
    for record_id in range(1, n + 1):
        attrs = sample_attributes(rng, record_id)
        draw_creature(attrs, rng).save(tmp / "images" / "thumbnails" / f"{record_id:03d}.png")
        entries.append({"id": record_id, "name": {"english": attrs["name"]},
                        "type": [attrs["primary"]] + ([attrs["secondary"]] if attrs["secondary"] else []),
                        "species": FEATURES[attrs["feature"]][1], "description": describe(attrs),
                        "attributes": {k: v for k, v in attrs.items() if k not in ("id", "name")}})
    (tmp / "pokedex.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False), encoding="utf-8")
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(directory)
    except OSError:  # another process finished the same set first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
