"""The paper's models as Megatron-Bridge recipes: `ConfigContainer` factories, as NeMo 2 / Bridge users launch them.

    from megadoc.recipes.bridge import megadoc_300m_pretrain_config
    cfg = megadoc_300m_pretrain_config(tokenizer_model="llama3/hf", real_path="data/real",
                                       synthetic_paths=["data/stitched32"], real_epochs=32, synthetic_fraction=0.9,
                                       lr=1e-3, weight_decay=0.4, tensor_model_parallel_size=2)
    pretrain(cfg, forward_step)   # megatron.bridge.training.pretrain / gpt_step

Every model is built from its explicit dimensions (`megadoc.recipes.models`), never from a hub checkpoint: Bridge's
own Llama recipes call `AutoBridge.from_hf_pretrained`, which needs the network. Data comes through the megadoc
`DatasetProvider` (exact per-stream counts) and `train_iters` is the megadoc plan's, so the provider and the
trainer agree on the number of samples; `apply_overrides` keeps them so under Hydra-style `key=value` overrides.
`cfg.to_yaml` / `ConfigContainer.from_yaml` round-trip once `megadoc_data.bridge` is imported (building a config
here does it): that adds the provider to Bridge's allowlist of YAML `_target_`s. Megatron-Bridge is imported inside
the functions: this module imports (and the CLI works) in an environment without Bridge.
"""

import dataclasses
import os

from megadoc.errors import MegadocError
from megadoc.recipes.models import MODELS, OptimizerRecipe, llama_architecture
from megadoc.recipes.weight_decay import LevanterWeightDecayMask


def pretrain_config(
    model: str = "300m",
    *,
    tokenizer_model: str,
    real_path: str,
    synthetic_paths: list[str] = (),
    synthetic_weights: list[float] | None = None,
    valid_paths: list[str] = (),
    real_epochs: float = 16,
    synthetic_fraction: float = 0.0,
    lr: float = 3e-3,
    weight_decay: float = 0.8,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    context_parallel_size: int = 1,
    global_batch_size: int = 64,
    micro_batch_size: int = 1,
    seq_length: int | None = None,
    base_steps: int | None = None,
    eval_iters: int = 16,
    seed: int = 1234,
    output_dir: str | None = None,
    data_cache_path: str | None = None,
):
    """A pre-training ConfigContainer for one of the paper's models (`MODELS`: 150m, 300m, 600m, 1.5b, tiny).

    E (`real_epochs`) and r (`synthetic_fraction`) set the data plan, and train_iters = floor(base_steps x E /
    (1 - r)); `base_steps` None reads one real pass from the .idx header of `real_path` (777 for the paper's
    203.7M tokens), given, the config builds without the data (e.g. on a login node). Validation runs once, at
    the end, over `valid_paths` (`eval_iters` batches each). Checkpoints and TensorBoard logs go under
    `output_dir` (default ./nemo_experiments/megadoc-<model>).
    """
    from megadoc_data.bridge import MegadocDatasetProvider
    from megadoc_data.config import MegadocBlendConfig

    if model not in MODELS:
        raise MegadocError(f"model: {model!r} is not one of {', '.join(MODELS)}")
    seq_length = seq_length or MODELS[model].seq_length
    output_dir = output_dir or os.path.join(os.getcwd(), "nemo_experiments", f"megadoc-{model}")
    cfg = _container(model, seq_length, OptimizerRecipe(lr=lr, weight_decay=weight_decay), output_dir, seed)
    cfg.dataset = MegadocDatasetProvider(
        blend=MegadocBlendConfig(
            real_prefix=real_path, synthetic_prefixes=list(synthetic_paths), synthetic_weights=synthetic_weights,
            real_epochs=real_epochs, synthetic_fraction=synthetic_fraction, seq_length=seq_length,
            global_batch_size=global_batch_size, base_steps=base_steps, seed=seed, valid_prefixes=list(valid_paths),
            path_to_cache=data_cache_path),
        dataloader_type="single", num_workers=2)
    cfg.train.global_batch_size, cfg.train.micro_batch_size = global_batch_size, micro_batch_size
    cfg.model.tensor_model_parallel_size = tensor_model_parallel_size
    cfg.model.pipeline_model_parallel_size = pipeline_model_parallel_size
    cfg.model.context_parallel_size = context_parallel_size
    cfg.tokenizer.tokenizer_model = str(tokenizer_model)
    cfg.validation.eval_iters = eval_iters if valid_paths else 0
    return sync_plan(cfg)


def apply_overrides(cfg, overrides: list[str]):
    """Hydra-style `key=value` overrides (Bridge's `process_config_with_overrides`), then `sync_plan`, so that
    e.g. `dataset.blend.real_epochs=8` or `train.global_batch_size=128` also moves train_iters and the schedule."""
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    if any(o.split("=", 1)[0].lstrip("+~") == "train.train_iters" for o in overrides):
        raise MegadocError("train.train_iters comes from the data plan: override dataset.blend.real_epochs, "
                           "dataset.blend.synthetic_fraction or dataset.blend.base_steps instead")
    return sync_plan(process_config_with_overrides(cfg, cli_overrides=list(overrides)))


def sync_plan(cfg):
    """Make the trainer and the megadoc plan agree: the blend takes the trainer's sequence length, global batch and
    seed (and is validated again), then train_iters = the plan's, warmup = 1% of it, cosine decay over all of it,
    validation once at the end."""
    from megadoc_data.plan import make_plan, plan_from_data

    blend = dataclasses.replace(cfg.dataset.blend, seq_length=cfg.model.seq_length,
                                global_batch_size=cfg.train.global_batch_size, seed=cfg.rng.seed)
    plan = make_plan(blend) if blend.base_steps is not None else plan_from_data(blend)
    cfg.dataset.blend = blend
    cfg.train.train_iters = plan.train_iters
    cfg.scheduler.lr_warmup_iters = OptimizerRecipe().warmup_iters(plan.train_iters)
    cfg.scheduler.lr_decay_iters = plan.train_iters
    cfg.validation.eval_interval = plan.train_iters if blend.valid_prefixes else None
    cfg.validation.multiple_validation_sets = len(blend.valid_prefixes) > 1
    return cfg


def megadoc_150m_pretrain_config(**kwargs):
    """150M: hidden 512, FFN 1792, 6 layers, 8 heads."""
    return pretrain_config("150m", **kwargs)


def megadoc_300m_pretrain_config(**kwargs):
    """300M, the paper's main model: hidden 768, FFN 2688, 12 layers, 12 heads (299,649,792 parameters)."""
    return pretrain_config("300m", **kwargs)


def megadoc_600m_pretrain_config(**kwargs):
    """600M: hidden 1024, FFN 3584, 24 layers, 16 heads, 8 KV heads."""
    return pretrain_config("600m", **kwargs)


def megadoc_1_5b_pretrain_config(**kwargs):
    """1.5B: hidden 1536, FFN 5376, 36 layers, 16 heads, 8 KV heads."""
    return pretrain_config("1.5b", **kwargs)


def megadoc_tiny_pretrain_config(**kwargs):
    """The tiny model (hidden 64, 2 layers, context 64) for CPU tests and demos."""
    return pretrain_config("tiny", **kwargs)


def _model_provider(model: str, seq_length: int):
    """Bridge's GPTModelProvider with the model's dimensions, Llama style: untied embeddings, RMSNorm, SwiGLU,
    RoPE (theta 10,000), no biases. The vocabulary is left to the tokenizer (padded to 128 x TP)."""
    from megatron.bridge.models.gpt_provider import GPTModelProvider

    return GPTModelProvider(
        **llama_architecture(MODELS[model]),
        add_qkv_bias=False,
        position_embedding_type="rope",
        rotary_base=10_000,
        share_embeddings_and_output_weights=False,
        seq_length=seq_length,
        make_vocab_size_divisible_by=128,
    )


def _optimizer(opt: OptimizerRecipe):
    """AdamW (Megatron's "adam" decouples weight decay), clip 1.0; linear warmup over 1% then cosine to 0. The
    scheduler holds the weight decay constant at the optimizer's (it overrides the optimizer's otherwise) and
    multiplies it by each group's wd_mult: the paper's mask (`_container` sets it) keeps embeddings, norms and biases
    undecayed."""
    from megatron.bridge.training.config import OptimizerConfig, SchedulerConfig

    optimizer = OptimizerConfig(
        optimizer="adam", lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay, adam_beta1=opt.adam_beta1,
        adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps, clip_grad=opt.clip_grad, bf16=True,
        use_distributed_optimizer=True)
    scheduler = SchedulerConfig(
        lr_decay_style="cosine", lr_warmup_init=0.0, start_weight_decay=opt.weight_decay,
        end_weight_decay=opt.weight_decay, weight_decay_incr_style="constant", override_opt_param_scheduler=True)
    return optimizer, scheduler


def _container(model: str, seq_length: int, opt: OptimizerRecipe, output_dir: str, seed: int):
    """Everything but the data and the step counts (`sync_plan`): Bridge's pre-training defaults (distributed
    optimizer, bf16 mixed precision, torch_dist checkpoints) around the paper's model and optimizer."""
    from megatron.bridge.training.config import (
        CheckpointConfig, ConfigContainer, DistributedDataParallelConfig, DistributedInitConfig, LoggerConfig,
        RNGConfig, TokenizerConfig, TrainingConfig, ValidationConfig)
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    register_allowed_target_prefix("megadoc.recipes.weight_decay")  # the mask's YAML `_target_` (from_yaml)
    optimizer, scheduler = _optimizer(opt)
    return ConfigContainer(
        model=_model_provider(model, seq_length),
        train=TrainingConfig(global_batch_size=64, micro_batch_size=1),
        validation=ValidationConfig(eval_interval=None, eval_iters=0),
        optimizer=optimizer,
        optimizer_config_override_provider=LevanterWeightDecayMask(),
        scheduler=scheduler,
        ddp=DistributedDataParallelConfig(check_for_nan_in_grad=True, grad_reduce_in_fp32=True,
                                          overlap_grad_reduce=True, overlap_param_gather=True,
                                          average_in_collective=True, use_distributed_optimizer=True),
        dataset=None,
        logger=LoggerConfig(log_interval=10, tensorboard_dir=os.path.join(output_dir, "tb_logs")),
        tokenizer=TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=None),
        checkpoint=CheckpointConfig(save=os.path.join(output_dir, "checkpoints"),
                                    load=os.path.join(output_dir, "checkpoints"), save_interval=500,
                                    ckpt_format="torch_dist", fully_parallel_save=True),
        rng=RNGConfig(seed=seed),
        dist=DistributedInitConfig(),
        mixed_precision="bf16_mixed",
    )
