"""The one training loop: K trials of one architecture trained together, a single trial being K = 1.

    from model.config import ModelConfig, TrainConfig
    from model.train import train, train_members
    metrics = train(ModelConfig(), TrainConfig(epochs=2), data)            # one trial; data: PreparedData
    metrics["test/l1"], metrics["test/attr_all"], metrics["test/attr_all_lo"]   # with its 95% interval
    cfgs = [TrainConfig(lr=lr, weight_decay=wd) for lr in (1e-4, 1e-5) for wd in (1e-5, 1e-6)]
    results = train_members(ModelConfig(n_heads=4), cfgs, data)            # a fused trial: 4 members
    results[2]["test/l1"]                                                   # member 2's own metrics
    train(ModelConfig(family="diffusion", image_size=32), TrainConfig(epochs=2), data,
          family_cfg=DiffusionConfig(unet_width=64))                        # another family, its own section

The loop reads top to bottom: `setup` builds everything before the first epoch (the network, the texts, the
family, the optimizer, EMA, a resumed state, the checks); then per epoch: train every member one pass over its
own shuffle (`train_epoch`), select (each member's selection metric, best weights, divergence), checkpoint and
report; after the last epoch, the final metrics from each member's best weights. What differs between model
families (network, loss, images, selection metric) is the family's (model/families/); evaluation is
model/eval/evaluator.py's Evaluator, built once per trial.

`report(metrics, state)` is called after every epoch: `metrics` is one dict per member, `state` a
`model.checkpoint.TrainingState` (Ray Tune's adapter saves it as its checkpoint; a notebook may print); passing a
saved state back as `resume=` continues exactly where it stopped. On the last epoch the metrics also hold the
final test metrics, computed with each member's best weights; the same list is returned.

Members share the frozen text encoder and the data, and differ in learning rate, weight decay and seed.
Their weights sit side by side (every parameter has a member axis, model/members.py) in one flat tensor, so one
backward and one AdamW update (a handful of kernels, each member with its own learning rate, weight decay and
moments) serve all K. Every member still takes its own batch steps over its own seeded shuffle and draws its own
noise from its own stream (seeded by seed and epoch); with dropout off a member's weights are the ones its
single-trial run ends with (tests/test_members.py). A member whose loss diverges stops alone with the reason in
its metrics ("error"); the single-trial `train` raises FloatingPointError instead. Families that train with EMA
weights (`ema_decay`; diffusers' EMAModel over the flat tensor) are selected, checkpointed and evaluated with them.

Staged training (`TrainConfig.finetune_epochs` > 0, K = 1, a family with `stages`): after `epochs` with the
encoder frozen, the loop reloads the best-validation weights and trains `finetune_epochs` more with the encoder's
top `finetune_layers` unfrozen, at `finetune_lr`; best weights, history and the final metrics span both stages.

Speed: the whole preprocessed dataset is moved to the device once; with a frozen text encoder (the default) its
hidden states are computed once per distinct text and reused by every step, and the `Runtime` the caller holds
keeps them (and CLIP's weights) for its next trial.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from data_pipeline.dataset import PreparedData
from model import families
from model.checkpoint import FORMAT, TrainingState
from model.config import EMA_DECAY, MEMBER_FIELDS, SAMPLES_PER_S, ModelConfig, TrainConfig
from model.eval.clip import ClipLoader, resolve_clip
from model.eval.evaluator import EvalNets, Evaluator, split_images
from model.families import Targets
from model.members import FlatParams, MemberAdamW
from model.network import TextToImage, encoder_weights, load_member, load_trainable, member_weights
from model.text import TextTable, frozen_texts, load_text_encoder



def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Runtime:
    """Where and how a trial runs, and what its process keeps from one trial for the next: a search's worker runs
    trial after trial on the same texts (a frozen encoder's states: `model.text.frozen_texts`) and with the same
    CLIP weights (seconds to load). Its holder decides its lifetime: search/trainable.py keeps one per Ray worker;
    without one a trial starts afresh. `compile=True` runs the members' training step through torch.compile (CUDA graphs on a
    GPU; the regressor). `math_attention`: under bf16 autocast on a CPU, the step's scaled-dot-product attention (the
    UNet's transformer blocks, the text stack's layers) runs in PyTorch's math backend instead of its CPU flash
    kernel, whose bf16 backward is slow at these head sizes: the diffusion family's training steps 1.13x faster on 2
    cores with cross-attention at one level, 1.14x at two (`python bench/bench_diffusion.py --throughput`,
    results/BENCHMARKS.md); both compute the same softmax attention.
    Nothing changes on a GPU or in fp32."""
    device: str | None = None
    compile: bool = False
    math_attention: bool = True
    texts: dict = field(default_factory=dict)
    clip: ClipLoader = field(default_factory=ClipLoader)


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


def check_members(family, model_cfg: ModelConfig, train_cfgs: list[TrainConfig]) -> None:
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
    if train_cfgs[0].finetune_epochs:
        if not family.stages:
            raise ValueError(f"staged training (finetune_epochs) does not apply to the {family.name} family")
        if len(train_cfgs) > 1:
            raise ValueError("staged training fine-tunes the text encoder in stage 2, and members share one: "
                             "train a staged trial alone")
        if not model_cfg.freeze_text_encoder:
            raise ValueError("staged training needs freeze_text_encoder=True: stage 1 trains with the encoder "
                             "frozen (freeze_text_encoder=False fine-tunes all of it from the first epoch)")


# ---------------------------------------------------------------------------- optimizers and EMA


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


def lr_scale(cfg: TrainConfig, opt_step: int, run_step: int, run_steps: int) -> float:
    """The learning-rate multiplier of an update: the warm-up's (linear over the optimizer's first warmup_steps
    steps, `opt_step` counting from 1), times the schedule's over the run (`run_step` of `run_steps`, from 1):
    constant, or half a cosine from 1 after the warm-up to (almost) 0 at the last step, as transformers'
    get_cosine_schedule_with_warmup."""
    scale = min(1.0, opt_step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine":
        progress = max(0, run_step - 1 - cfg.warmup_steps) / max(1, run_steps - cfg.warmup_steps)
        scale *= 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return scale


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


def ema_state(ema) -> dict | None:
    """diffusers' EMAModel state with its weights on the CPU (a checkpoint's), or None without EMA."""
    if ema is None:
        return None
    state = dict(ema.state_dict())
    state["shadow_params"] = [p.detach().cpu().clone() for p in state["shadow_params"]]
    return state


# ---------------------------------------------------------------------------- the members' records


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
    def from_state(cls, state: TrainingState) -> "Members":
        return cls(list(state.best_selection), list(state.best_model), [list(h) for h in state.history],
                   list(state.errors))

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
                       family.best: self.best[m], SAMPLES_PER_S: samples_per_s}
            self.history[m].append(metrics)
            out.append(metrics)
        return out


# ---------------------------------------------------------------------------- setup


@dataclass
class Run:
    """One (fused) trial being trained: what `setup` builds and the loop steps through."""
    model_cfg: ModelConfig
    section: object  # the family's config section
    train_cfgs: list[TrainConfig]
    device: torch.device
    net: TextToImage
    texts: TextTable
    family: object  # the family's per-trial instance: loss, select, generate
    evaluator: Evaluator
    weights: FlatParams
    encoder_source: str
    members: Members
    opt: MemberAdamW = None
    encoder_opt: torch.optim.Optimizer | None = None
    ema: object = None
    step: object = None  # (rows, streams) -> (loss (K,), metric (K,)): the family's loss, compiled or not
    math_attention: bool = True  # Runtime.math_attention
    start_epoch: int = 0

    @property
    def dead(self) -> torch.Tensor | None:
        """Every flat-weight entry of a member that stopped (None while all train)."""
        return None if all(self.members.alive) else self.weights.per_member([not a for a in self.members.alive])

    def state(self, epoch: int) -> TrainingState:
        """The training state after `epoch` epochs (the weights cloned to the CPU)."""
        members = self.members
        return TrainingState(
            model_config=asdict(self.model_cfg), family_config=asdict(self.section),
            train_configs=[asdict(c) for c in self.train_cfgs],
            text_encoder={"name": self.model_cfg.text_encoder, "source": self.encoder_source}, epoch=epoch,
            rng=rng_state(), best_selection=list(members.best), best_model=list(members.best_model),
            history=[list(h) for h in members.history], errors=list(members.errors),
            model={name: v.detach().cpu().clone() for name, v in self.net.trainable_state().items()},
            optimizer={"members": self.opt.state_dict(),
                       "text_encoder": self.encoder_opt and self.encoder_opt.state_dict()},
            ema=ema_state(self.ema))


def setup(model_cfg: ModelConfig, train_cfgs: list[TrainConfig], data: PreparedData, resume: TrainingState | None,
          family_cfg, runtime: Runtime) -> Run:
    """Everything before the first epoch. The global RNG, which draws the dropout masks, is seeded after CLIP, the
    data and the evaluator networks (which leave it as they found it)."""
    device = torch.device(runtime.device or default_device())
    check_data(model_cfg, data)
    family = families.get(model_cfg.family)
    section = families.section(model_cfg, family_cfg)
    check_members(family, model_cfg, train_cfgs)
    first = train_cfgs[0]
    # Decided before any training: a CLIP loss or clip_mode="required" without weights stops here.
    scorer, clip_status = resolve_clip(first, device, runtime.clip, family.clip_loss(section))
    images = split_images(data, device)  # the whole dataset on the device, once
    evaluator = Evaluator(data, images, scorer, clip_status, EvalNets.load_or_fit(data, first.eval_fit))

    torch.manual_seed(first.seed)  # the global stream draws the dropout masks; weights use the members' seeds
    encoder, texts = text_side(model_cfg, first, data, family, runtime)
    net = TextToImage(model_cfg, section, encoder, [c.seed for c in train_cfgs], texts.dim).to(device)
    texts = texts.to(device)
    run = Run(model_cfg, section, train_cfgs, device, net, texts,
              family(net, texts, first, section, Targets(data, images, scorer, device)), evaluator,
              FlatParams(net.generator), texts.source, Members.start(len(train_cfgs)))
    if run.family.ema_decay:
        from diffusers.training_utils import EMAModel

        run.ema = EMAModel([run.weights.param], decay=run.family.ema_decay)
    # Staged training's stage 2 begins at epoch `first.epochs`; a run resumed inside it starts there.
    in_stage2 = first.finetune_epochs > 0 and resume is not None and resume.epoch > first.epochs
    run.opt, run.encoder_opt = optimizers(net, run.weights, train_cfgs, in_stage2)
    if run.encoder_opt is not None:
        texts.hidden = None  # the encoder trains: its hidden states are computed at every step
    if resume is not None:
        restore(run, resume)
    run.step = compiled_step(run) if runtime.compile else run.family.loss
    run.math_attention = runtime.math_attention
    if run.dead is not None:
        run.opt.freeze(run.dead)
    return run


def text_side(model_cfg: ModelConfig, first: TrainConfig, data: PreparedData, family, runtime: Runtime):
    """(the text encoder, or None where no stage trains it; the dataset's TextTable on the CPU). A frozen encoder's
    hidden states are all that training reads of it, and they are cached (`frozen_texts`), so it is not even loaded
    unless staged training unfreezes its top layers later."""
    if not model_cfg.freeze_text_encoder:
        tokenizer, encoder, source = load_text_encoder(model_cfg.text_encoder)
        return encoder, TextTable.of(tokenizer, data, model_cfg, "cpu", family.extra_texts, source)
    texts = frozen_texts(data, model_cfg, family.extra_texts, runtime.texts)
    return (load_text_encoder(model_cfg.text_encoder)[1] if first.finetune_epochs > 0 else None), texts


def restore(run: Run, resume: TrainingState) -> None:
    """Continue from a saved state: weights (in place: they stay views of the flat tensor), optimizers, EMA, RNG,
    the members' records and the epoch."""
    if resume.format != FORMAT or resume.members != len(run.train_cfgs):
        raise ValueError(f"this checkpoint is not a {len(run.train_cfgs)}-member training state of this code "
                         f"(format {resume.format}); start the trial afresh")
    load_trainable(run.net, resume.model)
    run.opt.load_state_dict(resume.optimizer["members"])
    if run.encoder_opt is not None:
        run.encoder_opt.load_state_dict(resume.optimizer["text_encoder"])
    if run.ema is not None:
        run.ema.load_state_dict(resume.ema)
        run.ema.to(run.device)
    set_rng_state(resume.rng)
    run.start_epoch, run.members = resume.epoch, Members.from_state(resume)


def compiled_step(run: Run):
    """The family's loss through torch.compile. The batch is gathered outside the compiled step, so CUDA graphs
    copy only indices in, not the dataset; the weights keep their addresses (AdamW updates them in place), so they
    are static."""
    if run.family.draws != 1:
        raise ValueError(f"compile=True applies to one-forward families, not {run.model_cfg.family}")
    torch._dynamo.reset()
    for p in run.net.generator.parameters():
        torch._dynamo.mark_static_address(p)
    compiled = torch.compile(lambda rows: run.family.loss(rows, None),
                             mode="reduce-overhead" if run.device.type == "cuda" else None, dynamic=False)
    return lambda rows, streams: compiled(rows)


def start_stage2(run: Run) -> None:
    """Stage 2 of staged training starts from stage 1's best weights (K = 1), with fresh optimizer moments; its
    best weights now include the encoder's top layers (stage 1's: the pretrained ones)."""
    run.opt, run.encoder_opt = optimizers(run.net, run.weights, run.train_cfgs, stage2=True)
    if run.encoder_opt is not None:
        run.texts.hidden = None  # the encoder trains from now on
    run.members.best_model[0] = {**run.members.best_model[0], **encoder_weights(run.net)}
    load_member(run.net, run.weights, 0, run.members.best_model[0])


# ---------------------------------------------------------------------------- the loop


def step_context(device: torch.device, precision: str, math_attention: bool) -> ExitStack:
    """The training step's autocast (bf16 or none), and on a CPU under bf16 the math attention backend (Runtime)."""
    stack = ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"))
    if math_attention and precision == "bf16" and device.type == "cpu":
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def train_epoch(run: Run, epoch: int) -> tuple[list[float], float]:
    """Every member one pass over its own shuffle, one batched step for all of them: (each member's mean training
    metric, seconds)."""
    first, n, device = run.train_cfgs[0], run.family.train_size, run.device
    steps = math.ceil(n / first.batch_size)  # per epoch
    run.net.train()
    orders = torch.stack([epoch_order(n, c.seed, epoch) for c in run.train_cfgs]).to(device)  # (K, N)
    streams = member_streams(run.train_cfgs, epoch, device)
    totals, dead = torch.zeros(len(run.train_cfgs), device=device), run.dead
    t0 = time.perf_counter()
    for step, i in enumerate(range(0, n, first.batch_size), start=epoch * steps + 1):
        rows = orders[:, i:i + first.batch_size]  # (K, B): positions among the rows the family trains on
        with step_context(device, first.precision, run.math_attention):
            loss, metric = run.step(rows, streams)
        run.weights.grad.zero_()
        if run.encoder_opt is not None:
            run.encoder_opt.zero_grad(set_to_none=True)
        loss.sum().backward()  # members share no weights: each row's gradient is its own loss's
        if dead is not None:  # a diverged member is frozen at zero weights, its NaNs kept out of AdamW
            run.weights.grad.masked_fill_(dead, 0.0)
        run.opt.step(lr_scale(first, run.opt.steps + 1, step, first.total_epochs * steps))
        if run.encoder_opt is not None:
            run.encoder_opt.step()
        if run.ema is not None:
            run.ema.step([run.weights.param])
        totals += metric.detach() * rows.shape[1]
    return (totals / n).tolist(), time.perf_counter() - t0  # one sync per epoch, not per step


def train_members(model_cfg: ModelConfig, train_cfgs: list[TrainConfig], data: PreparedData, report=None,
                  resume: TrainingState | None = None, family_cfg=None, runtime: Runtime | None = None) -> list[dict]:
    """Train len(train_cfgs) trials of one architecture together; returns each member's final metrics.

    `family_cfg`: the family's config section (model_cfg.family's Config, or a dict of its fields); None: its
    defaults. `runtime`: the device, compile, and what the caller keeps for its next trial.
    """
    run = setup(model_cfg, train_cfgs, data, resume, family_cfg, runtime or Runtime())
    first, k, n = train_cfgs[0], len(train_cfgs), run.family.train_size
    metrics = [h[-1] if h else {} for h in run.members.history]
    for epoch in range(run.start_epoch, first.total_epochs):
        if not any(run.members.alive):
            break
        if first.finetune_epochs and epoch == first.epochs:
            start_stage2(run)
        train_metric, elapsed = train_epoch(run, epoch)

        # Select: each member's selection metric and best weights (EMA weights where the family uses them). The
        # metric runs under the step's precision: under bf16 on 2 CPU cores the diffusion family's takes 0.60-0.65
        # of its fp32 time (4-5 s an epoch less) and reads within 2e-5 of fp32 (results/BENCHMARKS.md, "The
        # selection metric under bf16"); the final evaluation stays fp32.
        with ema_weights(run.ema, run.weights):
            with step_context(run.device, first.precision, run.math_attention):
                selection = run.family.select()
            metrics = run.members.record(epoch, train_metric, selection, k * n / elapsed, run.family, train_cfgs,
                                         lambda m: member_weights(run.net, run.weights, m))
        if run.ema is not None:  # what the configured decay came to (see EMA_DECAY)
            for mt in metrics:
                mt[EMA_DECAY] = run.ema.cur_decay_value
        if run.dead is not None:
            run.opt.freeze(run.dead)

        # Checkpoint and report; after the last epoch, the final metrics from each member's best weights.
        state = run.state(epoch + 1)
        if epoch + 1 == first.total_epochs or not any(run.members.alive):
            for m, best in enumerate(run.members.best_model):
                if best is not None:
                    load_member(run.net, run.weights, m, best)
            final = run.evaluator.final(run.family, [a and b is not None for a, b in
                                                     zip(run.members.alive, run.members.best_model)], first.eval_samples)
            metrics = [{**mt, **f} for mt, f in zip(metrics, final)]
            state.final = [dict(mt) for mt in metrics]
        if report is not None:
            report([dict(mt) for mt in metrics], state)
    return [dict(mt) for mt in metrics]


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, data: PreparedData, report=None,
          resume: TrainingState | None = None, family_cfg=None, runtime: Runtime | None = None) -> dict:
    """One trial: `train_members` with K = 1. `report(metrics, state)` gets the member's dict; a diverged run
    raises FloatingPointError."""
    def report_one(metrics: list[dict], state: TrainingState) -> None:
        if "error" in metrics[0]:
            raise FloatingPointError(metrics[0]["error"])
        if report is not None:
            report(metrics[0], state)

    return train_members(model_cfg, [train_cfg], data, report_one, resume, family_cfg, runtime)[0]
