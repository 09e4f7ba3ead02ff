"""The one training loop: a plain function of configs, data and a report callback.

    from model.config import ModelConfig, TrainConfig
    from model.train import train
    metrics = train(ModelConfig(), TrainConfig(epochs=2), data)           # data: PreparedData
    metrics["test/l1"], metrics["test/retrieval_top1"]

`report(metrics, state)` is called after every epoch (Ray Tune's adapter saves `state`
as its checkpoint; a notebook may print); passing a saved state back as `resume=`
continues exactly where it stopped. On the last epoch the metrics also hold the final
test metrics, computed with the best-validation weights; the same dict is returned.

Speed: the whole preprocessed dataset is moved to the device once; with a frozen text
encoder (the default) its hidden states are computed once per distinct text and reused
by every step, so a step runs the generator only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

from data_pipeline.dataset import PreparedData, Split
from model import clip
from model.config import (
    BEST_VAL_L1, SAMPLES_PER_S, TEST_CLIP, TEST_L1, TEST_TOP1, TEST_TOP5, TRAIN_L1, VAL_CLIP, VAL_L1, VAL_TOP1,
    ModelConfig, TrainConfig,
)
from model.network import TextToImage, load_text_encoder

EVAL_BATCH = 64


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class TextTable:
    """Every distinct text tokenized once; each split row points at its text by index."""

    def __init__(self, tokenizer, data: PreparedData, max_tokens: int, device):
        self.texts = sorted({t for name in ("train", "val", "test") for t in data.split(name).texts})
        index = {t: i for i, t in enumerate(self.texts)}
        tok = tokenizer(self.texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        self.input_ids = tok["input_ids"].to(device)  # (U, T)
        self.mask = tok["attention_mask"].to(device)  # (U, T)
        self.rows = {name: torch.tensor([index[t] for t in data.split(name).texts], device=device)
                     for name in ("train", "val", "test")}
        self.hidden = None  # (U, T, H) once cached

    def cache_hidden(self, net: TextToImage):
        with torch.no_grad():
            self.hidden = torch.cat([net.encode_text(self.input_ids[i:i + EVAL_BATCH], self.mask[i:i + EVAL_BATCH])
                                     for i in range(0, len(self.texts), EVAL_BATCH)])

    def generate(self, net: TextToImage, text_idx):
        if self.hidden is not None:
            return net.generator(self.hidden[text_idx], self.mask[text_idx])
        return net(self.input_ids[text_idx], self.mask[text_idx])


def _images(split: Split, device) -> torch.Tensor:
    # A copy: arrays from Ray's object store are read-only, and torch warns about sharing them.
    return torch.tensor(split.images, device=device)  # (N, 3, S, S) in [-1, 1]


@torch.no_grad()
def predict(net: TextToImage, texts: TextTable, split_name: str) -> torch.Tensor:
    net.eval()
    rows = texts.rows[split_name]
    return torch.cat([texts.generate(net, rows[i:i + EVAL_BATCH]) for i in range(0, len(rows), EVAL_BATCH)])


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training rows' order in an epoch. It depends on (seed, epoch) only, so a resumed run and a
    packed member (model.packed) see the same order as the uninterrupted plain run."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def divergence(train_l1: float, epoch: int, train_cfg: TrainConfig) -> str:
    """Why a trial whose training loss is no longer finite stops."""
    return (f"training loss became {train_l1} in epoch {epoch + 1} (lr={train_cfg.lr}, "
            f"weight_decay={train_cfg.weight_decay}): this trial diverged; lower the learning rate")


def check_data(model_cfg: ModelConfig, data: PreparedData) -> None:
    if data.image_size != model_cfg.image_size:
        raise ValueError(f"data images are {data.image_size}px but model_cfg.image_size is {model_cfg.image_size}")
    empty = [name for name in ("train", "val", "test") if len(data.split(name)) == 0]
    if empty:
        raise ValueError(f"the {' and '.join(empty)} split of {data.info.get('source', 'the dataset')} is empty: "
                         "training needs records in train, val (best-weight selection) and test; "
                         "use at least 3 usable records and val/test fractions > 0")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: PreparedData, report=None, resume=None,
          device=None) -> dict:
    device = torch.device(device or default_device())
    check_data(model_cfg, data)
    # Decided before any training: a CLIP loss or clip_mode="required" without weights stops here.
    scorer, clip_status = clip.resolve_clip(train_cfg, device)

    torch.manual_seed(train_cfg.seed)
    tokenizer, encoder, encoder_source = load_text_encoder(model_cfg.text_encoder)
    net = TextToImage(model_cfg, encoder).to(device)
    texts = TextTable(tokenizer, data, model_cfg.max_tokens, device)
    if model_cfg.freeze_text_encoder:
        texts.cache_hidden(net)
    train_images, val_images = _images(data.train, device), _images(data.val, device)
    text_features = scorer.text_features(texts.texts) if train_cfg.loss != "l1" else None  # (U, E)

    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    start_epoch, best_val, best_model, history = 0, float("inf"), None, []
    if resume is not None:
        load_trainable(net, resume["model"])
        opt.load_state_dict(resume["optimizer"])
        set_rng_state(resume["rng"])
        start_epoch, best_val, best_model = resume["epoch"], resume["best_val_l1"], resume["best_model"]
        history = list(resume["history"])

    n = len(data.train)
    metrics = history[-1] if history else {}
    for epoch in range(start_epoch, train_cfg.epochs):
        net.train()
        order = epoch_order(n, train_cfg.seed, epoch).to(device)
        total = torch.zeros((), device=device)
        t0 = time.perf_counter()
        for i in range(0, n, train_cfg.batch_size):
            idx = order[i:i + train_cfg.batch_size]
            text_idx = texts.rows["train"][idx]
            pred = texts.generate(net, text_idx)  # (B, 3, S, S)
            l1 = F.l1_loss(pred, train_images[idx])
            if train_cfg.loss == "l1":
                loss = l1
            else:
                c = clip.clip_loss(scorer, pred, text_features[text_idx])
                loss = c if train_cfg.loss == "clip" else l1 + train_cfg.clip_weight * c
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += l1.detach() * len(idx)
        train_l1 = (total / n).item()  # one sync per epoch, not per step
        elapsed = time.perf_counter() - t0
        if not math.isfinite(train_l1):
            raise FloatingPointError(divergence(train_l1, epoch, train_cfg))

        val_l1 = F.l1_loss(predict(net, texts, "val"), val_images).item()
        if val_l1 < best_val:
            best_val, best_model = val_l1, {k: v.detach().cpu().clone() for k, v in net.trainable_state().items()}
        metrics = {"epoch": epoch + 1, TRAIN_L1: train_l1, VAL_L1: val_l1, BEST_VAL_L1: best_val,
                   SAMPLES_PER_S: n / elapsed}
        history.append(metrics)
        state = {
            "model_config": asdict(model_cfg), "train_config": asdict(train_cfg),
            "text_encoder": {"name": model_cfg.text_encoder, "source": encoder_source},
            "epoch": epoch + 1, "model": {k: v.detach().cpu().clone() for k, v in net.trainable_state().items()},
            "best_model": best_model, "optimizer": opt.state_dict(), "rng": rng_state(),
            "best_val_l1": best_val, "history": list(history),
        }
        if epoch + 1 == train_cfg.epochs:
            metrics.update(final_metrics(net, best_model, texts, data, scorer, clip_status, device))
            state["final"] = dict(metrics)
        if report is not None:
            report(dict(metrics), state)
    return dict(metrics)


def load_trainable(net: TextToImage, weights: dict) -> None:
    """Load a checkpoint's trainable weights; only a frozen encoder's (reloaded from its source) may be absent."""
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (net.cfg.freeze_text_encoder and k.startswith("text_encoder."))]
    if missing or unexpected:
        raise KeyError(f"checkpoint weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def final_metrics(net, best_model, texts, data, scorer, clip_status, device) -> dict:
    """Test metrics of the best-validation weights, and their text-faithfulness on validation too."""
    load_trainable(net, best_model)
    out = {}
    for name in ("val", "test"):
        generated, real = predict(net, texts, name), _images(data.split(name), device)
        retrieval = clip.retrieval_accuracy(generated, real)
        out[name] = {
            "l1": F.l1_loss(generated, real).item(), "top1": retrieval["top1"], "top5": retrieval["top5"],
            "chance": retrieval["chance_top1"],
            "clip": scorer.score(generated, data.split(name).texts) if scorer is not None else None,
        }
    val, test = out["val"], out["test"]
    return {
        TEST_L1: test["l1"], TEST_CLIP: test["clip"], "test/clip_status": clip_status,
        TEST_TOP1: test["top1"], TEST_TOP5: test["top5"], "test/retrieval_chance": test["chance"],
        VAL_CLIP: val["clip"], VAL_TOP1: val["top1"],
    }
