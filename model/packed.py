"""Several trials of one architecture trained together, as one batched model (issue 6, lever 5).

    from model.packed import train_packed
    cfgs = [TrainConfig(lr=lr, weight_decay=wd) for lr in (1e-4, 1e-5) for wd in (1e-5, 1e-6)]
    results = train_packed(ModelConfig(n_heads=2, ff_dim=512, n_layers=2), cfgs, data)
    results[0]["test/l1"]                 # the same metrics `model.train.train` returns, per member

The grid's 32 trials hold 8 architectures; the 4 trials of an architecture differ only in
learning rate and weight decay. Here their generators' weights sit side by side in one
(K, P) tensor: one forward written with a member axis (batched matmuls, convolutions grouped
by member) and one backward serve all K members, and AdamW updates the (K, P) tensor in a
handful of kernels, each row with its own learning rate, weight decay and moments. Every
member still takes its own batch-10 steps over its own seeded shuffle, so on a launch-bound
GPU K trials cost about as many kernel launches as one.

Matches the plain loop: with dropout off, a member ends with `train`'s weights up to float
rounding (tests/test_packed.py); with dropout its masks come from another random stream, so
it matches within run-to-run noise. Limits: frozen text encoder, L1 loss, the same epochs and
batch size for all members. A member whose loss diverges stops alone, with the plain loop's
message; the others go on. No checkpoints: this is the speed path for a whole-grid run on one
GPU (bench/bench_gpu_grid.py); the Ray Tune search runs one `train` per trial.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import torch
import torch.nn.functional as F

from data_pipeline.dataset import PreparedData
from model import clip
from model.config import BEST_VAL_L1, SAMPLES_PER_S, TRAIN_L1, VAL_L1, ModelConfig, TrainConfig
from model.network import TextToImage, load_text_encoder
from model.train import (TextTable, _images, check_data, default_device, divergence, epoch_order, final_metrics,
                         predict)


class PackedAdamW:
    """torch.optim.AdamW's update (same formula, same defaults) on a (K, P) tensor and its
    gradient, one lr and weight decay per row."""

    def __init__(self, flat: torch.Tensor, grad: torch.Tensor, lrs, weight_decays, betas=(0.9, 0.999), eps=1e-8):
        self.flat, self.grad, self.betas, self.eps, self.steps = flat, grad, betas, eps, 0
        self.lr = torch.tensor(lrs, dtype=flat.dtype, device=flat.device)[:, None]  # (K, 1)
        self.wd = torch.tensor(weight_decays, dtype=flat.dtype, device=flat.device)[:, None]  # (K, 1)
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(flat), torch.zeros_like(flat)

    @torch.no_grad()
    def freeze(self, k: int) -> None:
        """Stop member k: zero weights (finite outputs) and moments, no further updates."""
        for t in (self.flat, self.exp_avg, self.exp_avg_sq, self.lr):
            t[k] = 0.0

    @torch.no_grad()
    def step(self) -> None:
        (b1, b2), g = self.betas, self.grad
        self.steps += 1
        self.flat.mul_(1 - self.lr * self.wd)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.eps)
        self.flat.sub_(self.exp_avg / denom * (self.lr / (1 - b1 ** self.steps)))


# ---------------------------------------------------------------------------- grouped ops
# Each takes weights with a leading member axis K and runs all K members in one kernel. They
# follow torch.nn's modules op for op (tests/test_packed.py checks the result against them).


def linear(x, w, b):
    """x (K, ..., in), w (K, out, in), b (K, out) -> (K, ..., out): one batched matmul."""
    k, shape = x.shape[0], x.shape[1:-1]
    return torch.baddbmm(b[:, None, :], x.reshape(k, -1, x.shape[-1]), w.transpose(1, 2)).reshape(k, *shape, -1)


def layer_norm(x, w, b, eps):
    """x (K, B, T, D), w and b (K, D)."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * w[:, None, None, :] + b[:, None, None, :]


def attention(q_in, kv_in, p: dict, prefix: str, n_heads: int, key_pad, dropout: float):
    """nn.MultiheadAttention(batch_first=True)'s forward for K members: (K, B, Tq, D) -> (K, B, Tq, D).

    key_pad (K*B, Tk) is True at padding. Self-attention when q_in is kv_in.
    """
    w, bias = p[prefix + "in_proj_weight"], p[prefix + "in_proj_bias"]  # (K, 3D, D), (K, 3D)
    k_, b_, tq, d = q_in.shape
    if q_in is kv_in:
        q, k, v = linear(q_in, w, bias).chunk(3, dim=-1)
    else:
        q = linear(q_in, w[:, :d], bias[:, :d])
        k, v = linear(kv_in, w[:, d:], bias[:, d:]).chunk(2, dim=-1)

    def heads(t):  # (K, B, T, D) -> (K*B, heads, T, D/heads)
        return t.reshape(k_ * b_, t.shape[2], n_heads, d // n_heads).transpose(1, 2)

    mask = torch.zeros(key_pad.shape, dtype=q.dtype, device=q.device).masked_fill_(key_pad, float("-inf"))
    mask = mask[:, None, None, :]  # (K*B, 1, 1, Tk), additive
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(k_, b_, tq, d)
    return linear(out, p[prefix + "out_proj.weight"], p[prefix + "out_proj.bias"])


def grouped_conv(x, w, b, k: int):
    """x (B, K*C, H, W) holding K members' channels side by side; w (K, O, C, 3, 3) -> (B, K*O, H, W)."""
    return F.conv2d(x, w.reshape(-1, *w.shape[2:]), b.reshape(-1), padding=w.shape[-1] // 2, groups=k)


class Packed:
    """K generators of one architecture: their weights as one (K, P) tensor, one forward for all K."""

    def __init__(self, generators: list[torch.nn.Module], device):
        self.template = copy.deepcopy(generators[0]).to(device)  # the structure (sizes, heads, dropout)
        if list(self.template.buffers()):
            raise ValueError("packing needs a generator without buffers (it has running statistics)")
        self.layout, offset = [], 0  # (name, offset, numel, shape) of each parameter in a row
        for name, p in self.template.named_parameters():
            self.layout.append((name, offset, p.numel(), p.shape))
            offset += p.numel()
        rows = [torch.cat([p.detach().flatten() for p in g.parameters()]) for g in generators]
        self.flat = torch.stack(rows).to(device)  # (K, P): every member's weights, one row each
        self.grad = torch.zeros_like(self.flat)  # (K, P): their gradients, same layout
        # One leaf tensor per parameter, a (K, *shape) view into `flat`, whose .grad is a view into
        # `grad`: backward accumulates each gradient in place, and AdamW then sees one (K, P) pair.
        # (Views of a single (K, P) leaf would instead make autograd add a full-size zero tensor
        # per parameter.)
        k = len(self.flat)
        self.params = {}
        for name, o, n, shape in self.layout:
            leaf = self.flat[:, o:o + n].view(k, *shape).detach().requires_grad_()
            leaf.grad = self.grad[:, o:o + n].view(k, *shape)
            self.params[name] = leaf
        # Autograd notes that these gradients are strided views; accumulating into them is what we want.
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        self.training = True  # dropout on; evaluation runs the members' ordinary modules instead

    def zero_grad(self) -> None:
        self.grad.zero_()

    def forward(self, hidden, attention_mask):
        """`Generator.forward` for K members at once: hidden (K, B, T, H), mask (K, B, T) -> (K, B, 3, S, S)."""
        g, p, k = self.template, self.params, len(self.flat)
        drop = (lambda x, rate: F.dropout(x, rate, True)) if self.training else (lambda x, rate: x)
        pad = (attention_mask == 0).reshape(-1, attention_mask.shape[-1])  # (K*B, T)
        x = linear(hidden, p["proj.weight"], p["proj.bias"])  # (K, B, T, D)
        for i, layer in enumerate(g.encoder.layers):  # norm_first TransformerEncoderLayer
            n = f"encoder.layers.{i}."
            h = layer_norm(x, p[n + "norm1.weight"], p[n + "norm1.bias"], layer.norm1.eps)
            x = x + drop(attention(h, h, p, n + "self_attn.", layer.self_attn.num_heads, pad,
                                   layer.self_attn.dropout if self.training else 0.0), layer.dropout1.p)
            h = layer_norm(x, p[n + "norm2.weight"], p[n + "norm2.bias"], layer.norm2.eps)
            h = drop(F.gelu(linear(h, p[n + "linear1.weight"], p[n + "linear1.bias"])), layer.dropout.p)
            x = x + drop(linear(h, p[n + "linear2.weight"], p[n + "linear2.bias"]), layer.dropout2.p)
        t = g.to_latent
        q = p["to_latent.queries"].expand(-1, x.shape[1], -1, -1)  # (K, B, L*L, D)
        attended = attention(q, x, p, "to_latent.attn.", t.attn.num_heads, pad,
                             t.attn.dropout if self.training else 0.0)
        latent = layer_norm(q + attended, p["to_latent.norm.weight"], p["to_latent.norm.bias"], t.norm.eps)
        b, d, side = x.shape[1], x.shape[-1], t.latent_size
        # The decoder works on (B, K*C, H, W): members' channels side by side, convolutions grouped by member.
        y = latent.transpose(-1, -2).reshape(k, b, d, side, side).transpose(0, 1).reshape(b, k * d, side, side)
        for j, block in enumerate(g.decoder[:-2]):  # Upsample, Conv2d, GroupNorm, GELU, Dropout
            n, norm = f"decoder.{j}.", block[2]
            y = grouped_conv(F.interpolate(y, scale_factor=2, mode="nearest"), p[n + "1.weight"], p[n + "1.bias"], k)
            y = F.group_norm(y, k * norm.num_groups, p[n + "2.weight"].reshape(-1), p[n + "2.bias"].reshape(-1),
                             norm.eps)
            y = drop(F.gelu(y), block[4].p)
        last = f"decoder.{len(g.decoder) - 2}."
        y = torch.tanh(grouped_conv(y, p[last + "weight"], p[last + "bias"], k))  # (B, K*3, S, S)
        return y.reshape(b, k, 3, *y.shape[-2:]).transpose(0, 1)  # (K, B, 3, S, S)

    def load_into(self, k: int, generator: torch.nn.Module) -> None:
        """Member k's current weights into an ordinary module (for evaluation and checkpoints)."""
        torch.nn.utils.vector_to_parameters(self.flat[k], generator.parameters())


def train_packed(model_cfg: ModelConfig, train_cfgs: list[TrainConfig], data: PreparedData, report=None,
                 device=None, compile: bool = False) -> list[dict]:
    """Train len(train_cfgs) trials of one architecture at once; returns each member's final metrics.

    `report(k, metrics)` is called for every member after every epoch. `compile=True` runs the
    batched step through `torch.compile` (on CUDA with CUDA graphs, "reduce-overhead").
    """
    device = torch.device(device or default_device())
    first = train_cfgs[0]
    if not model_cfg.freeze_text_encoder:
        raise ValueError("packed training needs a frozen text encoder (its features are shared by all members)")
    for cfg in train_cfgs:
        if cfg.loss != "l1" or (cfg.epochs, cfg.batch_size) != (first.epochs, first.batch_size):
            raise ValueError("packed members need loss 'l1' and the same epochs and batch size; got "
                             f"{cfg.loss!r}, {cfg.epochs}, {cfg.batch_size} vs {first.epochs}, {first.batch_size}")
    check_data(model_cfg, data)
    scorer, clip_status = clip.resolve_clip(first, device)

    tokenizer, encoder, _ = load_text_encoder(model_cfg.text_encoder)
    nets = []
    for cfg in train_cfgs:  # each member starts from the weights `train` would give it
        torch.manual_seed(cfg.seed)
        nets.append(TextToImage(model_cfg, encoder).to(device))
    texts = TextTable(tokenizer, data, model_cfg.max_tokens, device)
    texts.cache_hidden(nets[0])  # the encoder is shared and frozen: one cache serves every member
    train_images = _images(data.train, device)
    val_images = _images(data.val, device)
    packed = Packed([net.generator for net in nets], device)
    opt = PackedAdamW(packed.flat, packed.grad, [c.lr for c in train_cfgs], [c.weight_decay for c in train_cfgs])

    def loss_fn(hidden, mask, target):  # one batch per member: (K, B, T, H), (K, B, T), (K, B, 3, S, S)
        pred = packed.forward(hidden, mask)  # (K, B, 3, S, S)
        return (pred - target).abs().mean(dim=(1, 2, 3, 4))  # (K,) each member's batch L1

    step_loss = loss_fn
    if compile:
        # The batch is gathered outside the compiled step, so CUDA graphs copy only the batch in, not
        # the dataset; the weights keep their addresses (AdamW updates them in place), so they are static.
        torch._dynamo.reset()
        for leaf in packed.params.values():
            torch._dynamo.mark_static_address(leaf)
        step_loss = torch.compile(loss_fn, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
    k_all, n, batch = len(train_cfgs), len(data.train), first.batch_size
    live, all_live = torch.ones(k_all, dtype=torch.bool, device=device), True  # members still training
    best_val, best_rows = [float("inf")] * k_all, [None] * k_all
    errors, results = [None] * k_all, [dict() for _ in range(k_all)]
    for epoch in range(first.epochs):
        orders = torch.stack([epoch_order(n, c.seed, epoch) for c in train_cfgs]).to(device)  # (K, N): own shuffles
        totals = torch.zeros(k_all, device=device)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            idx = orders[:, i:i + batch]  # (K, B)
            text_idx = texts.rows["train"][idx]
            l1 = step_loss(texts.hidden[text_idx], texts.mask[text_idx], train_images[idx])  # (K,)
            packed.zero_grad()
            l1.sum().backward()  # members share no weights: each row's gradient is its own loss's
            if not all_live:  # a diverged member is frozen at zero weights, its NaNs kept out of AdamW
                packed.grad.masked_fill_(~live[:, None], 0.0)
            opt.step()
            totals += l1.detach() * idx.shape[1]
        train_l1 = (totals / n).tolist()  # one sync per epoch
        elapsed = time.perf_counter() - t0
        for k, cfg in enumerate(train_cfgs):
            if errors[k] is not None:
                continue
            if not math.isfinite(train_l1[k]):
                errors[k] = divergence(train_l1[k], epoch, cfg)
                live[k], all_live = False, False
                opt.freeze(k)
                continue
            packed.load_into(k, nets[k].generator)
            val_l1 = F.l1_loss(predict(nets[k], texts, "val"), val_images).item()
            if val_l1 < best_val[k]:
                best_val[k], best_rows[k] = val_l1, packed.flat[k].clone()
            # samples_per_s counts every member's samples: the packed step's total throughput.
            results[k] = {"epoch": epoch + 1, TRAIN_L1: train_l1[k], VAL_L1: val_l1, BEST_VAL_L1: best_val[k],
                          SAMPLES_PER_S: k_all * n / elapsed}
            if report is not None:
                report(k, dict(results[k]))
        if not live.any():
            break

    for k, net in enumerate(nets):
        if errors[k] is not None:
            results[k] = {**results[k], "error": errors[k]}
            continue
        torch.nn.utils.vector_to_parameters(best_rows[k], net.generator.parameters())
        results[k].update(final_metrics(net, net.trainable_state(), texts, data, scorer, clip_status, device))
    return results
