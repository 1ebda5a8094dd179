"""`megadoc efficiency`: power-law fits, data efficiency, and the convex-tuning certificate, from the runs registry.

Data efficiency follows Kim et al. 2025 ("Pre-training under infinite compute"; PAPER.md §6, Appendix A): fit the
real-only data-scaling law L(D) = A / D^alpha + C, invert it, D(L) = (A / (L - C))^(1/alpha), and report
D(L_method) / D_real: how many real tokens the real-only recipe would need to reach the method's best loss, over the
real tokens the method saw. Kim et al. divide by D(L_baseline) instead; the two agree when the law passes through
the real-only run at D_real, which is how an anchored law (below) is built.

The law is fitted when real-only runs exist at >= 4 real-token budgets (3 parameters plus one point, so the
residual says something). With fewer, pass `--alpha` and `--asymptote` (the paper's reverse-engineered values are
0.235 and 1.93) and A is anchored at the best real-only run.

Loss-vs-parameters fits (the paper's asymptote fits, N in billions) are made for every (method, G, real tokens)
group run at >= 4 model sizes. Everything else compares runs of one model size (`--params`, needed when the
registry holds several).

The certificate is the paper's "convex tuning" check: the best run of a (method, G, real tokens) group is locally
optimal when every +/-1 grid step neighbour in E, r, lr and wd has been run and none is better. Neighbours not yet
in the registry go to to_run.csv, named as the sweep helper (recipes/sweep.py) names runs. An optimum on the grid's
edge is flagged, since the grid may need extending there.
"""

import argparse
import csv
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError
from megadoc_recipes.models import MODELS
from megadoc_recipes.registry import REAL_ONLY, RunRecord, read_registry
from megadoc_recipes.sweep import PAPER_GRID, Run

MIN_FIT_POINTS = 4
# The sweep helper's grid (the paper's final grid, PAPER.md §3), under the registry's column names.
GRIDS: dict[str, tuple[float, ...]] = {"E": PAPER_GRID.real_epochs, "r": PAPER_GRID.synthetic_ratio,
                                       "lr": PAPER_GRID.lr, "wd": PAPER_GRID.weight_decay}


@dataclass(frozen=True)
class PowerLaw:
    """L(x) = A / x^alpha + C."""

    A: float
    """Scale."""
    alpha: float
    """Exponent."""
    C: float
    """Asymptote: the loss as x -> infinity."""

    def __call__(self, x):
        return self.A / np.power(x, self.alpha) + self.C

    def invert(self, loss: float) -> float:
        """The x at which the law reaches `loss`; no x reaches a loss at or below the asymptote."""
        if loss <= self.C:
            raise MegadocError(f"loss {loss:.4f} is at or below the law's asymptote {self.C:.4f}: no data size "
                               "reaches it")
        return (self.A / (loss - self.C)) ** (1 / self.alpha)


def r_squared(law: PowerLaw, x, y) -> float:
    y = np.asarray(y, dtype=float)
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - law(np.asarray(x, dtype=float))) ** 2).sum()) / total if total > 0 else 0.0


def fit_power_law(x, y, min_r2: float = 0.95) -> PowerLaw:
    """Least-squares fit with A, alpha, C >= 0, refused when too few points, no convergence, or a poor fit.

    x is scaled by max(x) before fitting (tokens span 1e8..1e10, which conditions the solver badly); the start
    point is the paper's p0 = [range(y) * max(x)^0.5, 0.5, min(y)], expressed in the scaled units.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(np.unique(x)) < MIN_FIT_POINTS:
        raise MegadocError(f"a power-law fit needs >= {MIN_FIT_POINTS} distinct x values, got {len(np.unique(x))}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all()):
        raise MegadocError("a power-law fit needs finite values and x > 0")
    scale = x.max()
    p0 = [max(np.ptp(y), 1e-6), 0.5, y.min()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, alpha, c), _ = curve_fit(lambda u, a, b, c: a / u ** b + c, x / scale, y, p0=p0,
                                         bounds=([0, 0, 0], [np.inf, np.inf, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError) as error:
        raise MegadocError(f"the power-law fit did not converge ({error})") from None
    law = PowerLaw(A=float(a * scale ** alpha), alpha=float(alpha), C=float(c))
    fit = r_squared(law, x, y)
    if not fit >= min_r2 or law.alpha == 0:
        raise MegadocError(f"the points do not follow A / x^alpha + C (R^2 = {fit:.3f} < {min_r2}, "
                           f"alpha = {law.alpha:.3g})")
    return law


def anchored_law(alpha: float, asymptote: float, tokens: float, loss: float) -> PowerLaw:
    """The law of exponent `alpha` and asymptote `asymptote` through one real-only point (tokens, loss)."""
    if loss <= asymptote:
        raise MegadocError(f"real-only loss {loss:.4f} is at or below --asymptote {asymptote}")
    return PowerLaw(A=(loss - asymptote) * tokens ** alpha, alpha=alpha, C=asymptote)


def data_efficiency(law: PowerLaw, loss: float, real_tokens: float) -> float:
    """Real tokens the real-only law needs to reach `loss`, per real token actually used."""
    return law.invert(loss) / real_tokens


Group = tuple[str, int, int]  # (method, G, real_tokens)


def evaluated(runs: list[RunRecord], loss_key: str) -> list[RunRecord]:
    return [run for run in runs if getattr(run, loss_key) is not None]


def best_runs(runs: list[RunRecord], loss_key: str) -> dict[Group, RunRecord]:
    """The lowest-loss evaluated run of each (method, G, real tokens) group, groups sorted."""
    best: dict[Group, RunRecord] = {}
    for run in evaluated(runs, loss_key):
        key = (run.method, run.G, run.real_tokens)
        if key not in best or getattr(run, loss_key) < getattr(best[key], loss_key):
            best[key] = run
    return dict(sorted(best.items()))


def one_size(runs: list[RunRecord], params: int | None) -> list[RunRecord]:
    """The runs of one model size: `params`, or the registry's only size; best runs of mixed sizes mean nothing."""
    if params is not None:
        chosen = [run for run in runs if run.params == params]
        if not chosen:
            raise MegadocError(f"no run has params = {params}")
        return chosen
    sizes = sorted({run.params for run in runs}, key=lambda size: size or 0)
    if len(sizes) > 1:
        raise MegadocError(f"runs of several model sizes ({', '.join(map(str, sizes))}); pass --params")
    return runs


def parameter_laws(runs: list[RunRecord], loss_key: str) -> list[dict]:
    """L(N) = A / N^alpha + C (N in billions) for each (method, G, real tokens) group run at >= 4 model sizes."""
    by_size: dict[Group, dict[int, float]] = {}
    for run in evaluated(runs, loss_key):
        if run.params:
            sizes = by_size.setdefault((run.method, run.G, run.real_tokens), {})
            sizes[run.params] = min(sizes.get(run.params, np.inf), getattr(run, loss_key))
    laws = []
    for (method, G, real_tokens), sizes in sorted(by_size.items()):
        if len(sizes) < MIN_FIT_POINTS:
            continue
        row = {"method": method, "G": G, "real_tokens": real_tokens, "sizes": len(sizes)}
        try:
            row.update(asdict(fit_power_law(np.array(list(sizes)) / 1e9, list(sizes.values()))))
        except MegadocError as error:  # one group that does not fit should not hide the others
            row["error"] = str(error)
        laws.append(row)
    return laws


def real_only_law(best: dict[Group, RunRecord], loss_key: str, alpha: float | None,
                  asymptote: float | None) -> PowerLaw:
    """The real-only data-scaling law: fitted over real-token budgets, or anchored when alpha and C are given."""
    real = [run for (method, _, _), run in best.items() if method == REAL_ONLY]
    if not real:
        raise MegadocError(f"the registry has no evaluated real-only run (method {REAL_ONLY!r})")
    if alpha is not None and asymptote is not None:
        anchor = min(real, key=lambda run: getattr(run, loss_key))
        return anchored_law(alpha, asymptote, anchor.real_tokens, getattr(anchor, loss_key))
    if len(real) < MIN_FIT_POINTS:
        raise MegadocError(f"real-only runs exist at {len(real)} real-token budget(s); fitting the data-scaling law "
                           f"needs {MIN_FIT_POINTS}, or pass --alpha and --asymptote to anchor it")
    return fit_power_law([run.real_tokens for run in real], [getattr(run, loss_key) for run in real])


@dataclass
class Certificate:
    """Whether a group's best run is locally optimal on the grid."""

    best: RunRecord
    """The group's lowest-loss run."""
    neighbours: list[tuple[dict, float | None]] = field(default_factory=list)
    """Each +/-1 step neighbour (a config dict) with its loss, or None when it has no evaluated run yet."""
    to_run: list[dict] = field(default_factory=list)
    """Neighbours absent from the registry (those registered but unevaluated are pending, not to run)."""
    edges: list[str] = field(default_factory=list)
    """Axes on which the best run sits at the grid's edge (one side has no neighbour)."""

    @property
    def certified(self) -> bool:
        return all(loss is not None for _, loss in self.neighbours)


def _config(run: RunRecord) -> dict:
    return {axis: getattr(run, axis) for axis in GRIDS if getattr(run, axis) is not None}


def _show(config: dict) -> str:
    return " ".join(f"{axis}={value:g}" for axis, value in config.items())


def _grid_index(grid: tuple[float, ...], value: float, axis: str, run: str) -> int:
    for index, point in enumerate(grid):
        if math.isclose(point, value, rel_tol=1e-6):
            return index
    raise MegadocError(f"run {run!r}: {axis} = {value} is not on the grid {list(grid)}")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k], b[k], rel_tol=1e-6) for k in a)


def certify(group: list[RunRecord], best: RunRecord, loss_key: str,
            grids: dict[str, tuple[float, ...]] = GRIDS) -> Certificate:
    """The +/-1 grid step neighbours of `best` within `group`, and which of them still need a run."""
    certificate = Certificate(best=best)
    centre = _config(best)
    for axis, value in centre.items():
        index = _grid_index(grids[axis], value, axis, best.run)
        steps = [step for step in (index - 1, index + 1) if 0 <= step < len(grids[axis])]
        if len(steps) < 2:
            certificate.edges.append(axis)
        for step in steps:
            neighbour = {**centre, axis: grids[axis][step]}
            matches = [run for run in group if _same(_config(run), neighbour)]
            losses = [getattr(run, loss_key) for run in matches if getattr(run, loss_key) is not None]
            certificate.neighbours.append((neighbour, min(losses) if losses else None))
            if not matches:
                certificate.to_run.append(neighbour)
    return certificate


def sweep_name(best: RunRecord, neighbour: dict) -> str:
    """The sweep helper's name for a neighbour to run, when the best run's recipe is one of its models."""
    if best.recipe not in MODELS or not float(neighbour["E"]).is_integer():
        return ""
    stream = None if best.method == REAL_ONLY else f"{best.method}{best.G}"
    return Run(best.recipe, int(neighbour["E"]), neighbour["lr"], neighbour["wd"], stream,
               neighbour.get("r", 0.0)).name


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
        group = [other for other in runs if (other.method, other.G, other.real_tokens) == (method, G, real_tokens)]
        certificate = certify(group, run, config.loss_key, config.grids)
        loss = getattr(run, config.loss_key)
        try:
            efficiency = data_efficiency(law, loss, real_tokens)
        except MegadocError as error:
            raise MegadocError(f"run {run.run!r}: {error}") from None
        rows.append({"method": method, "G": G, "real_tokens": real_tokens, "run": run.run, "loss": loss,
                     "data_efficiency": round(efficiency, 4),
                     "certified": certificate.certified,
                     **{axis: f"{value:g}" for axis, value in _config(run).items()}})
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
    lines += [f"| {law['method']} | {law['G']} | {law['real_tokens']} | {law['sizes']} | "
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
    lines += [f"| {row['method']} | {row['G']} | {row['real_tokens']} | {row['run']} | {row['loss']:.4f} | "
              f"{row['data_efficiency']:.2f}x | {'yes' if row['certified'] else 'no'} |" for row in rows]
    lines += ["", "## Convex-tuning certificate", ""]
    for certificate in certificates:
        best = certificate.best
        pending = sum(loss is None for _, loss in certificate.neighbours) - len(certificate.to_run)
        state = ("locally optimal" if certificate.certified
                 else f"not yet: {len(certificate.to_run)} neighbour(s) to run, {pending} pending")
        edge = f"; at the grid edge in {', '.join(certificate.edges)}" if certificate.edges else ""
        lines.append(f"- {best.method} G={best.G}: {best.run} ({_show(_config(best))}): {state}{edge}")
        lines += [f"  - {_show(neighbour)}: " + (f"{loss:.4f}" if loss is not None else
                                                  "not run" if neighbour in certificate.to_run else "pending")
                  for neighbour, loss in certificate.neighbours]
    lines += ["", *parameter_lines(laws)]
    return "\n".join(lines)


def g_axis(axes, values) -> None:
    """A log2 G axis labelled with the G values themselves (2, 4, ... rather than 2^1, 2^2, ...)."""
    axes.set_xscale("log", base=2)
    ticks = sorted(set(values))
    axes.set_xticks(ticks, labels=[str(tick) for tick in ticks])
    axes.minorticks_off()


def plot_efficiency(rows: list[dict], path: Path) -> None:
    """Data efficiency vs G, one line per synthetic method, with the real-only level (1x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method in sorted({row["method"] for row in rows} - {REAL_ONLY}):
        points = sorted((row["G"], row["data_efficiency"]) for row in rows if row["method"] == method)
        axes.plot(*zip(*points), marker="o", label=method)
    axes.axhline(1.0, color="grey", linestyle="--", label="real only")
    g_axis(axes, [row["G"] for row in rows if row["method"] != REAL_ONLY])
    axes.set(xlabel="generations per document G", ylabel="data efficiency (x)")
    axes.legend()
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def write_outputs(config: EfficiencyConfig) -> list[dict]:
    law, rows, certificates = analyse(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "efficiency.csv", rows,
               ["method", "G", "real_tokens", "run", "loss", "data_efficiency", "certified", *GRIDS])
    to_run = [{"method": c.best.method, "G": c.best.G, "real_tokens": c.best.real_tokens, "recipe": c.best.recipe,
               **{axis: f"{value:g}" for axis, value in n.items()}, "run": sweep_name(c.best, n)}
              for c in certificates for n in c.to_run]
    _write_csv(out / "to_run.csv", to_run, ["method", "G", "real_tokens", "recipe", *GRIDS, "run"])
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
    parser.add_argument("--registry", required=True, help="runs registry CSV (megadoc_recipes.registry)")
    parser.add_argument("--output-dir", required=True, help="where the table, plot, law and to_run.csv go")
    parser.add_argument("--loss-key", default="iid_loss", choices=("iid_loss", "long_loss", "short_loss"),
                        help="registry column to rank runs by and convert to data efficiency")
    parser.add_argument("--params", type=int, default=None,
                        help="compare the runs of this model size (needed when the registry holds several)")
    parser.add_argument("--alpha", type=float, default=None, help="anchor the real-only law with this exponent "
                                                                  "(with --asymptote) instead of fitting it")
    parser.add_argument("--asymptote", type=float, default=None, help="the anchored law's asymptote C")
    for axis, flag in (("E", "epochs"), ("r", "ratio"), ("lr", "lr"), ("wd", "wd")):
        parser.add_argument(f"--{flag}-grid", type=_grid, default=GRIDS[axis], dest=f"grid_{axis}",
                            help=f"comma-separated {axis} grid for the certificate "
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
        print(f"{row['method']:>10} G={row['G']:<3} loss {row['loss']:.4f}  {row['data_efficiency']:.2f}x  "
              f"{'certified' if row['certified'] else 'not certified'}")
    print(f"megadoc efficiency: wrote {os.path.join(args.output_dir, 'efficiency.md')}")
    return 0
