"""The Megatron-Bridge recipes on the real Megatron-Bridge 0.6.2 (run in .venv312 by tests/test_bridge.py).

The 300M recipe has the paper's dimensions (parameter count checked on a real Megatron-Core GPTModel built by
Bridge's provider, on the meta device), optimizer, schedule and production settings (Transformer Engine layers and
fused attention where TE is installed, distributed optimizer, bf16, the paper's evaluation cadence); configs
round-trip through YAML and take Hydra-style overrides that keep the megadoc plan and the trainer in step; the
Megatron-LM entry point of the data plugin reads Megatron-LM's real arguments. Training, evaluation and export
through Bridge are test_bridge_training.py's.
"""

import math
import sys
from dataclasses import replace

import numpy
import pytest
import torch.nn.functional as F

from megadoc.errors import MegadocError
from megadoc_data.bridge import MegadocDatasetProvider
from megadoc_data.config import MegadocBlendConfig
from megadoc_data.plan import plan_from_data
from megadoc.recipes.bridge import apply_overrides, megadoc_300m_pretrain_config, pretrain_config
from megadoc.recipes.models import MODELS

PAPER_300M = 299_649_792


@pytest.fixture(scope="module")
def model_parallel_world():
    """A world of one (gloo), so Bridge's provider can build a model in this process."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    parallel_state.initialize_model_parallel()
    yield
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def paper_300m(llama3_hf, **kwargs):
    """The paper's main run: 300M, E=32, r=0.9, lr 1e-3, wd 0.4 (base steps given: no data needed)."""
    return megadoc_300m_pretrain_config(
        tokenizer_model=llama3_hf, real_path="data/real", synthetic_paths=["data/stitched32"], real_epochs=32,
        synthetic_fraction=0.9, lr=1e-3, weight_decay=0.4, base_steps=777, **kwargs)


def parameter_count(cfg) -> int:
    """Parameters of the GPTModel Bridge's provider builds (meta device: shapes only), vocabulary from the
    recipe's tokenizer, as Bridge's setup sets it."""
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer

    provider = cfg.model
    provider.vocab_size, provider.should_pad_vocab = build_tokenizer(cfg.tokenizer).vocab_size, True
    provider.init_model_with_meta_device, provider.use_cpu_initialization = True, True
    provider.gradient_accumulation_fusion = False
    provider.transformer_layer_spec = local_layer_spec  # same parameters as Transformer Engine's, CPU-buildable
    provider.finalize()
    return sum(p.numel() for p in provider.provide(pre_process=True, post_process=True).parameters())


def test_300m_recipe_is_the_papers_model_and_optimizer(llama3_hf, model_parallel_world):
    cfg = paper_300m(llama3_hf)
    model = cfg.model
    assert (model.num_layers, model.hidden_size, model.ffn_hidden_size, model.num_attention_heads,
            model.num_query_groups, model.seq_length) == (12, 768, 2688, 12, 12, 4096)
    assert model.normalization == "RMSNorm" and model.layernorm_epsilon == 1e-5
    assert model.gated_linear_unit and model.activation_func is F.silu  # SwiGLU
    assert model.position_embedding_type == "rope" and model.rotary_base == 10_000
    assert not model.share_embeddings_and_output_weights and not model.add_bias_linear and not model.add_qkv_bias
    assert cfg.mixed_precision == "bf16_mixed" and cfg.optimizer.bf16
    assert cfg.optimizer.use_distributed_optimizer and cfg.ddp.use_distributed_optimizer
    assert cfg.ddp.overlap_grad_reduce and cfg.ddp.overlap_param_gather
    assert cfg.logger.tensorboard_dir.endswith("tb_logs") and cfg.logger.wandb_project is None

    train_iters = 248_640  # floor(777 x 32 / (1 - 0.9))
    assert (cfg.train.train_iters, cfg.train.global_batch_size, cfg.train.micro_batch_size) == (train_iters, 64, 1)
    opt = cfg.optimizer
    assert (opt.optimizer, opt.lr, opt.min_lr, opt.weight_decay) == ("adam", 1e-3, 0.0, 0.4)
    assert (opt.adam_beta1, opt.adam_beta2, opt.adam_eps, opt.clip_grad) == (0.9, 0.95, 1e-8, 1.0)
    sched = cfg.scheduler
    assert sched.lr_decay_style == "cosine" and sched.lr_decay_iters == train_iters
    assert sched.lr_warmup_iters == math.ceil(0.01 * train_iters) == 2487 and sched.lr_warmup_init == 0.0
    # Megatron's scheduler sets the weight decay each step: it must hold the optimizer's value.
    assert (sched.start_weight_decay, sched.end_weight_decay, sched.weight_decay_incr_style) == (0.4, 0.4, "constant")
    # The paper evaluates every train_iters / 20 steps; a checkpoint as often by default.
    assert cfg.validation.eval_interval is None  # no validation set given
    assert cfg.checkpoint.save_interval == 12_432 == train_iters // 20
    assert cfg.checkpoint.save.endswith("checkpoints") and cfg.checkpoint.load == cfg.checkpoint.save

    from megatron.bridge.data.base import DatasetProvider
    from megatron.bridge.data.utils import get_dataset_provider

    assert isinstance(cfg.dataset, MegadocDatasetProvider) and isinstance(cfg.dataset, DatasetProvider)
    assert callable(get_dataset_provider(cfg.dataset))  # Bridge accepts it as a custom provider
    blend = cfg.dataset.blend
    assert (blend.real_epochs, blend.synthetic_fraction, blend.seq_length, blend.global_batch_size) == \
        (32, 0.9, 4096, 64)

    assert parameter_count(cfg) == PAPER_300M == MODELS["300m"].parameter_count()


def test_production_settings_follow_transformer_engine(llama3_hf, monkeypatch):
    """TE's layers, cuDNN fused attention and TE's fused cross-entropy where Transformer Engine is installed (as on
    a NeMo container); Megatron-Core's local layers where it is not (here). Parallel sizes, sequence parallelism,
    checkpoint interval and W&B are parameters."""
    from megatron.bridge.models.gpt_provider import local_layer_spec, transformer_engine_layer_spec
    from megatron.core.transformer.enums import AttnBackend

    import megadoc.recipes.bridge as recipes

    here = paper_300m(llama3_hf)
    assert not recipes.has_transformer_engine()  # tests/bridge_stubs: TE cannot run on a CPU
    assert (here.model.transformer_layer_spec, here.model.attention_backend) == (local_layer_spec, AttnBackend.local)
    monkeypatch.setattr(recipes, "has_transformer_engine", lambda: True)
    cfg = paper_300m(llama3_hf, tensor_model_parallel_size=4, pipeline_model_parallel_size=2,
                     context_parallel_size=2, sequence_parallel=True, save_interval=500, wandb_project="megadoc",
                     output_dir="/runs/x")
    model = cfg.model
    assert (model.transformer_layer_spec, model.transformer_impl, model.attention_backend) == \
        (transformer_engine_layer_spec, "transformer_engine", AttnBackend.fused)
    assert model.cross_entropy_loss_fusion and model.cross_entropy_fusion_impl == "te" and model.bias_activation_fusion
    assert (model.tensor_model_parallel_size, model.pipeline_model_parallel_size, model.context_parallel_size,
            model.sequence_parallel) == (4, 2, 2, True)
    assert cfg.checkpoint.save_interval == 500 and cfg.checkpoint.save == "/runs/x/checkpoints"
    assert (cfg.logger.wandb_project, cfg.logger.wandb_save_dir, cfg.logger.tensorboard_dir) == \
        ("megadoc", "/runs/x/wandb", "/runs/x/tb_logs")


@pytest.mark.parametrize("name", ["150m", "600m", "1.5b", "tiny"])
def test_every_size_builds_from_its_dimensions(name, llama3_hf, model_parallel_world):
    cfg = pretrain_config(name, tokenizer_model=llama3_hf, real_path="data/real", base_steps=777)
    shape = MODELS[name]
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.model.num_query_groups, cfg.model.seq_length) == \
        (shape.num_layers, shape.hidden_size, shape.num_query_groups, shape.seq_length)
    assert parameter_count(cfg) == shape.parameter_count()


def test_weight_decay_mask_param_groups(llama3_hf, model_parallel_world):
    """The recipes' optimizer groups (Megatron-Core's own grouping of the mask's overrides, on the model Bridge's
    provider builds): levanter's mask, the paper's, decays Linear weights and the untied output layer, and neither
    the input embedding nor the norms."""
    from megatron.bridge.models.gpt_provider import local_layer_spec
    from megatron.bridge.training.tokenizers.tokenizer import build_tokenizer
    from megatron.core.optimizer import _get_param_groups

    cfg = pretrain_config("tiny", tokenizer_model=llama3_hf, real_path="data/real", base_steps=4)
    provider = cfg.model
    provider.vocab_size, provider.should_pad_vocab = build_tokenizer(cfg.tokenizer).vocab_size, True
    provider.init_model_with_meta_device, provider.use_cpu_initialization = True, True
    provider.gradient_accumulation_fusion, provider.transformer_layer_spec = False, local_layer_spec
    provider.finalize()
    model = provider.provide(pre_process=True, post_process=True)
    overrides = cfg.optimizer_config_override_provider.build_config_overrides(None)
    names = {id(p): name for name, p in model.named_parameters()}
    groups = {group["wd_mult"]: {names[id(p)] for p in group["params"]}
              for group in _get_param_groups([model], cfg.optimizer, overrides)}
    norms = {f"decoder.layers.{i}.{norm}.weight" for i in (0, 1) for norm in ("input_layernorm", "pre_mlp_layernorm")}
    assert groups[0.0] == {"embedding.word_embeddings.weight", "decoder.final_layernorm.weight", *norms}
    linears = {f"decoder.layers.{i}.{linear}.weight" for i in (0, 1) for linear in
               ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1", "mlp.linear_fc2")}
    assert groups[1.0] == {"output_layer.weight", *linears} and set(groups) == {0.0, 1.0}


def test_yaml_round_trip(llama3_hf, tmp_path):
    from megatron.bridge.training.config import ConfigContainer

    cfg = paper_300m(llama3_hf, valid_paths=["data/valid"], tensor_model_parallel_size=2)
    cfg.to_yaml(str(tmp_path / "run.yaml"))
    loaded = ConfigContainer.from_yaml(str(tmp_path / "run.yaml"))
    assert loaded.to_dict() == cfg.to_dict()
    assert isinstance(loaded.dataset, MegadocDatasetProvider) and isinstance(loaded.dataset.blend, MegadocBlendConfig)
    assert loaded.dataset.blend == cfg.dataset.blend and loaded.dataset.blend.valid_prefixes == ["data/valid"]
    assert loaded.model.activation_func is F.silu and loaded.model.tensor_model_parallel_size == 2
    assert loaded.train.train_iters == 248_640 and loaded.validation.eval_interval == 12_432
    assert type(loaded.optimizer_config_override_provider) is type(cfg.optimizer_config_override_provider)


def test_cli_overrides_move_parallel_sizes_and_the_plan(llama3_hf):
    cfg = apply_overrides(paper_300m(llama3_hf), [
        "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=4",
        "model.context_parallel_size=2", "dataset.blend.real_epochs=8", "dataset.blend.synthetic_fraction=0.75",
        "train.global_batch_size=128", "optimizer.lr=0.003"])
    assert (cfg.model.tensor_model_parallel_size, cfg.model.pipeline_model_parallel_size,
            cfg.model.context_parallel_size) == (2, 4, 2)
    assert cfg.train.train_iters == 24_864  # floor(777 x 8 / (1 - 0.75))
    assert cfg.scheduler.lr_warmup_iters == 249 and cfg.scheduler.lr_decay_iters == 24_864
    assert cfg.checkpoint.save_interval == 1243  # the derived interval follows the plan
    kept = apply_overrides(paper_300m(llama3_hf, save_interval=100), ["dataset.blend.real_epochs=8"])
    assert kept.checkpoint.save_interval == 100  # one the user chose stays
    assert cfg.dataset.blend.global_batch_size == 128 and cfg.dataset.blend.real_epochs == 8
    assert cfg.optimizer.lr == 0.003 and cfg.optimizer.weight_decay == 0.4
    assert cfg.dataset.skip_getting_attention_mask_from_dataset and not cfg.dataset.create_attention_mask
    blocked = apply_overrides(paper_300m(llama3_hf), ["dataset.blend.block_cross_document_attention=true"])
    assert not blocked.dataset.skip_getting_attention_mask_from_dataset and blocked.dataset.create_attention_mask

    with pytest.raises(MegadocError, match="train_iters comes from the data plan"):
        apply_overrides(paper_300m(llama3_hf), ["train.train_iters=10"])
    with pytest.raises(MegadocError, match="synthetic_fraction"):
        apply_overrides(paper_300m(llama3_hf), ["dataset.blend.synthetic_fraction=1.5"])
    with pytest.raises(MegadocError, match="overrides: Failed to parse Hydra overrides: Could not override "
                                           "'model.not_a_field'"):
        apply_overrides(paper_300m(llama3_hf), ["model.not_a_field=3"])


def test_megatron_lm_provider_reads_real_megatron_lm_arguments(blend_data, llama3_hf):
    """`train_valid_test_datasets_provider` under Megatron-LM's own argument parser, validation and global
    variables (megatron.training, shipped with megatron-core 0.19): the `--megadoc-*` flags arrive through
    `extra_args_provider`, the tokenizer is Megatron's, and the blend is exactly the plain entry point's."""
    from megatron.training import global_vars
    from megatron.training.arguments import parse_args, validate_args

    from megadoc_data.datasets import build_datasets
    from megadoc_data.megatron_lm import megatron_lm_extra_args, train_valid_test_datasets_provider

    argv = ["pretrain_gpt.py", "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(llama3_hf),
            "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
            "--max-position-embeddings", "64", "--global-batch-size", "8", "--micro-batch-size", "2", "--seed", "7",
            "--megadoc-real-path", blend_data["real"], "--megadoc-synthetic-path", blend_data["syn"],
            "--megadoc-real-epochs", "2", "--megadoc-synthetic-fraction", "0.75", "--megadoc-base-steps", "4"]
    saved, sys.argv = sys.argv, argv
    try:
        args = parse_args(extra_args_provider=megatron_lm_extra_args)
    finally:
        sys.argv = saved
    validate_args(args)
    global_vars.set_global_variables(args, build_tokenizer=True)
    tokenizer = global_vars.get_tokenizer()

    config = MegadocBlendConfig(real_prefix=blend_data["real"], synthetic_prefixes=[blend_data["syn"]],
                                real_epochs=2, synthetic_fraction=0.75, seq_length=64, global_batch_size=8,
                                base_steps=4)
    plan = plan_from_data(config)
    assert train_valid_test_datasets_provider.is_distributed and plan.train_iters == 32
    train, _, _ = train_valid_test_datasets_provider([plan.total_sequences, 0, 0])
    plain, _, _ = build_datasets(replace(config, seed=args.seed), tokenizer)
    assert tokenizer.vocab_size == 128_256
    assert (train.dataset_index == plain.dataset_index).all()
    assert list(numpy.bincount(train.dataset_index)) == [plan.real.sequences, plan.synthetic[0].sequences]
    with pytest.raises(MegadocError, match=f"set --train-iters {plan.train_iters}"):
        train_valid_test_datasets_provider([plan.total_sequences - 8, 0, 0])
