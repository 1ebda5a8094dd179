"""TEST-ONLY: Megatron-Bridge's own `pretrain` on a CPU, for `megadoc pretrain` (the product's Bridge launcher).

Bridge 0.6.2 needs CUDA and Transformer Engine; on this machine `activate()` makes the product's unchanged command
(`torchrun ... -m megadoc pretrain tiny ... key=value`) run on the CPU: the Transformer Engine / NVRx stand-ins
(tests/bridge_stubs), megadoc's device shim (torch.cuda -> CPU), Bridge's `initialize_megatron(allow_no_cuda=True)`,
no `compile_helpers` (the wheel ships the compiled dataset helpers but not their Makefile), the RNG tracker seeded
as on a GPU, no-op CUDA streams. `CPU_OVERRIDES` are the config overrides a CPU needs (gloo, fp32, the plain
optimizer, no fused kernels, in-process data loading); the recipe itself picks the local layers when TE is absent.
Everything else is the product: the recipe factory, `apply_overrides`, the megadoc DatasetProvider, the launcher
(run config, registry row, loss log), Bridge's `pretrain` and `gpt_step.forward_step`, Bridge's checkpoints.

cpu_site/sitecustomize.py calls `activate()` (and `record_samples`) in every torchrun worker of a process whose
PYTHONPATH holds cpu_site: how the tests and the Slurm jobs of tests/test_slurm.py launch Bridge here.
"""

import functools
import json
import os
import sys
from pathlib import Path

CPU_OVERRIDES = [
    "dist.distributed_backend=gloo",
    "mixed_precision=null", "model.bf16=false", "optimizer.bf16=false",
    "optimizer.use_distributed_optimizer=false", "ddp.use_distributed_optimizer=false",
    "ddp.overlap_grad_reduce=false", "ddp.overlap_param_gather=false",
    "model.gradient_accumulation_fusion=false",
    "model.masked_softmax_fusion=false", "model.bias_activation_fusion=false", "model.bias_dropout_fusion=false",
    "model.apply_rope_fusion=false", "model.cross_entropy_loss_fusion=false", "model.persist_layer_norm=false",
    "logger.log_interval=1", "train.manual_gc=false",
    "dataset.num_workers=0", "dataset.pin_memory=false", "dataset.persistent_workers=false",
]


def seed_rng_tracker_too(set_random_seed):
    """Bridge seeds Megatron's model-parallel RNG tracker only when torch.cuda.device_count() > 0; on the CPU
    (states kept in the CPU generator by the device shim) seed it the same way: seed + 100 x pipeline rank."""
    import torch.distributed as dist
    from megatron.core import tensor_parallel
    from megatron.core.utils import get_pg_rank

    def seeded(seed_, *args, pg_collection, **kwargs):
        set_random_seed(seed_, *args, pg_collection=pg_collection, **kwargs)
        seed = seed_ + 100 * dist.get_group_rank(pg_collection.pp, dist.get_rank())
        tensor_parallel.model_parallel_cuda_manual_seed(
            seed, tp_rank=get_pg_rank(pg_collection.tp), ep_rank=get_pg_rank(pg_collection.ep),
            etp_rank=get_pg_rank(pg_collection.expt_tp))

    return seeded


def null_cuda_streams() -> None:
    """Megatron's DDP wrapping runs under a side CUDA stream; on the CPU there is only the one order of work."""
    import contextlib

    import torch

    class NullStream:
        def __init__(self, *args, **kwargs):
            pass

        def wait_stream(self, stream):
            pass

        def synchronize(self):
            pass

    torch.cuda.Stream = NullStream
    torch.cuda.current_stream = lambda *args, **kwargs: NullStream()
    torch.cuda.stream = lambda stream=None: contextlib.nullcontext()


def activate() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for bridge_stubs
    import bridge_stubs

    bridge_stubs.activate()
    from megadoc.training import device_shim

    device_shim.activate()
    import megatron.bridge.training.initialize as bridge_initialize
    import megatron.bridge.training.setup as bridge_setup

    bridge_setup.initialize_megatron = functools.partial(bridge_setup.initialize_megatron, allow_no_cuda=True)
    bridge_initialize.compile_helpers = lambda: None
    bridge_initialize._set_random_seed = seed_rng_tracker_too(bridge_initialize._set_random_seed)
    null_cuda_streams()


def record_samples(out: Path) -> None:
    """Observe the training blend either trainer builds through megadoc_data.datasets.build_datasets: per-stream
    sample counts of the built BlendedDataset (`built-rank<R>.json`), and per-stream counts of the samples the
    trainer actually fetched from it (`fetched-rank<R>.json`, rewritten at each fetch)."""
    import numpy

    import megadoc_data.datasets as datasets

    out.mkdir(parents=True, exist_ok=True)
    rank = os.environ.get("RANK", "0")
    build = datasets.build_datasets

    def recording(config, tokenizer, train_samples=None, valid_samples=None, **kwargs):
        train, valid, test = build(config, tokenizer, train_samples=train_samples, valid_samples=valid_samples,
                                   **kwargs)
        counts = numpy.bincount(train.dataset_index, minlength=len(train.datasets)).tolist()
        (out / f"built-rank{rank}.json").write_text(json.dumps(
            {"train_samples": train_samples, "len": len(train), "stream_counts": counts,
             "tokenizer_vocab_size": tokenizer.vocab_size}))
        fetched = [0] * len(train.datasets)

        class Recording(type(train)):
            def __getitem__(self, idx):
                fetched[int(self.dataset_index[idx])] += 1
                (out / f"fetched-rank{rank}.json").write_text(json.dumps(fetched))
                return super().__getitem__(idx)

        train.__class__ = Recording
        return train, valid, test

    datasets.build_datasets = recording
