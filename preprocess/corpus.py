"""Corpus readers shared by every stage: JSONL (plain, .gz, .zst), Parquet, and HF `save_to_disk` folders.

Every record carries the file and line (or row) it came from, so a bad record is reported where it is. Reading
streams: memory stays bounded by one Parquet/Arrow batch whatever the corpus size. Inputs keep the order given;
a glob expands in sorted order, so the same command line always reads the same sequence of records.
"""

import glob
import gzip
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from megadoc.errors import MegadocError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_BATCH_ROWS = 1024


@dataclass(frozen=True)
class Record:
    """One corpus record and where it came from."""

    path: str
    line: int  # 1-based line of a JSONL file, or 1-based row of a Parquet / Arrow file
    data: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Document:
    """A real document: a stable id and its text."""

    id: str
    text: str
    where: str


def add_corpus_arguments(parser, input_help: str = "corpus files or globs (JSONL, .jsonl.gz/.zst, Parquet, HF "
                         "save_to_disk folders), read in order") -> None:
    """The corpus flags of every stage that reads documents: Megatron-LM's `--input` and `--json-keys` (one key:
    the record field holding the text)."""
    group = parser.add_argument_group("input data")
    group.add_argument("--input", nargs="+", required=True, help=input_help)
    group.add_argument("--json-keys", nargs=1, default=["text"], metavar="KEY",
                       help="record field holding the text (default: text)")


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Files (and HF dataset folders) named by paths or globs, in the order given, each glob sorted."""
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise MegadocError(f"{pattern}: no file matches")
        for path in matches:
            if not os.path.exists(path):
                raise MegadocError(f"{path}: no such file")
            if os.path.isdir(path) and not _is_hf_dataset(path):
                raise MegadocError(f"{path}: a directory that is not an HF dataset saved with save_to_disk")
            paths.append(path)
    return paths


def iter_records(inputs: Iterable[str]) -> Iterator[Record]:
    """Every record of every input, in order."""
    for path in expand_inputs(inputs):
        if os.path.isdir(path):
            yield from _read_hf_dataset(path)
        elif path.endswith(PARQUET_SUFFIXES):
            yield from _read_parquet(path)
        elif path.endswith(JSONL_SUFFIXES):
            yield from _read_jsonl(path)
        else:
            raise MegadocError(f"{path}: unknown corpus format (expected {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
                               " or an HF save_to_disk folder)")


def record_text(record: Record, key: str) -> str:
    """The text under `key`, checked to be a string."""
    if key not in record.data:
        raise MegadocError(f"{record.where}: missing key {key!r}")
    text = record.data[key]
    if not isinstance(text, str):
        raise MegadocError(f"{record.where}: key {key!r} is {type(text).__name__}, not a string")
    return text


def content_id(text: str) -> str:
    """A content hash used as the id of a record that has none: stable across runs and machines."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def record_id(record: Record, text: str) -> str:
    """The record's `id` field when present, else a hash of its text."""
    value = record.data.get("id")
    return content_id(text) if value is None else str(value)


def iter_documents(inputs: Iterable[str], text_key: str = "text") -> Iterator[Document]:
    """Real documents (id, text) of a corpus, for the stages that read documents rather than raw records."""
    for record in iter_records(inputs):
        text = record_text(record, text_key)
        yield Document(id=record_id(record, text), text=text, where=record.where)


def _open_binary(path: str) -> io.BufferedIOBase:
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")
        if path.endswith(".zst"):
            import zstandard

            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
        return open(path, "rb")
    except OSError as error:
        raise MegadocError(f"{path}: cannot open ({error.strerror or error})") from None


def _read_jsonl(path: str) -> Iterator[Record]:
    with _open_binary(path) as handle:
        line_no = 0
        try:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError as error:
                    reason = "invalid UTF-8" if "UTF-8" in str(error) else f"malformed JSON ({error})"
                    raise MegadocError(f"{path}:{line_no}: {reason}") from None
                if not isinstance(data, dict):
                    raise MegadocError(f"{path}:{line_no}: a JSON {type(data).__name__}, not an object")
                yield Record(path, line_no, data)
        except (OSError, EOFError) as error:
            raise MegadocError(f"{path}:{line_no + 1}: cannot read ({error})") from None


def _read_parquet(path: str) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several types for a file that is not Parquet
        raise MegadocError(f"{path}: not a readable Parquet file ({error})") from None
    row = 0
    for batch in parquet.iter_batches(batch_size=ARROW_BATCH_ROWS):
        for data in batch.to_pylist():
            row += 1
            yield Record(path, row, data)


def _is_hf_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))


def _read_hf_dataset(path: str) -> Iterator[Record]:
    """Arrow files of a `Dataset.save_to_disk` folder, read with pyarrow (no `datasets` import needed)."""
    import pyarrow as pa

    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        splits = json.loads(Path(path, "dataset_dict.json").read_text())["splits"]
        raise MegadocError(f"{path}: an HF DatasetDict; name one split folder, e.g. {os.path.join(path, splits[0])}")
    state = json.loads(Path(path, "state.json").read_text())
    for entry in state["_data_files"]:
        arrow_path = os.path.join(path, entry["filename"])
        row = 0
        with pa.memory_map(arrow_path) as source:
            for batch in pa.ipc.open_stream(source):
                for data in batch.to_pylist():
                    row += 1
                    yield Record(arrow_path, row, data)
