"""`megadoc split`: set aside validation documents before anything is generated from the corpus.

Three held-out sets, as the paper evaluates (§5): an i.i.d. set of random real documents, a long-document set
(documents of at least `long_min_tokens` tokens, e.g. >= seq_length) for loss by token position, and a short-document
set (documents of at most `short_max_tokens`; the paper's `dc_500_val_short` beside `dc_500_val_long`). The long set
is drawn first, so the long documents the corpus has are not spent on the other sets, then the short set; the i.i.d.
set is then drawn from the remaining documents, long and short ones included, so it stays an unbiased sample of the
rest.

Data budgets (`--budgets`): nested subsets of the training documents for the real-only data-scaling law, each the
shortest prefix of one seeded order of the training documents that reaches its budget (a fraction of the training
tokens, or a token count), so every smaller budget's documents are inside every larger one's.

Two passes over the corpus: the first tokenizes to count lengths (memory: an id and a length per document), the
second writes the records. The draw depends only on the corpus order, the token counts and `--seed`.
Document ids must be unique: a duplicated id could put one copy in validation and the other in training.

Generation and assembly call `load_validation_ids` and `check_no_leak` so that no validation document reaches a
synthetic stream.
"""

import argparse
import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import orjson

from megadoc.files import atomic_write, check_output_dir, check_output_file
from megadoc.preprocess.corpus import add_corpus_arguments, iter_records, record_id, record_text
from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import Tokenizer, add_tokenizer_arguments, build_tokenizer, spec_from_args

TRAIN, VALID_IID, VALID_LONG, VALID_SHORT = "train.jsonl", "valid_iid.jsonl", "valid_long.jsonl", "valid_short.jsonl"
VALIDATION_IDS = "validation_ids.txt"
BUDGETS_DIR = "budgets"
SPLIT_JSON = "split.json"
ENCODE_BATCH = 256


@dataclass(frozen=True)
class SplitConfig:
    """What to hold out, and how to draw it."""

    iid_docs: int
    """Random real documents for the i.i.d. validation loss (the paper: ~1k DCLM documents)."""
    long_docs: int
    """Documents of at least `long_min_tokens` tokens, for loss by token position (the paper: 500)."""
    long_min_tokens: int
    """Token length (no end-of-document token counted) a document needs to enter the long set."""
    short_docs: int = 0
    """Documents of at most `short_max_tokens` tokens, for the short-document loss (the paper: 500)."""
    short_max_tokens: int | None = None
    """Token length a short document may not exceed; needed when short_docs > 0."""
    budgets: tuple[float, ...] = ()
    """Data budgets: fractions (<= 1) of the training tokens, or token counts (> 1), each a nested subset."""
    seed: int = 1234
    """Seed of the draw; the same corpus and seed give the same split."""
    json_key: str = "text"
    """Record key holding the document text."""


@dataclass(frozen=True)
class Split:
    """Which corpus positions (0-based, in read order) go to each validation set."""

    iid: frozenset[int]
    long: frozenset[int]
    short: frozenset[int] = frozenset()

    @property
    def held_out(self) -> frozenset[int]:
        return self.iid | self.long | self.short


def count_tokens(inputs: list[str], tokenizer: Tokenizer, json_key: str) -> tuple[list[str], np.ndarray]:
    """Ids and token lengths of every document, in read order; duplicated ids are refused."""
    ids: list[str] = []
    lengths: list[int] = []
    seen: dict[str, str] = {}
    texts: list[str] = []

    def flush():
        lengths.extend(len(tokens) for tokens in tokenizer.encode_batch(texts))
        texts.clear()

    for record in iter_records(inputs):
        text = record_text(record, json_key)
        doc_id = record_id(record, text)
        if doc_id in seen:
            raise MegadocError(f"{record.where}: id {doc_id!r} already used at {seen[doc_id]}; deduplicate first")
        seen[doc_id] = record.where
        ids.append(doc_id)
        texts.append(text)
        if len(texts) == ENCODE_BATCH:
            flush()
    flush()
    return ids, np.asarray(lengths, dtype=np.int64)


def draw_split(lengths: np.ndarray, config: SplitConfig) -> Split:
    """The long set from documents >= long_min_tokens, the short set from documents <= short_max_tokens, then the
    i.i.d. set from all the others."""
    rng = np.random.default_rng(config.seed)
    long_pool = np.flatnonzero(lengths >= config.long_min_tokens)
    if len(long_pool) < config.long_docs:
        raise MegadocError(f"only {len(long_pool)} documents have >= {config.long_min_tokens} tokens, "
                           f"{config.long_docs} asked for the long set; lower --long-docs or --long-min-tokens")
    long = rng.choice(long_pool, size=config.long_docs, replace=False)
    short = np.array([], dtype=np.int64)
    if config.short_docs:
        short_pool = np.setdiff1d(np.flatnonzero(lengths <= config.short_max_tokens), long)
        if len(short_pool) < config.short_docs:
            raise MegadocError(f"only {len(short_pool)} documents have <= {config.short_max_tokens} tokens, "
                               f"{config.short_docs} asked for the short set; lower --short-docs or raise "
                               "--short-max-tokens")
        short = rng.choice(short_pool, size=config.short_docs, replace=False)
    rest = np.setdiff1d(np.arange(len(lengths)), np.concatenate([long, short]))
    if len(rest) <= config.iid_docs:
        raise MegadocError(f"{len(lengths)} documents cannot give {config.long_docs} long + {config.short_docs} "
                           f"short + {config.iid_docs} i.i.d. validation documents and still leave training data")
    iid = rng.choice(rest, size=config.iid_docs, replace=False)
    return Split(iid=frozenset(iid.tolist()), long=frozenset(long.tolist()), short=frozenset(short.tolist()))


def budget_label(budget: float) -> str:
    """How a budget names its file: 0.25 -> '0.25', 5000 -> '5000'."""
    return f"{budget:g}"


def draw_budgets(lengths: np.ndarray, train: np.ndarray, config: SplitConfig) -> dict[str, list[int]]:
    """label -> corpus positions of each budget's documents: the shortest prefix of one seeded order of the
    training documents whose tokens reach the budget (so the subsets are nested)."""
    order = np.random.default_rng([config.seed, 1]).permutation(train)
    cumulative = np.cumsum(lengths[order])
    total = int(cumulative[-1]) if len(cumulative) else 0
    chosen = {}
    for budget in config.budgets:
        target = budget * total if budget <= 1 else budget
        if not 0 < target <= total:
            raise MegadocError(f"--budgets {budget:g}: the training split has {total} tokens; give a fraction in "
                               "(0, 1] or a token count up to that")
        chosen[budget_label(budget)] = sorted(order[:int(np.searchsorted(cumulative, target)) + 1].tolist())
    return chosen


def write_split(inputs: list[str], ids: list[str], split: Split, budgets: dict[str, list[int]], out_dir: Path,
                json_key: str) -> dict[str, int]:
    """Second pass: each record, with its id, to train / valid_iid / valid_long / valid_short, and to every budget
    holding it; returns the record counts."""
    files = {TRAIN: out_dir / TRAIN, VALID_IID: out_dir / VALID_IID, VALID_LONG: out_dir / VALID_LONG}
    if split.short:
        files[VALID_SHORT] = out_dir / VALID_SHORT
    files.update({f"{BUDGETS_DIR}/{label}.jsonl": out_dir / BUDGETS_DIR / f"{label}.jsonl" for label in budgets})
    members = {name: frozenset(budgets[name[len(BUDGETS_DIR) + 1:-len(".jsonl")]]) for name in files
               if name.startswith(BUDGETS_DIR)}
    counts = dict.fromkeys(files, 0)
    with contextlib.ExitStack() as stack:
        handles = {name: stack.enter_context(atomic_write(path)) for name, path in files.items()}
        for index, record in enumerate(iter_records(inputs)):
            doc_id = record_id(record, record_text(record, json_key))
            if index >= len(ids) or doc_id != ids[index]:
                raise MegadocError(f"{record.where}: corpus changed between the two passes")
            line = orjson.dumps({**record.data, "id": doc_id}) + b"\n"
            name = (VALID_LONG if index in split.long else VALID_SHORT if index in split.short
                    else VALID_IID if index in split.iid else TRAIN)
            for target in [name] + [budget for budget, held in members.items() if index in held]:
                handles[target].write(line)
                counts[target] += 1
    return counts


def split_corpus(inputs: list[str], out_dir: str | os.PathLike, tokenizer: Tokenizer, config: SplitConfig) -> dict:
    """Hold out the validation sets of `inputs` under `out_dir`; returns what split.json records."""
    out = check_output_dir(out_dir, "--output-dir")  # before the corpus is counted; made once the draw holds
    ids, lengths = count_tokens(inputs, tokenizer, config.json_key)
    split = draw_split(lengths, config)
    held_out = sorted(split.held_out)
    budgets = draw_budgets(lengths, np.setdiff1d(np.arange(len(ids)), held_out), config)
    for name in (TRAIN, VALID_IID, VALID_LONG, VALIDATION_IDS, SPLIT_JSON):
        check_output_file(out / name, "--output-dir")
    if budgets:
        (out / BUDGETS_DIR).mkdir(exist_ok=True)
    counts = write_split(inputs, ids, split, budgets, out, config.json_key)
    with atomic_write(out / VALIDATION_IDS, "w") as handle:
        handle.writelines(f"{ids[index]}\n" for index in held_out)
    summary = {"config": asdict(config), "inputs": inputs, "documents": len(ids), "records": counts,
               "long_tokens": int(lengths[sorted(split.long)].sum()),
               "short_tokens": int(lengths[sorted(split.short)].sum()),
               "iid_tokens": int(lengths[sorted(split.iid)].sum()),
               "train_tokens": int(lengths.sum() - lengths[held_out].sum()),
               "budgets": {label: {"documents": len(docs), "tokens": int(lengths[docs].sum())}
                           for label, docs in budgets.items()}}
    with atomic_write(out / SPLIT_JSON) as handle:
        handle.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    return summary


def load_validation_ids(path: str | os.PathLike) -> frozenset[str]:
    """The ids `megadoc split` held out (a validation_ids.txt, or the split folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / VALIDATION_IDS
    try:
        return frozenset(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError as error:
        raise MegadocError(f"{path}: cannot read validation ids ({error.strerror or error})") from None


def check_no_leak(ids: Iterable[str], validation_ids: frozenset[str], what: str = "input") -> None:
    """Refuse a stream that holds a held-out document: its loss would no longer measure generalisation."""
    for doc_id in ids:
        if doc_id in validation_ids:
            raise MegadocError(f"{what}: document {doc_id!r} is a validation document (see megadoc split)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_corpus_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="writes train.jsonl, valid_iid.jsonl, valid_long.jsonl, "
                                                             "validation_ids.txt and split.json here")
    parser.add_argument("--iid-docs", type=int, required=True, help="random documents for the i.i.d. validation set")
    parser.add_argument("--long-docs", type=int, required=True, help="documents for the long-document set")
    parser.add_argument("--long-min-tokens", type=int, required=True,
                        help="minimum token length of a long document (e.g. the training --seq-length)")
    parser.add_argument("--short-docs", type=int, default=0, help="documents for the short-document set")
    parser.add_argument("--short-max-tokens", type=int, default=None,
                        help="maximum token length of a short document")
    parser.add_argument("--budgets", type=float, nargs="+", default=[], metavar="B",
                        help="data budgets for the real-only law: fractions (<= 1) of the training tokens or token "
                             "counts (> 1); writes budgets/<B>.jsonl, nested subsets of train.jsonl")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the draw")
    add_tokenizer_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if min(args.iid_docs, args.long_docs, args.short_docs) < 0 or args.long_min_tokens < 1:
        raise MegadocError("--iid-docs, --long-docs and --short-docs must be >= 0 and --long-min-tokens >= 1")
    if args.short_docs and not (args.short_max_tokens or 0) >= 1:
        raise MegadocError("--short-docs needs --short-max-tokens >= 1")
    if any(not b > 0 for b in args.budgets) or len(set(args.budgets)) < len(args.budgets):
        raise MegadocError(f"--budgets: {' '.join(map(budget_label, args.budgets))} must be distinct and > 0")
    config = SplitConfig(iid_docs=args.iid_docs, long_docs=args.long_docs, long_min_tokens=args.long_min_tokens,
                         short_docs=args.short_docs, short_max_tokens=args.short_max_tokens,
                         budgets=tuple(sorted(args.budgets)), seed=args.seed, json_key=args.json_keys[0])
    summary = split_corpus(args.input, args.output_dir, build_tokenizer(spec_from_args(args)), config)
    records = summary["records"]
    short = f", {records[VALID_SHORT]} short ({summary['short_tokens']} tokens)" if VALID_SHORT in records else ""
    budgets = "".join(f"; budget {label}: {b['documents']} documents, {b['tokens']} tokens"
                      for label, b in summary["budgets"].items())
    print(f"megadoc split: {records[TRAIN]} train ({summary['train_tokens']} tokens), {records[VALID_IID]} i.i.d. "
          f"({summary['iid_tokens']} tokens), {records[VALID_LONG]} long ({summary['long_tokens']} tokens){short}"
          f"{budgets} -> {args.output_dir}")
    return 0
