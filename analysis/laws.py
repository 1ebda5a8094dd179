"""Power laws over the runs registry, and data efficiency (Kim et al. 2025, "Pre-training under infinite compute";
PAPER.md section 6 and Appendix A).

Fit the real-only data-scaling law L(D) = A / D^alpha + C, invert it, D(L) = (A / (L - C))^(1/alpha), and report
D(L_method) / D_real: how many real tokens the real-only recipe would need to reach the method's best loss, over the
real tokens the method saw. Kim et al. divide by D(L_baseline) instead; the two agree when the law passes through
the real-only run at D_real, which is how an anchored law (below) is built.

The law is fitted when real-only runs exist at >= 4 real-token budgets (3 parameters plus one point, so the
residual says something). With fewer, pass `--alpha` and `--asymptote` (the paper's reverse-engineered values are
0.235 and 1.93) and A is anchored at the best real-only run. Loss-vs-parameters fits (the paper's asymptote fits,
N in billions) are made for every (method, G, real tokens) group run at >= 4 model sizes. Everything else compares
runs of one model size.
"""

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


def evaluated(runs: list[RunRecord], loss_key: str) -> list[RunRecord]:
    return [run for run in runs if getattr(run, loss_key) is not None]


def best_runs(runs: list[RunRecord], loss_key: str) -> dict[Group, RunRecord]:
    """The lowest-loss evaluated run of each (method, G, real tokens) group, groups sorted."""
    best: dict[Group, RunRecord] = {}
    for run in evaluated(runs, loss_key):
        key = (run.method, run.generations, run.real_tokens)
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
            sizes = by_size.setdefault((run.method, run.generations, run.real_tokens), {})
            sizes[run.params] = min(sizes.get(run.params, np.inf), getattr(run, loss_key))
    laws = []
    for (method, G, real_tokens), sizes in sorted(by_size.items()):
        if len(sizes) < MIN_FIT_POINTS:
            continue
        row = {"method": method, "generations": G, "real_tokens": real_tokens, "sizes": len(sizes)}
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
