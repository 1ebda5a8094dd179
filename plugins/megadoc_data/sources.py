"""What a plan needs to know about a Megatron indexed dataset, read from its .idx without Megatron-Core.

Reading the index alone keeps `megadoc blend` instant and lets a bad plan fail before any index is built. Every
source goes through `megadoc.preprocess.indexed.read_index`: a truncated .idx, a .bin of another length or a stale
sidecar fails here, in one line.
"""

from dataclasses import dataclass

import numpy

from megadoc.errors import MegadocError
from megadoc.preprocess.indexed import check_same_tokenizer, check_tokenizer, optimal_dtype, read_index


@dataclass(frozen=True)
class Source:
    """One indexed dataset: its token dtype, the lengths of its sequences, and the tokenizer that wrote it."""

    prefix: str
    dtype: numpy.dtype
    sequence_lengths: numpy.ndarray
    tokenizer: dict | None = None
    """The writer's tokenizer identity from the sidecar (None: not written by megadoc)."""

    @property
    def tokens(self) -> int:
        return int(self.sequence_lengths.sum(dtype=numpy.int64))

    def samples_per_pass(self, seq_length: int) -> int:
        """Training sequences in one pass, as GPTDataset packs them (each sample reads seq_length + 1 tokens)."""
        return max(0, (self.tokens - 1) // seq_length)


def read_source(prefix: str) -> Source:
    """P.idx, checked against P.bin and its sidecar: dtype, sequence lengths, tokenizer."""
    data = read_index(prefix)
    return Source(prefix, data.dtype, data.sequence_lengths, data.tokenizer)


def check_same_vocabulary(sources: list[Source]) -> None:
    """Sources written with different token dtypes, or by tokenizers whose fingerprints differ, come from different
    vocabularies: refuse to mix them."""
    first = sources[0]
    for source in sources[1:]:
        if source.dtype != first.dtype:
            raise MegadocError(f"{source.prefix}.idx: token dtype {source.dtype.name} differs from "
                               f"{first.prefix}.idx ({first.dtype.name}): different vocabularies")
    check_same_tokenizer(sources)


def check_vocab(source: Source, tokenizer) -> None:
    """The dtype Megatron-Core's builder picks for the tokenizer's vocabulary must be the one the source was written
    with, a megadoc tokenizer must be the one that wrote it (fingerprint), and the vocabulary must hold its ids."""
    expected = optimal_dtype(tokenizer.vocab_size)
    if source.dtype != expected:
        raise MegadocError(f"{source.prefix}.idx: token dtype {source.dtype.name} does not match the "
                           f"tokenizer's vocabulary of {tokenizer.vocab_size} ({expected.name})")
    if hasattr(tokenizer, "fingerprint"):
        check_tokenizer(source, tokenizer)
    check_vocab_size(source, tokenizer.vocab_size)


def check_vocab_size(source: Source, vocab_size: int) -> None:
    """A vocabulary known only by its size (--vocab-size, a checkpoint's) must hold every id of the tokenizer that
    wrote the source, as its sidecar tells; a smaller one fails in the embedding lookup, mid-run."""
    written = (source.tokenizer or {}).get("vocab_size")
    if written and written > vocab_size:
        raise MegadocError(f"{source.prefix}: written by a tokenizer of {written:,} ids, more than the vocabulary of "
                           f"{vocab_size:,} here (--vocab-size?); give the tokenizer the data was written with "
                           "(--tokenizer-model)")
