"""What a plan needs to know about a Megatron indexed dataset, read from its .idx without Megatron-Core.

Reading the index alone keeps `megadoc blend` instant and lets a bad plan fail before any index is built.
"""

from dataclasses import dataclass

import numpy

from megadoc.errors import MegadocError
from megadoc.preprocess.indexed import optimal_dtype, read_index


@dataclass(frozen=True)
class Source:
    """One indexed dataset: its token dtype and the lengths of its sequences."""

    prefix: str
    dtype: numpy.dtype
    sequence_lengths: numpy.ndarray

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=numpy.int64))

    def samples_per_pass(self, seq_length: int) -> int:
        """Training sequences in one pass, as GPTDataset packs them (each sample reads seq_length + 1 tokens)."""
        return max(0, (self.tokens - 1) // seq_length)


def read_source(prefix: str) -> Source:
    """P.idx, checked against P.bin: dtype and sequence lengths."""
    data = read_index(prefix)
    return Source(prefix, data.dtype, data.sequence_lengths)


def check_same_dtype(sources: list[Source]) -> None:
    """Sources written with different token dtypes come from different vocabularies: refuse to mix them."""
    first = sources[0]
    for source in sources[1:]:
        if source.dtype != first.dtype:
            raise MegadocError(f"{source.prefix}.idx: token dtype {source.dtype.name} differs from "
                               f"{first.prefix}.idx ({first.dtype.name}): different vocabularies")


def check_vocab(source: Source, vocab_size: int) -> None:
    """The dtype Megatron-Core's builder picks for vocab_size must be the one the source was written with."""
    expected = optimal_dtype(vocab_size)
    if source.dtype != expected:
        raise MegadocError(f"{source.prefix}.idx: token dtype {source.dtype.name} does not match the "
                           f"tokenizer's vocabulary of {vocab_size} ({expected.name})")
