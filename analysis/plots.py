"""The report's figures, as PNG files written atomically (matplotlib's Agg backend: no display needed)."""

from pathlib import Path

from megadoc.evaluation.metrics import load_curve
from megadoc.files import atomic_write
from megadoc.training.registry import REAL_ONLY, RunRecord

LOSS_KEYS = {"iid_loss": "i.i.d. loss", "long_loss": "long-document loss", "short_loss": "short-document loss"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        points = sorted((row["generations"], row["data_efficiency"]) for row in rows if row["method"] == method)
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


def plot_loss_by_position(best: dict[tuple[str, int], RunRecord], root: Path, path: Path) -> list[str]:
    """Loss by position of each method's best run at its largest G that has a curve; the runs drawn."""
    chosen: dict[str, RunRecord] = {}
    for (method, _), run in sorted(best.items()):
        if run.loss_by_position:
            chosen[method] = run
    if not chosen:
        return []
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method, run in chosen.items():
        curve = load_curve(root / run.loss_by_position)
        points = [(start + curve.bucket_size / 2, loss) for start, loss in zip(curve.bucket_starts, curve.loss)
                  if loss is not None]
        axes.plot(*zip(*points), label=f"{method} G={run.generations}" if method != REAL_ONLY else "real only")
    axes.set(xlabel="token position", ylabel="loss (long documents)")
    axes.legend()
    _save(figure, path)
    return [run.run for run in chosen.values()]
