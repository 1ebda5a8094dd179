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

from megadoc.analysis.efficiency import EfficiencyConfig, analyse, parameter_lines
from megadoc.analysis.laws import best_runs, one_size, parameter_laws
from megadoc.analysis.plots import LOSS_KEYS, plot_efficiency, plot_loss_by_position, plot_loss_vs_g
from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.training.registry import REAL_ONLY, RunRecord, read_registry


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


def budget(runs: list[RunRecord], requested: int | None) -> int:
    """The real-token budget the report draws."""
    synthetic = [run.real_tokens for run in runs if run.method != REAL_ONLY]
    chosen = requested if requested is not None else max(synthetic, default=None)
    if chosen is None:
        raise MegadocError("the registry has no synthetic run; pass --real-tokens to draw real-only runs")
    if not any(run.real_tokens == chosen for run in runs):
        raise MegadocError(f"no run has real_tokens = {chosen}")
    return chosen


def _table(best: dict[tuple[str, int], RunRecord], efficiency: dict[tuple[str, int], str]) -> list[str]:
    lines = ["| method | G | best run | E | r | lr | wd | i.i.d. loss | long loss | short loss | data efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, G), run in best.items():
        cells = [method, G, run.run, f"{run.real_epochs:g}",
                 "" if run.synthetic_fraction is None else f"{run.synthetic_fraction:g}", f"{run.lr:g}",
                 f"{run.weight_decay:g}", *("" if value is None else f"{value:.4f}"
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
        efficiency = {(row["method"], row["generations"]): f"{row['data_efficiency']:.2f}x" for row in rows
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
    parser.add_argument("--registry", required=True, help="runs registry CSV (megadoc.training.registry)")
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
