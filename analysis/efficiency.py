"""`megadoc efficiency`: the real-only data law, each method's data efficiency, the convex-tuning certificate and
the loss-vs-parameters asymptotes, from the runs registry (the laws are in `laws`, the certificate in
`certificate`); writes efficiency.csv / .md / .png, to_run.csv and law.json.
"""

import argparse
import csv
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from megadoc.analysis.certificate import GRIDS, LABELS, Certificate, certify, config_of, show, sweep_name
from megadoc.analysis.laws import (PowerLaw, best_runs, data_efficiency, one_size, parameter_laws, real_only_law)
from megadoc.analysis.plots import plot_efficiency
from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.training.registry import read_registry


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


def analyse(config: EfficiencyConfig) -> tuple[PowerLaw, list[dict], list[Certificate]]:
    """Law, one table row per group (best run, loss, data efficiency, certified) and the certificates."""
    runs = one_size(read_registry(config.registry), config.params)
    best = best_runs(runs, config.loss_key)
    if not best:
        raise MegadocError(f"{config.registry}: no run has a {config.loss_key}")
    law = real_only_law(best, config.loss_key, config.alpha, config.asymptote)
    rows, certificates = [], []
    for (method, G, real_tokens), run in best.items():
        group = [other for other in runs if (other.method, other.generations, other.real_tokens) == (method, G, real_tokens)]
        certificate = certify(group, run, config.loss_key, config.grids)
        loss = getattr(run, config.loss_key)
        try:
            efficiency = data_efficiency(law, loss, real_tokens)
        except MegadocError as error:
            raise MegadocError(f"run {run.run!r}: {error}") from None
        rows.append({"method": method, "generations": G, "real_tokens": real_tokens, "run": run.run, "loss": loss,
                     "data_efficiency": round(efficiency, 4),
                     "certified": certificate.certified,
                     **{axis: f"{value:g}" for axis, value in config_of(run).items()}})
        certificates.append(certificate)
    return law, rows, certificates


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with atomic_write(path, "w") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def parameter_lines(laws: list[dict]) -> list[str]:
    """Markdown table of the loss-vs-N fits (empty when no group has enough model sizes)."""
    if not laws:
        return []
    lines = ["| method | G | real tokens | sizes | fit (N in billions) |", "|---|---|---|---|---|"]
    lines += [f"| {law['method']} | {law['generations']} | {law['real_tokens']} | {law['sizes']} | "
              + (law["error"] if "error" in law else f"{law['A']:.3g} / N^{law['alpha']:.2f} + **{law['C']:.3f}**")
              + " |" for law in laws]
    return ["## Loss vs parameters (asymptotes)", "", *lines, ""]


def _markdown(law: PowerLaw, rows: list[dict], certificates: list[Certificate], laws: list[dict],
              config: EfficiencyConfig) -> str:
    how = "anchored" if config.alpha is not None and config.asymptote is not None else "fitted"
    lines = [f"# Data efficiency ({config.loss_key})", "",
             f"Real-only law ({how}): L(D) = {law.A:.4g} / D^{law.alpha:.4f} + {law.C:.4f}", "",
             "| method | G | real tokens | best run | loss | data efficiency | locally optimal |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {row['method']} | {row['generations']} | {row['real_tokens']} | {row['run']} | {row['loss']:.4f} | "
              f"{row['data_efficiency']:.2f}x | {'yes' if row['certified'] else 'no'} |" for row in rows]
    lines += ["", "## Convex-tuning certificate", ""]
    for certificate in certificates:
        best = certificate.best
        pending = sum(loss is None for _, loss in certificate.neighbours) - len(certificate.to_run)
        state = ("locally optimal" if certificate.certified
                 else f"not yet: {len(certificate.to_run)} neighbour(s) to run, {pending} pending")
        edge = f"; at the grid edge in {', '.join(certificate.edges)}" if certificate.edges else ""
        lines.append(f"- {best.method} G={best.generations}: {best.run} ({show(config_of(best))}): {state}{edge}")
        lines += [f"  - {show(neighbour)}: " + (f"{loss:.4f}" if loss is not None else
                                                  "not run" if neighbour in certificate.to_run else "pending")
                  for neighbour, loss in certificate.neighbours]
    lines += ["", *parameter_lines(laws)]
    return "\n".join(lines)


def write_outputs(config: EfficiencyConfig) -> list[dict]:
    law, rows, certificates = analyse(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "efficiency.csv", rows,
               ["method", "generations", "real_tokens", "run", "loss", "data_efficiency", "certified", *GRIDS])
    to_run = [{"method": c.best.method, "generations": c.best.generations, "real_tokens": c.best.real_tokens,
               "recipe": c.best.recipe, **{axis: f"{value:g}" for axis, value in n.items()}, "run": sweep_name(c.best, n)}
              for c in certificates for n in c.to_run]
    _write_csv(out / "to_run.csv", to_run, ["method", "generations", "real_tokens", "recipe", *GRIDS, "run"])
    laws = parameter_laws(read_registry(config.registry), config.loss_key)
    with atomic_write(out / "efficiency.md", "w") as handle:
        handle.write(_markdown(law, rows, certificates, laws, config))
    with atomic_write(out / "law.json") as handle:
        handle.write(orjson.dumps({"loss_key": config.loss_key, "data": asdict(law), "parameters": laws},
                                  option=orjson.OPT_INDENT_2))
    plot_efficiency(rows, out / "efficiency.png")
    return rows


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
    if (args.alpha is None) != (args.asymptote is None):
        raise MegadocError("--alpha and --asymptote go together")
    config = EfficiencyConfig(registry=args.registry, output_dir=args.output_dir, loss_key=args.loss_key,
                              alpha=args.alpha, asymptote=args.asymptote, params=args.params,
                              grids={axis: getattr(args, f"grid_{axis}") for axis in GRIDS})
    rows = write_outputs(config)
    for row in rows:
        print(f"{row['method']:>10} G={row['generations']:<3} loss {row['loss']:.4f}  {row['data_efficiency']:.2f}x  "
              f"{'certified' if row['certified'] else 'not certified'}")
    print(f"megadoc efficiency: wrote {os.path.join(args.output_dir, 'efficiency.md')}")
    return 0
