"""The thesis's figures: learning curves of every trial, generated-vs-real grids of the best one.

    from search.figures import learning_curves, samples
    learning_curves(curves(trials), best_id, "results/grid/learning_curves.png", title="grid (laptop)")
    samples(net, tokenizer, data.test, "results/grid/samples_test.png", title="test")

PNG files, written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster head or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from data_pipeline.dataset import Split  # noqa: E402
from model.config import TRAIN_L1, VAL_L1  # noqa: E402
from search.results import atomic_write  # noqa: E402


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def learning_curves(series: dict[str, dict], best: str | None, path: str | Path, title: str) -> None:
    """Train and val L1 per epoch, one thin line per trial; the best trial drawn bold."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, (TRAIN_L1, VAL_L1)):
        for trial_id, s in series.items():
            pts = [(e, v) for e, v in zip(s["epoch"], s[metric]) if v is not None and np.isfinite(v)]
            if not pts:
                continue
            x, y = zip(*pts)
            if trial_id == best:
                ax.plot(x, y, color="black", lw=2.2, marker="o", ms=3, label=f"best ({trial_id})", zorder=3)
            else:
                ax.plot(x, y, lw=0.8, alpha=0.55)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L1")
    if best in series:
        axes[1].legend(loc="upper right")
    fig.suptitle(f"{title}: {len(series)} trials")
    _save(fig, path)


def first_records(split: Split, k: int) -> list[int]:
    """Row indices of the first k distinct records (rotation 0 of a train record comes first)."""
    seen, rows = set(), []
    for i, rid in enumerate(split.ids.tolist()):
        if rid not in seen:
            seen.add(rid)
            rows.append(i)
        if len(rows) == k:
            break
    return rows


def samples(net, tokenizer, split: Split, path: str | Path, title: str, k: int = 8) -> None:
    """Top row real images, bottom row the model's images for the same texts."""
    from model.generate import generate

    rows = first_records(split, k)
    real = Split(split.ids[rows], [split.texts[i] for i in rows], split.images[rows]).unit_images()  # [-1, 1]
    fake = generate(net, tokenizer, [split.texts[i] for i in rows]).float().cpu().numpy()
    fig, axes = plt.subplots(2, len(rows), figsize=(1.5 * len(rows), 3.4), squeeze=False)
    for j in range(len(rows)):
        for i, (img, label) in enumerate(((real[j], "real"), (fake[j], "generated"))):
            ax = axes[i][j]
            ax.imshow(((np.clip(img, -1, 1) + 1) / 2).transpose(1, 2, 0))
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label)
        axes[0][j].set_title(f"id {split.ids[rows[j]]}", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)
