"""The `megadoc` command: one subcommand per stage of the method.

A stage module exposes `add_arguments(parser)` (which sets `func` via `set_defaults`) and is imported only when
its subcommand runs, so `megadoc tokenize` never pays for importing vLLM or Megatron-Core.
"""

import argparse
import importlib
import sys

from megadoc.errors import MegadocError

# name -> (module, one-line help), in the order data flows through the method.
STAGES: dict[str, tuple[str, str]] = {
    "split": ("megadoc.split", "set aside i.i.d. and long-document validation sets before generation"),
    "generate": ("megadoc.generate", "write rephrases / rationales with vLLM, sharded and resumable"),
    "assemble": ("megadoc.assemble", "build simple / stitched / stretched megadoc records from generations"),
    "tokenize": ("megadoc.tokenize", "corpus -> Megatron indexed dataset (.bin/.idx)"),
    "inspect": ("megadoc.inspect", "summarise a .bin/.idx and decode a sequence"),
    "blend": ("megadoc_data.plan", "plan the real/synthetic mix: steps, epochs, Megatron-LM flags"),
    "train": ("megadoc_recipes.cpu_train", "train a recipe with Megatron-Core (CPU or GPU; torchrun for TP/PP)"),
    "eval": ("megadoc_recipes.evaluate", "i.i.d. loss and loss by token position of a checkpoint"),
    "efficiency": ("megadoc_recipes.efficiency", "power-law fits, data efficiency, convex-tuning certificate"),
    "report": ("megadoc_recipes.report", "figures and tables from the runs registry"),
    "submit": ("megadoc_slurm.submit", "submit the whole pipeline to Slurm (or --dry-run)"),
    "demo": ("megadoc_recipes.demo", "the whole method on a small real corpus, on CPU, offline"),
}


def _usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: megadoc <stage> [options]   (megadoc <stage> --help for a stage's options)", "", "stages:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in STAGES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name = argv[0]
    if name not in STAGES:
        print(f"megadoc: error: unknown stage {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = STAGES[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"megadoc {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MegadocError as error:
        print(f"megadoc {name}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"megadoc {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
