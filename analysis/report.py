"""`megadoc report`: the paper's figures and tables from the runs registry, as Markdown plus PNGs.

The table gives each (method, G) group's best configuration (lowest i.i.d. loss averaged over its seeds, as the
paper reports the best tuned run per stream, §6), its losses (mean +/- standard deviation over seeds) and its data
efficiency with the bootstrap interval (`megadoc efficiency`). Figures: loss vs real tokens (the real-only runs at
every budget, the fitted law, each method placed on it), loss vs G per method with the real-only level (i.i.d., and
long- and short-document loss when recorded), loss by token position of each method's best run at its largest G
(with its band over documents), data efficiency vs G.

The table draws one real-token budget: `--real-tokens`, or by default the largest budget a synthetic run used; the
real-only law behind data efficiency uses every budget in the registry. When no law can be had (too few real-only
budgets and no --alpha/--asymptote), the report says why and draws the rest.
"""

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megadoc.analysis.efficiency import (EfficiencyConfig, analyse, check_anchor, efficiency_text, ensemble_lines,
                                         law_line, parameter_lines)
from megadoc.analysis.laws import Result, best_runs, one_size, parameter_laws
from megadoc.analysis.plots import (LOSS_KEYS, plot_data_law, plot_efficiency, plot_loss_by_position, plot_loss_vs_g,
                                    position_curves)
from megadoc.errors import MegadocError
from megadoc.files import atomic_write, check_output_dir
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

    def __post_init__(self):
        check_anchor(self.alpha, self.asymptote)


def budget(runs: list[RunRecord], requested: int | None) -> int:
    """The real-token budget the report draws."""
    synthetic = [run.real_tokens for run in runs if run.method != REAL_ONLY]
    chosen = requested if requested is not None else max(synthetic, default=None)
    if chosen is None:
        raise MegadocError("the registry has no synthetic run; pass --real-tokens to draw real-only runs")
    if not any(run.real_tokens == chosen for run in runs):
        raise MegadocError(f"no run has real_tokens = {chosen}")
    return chosen


def _mean(result: Result, key: str) -> str:
    """A loss column over the seeds: mean, and +/- the standard deviation when there are several."""
    values = [getattr(run, key) for run in result.runs if getattr(run, key) is not None]
    if not values:
        return ""
    spread = f" +/- {np.std(values, ddof=1):.4f}" if len(values) > 1 else ""
    return f"{np.mean(values):.4f}{spread}"


def _table(best: dict[tuple[str, int], Result], efficiency: dict[tuple[str, int], str]) -> list[str]:
    lines = ["| method | G | best run | seeds | E | r | lr | wd | i.i.d. loss | long loss | short loss | "
             "data efficiency |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, G), result in best.items():
        run = result.run
        cells = [method, G, run.run, len(result.runs), f"{run.real_epochs:g}",
                 "" if run.synthetic_fraction is None else f"{run.synthetic_fraction:g}", f"{run.lr:g}",
                 f"{run.weight_decay:g}", *(_mean(result, key) for key in LOSS_KEYS),
                 efficiency.get((method, G), "")]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def _law_section(config: ReportConfig, out: Path, tokens: int) -> tuple[dict, list[str]]:
    """(method, G) -> data efficiency text at the drawn budget, and the report's law section (its line, the
    budgets table, the loss-vs-real-tokens and efficiency plots), or why there is no law."""
    try:
        analysis = analyse(EfficiencyConfig(config.registry, str(out), alpha=config.alpha,
                                            asymptote=config.asymptote, params=config.params))
    except MegadocError as error:
        return {}, [f"No data efficiency: {error}.", ""]
    anchored = config.alpha is not None and config.asymptote is not None
    rows = [row for row in analysis.rows if row["real_tokens"] == tokens]
    efficiency = {(row["method"], row["generations"]): efficiency_text(row) for row in rows}
    plot_data_law(analysis.law, analysis.real_points, rows, out / "loss_vs_real_tokens.png")
    plot_efficiency(rows, out / "efficiency.png")
    lines = ["## Loss vs real tokens", "", law_line(analysis, anchored), "",
             "| real tokens D | seeds | i.i.d. loss | law |", "|---|---|---|---|"]
    lines += [f"| {p['real_tokens']} | {p['seeds']} | {p['loss']:.4f}"
              + (f" +/- {p['loss_sd']:.4f}" if p["loss_sd"] is not None else "")
              + f" | {float(analysis.law(p['real_tokens'])):.4f} |" for p in analysis.real_points]
    lines += ["", "![](loss_vs_real_tokens.png)", "", "## Data efficiency vs G", "", "![](efficiency.png)", "",
              *ensemble_lines(analysis.ensembles)]
    return efficiency, lines


def write_report(config: ReportConfig) -> Path:
    registered = read_registry(config.registry)
    runs = one_size(registered, config.params)
    tokens = budget(runs, config.real_tokens)
    drawn = [run for run in runs if run.real_tokens == tokens]
    best = {(method, G): result for (method, G, _), result in best_runs(drawn, "iid_loss").items()}
    out = check_output_dir(config.output_dir, "--output-dir")
    curves = position_curves({group: result.run for group, result in best.items()},
                             Path(config.registry).resolve().parent)
    out.mkdir(parents=True, exist_ok=True)
    efficiency, law_lines = _law_section(config, out, tokens)
    lines = [f"# megadoc report: {Path(config.registry).name}", "",
             f"{len(registered)} runs registered; best configuration per (method, G) at {tokens} real tokens, by "
             "i.i.d. loss averaged over its seeds (+/- their standard deviation). Data efficiency: the real tokens "
             "the real-only law needs to reach a run's loss, per real token the run used (the real-only row's own "
             "value says where its point lies against the fitted law: 1.00x on it).", "",
             *_table(best, efficiency), "", *law_lines, *parameter_lines(parameter_laws(registered, "iid_loss"))]
    for key in LOSS_KEYS:
        name = f"loss_vs_G_{key.removesuffix('_loss')}.png"
        key_best = {(m, G): result.run for (m, G, _), result in best_runs(drawn, key).items()}
        if plot_loss_vs_g(key_best, key, out / name):
            lines += [f"## {LOSS_KEYS[key]} vs G", "", f"![]({name})", ""]
    if curves:
        plot_loss_by_position(curves, out / "loss_by_position.png")
        lines += ["## Loss by token position", "",
                  f"Runs: {', '.join(run for run, _ in curves.values())}. Each point is the mean over its bucket's "
                  "tokens; the legend gives the documents and tokens behind each point, the band +/- 1.96 standard errors over documents.", "",
                  "![](loss_by_position.png)", ""]
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
    path = write_report(ReportConfig(registry=args.registry, output_dir=args.output_dir, params=args.params,
                                     real_tokens=args.real_tokens, alpha=args.alpha, asymptote=args.asymptote))
    print(f"megadoc report: wrote {path}")
    return 0
