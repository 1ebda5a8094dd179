"""The `megadoc` command: one subcommand per stage of the method.

A stage module exposes `add_arguments(parser)` (which sets `func` via `set_defaults`) and is imported only when
its subcommand runs, so `megadoc tokenize` never pays for importing vLLM or Megatron-Core. Every failure reaches the
user as one line and a non-zero exit; `--debug` (anywhere on the line) shows the trace instead.
"""

import argparse
import importlib
import os
import select
import sys
import traceback

from megadoc.errors import MegadocError
from megadoc.files import settle_made_folders

# name -> (module, one-line help), in the order data flows through the method.
STAGES: dict[str, tuple[str, str]] = {
    "split": ("megadoc.preprocess.split", "set aside i.i.d., short and long validation sets before generation"),
    "generate": ("megadoc.preprocess.generate.cli", "write rephrases / rationales with vLLM, sharded and resumable"),
    "assemble": ("megadoc.preprocess.assemble", "build simple / stitched / stretched megadoc records from generations"),
    "tokenize": ("megadoc.preprocess.tokenize", "corpus -> Megatron indexed dataset (.bin/.idx)"),
    "inspect": ("megadoc.preprocess.inspect", "summarise a .bin/.idx and decode a sequence"),
    "blend": ("megadoc_data.plan", "plan the real/synthetic mix: steps, epochs, Megatron-LM flags"),
    "train": ("megadoc.training.cli", "train a recipe with Megatron-Core (CPU or GPU; torchrun for TP/PP)"),
    "pretrain": ("megadoc.training.bridge", "train a recipe with Megatron-Bridge's pretrain (NeMo, GPU clusters)"),
    "eval": ("megadoc.evaluation.evaluate", "losses, loss by position and lm-eval tasks of a checkpoint or an ensemble"),
    "export": ("megadoc.training.export", "a checkpoint as a Llama-format Hugging Face model (vLLM, lm-eval)"),
    "efficiency": ("megadoc.analysis.efficiency", "power-law fits, data efficiency, convex-tuning certificate"),
    "report": ("megadoc.analysis.report", "figures and tables from the runs registry"),
    "run": ("megadoc.launch.local", "run a whole pipeline YAML here, step by step, resuming finished steps"),
    "submit": ("megadoc.slurm.submit", "submit a whole pipeline YAML to Slurm (sbatch or nemo-run; or --dry-run)"),
    "demo": ("megadoc.launch.demo", "the whole method on a small real corpus, on CPU, offline"),
}


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: megadoc <stage> [options]   (megadoc <stage> --help for a stage's options; --debug shows "
             "the trace of a failure)", "", "stages:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in STAGES.items()]
    return "\n".join(lines)


def build_parser(name: str) -> argparse.ArgumentParser:
    """The argument parser of one stage (tests parse the pipeline's command lines with it)."""
    module_name, help_ = STAGES[name]
    parser = argparse.ArgumentParser(prog=f"megadoc {name}", description=help_)
    importlib.import_module(module_name).add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name = argv[0]
    if name not in STAGES:
        print(f"megadoc: error: unknown stage {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        parser = build_parser(name)
        args = parser.parse_args(argv[1:])
        if not hasattr(args, "func"):
            parser.print_help()
            return 2
        code = int(args.func(args) or 0)
    except BaseException:
        settle_made_folders(failed=True)
        return _failure(name, debug)
    settle_made_folders(failed=code != 0)
    return code


def _failure(name: str, debug: bool) -> int:
    """The one line (and exit status) of a stage that raised; the exception being handled."""
    try:
        raise
    except MegadocError as error:
        if debug:
            traceback.print_exc()
        print(f"megadoc {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"megadoc {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one catch-all: a user never gets a bare trace
        if isinstance(error, BrokenPipeError) and _stdout_gone():
            return 141  # the reader went away (`megadoc inspect P | head`): end quietly, as SIGPIPE ends a tool
        if debug:
            traceback.print_exc()
        where = error.__traceback__
        while where.tb_next is not None:
            where = where.tb_next
        print(f"megadoc {name}: internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
              f" (at {where.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{where.tb_lineno}); run with --debug for "
              "the trace", file=sys.stderr)
        return 1


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says POLLERR); stdout then points at /dev/null so the
    exit flush stays quiet. A broken pipe elsewhere (a child's) is an error like any other."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # stdout closed or not a file
        return False
    if gone:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return gone


if __name__ == "__main__":
    sys.exit(main())
