"""`megadoc assemble`: generations + corpus -> records ready for `megadoc tokenize` (a `parts` list = one sequence).

Three streams (PAPER.md sections 2 and 4):
- simple: every rephrase its own document, plus one copy of each real document (the paper's synthetic stream
  holds one real copy; --real-position first puts it before the rephrases, none leaves it out).
- stitched: one megadoc per source document, its G rephrases (generation order, or --order random) and the real
  document (--real-position last, the paper's best; first; or none), as ONE record with `parts`. Tokenize gives
  each part its own EOD, so a stitched stream holds exactly the tokens of the simple stream made from the same
  generations (the paper's streams have equal token counts); only the adjacency differs.
- stretched: the real document with its G rationales inserted at their recorded character offsets: piece_0,
  rationale_1, piece_1, ..., rationale_G, piece_G, as one text. Each rationale is wrapped in --rationale-open /
  --rationale-close (default "\\n<think>\\n" ... "\\n</think>\\n", the reference reimplementation's tags), so
  `strip_rationales` gives back the original text exactly.

How, in bounded memory at any corpus size (a hash-partitioned join, the classic out-of-core join): generation rows
and corpus documents are spilled to B bucket files by a hash of the document id (B from the data's size, each
bucket about BUCKET_BYTES of text; generation shards spilled in parallel, --workers processes, while this process
reads the corpus), then each bucket is joined in memory (in parallel) and its records written in corpus order; the
buckets' outputs are concatenated in bucket order. The same inputs give the same bytes whatever --workers.

No shuffle: the records come out grouped by bucket, in corpus order within one. Megatron-Core's GPTDataset shuffles
the sequences of a dataset for every epoch (its document index), which is how megadoc's blend, `megadoc train` and
`megadoc eval` read every stream, so an on-disk shuffle would change nothing they see. (A megadoc is one sequence,
so its parts stay together.) The seed seeds --order random.

Held-out documents never enter a stream: when the split's validation ids are known (--validation-ids, or the
validation_ids.txt `megadoc split` writes beside its train.jsonl, found beside an --input), a corpus document or a
generation of one is refused; the summary records which ids were checked, so `megadoc tokenize` of the stream
checks them too.
"""

import json
import multiprocessing
import os
import random
import re
import shutil
import signal
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from megadoc.errors import MegadocError
from megadoc.files import atomic_write, check_output_file, check_output_prefix, exclusive_lock
from megadoc.preprocess.corpus import Record, add_corpus_arguments, expand_inputs, iter_documents
from megadoc.preprocess.generate.shards import KINDS, chunk_files
from megadoc.preprocess.split import VALIDATION_IDS, load_validation_ids
from megadoc.preprocess.tokenizer import add_tokenizer_arguments, build_tokenizer, spec_from_args

METHODS = ("simple", "stitched", "stretched")
"""The synthetic streams: rephrases shuffled, rephrases stitched into megadocs, rationales stretched into a doc."""
GENERATION_OF = {"simple": "rephrase", "stitched": "rephrase", "stretched": "rationale"}
"""Which generations each stream is assembled from."""
DEFAULT_OPEN, DEFAULT_CLOSE = "\n<think>\n", "\n</think>\n"
BUCKET_BYTES = 16 * 2**20
"""Text per bucket: what one worker holds in memory at a time (a few times this, as Python objects)."""
MAX_BUCKETS = 512
"""Bucket files each spilling process keeps open (file descriptors); past MAX_BUCKETS x BUCKET_BYTES (8 GB) of text
the buckets grow (the paper's 164k documents at G = 32, ~15 GB: ~30 MB each)."""
CORPUS_BUFFER_BYTES = 32 * 2**20
"""Corpus text buffered before it is written to the bucket files (one table per bucket per flush)."""
GENERATION_COLUMNS = ["doc_id", "kind", "index", "text", "split_offset"]


@dataclass
class AssembleConfig:
    """One `megadoc assemble` run."""

    method: str
    """simple, stitched or stretched."""
    inputs: list[str]
    """The real corpus the generations were made from (files or globs)."""
    generations: str
    """The generation directory (shard-*/chunk-*.parquet)."""
    json_key: str = "text"
    """The corpus field holding the text."""
    seed: int = 1234
    """Seeds --order random."""
    order: str = "generation"
    """stitched: rephrases in generation order, or random (seeded per document)."""
    real_position: str = "last"
    """simple and stitched: the real document last (paper's best), first, or none (left out)."""
    rationale_open: str = DEFAULT_OPEN
    """stretched: text before each rationale."""
    rationale_close: str = DEFAULT_CLOSE
    """stretched: text after each rationale."""
    validation_ids: str | None = None
    """The split's validation_ids.txt (or its folder); None: the one beside an --input, if any."""
    workers: int = 1
    """Processes spilling generation shards and joining buckets."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise MegadocError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.order not in ("generation", "random"):
            raise MegadocError(f"--order: {self.order!r} is not generation or random")
        if self.real_position not in ("last", "first", "none"):
            raise MegadocError(f"--real-position: {self.real_position!r} is not last, first or none")
        if self.order != "generation" and self.method != "stitched":
            raise MegadocError(f"--order {self.order}: only stitched megadocs have an order of rephrases")
        if self.real_position != "last" and self.method == "stretched":
            raise MegadocError(f"--real-position {self.real_position}: a stretched document is the real document")
        if self.method == "stretched" and not (self.rationale_open and self.rationale_close):
            raise MegadocError("--rationale-open / --rationale-close: must be non-empty, or the rationales cannot "
                               "be removed again")
        if self.workers < 1:
            raise MegadocError("--workers must be >= 1")
        if self.validation_ids is None:
            beside = [Path(p).parent / VALIDATION_IDS for p in expand_inputs(self.inputs)]
            self.validation_ids = next((str(p) for p in beside if p.is_file()), None)


def stitch(doc_id: str, text: str, rephrases: list[str], config: AssembleConfig) -> list[str]:
    """The parts of one stitched megadoc."""
    if config.order == "random":
        rephrases = list(rephrases)
        random.Random(f"{config.seed}:{doc_id}").shuffle(rephrases)
    return _with_real(text, rephrases, config.real_position)


def _with_real(real, generated: list, position: str) -> list:
    """The real document (a text or a record) placed among the generated ones."""
    return [real] + generated if position == "first" else generated + ([real] if position == "last" else [])


def stretch(text: str, rationales: list[dict], open_: str, close: str) -> str:
    """piece_0, rationale_1, piece_1, ..., rationale_G, piece_G: each rationale at its split_offset."""
    pieces, start = [], 0
    for row in sorted(rationales, key=lambda row: (row["split_offset"], row["index"])):
        pieces += [text[start:row["split_offset"]], open_, row["text"], close]
        start = row["split_offset"]
    return "".join(pieces) + text[start:]


def strip_rationales(stretched: str, open_: str = DEFAULT_OPEN, close: str = DEFAULT_CLOSE) -> str:
    """The original document back: every open ... close span removed."""
    out, start = [], 0
    while (begin := stretched.find(open_, start)) >= 0:
        end = stretched.find(close, begin + len(open_))
        if end < 0:
            break
        out.append(stretched[start:begin])
        start = end + len(close)
    return "".join(out) + stretched[start:]


def _usable_rationales(doc_id: str, text: str, rows: list[dict], config: AssembleConfig, where: str) -> list[dict]:
    """Rationales that round-trip: a delimiter inside a rationale (or the document) would make removal ambiguous."""
    for row in rows:
        offset = row["split_offset"]
        if offset is None or not 0 <= offset <= len(text):
            raise MegadocError(f"{where}: rationale {row['index']} of document {doc_id} has split_offset "
                               f"{offset}, outside its {len(text)} characters")
    if config.rationale_open in text:
        return []
    return [row for row in rows if config.rationale_open not in row["text"] and config.rationale_close not in row["text"]]


_GENERATED_ID = re.compile(r"(.*)/\d+")


def check_record_not_held_out(record: Record, held_out: frozenset[str]) -> None:
    """A stream record (`id`, or `<id>/<index>` for a simple rephrase) of a held-out document is refused."""
    record_id = str(record.data.get("id", ""))
    match = _GENERATED_ID.fullmatch(record_id)
    if record_id in held_out or match and match.group(1) in held_out:
        raise MegadocError(f"{record.where}: record {record_id!r} is (generated from) a validation document (see "
                           "megadoc split); a synthetic stream must not hold one")


# ---------------------------------------------------------------------------------------------------- spilling


def _bucket_of(doc_id: str, buckets: int) -> int:
    return zlib.crc32(doc_id.encode("utf-8", "surrogatepass")) % buckets


def _bucket_count(files: list[Path], inputs: list[str]) -> int:
    """Buckets for about BUCKET_BYTES of text each: the generations' text (Parquet footers) plus the corpus."""
    import pyarrow.parquet as pq

    total = 0
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        text = metadata.schema.names.index("text")
        total += sum(metadata.row_group(g).column(text).total_uncompressed_size for g in range(metadata.num_row_groups))
    for path in map(Path, expand_inputs(inputs)):
        total += sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return int(min(MAX_BUCKETS, max(1, -(-total // BUCKET_BYTES))))


class _BucketWriters:
    """One Arrow IPC stream per bucket, opened on first use."""

    def __init__(self, directory: Path, name: str, schema):
        self.directory, self.name, self.schema, self.writers = directory, name, schema, {}

    def write(self, bucket: int, table) -> None:
        import pyarrow as pa

        if bucket not in self.writers:
            path = self.directory / f"{bucket:05d}" / self.name
            path.parent.mkdir(exist_ok=True)
            self.writers[bucket] = pa.ipc.new_stream(str(path), self.schema)
        self.writers[bucket].write_table(table)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _spill_generations(task: tuple) -> Counter:
    """Rows of `kind` from chunk files (index, path) into bucket files; counts rows by kind and empty texts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    files, kind, buckets, directory, worker, held_out = task
    stats: Counter = Counter()
    schema = pa.schema([("doc_id", pa.string()), ("index", pa.int32()), ("text", pa.string()),
                        ("split_offset", pa.int64()), ("source", pa.int32())])
    writers = _BucketWriters(directory, f"gen-{worker:04d}.arrow", schema)
    try:
        for source, path in files:
            table = pq.read_table(path, columns=GENERATION_COLUMNS)
            stats.update({f"rows:{k}": n for k, n in Counter(table.column("kind").to_pylist()).items()})
            table = table.filter(pc.equal(table.column("kind"), kind))
            empty = pc.equal(pc.utf8_trim_whitespace(table.column("text")), "")
            stats["empty_generations"] += pc.sum(empty).as_py() or 0
            table = table.filter(pc.invert(empty))
            leaked = pc.filter(table.column("doc_id"), pc.is_in(table.column("doc_id"), value_set=held_out)) \
                if held_out is not None else []
            if len(leaked):
                raise MegadocError(f"{path}: generations of validation document {leaked[0].as_py()!r} (see megadoc "
                                   "split); a synthetic stream must not hold one")
            ids = pc.dictionary_encode(table.column("doc_id")).combine_chunks()
            of_id = np.array([_bucket_of(i, buckets) for i in ids.dictionary.to_pylist()], dtype=np.int64)
            bucket = of_id[ids.indices.to_numpy()] if len(of_id) else np.zeros(0, np.int64)
            table = table.select(["doc_id", "index", "text", "split_offset"]).append_column(
                "source", pa.array(np.full(len(table), source, np.int32)))
            order = np.argsort(bucket, kind="stable")
            table, bucket = table.take(pa.array(order)), bucket[order]
            edges = np.flatnonzero(np.diff(bucket)) + 1
            for start, end in zip(np.concatenate([[0], edges]), np.concatenate([edges, [len(bucket)]])):
                if end > start:
                    writers.write(int(bucket[start]), table.slice(int(start), int(end - start)))
    finally:
        writers.close()
    return stats


def _spill_corpus(config: AssembleConfig, buckets: int, directory: Path, held_out: frozenset[str]) -> Counter:
    """Corpus documents (position, id, text, where) into bucket files, in corpus order within each."""
    import pyarrow as pa

    schema = pa.schema([("position", pa.int64()), ("id", pa.string()), ("text", pa.string()),
                        ("where", pa.string())])
    writers = _BucketWriters(directory, "corpus.arrow", schema)
    pending: dict[int, tuple[list, list, list, list]] = {}
    pending_chars, stats = 0, Counter()

    def flush():
        for bucket, columns in sorted(pending.items()):
            writers.write(bucket, pa.Table.from_arrays([pa.array(c, type=t) for c, t in zip(columns, schema.types)],
                                                       schema=schema))
        pending.clear()

    try:
        documents = iter_documents(config.inputs, config.json_key)
        for position, document in enumerate(tqdm(documents, desc=f"assemble {config.method}: corpus", unit=" doc",
                                                  disable=None)):
            if document.id in held_out:
                raise MegadocError(f"{document.where}: document {document.id!r} is a validation document (see "
                                   "megadoc split); assemble from the split's train.jsonl")
            columns = pending.setdefault(_bucket_of(document.id, buckets), ([], [], [], []))
            for column, value in zip(columns, (position, document.id, document.text, document.where)):
                column.append(value)
            pending_chars += len(document.text)
            stats["source_documents"] += 1
            if pending_chars > CORPUS_BUFFER_BYTES:
                flush()
                pending_chars = 0
        flush()
    finally:
        writers.close()
    return stats


# ---------------------------------------------------------------------------------------------------- joining


def _read_bucket(directory: Path, pattern: str):
    import pyarrow as pa

    tables = [pa.ipc.open_stream(pa.memory_map(str(path))).read_all() for path in sorted(directory.glob(pattern))]
    return pa.concat_tables(tables) if tables else None


def _join_bucket(task: tuple) -> tuple[Counter, np.ndarray]:
    """One bucket's records, in corpus order, written to <bucket>/records.jsonl; (stats, characters per record)."""
    config, directory, sources = task
    stats: Counter = Counter()
    by_doc: dict[str, dict[int, dict]] = {}
    generations = _read_bucket(directory, "gen-*.arrow")
    columns = [generations.column(name).to_pylist() for name in generations.column_names] if generations else []
    for doc_id, index, text, offset, source in zip(*columns):
        rows = by_doc.setdefault(doc_id, {})
        if index in rows:
            raise MegadocError(f"{sources[source]}: generation {index} of document {doc_id!r} is also in "
                               f"{sources[rows[index]['source']]}; a generation directory holds each once (copied "
                               "chunks?)")
        rows[index] = {"index": index, "text": text, "split_offset": offset, "source": source}
    corpus = _read_bucket(directory, "corpus.arrow")
    lengths = []
    with open(directory / "records.jsonl", "wb") as out:
        for document in corpus.to_pylist() if corpus is not None else []:
            found = by_doc.pop(document["id"], {})
            rows = [found[index] for index in sorted(found)]
            stats["without_generations"] += not rows
            for record in _records(document, rows, config, stats, sources):
                out.write(orjson.dumps(record) + b"\n")
                lengths.append(sum(map(len, record["parts"])) if "parts" in record else len(record["text"]))
    stats["missing_documents"] += len(by_doc)
    if by_doc:
        stats[f"missing:{min(by_doc)}"] = 1
    return stats, np.asarray(lengths, dtype=np.int64)


def _records(document: dict, rows: list[dict], config: AssembleConfig, stats: Counter, sources: list[str]):
    doc_id, text = document["id"], document["text"]
    if config.method == "simple":
        stats["generations"] += len(rows)
        rephrases = [{"id": f"{doc_id}/{row['index']}", "text": row["text"]} for row in rows]
        yield from _with_real({"id": doc_id, "text": text}, rephrases, config.real_position)
    elif config.method == "stitched":
        stats["generations"] += len(rows)
        yield {"id": doc_id, "parts": stitch(doc_id, text, [row["text"] for row in rows], config)}
    else:
        where = sources[rows[0]["source"]] if rows else config.generations
        usable = _usable_rationales(doc_id, text, rows, config, where)
        stats["generations"] += len(usable)
        stats["rationales_dropped"] += len(rows) - len(usable)
        yield {"id": doc_id, "text": stretch(text, usable, config.rationale_open, config.rationale_close)}


def _pool(processes: int):
    """Worker processes that die with this one: a kill -9 of assemble leaves no orphan holding its files (or the
    inherited lock on its output), even one idle on the task queue."""
    return multiprocessing.get_context("fork").Pool(processes, initializer=_die_with_parent)


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)


def _map(function, tasks: list, workers: int):
    """`function` over `tasks` in order, in `workers` processes (in this one when 1)."""
    if workers == 1 or len(tasks) == 1:
        yield from map(function, tasks)
        return
    with _pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(function, tasks)


def assemble(config: AssembleConfig, output: str) -> dict:
    """Write the stream as JSONL to `output`; returns its summary."""
    check_output_file(output, "--output")
    with exclusive_lock(output + ".lock", output):
        scratch = Path(output + ".assemble-tmp")
        shutil.rmtree(scratch, ignore_errors=True)  # a killed run's spill: redone from scratch
        scratch.mkdir()
        try:
            return _assemble(config, output, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _assemble(config: AssembleConfig, output: str, scratch: Path) -> dict:
    import pyarrow as pa

    kind = GENERATION_OF[config.method]
    files = chunk_files(config.generations)
    if not files:
        raise MegadocError(f"{config.generations}: no committed generation chunks (an empty or unstarted generation "
                           "directory?)")
    held_out = load_validation_ids(config.validation_ids) if config.validation_ids else frozenset()
    buckets = _bucket_count(files, config.inputs)
    groups = [list(enumerate(files))[w::config.workers] for w in range(min(config.workers, len(files)))]
    held_out_array = pa.array(sorted(held_out), pa.string()) if held_out else None
    tasks = [(group, kind, buckets, scratch, w, held_out_array) for w, group in enumerate(groups)]
    if len(tasks) > 1:  # the shards spill in worker processes while this one spills the corpus
        with _pool(len(tasks)) as pool:
            spilled = pool.map_async(_spill_generations, tasks)
            stats = _spill_corpus(config, buckets, scratch, held_out)
            for counts in spilled.get():
                stats.update(counts)
    else:
        stats = _spill_corpus(config, buckets, scratch, held_out) + _spill_generations(tasks[0])
    if not stats[f"rows:{kind}"]:
        others = ", ".join(f"{stats[f'rows:{k}']} {k}" for k in KINDS if stats[f"rows:{k}"]) or "none"
        raise MegadocError(f"{config.generations}: holds no {kind} generations (rows: {others}); --method "
                           f"{config.method} is assembled from {kind}s")
    sources = [str(path) for path in files]
    bucket_dirs = [scratch / f"{b:05d}" for b in range(buckets) if (scratch / f"{b:05d}").is_dir()]
    lengths = []
    with atomic_write(output, "wb") as out:
        joined = _map(_join_bucket, [(config, d, sources) for d in bucket_dirs], config.workers)
        for directory, (counts, record_lengths) in zip(bucket_dirs, joined):
            stats.update(counts)
            lengths.append(record_lengths)
            _append(directory / "records.jsonl", out)
            shutil.rmtree(directory)
        if stats["missing_documents"]:
            example = min(key[8:] for key in stats if key.startswith("missing:"))
            raise MegadocError(f"{config.generations}: {stats['missing_documents']} documents with generations are "
                               f"not in the corpus (e.g. {example!r}); wrong --input or --json-keys?")
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    summary = {k: v for k, v in stats.items() if ":" not in k and k != "missing_documents"}
    return {"method": config.method, "records": len(lengths), **summary,
            "megadocs": len(lengths) if config.method != "simple" else 0, "characters": distribution(lengths),
            "buckets": buckets, "validation_ids": config.validation_ids}


def _append(part: Path, out) -> None:
    """Copy `part` to the end of `out`, inside the kernel where it can (copy_file_range)."""
    out.flush()
    with open(part, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        try:
            while size > 0:
                copied = os.copy_file_range(source.fileno(), out.fileno(), size)
                if copied == 0:
                    break
                size -= copied
        except OSError:  # a file system without it: copy through user space
            source.seek(os.fstat(source.fileno()).st_size - size)
            shutil.copyfileobj(source, out, 2**22)


def distribution(lengths: np.ndarray) -> dict:
    """Total and length distribution (megadocs run to ~22k tokens at G=32)."""
    if not len(lengths):
        return {"total": 0}
    values = np.asarray(lengths)
    return {"total": int(values.sum()), "mean": round(float(values.mean()), 1), "min": int(values.min()),
            **{f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 99)}, "max": int(values.max())}


def add_arguments(parser) -> None:
    parser.add_argument("--method", choices=METHODS, required=True)
    add_corpus_arguments(parser, input_help="the real corpus the generations came from")
    parser.add_argument("--generations", required=True, help="generation directory (shard-*/chunk-*.parquet)")
    parser.add_argument("--output", default=None, help="JSONL of records for `megadoc tokenize`")
    parser.add_argument("--output-prefix", default=None,
                        help="also tokenize straight to <prefix>.bin/.idx (needs --tokenizer-model)")
    parser.add_argument("--seed", type=int, default=1234, help="seeds --order random")
    parser.add_argument("--order", choices=("generation", "random"), default="generation")
    parser.add_argument("--real-position", choices=("last", "first", "none"), default="last")
    parser.add_argument("--rationale-open", default=DEFAULT_OPEN)
    parser.add_argument("--rationale-close", default=DEFAULT_CLOSE)
    parser.add_argument("--validation-ids", default=None,
                        help="the split's validation_ids.txt (default: one beside an --input file)")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--no-gigatoken", dest="gigatoken", action="store_false",
                        help="tokenize without gigatoken (see megadoc tokenize)")
    add_tokenizer_arguments(parser, required=False)  # counts tokens in the summary; needed by --output-prefix
    parser.set_defaults(func=run)


def run(args) -> int:
    if not args.output and not args.output_prefix:
        raise MegadocError("--output or --output-prefix: say where the stream goes")
    if args.output_prefix and not args.tokenizer_model:
        raise MegadocError("--output-prefix: tokenizing needs --tokenizer-model")
    if args.output_prefix:
        check_output_prefix(args.output_prefix, suffixes=(".bin", ".idx", ".jsonl"))
    config = AssembleConfig(method=args.method, inputs=args.input, generations=args.generations,
                            json_key=args.json_keys[0], seed=args.seed, order=args.order,
                            real_position=args.real_position, rationale_open=args.rationale_open,
                            rationale_close=args.rationale_close, validation_ids=args.validation_ids,
                            workers=args.workers)
    output = args.output or args.output_prefix + ".jsonl"
    tokenizer = build_tokenizer(spec_from_args(args, threads=args.workers)) if args.tokenizer_model else None
    summary = assemble(config, output)
    if tokenizer is not None:
        summary.update(_tokens(args, config, output, tokenizer))
    with atomic_write(output + ".summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def _tokens(args, config: AssembleConfig, output: str, tokenizer) -> dict:
    """The stream's token counts, from its one tokenize pass (to .bin/.idx with --output-prefix, else counted)."""
    from megadoc.preprocess.indexed import read_index
    from megadoc.preprocess.tokenize import TokenizeConfig, count_tokens, tokenize

    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    tokenize_config = TokenizeConfig([output], args.output_prefix or "", append_eod=True, gigatoken=args.gigatoken,
                                     validation_ids=config.validation_ids)
    if not args.output_prefix:
        return {"tokens": distribution(count_tokens(tokenize_config, tokenizer))}
    written = tokenize(tokenize_config, tokenizer)
    return {"tokens": distribution(read_index(args.output_prefix).document_tokens()),
            "output_prefix": args.output_prefix, "sequences": written["sequences"]}
