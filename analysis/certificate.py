"""The paper's "convex tuning" certificate: the best run of a (method, G, real tokens) group is locally optimal when
every +/-1 grid step neighbour in E, r, lr and wd has been run and none is better. Neighbours not yet in the
registry are listed to run, named as the sweep names runs; an optimum on the grid's edge is flagged, since the grid
may need extending there.
"""

import math
from dataclasses import dataclass, field

from megadoc.errors import MegadocError
from megadoc.recipes.models import MODELS
from megadoc.recipes.sweep import PAPER_GRID, Run
from megadoc.training.registry import REAL_ONLY, RunRecord

# The sweep's grid (the paper's final grid, PAPER.md section 3), under the registry's column names.
GRIDS: dict[str, tuple[float, ...]] = {"real_epochs": PAPER_GRID.real_epochs,
                                       "synthetic_fraction": PAPER_GRID.synthetic_fraction,
                                       "lr": PAPER_GRID.lr, "weight_decay": PAPER_GRID.weight_decay}
LABELS = {"real_epochs": "E", "synthetic_fraction": "r", "lr": "lr", "weight_decay": "wd"}
"""How tables and to_run.csv name the axes (the paper's letters)."""


@dataclass
class Certificate:
    """Whether a group's best run is locally optimal on the grid."""

    best: RunRecord
    """The group's lowest-loss run."""
    neighbours: list[tuple[dict, float | None]] = field(default_factory=list)
    """Each +/-1 step neighbour (a config dict) with its loss (mean over its seeds), or None when it has no evaluated
    run yet."""
    to_run: list[dict] = field(default_factory=list)
    """Neighbours absent from the registry (those registered but unevaluated are pending, not to run)."""
    edges: list[str] = field(default_factory=list)
    """Axes on which the best run sits at the grid's edge (one side has no neighbour)."""

    @property
    def certified(self) -> bool:
        return all(loss is not None for _, loss in self.neighbours)


def config_of(run: RunRecord) -> dict:
    return {axis: getattr(run, axis) for axis in GRIDS if getattr(run, axis) is not None}


def show(config: dict) -> str:
    return " ".join(f"{LABELS[axis]}={value:g}" for axis, value in config.items())


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
    centre = config_of(best)
    for axis, value in centre.items():
        index = _grid_index(grids[axis], value, axis, best.run)
        steps = [step for step in (index - 1, index + 1) if 0 <= step < len(grids[axis])]
        if len(steps) < 2:
            certificate.edges.append(axis)
        for step in steps:
            neighbour = {**centre, axis: grids[axis][step]}
            matches = [run for run in group if run.members == 1 and _same(config_of(run), neighbour)]
            losses = [getattr(run, loss_key) for run in matches if getattr(run, loss_key) is not None]
            certificate.neighbours.append((neighbour, sum(losses) / len(losses) if losses else None))  # seed mean
            if not matches:
                certificate.to_run.append(neighbour)
    return certificate


def sweep_name(best: RunRecord, neighbour: dict) -> str:
    """The sweep helper's name for a neighbour to run, when the best run's recipe is one of its models."""
    if best.recipe not in MODELS or not float(neighbour["real_epochs"]).is_integer():
        return ""
    stream = None if best.method == REAL_ONLY else f"{best.method}{best.generations}"
    return Run(best.recipe, int(neighbour["real_epochs"]), neighbour["lr"], neighbour["weight_decay"], stream,
               neighbour.get("synthetic_fraction", 0.0), real_tokens=best.real_tokens).name
