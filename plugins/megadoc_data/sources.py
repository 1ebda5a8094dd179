"""What a plan needs to know about a Megatron indexed dataset, read from its .idx header without Megatron-Core.

Reading the header alone keeps `megadoc blend` instant and lets a bad plan fail before any index is built.
"""

import os
import struct
from dataclasses import dataclass

import numpy

from megadoc.errors import MegadocError

_HEADER = b"MMIDIDX\x00\x00"
# Megatron-Core's DType codes (megatron.core.datasets.indexed_dataset.DType).
_DTYPES = {1: numpy.uint8, 2: numpy.int8, 3: numpy.int16, 4: numpy.int32, 5: numpy.int64, 6: numpy.float64,
           7: numpy.float32, 8: numpy.uint16}


@dataclass(frozen=True)
class Source:
    """One indexed dataset: its token dtype and the lengths of its sequences."""

    prefix: str
    dtype: type
    sequence_lengths: numpy.ndarray

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=numpy.int64))

    def samples_per_pass(self, seq_length: int) -> int:
        """Training sequences in one pass, as GPTDataset packs them (each sample reads seq_length + 1 tokens)."""
        return max(0, (self.tokens - 1) // seq_length)


def read_source(prefix: str) -> Source:
    """The header of P.idx (P.bin must exist too): dtype and sequence lengths."""
    for suffix in (".idx", ".bin"):
        if not os.path.isfile(prefix + suffix):
            raise MegadocError(f"{prefix}{suffix}: no such file (a dataset prefix names P.bin and P.idx)")
    with open(prefix + ".idx", "rb") as stream:
        if stream.read(9) != _HEADER:
            raise MegadocError(f"{prefix}.idx: not a Megatron indexed dataset (bad header)")
        stream.read(8)  # version
        code = struct.unpack("<B", stream.read(1))[0]
        count = struct.unpack("<Q", stream.read(8))[0]
        stream.read(8)  # document count
        lengths = numpy.fromfile(stream, dtype=numpy.int32, count=count)
    if code not in _DTYPES or len(lengths) != count:
        raise MegadocError(f"{prefix}.idx: truncated or unknown dtype code {code}")
    return Source(prefix, _DTYPES[code], lengths)


def check_same_dtype(sources: list[Source]) -> None:
    """Sources written with different token dtypes come from different vocabularies: refuse to mix them."""
    first = sources[0]
    for source in sources[1:]:
        if source.dtype != first.dtype:
            raise MegadocError(f"{source.prefix}.idx: token dtype {numpy.dtype(source.dtype).name} differs from "
                               f"{first.prefix}.idx ({numpy.dtype(first.dtype).name}): different vocabularies")


def check_vocab(source: Source, vocab_size: int) -> None:
    """The dtype Megatron-Core's builder picks for vocab_size must be the one the source was written with."""
    expected = numpy.uint16 if vocab_size is not None and vocab_size < 65500 else numpy.int32
    if source.dtype != expected:
        raise MegadocError(f"{source.prefix}.idx: token dtype {numpy.dtype(source.dtype).name} does not match the "
                           f"tokenizer's vocabulary of {vocab_size} ({numpy.dtype(expected).name})")
