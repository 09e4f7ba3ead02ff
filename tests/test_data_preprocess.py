"""The preprocessing functions against hand-computed values and invariants (no Ray, all fast)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipeline.config import DataConfig
from data_pipeline.pipeline import preprocess_batch
from data_pipeline.preprocess import (ImageTooLarge, alpha_to_white, decode_rgba, enriched_text, prepare_pixels,
                                      preprocess_image, resize, rotation_angles, split_ids)


def unit(v):
    """[0, 255] → [-1, 1], computed independently in float64."""
    return np.asarray(v, np.float64) / 127.5 - 1.0


def png16(rgba16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGBA PNG written by hand (Pillow cannot write one)."""
    h, w, _ = rgba16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgba16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------- alpha → white, scaling


def test_alpha_to_white_exact_values():
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 0, 255]],
                     [[0, 0, 0, 128], [100, 50, 250, 51]]], np.uint8)
    # 51/255 = 20 % opaque: 0.2·c + 0.8·255 → 224, 214, 254; 128/255 of black over white → 127
    expected = np.array([[[255, 255, 255], [200, 100, 0]],
                         [[127, 127, 127], [224, 214, 254]]], np.uint8)
    np.testing.assert_array_equal(alpha_to_white(rgba), expected)


def test_preprocess_exact_pixels_after_alpha_and_scaling(datafx):
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 0, 255]],
                     [[0, 0, 0, 128], [100, 50, 250, 51]]], np.uint8)
    out = preprocess_image(datafx.encode(rgba), size=2)  # size unchanged: no resampling in the way
    assert out.shape == (1, 3, 2, 2) and out.dtype == np.float32
    expected_hwc = [[[255, 255, 255], [200, 100, 0]], [[127, 127, 127], [224, 214, 254]]]
    np.testing.assert_allclose(out[0], unit(expected_hwc).transpose(2, 0, 1), atol=1e-6)
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # transparent → exactly white → exactly 1
    assert out[0, 2, 0, 1] == -1.0  # 0 → exactly -1


def test_output_range_and_shape(datafx):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (50, 50, 4), dtype=np.uint8)
    noise[:25, :, 3] = 255  # half opaque (the full colour range), half random alpha
    out = preprocess_image(datafx.encode(noise), size=40, copies=3)
    assert out.shape == (3, 3, 40, 40) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out.min() < -0.5 and out.max() > 0.5  # really spread over the range, not collapsed


# ----------------------------------------------------------------------------- rotations


def test_rotation_angles_documented():
    assert rotation_angles(8) == [0, 45, 90, 135, 180, 225, 270, 315]
    assert rotation_angles(1) == [0]
    with pytest.raises(ValueError):
        rotation_angles(0)


def test_rotated_copies_have_white_corners(datafx):
    rng = np.random.default_rng(1)
    opaque = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)  # nothing white anywhere
    data = datafx.encode(opaque)
    copies = preprocess_image(data, size=32, copies=8)
    assert copies.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(copies[0], preprocess_image(data, size=32)[0])  # copy 0 is the image
    np.testing.assert_array_equal(copies[2], np.rot90(copies[0], 1, axes=(1, 2)))  # 90° counter-clockwise
    np.testing.assert_array_equal(copies[4], np.rot90(copies[0], 2, axes=(1, 2)))
    for k in (1, 3, 5, 7):  # the diagonal angles uncover the corners: filled white, i.e. 1.0, not black
        for y, x in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
            assert copies[k, :, y, x].tolist() == [1.0, 1.0, 1.0], (k, y, x)
        assert (copies[k, :, 16, 16] < 0.6).all()  # the middle is still the (non-white) image
    assert not (copies[0] == 1.0).all(axis=0).any()


# ----------------------------------------------------------------------------- image modes


def _solid_rgb(out):
    """The single RGB value (0-255) of an all-same preprocessed image."""
    v = np.round((out[0] + 1) * 127.5).reshape(3, -1)
    assert (v == v[:, :1]).all(), "expected a uniform image"
    return v[:, 0].tolist()


def test_modes_rgb_l_la(datafx):
    assert _solid_rgb(preprocess_image(datafx.png((10, 200, 30), mode="RGB"), 12)) == [10, 200, 30]
    assert _solid_rgb(preprocess_image(datafx.png(77, mode="L"), 12)) == [77, 77, 77]
    assert _solid_rgb(preprocess_image(datafx.png((90, 255), mode="LA"), 12)) == [90, 90, 90]
    assert _solid_rgb(preprocess_image(datafx.png((90, 0), mode="LA"), 12)) == [255, 255, 255]
    assert _solid_rgb(preprocess_image(datafx.png(1, mode="1"), 12)) == [255, 255, 255]


def test_mode_palette_with_transparency(datafx):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 1), 1)
    out = preprocess_image(datafx.encode(img, transparency=0), 4)
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]  # palette index 0 is transparent → white
    np.testing.assert_allclose(out[0, :, 1, 1], unit([10, 200, 30]), atol=1e-6)


def test_mode_16bit_grey_scaled_not_clipped(datafx):
    grey = np.array([[0, 65535], [32896, 2570]], np.uint16)  # 65535/257 = 255, 32896/257 = 128, 2570/257 = 10
    data = datafx.encode(grey)
    assert Image.open(__import__("io").BytesIO(data)).mode.startswith("I")
    out = preprocess_image(data, 2)
    np.testing.assert_allclose(out[0, 0], unit([[0, 255], [128, 10]]), atol=1e-6)


def test_mode_16bit_rgba():
    rgba16 = np.zeros((3, 3, 4), np.uint16)
    rgba16[..., :3] = [257 * 10, 257 * 200, 257 * 30]
    rgba16[..., 3] = 65535
    rgba16[0, 0, 3] = 0  # one transparent pixel
    out = preprocess_image(png16(rgba16), 3)
    np.testing.assert_allclose(out[0, :, 1, 1], unit([10, 200, 30]), atol=1e-6)
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_jpeg_bytes_decode_whatever_the_name(datafx):
    out = preprocess_image(datafx.png((10, 200, 30), mode="RGB", fmt="JPEG"), 12)
    np.testing.assert_allclose(out[0, :, 6, 6], unit([10, 200, 30]), atol=6 / 127.5)  # JPEG is lossy


def test_large_and_non_square_images(datafx):
    big = preprocess_image(datafx.png((10, 200, 30, 255), size=(3000, 3000)), 16)
    assert _solid_rgb(big) == [10, 200, 30]
    wide = preprocess_image(datafx.png((10, 200, 30, 255), size=(40, 20)), 40)  # padded to a square with white
    assert wide[0, :, 0, 20].tolist() == [1.0, 1.0, 1.0] and wide[0, :, 20, 20].tolist() != [1.0, 1.0, 1.0]


@pytest.mark.parametrize("cut", ["truncated", "garbage", "empty"])
def test_broken_bytes_raise(datafx, cut):
    good = datafx.encode(np.random.default_rng(2).integers(0, 256, (40, 40, 4), dtype=np.uint8))
    data = {"truncated": good[: len(good) // 2], "garbage": b"not an image at all" * 10, "empty": b""}[cut]
    with pytest.raises(Exception):
        decode_rgba(data)


# ----------------------------------------------------------------------------- text


def test_enriched_text_two_types():
    assert enriched_text("Bulbasaur can be seen napping in bright sunlight.", "Seed Pokémon", "Grass", "Poison") == (
        "Bulbasaur can be seen napping in bright sunlight. This Pokémon is classified as a Seed Pokémon. "
        "It is of grass type and poison type.")


def test_enriched_text_one_type():
    assert enriched_text("It has a preference for hot things.", "Lizard Pokémon", "Fire", None) == (
        "It has a preference for hot things. This Pokémon is classified as a Lizard Pokémon. It is of fire type.")


# ----------------------------------------------------------------------------- split


def test_split_deterministic_disjoint_complete():
    ids = list(range(1, 899))
    a = split_ids(ids, 0.1, 0.1, seed=0)
    b = split_ids(reversed(ids), 0.1, 0.1, seed=0)  # order of the input does not matter
    assert a == b
    assert [len(a[s]) for s in ("train", "val", "test")] == [718, 90, 90]
    sets = [set(a[s]) for s in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(ids)
    assert split_ids(ids, 0.1, 0.1, seed=1) != a  # the seed matters


def test_split_is_stable_when_a_record_is_added():
    ids = list(range(1, 301))
    a, b = split_ids(ids, 0.1, 0.1, 0), split_ids(ids + [301], 0.1, 0.1, 0)
    moved = sum(1 for s in ("train", "val", "test") for i in a[s] if i not in b[s])
    assert moved <= 2


def test_split_small_and_invalid():
    small = split_ids([5, 6, 7], 0.1, 0.1, 0)
    assert sorted(len(v) for v in small.values()) == [1, 1, 1]
    assert split_ids([1, 2, 3, 4], 0.0, 0.0, 0)["train"] == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        split_ids([1, 2, 3], 0.5, 0.5, 0)


@pytest.mark.parametrize("val, test", [(0.0, 0.1), (0.1, 0.0), (0.5, 0.5), (-0.1, 0.2)])
def test_data_config_needs_val_and_test(val, test):
    # Training selects weights on val and reports test: a config that empties either is refused up front.
    with pytest.raises(ValueError, match="(val|test)_fraction"):
        DataConfig(val_fraction=val, test_fraction=test)


# ----------------------------------------------------------------------------- memory bounds


def grey_png(width: int, height: int, value: int = 90) -> bytes:
    """A valid 8-bit greyscale PNG of any size, compressed row by row (never the whole image in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z, row, parts = zlib.compressobj(1), b"\x00" + bytes([value]) * width, []
    for _ in range(height):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def test_image_over_the_pixel_cap_is_rejected_naming_its_size():
    # 81 Mpx: under Pillow's decompression-bomb limit (~89 Mpx), which would let it through to GBs of copies
    data = grey_png(9000, 9000)
    assert Image.open(__import__("io").BytesIO(data)).size == (9000, 9000)
    with pytest.raises(ImageTooLarge, match="9000×9000"):
        prepare_pixels(data, 16)
    batch = preprocess_batch({"id": np.array([7]), "image": np.array([data], dtype=object)}, 16, 1)
    assert batch["error"][0].startswith("image too large: image is 9000×9000 = 81.0 Mpx")


def test_large_image_is_shrunk_before_conversion(monkeypatch):
    """Above WORK_PIXELS the image reaches the numpy steps already shrunk, and the result matches the
    full-size path (the one without the bound) to a level or two."""
    import data_pipeline.preprocess as pp

    yy, xx = np.mgrid[0:2400, 0:3000]
    rgba = np.stack([xx * 255 // 2999, yy * 255 // 2399, (xx + yy) * 255 // 5398, np.full_like(xx, 255)], -1)
    rgba[:300, :, 3] = 0  # a transparent band: must turn white, not bleed black into the shrunk image
    data = encode_png(rgba.astype(np.uint8))
    seen = []
    real = pp.alpha_to_white
    monkeypatch.setattr(pp, "alpha_to_white", lambda a: seen.append(a.shape) or real(a))
    got = prepare_pixels(data, 32)[0].astype(int)
    (shape,) = seen
    assert shape[0] * shape[1] <= pp.WORK_PIXELS and shape[:2] == (1200, 1500)
    full = resize(real(decode_rgba(data)), 32).transpose(2, 0, 1).astype(int)  # decode_rgba without size: full
    assert np.abs(got - full).max() <= 2


def encode_png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", compress_level=1)
    return buf.getvalue()
