"""Power laws over the runs registry, and data efficiency (Kim et al. 2025, "Pre-training under infinite compute";
PAPER.md section 6 and Appendix A).

Fit the real-only data-scaling law L(D) = A / D^alpha + C, invert it, D(L) = (A / (L - C))^(1/alpha), and report
D(L_method) / D_real: how many real tokens the real-only recipe would need to reach the method's best loss, over the
real tokens the method saw. Kim et al. divide by D(L_baseline) instead; the two agree when the law passes through
the real-only run at D_real, which is how an anchored law (below) is built.

The law is fitted when real-only runs exist at >= 4 real-token budgets (3 parameters plus one point, so the
residual says something). With fewer, pass `--alpha` and `--asymptote` (the paper's reverse-engineered values are
0.235 and 1.93) and A is anchored at the best real-only run. Loss-vs-parameters fits (the paper's asymptote fits,
N in billions) are made for every (method, G, real tokens) group run at >= 4 model sizes, and loss-vs-K fits (the
paper's ensemble asymptotes) for every configuration evaluated as ensembles of >= 4 sizes K. Everything else
compares runs of one model size.

Runs that differ only in their seed are repeats of one configuration: a configuration's loss is the mean over its
seeds, and each group's best configuration is the one of lowest mean. Data efficiency's confidence interval is a
bootstrap over seeds: each configuration's seeds are resampled with replacement, the best configurations chosen
again, the law refitted and every efficiency recomputed; the interval is the 2.5th to 97.5th percentile. With one
seed per configuration there is nothing to resample and no interval.
"""

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from megadoc.errors import MegadocError
from megadoc.training.registry import REAL_ONLY, RunRecord

MIN_FIT_POINTS = 4


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


Group = tuple[str, int, int]  # (method, generations G, real_tokens)
BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95


def group_of(run: RunRecord) -> Group:
    return run.method, run.generations, run.real_tokens


@dataclass(frozen=True)
class Result:
    """One configuration's evaluated repeats (its seeds): the unit runs are compared by."""

    runs: tuple[RunRecord, ...]
    """The repeats, in registry order."""
    loss_key: str
    """The registry column compared."""

    @property
    def run(self) -> RunRecord:
        """The configuration's first repeat (its name, hyperparameters, curve)."""
        return self.runs[0]

    @property
    def losses(self) -> list[float]:
        return [getattr(run, self.loss_key) for run in self.runs]

    @property
    def loss(self) -> float:
        """Mean over the seeds."""
        return float(np.mean(self.losses))

    @property
    def spread(self) -> float | None:
        """Standard deviation over the seeds (None with one)."""
        return float(np.std(self.losses, ddof=1)) if len(self.runs) > 1 else None


def evaluated(runs: list[RunRecord], loss_key: str) -> list[RunRecord]:
    return [run for run in runs if getattr(run, loss_key) is not None]


def repeats(runs: list[RunRecord], loss_key: str) -> list[Result]:
    """The evaluated single-model runs (ensembles apart) grouped by configuration."""
    by_config: dict[tuple, list[RunRecord]] = {}
    for run in evaluated(runs, loss_key):
        if run.members == 1:
            by_config.setdefault(run.configuration(), []).append(run)
    return [Result(tuple(group), loss_key) for group in by_config.values()]


def _best(results: list[Result], losses: list[float]) -> dict[Group, int]:
    """Index of each group's lowest-loss result."""
    best: dict[Group, int] = {}
    for index, result in enumerate(results):
        group = group_of(result.run)
        if group not in best or losses[index] < losses[best[group]]:
            best[group] = index
    return best


def best_runs(runs: list[RunRecord], loss_key: str) -> dict[Group, Result]:
    """The lowest-mean-loss configuration of each (method, G, real tokens) group, groups sorted."""
    results = repeats(runs, loss_key)
    best = _best(results, [result.loss for result in results])
    return {group: results[index] for group, index in sorted(best.items())}


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


def _fit_rows(groups: dict[tuple, dict[float, float]], x_of, label: str) -> list[dict]:
    """A power law through each group's {x: loss} points with >= 4 of them, one row per group (its key's fields,
    the point count under `label`, A, alpha, C); a group that does not fit says why."""
    laws = []
    for key, points in sorted(groups.items()):
        if len(points) < MIN_FIT_POINTS:
            continue
        row = {**dict(key), label: len(points)}
        try:
            row.update(asdict(fit_power_law([x_of(x) for x in points], list(points.values()))))
        except MegadocError as error:  # one group that does not fit should not hide the others
            row["error"] = str(error)
        laws.append(row)
    return laws


def parameter_laws(runs: list[RunRecord], loss_key: str) -> list[dict]:
    """L(N) = A / N^alpha + C (N in billions) for each (method, G, real tokens) group run at >= 4 model sizes."""
    by_size: dict[tuple, dict[int, float]] = {}
    for result in repeats(runs, loss_key):
        run = result.run
        if run.params:
            key = (("method", run.method), ("generations", run.generations), ("real_tokens", run.real_tokens))
            sizes = by_size.setdefault(key, {})
            sizes[run.params] = min(sizes.get(run.params, np.inf), result.loss)
    return _fit_rows(by_size, lambda n: n / 1e9, "sizes")


def ensemble_laws(runs: list[RunRecord], loss_key: str) -> list[dict]:
    """L(K) = A / K^alpha + C for each configuration evaluated at >= 4 ensemble sizes K (K = 1: the mean over its
    single runs, every other K the mean over its ensembles); C is the K -> infinity asymptote the paper reports."""
    by_config: dict[tuple, dict[int, list[float]]] = {}
    names: dict[tuple, str] = {}
    for run in evaluated(runs, loss_key):
        config = run.configuration()
        by_config.setdefault(config, {}).setdefault(run.members, []).append(getattr(run, loss_key))
        if run.members == 1:
            names.setdefault(config, run.run)
    groups = {(("method", config[0]), ("generations", config[1]), ("real_tokens", config[2]),
               ("run", names.get(config, ""))): {k: float(np.mean(losses)) for k, losses in sizes.items()}
              for config, sizes in by_config.items()}
    return _fit_rows(groups, float, "sizes")


def real_only_law(points: dict[Group, float], alpha: float | None, asymptote: float | None) -> PowerLaw:
    """The real-only data-scaling law through each real-only group's loss (group -> its best configuration's):
    fitted over the real-token budgets, or anchored at the lowest when alpha and C are given."""
    real = {group: loss for group, loss in points.items() if group[0] == REAL_ONLY}
    if not real:
        raise MegadocError(f"the registry has no evaluated real-only run (method {REAL_ONLY!r})")
    if alpha is not None and asymptote is not None:
        (_, _, tokens), loss = min(real.items(), key=lambda item: item[1])
        return anchored_law(alpha, asymptote, tokens, loss)
    if len(real) < MIN_FIT_POINTS:
        raise MegadocError(f"real-only runs exist at {len(real)} real-token budget(s); fitting the data-scaling law "
                           f"needs {MIN_FIT_POINTS}, or pass --alpha and --asymptote to anchor it")
    return fit_power_law([tokens for _, _, tokens in real], list(real.values()))


def efficiencies(points: dict[Group, float], law: PowerLaw) -> dict[Group, float]:
    """Data efficiency of each group's loss: real tokens the law needs for it, per real token the group used;
    infinite for a loss at or below the law's asymptote (no amount of real data reaches it)."""
    return {group: data_efficiency(law, loss, group[2]) if loss > law.C else math.inf
            for group, loss in points.items()}


def bootstrap_efficiency(runs: list[RunRecord], loss_key: str, alpha: float | None, asymptote: float | None,
                         resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[dict[Group, tuple], int]:
    """(group -> (low, high) data-efficiency interval, resamples kept) by a bootstrap over seeds; ({}, 0) when no
    configuration has two seeds. A resample whose law does not fit is left out (the count says how many were kept);
    one that puts a loss beyond the law's reach counts as an infinite efficiency."""
    results = repeats(runs, loss_key)
    if not any(len(result.runs) > 1 for result in results):
        return {}, 0
    rng = np.random.default_rng(seed)
    samples: dict[Group, list[float]] = {}
    kept = 0
    for _ in range(resamples):
        losses = [float(rng.choice(result.losses, size=len(result.runs)).mean()) for result in results]
        points = {group: losses[index] for group, index in _best(results, losses).items()}
        try:
            values = efficiencies(points, real_only_law(points, alpha, asymptote))
        except MegadocError:
            continue
        kept += 1
        for group, value in values.items():
            samples.setdefault(group, []).append(value)
    tail = (1 - CONFIDENCE) / 2 * 100
    return {group: (float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail)))
            for group, values in samples.items()}, kept
