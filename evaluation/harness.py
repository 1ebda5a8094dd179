"""Downstream benchmarks for `megadoc eval --tasks`: lm-eval-harness scoring a checkpoint (or an ensemble) directly.

`MegadocLM` is an lm-eval `LM` over the model `megadoc eval` built (`ensemble.LogitAverage`, fp32, the mean of the
members' logits) and the tokenizer the checkpoint trained with: `loglikelihood` for multiple-choice tasks (the
paper's ARC-Easy, PIQA and SciQ, reported as lm-eval's `acc`) and `loglikelihood_rolling` for perplexity tasks;
generation tasks are refused. A request is encoded as lm-eval's Hugging Face model encodes it (context and
continuation split at the context's trailing spaces, an empty context replaced by the end-of-document token),
cut to the model's last seq_length tokens.

lm-eval loads each task's data with HF `datasets`. Offline, a task whose YAML builds its dataset from local files
(`dataset_path: json`, `dataset_kwargs: {data_files: ...}`) under `--include-path` runs as any other.
Scoring runs in one process (world 1), where lm-eval's own loop lives.
"""

import functools
import os

import torch

from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import build_tokenizer

BOOTSTRAP_ITERS = 1000
"""lm-eval's bootstrap resamples for the standard errors of metrics without a closed form."""


def _lm_base():
    try:
        from lm_eval.api.model import LM
    except ImportError:
        raise MegadocError("--tasks needs lm-eval-harness: pip install lm-eval (install.sh does)") from None
    return LM


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None):
    """lm-eval's task index (its built-in tasks plus the YAMLs under include_path); built once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def check_tasks(config, recipe) -> None:
    """Bad --tasks input, before any model is built: no tokenizer to encode with, a world of several processes,
    a task lm-eval does not know."""
    _lm_base()
    if recipe.tokenizer is None:
        raise MegadocError("--tasks: the checkpoint trained with --vocab-size alone; lm-eval needs its tokenizer")
    build_tokenizer(recipe.tokenizer)  # a tokenizer that moved fails here, in one line
    if int(os.environ.get("WORLD_SIZE", "1")) != 1 or config.parallel.tensor_model_parallel_size * \
            config.parallel.pipeline_model_parallel_size != 1:
        raise MegadocError("--tasks runs in one process: no torchrun, TP = PP = 1")
    if config.include_path and not os.path.isdir(config.include_path):
        raise MegadocError(f"--include-path {config.include_path}: not a folder")
    known = set(task_manager(config.include_path).all_tasks)
    unknown = [task for task in config.tasks if task not in known]
    if unknown:
        raise MegadocError(f"--tasks: lm-eval knows no task {', '.join(unknown)}"
                           + ("" if config.include_path else " (a task YAML of your own: --include-path)"))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context, continuation) token ids as lm-eval's HF model makes them: trailing spaces of the context move to the
    continuation, the continuation's ids are the whole's beyond the context's, an empty context is [EOD]."""
    if not context:
        return [tokenizer.eod], tokenizer.encode_batch([continuation])[0]
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = tokenizer.encode_batch([context + continuation, context])
    return head, whole[len(head):]


class MegadocLM(_lm_base()):
    """lm-eval's view of a megadoc model: log-likelihoods of continuations from the model's own logits."""

    def __init__(self, model, tokenizer, seq_length: int, batch_size: int):
        super().__init__()
        self.model, self.tokenizer, self.seq_length, self.batch_size = model, tokenizer, seq_length, batch_size

    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities, and whether greedy decoding would have produced it, for
        each (context, continuation) of token ids; batched, right-padded (causal: padding changes no score)."""
        results = []
        for start in range(0, len(pairs), self.batch_size):
            batch = [(context + continuation)[-(self.seq_length + 1):][:-1] for context, continuation in
                     pairs[start:start + self.batch_size]]
            width = max(len(ids) for ids in batch)
            tokens = torch.tensor([ids + [self.tokenizer.eod] * (width - len(ids)) for ids in batch])
            with torch.no_grad():
                logits = self.model(tokens.cuda(), torch.arange(width).expand_as(tokens).cuda(), None)
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, ids, (_, continuation) in zip(logprobs, batch, pairs[start:start + self.batch_size]):
                last = row[len(ids) - len(continuation):len(ids)]
                target = torch.tensor(continuation)
                results.append((float(last.gather(1, target.unsqueeze(1)).sum()),
                                bool((last.argmax(dim=-1) == target).all())))
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self._score([encode_pair(self.tokenizer, *request.args) for request in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        totals = []
        for request in requests:
            ids = self.tokenizer.encode_batch([request.args[0]])[0]
            windows = [make_disjoint_window(window) for window in get_rolling_token_windows(
                token_list=ids, prefix_token=self.tokenizer.eod, max_seq_len=self.seq_length, context_len=1)]
            totals.append(sum(logprob for logprob, _ in self._score(windows)))
        return totals

    def generate_until(self, requests) -> list[str]:
        raise MegadocError("--tasks: generation tasks are not supported (multiple-choice and perplexity tasks are)")


def evaluate_tasks(model, recipe, config) -> dict[str, dict[str, float]]:
    """task -> {metric: value} (lm-eval's metrics and their standard errors) of `model` on config.tasks."""
    from lm_eval.evaluator import simple_evaluate

    lm = MegadocLM(model, build_tokenizer(recipe.tokenizer), recipe.model.seq_length, config.micro_batch_size)
    output = simple_evaluate(model=lm, tasks=list(config.tasks), num_fewshot=config.num_fewshot, limit=config.limit,
                             task_manager=task_manager(config.include_path), bootstrap_iters=BOOTSTRAP_ITERS,
                             log_samples=False)
    return {task: {metric.split(",")[0]: value for metric, value in metrics.items()
                   if metric != "alias" and isinstance(value, (int, float))}
            for task, metrics in output["results"].items()}
