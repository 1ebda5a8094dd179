"""Recipes match the paper's exact parameter counts; sweeps produce the paper's grid and neighbourhoods."""

import pytest

from megadoc.recipes.models import MODELS, ParallelRecipe, TrainingRecipe, gpt_model_kwargs, transformer_config
from megadoc.recipes.sweep import Run, grid_runs, neighbourhood, token_label

PAPER_COUNTS = {"150m": 154_147_328, "300m": 299_649_792, "600m": 602_457_088, "1.5b": 1_540_732_416}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_parameter_counts_match_paper(name):
    assert MODELS[name].parameter_count(128_256) == PAPER_COUNTS[name]


def test_tiny_count_matches_instantiated_gpt_model():
    from megadoc.training import device_shim
    from megadoc.training.runtime import build_model, init_distributed

    device_shim.activate()
    init_distributed(ParallelRecipe())
    for model in (MODELS["tiny"], MODELS["150m"].__class__("gqa", "gqa", 64, 96, 2, 4, 2, seq_length=32)):
        recipe = TrainingRecipe(model=model, vocab_size=256)
        gpt = build_model(recipe)
        assert sum(p.numel() for p in gpt.parameters()) == model.parameter_count(256)


def test_init_distributed_replaces_groups_of_a_destroyed_world():
    """In-process users (tests, notebooks, vLLM's own world) may destroy and re-create torch.distributed: the
    model-parallel groups must then be rebuilt, not reused stale."""
    import torch
    from megatron.core import parallel_state

    from megadoc.training import device_shim
    from megadoc.training.runtime import init_distributed

    device_shim.activate()
    init_distributed(ParallelRecipe())
    torch.distributed.destroy_process_group()
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    init_distributed(ParallelRecipe())
    assert parallel_state.get_tensor_model_parallel_rank() == 0 == parallel_state.get_pipeline_model_parallel_rank()


def test_transformer_config_is_llama_style():
    config = transformer_config(TrainingRecipe(model=MODELS["600m"]))
    assert (config.hidden_size, config.ffn_hidden_size, config.num_layers) == (1024, 3584, 24)
    assert (config.num_attention_heads, config.num_query_groups) == (16, 8)
    assert config.normalization == "RMSNorm" and config.gated_linear_unit and not config.add_bias_linear
    assert config.bf16
    kwargs = gpt_model_kwargs(TrainingRecipe(model=MODELS["300m"], parallel=ParallelRecipe(2, 1)))
    assert kwargs["vocab_size"] == 128_256 and not kwargs["share_embeddings_and_output_weights"]
    assert kwargs["position_embedding_type"] == "rope" and kwargs["max_sequence_length"] == 4096


def test_run_names_follow_paper():
    assert token_label(203_685_888) == "203M" and token_label(1_600_000_000) == "1.6B" and token_label(52_430) == "52.4K"
    assert Run("300m", 16, 3e-3, 1.6, real_tokens=407_371_776).name.startswith("300m4k-407Mx16-real-")
    assert Run("300m", 32, 1e-3, 0.4, "stitched32", 0.9).name == \
        "300m4k-203Mx32-real+stitched32^0.9-cos-lr0.0010-wd0.40-bs64"
    assert Run("300m", 16, 3e-3, 1.6).name == "300m4k-203Mx16-real-cos-lr0.0030-wd1.60-bs64"
    assert Run("300m", 8, 3e-3, 0.8, "simple4", 0.75).name == \
        "300m4k-203Mx8-real+simple4^0.75-cos-lr0.0030-wd0.80-bs64"
    with pytest.raises(ValueError):
        Run("300m", 8, 3e-3, 0.8, "simple4")


def test_grid_sizes():
    assert len(grid_runs("300m", "stitched32")) == 6 * 3 * 3 * 4
    assert len(grid_runs("300m", None)) == 6 * 3 * 4
    assert len({r.name for r in grid_runs("300m", "stitched32")}) == 216


def test_neighbourhood_interior_has_nine_points():
    centre = Run("300m", 8, 3e-3, 0.4, "stitched16", 0.75)
    runs = neighbourhood(centre)
    assert runs[0] == centre and len(runs) == 9 and len({r.name for r in runs}) == 9
    assert {r.real_epochs for r in runs} == {4, 8, 16}
    assert {r.synthetic_fraction for r in runs} == {0.5, 0.75, 0.9}
    assert {r.lr for r in runs} == {1e-3, 3e-3, 1e-2}
    assert {r.weight_decay for r in runs} == {0.1, 0.4, 0.8}
    # each neighbour differs from the centre in exactly one field
    fields = ("real_epochs", "synthetic_fraction", "lr", "weight_decay")
    assert all(sum(getattr(r, f) != getattr(centre, f) for f in fields) == 1 for r in runs[1:])


def test_neighbourhood_at_grid_edges():
    assert len(neighbourhood(Run("300m", 32, 1e-3, 0.4, "stitched32", 0.9))) == 6  # E, r, lr at an edge
    assert len(neighbourhood(Run("300m", 16, 3e-3, 1.6))) == 6  # real only: no r axis; wd at the top
    with pytest.raises(ValueError):
        neighbourhood(Run("300m", 3, 3e-3, 0.4))
