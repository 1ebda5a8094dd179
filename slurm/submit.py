"""`megadoc submit`: the whole pipeline as Slurm jobs chained by dependencies.

Each step of `megadoc_recipes.pipeline.steps` becomes one sbatch script (rendered from templates/step.sbatch, meant
to be read), submitted in pipeline order with `--dependency=afterok:<the ids of the steps it needs>`:

- generation steps are job arrays, one task per shard (`--array=0-(K-1)`); a task passes its
  `--shard-index $SLURM_ARRAY_TASK_ID`, and `megadoc generate` resumes its shard's committed chunks, so a task that
  is requeued (`--requeue`: preemption, node failure, `scontrol requeue`) finishes with nothing written twice;
- training and evaluation run `srun` once per node, each starting torchrun over the node's processes, with the
  rendezvous on the first node of the allocation;
- with `slurm.container_image` every command runs through pyxis (`srun --container-image/--container-mounts`).

A job marks its step done on success (`<work_dir>/.done/<step>`, the local runner's convention; an array task marks
its shard, the last one the step), so submitting a pipeline again submits only what has not finished. Jobs of an
earlier submission still in the queue make a new submission refuse, rather than run a step twice at once.
`--executor nemo-run` sends the training steps through nemo-run's SlurmExecutor instead (megadoc_slurm.nemo).
"""

import argparse
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError
from megadoc_recipes.pipeline import PipelineConfig, Step, done_dir, load_pipeline, steps

TEMPLATE = Path(__file__).parent / "templates" / "step.sbatch"
WIDTH = 110
"""Script lines are wrapped before this many characters."""


@dataclass(frozen=True)
class Job:
    """One step as it goes to Slurm."""

    step: Step
    script: Path | None
    """Its sbatch script; None for a training step handed to nemo-run, which writes its own."""
    tasks: tuple[int, ...] = ()
    """Array tasks still to run (generation shards without a done marker); empty for a plain job."""
    job_id: str | None = None
    """Slurm's id once submitted."""


# ---------------------------------------------------------------------------------------------------- markers


def slurm_dir(config: PipelineConfig) -> Path:
    """Scripts, logs and jobs.json of the pipeline's submissions."""
    return Path(config.work_dir) / "slurm"


def pending_tasks(config: PipelineConfig, step: Step) -> tuple[int, ...] | None:
    """The array tasks of `step` still to run; None when the step is done (its marker, or every task's)."""
    if (done_dir(config) / step.name).exists():
        return None
    if not step.array:
        return ()
    tasks = tuple(t for t in range(step.array) if not (done_dir(config) / f"{step.name}.task{t}").exists())
    return tasks or None


def array_spec(tasks: tuple[int, ...]) -> str:
    """`--array` value for these task ids, ranges compressed: (0, 1, 2, 5) -> '0-2,5'."""
    ranges, start = [], tasks[0]
    for previous, task in zip(tasks, tasks[1:] + (None,)):
        if task != previous + 1:
            ranges.append(f"{start}-{previous}" if previous > start else str(start))
            start = task
    return ",".join(ranges)


# ---------------------------------------------------------------------------------------------------- rendering


def _wrap(words: list[str], indent: str = "    ") -> str:
    """Shell words on lines of at most WIDTH characters, broken before a flag (`--x value` stays together)."""
    groups: list[list[str]] = []
    for word in words:
        if not groups or word.startswith("-"):
            groups.append([word])
        else:
            groups[-1].append(word)
    lines = [""]
    for group in (" ".join(g) for g in groups):
        if lines[-1] and len(indent) + len(lines[-1]) + len(group) + 3 > WIDTH:
            lines.append(group)
        else:
            lines[-1] = f"{lines[-1]} {group}" if lines[-1] else group
    return f" \\\n{indent}".join(lines)


def _quote(argv: list[str]) -> list[str]:
    return [shlex.quote(arg) for arg in argv]


def _container(config: PipelineConfig) -> list[str]:
    slurm = config.slurm
    if not slurm.container_image:
        return []
    mounts = [f"--container-mounts={','.join(slurm.container_mounts)}"] if slurm.container_mounts else []
    return [f"--container-image={slurm.container_image}", *mounts]


def sbatch_options(config: PipelineConfig, step: Step, tasks: tuple[int, ...]) -> list[str]:
    """The #SBATCH options of a step: resources from `slurm:`, one task per node, arrays for shards."""
    slurm = config.slurm
    nodes = slurm.train_nodes if step.distributed else 1
    logs = slurm_dir(config) / "logs"
    options = [f"--job-name={config.name}-{step.name}",
               f"--output={logs}/%x-{'%A_%a' if step.array else '%j'}.out", "--open-mode=append",
               f"--chdir={config.work_dir}"]
    options += [f"--{key}={value}" for key, value in
                (("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos)) if value]
    options += [f"--time={slurm.time}", f"--nodes={nodes}", "--ntasks-per-node=1",
                f"--cpus-per-task={slurm.cpus_per_task}"]
    if slurm.mem:
        options.append(f"--mem={slurm.mem}")
    if step.gpus and slurm.gpus_per_node > 0:
        options.append(f"--gpus-per-node={slurm.gpus_per_node}")
    if step.array:
        options.append(f"--array={array_spec(tasks)}")
    # Every stage resumes where it stopped, so a requeued job (preemption, node failure) is safe to run again; a
    # job whose dependency failed is cancelled instead of pending forever.
    options += ["--requeue", "--kill-on-invalid-dep=yes", *slurm.extra_sbatch]
    return options


def step_body(config: PipelineConfig, step: Step) -> str:
    """The shell lines that run a step's commands."""
    slurm = config.slurm
    lines = []
    if step.distributed:
        nodes, nproc = slurm.train_nodes, config.train.nproc_per_node
        lines += ["# torchrun on every node (one srun task each); the first node of the allocation hosts the rendezvous.",
                  'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  'MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
                  "export MASTER_ADDR MASTER_PORT"]
        launcher = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *_container(config),
                    slurm.python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={nproc}",
                    "--rdzv-backend=c10d", '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
                    "-m", "megadoc"]
    else:
        launcher = [*(["srun", "--ntasks=1", *_container(config)] if slurm.container_image else []), slurm.megadoc]
    for command in step.commands:
        shard = ["--shard-index", '"$SLURM_ARRAY_TASK_ID"'] if step.array else []
        lines.append(_wrap([*launcher, *_quote(command), *shard]))
    return "\n".join(lines)


def done_lines(config: PipelineConfig, step: Step) -> str:
    marker = shlex.quote(str(done_dir(config) / step.name))
    lines = [f"mkdir -p {shlex.quote(str(done_dir(config)))}"]
    if not step.array:
        return "\n".join([*lines, f'echo "slurm job $SLURM_JOB_ID" > {marker}'])
    return "\n".join([
        *lines, f'echo "slurm job ${{SLURM_ARRAY_JOB_ID}}_$SLURM_ARRAY_TASK_ID" > {marker}.task"$SLURM_ARRAY_TASK_ID"',
        "# The last task to finish marks the whole step.",
        f"for task in $(seq 0 {step.array - 1}); do [ -e {marker}.task\"$task\" ] || exit 0; done",
        f'echo "slurm array job $SLURM_ARRAY_JOB_ID" > {marker}'])


def render(config: PipelineConfig, step: Step, tasks: tuple[int, ...], script: Path, source: str) -> str:
    """A step's sbatch script."""
    title = f"megadoc pipeline {config.name!r}, step {step.name}"
    if step.array:
        title += f": array of {step.array} tasks, one per generation shard"
    if step.after:
        title += f" (runs after {', '.join(step.after)})"
    hint = f" --dependency=afterok:{':'.join(f'<{a}>' for a in step.after)}" if step.after else ""
    values = {"title": title, "pipeline": source, "dependency_hint": hint, "script": str(script),
              "sbatch": "\n".join(f"#SBATCH {option}" for option in sbatch_options(config, step, tasks)),
              "setup": "\n".join(config.slurm.setup) or "# (none)", "body": step_body(config, step),
              "done": done_lines(config, step)}
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match.group(1)], TEMPLATE.read_text())


def is_training(step: Step) -> bool:
    """Whether a step trains (the steps `--executor nemo-run` hands to nemo-run)."""
    return step.commands[0][0] == "train"


def write_scripts(config: PipelineConfig, scripts_dir: Path, source: str, only: set[str] | None = None,
                  executor: str = "sbatch", log=print) -> list[Job]:
    """Write the script of every step not done yet (numbered in submission order); returns them as jobs.

    Under nemo-run, training steps get no script here: nemo-run writes its own."""
    pipeline = steps(config)
    unknown = sorted(set(only or ()) - {step.name for step in pipeline})
    if unknown:
        raise MegadocError(f"--only: no step {', '.join(unknown)} in this pipeline "
                           f"({', '.join(step.name for step in pipeline)})")
    scripts_dir.mkdir(parents=True, exist_ok=True)
    (slurm_dir(config) / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create --output's folder
    jobs = []
    for number, step in enumerate(pipeline, start=1):
        if only is not None and step.name not in only:
            continue
        tasks = pending_tasks(config, step)
        if tasks is None:
            log(f"[{step.name}] done earlier, skipped")
            continue
        if executor == "nemo-run" and is_training(step):
            jobs.append(Job(step, None, tasks))
            continue
        script = scripts_dir / f"{number:02d}-{step.name}.sbatch"
        with atomic_write(script, "w") as handle:
            handle.write(render(config, step, tasks, script, source))
        jobs.append(Job(step, script, tasks))
    return jobs


# ---------------------------------------------------------------------------------------------------- submitting


def _slurm(argv: list[str]) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        raise MegadocError(f"{argv[0]} not found: submit from a Slurm login node (or start one here with "
                           "slurm/local-cluster.sh), or use --dry-run to only write the scripts")
    return subprocess.run(argv, capture_output=True, text=True)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def sbatch(script: Path, dependencies: list[str]) -> str:
    """Submit one script; returns its job id (an array's id covers all its tasks)."""
    argv = ["sbatch", "--parsable", *([f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else []),
            str(script)]
    result = _slurm(argv)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode or not job_id.isdigit():
        raise MegadocError(f"sbatch refused {script.name}: {_first_line(result.stderr or result.stdout)}")
    return job_id


def read_jobs(config: PipelineConfig) -> dict[str, str]:
    path = slurm_dir(config) / "jobs.json"
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError) as error:
        raise MegadocError(f"{path}: unreadable ({error})") from None


def check_queue(config: PipelineConfig) -> None:
    """Refuse while jobs of an earlier submission are queued or running: they would run steps twice at once."""
    previous = read_jobs(config)
    if not previous:
        return
    result = _slurm(["squeue", "--noheader", "--format=%F"])
    if result.returncode:
        raise MegadocError(f"squeue failed: {_first_line(result.stderr)}")
    queued = set(result.stdout.split())
    active = {step: job for step, job in previous.items() if job in queued}
    if active:
        listing = ", ".join(f"{step} {job}" for step, job in active.items())
        raise MegadocError(f"jobs of an earlier submission are still queued ({listing}); wait for them or "
                           f"`scancel {' '.join(active.values())}`, then submit again")


def _launch(config: PipelineConfig, job: Job, dependencies: list[str], dry_run: bool) -> tuple[str | None, Path, str]:
    """Submit one job, or in a dry run only write it: (its Slurm id, its script, what to print)."""
    if job.script is None:
        from megadoc_slurm.nemo import nemo_run_training

        job_id, script = nemo_run_training(config, job.step, dependencies, dry_run=dry_run)
        return job_id, script, f"nemo-run {script}" if dry_run else f"job {job_id} (nemo-run {script})"
    if dry_run:
        flags = [f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else []
        return None, job.script, " ".join(["sbatch", "--parsable", *flags, str(job.script)])
    job_id = sbatch(job.script, dependencies)
    return job_id, job.script, f"job {job_id}"


def submit(config: PipelineConfig, scripts_dir: Path | None = None, dry_run: bool = False, executor: str = "sbatch",
           only: set[str] | None = None, source: str = "", log=print) -> list[Job]:
    """Write every pending step's script and submit them in order (or, with dry_run, print the sbatch lines).

    `only` submits just those steps (as `run_local` runs just those): they wait for no step left out.
    """
    if not dry_run:
        check_queue(config)
    scripts_dir = Path(scripts_dir) if scripts_dir else slurm_dir(config) / "scripts"
    jobs = write_scripts(config, scripts_dir, source, only, executor, log)
    ids: dict[str, str] = {}
    submitted: list[Job] = []
    try:
        for job in jobs:
            after = [a for a in job.step.after if a in ids]  # steps done earlier or left out need no waiting
            dependencies = [f"<{a}>" for a in after] if dry_run else [ids[a] for a in after]
            job_id, script, what = _launch(config, job, dependencies, dry_run)
            ids[job.step.name] = job_id or f"<{job.step.name}>"
            submitted.append(Job(job.step, script, job.tasks, job_id))
            log(f"[{job.step.name}] {what}")
    except MegadocError as error:
        if not dry_run and submitted:
            _slurm(["scancel", *(job.job_id for job in submitted)])
            raise MegadocError(f"{error} (cancelled the {len(submitted)} job(s) submitted before it)") from None
        raise
    if not dry_run and submitted:
        latest = {**read_jobs(config), **{job.step.name: job.job_id for job in submitted}}
        with atomic_write(slurm_dir(config) / "jobs.json", "w") as handle:
            json.dump(latest, handle, indent=1)
    return submitted


# ---------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (megadoc_recipes.pipeline.PipelineConfig)")
    parser.add_argument("--dry-run", action="store_true", help="write the scripts and print the sbatch lines only")
    parser.add_argument("--scripts-dir", default=None, help="where the sbatch scripts go (default: <work_dir>/slurm/scripts)")
    parser.add_argument("--executor", choices=("sbatch", "nemo-run"), default="sbatch",
                        help="submit the training steps with sbatch scripts (default) or nemo-run's SlurmExecutor")
    parser.add_argument("--only", nargs="+", metavar="STEP", default=None,
                        help="submit only these steps (names as in the scripts, e.g. generate-rephrase train-real)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_pipeline(args.pipeline)
    jobs = submit(config, args.scripts_dir, dry_run=args.dry_run, executor=args.executor,
                  only=set(args.only) if args.only else None, source=str(Path(args.pipeline).resolve()))
    if not jobs:
        print(f"megadoc submit: every step of {config.name} is done (markers in {done_dir(config)})")
    elif args.dry_run:
        print(f"megadoc submit: dry run, {len(jobs)} script(s) written, nothing submitted")
    else:
        print(f"megadoc submit: {len(jobs)} job(s) submitted; ids in {slurm_dir(config) / 'jobs.json'}, "
              f"logs in {slurm_dir(config) / 'logs'}")
    return 0
