"""`megadoc split`: set aside validation documents before anything is generated from the corpus.

Two held-out sets, as the paper evaluates (§5): an i.i.d. set of random real documents and a long-document set
(documents of at least `long_min_tokens` tokens, e.g. >= seq_length) for loss by token position. The long set is
drawn first, so the long documents the corpus has are not spent on the i.i.d. set; the i.i.d. set is then drawn
from the remaining documents, long ones included, so it stays an unbiased sample of the rest.

Two passes over the corpus: the first tokenizes to count lengths (memory: an id and a length per document), the
second writes the records. The draw depends only on the corpus order, the token counts and `--seed`.
Document ids must be unique: a duplicated id could put one copy in validation and the other in training.

Generation and assembly call `load_validation_ids` and `check_no_leak` so that no validation document reaches a
synthetic stream.
"""

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import orjson

from megadoc.files import atomic_write, check_output_file
from megadoc.preprocess.corpus import add_corpus_arguments, iter_records, record_id, record_text
from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import Tokenizer, add_tokenizer_arguments, build_tokenizer, spec_from_args

TRAIN, VALID_IID, VALID_LONG = "train.jsonl", "valid_iid.jsonl", "valid_long.jsonl"
VALIDATION_IDS = "validation_ids.txt"
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
    seed: int = 1234
    """Seed of the draw; the same corpus and seed give the same split."""
    json_key: str = "text"
    """Record key holding the document text."""


@dataclass(frozen=True)
class Split:
    """Which corpus positions (0-based, in read order) go to each validation set."""

    iid: frozenset[int]
    long: frozenset[int]


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
    """The long set from documents >= long_min_tokens, then the i.i.d. set from all the others."""
    rng = np.random.default_rng(config.seed)
    long_pool = np.flatnonzero(lengths >= config.long_min_tokens)
    if len(long_pool) < config.long_docs:
        raise MegadocError(f"only {len(long_pool)} documents have >= {config.long_min_tokens} tokens, "
                           f"{config.long_docs} asked for the long set; lower --long-docs or --long-min-tokens")
    long = rng.choice(long_pool, size=config.long_docs, replace=False)
    rest = np.setdiff1d(np.arange(len(lengths)), long)
    if len(rest) <= config.iid_docs:
        raise MegadocError(f"{len(lengths)} documents cannot give {config.long_docs} long + {config.iid_docs} "
                           "i.i.d. validation documents and still leave training data")
    iid = rng.choice(rest, size=config.iid_docs, replace=False)
    return Split(iid=frozenset(iid.tolist()), long=frozenset(long.tolist()))


def write_split(inputs: list[str], ids: list[str], split: Split, out_dir: Path, json_key: str) -> dict[str, int]:
    """Second pass: each record, with its id, to train / valid_iid / valid_long; returns the record counts."""
    names = (TRAIN, VALID_IID, VALID_LONG)
    counts = dict.fromkeys(names, 0)
    with atomic_write(out_dir / TRAIN) as train, atomic_write(out_dir / VALID_IID) as iid, \
            atomic_write(out_dir / VALID_LONG) as long:
        handles = dict(zip(names, (train, iid, long)))
        for index, record in enumerate(iter_records(inputs)):
            doc_id = record_id(record, record_text(record, json_key))
            if index >= len(ids) or doc_id != ids[index]:
                raise MegadocError(f"{record.where}: corpus changed between the two passes")
            name = VALID_LONG if index in split.long else VALID_IID if index in split.iid else TRAIN
            handles[name].write(orjson.dumps({**record.data, "id": doc_id}) + b"\n")
            counts[name] += 1
    return counts


def split_corpus(inputs: list[str], out_dir: str | os.PathLike, tokenizer: Tokenizer, config: SplitConfig) -> dict:
    """Hold out the validation sets of `inputs` under `out_dir`; returns what split.json records."""
    out = Path(out_dir)
    for name in (TRAIN, VALID_IID, VALID_LONG, VALIDATION_IDS, SPLIT_JSON):
        check_output_file(out / name, "--output-dir")
    ids, lengths = count_tokens(inputs, tokenizer, config.json_key)
    split = draw_split(lengths, config)
    counts = write_split(inputs, ids, split, out, config.json_key)
    held_out = sorted(split.long | split.iid)
    with atomic_write(out / VALIDATION_IDS, "w") as handle:
        handle.writelines(f"{ids[index]}\n" for index in held_out)
    summary = {"config": asdict(config), "inputs": inputs, "documents": len(ids), "records": counts,
               "long_tokens": int(lengths[sorted(split.long)].sum()),
               "iid_tokens": int(lengths[sorted(split.iid)].sum())}
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
    parser.add_argument("--seed", type=int, default=1234, help="seed of the draw")
    add_tokenizer_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if min(args.iid_docs, args.long_docs) < 0 or args.long_min_tokens < 1:
        raise MegadocError("--iid-docs and --long-docs must be >= 0 and --long-min-tokens >= 1")
    config = SplitConfig(iid_docs=args.iid_docs, long_docs=args.long_docs, long_min_tokens=args.long_min_tokens,
                         seed=args.seed, json_key=args.json_keys[0])
    summary = split_corpus(args.input, args.output_dir, build_tokenizer(spec_from_args(args)), config)
    records = summary["records"]
    print(f"megadoc split: {records[TRAIN]} train, {records[VALID_IID]} i.i.d. ({summary['iid_tokens']} tokens), "
          f"{records[VALID_LONG]} long ({summary['long_tokens']} tokens) -> {args.output_dir}")
    return 0
