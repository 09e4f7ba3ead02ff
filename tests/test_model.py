"""The network and the training loop, on tiny data made here (no Ray, no data pipeline run)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from data_pipeline.dataset import PreparedData, Split
from model import checkpoint
from model.config import BEST_VAL_L1, SAMPLES_PER_S, TEST_L1, TRAIN_L1, VAL_L1, ModelConfig, TrainConfig
from model.augment import augment
from model.families.regressor import Generator, RegressorConfig
from model.text import TextEncoderUnavailable, load_text_encoder
from model.train import train

COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1)}
SHAPES = ("square", "stripe")


def make_split(n: int, size: int, offset: int = 0) -> Split:
    """Images that follow from their text: a coloured square or stripe on white."""
    ids, texts, images = [], [], []
    for i, (colour, shape) in enumerate(itertools.islice(itertools.cycle(itertools.product(COLOURS, SHAPES)), n)):
        img = np.ones((3, size, size), np.float32)
        rgb = np.array(COLOURS[colour], np.float32)[:, None, None]
        if shape == "square":
            img[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = rgb
        else:
            img[:, :, size // 3: 2 * size // 3] = rgb
        ids.append(offset + i)
        texts.append(f"A {colour} {shape} creature number {offset + i}.")
        images.append(img)
    return Split(np.array(ids), texts, np.stack(images))


def tiny_data(n_train=8, size=32) -> PreparedData:
    return PreparedData(make_split(n_train, size), make_split(4, size, 100), make_split(4, size, 200),
                        info={"source": "tests"})


NO_DROPOUT = dict(dropout_encoder=0.0, dropout_attention=0.0, dropout_decoder=0.0)
QUIET = TrainConfig(clip_mode="off")


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder()


def test_offline_text_encoder_gives_real_embeddings(encoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer, model, source = encoder
    assert source.endswith("model") and model.config.hidden_size == 384
    tok = tokenizer(["a red square", "a red square", "a blue stripe"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**tok).last_hidden_state.mean(1)
    # A pretrained encoder gives identical texts identical features and different texts different ones.
    assert torch.allclose(h[0], h[1]) and not torch.allclose(h[0], h[2], atol=1e-3)


def test_unknown_text_encoder_names_offline_choices(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderUnavailable, match="all-MiniLM-L6-v2"):
        load_text_encoder(str(tmp_path / "no-such-model"))


class Reference(nn.Module):
    """The generator written with torch.nn's own modules, one member: the independent reference the
    member-axis network (model/families/regressor.py) must equal. Parameter names match the network's."""

    def __init__(self, cfg: ModelConfig, text_dim: int):
        super().__init__()
        d, side = cfg.d_model, Generator.LATENT_SIZE
        self.text = nn.Module()
        self.text.proj = nn.Linear(text_dim, d)
        self.text.layers = nn.ModuleList([nn.TransformerEncoderLayer(d, cfg.n_heads, cfg.ff_dim, 0.0,
                                                                     activation="gelu", batch_first=True,
                                                                     norm_first=True)
                                          for _ in range(cfg.n_layers)])
        self.to_latent = nn.Module()
        self.to_latent.queries = nn.Parameter(torch.zeros(1, side * side, d))
        self.to_latent.attn = nn.MultiheadAttention(d, cfg.n_heads, batch_first=True)
        self.to_latent.norm = nn.LayerNorm(d)
        n_up = int(math.log2(cfg.image_size // side))
        channels = [d] + [max(256 >> i, 16) for i in range(1, n_up + 1)]
        self.decoder = nn.ModuleList()
        for i in range(n_up):
            block = nn.Module()
            block.conv = nn.Conv2d(channels[i], channels[i + 1], 3, padding=1)
            block.norm = nn.GroupNorm(min(8, channels[i + 1]), channels[i + 1])
            self.decoder.append(block)
        self.out = nn.Conv2d(channels[-1], 3, 3, padding=1)

    def forward(self, hidden, mask):  # (B, T, H), (B, T) -> (B, 3, S, S)
        pad = mask == 0
        x = self.text.proj(hidden)
        for layer in self.text.layers:
            x = layer(x, src_key_padding_mask=pad)
        q = self.to_latent.queries.expand(len(x), -1, -1)
        latent = self.to_latent.norm(q + self.to_latent.attn(q, x, x, key_padding_mask=pad, need_weights=False)[0])
        side = Generator.LATENT_SIZE
        y = latent.transpose(1, 2).reshape(len(x), -1, side, side)
        for block in self.decoder:
            y = F.gelu(block.norm(block.conv(F.interpolate(y, scale_factor=2, mode="nearest"))))
        return torch.tanh(self.out(y))


# The grid's 32 trials hold 8 distinct architectures (learning rate and weight decay do not change a
# shape); each must equal the torch.nn reference, and members of one network must equal one-member ones.
@pytest.mark.parametrize("n_heads,ff_dim,n_layers", list(itertools.product((2, 4), (512, 1024), (2, 3))))
def test_every_grid_architecture_equals_torch_nn_reference(encoder, n_heads, ff_dim, n_layers):
    cfg = ModelConfig(n_heads=n_heads, ff_dim=ff_dim, n_layers=n_layers, image_size=32)
    gen = Generator(cfg, RegressorConfig(), 384, seeds=(5,)).eval()
    ref = Reference(cfg, 384).eval()
    ref_shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert set(ref_shapes) == {k for k, _ in gen.named_parameters()}
    ref.load_state_dict({k: v.reshape(ref_shapes[k]) for k, v in gen.state_dict().items()})
    tokenizer, text_encoder, _ = encoder
    tok = tokenizer(["A red square creature.", "A blue stripe creature with a long tail."], padding=True,
                    return_tensors="pt")
    with torch.no_grad():
        hidden = text_encoder(**tok).last_hidden_state  # (2, T, 384); the short text is padded
        mine = gen(hidden[None], tok["attention_mask"][None])[0]
        theirs = ref(hidden, tok["attention_mask"])
    assert mine.shape == (2, 3, 32, 32)
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert (mine[0] - mine[1]).abs().max() > 1e-3  # two texts, two images: the comparison is not of constants


@pytest.mark.parametrize("size,pooled", [(64, False), (128, False), (32, True)])
def test_members_are_independent_networks_at_every_image_size(size, pooled):
    cfg = ModelConfig(image_size=size, d_model=32, ff_dim=64, pooled_text=pooled, **NO_DROPOUT)
    both, alone = Generator(cfg, RegressorConfig(), 384, seeds=(1, 2)).eval(), Generator(cfg, RegressorConfig(), 384, seeds=(2,)).eval()
    for (name, a), (_, b) in zip(both.named_parameters(), alone.named_parameters()):
        assert torch.equal(a[1], b[0]), name  # member 1 starts where a one-member network with its seed starts
    hidden, mask = torch.randn(2, 3, 7, 384), torch.ones(2, 3, 7)
    mask[:, 0, 5:] = 0
    with torch.no_grad():
        out, out_alone = both(hidden, mask), alone(hidden[1:], mask[1:])
    assert out.shape == (2, 3, 3, size, size)
    torch.testing.assert_close(out[1], out_alone[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # other seed, other weights, other images


def test_overfits_eight_samples_beyond_the_text_blind_optimum(encoder):
    """Within 300 epochs the train L1 falls well below the text-blind optimum (stopped as soon as it does)."""
    data = tiny_data(n_train=8)
    # The per-pixel median of the training images is the best any text-blind output can do under L1:
    # falling well below it means the network tells the eight texts apart.
    median = torch.as_tensor(data.train.images).median(0).values
    text_blind = (torch.as_tensor(data.train.images) - median).abs().mean().item()
    curve = []

    class Reached(Exception):
        pass

    def record(m, state):
        curve.append(m[TRAIN_L1])
        if curve[-1] <= 0.85 * text_blind:
            raise Reached
    with pytest.raises(Reached):  # not raised: 300 epochs ended above the bound
        train(ModelConfig(image_size=32, **NO_DROPOUT),
              TrainConfig(lr=3e-4, weight_decay=0.0, epochs=300, batch_size=8, clip_mode="off"), data, report=record)
    assert curve[0] > 0.85 * text_blind  # it had to learn it


def _final_weights(cfg, tcfg, data, **kw):
    states = []
    metrics = train(cfg, tcfg, data, report=lambda m, s: states.append(s), **kw)
    return metrics, states


def test_same_seed_same_weights_other_seed_other_weights():
    data, cfg = tiny_data(), ModelConfig(image_size=32)
    m1, s1 = _final_weights(cfg, TrainConfig(epochs=2, seed=3, clip_mode="off"), data)
    m2, s2 = _final_weights(cfg, TrainConfig(epochs=2, seed=3, clip_mode="off"), data)
    m3, s3 = _final_weights(cfg, TrainConfig(epochs=2, seed=4, clip_mode="off"), data)
    for k, v in s1[-1].model.items():
        assert torch.equal(v, s2[-1].model[k]), k
    assert m1[TEST_L1] == m2[TEST_L1]
    assert m1[BEST_VAL_L1] == min(h[VAL_L1] for h in s1[-1].history[0])  # the best epoch's, not the last
    assert any(not torch.equal(v, s3[-1].model[k]) for k, v in s1[-1].model.items())


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    data, cfg = tiny_data(), ModelConfig(image_size=32)  # dropout on: the RNG state must resume too
    tcfg = TrainConfig(epochs=4, seed=1, clip_mode="off")
    full, full_states = _final_weights(cfg, tcfg, data)

    saved = []
    def stop_after_two(metrics, state):
        saved.append(checkpoint.save(state, tmp_path / f"epoch{metrics['epoch']}"))
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt  # the run dies here, as a killed trial would
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tcfg, data, report=stop_after_two)

    resumed, resumed_states = _final_weights(cfg, tcfg, data, resume=checkpoint.load(tmp_path / "epoch2"))
    assert [s.epoch for s in resumed_states] == [3, 4]
    for k, v in full_states[-1].model.items():
        assert torch.equal(v, resumed_states[-1].model[k]), k
    timing = {SAMPLES_PER_S}
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in full.items() if k not in timing}


def test_frozen_encoder_is_not_trained_and_unfrozen_is(encoder):
    data = tiny_data(n_train=4)
    before = {k: v.clone() for k, v in encoder[1].state_dict().items()}
    _, frozen = _final_weights(ModelConfig(image_size=32), TrainConfig(epochs=1, clip_mode="off"), data)
    assert not any(k.startswith("text_encoder.") for k in frozen[-1].model)  # reloaded from its source
    _, tuned = _final_weights(ModelConfig(image_size=32, freeze_text_encoder=False),
                              TrainConfig(epochs=1, lr=1e-3, clip_mode="off"), data)
    changed = [k for k, v in before.items() if not torch.equal(v, tuned[-1].model["text_encoder." + k])]
    assert changed, "an unfrozen text encoder must be trained"
    assert all(torch.equal(v, encoder[1].state_dict()[k]) for k, v in before.items()), "the cached copy was changed"


def test_a_frozen_encoder_is_not_loaded_once_its_states_are_cached(encoder, tmp_path):
    """`frozen_texts` holds the encoder's own states (bit for bit), cached beside the prepared data; a new process
    then trains a trial on them without importing transformers (seconds of every trial process's start); another
    max_tokens is another key."""
    import pickle
    from dataclasses import replace

    from conftest import modules_after
    from model.text import TextTable, frozen_texts

    small = tiny_data()
    data = PreparedData(small.train, small.val, small.test, info={"source": "tests", "cache_dir": str(tmp_path)})
    cfg = ModelConfig(image_size=32)
    table = frozen_texts(data, cfg)
    tokenizer, enc, source = encoder
    direct = TextTable.of(tokenizer, data, cfg, "cpu").encode(enc)
    assert table.texts == direct.texts and table.source == source
    assert torch.equal(table.hidden, direct.hidden) and torch.equal(table.mask, direct.mask)
    assert all(torch.equal(table.rows[s], direct.rows[s]) for s in ("train", "val", "test"))
    assert len(list(tmp_path.glob("text_states-*.pt"))) == 1

    (tmp_path / "data.pkl").write_bytes(pickle.dumps(data))
    code = ("import pickle\nfrom model.config import ModelConfig, TrainConfig\nfrom model.train import train\n"
            f"data = pickle.loads(open({str(tmp_path / 'data.pkl')!r}, 'rb').read())\n"
            "print(train(ModelConfig(image_size=32), TrainConfig(epochs=1, clip_mode='off'), data)['val/l1'])")
    loaded, printed = modules_after(code, ("transformers",))
    assert loaded == [] and float(printed.splitlines()[-1]) > 0

    frozen_texts(data, replace(cfg, max_tokens=16))
    assert len(list(tmp_path.glob("text_states-*.pt"))) == 2


def test_nan_loss_stops_with_a_clear_reason():
    with pytest.raises(FloatingPointError, match="diverged"):
        train(ModelConfig(image_size=32), TrainConfig(epochs=1, batch_size=2, lr=float("inf"), clip_mode="off"),
              tiny_data())


def test_empty_validation_split_is_a_clear_error_before_training():
    d = tiny_data()
    empty = Split(np.zeros(0, np.int64), [], np.zeros((0, 3, 32, 32), np.float32))
    no_val = PreparedData(d.train, empty, d.test, info={"source": "two-record set"})
    with pytest.raises(ValueError, match="val split of two-record set is empty"):
        train(ModelConfig(image_size=32), QUIET, no_val)


def test_pooled_text_starts_as_identity_film_and_learns_it():
    cfg = ModelConfig(image_size=32, d_model=32, ff_dim=64, pooled_text=True, **NO_DROPOUT)
    gen = Generator(cfg, RegressorConfig(), 384, seeds=(0,))
    films = [block.film for block in gen.decoder]
    assert all(f is not None and not f.weight.any() and not f.bias.any() for f in films)  # identity at start
    hidden, mask = torch.randn(1, 4, 7, 384), torch.ones(1, 4, 7)
    gen(hidden, mask).abs().mean().backward()
    assert all(f.weight.grad.abs().sum() > 0 for f in films)  # the pooled text reaches every block
    assert gen.to_latent.pool.weight.grad.abs().sum() > 0
    assert all(block.film is None for block in Generator(ModelConfig(image_size=32, d_model=32), RegressorConfig(), 384).decoder)


def test_augment_flips_and_shifts_targets_keeping_the_whole_creature():
    torch.manual_seed(0)
    img = torch.ones(200, 3, 16, 16)
    img[:, :, 6:10, 3:7] = -1  # a dark 4x4 square left of centre on white
    out = augment(img, flip=True, shift=0.125)  # shifts of at most 2 px, white moving in
    dark = (out == -1).all(1)  # (N, 16, 16)
    assert (dark.flatten(1).sum(1) == 16).all()  # never cut, never blurred
    rows = dark.any(2).float().argmax(1)  # each image's first dark row
    cols = dark.any(1).float().argmax(1)  # and column
    assert set(rows.tolist()) == {4, 5, 6, 7, 8}  # every vertical shift in [-2, 2]
    flipped = cols >= 6  # mirrored, the square sits right of centre: columns 9..12, shifted by up to 2
    assert 0.3 < flipped.float().mean() < 0.7
    assert set(cols[~flipped].tolist()) == {1, 2, 3, 4, 5} and set(cols[flipped].tolist()) == {7, 8, 9, 10, 11}
    assert torch.equal(augment(img, flip=False, shift=0.0), img)  # off: the targets are untouched



def test_cosine_decay_runs_from_full_to_zero_over_the_runs_steps(monkeypatch):
    from model.members import MemberAdamW
    from model.train import lr_scale

    cfg = TrainConfig(warmup_steps=10, lr_schedule="cosine")
    scales = [lr_scale(cfg, s, s, 100) for s in range(1, 101)]
    assert scales[:10] == pytest.approx([s / 10 for s in range(1, 11)])  # the warm-up, as before
    after = scales[10:]  # from step 11, the first at the full rate
    assert after[0] == 1.0 and all(a > b for a, b in zip(after, after[1:])) and 0 < after[-1] < 0.01  # down to ~0
    assert scales[55] == pytest.approx(0.5)  # half way through the decay, half the rate
    assert [lr_scale(TrainConfig(warmup_steps=10), s, s, 100) for s in range(10, 101)] == [1.0] * 91  # constant
    # The loop passes each step's scale to the optimizer: 2 epochs of 8 rows in batches of 4 = 4 steps.
    seen = []
    step = MemberAdamW.step
    monkeypatch.setattr(MemberAdamW, "step", lambda self, scale=1.0: (seen.append(scale), step(self, scale)))
    train(ModelConfig(image_size=32, d_model=32, ff_dim=64, **NO_DROPOUT),
          TrainConfig(epochs=2, batch_size=4, lr_schedule="cosine", clip_mode="off"), tiny_data(n_train=8))
    cosine = TrainConfig(lr_schedule="cosine")
    assert seen == pytest.approx([lr_scale(cosine, s, s, 4) for s in range(1, 5)]) and seen[0] == 1.0 > seen[-1]
