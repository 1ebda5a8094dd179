"""The paper's hyperparameter grid and its convex-tuning neighbourhood, as lists of named runs.

Convex tuning: around a centre configuration, run the centre and one grid step up and down in each of E, r, lr and
wd (9 runs at most; fewer at the grid's edges, and no r axis for real data only). The centre is "locally optimal"
when no neighbour beats it. Run names follow the paper's pattern, with readable stream names:
`300m4k-203Mx32-real+stitched32^0.9-cos-lr0.0010-wd0.40-bs64`.
"""

import itertools
from dataclasses import dataclass, replace

from megadoc_recipes.models import MODELS, OptimizerRecipe, TrainingRecipe


@dataclass(frozen=True)
class Grid:
    """The values each tuned hyperparameter may take, ascending."""

    real_epochs: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """E: passes over the real data."""
    synthetic_ratio: tuple[float, ...] = (0.5, 0.75, 0.9)
    """r: fraction of sequences from the synthetic stream."""
    weight_decay: tuple[float, ...] = (0.1, 0.4, 0.8, 1.6)
    lr: tuple[float, ...] = (1e-3, 3e-3, 1e-2)


PAPER_GRID = Grid()


@dataclass(frozen=True)
class Run:
    """One point of a sweep: a model, a synthetic stream (or none) and the four tuned values."""

    model: str
    """A key of MODELS."""
    real_epochs: int
    lr: float
    weight_decay: float
    stream: str | None = None
    """Synthetic stream name, e.g. `stitched32`, `simple16`, `stretched32`; None for real data only."""
    synthetic_ratio: float = 0.0
    """r; must be 0 exactly when stream is None."""
    global_batch_size: int = 64

    def __post_init__(self):
        if (self.stream is None) != (self.synthetic_ratio == 0.0):
            raise ValueError(f"a stream needs a synthetic ratio > 0 and real-only runs need 0: {self}")

    @property
    def name(self) -> str:
        data = "real" if self.stream is None else f"real+{self.stream}^{self.synthetic_ratio:g}"
        prefix = MODELS[self.model].run_prefix
        return (f"{prefix}-203Mx{self.real_epochs}-{data}-cos-lr{self.lr:.4f}-wd{self.weight_decay:.2f}"
                f"-bs{self.global_batch_size}")

    def recipe(self, **overrides) -> TrainingRecipe:
        """The training recipe of this run; `overrides` set other TrainingRecipe fields (parallel, tokenizer)."""
        return TrainingRecipe(
            model=MODELS[self.model],
            optimizer=OptimizerRecipe(lr=self.lr, weight_decay=self.weight_decay),
            real_epochs=self.real_epochs,
            synthetic_ratio=self.synthetic_ratio,
            global_batch_size=self.global_batch_size,
            **overrides,
        )


def grid_runs(model: str, stream: str | None, grid: Grid = PAPER_GRID) -> list[Run]:
    """Every combination of the grid for one model and stream (no r axis for real data only)."""
    ratios = grid.synthetic_ratio if stream is not None else (0.0,)
    return [
        Run(model, e, lr, wd, stream, r)
        for e, r, lr, wd in itertools.product(grid.real_epochs, ratios, grid.lr, grid.weight_decay)
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
        axes["synthetic_ratio"] = grid.synthetic_ratio
    runs = [centre]
    for axis, values in axes.items():
        runs += [replace(centre, **{axis: v}) for v in _steps(getattr(centre, axis), values)]
    return runs
