"""`megadoc eval`: i.i.d. loss, loss by token position, short-document loss and downstream benchmarks of a trained
checkpoint, or of the logit-averaged ensemble of several (`--load A B ...`, `megadoc.evaluation.ensemble`).

A checkpoint of `megadoc train` (Megatron-Core) or of Megatron-Bridge (`megadoc pretrain`, or Bridge's `pretrain`
with a megadoc recipe) loads through one function, `megadoc.training.checkpoints.load_model`: the model's shape,
vocabulary and context come from the checkpoint folder (`megadoc_recipe.json`, else Bridge's run_config.yaml), never
from flags, so a checkpoint cannot be evaluated as a model it is not. Only the weights are loaded (dist_checkpointing,
resharded to this run's TP x PP: a TP=2 checkpoint evaluates at TP=1). Each validation set is a Megatron .bin/.idx
prefix:

- i.i.d. (`--valid-path`) and short documents (`--short-valid-path`): the documents packed into seq_length windows
  exactly as training packs them (a Megatron-Core GPTDataset over the prefix, one epoch, every window once,
  documents shuffled and concatenated with their EODs, no EOD masking, cross-document attention as the run trained:
  on, unless it blocked it); the loss is the token-weighted mean cross-entropy over all windows.
- long documents (`--long-valid-path`): loss by token position, where the position is the token's position IN ITS
  DOCUMENT: one window per document of >= seq_length + 1 tokens, taken from the document's first token; shorter
  documents are skipped and counted. PAPER.md §5/§8 leaves the paper's long-context metric open; this is our
  choice, so the curve shows what a model gains from more of the same document as context. `long_loss` is the
  mean over the whole curve, `mean_beyond[k]` the mean over positions >= k; each bucket carries its standard error
  over the documents.

Downstream (`--tasks`): lm-eval-harness tasks (the paper's arc_easy, piqa, sciq; any YAML task under
`--include-path`) scored by the same model (`megadoc.evaluation.harness`).

A "document" is a sequence of the indexed dataset: `megadoc tokenize` writes one per document (a megadoc's parts
included), and Megatron-Core's GPTDataset treats sequences as its documents too.

Forward passes go through Megatron-Core's pipeline schedule (forward only), so the same code runs at any TP x PP
x DP under torchrun; per-token losses are summed by position on the last pipeline stage and reduced over the
data-parallel ranks, and one rank writes eval.json and loss_by_position.json/.png (atomically) and the registry row
(an ensemble gets a row of its own, `members` = K).
"""

import os
import re
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import orjson
import torch

from megadoc.files import atomic_write, check_output_dir
from megadoc.errors import MegadocError
from megadoc.evaluation.ensemble import Member, build_ensemble, check_members, read_member
from megadoc.evaluation.metrics import LossAccumulator, save_curve
from megadoc.recipes.models import ParallelRecipe, TrainingRecipe
from megadoc.training.registry import RunRecord, read_registry, record_run, update_run
from megadoc.training.runtime import start

EVAL_JSON, CURVE_JSON, CURVE_PNG = "eval.json", "loss_by_position.json", "loss_by_position.png"
SEED = 1234
"""GPTDataset's document shuffle for the packed sets (fixed, so every evaluation packs the same windows) and the
RNG tracker's seed (no dropout in evaluation; Megatron-Core wants the states anyway)."""
MICROBATCHES_PER_CALL = 8
"""Micro-batches per pipeline-schedule call (enough to fill a pipeline; the progress bar moves per call)."""


def add_arguments(parser) -> None:
    parser.add_argument("--load", required=True, nargs="+", help="checkpoint folder(s) of megadoc train or "
                        "Megatron-Bridge (the latest checkpoint of each); several: their logit-averaged ensemble")
    parser.add_argument("--valid-path", help=".bin/.idx prefix of the i.i.d. validation documents")
    parser.add_argument("--long-valid-path", help="prefix of the long documents (loss by token position)")
    parser.add_argument("--short-valid-path", help="prefix of the short documents")
    parser.add_argument("--tasks", nargs="+", default=[], help="lm-eval-harness tasks, e.g. arc_easy piqa sciq")
    parser.add_argument("--include-path", help="folder of lm-eval task YAMLs of your own (lm-eval's --include_path)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="lm-eval few-shot examples (the paper: 0)")
    parser.add_argument("--limit", type=int, help="lm-eval: at most this many examples per task")
    parser.add_argument("--output-dir", required=True, help="writes eval.json, loss_by_position.json and .png")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--bucket-size", type=int, default=64, help="token positions per bucket of the curve")
    parser.add_argument("--beyond", type=int, nargs="+", help="report the mean loss over positions >= each K "
                        "(default: seq_length // 2)")
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--registry", help="runs registry CSV: set this run's losses and curve (an ensemble: add "
                        "its row)")
    # --run-name first: under torchrun a bare --run is refused as an abbreviation of torchrun's own --run-path.
    parser.add_argument("--run-name", "--run", dest="run",
                        help="the run's name in the registry (default: the name megadoc train recorded; an "
                             "ensemble: the first member's, -seed<N> dropped, plus -ens<K>)")
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class EvalConfig:
    """What `megadoc eval` evaluates, on what, and where the results go."""

    load: tuple[str, ...]
    """Checkpoint folders of `megadoc train` or Megatron-Bridge (latest_checkpointed_iteration.txt, iter_NNNNNNN/,
    megadoc_recipe.json or Bridge's run_config.yaml); several are one logit-averaged ensemble."""
    output_dir: str
    """Folder for eval.json, loss_by_position.json and loss_by_position.png."""
    valid_path: str | None = None
    """Prefix of the i.i.d. validation documents; None: no i.i.d. loss."""
    long_valid_path: str | None = None
    """Prefix of the long validation documents (loss by token position); None: no curve."""
    short_valid_path: str | None = None
    """Prefix of the short validation documents; None: no short-document loss."""
    tasks: tuple[str, ...] = ()
    """lm-eval-harness tasks to score (none: no benchmarks)."""
    include_path: str | None = None
    """Folder of extra lm-eval task YAMLs."""
    num_fewshot: int = 0
    """lm-eval few-shot examples."""
    limit: int | None = None
    """lm-eval: at most this many examples per task (None: all)."""
    micro_batch_size: int = 4
    """Windows per forward pass on one data-parallel rank."""
    bucket_size: int = 64
    """Token positions averaged into one point of the curve."""
    beyond: tuple[int, ...] | None = None
    """Positions k for `mean_beyond[k]`; None: seq_length // 2."""
    parallel: ParallelRecipe = field(default_factory=ParallelRecipe)
    """TP x PP of this run (need not match training's)."""
    registry: str | None = None
    """Runs registry CSV whose row `run` gets the losses and the curve's path."""
    run: str | None = None
    """The run's name in the registry."""


# ---------------------------------------------------------------------------------------------------- inputs


def open_prefix(prefix: str, vocab_size: int, tokenizer=None):
    """The IndexedDataset of a prefix, checked (in one line, before Megatron-Core reads it) to be a consistent pair
    written with the checkpoint's vocabulary (and by its tokenizer, where both are known: their fingerprints)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megadoc.preprocess.indexed import UINT16_VOCAB_LIMIT, check_tokenizer, read_index

    data = read_index(prefix)
    if tokenizer is not None:
        check_tokenizer(data, tokenizer)
    if data.dtype == np.uint16 and vocab_size >= UINT16_VOCAB_LIMIT:
        raise MegadocError(f"{prefix}: uint16 tokens, so written with a vocabulary below {UINT16_VOCAB_LIMIT}; the "
                           f"checkpoint's has {vocab_size} (another tokenizer?)")
    if data.num_tokens:
        top = int(data.tokens.max())
        if top >= vocab_size:
            raise MegadocError(f"{prefix}: token id {top} is outside the checkpoint's vocabulary of {vocab_size} "
                               "(another tokenizer?)")
    return IndexedDataset(prefix, multimodal=False)


def packed_windows(prefix: str, seq_length: int, vocab_size: int,
                   block_cross_document_attention: bool = False):
    """Every seq_length window of the prefix once, packed as training packs (one GPTDataset epoch); with blocked
    cross-document attention each window carries its attention mask."""
    from megadoc_data.datasets import VocabOnlyTokenizer, single_prefix_dataset

    return single_prefix_dataset(prefix, VocabOnlyTokenizer(vocab_size), seq_length, SEED,
                                 block_cross_document_attention=block_cross_document_attention)


class DocumentStartWindows(torch.utils.data.Dataset):
    """One window per document of >= seq_length + 1 tokens, from the document's first token (window position ==
    position in the document); shorter documents are skipped and counted."""

    def __init__(self, indexed, prefix: str, seq_length: int):
        self.indexed, self.seq_length = indexed, seq_length
        self.documents = np.flatnonzero(indexed.sequence_lengths >= seq_length + 1)
        self.skipped = len(indexed) - len(self.documents)
        if not len(self.documents):
            raise MegadocError(f"{prefix}: none of its {len(indexed)} documents has seq_length + 1 = "
                               f"{seq_length + 1} tokens")

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, index: int) -> dict:
        text = self.indexed.get(int(self.documents[index]), offset=0, length=self.seq_length + 1)
        text = torch.from_numpy(text.astype(np.int64))
        return {"tokens": text[:-1], "labels": text[1:], "loss_mask": torch.ones(self.seq_length)}


def trained_tokenizer(recipe: TrainingRecipe):
    """The tokenizer the checkpoint was trained with, where its files are still at hand (else None)."""
    from megadoc.preprocess.tokenizer import EMBEDDED_TOKENIZER, build_tokenizer

    if recipe.tokenizer is None or not (recipe.tokenizer.model == EMBEDDED_TOKENIZER
                                        or os.path.exists(recipe.tokenizer.model)):
        return None
    return build_tokenizer(recipe.tokenizer)


def validation_windows(kind: str, prefix: str, member: Member, tokenizer=None):
    """The windows of one validation set: packed (iid, short) or one per long document from its start (long; one
    document per window, so there is nothing across documents to mask)."""
    recipe = member.run.recipe
    indexed = open_prefix(prefix, recipe.vocab_size, tokenizer)
    if kind == "long":
        return DocumentStartWindows(indexed, prefix, recipe.model.seq_length)
    return packed_windows(prefix, recipe.model.seq_length, recipe.vocab_size, member.run.block_cross_document_attention)


# ---------------------------------------------------------------------------------------------------- model


def _token_losses(mask: torch.Tensor, output: torch.Tensor):
    """The schedule's loss function: keep every token's loss (and which tokens count) for the accumulator."""
    losses = output.detach().float()
    return losses.sum(), {"loss": losses.cpu().numpy(), "mask": mask.numpy()}


def _forward_step(batches, model):
    batch = next(batches)
    mask = batch["attention_mask"].cuda() if "attention_mask" in batch else None
    output = model(batch["tokens"].cuda(), batch["position_ids"].cuda(), mask, labels=batch["labels"].cuda())
    return output, partial(_token_losses, batch["mask"])


def _batch(windows, indices: list[int]) -> dict:
    """Stack windows into a micro-batch; index -1 pads a short last batch with a window whose loss is not counted.
    Windows that carry attention masks (blocked cross-document attention) bring them and their position ids."""
    samples = [windows[i if i >= 0 else indices[0]] for i in indices]
    tokens = torch.stack([s["tokens"] for s in samples])
    counted = torch.tensor([i >= 0 for i in indices]).unsqueeze(1)
    batch = {"tokens": tokens, "labels": torch.stack([s["labels"] for s in samples]),
             "position_ids": torch.arange(tokens.shape[1]).expand_as(tokens),
             "mask": torch.stack([s["loss_mask"] for s in samples]).bool() & counted}
    if "attention_mask" in samples[0]:
        batch["attention_mask"] = torch.stack([s["attention_mask"] for s in samples])
        batch["position_ids"] = torch.stack([s["position_ids"] for s in samples])
    return batch


def micro_batches(num_windows: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> list[list[int]]:
    """This data-parallel rank's micro-batches of window indices (every window once over all ranks)."""
    padded = -(-num_windows // micro_batch_size) * micro_batch_size
    indices = [i if i < num_windows else -1 for i in range(padded)]
    batches = [indices[i:i + micro_batch_size] for i in range(0, padded, micro_batch_size)]
    return batches[dp_rank::dp_size]


def loss_by_position(model, windows, seq_length: int, micro_batch_size: int, desc: str, progress: bool,
                     keep_windows: bool = False) -> LossAccumulator | None:
    """Per-token cross-entropy of every window summed by window position (and kept per window with
    `keep_windows`), over all data-parallel ranks; on the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func
    from tqdm import tqdm

    batches = micro_batches(len(windows), micro_batch_size, parallel_state.get_data_parallel_rank(),
                            parallel_state.get_data_parallel_world_size())
    last_stage = parallel_state.is_pipeline_last_stage()
    accumulator = LossAccumulator(seq_length, len(windows) if keep_windows else None)
    positions = np.tile(np.arange(seq_length), micro_batch_size)
    bar = tqdm(total=sum(i >= 0 for b in batches for i in b), desc=desc, unit="window", disable=not progress)
    for first in range(0, len(batches), MICROBATCHES_PER_CALL):
        chunk = batches[first:first + MICROBATCHES_PER_CALL]
        with torch.no_grad():
            outputs = get_forward_backward_func()(
                forward_step_func=_forward_step, data_iterator=(_batch(windows, b) for b in chunk), model=[model],
                num_microbatches=len(chunk), seq_length=seq_length, micro_batch_size=micro_batch_size,
                forward_only=True)
        if last_stage:
            for output, indices in zip(outputs, chunk):
                accumulator.add(output["loss"], positions, output["mask"], np.repeat(indices, seq_length))
        bar.update(sum(i >= 0 for b in chunk for i in b))
    bar.close()
    if not last_stage:
        return None
    group = parallel_state.get_data_parallel_group()
    kept = [] if accumulator.by_window is None else [accumulator.by_window]  # each rank filled its own windows
    for array in (accumulator.loss_sum, accumulator.count, *kept):
        total = torch.from_numpy(array.copy()).cuda()
        torch.distributed.all_reduce(total, group=group)
        array[:] = total.cpu().numpy()
    return accumulator


# ---------------------------------------------------------------------------------------------------- outputs


def plot_curve(curve, path: Path, title: str) -> None:
    from megadoc.evaluation.metrics import draw_curve, pyplot

    plt = pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.5))
    draw_curve(axes, curve)
    axes.set(xlabel="token position in the document", ylabel="loss (long documents)", title=title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120)
    plt.close(figure)


def ensemble_record(config: EvalConfig, members: list[Member]) -> RunRecord:
    """An ensemble's registry row: its members' common configuration (they may differ only in seed), K members,
    named after the first member (-seed<N> dropped) plus -ens<K> unless --run-name names it."""
    rows = {run.run: run for run in read_registry(config.registry)}
    unknown = [member.load for member in members if member.run.name not in rows]
    if unknown:
        raise MegadocError(f"{unknown[0]}: its run is not in {config.registry}; an ensemble's members must be "
                           "recorded runs")
    first, *others = [rows[member.run.name] for member in members]
    if any(other.configuration() != first.configuration() for other in others):
        raise MegadocError("an ensemble's members must be runs of one configuration (they may differ only in seed)")
    return replace(first, run=config.run or re.sub(r"-seed\d+$", "", first.run) + f"-ens{len(members)}",
                   seed=None, members=len(members), iid_loss=None, long_loss=None, short_loss=None,
                   loss_by_position="", checkpoint=" ".join(str(Path(m.load).resolve()) for m in members))


def record_results(config: EvalConfig, results: dict, ensemble: RunRecord | None) -> None:
    """Set the run's losses (and curve path, relative to the registry's folder) in the runs registry; an ensemble
    gets its own row."""
    fields = {key: results[key] for key in ("iid_loss", "long_loss", "short_loss") if key in results}
    if "long_loss" in results:
        curve = Path(config.output_dir).resolve() / CURVE_JSON
        fields["loss_by_position"] = os.path.relpath(curve, Path(config.registry).resolve().parent)
    if ensemble is not None:
        record_run(config.registry, replace(ensemble, **fields))
    else:
        update_run(config.registry, config.run, **fields)


# ---------------------------------------------------------------------------------------------------- main


def check_config(config: EvalConfig, members: list[Member]) -> tuple[EvalConfig, tuple[int, ...], RunRecord | None]:
    """Bad flags, before any model is built: the config with the run's registry name, the positions k of
    mean_beyond, and an ensemble's registry row."""
    check_members(members)
    seq_length = members[0].run.recipe.model.seq_length
    if not (config.valid_path or config.long_valid_path or config.short_valid_path or config.tasks):
        raise MegadocError("nothing to evaluate: give --valid-path, --long-valid-path, --short-valid-path or --tasks")
    if config.run and not config.registry:
        raise MegadocError("--run-name names a row of the runs registry: give --registry too")
    ensemble = None
    if config.registry and len(members) > 1:
        ensemble = ensemble_record(config, members)
        config = replace(config, run=ensemble.run)
    elif config.registry:
        if not config.run and members[0].run.name is None:
            raise MegadocError(f"{members[0].load}: the run was not recorded in a registry; give --run-name")
        config = replace(config, run=config.run or members[0].run.name)
        if config.run not in {run.run for run in read_registry(config.registry)}:
            raise MegadocError(f"{config.registry}: no run named {config.run!r} in the registry")
    if config.micro_batch_size < 1 or config.bucket_size < 1:
        raise MegadocError("--micro-batch-size and --bucket-size must be >= 1")
    beyond = tuple(config.beyond) if config.beyond else (seq_length // 2,)
    if not all(0 <= k < seq_length for k in beyond):
        raise MegadocError(f"--beyond: positions run 0..{seq_length - 1}, got {' '.join(map(str, beyond))}")
    if config.tasks:
        from megadoc.evaluation.harness import check_tasks

        check_tasks(config, members[0].run.recipe)
    return config, beyond, ensemble


def evaluate(config: EvalConfig) -> dict | None:
    """Evaluate the checkpoint (or ensemble); the results on the rank that writes them (None on the others)."""
    from megatron.core import parallel_state

    members = [read_member(load) for load in config.load]
    config, beyond, ensemble = check_config(config, members)
    trained = members[0].run.recipe
    seq_length = trained.model.seq_length
    sets = {"iid": config.valid_path, "short": config.short_valid_path, "long": config.long_valid_path}
    tokenizer = trained_tokenizer(trained)
    windows = {name: validation_windows(name, prefix, members[0], tokenizer) for name, prefix in sets.items() if prefix}

    start(config.parallel, SEED)
    writer = (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
              and parallel_state.get_data_parallel_rank() == 0)
    model, iterations = build_ensemble(members, config.parallel)
    sums = {name: loss_by_position(model, sample, seq_length, config.micro_batch_size, name, writer,
                                   keep_windows=name == "long")
            for name, sample in windows.items()}
    benchmarks = None
    if config.tasks:
        from megadoc.evaluation.harness import evaluate_tasks

        benchmarks = evaluate_tasks(model, trained, config)
    if not writer:
        return None

    checkpoints = [str(Path(load).resolve()) for load in config.load]
    results = {"checkpoint": checkpoints[0] if len(checkpoints) == 1 else checkpoints,
               "iteration": iterations[0] if len(iterations) == 1 else iterations, "members": len(members),
               "recipe": trained.model.name, "seq_length": seq_length}
    for name, accumulator in sums.items():
        results.update({f"{name}_loss": accumulator.mean(), f"{name}_tokens": accumulator.tokens,
                        f"{name}_windows": len(windows[name]), f"{name}_prefix": sets[name]})
    if benchmarks is not None:
        results["benchmarks"] = benchmarks
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if "long" in sums:
        curve = sums["long"].curve(config.bucket_size, beyond)
        results.update({"long_skipped_documents": int(windows["long"].skipped),
                        "mean_beyond": {str(k): v for k, v in curve.mean_beyond.items()}})
        save_curve(curve, out / CURVE_JSON)
        title = f"{trained.model.name}, " + (f"iteration {iterations[0]}" if len(members) == 1
                                              else f"ensemble of {len(members)}")
        plot_curve(curve, out / CURVE_PNG, title)
    with atomic_write(out / EVAL_JSON) as handle:
        handle.write(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if config.registry:
        record_results(config, results, ensemble)
    return results


def run(args) -> int:
    check_output_dir(args.output_dir, "--output-dir")  # before the model is loaded and every window scored
    config = EvalConfig(
        load=tuple(args.load), valid_path=args.valid_path, output_dir=args.output_dir,
        long_valid_path=args.long_valid_path, short_valid_path=args.short_valid_path, tasks=tuple(args.tasks),
        include_path=args.include_path, num_fewshot=args.num_fewshot, limit=args.limit,
        micro_batch_size=args.micro_batch_size, bucket_size=args.bucket_size,
        beyond=tuple(args.beyond) if args.beyond else None,
        parallel=ParallelRecipe(args.tensor_model_parallel_size, args.pipeline_model_parallel_size),
        registry=args.registry, run=args.run)
    results = evaluate(config)
    if results is not None:
        shown = {k: v for k, v in results.items() if k.endswith("_loss") or k == "benchmarks"}
        print(orjson.dumps(shown).decode(), flush=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return 0
