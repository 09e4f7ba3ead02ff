"""An in-domain contrastive text-image model: a small CLIP trained on the training split only, and what it measures.

    from model.eval import alignment as al
    clip = al.load_or_fit(data)        # once per dataset: cached in data.info["cache_dir"], its texts' states too
    scores = al.alignment_scores(clip, generated, data.test.texts)   # generated (R, S, 3, H, W) in [-1, 1] -> (R, S)
    hits = al.r_precision_hits(clip, generated, data.test.texts)     # {1: (R, S) bool, 5: (R, S) bool}
    metrics = al.metrics(clip, generated, data.test)             # {TEST_ALIGN: Interval, TEST_R_TOP1: ..., ...}
    refs = al.baselines(clip, data.test)                         # real images' score, shuffled texts', chance
    feats = clip.embed_images(images)                            # (N, dim) unit vectors: KID, memorisation, diversity

Not OpenAI's CLIP and no stand-in for it: nothing here was trained beyond this dataset's training split, and its
numbers are named `indomain_align` so that nobody reads them as a CLIP score (model/eval/clip.py keeps that, real
weights only). What it is:
- an image tower, a small CNN (GroupNorm, so an image's embedding never depends on its batch-mates), pooled to a
  `dim`-vector; images are area-downsampled to `resolution` first, so 64 px data costs what 32 px does;
- a text tower: the frozen text encoder's pooled state (the masked mean of its last hidden state: the same
  encoder as the generators', loaded in `_text_encoder`) through one linear map to `dim`. The cache keeps the
  pooled states of every split's texts beside the weights (898 x 384 floats, 1.4 MB, on the real Pokédex), so a
  trial that loads the model scores its texts without loading or running the encoder (which was two thirds of
  a final evaluation); a text it has not seen still loads the encoder;
- trained with the symmetric InfoNCE loss (Radford et al. 2021) and a learned temperature, on batches of
  distinct training records (a batch never holds two copies of one record, which would be false negatives),
  each record drawn as one of its rotated copies (`rotations=True`) and randomly flipped and shifted.
  A fixed number of AdamW epochs (over records) from a fixed seed: the same weights for the same seed and thread
  count.

What it gives (R records, S samples each, every score an (R, S) array so that model/eval/intervals.py can put
an interval on it over records and samples):
- alignment (`test/indomain_align`): the cosine of a generated image's embedding and its own text's, beside
  the real images' (`baseline/indomain_align_real`) and the real images' with a derangement of the texts
  (`baseline/indomain_align_shuffled`, every image with another record's text): a generator that draws from the
  text scores like the real images; one that ignores it, like the shuffled texts;
- R-precision (`test/r_precision_top1`, `test/r_precision_top5`): is the image's own text among the k texts of
  the split most similar to it? Chance is k / R (`baseline/r_precision_top{k}_chance`);
- image features for model/eval/fidelity.py (KID, precision/recall) and model/eval/features.py (memorisation,
  diversity), and a zero-shot type classifier for model/eval/type_accuracy.py.

Measured (bench/bench_eval_models.py, 32 px, 2 rotations, one thread; CPU seconds, the 2-core machine was shared):
- synthetic set (240 training records): fit 29 s CPU, the frozen encoder's states of 300 texts included; test
  (30): alignment 0.41 [0.34, 0.47] vs shuffled texts 0.01 [-0.06, 0.08]; R-precision top-1 0.50, top-5 0.80
  (chance 0.03, 0.17).
- real Pokédex (718 training records): fit 85 s CPU (257 s wall at load average 11); test (90): alignment 0.113
  [0.078, 0.145] vs shuffled texts 0.005 [-0.035, 0.043]; top-1 0.044 [0.011, 0.089], top-5 0.167 [0.089, 0.244]
  (chance 0.011, 0.056). Weak but real: beyond the type, whose colour the images barely show at 32 px, a
  Pokédex text says little that 32 px can show. The model memorises its 718 pairs (training top-1 reaches 1.0
  within 300-600 steps) while held-out top-5 is flat from step 100 on, so more epochs buy nothing.
- rotated copies or not (3-fold CV by record on the training split, held-out records' unrotated images against
  the fold's texts): top-5 0.061 [0.045, 0.081] with them, 0.066 [0.047, 0.084] without (chance 0.021); gap to
  shuffled texts 0.083 vs 0.082. A tie: they stay in (`rotations=True`), as every generator trains on them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.files import dataset_key, load_or_fit as cached
from model.eval.intervals import Interval, bootstrap_interval
from model.config import TEST_ALIGN, TEST_R1, VAL_ALIGN, VAL_R1  # noqa: F401 (its metrics' names)

TEST_R_TOP1, VAL_R_TOP1 = TEST_R1, VAL_R1
TEST_R_TOP5 = "test/r_precision_top5"
VAL_R_TOP5 = "val/r_precision_top5"
BASELINE_ALIGN_REAL = "baseline/indomain_align_real"
BASELINE_ALIGN_SHUFFLED = "baseline/indomain_align_shuffled"
BASELINE_R_TOP1_REAL = "baseline/r_precision_top1_real"
BASELINE_R_TOP5_REAL = "baseline/r_precision_top5_real"
BASELINE_R_TOP1_CHANCE = "baseline/r_precision_top1_chance"
BASELINE_R_TOP5_CHANCE = "baseline/r_precision_top5_chance"
VERSION = 2  # bump whenever a code change changes what a fitted model computes or its cache holds (2: text states)
CACHE_NAME = "indomain_clip"
EVAL_BATCH = 256


@dataclass(frozen=True)
class AlignConfig:
    text_encoder: str = "all-MiniLM-L6-v2"  # model.config.DEFAULT_TEXT_ENCODER: the generators' frozen encoder
    max_tokens: int = 256  # the Pokédex's longest enriched text is 78 tokens: nothing is cut, the types included
    resolution: int = 32  # images are area-downsampled to this
    width: int = 16  # the image CNN's first level; each of the three levels below doubles it
    dim: int = 128  # the joint embedding
    epochs: float = 100  # passes over the training records (a record is one of its copies each time)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    rotations: bool = True  # train on every rotated copy of a record (else on its unrotated image only)
    augment: bool = True  # random horizontal flips and shifts of up to `resolution // 8` px (white fill)
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# The two towers


def _text_encoder(name: str):
    """(tokenizer, frozen encoder): the only place this module touches the generators' text stack."""
    from model.text import load_text_encoder

    tokenizer, encoder, _ = load_text_encoder(name)
    return tokenizer, encoder.eval().requires_grad_(False)


class TextPooler:
    """The frozen encoder's pooled state of each text (the masked mean of its last hidden state), computed once
    per distinct text and kept. Loads the encoder on first use."""

    def __init__(self, name: str, max_tokens: int):
        self.name, self.max_tokens = name, max_tokens
        self.tokenizer = self.encoder = None
        self.states: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N, H) float32 on the CPU."""
        todo = sorted({t for t in texts if t not in self.states}, key=len)  # similar lengths: little padding
        if todo:
            if self.encoder is None:
                self.tokenizer, self.encoder = _text_encoder(self.name)
            for i in range(0, len(todo), 64):
                batch = todo[i:i + 64]
                tok = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_tokens,
                                     return_tensors="pt")
                hidden = self.encoder(**tok).last_hidden_state  # (B, T, H)
                mask = tok["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
                self.states.update(zip(batch, pooled))
        if not texts:
            return torch.zeros(0, 0)
        return torch.stack([self.states[t] for t in texts])


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())


class ImageTower(nn.Module):
    """(N, 3, S, S) in [-1, 1] -> (N, dim): a stem, then three stride-2 levels (32 -> 16 -> 8 -> 4 px),
    average-pooled and projected."""

    def __init__(self, width: int, dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        w = width
        self.net = nn.Sequential(_block(3, w, 1), _block(w, 2 * w, 2), _block(2 * w, 2 * w, 1),
                                 _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1), _block(4 * w, 8 * w, 2))
        self.proj = nn.Linear(8 * w, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = _at_resolution(images, self.resolution)
        return self.proj(self.net(x).mean((2, 3)))  # (N, dim), not yet normalized


def _at_resolution(images: torch.Tensor, resolution: int) -> torch.Tensor:
    x = images.float()
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="area" if x.shape[-1] > resolution else "bilinear")
    return x


class InDomainClip(nn.Module):
    """The image tower, the text projection and the temperature; embed_* return unit vectors."""

    def __init__(self, cfg: AlignConfig, text_dim: int):
        super().__init__()
        self.cfg = cfg
        self.image = ImageTower(cfg.width, cfg.dim, cfg.resolution)
        self.text = nn.Linear(text_dim, cfg.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's starting temperature
        self.pooler = TextPooler(cfg.text_encoder, cfg.max_tokens)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] (or uint8), any S -> (N, dim) unit vectors on the CPU."""
        x = unit_tensor(images)
        self.eval()
        if len(x) == 0:
            return torch.zeros(0, self.cfg.dim)
        return torch.cat([F.normalize(self.image(x[i:i + EVAL_BATCH]), dim=-1) for i in range(0, len(x), EVAL_BATCH)])

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """N texts -> (N, dim) unit vectors."""
        self.eval()
        if not texts:
            return torch.zeros(0, self.cfg.dim)
        return F.normalize(self.text(self.pooler(list(texts))), dim=-1)


def unit_tensor(images) -> torch.Tensor:
    """Images as a float32 tensor in [-1, 1] on the CPU, from uint8 [0, 255] or float, numpy or torch (a numpy
    array is copied: split images may be read-only views, e.g. in Ray's object store)."""
    x = images.cpu() if torch.is_tensor(images) else torch.from_numpy(np.array(images))
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


# ---------------------------------------------------------------------------------------------
# Training


def record_rows(ids: np.ndarray, rows_per_rotation: int | None = None) -> list[np.ndarray]:
    """Each distinct record's row indices in a training split (a record's rows are consecutive): all of them, or
    the first `rows_per_rotation` (its unrotated image's rows: prepare writes them rotation-major, each rotated
    copy once per paraphrase)."""
    ids = np.asarray(ids)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    groups = np.split(np.arange(len(ids)), starts[1:])
    return groups if rows_per_rotation is None else [g[:rows_per_rotation] for g in groups]


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random horizontal flips and integer shifts (the uncovered border white, the background)."""
    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])


def n_steps(epochs: float, n_records: int, batch: int) -> int:
    """Optimizer steps for `epochs` passes over n_records in batches of `batch` distinct records."""
    return max(1, round(epochs * n_records / batch))


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 0."""
    return lr * min(1.0, (step + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * step / steps))


def draw_rows(groups: list[np.ndarray], batch: int, gen: torch.Generator) -> list[int]:
    """`batch` distinct records, one random row (rotated copy) of each."""
    recs = torch.randperm(len(groups), generator=gen)[:batch].tolist()
    picks = torch.randint(0, 1 << 30, (len(recs),), generator=gen).tolist()
    return [int(groups[r][p % len(groups[r])]) for r, p in zip(recs, picks)]


def fit(split, cfg: AlignConfig = AlignConfig(), rows_per_rotation: int = 1, pooler: TextPooler | None = None,
        log=None, callback=None, every: int = 100) -> InDomainClip:
    """Train on a training Split on the CPU: every row of each record (cfg.rotations), or its first
    `rows_per_rotation` rows, the unrotated image (one per paraphrase; data_pipeline.dataset.train_copies)."""
    ids = np.asarray(split.ids)
    if len(np.unique(ids)) < 2:
        raise ValueError(f"the in-domain model needs at least 2 training records, got {len(np.unique(ids))}")
    groups = record_rows(ids, None if cfg.rotations else rows_per_rotation)
    pooler = pooler or TextPooler(cfg.text_encoder, cfg.max_tokens)
    images = unit_tensor(split.images)  # (N, 3, S, S)
    text_states = pooler(list(split.texts))  # (N, H)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = InDomainClip(cfg, text_states.shape[1])
    model.pooler = pooler
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = min(cfg.batch_size, len(groups))
    max_shift = cfg.resolution // 8 if cfg.augment else 0
    steps = n_steps(cfg.epochs, len(groups), batch)
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, cfg.lr, cfg.warmup_steps)
        rows = draw_rows(groups, batch, gen)
        x = _at_resolution(images[rows], cfg.resolution)
        if cfg.augment:
            x = augment(x, gen, max_shift)
        img = F.normalize(model.image(x), dim=-1)  # (B, dim)
        txt = F.normalize(model.text(text_states[rows]), dim=-1)  # (B, dim)
        logits = model.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.T  # (B, B)
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log and (step + 1) % 250 == 0:
            log(f"step {step + 1}/{steps}: InfoNCE {loss.item():.3f}, temperature {1 / model.logit_scale.exp().item():.3f}")
        if callback and (step + 1) % every == 0:
            callback(step + 1, model.eval())
            model.train()
    return model.eval().requires_grad_(False)


def _state(model: InDomainClip) -> dict:
    """The weights, and the pooled text states the pooler holds (so a loaded model needs no text encoder for them)."""
    return {"config": dataclasses.asdict(model.cfg), "text_dim": model.text.in_features,
            "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "text_states": dict(model.pooler.states)}


def _from_state(state: dict) -> InDomainClip:
    model = InDomainClip(AlignConfig(**state["config"]), int(state["text_dim"]))
    model.load_state_dict(state["weights"])
    model.pooler.states = dict(state["text_states"])
    return model.eval().requires_grad_(False)


def load_or_fit(data, cfg: AlignConfig = AlignConfig()) -> InDomainClip:
    """The in-domain model of this prepared dataset: loaded from its cache, else fitted on the training split. The
    cache also holds the pooled states of every split's texts, so that scoring them never loads the text encoder."""
    import sys

    paraphrases = int(data.info.get("settings", {}).get("paraphrases", 1))

    def fit_and_pool() -> InDomainClip:
        model = fit(data.train, cfg, paraphrases,
                    log=lambda line: print(f"model.eval.alignment: {line}", file=sys.stderr, flush=True))
        for name in ("val", "test"):  # in the final evaluation's order: each split's texts pooled together, as there
            model.pooler(list(data.split(name).texts))
        return model

    return cached(data.info.get("cache_dir"), CACHE_NAME, dataset_key(data, CACHE_NAME, VERSION, cfg), fit_and_pool,
                  _state, _from_state)


# ---------------------------------------------------------------------------------------------
# What it measures


def _per_record(images) -> torch.Tensor:
    """(R, S, 3, H, W) from (R, S, 3, H, W) or (R, 3, H, W) (one sample per record)."""
    x = unit_tensor(images)
    return x[:, None] if x.ndim == 4 else x


def embeddings(model: InDomainClip, images, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(images' embeddings (R, S, dim), texts' (R, dim)) of images (R, S, 3, H, W) or (R, 3, H, W), one text per
    record."""
    x = _per_record(images)
    r, s = x.shape[:2]
    if len(texts) != r:
        raise ValueError(f"{r} records of images but {len(texts)} texts")
    return model.embed_images(x.flatten(0, 1)).view(r, s, -1), model.embed_texts(list(texts))


def alignment_scores(model: InDomainClip, images, texts: list[str]) -> np.ndarray:
    """(R, S) cosine of each image's embedding and its own record's text's (texts: R, one per record)."""
    img, txt = embeddings(model, images, texts)
    return (img * txt[:, None]).sum(-1).numpy().astype(np.float64)


def r_precision_hits(model: InDomainClip, images, texts: list[str], ks=(1, 5)) -> dict[int, np.ndarray]:
    """{k: (R, S) bool}: is the record's own text among the k of `texts` most similar to its image? A text
    ranks above the own one only when strictly more similar (a duplicate text ties, it does not win)."""
    img, txt = embeddings(model, images, texts)
    r = len(txt)
    sims = img @ txt.T  # (R, S, R)
    own = sims[torch.arange(r), :, torch.arange(r)]  # (R, S)
    rank = (sims > own[..., None]).sum(-1)  # (R, S): texts strictly more similar than the own one
    return {k: (rank < k).numpy() for k in ks}


def derangement(n: int, seed: int = 0) -> np.ndarray:
    """A permutation with no fixed point (Sattolo's algorithm: one random n-cycle), seeded."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    rng = np.random.default_rng(seed)
    p = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = rng.integers(0, i)
        p[i], p[j] = p[j], p[i]
    return p


def metrics(model: InDomainClip, generated, split, prefix: str = "test") -> dict[str, Interval]:
    """{<prefix>/indomain_align, <prefix>/r_precision_top1, <prefix>/r_precision_top5: (mean, lo, hi)} of the
    generated images (R, S, 3, H, W) of the split's rows (its texts, one per record)."""
    texts = list(split.texts)
    hits = r_precision_hits(model, generated, texts)
    return {f"{prefix}/indomain_align": bootstrap_interval(alignment_scores(model, generated, texts)),
            f"{prefix}/r_precision_top1": bootstrap_interval(hits[1]),
            f"{prefix}/r_precision_top5": bootstrap_interval(hits[5])}


def baselines(model: InDomainClip, split, seed: int = 0) -> dict[str, Interval | float]:
    """The split's real images: their alignment with their own texts and with a derangement of them, their
    R-precision, and R-precision's chance (k / R)."""
    texts, real = list(split.texts), split.images
    shuffled = [texts[j] for j in derangement(len(texts), seed)]
    hits = r_precision_hits(model, real, texts)
    return {BASELINE_ALIGN_REAL: bootstrap_interval(alignment_scores(model, real, texts)),
            BASELINE_ALIGN_SHUFFLED: bootstrap_interval(alignment_scores(model, real, shuffled)),
            BASELINE_R_TOP1_REAL: bootstrap_interval(hits[1]), BASELINE_R_TOP5_REAL: bootstrap_interval(hits[5]),
            BASELINE_R_TOP1_CHANCE: min(1.0, 1 / len(texts)), BASELINE_R_TOP5_CHANCE: min(1.0, 5 / len(texts))}
