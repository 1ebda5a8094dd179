"""Checkpoints of a run: Megatron-Core torch_dist saves that resume bit for bit, and the run record beside them.

A checkpoint folder (`--save`, also `--load`) holds `iter_NNNNNNN/` saves, the tracker file naming the latest one
(`latest_checkpointed_iteration.txt`, Megatron-LM's name) and `megadoc_recipe.json`, the record of the run: the
TrainingRecipe (model, optimizer, layout, tokenizer) plus the blend and the plan it trained on, written from the
configs actually used, so `megadoc eval` needs only --load and a record never says what a run did not do.
A save holds the model and optimizer shards, each rank's RNG states (Python, numpy, torch, CUDA, Megatron's
tracker) and the train state (iteration, consumed samples). `load_weights` restores only the model, resharded to
the loading run's TP x PP (evaluation).
"""

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from megadoc.errors import MegadocError
from megadoc.files import atomic_write
from megadoc.recipes.models import TrainingRecipe

TRACKER_NAME = "latest_checkpointed_iteration.txt"
RECIPE_NAME = "megadoc_recipe.json"


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
    from megatron.core import dist_checkpointing

    _, path = checkpoint_path(load_dir)
    loaded = dist_checkpointing.load(_sharded_state(model, optimizer, TrainState(), is_loading=True), str(path))
    model.module.load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    _set_rng_state(loaded["rng_state"])
    return TrainState(iteration=loaded["iteration"], consumed_samples=loaded["consumed_samples"])


def load_weights(model, load_dir: str) -> int:
    """The latest checkpoint's model weights (no optimizer or RNG state) into `model`; returns its iteration."""
    from megatron.core import dist_checkpointing

    iteration, path = checkpoint_path(load_dir)
    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(path))
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
    block_cross_document_attention: bool = False
    """Whether documents attended only to themselves (the blend's flag, or --data-path's); eval attends the same."""


def save_run_config(save_dir: str, record: RunConfig) -> None:
    """Write megadoc_recipe.json (rank 0), before the first checkpoint, so every checkpoint folder has it."""
    if torch.distributed.get_rank() == 0:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        with atomic_write(Path(save_dir) / RECIPE_NAME, "w") as handle:
            json.dump(asdict(record), handle, indent=2)


def load_run_config(checkpoint_dir: str) -> RunConfig:
    """The RunConfig `megadoc train` saved beside its checkpoints."""
    path = Path(checkpoint_dir) / RECIPE_NAME
    try:
        data = json.loads(path.read_text())
        return RunConfig(**{**data, "recipe": TrainingRecipe.from_dict(data["recipe"])})
    except FileNotFoundError:
        raise MegadocError(f"{path}: missing (megadoc train writes it beside its checkpoints)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MegadocError(f"{path}: not a megadoc run record ({error})") from None
