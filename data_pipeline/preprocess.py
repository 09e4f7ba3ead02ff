"""The thesis's preprocessing as pure functions: image bytes in, model-ready arrays out.

    from data_pipeline.preprocess import enriched_text, prepare_pixels, preprocess_image, split_ids, to_unit_range
    preprocess_image(png_bytes, size=64, copies=8)   # (8, 3, 64, 64) float32 in [-1, 1]
    to_unit_range(prepare_pixels(png_bytes, 64, 8))  # the same, in the two halves the pipeline uses
    enriched_text("It spits fire.", "Lizard Pokémon", "Fire", None)
    # 'It spits fire. This Pokémon is classified as a Lizard Pokémon. It is of fire type.'
    split_ids(range(1, 899), val_fraction=0.1, test_fraction=0.1, seed=0)  # {"train": [...], "val": [...], "test": [...]}

One image goes through these steps, in the thesis's order:
1. decode (any mode: RGBA, RGB, P with transparency, LA, L, 16-bit, JPEG behind a .png name) to RGBA;
   above MAX_PIXELS rejected (`ImageTooLarge`), above WORK_PIXELS shrunk by an integer factor first;
2. alpha → white: composite over a white background, so transparent pixels become white;
3. pad to a square with white (only if the image is not square), resize to size×size (bicubic);
4. rotation copies: copy k is rotated counter-clockwise by k·360/N degrees, k = 0..N-1, so copy 0
   is the image itself and N = 8 gives 0°, 45°, ..., 315°; the corners that rotate in are white;
5. min–max scale [0, 255] → [-1, 1] (x / 127.5 - 1) as float32, channels first.

Everything here is numpy and Pillow, no Ray. The Ray Data tasks (`pipeline.py`) run steps 1–4
(`prepare_pixels`) and the prepared dataset stores their uint8 output, a quarter of the bytes of
float32; step 5 (`to_unit_range`, called by `Split.unit_images`) is elementwise, so applying it
later gives exactly the arrays of the per-record reference `preprocess_image`.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Iterable

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
RESIZE = Image.Resampling.BICUBIC  # antialiased when shrinking: 475 px artwork → 64 px without aliasing
ROTATE = Image.Resampling.BILINEAR

# Pillow opens 16-bit greyscale as these modes; convert("L") would clip everything above 255 to white
# instead of scaling, so they are scaled by hand.
_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}

# Memory bounds for one image (Pillow's own decompression-bomb limit, ~89 Mpx, still means GBs here):
MAX_PIXELS = 6000 * 6000  # larger images are rejected, saying their size, before decoding
WORK_PIXELS = 2048 * 2048  # larger ones are shrunk by an integer factor right after decoding


class ImageTooLarge(ValueError):
    """The image has more pixels than MAX_PIXELS (checked from its header, before decoding)."""


def _reduce_factor(w: int, h: int, size: int | None) -> int:
    """The integer shrink factor that brings a w×h image under WORK_PIXELS while its long side stays
    at least 2·size (so the bicubic resize to size still has detail to work with); 1 = keep as is."""
    if size is None or w * h <= WORK_PIXELS:
        return 1
    return max(1, min(math.ceil(math.sqrt(w * h / WORK_PIXELS)), max(w, h) // (2 * size)))


def decode_rgba(data: bytes, size: int | None = None) -> np.ndarray:
    """Encoded image bytes → (H, W, 4) uint8 RGBA. Raises (OSError, ValueError, ...) on broken data,
    ImageTooLarge above MAX_PIXELS.

    With `size` (the final side), an image above WORK_PIXELS is shrunk by an integer factor before
    any conversion (JPEG even decodes at the smaller scale), so memory stays near one decoded image
    of at most MAX_PIXELS, not the several full-size RGBA / uint16 copies the later steps make.
    """
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if w * h > MAX_PIXELS:
            side = math.isqrt(MAX_PIXELS)
            raise ImageTooLarge(f"image is {w}×{h} = {w * h / 1e6:.1f} Mpx, over the {MAX_PIXELS / 1e6:.0f} Mpx "
                                f"this pipeline decodes; shrink it to at most {side}×{side}")
        factor = _reduce_factor(w, h, size)
        if factor > 1:
            img.draft(img.mode, (w // factor, h // factor))  # JPEG only: decode at 1/2, 1/4 or 1/8 scale
        img.load()  # decode now, so a truncated file fails here rather than somewhere later
        if img.mode in _SIXTEEN_BIT_MODES and img.mode != "I":
            img = img.convert("I")  # 32-bit, values kept; reduce works on it, not on I;16
        factor = _reduce_factor(*img.size, size)  # what is left after draft
        if factor > 1:
            if img.mode not in ("RGBA", "RGB", "LA", "L", "I"):
                img = img.convert("RGBA")  # P, 1, CMYK, ...: reduce needs plain channels (alpha premultiplied)
            img = img.reduce(factor)
        if img.mode in _SIXTEEN_BIT_MODES:
            grey = np.asarray(img, dtype=np.int64).clip(0, 65535)
            grey = ((grey + 128) // 257).astype(np.uint8)  # 65535 / 257 = 255: exact rescale, rounded
            img = Image.fromarray(grey, "L")
        return np.asarray(img.convert("RGBA"))


def alpha_to_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 → (H, W, 3) uint8, composited over white: round((rgb·a + 255·(255 − a)) / 255).

    Fully transparent pixels become exactly white, opaque ones keep their colour, and the
    antialiased edge of the artwork blends into white rather than into black.
    """
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    # max of the numerator is 255·255 + 127 = 65152, so uint16 cannot overflow
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8. A non-square image is first padded with white
    to a centred square, so the creature is not stretched."""
    img = Image.fromarray(rgb, "RGB")
    w, h = img.size
    if w != h:
        side = max(w, h)
        square = Image.new("RGB", (side, side), WHITE)
        square.paste(img, ((side - w) // 2, (side - h) // 2))
        img = square
    if img.size != (size, size):
        img = img.resize((size, size), RESIZE)
    return np.asarray(img)


def rotation_angles(n: int) -> list[float]:
    """The N augmentation angles in degrees, counter-clockwise: k·360/N for k = 0..N-1."""
    if n < 1:
        raise ValueError(f"augment_rotations must be >= 1 (1 = no augmentation), got {n}")
    return [k * 360.0 / n for k in range(n)]


def rotate_copies(rgb: np.ndarray, n: int) -> np.ndarray:
    """(S, S, 3) uint8 → (n, S, S, 3) uint8: the image at each of `rotation_angles(n)`,
    the uncovered corners filled white (the background), not black."""
    img = Image.fromarray(rgb, "RGB")
    return np.stack([np.asarray(img.rotate(angle, ROTATE, fillcolor=WHITE)) for angle in rotation_angles(n)])


def prepare_pixels(data: bytes, size: int, copies: int = 1) -> np.ndarray:
    """Encoded image → (copies, 3, size, size) uint8, channels first: steps 1–4 of the module docstring."""
    rgb = resize(alpha_to_white(decode_rgba(data, size)), size)
    return np.ascontiguousarray(rotate_copies(rgb, copies).transpose(0, 3, 1, 2))


def to_unit_range(pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 → float32 of the same shape: min–max scale [0, 255] → [-1, 1], i.e. x / 127.5 - 1,
    computed in float32. `out` (float32, same shape) receives the result instead of a new array."""
    out = np.divide(pixels, np.float32(127.5), out=out, dtype=np.float32)
    out -= np.float32(1.0)
    return out


def preprocess_image(data: bytes, size: int, copies: int = 1) -> np.ndarray:
    """Encoded image → (copies, 3, size, size) float32 in [-1, 1]: steps 1–5, the per-record reference."""
    return to_unit_range(prepare_pixels(data, size, copies))


def enriched_text(description: str, classification: str, primary: str, secondary: str | None = None) -> str:
    """The thesis's enriched description: the Pokédex text plus the classification and the types."""
    types = f"{primary.lower()} type" + (f" and {secondary.lower()} type" if secondary else "")
    return f"{description} This Pokémon is classified as a {classification}. It is of {types}."


# Other words for the enriched fields: {c} classification, {types} "grass type and poison type".
_FIELD_TEMPLATES = ("This Pokémon is classified as a {c}. It is of {types}.", "A {c} of {types}.",
                    "It is a {c}, of {types}.", "Of {types}, this is a {c}.")


def paraphrases(description: str, classification: str, primary: str, secondary: str | None, n: int,
                enriched: bool = True) -> list[str]:
    """n texts for one training record, built from its own sentences and fields (no external model).

    Text 0 is the record's own text, as validation and test see it (`enriched_text`, or the bare
    description). The others reorder the description's sentences, drop one from a description of three
    or more, and state the classification and types in other words, before or after the description.
    Deterministic: the same record gives the same texts on every run.
    """
    import random
    import re

    base = enriched_text(description, classification, primary, secondary) if enriched else description
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", description.strip()) if x]
    types = f"{primary.lower()} type" + (f" and {secondary.lower()} type" if secondary else "")
    out, tries = [base], 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        rng = random.Random(f"{description}|{classification}|{tries}")
        order = rng.sample(sentences, len(sentences))
        if len(order) >= 3 and rng.random() < 0.5:
            order.pop(rng.randrange(len(order)))
        text = " ".join(order)
        if enriched:
            fields = rng.choice(_FIELD_TEMPLATES).format(c=classification, types=types)
            text = f"{fields} {text}" if rng.random() < 0.5 else f"{text} {fields}"
        if text not in out:
            out.append(text)
    return out + [base] * (n - len(out))  # a one-sentence plain description has no other wording


def split_ids(ids: Iterable[int], val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Deterministic split by record id: each id gets a seeded hash; the lowest test_fraction of the
    hashes go to test, the next val_fraction to val, the rest to train. Each list is sorted.

    Depends only on the ids and the seed (not on their order, the machine or the run), and adding or
    removing one record moves at most a couple of others. Counts are rounded, with at least one
    record in val and in test whenever their fraction is > 0 and there are at least 3 records.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1; got {val_fraction}, {test_fraction}")
    ids = sorted({int(i) for i in ids})
    n = len(ids)

    def count(fraction: float) -> int:
        k = math.floor(n * fraction + 0.5)
        return max(k, 1) if fraction > 0 and n >= 3 else k

    n_test, n_val = count(test_fraction), count(val_fraction)
    order = sorted(ids, key=lambda i: hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest())
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
