"""The sbatch executor: each step of a pipeline as one sbatch script, submitted with afterok dependencies.

Each step of `megadoc.launch.pipeline.steps` becomes one sbatch script (rendered from templates/step.sbatch, meant
to be read), with the resources of its kind (`slurm.cpu`, `.generate`, `.train`, `.eval` in the pipeline YAML):

- generation steps are job arrays, one task per shard (`--array=0-(K-1)`, `%N` with `array_limit`); a task passes
  its shard, `$SLURM_ARRAY_TASK_ID` plus the array job's `MEGADOC_SHARD_OFFSET`: an array longer than the cluster's
  MaxArraySize goes as several array jobs (`array_parts`), each given its offset, and the steps after it wait for all
  of them. `megadoc generate` resumes its shard's committed chunks, so a task that is requeued (`--requeue`:
  preemption, node failure, `scontrol requeue`) finishes with nothing written twice;
- with `requeue_before_timeout`, Slurm signals the job that long before its time limit (`--signal=B:USR1@N`); the
  script stops its step and requeues the job, which resumes where the step had committed;
- training and evaluation run `srun` once per node, each starting torchrun over the node's processes, with the
  rendezvous on the first node of the allocation;
- with a `container_image` the step's commands run through pyxis (`srun --container-image/--container-mounts`).

A job marks its step done on success (the markers of megadoc.launch.executor; an array task marks its shard, the
last one the step), so submitting a pipeline again submits only what has not finished.
"""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.launch.executor import PendingStep, marker, paths
from megadoc.launch.pipeline import PipelineConfig, Resources, Step

TEMPLATE = Path(__file__).parent / "templates" / "step.sbatch"
WIDTH = 110
"""Script lines are wrapped before this many characters."""


def resources(config: PipelineConfig, step: Step) -> Resources:
    return getattr(config.slurm, step.resources)


SHARD_OFFSET = "MEGADOC_SHARD_OFFSET"
"""Environment variable giving an array job the shard of its task 0 (several array jobs past MaxArraySize)."""
DEFAULT_MAX_ARRAY_SIZE = 1001
"""Slurm's default MaxArraySize, assumed by dry runs that do not set slurm.max_array_size."""


def array_spec(tasks: tuple[int, ...], limit: int | None = None) -> str:
    """`--array` value for these task ids, ranges compressed, with the %N throttle: (0, 1, 2, 5) -> '0-2,5'."""
    ranges, start = [], tasks[0]
    for previous, task in zip(tasks, tasks[1:] + (None,)):
        if task != previous + 1:
            ranges.append(f"{start}-{previous}" if previous > start else str(start))
            start = task
    return ",".join(ranges) + (f"%{limit}" if limit else "")


def array_parts(shards: tuple[int, ...], max_array_size: int) -> list[tuple[int, tuple[int, ...]]]:
    """The array jobs that run these shards: (offset, task ids), every task id below max_array_size."""
    parts: dict[int, list[int]] = {}
    for shard in shards:
        offset = shard // max_array_size * max_array_size
        parts.setdefault(offset, []).append(shard - offset)
    return [(offset, tuple(tasks)) for offset, tasks in sorted(parts.items())]


def cluster_max_array_size() -> int:
    """MaxArraySize of the cluster `scontrol` talks to."""
    result = slurm_command(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", result.stdout, re.MULTILINE)
    if result.returncode or not match:
        raise MegadocError(f"scontrol show config gave no MaxArraySize ({first_line(result.stderr or result.stdout)});"
                           " set slurm.max_array_size")
    return int(match.group(1))


# ---------------------------------------------------------------------------------------------------- rendering


def _wrap(words: list[str], indent: str = "    ") -> str:
    """Shell words on lines of at most WIDTH characters, broken before a flag (`--x value` stays together) or a
    `key=value` argument (`megadoc pretrain`'s)."""
    groups: list[list[str]] = []
    for word in words:
        lone_flag = groups and len(groups[-1]) == 1 and groups[-1][0].startswith("-")
        if not groups or word.startswith("-") or ("=" in word and not lone_flag):
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


def _container(res: Resources) -> list[str]:
    if not res.container_image:
        return []
    mounts = [f"--container-mounts={','.join(res.container_mounts)}"] if res.container_mounts else []
    return [f"--container-image={res.container_image}", *mounts]


def _option(name: str, value) -> str:
    """`--name=value` for an #SBATCH line, written so that sbatch reads the value back whole: sbatch splits those
    lines at whitespace outside double quotes, drops the rest of a line at an unescaped '#', and takes a backslash
    as an escape (src/sbatch/opt.c `_get_argument`)."""
    value = re.sub(r'(["\\#])', r"\\\1", str(value))
    return f'--{name}="{value}"' if re.search(r"\s", value) else f"--{name}={value}"


def sbatch_options(config: PipelineConfig, step: Step, tasks: tuple[int, ...]) -> list[str]:
    """The #SBATCH options of a step: its kind's resources, one task per node, arrays for shards."""
    slurm, res = config.slurm, resources(config, step)
    logs = paths(config).slurm / "logs"
    options = [_option("job-name", f"{config.name}-{step.name}"),
               _option("output", f"{logs}/%x-{'%A_%a' if step.array else '%j'}.out"), "--open-mode=append",
               _option("chdir", config.work_dir)]
    options += [_option(key, value) for key, value in
                (("partition", slurm.partition), ("account", slurm.account), ("qos", slurm.qos)) if value]
    options += [_option("time", res.time), f"--nodes={res.nodes if step.distributed else 1}", "--ntasks-per-node=1",
                f"--cpus-per-task={config.cpus_per_task(step.resources)}"]
    if res.mem:
        options.append(_option("mem", res.mem))
    if res.gpus_per_node > 0:
        options.append(f"--gpus-per-node={res.gpus_per_node}")
    if step.array:
        options.append(f"--array={array_spec(tasks, res.array_limit)}")
    if res.requeue_before_timeout:
        options.append(f"--signal=B:USR1@{res.requeue_before_timeout}")
    # Every stage resumes where it stopped, so a requeued job (preemption, node failure) is safe to run again; a
    # job whose dependency failed is cancelled instead of pending forever.
    options += ["--requeue", "--kill-on-invalid-dep=yes", *slurm.extra_sbatch]
    return options


def step_body(config: PipelineConfig, step: Step) -> str:
    """The shell lines that run a step's commands."""
    res = resources(config, step)
    lines = []
    if step.distributed:
        nodes, nproc = res.nodes, config.train.nproc_per_node
        lines += ["# torchrun on every node (one srun task each); the first node of the allocation hosts the rendezvous.",
                  'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
                  'MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
                  "export MASTER_ADDR MASTER_PORT"]
        launcher = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *_container(res),
                    res.python, "-m", "torch.distributed.run", f"--nnodes={nodes}", f"--nproc-per-node={nproc}",
                    "--rdzv-backend=c10d", '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"', '--rdzv-id="$SLURM_JOB_ID"',
                    "-m", "megadoc"]
    else:
        launcher = [*(["srun", "--ntasks=1", *_container(res)] if res.container_image else []), res.python, "-m",
                    "megadoc"]
    if step.array:
        lines.append(f'shard="$((SLURM_ARRAY_TASK_ID + ${{{SHARD_OFFSET}:-0}}))"  # this task\'s generation shard')
    run = []
    if res.requeue_before_timeout:
        lines += [f"# Slurm sends USR1 {res.requeue_before_timeout} s before the time limit: stop the step, requeue "
                  "this job; it resumes from what the step committed.",
                  "requeue() {",
                  '    echo "megadoc: time limit near, requeueing $job"',
                  '    kill -TERM "$child" 2>/dev/null; wait "$child" || true',
                  '    scontrol requeue "$job"; exit 0',
                  "}",
                  'job="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"',
                  "trap requeue USR1",
                  '# In the background, so that bash runs the trap at once (it waits for a foreground command first).',
                  'run() { "$@" & child=$!; wait "$child"; }']
        run = ["run"]
    for command in step.commands:
        shard = ["--shard-index", '"$shard"'] if step.array else []
        lines.append(_wrap([*run, *launcher, *_quote(command), *shard]))
    return "\n".join(lines)


def done_lines(config: PipelineConfig, step: Step) -> str:
    done = shlex.quote(str(marker(config, step)))
    lines = [f"mkdir -p {shlex.quote(str(paths(config).done))}"]
    if not step.array:
        return "\n".join([*lines, f'echo "slurm job $SLURM_JOB_ID" > {done}'])
    return "\n".join([
        *lines, f'echo "slurm job ${{SLURM_ARRAY_JOB_ID}}_$SLURM_ARRAY_TASK_ID" > {done}.task"$shard"',
        "# The last task to finish marks the whole step.",
        f"for task in $(seq 0 {step.array - 1}); do [ -e {done}.task\"$task\" ] || exit 0; done",
        f'echo "slurm array job $SLURM_ARRAY_JOB_ID" > {done}'])


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
              "setup": "\n".join(resources(config, step).setup) or "# (none)", "body": step_body(config, step),
              "done": done_lines(config, step)}
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match.group(1)], TEMPLATE.read_text())


def write_script(config: PipelineConfig, pending: PendingStep, scripts_dir: Path, source: str,
                 tasks: tuple[int, ...] | None = None) -> Path:
    """The step's script, numbered by its place in the pipeline (`tasks`: its #SBATCH --array, when not the
    pending shards themselves)."""
    scripts_dir.mkdir(parents=True, exist_ok=True)
    (paths(config).slurm / "logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create --output's folder
    script = scripts_dir / f"{pending.number:02d}-{pending.step.name}.sbatch"
    with atomic_write(script, "w") as handle:
        handle.write(render(config, pending.step, tasks or pending.tasks, script, source))
    return script


# ---------------------------------------------------------------------------------------------------- submitting


def slurm_command(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a Slurm client command, refused in one line where Slurm is not installed."""
    if shutil.which(argv[0]) is None:
        raise MegadocError(f"{argv[0]} not found: submit from a Slurm login node (or start one here with "
                           "slurm/local-cluster.sh), or use --dry-run to only write the scripts")
    return subprocess.run(argv, capture_output=True, text=True)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no message")


def sbatch_argv(script: Path, dependencies: list[str], part: tuple[int, tuple[int, ...]] | None = None,
                limit: int | None = None) -> list[str]:
    """The sbatch command line of a script (of one part of a split array: its tasks and shard offset)."""
    argv = ["sbatch", "--parsable", *([f"--dependency=afterok:{':'.join(dependencies)}"] if dependencies else [])]
    if part is not None:
        offset, tasks = part
        argv += [f"--array={array_spec(tasks, limit)}", f"--export=ALL,{SHARD_OFFSET}={offset}"]
    return argv + [str(script)]


def sbatch(argv: list[str]) -> str:
    """Submit one script; returns its job id (an array's id covers all its tasks)."""
    script = Path(argv[-1])
    result = slurm_command(argv)
    job_id = result.stdout.strip().split(";")[0]
    if result.returncode or not job_id.isdigit():
        raise MegadocError(f"sbatch refused {script.name}: {first_line(result.stderr or result.stdout)}")
    return job_id
