"""Checkpoints of a run: Megatron-Core torch_dist saves that resume bit for bit, and the run record beside them.

A checkpoint folder (`--save`, also `--load`) holds `iter_NNNNNNN/` saves, the tracker file naming the latest one
(`latest_checkpointed_iteration.txt`, Megatron-LM's name) and `megadoc_recipe.json`, the record of the run: the
TrainingRecipe (model, optimizer, layout, tokenizer) plus the blend and the plan it trained on, written from the
configs actually used, so `megadoc eval` needs only --load and a record never says what a run did not do.
A save holds the model and optimizer shards, each rank's RNG states (Python, numpy, torch, CUDA, Megatron's
tracker) and the train state (iteration, consumed samples).

Megatron-Bridge checkpoints (`megadoc pretrain`, or Bridge's `pretrain` with a megadoc recipe) have the same
layout: the tracker file, `iter_NNNNNNN/` torch_dist saves whose "model" shards carry the same GPTModel keys (the
local layer spec maps its names onto Transformer Engine's), and `run_config.yaml`, Bridge's record of the run.
`load_run_config` reads megadoc_recipe.json, else translates that YAML, and `load_model` builds the model a run
config describes and loads only its weights, resharded to this run's TP x PP: evaluation and export load a
checkpoint of either trainer through this one function.
"""

import json
import os
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.preprocess.tokenizer import TokenizerSpec
from megadoc.recipes.models import (MODELS, ModelRecipe, OptimizerRecipe, ParallelRecipe, TrainingRecipe,
                                    padded_vocab_size)

TRACKER_NAME = "latest_checkpointed_iteration.txt"
RECIPE_NAME = "megadoc_recipe.json"
BRIDGE_CONFIG_NAME = "run_config.yaml"
"""Megatron-Bridge's record of a run, in each of its iter_NNNNNNN/ folders."""


@dataclass
class TrainState:
    """What a checkpoint restores besides weights, optimizer and RNG."""

    iteration: int = 0
    """Optimizer steps taken."""
    consumed_samples: int = 0
    """Training sequences read so far; the sampler restarts here."""


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
    _, path = checkpoint_path(load_dir)
    loaded = _load_sharded(_sharded_state(model, optimizer, TrainState(), is_loading=True), path)
    model.module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    _set_rng_state(loaded["rng_state"])
    return TrainState(iteration=loaded["iteration"], consumed_samples=loaded["consumed_samples"])


def _load_sharded(sharded_state: dict, path: Path) -> dict:
    """dist_checkpointing.load, its failures said in one line: a checkpoint of another shape, or one written by a
    newer Megatron-Core than this environment's."""
    from megatron.core import dist_checkpointing, package_info
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint import CheckpointException

    if not (path / "common.pt").exists() and (package_info.MAJOR, package_info.MINOR) < (0, 17):
        raise MegadocError(f"{path}: written by Megatron-Core >= 0.17 (e.g. Megatron-Bridge), which this "
                           f"environment's megatron-core {package_info.__version__} cannot read; load it where "
                           "Megatron-Bridge is installed (the NeMo container, .venv312)")
    try:
        return dist_checkpointing.load(sharded_state, str(path))
    except (CheckpointingException, CheckpointException, RuntimeError, KeyError) as error:
        # The cause is the last line (torch's CheckpointException carries each rank's trace before it).
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = re.sub(r"^[\w.]+(Exception|Error): ", "", lines[-1])
        raise MegadocError(f"{path}: its weights do not fit the model its run config describes ({reason[:300]})"
                           ) from None


def load_weights(model, load_dir: str) -> int:
    """The latest checkpoint's model weights (no optimizer or RNG state) into `model`; returns its iteration."""
    iteration, path = checkpoint_path(load_dir)
    loaded = _load_sharded({"model": model.sharded_state_dict()}, path)
    model.load_state_dict(loaded["model"])
    return iteration


@dataclass(frozen=True)
class RunConfig:
    """megadoc_recipe.json: how a run trains and on what."""

    recipe: TrainingRecipe
    """Model, optimizer, parallel layout, batch, tokenizer."""
    train_iters: int
    """Optimizer steps of the whole run (the plan's, or --train-iters with --data-path)."""
    seed: int
    """Seed of the model init, dropout and data order."""
    blend: dict | None = None
    """The MegadocBlendConfig trained on (None: one prefix, `data_path`)."""
    plan: dict | None = None
    """Its plan (`megadoc_data.plan.Plan.to_json`): E, r, per-stream sequences and epochs."""
    data_path: str | None = None
    """The one prefix trained on when there is no blend."""
    name: str | None = None
    """The run's name in the runs registry (`megadoc eval --registry` updates that row)."""
    backend: str = "core"
    """What trained it: `core` (megadoc train's Megatron-Core loop) or `bridge` (Megatron-Bridge's pretrain)."""
    block_cross_document_attention: bool = False
    """Whether documents attended only to themselves (the blend's flag, or --data-path's); eval attends the same."""


def global_rank() -> int:
    """This process's rank, before torch.distributed exists too (torchrun's RANK)."""
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))


def save_run_config(save_dir: str, record: RunConfig) -> None:
    """Write megadoc_recipe.json (rank 0), before the first checkpoint, so every checkpoint folder has it."""
    if global_rank() == 0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(save_dir) / RECIPE_NAME, "w") as handle:
            json.dump(asdict(record), handle, indent=2)


def load_run_config(checkpoint_dir: str) -> RunConfig:
    """The RunConfig `megadoc train` / `megadoc pretrain` saved beside the checkpoints; for a Megatron-Bridge run
    launched without megadoc, the translation of Bridge's run_config.yaml in its latest checkpoint."""
    path = Path(checkpoint_dir) / RECIPE_NAME
    if not path.exists() and (Path(checkpoint_dir) / TRACKER_NAME).exists():
        bridge = checkpoint_path(checkpoint_dir)[1] / BRIDGE_CONFIG_NAME
        if bridge.exists():
            return _read_bridge_run_config(bridge)
    try:
        data = json.loads(path.read_text())
        return RunConfig(**{**data, "recipe": TrainingRecipe.from_dict(data["recipe"])})
    except FileNotFoundError:
        raise MegadocError(f"{path}: missing (megadoc train writes it beside its checkpoints)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: not a megadoc run record ({error})") from None


def _read_bridge_run_config(path: Path) -> RunConfig:
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
        return run_config_from_bridge(config, config["model"]["vocab_size"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise MegadocError(f"{path}: not a Megatron-Bridge GPT run config ({error})") from None


def run_config_from_bridge(config: dict, vocab_size: int) -> RunConfig:
    """The RunConfig of a Megatron-Bridge ConfigContainer (`cfg.to_dict()`, or its run_config.yaml): the one
    translation from Bridge's config to megadoc's, for the launcher and for checkpoints Bridge wrote alone. The
    model's name is the MODELS entry of the same dimensions (else 'custom'); no plan (it needs the data)."""
    model, train, opt = config["model"], config["train"], config["optimizer"]
    dims = {key: model[key] for key in ("hidden_size", "ffn_hidden_size", "num_layers", "num_attention_heads")}
    dims["num_query_groups"] = model.get("num_query_groups") or model["num_attention_heads"]
    known = next((m for m in MODELS.values() if all(getattr(m, k) == v for k, v in dims.items())), None)
    shape = ModelRecipe(name=known.name if known else "custom", run_prefix=known.run_prefix if known else "custom",
                        seq_length=model["seq_length"], **dims)
    tokenizer = config.get("tokenizer") or {}
    spec = TokenizerSpec(str(tokenizer["tokenizer_model"]), tokenizer.get("tokenizer_type")) \
        if tokenizer.get("tokenizer_model") else None
    recipe = TrainingRecipe(
        model=shape,
        optimizer=OptimizerRecipe(lr=opt["lr"], weight_decay=opt["weight_decay"], adam_beta1=opt["adam_beta1"],
                                  adam_beta2=opt["adam_beta2"], adam_eps=opt["adam_eps"], clip_grad=opt["clip_grad"],
                                  min_lr=opt.get("min_lr") or 0.0),
        parallel=ParallelRecipe(model["tensor_model_parallel_size"], model["pipeline_model_parallel_size"]),
        global_batch_size=train["global_batch_size"], micro_batch_size=train["micro_batch_size"],
        bf16=bool(model.get("bf16")) or str(config.get("mixed_precision") or "").startswith("bf16"),
        vocab_size=vocab_size, tokenizer=spec)
    dataset = config.get("dataset") or {}
    blend = {k: v for k, v in dataset["blend"].items() if k != "_target_"} if "blend" in dataset else None
    return RunConfig(recipe=recipe, train_iters=train["train_iters"], seed=config["rng"]["seed"], blend=blend,
                     backend="bridge", block_cross_document_attention=bool((blend or {}).get(
                         "block_cross_document_attention")))


def check_resumable(load_dir: str | None, recipe: TrainingRecipe) -> None:
    """Refuse, in one line, to resume from a checkpoint folder whose run trained another model, or from a file."""
    if load_dir and Path(load_dir).exists() and not Path(load_dir).is_dir():
        raise MegadocError(f"--load {load_dir}: a file; --load names a checkpoint folder (--save's)")
    if not load_dir or not has_checkpoint(load_dir):
        return
    trained = load_run_config(load_dir).recipe.model
    if replace(trained, name="", run_prefix="") != replace(recipe.model, name="", run_prefix=""):
        raise MegadocError(f"{load_dir} holds a {trained.name} model (hidden {trained.hidden_size}, "
                           f"{trained.num_layers} layers, seq {trained.seq_length}); this run trains "
                           f"{recipe.model.name} (hidden {recipe.model.hidden_size}, {recipe.model.num_layers} "
                           f"layers, seq {recipe.model.seq_length}): resume it with its own model, or save this run elsewhere")


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's model on this rank, ready for forward passes."""

    model: object
    """This rank's GPTModel stage, fp32, in eval mode."""
    run: RunConfig
    """How the checkpoint's run trained (its model, vocabulary, blend, name)."""
    recipe: TrainingRecipe
    """The model as built here: the run's, laid out as this run's TP x PP, padded vocabulary, fp32."""
    iteration: int
    """The checkpoint's training iteration."""


def inference_recipe(recipe: TrainingRecipe, parallel: ParallelRecipe) -> TrainingRecipe:
    """The trained recipe laid out as `parallel`, computing in fp32 (a measurement: no bf16 rounding in the
    differences between runs), its vocabulary padded exactly as in training (the softmax spans the padding rows,
    and the checkpoint's embeddings have them)."""
    padded = padded_vocab_size(recipe.vocab_size, recipe.parallel.tensor_model_parallel_size)
    if padded_vocab_size(padded, parallel.tensor_model_parallel_size) != padded:
        raise MegadocError(f"the checkpoint's padded vocabulary ({padded}) does not split over "
                           f"TP={parallel.tensor_model_parallel_size}")
    return replace(recipe, vocab_size=padded, parallel=parallel, bf16=False)


def load_model(load_dir: str, parallel: ParallelRecipe = ParallelRecipe()) -> LoadedModel:
    """The latest checkpoint under load_dir (megadoc train's or Megatron-Bridge's) as an fp32 model on this rank,
    weights only, resharded to `parallel`. The world must be started (runtime.start, with `parallel`)."""
    from megadoc.training.runtime import build_model, to_device

    checkpoint_path(load_dir)
    run = load_run_config(load_dir)
    recipe = inference_recipe(run.recipe, parallel)
    model = to_device(build_model(recipe))  # fp32: this only moves it onto the GPU (where there is one)
    iteration = load_weights(model, load_dir)
    model.eval()
    return LoadedModel(model, run, recipe, iteration)
