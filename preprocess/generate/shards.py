"""The generation shard format: the contract between `megadoc generate` (writer) and `megadoc assemble` (reader).

A generation directory holds one folder per shard, `shard-<i>-of-<K>/`, each with committed Parquet chunks
`chunk-<n>.parquet` and a `manifest.json`. Shard i holds the documents of share i of K of the corpus (a byte range
of its files laid end to end, `megadoc.preprocess.corpus`), so K shards cover every record exactly once and read the
corpus about once between them. Chunk n is committed by renaming its Parquet file into place and then rewriting the
manifest (both atomic); a re-run deletes chunk files the manifest does not list, so only files a manifest lists are
ever read. One row per generation, with the columns below; every row carries a hash of the prompt template and
sampling parameters, and a directory made with other parameters (or from a corpus whose files changed) is refused.
A process writing a shard holds its lock (`.lock` in the shard folder) until it ends: a second one is refused.
"""

import contextlib
import fcntl
import hashlib
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

from megadoc.errors import MegadocError
from megadoc.files import atomic_write

KINDS = ("rephrase", "rationale")
MANIFEST = "manifest.json"
LOCK = ".lock"

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


def schema():
    import pyarrow as pa

    types = {"doc_id": pa.string(), "kind": pa.string(), "index": pa.int32(), "text": pa.string(),
             "split_offset": pa.int64(), "prompt_tokens": pa.int32(), "completion_tokens": pa.int32(),
             "finish_reason": pa.string(), "model": pa.string(), "params_hash": pa.string(),
             "truncated": pa.bool_()}
    return pa.schema([(name, types[name]) for name in COLUMNS])


def shard_dir(output: str, index: int, num_shards: int) -> Path:
    return Path(output, f"shard-{index:05d}-of-{num_shards:05d}")


def params_hash(params: dict) -> str:
    """The `params_hash` column: prompt template + sampling parameters (+ model and G)."""
    keys = ("kind", "model", "prompt", "g", "temperature", "top_p", "max_tokens")
    blob = json.dumps({k: params[k] for k in keys}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- writing


def read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise MegadocError(f"{path}: unreadable manifest ({error})") from None


def _corpus_change(then: list, now: list) -> str:
    """What changed between two corpus listings ([path, size] pairs), in words."""
    before, after = dict(map(tuple, then)), dict(map(tuple, now))
    changes = [f"{path}: {before[path]:,} bytes then, {after[path]:,} now" for path in after
               if path in before and before[path] != after[path]]
    changes += [f"{path} added" for path in after if path not in before]
    changes += [f"{path} gone" for path in before if path not in after]
    return "; ".join(changes[:3]) or "the same files in another order"


def check_directory(output: str, params: dict) -> None:
    """Refuse an output directory that holds shards made with other parameters, from a corpus that has changed
    since, or with another shard count."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise MegadocError(f"{output}: exists and is not a directory")
    for manifest_path in sorted(out.glob("shard-*/" + MANIFEST)):
        existing = read_manifest(manifest_path)["params"]
        if "corpus" in existing and existing["corpus"] != params["corpus"]:
            raise MegadocError(f"{manifest_path}: the corpus changed since this directory was made "
                               f"({_corpus_change(existing['corpus'], params['corpus'])}); use a new --output")
        differ = sorted(k for k in set(existing) | set(params) if existing.get(k) != params.get(k))
        if differ:
            raise MegadocError(f"{manifest_path}: made with different {', '.join(differ)}; "
                               "refusing to mix them in one directory (use a new --output)")
    for path in sorted(out.glob("shard-*")):
        if not path.name.endswith(f"-of-{params['num_shards']:05d}"):
            raise MegadocError(f"{path}: made with another --num-shards; refusing to mix them (use a new --output)")


@contextlib.contextmanager
def shard_lock(directory: Path):
    """Hold the shard's lock for the whole run; a second process on the same shard gets one clear line. The kernel
    drops the lock when its holder dies, however it dies."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise MegadocError(f"{directory}: {holder} is writing this shard; wait for it to end (or run another "
                               "--shard-index)") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}")
        handle.flush()
        yield


def open_shard(directory: Path, params: dict) -> dict:
    """The shard's manifest (new or resumed), after removing files no manifest lists (a killed commit)."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST
    manifest = read_manifest(manifest_path) if manifest_path.exists() else {
        "params": params, "params_hash": params_hash(params), "chunks": [], "complete": False, "counts": {},
        "runs": []}
    listed = {chunk["file"] for chunk in manifest["chunks"]}
    for path in directory.iterdir():
        if path.name not in (MANIFEST, LOCK) and path.name not in listed:
            path.unlink()
    return manifest


def write_manifest(directory: Path, manifest: dict) -> None:
    with atomic_write(directory / MANIFEST, "w") as handle:
        json.dump(manifest, handle, indent=1)


def commit_chunk(directory: Path, manifest: dict, rows: list[dict], entry: dict) -> None:
    """Write the chunk under its final name, then list it in the manifest (each step atomic)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=schema())
    with atomic_write(directory / entry["file"]) as handle:
        pq.write_table(table, handle)
    manifest["chunks"].append(entry)
    write_manifest(directory, manifest)


# ---------------------------------------------------------------------------------------------------- status


def shard_summary(manifest: dict) -> dict:
    """Documents, generations, tokens and drops of one shard's manifest."""
    total: Counter = Counter(manifest.get("counts", {}))
    for chunk in manifest["chunks"]:
        total["docs"] += chunk["docs"]
        total["chunks"] += 1
        total.update({k: v for k, v in chunk.items() if isinstance(v, int) and k not in ("docs", "rows")})
    return dict(total)


def format_summary(summary: dict) -> str:
    drops = {k[5:]: v for k, v in summary.items() if k.startswith("drop:")}
    drop_text = ", ".join(f"{k} {v}" for k, v in sorted(drops.items())) or "none"
    return (f"documents {summary.get('docs', 0)}, generations {summary.get('generations', 0)}, "
            f"prompt tokens {summary.get('prompt_tokens', 0)}, generated tokens {summary.get('completion_tokens', 0)}, "
            f"truncated documents {summary.get('truncated_docs', 0)}, drops: {drop_text}, "
            f"excluded documents {summary.get('excluded_docs', 0)}, "
            f"repeated ids skipped {summary.get('duplicate_id_docs', 0)}")


def repeated_ids(output: str) -> int:
    """Document ids with generations in more than one shard (a corpus that repeats an id across shares;
    `megadoc split` refuses such a corpus)."""
    import pyarrow.parquet as pq

    shards_of: dict[str, set] = defaultdict(set)
    for path in chunk_files(output):
        for doc_id in pq.read_table(path, columns=["doc_id"]).column("doc_id").to_pylist():
            shards_of[doc_id].add(path.parent.name)
    return sum(len(shards) > 1 for shards in shards_of.values())


def directory_status(output: str) -> list[tuple[str, dict | None]]:
    """(shard name, its manifest or None when not started) for every shard of a directory."""
    out = Path(output)
    shards = sorted(out.glob("shard-*-of-*"))
    if not out.is_dir() or not shards:
        raise MegadocError(f"{output}: not a generation directory (no shard-*-of-* folders)")
    counts = {p.name.rsplit("-of-", 1)[1] for p in shards}
    if len(counts) != 1:
        raise MegadocError(f"{output}: shards of several --num-shards ({', '.join(sorted(counts))})")
    k = int(counts.pop())
    present = {p.name: p for p in shards}
    names = [shard_dir(output, i, k).name for i in range(k)]
    return [(name, read_manifest(present[name] / MANIFEST) if (present.get(name) and
             (present[name] / MANIFEST).exists()) else None) for name in names]


# ---------------------------------------------------------------------------------------------------- reading


def chunk_files(directory: str) -> list[Path]:
    """Every committed chunk of every shard (those its manifest lists), in shard then chunk order."""
    out = Path(directory)
    if not out.is_dir():
        raise MegadocError(f"{directory}: no such generation directory")
    files = []
    for manifest_path in sorted(out.glob("shard-*/" + MANIFEST)):
        files += [manifest_path.parent / chunk["file"] for chunk in read_manifest(manifest_path)["chunks"]]
    return files


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
