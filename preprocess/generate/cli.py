"""`megadoc generate rephrase|rationale|status`: the command line of the generation stage."""

import argparse
import os
import time
from collections import Counter

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import add_corpus_arguments
from megadoc.preprocess.generate.engine import add_engine_arguments, engine_config_from_args
from megadoc.preprocess.generate.prompts import DEFAULT_PROMPTS
from megadoc.preprocess.generate.run import DEFAULT_MAX_TOKENS, GenerateConfig, run_generate
from megadoc.preprocess.generate.shards import directory_status, format_summary, shard_summary


def _slurm_array() -> tuple[int, int]:
    """(task count, this task's index) of a Slurm job array, (1, 0) outside one; read when a command runs."""
    def value(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        try:
            return int(text) if text else default
        except ValueError:
            raise MegadocError(f"${name}={text!r} is not an integer") from None

    return value("SLURM_ARRAY_TASK_COUNT", 1), value("SLURM_ARRAY_TASK_ID", 0) - value("SLURM_ARRAY_TASK_MIN", 0)


def _cmd_generate(args) -> int:
    array_count, array_index = _slurm_array()
    config = GenerateConfig(
        kind=args.kind, inputs=args.input, output=args.output, json_key=args.json_keys[0], prompt=args.prompt,
        g=args.generations, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        num_shards=args.num_shards if args.num_shards is not None else array_count,
        shard_index=args.shard_index if args.shard_index is not None else array_index,
        chunk_docs=args.chunk_docs, exclude_ids=args.exclude_ids, limit=args.limit)
    start = time.perf_counter()
    summary = run_generate(config, engine_config_from_args(args))
    print(f"megadoc generate {config.kind}: shard {config.shard_index} of {config.num_shards} -> {config.output}: "
          f"{format_summary(summary)} ({time.perf_counter() - start:.0f} s)")
    return 0


def _cmd_status(args) -> int:
    total: Counter = Counter()
    complete = 0
    rows = directory_status(args.directory)
    for name, manifest in rows:
        if manifest is None:
            print(f"{name}: not started")
            continue
        summary = shard_summary(manifest)
        total.update(summary)
        complete += manifest["complete"]
        state = "complete" if manifest["complete"] else "in progress"
        print(f"{name}: {state}, {summary.get('chunks', 0)} chunks, {summary.get('docs', 0)} documents, "
              f"{summary.get('generations', 0)} generations")
    print(f"{complete}/{len(rows)} shards complete; {format_summary(total)}")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.set_defaults(func=_cmd_generate, kind=kind)
    add_corpus_arguments(parser)
    parser.add_argument("--output", required=True, help="generation directory (shards, chunks, manifests)")
    parser.add_argument("--prompt", default=None, help="template name in megadoc/preprocess/generate/prompts or a "
                        f"YAML path (default: {DEFAULT_PROMPTS[kind]})")
    parser.add_argument("-G", "--generations", type=int, default=4, help="generations per document (default 4)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"new tokens per generation (default {DEFAULT_MAX_TOKENS[kind]})")
    parser.add_argument("--num-shards", type=int, default=None, help="K shards (default: $SLURM_ARRAY_TASK_COUNT, "
                                                                     "else 1)")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="this shard (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0)")
    parser.add_argument("--chunk-docs", type=int, default=64, help="documents per committed chunk (default 64)")
    parser.add_argument("--exclude-ids", default=None,
                        help="file of document ids to leave out (one per line or a JSON list), e.g. from megadoc split")
    parser.add_argument("--limit", type=int, default=None, help="stop after N documents of this shard (smoke runs)")
    add_engine_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{rephrase,rationale,status}")
    _add_run_arguments(sub.add_parser("rephrase", help="G rephrases of every document (n=G sampling)"), "rephrase")
    _add_run_arguments(sub.add_parser("rationale", help="G latent-thought rationales inserted into every document"),
                       "rationale")
    status = sub.add_parser("status", help="progress over all shards of a generation directory")
    status.add_argument("directory")
    status.set_defaults(func=_cmd_status)
