"""The one training loop: K trials of one architecture trained together, a single trial being K = 1.

    from model.config import ModelConfig, TrainConfig
    from model.train import train, train_members
    metrics = train(ModelConfig(), TrainConfig(epochs=2), data)            # one trial; data: PreparedData
    metrics["test/l1"], metrics["test/retrieval_top1"]
    cfgs = [TrainConfig(lr=lr, weight_decay=wd) for lr in (1e-4, 1e-5) for wd in (1e-5, 1e-6)]
    results = train_members(ModelConfig(n_heads=4), cfgs, data)            # a fused trial: 4 members
    results[2]["test/l1"]                                                   # member 2's own metrics

`report(metrics, state)` is called after every epoch: `metrics` is one dict per member (Ray Tune's
adapter saves `state` as its checkpoint; a notebook may print); passing a saved state back as
`resume=` continues exactly where it stopped. On the last epoch the metrics also hold the final
test metrics, computed with each member's best-validation weights; the same list is returned.

Members share the frozen text encoder and the data, and differ in what a TrainConfig sets: learning
rate, weight decay, seed. Their weights sit side by side (the network's member axis, see
model/network.py) in one flat tensor, so one forward, one backward and one AdamW update (a handful
of kernels, each member with its own learning rate, weight decay and moments) serve all K: on a
launch-bound GPU K trials cost about as many kernel launches as one. Every member still takes its own
batch-10 steps over its own seeded shuffle; with dropout off a member's weights are the ones its
single-trial run ends with (tests/test_members.py). A member whose loss diverges stops alone with the
reason in its metrics ("error"); the single-trial `train` raises FloatingPointError instead.

Staged training (`TrainConfig.finetune_epochs` > 0, K = 1): after `epochs` with the encoder frozen, the
loop reloads the best-validation weights and trains `finetune_epochs` more with the encoder's top
`finetune_layers` unfrozen, at `finetune_lr`; best weights, history and the final metrics span both stages.

Speed: the whole preprocessed dataset is moved to the device once; with a frozen text encoder (the
default) its hidden states are computed once per distinct text and reused by every step.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.dataset import PreparedData, Split
from model import clip, faithfulness
from model.config import (
    BEST_VAL_L1, SAMPLES_PER_S, TEST_CLIP, TEST_L1, TEST_TOP1, TEST_TOP5, TEST_TYPE_ACC, TRAIN_L1, VAL_CLIP, VAL_L1,
    VAL_TOP1, ModelConfig, TrainConfig,
)
from model.network import TextToImage, load_text_encoder

EVAL_BATCH = 64
STATE_FORMAT = 2  # checkpoints hold every weight with a leading member axis
# The per-member configs must agree on these: one loop runs the members' steps in lockstep, and they
# share one CLIP model. lr, weight_decay and seed may differ.
SHARED_FIELDS = ("epochs", "batch_size", "loss", "clip_weight", "clip_model", "clip_pretrained", "clip_mode",
                 "augment_flip", "augment_shift", "finetune_epochs", "finetune_layers", "finetune_lr")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


_HIDDEN: list = [None, None]  # (key, hidden states): the last text set a frozen encoder encoded in this process


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
        """A frozen encoder's hidden states of every text, computed once per process: a search's worker runs
        trial after trial on the same texts (seconds each on a CPU), so the last set is kept for the next."""
        key = (net.cfg.text_encoder, tuple(self.texts), tuple(self.input_ids.shape), str(self.input_ids.device))
        if _HIDDEN[0] != key:
            with torch.no_grad():
                hidden = torch.cat([net.encode_text(self.input_ids[i:i + EVAL_BATCH], self.mask[i:i + EVAL_BATCH])
                                    for i in range(0, len(self.texts), EVAL_BATCH)])
            _HIDDEN[:] = [key, hidden]
        self.hidden = _HIDDEN[1]  # (U, T, H), never written to


    def generate(self, net: TextToImage, text_idx):
        """text_idx (K, B): member k's texts -> (K, B, 3, S, S)."""
        hidden = self.hidden[text_idx] if self.hidden is not None else net.encode_text(self.input_ids[text_idx],
                                                                                          self.mask[text_idx])
        return net.generator(hidden, self.mask[text_idx])


def images(split: Split, device) -> torch.Tensor:
    """A split's images on the device as float32 in [-1, 1]; uint8 [0, 255] storage is scaled there."""
    x = torch.tensor(np.asarray(split.images), device=device)  # a copy: Ray's object store is read-only
    if x.dtype == torch.uint8:
        return x.float().div_(127.5).sub_(1.0)  # (N, 3, S, S), the same x / 127.5 - 1 as the pipeline
    return x.float().clone()


@torch.no_grad()
def predict(net: TextToImage, texts: TextTable, split_name: str) -> torch.Tensor:
    """Every member's image for each row of a split: (K, N, 3, S, S)."""
    net.eval()
    rows, k = texts.rows[split_name], net.generator.members
    return torch.cat([texts.generate(net, rows[i:i + EVAL_BATCH].expand(k, -1))
                      for i in range(0, len(rows), EVAL_BATCH)], dim=1)


def member_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred (K, N, 3, S, S), target (N, 3, S, S) or (K, N, ...) -> (K,) each member's mean L1."""
    return (pred - target).abs().flatten(1).mean(1)


def augment(images: torch.Tensor, flip: bool, shift: float) -> torch.Tensor:
    """Target images (..., 3, S, S) in [-1, 1], each flipped left-right with probability 1/2 and shifted by up
    to `shift` x S pixels each way (whole pixels, white filling what moves in). Draws from the global RNG."""
    if not flip and not shift:
        return images
    shape = images.shape
    x = images.reshape(-1, *shape[-3:])  # (N, 3, S, S)
    n, s = len(x), shape[-1]
    if flip:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device) < 0.5, x.flip(-1), x)
    if shift:
        m = int(round(shift * s))
        padded = F.pad(x, (m, m, m, m), value=1.0)  # white border
        dy, dx = torch.randint(0, 2 * m + 1, (2, n), device=x.device)
        rows = (dy[:, None] + torch.arange(s, device=x.device))[:, None, :, None].expand(n, 3, s, s + 2 * m)
        x = padded.gather(2, rows)  # (N, 3, S, S + 2m): each image's own vertical window
        cols = (dx[:, None] + torch.arange(s, device=x.device))[:, None, None, :].expand(n, 3, s, s)
        x = x.gather(3, cols)
    return x.reshape(shape)


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
    member of a fused trial see the same order as the uninterrupted single run."""
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


def check_members(model_cfg: ModelConfig, train_cfgs: list[TrainConfig]) -> None:
    if not train_cfgs:
        raise ValueError("train_members needs at least one TrainConfig")
    first = asdict(train_cfgs[0])
    for cfg in train_cfgs[1:]:
        differ = [f for f in SHARED_FIELDS if asdict(cfg)[f] != first[f]]
        if differ:
            raise ValueError(f"members trained together must share {differ}: got {[asdict(cfg)[f] for f in differ]} "
                             f"vs {[first[f] for f in differ]}")
    if len(train_cfgs) > 1 and not model_cfg.freeze_text_encoder:
        raise ValueError("members share one text encoder, so fused training needs freeze_text_encoder=True")
    if train_cfgs[0].finetune_epochs:
        if len(train_cfgs) > 1:
            raise ValueError("staged training fine-tunes the text encoder in stage 2, and members share one: "
                             "train a staged trial alone")
        if not model_cfg.freeze_text_encoder:
            raise ValueError("staged training needs freeze_text_encoder=True: stage 1 trains with the encoder "
                             "frozen (freeze_text_encoder=False fine-tunes all of it from the first epoch)")


# ---------------------------------------------------------------------------- the members' weights


class FlatParams:
    """A module's parameters rebound as views of one flat tensor, and their gradients of another:
    backward accumulates every gradient in place into `grad`, and the optimizer then updates one
    (flat, grad) pair in a few kernels instead of looping over ~100 tensors. Each parameter keeps its
    (K, *shape) block contiguous, so batched matmuls and grouped convolutions read the members'
    weights without copies (a member-major layout would make every weight a strided view)."""

    def __init__(self, module: torch.nn.Module):
        named = list(module.named_parameters())
        self.k = named[0][1].shape[0]
        self.flat = torch.cat([p.detach().reshape(-1) for _, p in named])  # (K*P,)
        self.grad = torch.zeros_like(self.flat)
        self.layout, offset = [], 0  # (name, offset, numel of the K-member block, (K, *shape)) per parameter
        for name, p in named:
            n = p.numel()
            view = torch.nn.Parameter(self.flat[offset:offset + n].view(p.shape))
            view.grad = self.grad[offset:offset + n].view(p.shape)
            owner, _, attr = name.rpartition(".")
            module.get_submodule(owner)._parameters[attr] = view
            self.layout.append((name, offset, n, tuple(p.shape)))
            offset += n

    def per_member(self, values) -> torch.Tensor:
        """A flat tensor holding values[k] at every entry of member k (a learning rate, a mask)."""
        v = torch.as_tensor(values, device=self.flat.device)
        return torch.cat([v[:, None].expand(self.k, n // self.k).reshape(-1) for _, _, n, _ in self.layout])

    def row(self, k: int, prefix: str = "") -> dict:
        """Member k's weights as a state dict, each (1, *shape), on the CPU: a one-member checkpoint's."""
        return {prefix + name: self.flat[o:o + n].view(shape)[k:k + 1].detach().cpu().clone()
                for name, o, n, shape in self.layout}

    @torch.no_grad()
    def load_row(self, k: int, weights: dict, prefix: str = "") -> None:
        for name, o, n, shape in self.layout:
            self.flat[o:o + n].view(shape)[k] = weights[prefix + name].reshape(shape[1:]).to(self.flat.device)


class MemberAdamW:
    """torch.optim.AdamW's update (same formula, same defaults) on a flat tensor and its gradient, one
    learning rate and weight decay per member (`lr` and `weight_decay` hold each entry's member's value)."""

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, lr: torch.Tensor, weight_decay: torch.Tensor,
                 betas=(0.9, 0.999), eps=1e-8):
        self.flat, self.grad, self.betas, self.eps, self.steps = flat, grad, betas, eps, 0
        self.lr = lr.to(flat.dtype)
        self.decay = 1 - self.lr * weight_decay.to(flat.dtype)  # AdamW's decoupled decay factor
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)

    @torch.no_grad()
    def freeze(self, mask: torch.Tensor) -> None:
        """Stop the entries in `mask` (a diverged member's): zero weights (finite outputs) and moments,
        no further updates."""
        for t in (self.flat, self.exp_avg, self.exp_avg_sq, self.lr):
            t.masked_fill_(mask, 0.0)
        self.decay.masked_fill_(mask, 1.0)

    @torch.no_grad()
    def step(self) -> None:
        (b1, b2), g = self.betas, self.grad
        self.steps += 1
        self.flat.mul_(self.decay)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * self.lr, denom, value=-1 / (1 - b1 ** self.steps))

    def state_dict(self) -> dict:
        return {"steps": self.steps, "exp_avg": self.exp_avg.cpu().clone(), "exp_avg_sq": self.exp_avg_sq.cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])


def unfreeze_top_layers(net: TextToImage, cfg: TrainConfig) -> torch.optim.AdamW | None:
    """Stage 2 of staged training: the text encoder's top `finetune_layers` become trainable (a BERT-family
    model's `encoder.layer`); returns their optimizer (None for 0 layers). The encoder stays in eval mode
    (no dropout)."""
    if not cfg.finetune_layers:
        return None
    layers = net.text_encoder.encoder.layer
    if cfg.finetune_layers > len(layers):
        raise ValueError(f"finetune_layers={cfg.finetune_layers}, but {net.cfg.text_encoder} has {len(layers)} layers")
    params = [p for layer in layers[-cfg.finetune_layers:] for p in layer.parameters()]
    for p in params:
        p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)


def optimizers(net: TextToImage, weights: FlatParams, train_cfgs: list[TrainConfig], stage2: bool):
    """(the generator's AdamW: each member's lr and weight decay, the encoder's optimizer or None), fresh.
    Stage 2 of staged training: every lr is finetune_lr, and the encoder's top layers train."""
    first = train_cfgs[0]
    lrs = [c.finetune_lr if stage2 else c.lr for c in train_cfgs]
    opt = MemberAdamW(weights.flat, weights.grad, weights.per_member(lrs),
                      weights.per_member([c.weight_decay for c in train_cfgs]))
    if stage2:
        return opt, unfreeze_top_layers(net, first)
    if not net.cfg.freeze_text_encoder:  # K = 1 here (check_members)
        return opt, torch.optim.AdamW(net.text_encoder.parameters(), lr=first.lr, weight_decay=first.weight_decay)
    return opt, None


# ---------------------------------------------------------------------------- the loop


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: PreparedData, report=None, resume=None,
          device=None) -> dict:
    """One trial: `train_members` with K = 1. `report(metrics, state)` gets the member's dict; a
    diverged run raises FloatingPointError."""
    def report_one(metrics: list[dict], state: dict) -> None:
        if "error" in metrics[0]:
            raise FloatingPointError(metrics[0]["error"])
        if report is not None:
            report(metrics[0], state)

    return train_members(model_cfg, [train_cfg], data, report_one, resume, device)[0]


def train_members(model_cfg: ModelConfig, train_cfgs: list[TrainConfig], data: PreparedData, report=None,
                  resume=None, device=None, compile: bool = False) -> list[dict]:
    """Train len(train_cfgs) trials of one architecture together; returns each member's final metrics.

    `compile=True` runs the members' training step through torch.compile (CUDA graphs on a GPU).
    """
    device = torch.device(device or default_device())
    check_data(model_cfg, data)
    check_members(model_cfg, train_cfgs)
    first, k = train_cfgs[0], len(train_cfgs)
    # Decided before any training: a CLIP loss or clip_mode="required" without weights stops here.
    scorer, clip_status = clip.resolve_clip(first, device)

    torch.manual_seed(first.seed)  # the global stream draws the dropout masks; weights use the members' seeds
    tokenizer, encoder, encoder_source = load_text_encoder(model_cfg.text_encoder)
    net = TextToImage(model_cfg, encoder, seeds=[c.seed for c in train_cfgs]).to(device)
    texts = TextTable(tokenizer, data, model_cfg.max_tokens, device)
    if model_cfg.freeze_text_encoder:
        texts.cache_hidden(net)
    train_images, val_images = images(data.train, device), images(data.val, device)
    text_features = scorer.text_features(texts.texts) if first.loss != "l1" else None  # (U, E)

    weights = FlatParams(net.generator)
    # Staged training's stage 2 begins at epoch `first.epochs`; a run resumed inside it starts there.
    in_stage2 = first.finetune_epochs > 0 and resume is not None and resume["epoch"] > first.epochs
    opt, encoder_opt = optimizers(net, weights, train_cfgs, in_stage2)
    if encoder_opt is not None:
        texts.hidden = None  # the encoder trains: its hidden states are computed at every step

    start_epoch, best_val, best_model = 0, [float("inf")] * k, [None] * k
    history, errors = [[] for _ in range(k)], [None] * k
    if resume is not None:
        if resume.get("format") != STATE_FORMAT or len(resume["train_configs"]) != k:
            raise ValueError(f"this checkpoint is not a {k}-member training state of this code "
                             f"(format {resume.get('format')}); start the trial afresh")
        load_trainable(net, resume["model"])  # in place: the weights stay views of the flat tensor
        opt.load_state_dict(resume["optimizer"]["members"])
        if encoder_opt is not None:
            encoder_opt.load_state_dict(resume["optimizer"]["text_encoder"])
        set_rng_state(resume["rng"])
        start_epoch, best_val, best_model = resume["epoch"], list(resume["best_val_l1"]), list(resume["best_model"])
        history, errors = [list(h) for h in resume["history"]], list(resume["errors"])
        if any(e is not None for e in errors):
            opt.freeze(weights.per_member([e is not None for e in errors]))

    def step_loss(hidden_idx, target_idx):
        """Each member's loss and L1 on its own batch: text_idx and rows (K, B) -> (K,), (K,)."""
        pred = texts.generate(net, hidden_idx)  # (K, B, 3, S, S)
        l1 = member_l1(pred, augment(train_images[target_idx], first.augment_flip, first.augment_shift))
        if first.loss == "l1":
            return l1, l1
        b = pred.shape[1]
        c = 1 - clip.clip_cosines(scorer, pred.flatten(0, 1), text_features[hidden_idx.flatten()]).view(k, b).mean(1)
        return (c if first.loss == "clip" else l1 + first.clip_weight * c), l1

    if compile:
        # The batch is gathered outside the compiled step, so CUDA graphs copy only indices in, not the
        # dataset; the weights keep their addresses (AdamW updates them in place), so they are static.
        torch._dynamo.reset()
        for p in net.generator.parameters():
            torch._dynamo.mark_static_address(p)
        step_loss = torch.compile(step_loss, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)

    # Type accuracy needs each record's primary type (the data pipeline records it); data built in
    # memory without it (tests) reports none.
    type_clf = faithfulness.load_or_train(data, device) if "primary_types" in data.info else None

    n, batch = len(data.train), first.batch_size
    live = torch.tensor([e is None for e in errors], device=device)  # members still training
    dead = weights.per_member(~live) if not live.all() else None  # their entries of the flat weights
    metrics = [h[-1] if h else {} for h in history]
    for epoch in range(start_epoch, first.total_epochs):
        if not live.any():
            break
        if first.finetune_epochs and epoch == first.epochs:
            # Stage 2 starts from stage 1's best weights (K = 1), with fresh optimizer moments; its best
            # weights now include the encoder's top layers (stage 1's: the pretrained ones).
            opt, encoder_opt = optimizers(net, weights, train_cfgs, stage2=True)
            if encoder_opt is not None:
                texts.hidden = None  # the encoder trains from now on
            best_model[0] = {**best_model[0], **encoder_weights(net)}
            load_member(net, weights, 0, best_model[0])
        net.train()
        orders = torch.stack([epoch_order(n, c.seed, epoch) for c in train_cfgs]).to(device)  # (K, N): own shuffles
        totals = torch.zeros(k, device=device)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            idx = orders[:, i:i + batch]  # (K, B)
            loss, l1 = step_loss(texts.rows["train"][idx], idx)
            weights.grad.zero_()
            if encoder_opt is not None:
                encoder_opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # members share no weights: each row's gradient is its own loss's
            if dead is not None:  # a diverged member is frozen at zero weights, its NaNs kept out of AdamW
                weights.grad.masked_fill_(dead, 0.0)
            opt.step()
            if encoder_opt is not None:
                encoder_opt.step()
            totals += l1.detach() * idx.shape[1]
        train_l1 = (totals / n).tolist()  # one sync per epoch, not per step
        elapsed = time.perf_counter() - t0
        val_l1 = member_l1(predict(net, texts, "val"), val_images).tolist()

        for m, cfg in enumerate(train_cfgs):
            if errors[m] is None and not math.isfinite(train_l1[m]):
                errors[m] = divergence(train_l1[m], epoch, cfg)
                live[m] = False
                dead = weights.per_member(~live)
                opt.freeze(dead)
            if errors[m] is not None:
                metrics[m] = {"epoch": epoch + 1, "error": errors[m]}
                continue
            if val_l1[m] < best_val[m]:
                best_val[m], best_model[m] = val_l1[m], member_weights(net, weights, m)
            # samples_per_s counts every member's samples: the step's total throughput.
            metrics[m] = {"epoch": epoch + 1, TRAIN_L1: train_l1[m], VAL_L1: val_l1[m], BEST_VAL_L1: best_val[m],
                          SAMPLES_PER_S: k * n / elapsed}
            history[m].append(metrics[m])
        state = {
            "format": STATE_FORMAT, "model_config": asdict(model_cfg),
            "train_configs": [asdict(c) for c in train_cfgs],
            "text_encoder": {"name": model_cfg.text_encoder, "source": encoder_source},
            "epoch": epoch + 1, "model": {name: v.detach().cpu().clone() for name, v in net.trainable_state().items()},
            "best_model": list(best_model), "optimizer": {
                "members": opt.state_dict(), "text_encoder": encoder_opt and encoder_opt.state_dict()},
            "rng": rng_state(), "best_val_l1": list(best_val), "history": [list(h) for h in history],
            "errors": list(errors),
        }
        if epoch + 1 == first.total_epochs or not live.any():
            final = final_metrics(net, weights, best_model, errors, texts, data, scorer, clip_status, type_clf, device)
            metrics = [{**mt, **f} for mt, f in zip(metrics, final)]
            state["final"] = [dict(mt) for mt in metrics]
        if report is not None:
            report([dict(mt) for mt in metrics], state)
    return [dict(mt) for mt in metrics]


def load_trainable(net: TextToImage, weights: dict) -> None:
    """Load a checkpoint's trainable weights (copied into the existing tensors); only a frozen encoder's
    (reloaded from its source) may be absent."""
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (net.cfg.freeze_text_encoder and k.startswith("text_encoder."))]
    if missing or unexpected:
        raise KeyError(f"checkpoint weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def member_weights(net: TextToImage, weights: FlatParams, m: int) -> dict:
    """Member m's trainable weights as a one-member state dict on the CPU (what a checkpoint keeps): the
    generator's, and a fine-tuned encoder's (all of it, or the top layers staged training unfroze)."""
    return {**weights.row(m, prefix="generator."), **encoder_weights(net)}


def encoder_weights(net: TextToImage) -> dict:
    """The encoder's part of what a checkpoint holds (`trainable_state`: all of a fine-tuned encoder, the
    top layers staged training unfroze, or nothing), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in net.trainable_state().items() if k.startswith("text_encoder.")}


def load_member(net: TextToImage, weights: FlatParams, m: int, state: dict) -> None:
    """The reverse of `member_weights`: member m's weights (and a fine-tuned encoder's) from a state dict."""
    weights.load_row(m, state, prefix="generator.")
    encoder = {k[len("text_encoder."):]: v for k, v in state.items() if k.startswith("text_encoder.")}
    if encoder:  # a frozen encoder's unfrozen top layers are a part of it
        net.text_encoder.load_state_dict(encoder, strict=not net.cfg.freeze_text_encoder)


def final_metrics(net, weights, best_model, errors, texts, data, scorer, clip_status, type_clf, device) -> list[dict]:
    """Each member's test metrics with its best-validation weights, and their text-faithfulness on
    validation too. A member that diverged before any validation gets none."""
    k = len(best_model)
    for m in range(k):
        if best_model[m] is not None:
            load_member(net, weights, m, best_model[m])
    out = [{} for _ in range(k)]
    if type_clf is not None:
        type_labels, _ = faithfulness.type_labels(data.test, data.info["primary_types"], type_clf.classes)
    for name in ("val", "test"):
        split = data.split(name)
        generated, real = predict(net, texts, name), images(split, device)  # (K, N, 3, S, S), (N, 3, S, S)
        l1 = member_l1(generated, real).tolist()
        for m in range(k):
            if best_model[m] is None:
                continue
            retrieval = clip.retrieval_accuracy(generated[m], real)
            score = scorer.score(generated[m], split.texts) if scorer is not None else None
            if name == "val":
                out[m].update({VAL_CLIP: score, VAL_TOP1: retrieval["top1"]})
            else:
                out[m].update({TEST_L1: l1[m], TEST_CLIP: score, "test/clip_status": clip_status,
                               TEST_TOP1: retrieval["top1"], TEST_TOP5: retrieval["top5"],
                               "test/retrieval_chance": retrieval["chance_top1"],
                               TEST_TYPE_ACC: faithfulness.type_accuracy(type_clf, generated[m], type_labels)
                               if type_clf is not None else None})
    return [o if errors[m] is None else {} for m, o in enumerate(out)]
