"""The one training loop: K trials of one architecture trained together, a single trial being K = 1.

    from model.config import ModelConfig, TrainConfig
    from model.train import train, train_members
    metrics = train(ModelConfig(), TrainConfig(epochs=2), data)            # one trial; data: PreparedData
    metrics["test/l1"], metrics["test/retrieval_top1"]
    cfgs = [TrainConfig(lr=lr, weight_decay=wd) for lr in (1e-4, 1e-5) for wd in (1e-5, 1e-6)]
    results = train_members(ModelConfig(n_heads=4), cfgs, data)            # a fused trial: 4 members
    results[2]["test/l1"]                                                   # member 2's own metrics
    train(ModelConfig(family="diffusion", image_size=32), TrainConfig(epochs=2), data)   # the other family

The loop reads top to bottom: set up (evaluator, network, text table, family, optimizer, EMA, resume),
then per epoch: train every member one pass over its own shuffle, select (each member's selection metric,
best weights, divergence), checkpoint and report; after the last epoch, the final metrics from each member's
best weights. What differs between model families (network, loss, images, selection metric) is behind
model/families.py; evaluation is model/evaluate.py's Evaluator, built once per trial.

`report(metrics, state)` is called after every epoch: `metrics` is one dict per member (Ray Tune's
adapter saves `state` as its checkpoint; a notebook may print); passing a saved state back as
`resume=` continues exactly where it stopped. On the last epoch the metrics also hold the final
test metrics, computed with each member's best weights; the same list is returned.

Members share the frozen text encoder and the data, and differ in learning rate, weight decay and seed.
Their weights sit side by side (every parameter has a member axis, model/network.py, model/diffusion.py)
in one flat tensor, so one backward and one AdamW update (a handful of kernels, each member with its own
learning rate, weight decay and moments) serve all K. Every member still takes its own batch steps over its
own seeded shuffle and draws its own noise from its own stream (seeded by seed and epoch); with dropout off a
member's weights are the ones its single-trial run ends with (tests/test_members.py). A member whose loss
diverges stops alone with the reason in its metrics ("error"); the single-trial `train` raises
FloatingPointError instead. Families that train with EMA weights (diffusion: diffusers' EMAModel over the
flat tensor) are selected, checkpointed and evaluated with them.

Staged training (`TrainConfig.finetune_epochs` > 0, K = 1, the regressor): after `epochs` with the encoder
frozen, the loop reloads the best-validation weights and trains `finetune_epochs` more with the encoder's top
`finetune_layers` unfrozen, at `finetune_lr`; best weights, history and the final metrics span both stages.

Speed: the whole preprocessed dataset is moved to the device once (the Evaluator holds it); with a frozen
text encoder (the default) its hidden states are computed once per distinct text and reused by every step,
and a `ProcessCache` the caller holds keeps them (and CLIP's weights) for its next trial.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch

from data_pipeline.dataset import PreparedData
from model.clip import ClipLoader
from model.config import BEST, SAMPLES_PER_S, ModelConfig, TrainConfig
from model.evaluate import Evaluator
from model.families import EVAL_BATCH, make_family
from model.network import TextToImage, load_text_encoder

STATE_FORMAT = 3  # every weight with a leading member axis; best_selection per member; EMA weights when used
# Members may differ in these; every other TrainConfig field is shared (one loop runs them in lockstep).
MEMBER_FIELDS = ("lr", "weight_decay", "seed")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ---------------------------------------------------------------------------- texts


class TextStates:
    """A frozen encoder's hidden states of one text set, kept for the next trial on the same texts."""

    def __init__(self):
        self.key, self.hidden = None, None

    def get(self, key, encode):
        if self.key != key:
            self.key, self.hidden = key, encode()
        return self.hidden


@dataclass
class ProcessCache:
    """What a process keeps from one trial for the next: a search's worker runs trial after trial on the same
    texts (their encoder states take seconds on a CPU) and with the same CLIP weights (seconds to load). Its
    holder decides its lifetime: search/trainable.py keeps one per Ray worker; without one a trial starts afresh."""
    text_states: TextStates = field(default_factory=TextStates)
    clip: ClipLoader = field(default_factory=ClipLoader)


class TextTable:
    """Every distinct text tokenized once; each split row points at its text by index (`rows`, `index`)."""

    def __init__(self, tokenizer, splits: dict[str, list[str]], max_tokens: int, device, extra=()):
        self.texts = sorted({*extra, *(t for texts in splits.values() for t in texts)})
        self.index = {t: i for i, t in enumerate(self.texts)}
        tok = tokenizer(self.texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        self.input_ids = tok["input_ids"].to(device)  # (U, T)
        self.mask = tok["attention_mask"].to(device)  # (U, T)
        self.rows = {name: torch.tensor([self.index[t] for t in texts], device=device, dtype=torch.long)
                     for name, texts in splits.items()}
        self.hidden = None  # (U, T, H) once cached

    @classmethod
    def of(cls, tokenizer, data: PreparedData, cfg: ModelConfig, device) -> "TextTable":
        """A dataset's texts; the diffusion family's also holds the empty text (classifier-free guidance)."""
        extra = ("",) if cfg.family == "diffusion" else ()
        return cls(tokenizer, {name: data.split(name).texts for name in ("train", "val", "test")}, cfg.max_tokens,
                   device, extra)

    def cache_hidden(self, net: TextToImage, states: TextStates | None = None) -> None:
        """A frozen encoder's hidden states of every text, computed once (or taken from `states`)."""
        key = (net.cfg.text_encoder, tuple(self.texts), tuple(self.input_ids.shape), str(self.input_ids.device))

        @torch.no_grad()
        def encode():
            return torch.cat([net.encode_text(self.input_ids[i:i + EVAL_BATCH], self.mask[i:i + EVAL_BATCH])
                              for i in range(0, len(self.texts), EVAL_BATCH)])

        self.hidden = (states or TextStates()).get(key, encode)  # (U, T, H), never written to

    def hidden_states(self, net: TextToImage, text_idx):
        """text_idx (K, B) -> (hidden (K, B, T, H), mask (K, B, T)): cached, or from a trained encoder."""
        if self.hidden is not None:
            return self.hidden[text_idx], self.mask[text_idx]
        return net.encode_text(self.input_ids[text_idx], self.mask[text_idx]), self.mask[text_idx]


# ---------------------------------------------------------------------------- randomness and checks


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


def member_streams(train_cfgs: list[TrainConfig], epoch: int, device) -> list[torch.Generator]:
    """Each member's random stream for an epoch (a diffusion step's noise, timesteps and dropout coin),
    seeded by (seed, epoch) alone: a resumed run and a fused member draw what the single run draws."""
    return [torch.Generator(device=device).manual_seed(c.seed * 100_003 + epoch + 7_777_777) for c in train_cfgs]


def divergence(value: float, epoch: int, train_cfg: TrainConfig) -> str:
    """Why a trial whose training loss is no longer finite stops."""
    return (f"training loss became {value} in epoch {epoch + 1} (lr={train_cfg.lr}, "
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
    shared = [f.name for f in fields(TrainConfig) if f.name not in MEMBER_FIELDS]
    first = asdict(train_cfgs[0])
    for cfg in train_cfgs[1:]:
        differ = [f for f in shared if asdict(cfg)[f] != first[f]]
        if differ:
            raise ValueError(f"members trained together must share {differ}: got {[asdict(cfg)[f] for f in differ]} "
                             f"vs {[first[f] for f in differ]}")
    if len(train_cfgs) > 1 and not model_cfg.freeze_text_encoder:
        raise ValueError("members share one text encoder, so fused training needs freeze_text_encoder=True")
    if model_cfg.family != "regressor" and train_cfgs[0].loss != "l1":
        raise ValueError(f"loss={train_cfgs[0].loss!r} applies to the regressor family; the {model_cfg.family} family "
                         "trains on its own loss")
    if train_cfgs[0].finetune_epochs:
        if model_cfg.family != "regressor":
            raise ValueError(f"staged training (finetune_epochs) applies to the regressor family, not {model_cfg.family}")
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
        self.param = torch.nn.Parameter(self.flat)  # the same storage, as the one parameter EMAModel tracks
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
    def step(self, scale: float = 1.0) -> None:
        """One update; `scale` multiplies every learning rate for this step (a warm-up), as LambdaLR would."""
        (b1, b2), g = self.betas, self.grad
        self.steps += 1
        self.flat.mul_(self.decay if scale == 1 else 1 - scale * (1 - self.decay))
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * self.lr, denom, value=-scale / (1 - b1 ** self.steps))

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


@dataclass
class Members:
    """Each member's record: its best selection metric and best weights, its per-epoch history, why it stopped."""
    best: list[float]
    best_model: list[dict | None]
    history: list[list[dict]]
    errors: list[str | None]

    @classmethod
    def start(cls, k: int) -> "Members":
        return cls([float("inf")] * k, [None] * k, [[] for _ in range(k)], [None] * k)

    @classmethod
    def from_state(cls, state: dict) -> "Members":
        return cls(list(state["best_selection"]), list(state["best_model"]), [list(h) for h in state["history"]],
                   list(state["errors"]))

    def state(self) -> dict:
        return {"best_selection": list(self.best), "best_model": list(self.best_model),
                "history": [list(h) for h in self.history], "errors": list(self.errors)}

    @property
    def alive(self) -> list[bool]:
        return [e is None for e in self.errors]

    def record(self, epoch: int, train_metric: list[float], selection: list[float], samples_per_s: float,
               family, train_cfgs: list[TrainConfig], weights_of) -> list[dict]:
        """Each member's metrics for this epoch; a member whose training metric is not finite stops here."""
        out = []
        for m, cfg in enumerate(train_cfgs):
            if self.errors[m] is None and not math.isfinite(train_metric[m]):
                self.errors[m] = divergence(train_metric[m], epoch, cfg)
            if self.errors[m] is not None:
                out.append({"epoch": epoch + 1, "error": self.errors[m]})
                continue
            if selection[m] < self.best[m]:
                self.best[m], self.best_model[m] = selection[m], weights_of(m)
            # samples_per_s counts every member's samples: the step's total throughput.
            metrics = {"epoch": epoch + 1, family.train_metric: train_metric[m], family.selection: selection[m],
                       BEST[family.name]: self.best[m], SAMPLES_PER_S: samples_per_s}
            self.history[m].append(metrics)
            out.append(metrics)
        return out


@contextmanager
def ema_weights(ema, weights: FlatParams):
    """Inside the block the flat weights are the EMA weights (evaluation, best weights); the trained ones after."""
    if ema is None:
        yield
        return
    ema.store([weights.param])
    ema.copy_to([weights.param])
    try:
        yield
    finally:
        ema.restore([weights.param])


# ---------------------------------------------------------------------------- the loop


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: PreparedData, report=None, resume=None,
          device=None, cache: ProcessCache | None = None) -> dict:
    """One trial: `train_members` with K = 1. `report(metrics, state)` gets the member's dict; a
    diverged run raises FloatingPointError."""
    def report_one(metrics: list[dict], state: dict) -> None:
        if "error" in metrics[0]:
            raise FloatingPointError(metrics[0]["error"])
        if report is not None:
            report(metrics[0], state)

    return train_members(model_cfg, [train_cfg], data, report_one, resume, device, cache=cache)[0]


def train_members(model_cfg: ModelConfig, train_cfgs: list[TrainConfig], data: PreparedData, report=None,
                  resume=None, device=None, compile: bool = False, cache: ProcessCache | None = None) -> list[dict]:
    """Train len(train_cfgs) trials of one architecture together; returns each member's final metrics.

    `compile=True` runs the members' training step through torch.compile (CUDA graphs on a GPU; the regressor).
    `cache` keeps what this trial loads (a frozen encoder's states, CLIP) for the caller's next trial.
    """
    device = torch.device(device or default_device())
    check_data(model_cfg, data)
    check_members(model_cfg, train_cfgs)
    first, k = train_cfgs[0], len(train_cfgs)
    cache = cache or ProcessCache()
    evaluator = Evaluator(data, first, device, cache.clip)  # the data on the device; CLIP decided before training

    torch.manual_seed(first.seed)  # the global stream draws the dropout masks; weights use the members' seeds
    tokenizer, encoder, encoder_source = load_text_encoder(model_cfg.text_encoder)
    net = TextToImage(model_cfg, encoder, seeds=[c.seed for c in train_cfgs]).to(device)
    texts = TextTable.of(tokenizer, data, model_cfg, device)
    if model_cfg.freeze_text_encoder:
        texts.cache_hidden(net, cache.text_states)
    family = make_family(net, texts, first, evaluator)
    weights = FlatParams(net.generator)
    ema = None
    if family.uses_ema and first.ema_decay:
        from diffusers.training_utils import EMAModel

        ema = EMAModel([weights.param], decay=first.ema_decay)

    # Staged training's stage 2 begins at epoch `first.epochs`; a run resumed inside it starts there.
    in_stage2 = first.finetune_epochs > 0 and resume is not None and resume["epoch"] > first.epochs
    opt, encoder_opt = optimizers(net, weights, train_cfgs, in_stage2)
    if encoder_opt is not None:
        texts.hidden = None  # the encoder trains: its hidden states are computed at every step

    start_epoch, members = 0, Members.start(k)
    if resume is not None:
        if resume.get("format") != STATE_FORMAT or len(resume["train_configs"]) != k:
            raise ValueError(f"this checkpoint is not a {k}-member training state of this code "
                             f"(format {resume.get('format')}); start the trial afresh")
        load_trainable(net, resume["model"])  # in place: the weights stay views of the flat tensor
        opt.load_state_dict(resume["optimizer"]["members"])
        if encoder_opt is not None:
            encoder_opt.load_state_dict(resume["optimizer"]["text_encoder"])
        if ema is not None:
            ema.load_state_dict(resume["ema"])
            ema.to(device)
        set_rng_state(resume["rng"])
        start_epoch, members = resume["epoch"], Members.from_state(resume)

    step = family.loss
    if compile:
        if model_cfg.family != "regressor":
            raise ValueError("compile=True applies to the regressor family")
        # The batch is gathered outside the compiled step, so CUDA graphs copy only indices in, not the
        # dataset; the weights keep their addresses (AdamW updates them in place), so they are static.
        torch._dynamo.reset()
        for p in net.generator.parameters():
            torch._dynamo.mark_static_address(p)
        compiled = torch.compile(lambda rows: family.loss(rows, None),
                                 mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
        step = lambda rows, streams: compiled(rows)  # noqa: E731

    evaluator.load_type_classifier()  # here, as it always was: see its docstring
    n, batch = len(data.train), first.batch_size
    dead = weights.per_member([not a for a in members.alive]) if not all(members.alive) else None
    if dead is not None:
        opt.freeze(dead)
    metrics = [h[-1] if h else {} for h in members.history]
    for epoch in range(start_epoch, first.total_epochs):
        if not any(members.alive):
            break
        if first.finetune_epochs and epoch == first.epochs:
            # Stage 2 starts from stage 1's best weights (K = 1), with fresh optimizer moments; its best
            # weights now include the encoder's top layers (stage 1's: the pretrained ones).
            opt, encoder_opt = optimizers(net, weights, train_cfgs, stage2=True)
            if encoder_opt is not None:
                texts.hidden = None  # the encoder trains from now on
            members.best_model[0] = {**members.best_model[0], **encoder_weights(net)}
            load_member(net, weights, 0, members.best_model[0])

        # Train: every member one pass over its own shuffle, one batched step for all of them.
        net.train()
        orders = torch.stack([epoch_order(n, c.seed, epoch) for c in train_cfgs]).to(device)  # (K, N)
        streams = member_streams(train_cfgs, epoch, device)
        totals = torch.zeros(k, device=device)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            rows = orders[:, i:i + batch]  # (K, B)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=first.precision == "bf16"):
                loss, metric = step(rows, streams)
            weights.grad.zero_()
            if encoder_opt is not None:
                encoder_opt.zero_grad(set_to_none=True)
            loss.sum().backward()  # members share no weights: each row's gradient is its own loss's
            if dead is not None:  # a diverged member is frozen at zero weights, its NaNs kept out of AdamW
                weights.grad.masked_fill_(dead, 0.0)
            opt.step(min(1.0, (opt.steps + 1) / first.warmup_steps) if first.warmup_steps else 1.0)
            if encoder_opt is not None:
                encoder_opt.step()
            if ema is not None:
                ema.step([weights.param])
            totals += metric.detach() * rows.shape[1]
        train_metric = (totals / n).tolist()  # one sync per epoch, not per step
        elapsed = time.perf_counter() - t0

        # Select: each member's selection metric and best weights (EMA weights where the family uses them).
        with ema_weights(ema, weights):
            metrics = members.record(epoch, train_metric, family.select(), k * n / elapsed, family, train_cfgs,
                                     lambda m: member_weights(net, weights, m))
        if not all(members.alive):
            dead = weights.per_member([not a for a in members.alive])
            opt.freeze(dead)

        # Checkpoint and report; after the last epoch, the final metrics from each member's best weights.
        state = {
            "format": STATE_FORMAT, "model_config": asdict(model_cfg),
            "train_configs": [asdict(c) for c in train_cfgs],
            "text_encoder": {"name": model_cfg.text_encoder, "source": encoder_source},
            "epoch": epoch + 1, "model": {name: v.detach().cpu().clone() for name, v in net.trainable_state().items()},
            "optimizer": {"members": opt.state_dict(), "text_encoder": encoder_opt and encoder_opt.state_dict()},
            "ema": ema_state(ema), "rng": rng_state(), **members.state(),
        }
        if epoch + 1 == first.total_epochs or not any(members.alive):
            for m, best in enumerate(members.best_model):
                if best is not None:
                    load_member(net, weights, m, best)
            final = evaluator.final(family.generate, [a and b is not None for a, b in
                                                      zip(members.alive, members.best_model)])
            metrics = [{**mt, **f} for mt, f in zip(metrics, final)]
            state["final"] = [dict(mt) for mt in metrics]
        if report is not None:
            report([dict(mt) for mt in metrics], state)
    return [dict(mt) for mt in metrics]


def ema_state(ema) -> dict | None:
    """diffusers' EMAModel state with its weights on the CPU (a checkpoint's), or None without EMA."""
    if ema is None:
        return None
    state = dict(ema.state_dict())
    state["shadow_params"] = [p.detach().cpu().clone() for p in state["shadow_params"]]
    return state


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
    return {**weights.row(m, prefix="generator."), **encoder_weights(net),
            **{k: v.detach().cpu().clone() for k, v in net.shared_state().items()}}


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


