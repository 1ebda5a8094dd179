"""What training and evaluation both run on: the distributed world, this rank's model, and where it lives.

`megadoc.training.loop` and `megadoc.evaluation.evaluate` build their model here; on a machine without CUDA,
`activate()` turns on the device shim first, so Megatron-Core's CUDA-only calls land on the CPU.
"""

import os
import random

import numpy as np
import torch

from megadoc.errors import MegadocError
from megadoc.recipes.models import ParallelRecipe, TrainingRecipe
from megadoc.training import device_shim


def start(parallel: ParallelRecipe, seed: int) -> None:
    """The process as a rank of the world: device shim where there is no GPU, torch.distributed, Megatron's
    model-parallel groups, and every RNG seeded (Python, numpy, torch, Megatron's tracker)."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    device_shim.activate()
    init_distributed(parallel)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def init_distributed(parallel: ParallelRecipe) -> None:
    """torch.distributed from torchrun's environment (world 1 without it), then Megatron's model-parallel groups."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized() and not _groups_alive():
        parallel_state.destroy_model_parallel()  # groups of an earlier world of this process, since destroyed
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.distributed.init_process_group(
            backend, rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)))
    world = torch.distributed.get_world_size()
    model_parallel = parallel.tensor_model_parallel_size * parallel.pipeline_model_parallel_size
    if world % model_parallel:
        raise MegadocError(f"world size {world} is not a multiple of TP x PP = {model_parallel}")
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size)


def _groups_alive() -> bool:
    """Whether Megatron's model-parallel groups belong to the current torch.distributed world."""
    from megatron.core import parallel_state

    if not torch.distributed.is_initialized():
        return False
    try:
        parallel_state.get_tensor_model_parallel_rank()
        parallel_state.get_pipeline_model_parallel_rank()
    except (RuntimeError, ValueError):
        return False
    return True


def build_model(recipe: TrainingRecipe):
    """This rank's GPTModel stage (local layer spec: plain PyTorch, no Transformer Engine)."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel

    from megadoc.recipes.models import gpt_model_kwargs, transformer_config

    config = transformer_config(recipe, cpu=not torch.cuda.is_available())
    return GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        **gpt_model_kwargs(recipe),
    )


def to_device(model):
    """As Megatron-LM's get_model: onto the current GPU (Megatron-Core builds some layers, RMSNorm, on the CPU), then
    in Float16Module when computing in bf16. Its (sharded) state dicts are the bare GPTModel's, so checkpoints have
    the same keys on CPU and GPU (the weights saved in bf16, the fp32 copy in the optimizer's state)."""
    from megatron.core.transformer.module import Float16Module

    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return Float16Module(model.config, model) if model.config.bf16 else model


def wrap_ddp(model):
    """Megatron's DDP: gradient buffers and the data-parallel all-reduce that finalize_model_grads runs."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed.finalize_model_grads import finalize_model_grads

    ddp = DistributedDataParallel(model.config, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    model.config.finalize_model_grads_func = finalize_model_grads
    return ddp
