"""The report's figures, as PNG files written atomically (matplotlib's Agg backend: no display needed)."""

from pathlib import Path

import math

import numpy as np

from megadoc.evaluation.metrics import PositionCurve, draw_curve, load_curve, pyplot as _pyplot
from megadoc.files import atomic_write
from megadoc.training.registry import REAL_ONLY, RunRecord

LOSS_KEYS = {"iid_loss": "i.i.d. loss", "long_loss": "long-document loss", "short_loss": "short-document loss"}


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120)
    _pyplot().close(figure)


def g_axis(axes, values) -> None:
    """A log2 G axis labelled with the G values themselves (2, 4, ... rather than 2^1, 2^2, ...)."""
    axes.set_xscale("log", base=2)
    ticks = sorted(set(values))
    axes.set_xticks(ticks, labels=[str(tick) for tick in ticks])
    axes.minorticks_off()


def plot_efficiency(rows: list[dict], path: Path) -> None:
    """Data efficiency vs G, one line per synthetic method, with the real-only level (1x)."""
    figure, axes = _pyplot().subplots(figsize=(5, 3.5))
    for method in sorted({row["method"] for row in rows} - {REAL_ONLY}):
        points = sorted((row["generations"], row["data_efficiency"]) for row in rows
                        if row["method"] == method and math.isfinite(row["data_efficiency"]))
        if points:
            axes.plot(*zip(*points), marker="o", label=method)
    axes.axhline(1.0, color="grey", linestyle="--", label="real only")
    g_axis(axes, [row["generations"] for row in rows if row["method"] != REAL_ONLY])
    axes.set(xlabel="generations per document G", ylabel="data efficiency (x)")
    axes.legend()
    _save(figure, path)


def plot_loss_vs_g(best: dict[tuple[str, int], RunRecord], key: str, path: Path) -> bool:
    """Best loss vs G per method, real-only as a horizontal line; False when no run has `key`."""
    points = {group: getattr(run, key) for group, run in best.items() if getattr(run, key) is not None}
    if not points:
        return False
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method in sorted({method for method, _ in points} - {REAL_ONLY}):
        series = sorted((G, loss) for (name, G), loss in points.items() if name == method)
        axes.plot(*zip(*series), marker="o", label=method)
    for (method, _), loss in points.items():
        if method == REAL_ONLY:
            axes.axhline(loss, color="grey", linestyle="--", label=f"real only ({loss:.3f})")
    g_axis(axes, [G for method, G in points if method != REAL_ONLY])
    axes.set(xlabel="generations per document G", ylabel=LOSS_KEYS[key])
    axes.legend()
    _save(figure, path)
    return True


def position_curves(best: dict[tuple[str, int], RunRecord], root: Path) -> dict[str, tuple[str, PositionCurve]]:
    """Label -> (run, loss-by-position curve) of each method's best run at its largest G that has a curve, read
    (and so checked) before anything is drawn."""
    chosen: dict[str, RunRecord] = {}
    for (method, _), run in sorted(best.items()):
        if run.loss_by_position:
            chosen[method] = run
    return {(f"{method} G={run.generations}" if method != REAL_ONLY else "real only"):
            (run.run, load_curve(root / run.loss_by_position)) for method, run in chosen.items()}


def plot_loss_by_position(curves: dict[str, tuple[str, PositionCurve]], path: Path) -> None:
    """The curves of `position_curves`, each with its band over documents."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for label, (_, curve) in curves.items():
        draw_curve(axes, curve, label)
    axes.set(xlabel="token position in the document", ylabel="loss (long documents)")
    axes.legend(fontsize="x-small")
    _save(figure, path)


def plot_data_law(law, points: list[dict], rows: list[dict], path: Path) -> None:
    """Loss vs real tokens: the real-only runs (every seed, and their mean), the fitted law through them, and each
    method placed on it: its loss at the real tokens it used, and a dashed line to where the law reaches that loss
    (the ratio of the two token counts is its data efficiency)."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for point in points:
        axes.scatter([point["real_tokens"]] * len(point["losses"]), point["losses"], color="grey", s=10, alpha=0.6)
    axes.scatter([p["real_tokens"] for p in points], [p["loss"] for p in points], color="black", zorder=3,
                 label="real only (seed mean)")
    reach = [row["data_efficiency"] * row["real_tokens"] for row in rows
             if row["method"] != REAL_ONLY and math.isfinite(row["data_efficiency"])]
    tokens = [p["real_tokens"] for p in points] + reach
    grid = np.geomspace(min(tokens) / 1.5, max(tokens) * 1.5, 200)
    axes.plot(grid, law(grid), color="black", linewidth=1,
              label=f"L(D) = {law.A:.3g} / D^{law.alpha:.3f} + {law.C:.3f}")
    for row in rows:
        if row["method"] == REAL_ONLY:
            continue
        marker = axes.scatter([row["real_tokens"]], [row["loss"]], zorder=4, marker="D",
                              label=f"{row['method']} G={row['generations']}: "
                                    + (f"{row['data_efficiency']:.2f}x" if math.isfinite(row["data_efficiency"])
                                       else "below the law's asymptote"))
        if math.isfinite(row["data_efficiency"]):
            reached = row["data_efficiency"] * row["real_tokens"]
            axes.plot([row["real_tokens"], reached], [row["loss"]] * 2, linestyle="--",
                      color=marker.get_facecolor()[0])
            axes.scatter([reached], [row["loss"]], marker="|", s=200, color=marker.get_facecolor()[0])
    axes.set_xscale("log")
    axes.set(xlabel="real tokens D", ylabel="i.i.d. loss", title="Loss vs real tokens")
    axes.legend(fontsize="x-small")
    _save(figure, path)
