"""`megadoc export --load CKPT --output DIR`: a trained checkpoint as a Llama-format Hugging Face model.

Every megadoc model is a Llama-style decoder (megadoc.recipes.models), so a checkpoint of either trainer (`megadoc
train`, or Megatron-Bridge) loads through `megadoc.training.checkpoints.load_model` (one process, TP = PP = 1,
whatever layout it trained with) and maps onto `LlamaForCausalLM` tensor for tensor; the mapping is written out here
rather than taken from Megatron-Bridge's AutoBridge, so that it runs in either environment (Bridge needs Python
3.12 and megatron-core 0.19) and needs no hub access (AutoBridge's Llama export starts from a hub config); the
Bridge tests check it against AutoBridge's own export. Megatron-Core -> Hugging Face, per layer i:

    embedding.word_embeddings / output_layer        -> model.embed_tokens / lm_head (padding rows dropped)
    decoder.layers.i.input_layernorm                -> model.layers.i.input_layernorm
    decoder.layers.i.self_attention.linear_qkv      -> q_proj, k_proj, v_proj (per query group: its query heads,
                                                       then its key and value head)
    decoder.layers.i.self_attention.linear_proj     -> o_proj
    decoder.layers.i.pre_mlp_layernorm              -> model.layers.i.post_attention_layernorm
    decoder.layers.i.mlp.linear_fc1                 -> gate_proj (first half), up_proj (second half)
    decoder.layers.i.mlp.linear_fc2                 -> down_proj
    decoder.final_layernorm                         -> model.norm

RoPE (theta 10,000, rotate-half), RMSNorm (eps 1e-5), SwiGLU and untied embeddings are the same in both. DIR gets
config.json, model.safetensors and, for an HF or sentencepiece tokenizer, the tokenizer's files, so vLLM,
lm-evaluation-harness or `AutoModelForCausalLM.from_pretrained(DIR)` take it as it is. It is written to a temporary
folder renamed into place: an interrupted export leaves no DIR.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from megadoc.errors import MegadocError
from megadoc.files import check_output_dir
from megadoc.recipes.models import ParallelRecipe, TrainingRecipe

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED = 1234
"""Megatron-Core wants its RNG states seeded to build a model; nothing random happens in an export."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def add_arguments(parser) -> None:
    parser.add_argument("--load", required=True, help="checkpoint folder of megadoc train or Megatron-Bridge")
    parser.add_argument("--output", required=True, help="the Hugging Face model folder to write (must not exist)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="weights' dtype (default float32, exact; a run trained in bf16 on GPUs holds bf16 "
                        "weights, which bfloat16 keeps exactly at half the size)")
    parser.set_defaults(func=run)


def hf_config(recipe: TrainingRecipe, dtype: str, eos_token_id: int | None) -> dict:
    """config.json of the LlamaForCausalLM a recipe is."""
    model = recipe.model
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": recipe.vocab_size,
        "hidden_size": model.hidden_size, "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers, "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups, "head_dim": model.hidden_size // model.num_attention_heads,
        "max_position_embeddings": model.seq_length, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "rope_theta": 10_000.0, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
        "tie_word_embeddings": False, "initializer_range": 0.02, "torch_dtype": dtype,
        "bos_token_id": None, "eos_token_id": eos_token_id,
    }


def hf_state_dict(state: dict, recipe: TrainingRecipe) -> dict:
    """Megatron-Core GPTModel weights (TP = PP = 1, local layer names) as LlamaForCausalLM's."""
    model, vocab = recipe.model, recipe.vocab_size
    heads, groups = model.num_attention_heads, model.num_query_groups
    head_dim = model.hidden_size // heads
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"][:vocab],
           "lm_head.weight": state["output_layer.weight"][:vocab],
           "model.norm.weight": state["decoder.final_layernorm.weight"]}
    for i in range(model.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = state[src + "self_attention.linear_qkv.weight"].view(groups, heads // groups + 2, head_dim, -1)
        q, k, v = qkv.split([heads // groups, 1, 1], dim=1)
        gate, up = state[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out.update({
            dst + "input_layernorm.weight": state[src + "input_layernorm.weight"],
            dst + "self_attn.q_proj.weight": q.reshape(heads * head_dim, -1),
            dst + "self_attn.k_proj.weight": k.reshape(groups * head_dim, -1),
            dst + "self_attn.v_proj.weight": v.reshape(groups * head_dim, -1),
            dst + "self_attn.o_proj.weight": state[src + "self_attention.linear_proj.weight"],
            dst + "post_attention_layernorm.weight": state[src + "pre_mlp_layernorm.weight"],
            dst + "mlp.gate_proj.weight": gate,
            dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.linear_fc2.weight"],
        })
    return out


def tokenizer_files(recipe: TrainingRecipe) -> tuple[dict[str, Path], int | None]:
    """(the tokenizer's files to ship with the model, by the names Hugging Face looks for, and its
    end-of-document id); none when the run knew only a vocabulary size, or the tokenizer is a tiktoken file (no HF
    form). A SentencePiece model becomes tokenizer.model, whatever it was called."""
    from megadoc.preprocess.tokenizer import HFTokenizer, SentencePieceTokenizer, build_tokenizer

    if recipe.tokenizer is None:
        return {}, None
    tokenizer = build_tokenizer(recipe.tokenizer)
    if isinstance(tokenizer, HFTokenizer):
        folder = Path(tokenizer.spec.model)
        folder = folder if folder.is_dir() else folder.parent
        return {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}, tokenizer.eod
    if isinstance(tokenizer, SentencePieceTokenizer):
        return {"tokenizer.model": Path(tokenizer.spec.model)}, tokenizer.eod
    return {}, tokenizer.eod


def export(load: str, output: str, dtype: str = "float32") -> Path:
    """Write the HF model of the latest checkpoint under `load` to `output`; returns its path."""
    from safetensors.torch import save_file

    from megadoc.training.checkpoints import load_model
    from megadoc.training.runtime import start

    out = Path(output)
    if out.exists():
        raise MegadocError(f"{out}: already exists; export writes a new folder")
    check_output_dir(out, "--output")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise MegadocError("export runs in one process (it gathers the whole model): run it without torchrun")
    start(ParallelRecipe(), SEED)
    loaded = load_model(load)
    trained = loaded.run.recipe
    recipe = TrainingRecipe(model=trained.model, vocab_size=trained.vocab_size, tokenizer=trained.tokenizer)
    files, eos = tokenizer_files(recipe)
    weights = {name: tensor.detach().to(DTYPES[dtype]).contiguous().cpu()
               for name, tensor in hf_state_dict(loaded.model.state_dict(), recipe).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(recipe, dtype, eos), indent=2) + "\n")
        for name, file in files.items():
            shutil.copyfile(file, tmp / name)
        for path in tmp.iterdir():  # readable by the inference jobs of others (safetensors writes 0600)
            path.chmod(0o644)
        tmp.chmod(0o755)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def run(args) -> int:
    out = export(args.load, args.output, args.dtype)
    print(f"megadoc export: {args.load} -> {out} (LlamaForCausalLM: config.json, model.safetensors"
          f"{', tokenizer' if any(out.glob('tokenizer*')) else ''})")
    torch.distributed.destroy_process_group()
    return 0
