"""Corpus readers shared by every stage: JSONL (plain, .gz, .zst), Parquet, and HF `save_to_disk` folders.

Every record carries the file and line (or row) it came from, so a bad record is reported where it is. Reading
streams: memory stays bounded by one Parquet/Arrow batch whatever the corpus size. Inputs keep the order given;
a glob expands in sorted order, so the same command line always reads the same sequence of records. A damaged file
(a truncated .gz or .zst, a .zst that is not zstd, a Parquet file corrupt mid-file) stops the read with one line
naming it, never a shorter corpus.

Shares: `iter_records(inputs, share=(i, K))` reads only the i-th of K shares, which together hold every record
exactly once, in corpus order. The corpus is laid out as its files' bytes end to end (sizes on disk, input order);
a record's *anchor* is where it starts in that layout: its line in plain JSONL, its row group in Parquet, the whole
file for compressed JSONL and Arrow files (a compressed stream cannot be entered mid-way). Share i holds the records
anchored in [i*T/K, (i+1)*T/K) of the T bytes, so it reads about T/K bytes: a byte range of a JSONL file (from the
first line that starts in it), its row groups, its whole files. Compressed JSONL therefore divides by file: give
at least as many files as shares.
"""

import glob
import gzip
import hashlib
import io
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

from megadoc.errors import MegadocError

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_BATCH_ROWS = 1024
READ_BUFFER = 1 << 20
LINE_TAIL_READ = 1 << 12
"""Bytes read at a time past the end of a share's range, finishing its last line."""
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Record:
    """One corpus record and where it came from."""

    path: str
    line: int | None  # 1-based line of a JSONL file, or row of a Parquet / Arrow file; None after a mid-file start
    data: dict[str, Any]
    offset: int | None = None  # byte offset of the line in a plain JSONL file
    anchor: int = 0  # where the record starts in the corpus layout (the module docstring): decides its share

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else f"{self.path}:byte {self.offset}"


@dataclass(frozen=True)
class Document:
    """A real document: a stable id and its text."""

    id: str
    text: str
    where: str
    anchor: int = 0
    """Where its record starts in the corpus layout."""


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus layout: an input file, or one Arrow file of an HF dataset folder."""

    path: str
    start: int
    """Bytes of the files before it."""
    size: int
    """Its size on disk."""


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
            if not os.path.isdir(path) and not path.endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES):
                raise MegadocError(f"{path}: unknown corpus format (expected "
                                   f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} or an HF save_to_disk folder)")
            paths.append(path)
    return paths


def corpus_layout(inputs: Iterable[str]) -> list[CorpusFile]:
    """The corpus's files end to end, as shares divide it."""
    files: list[CorpusFile] = []
    start = 0
    for path in expand_inputs(inputs):
        for file in _hf_arrow_files(path) if os.path.isdir(path) else [path]:
            size = os.path.getsize(file)
            files.append(CorpusFile(file, start, size))
            start += size
    return files


def share_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """The [lo, hi) of the corpus layout that share `index` of `count` owns."""
    if not 0 <= index < count:
        raise MegadocError(f"share {index} of {count}: the index must be in 0..{count - 1}")
    return total * index // count, total * (index + 1) // count


def iter_records(inputs: Iterable[str], share: tuple[int, int] = (0, 1), stats: Counter | None = None
                 ) -> Iterator[Record]:
    """Every record of every input, in order; with `share=(i, K)` only the i-th of K shares (the module
    docstring). `stats["bytes_read"]` counts the bytes read from the files."""
    stats = Counter() if stats is None else stats
    layout = corpus_layout(inputs)
    lo, hi = share_bounds(sum(f.size for f in layout), *share)
    for file in layout:
        overlaps = file.start < hi and file.start + file.size > lo
        if file.path.endswith(PARQUET_SUFFIXES):
            if overlaps:
                yield from _read_parquet(file, lo, hi, stats)
        elif _splittable(file.path):
            if overlaps:
                yield from _read_jsonl(file, lo, hi, stats)
        elif lo <= file.start < hi:  # read whole, by the share its first byte falls in
            yield from _read_arrow(file, stats) if file.path.endswith(".arrow") else _read_jsonl(file, lo, hi, stats)


def count_records(inputs: Iterable[str], scan_bytes: int = 4 << 30) -> tuple[int, bool]:
    """(records in the corpus, whether the count is exact): Parquet and Arrow from their metadata, JSONL by reading
    its lines while `scan_bytes` (on disk) last, the rest extrapolated from the records per byte read so far (of
    the same compression when there are)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    total, exact = 0, True
    read: dict[bool, list[int]] = {True: [0, 0], False: [0, 0]}  # compressed? -> [records, bytes read]
    for file in corpus_layout(inputs):
        if file.path.endswith(PARQUET_SUFFIXES):
            total += pq.ParquetFile(file.path).metadata.num_rows
            continue
        if file.path.endswith(".arrow"):
            with pa.memory_map(file.path) as source:
                total += sum(batch.num_rows for batch in pa.ipc.open_stream(source))
            continue
        compressed, left = not _splittable(file.path), scan_bytes - read[True][1] - read[False][1]
        stats: Counter = Counter()
        lines, ended, consumed = 0, True, 0
        if left > 0:
            with _open_jsonl(file.path, stats, None) as handle:
                for line in handle:
                    lines += bool(line.strip())
                    # bytes on disk: the lines' own (plain), else what was read (compressed, read ahead a little)
                    consumed = stats["bytes_read"] if compressed else consumed + len(line)
                    if consumed >= left:
                        ended = False
                        break
            read[compressed][0] += lines
            read[compressed][1] += consumed
        if left > 0 and ended:
            total += lines
            continue
        records, bytes_ = read[compressed] if read[compressed][1] else [sum(v) for v in zip(*read.values())]
        total += round(records * file.size / max(bytes_, 1))
        exact = False
    return total, exact


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


def iter_documents(inputs: Iterable[str], text_key: str = "text", share: tuple[int, int] = (0, 1),
                   stats: Counter | None = None) -> Iterator[Document]:
    """Real documents (id, text) of a corpus (or of one share), for the stages that read documents."""
    for record in iter_records(inputs, share, stats):
        text = record_text(record, text_key)
        yield Document(id=record_id(record, text), text=text, where=record.where, anchor=record.anchor)


# ---------------------------------------------------------------------------------------------------- JSONL


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read through it (what a share costs). With `stop`, reads end there,
    then go on in small pieces: a share reads past its range only to finish its last line."""

    def __init__(self, path: str, stats: Counter, stop: int | None = None):
        self._file = open(path, "rb", buffering=0)
        self._stats, self._stop = stats, stop

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._stop is not None:
            left = self._stop - self._file.tell()
            buffer = memoryview(buffer)[:left if left > 0 else LINE_TAIL_READ]
        n = self._file.readinto(buffer)
        self._stats["bytes_read"] += n or 0
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        self._file.close()
        super().close()


class _ZstdStream(io.RawIOBase):
    """Decompressed bytes of a (multi-frame) zstd file; ending inside a frame is an error, not a shorter file."""

    def __init__(self, source: io.RawIOBase, path: str):
        import zstandard

        self._source, self._path, self._zstd = source, path, zstandard
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False  # bytes of the current frame were fed
        self._out, self._taken = b"", 0  # decompressed bytes, and how many of them were handed out

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._taken == len(self._out):
            data = self._source.read(READ_BUFFER)
            if not data:
                if self._in_frame:
                    raise MegadocError(f"{self._path}: truncated zstd file (it ends inside a frame); re-copy it")
                return 0
            self._out, self._taken = self._decompress(data), 0
        n = min(len(buffer), len(self._out) - self._taken)
        buffer[:n] = self._out[self._taken:self._taken + n]
        self._taken += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                out.append(self._frame.decompress(data))
                self._in_frame = True
                if not self._frame.eof:
                    break
                data = self._frame.unused_data  # the next frame starts here
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
                self._in_frame = False
            return b"".join(out)
        except self._zstd.ZstdError as error:
            raise MegadocError(f"{self._path}: not a readable zstd file ({error})") from None

    def close(self) -> None:
        self._source.close()
        super().close()


def _splittable(path: str) -> bool:
    """Whether a share may start reading the file mid-way (plain JSONL)."""
    return path.endswith((".jsonl", ".json"))


def _open_jsonl(path: str, stats: Counter, stop: int | None) -> io.BufferedReader:
    try:
        raw = _Counted(path, stats, stop)
    except OSError as error:
        raise MegadocError(f"{path}: cannot open ({error.strerror or error})") from None
    if path.endswith(".gz"):
        return io.BufferedReader(gzip.GzipFile(fileobj=io.BufferedReader(raw, READ_BUFFER)), READ_BUFFER)
    if path.endswith(".zst"):
        return io.BufferedReader(_ZstdStream(raw, path), READ_BUFFER)
    return io.BufferedReader(raw, READ_BUFFER)


def _read_jsonl(file: CorpusFile, lo: int, hi: int, stats: Counter) -> Iterator[Record]:
    """The records of a JSONL file anchored in [lo, hi): a plain file is entered at the first line starting at or
    after lo; a compressed one is read whole, all its records anchored at its first byte."""
    path, splittable = file.path, _splittable(file.path)
    begin, end = (max(lo - file.start, 0), hi - file.start) if splittable else (0, None)
    with _open_jsonl(path, stats, end) as handle:
        line_no, pos = (1, 0) if begin == 0 else (None, begin)
        try:
            if begin:
                handle.seek(begin - 1)
                pos = begin - 1 + len(handle.readline())  # the rest of the line that started before `begin`
            while end is None or pos < end:
                line, start = handle.readline(), pos
                if not line:
                    break
                pos += len(line)
                if start == 0 and line.startswith(BOM):  # editors on Windows write one; it is not part of the JSON
                    line = line[len(BOM):]
                if line.strip():
                    offset = start if splittable else None
                    yield Record(path, line_no, _parse_line(line, path, line_no, offset), offset,
                                 file.start + start if splittable else file.start)
                if line_no is not None:
                    line_no += 1
        except (OSError, EOFError, zlib.error) as error:  # a compressed file is decoded ahead of the lines read
            where = f"{path}:byte {pos}" if splittable else path
            raise MegadocError(f"{where}: cannot read, truncated or corrupt ({error})") from None


def _parse_line(line: bytes, path: str, line_no: int | None, offset: int | None) -> dict:
    where = f"{path}:{line_no}" if line_no is not None else f"{path}:byte {offset}"
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        reason = "invalid UTF-8" if "UTF-8" in str(error) else f"malformed JSON ({error})"
        raise MegadocError(f"{where}: {reason}") from None
    if not isinstance(data, dict):
        raise MegadocError(f"{where}: a JSON {type(data).__name__}, not an object")
    return data


# ---------------------------------------------------------------------------------------------------- Parquet, Arrow


def _row_group_starts(metadata) -> list[int]:
    """Byte offset in the file where each row group's first page starts."""
    starts = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        starts.append(min(c.dictionary_page_offset if c.has_dictionary_page else c.data_page_offset
                          for c in (group.column(j) for j in range(group.num_columns))))
    return starts


def _arrow_errors():
    import pyarrow as pa

    return pa.ArrowException, OSError, ValueError


def _read_parquet(file: CorpusFile, lo: int, hi: int, stats: Counter) -> Iterator[Record]:
    """The rows of the file's row groups anchored in [lo, hi)."""
    import bisect

    import pyarrow.parquet as pq

    path = file.path
    with _Counted(path, stats) as source:
        try:
            parquet = pq.ParquetFile(source)
            starts = _row_group_starts(parquet.metadata)
        except _arrow_errors() as error:
            raise MegadocError(f"{path}: not a readable Parquet file ({_first_line(error)})") from None
        mine = [i for i, start in enumerate(starts) if lo <= file.start + start < hi]  # consecutive groups
        if not mine:
            return
        rows_before = [0]
        for i in range(parquet.metadata.num_row_groups):
            rows_before.append(rows_before[-1] + parquet.metadata.row_group(i).num_rows)
        row = rows_before[mine[0]]
        try:
            for batch in parquet.iter_batches(batch_size=ARROW_BATCH_ROWS, row_groups=mine):
                for data in batch.to_pylist():
                    group = bisect.bisect_right(rows_before, row) - 1
                    row += 1
                    yield Record(path, row, data, anchor=file.start + starts[group])
        except _arrow_errors() as error:
            raise MegadocError(f"{path}: corrupt Parquet after row {row} ({_first_line(error)})") from None


def _is_hf_dataset(path: str) -> bool:
    return os.path.exists(os.path.join(path, "state.json")) or os.path.exists(os.path.join(path, "dataset_dict.json"))


def _hf_arrow_files(path: str) -> list[str]:
    """The Arrow files of a `Dataset.save_to_disk` folder, in order."""
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        splits = json.loads(Path(path, "dataset_dict.json").read_text())["splits"]
        raise MegadocError(f"{path}: an HF DatasetDict; name one split folder, e.g. {os.path.join(path, splits[0])}")
    state = json.loads(Path(path, "state.json").read_text())
    return [os.path.join(path, entry["filename"]) for entry in state["_data_files"]]


def _read_arrow(file: CorpusFile, stats: Counter) -> Iterator[Record]:
    """The rows of one Arrow stream file of an HF dataset folder (read with pyarrow: no `datasets` import)."""
    import pyarrow as pa

    row = 0
    with _Counted(file.path, stats) as source:
        try:
            for batch in pa.ipc.open_stream(io.BufferedReader(source, READ_BUFFER)):
                for data in batch.to_pylist():
                    row += 1
                    yield Record(file.path, row, data, anchor=file.start)
        except _arrow_errors() as error:
            raise MegadocError(f"{file.path}:{row + 1}: corrupt Arrow file ({_first_line(error)})") from None


def _first_line(error: BaseException) -> str:
    return next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
