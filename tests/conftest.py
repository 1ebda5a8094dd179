"""Shared fixtures: the real data and tokenizers in ../shared (present on every developer and CI machine)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def _shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared is where the real sample data lives)")
    return path


@pytest.fixture(scope="session")
def dclm_sample() -> Path:
    """218 real DCLM web documents, JSONL with id and text."""
    return _shared("data/dclm_sample.jsonl")


@pytest.fixture(scope="session")
def llama3_hf() -> Path:
    """The paper's Llama 3 tokenizer as an HF folder (tokenizer.json, no post-processor)."""
    return _shared("tokenizers/llama3/hf")


@pytest.fixture(scope="session")
def llama3_tiktoken() -> Path:
    """The same vocabulary as a tiktoken BPE file."""
    return _shared("tokenizers/llama3/meta-llama-3-8B.tiktoken")


@pytest.fixture(scope="session")
def write_prefix():
    """write_prefix(prefix, documents, dtype="int32") -> prefix: token-id documents written as a Megatron .bin/.idx
    pair by Megatron-Core's own IndexedDatasetBuilder (no tokenizer, so no sidecar)."""
    def write(prefix: str, documents: list[list[int]], dtype="int32") -> str:
        import numpy as np
        import torch
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.dtype(dtype).type)
        for ids in documents:
            builder.add_item(torch.tensor(ids))
            builder.end_document()
        builder.finalize(prefix + ".idx")
        return prefix

    return write


@pytest.fixture(scope="session")
def wait_for_chunks():
    """wait_for_chunks(process, output, chunks=2, timeout=180): block until `process` (a running megadoc generate)
    has committed `chunks` chunks of its one shard under `output`, and assert it is still running then (so a test
    can kill it mid-run)."""
    def wait(process, output: Path, chunks: int = 2, timeout: float = 180) -> None:
        import json
        import time

        manifest = Path(output) / "shard-00000-of-00001" / "manifest.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if manifest.exists() and len(json.loads(manifest.read_text())["chunks"]) >= chunks:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be interrupted"

    return wait


@pytest.fixture(scope="session")
def write_generations():
    """Writes hand-made generation rows as one committed shard (Parquet chunk + manifest), through the shard
    format's own writer; missing columns are null. Returns the generation directory."""
    from megadoc.preprocess.generate.shards import COLUMNS, commit_chunk, shard_dir

    def write(directory: Path, rows: list[dict]) -> str:
        shard = shard_dir(str(directory), 0, 1)
        shard.mkdir(parents=True)
        manifest = {"params": {"num_shards": 1}, "params_hash": "hand-written", "chunks": [], "complete": True,
                    "counts": {}}
        full = [{column: row.get(column) for column in COLUMNS} for row in rows]
        commit_chunk(shard, manifest, full, {"file": "chunk-00000.parquet", "rows": len(full),
                                             "docs": len({row["doc_id"] for row in rows})})
        return str(directory)

    return write


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama (hidden 64, 2 heads of 32) with SmolLM2's tokenizer and chat template: a vLLM model
    that starts in seconds (the generation tests)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from megadoc.preprocess.generate.embedded_model import default_model_dir

    out = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)
