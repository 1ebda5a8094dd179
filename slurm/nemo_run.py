"""Training steps through nemo-run's SlurmExecutor, as NeMo users launch them (`megadoc submit --executor nemo-run`).

The executor asks for what the sbatch scripts ask for (account, partition, qos, time, nodes, GPUs, memory,
container); nemo-run's torchrun launcher starts `python -m megadoc train ...` on every node with its own rendezvous,
and `sbatch --requeue` makes a preempted run start again from its last checkpoint (`--load` = `--save`). nemo-run's
script ends with torchrun's exit status and runs nothing after it, so the step's done marker is written by an EXIT
trap set in the setup lines.

nemo-run (0.11.1, with leptonai 0.27.3) is installed in the Python 3.12 environment (`.venv312`, install.sh --dev),
not in the default one; it is imported only when this executor is asked for.
"""

import shlex
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.launch.executor import marker, paths
from megadoc.launch.pipeline import PipelineConfig, Step


def nemo_run_dir(config: PipelineConfig) -> Path:
    """nemo-run's experiments (scripts, logs). Not named `nemo_run`: nemo-run rewrites that name in the paths it
    writes (its folder inside containers is /nemo_run)."""
    return paths(config).slurm / "nemorun"


def _nemo_run():
    try:
        import nemo_run
    except ImportError as error:
        raise MegadocError(f"--executor nemo-run needs nemo-run (pip install nemo-run==0.11.1 leptonai==0.27.3; "
                           f"install.sh --dev puts it in .venv312): {error}") from None
    return nemo_run


def _extra_parameters(options: list[str]) -> dict:
    """slurm.extra_sbatch (['--exclusive', '--constraint=a100']) as nemo-run's additional_parameters."""
    parameters = {}
    for option in options:
        key, sep, value = option.lstrip("-").partition("=")
        parameters[key] = value if sep else True
    return parameters


def setup_lines(config: PipelineConfig, step: Step) -> str:
    """The step's setup lines, then a trap that marks the step done when the job script exits with 0."""
    done = marker(config, step)
    mark = (f"megadoc_mark_done() {{ [ $? -eq 0 ] && mkdir -p {shlex.quote(str(done.parent))} && "
            f'echo "slurm job $SLURM_JOB_ID" > {shlex.quote(str(done))}; }}')
    return "\n".join([*getattr(config.slurm, step.resources).setup, mark, "trap megadoc_mark_done EXIT"])


def executor(config: PipelineConfig, step: Step, dependencies: list[str]):
    """A SlurmExecutor with the pipeline's resources, submitting through sbatch on this machine (LocalTunnel)."""
    run = _nemo_run()
    slurm = config.slurm
    res = getattr(slurm, step.resources)
    return run.SlurmExecutor(
        account=slurm.account, partition=slurm.partition, qos=slurm.qos, time=res.time, nodes=res.nodes,
        ntasks_per_node=1, torchrun_nproc_per_node=config.train.nproc_per_node, cpus_per_task=config.cpus_per_task(step.resources),
        gpus_per_node=res.gpus_per_node or None, mem=res.mem, container_image=res.container_image,
        container_mounts=list(res.container_mounts), additional_parameters=_extra_parameters(slurm.extra_sbatch),
        job_name_prefix=f"{config.name}-", setup_lines=setup_lines(config, step), launcher="torchrun",
        # The tunnel's job folder is the experiment's own (<base>/experiments/<title>/<id>): no copy between them.
        packager=run.Packager(), tunnel=run.LocalTunnel(job_dir=str(nemo_run_dir(config) / "experiments")),
        # nemo-run reads a dependency's Slurm id from a TorchX app handle: <scheduler>://<session>/<id>.
        dependencies=[f"slurm_tunnel://nemo_run/{job_id}" for job_id in dependencies], dependency_type="afterok",
        poll_estimated_start_time=False)


def nemo_run_training(config: PipelineConfig, step: Step, dependencies: list[str] = (), dry_run: bool = False
                      ) -> tuple[str | None, Path]:
    """Submit one training step through nemo-run; returns (its Slurm job id, None in a dry run; its sbatch script)."""
    run = _nemo_run()
    (command,) = step.commands
    script = run.Script(path="megadoc", m=True, entrypoint="python", args=list(command))
    base_dir = nemo_run_dir(config)
    title = f"{config.name}-{step.name}"
    with run.Experiment(title, executor=executor(config, step, list(dependencies)), base_dir=str(base_dir),
                        log_level="WARN", enable_goodbye_message=False, skip_status_at_exit=True) as experiment:
        experiment.add(script, name=step.name, tail_logs=False)
        if dry_run:
            experiment.dryrun(log=False, delete_exp_dir=False)
            sbatch = Path(experiment._exp_dir) / f"{step.name}_sbatch.sh"
            return None, sbatch
        try:
            experiment.run(detach=True)
        except Exception as error:  # nemo-run raises what its tunnel's sbatch call raised; say it in one line
            message = getattr(getattr(error, "result", None), "stderr", "") or str(error)
            lines = [line.strip() for line in message.splitlines() if line.strip()]
            raise MegadocError(f"nemo-run could not submit {step.name}: {lines[0] if lines else type(error).__name__}"
                               ) from None
        job = experiment.jobs[0]
        job_id = job.handle.rsplit("/", 1)[-1]
        sbatch = Path(job.executor.tunnel.job_dir) / f"{job.executor.job_name}_sbatch.sh"
    if not job_id.isdigit():
        raise MegadocError(f"nemo-run did not return a Slurm job id for {step.name} (handle {job.handle!r})")
    return job_id, sbatch
