"""Megatron-Core datasets for a megadoc blend, with exact sample counts.

Megatron-Core's BlendedMegatronDatasetBuilder asks each dataset for ceil(weight * size) * 1.005 samples and blends
by greedy error, so per-stream counts drift from the plan. Here every stream is a GPTDataset asked for exactly its
planned count, and the BlendedDataset is built with integer weights and size=None, Megatron-Core's exhaustive
blending: stream i contributes exactly counts[i] samples, interleaved in proportion. The real stream is one capped
pass of base_steps * global_batch_size samples (the paper's 777-batch cap), replayed in a fresh seeded order each
epoch, so every real sample is seen exactly E times. Indices are cached under path_to_cache; rank 0 builds first and
the others read its cache (Megatron-Core's build_generic_dataset), so several ranks can build at once.
"""

import functools
from dataclasses import dataclass
from typing import Callable

import numpy

from megadoc.errors import MegadocError
from megadoc_data.config import MegadocBlendConfig
from megadoc_data.plan import Plan, make_plan, read_sources
from megadoc_data.sources import check_vocab, check_vocab_size, read_source

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split


class MegadocGPTDataset(GPTDataset):
    """A GPTDataset of exactly `num_samples` samples; with `pass_samples`, one pass of that many samples replayed
    (re-shuffled per epoch) until `num_samples` are drawn."""

    def __init__(self, indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config,
                 pass_samples=None):
        super().__init__(indexed_dataset, dataset_path, indexed_indices, pass_samples or num_samples, index_split,
                         config)
        self.total = num_samples if num_samples is not None else super().__len__()
        self.order = _epoch_order(pass_samples, self.total, config.random_seed) if pass_samples else None
        self.unique_identifiers["megadoc"] = {"num_samples": num_samples, "pass_samples": pass_samples}
        if self.order is None and super().__len__() < self.total:
            raise MegadocError(f"{dataset_path}: built {super().__len__()} samples, fewer than {self.total}")

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, idx):
        if self.order is not None and idx is not None:
            idx = int(self.order[idx])
        return super().__getitem__(idx)


def _epoch_order(pass_samples: int, total: int, seed: int) -> numpy.ndarray:
    """Concatenated per-epoch permutations of range(pass_samples), cut at `total`: each sample E times."""
    rng = numpy.random.default_rng([seed, pass_samples])
    epochs = -(-total // pass_samples)
    return numpy.concatenate([rng.permutation(pass_samples) for _ in range(epochs)])[:total]


@dataclass(frozen=True)
class VocabOnlyTokenizer:
    """What GPTDataset needs from a tokenizer when only the vocabulary size is known (evaluation: the
    checkpoint's vocabulary)."""

    vocab_size: int
    eod: int = 0

    @property
    def unique_identifiers(self) -> dict:
        return {"class": type(self).__name__, "vocab_size": self.vocab_size}


def document_masking(block_cross_document_attention: bool) -> dict:
    """GPTDatasetConfig's attention fields: Megatron's EOD-based attention masks and position resets when documents
    may not attend to each other (the samples' attention_mask is then the one to use), none otherwise. EOD tokens
    keep their loss either way, as in the paper's runs."""
    block = block_cross_document_attention
    return dict(reset_position_ids=block, reset_attention_mask=block, eod_mask_loss=False)


def single_prefix_dataset(prefix: str, tokenizer, seq_length: int, seed: int, num_samples: int | None = None,
                          path_to_cache: str = "", block_cross_document_attention: bool = False):
    """One .bin/.idx prefix packed as training packs it (documents shuffled and concatenated with their EODs, no EOD
    masking, cross-document attention on unless blocked): `num_samples` samples, or None for one epoch (every window
    once). path_to_cache "" builds the indices in memory, never beside the data."""
    source = read_source(prefix)  # a missing or inconsistent pair fails in one line, before Megatron-Core reads it
    if hasattr(tokenizer, "fingerprint"):
        check_vocab(source, tokenizer)
    else:  # only the vocabulary's size is known (--vocab-size, eval's checkpoint): any dtype Megatron-LM writes
        check_vocab_size(source, tokenizer.vocab_size)
    if source.tokens < seq_length + 1:
        raise MegadocError(f"{prefix}: {source.tokens} tokens, fewer than one window of seq_length + 1 = "
                           f"{seq_length + 1}")
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=([prefix], None), split="100,0,0",
        path_to_cache=path_to_cache, tokenizer=tokenizer, create_attention_mask=block_cross_document_attention,
        **document_masking(block_cross_document_attention))
    indexed = IndexedDataset(prefix, multimodal=False)
    return GPTDataset(indexed, prefix, numpy.arange(len(indexed), dtype=numpy.int32), num_samples, Split.train,
                      config)


def gpt_config(config: MegadocBlendConfig, tokenizer, **overrides) -> GPTDatasetConfig:
    """The Megatron-Core config every source is built with (no surplus: counts are exact)."""
    fields = dict(random_seed=config.seed, sequence_length=config.seq_length,
                  blend_per_split=[(config.real_prefixes + config.synthetic_prefixes, None),
                                   ((config.valid_prefixes + config.long_valid_prefixes) or None, None)
                                   if config.valid_prefixes or config.long_valid_prefixes else None, None],
                  path_to_cache=config.path_to_cache, tokenizer=tokenizer, mid_level_dataset_surplus=0.0,
                  **document_masking(config.block_cross_document_attention))
    return GPTDatasetConfig(**{**fields, **overrides})


def _check_process_group(config: MegadocBlendConfig) -> None:
    """Megatron-Core reads the rank when it caches indices: the caller's world must exist (a trainer's does)."""
    import torch.distributed as dist

    if config.path_to_cache and not dist.is_initialized():
        raise MegadocError("path_to_cache: Megatron-Core caches indices per rank; initialise torch.distributed "
                           "first (a world of one will do) or leave path_to_cache unset")


def _source(prefix: str, num_samples, split: Split, gpt: GPTDatasetConfig, built_on_rank: Callable,
            pass_samples=None):
    indexed = IndexedDataset(prefix, multimodal=False, mmap=gpt.mmap_bin_files)
    cls = functools.partial(MegadocGPTDataset, pass_samples=pass_samples)
    return BlendedMegatronDatasetBuilder.build_generic_dataset(
        cls, built_on_rank, True, indexed, prefix, numpy.arange(len(indexed), dtype=numpy.int32), num_samples,
        split, gpt)


def check_plan(config: MegadocBlendConfig, tokenizer, train_samples: int | None = None) -> Plan:
    """Every bad-plan check, before anything is built."""
    real, synthetic = read_sources(config)
    for prefix in config.real_prefixes + config.synthetic_prefixes + config.valid_prefixes + \
            config.long_valid_prefixes:
        check_vocab(read_source(prefix), tokenizer)
    plan = make_plan(config, [r.samples_per_pass(config.seq_length) for r in real],
                     [s.samples_per_pass(config.seq_length) for s in synthetic])
    if train_samples is not None and train_samples != plan.total_sequences:
        raise MegadocError(f"the trainer asks for {train_samples} training samples; the plan has "
                           f"{plan.total_sequences}: set --train-iters {plan.train_iters}")
    return plan


def build_datasets(config: MegadocBlendConfig, tokenizer, train_samples: int | None = None,
                   valid_samples: int | None = None, built_on_rank: Callable = lambda: True):
    """(train BlendedDataset, validation dataset or list of them, None); the plain-Python entry point."""
    plan = check_plan(config, tokenizer, train_samples)
    _check_process_group(config)
    gpt = gpt_config(config, tokenizer)
    streams = [(p.prefix, p.sequences, p.pass_sequences) for p in plan.real_parts if p.sequences]
    streams += [(s.prefix, s.sequences, None) for s in plan.synthetic]
    datasets = [_source(p, n, Split.train, gpt, built_on_rank, pass_) for p, n, pass_ in streams]
    train = BlendedMegatronDatasetBuilder.build_generic_dataset(
        BlendedDataset, built_on_rank, True, datasets, [n for _, n, _ in streams], None, gpt)
    valid = [_source(p, valid_samples, Split.valid, gpt, built_on_rank)
             for p in config.valid_prefixes + config.long_valid_prefixes]
    return train, (valid[0] if len(valid) == 1 else valid or None), None
