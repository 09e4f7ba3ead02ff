"""The diffusion family (model/families/diffusion.py) in the one loop, on tiny data made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_pipeline.dataset import PreparedData, Split
from dataclasses import replace
from types import SimpleNamespace

from model import checkpoint, families
from model.config import TEST_COPY_RATE, TEST_DIVERSITY, TEST_L1, TRAIN_LOSS, VAL_X0, ModelConfig, TrainConfig
from model.eval import attributes
from model.eval.evaluator import Evaluator, split_images
from model.families.diffusion import Denoiser, DiffusionConfig, Process
from model.families.regressor import RegressorConfig
from model.train import train
from test_members import fused_run
from test_model import NO_DROPOUT, tiny_data

TINY = ModelConfig(family="diffusion", image_size=32, d_model=32, ff_dim=64, n_layers=1, n_heads=2, max_tokens=32)
# No cross-attention-only level: at two levels the default's would be the 32 px top one (its own tests below).
SECTION = DiffusionConfig(unet_width=16, unet_levels=2, unet_cross_levels=0, sample_steps=3)
QUICK = TrainConfig(lr=1e-3, epochs=2, batch_size=4, clip_mode="off")


@pytest.mark.parametrize("pooled, cross", [(False, 0), (True, 0), (True, 1)],
                         ids=["cross-attention", "+pooled", "+cross-attention-only level"])
def test_a_member_is_its_own_unet(pooled, cross):
    cfg = ModelConfig(**{**TINY.__dict__, "pooled_text": pooled})
    section = replace(SECTION, unet_cross_levels=cross)
    two = Denoiser(cfg, section, text_dim=12, seeds=[0, 5]).eval()  # eval: no dropout
    five = Denoiser(cfg, section, text_dim=12, seeds=[5]).eval()
    for (name, a), (_, b) in zip(two.named_parameters(), five.named_parameters(), strict=True):
        assert torch.equal(a[1], b[0]), name  # member 1 starts where a one-member network with its seed starts
    assert not torch.equal(two.unet.conv_in.weight[0], two.unet.conv_in.weight[1])
    x, t = torch.randn(2, 3, 3, 32, 32), torch.randint(0, 1000, (2, 3))
    hidden, mask = torch.randn(2, 3, 5, 12), torch.ones(2, 3, 5)
    with torch.no_grad():
        torch.testing.assert_close(two(x, t, hidden, mask)[1], five(x[1:], t[1:], hidden[1:], mask[1:])[0])


def _run(model_cfg, cfg, data, **kw):
    history, states = [], []
    final = train(model_cfg, cfg, data, report=lambda m, s: (history.append(m), states.append(s)),
                  family_cfg=kw.pop("family_cfg", SECTION), **kw)
    return history, states, final


@pytest.mark.parametrize("scale_shift", [False, True])
def test_scale_shift_makes_every_resnet_block_scale_and_shift_by_the_timestep_and_text(scale_shift):
    """unet_scale_shift reaches every ResNet block: the embedding's projection gives a scale and a shift per channel
    (twice the channels); off, one offset per channel."""
    from diffusers.models.resnet import ResnetBlock2D

    cfg = ModelConfig(**{**TINY.__dict__, "pooled_text": True})
    net = Denoiser(cfg, replace(SECTION, unet_scale_shift=scale_shift), text_dim=12)
    blocks = [m for m in net.unet.modules() if isinstance(m, ResnetBlock2D)]
    assert len(blocks) >= 2 * SECTION.unet_levels
    for b in blocks:
        assert b.time_embedding_norm == ("scale_shift" if scale_shift else "default")
        assert b.time_emb_proj.weight.shape[-2] == (2 if scale_shift else 1) * b.conv1.weight.shape[-4]


def test_cross_levels_read_the_text_through_attention_alone_and_its_mask():
    """unet_cross_levels: the level above the attention one reads the text through TextAttention (no self-attention,
    no feed-forward) on the way down and up; what it adds follows the text's unmasked tokens and ignores masked ones
    (the UNet's mask reaches it); without the field that level has no attention at all."""
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    from model.families.diffusion import TextAttention

    plain = Denoiser(TINY, SECTION, text_dim=12).unet
    assert not hasattr(plain.down_blocks[0], "attentions") and isinstance(plain.down_blocks[1].attentions[0],
                                                                          Transformer2DModel)
    net = Denoiser(TINY, replace(SECTION, unet_cross_levels=1), text_dim=12).eval()
    finest = [*net.unet.down_blocks[0].attentions, *net.unet.up_blocks[1].attentions]
    assert len(finest) == 1 + 2 and all(isinstance(m, TextAttention) for m in finest)  # up blocks: layers + 1
    assert all(isinstance(m, Transformer2DModel) for m in net.unet.down_blocks[1].attentions)
    outputs = []
    net.unet.down_blocks[0].attentions[0].register_forward_hook(
        lambda module, args, out: outputs.append(out[0] - args[0]))  # what it adds to its input
    x, t = torch.randn(1, 2, 3, 32, 32), torch.randint(0, 1000, (1, 2))
    hidden, mask = torch.randn(1, 2, 5, 12), torch.tensor([[[1.0, 1, 1, 0, 0]] * 2])
    masked, unmasked = hidden.clone(), hidden.clone()
    masked[..., 4, :] += 3
    unmasked[..., 1, :] += 3
    with torch.no_grad():
        for h in (hidden, masked, unmasked):
            net(x, t, h, mask)
    assert outputs[0].abs().mean() > 0
    torch.testing.assert_close(outputs[1], outputs[0])
    assert (outputs[2] - outputs[0]).abs().mean() > 1e-3 * outputs[0].abs().mean()
    with pytest.raises(ValueError, match="unet_attention \\+ unet_cross_levels must be at most unet_levels"):
        replace(SECTION, unet_cross_levels=2)


def test_a_checkpoint_from_before_cross_levels_builds_the_unet_it_trained():
    """A checkpoint stores every field of its section; one written before unet_cross_levels existed lacks it and was
    trained without that level (the default is 1 now): it is rebuilt with 0, and its weights load; likewise a
    stored search's section."""
    from dataclasses import asdict

    old = asdict(replace(SECTION, unet_cross_levels=0))
    del old["unet_cross_levels"]
    assert families.section(TINY, old).unet_cross_levels == 0
    assert families.section(TINY, asdict(replace(SECTION, unet_cross_levels=1))).unet_cross_levels == 1
    assert DiffusionConfig().unet_cross_levels == 1
    trained = Denoiser(TINY, replace(SECTION, unet_cross_levels=0), text_dim=12).state_dict()
    rebuilt = Denoiser(TINY, families.section(TINY, old), text_dim=12)
    rebuilt.load_state_dict(trained)  # strict: the same modules
    # A search stored before the field (what --resume reads) resumes its trials without the level too.
    from data_pipeline.config import DataConfig
    from search.settings import Settings

    settings = Settings("laptop", TINY, QUICK, DataConfig(), {"family": ("diffusion",)}, None, {"diffusion": SECTION})
    stored = settings.to_dict()
    del stored["sections"]["diffusion"]["unet_cross_levels"]
    assert Settings.from_dict(stored).sections["diffusion"] == SECTION


def test_a_diffusion_member_equals_its_single_run():
    data = tiny_data(n_train=8)
    model_cfg = ModelConfig(**{**TINY.__dict__, **NO_DROPOUT})
    cfgs = [QUICK, TrainConfig(**{**QUICK.__dict__, "lr": 3e-4, "seed": 3})]
    results, fused_history, fused_states = fused_run(model_cfg, cfgs, data, family_cfg=SECTION)
    for k, cfg in enumerate(cfgs):
        history, states, single = _run(model_cfg, cfg, data)
        for mine, theirs in zip(fused_history[k], history, strict=True):
            assert mine[TRAIN_LOSS] == pytest.approx(theirs[TRAIN_LOSS], rel=1e-4)
            assert mine[VAL_X0] == pytest.approx(theirs[VAL_X0], rel=1e-4)
        assert results[k][TEST_DIVERSITY] == pytest.approx(single[TEST_DIVERSITY], rel=1e-3)
        mine = fused_states[-1].member(k).best_model[0]
        for name, w in states[-1].best_model[0].items():
            torch.testing.assert_close(mine[name], w, rtol=1e-3, atol=1e-4)
    assert results[0][VAL_X0] != results[1][VAL_X0]  # two different runs were compared


def test_kill_and_resume_is_bit_identical(tmp_path):
    data = tiny_data(n_train=8)
    cfg = TrainConfig(**{**QUICK.__dict__, "epochs": 3})  # dropout on (TINY): the global RNG must resume too
    _, full, final = _run(TINY, cfg, data)

    def stop_after_one(metrics, state):
        checkpoint.save(state, tmp_path / "epoch1")
        raise KeyboardInterrupt  # the trial's process dies here

    with pytest.raises(KeyboardInterrupt):
        train(TINY, cfg, data, report=stop_after_one, family_cfg=SECTION)
    _, resumed, resumed_final = _run(TINY, cfg, data, resume=checkpoint.load(tmp_path / "epoch1"))
    assert [s.epoch for s in resumed] == [2, 3]
    for name, w in full[-1].model.items():
        assert torch.equal(w, resumed[-1].model[name]), name
    for a, b in zip(full[-1].ema["shadow_params"], resumed[-1].ema["shadow_params"], strict=True):
        assert torch.equal(a, b)
    untimed = {k: v for k, v in final.items() if k != "samples_per_s"}
    assert untimed == {k: v for k, v in resumed_final.items() if k != "samples_per_s"}


def test_the_selection_metric_is_deterministic_and_moves_with_the_weights():
    from model.families import Diffusion, Targets
    from model.network import TextToImage
    from model.text import TextTable, load_text_encoder

    data = tiny_data()
    tokenizer, encoder, _ = load_text_encoder(TINY.text_encoder)
    net = TextToImage(TINY, SECTION, encoder, seeds=[0])
    texts = TextTable.of(tokenizer, data, TINY, "cpu", Diffusion.extra_texts).encode(encoder)
    targets = Targets(data, split_images(data, "cpu"))
    family = Diffusion(net, texts, QUICK, SECTION, targets)
    first = family.select()
    torch.manual_seed(99)  # the metric must not read the global RNG
    assert family.select() == first
    again = Diffusion(net, texts, QUICK, SECTION, targets)  # a new trial: the same noise
    assert again.select() == first
    with torch.no_grad():
        net.generator.unet.conv_out.bias.add_(0.5)
    assert family.select() != first


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_implies_the_true_clean_image_from_its_own_target(prediction_type):
    # The selection metric compares the implied clean image, so recipes with different prediction types are ranked
    # on one quantity: the exact target of each type must imply exactly the image that was noised.
    process = Process(DiffusionConfig(prediction_type=prediction_type, noise_schedule="squaredcos_cap_v2"))
    x0, noise = torch.rand(1, 4, 3, 8, 8) * 2 - 1, torch.randn(1, 4, 3, 8, 8)
    t = torch.tensor([[10, 200, 600, 990]])
    x_t = process.noisy(x0, noise, t)
    a = process.scheduler.alphas_cumprod[t].view(1, 4, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * x0 + (1 - a).sqrt() * noise)  # DDPM's forward process
    torch.testing.assert_close(process.clean(process.target(x0, noise, t), x_t, t), x0, rtol=1e-3, atol=1e-3)


def test_min_snr_weights_follow_the_paper():
    # Hang et al. 2023: min(SNR, gamma) / SNR for an epsilon target; for v, whose loss is (SNR + 1) x the clean-image
    # loss, min(SNR + 1, gamma) / (SNR + 1) (huggingface/diffusers#5238: the paper's min(SNR, gamma) / (SNR + 1)
    # starves the steps near pure noise, tests below).
    t = torch.tensor([[1, 100, 500, 999]])
    five = torch.tensor(5.0)
    for prediction_type in ("epsilon", "v_prediction"):
        process = Process(DiffusionConfig(min_snr_gamma=5.0, prediction_type=prediction_type))
        a = process.scheduler.alphas_cumprod[t]
        snr = a / (1 - a)
        expected = torch.minimum(snr, five) / snr if prediction_type == "epsilon" else \
            torch.minimum(snr + 1, five) / (snr + 1)
        torch.testing.assert_close(process.weights(t), expected)
    assert torch.equal(Process(DiffusionConfig(min_snr_gamma=0.0)).weights(t), torch.ones(1, 4))


def test_the_default_weighting_does_not_starve_the_steps_where_only_the_text_speaks():
    """Near pure noise the clean-image estimate can come from the text alone (it is the regressor's conditional mean):
    the default loss must weight it, in clean-image terms, no less than the steps that polish a nearly clean image.
    min-SNR-5 with v-prediction weighted it by ~SNR (2e-9 at t = 999), and the model drew no stated shape."""
    assert DiffusionConfig().min_snr_gamma > 0  # the weighting is on: what is checked is its form
    process = Process(DiffusionConfig())
    assert process.cfg.prediction_type == "v_prediction"
    t = torch.tensor([[999, 960, 500, 100]])
    a = process.scheduler.alphas_cumprod[t]
    x0_weight = process.weights(t) * (a / (1 - a) + 1)  # v-loss = (SNR + 1) x the clean-image loss
    assert x0_weight[0, 0] >= 1 and x0_weight[0, 1] >= 1


class ConstantX0(torch.nn.Module):
    """Predicts the same clean image for every input, text and step: a sampler must end on it."""

    members = 1

    def __init__(self, image):
        super().__init__()
        self.image = image

    def forward(self, sample, timesteps, hidden, mask):
        return self.image.expand_as(sample)


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_a_deterministic_sampler_ends_on_the_predicted_clean_image(sampler):
    process = Process(DiffusionConfig(prediction_type="sample", sampler=sampler, sample_steps=6, guidance_scale=3.0))
    image = torch.rand(1, 1, 3, 8, 8) * 2 - 1
    hidden, mask = torch.zeros(1, 2, 4, 6), torch.ones(1, 2, 4)
    out = process.sample(ConstantX0(image), (hidden, mask), (hidden, mask), torch.randn(1, 2, 3, 8, 8))
    # DPM-Solver++ ends at sigma 0; DDIM's last trailing step lands on t = 0, not on alpha 1, where
    # sqrt(1 - alpha_0) = sqrt(beta_0) = 0.01 keeps 1% of the implied noise.
    tol = 1e-4 if sampler == "dpm" else 0.05
    torch.testing.assert_close(out, image.expand(1, 2, 3, 8, 8), rtol=0, atol=tol)


def _split(images: np.ndarray, offset: int) -> Split:
    return Split(np.arange(offset, offset + len(images)), [f"record {offset + i}" for i in range(len(images))],
                 images.astype(np.float32))


class Returns:
    """A family whose images are given (no training): what the evaluator makes of them. Its samples differ by a
    little noise, seeded by the sample index."""

    draws = None

    def __init__(self, data, test_images):
        self.data, self.test = data, torch.as_tensor(np.asarray(test_images), dtype=torch.float32)
        self.texts = SimpleNamespace(rows={"train": torch.arange(len(data.train))})

    def generate(self, split, sample):
        base = self.test if split == "test" else torch.as_tensor(self.data.split(split).images)
        noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(sample)) * 0.02
        return (base + noise)[None]  # (K = 1, R, 3, S, S)

    def images(self, rows, seed=0):
        return torch.as_tensor(self.data.train.images)[rows][None]  # a memoriser: its training images back


def test_the_evaluator_flags_a_copier_with_intervals_and_paired_scores():
    """Wired through Evaluator.final: a generator that returns training images for test texts copies (copy rate near
    1), one that returns the real test images does not (near 0); each metric has its interval and the paired
    metrics their per-record scores; images from training texts are measured too."""
    rng = np.random.default_rng(0)
    train_images = rng.uniform(-1, 1, (20, 3, 8, 8))
    data = PreparedData(_split(train_images, 0), _split(rng.uniform(-1, 1, (6, 3, 8, 8)), 100),
                        _split(rng.uniform(-1, 1, (6, 3, 8, 8)), 200), info={"source": "tests"})
    evaluator = Evaluator(data, split_images(data, "cpu"))
    copier, real = (evaluator.final(Returns(data, x), [True], samples=3)[0] for x in (train_images[:6], data.test.images))
    assert copier[TEST_COPY_RATE] > 0.9 and real[TEST_COPY_RATE] < 0.2
    assert copier[TEST_COPY_RATE + "_lo"] <= copier[TEST_COPY_RATE] <= copier[TEST_COPY_RATE + "_hi"]
    assert real["train/copy_rate"] > 0.9  # its images from training texts are its training images
    assert 0 < real[TEST_DIVERSITY] < 0.2  # three samples of each text, barely different: the text decides
    assert real[TEST_L1] < copier[TEST_L1]


def test_staged_training_and_a_clip_loss_are_the_regressors():
    data = tiny_data()
    with pytest.raises(ValueError, match="staged training .* does not apply to the diffusion family"):
        train(TINY, replace(QUICK, finetune_epochs=1), data, family_cfg=SECTION)
    # A CLIP loss is a field of the regressor's section: a diffusion model refuses that section by name.
    with pytest.raises(TypeError, match="a diffusion model takes a DiffusionConfig, got RegressorConfig"):
        train(TINY, QUICK, data, family_cfg=RegressorConfig(loss="l1+clip"))



# Sized on 2 cores, one thread (2026-12-02), seeds 0/1/2. At 32 px, 24 epochs (180 steps) reach val/test
# 0.50/0.60 (chance 0.133) but take 136 s in the suite; 16 epochs learn nothing. At 16 px (the colour that names
# the type needs no more) a step is 3x cheaper: 24 epochs give 0.47/0.47, 0.37/0.27, 0.30/0.37 (one seed under
# the bar), 30 epochs 0.77/0.73, 0.63/0.40, 0.53/0.50 in about 53 s. The test runs 30 epochs at 16 px, and reads the
# body colour with the attribute reader at a third of its fit (the colour is the first thing it learns).
LEARN = TrainConfig(lr=3e-3, warmup_steps=50, epochs=30, batch_size=32, clip_mode="off", eval_samples=2, eval_fit=0.1)
LEARN_SECTION = replace(SECTION, sample_steps=10, guidance_scale=5.0)
LEARN_SIZE = 16


def test_the_family_learns_the_synthetic_texts_colours(tmp_path):
    """On the embedded synthetic set (a creature's body colour follows its primary type, which its text names),
    a small diffusion model trained for a CI-sized budget draws val and test images whose body colour the
    attribute reader reads as the text states clearly more often than any text-blind image could (the floor: the
    commonest colour's share), without copying training images and with samples that differ."""
    from data_pipeline.config import DataConfig
    from data_pipeline.prepare import prepare_in_memory
    from data_pipeline.synthetic import generate

    data = prepare_in_memory(generate(tmp_path / "synthetic", 300, 0),
                             DataConfig(image_size=LEARN_SIZE, augment_rotations=1))
    final = train(ModelConfig(**{**TINY.__dict__, **NO_DROPOUT, "pooled_text": True, "image_size": LEARN_SIZE}),
                  LEARN, data, family_cfg=LEARN_SECTION)
    floor = attributes.floor(attributes.split_attributes(data, "test"))["colour"]
    colour = (final["val/attr_colour"] + final["test/attr_colour"]) / 2  # over 2 x 60 sampled images
    print(f"colour accuracy val {final['val/attr_colour']:.3f}, test {final['test/attr_colour']:.3f}, floor "
          f"{floor:.3f}; copy rate {final[TEST_COPY_RATE]:.2f}, diversity {final[TEST_DIVERSITY]:.3f}")
    assert colour >= 2.5 * floor, (final["val/attr_colour"], final["test/attr_colour"], floor)
    assert final[TEST_COPY_RATE] < 0.5 and final[TEST_DIVERSITY] > 0.05


@pytest.mark.parametrize("family, latent, ok", [("diffusion", 0, True), ("regressor", 0, False), ("diffusion", 4, False)])
def test_16_px_is_a_size_for_the_pixel_diffusion_family_only(family, latent, ok):
    """The regressor's decoder doubles a 4 px map at least three times, and the autoencoder's latents of a 16 px
    image would be 4 px: both refuse 16 px, naming the family; a UNet on pixels takes it."""
    section = DiffusionConfig(latent_channels=latent) if family == "diffusion" else None
    make = lambda: families.section(ModelConfig(family=family, image_size=16), section)  # noqa: E731
    if ok:
        assert make() == section
    else:
        with pytest.raises(ValueError, match=f"image_size must be one of \\(32, 64, 128\\) for the {family} family"):
            make()


# --- the recipe's defects fixed (issue: the search earns its keep) --------------------------------------------


def _family(data, section=SECTION, cfg=QUICK, model_cfg=TINY):
    from model.families import Diffusion, Targets
    from model.network import TextToImage
    from model.text import TextTable, load_text_encoder

    tokenizer, encoder, _ = load_text_encoder(model_cfg.text_encoder)
    net = TextToImage(model_cfg, section, encoder, seeds=[0, 1])
    texts = TextTable.of(tokenizer, data, model_cfg, "cpu", Diffusion.extra_texts).encode(encoder)
    return Diffusion(net, texts, cfg, section, Targets(data, split_images(data, "cpu")))


def _rotated(data, copies=2):
    """Each training record followed by its rotated copies (180° here), as the data pipeline lays them out."""
    train = data.train
    ids = np.repeat(train.ids, copies)
    images = np.stack([img if c == 0 else np.rot90(img, 2, axes=(1, 2)).copy() for img in train.images
                       for c in range(copies)])
    return PreparedData(Split(ids, [t for t in train.texts for _ in range(copies)], images), data.val, data.test,
                        data.info)


def test_a_diffusion_model_trains_on_upright_images_unless_asked():
    """Rotated copies carry the same text: by default the family trains on each record's upright image only."""
    data = _rotated(tiny_data(n_train=6))
    upright = _family(data)
    assert upright.train_size == 6 and torch.equal(upright.pixels["train"], split_images(data, "cpu")["train"][::2])
    every = _family(data, replace(SECTION, rotated_copies=True))
    assert every.train_size == 12


def test_flips_and_shifts_are_honoured_from_each_members_stream():
    data = tiny_data(n_train=8)
    family = _family(data, cfg=replace(QUICK, augment_flip=True))
    rows = torch.arange(8).expand(2, -1)
    streams = [torch.Generator().manual_seed(s) for s in (1, 2)]
    x0 = family.x0["train"][rows]
    out = family.targets(rows, streams)
    flipped = (out == x0.flip(-1)).flatten(2).all(2) & ~(out == x0).flatten(2).all(2)  # (K, B)
    assert ((out == x0).flatten(2).all(2) | flipped).all()  # each image as it was, or mirrored
    assert 0 < flipped.sum() < 16 and not torch.equal(flipped[0], flipped[1])  # each member's own coins
    again = family.targets(rows, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(out, again)  # from the streams: a resumed run redraws them
    shifted = _family(data, cfg=replace(QUICK, augment_shift=0.125)).targets(rows, streams)
    assert not torch.equal(shifted, x0) and (shifted == 1).float().mean() > (x0 == 1).float().mean()  # white moved in
    latent = DiffusionConfig(unet_width=16, unet_levels=2, latent_channels=4, autoencoder_steps=2)
    with pytest.raises(ValueError, match="augment_shift applies to the diffusion family on pixels"):
        _family(data, latent, replace(QUICK, augment_shift=0.125))


class OracleX0(torch.nn.Module):
    """Predicts, for its prediction type, whatever implies the fixed clean image `image`."""

    members = 1

    def __init__(self, process, image):
        super().__init__()
        self.process, self.image = process, image

    def forward(self, x_t, t, hidden, mask):
        a = self.process.scheduler.alphas_cumprod[t].view(*t.shape, 1, 1, 1)
        noise = (x_t - a.sqrt() * self.image) / (1 - a).sqrt()
        return self.process.target(self.image.expand_as(x_t), noise, t)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_the_selection_metric_is_one_quantity_whatever_the_prediction_type_and_schedule(schedule):
    """A network whose implied clean image is a fixed one scores that image's pixel error against the real ones,
    under every prediction type and noise schedule: trials that differ in them are compared on one quantity."""
    from model.families.diffusion import VAL_SIGNAL

    real = torch.rand(5, 3, 8, 8) * 2 - 1
    guess = torch.zeros(1, 1, 3, 8, 8)
    text = (torch.zeros(1, 5, 4, 6), torch.ones(1, 5, 4))
    noise = torch.randn(len(VAL_SIGNAL), 5, 3, 8, 8)
    expected = (guess[0, 0] - real).pow(2).mean().item()
    for prediction_type in ("epsilon", "v_prediction", "sample"):
        process = Process(DiffusionConfig(prediction_type=prediction_type, noise_schedule=schedule))
        got = process.x0_error(OracleX0(process, guess), real, text, noise, real)
        assert got.item() == pytest.approx(expected, rel=1e-3), prediction_type
        perfect = process.x0_error(OracleX0(process, real[None]), real, text, noise, real)
        assert perfect.item() < 1e-6
        signal = process.scheduler.alphas_cumprod[process.val_timesteps()]
        assert torch.allclose(signal, torch.tensor(VAL_SIGNAL), atol=0.01)  # the same levels, any schedule


def test_the_selection_metric_reaches_the_noise_levels_where_the_sampler_starts():
    """Where the sampler's first steps are (pure noise, then alpha-bar ~0.004 on the default schedule), the clean-image
    estimate comes from the text alone and fixes the layout; a selection metric that starts below them cannot see
    whether a model draws the stated shape."""
    from model.families.diffusion import VAL_SIGNAL

    process = Process(DiffusionConfig())
    sampler = process.sampler()
    sampler.set_timesteps(DiffusionConfig().sample_steps)
    second = process.scheduler.alphas_cumprod[int(sampler.timesteps[1])].item()
    assert second < 0.01 and min(VAL_SIGNAL) <= second


def test_the_ema_decay_that_ran_is_reported():
    """diffusers' EMAModel warms up below the configured decay: the report says what the last update used."""
    from model.config import EMA_DECAY

    final = train(ModelConfig(**{**TINY.__dict__, **NO_DROPOUT}), replace(QUICK, epochs=2), tiny_data(n_train=8),
                  family_cfg=SECTION)
    updates = 2 * 2  # 2 epochs of 8 rows in batches of 4
    assert final[EMA_DECAY] == pytest.approx(updates / (9 + updates)) and final[EMA_DECAY] < SECTION.ema_decay


def test_the_bf16_step_on_a_cpu_attends_in_the_math_backend_to_the_same_result():
    """Runtime.math_attention: under bf16 on a CPU the step's attention leaves PyTorch's CPU flash kernel (slow in
    bf16, results/BENCHMARKS.md) for the math one, which computes the same attention; fp32 and GPUs keep
    PyTorch's choice."""
    from model.train import step_context

    cpu, g = torch.device("cpu"), torch.Generator().manual_seed(0)
    net = Denoiser(TINY, SECTION, text_dim=12, seeds=[0]).eval()  # cross-attention at its lowest level and middle block
    x, t = torch.randn(1, 4, 3, 32, 32, generator=g), torch.randint(0, 1000, (1, 4), generator=g)
    hidden, mask = torch.randn(1, 4, 5, 12, generator=g), torch.ones(1, 4, 5)
    mask[0, 1, 3:] = 0  # a shorter text: the padding is masked out in both backends
    outs, grads = {}, {}
    for math in (False, True):
        net.zero_grad()
        with step_context(cpu, "bf16", math):
            assert torch.backends.cuda.flash_sdp_enabled() is not math  # the flag CPU flash attention obeys too
            out = net(x, t, hidden, mask)
        out.float().square().mean().backward()
        outs[math], grads[math] = out.float(), torch.cat([p.grad.flatten() for p in net.parameters()])
    assert net.unet.conv_in.weight.dtype == torch.float32  # autocast: the weights stay float32
    torch.testing.assert_close(outs[True], outs[False], rtol=0.05, atol=0.04)  # bf16: steps of 0.008-0.03 here
    assert torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0) > 0.99
    with step_context(cpu, "fp32", True):
        assert torch.backends.cuda.flash_sdp_enabled()  # fp32: PyTorch's own choice (no faster there)
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the step


def test_learned_weighting_learns_each_bands_log_loss_and_leaves_the_loss_as_it_was():
    """loss_weighting "learned" (EDM2's uncertainty weighting): minimising loss / exp(u) + u over u gives each band of
    timesteps u = the log of its mean loss, so every band's weighted loss is 1: what the steps near pure noise, whose
    loss is largest, add to the gradient is no more than any other band's. The reported loss is min-SNR's as before."""
    from model.families.diffusion import LOSS_BANDS, LOSS_GAIN, TIMESTEPS

    learned = replace(SECTION, loss_weighting="learned")
    net = Denoiser(TINY, learned, text_dim=12, seeds=[0, 1]).eval()
    assert net.log_loss.shape == (2, LOSS_BANDS)  # each member its own
    assert Denoiser(TINY, SECTION, text_dim=12, seeds=[0, 1]).state_dict().keys() == net.state_dict().keys() - {"log_loss"}
    g = torch.Generator().manual_seed(0)
    t = torch.arange(0, TIMESTEPS, TIMESTEPS // 40).expand(2, -1)  # (2, 40): two rows in every band
    x0, noise = torch.rand(2, 40, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 40, 3, 32, 32, generator=g)
    hidden, mask = torch.randn(2, 40, 5, 12, generator=g), torch.ones(2, 40, 5)
    with torch.no_grad():
        objective, loss = Process(learned).loss(net, x0, hidden, mask, t, noise)
        _, fixed = Process(SECTION).loss(net, x0, hidden, mask, t, noise)
        pred = net(Process(SECTION).noisy(x0, noise, t), t, hidden, mask)
    torch.testing.assert_close(loss, fixed)  # the loss a trial reports does not change
    torch.testing.assert_close(objective, loss)  # u = 0 at the start: the objective is the loss (+ 0)

    class Fixed(torch.nn.Module):  # the network's prediction held still: only u moves
        def __init__(self):
            super().__init__()
            self.log_loss = torch.nn.Parameter(torch.zeros(2, LOSS_BANDS))

        def forward(self, *_):
            return pred

    fixed_net, process = Fixed(), Process(learned)
    opt = torch.optim.Adam(fixed_net.parameters(), lr=0.02)
    for _ in range(400):
        opt.zero_grad()
        process.loss(fixed_net, x0, hidden, mask, t, noise)[0].sum().backward()
        opt.step()
    rows = Process(SECTION).weights(t) * (pred - Process(SECTION).target(x0, noise, t)).pow(2).flatten(2).mean(2)
    band = (t[0] * LOSS_BANDS // TIMESTEPS).tolist()
    for k in range(2):
        expected = [float(torch.stack([rows[k, i] for i in range(40) if band[i] == b]).mean().log())
                    for b in range(LOSS_BANDS)]
        assert (LOSS_GAIN * fixed_net.log_loss[k]).tolist() == pytest.approx(expected, abs=0.05)
        assert max(expected) - min(expected) > 1  # the bands' losses differ by more than e: the weights change


def test_the_selection_metric_runs_under_the_steps_precision(monkeypatch):
    """Each epoch's selection metric runs under a bf16 trial's autocast (it saves a third of its time on 2 CPU
    cores, results/BENCHMARKS.md) and reads what fp32 reads, within bf16's rounding; the final evaluation's images
    are drawn without autocast. (An fp32 trial's `step_context` enables no autocast.)"""
    from model.families.diffusion import Diffusion

    seen = {"select": [], "generate": [], "pairs": []}
    select, images = Diffusion.select, Diffusion.images

    def recording_select(self):
        seen["select"].append(torch.is_autocast_enabled("cpu"))
        here = select(self)
        with torch.autocast("cpu", enabled=False):
            seen["pairs"].append((here, select(self)))
        return here

    def recording_images(self, *args, **kw):
        seen["generate"].append(torch.is_autocast_enabled("cpu"))
        return images(self, *args, **kw)

    monkeypatch.setattr(Diffusion, "select", recording_select)
    monkeypatch.setattr(Diffusion, "images", recording_images)
    train(ModelConfig(**{**TINY.__dict__, **NO_DROPOUT}), replace(QUICK, precision="bf16"), tiny_data(n_train=8),
          family_cfg=SECTION)
    assert seen["select"] == [True] * QUICK.epochs
    assert seen["generate"] and not any(seen["generate"])
    for here, fp32 in seen["pairs"]:
        assert here == pytest.approx(fp32, rel=0.01) and here != fp32  # bf16 computed it, close to fp32
