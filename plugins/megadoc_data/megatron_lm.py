"""Megatron-LM entry point: the exact megadoc blend inside `pretrain_gpt.py`-style scripts.

    from megadoc_data.megatron_lm import megatron_lm_extra_args, train_valid_test_datasets_provider
    pretrain(train_valid_test_datasets_provider, model_provider, ModelType.encoder_or_decoder, forward_step,
             extra_args_provider=megatron_lm_extra_args)

The blend's flags come prefixed (`--megadoc-real-path ...`), so they never clash with Megatron-LM's own; the
sequence length, global batch, seed and index cache are Megatron-LM's own flags. --train-iters must be the plan's
(`megadoc blend --emit megatron-lm` prints it).
"""

from megadoc_data.config import add_blend_arguments, blend_from_args
from megadoc_data.datasets import build_datasets

PREFIX = "megadoc-"


def megatron_lm_extra_args(parser):
    """Megatron-LM `extra_args_provider`: the blend flags, prefixed."""
    add_blend_arguments(parser, prefix=PREFIX)
    return parser


def train_valid_test_datasets_provider(train_val_test_num_samples, vp_stage=None):
    """For `pretrain(train_valid_test_datasets_provider, ...)`: the exact blend on Megatron-LM's tokenizer."""
    from megatron.training import get_args, get_tokenizer

    return build_datasets(blend_from_args(get_args(), prefix=PREFIX), get_tokenizer(),
                          train_samples=train_val_test_num_samples[0],
                          valid_samples=train_val_test_num_samples[1] or None)


train_valid_test_datasets_provider.is_distributed = True
