"""CLIP score, loss, baselines and retrieval, on a tiny random open_clip model registered here.

The tiny model's random weights are saved to a file and loaded back through `load_clip`'s
real local-checkpoint path. Its scores are meaningless as numbers; the tests check the
arithmetic against independent computations and the no-fake-numbers rules.
"""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data_pipeline.dataset import PreparedData, Split
from model.eval import clip
from model.families.regressor import RegressorConfig
from model.config import TEST_CLIP, ModelConfig, TrainConfig

TINY = "tiny-test-clip"
TINY_CFG = {  # ~1.6 M parameters, most of them the 49408-token embedding the BPE tokenizer needs
    "embed_dim": 16,
    "vision_cfg": {"image_size": 48, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
BOGUS = "/nonexistent/clip_weights.pt"


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> str:
    """A local checkpoint of the tiny architecture, registered with open_clip under TINY."""
    import open_clip
    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(folder / f"{TINY}.json")
    torch.manual_seed(0)
    path = folder / "tiny_clip.pt"
    torch.save(open_clip.create_model(TINY).state_dict(), path)
    return str(path)


@pytest.fixture(scope="session")
def scorer(tiny_clip_file) -> clip.ClipScorer:
    return clip.load_clip(TINY, tiny_clip_file, "cpu")


def random_images(n, size=32, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def tiny_data(size=32) -> PreparedData:
    def split(n, offset):
        colours = ["red", "blue", "green", "pink", "grey"][:n]
        texts = [f"A {c} pokemon number {offset + i}." for i, c in enumerate(colours)]
        return Split(np.arange(offset, offset + n), texts, random_images(n, size, offset).numpy())
    return PreparedData(split(5, 0), split(3, 100), split(4, 200), info={"source": "tests"})


# --- loading --------------------------------------------------------------------------------------


def test_local_checkpoint_is_loaded_frozen_and_once(scorer, tiny_clip_file):
    saved = torch.load(tiny_clip_file)
    loaded = scorer.model.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # the file's weights, not a fresh init
    assert not scorer.model.training and not any(p.requires_grad for p in scorer.model.parameters())
    assert scorer.image_size == 48 and scorer.name == f"{TINY}/{tiny_clip_file}"


def test_what_a_loader_saves_is_its_own(scorer, tiny_clip_file, capsys):
    """Each ClipLoader loads a model once and warns once; another loader (another owner) does both again, and a
    call without one keeps nothing (search/trainable.py gives each Ray worker one, for the trials it runs)."""
    assert clip.load_clip(TINY, tiny_clip_file, "cpu") is not scorer  # no loader: loaded again
    mine, other = clip.ClipLoader(), clip.ClipLoader()
    own = mine.load(TINY, tiny_clip_file, "cpu")
    assert own is not scorer and mine.load(TINY, tiny_clip_file, "cpu") is own
    assert all(torch.equal(a, b) for a, b in zip(own.model.state_dict().values(), scorer.model.state_dict().values()))
    assert clip.load_clip(TINY, tiny_clip_file, "cpu", loader=mine) is own
    cfg = TrainConfig(clip_mode="auto", clip_model=TINY, clip_pretrained=BOGUS)
    for loader, warns in ((mine, True), (mine, False), (other, True), (other, False)):
        assert clip.resolve_clip(cfg, "cpu", loader)[0] is None
        assert ("WARNING: no CLIP score" in capsys.readouterr().err) is warns


def _expect_fixing_message(err: Exception):
    msg = str(err)
    assert "--clip-pretrained /path/to/file.pt" in msg and "HF_HUB_OFFLINE" in msg and "--clip-mode off" in msg


@pytest.mark.parametrize("kind", ["missing", "corrupt", "other_architecture", "empty"])
def test_unloadable_weights_raise_with_the_fix(kind, tiny_clip_file, tmp_path):
    if kind == "missing":
        pretrained = BOGUS
    elif kind == "corrupt":
        pretrained = str(tmp_path / "corrupt.pt")
        (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    elif kind == "other_architecture":
        pretrained = str(tmp_path / "linear.pt")
        torch.save(torch.nn.Linear(3, 4).state_dict(), pretrained)
    else:
        pretrained = ""  # no weights at all: open_clip would happily build a random model
    with pytest.raises(clip.ClipUnavailable) as err:
        clip.load_clip(TINY, pretrained, "cpu")
    _expect_fixing_message(err.value)


def test_offline_tag_fails_fast_and_respects_hf_hub_offline(monkeypatch):
    import open_clip
    if clip._cached_file(open_clip.get_pretrained_cfg("ViT-B-32", "openai")):
        pytest.skip("ViT-B-32/openai weights are cached here: nothing to fail on")
    from huggingface_hub import constants
    if clip._reachable(constants.ENDPOINT):
        pytest.skip("the hub is reachable here: loading would download the weights")
    probes = []
    real = clip.socket.create_connection

    def probe(address, timeout=None, *args, **kwargs):  # every connection attempt, with its time limit
        probes.append(timeout)
        return real(address, timeout, *args, **kwargs)

    monkeypatch.setattr(clip.socket, "create_connection", probe)
    with pytest.raises(clip.ClipUnavailable):
        clip.load_clip("ViT-B-32", "openai", "cpu")  # unreachable hub: one short probe, no retries
    assert probes == [clip.PROBE_TIMEOUT_S] and clip.PROBE_TIMEOUT_S <= 5  # not huggingface_hub's ~45 s of retries
    monkeypatch.setattr(clip.socket, "create_connection", real)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(clip.ClipUnavailable, match="HF_HUB_OFFLINE is set"):
        clip.load_clip("ViT-B-32", "openai", "cpu")


def test_a_cached_tag_loads_from_its_file_with_the_tags_settings(monkeypatch, tmp_path):
    monkeypatch.setattr(clip, "_cached_file", lambda cfg: str(tmp_path / "cached.bin"))
    args = clip._weights_args("ViT-B-32", "openai")
    # OpenAI's ViT-B-32 was trained with QuickGELU: open_clip would only warn about the mismatch.
    assert args["pretrained"] == str(tmp_path / "cached.bin") and args["force_quick_gelu"] is True
    assert args["force_preprocess_cfg"]["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))


@pytest.mark.filterwarnings("ignore:`torch.jit.s:FutureWarning")
def test_openai_weights_from_a_file_get_quickgelu(tmp_path):
    openai_file, other_file, jit_file = tmp_path / "openai-ViT-B-32.pt", tmp_path / "weights.pt", tmp_path / "jit.pt"
    openai_file.write_bytes(b"x")
    other_file.write_bytes(b"x")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), jit_file)  # OpenAI's release format
    assert clip._weights_args("ViT-B-32", str(openai_file))["force_quick_gelu"] is True
    jit_args = clip._weights_args("ViT-B-32", str(jit_file))
    assert jit_args["force_quick_gelu"] is True and jit_args["weights_only"] is False
    with pytest.warns(UserWarning, match="ViT-B-32-quickgelu"):
        assert "force_quick_gelu" not in clip._weights_args("ViT-B-32", str(other_file))
    assert clip._weights_args("ViT-B-32-quickgelu", str(other_file)) == {"pretrained": str(other_file)}


# --- modes ----------------------------------------------------------------------------------------


def test_modes_and_the_loss_rule(scorer, tiny_clip_file, capsys):
    bogus = dict(clip_model=TINY, clip_pretrained=BOGUS)
    assert clip.resolve_clip(TrainConfig(clip_mode="off", **bogus), "cpu") == (None, "off: CLIP scoring disabled")
    got, status = clip.resolve_clip(TrainConfig(clip_mode="required", clip_model=TINY, clip_pretrained=tiny_clip_file),
                                    "cpu")
    assert status == "ok" and got.name == scorer.name  # the file's weights (loaded anew: no loader given)

    loader = clip.ClipLoader()  # a fresh owner: it has warned about nothing yet
    got, status = clip.resolve_clip(TrainConfig(clip_mode="auto", **bogus), "cpu", loader)
    assert got is None and status.startswith("unavailable:") and BOGUS in status and "--clip-pretrained" in status
    assert "WARNING: no CLIP score" in capsys.readouterr().err
    assert clip.resolve_clip(TrainConfig(clip_mode="auto", **bogus), "cpu", loader) == (None, status)
    assert "WARNING" not in capsys.readouterr().err  # once per owner (a process, a search), not once per trial

    with pytest.raises(clip.ClipUnavailable) as err:
        clip.resolve_clip(TrainConfig(clip_mode="required", **bogus), "cpu")
    _expect_fixing_message(err.value)
    for mode in ("auto", "off"):  # a CLIP loss cannot train without CLIP, whatever the mode
        with pytest.raises(clip.ClipUnavailable, match="needs CLIP weights"):
            clip.resolve_clip(TrainConfig(clip_mode=mode, **bogus), "cpu", clip_loss="l1+clip")


def test_the_unavailable_banner_is_printed_by_the_driver_not_by_each_trial(monkeypatch, capsys):
    import sys
    from types import SimpleNamespace

    def ray_process(actor_id):  # what a Tune trial (an actor) or the driver sees of Ray
        context = SimpleNamespace(get_actor_id=lambda: actor_id)
        return SimpleNamespace(is_initialized=lambda: True, get_runtime_context=lambda: context)

    cfg = TrainConfig(clip_mode="auto", clip_model=TINY, clip_pretrained=BOGUS)
    loader = clip.ClipLoader()
    monkeypatch.setitem(sys.modules, "ray", ray_process("a1b2"))
    _, status = clip.resolve_clip(cfg, "cpu", loader)
    assert status.startswith("unavailable:") and "WARNING" not in capsys.readouterr().err  # trial: recorded, quiet
    monkeypatch.setitem(sys.modules, "ray", ray_process(None))
    assert clip.resolve_clip(cfg, "cpu", loader) == (None, status)
    assert "WARNING: no CLIP score" in capsys.readouterr().err  # the driver says it, once


# --- preprocessing and score ----------------------------------------------------------------------


def test_minus1_1_pixels_map_to_clips_normalized_input(scorer):
    values = torch.tensor([-1.0, 0.0, 1.0])  # black red channel, mid-grey green, white blue
    images = values.view(1, 3, 1, 1).expand(2, 3, 32, 32)
    x = scorer.preprocess(images)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    expected = (torch.tensor([0.0, 0.5, 1.0]) - mean) / std
    assert x.shape == (2, 3, 48, 48)
    assert torch.allclose(x, expected.view(1, 3, 1, 1).expand_as(x), atol=1e-5)
    # Out-of-range outputs are clamped, as writing them to a PNG would.
    assert torch.allclose(scorer.preprocess(images * 3), x, atol=1e-5)


def test_preprocess_matches_open_clips_pil_transform(scorer):
    import open_clip
    rgb = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    pil = Image.fromarray(rgb).resize((32, 32), Image.NEAREST)  # blocks: edges and flat areas
    transform = open_clip.image_transform(scorer.image_size, is_train=False, mean=scorer.mean.flatten().tolist(),
                                          std=scorer.std.flatten().tolist(), interpolation="bicubic")
    reference = transform(pil)  # (3, 48, 48), through PIL's bicubic on uint8
    ours = scorer.preprocess(torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 127.5 - 1)[0]
    # Same kernel; PIL rounds to uint8 between its two passes, which shows at the sharpest edges only.
    diff = (ours - reference).abs()  # in normalized units: 1/255 of a pixel is ~0.015
    assert diff.mean() < 0.01 and diff.max() < 0.2


def test_score_equals_an_independent_cosine(scorer):
    import open_clip
    images, texts = random_images(5), ["a red cat", "a blue dog", "fire", "water", "a grey stone"]
    with torch.no_grad():
        img = scorer.model.encode_image(scorer.preprocess(images))
        txt = scorer.model.encode_text(open_clip.get_tokenizer(TINY)(texts))
    cos = [float(img[i] @ txt[i] / (img[i].norm() * txt[i].norm())) for i in range(5)]
    assert scorer.score(images, texts) == pytest.approx(np.mean(cos), abs=1e-5)
    assert scorer.score(images, texts, batch_size=2) == pytest.approx(np.mean(cos), abs=1e-5)
    assert scorer.score_scaled(images, texts) == pytest.approx(np.mean([100 * max(c, 0) for c in cos]), abs=1e-3)
    assert scorer.score(images.numpy(), texts) == pytest.approx(np.mean(cos), abs=1e-5)  # a split's numpy array


def test_texts_longer_than_the_context_are_truncated(scorer):
    long = "a very long description of a pokemon " * 200
    feats = scorer.text_features([long, "short"])
    assert feats.shape == (2, 16) and torch.isfinite(feats).all()
    assert np.isfinite(scorer.score(random_images(2), [long, long]))


# --- loss -----------------------------------------------------------------------------------------


def test_clip_loss_trains_the_images_and_leaves_clip_unchanged(scorer):
    before = {k: v.clone() for k, v in scorer.model.state_dict().items()}
    texts = ["a red cat", "a blue dog", "a green frog", "a yellow bird"]
    text_feats = scorer.text_features(texts)
    assert torch.allclose(clip.clip_loss(scorer, random_images(4), texts),
                          clip.clip_loss(scorer, random_images(4), text_feats))
    logits = torch.nn.Parameter(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    opt = torch.optim.Adam([logits], lr=0.05)
    losses = []
    for _ in range(10):
        loss = clip.clip_loss(scorer, torch.tanh(logits), text_feats)  # like a generator's tanh output
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    assert all(p.grad is None for p in scorer.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in scorer.model.state_dict().items())


# --- retrieval ------------------------------------------------------------------------------------


def test_retrieval_is_perfect_for_the_real_images_and_near_chance_for_noise():
    real = random_images(100, 16)
    assert clip.retrieval_accuracy(real, real) == {"top1": 1.0, "chance_top1": 0.01, "top5": 1.0, "chance_top5": 0.05}
    noise = clip.retrieval_accuracy(random_images(100, 16, seed=1), real)
    assert noise["top1"] <= 0.05 and noise["top5"] <= 0.15


def test_retrieval_counts_ties_against_the_record():
    constant = torch.zeros(10, 3, 8, 8)  # a text-blind model's output, and identical real images
    assert clip.retrieval_accuracy(constant, constant)["top1"] == 0.0
    assert clip.retrieval_accuracy(constant, random_images(10, 8))["top1"] <= 0.1  # one nearest at most
    with pytest.raises(ValueError):
        clip.retrieval_accuracy(constant, torch.zeros(9, 3, 8, 8))


# --- baselines ------------------------------------------------------------------------------------


def test_baselines_are_computed_and_serializable(scorer):
    data = tiny_data()
    b = clip.baselines(scorer, data, "ok")
    json.dumps(b)
    test = data.test
    assert b["baseline/clip_status"] == "ok" and b["baseline/clip_model"] == scorer.name
    assert b["baseline/clip_real_own_text"] == pytest.approx(scorer.score(test.images, test.texts), abs=1e-6)
    white = torch.ones(len(test), 3, 32, 32)
    assert b["baseline/clip_white_image"] == pytest.approx(scorer.score(white, test.texts), abs=1e-5)
    mean = torch.as_tensor(data.train.images).mean(0).expand(len(test), -1, -1, -1)
    assert b["baseline/clip_mean_train_image"] == pytest.approx(scorer.score(mean, test.texts), abs=1e-5)
    # The real images against another record's text: one of the derangements of the 4 test texts, none its own.
    derangements = [p for p in itertools.permutations(range(len(test))) if all(i != j for i, j in enumerate(p))]
    shuffled = [scorer.score(test.images, [test.texts[j] for j in p]) for p in derangements]
    assert min(abs(b["baseline/clip_real_shuffled_text"] - v) for v in shuffled) < 1e-5
    assert b["baseline/test_l1_mean_train_image"] == pytest.approx(F.l1_loss(mean, torch.as_tensor(test.images)).item())
    # The per-pixel median minimizes L1 over the training rows, so it is at least as close to them as the mean.
    train = torch.as_tensor(data.train.images)
    median = train.median(0, keepdim=True).values
    test_images = torch.as_tensor(test.images)
    assert b["baseline/test_l1_median_train_image"] == pytest.approx(
        F.l1_loss(median.expand_as(test_images), test_images).item())
    # Scored on the training rows themselves, the code's median image is at least as close to them as its mean
    # image (the per-pixel median minimises L1).
    on_train = clip.baselines(None, PreparedData(data.train, data.val, data.train, data.info), "none")
    assert on_train["baseline/test_l1_median_train_image"] <= on_train["baseline/test_l1_mean_train_image"]


def test_baselines_without_clip_say_why_and_keep_the_l1():
    b = clip.baselines(None, tiny_data(), "unavailable: no weights")
    json.dumps(b)
    assert b["baseline/clip_status"] == "unavailable: no weights"
    assert all(v is None for k, v in b.items() if k.startswith("baseline/clip_") and k not in
               ("baseline/clip_status", "baseline/clip_definition"))
    assert b["baseline/test_l1_mean_train_image"] > 0


def test_baselines_scale_uint8_splits_like_float_ones():
    """A prepared dataset holds uint8 images: the baselines compare in [-1, 1] all the same."""
    data = tiny_data()

    def to_uint8(s: Split) -> Split:
        return Split(s.ids, s.texts, np.round((s.images + 1) * 127.5).astype(np.uint8))
    as_uint8 = PreparedData(to_uint8(data.train), to_uint8(data.val), to_uint8(data.test), data.info)
    want, got = clip.baselines(None, data, "none"), clip.baselines(None, as_uint8, "none")
    for key in ("baseline/test_l1_mean_train_image", "baseline/test_l1_median_train_image"):
        assert got[key] == pytest.approx(want[key], abs=0.01)


def test_shuffled_texts_never_keep_their_own():
    for n in (2, 3, 10):
        perm = clip._derangement(n, seed=0)
        assert sorted(perm) == list(range(n)) and not (perm == np.arange(n)).any()
        assert (perm == clip._derangement(n, seed=0)).all()


# --- end to end through the lead's training loop --------------------------------------------------

SMALL = ModelConfig(image_size=32, d_model=32, ff_dim=64, n_layers=1)


def _train():
    from model.train import train

    return train


def test_train_auto_without_weights_records_unavailable_with_the_reason():
    metrics = _train()(SMALL, TrainConfig(epochs=1, batch_size=4, clip_model=TINY, clip_pretrained=BOGUS), tiny_data())
    assert metrics[TEST_CLIP] is None
    assert metrics["test/clip_status"].startswith("unavailable:") and BOGUS in metrics["test/clip_status"]


@pytest.mark.parametrize("cfg, loss", [(dict(clip_mode="required"), "l1"), (dict(clip_mode="auto"), "clip")])
def test_train_stops_before_any_epoch_without_weights(cfg, loss):
    reports = []
    with pytest.raises(clip.ClipUnavailable, match="--clip-pretrained"):
        _train()(SMALL, TrainConfig(epochs=1, clip_model=TINY, clip_pretrained=BOGUS, **cfg), tiny_data(),
                 report=lambda m, s: reports.append(m), family_cfg=RegressorConfig(loss=loss))
    assert reports == []


def test_train_with_clip_loss_and_score(tiny_clip_file):
    metrics = _train()(SMALL, TrainConfig(epochs=1, batch_size=4, clip_mode="required", clip_model=TINY,
                                          clip_pretrained=tiny_clip_file), tiny_data(),
                       family_cfg=RegressorConfig(loss="l1+clip"))
    assert metrics["test/clip_status"] == "ok" and isinstance(metrics[TEST_CLIP], float)
    assert np.isfinite(metrics["train/l1"])


def test_fused_members_with_a_clip_loss_equal_their_single_runs(tiny_clip_file):
    """A CLIP loss fuses: each member's loss is its own batch's, so a fused member trains as it would alone."""
    from model.train import train, train_members

    model_cfg = ModelConfig(image_size=32, d_model=32, ff_dim=64, n_layers=1, dropout_encoder=0.0,
                            dropout_attention=0.0, dropout_decoder=0.0)
    cfgs = [TrainConfig(lr=lr, epochs=2, batch_size=2, clip_mode="required", clip_model=TINY,
                        clip_pretrained=tiny_clip_file) for lr in (3e-3, 1e-3)]
    section, data = RegressorConfig(loss="l1+clip", clip_weight=1.0), tiny_data()
    fused = train_members(model_cfg, cfgs, data, family_cfg=section)
    for f, cfg in zip(fused, cfgs):
        single = train(model_cfg, cfg, data, family_cfg=section)
        assert f["train/l1"] == pytest.approx(single["train/l1"], rel=1e-4)
        assert f[TEST_CLIP] == pytest.approx(single[TEST_CLIP], rel=1e-4)
    assert fused[0]["train/l1"] != pytest.approx(fused[1]["train/l1"], rel=1e-4)  # two different runs compared
