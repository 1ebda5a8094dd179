"""`megadoc train`: a recipe trained on one prefix (--data-path) or on the exact megadoc blend (--real-path ...).

config (the flags, translated once: recipe, tokenizer, blend) -> data (the plan's exact blend, train_iters the
plan's) -> the run config (megadoc_recipe.json) and the registry row, both from what is actually used -> the loop.
"""

import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from megadoc.errors import MegadocError
from megadoc.files import check_output_dir, check_output_file
from megadoc.preprocess.tokenizer import add_tokenizer_arguments, build_tokenizer, spec_from_args
from megadoc.recipes.models import TrainingRecipe, add_recipe_arguments, recipe_from_args
from megadoc.training.checkpoints import RunConfig, check_resumable
from megadoc.training.loop import LOG_NAME, train
from megadoc.training.registry import DEFAULT_SEED, REAL_ONLY, record_run, run_record
from megadoc.training.runtime import init_distributed
from megadoc.training import device_shim
from megadoc_data.config import add_blend_arguments, blend_from_args

def add_arguments(parser) -> None:
    add_recipe_arguments(parser)
    data = parser.add_argument_group("data: one prefix (--data-path), or a megadoc blend (--real-path ...)")
    data.add_argument("--data-path", help="Megatron .bin/.idx prefix of the training tokens, read as they are")
    data.add_argument("--data-cache-path", default=None, help="Megatron-Core index cache folder")
    add_blend_arguments(parser, validation=False, required=False)
    add_tokenizer_arguments(parser, required=False)
    parser.add_argument("--vocab-size", type=int, help="vocabulary size when no --tokenizer-model is given")
    parser.add_argument("--train-iters", type=int, help="optimizer steps (default with a blend: the plan's)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--save", help="checkpoint directory (also where the JSONL loss log goes)")
    parser.add_argument("--save-interval", type=int, help="save every N iterations (and at the end)")
    parser.add_argument("--load", help="checkpoint directory to resume from; one holding no checkpoint yet starts "
                        "from scratch, as Megatron-LM does (so --load and --save may name the same folder)")
    parser.add_argument("--exit-interval", type=int, help="stop after this iteration (the schedule still spans "
                        "--train-iters), e.g. to test resuming")
    parser.add_argument("--log-dir", help="where train_log.jsonl goes (default: --save, else the current dir)")
    registry = parser.add_argument_group("runs registry: record this run when it starts (megadoc eval adds scores)")
    registry.add_argument("--registry", help="runs registry CSV")
    # --run-name first: under torchrun a bare --run is refused as an abbreviation of torchrun's own --run-path.
    registry.add_argument("--run-name", "--run", dest="run",
                          help="run name, the registry key (default: the paper's pattern, megadoc.recipes.sweep)")
    registry.add_argument("--method", default=None, help="what the run trains on, needed with --registry: `real` "
                          "(the real-only baseline the data law is fitted on), or a synthetic method's name")
    registry.add_argument("--generations", type=int, default=0, help="G: synthetic generations per document")
    registry.add_argument("--real-tokens-from", metavar="PREFIX", help="a run on synthetic data alone (no real "
                          "stream; the paper's no-real-data ablation): the real documents it was made from, whose "
                          "tokens are the run's real-token budget D")
    parser.set_defaults(func=run)


def recipe_and_tokenizer(args) -> tuple[TrainingRecipe, object]:
    """The recipe the flags describe, and the tokenizer (or vocabulary) the data was written with."""
    from megadoc_data.datasets import VocabOnlyTokenizer

    spec = spec_from_args(args)
    if spec is not None and os.path.exists(spec.model):  # recorded absolute: eval and lm-eval run from anywhere
        spec = replace(spec, model=str(Path(spec.model).resolve()))
    if spec is not None:
        tokenizer = build_tokenizer(spec)
    elif args.vocab_size:
        tokenizer = VocabOnlyTokenizer(args.vocab_size)
    else:
        raise MegadocError("give --tokenizer-model or --vocab-size")
    return recipe_from_args(args, tokenizer.vocab_size, spec), tokenizer


def build_training_data(args, recipe: TrainingRecipe, tokenizer) -> tuple[object, RunConfig]:
    """(dataset, run config): one prefix as it is, or the exact blend of a megadoc plan (train_iters the plan's)."""
    from megadoc_data.datasets import build_datasets, check_plan, single_prefix_dataset

    if bool(args.data_path) == bool(args.real_path):
        raise MegadocError("give either --data-path or --real-path (a megadoc blend)")
    seq_length = recipe.model.seq_length
    if args.data_path:
        if not args.train_iters:
            raise MegadocError("--train-iters is required with --data-path")
        dataset = single_prefix_dataset(args.data_path, tokenizer, seq_length, args.seed,
                                        args.train_iters * recipe.global_batch_size, args.data_cache_path or "",
                                        args.block_cross_document_attention)
        return dataset, RunConfig(recipe, args.train_iters, args.seed, data_path=args.data_path,
                                  block_cross_document_attention=args.block_cross_document_attention)
    blend = blend_from_args(args, seq_length=seq_length)
    plan = check_plan(blend, tokenizer)
    if args.train_iters and args.train_iters != plan.train_iters:
        raise MegadocError(f"--train-iters {args.train_iters} differs from the plan's {plan.train_iters}; "
                           "leave it out to train the plan")
    dataset, _, _ = build_datasets(blend, tokenizer, train_samples=plan.total_sequences)
    return dataset, RunConfig(recipe, plan.train_iters, args.seed, blend=asdict(blend), plan=plan.to_json(),
                              block_cross_document_attention=blend.block_cross_document_attention)


def check_method(args) -> None:
    """A run enters the registry only under an explicit method, so nothing lands on the real-only data law by
    default: a run on a synthetic stream alone (given as --real-path or --data-path) would otherwise look real."""
    if args.registry and not args.method:
        raise MegadocError("--registry needs --method: `real` for the real-only baseline (the data law is fitted on "
                           "those runs), or the synthetic method's name")
    if args.method == REAL_ONLY and (args.real_tokens_from or args.synthetic_path):
        raise MegadocError(f"--method {REAL_ONLY} is the real-only baseline: it trains on no synthetic data "
                           "(--synthetic-path, --real-tokens-from)")


def check_outputs(args) -> None:
    """What the run will write, checked before any work: --train-iters, the checkpoint and log folders, the
    registry file."""
    if args.train_iters is not None and args.train_iters < 1:
        raise MegadocError(f"--train-iters {args.train_iters}: must be >= 1")
    for flag, folder in (("--save", args.save), ("--log-dir", args.log_dir)):
        if folder:
            check_output_dir(folder, flag)
    if args.registry:
        check_output_file(args.registry, "--registry")


def run(args) -> int:
    check_method(args)
    check_outputs(args)
    recipe, tokenizer = recipe_and_tokenizer(args)
    check_resumable(args.load, recipe)
    device_shim.activate()
    init_distributed(recipe.parallel)  # the blend's index cache is built once per world (rank 0 first)
    dataset, run_config = build_training_data(args, recipe, tokenizer)
    if args.registry:
        record = run_record(run_config, args.method, args.generations, args.run, args.save, args.real_tokens_from)
        run_config = replace(run_config, name=record.run)
        if torch.distributed.get_rank() == 0:
            record_run(args.registry, record)
    log_dir = Path(args.log_dir or args.save or ".")
    log_dir.mkdir(parents=True, exist_ok=True)
    train(run_config, dataset, save=args.save, save_interval=args.save_interval, load=args.load,
          log_path=log_dir / LOG_NAME, exit_interval=args.exit_interval)
    torch.distributed.destroy_process_group()
    return 0
