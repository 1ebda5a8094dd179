"""`megadoc tokenize`: corpus -> Megatron indexed dataset (<prefix>.bin / <prefix>.idx).

Byte-identical to Megatron-LM's `tools/preprocess_data.py` for the same input, tokenizer and flags (one JSON key,
no sentence splitting): a document is one sequence, EOD appended when `--append-eod`, an empty document recorded
as a document with no sequence. It differs in how it gets there:
- texts are encoded in large batches through the tokenizer's native (multi-threaded) batch API, while a reader
  thread parses the next batch, instead of one pickled document at a time through a process pool;
- a record may carry `parts` (a list of texts) instead of its text: a megadoc. It becomes ONE sequence, each
  part's tokens followed by EOD, so Megatron-Core's GPTDataset, which shuffles sequences, keeps it contiguous;
- it checkpoints: killed at any moment it leaves only temporaries, and the next run resumes from the last
  checkpoint to the same bytes.
"""

import hashlib
import itertools
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from megadoc.preprocess.corpus import Record, add_corpus_arguments, expand_inputs, iter_records
from megadoc.errors import MegadocError
from megadoc.preprocess.indexed import ResumableIndexedWriter, optimal_dtype
from megadoc.preprocess.tokenizer import Tokenizer, add_tokenizer_arguments, build_tokenizer, spec_from_args

PARTS_KEY = "parts"


@dataclass
class TokenizeConfig:
    """One `megadoc tokenize` run."""

    inputs: list[str]
    """Corpus files or globs (JSONL, .jsonl.gz, .jsonl.zst, Parquet, HF save_to_disk folders), read in order."""
    output_prefix: str
    """Writes <output_prefix>.bin and <output_prefix>.idx."""
    json_key: str = "text"
    """The record field holding the text (Megatron-LM's --json-keys, one key)."""
    append_eod: bool = False
    """Append the tokenizer's EOD after each non-empty document (parts always get one each)."""
    batch_chars: int = 4_000_000
    """Characters per encode batch: large enough to keep every tokenizer thread busy, small enough to bound memory."""
    checkpoint_interval: int = 20_000
    """Records between durable checkpoints; a killed run redoes at most this many."""

    def __post_init__(self):
        if not self.inputs:
            raise MegadocError("--input: no corpus given")
        if self.checkpoint_interval < 1:
            raise MegadocError("--checkpoint-interval must be >= 1")


@dataclass
class _Batch:
    """Records of one encode batch with their texts flattened: record k owns texts[starts[k]:starts[k+1]]."""

    records: list[Record]
    texts: list[str]
    starts: list[int]
    is_parts: list[bool]


def record_texts(record: Record, key: str) -> tuple[list[str], bool]:
    """The texts of a record and whether they are megadoc parts; checks types, naming file and line."""
    if key in record.data:
        text = record.data[key]
        if not isinstance(text, str):
            raise MegadocError(f"{record.where}: key {key!r} is {type(text).__name__}, not a string")
        return [text], False
    if PARTS_KEY in record.data:
        parts = record.data[PARTS_KEY]
        if not isinstance(parts, list) or not all(isinstance(part, str) for part in parts):
            raise MegadocError(f"{record.where}: key {PARTS_KEY!r} must be a list of strings")
        return parts, True
    raise MegadocError(f"{record.where}: missing key {key!r} (or {PARTS_KEY!r})")


def _batches(records: Iterable[Record], key: str, batch_chars: int) -> Iterator[_Batch]:
    batch = _Batch([], [], [0], [])
    chars = 0
    for record in records:
        texts, is_parts = record_texts(record, key)
        batch.records.append(record)
        batch.texts.extend(texts)
        batch.starts.append(len(batch.texts))
        batch.is_parts.append(is_parts)
        chars += sum(map(len, texts))
        if chars >= batch_chars:
            yield batch
            batch, chars = _Batch([], [], [0], []), 0
    if batch.records:
        yield batch


def _prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run `iterator` in a thread, `depth` items ahead: JSON parsing overlaps with encoding."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def produce():
        try:
            for item in iterator:
                items.put(item)
            items.put(done)
        except BaseException as error:  # handed to the consumer, which re-raises it
            items.put(error)

    threading.Thread(target=produce, daemon=True).start()
    while (item := items.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def encode_batch(batch: _Batch, tokenizer: Tokenizer, append_eod: bool) -> tuple[list[list[int]], list[int]]:
    """Sequences of a batch and how many each record contributes (0 or 1), as preprocess_data.py would."""
    encoded = tokenizer.encode_batch(batch.texts)
    sequences, per_record = [], []
    for k, is_parts in enumerate(batch.is_parts):
        pieces = [ids for ids in encoded[batch.starts[k]:batch.starts[k + 1]] if ids]
        if is_parts:
            sequence = list(itertools.chain.from_iterable(ids + [tokenizer.eod] for ids in pieces))
        else:
            sequence = pieces[0] + [tokenizer.eod] if pieces and append_eod else (pieces[0] if pieces else [])
        if sequence:
            sequences.append(sequence)
        per_record.append(1 if sequence else 0)
    return sequences, per_record


def _to_array(sequences: list[list[int]], dtype: np.dtype, batch: _Batch, per_record: list[int]) -> np.ndarray:
    """Flat token array, refusing ids the dtype cannot hold (naming the record that has one)."""
    total = sum(map(len, sequences))
    tokens = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=total)
    limits = np.iinfo(dtype)
    if total and (tokens.min() < limits.min or tokens.max() > limits.max):
        owners = [record for record, count in zip(batch.records, per_record) if count]
        for record, sequence in zip(owners, sequences):
            bad = [t for t in sequence if not limits.min <= t <= limits.max]
            if bad:
                raise MegadocError(f"{record.where}: token id {bad[0]} does not fit the {dtype.name} .bin "
                                   f"(vocabulary {limits.max + 1 if dtype == np.uint16 else 'int32'})")
    return tokens


def _fingerprint(config: TokenizeConfig, tokenizer: Tokenizer, dtype: np.dtype) -> str:
    """What must match for a checkpoint to be resumed: the inputs as they are on disk, and every flag."""
    digest = hashlib.sha256()
    for path in expand_inputs(config.inputs) + [tokenizer.spec.model]:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(repr((config.json_key, config.append_eod, tokenizer.spec, tokenizer.eod, dtype.name)).encode())
    return digest.hexdigest()


def tokenize(config: TokenizeConfig, tokenizer: Tokenizer, progress: bool = True) -> dict:
    """Run one tokenize job to its published .bin/.idx; returns the summary."""
    dtype = optimal_dtype(tokenizer.vocab_size)
    if tokenizer.eod > np.iinfo(dtype).max:
        raise MegadocError(f"EOD id {tokenizer.eod} does not fit the {dtype.name} .bin")
    os.makedirs(os.path.dirname(os.path.abspath(config.output_prefix)), exist_ok=True)
    writer = ResumableIndexedWriter(config.output_prefix, dtype, _fingerprint(config, tokenizer, dtype))
    resumed = writer.state.records_done
    start, last_checkpoint = time.time(), resumed
    bar = tqdm(desc="tokenize", unit=" doc", initial=resumed, disable=not progress, dynamic_ncols=True)
    try:
        records = itertools.islice(iter_records(config.inputs), resumed, None)
        for batch in _prefetch(_batches(records, config.json_key, config.batch_chars)):
            sequences, per_record = encode_batch(batch, tokenizer, config.append_eod)
            tokens = _to_array(sequences, dtype, batch, per_record)
            writer.add_batch(tokens, np.fromiter(map(len, sequences), np.int32, len(sequences)), per_record)
            bar.update(len(batch.records))
            bar.set_postfix_str(f"{writer.state.tokens / max(time.time() - start, 1e-9):,.0f} tok/s")
            if writer.state.records_done - last_checkpoint >= config.checkpoint_interval:
                writer.checkpoint()
                last_checkpoint = writer.state.records_done
        bar.close()
        writer.finalize()
    except MegadocError:
        bar.close()
        writer.close()
        writer.discard()
        raise
    seconds = time.time() - start
    state = writer.state
    return {"output_prefix": config.output_prefix, "documents": state.records_done,
            "empty_documents": state.empty_documents, "sequences": state.sequences, "tokens": state.tokens,
            "dtype": dtype.name, "resumed_from_document": resumed, "seconds": round(seconds, 3),
            "documents_per_second": round((state.records_done - resumed) / max(seconds, 1e-9), 1),
            "tokens_per_second": round(state.tokens / max(seconds, 1e-9), 1)}


def add_arguments(parser) -> None:
    add_corpus_arguments(parser)
    group = parser.add_argument_group("tokenization process")
    group.add_argument("--append-eod", action="store_true", help="append EOD after each document")
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="writes <prefix>.bin and <prefix>.idx")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=os.cpu_count(),
                       help="tokenizer threads (default: every core)")
    group.add_argument("--checkpoint-interval", type=int, default=TokenizeConfig.checkpoint_interval,
                       help="documents between resumable checkpoints")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_tokenizer_arguments(parser)
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.workers < 1:
        raise MegadocError("--workers must be >= 1")
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # HF tokenizers' thread pool, read at first use
    config = TokenizeConfig(inputs=args.input, output_prefix=args.output_prefix, json_key=args.json_keys[0],
                            append_eod=args.append_eod, checkpoint_interval=args.checkpoint_interval)
    tokenizer = build_tokenizer(spec_from_args(args, threads=args.workers))
    summary = tokenize(config, tokenizer, progress=not args.no_progress)
    print(f"tokenize: {summary['documents']:,} documents ({summary['empty_documents']:,} empty) -> "
          f"{summary['sequences']:,} sequences, {summary['tokens']:,} tokens ({summary['dtype']}) in "
          f"{summary['seconds']:.1f} s ({summary['documents_per_second']:,.0f} docs/s, "
          f"{summary['tokens_per_second']:,.0f} tokens/s) -> {config.output_prefix}.bin/.idx"
          + (f" (resumed at document {summary['resumed_from_document']:,})" if summary["resumed_from_document"] else ""),
          file=sys.stderr)
    return 0
