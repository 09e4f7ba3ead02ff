"""Model families: what differs between the thesis's regressor and the diffusion model, behind one seam.

    family = make_family(net, texts, train_cfg, evaluator)    # from net.cfg.family
    loss, metric = family.loss(rows, streams)                  # rows (K, B) into the training split -> (K,), (K,)
    family.select()                                            # each member's selection metric on validation
    family.generate("test", sample=0)                          # (K, N, 3, S, S) images for every test row

Everything else belongs to the loop (model/train.py) and is the same for every family: members, the
optimizer, seeds and shuffles, divergence, EMA weights, checkpoints and exact resume, reports, staged training.
A family supplies:
- its network (`TextToImage(cfg).generator`: `Generator` of model/network.py or `Denoiser` of model/diffusion.py),
- its per-member training loss and the training metric it reports (`train_metric`),
- its way to produce images for a batch of texts (one forward, or a sampler),
- its per-epoch selection metric (`selection`, lower is better; the best epoch's weights are the member's result).
"""

from __future__ import annotations

import torch

from model import clip
from model.config import SELECTION, TRAIN_METRIC, TrainConfig
from model.evaluate import Evaluator, member_l1

EVAL_BATCH = 64
SAMPLE_SEED = 2024  # generated evaluation images start from this seed's noise: the same for every member and trial


def augment(images: torch.Tensor, flip: bool, shift: float) -> torch.Tensor:
    """Target images (..., 3, S, S) in [-1, 1], each flipped left-right with probability 1/2 and shifted by up
    to `shift` x S pixels each way (whole pixels, white filling what moves in). Draws from the global RNG."""
    import torch.nn.functional as F

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


class Regressor:
    """The thesis's model: the text's image in one forward, trained with pixel L1 (or a CLIP loss)."""

    name = "regressor"
    train_metric = TRAIN_METRIC[name]
    selection = SELECTION[name]
    uses_ema = False  # the regressor's numbers are the thesis recipe's: ema_decay does not apply

    def __init__(self, net, texts, cfg: TrainConfig, evaluator: Evaluator | None = None):
        self.net, self.texts, self.evaluator, self.cfg = net, texts, evaluator, cfg
        self.scorer = evaluator.scorer if evaluator is not None else None
        self.text_features = self.scorer.text_features(texts.texts) if cfg.loss != "l1" else None  # (U, E)

    def forward(self, text_idx):
        """text_idx (K, B): member k's texts -> (K, B, 3, S, S)."""
        return self.net.generator(*self.texts.hidden_states(self.net, text_idx))

    def loss(self, rows, streams):
        """Each member's loss and L1 on its own batch: rows (K, B) -> (K,), (K,). Augmentation draws from the
        global RNG (the thesis recipe's numbers stay as they were), not the members' streams."""
        cfg, text_idx = self.cfg, self.texts.rows["train"][rows]
        pred = self.forward(text_idx)  # (K, B, 3, S, S)
        l1 = member_l1(pred, augment(self.evaluator.images["train"][rows], cfg.augment_flip, cfg.augment_shift))
        if cfg.loss == "l1":
            return l1, l1
        k, b = rows.shape
        c = 1 - clip.clip_cosines(self.scorer, pred.flatten(0, 1), self.text_features[text_idx.flatten()]).view(k, b).mean(1)
        return (c if cfg.loss == "clip" else l1 + cfg.clip_weight * c), l1

    @torch.no_grad()
    def generate(self, split: str, sample: int = 0) -> torch.Tensor:
        """Every member's image for each row of a split: (K, N, 3, S, S); the same for every sample."""
        self.net.eval()
        rows, k = self.texts.rows[split], self.net.generator.members
        return torch.cat([self.forward(rows[i:i + EVAL_BATCH].expand(k, -1))
                          for i in range(0, len(rows), EVAL_BATCH)], dim=1)

    def select(self) -> list[float]:
        return member_l1(self.generate("val"), self.evaluator.images["val"]).tolist()


class Diffusion:
    """A DDPM conditioned on the text stack (model/diffusion.py), over pixels or a small autoencoder's latents
    (`latent_channels`, model/autoencoder.py), sampled with a few-step sampler."""

    name = "diffusion"
    train_metric = TRAIN_METRIC[name]
    selection = SELECTION[name]
    uses_ema = True

    def __init__(self, net, texts, cfg: TrainConfig, evaluator: Evaluator | None = None):
        from model import diffusion

        self.net, self.texts, self.evaluator, self.cfg = net, texts, evaluator, cfg
        self.ae = net.autoencoder  # None: pixel space
        # The sampler clips its clean-image estimate to [-1, 1], the pixels' range; a latent space has none.
        self.process = diffusion.Diffusion(cfg, clip_sample=self.ae is None)
        self.draws = diffusion.draws
        self.null = texts.index[""]  # the empty text: the unconditional model of classifier-free guidance
        if evaluator is None:  # generating from a checkpoint: the autoencoder came with its weights
            return
        self.x0 = {name: evaluator.images[name] for name in ("train", "val")}  # what the denoiser learns to make
        if self.ae is not None:
            from model import autoencoder

            fitted = autoencoder.load_or_train(evaluator.data, autoencoder.config(net.cfg), evaluator.device)
            self.ae.load_state_dict(fitted.state_dict())
            self.x0 = {name: self.ae.encode(x) for name, x in self.x0.items()}  # (N, C, S/4, S/4)
        gen = torch.Generator(device=evaluator.device).manual_seed(diffusion.VAL_NOISE_SEED)
        self.val_noise = torch.randn((len(diffusion.VAL_TIMESTEPS), *self.x0["val"].shape), generator=gen,
                                     device=evaluator.device)

    def loss(self, rows, streams):
        """Each member's denoising loss on its own batch, its noise, timesteps and dropout from its stream."""
        x0 = self.x0["train"][rows]  # (K, B, C, S, S)
        drop, t, noise = self.draws(streams, rows.shape[1], x0.shape[2:], self.cfg.cond_dropout, x0.device)
        text_idx = torch.where(drop, self.null, self.texts.rows["train"][rows])
        loss = self.process.loss(self.net.generator, x0, *self.texts.hidden_states(self.net, text_idx), t, noise)
        return loss, loss

    @torch.no_grad()
    def select(self) -> list[float]:
        """The validation denoising MSE at fixed noise and timesteps (deterministic; no sampling)."""
        self.net.eval()
        rows, k = self.texts.rows["val"], self.net.generator.members
        total = 0.0
        for i in range(0, len(rows), EVAL_BATCH):
            hidden, mask = self.texts.hidden_states(self.net, rows[i:i + EVAL_BATCH].expand(k, -1))
            mse = self.process.denoise_mse(self.net.generator, self.x0["val"][i:i + EVAL_BATCH], hidden, mask,
                                           self.val_noise[:, i:i + EVAL_BATCH])
            total = total + mse * len(hidden[0])
        return (total / len(rows)).tolist()

    @torch.no_grad()
    def generate(self, split: str, sample: int = 0, steps=None, guidance=None) -> torch.Tensor:
        """Sampled images for every row of a split, (K, N, 3, S, S): draw `sample` of a fixed seed, the same
        starting noise for every member."""
        return self.sample(self.texts.rows[split], sample * 7919 + {"train": 0, "val": 1, "test": 2}[split],
                           steps, guidance)

    @torch.no_grad()
    def sample(self, rows, seed: int, steps=None, guidance=None) -> torch.Tensor:
        """Images for text rows (N,) from seed SAMPLE_SEED + seed: (K, N, 3, S, S) in [-1, 1]."""
        self.net.eval()
        k, device = self.net.generator.members, rows.device
        size = self.net.cfg.image_size // (self.ae.factor if self.ae is not None else 1)
        gen = torch.Generator(device=device).manual_seed(SAMPLE_SEED + seed)
        noise = torch.randn((len(rows), self.net.cfg.latent_channels or 3, size, size), generator=gen, device=device)
        out = []
        for i in range(0, len(rows), EVAL_BATCH):
            idx = rows[i:i + EVAL_BATCH].expand(k, -1)
            hidden, mask = self.texts.hidden_states(self.net, idx)
            null = self.texts.hidden_states(self.net, torch.full_like(idx, self.null))
            x = self.process.sample(self.net.generator, hidden, mask, *null,
                                    noise[i:i + EVAL_BATCH].expand(k, -1, -1, -1, -1), steps, guidance, generator=gen)
            if self.ae is not None:
                x = self.ae.decode(x.flatten(0, 1)).view(k, x.shape[1], 3, self.net.cfg.image_size, self.net.cfg.image_size)
            out.append(x)
        return torch.cat(out, dim=1).clamp(-1, 1)


FAMILIES = {"regressor": Regressor, "diffusion": Diffusion}


def make_family(net, texts, cfg: TrainConfig, evaluator: Evaluator | None = None):
    """The family of net.cfg.family; without an evaluator (model.generate) it only generates."""
    return FAMILIES[net.cfg.family](net, texts, cfg, evaluator)
