"""The thesis's figures (learning curves of every trial, generated-vs-real grids of the best one) and which
swept fields matter (their importance; every trial's configuration against its metric).

    from search.figures import importance, learning_curves, parallel_coordinates, samples
    learning_curves(curves(trials), best_id, "results/grid/learning_curves.png", title="grid (laptop)")
    samples(net, tokenizer, data.test, "results/grid/samples_test.png", title="test")
    importance(summary, "results/grid/importance.png", title="grid (laptop)")          # search.analysis.Summary
    parallel_coordinates(rows, fields, "results/grid/parallel_coordinates.png", title="grid (laptop)")

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
from model import families as registry  # noqa: E402
from model.config import DEFAULT_FAMILY  # noqa: E402
from search import analysis  # noqa: E402
from model.files import atomic_write  # noqa: E402


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def learning_curves(series: dict[str, dict], best: str | None, path: str | Path, title: str) -> None:
    """Each family's training and selection metric per epoch (one row of panels per family: train/l1 and val/l1
    for the regressor, train/loss and val/x0_mse for diffusion), one thin line per trial; the best bold.
    A series without "family" is of the default family."""
    families = sorted({s.get("family", DEFAULT_FAMILY) for s in series.values()}) or [DEFAULT_FAMILY]
    fig, axes = plt.subplots(len(families), 2, figsize=(11, 4 * len(families)), squeeze=False)
    for row, family in zip(axes, families):
        fam = registry.get(family)
        for ax, metric in zip(row, (fam.train_metric, fam.selection)):
            for trial_id, s in series.items():
                if s.get("family", DEFAULT_FAMILY) != family:
                    continue
                pts = [(e, v) for e, v in zip(s["epoch"], s.get(metric, [])) if v is not None and np.isfinite(v)]
                if not pts:
                    continue
                x, y = zip(*pts)
                if trial_id == best:
                    ax.plot(x, y, color="black", lw=2.2, marker="o", ms=3, label=f"best ({trial_id})", zorder=3)
                else:
                    ax.plot(x, y, lw=0.8, alpha=0.55)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{family}: {metric}" if len(families) > 1 else metric)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:  # the best trial may have no finite value to draw
                ax.legend(loc="upper right")
        row[0].set_ylabel(fam.train_metric.split("/")[-1])
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
    """Top row real images, then the model's images for the same texts: one row for a one-forward family (the
    regressor), two for a sampler (two samples per text, seeds 0 and 1)."""
    from model.generate import generate

    rows = first_records(split, k)
    texts = [split.texts[i] for i in rows]
    real = Split(split.ids[rows], texts, split.images[rows]).unit_images()  # [-1, 1]
    draws = 2 if registry.get(net.cfg.family).draws != 1 else 1
    fakes = [generate(net, tokenizer, texts, seed=s).float().cpu().numpy() for s in range(draws)]
    labels = ["real", *(["generated"] if draws == 1 else [f"sample {s}" for s in range(draws)])]
    fig, axes = plt.subplots(1 + draws, len(rows), figsize=(1.5 * len(rows), 1.7 * (1 + draws)), squeeze=False)
    for j in range(len(rows)):
        for i, img in enumerate([real[j], *(f[j] for f in fakes)]):
            ax = axes[i][j]
            ax.imshow(((np.clip(img, -1, 1) + 1) / 2).transpose(1, 2, 0))
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i])
        axes[0][j].set_title(f"id {split.ids[rows[j]]}", fontsize=8)
    fig.suptitle(title)
    _save(fig, path)


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_xticks([]), ax.set_yticks([])


def importance(summary, path: str | Path, title: str) -> None:
    """Each swept field's importance for its family's ranking metric, one panel per family; a field whose
    values give identical results is drawn grey and labelled, and a skipped panel says why."""
    imps = list(summary.importance.values())
    no_effect = {n.field for n in summary.no_effect if n.everywhere}
    bars = max([len(i.values) for i in imps] + [3])
    fig, axes = plt.subplots(len(imps) or 1, 1, figsize=(7, (1.2 + 0.45 * bars) * max(1, len(imps))), squeeze=False)
    for ax, imp in zip(axes[:, 0], imps):
        ax.set_title(f"{imp.family}: importance for {imp.metric}", fontsize=10)
        if imp.skipped:
            _no_data(ax, f"importance skipped: {imp.skipped}")
            continue
        names = list(imp.values)[::-1]  # highest on top
        colors = ["lightgrey" if n in no_effect else "tab:orange" if n == analysis.SEED else "tab:blue" for n in names]
        ax.barh(names, [imp.values[n] for n in names], color=colors)
        for y, n in enumerate(names):
            note = " no effect (identical results)" if n in no_effect else " seed noise" if n == analysis.SEED else ""
            ax.text(imp.values[n], y, f" {imp.values[n]:.3f}{note}", va="center", fontsize=8)
        ax.set_xlim(0, 1.25)
        ax.set_xlabel(f"share of the variance of {imp.metric} ({analysis.EVALUATOR.split(' (')[0]}, "
                      f"{imp.trials} completed trials)")
    if not imps:
        _no_data(axes[0, 0], "no trials")
    fig.suptitle(title, y=1.0 + 0.25 / fig.get_figheight())
    _save(fig, path)


def parallel_coordinates(rows: list[dict], fields: list[str], path: str | Path, title: str) -> None:
    """One line per completed trial through its value of every swept field and, on the last axis, its
    ranking metric (coloured by it); the best row drawn black. One panel per family."""
    fams = analysis.families(rows) or [DEFAULT_FAMILY]
    fig, axes = plt.subplots(len(fams), 1, figsize=(10, 4.2 * len(fams)), squeeze=False)
    for ax, fam in zip(axes[:, 0], fams):
        metric = registry.get(fam).best if fam in registry.names() else None
        done = [r for r in rows if analysis.family(r) == fam and r.get("status") == "ok"
                and metric and analysis.number(r.get(metric)) is not None]
        ax.set_title(f"{fam}: {len(done)} completed trials against {metric}", fontsize=10)
        axis_fields = [f for f in fields if f != "family" and len({r.get(f) for r in done}) > 1]
        if not done:
            _no_data(ax, f"no completed {fam} trial reports {metric}")
            continue
        levels = {f: analysis.levels(r.get(f) for r in done) for f in axis_fields}
        lo, hi = min(r[metric] for r in done), max(r[metric] for r in done)
        span = (hi - lo) or 1.0
        cmap = plt.get_cmap("viridis_r")  # bright = low = good
        # Trials share each categorical value: a small fixed jitter per line shows how many pass through it.
        jitter = np.random.default_rng(0).uniform(-0.03, 0.03, len(done))
        for r, dy in sorted(zip(done, jitter), key=lambda rj: -rj[0][metric]):  # the best lines drawn last, on top
            ys = [levels[f].index(r.get(f)) / max(1, len(levels[f]) - 1) + dy for f in axis_fields]
            ys.append((r[metric] - lo) / span)
            if r.get("best"):
                ax.plot(range(len(ys)), ys, color="black", lw=2.4, zorder=4, label="best")
            else:
                ax.plot(range(len(ys)), ys, color=cmap((r[metric] - lo) / span), lw=1.0, alpha=0.7)
        for x, f in enumerate(axis_fields):
            ax.axvline(x, color="grey", lw=0.8)
            for i, v in enumerate(levels[f]):
                ax.text(x, i / max(1, len(levels[f]) - 1), f" {_fmt_level(v)}", fontsize=8, va="center")
        x = len(axis_fields)
        ax.axvline(x, color="grey", lw=0.8)
        for frac in (0.0, 0.5, 1.0):
            ax.text(x, frac, f" {lo + frac * span:.4g}", fontsize=8, va="center")
        ax.set_xticks(range(x + 1), [*axis_fields, metric])
        ax.set_yticks([])
        ax.set_xlim(-0.2, x + 0.6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title, y=1.0 + 0.25 / fig.get_figheight())
    _save(fig, path)


def _fmt_level(v) -> str:
    return f"{v:.0e}" if isinstance(v, float) and v and abs(v) < 1e-2 else str(v)
