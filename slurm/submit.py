"""`megadoc submit pipeline.yaml`: the pipeline's pending steps as Slurm jobs chained by afterok dependencies.

Every step goes through the sbatch executor (megadoc.slurm.sbatch), or, with `--executor nemo-run`, the training
steps through nemo-run's SlurmExecutor (megadoc.slurm.nemo_run) and the rest through sbatch. Job ids go to
`<work_dir>/slurm/jobs.json`. Jobs of an earlier submission still in the queue make a new submission refuse,
rather than run a step twice at once; a refused submission cancels the jobs it had already submitted.
"""

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.launch.executor import PendingStep, paths, pending_steps
from megadoc.launch.pipeline import PipelineConfig, Step, load_pipeline
from megadoc.slurm.sbatch import (DEFAULT_MAX_ARRAY_SIZE, array_parts, cluster_max_array_size, first_line, resources,
                                  sbatch, sbatch_argv, slurm_command, write_script)


@dataclass(frozen=True)
class Job:
    """One step as it went to Slurm."""

    step: Step
    script: Path
    """Its sbatch script (nemo-run's own, for a step it submitted)."""
    tasks: tuple[int, ...] = ()
    """Array tasks submitted (generation shards without a done marker); empty for a plain job."""
    job_id: str | None = None
    """Slurm's id once submitted (an array split past MaxArraySize: its array jobs' ids joined by ':'); None in a
    dry run."""


def is_training(step: Step) -> bool:
    """Whether a step trains (the steps `--executor nemo-run` hands to nemo-run)."""
    return step.resources == "train"


def jobs_file(config: PipelineConfig) -> Path:
    return paths(config).slurm / "jobs.json"


def read_jobs(config: PipelineConfig) -> dict[str, str]:
    path = jobs_file(config)
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise MegadocError(f"{path}: unreadable ({error})") from None


def check_queue(config: PipelineConfig) -> None:
    """Refuse while jobs of an earlier submission are queued or running: they would run steps twice at once."""
    previous = read_jobs(config)
    if not previous:
        return
    result = slurm_command(["squeue", "--noheader", "--format=%F"])
    if result.returncode:
        raise MegadocError(f"squeue failed: {first_line(result.stderr)}")
    queued = set(result.stdout.split())
    active = {step: job for step, job in previous.items() if set(job.split(":")) & queued}
    if active:
        listing = ", ".join(f"{step} {job}" for step, job in active.items())
        raise MegadocError(f"jobs of an earlier submission are still queued ({listing}); wait for them or "
                           f"`scancel {' '.join(active.values())}`, then submit again")


def _launch(config: PipelineConfig, pending: PendingStep, dependencies: list[str], executor: str,
            scripts_dir: Path, source: str, dry_run: bool, max_array_size: int) -> tuple[str | None, Path, str]:
    """Submit one step, or in a dry run only write it: (its Slurm id, its script, what to print). An array longer
    than max_array_size goes as several array jobs of the same script, each told its first shard."""
    if executor == "nemo-run" and is_training(pending.step):
        from megadoc.slurm.nemo_run import nemo_run_training

        job_id, script = nemo_run_training(config, pending.step, dependencies, dry_run=dry_run)
        return job_id, script, f"nemo-run {script}" if dry_run else f"job {job_id} (nemo-run {script})"
    parts = array_parts(pending.tasks, max_array_size) if pending.step.array else [(0, ())]
    script = write_script(config, pending, scripts_dir, source, parts[0][1])
    limit = resources(config, pending.step).array_limit
    argvs = [sbatch_argv(script, dependencies, part if len(parts) > 1 else None, limit) for part in parts]
    if dry_run:
        return None, script, " ; ".join(" ".join(argv) for argv in argvs)
    ids: list[str] = []
    try:
        for argv in argvs:
            ids.append(sbatch(argv))
    except MegadocError:
        if ids:
            slurm_command(["scancel", *ids])
        raise
    return ":".join(ids), script, f"job {', '.join(ids)}" if len(ids) > 1 else f"job {ids[0]}"


def submit(config: PipelineConfig, scripts_dir: Path | None = None, dry_run: bool = False, executor: str = "sbatch",
           only: set[str] | None = None, source: str = "", log=print) -> list[Job]:
    """Write every pending step's script and submit them in order (or, with dry_run, print the sbatch lines).

    `only` submits just those steps (as `megadoc run --only` runs just those): they wait for no step left out.
    """
    if not dry_run:
        check_queue(config)
    scripts_dir = Path(scripts_dir) if scripts_dir else paths(config).slurm / "scripts"
    max_array_size = config.slurm.max_array_size
    if max_array_size is None:
        max_array_size = DEFAULT_MAX_ARRAY_SIZE if dry_run else None
    ids: dict[str, str] = {}
    submitted: list[Job] = []
    try:
        for pending in pending_steps(config, only, log):
            step = pending.step
            after = [a for a in step.after if a in ids]  # steps done earlier or left out need no waiting
            dependencies = [f"<{a}>" for a in after] if dry_run else [ids[a] for a in after]
            if step.array and max_array_size is None:
                max_array_size = cluster_max_array_size()
            job_id, script, what = _launch(config, pending, dependencies, executor, scripts_dir, source, dry_run,
                                           max_array_size or DEFAULT_MAX_ARRAY_SIZE)
            ids[step.name] = job_id or f"<{step.name}>"
            submitted.append(Job(step, script, pending.tasks, job_id))
            log(f"[{step.name}] {what}")
    except MegadocError as error:
        if not dry_run and submitted:
            slurm_command(["scancel", *(i for job in submitted for i in job.job_id.split(":"))])
            raise MegadocError(f"{error} (cancelled the {len(submitted)} job(s) submitted before it)") from None
        raise
    if not dry_run and submitted:
        latest = {**read_jobs(config), **{job.step.name: job.job_id for job in submitted}}
        with atomic_write(jobs_file(config), "w") as handle:
            json.dump(latest, handle, indent=1)
    return submitted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (megadoc.launch.pipeline.PipelineConfig)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra-style overrides of the YAML, e.g. slurm.train.nodes=4")
    parser.add_argument("--dry-run", action="store_true", help="write the scripts and print the sbatch lines only")
    parser.add_argument("--scripts-dir", default=None,
                        help="where the sbatch scripts go (default: <work_dir>/slurm/scripts)")
    parser.add_argument("--executor", choices=("sbatch", "nemo-run"), default="sbatch",
                        help="submit the training steps with sbatch scripts (default) or nemo-run's SlurmExecutor")
    parser.add_argument("--only", nargs="+", metavar="STEP", default=None,
                        help="submit only these steps (names as in the scripts, e.g. generate-rephrase train-real)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_pipeline(args.pipeline, args.overrides)
    jobs = submit(config, args.scripts_dir, dry_run=args.dry_run, executor=args.executor,
                  only=set(args.only) if args.only else None, source=str(Path(args.pipeline).resolve()))
    if not jobs:
        print(f"megadoc submit: every step of {config.name} is done (markers in {paths(config).done})")
    elif args.dry_run:
        print(f"megadoc submit: dry run, {len(jobs)} script(s) written, nothing submitted")
    else:
        print(f"megadoc submit: {len(jobs)} job(s) submitted; ids in {jobs_file(config)}, "
              f"logs in {paths(config).slurm / 'logs'}")
    return 0
