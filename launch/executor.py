"""What every executor of a pipeline shares (local, sbatch, nemo-run): which steps are left, and the done markers.

A step is done when `<work_dir>/.done/<step>` exists; an array task when `<step>.task<i>` does (the last task to
finish marks the step). A marker is written only after the step's commands succeed, so a killed or failed step is
run again, and each stage it calls resumes from its own checkpoints. The executors never import each other.
"""

from dataclasses import dataclass
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.launch.pipeline import Paths, PipelineConfig, Step, steps


def paths(config: PipelineConfig) -> Paths:
    return Paths(Path(config.work_dir))


def marker(config: PipelineConfig, step: Step, task: int | None = None) -> Path:
    """The done marker of a step, or of one of its array tasks."""
    name = step.name if task is None else f"{step.name}.task{task}"
    return paths(config).done / name


def pending_tasks(config: PipelineConfig, step: Step) -> tuple[int, ...] | None:
    """The array tasks of `step` still to run (() for a plain step); None when the step is done."""
    if marker(config, step).exists():
        return None
    if not step.array:
        return ()
    tasks = tuple(t for t in range(step.array) if not marker(config, step, t).exists())
    return tasks or None


@dataclass(frozen=True)
class PendingStep:
    """A step still to run, with its array tasks still to run."""

    number: int
    """1-based position in the pipeline (scripts are numbered by it)."""
    step: Step
    tasks: tuple[int, ...]


def pending_steps(config: PipelineConfig, only: set[str] | None = None, log=print) -> list[PendingStep]:
    """The steps (of `only`, when given) not done yet, in pipeline order; finished ones are logged as skipped."""
    pipeline = steps(config)
    unknown = sorted(set(only or ()) - {step.name for step in pipeline})
    if unknown:
        raise MegadocError(f"--only: no step {', '.join(unknown)} in this pipeline "
                           f"({', '.join(step.name for step in pipeline)})")
    pending = []
    for number, step in enumerate(pipeline, start=1):
        if only is not None and step.name not in only:
            continue
        tasks = pending_tasks(config, step)
        if tasks is None:
            log(f"[{step.name}] done earlier, skipped")
            continue
        pending.append(PendingStep(number, step, tasks))
    return pending


def mark_done(config: PipelineConfig, step: Step, note: str, task: int | None = None) -> None:
    path = marker(config, step, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(note + "\n")
