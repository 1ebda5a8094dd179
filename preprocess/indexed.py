"""Megatron-Core's indexed dataset format (.bin/.idx): written resumably, read and checked without Megatron-Core.

The layout is Megatron-Core's `IndexedDatasetBuilder` + `_IndexWriter` (megatron/core/datasets/indexed_dataset.py):
.bin is the token ids back to back; .idx is a header, the sequence lengths (int32), the byte pointer of each
sequence (int64) and the document indices (int64, starting at 0). Written byte for byte the same, so a
`megadoc tokenize` output is interchangeable with Megatron-LM's `tools/preprocess_data.py`'s.

Beside them megadoc writes a sidecar, P.megadoc.json: the tokenizer that wrote the tokens (its fingerprint, see
megadoc.preprocess.tokenizer) and the counts. Readers (`read_index`) check the pair, and the sidecar where there is
one (Megatron-LM's tools write none), so that no stage blends, trains or evaluates tokens of another tokenizer.

Until `finalize`, everything lives under temporary names: the token data in `P.bin.tmp`, the index arrays in two
append-only sidecars, and a small state file committed (fsync + rename) at each checkpoint. A killed run leaves
only those; the next run truncates them to the last checkpoint and carries on. Publication is one commit whose
commit point is the .idx: the complete P.idx.tmp and sidecar are written first and the state records "publishing";
then the previous P.idx is removed, the sidecar and P.bin renamed into place, and P.idx last. A reader therefore
never sees a new .bin beside an old .idx (between the steps there is no .idx at all), and a run killed in the middle
finishes the renames when it is started again.
"""

import json
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from megadoc.errors import MegadocError
from megadoc.files import atomic_write, tmp_path

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = len(INDEX_HEADER) + 8 + 1 + 8 + 8  # magic, version, dtype code, sequence and document counts
# Megatron-Core's DType codes (megatron.core.datasets.indexed_dataset.DType).
DTYPE_CODES = {np.dtype(np.uint8): 1, np.dtype(np.int8): 2, np.dtype(np.int16): 3, np.dtype(np.int32): 4,
               np.dtype(np.int64): 5, np.dtype(np.float64): 6, np.dtype(np.float32): 7, np.dtype(np.uint16): 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
UINT16_VOCAB_LIMIT = 65_500
SIDECAR_SUFFIX = ".megadoc.json"


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Megatron-LM's rule (`DType.optimal_dtype`): uint16 below 65,500 ids, else int32."""
    return np.dtype(np.uint16 if vocab_size < UINT16_VOCAB_LIMIT else np.int32)


def sidecar_path(prefix: str) -> Path:
    return Path(prefix + SIDECAR_SUFFIX)


def write_index(path: str | os.PathLike, dtype: np.dtype, sequence_lengths: np.ndarray,
                document_indices: np.ndarray) -> None:
    """The .idx file for these sequences (document_indices includes the leading 0), atomically."""
    lengths = np.asarray(sequence_lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    with atomic_write(path) as out:
        out.write(INDEX_HEADER)
        out.write(struct.pack("<Q", INDEX_VERSION))
        out.write(struct.pack("<B", DTYPE_CODES[dtype]))
        out.write(struct.pack("<Q", len(lengths)))
        out.write(struct.pack("<Q", len(document_indices)))
        out.write(lengths.tobytes(order="C"))
        out.write(pointers.tobytes(order="C"))
        out.write(np.asarray(document_indices, dtype=np.int64).tobytes(order="C"))


@dataclass(frozen=True)
class IndexedData:
    """A Megatron indexed dataset's index, read and checked against its .bin; tokens memory-mapped on demand."""

    prefix: str
    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray
    sidecar: dict | None
    """P.megadoc.json (the tokenizer that wrote it, the counts), or None for data megadoc did not write."""

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))

    @property
    def tokenizer(self) -> dict | None:
        """The identity of the tokenizer that wrote the tokens (fingerprint, type, model, vocab_size, eod)."""
        return self.sidecar["tokenizer"] if self.sidecar else None

    @property
    def tokens(self) -> np.ndarray:
        if not self.num_tokens:
            return np.zeros(0, self.dtype)
        return np.memmap(self.prefix + ".bin", dtype=self.dtype, mode="r")

    def sequence(self, n: int) -> np.ndarray:
        start = self.sequence_pointers[n] // self.dtype.itemsize
        return self.tokens[start:start + self.sequence_lengths[n]]

    def document_tokens(self) -> np.ndarray:
        """Tokens of each document (0 for an empty one), in order."""
        ends = np.concatenate([[0], np.cumsum(self.sequence_lengths, dtype=np.int64)])
        return ends[self.document_indices[1:]] - ends[self.document_indices[:-1]]


def read_index(prefix: str) -> IndexedData:
    """The index of `prefix`, refused in one line when the pair is missing, truncated or inconsistent (an .idx
    of another length than its counts say, a .bin shorter or longer than the .idx describes, a sidecar of another
    write)."""
    idx_path, bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
    for path in (idx_path, bin_path):
        if not path.is_file():
            raise MegadocError(f"{path}: no such file (a dataset prefix names P.bin and P.idx)")
    raw = idx_path.read_bytes()
    if not raw.startswith(INDEX_HEADER) or len(raw) < HEADER_BYTES:
        raise MegadocError(f"{idx_path}: not a Megatron indexed dataset (bad header)")
    code = raw[len(INDEX_HEADER) + 8]
    if code not in CODE_DTYPES:
        raise MegadocError(f"{idx_path}: unknown token dtype code {code}")
    sequences, documents = struct.unpack_from("<QQ", raw, len(INDEX_HEADER) + 9)
    if len(raw) != HEADER_BYTES + 12 * sequences + 8 * documents:
        raise MegadocError(f"{idx_path}: {len(raw)} bytes, but its header describes {sequences} sequences and "
                           f"{documents - 1} documents ({HEADER_BYTES + 12 * sequences + 8 * documents} bytes): "
                           "truncated or corrupt; re-run the stage that wrote it")
    lengths = np.frombuffer(raw, np.int32, sequences, HEADER_BYTES)
    pointers = np.frombuffer(raw, np.int64, sequences, HEADER_BYTES + 4 * sequences)
    doc_indices = np.frombuffer(raw, np.int64, documents, HEADER_BYTES + 12 * sequences)
    data = IndexedData(prefix, CODE_DTYPES[code], lengths, pointers, doc_indices, _read_sidecar(prefix))
    expected = data.num_tokens * data.dtype.itemsize
    if bin_path.stat().st_size != expected:
        raise MegadocError(f"{bin_path}: {bin_path.stat().st_size} bytes, but {idx_path.name} describes {expected}: "
                           "the pair does not belong together (an interrupted write?); re-run the stage that wrote it")
    if data.sidecar and (data.sidecar.get("tokens"), data.sidecar.get("sequences")) != (data.num_tokens, sequences):
        raise MegadocError(f"{sidecar_path(prefix)}: describes {data.sidecar.get('tokens')} tokens in "
                           f"{data.sidecar.get('sequences')} sequences, {idx_path.name} {data.num_tokens} in "
                           f"{sequences}: left from another write; remove it or re-run the stage that wrote {prefix}")
    return data


def _read_sidecar(prefix: str) -> dict | None:
    path = sidecar_path(prefix)
    if not path.exists():
        return None
    try:
        sidecar = json.loads(path.read_text())
        sidecar["tokenizer"]["fingerprint"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: unreadable sidecar ({error}); remove it or re-run the stage that wrote "
                           f"{prefix}") from None
    return sidecar


def check_same_tokenizer(datasets: list[IndexedData]) -> None:
    """Datasets whose sidecars name different tokenizers are never mixed (those without a sidecar are judged by
    their dtype only, by the caller)."""
    known = [data for data in datasets if data.tokenizer]
    for data in known[1:]:
        if data.tokenizer["fingerprint"] != known[0].tokenizer["fingerprint"]:
            raise MegadocError(f"{data.prefix}: tokenized with {_describe(data.tokenizer)}, but {known[0].prefix} "
                               f"with {_describe(known[0].tokenizer)}: their ids mean different text; re-tokenize "
                               "one of them")


def check_tokenizer(data: IndexedData, tokenizer) -> None:
    """The dataset was written by `tokenizer` (as far as its sidecar tells)."""
    if data.tokenizer and data.tokenizer["fingerprint"] != tokenizer.fingerprint:
        raise MegadocError(f"{data.prefix}: tokenized with {_describe(data.tokenizer)}, not with the "
                           f"{_describe(tokenizer.identity())} given here (fingerprints differ); use the tokenizer "
                           "the data was written with")


def _describe(identity: dict) -> str:
    return (f"{identity.get('type')} {identity.get('model')} (vocabulary {identity.get('vocab_size')}, EOD "
            f"{identity.get('eod')}, fingerprint {identity.get('fingerprint')})")


@dataclass
class WriterState:
    """What a checkpoint records: enough to truncate the temporaries back to it and skip the input read so far."""

    fingerprint: str  # hash of inputs + flags: a state from a different command is never resumed
    records_done: int = 0
    bin_bytes: int = 0
    sequences: int = 0
    documents: int = 1  # document_indices entries, the leading 0 included
    empty_documents: int = 0
    tokens: int = 0
    publishing: bool = False  # the .idx.tmp and sidecar are complete; only the renames are left


class ResumableIndexedWriter:
    """Appends documents to a Megatron indexed dataset under temporary names; `finalize` publishes it."""

    def __init__(self, prefix: str, dtype: np.dtype, fingerprint: str):
        self.prefix, self.dtype = prefix, np.dtype(dtype)
        self.bin_path, self.idx_path, self.sidecar = Path(prefix + ".bin"), Path(prefix + ".idx"), sidecar_path(prefix)
        self.tmp_bin, self.tmp_idx, self.tmp_sidecar = map(tmp_path, (self.bin_path, self.idx_path, self.sidecar))
        self.lengths_path = Path(prefix + ".lengths.tmp")
        self.documents_path = Path(prefix + ".documents.tmp")
        self.state_path = Path(prefix + ".tokenize-state.json")
        self.state = self._restore(fingerprint)
        self.published = self.state.publishing
        if self.published:  # killed while publishing: finish it
            self._publish()
            return
        self._bin = open(self.tmp_bin, "r+b" if self.tmp_bin.exists() else "w+b")
        self._lengths = open(self.lengths_path, "r+b" if self.lengths_path.exists() else "w+b")
        self._documents = open(self.documents_path, "r+b" if self.documents_path.exists() else "w+b")
        self._truncate_to_state()

    def _restore(self, fingerprint: str) -> WriterState:
        if self.state_path.exists():
            saved = WriterState(**json.loads(self.state_path.read_text()))
            if saved.fingerprint == fingerprint and (saved.publishing or self.tmp_bin.exists()):
                return saved
        self.discard()
        return WriterState(fingerprint=fingerprint)

    def _truncate_to_state(self) -> None:
        state = self.state
        for handle, size in ((self._bin, state.bin_bytes), (self._lengths, state.sequences * 4),
                             (self._documents, (state.documents - 1) * 8)):
            handle.truncate(size)
            handle.seek(size)

    def add_batch(self, tokens: np.ndarray, lengths: np.ndarray, has_sequence: np.ndarray) -> None:
        """Append documents: `tokens` holds their sequences back to back, `lengths` one entry per sequence, and
        has_sequence[k] whether document k has one (an empty document has none, as Megatron-LM records it)."""
        state = self.state
        self._bin.write(tokens.astype(self.dtype, copy=False).tobytes())
        self._lengths.write(np.asarray(lengths, dtype=np.int32).tobytes())
        ends = state.sequences + np.cumsum(has_sequence, dtype=np.int64)
        self._documents.write(ends.tobytes())
        state.sequences += len(lengths)
        state.documents += len(has_sequence)
        state.empty_documents += int(len(has_sequence) - np.count_nonzero(has_sequence))
        state.tokens += len(tokens)
        state.bin_bytes = state.tokens * self.dtype.itemsize
        state.records_done += len(has_sequence)

    def checkpoint(self) -> None:
        """Make everything written so far durable, then record it: a kill after this resumes from here."""
        for handle in (self._bin, self._lengths, self._documents):
            handle.flush()
            os.fsync(handle.fileno())
        self._save_state()

    def _save_state(self) -> None:
        with atomic_write(self.state_path, "w") as out:
            json.dump(asdict(self.state), out)

    def finalize(self, sidecar: dict) -> None:
        """Publish, with `sidecar` (plus the counts) as P.megadoc.json: everything complete under temporary
        names first, then the renames (see the module docstring)."""
        for handle in (self._bin, self._lengths, self._documents):
            handle.flush()
            os.fsync(handle.fileno())
        lengths = np.fromfile(self.lengths_path, dtype=np.int32)
        documents = np.concatenate([[0], np.fromfile(self.documents_path, dtype=np.int64)])
        self.close()
        write_index(self.tmp_idx, self.dtype, lengths, documents)
        counts = {"dtype": self.dtype.name, "documents": self.state.documents - 1, "sequences": self.state.sequences,
                  "tokens": self.state.tokens, "empty_documents": self.state.empty_documents}
        with atomic_write(self.tmp_sidecar, "w") as out:
            json.dump({**sidecar, **counts}, out, indent=1)
        self.state.publishing = True
        self._save_state()
        self._publish()

    def _publish(self) -> None:
        """The renames, idempotent: a run killed among them is finished by the next."""
        if self.tmp_idx.exists():
            self.idx_path.unlink(missing_ok=True)  # from here until the last rename, no .idx: readers refuse
            for tmp, final in ((self.tmp_sidecar, self.sidecar), (self.tmp_bin, self.bin_path),
                               (self.tmp_idx, self.idx_path)):
                if tmp.exists():
                    os.replace(tmp, final)
        self.discard()

    def close(self) -> None:
        for handle in (self._bin, self._lengths, self._documents):
            handle.close()

    def discard(self) -> None:
        """Remove every temporary (not the published files)."""
        for path in (self.tmp_bin, self.tmp_idx, tmp_path(self.tmp_idx), self.tmp_sidecar, tmp_path(self.tmp_sidecar),
                     self.lengths_path, self.documents_path, self.state_path):
            path.unlink(missing_ok=True)
