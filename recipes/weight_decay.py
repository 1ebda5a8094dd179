"""The paper's weight-decay mask, for both trainers (Megatron-Core's loop and the Megatron-Bridge recipes).

The paper trains with levanter, whose default mask (`OptimizerConfig.build_weight_decay_mask`, its "reasonable
default") decays every Linear weight, the untied output layer included, and nothing else: no embedding, no norm, no
bias. Megatron-Core's default skips only biases and 1-D parameters, so it would decay the input embedding (98.5M of
the 300M model's parameters) at the paper's wd 0.4-1.6, and the paper's tuned weight decays would not carry over.

Megatron-Core takes the mask as parameter-group overrides (`get_megatron_optimizer(config_overrides=...)`): the
masked parameters get `wd_mult` 0, and whoever sets a group's weight decay multiplies by it (Megatron's scheduler
under Bridge, `megadoc.training.loop.set_schedule` on the CPU loop).
"""

from dataclasses import dataclass
from fnmatch import fnmatch

NO_DECAY_NAMES = ("*.bias", "*embedding.word_embeddings.weight", "*embedding.position_embeddings.weight")
"""Megatron-Core's names for what levanter leaves undecayed besides norms (1-D, caught by shape): biases and the
input (word, and learned position) embeddings. The output layer (`output_layer.weight`) is a Linear: decayed."""


def decays(name: str, param) -> bool:
    """Whether levanter's mask decays this parameter: a matrix that is not an embedding (norm weights are 1-D)."""
    return param.dim() > 1 and not any(fnmatch(name, pattern) for pattern in NO_DECAY_NAMES)


def weight_decay_overrides() -> dict:
    """The mask as Megatron-Core parameter-group overrides: wd_mult 0 for every parameter `decays` refuses."""
    from megatron.core.optimizer import ParamKey, ParamWithNamePredicate

    undecayed = ParamWithNamePredicate(name="levanter_no_weight_decay", fn=lambda param, name: not decays(name, param))
    return {ParamKey(with_name_predicate=undecayed): {"wd_mult": 0.0}}


@dataclass
class LevanterWeightDecayMask:
    """`cfg.optimizer_config_override_provider` of the Bridge recipes: Bridge's `setup_optimizer` asks it for the
    overrides (it calls only `build_config_overrides`), and its scheduler applies wd_mult every step."""

    def build_config_overrides(self, context) -> dict:
        return weight_decay_overrides()
