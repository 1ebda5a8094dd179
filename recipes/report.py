"""`megadoc report`: the paper's figures and tables from the runs registry, as Markdown plus PNGs.

Figures: loss vs G per method with the real-only level (i.i.d., and long-document loss when recorded), loss by
token position of each method's best run at its largest G (plus real-only), and data efficiency vs G. Each point is
the best evaluated run of its (method, G) group, as the paper reports the best tuned run per stream (§6).

Only one real-token budget is drawn: `--real-tokens`, or by default the largest budget a synthetic run used; the
real-only law behind data efficiency still uses every budget in the registry. When no law can be had (too few
real-only budgets and no --alpha/--asymptote), the report says why and draws the rest.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError
from megadoc_recipes.efficiency import (EfficiencyConfig, analyse, best_runs, g_axis, one_size, parameter_laws,
                                       parameter_lines, plot_efficiency)
from megadoc_recipes.metrics import load_curve
from megadoc_recipes.registry import REAL_ONLY, RunRecord, read_registry

LOSS_KEYS = {"iid_loss": "i.i.d. loss", "long_loss": "long-document loss", "short_loss": "short-document loss"}


@dataclass(frozen=True)
class ReportConfig:
    """What `megadoc report` reads and draws."""

    registry: str
    """Runs registry CSV."""
    output_dir: str
    """Writes report.md and the PNGs here."""
    params: int | None = None
    """Model size to draw (needed when the registry holds several); loss-vs-N fits use every size."""
    real_tokens: int | None = None
    """Real-token budget to draw; None: the largest budget of any synthetic run."""
    alpha: float | None = None
    """Anchor the real-only law with this exponent (see megadoc efficiency)."""
    asymptote: float | None = None
    """Anchor the real-only law with this asymptote."""


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


def budget(runs: list[RunRecord], requested: int | None) -> int:
    """The real-token budget the report draws."""
    synthetic = [run.real_tokens for run in runs if run.method != REAL_ONLY]
    chosen = requested if requested is not None else max(synthetic, default=None)
    if chosen is None:
        raise MegadocError("the registry has no synthetic run; pass --real-tokens to draw real-only runs")
    if not any(run.real_tokens == chosen for run in runs):
        raise MegadocError(f"no run has real_tokens = {chosen}")
    return chosen


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
        axes.plot(*zip(*points), label=f"{method} G={run.G}" if method != REAL_ONLY else "real only")
    axes.set(xlabel="token position", ylabel="loss (long documents)")
    axes.legend()
    _save(figure, path)
    return [run.run for run in chosen.values()]


def _table(best: dict[tuple[str, int], RunRecord], efficiency: dict[tuple[str, int], str]) -> list[str]:
    lines = ["| method | G | best run | E | r | lr | wd | i.i.d. loss | long loss | short loss | data efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, G), run in best.items():
        cells = [method, G, run.run, f"{run.E:g}", "" if run.r is None else f"{run.r:g}", f"{run.lr:g}",
                 f"{run.wd:g}", *("" if value is None else f"{value:.4f}"
                                  for value in (run.iid_loss, run.long_loss, run.short_loss)),
                 efficiency.get((method, G), "")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def write_report(config: ReportConfig) -> Path:
    registered = read_registry(config.registry)
    runs = one_size(registered, config.params)
    tokens = budget(runs, config.real_tokens)
    drawn = [run for run in runs if run.real_tokens == tokens]
    best = {(method, G): run for (method, G, _), run in best_runs(drawn, "iid_loss").items()}
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# megadoc report: {Path(config.registry).name}", "",
             f"{len(registered)} runs registered; best run per (method, G) at {tokens} real tokens, by i.i.d. loss.",
             ""]
    try:
        law, rows, _ = analyse(EfficiencyConfig(config.registry, str(out), alpha=config.alpha,
                                                asymptote=config.asymptote, params=config.params))
        efficiency = {(row["method"], row["G"]): f"{row['data_efficiency']:.2f}x" for row in rows
                      if row["real_tokens"] == tokens}
        plot_efficiency([row for row in rows if row["real_tokens"] == tokens], out / "efficiency.png")
        law_line = f"Real-only law: L(D) = {law.A:.4g} / D^{law.alpha:.4f} + {law.C:.4f}. ![](efficiency.png)"
    except MegadocError as error:
        efficiency, law_line = {}, f"No data efficiency: {error}."
    lines += _table(best, efficiency) + ["", law_line, ""] + parameter_lines(parameter_laws(registered, "iid_loss"))
    for key in LOSS_KEYS:
        name = f"loss_vs_G_{key.removesuffix('_loss')}.png"
        key_best = {(m, G): run for (m, G, _), run in best_runs(drawn, key).items()}
        if plot_loss_vs_g(key_best, key, out / name):
            lines += [f"## {LOSS_KEYS[key]} vs G", "", f"![]({name})", ""]
    curves = plot_loss_by_position(best, Path(config.registry).resolve().parent, out / "loss_by_position.png")
    if curves:
        lines += ["## Loss by token position", "", f"Runs: {', '.join(curves)}.", "", "![](loss_by_position.png)", ""]
    with atomic_write(out / "report.md", "w") as handle:
        handle.write("\n".join(lines))
    return out / "report.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="runs registry CSV (megadoc_recipes.registry)")
    parser.add_argument("--output-dir", required=True, help="writes report.md and its PNGs here")
    parser.add_argument("--params", type=int, default=None,
                        help="model size to draw (needed when the registry holds several)")
    parser.add_argument("--real-tokens", type=int, default=None,
                        help="real-token budget to draw (default: the largest a synthetic run used)")
    parser.add_argument("--alpha", type=float, default=None, help="anchor the real-only law (see megadoc efficiency)")
    parser.add_argument("--asymptote", type=float, default=None, help="the anchored law's asymptote C")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if (args.alpha is None) != (args.asymptote is None):
        raise MegadocError("--alpha and --asymptote go together")
    path = write_report(ReportConfig(registry=args.registry, output_dir=args.output_dir, params=args.params,
                                     real_tokens=args.real_tokens, alpha=args.alpha, asymptote=args.asymptote))
    print(f"megadoc report: wrote {path}")
    return 0
