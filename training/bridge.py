"""`megadoc pretrain`: one megadoc recipe trained by Megatron-Bridge's own `pretrain`, as Bridge's scripts launch
recipes (a recipe name plus Hydra-style overrides); the training step of a pipeline whose train.backend is bridge.

    torchrun --nproc-per-node 8 -m megadoc pretrain --registry runs.csv --method stitched --generations 32 \\
        300m tokenizer_model=llama3/hf real_path=data/real 'synthetic_paths=[data/stitched32]' real_epochs=32 \\
        synthetic_fraction=0.9 lr=1e-3 weight_decay=0.4 output_dir=runs/b32 model.tensor_model_parallel_size=2

(`python -m megadoc.training.bridge ...` is the same command.) The recipe is a size (150m, 300m, 600m, 1.5b, tiny)
or its function's name (megadoc_300m_pretrain_config). A `key=value` whose key is an argument of the recipe function
(megadoc.recipes.bridge.pretrain_config: the data, E, r, lr, parallel sizes, output_dir, ...) sets it; any other
overrides the ConfigContainer (`model.seq_length=2048`, `mixed_precision=null`: Bridge's
`process_config_with_overrides`, which refuses unknown keys; the megadoc plan stays in step).

Besides Bridge's checkpoints (`output_dir`/checkpoints, resumed from there), the run writes into that folder what
`megadoc train` writes into its own: megadoc_recipe.json (the run config, translated from the ConfigContainer
actually trained) and train_log.jsonl (one record per step), and it adds the same registry row under the same run
name, so `megadoc eval`, `report` and `efficiency` treat both trainers' runs alike.
"""

import inspect
import json
import sys
import time
import types
import typing
from dataclasses import replace
from pathlib import Path

import yaml

from megadoc.errors import MegadocError

RECIPE_NAMES = {"150m": "150m", "300m": "300m", "600m": "600m", "1.5b": "1.5b", "1_5b": "1.5b", "tiny": "tiny"}
"""Sizes as the recipe functions spell them (megadoc_1_5b_pretrain_config) and as `--recipe` does (1.5b)."""


def add_arguments(parser) -> None:
    registry = parser.add_argument_group("runs registry: record this run (megadoc eval adds its scores)")
    registry.add_argument("--registry", help="runs registry CSV")
    registry.add_argument("--run-name", dest="run", help="run name, the registry key (default: the paper's "
                          "pattern, as megadoc train names it)")
    registry.add_argument("--method", default=None, help="synthetic stream kind (default: real, or 'synthetic')")
    registry.add_argument("--generations", type=int, default=0, help="G: synthetic generations per document")
    registry.add_argument("--real-tokens-from", metavar="PREFIX", help="a run on synthetic data alone (real_path "
                          "is a synthetic stream): the real prefix its documents came from, whose tokens are its D")
    parser.add_argument("recipe", help="150m, 300m, 600m, 1.5b or tiny, or megadoc_<size>_pretrain_config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="recipe arguments (real_path=..., real_epochs=32) and ConfigContainer overrides "
                        "(model.tensor_model_parallel_size=2)")
    parser.set_defaults(func=run)


def model_name(recipe: str) -> str:
    """The MODELS key of a recipe given as a size or as its function's name."""
    size = recipe.removeprefix("megadoc_").removesuffix("_pretrain_config")
    if size not in RECIPE_NAMES:
        raise MegadocError(f"recipe: {recipe!r} is not one of {', '.join(RECIPE_NAMES)} "
                           "(or megadoc_<size>_pretrain_config)")
    return RECIPE_NAMES[size]


def _value(key: str, text: str, kind):
    """A recipe argument's text as the type its annotation names: `null` for None where allowed, strings as
    written, numbers as numbers (1e-3 too, which YAML 1.1 reads as a string), lists and booleans as YAML."""
    if typing.get_origin(kind) is types.UnionType and type(None) in typing.get_args(kind):
        if text in ("null", "None"):
            return None
        (kind,) = [option for option in typing.get_args(kind) if option is not type(None)]
    try:
        if kind in (int, float):
            return kind(text)
        if kind is bool or typing.get_origin(kind) is list:
            value = yaml.safe_load(text)
            if not isinstance(value, bool if kind is bool else list):
                raise ValueError(text)
            return value if kind is bool else [typing.get_args(kind)[0](item) for item in value]
    except (ValueError, yaml.YAMLError):
        example = f", e.g. {key}=[a,b]" if typing.get_origin(kind) is list else ""
        raise MegadocError(f"{key}={text}: expected {getattr(kind, '__name__', kind)}{example}") from None
    return text


def recipe_arguments(assignments: list[str]) -> tuple[dict, list[str]]:
    """`key=value` strings split into the recipe function's keyword arguments (typed as it annotates them) and
    ConfigContainer overrides (everything else, left to Bridge)."""
    from megadoc.recipes.bridge import pretrain_config

    parameters = inspect.signature(pretrain_config).parameters
    kwargs, overrides = {}, []
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise MegadocError(f"{assignment!r}: expected key=value, e.g. real_epochs=32 or model.seq_length=2048")
        if key in parameters and key != "model":
            kwargs[key] = _value(key, text, parameters[key].annotation)
        else:
            overrides.append(assignment)
    return kwargs, overrides


def build_config(recipe: str, assignments: list[str]):
    """The ConfigContainer of a recipe, its arguments and overrides applied (`key=value` strings)."""
    from megadoc.recipes.bridge import apply_overrides, pretrain_config

    kwargs, overrides = recipe_arguments(assignments)
    try:
        cfg = pretrain_config(model_name(recipe), **kwargs)
    except TypeError as error:
        raise MegadocError(f"recipe {recipe}: {error}") from None
    return apply_overrides(cfg, overrides)


def run_config(cfg):
    """The megadoc run config of a ConfigContainer about to train: the translation of its dict, the vocabulary of
    the tokenizer Bridge will build, and the megadoc plan it trains."""
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    from megadoc.training.checkpoints import run_config_from_bridge
    from megadoc_data.plan import make_plan, plan_from_data

    blend = cfg.dataset.blend
    plan = make_plan(blend) if blend.base_steps is not None else plan_from_data(blend)
    translated = run_config_from_bridge(cfg.to_dict(), build_tokenizer(cfg.tokenizer).vocab_size)
    return replace(translated, plan=plan.to_json())


def train_log(path: Path, global_batch_size: int):
    """A Bridge callback that appends megadoc train's loss-log records (iteration, consumed_samples, loss, lr,
    grad_norm, step_time_s) to `path`, from the rank that holds the reduced loss; on resume it first drops records
    past the checkpoint (as megadoc train does), so a resumed run's log is an uninterrupted run's."""
    from megatron.bridge.training.callbacks import Callback
    from megatron.core import parallel_state

    from megadoc.training.loop import keep_log_until

    def writes() -> bool:
        return (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
                and parallel_state.get_data_parallel_rank(with_context_parallel=True) == 0)

    class TrainLog(Callback):
        def on_train_start(self, context):
            self.last = time.perf_counter()
            if writes():
                keep_log_until(path, context.state.train_state.step)

        def on_train_step_end(self, context):
            now = time.perf_counter()
            step_time, self.last = now - self.last, now
            if not context.loss_dict or not writes():
                return
            state = context.state.train_state  # the counters before this step: Bridge advances them after it
            record = {"iteration": state.step + 1, "consumed_samples": state.consumed_train_samples + global_batch_size,
                      "loss": float(context.loss_dict["lm loss"]), "lr": context.optimizer.param_groups[0]["lr"],
                      "grad_norm": None if context.grad_norm is None else float(context.grad_norm),
                      "step_time_s": round(step_time, 4)}
            with open(path, "a") as log:
                log.write(json.dumps(record) + "\n")

    return TrainLog()


def import_bridge():
    """Megatron-Bridge's (pretrain, forward_step), or one line saying where `megadoc pretrain` runs."""
    try:
        from megatron.bridge.training.gpt_step import forward_step
        from megatron.bridge.training.pretrain import pretrain
    except ImportError as error:
        raise MegadocError(f"Megatron-Bridge cannot be imported here ({error}): megadoc pretrain runs where it and "
                           "Transformer Engine are installed (a NeMo container, `pip install -e .[nemo]`); on a CPU "
                           "train with megadoc train") from None
    return pretrain, forward_step


def run(args) -> int:
    from megadoc.training.checkpoints import check_resumable, global_rank, save_run_config
    from megadoc.training.loop import LOG_NAME
    from megadoc.training.registry import record_run, run_record

    model_name(args.recipe)
    pretrain, forward_step = import_bridge()
    cfg = build_config(args.recipe, args.overrides)
    save = cfg.checkpoint.save
    if not save:
        raise MegadocError("checkpoint.save: a run needs a checkpoint folder (its run config and log go there too)")
    config = run_config(cfg)
    check_resumable(cfg.checkpoint.load, config.recipe)
    if args.registry:
        record = run_record(config, args.method, args.generations, args.run, save, args.real_tokens_from)
        config = replace(config, name=record.run)
        if global_rank() == 0:
            record_run(args.registry, record)
    save_run_config(save, config)
    pretrain(cfg, forward_step, callbacks=[train_log(Path(save) / LOG_NAME, cfg.train.global_batch_size)])
    return 0


if __name__ == "__main__":
    from megadoc.cli import main

    sys.exit(main(["pretrain", *sys.argv[1:]]))
