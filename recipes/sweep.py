"""The paper's hyperparameter grid, its convex-tuning neighbourhood, and the one run-name scheme.

Convex tuning: around a centre configuration, run the centre and one grid step up and down in each of E, r, lr and
wd (9 runs at most; fewer at the grid's edges, and no r axis for real data only). The centre is "locally optimal"
when no neighbour beats it. Run names follow the paper's pattern with readable stream names and the real-token
budget (and the seed of a repeat): `300m4k-203Mx32-real+stitched32^0.9-cos-lr0.0010-wd0.40-bs64`.
"""

import itertools
from dataclasses import dataclass, replace

from megadoc.recipes.models import MODELS


def token_label(tokens: int) -> str:
    """A real-token budget as run names write it: 203,685,888 -> '203M', 1.6e9 -> '1.6B', 12,000 -> '12K'."""
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if tokens >= size:
            value = tokens / size
            return f"{int(value)}{unit}" if value >= 100 else f"{value:.3g}{unit}"
    return str(tokens)


def run_name(model_prefix: str, real_tokens: int, real_epochs: float, lr: float, weight_decay: float,
             global_batch_size: int, stream: str | None = None, synthetic_fraction: float = 0.0,
             name_prefix: str = "", seed: int | None = None) -> str:
    """The paper's run-name pattern: <model>-<real tokens>x<E>-<data>-cos-lr<lr>-wd<wd>-bs<batch>, where <data> is
    `real` or `real+<stream>^<r>`; `name_prefix` (a pipeline's name) goes first, `-seed<N>` last for a repeat
    with another seed."""
    data = "real" if stream is None else f"real+{stream}^{synthetic_fraction:g}"
    name = (f"{model_prefix}-{token_label(real_tokens)}x{real_epochs:g}-{data}-cos-lr{lr:.4f}-wd{weight_decay:.2f}"
            f"-bs{global_batch_size}" + ("" if seed is None else f"-seed{seed}"))
    return f"{name_prefix}-{name}" if name_prefix else name


@dataclass(frozen=True)
class Grid:
    """The values each tuned hyperparameter may take, ascending."""

    real_epochs: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """E: passes over the real data."""
    synthetic_fraction: tuple[float, ...] = (0.5, 0.75, 0.9)
    """r: fraction of sequences from the synthetic stream."""
    weight_decay: tuple[float, ...] = (0.1, 0.4, 0.8, 1.6)
    lr: tuple[float, ...] = (1e-3, 3e-3, 1e-2)


PAPER_GRID = Grid()
PAPER_REAL_TOKENS = 203_685_888
"""One real epoch of the paper: 777 steps x 64 x 4096 tokens (the "203M" in its run names)."""


@dataclass(frozen=True)
class Run:
    """One point of a sweep: a model, a synthetic stream (or none), the real-token budget and the tuned values."""

    model: str
    """A key of MODELS."""
    real_epochs: int
    lr: float
    weight_decay: float
    stream: str | None = None
    """Synthetic stream name, e.g. `stitched32`, `simple16`, `stretched32`; None for real data only."""
    synthetic_fraction: float = 0.0
    """r; must be 0 exactly when stream is None."""
    global_batch_size: int = 64
    real_tokens: int = PAPER_REAL_TOKENS
    """D: real tokens in one real epoch."""

    def __post_init__(self):
        if (self.stream is None) != (self.synthetic_fraction == 0.0):
            raise ValueError(f"a stream needs a synthetic fraction > 0 and real-only runs need 0: {self}")

    @property
    def name(self) -> str:
        return run_name(MODELS[self.model].run_prefix, self.real_tokens, self.real_epochs, self.lr,
                        self.weight_decay, self.global_batch_size, self.stream, self.synthetic_fraction)


def grid_runs(model: str, stream: str | None, grid: Grid = PAPER_GRID, real_tokens: int = PAPER_REAL_TOKENS
              ) -> list[Run]:
    """Every combination of the grid for one model and stream (no r axis for real data only)."""
    fractions = grid.synthetic_fraction if stream is not None else (0.0,)
    return [
        Run(model, e, lr, wd, stream, r, real_tokens=real_tokens)
        for e, r, lr, wd in itertools.product(grid.real_epochs, fractions, grid.lr, grid.weight_decay)
    ]


def _steps(value, values: tuple) -> list:
    """The grid neighbours of `value`: one step down and one step up, where they exist."""
    if value not in values:
        raise ValueError(f"{value} is not on the grid {values}")
    i = values.index(value)
    return [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]


def neighbourhood(centre: Run, grid: Grid = PAPER_GRID) -> list[Run]:
    """The centre first, then +/-1 grid step in E, r, lr and wd, one axis at a time."""
    axes = {"real_epochs": grid.real_epochs, "lr": grid.lr, "weight_decay": grid.weight_decay}
    if centre.stream is not None:
        axes["synthetic_fraction"] = grid.synthetic_fraction
    runs = [centre]
    for axis, values in axes.items():
        runs += [replace(centre, **{axis: v}) for v in _steps(getattr(centre, axis), values)]
    return runs
