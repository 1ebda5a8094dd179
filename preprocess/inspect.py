"""`megadoc inspect <prefix>`: what a .bin/.idx holds, and the decoded text of one sequence.

Reads the index with numpy alone (the layout is in megadoc.indexed), so it works where Megatron-Core is not
installed; the numbers are what `megatron.core.datasets.indexed_dataset.IndexedDataset` reports.
"""

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megadoc.errors import MegadocError
from megadoc.indexed import DTYPE_CODES, INDEX_HEADER
from megadoc.tokenizer import add_tokenizer_arguments, build_tokenizer, spec_from_args

CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


@dataclass
class IndexedData:
    """A Megatron indexed dataset, memory-mapped."""

    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray
    tokens: np.ndarray

    def sequence(self, n: int) -> np.ndarray:
        start = self.sequence_pointers[n] // self.dtype.itemsize
        return self.tokens[start:start + self.sequence_lengths[n]]


def read_indexed(prefix: str) -> IndexedData:
    idx_path, bin_path = Path(prefix + ".idx"), Path(prefix + ".bin")
    for path in (idx_path, bin_path):
        if not path.exists():
            raise MegadocError(f"{path}: no such file")
    raw = idx_path.read_bytes()
    if not raw.startswith(INDEX_HEADER):
        raise MegadocError(f"{idx_path}: not a Megatron .idx file")
    offset = len(INDEX_HEADER) + 8
    code = raw[offset]
    if code not in CODE_DTYPES:
        raise MegadocError(f"{idx_path}: unsupported token dtype code {code}")
    sequences, documents = struct.unpack_from("<QQ", raw, offset + 1)
    offset += 1 + 16
    lengths = np.frombuffer(raw, np.int32, sequences, offset)
    pointers = np.frombuffer(raw, np.int64, sequences, offset + 4 * sequences)
    doc_indices = np.frombuffer(raw, np.int64, documents, offset + 12 * sequences)
    dtype = CODE_DTYPES[code]
    tokens = np.memmap(bin_path, dtype=dtype, mode="r") if bin_path.stat().st_size else np.zeros(0, dtype)
    return IndexedData(dtype, lengths, pointers, doc_indices, tokens)


def summarize(data: IndexedData, eod: int | None = None) -> dict:
    lengths = data.sequence_lengths
    edges = [0, 128, 512, 1024, 2048, 4096, 8192, 16384, 32768, 2**31]
    counts, _ = np.histogram(lengths, bins=edges)
    summary = {"dtype": data.dtype.name, "sequences": int(len(lengths)),
               "documents": int(len(data.document_indices) - 1),
               "empty_documents": int(np.sum(np.diff(data.document_indices) == 0)),
               "tokens": int(lengths.sum()),
               "length_min": int(lengths.min()) if len(lengths) else 0,
               "length_mean": float(lengths.mean()) if len(lengths) else 0.0,
               "length_max": int(lengths.max()) if len(lengths) else 0,
               "length_histogram": {f"[{lo}, {hi})" if hi < 2**31 else f">= {lo}": int(c)
                                    for lo, hi, c in zip(edges, edges[1:], counts)}}
    if eod is not None:
        summary["eod_tokens"] = int(np.count_nonzero(np.asarray(data.tokens) == eod))
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("prefix", help="dataset prefix (without .bin/.idx)")
    parser.add_argument("--show", type=int, default=None, metavar="N", help="print sequence N (decoded if a "
                        "tokenizer is given, else its ids)")
    add_tokenizer_arguments(parser)
    parser.set_defaults(func=run)
    for action in parser._actions:  # the tokenizer is optional here: ids are shown without one
        if action.dest == "tokenizer_model":
            action.required = False


def run(args) -> int:
    data = read_indexed(args.prefix)
    tokenizer = build_tokenizer(spec_from_args(args)) if args.tokenizer_model else None
    summary = summarize(data, tokenizer.eod if tokenizer else None)
    width = max(map(len, summary))
    for key, value in summary.items():
        if key == "length_histogram":
            print("length histogram (tokens per sequence):")
            for bucket, count in value.items():
                print(f"  {bucket:>16}  {count:>10,}  {'#' * min(60, count * 60 // max(1, summary['sequences']))}")
        else:
            print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    if args.show is not None:
        if not 0 <= args.show < summary["sequences"]:
            raise MegadocError(f"--show {args.show}: the dataset has {summary['sequences']} sequences")
        ids = data.sequence(args.show).tolist()
        print(f"--- sequence {args.show} ({len(ids)} tokens) ---")
        print(tokenizer.decode(ids) if tokenizer else ids)
    return 0
