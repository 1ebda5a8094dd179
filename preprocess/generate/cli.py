"""`megadoc generate rephrase|rationale|status`: the command line of the generation stage."""

import argparse
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

from megadoc.errors import MegadocError
from megadoc.preprocess.corpus import add_corpus_arguments
from megadoc.preprocess.generate.endpoint import add_endpoint_arguments, endpoint_config_from_args
from megadoc.preprocess.generate.engine import add_engine_arguments, engine_config_from_args
from megadoc.preprocess.generate.prompts import DEFAULT_PROMPTS
from megadoc.preprocess.generate.run import DEFAULT_MAX_TOKENS, GenerateConfig, run_generate
from megadoc.preprocess.generate.shards import directory_status, format_summary, repeated_ids, shard_summary


def _slurm_array() -> tuple[int, int]:
    """(task count, this task's index) of a Slurm job array, (1, 0) outside one; read when a command runs."""
    def value(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        try:
            return int(text) if text else default
        except ValueError:
            raise MegadocError(f"${name}={text!r} is not an integer") from None

    return value("SLURM_ARRAY_TASK_COUNT", 1), value("SLURM_ARRAY_TASK_ID", 0) - value("SLURM_ARRAY_TASK_MIN", 0)


def generate_config_from_args(args) -> GenerateConfig:
    """The one flags -> GenerateConfig translation (the run and `estimate`)."""
    array_count, array_index = _slurm_array()
    return GenerateConfig(
        kind=args.kind, inputs=args.input, output=args.output, json_key=args.json_keys[0], prompt=args.prompt,
        g=args.generations, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
        num_shards=args.num_shards if args.num_shards is not None else array_count,
        shard_index=args.shard_index if args.shard_index is not None else array_index,
        chunk_docs=args.chunk_docs, exclude_ids=args.exclude_ids, limit=args.limit, engines=args.engines,
        verbose=args.verbose)


def _stop_on_sigterm() -> None:
    """SIGTERM (Slurm's preemption and time limit) unwinds like Ctrl-C, so the engines are stopped on the way out
    (a kill -9 is covered by the engines watching their parent)."""
    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def _cmd_generate(args) -> int:
    config = generate_config_from_args(args)
    _stop_on_sigterm()
    start = time.perf_counter()
    summary = run_generate(config, engine_config_from_args(args), endpoint=endpoint_config_from_args(args))
    engines = f", {summary['engines']} engine(s)" if "engines" in summary else ""
    print(f"megadoc generate {config.kind}: shard {config.shard_index} of {config.num_shards} -> {config.output}: "
          f"{format_summary(summary)}; read {summary['bytes_read']:,} of the corpus's {summary['corpus_bytes']:,} "
          f"bytes ({time.perf_counter() - start:.0f} s{engines})")
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
    repeated = repeated_ids(args.directory)
    if repeated:
        print(f"warning: {repeated} document ids have generations in more than one shard (the corpus repeats them; "
              "deduplicate it, as `megadoc split` requires)")
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
    parser.add_argument("--num-shards", type=int, default=None, help="K shards, each reading 1/K of the corpus "
                                                                     "(default: $SLURM_ARRAY_TASK_COUNT, else 1)")
    parser.add_argument("--shard-index", type=int, default=None,
                        help="this shard (default: $SLURM_ARRAY_TASK_ID - $SLURM_ARRAY_TASK_MIN, else 0)")
    parser.add_argument("--chunk-docs", type=int, default=64, help="documents per committed chunk (default 64)")
    parser.add_argument("--exclude-ids", default=None,
                        help="file of document ids to leave out (one per line or a JSON list), e.g. from megadoc split")
    parser.add_argument("--limit", type=int, default=None, help="stop after N documents of this shard (smoke runs)")
    parser.add_argument("--engines", type=int, default=None,
                        help="engine processes on this node, each on --tensor-parallel-size GPUs of its own "
                             "(default: visible GPUs / --tensor-parallel-size; 1 without GPUs, where --engines N "
                             "divides the cores)")
    parser.add_argument("--verbose", action="store_true",
                        help="engine output to the terminal (default: <output>/logs/<shard>-engine<i>.log)")
    add_engine_arguments(parser)
    add_endpoint_arguments(parser)


def _cmd_estimate(args) -> int:
    from megadoc.preprocess.generate.estimate import estimate, report
    from megadoc.preprocess.generate.workers import visible_gpus
    from megadoc.preprocess.tokenizer import build_tokenizer, spec_from_args

    if args.endpoint:
        raise MegadocError("estimate measures engines of our own (GPU-hours); leave out --endpoint")
    if args.sample_docs < 1 or (args.gpus is not None and args.gpus < 1):
        raise MegadocError("--sample-docs and --gpus must be >= 1")
    if not args.verbose:  # the sample's engine runs in this process: keep its INFO and WARNING lines off the report
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    config = generate_config_from_args(args)
    engine_config = engine_config_from_args(args)
    spec = spec_from_args(args)
    count = None
    if spec is not None:
        tokenizer = build_tokenizer(spec)
        count = lambda texts: sum(map(len, tokenizer.encode_batch(texts))) if texts else 0  # noqa: E731
    gpus = args.gpus or max(len(visible_gpus()), 1)
    result = estimate(config, engine_config, args.sample_docs, gpus, count, resample=args.resample)
    print(report(config, engine_config.model or "SmolLM2-135M-Instruct", result))
    if args.json:
        from dataclasses import asdict

        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 0


def _add_estimate_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    from megadoc.preprocess.tokenizer import add_tokenizer_arguments

    _add_run_arguments(parser, kind)
    parser.set_defaults(func=_cmd_estimate)
    group = parser.add_argument_group("estimate")
    group.add_argument("--sample-docs", type=int, default=32,
                       help="documents to measure on, one from each of as many equal shares of the corpus")
    group.add_argument("--gpus", type=int, default=None, help="GPUs to plan for (default: the visible ones, or 1)")
    group.add_argument("--resample", action="store_true",
                       help="measure on a sample even when --output holds committed chunks of this run")
    group.add_argument("--json", default=None, help="also write the figures to this file")
    add_tokenizer_arguments(parser, required=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="{rephrase,rationale,status,estimate}")
    _add_run_arguments(sub.add_parser("rephrase", help="G rephrases of every document (n=G sampling)"), "rephrase")
    _add_run_arguments(sub.add_parser("rationale", help="G latent-thought rationales inserted into every document"),
                       "rationale")
    estimate = sub.add_parser("estimate", help="tokens, wall time and GPU-hours of a run before it runs: the run's "
                              "flags after `estimate rephrase|rationale`").add_subparsers(dest="kind_",
                                                                                          metavar="{rephrase,rationale}")
    for kind in ("rephrase", "rationale"):
        _add_estimate_arguments(estimate.add_parser(kind, help=f"estimate a {kind} run"), kind)
    status = sub.add_parser("status", help="progress over all shards of a generation directory")
    status.add_argument("directory")
    status.set_defaults(func=_cmd_status)
