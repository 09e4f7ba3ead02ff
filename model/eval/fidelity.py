"""Distribution fidelity of generated vs real held-out images: unbiased KID, precision/recall, density/coverage.

    from model.eval import fidelity as fd
    rand = fd.RandomFeatures()                          # a fixed random-init CNN: nothing trained on any data
    inside = fd.ClipFeatures(clip)                      # the in-domain model's image tower (model/eval/alignment.py)
    fd.kid(rand, real, generated)                       # real (R, 3, H, W), generated (R, S, 3, H, W) -> Interval
    fd.precision_recall(rand(real), rand(flat(generated)), records=R)   # {precision, recall, density, coverage}
    fd.metrics(real, generated, {"random": rand, "indomain": inside})   # every number above, named, with intervals

Both compare two sets of images as distributions, whichever text each image came from: what they see is
sharpness, shape and colour statistics, which on the real Pokédex at 32 px show more than the type does.

- KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD between the two sets' features under
  the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3; 0 for the same distribution, and unbiased, so two
  samples of one distribution give 0 on average (it may come out slightly negative). It is torchmetrics'
  `KernelInceptionDistance` with our feature module in place of Inception, written out here (`poly_mmd`,
  `subset_kid`: its estimator and its subset draws, operation for operation) and checked against it in
  tests/test_fidelity.py: importing torchmetrics costs 3 to 4.5 s of CPU per process on 2 cores (it imports every
  domain's metrics), paid by every search driver and trial worker for one ten-line estimator. Our modules take
  our [-1, 1] floats, or uint8, as they are. For each sample index s the s-th samples of the R records are
  compared with the R real images in one subset of all R rows (`subsets=1, subset_size=R`: no subsampling
  noise), and KID is the mean over s. The cross term counts each record's own (real, generated) pair among
  its R^2 pairs, as KID on a caption set's real images always does: a generator that redraws its record's own
  image gains up to 1/R of the kernel's gap (the real images themselves score slightly below 0).
  Its interval is KID +- 1.96 x the spread of KID over subsets of half the rows (`subset_size=R//2`,
  drawn without replacement: for a smooth statistic a half-sample varies about the full estimate as much as
  the full estimate varies, Efron's half-sampling). A jackknife or a bootstrap over records fails here: near
  KID = 0 the estimate is a degenerate U-statistic, whose jackknife error swung 10x between splits of the real
  Pokédex (too narrow on some), and a bootstrap's duplicated records add k(x, x) terms that bias it upward.
  Measured on random splits of the real Pokédex's training images (random CNN features, 40 splits): for two
  halves of real images the half-sample spread is 1.4-1.7x the true SD (conservative: every split covered 0);
  for a blurred copy 1.0-1.2x.
- precision and recall (Kynkaenniemi et al. 2019, k = 3): a real image's neighbourhood is the ball reaching
  its k-th nearest real neighbour; precision is the share of generated images inside some real ball (are they
  realistic?), recall the share of real images inside some generated ball (does the generator cover them?).
  Density and coverage (Naeem et al. 2020) count the same real balls more robustly to outliers: density is
  the mean number of real balls a generated image falls in, over k (about 1 for matching distributions);
  coverage the share of real balls holding at least one generated image. Intervals: bootstrap over records.
- two feature sets: the in-domain image tower (`ClipFeatures`: trained on this dataset's training split), and
  a fixed random-init CNN (`RandomFeatures`: seeded, never trained; Naeem et al. 2020 and Lee et al. 2023
  show random features rank generators usefully), so the second depends on nothing fitted to our data.

Measured on the real Pokédex's test split (90 records, 32 px; bench/bench_eval_models.py), against the real test
images, with 95% intervals:
                                 KID in-domain          KID random                precision in/rand  coverage in/rand
    real validation images       -0.009 [-0.075, 0.057]  0.0009 [-0.0031, 0.0048]  0.97 / 0.89        0.82 / 0.93
    flat discs in type colours    4.02 [3.55, 4.50]      0.0141 [0.0106, 0.0176]   1.00 / 0.68        0.07 / 0.11
Precision alone passes the discs (they sit inside real images' neighbourhoods, as one colour patch of them):
read it beside coverage and KID, which expose them. The tests check the invariants on the synthetic set: two
halves of the real images give KID ~0 within its interval; a 5x5 Gaussian blur (sigma 1 px) or a darkening by
0.2 gives an interval above 0.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.eval.alignment import unit_tensor
from model.eval.intervals import LEVEL, Interval, bootstrap_interval

K_NEIGHBOURS = 3  # Kynkaenniemi et al. 2019's k for precision and recall
FEATURE_SETS = ("indomain", "random")
N_SUBSETS = 100  # half-samples for KID's interval


def kid_name(features: str, split: str = "test") -> str:
    """test/kid_indomain, test/kid_random: the metric's name for a feature set."""
    return f"{split}/kid_{features}"


def pr_name(what: str, features: str, split: str = "test") -> str:
    """test/precision_random, test/coverage_indomain, ..."""
    return f"{split}/{what}_{features}"


# ---------------------------------------------------------------------------------------------
# Feature modules: nn.Modules that torchmetrics' KID calls as its `feature`


class RandomFeatures(nn.Module):
    """A fixed random-init CNN: (N, 3, S, S) in [-1, 1] (or uint8) -> (N, 960) float64. Area-downsampled (or
    bilinearly upsampled) to 32 px, then four ReLU conv levels of 32/64/128/256 channels (stride 2 from the
    second), He initialisation from `seed`, no normalisation; the features are each level's channel means and
    standard deviations over the image (the standard deviations see edges and texture, so blur shows)."""

    def __init__(self, seed: int = 0, resolution: int = 32, widths=(32, 64, 128, 256)):
        super().__init__()
        self.resolution = resolution
        gen = torch.Generator().manual_seed(seed)
        convs, c_in = [], 3
        for i, w in enumerate(widths):
            conv = nn.Conv2d(c_in, w, 3, 1 if i == 0 else 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * np.sqrt(2 / (c_in * 9)))
                conv.bias.zero_()
            convs.append(conv)
            c_in = w
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        x = unit_tensor(images)
        return torch.cat([self._features(x[i:i + 256]) for i in range(0, len(x), 256)]) if len(x) else torch.zeros(0, 0)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="area" if x.shape[-1] > self.resolution else "bilinear")
        feats = []
        for conv in self.convs:
            x = F.relu(conv(x))
            feats += [x.mean((2, 3)), x.std((2, 3))]
        return torch.cat(feats, 1).double()  # (N, 960)


class ClipFeatures(nn.Module):
    """The in-domain model's image embeddings as a feature module: unit vectors times sqrt(dim), so that KID's
    kernel (x.y / dim + 1)^3 reads their cosine (a unit vector's x.y / dim would leave it all but linear)."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        f = self.clip.embed_images(images).double()
        return f * np.sqrt(f.shape[1])


# ---------------------------------------------------------------------------------------------
# KID


def _per_record(generated) -> torch.Tensor:
    x = unit_tensor(generated)
    return x[:, None] if x.ndim == 4 else x  # (R, S, 3, H, W)


def poly_mmd(f_real: torch.Tensor, f_fake: torch.Tensor) -> torch.Tensor:
    """The unbiased MMD^2 of two equal-sized feature sets under KID's kernel (x.y / d + 1)^3: torchmetrics'
    `poly_mmd` with its defaults, operation for operation (tests/test_fidelity.py checks the two agree)."""
    def kernel(a, b):
        return (a @ b.T * (1.0 / a.shape[1]) + 1.0) ** 3

    k_xx, k_xy, k_yy = kernel(f_real, f_real), kernel(f_real, f_fake), kernel(f_fake, f_fake)
    m = k_xx.shape[0]
    value = ((k_xx.sum(dim=-1) - torch.diag(k_xx)).sum() + (k_yy.sum(dim=-1) - torch.diag(k_yy)).sum()) / (m * (m - 1))
    return value - 2 * k_xy.sum(dim=0).sum() / (m ** 2)


def subset_kid(f_real: torch.Tensor, f_fake: torch.Tensor, subsets: int, size: int) -> tuple[float, float]:
    """KID over `subsets` random subsets of `size` rows of each set (mean, population std), drawn from the global
    random stream as torchmetrics' `KernelInceptionDistance.compute` draws them."""
    scores = []
    for _ in range(subsets):
        real = f_real[torch.randperm(len(f_real))[:size]]
        fake = f_fake[torch.randperm(len(f_fake))[:size]]
        scores.append(poly_mmd(real, fake))
    scores = torch.stack(scores)
    return scores.mean().item(), scores.std(unbiased=False).item()


@torch.no_grad()
def kid(feature: nn.Module, real, generated, subsets: int = N_SUBSETS, seed: int = 0) -> Interval:
    """Unbiased KID of generated (R, S, 3, H, W) (or (R, 3, H, W)) against R real images: (mean, lo, hi), the
    mean over sample indices of KID on all R rows, with a half-sampling interval (module docstring)."""
    real, gen = unit_tensor(real), _per_record(generated)
    r, s = gen.shape[:2]
    if len(real) != r or r < 4:
        raise ValueError(f"KID compares R >= 4 real images with R records of samples: got {len(real)} and {r}")
    estimates, spreads = [], []
    with torch.random.fork_rng(devices=[]):  # the subsets are drawn from the global RNG: seeded, then the
        torch.manual_seed(seed)  # caller's generator is put back as it was
        real_features = feature(real)
        for i in range(s):
            fake_features = feature(gen[:, i])
            estimates.append(subset_kid(real_features, fake_features, 1, r)[0])  # all R rows: no subsampling
            spreads.append(subset_kid(real_features, fake_features, subsets, r // 2)[1])
    z = NormalDist().inv_cdf((1 + LEVEL) / 2)
    mean, spread = float(np.mean(estimates)), float(np.mean(spreads))
    return Interval(mean, mean - z * spread, mean + z * spread)


# ---------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) each row's distance to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"k = {k} nearest neighbours need more than {k} feature rows, got {len(x)}")
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    return d.kthvalue(k, dim=1).values


def precision_recall(real_features, fake_features, k: int = K_NEIGHBOURS) -> dict[str, np.ndarray]:
    """Per-item indicators (their means are the metrics): {"precision": (N_fake,) bool, "density": (N_fake,)
    float, "recall": (N_real,) bool, "coverage": (N_real,) bool}. See the module docstring."""
    real, fake = torch.as_tensor(real_features).double(), torch.as_tensor(fake_features).double()
    real_radius, fake_radius = _kth_radius(real, k), _kth_radius(fake, k)
    d = torch.cdist(fake, real)  # (N_fake, N_real)
    inside_real = d <= real_radius[None, :]  # fake i within real j's ball
    return {"precision": inside_real.any(1).numpy(), "density": (inside_real.sum(1).double() / k).numpy(),
            "recall": (d <= fake_radius[:, None]).any(0).numpy(),
            "coverage": (d.min(0).values <= real_radius).numpy()}


# ---------------------------------------------------------------------------------------------
# Everything, named


def metrics(real, generated, features: dict[str, nn.Module], split: str = "test") -> dict[str, Interval]:
    """{<split>/kid_<name>, <split>/precision_<name>, .../recall_, .../density_, .../coverage_: (mean, lo, hi)} of
    generated (R, S, 3, H, W) against the R real images, for each named feature module."""
    real, gen = unit_tensor(real), _per_record(generated)
    r, s = gen.shape[:2]
    out = {}
    for name, module in features.items():
        out[kid_name(name, split)] = kid(module, real, gen)
        with torch.no_grad():
            fr, ff = module(real), module(gen.flatten(0, 1))
        ind = precision_recall(fr, ff)
        for what in ("precision", "density"):
            out[pr_name(what, name, split)] = bootstrap_interval(ind[what].reshape(r, s).astype(np.float64))
        for what in ("recall", "coverage"):
            out[pr_name(what, name, split)] = bootstrap_interval(ind[what].astype(np.float64))
    return out
