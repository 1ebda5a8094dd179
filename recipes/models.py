"""The paper's models and training recipe as typed configs, and the Megatron-Core config they become.

Every model is a Llama-style decoder (levanter `LlamaConfig` defaults): untied input/output embeddings, RMSNorm
(eps 1e-5), SwiGLU, RoPE (theta 10,000), no biases, init std 0.02, no dropout, context 4096. The sizes are given by
their dimensions, never by a parameter budget, so `parameter_count` can be checked against the paper's exact counts.
"""

import math
from dataclasses import dataclass, field, replace

from megadoc.errors import MegadocError
from megadoc.preprocess.tokenizer import TokenizerSpec

LLAMA3_VOCAB_SIZE = 128_256
"""The Llama 3 tokenizer's vocabulary, which the paper's parameter counts imply."""


@dataclass(frozen=True)
class ModelRecipe:
    """The shape of one decoder."""

    name: str
    """Short name used on the command line (`--recipe`): 150m, 300m, 600m, 1.5b or tiny."""
    run_prefix: str
    """How the paper's run names start for this model, e.g. `300m4k`."""
    hidden_size: int
    """Residual stream width."""
    ffn_hidden_size: int
    """SwiGLU inner width (each of the gate and up projections)."""
    num_layers: int
    """Transformer blocks."""
    num_attention_heads: int
    """Query heads; head dim = hidden_size / num_attention_heads."""
    num_query_groups: int
    """Key/value heads (grouped-query attention when fewer than the query heads)."""
    seq_length: int = 4096
    """Training context length in tokens."""

    def __post_init__(self):
        if self.seq_length < 1:
            raise MegadocError(f"seq_length: {self.seq_length} must be >= 1")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"{self.name}: hidden_size {self.hidden_size} not divisible by heads")
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(f"{self.name}: heads {self.num_attention_heads} not divisible by query groups")

    def parameter_count(self, vocab_size: int = LLAMA3_VOCAB_SIZE) -> int:
        """Exact parameter count from the dimensions: two embeddings, attention, SwiGLU and RMSNorm weights."""
        head_dim = self.hidden_size // self.num_attention_heads
        kv_width = 2 * self.num_query_groups * head_dim
        attention = self.hidden_size * (self.hidden_size + kv_width) + self.hidden_size * self.hidden_size
        mlp = 3 * self.hidden_size * self.ffn_hidden_size
        norms = 2 * self.hidden_size
        embeddings = 2 * vocab_size * self.hidden_size
        return embeddings + self.num_layers * (attention + mlp + norms) + self.hidden_size


MODELS: dict[str, ModelRecipe] = {
    m.name: m
    for m in (
        ModelRecipe("150m", "150m4k", 512, 1792, 6, 8, 8),
        ModelRecipe("300m", "300m4k", 768, 2688, 12, 12, 12),
        ModelRecipe("600m", "600m4k", 1024, 3584, 24, 16, 8),
        ModelRecipe("1.5b", "1_5b4k", 1536, 5376, 36, 16, 8),
        ModelRecipe("tiny", "tiny", 64, 224, 2, 4, 4, seq_length=64),
    )
}
"""The paper's four sizes (300m is the main model) and a tiny one for CPU tests and demos."""


@dataclass(frozen=True)
class OptimizerRecipe:
    """AdamW with global-norm clipping and a cosine schedule to zero, as in the paper."""

    lr: float = 3e-3
    """Peak learning rate (grid: 1e-3, 3e-3, 1e-2)."""
    weight_decay: float = 0.8
    """Decoupled weight decay (grid: 0.1, 0.4, 0.8, 1.6); per-step shrink is lr x wd, on the parameters the paper's
    mask decays (`megadoc.recipes.weight_decay`: Linear weights, not embeddings, norms or biases)."""
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    """Global gradient-norm clip."""
    warmup_fraction: float = 0.01
    """Linear warmup over this fraction of the training steps."""
    min_lr: float = 0.0
    """The cosine decays to this learning rate at the last step."""

    def __post_init__(self):
        for name, low in (("lr", 0.0), ("weight_decay", 0.0), ("clip_grad", 0.0), ("min_lr", 0.0)):
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > low if name == "lr" else value >= low)):
                raise MegadocError(f"{name}: {value} must be a finite number {'>' if name == 'lr' else '>='} 0")
        if not 0 <= self.warmup_fraction <= 1:
            raise MegadocError(f"warmup_fraction: {self.warmup_fraction} is outside [0, 1]")

    def warmup_iters(self, train_iters: int) -> int:
        return math.ceil(self.warmup_fraction * train_iters)


@dataclass(frozen=True)
class ParallelRecipe:
    """How the model is split over devices; the product must divide the world size."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1

    def __post_init__(self):
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
            if getattr(self, name) < 1:
                raise MegadocError(f"{name}: {getattr(self, name)} must be >= 1")


@dataclass(frozen=True)
class TrainingRecipe:
    """How one run trains: a model, the optimizer, the parallel layout, the batch and the tokenizer. What it trains
    on (the blend, E and r, and so train_iters) is the data plan's, recorded beside it (training.checkpoints)."""

    model: ModelRecipe
    """The decoder to train."""
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    """AdamW settings; lr and weight decay are the tuned ones."""
    parallel: ParallelRecipe = field(default_factory=ParallelRecipe)
    """TP / PP sizes."""
    global_batch_size: int = 64
    """Sequences per optimizer step."""
    micro_batch_size: int = 1
    """Sequences per forward pass on one data-parallel rank."""
    bf16: bool = True
    """Compute in bfloat16 with fp32 parameters (the paper's jmp policy p=f32,c=bfloat16)."""
    vocab_size: int = LLAMA3_VOCAB_SIZE
    """Tokenizer vocabulary (before Megatron's padding for tensor parallelism)."""
    tokenizer: TokenizerSpec | None = None
    """The tokenizer the data was written with (None: only its vocabulary is known)."""

    def __post_init__(self):
        for name in ("global_batch_size", "micro_batch_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise MegadocError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise MegadocError(f"global_batch_size: {self.global_batch_size} is not a multiple of micro_batch_size "
                               f"{self.micro_batch_size}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingRecipe":
        """The inverse of `dataclasses.asdict` (how megadoc_recipe.json stores it)."""
        return cls(**{**data, "model": ModelRecipe(**data["model"]), "optimizer": OptimizerRecipe(**data["optimizer"]),
                      "parallel": ParallelRecipe(**data["parallel"]),
                      "tokenizer": TokenizerSpec(**data["tokenizer"]) if data.get("tokenizer") else None})


def add_recipe_arguments(parser) -> None:
    """The flags of a TrainingRecipe (Megatron-LM's names), declared once."""
    group = parser.add_argument_group("model recipe")
    group.add_argument("--recipe", default="tiny", choices=sorted(MODELS), help="model size")
    group.add_argument("--seq-length", type=int, help="context length (default: the recipe's)")
    group.add_argument("--global-batch-size", type=int, default=64)
    group.add_argument("--micro-batch-size", type=int, default=1)
    group.add_argument("--lr", type=float, default=OptimizerRecipe.lr, help="peak learning rate")
    group.add_argument("--weight-decay", type=float, default=OptimizerRecipe.weight_decay)
    group.add_argument("--clip-grad", type=float, default=OptimizerRecipe.clip_grad)
    group.add_argument("--tensor-model-parallel-size", type=int, default=1)
    group.add_argument("--pipeline-model-parallel-size", type=int, default=1)


def recipe_from_args(args, vocab_size: int, tokenizer: TokenizerSpec | None) -> TrainingRecipe:
    """The one flags -> TrainingRecipe translation."""
    model = MODELS[args.recipe]
    if args.seq_length is not None:
        model = replace(model, seq_length=args.seq_length)
    return TrainingRecipe(
        model=model,
        optimizer=OptimizerRecipe(lr=args.lr, weight_decay=args.weight_decay, clip_grad=args.clip_grad),
        parallel=ParallelRecipe(args.tensor_model_parallel_size, args.pipeline_model_parallel_size),
        global_batch_size=args.global_batch_size, micro_batch_size=args.micro_batch_size, vocab_size=vocab_size,
        tokenizer=tokenizer)


def padded_vocab_size(vocab_size: int, tensor_model_parallel_size: int = 1, divisible_by: int = 128) -> int:
    """Megatron-LM's vocabulary padding (--make-vocab-size-divisible-by x TP), so embeddings split evenly."""
    multiple = divisible_by * tensor_model_parallel_size
    return -(-vocab_size // multiple) * multiple


def llama_architecture(model: ModelRecipe) -> dict:
    """The TransformerConfig fields of a model: its dimensions and the Llama style every paper model shares
    (Megatron-Core's trainer and the Megatron-Bridge recipes both build from this)."""
    import torch.nn.functional as F

    return dict(
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.num_query_groups,
        normalization="RMSNorm",
        layernorm_epsilon=1e-5,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        init_method_std=0.02,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


def transformer_config(recipe: TrainingRecipe, cpu: bool = False):
    """The Megatron-Core TransformerConfig of a recipe; `cpu` builds fp32 weights on the CPU."""
    import torch
    from megatron.core.transformer.transformer_config import TransformerConfig

    model, parallel = recipe.model, recipe.parallel
    bf16 = recipe.bf16 and not cpu
    return TransformerConfig(
        **llama_architecture(model),
        bf16=bf16,
        params_dtype=torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        use_cpu_initialization=cpu,
    )


def gpt_model_kwargs(recipe: TrainingRecipe) -> dict:
    """The GPTModel arguments a TransformerConfig does not carry: vocabulary, context, RoPE, untied embeddings."""
    return dict(
        vocab_size=padded_vocab_size(recipe.vocab_size, recipe.parallel.tensor_model_parallel_size),
        max_sequence_length=recipe.model.seq_length,
        position_embedding_type="rope",
        rotary_base=10_000,
        share_embeddings_and_output_weights=False,
    )
