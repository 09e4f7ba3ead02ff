"""Augmenting target images on the fly: random horizontal flips and shifts (TrainConfig.augment_flip,
augment_shift), beside the data pipeline's rotated copies.

    from model.augment import augment
    batch = augment(images, flip=True, shift=0.125)                     # draws from the global RNG
    batch = augment(images, flip=True, shift=0.0, generator=stream)     # from a member's own stream
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(images: torch.Tensor, flip: bool, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Target images (..., 3, S, S) in [-1, 1], each flipped left-right with probability 1/2 and shifted by up
    to `shift` x S pixels each way (whole pixels, white filling what moves in). Draws from `generator` (a member's
    own stream), else the global RNG."""
    if not flip and not shift:
        return images
    shape = images.shape
    x = images.reshape(-1, *shape[-3:])  # (N, 3, S, S)
    n, s = len(x), shape[-1]
    if flip:
        x = torch.where(torch.rand(n, 1, 1, 1, device=x.device, generator=generator) < 0.5, x.flip(-1), x)
    if shift:
        m = int(round(shift * s))
        padded = F.pad(x, (m, m, m, m), value=1.0)  # white border
        dy, dx = torch.randint(0, 2 * m + 1, (2, n), device=x.device, generator=generator)
        rows = (dy[:, None] + torch.arange(s, device=x.device))[:, None, :, None].expand(n, 3, s, s + 2 * m)
        x = padded.gather(2, rows)  # (N, 3, S, S + 2m): each image's own vertical window
        cols = (dx[:, None] + torch.arange(s, device=x.device))[:, None, None, :].expand(n, 3, s, s)
        x = x.gather(3, cols)
    return x.reshape(shape)
