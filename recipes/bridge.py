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
Production settings as Bridge's own H100 Llama recipes have them: Transformer Engine layers with fused (cuDNN)
attention and TE's fused cross-entropy when TE is installed (Megatron-Core's local layers otherwise), the
distributed optimizer, bf16 mixed precision, TP / PP / CP / sequence parallelism as parameters, TensorBoard (and
W&B with `wandb_project`), validation every train_iters / 20 steps (the paper's cadence) and a checkpoint as often
by default. `python -m megadoc.training.bridge <recipe> key=value ...` launches one (megadoc.training.bridge).
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
    sequence_parallel: bool = False,
    seq_length: int | None = None,
    base_steps: int | None = None,
    eval_iters: int = 16,
    save_interval: int | None = None,
    seed: int = 1234,
    output_dir: str | None = None,
    data_cache_path: str | None = None,
    tokenizer_type: str | None = None,
    wandb_project: str | None = None,
    wandb_exp_name: str | None = None,
    force: bool = False,
):
    """A pre-training ConfigContainer for one of the paper's models (`MODELS`: 150m, 300m, 600m, 1.5b, tiny).

    E (`real_epochs`) and r (`synthetic_fraction`) set the data plan, and train_iters = floor(base_steps x E /
    (1 - r)); `base_steps` None reads one real pass from the .idx header of `real_path` (777 for the paper's
    203.7M tokens), given, the config builds without the data (e.g. on a login node). Validation runs every
    train_iters / 20 steps over `valid_paths` (`eval_iters` batches each); a checkpoint is saved every
    `save_interval` steps (default: as often as validation) and at the end. Checkpoints go to
    `output_dir`/checkpoints (resumed from there), TensorBoard logs to `output_dir`/tb_logs (default output_dir:
    ./nemo_experiments/megadoc-<model>), and to W&B as well when `wandb_project` is given. The tokenizer is the
    one the data was written with (megadoc's --tokenizer-model: an HF folder, a sentencepiece .model, or smollm2).
    `force` takes a plan of more than 10M steps (megadoc blend's --force).
    """
    from megadoc_data.bridge import MegadocDatasetProvider
    from megadoc_data.config import MegadocBlendConfig

    if model not in MODELS:
        raise MegadocError(f"model: {model!r} is not one of {', '.join(MODELS)}")
    seq_length = seq_length or MODELS[model].seq_length
    output_dir = output_dir or os.path.join(os.getcwd(), "nemo_experiments", f"megadoc-{model}")
    cfg = _container(model, seq_length, OptimizerRecipe(lr=lr, weight_decay=weight_decay), output_dir, seed)
    cfg.tokenizer = _tokenizer(str(tokenizer_model), tokenizer_type)
    cfg.dataset = MegadocDatasetProvider(
        blend=MegadocBlendConfig(
            real_prefix=real_path, synthetic_prefixes=list(synthetic_paths), synthetic_weights=synthetic_weights,
            real_epochs=real_epochs, synthetic_fraction=synthetic_fraction, seq_length=seq_length,
            global_batch_size=global_batch_size, base_steps=base_steps, seed=seed, valid_prefixes=list(valid_paths),
            path_to_cache=data_cache_path, force=force),
        dataloader_type="single", num_workers=2)
    cfg.train.global_batch_size, cfg.train.micro_batch_size = global_batch_size, micro_batch_size
    cfg.model.tensor_model_parallel_size = tensor_model_parallel_size
    cfg.model.pipeline_model_parallel_size = pipeline_model_parallel_size
    cfg.model.context_parallel_size = context_parallel_size
    cfg.model.sequence_parallel = sequence_parallel
    cfg.validation.eval_iters = eval_iters if valid_paths else 0
    cfg.checkpoint.save_interval = save_interval
    if wandb_project:
        cfg.logger.wandb_project = wandb_project
        cfg.logger.wandb_exp_name = wandb_exp_name or f"megadoc-{model}"
        cfg.logger.wandb_save_dir = os.path.join(output_dir, "wandb")
    return sync_plan(cfg)


def apply_overrides(cfg, overrides: list[str]):
    """Hydra-style `key=value` overrides (Bridge's `process_config_with_overrides`), then `sync_plan`, so that
    e.g. `dataset.blend.real_epochs=8` or `train.global_batch_size=128` also moves train_iters and the schedule."""
    from megatron.bridge.training.utils.omegaconf_utils import OverridesError, process_config_with_overrides

    if any(o.split("=", 1)[0].lstrip("+~") == "train.train_iters" for o in overrides):
        raise MegadocError("train.train_iters comes from the data plan: override dataset.blend.real_epochs, "
                           "dataset.blend.synthetic_fraction or dataset.blend.base_steps instead")
    try:
        return sync_plan(process_config_with_overrides(cfg, cli_overrides=list(overrides)))
    except OverridesError as error:  # an unknown key, or a value of the wrong kind
        raise MegadocError(f"overrides: {str(error).splitlines()[0]}") from None


EVALUATIONS_PER_RUN = 20
"""The paper evaluates every total / 20 steps."""


def eval_cadence(train_iters: int) -> int:
    """Steps between validations (and, by default, checkpoints): train_iters / 20, at least 1."""
    return max(1, train_iters // EVALUATIONS_PER_RUN)


def sync_plan(cfg):
    """Make the trainer and the megadoc plan agree: the blend takes the trainer's sequence length, global batch and
    seed (and is validated again), then train_iters = the plan's, warmup = 1% of it, cosine decay over all of it,
    validation every train_iters / 20 steps, and a save interval that was the cadence (or unset) follows it."""
    from megadoc_data.plan import make_plan, plan_from_data

    blend = dataclasses.replace(cfg.dataset.blend, seq_length=cfg.model.seq_length,
                                global_batch_size=cfg.train.global_batch_size, seed=cfg.rng.seed)
    plan = make_plan(blend) if blend.base_steps is not None else plan_from_data(blend)
    derived_save = cfg.checkpoint.save_interval in (None, eval_cadence(cfg.train.train_iters or 0))
    cfg.dataset.blend = blend
    cfg.train.train_iters = plan.train_iters
    cfg.scheduler.lr_warmup_iters = OptimizerRecipe().warmup_iters(plan.train_iters)
    cfg.scheduler.lr_decay_iters = plan.train_iters
    cfg.validation.eval_interval = eval_cadence(plan.train_iters) if blend.valid_prefixes else None
    cfg.validation.multiple_validation_sets = len(blend.valid_prefixes) > 1
    if derived_save:
        cfg.checkpoint.save_interval = eval_cadence(plan.train_iters)
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
        **_kernels(),
    )


def has_transformer_engine() -> bool:
    """Whether Megatron-Core found Transformer Engine (what its own layer specs decide by)."""
    from megatron.core.extensions.transformer_engine import HAVE_TE

    return HAVE_TE


def _kernels() -> dict:
    """The layers and fused kernels: with Transformer Engine, TE's layers (fused norm + linear), cuDNN fused
    attention, TE's fused cross-entropy and fused SwiGLU / RoPE, as Bridge's H100 Llama recipes; without it,
    Megatron-Core's local layers and attention (a machine without TE, e.g. CPU tests)."""
    from megatron.bridge.models.gpt_provider import local_layer_spec, transformer_engine_layer_spec
    from megatron.core.transformer.enums import AttnBackend

    if has_transformer_engine():
        return dict(transformer_layer_spec=transformer_engine_layer_spec, transformer_impl="transformer_engine",
                    attention_backend=AttnBackend.fused, cross_entropy_loss_fusion=True,
                    cross_entropy_fusion_impl="te", bias_activation_fusion=True, apply_rope_fusion=True)
    return dict(transformer_layer_spec=local_layer_spec, transformer_impl="local", attention_backend=AttnBackend.local)


def _tokenizer(tokenizer_model: str, tokenizer_type: str | None):
    """Bridge's TokenizerConfig for the tokenizer the data was written with (megadoc's spec: its vocabulary sizes
    the model). Bridge reads HF folders and sentencepiece models; 'smollm2' is the embedded model's folder."""
    from megatron.bridge.training.config import TokenizerConfig

    from megadoc.preprocess.tokenizer import EMBEDDED_TOKENIZER, HF_TYPES, SENTENCEPIECE_TYPES, guess_type

    if tokenizer_model == EMBEDDED_TOKENIZER:
        from megadoc.preprocess.generate.embedded_model import default_model_dir

        tokenizer_model, tokenizer_type = default_model_dir(), "HuggingFaceTokenizer"
    kind = tokenizer_type or guess_type(tokenizer_model)
    if kind in HF_TYPES:
        folder = os.path.dirname(tokenizer_model) if tokenizer_model.endswith(".json") else tokenizer_model
        return TokenizerConfig(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=folder)
    if kind in SENTENCEPIECE_TYPES:
        return TokenizerConfig(tokenizer_type="SentencePieceTokenizer", tokenizer_model=tokenizer_model)
    raise MegadocError(f"tokenizer_model: Megatron-Bridge reads HF folders and sentencepiece models, not a {kind} "
                       f"file ({tokenizer_model}); give the HF folder of the same vocabulary")


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
    """Everything but the data, the tokenizer and the step counts (`sync_plan`): Bridge's pre-training defaults
    (distributed optimizer, overlapped gradient reduce and parameter gather, bf16 mixed precision, torch_dist
    checkpoints, manual garbage collection) around the paper's model and optimizer."""
    from megatron.bridge.training.config import (
        CheckpointConfig, ConfigContainer, DistributedDataParallelConfig, DistributedInitConfig, LoggerConfig,
        RNGConfig, TrainingConfig, ValidationConfig)
    from megatron.bridge.utils.instantiate_utils import register_allowed_target_prefix

    register_allowed_target_prefix("megadoc.recipes.weight_decay")  # the mask's YAML `_target_` (from_yaml)
    optimizer, scheduler = _optimizer(opt)
    return ConfigContainer(
        model=_model_provider(model, seq_length),
        train=TrainingConfig(global_batch_size=64, micro_batch_size=1, manual_gc=True, manual_gc_interval=100),
        validation=ValidationConfig(eval_interval=None, eval_iters=0),
        optimizer=optimizer,
        optimizer_config_override_provider=LevanterWeightDecayMask(),
        scheduler=scheduler,
        ddp=DistributedDataParallelConfig(check_for_nan_in_grad=True, grad_reduce_in_fp32=True,
                                          overlap_grad_reduce=True, overlap_param_gather=True,
                                          average_in_collective=True, use_distributed_optimizer=True),
        dataset=None,
        logger=LoggerConfig(log_interval=10, tensorboard_dir=os.path.join(output_dir, "tb_logs"),
                            log_timers_to_tensorboard=True, log_validation_ppl_to_tensorboard=True),
        tokenizer=None,
        checkpoint=CheckpointConfig(save=os.path.join(output_dir, "checkpoints"),
                                    load=os.path.join(output_dir, "checkpoints"), ckpt_format="torch_dist",
                                    fully_parallel_save=True),
        rng=RNGConfig(seed=seed),
        dist=DistributedInitConfig(),
        mixed_precision="bf16_mixed",
    )
