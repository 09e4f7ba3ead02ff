"""model.generate's output and its errors (fast: no trained model; the e2e search test runs it on one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.generate import main, save_grid


def test_images_are_written_at_a_viewable_size_with_sharp_pixels(tmp_path):
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    save_grid(images, tmp_path / "big.png")
    with Image.open(tmp_path / "big.png") as im:
        big = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32))  # (H, W, 3)
    # 3 images near-square: 2 columns × 2 rows of 256 px (factor 8), white 2 px gaps.
    assert (big.shape[1], big.shape[0]) == (2 * 256 + 3 * 2, 2 * 256 + 3 * 2)
    first = big[2:2 + 256, 2:2 + 256]  # image 0, upscaled
    expect = ((images[0].clamp(-1, 1) + 1) / 2 * 255).round().permute(1, 2, 0)
    assert torch.allclose(first[::8, ::8], expect, atol=1)  # nearest-neighbour: each pixel an 8×8 block
    assert torch.equal(first, first[::8, ::8].repeat_interleave(8, 0).repeat_interleave(8, 1))

    save_grid(images[:1], tmp_path / "raw.png", size=None)
    with Image.open(tmp_path / "raw.png") as im:
        assert im.size == (32, 32)  # the model's own resolution, one flag away (--raw)


@pytest.mark.parametrize("kind", ["missing", "not a checkpoint", "foreign weights"])
def test_a_wrong_checkpoint_is_a_one_line_error(kind, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    if kind == "not a checkpoint":
        path.write_bytes(b"hello")
    elif kind == "foreign weights":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", str(path), "a red creature", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: --checkpoint") and err.count("\n") == 1 and str(path) in err
    assert not (tmp_path / "x.png").exists()
