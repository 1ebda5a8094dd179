"""`megadoc run pipeline.yaml [key=value ...]`: the local executor: every step here, in order, one after another.

Steps marked done by an earlier run (here or on Slurm) are skipped; a generation array runs its tasks one after
another, each marked when it finishes; distributed steps run under torchrun with train.nproc_per_node processes.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.launch.executor import mark_done, pending_steps
from megadoc.launch.pipeline import PipelineConfig, Step, load_pipeline


def _argv(config: PipelineConfig, step: Step, command: list[str]) -> list[str]:
    """The process a command runs as here: this Python's `-m megadoc`, under torchrun for distributed steps (always
    for `megadoc pretrain`: Megatron-Bridge takes its world from torchrun's environment)."""
    if step.distributed and (config.train.nproc_per_node > 1 or command[0] == "pretrain"):
        return [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node",
                str(config.train.nproc_per_node), "-m", "megadoc", *command]
    return [sys.executable, "-m", "megadoc", *command]


def run_local(config: PipelineConfig, only: set[str] | None = None, log=print) -> list[str]:
    """Run the steps not done yet, in order; returns the names of those run. A failed command stops the run."""
    ran = []
    for pending in pending_steps(config, only, log):
        step, start = pending.step, time.perf_counter()
        for task in pending.tasks or (None,):
            for command in step.commands:
                command = command + (["--shard-index", str(task)] if task is not None else [])
                where = f" {task + 1}/{step.array}" if task is not None else ""
                log(f"[{step.name}{where}] megadoc {' '.join(command)}")
                result = subprocess.run(_argv(config, step, command))
                if result.returncode:
                    raise MegadocError(f"step {step.name} failed (exit {result.returncode}); re-run to resume")
            if task is not None:
                mark_done(config, step, "local", task)
        mark_done(config, step, f"local, {time.perf_counter() - start:.1f} s")
        log(f"[{step.name}] finished in {time.perf_counter() - start:.0f} s")
        ran.append(step.name)
    return ran


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="pipeline YAML (megadoc.launch.pipeline.PipelineConfig)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="Hydra-style overrides of the YAML, e.g. train.lr=1e-3 generate.rephrases=8")
    parser.add_argument("--only", nargs="+", metavar="STEP", default=None, help="run only these steps")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_pipeline(args.pipeline, args.overrides)
    ran = run_local(config, set(args.only) if args.only else None)
    print(f"megadoc run: {len(ran)} step(s) run; outputs under {config.work_dir}")
    return 0
