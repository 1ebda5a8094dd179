"""`megadoc inspect <prefix>`: what a .bin/.idx holds, and the decoded text of one sequence.

Reads the index with numpy alone (the layout is in megadoc.preprocess.indexed), so it works where Megatron-Core is not
installed; the numbers are what `megatron.core.datasets.indexed_dataset.IndexedDataset` reports.
"""

import numpy as np

from megadoc.errors import MegadocError
from megadoc.preprocess.indexed import IndexedData, read_index
from megadoc.preprocess.tokenizer import add_tokenizer_arguments, build_tokenizer, spec_from_args


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
    add_tokenizer_arguments(parser, required=False)  # without one, ids are shown
    parser.set_defaults(func=run)


def run(args) -> int:
    data = read_index(args.prefix)
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
