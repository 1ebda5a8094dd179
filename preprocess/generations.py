"""The generation shard format: the contract between `megadoc generate` (writer) and `megadoc assemble` (reader).

A generation directory holds one folder per shard, `shard-<i>-of-<K>/`, each with committed Parquet chunks
`chunk-<n>.parquet` (written under a temporary name, then renamed) and a `manifest.json`. One row per
generation, with the columns below. Only files under their final names are ever read.
"""

import glob
import os
from collections import defaultdict
from typing import Iterator

from megadoc.errors import MegadocError

KINDS = ("rephrase", "rationale")

# column -> meaning
COLUMNS = {
    "doc_id": "id of the source document (corpus.record_id)",
    "kind": "'rephrase' or 'rationale'",
    "index": "0-based generation index within the document (0..G-1)",
    "text": "the post-processed generation",
    "split_offset": "rationales: character offset in the source text where this rationale goes; rephrases: null",
    "prompt_tokens": "tokens in the prompt as the engine saw it",
    "completion_tokens": "tokens generated",
    "finish_reason": "'stop' or 'length' (vLLM's)",
    "model": "the model path or name",
    "params_hash": "hash of prompt template + sampling parameters: a directory never mixes two",
    "truncated": "whether the source document was truncated to fit the model context",
}


def chunk_files(directory: str) -> list[str]:
    """Every committed chunk of every shard, in shard then chunk order."""
    if not os.path.isdir(directory):
        raise MegadocError(f"{directory}: no such generation directory")
    return sorted(glob.glob(os.path.join(directory, "shard-*", "chunk-*.parquet")))


def iter_rows(directory: str, kind: str | None = None) -> Iterator[dict]:
    """Rows of a generation directory, optionally of one kind."""
    import pyarrow.parquet as pq

    for path in chunk_files(directory):
        for row in pq.read_table(path).to_pylist():
            if kind is None or row["kind"] == kind:
                yield row


def load_by_document(directory: str, kind: str) -> dict[str, list[dict]]:
    """doc_id -> its generations of `kind`, sorted by index (generation order)."""
    if kind not in KINDS:
        raise MegadocError(f"unknown generation kind {kind!r} (one of {', '.join(KINDS)})")
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for row in iter_rows(directory, kind):
        by_doc[row["doc_id"]].append(row)
    for rows in by_doc.values():
        rows.sort(key=lambda row: row["index"])
    return dict(by_doc)
