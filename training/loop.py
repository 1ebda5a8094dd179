"""The training loop of `megadoc train`, top to bottom like Megatron-Core's simple train loop.

model (runtime) -> optimizer (Megatron AdamW, plain) -> data (any Dataset of Megatron GPT samples, read in order
from consumed_samples) -> steps (get_forward_backward_func, cosine lr with warmup, JSONL loss log) -> checkpoints
(resume bit for bit). Runs on a GPU too (bf16 compute as Megatron-LM does it: the model in Float16Module, fp32 main
params in the optimizer); without one, the device shim is on and all is fp32. Under `torchrun` the world is split
into TP x PP x DP over gloo (CPU) or nccl (GPU).
"""

import json
import math
import time
from functools import partial
from pathlib import Path

import torch

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.recipes.models import OptimizerRecipe, TrainingRecipe
from megadoc.training.checkpoints import (RunConfig, TrainState, has_checkpoint, load_checkpoint, save_checkpoint,
                                          save_run_config)
from megadoc.training.runtime import build_model, start, to_device, wrap_ddp

LOG_NAME = "train_log.jsonl"


def build_optimizer(model, recipe: TrainingRecipe):
    """Megatron's AdamW (plain, not distributed), with the recipe's betas, eps, decay and clipping, and the paper's
    weight-decay mask (levanter's: no decay on embeddings, norms, biases; `recipes.weight_decay`); with bf16 the
    mixed-precision one (fp32 main params and grads, no loss scaling)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megadoc.recipes.weight_decay import weight_decay_overrides

    opt = recipe.optimizer
    config = OptimizerConfig(
        optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps, clip_grad=opt.clip_grad,
        bf16=model.config.bf16, params_dtype=torch.float32, use_distributed_optimizer=False,
    )
    return get_megatron_optimizer(config, [model], config_overrides=weight_decay_overrides())


def set_schedule(optimizer, lr: float, opt: OptimizerRecipe) -> None:
    """This step's learning rate, and each group's weight decay times its wd_mult (0 where the mask says no decay),
    as Megatron's OptimizerParamScheduler sets them under Megatron-LM and Bridge."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = opt.weight_decay * group.get("wd_mult", 1.0)


def learning_rate(step: int, train_iters: int, opt: OptimizerRecipe) -> float:
    """Linear warmup to the peak over the first 1%, then cosine to min_lr at the last step (1-based step)."""
    warmup = opt.warmup_iters(train_iters)
    if step <= warmup:
        return opt.lr * step / warmup
    progress = (step - warmup) / max(1, train_iters - warmup)
    return opt.min_lr + (opt.lr - opt.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class PretrainingSampler:
    """Sequential micro-batches of dataset indices for one data-parallel rank, starting at consumed_samples.

    The dataset is already shuffled, so reading it in order makes a resumed run read exactly the batches the
    uninterrupted run would have (Megatron-LM's MegatronPretrainingSampler), with no RNG involved.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        self.total_samples, self.consumed_samples = total_samples, consumed_samples
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self):
        step = self.micro_batch_size * self.dp_size
        for start in range(self.consumed_samples, self.total_samples - step + 1, step):
            first = start + self.dp_rank * self.micro_batch_size
            yield list(range(first, first + self.micro_batch_size))


def data_iterator(dataset, state: TrainState, total_samples: int, micro_batch_size: int):
    """An iterator of micro-batch dicts (tokens, labels, loss_mask, position_ids) from any map-style Dataset."""
    from megatron.core import parallel_state

    if len(dataset) < total_samples:
        raise MegadocError(f"the dataset has {len(dataset)} samples; training reads {total_samples}")
    sampler = PretrainingSampler(total_samples, state.consumed_samples, micro_batch_size,
                                 parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=0))


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Mean token loss of a micro-batch; the schedule divides the returned loss in place, so log a clone."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask) / mask.sum()
    return loss, {"lm loss": loss.detach().clone()}


def forward_step(data_iterator, model, document_masks: bool = False):
    """As pretrain_gpt's; `document_masks`: the samples' attention masks (blocked cross-document attention) instead
    of the model's causal mask. Position resets come with them; RoPE makes attention scores depend only on relative
    positions, so within a document they change nothing."""
    batch = next(data_iterator)
    tokens, position_ids, labels, loss_mask = (  # as pretrain_gpt; a no-op under the device shim
        batch[key].cuda(non_blocking=True) for key in ("tokens", "position_ids", "labels", "loss_mask"))
    mask = batch["attention_mask"].cuda(non_blocking=True) if document_masks else None
    output = model(tokens, position_ids, mask, labels=labels)
    return output, partial(loss_func, loss_mask)


def train_step(model, optimizer, iterator, recipe: TrainingRecipe, num_microbatches: int, seq_length: int,
               document_masks: bool = False):
    """One optimizer step over a global batch; the mean loss on the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    model.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=partial(forward_step, document_masks=document_masks), data_iterator=iterator,
        model=[model], num_microbatches=num_microbatches,
        seq_length=seq_length, micro_batch_size=recipe.micro_batch_size, forward_only=False)
    update_successful, grad_norm, _ = optimizer.step()
    if not update_successful:
        raise MegadocError("optimizer step failed (non-finite gradients)")
    if not parallel_state.is_pipeline_last_stage():
        return None, grad_norm
    loss = torch.stack([x["lm loss"] for x in losses]).mean()
    torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    return loss.item() / parallel_state.get_data_parallel_world_size(), grad_norm


def keep_log_until(log_path: Path, iteration: int) -> None:
    """Drop log records past the checkpoint being resumed (a run killed after logging, before saving, re-logs
    those steps), so the log of a resumed run is the log of an uninterrupted one."""
    if not log_path.exists():
        return
    lines = [line for line in log_path.read_text().splitlines() if json.loads(line)["iteration"] <= iteration]
    with atomic_write(log_path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))


def train(run: RunConfig, dataset, save: str | None = None, save_interval: int | None = None,
          load: str | None = None, log_path: Path | None = None, exit_interval: int | None = None) -> list[dict]:
    """Train `run.recipe` for `run.train_iters` steps on `dataset` (any map-style Dataset of Megatron GPT samples);
    returns the logged records."""
    from megatron.core import parallel_state

    recipe, train_iters = run.recipe, run.train_iters
    start(recipe.parallel, run.seed)
    model = wrap_ddp(to_device(build_model(recipe)))
    optimizer = build_optimizer(model, recipe)
    state = TrainState()
    if load and has_checkpoint(load):
        state = load_checkpoint(load, model, optimizer)
    elif load and torch.distributed.get_rank() == 0:
        print(f"megadoc train: no checkpoint in {load} yet, training from scratch", flush=True)
    if log_path is not None and torch.distributed.get_rank() == 0:
        keep_log_until(log_path, state.iteration)
    if save:
        save_run_config(save, run)

    dp_size = parallel_state.get_data_parallel_world_size()
    if recipe.global_batch_size % (recipe.micro_batch_size * dp_size):
        raise MegadocError(f"global batch {recipe.global_batch_size} is not a multiple of micro batch x DP")
    num_microbatches = recipe.global_batch_size // (recipe.micro_batch_size * dp_size)
    iterator = data_iterator(dataset, state, train_iters * recipe.global_batch_size, recipe.micro_batch_size)

    writes_log = (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
                  and parallel_state.get_data_parallel_rank() == 0)
    records = []
    model.train()
    while state.iteration < min(train_iters, exit_interval or train_iters):
        lr = learning_rate(state.iteration + 1, train_iters, recipe.optimizer)
        set_schedule(optimizer, lr, recipe.optimizer)
        step_start = time.perf_counter()
        loss, grad_norm = train_step(model, optimizer, iterator, recipe, num_microbatches, recipe.model.seq_length,
                                     run.block_cross_document_attention)
        state.iteration += 1
        state.consumed_samples += recipe.global_batch_size
        if writes_log:
            record = {"iteration": state.iteration, "consumed_samples": state.consumed_samples, "loss": loss,
                      "lr": lr, "grad_norm": float(grad_norm), "step_time_s": round(time.perf_counter() - step_start, 4)}
            records.append(record)
            print(json.dumps(record), flush=True)
            if log_path is not None:
                with open(log_path, "a") as log:
                    log.write(json.dumps(record) + "\n")
        if save and (state.iteration == train_iters or (save_interval and state.iteration % save_interval == 0)):
            save_checkpoint(save, model, optimizer, state)
    return records
