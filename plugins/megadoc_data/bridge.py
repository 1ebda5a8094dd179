"""Megatron-Bridge entry point: a `DatasetProvider` whose `build_datasets(context)` builds the exact blend.

Importable without Megatron-Bridge: the base class is then a plain dataclass stand-in, so configs and tests that
only need the arithmetic do not pay for (or require) the Bridge install.
"""

from dataclasses import dataclass

from megadoc_data.config import MegadocBlendConfig

try:
    from megatron.bridge.data.base import DatasetProvider
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix
except ImportError:  # Megatron-Bridge not installed

    @dataclass
    class DatasetProvider:
        """Stand-in for megatron.bridge.data.base.DatasetProvider."""

else:
    # ConfigContainer.from_yaml instantiates only allowlisted `_target_`s: allow this provider and its config.
    register_allowed_target_prefix("megadoc_data.bridge")
    register_allowed_target_prefix("megadoc_data.config")


@dataclass
class MegadocDatasetProvider(DatasetProvider):
    """cfg.dataset for a Megatron-Bridge recipe: the blend, built with exact counts on the trainer's tokenizer."""

    blend: MegadocBlendConfig = None
    """The plan to build; train_iters must be the plan's (megadoc blend prints it)."""

    @property
    def seq_length(self) -> int:
        return self.blend.seq_length

    @property
    def skip_getting_attention_mask_from_dataset(self) -> bool:
        """Bridge's get_batch hands the model the samples' attention masks only when this is False."""
        return not self.blend.block_cross_document_attention

    @property
    def create_attention_mask(self) -> bool:
        """Whether samples carry attention masks (Bridge broadcasts them to later pipeline stages)."""
        return self.blend.block_cross_document_attention

    def build_datasets(self, context):
        from megadoc_data.datasets import build_datasets

        return build_datasets(self.blend, context.tokenizer, train_samples=context.train_samples,
                              valid_samples=context.valid_samples or None)
