"""CLIP score, CLIP loss, the baselines that give a CLIP score meaning, and a retrieval metric.

    from model.eval import clip
    scorer, status = clip.resolve_clip(train_cfg, device)  # (None, reason) when weights are missing
    scorer, status = clip.resolve_clip(train_cfg, device, loader)  # with an owner's own clip.ClipLoader()
    scorer, status = clip.resolve_clip(train_cfg, device, loader, clip_loss="l1+clip")  # a loss that needs it
    if scorer is not None:
        scorer.score(images, texts)          # mean cosine, images (N, 3, S, S) in [-1, 1]
        scorer.score_scaled(images, texts)   # mean of 100 * max(cos, 0), the scale torchmetrics uses
        loss = clip.clip_loss(scorer, images, scorer.text_features(texts))
    clip.retrieval_accuracy(generated, real)  # {"top1", "top5", "chance_top1", "chance_top5"}, no weights needed
    clip.baselines(scorer, data, status)      # once per dataset, JSON-ready

The CLIP score of an image and its text is the cosine similarity of their L2-normalized
open_clip embeddings; a set's score is the mean over its (image, text) pairs. Raw cosines
of unrelated pairs are far from 0 (noise vs "a photo of a cat" is about 0.25), so the
score is reported next to `baselines`: real images with their own texts and with shuffled
texts, a blank white image and the mean training image.

What loading saves lives in a `ClipLoader`, held by its owner: the models it has loaded (CLIP loads
once, and the trials a Ray worker process runs one after another share it) and the warnings it has
shown (a missing-weights warning is printed once, not once per trial). Its owner decides what "once" spans:
a search's driver holds one (search/grid.py), each Ray worker one for the trials it runs one after another
(search/trainable.py, through model.train.Runtime). `load_clip` and `resolve_clip` without a loader
use a new one: the weights are loaded again.

No fake numbers: `load_clip` either loads the configured pretrained weights or raises
`ClipUnavailable` saying how to fix it; it never falls back to random weights and never
waits on a network it cannot reach (a tag is looked up in the local cache first).
`TrainConfig.clip_mode` decides what a missing model means: "auto" warns and records the
score as unavailable with the reason, "required" stops before training, "off" skips
scoring. A CLIP loss needs the weights whatever the mode.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.dataset import PreparedData

CLIP_SCORE_DEFINITION = ("CLIP score = mean over test records of the cosine similarity between the "
                         "L2-normalized open_clip embeddings of the generated image and its text (range -1..1)")
CLIP_LOSS_MODES = ("clip", "l1+clip")
FIX_SUMMARY = "(fix: --clip-pretrained /path/to/file.pt, or a filled open_clip cache with HF_HUB_OFFLINE=1)"
PROBE_TIMEOUT_S = 3.0  # an unreachable hub must cost seconds, not huggingface_hub's ~45 s of retries


class ClipUnavailable(RuntimeError):
    """The configured CLIP weights cannot be loaded; the message says why and how to fix it."""


def _unavailable(model_name: str, pretrained: str, reason: str) -> ClipUnavailable:
    import open_clip
    from huggingface_hub import constants as hf_constants
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    tag = pretrained if pretrained in tags else (tags[0] if tags else "TAG")
    return ClipUnavailable(
        f"CLIP weights {model_name!r} / {pretrained!r} could not be loaded: {reason}\n"
        f"To fix it, do one of:\n"
        f"  - pass a local checkpoint file of this architecture: --clip-pretrained /path/to/file.pt (OpenAI's "
        f"weights from a file need the model's QuickGELU variant, e.g. --clip-model ViT-B-32-quickgelu);\n"
        f"  - fill the cache on a machine with internet (python -c \"import open_clip; "
        f"open_clip.create_model('{model_name}', pretrained='{tag}')\"), copy the Hugging Face cache "
        f"({hf_constants.HF_HUB_CACHE}, set by HF_HOME/HF_HUB_CACHE) here and set HF_HUB_OFFLINE=1;\n"
        f"  - or run without CLIP: --clip-mode off (a CLIP loss cannot run without the weights).")


# ---------------------------------------------------------------------------------------------
# Finding the weights without touching an unreachable network


def _is_torchscript(path: str) -> bool:
    """OpenAI's original release files (ViT-B-32.pt) are TorchScript archives."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in z.namelist())


def _named_openai(path: str) -> bool:
    """'openai' in the file name, or in the Hugging Face cache folder it sits in (models--timm--...openai)."""
    parts = Path(path).parts
    return any("openai" in p.lower() for p in parts[-1:] + tuple(p for p in parts if p.startswith("models--")))


def _cached_file(tag_cfg: dict) -> str | None:
    """The local copy of a pretrained tag's weights, where open_clip's downloads would have put it."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])  # "org/repo/" -> the default file name
        filename = filename or HF_WEIGHTS_NAME
        candidates = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
        if filename.endswith((".bin", ".pth")):
            candidates.append(filename[:-4] + ".safetensors")
        for name in [*candidates, filename]:
            path = try_to_load_from_cache(repo_id, name)
            if isinstance(path, str):
                return path
    if tag_cfg.get("url"):  # open_clip's (and OpenAI's clip package's) own download folder
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(tag_cfg["url"]))
        if os.path.isfile(path):
            return path
    return None


def _reachable(url: str) -> bool:
    """Can we open a TCP connection to the host (or the configured proxy) within PROBE_TIMEOUT_S?"""
    proxy = urllib.request.getproxies().get("https")
    parsed = urllib.parse.urlparse(proxy or url)
    try:
        socket.create_connection((parsed.hostname, parsed.port or 443), timeout=PROBE_TIMEOUT_S).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _weights_args(model_name: str, pretrained: str) -> dict:
    """open_clip.create_model keyword arguments that load exactly these weights from a local file.

    A tag is resolved to its cached file, with the tag's QuickGELU and preprocessing settings
    passed explicitly: open_clip would otherwise build ViT-B-32 with plain GELU for OpenAI's
    weights (it only warns) and, offline, spend ~45 s retrying the hub before failing.
    """
    import open_clip
    from huggingface_hub import constants as hf_constants

    if not pretrained:
        raise _unavailable(model_name, pretrained, "no pretrained weights configured (random weights are never scored)")
    if os.path.isfile(pretrained):
        args = {"pretrained": pretrained}
        if _is_torchscript(pretrained):
            # torch.load(weights_only=True) refuses TorchScript; torch.jit.load runs no pickled Python code.
            args["weights_only"] = False
        quick_gelu_arch = (open_clip.get_pretrained_cfg(model_name, "openai") or {}).get("quick_gelu", False)
        if quick_gelu_arch and not model_name.endswith("-quickgelu"):
            if args.get("weights_only") is False or _named_openai(pretrained):
                # Only OpenAI ships TorchScript CLIP files; a GELU mismatch gives wrong features silently.
                args["force_quick_gelu"] = True
                print(f"model.eval.clip: {pretrained} looks like OpenAI weights; using QuickGELU "
                      f"(as {model_name}-quickgelu)", file=sys.stderr)
            else:
                warnings.warn(f"CLIP weights from the file {pretrained}: if they are OpenAI's, use "
                              f"--clip-model {model_name}-quickgelu, otherwise the features are silently wrong")
        return args

    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise _unavailable(model_name, pretrained,
                           f"{pretrained!r} is neither a file nor a pretrained tag of this model (tags: {tags})")
    tag_args = {"force_quick_gelu": tag_cfg.get("quick_gelu", False),
                "force_preprocess_cfg": {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode")
                                         if k in tag_cfg}}
    cached = _cached_file(tag_cfg)
    if cached:
        return {"pretrained": cached, **tag_args}
    if _offline():
        raise _unavailable(model_name, pretrained, "not in the local cache and HF_HUB_OFFLINE is set")
    source = tag_cfg.get("url") if not tag_cfg.get("hf_hub") and tag_cfg.get("url") else hf_constants.ENDPOINT
    if not _reachable(source):
        raise _unavailable(model_name, pretrained, f"not in the local cache and {source} cannot be reached (offline?)")
    return {"pretrained": pretrained, **tag_args}  # open_clip downloads it into the cache


# ---------------------------------------------------------------------------------------------
# The scorer


@dataclass(frozen=True)
class ClipScorer:
    """A frozen open_clip model with its tokenizer and preprocessing, on one device."""
    model: torch.nn.Module
    tokenizer: object  # open_clip tokenizer: list[str] -> (N, context_length) tokens, truncating
    image_size: int
    mean: torch.Tensor  # (1, 3, 1, 1)
    std: torch.Tensor  # (1, 3, 1, 1)
    interpolation: str  # "bicubic" or "bilinear"
    device: torch.device
    name: str  # "model_name/pretrained", recorded with results

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images (N, 3, S, S) -> CLIP's input (N, 3, R, R), in torch on their device.

        The same steps as open_clip's PIL transform of the saved PNG: clamp, [0, 1], resize
        (antialiased, so bicubic uses PIL's kernel), clamp again (PIL's uint8 result cannot
        overshoot), normalize. Square inputs only: then "resize shortest side + center crop" is a resize.
        """
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"CLIP preprocessing expects square images, got {tuple(images.shape)}")
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode=self.interpolation,
                          antialias=True, align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, E) normalized; differentiable with respect to the images (used by the loss)."""
        images = torch.as_tensor(images).to(self.device)
        return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    @torch.no_grad()
    def text_features(self, texts, batch_size: int = 256) -> torch.Tensor:
        """(N, E) normalized. Texts longer than the context length are truncated by the tokenizer."""
        feats = [self.model.encode_text(self.tokenizer(list(texts[i:i + batch_size])).to(self.device))
                 for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(feats), dim=-1)

    @torch.no_grad()
    def cosines(self, images, texts, batch_size: int = 64) -> torch.Tensor:
        """(N,) cosine similarity of images[i] and texts[i]."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        out = []
        for i in range(0, len(texts), batch_size):
            img = self.image_features(torch.as_tensor(images[i:i + batch_size]))
            out.append((img * self.text_features(texts[i:i + batch_size])).sum(-1))
        return torch.cat(out)

    def score(self, images, texts, batch_size: int = 64) -> float:
        """The CLIP score: mean cosine of (images[i], texts[i]). See CLIP_SCORE_DEFINITION."""
        return self.cosines(images, texts, batch_size).mean().item()

    def score_scaled(self, images, texts, batch_size: int = 64) -> float:
        """CLIP score (scaled): mean of 100 * max(cos, 0), the scale torchmetrics and other tools report."""
        return (100 * self.cosines(images, texts, batch_size).clamp(min=0)).mean().item()


class ClipLoader:
    """The CLIP models one owner has loaded, and the warnings it has shown.

        loader = ClipLoader()
        loader.load(model_name, pretrained, device)   # loads; the same call again returns the same scorer
        loader.resolve(train_cfg, device, clip_loss)  # clip_mode and the loss rule, warning once

    The owner decides what "once" spans: a search's driver, a Ray worker whose trials share the model, a test.
    """

    def __init__(self):
        self._loaded: dict[tuple[str, str, str], ClipScorer] = {}
        self._warned: set[str] = set()

    def load(self, model_name: str, pretrained: str, device) -> ClipScorer:
        """The frozen CLIP model with these weights, or ClipUnavailable. Loaded once per loader and device."""
        device = torch.device(device or "cpu")
        key = (model_name, pretrained, str(device))
        if key not in self._loaded:
            self._loaded[key] = _load(model_name, pretrained, device)
        return self._loaded[key]

    def resolve(self, train_cfg, device, clip_loss: str | None = None) -> tuple[ClipScorer | None, str]:
        """Apply clip_mode and the loss rule, before training: (scorer, "ok") or (None, why not).

        "off" skips scoring unless the loss needs CLIP (`clip_loss`: the name of a loss that does, one of
        CLIP_LOSS_MODES, as the family's `clip_loss(section)` says; None when it does not); a CLIP loss or
        "required" without weights raises ClipUnavailable; "auto" warns loudly and carries on without a score.
        """
        needs_clip = clip_loss in CLIP_LOSS_MODES
        if train_cfg.clip_mode == "off" and not needs_clip:
            return None, "off: CLIP scoring disabled"
        try:
            return self.load(train_cfg.clip_model, train_cfg.clip_pretrained, device), "ok"
        except ClipUnavailable as e:
            if needs_clip:
                raise ClipUnavailable(f"loss={clip_loss!r} needs CLIP weights. {e}") from e
            if train_cfg.clip_mode == "required":
                raise
            # Loudly, but once: once per loader, and not at all in a Ray worker (a search's trial),
            # whose driver has printed it already; the status below records it in every trial's results.
            if str(e) not in self._warned and not _in_ray_worker():
                self._warned.add(str(e))
                bar = "=" * 100
                print(f"{bar}\nWARNING: no CLIP score for this run (clip_mode='auto'); test/clip_score is recorded "
                      f"as unavailable.\n{e}\n{bar}", file=sys.stderr, flush=True)
            return None, f"unavailable: {str(e).splitlines()[0]} {FIX_SUMMARY}"


def load_clip(model_name: str, pretrained: str, device, loader: ClipLoader | None = None) -> ClipScorer:
    """`loader.load` (a new loader's when none is given: nothing kept)."""
    return (loader or ClipLoader()).load(model_name, pretrained, device)


def resolve_clip(train_cfg, device, loader: ClipLoader | None = None,
                 clip_loss: str | None = None) -> tuple[ClipScorer | None, str]:
    """`loader.resolve` (a new loader's when none is given: nothing kept, the warning shown)."""
    return (loader or ClipLoader()).resolve(train_cfg, device, clip_loss)


def _load(model_name: str, pretrained: str, device: torch.device) -> ClipScorer:
    import open_clip  # imported here: ~3 s, and only runs that score or train with CLIP need it
    args = _weights_args(model_name, pretrained)
    try:
        model = open_clip.create_model(model_name, device=device, require_pretrained=True, **args)
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as e:  # a corrupt file, a wrong architecture, a failed download
        raise _unavailable(model_name, pretrained, f"{type(e).__name__}: {e}") from e
    model.eval().requires_grad_(False)
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"]
    return ClipScorer(
        model=model, tokenizer=tokenizer,
        image_size=size if isinstance(size, int) else size[0],
        mean=torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1),
        std=torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1),
        interpolation="bicubic" if cfg.get("interpolation", "bicubic") == "bicubic" else "bilinear",
        device=device, name=f"{model_name}/{pretrained}")


def _in_ray_worker() -> bool:
    """Inside a Ray actor (a Tune trial; its output is forwarded to the driver), not the driver itself."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


# ---------------------------------------------------------------------------------------------
# Loss, retrieval, baselines


def clip_cosines(scorer: ClipScorer, images: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """(N,) cosine of images[i] and text_features[i]; gradients reach the images only (CLIP is frozen)."""
    return (scorer.image_features(images) * F.normalize(text_features, dim=-1).to(images.device)).sum(-1)


def clip_loss(scorer: ClipScorer, images: torch.Tensor, texts_or_text_features) -> torch.Tensor:
    """1 - mean cosine of images[i] and texts[i]; gradients reach the images only (CLIP is frozen).

    Pass (N, E) text features (scorer.text_features, computed once per distinct text) to
    avoid re-encoding the texts every step.
    """
    text = texts_or_text_features
    text = text if isinstance(text, torch.Tensor) else scorer.text_features(text)
    return 1 - clip_cosines(scorer, images, text).mean()


def retrieval_accuracy(generated: torch.Tensor, real: torch.Tensor, ks=(1, 5)) -> dict:
    """How often the real image of record i is among the k nearest (L1) of all real images to generated[i].

    Conservative ranking: the rank of real[i] counts every other real image at a distance
    <= its own, so identical images (or a constant output) never score a hit.
    """
    g = torch.as_tensor(generated).flatten(1).float()  # (N, D)
    r = torch.as_tensor(real).to(g.device).flatten(1).float()  # (N, D)
    if g.shape != r.shape:
        raise ValueError(f"generated {tuple(g.shape)} and real {tuple(r.shape)} differ")
    n = len(g)
    dist = torch.cdist(g, r, p=1)  # (N, N): dist[i, j] = |generated[i] - real[j]|_1
    rank = (dist <= dist.diagonal()[:, None]).sum(1) - 1  # (N,) others at least as close; 0 = best
    out = {}
    for k in ks:
        out[f"top{k}"] = (rank < k).sum().item() / n
        out[f"chance_top{k}"] = min(k, n) / n
    return out


def _derangement(n: int, seed: int) -> np.ndarray:
    """A seeded random permutation with no fixed point, so no record keeps its own text."""
    rng = np.random.default_rng(seed)
    while True:  # about e tries on average
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


def baselines(scorer: ClipScorer | None, data: PreparedData, clip_status: str, seed: int = 0) -> dict:
    """Reference points for test/clip_score and test/l1, computed once per dataset (JSON-ready).

    With the same CLIP model, preprocessing and test texts: real test images vs their own
    texts (a ceiling), vs shuffled texts (unrelated pairs), a blank white image and the mean
    training image (text-blind outputs). Beside test L1, two text-blind constant images: the
    mean training image, and the per-pixel median one, which is what an L1-trained model that
    ignores the text converges to (the median minimizes L1 on the training rows). A model near
    them has learned nothing from the text.
    """
    test = data.test
    test_images = torch.as_tensor(test.unit_images())  # (N, 3, S, S) in [-1, 1]
    train_images = torch.as_tensor(data.train.unit_images())
    mean_image = train_images.mean(0, keepdim=True)  # (1, 3, S, S)
    median_image = train_images.median(0, keepdim=True).values  # (1, 3, S, S)
    out = {
        "baseline/clip_status": clip_status,
        "baseline/clip_model": scorer.name if scorer is not None else None,
        "baseline/clip_definition": CLIP_SCORE_DEFINITION,
        "baseline/clip_real_own_text": None,
        "baseline/clip_real_shuffled_text": None,
        "baseline/clip_white_image": None,
        "baseline/clip_mean_train_image": None,
        "baseline/test_l1_mean_train_image": (test_images - mean_image).abs().mean().item(),
        "baseline/test_l1_median_train_image": (test_images - median_image).abs().mean().item(),
    }
    if scorer is None or len(test) == 0:
        return out
    texts = list(test.texts)
    white = torch.ones_like(mean_image)  # white is 1 in [-1, 1]
    text_feats = scorer.text_features(texts)  # (N, E)
    with torch.no_grad():
        out["baseline/clip_real_own_text"] = scorer.score(test_images, texts)
        if len(test) > 1:
            out["baseline/clip_real_shuffled_text"] = scorer.score(test_images, [texts[j] for j in
                                                                                 _derangement(len(test), seed)])
        out["baseline/clip_white_image"] = (scorer.image_features(white) @ text_feats.T).mean().item()
        out["baseline/clip_mean_train_image"] = (scorer.image_features(mean_image) @ text_feats.T).mean().item()
    return out
