"""Attribute accuracy (model/eval/attributes.py): renders equal the data pipeline's images, labels follow the stated
attributes, the reader's fit is deterministic and cached, and the scores are per record and sample.

The reader's accuracy and the cheater panel are in tests/test_metrics_panel.py (one fit for both)."""

from __future__ import annotations

import itertools

import random
import warnings

import numpy as np
import pytest
import torch

from data_pipeline import synthetic
from data_pipeline.config import DataConfig
from data_pipeline.dataset import PreparedData
from data_pipeline.prepare import prepare_in_memory
from model.eval import attributes as at
from model.files import key_hash

TINY = at.ReaderConfig(steps=3, batch_size=8, width=4, hidden=16)  # seconds: for what does not need accuracy


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("size", [16, 32])
def test_render_equals_the_prepared_image(tmp_path, size):
    """Replaying the generator's own stream (attributes, then drawing, record after record) through `render` gives
    exactly the images the data pipeline prepared from the written PNGs, and info carries the same attributes."""
    folder = synthetic.generate(tmp_path / "synth", n=24, seed=5)
    data = prepare_in_memory(folder, DataConfig(image_size=size, augment_rotations=1))
    prepared = {int(i): img for name in ("train", "val", "test")
                for i, img in zip(data.split(name).ids, data.split(name).unit_images())}
    rng = random.Random(5)
    for record_id in range(1, 25):
        attrs = synthetic.sample_attributes(rng, record_id)
        np.testing.assert_array_equal(at.render(attrs, rng, size), prepared[record_id], err_msg=f"record {record_id}")
        assert data.info["attributes"][str(record_id)] == {k: v for k, v in attrs.items() if k not in ("id", "name")}


def test_labels_follow_the_stated_attributes():
    attrs = {"primary": "Water", "secondary": "Fire", "pattern": "stripes", "shape": "tall oval", "size": "large",
             "feature": "tail"}
    assert at.labels_of(attrs) == {"colour": 1, "shape": 3, "size": 1, "pattern": 2, "pattern_colour": 1, "feature": 4}
    assert [at.CLASSES[a][i] for a, i in at.labels_of(attrs).items()] == ["Water", "tall oval", "large", "stripes",
                                                                          "Fire", "tail"]
    # no secondary type: no pattern is drawn or stated, whatever the generator put in `pattern`
    plain = at.labels_of({**attrs, "secondary": None})
    assert (plain["pattern"], plain["pattern_colour"]) == (0, 0) and at.CLASSES["pattern"][0] == "none"
    with pytest.raises(ValueError, match=r"record 7: shape = 'hexagon' is not one of"):
        at.labels_of({**attrs, "shape": "hexagon"}, "record 7")
    with pytest.raises(ValueError, match="no feature"):
        at.labels_of({k: v for k, v in attrs.items() if k != "feature"})


def test_split_attributes_name_what_is_missing(tmp_path):
    folder = synthetic.generate(tmp_path / "s", n=12, seed=1)
    data = prepare_in_memory(folder, DataConfig(image_size=16, augment_rotations=1))
    attrs = at.split_attributes(data, "test")
    assert attrs == [data.info["attributes"][str(int(i))] for i in data.test.ids]
    real_like = PreparedData(data.train, data.val, data.test, {**data.info, "attributes": {}})
    with pytest.raises(KeyError, match=f"record {int(data.test.ids[0])} of the test split.*synthetic"):
        at.split_attributes(real_like, "test")
    bad = {**data.info["attributes"], str(int(data.test.ids[0])): {**attrs[0], "size": "huge"}}
    with pytest.raises(ValueError, match=f"record {int(data.test.ids[0])} \\(test split\\): size = 'huge'"):
        at.split_attributes(PreparedData(data.train, data.val, data.test, {**data.info, "attributes": bad}), "test")


def test_fresh_renders_follow_the_generator_and_never_repeat_a_seed():
    images, labels = at.fresh_batch(6, 16, "attribute-reader:0:0")
    again, same = at.fresh_batch(6, 16, "attribute-reader:0:0")
    other, _ = at.fresh_batch(6, 16, "attribute-reader:0:1")
    assert torch.equal(images, again) and torch.equal(labels, same) and not torch.equal(images, other)
    # the same stream by hand: the generator's own sampling, then its own drawing
    rng = random.Random("attribute-reader:0:0")
    for k in range(6):
        attrs = synthetic.sample_attributes(rng, k)
        np.testing.assert_array_equal(at.render(attrs, rng, 16), images[k].numpy())
        assert labels[k].tolist() == [at.labels_of(attrs)[a] for a in at.ATTRIBUTES]
    assert images.min() >= -1 and images.max() <= 1 and (images == 1).float().mean() > 0.3  # a white background


def _weights(reader) -> dict:
    return {k: v.clone() for k, v in reader.state_dict().items()}


def test_fit_is_deterministic_and_leaves_the_caller_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    torch.set_num_threads(1)
    a = at.fit(16, TINY)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's torch stream neither used nor moved
    b = at.fit(16, TINY)
    c = at.fit(16, at.ReaderConfig(**{**TINY.__dict__, "seed": 1}))
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa if wa[k].is_floating_point())
    assert torch.get_num_threads() == 1 and not a.training and not any(q.requires_grad for q in a.parameters())


def test_cache_is_reused_refitted_when_corrupt_and_keyed_by_size_and_config(tmp_path, monkeypatch):
    first = at.load_or_fit(image_size=16, cfg=TINY, cache_dir=tmp_path)
    (path,) = tmp_path.glob("attribute_reader-*.pt")
    assert path.name == f"attribute_reader-{key_hash(at.reader_key(16, TINY))[:16]}.pt"

    def no_fit(*args, **kwargs):
        raise AssertionError("refitted although cached")

    real_fit = at.fit
    monkeypatch.setattr(at, "fit", no_fit)
    loaded = at.load_or_fit(image_size=16, cfg=TINY, cache_dir=tmp_path)
    x = at.fresh_batch(4, 16, "check")[0]
    assert torch.equal(first.predict(x), loaded.predict(x))
    wf, wl = _weights(first), _weights(loaded)
    assert all(torch.equal(wf[k], wl[k]) for k in wf)

    monkeypatch.setattr(at, "fit", real_fit)
    path.write_bytes(b"not a checkpoint")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refitted = at.load_or_fit(image_size=16, cfg=TINY, cache_dir=tmp_path)
    assert any("unreadable" in str(w.message) for w in caught)
    assert torch.equal(refitted.predict(x), first.predict(x))  # deterministic: the same reader again
    assert at.reader_key(16, TINY) not in (at.reader_key(32, TINY), at.reader_key(16, at.ReaderConfig()))


class FixedReader(at.AttributeReader):
    """Reads every image as the given rows of labels, in order: checks the scoring without a fit."""

    def __init__(self, predictions: torch.Tensor):
        super().__init__(16, TINY)
        self.predictions = predictions

    def predict(self, images):
        assert len(images) == len(self.predictions)
        return self.predictions


def test_scores_are_per_record_and_sample_and_all_needs_every_attribute():
    plain = {"secondary": None, "shape": "round", "size": "small", "feature": "horn"}
    attrs = [{"primary": "Fire", "pattern": "spots", **plain},
             {"primary": "Ice", "secondary": "Dark", "pattern": "belly", "shape": "square", "size": "large",
              "feature": "tail"},
             {"primary": "Fire", "pattern": "belly", **plain}]
    labels = at.label_tensor(attrs)  # (3, 6)
    wrong_shape = labels[1].clone()
    wrong_shape[1] = (wrong_shape[1] + 1) % 4
    # record r, sample s -> row 2r + s: record 1's second sample has the wrong shape, record 2's first the wrong size
    wrong_size = labels[2].clone()
    wrong_size[2] = 1 - wrong_size[2]
    predictions = torch.stack([labels[0], labels[0], labels[1], wrong_shape, wrong_size, labels[2]])
    images = torch.zeros(3, 2, 3, 16, 16)
    scores = at.attribute_scores(FixedReader(predictions), images, attrs)
    assert set(scores) == set(at.SCORES) and all(v.shape == (3, 2) for v in scores.values())
    np.testing.assert_array_equal(scores["shape"], [[1, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(scores["size"], [[1, 1], [1, 1], [0, 1]])
    np.testing.assert_array_equal(scores["all"], [[1, 1], [1, 0], [0, 1]])
    np.testing.assert_allclose(scores["mean"], [[1, 1], [1, 5 / 6], [5 / 6, 1]])  # graded: one of six wrong
    acc = at.attribute_accuracy(FixedReader(predictions), images, attrs)
    assert acc["all"] == pytest.approx(4 / 6) and acc["colour"] == 1.0
    with_intervals = at.metrics(FixedReader(predictions), images, attrs, "val")
    assert set(with_intervals) == set(at.VAL_ATTR.values())
    assert all(with_intervals[at.VAL_ATTR[a]].mean == pytest.approx(acc[a]) for a in at.SCORES)
    assert with_intervals["val/attr_all"].lo < 4 / 6 < with_intervals["val/attr_all"].hi
    one = at.attribute_scores(FixedReader(predictions[::2]), torch.zeros(3, 3, 16, 16), attrs)  # one sample each
    assert one["all"].shape == (3, 1)
    # the floor: the commonest class per attribute, the commonest whole attribute set for `all`
    floor = at.floor(attrs)
    assert floor["colour"] == pytest.approx(2 / 3) and floor["pattern"] == pytest.approx(2 / 3)
    assert floor["all"] == pytest.approx(2 / 3)  # records 0 and 2 state the same attributes (pattern unstated)
    # `mean`'s floor, by brute force: the best mean any one constant reading (a class per attribute) scores
    best = max(float((labels == torch.tensor(c)).double().mean())
               for c in itertools.product(*(range(len(at.CLASSES[a])) for a in at.ATTRIBUTES)))
    assert floor["mean"] == pytest.approx(best)
    with pytest.raises(ValueError, match="3 records of images but 2 attribute sets"):
        at.attribute_scores(FixedReader(predictions), images, attrs[:2])


def test_reader_refuses_another_image_size():
    reader = at.AttributeReader(16, TINY)
    with pytest.raises(ValueError, match="fitted on 16 px images"):
        reader(torch.zeros(1, 3, 32, 32))


def test_baselines_are_the_real_images_the_floor_and_the_median_image(tmp_path):
    folder = synthetic.generate(tmp_path / "s", n=24, seed=2)
    data = prepare_in_memory(folder, DataConfig(image_size=16, augment_rotations=2))
    reader = at.fit(16, TINY)
    base = at.baselines(reader, data)
    attrs = at.split_attributes(data, "test")
    assert set(base) == {f"baseline/attr_{a}_{what}" for a in at.SCORES
                         for what in ("ceiling", "floor", "median_train_image")}
    real = at.attribute_accuracy(reader, data.test.unit_images(), attrs)
    train = data.train.unit_images()  # every training row, rotated copies included
    median = np.sort(train, axis=0)[(len(train) - 1) // 2]  # the lower middle value, as torch.median
    blind = at.attribute_accuracy(reader, np.repeat(median[None], len(attrs), 0), attrs)
    for a in at.SCORES:
        assert base[at.BASELINE_CEILING[a]] == real[a]
        assert base[at.BASELINE_FLOOR[a]] == at.floor(attrs)[a]
        assert base[at.BASELINE_MEDIAN[a]] == blind[a]


def test_soften_is_a_gaussian_blur_per_image_plus_noise():
    """Checked against torchvision's Gaussian blur, at the sigma `soften` draws for each image (away from the
    edges, which torchvision reflects and `soften` replicates)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    images = at.fresh_batch(4, 32, "soften")[0]
    soft = at.soften(images, blur=1.5, noise=0.0, generator=torch.Generator().manual_seed(3))
    sigmas = (torch.rand(4, generator=torch.Generator().manual_seed(3)) * 1.5).clamp(min=1e-3)
    for image, out, sigma in zip(images, soft, sigmas.tolist()):
        reference = gaussian_blur(image[None], [7, 7], [sigma, sigma])[0]  # radius ceil(2 * 1.5) = 3
        torch.testing.assert_close(out[:, 3:-3, 3:-3], reference[:, 3:-3, 3:-3], atol=1e-5, rtol=0)
    noisy = at.soften(images, blur=0.0, noise=0.2, generator=torch.Generator().manual_seed(3))
    spread = (noisy - images).flatten(1).std(1)  # per image: its own sd, at most 0.2 (less where clamped)
    assert spread.max() <= 0.21 and spread.max() > 0.05 and noisy.min() >= -1 and noisy.max() <= 1
