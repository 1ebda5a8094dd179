"""`megadoc assemble`: generations + corpus -> records ready for `megadoc tokenize` (a `parts` list = one sequence).

Three streams (PAPER.md sections 2 and 4):
- simple: every rephrase its own document, plus one copy of each real document (the paper's synthetic stream
  holds one real copy), all shuffled at the document level.
- stitched: one megadoc per source document, its G rephrases (generation order, or --order random) and the real
  document (--real-position last, the paper's best; first; or none), as ONE record with `parts`. Tokenize gives
  each part its own EOD, so a stitched stream holds exactly the tokens of the simple stream made from the same
  generations (the paper's streams have equal token counts); only the adjacency differs.
- stretched: the real document with its G rationales inserted at their recorded character offsets: piece_0,
  rationale_1, piece_1, ..., rationale_G, piece_G, as one text. Each rationale is wrapped in --rationale-open /
  --rationale-close (default "\\n<think>\\n" ... "\\n</think>\\n", the reference reimplementation's tags), so
  `strip_rationales` gives back the original text exactly.
Every stream is shuffled with --seed; the same inputs and seed write the same bytes.
"""

import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import orjson
from tqdm import tqdm

from megadoc.files import atomic_write
from megadoc.preprocess.corpus import Document, add_corpus_arguments, iter_documents
from megadoc.errors import MegadocError
from megadoc.preprocess.generate.shards import load_by_document
from megadoc.preprocess.tokenizer import add_tokenizer_arguments, build_tokenizer, spec_from_args

METHODS = ("simple", "stitched", "stretched")
"""The synthetic streams: rephrases shuffled, rephrases stitched into megadocs, rationales stretched into a doc."""
GENERATION_OF = {"simple": "rephrase", "stitched": "rephrase", "stretched": "rationale"}
"""Which generations each stream is assembled from."""
DEFAULT_OPEN, DEFAULT_CLOSE = "\n<think>\n", "\n</think>\n"


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
    """Seeds the record shuffle and --order random."""
    order: str = "generation"
    """stitched: rephrases in generation order, or random (seeded per document)."""
    real_position: str = "last"
    """stitched: the real document last (paper's best), first, or none (left out)."""
    rationale_open: str = DEFAULT_OPEN
    """stretched: text before each rationale."""
    rationale_close: str = DEFAULT_CLOSE
    """stretched: text after each rationale."""

    def __post_init__(self):
        if self.method not in METHODS:
            raise MegadocError(f"--method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.order not in ("generation", "random"):
            raise MegadocError(f"--order: {self.order!r} is not generation or random")
        if self.real_position not in ("last", "first", "none"):
            raise MegadocError(f"--real-position: {self.real_position!r} is not last, first or none")
        if self.method == "stretched" and not (self.rationale_open and self.rationale_close):
            raise MegadocError("--rationale-open / --rationale-close: must be non-empty, or the rationales cannot "
                               "be removed again")


def stitch(document: Document, rephrases: list[dict], config: AssembleConfig) -> list[str]:
    """The parts of one stitched megadoc."""
    texts = [row["text"] for row in rephrases]
    if config.order == "random":
        random.Random(f"{config.seed}:{document.id}").shuffle(texts)
    if config.real_position == "first":
        return [document.text] + texts
    return texts + ([document.text] if config.real_position == "last" else [])


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


def _usable_rationales(document: Document, rows: list[dict], config: AssembleConfig, where: str) -> list[dict]:
    """Rationales that round-trip: a delimiter inside a rationale (or the document) would make removal ambiguous."""
    for row in rows:
        offset = row["split_offset"]
        if offset is None or not 0 <= offset <= len(document.text):
            raise MegadocError(f"{where}: rationale {row['index']} of document {document.id} has split_offset "
                               f"{offset}, outside its {len(document.text)} characters")
    if config.rationale_open in document.text:
        return []
    return [row for row in rows if config.rationale_open not in row["text"] and config.rationale_close not in row["text"]]


def _records(config: AssembleConfig, stats: Counter) -> Iterator[dict]:
    generations = load_by_document(config.generations, GENERATION_OF[config.method])
    seen = set()
    for document in tqdm(iter_documents(config.inputs, config.json_key), desc=f"assemble {config.method}",
                         unit=" doc", disable=None):
        rows = generations.get(document.id, [])
        seen.add(document.id)
        stats["source_documents"] += 1
        stats["without_generations"] += not rows
        if config.method == "simple":
            stats["generations"] += len(rows)
            yield from ({"id": f"{document.id}/{row['index']}", "text": row["text"]} for row in rows)
            yield {"id": document.id, "text": document.text}
        elif config.method == "stitched":
            stats["generations"] += len(rows)
            yield {"id": document.id, "parts": stitch(document, rows, config)}
        else:
            usable = _usable_rationales(document, rows, config, config.generations)
            stats["generations"] += len(usable)
            stats["rationales_dropped"] += len(rows) - len(usable)
            yield {"id": document.id,
                   "text": stretch(document.text, usable, config.rationale_open, config.rationale_close)}
    missing = set(generations) - seen
    if missing:
        raise MegadocError(f"{config.generations}: {len(missing)} documents with generations are not in the corpus "
                           f"(e.g. {sorted(missing)[0]!r}); wrong --input or --json-keys?")


def assemble(config: AssembleConfig, output: str) -> dict:
    """Write the shuffled records as JSONL to `output`; returns the stream's summary."""
    stats: Counter = Counter()
    records = list(_records(config, stats))
    random.Random(config.seed).shuffle(records)
    with atomic_write(output, "wb") as handle:
        for record in records:
            handle.write(orjson.dumps(record) + b"\n")
    lengths = [sum(map(len, record["parts"])) if "parts" in record else len(record["text"]) for record in records]
    return {"method": config.method, "records": len(records), **stats,
            "megadocs": len(records) if config.method != "simple" else 0,
            "characters": _distribution(lengths)}


def token_summary(output: str, tokenizer) -> dict:
    """Tokens per record as `megadoc tokenize --append-eod` writes them (each part and text + one EOD)."""
    lengths = []
    with open(output, "rb") as handle:
        for line in handle:
            record = orjson.loads(line)
            texts = record["parts"] if "parts" in record else [record["text"]]
            lengths.append(sum(len(ids) + 1 for ids in tokenizer.encode_batch(texts) if ids))
    return _distribution(lengths)


def _distribution(lengths: list[int]) -> dict:
    """Total and length distribution (megadocs run to ~22k tokens at G=32)."""
    if not lengths:
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
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--order", choices=("generation", "random"), default="generation")
    parser.add_argument("--real-position", choices=("last", "first", "none"), default="last")
    parser.add_argument("--rationale-open", default=DEFAULT_OPEN)
    parser.add_argument("--rationale-close", default=DEFAULT_CLOSE)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    add_tokenizer_arguments(parser, required=False)  # counts tokens in the summary; needed by --output-prefix
    parser.set_defaults(func=run)


def run(args) -> int:
    if not args.output and not args.output_prefix:
        raise MegadocError("--output or --output-prefix: say where the stream goes")
    if args.output_prefix and not args.tokenizer_model:
        raise MegadocError("--output-prefix: tokenizing needs --tokenizer-model")
    config = AssembleConfig(method=args.method, inputs=args.input, generations=args.generations,
                            json_key=args.json_keys[0], seed=args.seed, order=args.order,
                            real_position=args.real_position, rationale_open=args.rationale_open,
                            rationale_close=args.rationale_close)
    output = args.output or args.output_prefix + ".jsonl"
    summary = assemble(config, output)
    if args.tokenizer_model:
        summary.update(_tokenize(args, output))
    with atomic_write(output + ".summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)
    print(json.dumps(summary, indent=2), file=sys.stderr)
    return 0


def _tokenize(args, output: str) -> dict:
    from megadoc.preprocess.tokenize import TokenizeConfig, tokenize

    tokenizer = build_tokenizer(spec_from_args(args, threads=args.workers))
    if not args.output_prefix:
        return {"tokens": token_summary(output, tokenizer)}
    written = tokenize(TokenizeConfig([output], args.output_prefix, append_eod=True), tokenizer)
    return {"tokens": token_summary(output, tokenizer), "output_prefix": args.output_prefix,
            "sequences": written["sequences"]}
