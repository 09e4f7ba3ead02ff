"""K members of one architecture as one network: the blocks, their flat weights and one AdamW for all of them.

    from model.members import EncoderLayer, FlatParams, Linear, MemberAdamW, init_members
    layer = EncoderLayer(k=4, d=64, n_heads=2, ff_dim=512, dropout=0.3)   # 4 independent layers
    init_members(layer, seeds=[0, 1, 2, 3])                                # member m from seed m alone
    weights = FlatParams(network)                                          # every weight a view of one tensor
    opt = MemberAdamW(weights.flat, weights.grad, weights.per_member(lrs), weights.per_member(wds))

Every trainable weight has a leading member axis K: K independent networks of one architecture run as one
forward, each member on its own batch. A single trial is K = 1; a fused trial (the grid's learning-rate x
weight-decay points of one architecture) is K = 4. The blocks follow torch.nn's modules op for op
(tests/test_model.py checks K = 1 against nn.TransformerEncoderLayer & co.). `init_member(m, gen)` initializes
member m from its own generator, as torch.nn would: a member's starting weights depend on its seed only, never
on K or on its place among the members.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------- blocks


def _linear(x, weight, bias):
    """x (K, ..., in), weight (K, out, in), bias (K, out) -> (K, ..., out): one batched matmul."""
    k, shape = x.shape[0], x.shape[1:-1]
    return torch.baddbmm(bias[:, None, :], x.reshape(k, -1, x.shape[-1]), weight.transpose(1, 2)).reshape(k, *shape, -1)


class Linear(nn.Module):
    """K independent nn.Linear layers."""

    def __init__(self, k: int, d_in: int, d_out: int, zero_bias: bool = False, zero: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, d_out, d_in))
        self.bias = nn.Parameter(torch.empty(k, d_out))
        self.zero_bias = zero_bias  # nn.MultiheadAttention's output projection starts with a zero bias
        self.zero = zero  # starts as the zero map: a new conditioning path that leaves the network as it was

    def init_member(self, m: int, gen: torch.Generator) -> None:
        if self.zero:
            self.weight[m] = 0.0
            self.bias[m] = 0.0
            return
        nn.init.kaiming_uniform_(self.weight[m], a=math.sqrt(5), generator=gen)
        bound = 0.0 if self.zero_bias else 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.bias[m], -bound, bound, generator=gen)

    def forward(self, x):
        return _linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    """K independent nn.LayerNorm(d) over the last axis of (K, ..., d)."""

    def __init__(self, k: int, d: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, d))
        self.bias = nn.Parameter(torch.zeros(k, d))
        self.eps = eps

    def init_member(self, m: int, gen: torch.Generator) -> None:
        self.weight[m] = 1.0
        self.bias[m] = 0.0

    def forward(self, x):
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight.view(shape) + self.bias.view(shape)


class Attention(nn.Module):
    """K independent nn.MultiheadAttention(batch_first=True): (K, B, Tq, D) x (K, B, Tk, D) -> (K, B, Tq, D)."""

    def __init__(self, k: int, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.in_proj_weight = nn.Parameter(torch.empty(k, 3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.empty(k, 3 * d))
        self.out_proj = Linear(k, d, d, zero_bias=True)
        self.n_heads, self.dropout = n_heads, dropout

    def init_member(self, m: int, gen: torch.Generator) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight[m], generator=gen)
        self.in_proj_bias[m] = 0.0

    def forward(self, q_in, kv_in, key_bias):
        """key_bias (K*B, 1, 1, Tk): 0 at tokens, -inf at padding. Self-attention when q_in is kv_in."""
        k_, b, tq, d = q_in.shape
        w, bias = self.in_proj_weight, self.in_proj_bias
        if q_in is kv_in:
            q, k, v = _linear(q_in, w, bias).chunk(3, dim=-1)
        else:
            q = _linear(q_in, w[:, :d], bias[:, :d])
            k, v = _linear(kv_in, w[:, d:], bias[:, d:]).chunk(2, dim=-1)

        def heads(t):  # (K, B, T, D) -> (K*B, heads, T, D/heads)
            return t.reshape(k_ * b, t.shape[2], self.n_heads, d // self.n_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=key_bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(k_, b, tq, d))


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True), K members."""

    def __init__(self, k: int, d: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = LayerNorm(k, d), LayerNorm(k, d)
        self.self_attn = Attention(k, d, n_heads, dropout)
        self.linear1, self.linear2 = Linear(k, d, ff_dim), Linear(k, ff_dim, d)
        self.dropout = dropout

    def forward(self, x, key_bias):  # (K, B, T, D)
        h = self.norm1(x)
        x = x + F.dropout(self.self_attn(h, h, key_bias), self.dropout, self.training)
        h = F.dropout(F.gelu(self.linear1(self.norm2(x))), self.dropout, self.training)
        return x + F.dropout(self.linear2(h), self.dropout, self.training)



# The decoder works on (B, K*C, H, W): the members' channels side by side, so each convolution is one
# grouped convolution (groups = K) and each GroupNorm one group_norm with K times the groups.


class Conv(nn.Module):
    """K independent nn.Conv2d(c_in, c_out, 3, padding=1) on (B, K*c_in, H, W) -> (B, K*c_out, H, W)."""

    def __init__(self, k: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(k, c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.empty(k, c_out))

    def init_member(self, m: int, gen: torch.Generator) -> None:
        nn.init.kaiming_uniform_(self.weight[m], a=math.sqrt(5), generator=gen)
        bound = 1 / math.sqrt(self.weight[m, 0].numel())
        nn.init.uniform_(self.bias[m], -bound, bound, generator=gen)

    def forward(self, y):
        k = self.weight.shape[0]
        return F.conv2d(y, self.weight.flatten(0, 1), self.bias.flatten(), padding=1, groups=k)


class GroupNorm(nn.Module):
    """K independent nn.GroupNorm(groups, c) on (B, K*c, H, W)."""

    def __init__(self, k: int, groups: int, c: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(k, c))
        self.bias = nn.Parameter(torch.zeros(k, c))
        self.groups, self.eps = groups, eps

    def init_member(self, m: int, gen: torch.Generator) -> None:
        self.weight[m] = 1.0
        self.bias[m] = 0.0

    def forward(self, y):
        k = self.weight.shape[0]
        return F.group_norm(y, k * self.groups, self.weight.flatten(), self.bias.flatten(), self.eps)



def init_members(module: nn.Module, seeds, modules=None) -> None:
    """Member m of every block in `modules` (default: all of `module`'s, in registration order) from the
    generator of seeds[m] alone; one generator per member runs through the blocks in that order."""
    with torch.no_grad():
        for m, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            for sub in (modules if modules is not None else [module]):
                for block in sub.modules():
                    if hasattr(block, "init_member"):
                        block.init_member(m, gen)


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
