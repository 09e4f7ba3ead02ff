"""Distribution fidelity (model/eval/fidelity.py): KID equals torchmetrics' KernelInceptionDistance (mean and
interval) and the unbiased MMD^2 computed by hand, is ~0 for two halves of the real images and clearly positive
for a blurred or darkened copy; precision and recall match a brute-force count, and tell real images from noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from eval_data import synthetic_data
from model.eval import fidelity as fd


@pytest.fixture(scope="module")
def real_halves(tmp_path_factory):
    """Two disjoint random halves (120 + 120) of the synthetic training records' unrotated images."""
    data = synthetic_data(tmp_path_factory.mktemp("fidelity"))
    x = torch.as_tensor(data.train.unit_images()[::2].copy())  # each record's first row: its unrotated image
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    n = len(x) // 2
    return x[:n], x[n:2 * n]


@pytest.fixture(scope="module")
def rand():
    return fd.RandomFeatures()


def blur(x: torch.Tensor) -> torch.Tensor:
    """A 5x5 Gaussian blur, sigma 1 px (edge pixels replicated)."""
    t = torch.arange(5) - 2.0
    k = torch.exp(-t ** 2 / 2)
    k = (k[:, None] * k[None]) / k.sum() ** 2
    return F.conv2d(F.pad(x, (2,) * 4, mode="replicate"), k.expand(3, 1, 5, 5).contiguous(), groups=3)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Binkowski et al.'s estimator by hand: mean k(x, x') and k(y, y') over distinct pairs, minus twice the mean
    k(x, y) over all pairs, with k(a, b) = (a.b / d + 1)^3."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m = len(x)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * k(x, y).mean())


def test_kid_is_the_unbiased_mmd_averaged_over_samples(real_halves, rand):
    a, b = real_halves
    generated = torch.stack([blur(b), b.flip(-1)], 1)  # (R, 2, 3, H, W): two samples per record
    fa = rand(a).numpy()
    expected = np.mean([mmd2_unbiased(fa, rand(generated[:, s]).numpy()) for s in range(2)])
    assert fd.kid(rand, a, generated).mean == pytest.approx(expected, rel=1e-6, abs=1e-9)


def torchmetrics_kid(feature, real, generated, subsets=fd.N_SUBSETS, seed=0) -> fd.Interval:
    """fd.kid as torchmetrics computes it: its KernelInceptionDistance on all rows for the estimate, on half the
    rows for the spread, the subsets drawn from the global stream seeded as fd.kid seeds it."""
    import warnings
    from statistics import NormalDist

    from torchmetrics.image.kid import KernelInceptionDistance

    r = len(real)
    gen = generated if generated.ndim == 5 else generated[:, None]
    estimates, spreads = [], []
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        torch.manual_seed(seed)
        full = KernelInceptionDistance(feature=feature, subsets=1, subset_size=r, reset_real_features=False)
        half = KernelInceptionDistance(feature=torch.nn.Identity(), subsets=subsets, subset_size=r // 2,
                                       reset_real_features=False)
        full.update(real, real=True)
        half.update(torch.cat(full.real_features), real=True)
        for i in range(gen.shape[1]):
            full.update(gen[:, i], real=False)
            estimates.append(full.compute()[0].item())
            half.update(torch.cat(full.fake_features), real=False)
            spreads.append(half.compute()[1].item())
            full.reset()
            half.reset()
    z = NormalDist().inv_cdf((1 + fd.LEVEL) / 2)
    mean, spread = float(np.mean(estimates)), float(np.mean(spreads))
    return fd.Interval(mean, mean - z * spread, mean + z * spread)


@pytest.mark.parametrize("change", ["same", "blurred"])
def test_kid_is_torchmetrics_kernel_inception_distance(real_halves, rand, change):
    """The estimator and subset draws written out in fd.kid give torchmetrics' numbers, interval included (the
    project keeps torchmetrics as this check's reference and skips its 3-4 s import in every process)."""
    a, b = real_halves
    generated = torch.stack([b if change == "same" else blur(b), b.flip(-1)], 1)
    ours, theirs = fd.kid(rand, a, generated), torchmetrics_kid(rand, a, generated)
    assert ours.mean == pytest.approx(theirs.mean, rel=1e-9, abs=1e-12)
    assert (ours.lo, ours.hi) == pytest.approx((theirs.lo, theirs.hi), rel=1e-9, abs=1e-12)
    assert ours.hi > ours.lo  # a real spread, compared


def test_kid_of_two_real_halves_is_zero_within_its_interval(real_halves, rand):
    a, b = real_halves
    mean, lo, hi = fd.kid(rand, a, b)
    assert lo < 0 < hi
    assert abs(mean) < 0.1 * fd.kid(rand, a, blur(b)).mean


@pytest.mark.parametrize("change", ["blur", "darker"])
def test_kid_of_a_blurred_or_darkened_copy_is_clearly_positive(real_halves, rand, change):
    a, b = real_halves
    copy = blur(b) if change == "blur" else (b - 0.2).clamp(-1, 1)
    mean, lo, hi = fd.kid(rand, a, copy)
    assert lo > 0 and mean > 0


def test_kid_leaves_the_global_rng_alone(real_halves, rand):
    a, b = real_halves
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fd.kid(rand, a, b)
    assert torch.equal(torch.rand(3), expected)


def test_random_features_are_fixed_by_their_seed(real_halves):
    a, _ = real_halves
    assert torch.equal(fd.RandomFeatures(seed=1)(a[:8]), fd.RandomFeatures(seed=1)(a[:8]))
    assert not torch.equal(fd.RandomFeatures(seed=1)(a[:8]), fd.RandomFeatures(seed=2)(a[:8]))
    uint8 = ((a[:8] + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(fd.RandomFeatures()(uint8), fd.RandomFeatures()(uint8.float() / 127.5 - 1))


def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> dict:
    """Precision, recall, density and coverage by explicit loops over items."""
    def radius(x, i):
        return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]

    r_real = [radius(real, j) for j in range(len(real))]
    r_fake = [radius(fake, i) for i in range(len(fake))]
    dist = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    precision = np.mean([any(dist(f, real[j]) <= r_real[j] for j in range(len(real))) for f in fake])
    density = np.mean([sum(dist(f, real[j]) <= r_real[j] for j in range(len(real))) for f in fake]) / k
    recall = np.mean([any(dist(r, fake[i]) <= r_fake[i] for i in range(len(fake))) for r in real])
    coverage = np.mean([min(dist(real[j], f) for f in fake) <= r_real[j] for j in range(len(real))])
    return {"precision": precision, "density": density, "recall": recall, "coverage": coverage}


def test_precision_recall_match_a_brute_force_count():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(0, 1, (40, 5)), rng.normal(0.5, 1.2, (30, 5))
    got = fd.precision_recall(real, fake, k=3)
    for name, value in brute_force_pr(real, fake, 3).items():
        assert got[name].mean() == pytest.approx(value), name


def test_precision_of_real_images_is_high_and_of_noise_nil(real_halves, rand):
    a, b = real_halves
    fa = rand(a)
    real = fd.precision_recall(fa, rand(b))
    noise = fd.precision_recall(fa, rand(torch.rand(b.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1))
    assert real["precision"].mean() > 0.85 and real["recall"].mean() > 0.85
    assert noise["precision"].mean() < 0.05 and noise["coverage"].mean() < 0.05


def test_metrics_names_every_number_with_an_interval(real_halves, rand):
    a, b = real_halves
    out = fd.metrics(a[:40], torch.stack([b[:40], blur(b[:40])], 1), {"random": rand})
    assert set(out) == {f"test/{m}_random" for m in ("kid", "precision", "recall", "density", "coverage")}
    for name, (mean, lo, hi) in out.items():
        assert lo <= mean <= hi, name
