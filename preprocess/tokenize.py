"""`megadoc tokenize`: corpus -> Megatron indexed dataset (<prefix>.bin / <prefix>.idx).

Byte-identical to Megatron-LM's `tools/preprocess_data.py` for the same input, tokenizer and flags (one JSON key,
no sentence splitting): a document is one sequence, EOD appended when `--append-eod`, an empty document recorded
as a document with no sequence. It differs in how it gets there:
- texts are encoded in large batches through gigatoken where it gives the reference tokenizer's ids (checked at
  start-up, megadoc.preprocess.fast_tokenizer), else through the tokenizer library's own batch API, while a reader
  thread parses the next batch; the ids come back as one flat array, and EODs, sequence lengths and document
  indices are computed on whole batches with numpy (no Python object per document or token on the write side);
- a record may carry `parts` (a list of texts) instead of its text: a megadoc. It becomes ONE sequence, each
  part's tokens followed by EOD, so Megatron-Core's GPTDataset, which shuffles sequences, keeps it contiguous;
- it checkpoints: killed at any moment it leaves only temporaries, and the next run resumes from the last
  checkpoint to the same bytes; the output prefix is locked for the whole run (a second run on it is refused) and
  published in one commit (megadoc.preprocess.indexed), with a sidecar naming the tokenizer.
"""

import hashlib
import itertools
import json
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from megadoc.errors import MegadocError
from megadoc.files import check_output_prefix, exclusive_lock
from megadoc.preprocess.assemble import check_record_not_held_out
from megadoc.preprocess.corpus import Record, add_corpus_arguments, expand_inputs, iter_records
from megadoc.preprocess.fast_tokenizer import gigatoken_encoder
from megadoc.preprocess.indexed import ResumableIndexedWriter, optimal_dtype
from megadoc.preprocess.split import load_validation_ids
from megadoc.preprocess.tokenizer import Tokenizer, add_tokenizer_arguments, build_tokenizer, spec_from_args

PARTS_KEY = "parts"


@dataclass
class TokenizeConfig:
    """One `megadoc tokenize` run."""

    inputs: list[str]
    """Corpus files or globs (JSONL, .jsonl.gz, .jsonl.zst, Parquet, HF save_to_disk folders), read in order."""
    output_prefix: str
    """Writes <output_prefix>.bin and <output_prefix>.idx (and the sidecar <output_prefix>.megadoc.json)."""
    json_key: str = "text"
    """The record field holding the text (Megatron-LM's --json-keys, one key)."""
    append_eod: bool = False
    """Append the tokenizer's EOD after each non-empty document (parts always get one each)."""
    gigatoken: bool = True
    """Encode through gigatoken where it gives the reference tokenizer's ids (--no-gigatoken: never)."""
    validation_ids: str | None = None
    """A synthetic stream's held-out ids (a validation_ids.txt or split folder): a record of one is refused."""
    batch_chars: int = 16_000_000
    """Characters per encode batch: large enough to keep every tokenizer thread busy and amortise each call (16M:
    ~60% of gigatoken's raw throughput here, 4M: ~45%), small enough to bound memory. Batches start at 1/16 of it
    and double, so the first ids (and the first checkpoint) come early."""
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


def _batches(records: Iterable[Record], key: str, batch_chars: int, held_out: frozenset[str]) -> Iterator[_Batch]:
    batch = _Batch([], [], [0], [])
    chars, limit = 0, batch_chars // 16
    for record in records:
        texts, is_parts = record_texts(record, key)
        if held_out:
            check_record_not_held_out(record, held_out)
        batch.records.append(record)
        batch.texts.extend(texts)
        batch.starts.append(len(batch.texts))
        batch.is_parts.append(is_parts)
        chars += sum(map(len, texts))
        if chars >= limit:
            yield batch
            batch, chars, limit = _Batch([], [], [0], []), 0, min(2 * limit, batch_chars)
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


def choose_encoder(tokenizer: Tokenizer, sample: list[str], gigatoken: bool):
    """gigatoken in front of `tokenizer` when asked, installed and validated on `sample`; else `tokenizer`."""
    if gigatoken:
        encoder = gigatoken_encoder(tokenizer, sample)
        if encoder is not None:
            return encoder
    return tokenizer


def sequences(batch: _Batch, tokens: np.ndarray, lengths: np.ndarray, eod: int, append_eod: bool,
              dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the batch's sequences back to back in `dtype`, each record's sequence length with 0 for an empty one,
    whether each record has a sequence), from every text's ids (`tokens`) and id counts (`lengths`), as
    preprocess_data.py would write them: a text's ids then EOD (parts always, a text with --append-eod), nothing
    for an empty text."""
    texts_per_record = np.diff(batch.starts)
    limits = np.iinfo(dtype)
    if len(tokens) and tokens.max() > limits.max:
        first = int(np.searchsorted(np.cumsum(lengths), np.argmax(tokens > limits.max), side="right"))
        record = batch.records[int(np.searchsorted(batch.starts, first, side="right")) - 1]
        raise MegadocError(f"{record.where}: token id {int(tokens.max())} does not fit the {dtype.name} .bin")
    with_eod = (lengths > 0) & (np.repeat(np.asarray(batch.is_parts, bool), texts_per_record) | append_eod)
    flat = np.insert(tokens.astype(dtype, copy=False), np.cumsum(lengths)[with_eod], eod)
    owners = np.repeat(np.arange(len(batch.records)), texts_per_record)
    per_record = np.bincount(owners, weights=lengths + with_eod, minlength=len(batch.records)).astype(np.int64)
    return flat, per_record, per_record > 0


def open_batches(config: TokenizeConfig, tokenizer: Tokenizer, records: Iterable[Record]):
    """(the encoder, the batches of `records`): the first batch is read to choose the encoder (gigatoken is checked
    on its texts), the others are parsed ahead in a thread."""
    batches = _prefetch(_batches(records, config.json_key, config.batch_chars, _held_out_ids(config)))
    first = next(batches, None)
    if first is None:
        return tokenizer, iter(())
    return choose_encoder(tokenizer, first.texts, config.gigatoken), itertools.chain([first], batches)


def encoded_batches(config: TokenizeConfig, tokenizer: Tokenizer, encoder, batches: Iterable[_Batch]):
    """(batch, sequences, per-record token counts, has-sequence flags) for each batch, in order."""
    dtype = optimal_dtype(tokenizer.vocab_size)
    for batch in batches:
        if encoder is tokenizer and tokenizer.max_text_chars:
            _check_text_sizes(batch, tokenizer.max_text_chars)
        tokens, lengths = encoder.encode_flat(batch.texts)
        yield batch, *sequences(batch, tokens, lengths, tokenizer.eod, config.append_eod, dtype)


def _check_text_sizes(batch: _Batch, limit: int) -> None:
    sizes = np.fromiter(map(len, batch.texts), np.int64, len(batch.texts))
    if sizes.max(initial=0) > limit:
        record = batch.records[int(np.searchsorted(batch.starts, np.argmax(sizes > limit), side="right")) - 1]
        raise MegadocError(f"{record.where}: a text of {int(sizes.max()):,} characters; without gigatoken this "
                           f"tokenizer encodes at most {limit:,} in one piece (memory ~100x the text): install "
                           "gigatoken, or split the document")


def _held_out_ids(config: TokenizeConfig) -> frozenset[str]:
    """The ids no record may have: --validation-ids, or the validation ids an assembled stream's summary records."""
    if config.validation_ids:
        return load_validation_ids(config.validation_ids)
    recorded = set()
    for path in expand_inputs(config.inputs):
        summary = Path(path + ".summary.json")
        if summary.exists():
            try:
                recorded.add(json.loads(summary.read_text()).get("validation_ids"))
            except (OSError, json.JSONDecodeError, AttributeError):
                raise MegadocError(f"{summary}: unreadable assemble summary") from None
    return frozenset().union(*(load_validation_ids(path) for path in recorded if path))


def _fingerprint(config: TokenizeConfig, tokenizer: Tokenizer, dtype: np.dtype) -> str:
    """What must match for a checkpoint to be resumed: the inputs as they are on disk, and every flag."""
    digest = hashlib.sha256()
    for path in expand_inputs(config.inputs):
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(repr((config.json_key, config.append_eod, tokenizer.fingerprint, dtype.name)).encode())
    return digest.hexdigest()


def tokenize(config: TokenizeConfig, tokenizer: Tokenizer, progress: bool = True) -> dict:
    """Run one tokenize job to its published .bin/.idx; returns the summary."""
    check_output_prefix(config.output_prefix, suffixes=(".bin", ".idx", ".megadoc.json"))
    with exclusive_lock(config.output_prefix + ".lock", f"{config.output_prefix}.bin/.idx"):
        return _tokenize(config, tokenizer, progress)


def _tokenize(config: TokenizeConfig, tokenizer: Tokenizer, progress: bool) -> dict:
    dtype = optimal_dtype(tokenizer.vocab_size)
    writer = ResumableIndexedWriter(config.output_prefix, dtype, _fingerprint(config, tokenizer, dtype))
    resumed = writer.state.records_done
    start, last_checkpoint, setup, encoder = time.time(), resumed, 0.0, tokenizer
    if not writer.published:
        bar = tqdm(desc="tokenize", unit=" doc", initial=resumed, disable=not progress, dynamic_ncols=True)
        try:
            encoder, batches = open_batches(config, tokenizer, itertools.islice(iter_records(config.inputs), resumed,
                                                                                None))
            setup = time.time() - start
            for batch, flat, per_record, has_sequence in encoded_batches(config, tokenizer, encoder, batches):
                writer.add_batch(flat, per_record[has_sequence], has_sequence)
                bar.update(len(batch.records))
                bar.set_postfix_str(f"{writer.state.tokens / max(time.time() - start, 1e-9):,.0f} tok/s")
                if writer.state.records_done - last_checkpoint >= config.checkpoint_interval:
                    writer.checkpoint()
                    last_checkpoint = writer.state.records_done
            bar.close()
            writer.finalize({"tokenizer": tokenizer.identity(), "written_by": "megadoc tokenize",
                             "inputs": list(config.inputs), "json_key": config.json_key,
                             "append_eod": config.append_eod, "validation_ids": config.validation_ids})
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
            "setup_seconds": round(setup, 3), "encoder": "reference" if encoder is tokenizer else "gigatoken",
            "documents_per_second": round((state.records_done - resumed) / max(seconds, 1e-9), 1),
            "tokens_per_second": round(state.tokens / max(seconds, 1e-9), 1)}


def count_tokens(config: TokenizeConfig, tokenizer: Tokenizer) -> np.ndarray:
    """Tokens each record would have in the .bin (0 for an empty one), without writing it."""
    encoder, batches = open_batches(config, tokenizer, iter_records(config.inputs))
    counts = [per_record for _, _, per_record, _ in encoded_batches(config, tokenizer, encoder, batches)]
    return np.concatenate(counts) if counts else np.zeros(0, np.int64)


def add_arguments(parser) -> None:
    add_corpus_arguments(parser)
    group = parser.add_argument_group("tokenization process")
    group.add_argument("--append-eod", action="store_true", help="append EOD after each document")
    group.add_argument("--no-gigatoken", dest="gigatoken", action="store_false",
                       help="never encode through gigatoken (default: wherever it gives the reference's ids)")
    group.add_argument("--use-gigatoken", dest="gigatoken", action="store_true",
                       help="Megatron-LM's flag: encode through gigatoken where validated (the default)")
    group.add_argument("--validation-ids", default=None,
                       help="a validation_ids.txt (or split folder) whose documents this stream must not hold "
                       "(default for an assembled stream: the ids its assemble summary records)")
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
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # gigatoken's and HF tokenizers' thread pools
    config = TokenizeConfig(inputs=args.input, output_prefix=args.output_prefix, json_key=args.json_keys[0],
                            append_eod=args.append_eod, gigatoken=args.gigatoken, validation_ids=args.validation_ids,
                            checkpoint_interval=args.checkpoint_interval)
    check_output_prefix(config.output_prefix)
    tokenizer = build_tokenizer(spec_from_args(args, threads=args.workers))
    summary = tokenize(config, tokenizer, progress=not args.no_progress)
    print(f"tokenize: {summary['documents']:,} documents ({summary['empty_documents']:,} empty) -> "
          f"{summary['sequences']:,} sequences, {summary['tokens']:,} tokens ({summary['dtype']}) in "
          f"{summary['seconds']:.1f} s ({summary['setup_seconds']:.1f} s setting up the {summary['encoder']} encoder; "
          f"{summary['documents_per_second']:,.0f} docs/s, "
          f"{summary['tokens_per_second']:,.0f} tokens/s) -> {config.output_prefix}.bin/.idx"
          + (f" (resumed at document {summary['resumed_from_document']:,})" if summary["resumed_from_document"] else ""),
          file=sys.stderr)
    return 0
