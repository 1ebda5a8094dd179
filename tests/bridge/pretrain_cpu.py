"""Megatron-Bridge's own `pretrain` on a CPU, for a megadoc recipe (run by test_bridge_recipes.py under torchrun).

    torchrun --nproc-per-node N pretrain_cpu.py --out DIR --tokenizer-model HF --real-path P --synthetic-path S
             --real-epochs E --synthetic-fraction R --base-steps B [key=value Bridge overrides ...]

TEST-ONLY CPU adaptations, all here: the Transformer Engine / NVRx stand-ins (tests/bridge_stubs), megadoc's device
shim (torch.cuda -> CPU), Bridge's `initialize_megatron(allow_no_cuda=True)`, no `compile_helpers` (the wheel
ships the compiled dataset helpers but not their Makefile), the RNG tracker seeded as on a GPU, no-op CUDA streams, the
local layer spec, fp32, gloo, no fused kernels.
Everything else is the product: the recipe factory, `apply_overrides`, the megadoc DatasetProvider, Bridge's
`pretrain` and `gpt_step.forward_step`.

Writes DIR/steps-rank<R>.jsonl (consumed samples, loss, lr, grad norm, each parameter group's weight decay) on ranks
that compute the loss, and DIR/datasets.json (per-stream sample counts the provider built) on rank 0.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for bridge_stubs

import bridge_stubs  # noqa: E402

bridge_stubs.activate()

CPU_OVERRIDES = [
    "dist.distributed_backend=gloo",
    "mixed_precision=null", "model.bf16=false", "optimizer.bf16=false",
    "optimizer.use_distributed_optimizer=false", "ddp.use_distributed_optimizer=false",
    "ddp.overlap_grad_reduce=false", "ddp.overlap_param_gather=false",
    "model.gradient_accumulation_fusion=false",
    "model.masked_softmax_fusion=false", "model.bias_activation_fusion=false", "model.bias_dropout_fusion=false",
    "model.apply_rope_fusion=false", "model.cross_entropy_loss_fusion=false", "model.persist_layer_norm=false",
    "checkpoint.save=null", "checkpoint.load=null", "logger.tensorboard_dir=null", "logger.log_interval=1",
    "dataset.num_workers=0", "dataset.pin_memory=false", "dataset.persistent_workers=false",
]


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokenizer-model", required=True)
    parser.add_argument("--real-path", required=True)
    parser.add_argument("--synthetic-path", nargs="*", default=[])
    parser.add_argument("--real-epochs", type=float, required=True)
    parser.add_argument("--synthetic-fraction", type=float, required=True)
    parser.add_argument("--base-steps", type=int, required=True)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("overrides", nargs="*", help="Bridge key=value overrides")
    return parser.parse_args()


def record_dataset_counts(out: Path) -> None:
    """Observe what the megadoc provider builds: per-stream sample counts of the training blend."""
    import numpy
    import torch.distributed as dist

    import megadoc_data.datasets as datasets

    build = datasets.build_datasets

    def recording(config, tokenizer, train_samples=None, valid_samples=None, **kwargs):
        train, valid, test = build(config, tokenizer, train_samples=train_samples, valid_samples=valid_samples,
                                   **kwargs)
        if dist.get_rank() == 0:
            counts = numpy.bincount(train.dataset_index, minlength=len(train.datasets)).tolist()
            (out / "datasets.json").write_text(json.dumps(
                {"train_samples": train_samples, "len": len(train), "stream_counts": counts,
                 "tokenizer_vocab_size": tokenizer.vocab_size}))
        return train, valid, test

    datasets.build_datasets = recording


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


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from megadoc.training import device_shim

    device_shim.activate()

    import megatron.bridge.training.initialize as bridge_initialize
    import megatron.bridge.training.setup as bridge_setup
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training.callbacks import Callback
    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain

    from megadoc.recipes.bridge import apply_overrides, megadoc_tiny_pretrain_config

    bridge_setup.initialize_megatron = functools.partial(bridge_setup.initialize_megatron, allow_no_cuda=True)
    bridge_initialize.compile_helpers = lambda: None
    bridge_initialize._set_random_seed = seed_rng_tracker_too(bridge_initialize._set_random_seed)
    null_cuda_streams()
    record_dataset_counts(out)

    class StepLog(Callback):
        def on_train_step_end(self, context):
            import torch.distributed as dist

            if not context.loss_dict:
                return
            record = {"consumed_samples": context.state.train_state.consumed_train_samples,
                      "loss": float(context.loss_dict["lm loss"]),
                      "lr": context.optimizer.param_groups[0]["lr"],
                      "grad_norm": None if context.grad_norm is None else float(context.grad_norm),
                      "weight_decay_by_wd_mult": sorted({(group["wd_mult"], group["weight_decay"])
                                                         for group in context.optimizer.param_groups})}
            with open(out / f"steps-rank{dist.get_rank()}.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    cfg = megadoc_tiny_pretrain_config(
        tokenizer_model=args.tokenizer_model, real_path=args.real_path, synthetic_paths=args.synthetic_path,
        real_epochs=args.real_epochs, synthetic_fraction=args.synthetic_fraction, base_steps=args.base_steps,
        global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size, lr=args.lr,
        output_dir=str(out))
    cfg = apply_overrides(cfg, CPU_OVERRIDES + args.overrides)
    cfg.model.transformer_layer_spec = local_layer_spec
    pretrain(cfg, forward_step, callbacks=[StepLog()])


if __name__ == "__main__":
    main()
