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

    assert (big[:2] == 255).all() and (big[:, 258:260] == 255).all()  # the white gaps
    # The layout is torchvision's make_grid (what the grid was built with before; torchvision is installed
    # for open_clip, but importing it cost every search driver 2.9 s): the same pixels.
    from torchvision.utils import make_grid

    upscaled = torch.nn.functional.interpolate(images, scale_factor=8, mode="nearest")
    theirs = make_grid((upscaled + 1) / 2, nrow=2, padding=2, pad_value=1.0)
    assert torch.equal(big, theirs.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).float())

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


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory):
    """A latent diffusion model trained for one epoch on tiny data: its best checkpoint, as export writes it."""
    from model import checkpoint
    from model.config import ModelConfig, TrainConfig
    from model.families.diffusion import DiffusionConfig
    from model.train import train
    from test_model import tiny_data

    cfg = ModelConfig(family="diffusion", image_size=32, d_model=32, ff_dim=64, n_layers=1, n_heads=2, max_tokens=32)
    section = DiffusionConfig(unet_width=16, unet_levels=2, latent_channels=4, autoencoder_steps=2, sample_steps=3)
    states = []
    train(cfg, TrainConfig(lr=1e-3, epochs=1, batch_size=4, clip_mode="off"), tiny_data(),
          report=lambda m, s: states.append(s), family_cfg=section)
    return checkpoint.save(states[-1].member(0), tmp_path_factory.mktemp("diffusion") / "best_checkpoint")


def test_a_diffusion_checkpoint_samples_a_viewable_png_per_seed(diffusion_checkpoint, tmp_path, capsys):
    # The checkpoint alone (no dataset, no autoencoder cache): its autoencoder's weights travel with it.
    out = {}
    for seed in (0, 0, 1):
        path = tmp_path / f"seed{seed}-{len(out)}.png"
        main(["--checkpoint", str(diffusion_checkpoint), "A red square creature.", "A blue stripe creature.",
              "--seed", str(seed), "--steps", "2", "--samples", "2", "--out", str(path)])
        with Image.open(path) as im:
            out.setdefault(seed, []).append(np.asarray(im.convert("RGB")))
    assert "sampled with ddim in 2 steps" in capsys.readouterr().out
    assert out[0][0].shape == (2 * 256 + 3 * 2, 2 * 256 + 3 * 2, 3)  # 2 prompts x 2 samples, 256 px each
    assert np.array_equal(out[0][0], out[0][1])  # the same seed: the same images
    assert not np.array_equal(out[0][0], out[1][0])  # another seed: other noise, other images


def test_a_regressor_checkpoint_says_what_it_ignores(tmp_path, capsys):
    from model import checkpoint
    from model.config import ModelConfig, TrainConfig
    from model.train import train
    from test_model import tiny_data

    states = []
    train(ModelConfig(image_size=32, d_model=32, ff_dim=64, max_tokens=32), TrainConfig(epochs=1, batch_size=4,
          clip_mode="off"), tiny_data(), report=lambda m, s: states.append(s))
    ckpt = checkpoint.save(states[-1].member(0), tmp_path / "best")
    main(["--checkpoint", str(ckpt), "A red square creature.", "--steps", "5", "--out", str(tmp_path / "r.png")])
    captured = capsys.readouterr()
    assert "--steps ignored" in captured.err and (tmp_path / "r.png").is_file()


def test_a_datasets_own_texts_are_drawn_from_its_cached_states(diffusion_checkpoint, tmp_path):
    """load_model with the dataset (what the search's export does for its sample figures): a frozen encoder that
    no stage trained is not loaded, the texts' states come from the dataset's cache as training read them, and
    the images equal those drawn through the encoder to float rounding (the two pad to other lengths). A process
    that draws a regressor's images so never imports transformers (diffusers' own modules import it)."""
    import pickle

    from conftest import modules_after
    from data_pipeline.dataset import PreparedData
    from model import checkpoint
    from model.config import ModelConfig, TrainConfig
    from model.generate import generate, load_model
    from model.text import TextTable
    from model.train import train
    from test_model import tiny_data

    small = tiny_data()
    data = PreparedData(small.train, small.val, small.test, info={"source": "tests", "cache_dir": str(tmp_path)})
    prompts = list(data.test.texts[:2])
    states = []
    train(ModelConfig(image_size=32, d_model=32, ff_dim=64, max_tokens=32), TrainConfig(epochs=1, batch_size=4,
          clip_mode="off"), data, report=lambda m, s: states.append(s))
    regressor = checkpoint.save(states[-1].member(0), tmp_path / "regressor")
    for ckpt in (diffusion_checkpoint, regressor):
        net, texts = load_model(ckpt, device="cpu", data=data)
        assert isinstance(texts, TextTable) and net.text_encoder is None
        ours = generate(net, texts, prompts, seed=3)
        theirs = generate(*load_model(ckpt, device="cpu"), prompts, seed=3)
        assert ours.shape == (2, 3, 32, 32) and torch.allclose(ours, theirs, atol=1e-4)

    (tmp_path / "data.pkl").write_bytes(pickle.dumps(data))
    code = ("import pickle\nfrom model.generate import generate, load_model\n"
            f"data = pickle.loads(open({str(tmp_path / 'data.pkl')!r}, 'rb').read())\n"
            f"net, texts = load_model({str(regressor)!r}, device='cpu', data=data)\n"
            f"print(tuple(generate(net, texts, {prompts!r}, seed=3).shape))")
    loaded, printed = modules_after(code, ("transformers",))
    assert loaded == [] and printed.splitlines()[-1] == "(2, 3, 32, 32)"
