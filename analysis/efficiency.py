"""`megadoc efficiency`: the real-only data law, each method's data efficiency (with a bootstrap interval over
seeds), the convex-tuning certificate and the loss-vs-parameters and loss-vs-ensemble-size asymptotes, from the runs
registry (the laws are in `laws`, the certificate in `certificate`); writes efficiency.csv / .md / .png, to_run.csv
and law.json.
"""

import argparse
import csv
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from megadoc.analysis.certificate import GRIDS, LABELS, Certificate, certify, config_of, show, sweep_name
from megadoc.analysis.laws import (CONFIDENCE, PowerLaw, best_runs, bootstrap_efficiency, efficiencies, ensemble_laws,
                                   one_size, parameter_laws, r_squared, real_only_law)
from megadoc.analysis.plots import plot_efficiency
from megadoc.errors import MegadocError
from megadoc.files import atomic_write, check_output_dir
from megadoc.training.registry import REAL_ONLY, read_registry


@dataclass(frozen=True)
class EfficiencyConfig:
    """What `megadoc efficiency` reads and how it fits."""

    registry: str
    """Runs registry CSV."""
    output_dir: str
    """Writes efficiency.csv, efficiency.md, efficiency.png, to_run.csv and law.json here."""
    loss_key: str = "iid_loss"
    """Registry column whose best value per group is the method's loss."""
    alpha: float | None = None
    """Anchor the real-only law with this exponent instead of fitting it."""
    asymptote: float | None = None
    """Anchor the real-only law with this asymptote C instead of fitting it."""
    params: int | None = None
    """Model size whose runs are compared; None: the registry's only size."""
    grids: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(GRIDS))
    """Grids the certificate steps over."""

    def __post_init__(self):
        check_anchor(self.alpha, self.asymptote)

    @property
    def anchored(self) -> bool:
        return self.alpha is not None and self.asymptote is not None


def check_anchor(alpha: float | None, asymptote: float | None) -> None:
    """An anchored law L(D) = A / D^alpha + C needs both, a decaying power (alpha > 0) and a loss floor C >= 0."""
    if (alpha is None) != (asymptote is None):
        raise MegadocError("--alpha and --asymptote go together")
    if alpha is not None and not (0 < alpha < math.inf and 0 <= asymptote < math.inf):
        raise MegadocError(f"--alpha {alpha:g} --asymptote {asymptote:g}: the law needs alpha > 0 (the loss falls "
                           "with data) and a finite asymptote >= 0")


@dataclass(frozen=True)
class Analysis:
    """Everything `megadoc efficiency` finds, for its files and for `megadoc report`."""

    law: PowerLaw
    """The real-only data law L(D)."""
    r2: float | None
    """R^2 of the fitted law over the real-only points (None when anchored)."""
    real_points: list[dict]
    """The real-only budgets the law rests on: real_tokens, loss (seed mean), loss_sd, seeds, losses (each seed's)."""
    rows: list[dict]
    """One per (method, G, real tokens) group: its best configuration, loss, data efficiency and interval."""
    certificates: list[Certificate | str]
    """Each row's convex-tuning certificate, or why there is none (off the grid)."""
    resamples: int
    """Bootstrap resamples behind the intervals (0: one seed per configuration, no interval)."""
    ensembles: list[dict]
    """Loss-vs-K fits (`laws.ensemble_laws`)."""


def efficiency_text(row: dict) -> str:
    """A row's data efficiency as tables write it: 1.23x, with its interval when there is one."""
    value = row["data_efficiency"]
    if math.isinf(value):
        return "beyond the law (loss below its asymptote)"
    interval = (f" [{row['de_low']:.2f}, " + (f"{row['de_high']:.2f}]" if math.isfinite(row["de_high"]) else "inf]")
                if row.get("de_low") is not None else "")
    return f"{value:.2f}x{interval}"


def analyse(config: EfficiencyConfig) -> Analysis:
    """The law, one row per group (best configuration, loss over seeds, data efficiency with its bootstrap
    interval, certificate) and the ensemble asymptotes."""
    runs = one_size(read_registry(config.registry), config.params)
    best = best_runs(runs, config.loss_key)
    if not best:
        raise MegadocError(f"{config.registry}: no run has a {config.loss_key}")
    points = {group: result.loss for group, result in best.items()}
    law = real_only_law(points, config.alpha, config.asymptote)
    real = [(group[2], result) for group, result in best.items() if group[0] == REAL_ONLY]
    r2 = None if config.anchored else r_squared(law, [d for d, _ in real], [result.loss for _, result in real])
    intervals, resamples = bootstrap_efficiency(runs, config.loss_key, config.alpha, config.asymptote)
    values = efficiencies(points, law)
    rows, certificates = [], []
    for group, result in best.items():
        method, G, real_tokens = group
        run = result.run
        try:
            certificate = certify([r for r in runs if (r.method, r.generations, r.real_tokens) == group], run,
                                  config.loss_key, config.grids)
        except MegadocError as error:
            certificate = f"off the grid ({error})"
        low, high = intervals.get(group, (None, None))
        rows.append({"method": method, "generations": G, "real_tokens": real_tokens, "run": run.run,
                     "loss": result.loss, "loss_sd": result.spread, "seeds": len(result.runs),
                     "data_efficiency": round(values[group], 4) if math.isfinite(values[group]) else math.inf,
                     "de_low": None if low is None else round(low, 4),
                     "de_high": None if high is None else round(high, 4),
                     "certified": isinstance(certificate, Certificate) and certificate.certified,
                     **{axis: f"{value:g}" for axis, value in config_of(run).items()}})
        certificates.append(certificate)
    real_points = [{"real_tokens": d, "loss": result.loss, "loss_sd": result.spread, "seeds": len(result.runs),
                    "losses": result.losses} for d, result in real]
    return Analysis(law, r2, real_points, rows, certificates, resamples, ensemble_laws(runs, config.loss_key))


def law_line(analysis: Analysis, anchored: bool) -> str:
    """The real-only law as the report and efficiency.md print it, with its fit quality and the interval's source."""
    law = analysis.law
    how = ("anchored (alpha and C given) at the best real-only run" if anchored
           else f"fitted to {len(analysis.real_points)} real-token budgets, R^2 = {analysis.r2:.4f}")
    interval = (f"; data-efficiency intervals: {CONFIDENCE:.0%} bootstrap over seeds ({analysis.resamples} resamples "
                "with a law)" if analysis.resamples else "; one seed per configuration: no interval")
    return f"Real-only law L(D) = {law.A:.4g} / D^{law.alpha:.4f} + {law.C:.4f}, {how}{interval}."


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def fit_lines(laws: list[dict], title: str, x: str) -> list[str]:
    """Markdown table of power-law fits over model sizes or ensemble sizes (empty when there is none)."""
    if not laws:
        return []
    lines = [f"| method | G | real tokens | {'run' if 'run' in laws[0] else 'sizes'} | points | fit |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {law['method']} | {law['generations']} | {law['real_tokens']} | {law.get('run', law['sizes'])} | "
              f"{law['sizes']} | " + (law["error"] if "error" in law else
                                      f"{law['A']:.3g} / {x}^{law['alpha']:.2f} + **{law['C']:.4f}**") + " |"
              for law in laws]
    return [f"## {title}", "", *lines, ""]


def parameter_lines(laws: list[dict]) -> list[str]:
    return fit_lines(laws, "Loss vs parameters (asymptotes, N in billions)", "N")


def ensemble_lines(laws: list[dict]) -> list[str]:
    return fit_lines(laws, "Loss vs ensemble size K (logit averaging; C = the K -> infinity asymptote)", "K")


def _markdown(analysis: Analysis, laws: list[dict], config: EfficiencyConfig) -> str:
    lines = [f"# Data efficiency ({config.loss_key})", "", law_line(analysis, config.anchored), "",
             "| method | G | real tokens | best run | seeds | loss | data efficiency | locally optimal |",
             "|---|---|---|---|---|---|---|---|"]
    for row, certificate in zip(analysis.rows, analysis.certificates):
        spread = f" +/- {row['loss_sd']:.4f}" if row["loss_sd"] is not None else ""
        optimal = "yes" if row["certified"] else "no" if isinstance(certificate, Certificate) else "off grid"
        lines.append(f"| {row['method']} | {row['generations']} | {row['real_tokens']} | {row['run']} | "
                     f"{row['seeds']} | {row['loss']:.4f}{spread} | {efficiency_text(row)} | {optimal} |")
    lines += ["", "## Convex-tuning certificate", ""]
    for row, certificate in zip(analysis.rows, analysis.certificates):
        if not isinstance(certificate, Certificate):
            lines.append(f"- {row['method']} G={row['generations']}: {row['run']}: {certificate}")
            continue
        best = certificate.best
        pending = sum(loss is None for _, loss in certificate.neighbours) - len(certificate.to_run)
        state = ("locally optimal" if certificate.certified
                 else f"not yet: {len(certificate.to_run)} neighbour(s) to run, {pending} pending")
        edge = f"; at the grid edge in {', '.join(certificate.edges)}" if certificate.edges else ""
        lines.append(f"- {best.method} G={best.generations}: {best.run} ({show(config_of(best))}): {state}{edge}")
        lines += [f"  - {show(neighbour)}: " + (f"{loss:.4f}" if loss is not None else
                                                  "not run" if neighbour in certificate.to_run else "pending")
                  for neighbour, loss in certificate.neighbours]
    lines += ["", *parameter_lines(laws), *ensemble_lines(analysis.ensembles)]
    return "\n".join(lines)


def write_outputs(config: EfficiencyConfig) -> Analysis:
    out = check_output_dir(config.output_dir, "--output-dir")
    analysis = analyse(config)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "efficiency.csv", analysis.rows,
               ["method", "generations", "real_tokens", "run", "seeds", "loss", "loss_sd", "data_efficiency",
                "de_low", "de_high", "certified", *GRIDS])
    certified = [c for c in analysis.certificates if isinstance(c, Certificate)]
    to_run = [{"method": c.best.method, "generations": c.best.generations, "real_tokens": c.best.real_tokens,
               "recipe": c.best.recipe, **{axis: f"{value:g}" for axis, value in n.items()}, "run": sweep_name(c.best, n)}
              for c in certified for n in c.to_run]
    _write_csv(out / "to_run.csv", to_run, ["method", "generations", "real_tokens", "recipe", *GRIDS, "run"])
    laws = parameter_laws(read_registry(config.registry), config.loss_key)
    with atomic_write(out / "efficiency.md", "w") as handle:
        handle.write(_markdown(analysis, laws, config))
    with atomic_write(out / "law.json") as handle:
        handle.write(orjson.dumps({"loss_key": config.loss_key, "data": asdict(analysis.law), "r2": analysis.r2,
                                   "real_points": analysis.real_points, "resamples": analysis.resamples,
                                   "parameters": laws, "ensembles": analysis.ensembles},
                                  option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    plot_efficiency(analysis.rows, out / "efficiency.png")
    return analysis


def _grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(sorted(float(value) for value in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="runs registry CSV (megadoc.training.registry)")
    parser.add_argument("--output-dir", required=True, help="where the table, plot, law and to_run.csv go")
    parser.add_argument("--loss-key", default="iid_loss", choices=("iid_loss", "long_loss", "short_loss"),
                        help="registry column to rank runs by and convert to data efficiency")
    parser.add_argument("--params", type=int, default=None,
                        help="compare the runs of this model size (needed when the registry holds several)")
    parser.add_argument("--alpha", type=float, default=None, help="anchor the real-only law with this exponent "
                                                                  "(with --asymptote) instead of fitting it")
    parser.add_argument("--asymptote", type=float, default=None, help="the anchored law's asymptote C")
    for axis, flag in (("real_epochs", "epochs"), ("synthetic_fraction", "fraction"), ("lr", "lr"),
                       ("weight_decay", "wd")):
        parser.add_argument(f"--{flag}-grid", type=_grid, default=GRIDS[axis], dest=f"grid_{axis}",
                            help=f"comma-separated {LABELS[axis]} grid for the certificate "
                                 f"(default {','.join(map(str, GRIDS[axis]))})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = EfficiencyConfig(registry=args.registry, output_dir=args.output_dir, loss_key=args.loss_key,
                              alpha=args.alpha, asymptote=args.asymptote, params=args.params,
                              grids={axis: getattr(args, f"grid_{axis}") for axis in GRIDS})
    analysis = write_outputs(config)
    print(law_line(analysis, config.anchored))
    for row in analysis.rows:
        print(f"{row['method']:>10} G={row['generations']:<3} D={row['real_tokens']:<12} loss {row['loss']:.4f} "
              f"({row['seeds']} seed(s))  {efficiency_text(row)}  "
              f"{'certified' if row['certified'] else 'not certified'}")
    for law in analysis.ensembles:
        if "C" in law:
            print(f"{law['method']:>10} G={law['generations']:<3} ensembles K -> infinity: loss {law['C']:.4f}")
    print(f"megadoc efficiency: wrote {os.path.join(args.output_dir, 'efficiency.md')}")
    return 0
