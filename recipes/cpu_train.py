"""`megadoc train`: train a recipe with Megatron-Core, top to bottom like its simple train loop (CPU path).

config -> distributed + model (GPTModel, local layer spec) -> data (any Dataset of Megatron GPT samples) ->
optimizer (Megatron AdamW, plain) -> loop (get_forward_backward_func, cosine lr with warmup, JSONL loss log)
-> dist_checkpointing saves that resume bit for bit. Runs on a GPU too (bf16 compute as Megatron-LM does it: the
model in Float16Module, fp32 main params in the optimizer); without one, the device shim is on and all is fp32.
Under `torchrun` the world is split into TP x PP x DP over gloo (CPU) or nccl (GPU).
"""

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from megadoc.atomic import atomic_write
from megadoc.errors import MegadocError
from megadoc_data.plan import add_stream_arguments
from megadoc_recipes.models import MODELS, ModelRecipe, OptimizerRecipe, ParallelRecipe, TrainingRecipe

LOG_NAME = "train_log.jsonl"
TRACKER_NAME = "latest_checkpointed_iteration.txt"
RECIPE_NAME = "megadoc_recipe.json"


def add_arguments(parser) -> None:
    parser.add_argument("--recipe", default="tiny", choices=sorted(MODELS), help="model size")
    data = parser.add_argument_group("data: one prefix (--data-path), or a megadoc blend (--real-path ...)")
    data.add_argument("--data-path", help="Megatron .bin/.idx prefix of the training tokens, read as they are")
    add_stream_arguments(data, real_required=False)
    registry = parser.add_argument_group("runs registry: record this run when it starts (megadoc eval adds scores)")
    registry.add_argument("--registry", help="runs registry CSV")
    # --run-name first: under torchrun a bare --run is refused as an abbreviation of torchrun's own --run-path.
    registry.add_argument("--run-name", "--run", dest="run", help="run name (the registry key)")
    registry.add_argument("--method", default=None, help="synthetic stream kind (default: real, or 'synthetic')")
    registry.add_argument("--generations", type=int, default=0, help="G: synthetic generations per document")
    parser.add_argument("--tokenizer-model", help="tokenizer the data was written with (sets the vocabulary)")
    parser.add_argument("--vocab-size", type=int, help="vocabulary size when no --tokenizer-model is given")
    parser.add_argument("--train-iters", type=int, help="optimizer steps (default with a blend: the plan's)")
    parser.add_argument("--global-batch-size", type=int, default=64)
    parser.add_argument("--micro-batch-size", type=int, default=1)
    parser.add_argument("--seq-length", type=int, help="context length (default: the recipe's)")
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.8)
    parser.add_argument("--clip-grad", type=float, default=1.0)
    parser.add_argument("--tensor-model-parallel-size", type=int, default=1)
    parser.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--save", help="checkpoint directory (also where the JSONL loss log goes)")
    parser.add_argument("--save-interval", type=int, help="save every N iterations (and at the end)")
    parser.add_argument("--load", help="checkpoint directory to resume from; one holding no checkpoint yet starts "
                        "from scratch, as Megatron-LM does (so --load and --save may name the same folder)")
    parser.add_argument("--exit-interval", type=int, help="stop after this iteration (the schedule still spans "
                        "--train-iters), e.g. to test resuming")
    parser.add_argument("--log-dir", help="where train_log.jsonl goes (default: --save, else the current dir)")
    parser.set_defaults(func=run)


@dataclass
class TrainState:
    """What a checkpoint restores besides weights, optimizer and RNG."""

    iteration: int = 0
    """Optimizer steps taken."""
    consumed_samples: int = 0
    """Training sequences read so far; the sampler restarts here."""


# ---------------------------------------------------------------------------------------------------- setup


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

    from megadoc_recipes.models import gpt_model_kwargs, transformer_config

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


def build_optimizer(model, recipe: TrainingRecipe):
    """Megatron's AdamW (plain, not distributed), with the recipe's betas, eps, decay and clipping; with bf16 the
    mixed-precision one (fp32 main params and grads, no loss scaling)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    opt = recipe.optimizer
    config = OptimizerConfig(
        optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps, clip_grad=opt.clip_grad,
        bf16=model.config.bf16, params_dtype=torch.float32, use_distributed_optimizer=False,
    )
    return get_megatron_optimizer(config, [model])


def learning_rate(step: int, train_iters: int, opt: OptimizerRecipe) -> float:
    """Linear warmup to the peak over the first 1%, then cosine to min_lr at the last step (1-based step)."""
    warmup = opt.warmup_iters(train_iters)
    if step <= warmup:
        return opt.lr * step / warmup
    progress = (step - warmup) / max(1, train_iters - warmup)
    return opt.min_lr + (opt.lr - opt.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class VocabOnlyTokenizer:
    """What GPTDataset needs from a tokenizer when only the vocabulary size is known."""

    vocab_size: int
    eod: int = 0

    @property
    def unique_identifiers(self) -> dict:
        return {"class": type(self).__name__, "vocab_size": self.vocab_size}


def build_gpt_dataset(data_path: str, tokenizer, seq_length: int, num_samples: int, seed: int):
    """One .bin/.idx prefix -> a GPTDataset of exactly the samples training reads (cross-document attention on)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    if not Path(data_path + ".idx").exists() or not Path(data_path + ".bin").exists():
        raise MegadocError(f"{data_path}: no .bin/.idx pair with this prefix")
    config = GPTDatasetConfig(
        random_seed=seed, sequence_length=seq_length, blend=([data_path], None), split="100,0,0",
        tokenizer=tokenizer, reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, config).build()
    return train


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


# ---------------------------------------------------------------------------------------------------- step


def loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Mean token loss of a micro-batch; the schedule divides the returned loss in place, so log a clone."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask) / mask.sum()
    return loss, {"lm loss": loss.detach().clone()}


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    tokens, position_ids, labels, loss_mask = (  # as pretrain_gpt; a no-op under the device shim
        batch[key].cuda(non_blocking=True) for key in ("tokens", "position_ids", "labels", "loss_mask"))
    output = model(tokens, position_ids, None, labels=labels)
    return output, partial(loss_func, loss_mask)


def train_step(model, optimizer, iterator, recipe: TrainingRecipe, num_microbatches: int, seq_length: int):
    """One optimizer step over a global batch; the mean loss on the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel.schedules import get_forward_backward_func

    model.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterator, model=[model], num_microbatches=num_microbatches,
        seq_length=seq_length, micro_batch_size=recipe.micro_batch_size, forward_only=False)
    update_successful, grad_norm, _ = optimizer.step()
    if not update_successful:
        raise MegadocError("optimizer step failed (non-finite gradients)")
    if not parallel_state.is_pipeline_last_stage():
        return None, grad_norm
    loss = torch.stack([x["lm loss"] for x in losses]).mean()
    torch.distributed.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    return loss.item() / parallel_state.get_data_parallel_world_size(), grad_norm


# ---------------------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "tracker": get_cuda_rng_tracker().get_states()}


def _set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def _sharded_state(model, optimizer, state: TrainState, is_loading: bool) -> dict:
    """Model + optimizer shards, this rank's RNG state as a ShardedObject, and the train state (common)."""
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    model_state = model.module.sharded_state_dict()  # the bare GPTModel's keys (Float16Module passes them through)
    rng = ShardedObject(
        "rng_state", _rng_state(),
        (parallel_state.get_pipeline_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_world_size(),
         parallel_state.get_data_parallel_world_size()),
        (parallel_state.get_pipeline_model_parallel_rank(), parallel_state.get_tensor_model_parallel_rank(),
         parallel_state.get_data_parallel_rank()),
        replica_id=0)
    return {"model": model_state, "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading),
            "rng_state": rng, "iteration": state.iteration, "consumed_samples": state.consumed_samples}


def save_checkpoint(save_dir: str, model, optimizer, state: TrainState) -> None:
    """<save>/iter_NNNNNNN in the torch_dist format, then the tracker file naming it."""
    from megatron.core import dist_checkpointing

    path = Path(save_dir) / f"iter_{state.iteration:07d}"
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer, state, is_loading=False), str(path))
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        (Path(save_dir) / TRACKER_NAME).write_text(f"{state.iteration}\n")


def has_checkpoint(load_dir: str) -> bool:
    return (Path(load_dir) / TRACKER_NAME).exists()


def keep_log_until(log_path: Path, iteration: int) -> None:
    """Drop log records past the checkpoint being resumed (a run killed after logging, before saving, re-logs
    those steps), so the log of a resumed run is the log of an uninterrupted one."""
    if not log_path.exists():
        return
    lines = [line for line in log_path.read_text().splitlines() if json.loads(line)["iteration"] <= iteration]
    with atomic_write(log_path, "w") as handle:
        handle.write("".join(line + "\n" for line in lines))


def checkpoint_path(load_dir: str) -> tuple[int, Path]:
    """(iteration, folder) of the latest checkpoint under load_dir, as its tracker file names it."""
    tracker = Path(load_dir) / TRACKER_NAME
    if not tracker.is_file():
        raise MegadocError(f"{load_dir}: no {TRACKER_NAME} (not a megadoc train checkpoint folder)")
    try:
        iteration = int(tracker.read_text())
    except ValueError:
        raise MegadocError(f"{tracker}: not an iteration number") from None
    path = Path(load_dir) / f"iter_{iteration:07d}"
    if not path.is_dir():
        raise MegadocError(f"{path}: missing (named by {tracker})")
    return iteration, path


def load_checkpoint(load_dir: str, model, optimizer) -> TrainState:
    """Restore the latest checkpoint under load_dir into model and optimizer; returns the train state."""
    from megatron.core import dist_checkpointing

    _, path = checkpoint_path(load_dir)
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, TrainState(), is_loading=True), str(path))
    model.module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    _set_rng_state(loaded["rng_state"])
    return TrainState(iteration=loaded["iteration"], consumed_samples=loaded["consumed_samples"])


def save_recipe(save_dir: str, recipe: TrainingRecipe) -> None:
    """<save>/megadoc_recipe.json: the model shape, vocabulary and layout, so `megadoc eval` needs only --load.
    Written before the first checkpoint, so every checkpoint folder has it."""
    if torch.distributed.get_rank() == 0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(save_dir) / RECIPE_NAME, "w") as handle:
            json.dump(asdict(recipe), handle, indent=2)


def load_recipe(checkpoint_dir: str) -> TrainingRecipe:
    """The TrainingRecipe `megadoc train` saved beside its checkpoints."""
    path = Path(checkpoint_dir) / RECIPE_NAME
    try:
        data = json.loads(path.read_text())
        return TrainingRecipe(**{**data, "model": ModelRecipe(**data["model"]),
                                 "optimizer": OptimizerRecipe(**data["optimizer"]),
                                 "parallel": ParallelRecipe(**data["parallel"])})
    except FileNotFoundError:
        raise MegadocError(f"{path}: missing (megadoc train writes it with each checkpoint)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: not a megadoc recipe ({error})") from None


# ---------------------------------------------------------------------------------------------------- main


def recipe_from_args(args) -> tuple[TrainingRecipe, object]:
    """The recipe the flags describe, and the tokenizer (or vocabulary) the data was written with."""
    if args.tokenizer_model:
        from megadoc.tokenizer import TokenizerSpec, build_tokenizer

        tokenizer = build_tokenizer(TokenizerSpec(args.tokenizer_model))
    elif args.vocab_size:
        tokenizer = VocabOnlyTokenizer(args.vocab_size)
    else:
        raise MegadocError("give --tokenizer-model or --vocab-size")
    model = MODELS[args.recipe]
    if args.seq_length:
        model = replace(model, seq_length=args.seq_length)
    recipe = TrainingRecipe(
        model=model,
        optimizer=OptimizerRecipe(lr=args.lr, weight_decay=args.weight_decay, clip_grad=args.clip_grad),
        parallel=ParallelRecipe(args.tensor_model_parallel_size, args.pipeline_model_parallel_size),
        global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size,
        vocab_size=tokenizer.vocab_size, tokenizer_model=args.tokenizer_model)
    return recipe, tokenizer


def train(recipe: TrainingRecipe, dataset, train_iters: int, seed: int, save: str | None = None,
          save_interval: int | None = None, load: str | None = None, log_path: Path | None = None,
          exit_interval: int | None = None) -> list[dict]:
    """Train on `dataset` (any map-style Dataset of Megatron GPT samples); returns the logged records."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megadoc_recipes import device_shim

    device_shim.activate()
    init_distributed(recipe.parallel)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)

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
        save_recipe(save, recipe)

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
        for group in optimizer.param_groups:
            group["lr"] = lr
        start = time.perf_counter()
        loss, grad_norm = train_step(model, optimizer, iterator, recipe, num_microbatches, recipe.model.seq_length)
        state.iteration += 1
        state.consumed_samples += recipe.global_batch_size
        if writes_log:
            record = {"iteration": state.iteration, "consumed_samples": state.consumed_samples, "loss": loss,
                      "lr": lr, "grad_norm": float(grad_norm), "step_time_s": round(time.perf_counter() - start, 4)}
            records.append(record)
            print(json.dumps(record), flush=True)
            if log_path is not None:
                with open(log_path, "a") as log:
                    log.write(json.dumps(record) + "\n")
        if save and (state.iteration == train_iters or (save_interval and state.iteration % save_interval == 0)):
            save_checkpoint(save, model, optimizer, state)
    return records


def blend_from_args(args, seq_length: int):
    """The megadoc blend the --real-path flags describe (None with --data-path)."""
    from megadoc_data.plan import stream_config

    if bool(args.data_path) == bool(args.real_path):
        raise MegadocError("give either --data-path or --real-path (a megadoc blend)")
    if args.data_path:
        return None
    return stream_config(args, seq_length=seq_length, global_batch_size=args.global_batch_size, seed=args.seed)


def build_training_data(args, recipe: TrainingRecipe, tokenizer):
    """(dataset, train_iters, plan or None): one prefix as it is, or the exact blend of a megadoc plan."""
    from megadoc_data.datasets import build_datasets, check_plan

    blend = blend_from_args(args, recipe.model.seq_length)
    if blend is None:
        if not args.train_iters:
            raise MegadocError("--train-iters is required with --data-path")
        samples = args.train_iters * recipe.global_batch_size
        return build_gpt_dataset(args.data_path, tokenizer, recipe.model.seq_length, samples, args.seed), \
            args.train_iters, None
    plan = check_plan(blend, tokenizer)
    if args.train_iters and args.train_iters != plan.train_iters:
        raise MegadocError(f"--train-iters {args.train_iters} differs from the plan's {plan.train_iters}; "
                           "leave it out to train the plan")
    train_set, _, _ = build_datasets(blend, tokenizer, train_samples=plan.total_sequences)
    return train_set, plan.train_iters, plan


def register(args, recipe: TrainingRecipe, plan, save_dir: Path) -> None:
    """Record the run in the registry as it starts, with its plan saved beside the checkpoints."""
    from megadoc_data.sources import read_source
    from megadoc_recipes.registry import RunRecord, record_run

    if not args.registry:
        return
    if not args.run:
        raise MegadocError("--registry needs --run (the run's name)")
    plan_path = ""
    if plan is not None:
        plan_path = str(save_dir / "blend_plan.json")
        with atomic_write(plan_path, "w") as handle:
            json.dump(plan.to_json(), handle, indent=2)
    # D, the x axis of the real-only law: the real tokens one pass reads (the paper's 777 x 64 x 4096).
    real_tokens = (plan.base_steps * plan.global_batch_size * plan.seq_length if plan is not None else
                   read_source(args.data_path).tokens)
    method = args.method or ("synthetic" if args.synthetic_fraction > 0 else "real")
    record_run(args.registry, RunRecord(
        run=args.run, method=method, G=args.generations, real_tokens=real_tokens,
        E=args.real_epochs if plan is not None else 1.0,
        r=args.synthetic_fraction if plan is not None and args.synthetic_fraction > 0 else None,
        lr=recipe.optimizer.lr, wd=recipe.optimizer.weight_decay,
        params=recipe.model.parameter_count(recipe.vocab_size), seq_length=recipe.model.seq_length,
        plan=plan_path, recipe=recipe.model.name))


def run(args) -> int:
    recipe, tokenizer = recipe_from_args(args)
    from megadoc_recipes import device_shim

    device_shim.activate()
    init_distributed(recipe.parallel)
    dataset, train_iters, plan = build_training_data(args, recipe, tokenizer)
    log_dir = Path(args.log_dir or args.save or ".")
    log_dir.mkdir(parents=True, exist_ok=True)
    if torch.distributed.get_rank() == 0:
        register(args, recipe, plan, log_dir)
    train(recipe, dataset, train_iters, args.seed, save=args.save, save_interval=args.save_interval,
          load=args.load, log_path=log_dir / LOG_NAME, exit_interval=args.exit_interval)
    torch.distributed.destroy_process_group()
    return 0
