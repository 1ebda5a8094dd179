"""TEST-ONLY stand-ins for the two GPU-only packages Megatron-Bridge 0.6.2 imports unconditionally.

Megatron-Bridge imports `transformer_engine.pytorch` (its LoRA layers, reached from `import megatron.bridge`) and
`nvidia_resiliency_ext.inprocess` (`training/pretrain.py`) at module level. Neither installs nor runs on a CPU-only
machine, and the CPU path never calls them (local layer spec, no fault tolerance). These stand-ins exist only so
that the tests can import the real Bridge here; they are never installed and the product never imports them.

`activate()` first imports every Megatron-Core module that probes for Transformer Engine, so each records "TE
absent" and keeps its non-TE code path; only then does the stand-in become importable for Bridge.
"""

import importlib
import sys
from pathlib import Path

# Megatron-Core modules that decide HAVE_TE at import time and are on the GPT training path.
_TE_PROBES = (
    "megatron.core.utils",
    "megatron.core.extensions.transformer_engine",
    "megatron.core.fp8_utils",
    "megatron.core.tensor_parallel",
    "megatron.core.transformer.transformer_config",
    "megatron.core.transformer.transformer_layer",
    "megatron.core.transformer.attention",
    "megatron.core.transformer.mlp",
    "megatron.core.transformer.cuda_graphs",
    "megatron.core.transformer.moe.experts",
    "megatron.core.transformer.moe.shared_experts",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.optimizer",
    "megatron.core.pipeline_parallel.utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.models.hybrid.hybrid_layer_specs",
    "megatron.training",
)


def activate() -> None:
    """Make `transformer_engine` and `nvidia_resiliency_ext` importable, after Megatron-Core has looked for them."""
    if "transformer_engine" in sys.modules:
        return
    stubs = str(Path(__file__).resolve().parent)
    # A spawned child (Megatron's checkpoint writer) inherits the parent's sys.path, stubs included: hide them
    # until the probes have run.
    sys.path[:] = [entry for entry in sys.path if entry != stubs]
    for name in _TE_PROBES:
        importlib.import_module(name)
    sys.path.insert(0, stubs)
